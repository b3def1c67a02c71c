"""Hostile input on the bus, against the live daemon and a real nats-server (issue 11): bytes on
every subject, a future timestamp, a foreign algorithm's fill, an absurd price, a jump beyond the
price band, and a dragged clock in a checkpoint across a restart. The daemon stays up, every
message is accounted for, limits keep working and operators are alerted."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import nats.js.errors
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.aio.msg import Msg
from support import rampart_keys, until

from rampart.checkpoints import CHECKPOINT_KEY, MARKS_KEY
from rampart.config import DaemonConfig, parse_config
from rampart.daemon import STORE_FILE, Daemon
from rampart.deployment import decode_deployment
from rampart.embedded import EmbeddedNatsServer
from rampart.gateway.reference import HostedAlgo, Momentum, ReferenceGateway
from rampart.protocol import Alert, Subjects, alert_decoder
from rampart.store import Store

SUBJ = Subjects()
S = 1_000_000_000
YEAR = 365 * 86_400 * S

CONFIG = """
data_dir = "{data_dir}"
heartbeat_interval = "PT0.1S"
checkpoint_interval = "PT0.05S"

[ingest]
max_payload_bytes = 2048
price_band = 0.5
price_band_consecutive = 3

[triggers]
check_interval = "PT0.05S"
gateway_heartbeat_timeout = "PT1H"
market_data_timeout = "PT1H"
nats_disconnect = false

[[algorithms]]
id = "alpha"
version = "1"
gateway = "gw1"
capital = 100000
limits = {{ max_drawdown = 0.10 }}

[[algorithms]]
id = "beta"
version = "1"
gateway = "gw2"
capital = 100000
limits = {{ max_drawdown = 0.10 }}
"""

EVENT_SUBJECTS = (
    SUBJ.market("ES"),
    SUBJ.market("NQ"),
    SUBJ.fills("gw1", "alpha"),
    SUBJ.fills("gw1", "beta"),
    SUBJ.fills("gw2", "beta"),
    SUBJ.orders("gw1", "alpha"),
    SUBJ.orders("gw9", "ghost"),
    SUBJ.heartbeat("gw1"),
    SUBJ.heartbeat("gw9"),
)
# Subjects the daemon serves or that it must ignore: garbage there must not hurt either.
OTHER_SUBJECTS = (
    SUBJ.control("halt"),
    SUBJ.control("rollback"),
    SUBJ.control("release"),
    SUBJ.status("algorithm"),
    SUBJ.sidecar_heartbeat,
    SUBJ.command("gw1"),
)


def make_config(tmp_path: Path) -> DaemonConfig:
    return parse_config(CONFIG.format(data_dir=tmp_path / "data").encode())


def now_ns() -> int:
    return time.time_ns()


def ev(**fields: object) -> bytes:
    return json.dumps(fields).encode()


@asynccontextmanager
async def running(config: DaemonConfig, url: str) -> AsyncIterator[tuple[Daemon, Client]]:
    daemon = Daemon(config, servers=[url])
    await daemon.start()
    nc = await nats.connect(url)
    try:
        yield daemon, nc
    finally:
        await nc.close()
        await daemon.close()


async def collect_alerts(nc: Client) -> list[Alert]:
    alerts: list[Alert] = []

    async def on(msg: Msg) -> None:
        alerts.append(alert_decoder.decode(msg.data))

    await nc.subscribe(SUBJ.alert("*"), cb=on)
    await nc.flush()
    return alerts


def accounted(daemon: Daemon) -> int:
    s = daemon.stats
    return s.ingested + s.heartbeats + sum(s.rejected.values())


async def crash_trips_drawdown(daemon: Daemon, nc: Client, algo: str, gateway: str) -> None:
    """A 20% loss on a fresh symbol trips the algorithm's 10% drawdown limit, end to end."""
    t = now_ns()
    sym = f"CRASH{algo}"
    await nc.publish(SUBJ.market(sym), ev(type="quote", symbol=sym, bid=100, ask=100, ts=t))
    await nc.publish(
        SUBJ.fills(gateway, algo),
        ev(type="fill", algo=algo, symbol=sym, side="buy", qty=1000, price=100, ts=t + 1),
    )
    await nc.publish(SUBJ.market(sym), ev(type="quote", symbol=sym, bid=79, ask=79, ts=t + 2))
    await nc.flush()
    await until(lambda: "drawdown" in daemon.engine.snapshot(algo).breached)


settings_bus = settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings_bus
@given(
    garbage=st.lists(
        st.tuples(
            st.sampled_from(EVENT_SUBJECTS + OTHER_SUBJECTS),
            st.one_of(
                st.binary(max_size=3000),
                st.sampled_from(
                    [
                        b'{"type":"quote","symbol":"ES","bid":1e308,"ask":1e308,"ts":1}',
                        b'{"type":"fill","algo":"beta","symbol":"ES","side":"sell","qty":1e9,'
                        b'"price":1,"ts":1}',
                        b'{"type":"heartbeat","gateway":"gw1","ts":1}',
                        b'{"type":"mark","symbol":"ES","price":1,"ts":9223372036854775807}',
                        b'{"operator":"eve","target":"*"}',
                        b"\xff\xfe\x00",
                    ]
                ),
            ),
        ),
        min_size=50,
        max_size=300,
    )
)
def test_fuzz_bytes_on_every_subject_leave_the_daemon_up_and_everything_accounted_for(
    server: EmbeddedNatsServer, garbage: list[tuple[str, bytes]]
) -> None:
    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            async with running(make_config(Path(tmp)), server.url) as (daemon, nc):
                on_event = sum(1 for s, _ in garbage if s in EVENT_SUBJECTS)
                for subject, payload in garbage:
                    await nc.publish(subject, payload)
                await nc.flush()
                await until(lambda: accounted(daemon) >= on_event, timeout=30)
                # valid events keep flowing and are all counted
                before = daemon.stats.ingested
                t = now_ns()
                for i in range(20):
                    q = ev(type="quote", symbol="ES", bid=100 + i, ask=100 + i, ts=t + i)
                    await nc.publish(SUBJ.market("ES"), q)
                await nc.flush()
                await until(lambda: daemon.stats.ingested == before + 20)
                assert accounted(daemon) == on_event + 20
                # status still answers, and the limits still work
                reply = await nc.request(SUBJ.status("algorithms"), b"", timeout=5)
                assert b'"algorithms"' in reply.data
                await crash_trips_drawdown(daemon, nc, "alpha", "gw1")

    asyncio.run(scenario())


def test_one_future_timestamp_is_refused_alerted_and_does_not_freeze_ingest(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running(make_config(tmp_path), server.url) as (daemon, nc):
            alerts = await collect_alerts(nc)
            t = now_ns()
            for ahead in (3_600 * S, YEAR):
                q = ev(type="quote", symbol="IDLE", bid=1, ask=1, ts=t + ahead)
                await nc.publish(SUBJ.market("IDLE"), q)
            await nc.flush()
            await until(lambda: daemon.stats.rejected.get("future") == 2)
            now = daemon.engine.now
            assert now is None or now <= now_ns() + 5 * S
            await until(lambda: any(a.title.startswith("refused future") for a in alerts))
            # correct events after it are accepted; the drawdown limit still trips
            await crash_trips_drawdown(daemon, nc, "alpha", "gw1")

    asyncio.run(scenario())


def test_a_gateway_cannot_roll_back_another_gateways_algorithm(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running(make_config(tmp_path), server.url) as (daemon, nc):
            alerts = await collect_alerts(nc)
            t = now_ns()
            await nc.publish(
                SUBJ.market("ES"), ev(type="quote", symbol="ES", bid=100, ask=100, ts=t)
            )
            losing = ev(
                type="fill", algo="beta", symbol="ES", side="buy", qty=1000, price=200, ts=t + 1
            )
            await nc.publish(SUBJ.fills("gw1", "beta"), losing)  # gw1 forging gw2's algorithm
            await nc.publish(SUBJ.fills("gw1", "alpha"), losing)  # ...on its own algo's subject
            await nc.flush()
            await until(lambda: daemon.stats.rejected.get("wrong_gateway") == 2)
            snap = daemon.engine.snapshot("beta")
            assert snap.fills == 0 and not snap.breached
            assert daemon.guard is not None and "beta" not in daemon.guard.halted
            await until(
                lambda: any(a.severity == "critical" and "wrong_gateway" in a.title for a in alerts)
            )

    asyncio.run(scenario())


def test_a_batch_applies_its_own_events_and_dead_letters_the_rest_one_by_one(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """A gateway outbox's batch (``<p>.batch.<gateway>``, on the events stream): gw1 slipping
    gw2's algorithm into its batch gets that one event refused; its own are applied."""

    async def scenario() -> None:
        async with running(make_config(tmp_path), server.url) as (daemon, nc):
            dead: list[bytes] = []

            async def on_dead(msg: Msg) -> None:
                dead.append(msg.data)

            await nc.subscribe(SUBJ.dead_letter("wrong_gateway"), cb=on_dead)
            t = now_ns()
            fill = {"type": "fill", "symbol": "ES", "side": "buy", "price": 100.0, "fee": 0.0}
            batch = [
                {**fill, "algo": "alpha", "qty": 1.0, "ts": t},
                {**fill, "algo": "beta", "qty": 1000.0, "ts": t + 1},  # gw2's
                {**fill, "algo": "alpha", "qty": 2.0, "ts": t + 2},
            ]
            before = daemon.stats.ingested
            await nc.publish(SUBJ.batch("gw1"), json.dumps(batch).encode())
            await nc.publish(SUBJ.batch("gw1"), b'{"type": "fill"}')  # not a batch
            await nc.flush()
            await until(lambda: daemon.stats.rejected.get("wrong_gateway") == 1)
            await until(lambda: daemon.stats.rejected.get("decode") == 1)
            assert daemon.stats.ingested == before + 2
            # larger than ingest.max_batch_bytes: the stream itself refuses to store it
            with pytest.raises(nats.js.errors.BadRequestError, match="maximum"):
                await nc.jetstream().publish(SUBJ.batch("gw1"), b"[" + b" " * 300_000 + b"]")
            assert daemon.engine.snapshot("alpha").positions[0].qty == 3.0
            assert daemon.engine.snapshot("beta").fills == 0
            await until(lambda: len(dead) == 1)
            assert b"event 1 of the batch" in dead[0]

    asyncio.run(scenario())


def test_an_absurd_price_is_refused_and_status_keeps_working(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running(make_config(tmp_path), server.url) as (daemon, nc):
            t = now_ns()
            await nc.publish(
                SUBJ.market("ES"), ev(type="quote", symbol="ES", bid=100, ask=100, ts=t)
            )
            fill = ev(type="fill", algo="alpha", symbol="ES", side="buy", qty=1000, price=100, ts=t)
            await nc.publish(SUBJ.fills("gw1", "alpha"), fill)
            for p in (1e307, 1e308):
                q = ev(type="quote", symbol="ES", bid=p, ask=p, ts=t + 1)
                await nc.publish(SUBJ.market("ES"), q)
            await nc.flush()
            await until(lambda: daemon.stats.rejected.get("bad_price") == 2)
            reply = await nc.request(SUBJ.status("algorithms"), b"", timeout=5)
            assert b"alpha" in reply.data
            # a real 30% fall still trips the 10% drawdown
            q = ev(type="quote", symbol="ES", bid=70, ask=70, ts=t + 2)
            await nc.publish(SUBJ.market("ES"), q)
            await nc.flush()
            await until(lambda: "drawdown" in daemon.engine.snapshot("alpha").breached)

    asyncio.run(scenario())


def test_a_jump_beyond_the_price_band_is_refused_alerted_then_breaches_after_a_run(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running(make_config(tmp_path), server.url) as (daemon, nc):
            alerts = await collect_alerts(nc)
            t = now_ns()
            await nc.publish(
                SUBJ.market("ES"), ev(type="quote", symbol="ES", bid=100, ask=100, ts=t)
            )
            fill = ev(type="fill", algo="alpha", symbol="ES", side="buy", qty=1, price=100, ts=t)
            await nc.publish(SUBJ.fills("gw1", "alpha"), fill)
            for i in range(2):
                q = ev(type="quote", symbol="ES", bid=1000, ask=1000, ts=t + 1 + i)
                await nc.publish(SUBJ.market("ES"), q)
            await nc.flush()
            await until(lambda: daemon.stats.rejected.get("price_band") == 2)
            await until(lambda: any("price_band" in a.title for a in alerts))
            assert daemon.guard is not None and "alpha" not in daemon.guard.halted
            q = ev(type="quote", symbol="ES", bid=1000, ask=1000, ts=t + 3)
            await nc.publish(SUBJ.market("ES"), q)  # the third in a row: accepted, a breach
            await nc.flush()
            await until(lambda: daemon.guard is not None and "alpha" in daemon.guard.halted)

    asyncio.run(scenario())


def test_a_dragged_clock_in_a_checkpoint_is_reset_alerted_and_recorded_on_restart(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    config = make_config(tmp_path)

    async def first_run() -> None:
        async with running(config, server.url) as (daemon, nc):
            t = now_ns()
            fill = ev(type="fill", algo="alpha", symbol="ES", side="buy", qty=2, price=100, ts=t)
            await nc.publish(SUBJ.fills("gw1", "alpha"), fill)
            await nc.flush()
            await until(lambda: daemon.stats.ingested == 1)
            mark = daemon.checkpoint_at
            await until(lambda: daemon.checkpoint_at is not None and daemon.checkpoint_at != mark)

    asyncio.run(first_run())
    # An older build let one message stamped in 2100 drag the clock, and checkpointed it.
    store = Store(Path(config.data_dir) / STORE_FILE)
    key = CHECKPOINT_KEY + "alpha"
    doc = json.loads(dict(store.items(CHECKPOINT_KEY))[key])
    future = now_ns() + 75 * YEAR
    doc["now"] = future
    doc["algo"]["last_event_ts"] = future
    store.put(key, json.dumps(doc).encode())
    marks = store.get(MARKS_KEY)
    assert marks is not None, "the first run stored the symbols' marks"
    marks_doc = json.loads(marks)
    marks_doc["now"] = future
    store.put(MARKS_KEY, json.dumps(marks_doc).encode())
    store.close()

    async def second_run() -> None:
        daemon = Daemon(config, servers=[server.url])
        nc = await nats.connect(server.url)
        alerts = await collect_alerts(nc)
        await daemon.start()
        try:
            now = daemon.engine.now
            assert now is not None and now <= now_ns() + 5 * S, "the clock is not in 2100"
            assert daemon.engine.snapshot("alpha").positions[0].qty == 2.0, "positions kept"
            await until(lambda: any(a.title == "untrusted event clock reset" for a in alerts))
            alert = next(a for a in alerts if a.title == "untrusted event clock reset")
            assert alert.algos == ["alpha"] and "the marks of every symbol" in alert.detail
            assert daemon.store is not None
            record = next(r for r in daemon.store.audit() if r.kind == "clock_reset")
            assert record.payload["algos"] == ["alpha"]
            # events at the present flow again: one quote, published as soon as the daemon is up
            # (its subscriptions are at the server when start() returns: rampart.nats_flush; with
            # nats-py's bare flush this first quote was lost 1 run in ~20 on a loaded machine)
            # -- the quote itself, not a count of events: a restart may also replay the first
            # run's fill from the events stream, depending on its last stored cursor
            t = now_ns()
            await nc.publish(SUBJ.market("ES"), ev(type="quote", symbol="ES", bid=99, ask=99, ts=t))
            await nc.flush()
            try:
                await until(lambda: daemon.engine.last_quote_ts("ES") == t)
            except AssertionError:
                raise AssertionError(
                    f"the quote at the present was not applied: clock {daemon.engine.now}, quote "
                    f"{t}, last quote {daemon.engine.last_quote_ts('ES')}, ingested "
                    f"{daemon.stats.ingested}, refused {daemon.stats.rejected}, events seq "
                    f"{daemon.stats.events_seq}, failed {daemon.failed!r}, subscriptions "
                    f"(subject, delivered) {[(x.subject, x.delivered) for x in daemon._subs]}"
                ) from None
            assert not daemon.stats.rejected, daemon.stats.rejected
        finally:
            await nc.close()
            await daemon.close()

    asyncio.run(second_run())


CANARY_1H = {
    "deploymentId": "canary-1h",
    "strategy": "Canary",
    "algorithmId": "alpha",
    "environment": "Production",
    "configuration": {
        "totalCapital": 100000,
        "stages": [
            {"name": "Micro", "allocation": 0.01, "minDuration": "PT1H", "minPnL": 0},
            {"name": "Full", "allocation": 1.0, "minDuration": "PT1H", "minPnL": 0},
        ],
        "autoProgress": True,
        "rollbackThresholds": {"maxDailyLoss": 0.5, "maxDrawdown": 0.5},
    },
}


def test_a_future_stamp_cannot_satisfy_a_canary_stage(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """A canary with 1-hour stages: a quote stamped an hour (or a year) ahead, then correct
    quotes, must leave it in its first stage at 1% (only time that really passed counts)."""

    async def scenario() -> None:
        async with running(make_config(tmp_path), server.url) as (daemon, nc):
            gw_nc = await nats.connect(server.url)
            gw = ReferenceGateway(
                gw_nc,
                "gw1",
                [HostedAlgo("alpha", "ES", Momentum(), active=False)],
                deadman_timeout=3600,
                trusted_keys=rampart_keys(tmp_path / "data"),
            )
            await gw.start()
            try:
                t = now_ns()
                q = ev(type="quote", symbol="ES", bid=100, ask=100, ts=t)
                await nc.publish(SUBJ.market("ES"), q)
                await nc.flush()
                await until(lambda: daemon.stats.ingested == 1)
                state = await daemon.deploy(decode_deployment(json.dumps(CANARY_1H)), "alice")
                assert (state.stage, state.allocation) == (0, 0.01)
                for ahead in (3_600 * S + 1, YEAR):
                    far = ev(type="quote", symbol="IDLE", bid=1, ask=1, ts=now_ns() + ahead)
                    await nc.publish(SUBJ.market("IDLE"), far)
                for i in range(1, 6):  # correct quotes, each after a decision interval
                    q = ev(type="quote", symbol="ES", bid=100, ask=100, ts=now_ns() + i * S)
                    await nc.publish(SUBJ.market("ES"), q)
                await nc.flush()
                await until(lambda: daemon.stats.rejected.get("future") == 2)
                await until(lambda: daemon.stats.ingested == 6)
                await until(daemon.effects_idle)
                now = daemon.engine.now
                assert now is not None and now <= now_ns() + 5 * S
                stored = daemon.stored_states["canary-1h"]
                assert (stored.stage, stored.allocation) == (0, 0.01), stored
                assert daemon.runner.deployments["canary-1h"].state.stage == 0
            finally:
                await gw.close()
                await gw_nc.close()

    asyncio.run(scenario())


def test_a_subject_that_is_not_utf8_does_not_deafen_a_nats_py_connection(
    server: EmbeddedNatsServer,
) -> None:
    """Found from outside: one ``PUB rampart.hb.\\xff`` ended the read loop of every nats-py
    connection subscribed to it (the daemon's heartbeats, a reference gateway's market data):
    deaf until its PINGs timed out; so did a header block of exactly ``NATS/1.0`` (found in
    review). Importing rampart hardens nats-py: the message is dropped and counted, the next
    one is delivered."""
    from rampart import nats_hardening

    async def scenario() -> None:
        nc = await nats.connect(server.url)
        got: list[str] = []

        async def keep(msg: Msg) -> None:
            got.append(msg.subject)

        await nc.subscribe("rampart.hb.*", cb=keep)
        await nc.flush()
        before = nats_hardening.dropped
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"verbose":false,"headers":true}\r\n')
        writer.write(b"PUB rampart.hb.\xff 2\r\nhi\r\n")
        # a header block of exactly NATS/1.0 (IndexError in nats-py's header parsing)
        writer.write(b"HPUB rampart.hb.gw2 8 10\r\nNATS/1.0hi\r\n")
        writer.write(b"PUB rampart.hb.gw1 2\r\nok\r\nPING\r\n")
        await writer.drain()
        await reader.readline()  # PONG: the server took them all
        writer.close()
        await until(lambda: got == ["rampart.hb.gw1"])
        assert nats_hardening.dropped == before + 2
        assert nc.is_connected
        await nc.close()

    asyncio.run(scenario())
