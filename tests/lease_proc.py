"""A lease contender in its own process (tests/test_lease.py): kill -9 and SIGSTOP from outside.

    python tests/lease_proc.py URLS(comma-separated) SHARD ME LOG [--ttl S]

Appends to LOG one JSON line per moment it may act as leader: {"me", "term", "at": monotonic ns
it checked, "until": monotonic ns its lease runs to}, every 10 ms while it leads. CLOCK_MONOTONIC is
one clock for every process on the host, so the test can check that no two processes' claims
overlap. SIGTERM stops it (giving the lease back).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time

import nats

from rampart.lease import LeaseKeeper, lease_bucket


async def main(urls: str, shard: str, me: str, log_path: str, ttl: float) -> None:
    nc = await nats.connect(
        servers=urls.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.1
    )
    js = nc.jetstream(timeout=2.0)
    kv = None
    while kv is None:  # the cluster elects its meta leader first
        try:
            kv = await lease_bucket(js, replicas=3)
        except Exception:
            await asyncio.sleep(0.1)
    keeper = LeaseKeeper(kv, shard, me, ttl=ttl, renew=ttl / 4, poll=min(0.1, ttl / 10))
    keeper.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    with open(log_path, "a") as log:
        while not stop.is_set():
            now = time.monotonic_ns()
            if keeper.is_leader():
                until = keeper.machine.valid_until
                log.write(
                    json.dumps({"me": me, "term": keeper.term, "at": now, "until": until}) + "\n"
                )
                log.flush()
            try:
                await asyncio.wait_for(stop.wait(), 0.01)
            except TimeoutError:
                pass
    await keeper.close()
    await nc.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("urls")
    p.add_argument("shard")
    p.add_argument("me")
    p.add_argument("log")
    p.add_argument("--ttl", type=float, default=1.0)
    a = p.parse_args()
    asyncio.run(main(a.urls, a.shard, a.me, a.log, a.ttl))
