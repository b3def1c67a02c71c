"""Position reconciliation (issue 10): a gateway's reported positions against Rampart's, per
algorithm and symbol. The bookkeeping (``PositionWatch``, on a real core) without NATS, then end
to end: the reference gateway reports, Rampart agrees; a position Rampart never heard of is
drift, shown in status, alerted, and rolled back when it lasts (algorithm ids with dots, under
a two-token subject prefix)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.msg import Msg
from support import live_config, rampart_keys, until

from rampart._core import Engine, InvalidEventError
from rampart.config import parse_config
from rampart.daemon import Daemon
from rampart.embedded import EmbeddedNatsServer
from rampart.gateway.reference import HostedAlgo, Momentum, ReferenceGateway
from rampart.position_watch import PositionWatch
from rampart.protocol import Alert, PositionFrame, Quote, Subjects

T0 = 1_700_000_000_000_000_000
S = 1_000_000_000
GATEWAYS = {"gw1": ("alpha", "beta"), "gw2": ("gamma",)}


def engine() -> Engine:
    config = parse_config(
        b"""
[[algorithms]]
id = "alpha"
version = "1"
gateway = "gw1"
capital = 100000

[[algorithms]]
id = "beta"
version = "1"
gateway = "gw1"
capital = 100000

[[algorithms]]
id = "gamma"
version = "1"
gateway = "gw2"
capital = 100000
"""
    )
    return config.engine()


def fill(e: Engine, algo: str, qty: float, ts: int) -> None:
    e.ingest_json(
        msgspec.json.encode(
            {
                "type": "fill",
                "algo": algo,
                "symbol": "ES",
                "side": "buy" if qty > 0 else "sell",
                "qty": abs(qty),
                "price": 100.0,
                "fee": 0.0,
                "ts": ts,
            }
        )
    )


def report(positions: dict[str, dict[str, float]], events: str | None) -> PositionFrame:
    return PositionFrame(algos=msgspec.Raw(msgspec.json.encode(positions)), events=events)


def watch(e: Engine, *, caught_up: bool = True, after: int | None = 5 * S) -> PositionWatch:
    return PositionWatch(
        e, GATEWAYS, tolerance=1e-9, drift_after_ns=after, caught_up=lambda: caught_up
    )


def test_a_report_waits_for_the_event_it_is_as_of() -> None:
    """Fills in flight never look like drift: the gateway's report says it holds 3 after its
    event b.2, Rampart has applied only b.1 (2 lots); it compares when b.2 is applied."""
    e = engine()
    w = watch(e)
    assert w.on_event("gw1", "b.1") is None
    fill(e, "alpha", 2.0, T0)
    assert w.on_report("gw1", report({"alpha": {"ES": 3.0}}, "b.2"), T0) == []
    assert w.status("alpha") is None  # nothing compared yet
    waiting = w.on_event("gw1", "b.2")
    assert waiting is not None
    fill(e, "alpha", 1.0, T0 + 1)
    assert w.compare("gw1", waiting, T0 + 2) == []
    check = w.status("alpha")
    assert check is not None and check.in_sync and check.checked_at == T0 + 2
    # a report behind what Rampart applied is never compared (the next one will be)
    assert w.on_report("gw1", report({"alpha": {"ES": 99.0}}, "b.1"), T0 + 3) == []
    assert w.on_event("gw1", "b.3") is None


def test_drift_is_shown_at_once_and_a_breach_when_it_lasts() -> None:
    e = engine()
    w = watch(e)
    fill(e, "alpha", 2.0, T0)
    w.on_event("gw1", "b.1")
    found = w.on_report("gw1", report({"alpha": {"ES": 2.5}, "beta": {"NQ": 1}}, "b.1"), T0)
    assert [(f.kind, f.algos) for f in found] == [("drift", ("alpha",)), ("drift", ("beta",))]
    assert "ES Rampart 2 vs gateway 2.5" in found[0].detail
    check = w.status("alpha")
    assert check is not None and not check.in_sync and check.drift_since == T0
    assert [(d.symbol, d.rampart, d.gateway) for d in check.drift] == [("ES", 2.0, 2.5)]
    assert w.check(T0 + 5 * S - 1) == []
    breaches = w.check(T0 + 5 * S)
    assert [(f.kind, f.algos) for f in breaches] == [("breach", ("alpha",)), ("breach", ("beta",))]
    assert w.check(T0 + 6 * S) == []  # once per drift_after while it lasts
    assert [f.algos for f in w.check(T0 + 10 * S)] == [("alpha",), ("beta",)]
    # the gateway's positions agree again (beta's NQ was closed, alpha's corrected)
    fill(e, "alpha", 0.5, T0 + 1)
    w.on_event("gw1", "b.2")
    found = w.on_report("gw1", report({"alpha": {"ES": 2.5}}, "b.2"), T0 + 11 * S)
    assert sorted((f.kind, f.algos) for f in found) == [
        ("in_sync", ("alpha",)),
        ("in_sync", ("beta",)),
    ]
    assert w.drifting() == {}
    assert w.check(T0 + 100 * S) == []


def test_drift_without_a_time_limit_is_only_shown() -> None:
    e = engine()
    w = watch(e, after=None)
    found = w.on_report("gw2", report({"gamma": {"ES": 1}}, "b.0"), T0)
    assert [f.kind for f in found] == ["drift"]
    assert w.check(T0 + 3600 * S) == []


def test_a_report_on_core_nats_is_shown_but_never_alerted_or_a_breach() -> None:
    """Without event ids (fills on core NATS) a fill in flight always can differ: compared on
    arrival and shown in status, but no alert and no rollback."""
    e = engine()
    w = watch(e)
    assert w.on_report("gw2", report({"gamma": {"ES": 1}}, None), T0) == []
    check = w.status("gamma")
    assert check is not None and not check.in_sync
    assert w.check(T0 + 3600 * S) == []


def test_events_stored_out_of_order_are_matched_only_once_all_are_in() -> None:
    """A retried publish can be stored after later ones: b.2 and b.3 before b.1. A report as of
    b.3 is compared only when b.1, b.2 and b.3 are all applied, and never before."""
    e = engine()
    w = watch(e)
    w.on_event("gw1", "b.0")  # (a first event seen sets the run)
    fill(e, "alpha", 1.0, T0)
    assert w.on_report("gw1", report({"alpha": {"ES": 3.0}}, "b.3"), T0) == []
    for event in ("b.2", "b.3"):
        assert w.on_event("gw1", event) is None  # b.1 is missing: not comparable yet
        fill(e, "alpha", 1.0, T0)
    assert w.applied() == {"gw1": "b.0;2,3"}  # stored with the checkpoint as it is
    waiting = w.on_event("gw1", "b.1")
    assert waiting is not None
    assert w.compare("gw1", waiting, T0 + 1) == []  # 3 lots each side: in sync
    assert w.applied() == {"gw1": "b.3"}
    again = watch(e)
    again.restore({"gw1": "b.0;2,3"})
    assert again.applied() == {"gw1": "b.0;2,3"}


def test_a_batch_counts_for_every_event_it_carries() -> None:
    e = engine()
    w = watch(e)
    w.on_event("gw1", "b.3")
    fill(e, "alpha", 2.0, T0)
    w.on_report("gw1", report({"alpha": {"ES": 2.0}}, "b.9"), T0)
    assert w.on_event("gw1", "b.10-12") is None  # early: 4..9 still to come
    assert w.on_event("gw1", "b.4-9") is None  # 4..12 now: past the report (as of b.9)
    assert w.applied() == {"gw1": "b.12"}
    w.on_report("gw1", report({"alpha": {"ES": 2.0}}, "b.14"), T0)
    waiting = w.on_event("gw1", "b.13-14")
    assert waiting is not None and w.compare("gw1", waiting, T0 + 1) == []


def test_reports_of_an_earlier_boot_do_not_block_the_next_ones() -> None:
    e = engine()
    w = watch(e)
    w.on_event("gw1", "old.4")
    w.on_report("gw1", report({}, "old.9"), T0)  # its events 5..9 never came (it crashed)
    w.on_report("gw1", report({}, "new.2"), T0 + 1)
    assert w.on_event("gw1", "new.1") is None
    assert w.on_event("gw1", "new.2") is not None


def test_events_the_gateway_sent_that_never_arrive_are_a_breach() -> None:
    """The gateway reports positions as of its event b.5; Rampart applied b.3 and nothing
    more comes: after drift_after (while caught up with the stream) its algorithms roll back."""
    e = engine()
    w = watch(e)
    w.on_event("gw1", "b.3")
    assert w.on_report("gw1", report({}, "b.3"), T0) == []  # compared: in sync
    for i in range(10):
        assert w.on_report("gw1", report({"alpha": {"ES": 1}}, "b.5"), T0 + i * S // 2) == []
    found = w.check(T0 + 5 * S)
    assert [(f.kind, f.gateway, f.algos) for f in found] == [("breach", "gw1", ("alpha", "beta"))]
    assert "as of its event b.5" in found[0].detail and "up to b.3" in found[0].detail
    # not while Rampart is still catching up with the stream
    lagging = watch(engine(), caught_up=False)
    lagging.on_report("gw1", report({}, "x.7"), T0)
    assert lagging.check(T0 + 60 * S) == []


def test_a_restarted_gateway_and_a_restarted_rampart() -> None:
    e = engine()
    w = watch(e)
    fill(e, "alpha", 2.0, T0)
    w.on_event("gw1", "old.9")
    # the gateway restarted and published nothing since: compared at once (caught up)
    found = w.on_report("gw1", report({"alpha": {"ES": 2}}, "new.0"), T0)
    assert found == [] and w.status("alpha") is not None
    # its first event of the new boot, reported before Rampart applies it: waits for it
    w.on_report("gw1", report({"alpha": {"ES": 2}}, "new.1"), T0 + 1)
    assert w.on_event("gw1", "old.10") is None  # another boot's event does not match it
    assert w.on_event("gw1", "new.1") is not None
    # Rampart restarted: what the checkpoint stored tells it which event the core holds
    stored = w.applied()
    assert stored == {"gw1": "new.1"}
    again = watch(e)
    again.restore(stored)
    assert again.on_report("gw1", report({"alpha": {"ES": 2}}, "new.1"), T0 + 2) == []
    check = again.status("alpha")
    assert check is not None and check.in_sync


def test_reports_it_cannot_take_are_refused() -> None:
    e = engine()
    w = watch(e)
    with pytest.raises(InvalidEventError) as err:
        w.on_report("gw1", report({"gamma": {"ES": 1}}, None), T0)
    assert err.value.reason == "wrong_gateway"
    with pytest.raises(InvalidEventError) as err:
        w.on_report("gw1", report({}, "no-sequence"), T0)
    assert err.value.reason == "decode"
    frame = PositionFrame(algos=msgspec.Raw(b'{"alpha": {"ES": "lots"}}'), events=None)
    with pytest.raises(InvalidEventError) as err:
        w.on_report("gw1", frame, T0)
    assert err.value.reason == "decode"
    # unknown gateways are not watched (their heartbeats are refused before this)
    assert w.on_report("gw9", report({"alpha": {"ES": 1}}, None), T0) == []


# ---- end to end ---------------------------------------------------------------------------

CONFIG = live_config(
    [("alpha.v1", "gw1"), ("beta.v1", "gw1")],
    top='subject_prefix = "desk.a"\n',
    triggers='position_drift = "PT0.5S"\n',
)


def test_rampart_and_the_gateway_agree_and_a_hidden_position_rolls_back(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        config = parse_config(CONFIG.format(data_dir=tmp_path / "data").encode())
        daemon = Daemon(config, servers=[server.url])
        await daemon.start()
        nc = await nats.connect(server.url)
        alerts: list[Alert] = []

        async def on_alert(msg: Msg) -> None:
            alerts.append(msgspec.json.decode(msg.data, type=Alert))

        await nc.subscribe("desk.a.alert.>", cb=on_alert)
        gw = ReferenceGateway(
            nc,
            "gw1",
            [
                HostedAlgo("alpha.v1", "ES", Momentum(), allocation=1.0, active=True),
                HostedAlgo("beta.v1", "ES", Momentum(), allocation=1.0, active=True),
            ],
            subjects=Subjects("desk.a"),
            heartbeat_interval=0.05,
            deadman_timeout=3600.0,
            trusted_keys=rampart_keys(config.data_dir),
        )
        await gw.start()
        try:
            now = time.time_ns()
            q = Quote(symbol="ES", bid=99.9, ask=100.1, ts=now)
            gw.venue.on_quote(q.symbol, q.bid, q.ask, q.ts)
            for i in range(5):
                await gw.send_order(gw.algos["alpha.v1"], "buy" if i % 2 else "sell", 1.0 + i, q)

            def alpha_check() -> msgspec.Struct | None:
                return daemon.status("alpha.v1").algorithms[0].position_check

            def agrees() -> bool:
                a = daemon.status("alpha.v1").algorithms[0]
                check = a.position_check
                return (
                    check is not None
                    and check.in_sync
                    and [p.qty for p in a.positions] == [gw.venue.positions("alpha.v1")["ES"]]
                )

            await until(agrees, timeout=10)
            assert gw.venue.positions("alpha.v1")["ES"] == -3.0
            assert not alerts
            # a position the gateway holds that Rampart never heard of (a trade outside it)
            book = gw.venue._books["alpha.v1"]
            book.positions["ES"] += 4.0
            await until(lambda: "alpha.v1" in daemon.position_watch.drifting(), timeout=10)  # type: ignore[union-attr]
            check = daemon.status("alpha.v1").algorithms[0].position_check
            assert check is not None and not check.in_sync
            assert [(d.symbol, d.rampart, d.gateway) for d in check.drift] == [("ES", -3.0, 1.0)]
            await until(lambda: any(a.title == "position drift" for a in alerts))
            # it lasts: rolled back, and the gateway halts it
            guard = daemon.guard
            assert guard is not None
            await until(lambda: "alpha.v1" in guard.halted, timeout=10)
            assert "positions of alpha.v1 differ" in guard.halted["alpha.v1"].reason
            await until(
                lambda: [r.trigger for r in daemon.status().daemon.rollbacks] == ["position_drift"]
            )
            assert daemon.status().daemon.rollbacks[0].algos == ["alpha.v1"]
            await until(lambda: gw.agent.is_halted("alpha.v1"))
            assert not gw.agent.is_halted("beta.v1")
            assert "beta.v1" not in daemon.position_watch.drifting()  # type: ignore[union-attr]
            assert alpha_check() is not None
        finally:
            await gw.close()
            await nc.close()
            await daemon.close()

    asyncio.run(scenario())
