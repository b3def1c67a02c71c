"""Deployments end to end: replay, the live daemon on a real nats-server with the reference
gateway, operator verbs, identical decisions live and replayed, and SIGKILL mid-canary."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from support import rampart_keys, until

from rampart.config import parse_config
from rampart.daemon import Daemon
from rampart.deployment import CanaryDeployment, decode_deployment
from rampart.embedded import EmbeddedNatsServer
from rampart.gateway.reference import HostedAlgo, Momentum, ReferenceGateway
from rampart.protocol import Fill, Quote, StatusReply, Subjects, encoder
from rampart.replay import format_timeline, replay
from rampart.store import Store

SUBJ = Subjects()
GATEWAY_PROC = str(Path(__file__).with_name("gateway_proc.py"))
S = 1_000_000_000
# Event time starts at the wall clock: the live daemon judges market-data staleness against it.
T0 = time.time_ns() // (60 * S) * (60 * S)
ALGO = "mom-v2.1.0"

CANARY = {
    "deploymentId": "canary-test",
    "strategy": "Canary",
    "algorithmId": ALGO,
    "environment": "Production",
    "configuration": {
        "totalCapital": 1_000_000,
        "stages": [
            {"name": "Micro", "allocation": 0.01, "minDuration": "PT1M", "minPnL": 0},
            {"name": "Small", "allocation": 0.05, "minDuration": "PT2M", "minPnL": 0},
            {"name": "Full", "allocation": 1.0, "minDuration": "PT3M", "minPnL": 0},
        ],
        "autoProgress": True,
        "rollbackThresholds": {"maxDailyLoss": 0.02, "maxDrawdown": 0.05, "maxErrorRate": 0.5},
    },
}

CONFIG = """
data_dir = "{data_dir}"
heartbeat_interval = "PT0.1S"
decision_interval = "PT1S"

[ingest]
# These tests run event time minutes ahead of the wall clock (a canary in seconds).
max_future = "PT1H"

[triggers]
gateway_heartbeat_timeout = "PT1H"
market_data_timeout = "PT1H"
nats_disconnect = false

[[algorithms]]
id = "{algo}"
version = "2.1.0"
gateway = "gw1"
capital = 1000000
limits = {{ max_drawdown = 0.05 }}
"""


def events(minutes: int, crash_at: int | None = None) -> list[bytes]:
    """A rising market with the algorithm long: stage PnL >= 0, so the canary progresses.
    ``crash_at``: the minute the price collapses (a drawdown breach)."""
    out = [encoder.encode(Quote(symbol="ES", bid=100.0, ask=100.0, ts=T0))]
    fill = Fill(algo=ALGO, symbol="ES", side="buy", qty=5_000, price=100.0, ts=T0 + S)
    out.append(encoder.encode(fill))
    px = 100.0
    for i in range(1, minutes * 6 + 1):  # a quote every 10 s
        px = 50.0 if crash_at is not None and i >= crash_at * 6 else px + 0.01
        out.append(encoder.encode(Quote(symbol="ES", bid=px, ask=px, ts=T0 + i * 10 * S)))
    return out


def subject_of(msg: bytes) -> str:
    """Where a gateway or feed publishes the event: fills on the algorithm's own gateway subject."""
    return SUBJ.fills("gw1", ALGO) if b'"type":"fill"' in msg else SUBJ.market("ES")


def doc() -> CanaryDeployment:
    d = decode_deployment(json.dumps(CANARY))
    assert isinstance(d, CanaryDeployment)
    return d


def transitions(timeline: list[Any]) -> list[tuple[int, str, int, str, int]]:
    return [
        (
            e.data["at"],
            e.data["from_phase"],
            e.data["from_stage"],
            e.data["to_phase"],
            e.data["to_stage"],
        )
        for e in timeline
        if e.kind == "transition"
    ]


def test_replay_walks_the_canary_and_reports_the_rollback(tmp_path: Path) -> None:
    timeline = replay(doc(), events(8))
    steps = [(f, fs, t, ts) for _, f, fs, t, ts in transitions(timeline)]
    assert steps == [
        ("canary", 0, "canary", 0),
        ("canary", 0, "canary", 1),
        ("canary", 1, "canary", 2),
        ("canary", 2, "completed", 2),
    ]
    allocations = [
        e.data["allocation"] for e in timeline if e.data.get("action") == "set_allocation"
    ]
    assert allocations == [0.01, 0.05, 1.0]
    crashed = replay(doc(), events(8, crash_at=2))
    kinds = [e.kind for e in crashed]
    assert "breach" in kinds
    assert transitions(crashed)[-1][3] == "rolled_back"
    assert "BREACH" in format_timeline(crashed)
    # the CLI prints the same timeline
    dep = tmp_path / "canary.json"
    dep.write_text(json.dumps(CANARY))
    ev = tmp_path / "events.jsonl"
    ev.write_bytes(b"\n".join(events(8)) + b"\n")
    proc = subprocess.run(
        [sys.executable, "-m", "rampart", "replay", str(dep), str(ev)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("  transition ") == 4 and "completed" in proc.stdout
    assert "transitions 4, breaches 0, rollbacks 0" in proc.stdout  # the summary


def test_live_daemon_makes_the_same_decisions_as_replay(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    config = parse_config(CONFIG.format(data_dir=tmp_path / "data", algo=ALGO).encode())
    feed = events(8, crash_at=4)

    async def scenario() -> list[tuple[int, str, int, str, int]]:
        daemon = Daemon(config, servers=[server.url])
        await daemon.start()
        gw_nc = await nats.connect(server.url)
        gw = ReferenceGateway(
            gw_nc,
            "gw1",
            [HostedAlgo(ALGO, "ES", Momentum(), active=False)],
            deadman_timeout=3600,
            trusted_keys=rampart_keys(config.data_dir),
        )
        await gw.start()
        nc = await nats.connect(server.url)
        try:
            await nc.publish(subject_of(feed[0]), feed[0])
            await nc.flush()
            await until(lambda: daemon.stats.ingested == 1)
            await daemon.deploy(doc(), "alice")
            # one at a time, each applied before the next: fills travel on the events stream,
            # quotes on core NATS, and only the order the feed has gives replay's decisions
            # and the gateway in step with each decision before the next event: a stage
            # advances only once its gateway reports the last one carried out (replay's gateway
            # obeys at once; on a loaded machine a slower one moved a transition an event later)
            for i, msg in enumerate(feed[1:], start=2):
                await nc.publish(subject_of(msg), msg)
                await until(lambda i=i: daemon.stats.ingested == i)  # type: ignore[misc]
                await until(daemon.effects_idle)
                await until(lambda: daemon._converged(ALGO))
            await until(daemon.effects_idle)
            store = daemon.store
            assert store is not None
            await until(
                lambda: any(
                    r.kind == "transition" and r.payload["to_phase"] == "rolled_back"
                    for r in store.audit()
                )
            )
            state = daemon.runner.deployments["canary-test"].state
            assert state.phase == "rolled_back" and gw.algos[ALGO].halted
            # the state is mirrored to JetStream KV for fleet visibility
            kv = await nc.jetstream().key_value("RAMPART_STATE")
            deadline = time.monotonic() + 10
            while (await kv.get("deployment.canary-test")).value != daemon.runner.dump(
                "canary-test"
            ):
                assert time.monotonic() < deadline, "the KV mirror never caught up"
                await asyncio.sleep(0.01)
            return [
                (
                    r.payload["at"],
                    r.payload["from_phase"],
                    r.payload["from_stage"],
                    r.payload["to_phase"],
                    r.payload["to_stage"],
                )
                for r in store.audit()
                if r.kind == "transition"
            ]
        finally:
            await nc.close()
            await gw.close()
            await gw_nc.close()
            await daemon.close()

    live = asyncio.run(scenario())
    replayed = transitions(replay(doc(), feed, configs=[a.to_core() for a in config.algorithms]))
    assert live == replayed
    assert replayed[-1][3] == "rolled_back"


def _status(cfg: Path) -> StatusReply:
    url = cfg.with_name("url").read_text()
    proc = subprocess.run(
        [sys.executable, "-m", "rampart", "status", "--config", str(cfg), "--json", "-s", url],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return msgspec.json.decode(proc.stdout, type=StatusReply)


def _start(cfg: Path, url: str) -> subprocess.Popen[bytes]:
    log = cfg.with_name("daemon.log").open("ab")
    with log:
        return subprocess.Popen(
            [sys.executable, "-m", "rampart", "run", "--config", str(cfg), "--servers", url],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def _wait_up(cfg: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, cfg.with_name("daemon.log").read_text()
        url = cfg.with_name("url").read_text()
        probe = subprocess.run(
            [
                sys.executable,
                "-m",
                "rampart",
                "status",
                "-c",
                str(cfg),
                "-s",
                url,
                "--timeout",
                "1",
            ],
            capture_output=True,
            timeout=60,
        )
        if probe.returncode == 0:
            return
        assert time.monotonic() < deadline, "the daemon did not come up"


# kill -9 at 23 moments of a canary: stage starts, mid-stage, right after transitions
@pytest.mark.parametrize("kill_after", range(2, 48, 2))
def test_sigkill_mid_canary_resumes_exactly(
    server: EmbeddedNatsServer, tmp_path: Path, kill_after: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kill -9 the daemon at several points of a canary (at a stage start, mid-stage, right after
    a transition) and restart it: stage, stage start, allocation and halts are as they were."""
    cfg = tmp_path / "rampart.toml"
    cfg.write_text(CONFIG.format(data_dir=tmp_path / "data", algo=ALGO))
    (tmp_path / "url").write_text(server.url)
    monkeypatch.setenv("RAMPART_NATS_URL", server.url)  # for every CLI call below
    dep = tmp_path / "canary.json"
    dep.write_text(json.dumps(CANARY))
    feed = events(8)

    async def publish(msgs: list[bytes]) -> None:
        nc = await nats.connect(server.url)
        for m in msgs:
            await nc.publish(subject_of(m), m)
        await nc.flush()
        await nc.close()

    # the gateway, in its own process: the canary advances on what it applies
    gateway = subprocess.Popen(
        [
            sys.executable,
            GATEWAY_PROC,
            server.url,
            "gw1",
            ALGO,
            str(tmp_path / "gw.jsonl"),
            "--deadman",
            "3600",
            "--trust",
            rampart_keys(tmp_path / "data")[0],
        ],
        stderr=subprocess.DEVNULL,
    )
    proc = _start(cfg, server.url)
    try:
        _wait_up(cfg, proc)
        asyncio.run(publish(feed[:1]))
        deploy = subprocess.run(
            [
                sys.executable,
                "-m",
                "rampart",
                "deploy",
                str(dep),
                "--config",
                str(cfg),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert deploy.returncode == 0, deploy.stderr
        asyncio.run(publish(feed[1 : kill_after + 1]))
        deadline = time.monotonic() + 20
        while (ingest := _status(cfg).daemon.ingest).ingested < kill_after + 1:
            assert time.monotonic() < deadline, ingest
        # wait for a checkpoint of the core taken after the last event
        published_at = time.time_ns()
        while (status := _status(cfg)).daemon.checkpoint_at is None or (
            status.daemon.checkpoint_at < published_at
        ):
            assert time.monotonic() < deadline + 10
        before = status.deployments[0]
        assert before.stage >= (1 if kill_after >= 13 else 0), "mid-canary, past a stage"
        metrics_before = status.algorithms[0]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    proc = _start(cfg, server.url)
    try:
        _wait_up(cfg, proc)
        status = _status(cfg)
        assert status.deployments[0] == before
        metrics_after = status.algorithms[0]
        # the core resumed from its checkpoint: peak equity, positions, PnL, drawdown as they were
        for field in ("peak_equity", "equity", "realized_pnl", "max_drawdown", "stage_pnl"):
            assert getattr(metrics_after, field) == getattr(metrics_before, field), field
        assert metrics_after.positions == metrics_before.positions
        assert metrics_before.positions and metrics_before.peak_equity > metrics_before.capital
        store_copy = Store(tmp_path / "data" / "rampart.db", readonly=True)
        assert store_copy.verify_audit().ok
        store_copy.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        gateway.kill()
        gateway.wait(30)


def test_unreadable_deployment_state_starts_everything_halted(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """Fail closed: a stored deployment that cannot be read halts every algorithm."""
    config = parse_config(CONFIG.format(data_dir=tmp_path / "data", algo=ALGO).encode())
    (tmp_path / "data").mkdir()
    with Store(tmp_path / "data" / "rampart.db") as store:
        store.put("deployment/canary-test", b'{"document": {"strategy": "Nope"}}')

    async def scenario() -> None:
        daemon = Daemon(config, servers=[server.url])
        await daemon.start()
        try:
            assert daemon.deployment_error is not None
            assert "deployment/canary-test" in daemon.deployment_error
            assert daemon.guard is not None and set(daemon.guard.halted) == {ALGO}
            reason = daemon.status().daemon.halted[0].reason
            assert reason.startswith("fail closed: unreadable deployment state")
        finally:
            await daemon.close()

    asyncio.run(scenario())


def test_killed_between_storing_a_transition_and_carrying_it_out(
    server: EmbeddedNatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL mid-transition: the stage change is stored but its new allocation never reached
    the gateway. After a restart the daemon reconciles: the gateway gets the stored allocation."""
    cfg = tmp_path / "rampart.toml"
    cfg.write_text(CONFIG.format(data_dir=tmp_path / "data", algo=ALGO))
    (tmp_path / "url").write_text(server.url)
    monkeypatch.setenv("RAMPART_NATS_URL", server.url)
    feed = events(3)

    async def scenario() -> None:
        gw_nc = await nats.connect(server.url)
        gw = ReferenceGateway(
            gw_nc,
            "gw1",
            [HostedAlgo(ALGO, "ES", Momentum(), active=False)],
            deadman_timeout=3600,
            trusted_keys=rampart_keys(tmp_path / "data"),
        )
        await gw.start()
        nc = await nats.connect(server.url)
        # the 2nd stored transition is Micro -> Small: die right after storing it
        monkeypatch.setenv("RAMPART_FAILPOINT", "after_persist:2")
        proc = _start(cfg, server.url)
        monkeypatch.delenv("RAMPART_FAILPOINT")
        try:
            await asyncio.to_thread(_wait_up, cfg, proc)
            await nc.publish(subject_of(feed[0]), feed[0])
            await nc.flush()
            dep = tmp_path / "canary.json"
            dep.write_text(json.dumps(CANARY))
            code = await asyncio.to_thread(
                subprocess.call,
                [sys.executable, "-m", "rampart", "deploy", str(dep), "--config", str(cfg)],
            )
            assert code == 0
            await until(lambda: gw.algos[ALGO].allocation == 0.01)
            for m in feed[1:]:
                await nc.publish(subject_of(m), m)
            await nc.flush()
            await asyncio.to_thread(proc.wait, 30)
            assert proc.returncode == -signal.SIGKILL
            assert gw.algos[ALGO].allocation == 0.01, "the Small allocation was never sent"
            proc = _start(cfg, server.url)
            await asyncio.to_thread(_wait_up, cfg, proc)
            state = (await asyncio.to_thread(_status, cfg)).deployments[0]
            assert (state.phase, state.stage, state.allocation) == ("canary", 1, 0.05)
            await until(lambda: gw.algos[ALGO].allocation == 0.05)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(proc.wait, 30)
            await nc.close()
            await gw.close()
            await gw_nc.close()

    asyncio.run(scenario())
