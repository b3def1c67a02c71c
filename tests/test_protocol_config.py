"""The protocol's Structs agree with the core's decoder; the configuration refuses bad files."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rampart._core import AlgoConfig, Engine
from rampart.cli import main
from rampart.config import ConfigFileError, DaemonConfig, load_config, parse_config
from rampart.protocol import (
    AlgoStatus,
    Fill,
    OrderEvent,
    Quote,
    Subjects,
    encoder,
)
from rampart.tokens import is_subject, is_token

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_764_028_800_000_000_000

prices = st.floats(min_value=0.01, max_value=1e6, allow_nan=False, allow_infinity=False)
qtys = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)


def _engine() -> Engine:
    e = Engine()
    e.register(AlgoConfig("a", "1", 1e6))
    return e


@given(
    side=st.sampled_from(["buy", "sell"]),
    qty=qtys,
    price=prices,
    fee=st.floats(min_value=0, max_value=100, allow_nan=False),
    mid=prices,
    latency=st.integers(min_value=0, max_value=10**12),
)
def test_protocol_structs_decode_in_the_core_like_direct_calls(
    side: str, qty: float, price: float, fee: float, mid: float, latency: int
) -> None:
    wire, direct = _engine(), _engine()
    fill = Fill(algo="a", symbol="ES", side=side, qty=qty, price=price, fee=fee, ts=T0)  # type: ignore[arg-type]
    quote = Quote(symbol="ES", bid=mid, ask=mid, ts=T0 + 1)
    ack = OrderEvent(algo="a", event="acked", latency_ns=latency, ts=T0 + 2)
    for msg in (fill, quote, ack):
        wire.ingest_json(encoder.encode(msg))
    direct.fill("a", "ES", qty if side == "buy" else -qty, price, fee, T0)
    direct.quote("ES", mid, mid, T0 + 1)
    direct.order_acked("a", latency, T0 + 2)
    assert wire.snapshot("a").to_dict() == direct.snapshot("a").to_dict()


def test_status_struct_has_exactly_the_snapshot_fields() -> None:
    snap = _engine().snapshot("a").to_dict()
    # the daemon adds these
    added = {"gateway", "halted", "positions_omitted", "control", "position_check", "sharpe_se"}
    assert set(AlgoStatus.__struct_fields__) == set(snap) | added
    msgspec.convert({**snap, "gateway": "gw"}, AlgoStatus)


def test_subjects_refuse_a_bad_prefix_and_ids_must_be_tokens() -> None:
    assert Subjects("desk.eu").fills("gw1", "algo-1") == "desk.eu.fills.gw1.algo-1"
    for bad in ("", "a..b", "a b", "a.*", "x.>"):
        with pytest.raises(ValueError, match="prefix"):
            Subjects(bad)
    assert is_token("momentum-v2_1")
    assert not any(is_token(t) for t in ("a.b", "a b", "*", ">", ""))
    assert is_subject("momentum-v2.1.0")
    assert not any(is_subject(t) for t in ("a..b", ".a", "a.", "a b", "a.*", "a.>", ""))


def test_example_config_loads() -> None:
    cfg = load_config(ROOT / "examples" / "rampart.toml")
    canary = next(a for a in cfg.algorithms if a.id == "momentum-v2.1.0")
    assert canary.to_core().max_latency_ns == 100_000_000
    assert canary.previous_version == "momentum-v2.0.0"
    assert cfg.nats.servers == []


def test_json_config_is_accepted() -> None:
    cfg = parse_config(b'{"name": "r1", "algorithms": []}', suffix=".json")
    assert cfg == DaemonConfig(name="r1")


def test_reconcile_settings_come_from_the_config() -> None:
    from rampart.reconciler import reconcile_settings

    cfg = parse_config(b"heartbeat_interval = 'PT0.5S'\n[reconcile]\nconverge_timeout = 'PT30S'")
    s = reconcile_settings(cfg)
    assert (s.converge_timeout, s.resync_interval, s.deadline) == (30.0, 0.5, 1.0)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("bogus = 1", "unknown field `bogus`"),
        ("[nats]\nping_interval = 5", "$.nats.ping_interval"),
        ("[nats]\nping_interval = 'P1Y'", "$.nats.ping_interval"),
        ('[[algorithms]]\nid="a"\nversion="1"\ngateway="g"', "missing required field `capital`"),
        ('[[algorithms]]\nid="a b"\nversion="1"\ngateway="g"\ncapital=1', "$.algorithms[0].id"),
        ('[[algorithms]]\nid="a..b"\nversion="1"\ngateway="g"\ncapital=1', "[0].id"),
        ('[[algorithms]]\nid="a"\nversion="1"\ngateway="g.x"\ncapital=1', "[0].gateway"),
        (
            '[[algorithms]]\nid="a"\nversion="1"\ngateway="g"\ncapital=1\n'
            '[[algorithms]]\nid="a"\nversion="2"\ngateway="g"\ncapital=1',
            "$.algorithms[1].id",
        ),
        (
            '[[algorithms]]\nid="a"\nversion="1"\ngateway="g"\ncapital=1\n'
            "limits = { max_drawdown = 2.0 }",
            "max_drawdown must be a fraction",
        ),
        ("subject_prefix = 'a b'", "$.subject_prefix"),
        ("[ingest]\nmax_payload_bytes = 0", "$.ingest.max_payload_bytes"),
        ("[embedded]\nport = 70000", "$.embedded.port"),
        ("[reconcile]\nconverge_timeout = 'PT0S'", "$.reconcile.converge_timeout` must be > 0"),
        ("[reconcile]\nbackoff_max = 'PT0.01S'", "$.reconcile.backoff_max"),
        ("decision_interval = 'PT0S'", "$.decision_interval` must be > 0"),
        ("checkpoint_interval = 'PT0S'", "$.checkpoint_interval` must be > 0"),
        ("[triggers]\ncheck_interval = 'PT0S'", "$.triggers.check_interval` must be > 0"),
        ("[rollback]\nhalt_deadline = 'PT0S'", "$.rollback.halt_deadline` must be > 0"),
        ("metrics_port = 0", "$.metrics_port` must be in 1..65535"),
        ("name = [", "Invalid"),
    ],
)
def test_invalid_configs_name_the_field(text: str, fragment: str) -> None:
    with pytest.raises(ConfigFileError) as exc:
        parse_config(text.encode())
    assert fragment in str(exc.value)


def test_load_config_errors_start_with_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match=r"missing\.toml: cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("bogus = 1")
    with pytest.raises(ConfigFileError, match=r"bad\.toml: .*bogus"):
        load_config(bad)


def test_validate_checks_configs_and_all_seed_deployments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deployments = sorted((ROOT / "examples" / "deployments").glob("*.json"))
    assert len(deployments) == 4
    files = [str(ROOT / "examples" / "rampart.toml"), *map(str, deployments)]
    assert main(["validate", *files]) == 0
    out = capsys.readouterr().out
    for kind in ("PaperTrading", "Canary", "BlueGreen", "Progressive"):
        assert kind in out
    bad = tmp_path / "bad.json"
    bad.write_text('{"strategy": "Canary", "deploymentId": "x"}')
    assert main(["validate", files[0], str(bad)]) == 1
    err = capsys.readouterr().err
    assert "INVALID" in err and "bad.json" in err
