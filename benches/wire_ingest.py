"""Market-data ingest through the Rust wire path against nats-py, in one run (issue 15).

Run: ``.venv/bin/python benches/wire_ingest.py [--messages 300000] [--rounds 5] [--json PATH]``

An embedded nats-server on 127.0.0.1. A publisher in a separate process pre-encodes
``--messages`` quotes (two symbols, random-walking mids) as raw ``PUB`` frames and writes them to
its socket in 256 kB writes (far faster than any receiver here), then flushes with a PING. The
receivers, in this process with uvloop, take turns (the order rotates each round):

* ``bare``: a nats-py connection subscribed to ``<p>.md.>`` whose callback only counts;
* ``daemon``: ``rampart.daemon.Daemon`` with ``[ingest] wire = "nats-py"`` (today's default);
* ``wire``: the same daemon with ``[ingest] wire = "rust"``: parsed, decoded and applied in Rust
  one chunk at a time (docs/protocol.md, "The wire path");
* ``raw``: the Rust frame parser alone on a bare ``asyncio.Protocol`` connection, counting the
  messages and doing nothing else (``WireIngest.scan``): the raw limit.

Each case is timed by a sampler reading its counter every millisecond: the rate is the count
between the first non-zero sample and the last change, over that time, and the same per
CPU-second of this process's thread (which a 2-core machine shared with the server and the
publisher disturbs less). Ratios are of medians over complete runs in this one run. Aims
(issue 15): wire >= 4x bare, wire >= 0.5x raw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import nats
import uvloop
from child import stop_child
from machine_info import machine

from rampart._core import WireIngest
from rampart.config import DaemonConfig, parse_config
from rampart.daemon import Daemon
from rampart.embedded import EmbeddedNatsServer
from rampart.protocol import Quote, Subjects, encoder

CASES = ("bare", "daemon", "wire", "raw")
SYMBOLS = {"ESZ5": 6000.0, "NQZ5": 21000.0}
TICK = 0.25

CONFIG = """
name = "{name}"
data_dir = "{data_dir}"

[nats]
ping_interval = "PT2S"

[ingest]
wire = "{wire}"
pending_msgs_limit = 10000000

[triggers]
market_data_timeout = "PT1H"
gateway_heartbeat_timeout = "PT1H"
"""

ALGO = """
[[algorithms]]
id = "{id}"
version = "1.0.0"
gateway = "gw1"
capital = 1000000
limits = {{ max_drawdown = 0.5, max_daily_loss = 0.5 }}
"""


def make_config(data_dir: Path, wire: str) -> DaemonConfig:
    # a name per run: each run's store is new, and the server keeps the last one's audit head
    text = CONFIG.format(name=f"bench-{data_dir.name}", data_dir=data_dir, wire=wire)
    text += "".join(ALGO.format(id=f"algo-{i}") for i in range(4))
    return parse_config(text.encode())


def make_frames(n: int, t0: int, seed: int) -> bytes:
    """``n`` quotes as NATS ``PUB`` frames, 1 us of event time apart."""
    subjects = Subjects()
    rng = random.Random(seed)
    mids = dict(SYMBOLS)
    symbols = list(mids)
    out = bytearray()
    for i in range(n):
        symbol = symbols[i % 2]
        mid = mids[symbol] = mids[symbol] + rng.choice((-TICK, 0.0, TICK))
        body = encoder.encode(
            Quote(symbol=symbol, bid=mid - TICK / 2, ask=mid + TICK / 2, ts=t0 + i * 1000)
        )
        out += b"PUB %s %d\r\n%s\r\n" % (subjects.market(symbol).encode(), len(body), body)
    return bytes(out)


# ---- the publisher process ---------------------------------------------------------------------


def publisher_main(url: str) -> None:
    """stdin/stdout: ``prepare <n> <seed>`` -> ``ready``; ``go`` -> ``done <t0> <t1>``
    (CLOCK_MONOTONIC ns); ``quit`` or EOF ends it."""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.recv(4096)  # INFO
    sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"name":"bench-publisher"}\r\n')
    frames = b""
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] == "prepare":
            frames = make_frames(int(words[1]), time.time_ns(), int(words[2]))
            print("ready", flush=True)
        elif words[0] == "go":
            start = time.monotonic_ns()
            view = memoryview(frames)
            for i in range(0, len(view), 256 * 1024):
                sock.sendall(view[i : i + 256 * 1024])
            sock.sendall(b"PING\r\n")
            got = b""
            while b"PONG" not in got:
                got += sock.recv(4096)
            print("done", start, time.monotonic_ns(), flush=True)
    sock.close()


class Publisher:
    def __init__(self, url: str) -> None:
        self.url = url
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).resolve()),
            "--publisher",
            self.url,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )

    async def ask(self, line: str, expect: str, timeout: float) -> list[str]:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        reply = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        words = reply.decode().split()
        if not words or words[0] != expect:
            raise RuntimeError(f"publisher answered {reply!r} to {line!r}")
        return words[1:]

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        await stop_child(proc)


# ---- the receivers -----------------------------------------------------------------------------


class Raw(asyncio.Protocol):
    """The raw limit: the frame parser counting messages on a bare connection."""

    def __init__(self) -> None:
        self.parser = WireIngest()
        self.count = 0
        self.transport: asyncio.Transport | None = None
        self.ready = asyncio.get_running_loop().create_future()
        self.greeted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.greeted:  # the INFO: log in and subscribe (no credentials here)
            self.greeted = True
            assert self.transport is not None
            self.transport.write(b'CONNECT {"verbose":false}\r\nSUB rampart.md.> 1\r\nPING\r\n')
            if not self.ready.done():
                self.ready.set_result(None)
            data = data[data.index(b"\r\n") + 2 :]
        self.count += self.parser.scan(data)


@dataclass
class Run:
    case: str
    round: int
    expected: int
    received: int = 0
    rate: float = 0.0
    cpu_rate: float = 0.0
    cpu_share: float = 0.0
    publisher_rate: float = 0.0
    rejected: int = 0
    complete: bool = False


async def sample(
    count: Callable[[], int], n: int, published: asyncio.Event, stall: float, hard: float
) -> tuple[int, int, int, int, int, int]:
    first = (0, 0, 0)
    last = (0, 0, 0)
    begin = last_change = time.perf_counter_ns()
    while True:
        await asyncio.sleep(0.001)
        c = count()
        now, cpu = time.perf_counter_ns(), time.thread_time_ns()
        if c and not first[0]:
            first = (now, cpu, c)
        if c != last[2]:
            last_change = now
            last = (now, cpu, c)
        if c >= n:
            break
        if published.is_set() and (now - last_change) / 1e9 > stall:
            break
        if (now - begin) / 1e9 > hard:
            break
    return (*first, *last)


async def one_run(
    case: str, rnd: int, args: argparse.Namespace, url: str, pub: Publisher, work: Path
) -> Run:
    n = args.messages
    await pub.ask(f"prepare {n} {args.seed + rnd}", "ready", 120)
    run = Run(case=case, round=rnd, expected=n)
    closers: list[Callable[[], Any]] = []
    try:
        if case == "bare":
            nc = await nats.connect(url)
            box = [0]

            async def on_msg(_: object) -> None:
                box[0] += 1

            await nc.subscribe(
                "rampart.md.>", cb=on_msg, pending_msgs_limit=10_000_000, pending_bytes_limit=-1
            )
            await nc.flush()
            closers.append(nc.close)

            def count() -> int:
                return box[0]
        elif case == "raw":
            host, port = url.removeprefix("nats://").rsplit(":", 1)
            raw = Raw()
            transport, _ = await asyncio.get_running_loop().create_connection(
                lambda: raw, host, int(port)
            )
            await raw.ready
            await asyncio.sleep(0.1)  # the SUB at the server (no PONG handling here)
            closers.append(transport.close)

            def count() -> int:
                return raw.count
        else:
            wire = "rust" if case == "wire" else "nats-py"
            daemon = Daemon(make_config(work / f"{case}-{rnd}", wire), servers=[url])
            await daemon.start()
            closers.append(daemon.close)

            def count() -> int:
                return daemon.stats.ingested

            def refused() -> int:
                return sum(daemon.stats.rejected.values())

        published = asyncio.Event()
        sampler = asyncio.ensure_future(sample(count, n, published, args.stall, args.timeout))
        t0, t1 = map(int, await pub.ask("go", "done", args.timeout))
        run.publisher_rate = n / ((t1 - t0) / 1e9)
        published.set()
        f_t, f_cpu, f_c, l_t, l_cpu, l_c = await sampler
        run.received = count()
        run.complete = run.received == n
        if case in ("daemon", "wire"):
            run.rejected = refused()
        if l_t > f_t:
            seconds = (l_t - f_t) / 1e9
            run.rate = (l_c - f_c) / seconds
            cpu = (l_cpu - f_cpu) / 1e9
            run.cpu_share = cpu / seconds
            run.cpu_rate = (l_c - f_c) / cpu if cpu > 0 else 0.0
    finally:
        for close in reversed(closers):
            result = close()
            if asyncio.iscoroutine(result):
                await result
    return run


def _met(value: float, aim: float) -> str:
    return "OK" if value >= aim else "MISSED"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def report(runs: list[Run]) -> dict[str, Any]:
    print()
    print(
        f"{'case':<7} {'rnd':>3} {'msgs/s':>11} {'msgs/cpu-s':>11} {'cpu':>5} {'received':>9} "
        f"{'pub msgs/s':>11}"
    )
    for r in runs:
        print(
            f"{r.case:<7} {r.round:>3} {r.rate:>11,.0f} {r.cpu_rate:>11,.0f} {r.cpu_share:>5.2f} "
            f"{r.received:>9} {r.publisher_rate:>11,.0f}"
        )
    ok = [r for r in runs if r.complete]
    med = {
        (c, k): _median([getattr(r, k) for r in ok if r.case == c])
        for c in CASES
        for k in ("rate", "cpu_rate")
    }

    def ratio(a: str, b: str, k: str) -> float:
        return med[(a, k)] / med[(b, k)] if med[(b, k)] else 0.0

    print()
    for c in CASES:
        w, cpu = med[(c, "rate")], med[(c, "cpu_rate")]
        print(
            f"median {c:<6}: {w:>11,.0f} msgs/s ({1e6 / w if w else 0:.2f} us/msg), "
            f"{cpu:>11,.0f} msgs/cpu-s ({1e6 / cpu if cpu else 0:.2f} us CPU/msg), "
            f"{sum(r.case == c for r in ok)} complete runs"
        )
    ratios = {
        "wire/bare": (ratio("wire", "bare", "rate"), ratio("wire", "bare", "cpu_rate"), 4.0),
        "wire/raw": (ratio("wire", "raw", "rate"), ratio("wire", "raw", "cpu_rate"), 0.5),
        "wire/daemon": (ratio("wire", "daemon", "rate"), ratio("wire", "daemon", "cpu_rate"), None),
        "daemon/bare": (ratio("daemon", "bare", "rate"), ratio("daemon", "bare", "cpu_rate"), None),
    }
    for name, (wall, cpu, aim) in ratios.items():
        verdict = (
            ""
            if aim is None
            else f" (aim >= {aim:g}: wall {_met(wall, aim)}, cpu {_met(cpu, aim)})"
        )
        print(f"{name:<12}: {wall:.2f}x wall clock, {cpu:.2f}x per CPU-second{verdict}")
    incomplete = [
        f"{r.case} round {r.round}: {r.received}/{r.expected}" for r in runs if not r.complete
    ]
    refused = [f"{r.case} round {r.round}: {r.rejected}" for r in runs if r.rejected]
    print(f"incomplete runs: {incomplete or 'none'}; refused messages: {refused or 'none'}")
    return {
        "medians": {f"{c}_{k}": v for (c, k), v in med.items()},
        "ratios": {k: {"wall": w, "cpu": c, "aim": a} for k, (w, c, a) in ratios.items()},
        "incomplete": incomplete,
        "refused": refused,
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    load = [round(x, 2) for x in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="rampart-bench-wire-"))
    server = EmbeddedNatsServer(store_dir=work / "nats")
    pub: Publisher | None = None
    runs: list[Run] = []
    try:
        url = await asyncio.to_thread(server.start)
        pub = Publisher(url)
        await pub.start()
        print(f"nats-server {url}; raw-socket publisher in a separate process; receivers here")
        for case in CASES:  # warm-up
            w = await one_run(case, -1, args, url, pub, work)
            print(f"warm-up {case}: {w.received}/{w.expected} at {w.rate:,.0f} msgs/s")
        for rnd in range(args.rounds):
            order = CASES[rnd % len(CASES) :] + CASES[: rnd % len(CASES)]
            for case in order:
                run = await one_run(case, rnd, args, url, pub, work)
                runs.append(run)
                got = f"{run.received}/{run.expected}"
                print(f"round {rnd} {case:<6}: {run.rate:>11,.0f} msgs/s, {got}")
    finally:
        if pub is not None:
            await pub.stop()
        await asyncio.to_thread(server.stop)
        shutil.rmtree(work, ignore_errors=True)
    summary = report(runs)
    return {
        "benchmark": "market-data ingest: Rust wire path vs nats-py",
        "command": " ".join([".venv/bin/python", "benches/wire_ingest.py", *sys.argv[1:]]),
        "machine": {**machine(), "loadavg_at_start": load},
        "runs": [asdict(r) for r in runs],
        "summary": summary,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=300_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--stall", type=float, default=3.0, help="seconds without progress")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--json", type=Path)
    p.add_argument("--publisher", metavar="URL", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.publisher:
        publisher_main(args.publisher)
        return 0
    result = uvloop.run(bench(args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0 if not result["summary"]["incomplete"] else 1


if __name__ == "__main__":
    sys.exit(main())
