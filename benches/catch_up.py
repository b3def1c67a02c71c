"""A standby catching up with its shard's state stream (docs/ha.md): a leader's store writes N
transactions through a real nats-server (JetStream, file storage in a temp dir); then fresh
stores catch up, alternately the way standbys read before (one ``get_msg`` request and one
commit per message) and as they read now (an ordered consumer, 256 transactions to a commit).
Both must end equal to the leader's store; the ratio is old / new per round, in one run.

Run: ``.venv/bin/python benches/catch_up.py [--messages 10000] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import nats

from rampart import state_stream
from rampart.embedded import EmbeddedNatsServer
from rampart.state_stream import StateStream
from rampart.store import Store


async def catch_up(url: str, store: Store, old: bool) -> float:
    """Seconds for a fresh store to catch up, reading the old way or the new."""
    by_request, batch = state_stream.READ_BY_REQUEST, state_stream.APPLY_BATCH
    if old:
        state_stream.READ_BY_REQUEST, state_stream.APPLY_BATCH = 10**12, 1
    nc = await nats.connect(url)
    try:
        t = time.perf_counter()
        await StateStream(nc, "rampart", "bench").catch_up(store)
        return time.perf_counter() - t
    finally:
        state_stream.READ_BY_REQUEST, state_stream.APPLY_BATCH = by_request, batch
        await nc.close()


async def main(url: str, tmp: Path, messages: int, rounds: int) -> None:
    nc = await nats.connect(url)
    leader_store = Store(tmp / "leader.db")
    leader = StateStream(nc, "rampart", "bench")
    await leader.ensure()
    leader_store.replicator = leader.replicator(lambda: True, asyncio.get_running_loop())

    def writes() -> None:  # the mix of a busy shard: intents, checkpoints, audit records
        for i in range(messages):
            algo = f"algo-{i % 50}"
            if i % 3 == 0:
                leader_store.append_audit("note", {"i": i}, actor="bench", ts=i + 1)
            elif i % 3 == 1:
                leader_store.put(f"intent/{algo}", b"x" * 100)
            else:
                leader_store.put(f"checkpoint/{algo}", bytes([i % 256]) * 2_000)

    t = time.perf_counter()
    await asyncio.to_thread(writes)
    print(f"leader: {messages} transactions written in {time.perf_counter() - t:.2f}s")
    ratios = []
    for r in range(rounds):
        took = {}
        for old in (True, False) if r % 2 == 0 else (False, True):
            store = Store(tmp / f"standby-{r}-{old}.db")
            took[old] = await catch_up(url, store, old)
            assert store.replicated_seq() == leader.last, "caught up to the leader's last"
            assert store.audit_head() == leader_store.audit_head() and store.verify_audit().ok
            assert store.items("checkpoint/") == leader_store.items("checkpoint/")
            store.close()
        ratios.append(took[True] / took[False])
        print(
            f"round {r + 1}: one request per message {took[True]:.2f}s "
            f"({took[True] / messages * 1e3:.3f} ms/msg), ordered consumer "
            f"{took[False]:.2f}s ({took[False] / messages * 1e3:.3f} ms/msg): "
            f"{ratios[-1]:.1f}x"
        )
    print(f"old / new, median of {rounds} rounds: {statistics.median(ratios):.1f}x")
    leader_store.close()
    await nc.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        server = EmbeddedNatsServer(store_dir=Path(d) / "nats")
        url = server.start()
        try:
            asyncio.run(main(url, Path(d), args.messages, args.rounds))
        finally:
            server.stop()
