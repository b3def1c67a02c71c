"""Every rollback trigger end to end: the daemon, the reference gateway and a real nats-server."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from support import rampart_keys, until

from rampart._core import SigningKey
from rampart.config import DaemonConfig, parse_config
from rampart.daemon import STORE_FILE, Daemon
from rampart.durability import audit_verify_main
from rampart.embedded import EmbeddedNatsServer
from rampart.gateway.reference import HostedAlgo, Momentum, ReferenceGateway
from rampart.protocol import (
    Fill,
    Health,
    OrderEvent,
    Quote,
    Subjects,
    alert_decoder,
    encoder,
)
from rampart.signing import write_private
from rampart.store import Store

SUBJ = Subjects()
SEC = 1_000_000_000

CONFIG = """
name = "rampart-test"
data_dir = "{data_dir}"
heartbeat_interval = "PT0.05S"

[nats]
ping_interval = "PT0.2S"
reconnect_time_wait = "PT0.05S"

[triggers]
check_interval = "PT0.02S"
gateway_heartbeat_timeout = {gw_timeout}
market_data_timeout = {md_timeout}
nats_disconnect = {nats_disconnect}

[[algorithms]]
id = "mom-v1"
version = "1.0.0"
gateway = "gw1"
capital = 100000

[[algorithms]]
id = "mom-v2"
version = "2.0.0"
gateway = "gw1"
capital = 100000
previous_version = "mom-v1"
limits = {{ max_drawdown = 0.05, max_daily_loss = 0.02, max_error_rate = 0.2 }}
metrics = {{ error_min_orders = 10 }}
"""


def make_config(
    tmp_path: Path,
    gw_timeout: str = '"PT1H"',
    md_timeout: str = '"PT1H"',
    nats_disconnect: str = "false",
) -> DaemonConfig:
    text = CONFIG.format(
        data_dir=tmp_path / "data",
        gw_timeout=gw_timeout,
        md_timeout=md_timeout,
        nats_disconnect=nats_disconnect,
    )
    return parse_config(text.encode())


@dataclass
class World:
    daemon: Daemon
    gateway: ReferenceGateway
    feed: Client  # the test's own connection: market data, fills, order events

    async def send(self, subject: str, msg: msgspec.Struct) -> None:
        await self.feed.publish(subject, encoder.encode(msg))
        await self.feed.flush()

    def v1(self) -> HostedAlgo:
        return self.gateway.algos["mom-v1"]

    def v2(self) -> HostedAlgo:
        return self.gateway.algos["mom-v2"]

    async def rolled_back(self, algo: str = "mom-v2") -> None:
        guard = self.daemon.guard
        assert guard is not None
        await until(lambda: algo in guard.halted and not guard.in_flight)
        await until(lambda: any(algo in r.algos for r in guard.recent))


@asynccontextmanager
async def world(
    config: DaemonConfig, url: str, *, heartbeat_interval: float = 0.05
) -> AsyncIterator[World]:
    daemon = Daemon(config, servers=[url])
    await daemon.start()
    gw_nc = await nats.connect(url, reconnect_time_wait=0.05, max_reconnect_attempts=-1)
    gateway = ReferenceGateway(
        gw_nc,
        "gw1",
        [
            HostedAlgo("mom-v1", "ESZ5", Momentum(lot=2), allocation=1.0, active=False),
            HostedAlgo("mom-v2", "ESZ5", Momentum(lot=40, sign=-1), allocation=1.0, active=True),
        ],
        heartbeat_interval=heartbeat_interval,
        deadman_timeout=3600,
        trusted_keys=rampart_keys(config.data_dir),
    )
    await gateway.start()
    feed = await nats.connect(url, reconnect_time_wait=0.05, max_reconnect_attempts=-1)
    try:
        await until(lambda: "gw1" in daemon.gateways)
        yield World(daemon, gateway, feed)
    finally:
        await feed.close()
        await gateway.close()
        await gw_nc.close()
        await daemon.close()


def assert_rolled_back_to_v1(w: World) -> None:
    assert w.v2().halted and w.v2().allocation == 0.0
    assert w.gateway.venue.open_orders("mom-v2") == []
    assert w.v1().active and not w.v1().halted


def test_a_drawdown_breach_rolls_back_end_to_end(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        config = make_config(tmp_path)
        async with world(config, server.url) as w:
            alerts: list[bytes] = []

            async def on_alert(msg: Msg) -> None:
                alerts.append(msg.data)

            await w.feed.subscribe(f"{SUBJ.prefix}.alert.>", cb=on_alert)
            now = time.time_ns()
            fill = Fill(algo="mom-v2", symbol="ESZ5", side="buy", qty=10, price=6000.0, ts=now)
            await w.send(SUBJ.fills("gw1", "mom-v2"), fill)
            # 10 x -600 = -6,000 on 100,000: drawdown 6% > 5%, and daily loss 6% > 2%
            await w.send(SUBJ.market("ESZ5"), Quote(symbol="ESZ5", bid=5400, ask=5400, ts=now + 1))
            await w.rolled_back()
            assert_rolled_back_to_v1(w)
            record = w.daemon.guard.recent[0]  # type: ignore[union-attr]
            assert record.trigger.startswith("limit:") and record.state == "succeeded"
            assert {s.name for s in record.steps} == {
                "halt",
                "cancel",
                "allocate",
                "activate",
                "total",
            }
            await until(lambda: bool(alerts))
            alert = alert_decoder.decode(alerts[0])
            assert alert.severity == "critical" and "mom-v2" in alert.algos
            # durable: the latch and the record are in the store, and the audit chain verifies
            await until(lambda: bool(w.daemon.store and w.daemon.store.audit()))
            store = w.daemon.store
            assert store is not None and store.is_halted("mom-v2")
            assert store.rollbacks("mom-v2")[0].rollback_id == record.rollback_id
            assert store.verify_audit().ok
        db = tmp_path / "data" / STORE_FILE
        assert audit_verify_main(str(db)) == 0

    asyncio.run(scenario())


def test_a_breachs_halt_is_on_the_socket_before_anything_else_runs(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """Issue 15: the halt leaves from the ingest callback's own step, already signed, before the
    rollback's task, the breach's log line and event, or any later breach listener; the
    rollback waits for that halt's ack instead of sending another."""

    async def scenario() -> None:
        # a slow machine must not make the rollback request the halt again (one attempt: 2 s)
        config = msgspec.structs.replace(
            make_config(tmp_path),
            rollback=msgspec.structs.replace(
                make_config(tmp_path).rollback,
                attempt_timeout=timedelta(seconds=2),
                halt_deadline=timedelta(seconds=5),
            ),
        )
        async with world(config, server.url) as w:
            daemon, guard = w.daemon, w.daemon.guard
            assert guard is not None and daemon.nc is not None
            nc = daemon.nc
            seen: list[tuple[int, int, bool]] = []

            def after_guard(breaches: object) -> None:
                # nats-py's own buffer of commands not yet written to the socket (no public API)
                seen.append(
                    (nc._pending_data_size, guard.executor.fired_used, "mom-v2" in guard.in_flight)
                )

            daemon.breach_listeners.append(after_guard)
            commands: list[Msg] = []

            async def on_command(msg: Msg) -> None:
                commands.append(msg)

            await w.feed.subscribe(SUBJ.command("gw1"), cb=on_command)
            now = time.time_ns()
            fill = Fill(algo="mom-v2", symbol="ESZ5", side="buy", qty=10, price=6000.0, ts=now)
            await w.send(SUBJ.fills("gw1", "mom-v2"), fill)
            await w.send(SUBJ.market("ESZ5"), Quote(symbol="ESZ5", bid=5400, ask=5400, ts=now + 1))
            await w.rolled_back()
            assert seen and seen[0] == (0, 1, True), (
                f"when the next listener ran: (bytes not yet written, halts fired, rolling back) "
                f"= {seen[0] if seen else None}"
            )
            record = guard.recent[0]
            halt = next(s for s in record.steps if s.name == "halt")
            assert record.state == "succeeded" and halt.status == "acked" and halt.attempts == 1
            # the first command on the wire is the fired halt (signed), applied by the gateway
            await until(lambda: len(commands) >= 2)
            first = msgspec.json.decode(commands[0].data)
            assert first["kind"] == "halt" and [t["algo"] for t in first["targets"]] == ["mom-v2"]
            assert commands[0].headers, "signed"
            control = w.gateway.agent.book.control("mom-v2")
            assert control.halt_epoch == first["epoch"]
            halts = [c for c in commands if msgspec.json.decode(c.data)["kind"] == "halt"]
            assert len(halts) == 1, "the rollback did not send its halt a second time"
            assert_rolled_back_to_v1(w)

    asyncio.run(scenario())


def test_a_release_resumes_with_its_own_epoch_and_never_lifts_a_newer_halt(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """The resume carries the epoch the release was decided with (a halt decided after it,
    with a newer epoch, beats it at the gateway in any order), and a rollback that starts
    while the release is being stored keeps its latch, in memory and in the store."""

    async def scenario() -> None:
        async with world(make_config(tmp_path), server.url) as w:
            guard = w.daemon.guard
            assert guard is not None and w.daemon.store is not None
            guard.trigger(("mom-v2",), "algo", "manual", "first", "op", force=True)
            await w.rolled_back()
            await guard.release(("mom-v2",), "op", "looked")
            control = w.gateway.agent.book.control("mom-v2")
            assert not control.halted
            assert control.epochs["halt"] == guard.executor._halt_floor["mom-v2"], (
                "the resume's epoch is the release's"
            )
            # halted again, then a release that a person's rollback overtakes while it is stored
            guard.trigger(("mom-v2",), "algo", "manual", "second", "op", force=True)
            await w.rolled_back()
            await until(lambda: not guard.in_flight)
            release = asyncio.ensure_future(guard.release(("mom-v2",), "op", "looked again"))
            await asyncio.sleep(0)  # the release runs up to its store write
            guard.trigger(("mom-v2",), "algo", "manual", "third", "op", force=True)
            with pytest.raises(RuntimeError, match="halted again while the release"):
                await release
            await until(lambda: not guard.in_flight)
            assert guard.halted["mom-v2"].reason == "third"
            assert w.daemon.store.is_halted("mom-v2"), "the store still has the latch"
            await until(lambda: w.v2().halted)
            await asyncio.sleep(0.2)  # nothing resumes it behind the scenes
            assert w.v2().halted and w.daemon.store.is_halted("mom-v2")

    asyncio.run(scenario())


def test_a_reject_storm_rolls_back(server: EmbeddedNatsServer, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(make_config(tmp_path), server.url) as w:
            now = time.time_ns()
            orders = SUBJ.orders("gw1", "mom-v2")
            for i in range(10):
                await w.send(orders, OrderEvent(algo="mom-v2", event="submitted", ts=now + i))
                if i % 3 == 0:
                    ev = OrderEvent(algo="mom-v2", event="rejected", reason="band", ts=now + i)
                    await w.send(orders, ev)
            await w.rolled_back()
            assert w.daemon.guard.recent[0].trigger == "limit:error_rate"  # type: ignore[union-attr]
            assert_rolled_back_to_v1(w)

    asyncio.run(scenario())


def test_an_unhealthy_gateway_rolls_back_its_algorithms(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with world(make_config(tmp_path), server.url) as w:
            down = Health(market_data=False, order_routing=True, risk_engine=True)
            w.gateway.health = lambda: down  # type: ignore[method-assign]
            await w.rolled_back("mom-v2")
            record = w.daemon.guard.recent[0]  # type: ignore[union-attr]
            assert record.trigger == "connectivity:gateway_unhealthy"
            assert record.scope == "gateway" and set(record.algos) == {"mom-v1", "mom-v2"}
            assert "market_data" in record.reason

    asyncio.run(scenario())


def test_a_stale_gateway_heartbeat_rolls_back(server: EmbeddedNatsServer, tmp_path: Path) -> None:
    async def scenario() -> None:
        config = make_config(tmp_path, gw_timeout='"PT0.3S"')
        async with world(config, server.url) as w:
            for task in list(w.gateway.agent._tasks):  # the gateway's heartbeat stops...
                if task.get_name().startswith("gateway-heartbeat"):
                    task.cancel()
            await w.rolled_back("mom-v2")  # ...while it still obeys commands
            record = w.daemon.guard.recent[0]  # type: ignore[union-attr]
            assert record.trigger == "connectivity:gateway_heartbeat"
            assert record.state == "succeeded"
            assert w.v2().halted

    asyncio.run(scenario())


def test_stale_market_data_on_a_held_symbol_rolls_back(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        config = make_config(tmp_path, md_timeout='"PT0.3S"')
        async with world(config, server.url) as w:
            now = time.time_ns()
            fill = Fill(algo="mom-v2", symbol="ESZ5", side="buy", qty=1, price=6000.0, ts=now)
            await w.send(SUBJ.fills("gw1", "mom-v2"), fill)
            await w.rolled_back("mom-v2")
            record = w.daemon.guard.recent[0]  # type: ignore[union-attr]
            assert record.trigger == "connectivity:market_data" and "ESZ5" in record.reason
            assert record.algos == ["mom-v2"], "mom-v1 holds nothing: it is left alone"

    asyncio.run(scenario())


def test_losing_the_nats_link_rolls_everything_back_after_reconnect(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        config = make_config(tmp_path, nats_disconnect="true")
        async with world(config, server.url) as w:
            port = server.port
            await asyncio.to_thread(server.stop)
            server.port = port
            await asyncio.to_thread(server.start)
            await w.rolled_back("mom-v2")
            record = w.daemon.guard.recent[0]  # type: ignore[union-attr]
            # on the wire path its market-data connection is found lost first, and that rolls
            # everything back at once; the main link's own trigger finds them rolled back
            wire = config.ingest.wire == "rust"
            expected = "connectivity:market-data" if wire else "connectivity:nats"
            assert record.trigger == expected and record.scope == "all", record
            assert w.v2().halted and w.v1().halted

    asyncio.run(scenario())


def test_manual_rollback_and_release_from_the_cli(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """Each verb signed with the operator's own key (`--key`); the audit log names the verified
    key's configured name and key, never a name the request carries."""
    keys = {name: SigningKey.generate() for name in ("alice", "bob")}
    for name, key in keys.items():
        write_private(tmp_path / f"{name}.nk", key.seed() + "\n")
    ops = "".join(
        f'\n[[control.operators]]\nname = "{name}@risk"\nkey = "{k.public_key}"\n'
        'role = "operator"\n'
        for name, k in keys.items()
    )
    base = make_config(tmp_path)
    config = msgspec.structs.replace(base, control=parse_config(ops.encode()).control)
    alice = f"alice@risk <{keys['alice'].public_key}>"
    bob = f"bob@risk <{keys['bob'].public_key}>"

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rampart",
            *args,
            "--servers",
            server.url,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def scenario() -> None:
        async with world(config, server.url) as w:
            code, _, err = await cli("rollback", "mom-v2", "--reason", "x")
            assert code == 2 and "--key" in err, "an operator must sign with their key"
            stranger = tmp_path / "stranger.nk"
            write_private(stranger, SigningKey.generate().seed() + "\n")
            code, _, err = await cli("rollback", "mom-v2", "--key", str(stranger))
            assert code == 1 and "does not know" in err
            assert not w.v2().halted
            code, out, err = await cli(
                "rollback", "mom-v2", "--key", str(tmp_path / "alice.nk"), "--reason", "report"
            )
            assert code == 0, err
            assert "rollback SUCCEEDED" in out and "halt" in out and alice in err
            assert_rolled_back_to_v1(w)
            record = w.daemon.guard.recent[0]  # type: ignore[union-attr]
            assert (record.trigger, record.actor) == ("manual", alice)
            code, _, err = await cli("rollback", "nope", "--key", str(tmp_path / "alice.nk"))
            assert code == 1 and "unknown algorithm 'nope'" in err
            code, _, err = await cli("release", "mom-v2", "--key", str(tmp_path / "bob.nk"))
            assert code == 1 and "reason" in err
            code, out, err = await cli(
                "release",
                "mom-v2",
                "--key",
                str(tmp_path / "bob.nk"),
                "--reason",
                "fixed and reviewed",
            )
            assert code == 0, err
            assert not w.v2().halted
            assert "mom-v2" not in w.daemon.guard.halted  # type: ignore[union-attr]
            store = w.daemon.store
            assert store is not None and not store.is_halted("mom-v2")
            kinds = [(r.kind, r.actor) for r in store.audit()]
            assert kinds == [("rollback", alice), ("release", bob)]

    asyncio.run(scenario())


def test_a_halted_algorithm_stays_halted_across_a_restart(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        config = make_config(tmp_path)
        async with world(config, server.url) as w:
            guard = w.daemon.guard
            assert guard is not None
            task = guard.trigger(("mom-v2",), "algo", "manual", "test", "alice", force=True)
            assert task is not None and (await task) is not None
        # a new daemon on the same state directory re-asserts the halt at start
        async with world(config, server.url) as w:
            assert "mom-v2" in w.daemon.guard.halted  # type: ignore[union-attr]
            await until(lambda: w.v2().halted)

    asyncio.run(scenario())


def test_an_unreadable_store_starts_with_everything_halted(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / STORE_FILE).write_bytes(b"this is not a database" * 100)

    async def scenario() -> None:
        async with world(config, server.url) as w:
            assert w.daemon.store_error is not None and "not a readable" in w.daemon.store_error
            assert set(w.daemon.guard.halted) == {"mom-v1", "mom-v2"}  # type: ignore[union-attr]
            await until(lambda: w.v1().halted and w.v2().halted)
            assert w.daemon.status().daemon.store_error == w.daemon.store_error

    asyncio.run(scenario())
    with pytest.raises(Exception, match="not a readable"):
        Store(data / STORE_FILE)
