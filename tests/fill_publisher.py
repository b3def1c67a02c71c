"""A gateway that only trades: it emits fills at a steady rate through the SDK's ``Outbox``, in
its own process, so fault tests can kill -9 Rampart around it.

    python tests/fill_publisher.py URL GATEWAY ALGO[,ALGO...] LEDGER [--rate N] [--burst K]

Every fill it emits is handed to the outbox (which batches what waits) and appended to LEDGER as
a JSON line (its ``<boot>.<n>`` and the fill). Every 0.1 s it sends a heartbeat with its
positions, as of its outbox's last event (docs/protocol.md, "Positions"), for Rampart to compare
with its own. On SIGTERM it stops emitting, waits until the outbox has every fill acked by the
stream, and writes ``LEDGER.done`` with its counters; it goes on sending heartbeats until a
second SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import time
from pathlib import Path

import msgspec
import nats
from nats.aio.client import Client

from rampart.gateway.outbox import Outbox
from rampart.protocol import (
    HEARTBEAT_VERSION,
    Fill,
    Health,
    HeartbeatFrame,
    PositionFrame,
    Subjects,
    encoder,
)


async def heartbeats(
    nc: Client, gateway: str, outbox: Outbox, positions: dict[str, dict[str, float]]
) -> None:
    subject = Subjects().heartbeat(gateway)
    while True:
        # positions and the outbox's last event in one step: no fill is put between them
        report = PositionFrame(algos=msgspec.Raw(encoder.encode(positions)), events=outbox.mark())
        hb = HeartbeatFrame(
            gateway=gateway,
            ts=time.time_ns(),
            health=Health(market_data=True, order_routing=True, risk_engine=True),
            algos=sorted(positions),
            interval_ms=100,
            positions=report,
            v=HEARTBEAT_VERSION,
        )
        if nc.is_connected:
            await nc.publish(subject, encoder.encode(hb))
        await asyncio.sleep(0.1)


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("gateway")
    p.add_argument("algos")
    p.add_argument("ledger", type=Path)
    p.add_argument("--rate", type=float, default=200.0, help="fills per second")
    p.add_argument("--burst", type=int, default=1, help="fills emitted back to back")
    args = p.parse_args()
    nc = await nats.connect(
        args.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1, connect_timeout=2
    )
    outbox = Outbox(nc, args.gateway, ack_timeout=1.0, retry_interval=0.1)
    outbox.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    rng = random.Random()
    algos = args.algos.split(",")
    price = {a: 100.0 for a in algos}
    positions: dict[str, dict[str, float]] = {a: {} for a in algos}
    beating = asyncio.ensure_future(heartbeats(nc, args.gateway, outbox, positions))
    emitted = 0
    with args.ledger.open("a") as ledger:
        while not stop.is_set():
            algo = rng.choice(algos)
            price[algo] = max(1.0, price[algo] * (1 + rng.gauss(0, 0.002)))
            fill = Fill(
                algo=algo,
                symbol=f"SYM-{algo}",
                side=rng.choice(["buy", "sell"]),
                qty=float(rng.randint(1, 5)),
                price=round(price[algo], 4),
                fee=0.25,
                ts=time.time_ns(),
            )
            held = positions[algo]
            signed = fill.qty if fill.side == "buy" else -fill.qty
            held[fill.symbol] = held.get(fill.symbol, 0.0) + signed
            event_id = outbox.fill(fill)
            line = {"id": event_id, "fill": msgspec.to_builtins(fill)}
            ledger.write(json.dumps(line) + "\n")
            ledger.flush()
            emitted += 1
            if emitted % args.burst == 0:  # a burst waits in the outbox: batches
                await asyncio.sleep(args.burst / args.rate)
    delivered = await outbox.flush(timeout=60)
    done = {
        "emitted": emitted,
        "published": outbox.published,
        "duplicates": outbox.duplicates,
        "failures": outbox.failures,
        "pending": outbox.pending,
        "delivered": delivered,
    }
    tmp = Path(str(args.ledger) + ".done.tmp")
    tmp.write_text(json.dumps(done))
    tmp.rename(str(args.ledger) + ".done")  # whole, or not there
    # heartbeats go on (positions final) until a second SIGTERM
    stop.clear()
    await stop.wait()
    beating.cancel()
    await outbox.close()
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
