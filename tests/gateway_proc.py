"""A reference gateway in its own process, for fault tests that kill -9 and SIGSTOP from outside.

    python tests/gateway_proc.py URL GATEWAY ALGO[,ALGO...] LOG [--deadman S] [--stop-after-halt A]

Every command it applies is appended to LOG as a JSON line (wall time, kind, algo, allocation), so
a test can check afterwards what the gateway really did and in which order. SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import nats
from nats.aio.msg import Msg

from rampart.config import NatsConfig
from rampart.gateway.reference import HostedAlgo, Momentum, ReferenceGateway
from rampart.heap import freeze_startup_heap
from rampart.protocol import Subjects
from rampart.wire import WireMsg


class LoggingGateway(ReferenceGateway):
    log_path: Path
    stop_after_halt: str | None = None

    def _log(self, kind: str, algo: str, allocation: float | None = None) -> None:
        line = {
            "t": time.time_ns(),
            "mono": time.monotonic_ns(),
            "kind": kind,
            "algo": algo,
            "allocation": allocation,
        }
        with self.log_path.open("a") as f:
            f.write(json.dumps(line) + "\n")

    async def halt(self, algo: str) -> None:
        await super().halt(algo)
        self._log("halt", algo)
        if algo == self.stop_after_halt:
            self.stop_after_halt = None
            os.kill(os.getpid(), signal.SIGSTOP)  # stopped right here until the test's SIGCONT

    async def resume(self, algo: str) -> None:
        await super().resume(algo)
        self._log("resume", algo)

    async def set_allocation(self, algo: str, allocation: float) -> None:
        await super().set_allocation(algo, allocation)
        self._log("set_allocation", algo, allocation)

    async def activate(self, algo: str) -> None:
        await super().activate(algo)
        self._log("activate", algo)

    async def standby(self, algo: str) -> None:
        await super().standby(algo)
        self._log("standby", algo)


def log_ha(gw: LoggingGateway, path: Path) -> None:
    """The dead-man's switch tripping, and the first sidecar heartbeat of each leadership term
    (docs/ha.md), with CLOCK_MONOTONIC ("mono"): one clock for every process of the host."""

    def write(line: dict[str, object]) -> None:
        line = {"t": time.time_ns(), "mono": time.monotonic_ns(), **line}
        with path.open("a") as f:
            f.write(json.dumps(line) + "\n")

    gw.agent.deadman_listeners.append(lambda: write({"kind": "deadman"}))
    on_beat = gw.agent._on_sidecar_heartbeat
    seen = {"term": -1}

    async def logged_beat(msg: Msg | WireMsg, *, verified: bool = False) -> None:
        await on_beat(msg, verified=verified)
        term = gw.agent.book.term
        if term > seen["term"] and gw.agent.deadman.last_seen is not None:
            seen["term"] = term
            write({"kind": "term", "term": term})

    gw.agent._on_sidecar_heartbeat = logged_beat  # type: ignore[method-assign]


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("gateway")
    p.add_argument("algos")
    p.add_argument("log", type=Path)
    p.add_argument("--deadman", type=float, default=3.0)
    p.add_argument("--prefix", default="rampart", help="Rampart's subject prefix")
    p.add_argument("--trust", required=True, help="Rampart's public signing keys, by commas")
    p.add_argument("--nkey-seed", help="log in with this NKEY seed file (as gateway-<id>)")
    p.add_argument("--stop-after-halt", metavar="ALGO", help="SIGSTOP itself after halting ALGO")
    p.add_argument(
        "--wire",
        action="store_true",
        help="commands and Rampart's heartbeats on a connection parsed in Rust (rampart.wire)",
    )
    p.add_argument(
        "--ha-log",
        type=Path,
        help="append here the dead-man's switch tripping and the first sidecar heartbeat of "
        "each leadership term, with CLOCK_MONOTONIC (docs/ha.md)",
    )
    args = p.parse_args()
    login: dict[str, str] = {}
    if args.nkey_seed:
        login = {"nkeys_seed": args.nkey_seed, "inbox_prefix": f"_INBOX_gateway-{args.gateway}"}
    nc = await nats.connect(
        servers=args.url.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.1, **login
    )
    algos = [
        HostedAlgo(a, "ES", Momentum(), allocation=0.0, active=True) for a in args.algos.split(",")
    ]
    gw = LoggingGateway(
        nc,
        args.gateway,
        algos,
        heartbeat_interval=0.05,
        deadman_timeout=args.deadman,
        trusted_keys=args.trust.split(","),
        subjects=Subjects(args.prefix),
        wire_servers=args.url.split(",") if args.wire else None,
        wire_nats=NatsConfig(
            nkeys_seed=args.nkey_seed,
            reconnect_time_wait=timedelta(seconds=0.1),
            ping_interval=timedelta(seconds=1),
        ),
    )
    gw.log_path = args.log
    gw.stop_after_halt = args.stop_after_halt
    if args.ha_log is not None:
        log_ha(gw, args.ha_log)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await gw.start()
    freeze_startup_heap()  # as a gateway process should (rampart.heap)
    await stop.wait()
    await gw.close()
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
