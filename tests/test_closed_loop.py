"""The closed loop end to end (issue 9), with a real nats-server, the daemon and the reference
gateway: a gateway restarted inside the heartbeat timeout is halted again; a dead-man trip that
happened while Rampart was away becomes a latch that only an operator lifts; status shows intent,
actual and drift; a gateway speaking the old heartbeat is refused with a clear reason."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import nats
from nats.aio.client import Client
from support import live_config, rampart_keys, until

from rampart.config import DaemonConfig, parse_config
from rampart.daemon import Daemon
from rampart.embedded import EmbeddedNatsServer
from rampart.gateway.reference import HostedAlgo, Momentum, ReferenceGateway
from rampart.protocol import AlgoActual, Health, Heartbeat, Subjects, encoder

SUBJ = Subjects()

CONFIG = live_config([("alpha", "gw1"), ("beta", "gw1")])


def make_config(tmp_path: Path) -> DaemonConfig:
    return parse_config(CONFIG.format(data_dir=tmp_path / "data").encode())


@asynccontextmanager
async def daemon_up(config: DaemonConfig, url: str) -> AsyncIterator[Daemon]:
    daemon = Daemon(config, servers=[url])
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.close()


@asynccontextmanager
async def gateway_up(
    url: str, keys: list[str], deadman: float = 3600.0, heartbeat: float = 0.05
) -> AsyncIterator[ReferenceGateway]:
    nc = await nats.connect(url)
    gw = ReferenceGateway(
        nc,
        "gw1",
        [
            HostedAlgo("alpha", "ES", Momentum(), allocation=0.0, active=True),
            HostedAlgo("beta", "ES", Momentum(), allocation=0.0, active=True),
        ],
        heartbeat_interval=heartbeat,
        deadman_timeout=deadman,
        trusted_keys=keys,
    )
    await gw.start()
    try:
        yield gw
    finally:
        await gw.close()
        await nc.close()


def test_a_gateway_restarted_inside_the_heartbeat_timeout_is_halted_again(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with daemon_up(make_config(tmp_path), server.url) as daemon:
            guard = daemon.guard
            assert guard is not None
            async with gateway_up(server.url, rampart_keys(tmp_path / "data")) as gw:
                task = guard.trigger(["alpha"], "algo", "manual", "test", "alice", force=True)
                assert task is not None
                assert await task is not None
                await until(lambda: gw.agent.is_halted("alpha"))
            # restarted well inside the 1 h heartbeat timeout: it forgot the halt
            async with gateway_up(server.url, rampart_keys(tmp_path / "data")) as gw:
                await until(lambda: gw.agent.is_halted("alpha"), timeout=10)
                assert not gw.agent.is_halted("beta")
                status = daemon.status("alpha").algorithms[0].control
                await until(lambda: daemon.status("alpha").algorithms[0].control.in_sync)  # type: ignore[union-attr]
                status = daemon.status("alpha").algorithms[0].control
                assert status is not None and status.intent.halted and status.actual is not None
                assert status.actual.halted and status.actual.allocation == 0.0

    asyncio.run(scenario())


def test_what_a_rollback_had_acked_is_not_sent_again(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """The rollback's acked steps count as the gateway's state until its next report: the
    reconciler, planning at once after the rollback, finds nothing to send (it used to send
    the halt, allocation and activation a second time, on the halt's hot path)."""

    async def scenario() -> None:
        # heartbeats far apart: the plan after the rollback cannot have a fresh report
        cfg = CONFIG.format(data_dir=tmp_path / "data").replace('"PT0.05S"', '"PT1S"', 1)
        async with daemon_up(parse_config(cfg.encode()), server.url) as daemon:
            guard, rec = daemon.guard, daemon.reconciler
            assert guard is not None and rec is not None
            async with gateway_up(server.url, rampart_keys(tmp_path / "data"), heartbeat=2.0) as gw:
                await until(lambda: "gw1" in rec.actual)
                task = guard.trigger(["alpha"], "algo", "manual", "test", "alice", force=True)
                assert task is not None
                record = await task
                assert record is not None and record.state == "succeeded"
                await until(lambda: rec.control_status("alpha", "gw1").in_sync)
                await asyncio.sleep(0.2)  # the loop's plans after the rollback
                assert rec.sends == 0 and gw.agent.is_halted("alpha")

    asyncio.run(scenario())


def test_a_deadman_trip_while_rampart_was_away_becomes_a_latch_only_an_operator_lifts(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    config = make_config(tmp_path)

    async def scenario() -> None:
        async with gateway_up(server.url, rampart_keys(tmp_path / "data"), deadman=0.3) as gw:
            async with daemon_up(config, server.url) as daemon:
                await until(lambda: "gw1" in daemon.gateways)
                await until(lambda: gw.agent.deadman.last_seen is not None)
            # Rampart is away: the gateway's dead-man's switch halts everything
            await until(lambda: gw.agent.deadman.tripped, timeout=10)
            assert gw.agent.is_halted("alpha") and gw.agent.is_halted("beta")
            nc = await nats.connect(server.url)
            alerts: list[bytes] = []

            async def on_alert(msg: object) -> None:
                alerts.append(msg.data)  # type: ignore[attr-defined]

            await nc.subscribe(SUBJ.alert("critical"), cb=on_alert)
            async with daemon_up(config, server.url) as daemon:
                guard = daemon.guard
                assert guard is not None
                await until(lambda: {"alpha", "beta"} <= set(guard.halted))
                assert "deadman" in guard.halted["alpha"].reason
                await until(lambda: any(b"on its own" in a for a in alerts))
                assert daemon.store is not None
                assert any(r.kind == "adopted_halt" for r in daemon.store.audit())
                status = daemon.status("alpha").algorithms[0]
                assert status.halted
                # Rampart never lifts it by itself
                await asyncio.sleep(0.5)
                assert gw.agent.is_halted("alpha") and gw.agent.deadman.tripped
                # an operator does, and it holds (not adopted again from a stale report)
                await guard.release(("alpha", "beta"), "alice", "gateway checked")
                await until(lambda: not gw.agent.is_halted("alpha"))
                assert not gw.agent.deadman.tripped
                await asyncio.sleep(1.0)
                assert not gw.agent.is_halted("alpha") and not gw.agent.is_halted("beta")
                assert not guard.halted
                kinds = [r.kind for r in daemon.store.audit()]
                assert kinds.count("adopted_halt") == 1, kinds
            await nc.close()

    asyncio.run(scenario())


def test_an_adopted_halt_keeps_the_capital_the_gateway_cut(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """A gateway halts an algorithm and cuts its capital on its own (its risk check; or a
    rollback whose daemon died before storing it, docs/ha.md): Rampart adopts the halt and lowers
    its intent to the capital the gateway holds, so the algorithm is in sync, halted, and a
    release resumes it without raising its capital back."""
    config = make_config(tmp_path)

    async def scenario() -> None:
        async with daemon_up(config, server.url) as daemon:
            guard, rec, store = daemon.guard, daemon.reconciler, daemon.store
            assert guard is not None and rec is not None and store is not None
            async with gateway_up(server.url, rampart_keys(tmp_path / "data")) as gw:
                await until(lambda: "gw1" in rec.actual)
                intent = rec.wanted("alpha", allocation=0.25)
                store.put(*rec.item(intent))
                rec.remember([intent])
                book = gw.agent.book
                await until(lambda: book.control("alpha").allocation == 0.25)
                await until(lambda: rec.control_status("alpha", "gw1").in_sync)
                # the gateway, on its own: halted, and no capital
                book.halt_locally("alpha", "gateway")
                book.allocate_locally("alpha", 0.0)
                await until(lambda: "alpha" in guard.halted)
                await until(lambda: rec.control_status("alpha", "gw1").in_sync)
                assert rec.intent("alpha").allocation == 0.0 and rec.intent("alpha").halted
                assert store.get("intent/alpha") is not None
                assert msgspec.json.decode(store.get("intent/alpha") or b"{}")["allocation"] == 0
                await guard.release(("alpha",), "alice", "gateway checked")
                await until(lambda: not book.control("alpha").halted)
                await asyncio.sleep(0.3)  # the plans after the release: nothing raised
                assert book.control("alpha").allocation == 0.0
                assert rec.control_status("alpha", "gw1").in_sync

    asyncio.run(scenario())


def test_status_shows_intent_actual_and_drift(server: EmbeddedNatsServer, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with daemon_up(make_config(tmp_path), server.url) as daemon:
            control = daemon.status("alpha").algorithms[0].control
            assert control is not None and control.actual is None and not control.in_sync
            assert control.drift == "not reported by its gateway"
            async with gateway_up(server.url, rampart_keys(tmp_path / "data")):
                await until(lambda: daemon.status("alpha").algorithms[0].control.actual is not None)  # type: ignore[union-attr]
                control = daemon.status("alpha").algorithms[0].control
                assert control is not None and control.in_sync and control.drift is None

    asyncio.run(scenario())


def test_a_gateway_speaking_the_old_heartbeat_is_refused_with_a_clear_reason(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with daemon_up(make_config(tmp_path), server.url) as daemon:
            nc: Client = await nats.connect(server.url)
            health = Health(market_data=True, order_routing=True, risk_engine=True)
            old = Heartbeat(gateway="gw1", ts=1, health=health, v=1)
            await nc.publish(SUBJ.heartbeat("gw1"), encoder.encode(old))
            await nc.flush()
            await until(lambda: daemon.stats.rejected.get("unsupported_version") == 1)
            # one without a version at all is as old as it gets
            bare = msgspec.json.encode(
                {"type": "heartbeat", "gateway": "gw1", "ts": 1, "health": health}
            )
            await nc.publish(SUBJ.heartbeat("gw1"), bare)
            await nc.flush()
            await until(lambda: daemon.stats.rejected.get("unsupported_version") == 2)
            assert "gw1" not in daemon.gateways
            await nc.close()

    asyncio.run(scenario())


def test_a_heartbeat_state_is_read_when_it_changes_and_checked_when_it_is_read(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """The daemon decodes a heartbeat's state only when it differs from the gateway's last one:
    a repeat changes nothing, a change is seen at once, a malformed state is refused."""

    async def scenario() -> None:
        async with daemon_up(make_config(tmp_path), server.url) as daemon:
            rec = daemon.reconciler
            assert rec is not None
            nc: Client = await nats.connect(server.url)
            health = Health(market_data=True, order_routing=True, risk_engine=True)

            async def beat(state: list[AlgoActual], ts: int) -> None:
                hb = Heartbeat(gateway="gw1", ts=ts, health=health, state=state)
                await nc.publish(SUBJ.heartbeat("gw1"), encoder.encode(hb))
                await nc.flush()

            running = [AlgoActual(algo=a, halted=False) for a in ("alpha", "beta")]
            await beat(running, 1)
            await until(lambda: daemon.stats.heartbeats == 1)
            first = rec.actual["gw1"]
            await beat(running, 2)
            await until(lambda: daemon.stats.heartbeats == 2)
            assert rec.actual["gw1"] is first  # the same report: not decoded again
            halted = [AlgoActual(algo="alpha", halted=True, halt_cause="gateway"), running[1]]
            await beat(halted, 3)
            await until(lambda: daemon.stats.heartbeats == 3)
            assert rec.actual["gw1"]["alpha"].halted
            bad = msgspec.json.encode(
                {"type": "heartbeat", "gateway": "gw1", "ts": 4, "health": health, "v": 2,
                 "state": [{"algo": "alpha", "halted": "maybe"}]}
            )  # fmt: skip
            await nc.publish(SUBJ.heartbeat("gw1"), bad)
            await nc.flush()
            await until(lambda: daemon.stats.rejected.get("decode") == 1)
            assert daemon.stats.heartbeats == 3 and rec.actual["gw1"]["alpha"].halted
            await nc.close()

    asyncio.run(scenario())


def test_a_stage_counts_from_when_the_gateway_applied_it() -> None:
    """The runner holds a deployment whose algorithms are not in sync, restarting its stage
    timer, so `minDuration` counts from when the gateway did what was decided."""
    import json

    from rampart._core import AlgoConfig, Engine
    from rampart.deployment import decode_deployment
    from rampart.runner import DeploymentRunner

    s = 1_000_000_000
    t0 = 1_764_028_800 * s
    doc = decode_deployment(
        json.dumps(
            {
                "deploymentId": "c",
                "strategy": "Canary",
                "algorithmId": "alpha",
                "environment": "Production",
                "configuration": {
                    "totalCapital": 100000,
                    "stages": [
                        {"name": "Micro", "allocation": 0.01, "minDuration": "PT1M", "minPnL": 0},
                        {"name": "Full", "allocation": 1.0, "minDuration": "PT1M", "minPnL": 0},
                    ],
                    "autoProgress": True,
                    "rollbackThresholds": {"maxDailyLoss": 0.5, "maxDrawdown": 0.5},
                },
            }
        )
    )
    engine = Engine()
    engine.register(AlgoConfig("alpha", "1", 100_000.0))
    in_sync = {"alpha": False}
    runner = DeploymentRunner(engine, converged=in_sync.__getitem__)
    runner.deploy(doc, t0, "alice")
    for i in range(1, 121):  # two minutes while the gateway has not applied the stage
        engine.mark("ES", 100.0, t0 + i * s)
        runner.tick(t0 + i * s)
    state = runner.deployments["c"].state
    assert state.stage == 0 and state.stage_started_at == t0 + 120 * s
    in_sync["alpha"] = True
    for i in range(121, 200):
        engine.mark("ES", 100.0, t0 + i * s)
        runner.tick(t0 + i * s)
    state = runner.deployments["c"].state
    assert state.stage == 1, "a minute after the gateway applied it, the stage is done"
    assert state.stage_started_at >= t0 + 180 * s


def test_a_gateway_not_heard_yet_neither_holds_nor_advances_a_stage() -> None:
    """After a restart or a takeover (docs/ha.md) this process has not heard the gateway: the
    deployment neither advances nor restarts its stage timer (a failover does not restart a
    stage's minimum duration); once the gateway reports, it is judged as before."""
    import json

    from rampart._core import AlgoConfig, Engine
    from rampart.deployment import decode_deployment
    from rampart.runner import DeploymentRunner

    s = 1_000_000_000
    t0 = 1_764_028_800 * s
    stages = [
        {"name": "Micro", "allocation": 0.01, "minDuration": "PT1M", "minPnL": 0},
        {"name": "Full", "allocation": 1.0, "minDuration": "PT1H", "minPnL": 0},
    ]
    doc = decode_deployment(
        json.dumps(
            {
                "deploymentId": "c",
                "strategy": "Canary",
                "algorithmId": "alpha",
                "environment": "Production",
                "configuration": {"totalCapital": 100000, "stages": stages, "autoProgress": True},
            }
        )
    )
    engine = Engine()
    engine.register(AlgoConfig("alpha", "1", 100_000.0))
    heard = {"alpha": False}
    runner = DeploymentRunner(engine, converged=heard.__getitem__, reported=heard.__getitem__)
    runner.deploy(doc, t0, "alice")
    for i in range(1, 121):  # two minutes without a report: nothing moves
        engine.mark("ES", 100.0, t0 + i * s)
        runner.tick(t0 + i * s)
    state = runner.deployments["c"].state
    assert state.stage == 0 and state.stage_started_at == t0, "the timer kept, not restarted"
    heard["alpha"] = True  # the gateway reports, in sync: the minute is long done
    engine.mark("ES", 100.0, t0 + 121 * s)
    runner.tick(t0 + 121 * s)
    assert runner.deployments["c"].state.stage == 1


def test_a_held_deployment_still_rolls_back_on_its_thresholds() -> None:
    """Holding for the gateway never holds back safety: a canary whose gateway has not applied
    its stage still rolls back when its own thresholds are crossed."""
    import json

    from rampart._core import AlgoConfig, Engine
    from rampart.deployment import decode_deployment
    from rampart.runner import DeploymentRunner
    from rampart.strategies.base import RollbackAction

    s = 1_000_000_000
    t0 = 1_764_028_800 * s
    doc = decode_deployment(
        json.dumps(
            {
                "deploymentId": "c",
                "strategy": "Canary",
                "algorithmId": "alpha",
                "environment": "Production",
                "configuration": {
                    "totalCapital": 100000,
                    "stages": [
                        {"name": "Micro", "allocation": 1.0, "minDuration": "PT1H", "minPnL": 0},
                    ],
                    "autoProgress": True,
                    "rollbackThresholds": {"maxDailyLoss": 0.02, "maxDrawdown": 0.05},
                },
            }
        )
    )
    engine = Engine()
    engine.register(AlgoConfig("alpha", "1", 100_000.0))
    runner = DeploymentRunner(engine, converged=lambda _a: False)
    runner.deploy(doc, t0, "alice")
    engine.fill("alpha", "ES", 1_000.0, 100.0, 0.0, t0 + s)
    engine.mark("ES", 80.0, t0 + 2 * s)  # a 20% loss
    outcomes = runner.tick(t0 + 2 * s)
    assert any(isinstance(a, RollbackAction) for o in outcomes for a in o.decision.actions), (
        outcomes
    )
    assert runner.deployments["c"].state.phase == "rolled_back"


def test_a_gateway_hosting_1000_algorithms_is_heard_with_the_default_limits(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """A v2 heartbeat carries every hosted algorithm's state (~200 KB for 1,000): the default
    heartbeat limit must let it through, or Rampart would never see the gateway."""

    async def scenario() -> None:
        async with daemon_up(make_config(tmp_path), server.url) as daemon:
            nc = await nats.connect(server.url)
            health = Health(market_data=True, order_routing=True, risk_engine=True)
            names = [f"momentum-eu-{i:04d}.v2.1.0" for i in range(1000)]
            state = [
                AlgoActual(
                    algo=a,
                    halted=False,
                    allocation=0.25,
                    active=True,
                    epochs={"halt": 1796192910618415735, "allocation": 1796192910618415736},
                )
                for a in names
            ]
            hb = encoder.encode(
                Heartbeat(gateway="gw1", ts=1, health=health, algos=names, state=state)
            )
            assert len(hb) > 150_000
            await nc.publish(SUBJ.heartbeat("gw1"), hb)
            await nc.flush()
            await until(lambda: daemon.stats.heartbeats == 1)
            assert "gw1" in daemon.gateways and not daemon.stats.rejected
            await nc.close()

    asyncio.run(scenario())
