"""Fills exactly once across crashes (issue 10), with faults injected from outside: a gateway
process emits fills continuously through the SDK's outbox onto the events stream, while the test
kills the daemon (`rampart run`, its own process) with SIGKILL at random moments and restarts it
after a random pause, so fills arrive while it is down. Once the gateway has every fill acked and
the daemon has caught up, the daemon's positions, realized PnL and fill counts must equal, exactly
(bit for bit), a fresh engine fed every fill once in stream order; and the stream must hold every
fill the gateway emitted, once."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from pathlib import Path
from typing import Any, cast

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy
from support import eventually, spawn

from rampart.config import parse_config
from rampart.embedded import EmbeddedNatsServer
from rampart.gateway.outbox import EVENT_SEQ
from rampart.protocol import AlgoStatus, Subjects, status_reply_decoder

SUBJ = Subjects()
PUBLISHER = str(Path(__file__).with_name("fill_publisher.py"))
KILLS = 32

CONFIG = """
data_dir = "{data_dir}"
heartbeat_interval = "PT0.1S"
checkpoint_interval = "PT0.2S"

[triggers]
gateway_heartbeat_timeout = "PT1H"
market_data_timeout = "PT1H"
nats_disconnect = false

[[algorithms]]
id = "alpha"
version = "1"
gateway = "gw1"
capital = 100000000

[[algorithms]]
id = "beta"
version = "1"
gateway = "gw1"
capital = 100000000
"""


async def until(cond: Any, timeout: float = 30.0, what: str = "") -> None:
    await eventually(cond, timeout, what)


async def statuses(nc: Client) -> dict[str, AlgoStatus] | None:
    try:
        reply = await nc.request(SUBJ.status("algorithms"), b"", timeout=1)
    except Exception:
        return None
    st = status_reply_decoder.decode(reply.data)
    return {a.algo_id: a for a in st.algorithms}


async def stream_messages(nc: Client, name: str) -> list[tuple[str, bytes, str]]:
    """(subject, data, Rampart-Seq) of every message in the stream, in order."""
    js = nc.jetstream()
    info = await js.stream_info(name)
    out: list[tuple[str, bytes, str]] = []
    done = asyncio.Event()

    async def cb(msg: Any) -> None:
        out.append((msg.subject, msg.data, (msg.headers or {}).get(EVENT_SEQ, "")))
        if len(out) >= info.state.messages:
            done.set()

    sub = await js.subscribe(
        "",
        stream=name,
        cb=cb,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    if info.state.messages:
        await asyncio.wait_for(done.wait(), 30)
    await sub.unsubscribe()
    return out


def is_batch(subject: str) -> bool:
    return subject.startswith(SUBJ.batch(""))


def events_of(subject: str, data: bytes) -> list[dict[str, Any]]:
    """The events a stream message carries: one, or a batch's."""
    decoded = msgspec.json.decode(data)
    return cast(list[dict[str, Any]], decoded if is_batch(subject) else [decoded])


def event_ids(subject: str, data: bytes, seq: str) -> list[str]:
    """``<boot>.<n>`` of each event in a message (its Rampart-Seq: ``<boot>.<n>``, or
    ``<boot>.<first>-<last>`` for a batch, which must hold exactly that many events)."""
    boot, _, numbers = seq.rpartition(".")
    first, _, last = numbers.partition("-")
    ids = [f"{boot}.{n}" for n in range(int(first), int(last or first) + 1)]
    assert len(ids) == len(events_of(subject, data)), (seq, subject)
    return ids


@pytest.mark.timeout(600)
def test_kill_9_at_32_moments_while_fills_flow_loses_and_doubles_nothing(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    cfg_path = tmp_path / "rampart.toml"
    cfg_text = CONFIG.format(data_dir=tmp_path / "data")
    cfg_path.write_text(cfg_text)
    config = parse_config(cfg_text.encode())
    ledger = tmp_path / "ledger.jsonl"
    rng = random.Random()

    procs: list[asyncio.subprocess.Process] = []

    async def scenario() -> None:
        try:
            await body()
        finally:  # whatever failed: no process outlives the test
            for proc in procs:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGKILL)
                    await proc.wait()

    async def body() -> None:
        nc = await nats.connect(server.url)
        drift_alerts: list[bytes] = []

        async def on_alert(msg: Any) -> None:
            if b"position" in msg.data:
                drift_alerts.append(msg.data)

        await nc.subscribe(SUBJ.prefix + ".alert.>", cb=on_alert)
        run = ("-m", "rampart", "run", "--config", str(cfg_path), "--servers", server.url)
        daemon = await spawn(*run, log=tmp_path / "daemon.log")
        procs.append(daemon)
        await until(lambda: statuses(nc), what="the daemon answers status")
        publisher = await spawn(
            PUBLISHER, server.url, "gw1", "alpha,beta", str(ledger),
            "--rate", "300", "--burst", "4",
            log=tmp_path / "publisher.log",
        )  # fmt: skip
        procs.append(publisher)
        kills_while_catching_up = 0
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(0.0, 0.4))  # up (possibly still catching up)
            daemon.send_signal(signal.SIGKILL)
            await daemon.wait()
            await asyncio.sleep(rng.uniform(0.0, 0.3))  # down: fills keep arriving
            daemon = await spawn(*run, log=tmp_path / "daemon.log")
            procs.append(daemon)
            if rng.random() < 0.5:  # sometimes kill it again before it answers status
                kills_while_catching_up += 1
                continue
            await until(lambda: statuses(nc), what="the daemon answers status after a restart")
        await until(lambda: statuses(nc), what="the daemon answers status")
        publisher.send_signal(signal.SIGTERM)
        done_file = Path(str(ledger) + ".done")
        await until(done_file.exists, timeout=90, what="the publisher delivered every fill")
        done = json.loads(done_file.read_text())
        assert done["delivered"] and done["pending"] == 0, done
        emitted = [json.loads(line) for line in ledger.read_text().splitlines()]
        assert len(emitted) == done["emitted"] > 500

        # the stream holds every emitted fill, once
        stream = config.events.stream_name(config.subject_prefix)
        messages = await stream_messages(nc, stream)
        ids = [i for m in messages for i in event_ids(*m)]
        assert len(ids) == len(set(ids)), "a fill is in the stream twice"
        assert set(ids) == {e["id"] for e in emitted}, "a fill never reached the stream"
        batches = sum(is_batch(m[0]) for m in messages)
        assert batches > 0, "the outbox sent no batch: the test would not cover them"

        # the reference: a fresh engine fed every fill once, in stream order
        reference = config.engine()
        wall = time.time_ns()
        for subject, data, _ in messages:
            if is_batch(subject):
                assert not reference.ingest_batch(subject, data, wall).errors
            else:
                reference.ingest_msg(subject, data, wall)
        want = {a: reference.snapshot(a) for a in ("alpha", "beta")}
        total = sum(s.fills for s in want.values())
        assert total == len(emitted)

        async def caught_up() -> bool:
            got = await statuses(nc)
            return got is not None and sum(got[a].fills for a in want) >= total

        await until(caught_up, what="the daemon applied every fill")
        got = await statuses(nc)
        assert got is not None
        for algo, snap in want.items():
            st = got[algo]
            assert st.fills == snap.fills, (algo, st.fills, snap.fills)
            assert st.realized_pnl == snap.realized_pnl, algo
            assert st.fees == snap.fees, algo
            positions = {p.symbol: (p.qty, p.avg_cost, p.realized_pnl) for p in st.positions}
            ref = cast(list[dict[str, Any]], snap.to_dict()["positions"])
            assert positions == {
                p["symbol"]: (p["qty"], p["avg_cost"], p["realized_pnl"]) for p in ref
            }

        # the gateway's own positions, as it reports them, agree with Rampart's: checked after
        # the last fill, and no drift was ever seen across the kills
        async def positions_checked() -> bool:
            got = await statuses(nc)
            return got is not None and all(
                (c := got[a].position_check) is not None
                and c.in_sync
                and (c.checked_at or 0) > stopped
                for a in want
            )

        stopped = time.time_ns()
        await until(positions_checked, what="the gateway's positions compared after the end")
        assert not drift_alerts, drift_alerts
        publisher.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(publisher.wait(), 30) == 0
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 30) == 0
        await nc.close()
        print(
            f"{KILLS} kills ({kills_while_catching_up} before status answered), "
            f"{len(emitted)} fills in {len(messages)} messages ({batches} batches), "
            f"{done['duplicates']} retried duplicates"
        )

    asyncio.run(scenario())


def test_a_gateway_outbox_keeps_fills_while_nats_is_away(tmp_path: Path) -> None:
    """The outbox publishes what was put while the server was down, once it is back, in
    order, each once."""
    from rampart.gateway.outbox import Outbox
    from rampart.protocol import Fill

    async def scenario() -> None:
        srv = EmbeddedNatsServer(store_dir=tmp_path / "js")
        url = srv.start()
        port = srv.port
        nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.05)
        js = nc.jetstream()
        await js.add_stream(
            name="ev", subjects=[SUBJ.fills_all, SUBJ.batch_all], duplicate_window=60
        )
        box = Outbox(nc, "gw1", ack_timeout=0.5, retry_interval=0.05)
        box.start()
        fills = [
            Fill(algo="a", symbol="S", side="buy", qty=1.0, price=10.0 + i, ts=i + 1)
            for i in range(300)
        ]
        for f in fills[:100]:
            box.fill(f)
        assert await box.flush(10)
        srv.stop()
        for f in fills[100:]:
            box.fill(f)  # NATS is away: they wait
        await asyncio.sleep(0.3)
        assert box.pending > 0
        srv = EmbeddedNatsServer(store_dir=tmp_path / "js", port=port)
        srv.start()
        assert await box.flush(20), f"{box.pending} still pending"
        msgs = await stream_messages(nc, "ev")
        prices = [e["price"] for m in msgs for e in events_of(m[0], m[1])]
        assert prices == [f.price for f in fills]
        # what waited went out in batches, each once
        assert box.batches > 0 and len(msgs) < len(fills)
        assert box.published == len(fills)
        await box.close()
        await nc.close()
        srv.stop()

    asyncio.run(scenario())
