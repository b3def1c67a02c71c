"""The durable events path (issue 10) against core NATS, in one run, side by side.

Run: ``.venv/bin/python benches/durable.py [--fills 50000] [--rounds 5] [--catchup-seconds 60]
[--catchup-rate 1000] [--breaches 500] [--profile PATH] [--json PATH]``

An embedded nats-server on 127.0.0.1 (``rampart.embedded``: JetStream, file storage,
``sync_interval: always``, its store under the system temporary directory); the daemon
(``rampart.daemon.Daemon``) in this process, on uvloop. The two paths use two subject prefixes,
so that fills published on core NATS are never captured by the events stream: ``rampart``
(``[events] durable = true``) and ``rcore`` (``durable = false``).

1. throughput. A publisher in a separate process (this script with the hidden ``--publisher``
   flag) pre-encodes ``--fills`` fills (1 lot at the touch of a random-walking mid, sides
   alternating every few fills, for the 4 algorithms of one gateway, each on its own subject
   ``<prefix>.fills.gw1.<algo>``) and sends them as fast as it can: durable, through the SDK's
   ``Outbox`` (JetStream publish with a ``Nats-Msg-Id``, windowed, waiting for the acks, what
   waits meanwhile batched into one message on ``<prefix>.batch.gw1``: the ``msgs`` column; its
   rate counts until the last ack); core, with ``nc.publish`` and a flush. The daemon (fresh data
   directory each round; the events stream deleted after each durable round, so each starts on
   an empty one) counts ``stats.ingested``; the rate is taken the way ``benches/ingest.py`` takes
   it: a sampler reads the count every millisecond, rate = (last count - first non-zero count) /
   (time between them); "end to end" is fills / (``go`` sent -> last fill applied), which
   includes the last acks. The paths alternate, ``--rounds`` each, the order rotating every
   round; medians and the ratio durable / core. Where the time goes: CPU seconds of the three
   processes (daemon, publisher, nats-server) over each round; the fsync of a 250-byte append
   in the store's directory, measured at the start (one synced write's cost on this disk); a
   third, diagnostic path (``--no-nosync`` skips it): the same durable path against a second
   embedded server whose JetStream keeps nats-server's default ``sync_interval`` (never what
   Rampart runs: it only tells the fsyncs apart from the rest); a fourth (``--no-unbatched``
   skips it): the durable path with the outbox's batches off (``batch_events=1``, one stream
   message per fill, as before batches); and with ``--profile`` a
   cProfile of the daemon process over one more durable round.
2. catch-up. A daemon starts on a fresh data directory (creating the stream, storing its
   cursor) and stops (``close()``); the publisher then sends ``--catchup-seconds`` x
   ``--catchup-rate`` fills through the ``Outbox``, paced in real time, each stamped with the
   time it was put; a new daemon starts on the same data directory. Timed from the call to
   ``start()`` until ``stats.ingested`` reaches the count; checked: the count is exact, the
   cursor is the stream's last sequence, and each algorithm's fill count and position equal
   what was sent (nothing lost, nothing applied twice).
3. fill -> breach latency. Two daemons at once (one per path, their own data directories), each
   with ``--breaches + --warmup`` algorithms (limits max_drawdown 0.05, capital 100k) on
   their own symbols, quoted once at set-up (5399.75 / 5400.25). Per iteration, a fresh algorithm
   buys 10 at 6000 (a 6 % drawdown): durable, put in an ``Outbox`` in this process (which
   publishes it to the stream); core, ``nc.publish`` on another connection of this process.
   Timed from just before the put / publish to the daemon's breach listener (``perf_counter_ns``,
   one clock). The paths alternate per iteration (ABBA). The guard's own listener is removed:
   the rollback that follows a breach is ``benches/rollback_latency.py``'s subject, and here it
   would send halts to a gateway that does not exist, retrying into the next iterations.
   Nearest-rank percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import logging
import math
import os
import pstats
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nats
import uvloop
from child import stop_child
from ingest import sample
from machine_info import machine
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from rampart._core import Breach
from rampart.config import DaemonConfig, parse_config
from rampart.daemon import Daemon
from rampart.embedded import EmbeddedNatsServer
from rampart.gateway.outbox import Outbox
from rampart.protocol import Fill, Quote, Subjects, encoder

GATEWAY = "gw1"
PREFIX = {"durable": "rampart", "core": "rcore", "nosync": "rampart", "unbatched": "rampart"}
PATHS = ("durable", "core")
LABEL = {
    "durable": "durable (Outbox -> stream)",
    "core": "core (nc.publish)",
    "nosync": "durable, server without sync_interval always (diagnostic)",
    "unbatched": "durable, outbox without batches (batch_events=1: one message per fill)",
}
# (algorithm id, the symbol it trades)
ALGOS: tuple[tuple[str, str], ...] = (
    ("mom-es-v2", "ESZ5"),
    ("meanrev-es-v1", "ESZ5"),
    ("mom-nq-v2", "NQZ5"),
    ("meanrev-nq-v1", "NQZ5"),
)
START_MID = {"ESZ5": 6000.0, "NQZ5": 21000.0}
TICK = 0.25
EVENT_STEP_NS = 1_000
AIM_FILLS_PER_S = 20_000
MS = 1e6

CONFIG = """
name = "rampart-bench"
subject_prefix = "{prefix}"
data_dir = "{data_dir}"

[events]
durable = {durable}

[triggers]
# Stale-data triggers are not what this measures.
market_data_timeout = "PT1H"
gateway_heartbeat_timeout = "PT1H"
"""

ALGO = """
[[algorithms]]
id = "{id}"
version = "1.0.0"
gateway = "{gateway}"
capital = {capital}
limits = {{ {limits} }}
"""
LOOSE = 'max_drawdown = 0.5, max_daily_loss = 0.5, max_error_rate = 0.5, max_latency = "PT1S"'


def make_config(
    data_dir: Path, path: str, algos: list[str], *, capital: int, limits: str
) -> DaemonConfig:
    text = CONFIG.format(
        prefix=PREFIX[path], data_dir=data_dir, durable="false" if path == "core" else "true"
    )
    text += "".join(
        ALGO.format(id=a, gateway=GATEWAY, capital=capital, limits=limits) for a in algos
    )
    return parse_config(text.encode())


def flow_config(data_dir: Path, path: str) -> DaemonConfig:
    """Parts 1 and 2: the 4 algorithms of ``ALGOS``, limits nothing here breaches."""
    return make_config(data_dir, path, [a for a, _ in ALGOS], capital=1_000_000, limits=LOOSE)


class FillMaker:
    """Realistic fills, deterministic for a seed: 1 lot at the touch of a mid that random-walks
    by a tick, the algorithms in turn, each switching side every 8 of its fills (positions stay
    within +-8 lots: nothing breaches)."""

    def __init__(self, seed: int, prefix: str) -> None:
        self.rng = random.Random(seed)
        self.subjects = Subjects(prefix)
        self.mids = dict(START_MID)
        self.i = 0
        self.per_algo: dict[str, int] = {a: 0 for a, _ in ALGOS}

    def next(self, ts: int) -> tuple[str, bytes]:
        algo, symbol = ALGOS[self.i % len(ALGOS)]
        self.i += 1
        k = self.per_algo[algo]
        self.per_algo[algo] = k + 1
        mid = self.mids[symbol] = self.mids[symbol] + self.rng.choice((-TICK, 0.0, TICK))
        buy = (k // 8) % 2 == 0
        price = mid + (TICK / 2 if buy else -TICK / 2)
        fill = Fill(
            algo=algo,
            symbol=symbol,
            side="buy" if buy else "sell",
            qty=1.0,
            price=price,
            fee=round(price * 2e-5, 6),
            ts=ts,
            order_id=f"{GATEWAY}-{algo}-{k}",
        )
        return self.subjects.fills(GATEWAY, algo), encoder.encode(fill)


def expected_fills(n: int) -> dict[str, tuple[int, float]]:
    """Per algorithm: how many of ``n`` fills it got and its net position afterwards."""
    out: dict[str, tuple[int, float]] = {}
    for j, (algo, _) in enumerate(ALGOS):
        count = n // len(ALGOS) + (1 if j < n % len(ALGOS) else 0)
        net = sum(1.0 if (k // 8) % 2 == 0 else -1.0 for k in range(count))
        out[algo] = (count, net)
    return out


# ---- the publisher process ---------------------------------------------------------------------


async def publisher_main(url: str) -> None:
    """Line protocol on stdin/stdout:
    ``prepare <n> <seed> <path> <url>`` -> ``ready <bytes>`` (``go`` publishes to ``url``);
    ``go`` -> ``done <t_start_ns> <t_end_ns> <acked> <duplicates> <failures> <cpu_ns>``
    (monotonic clock, shared by all processes; durable: until the last ack);
    ``pace <n> <rate> <seed>`` -> the same ``done`` line: ``n`` fills through the Outbox at
    ``rate`` a second, each stamped when it is put;
    ``quit`` or EOF ends it."""
    loop = asyncio.get_running_loop()
    main = nc = await nats.connect(url, name="bench-publisher", connect_timeout=5)
    conns = {url: nc}
    messages: list[tuple[str, bytes]] = []
    path = "core"
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            words = line.split()
            if not words or words[0] == "quit":
                return
            if words[0] == "prepare":
                n, seed, path = int(words[1]), int(words[2]), words[3]
                if words[4] not in conns:
                    conns[words[4]] = await nats.connect(words[4], name="bench-publisher")
                nc = conns[words[4]]
                maker = FillMaker(seed, PREFIX[path])
                t0 = time.time_ns()
                messages = [maker.next(t0 + i * EVENT_STEP_NS) for i in range(n)]
                print("ready", sum(len(d) for _, d in messages), flush=True)
            elif words[0] == "go":
                cpu = time.process_time_ns()
                if path == "core":
                    publish = nc.publish
                    start = time.monotonic_ns()
                    for subject, data in messages:
                        await publish(subject, data)
                    await nc.flush(timeout=300)
                    end = time.monotonic_ns()
                    stats = (len(messages), 0, 0)
                else:
                    outbox = Outbox(
                        nc,
                        GATEWAY,
                        subjects=Subjects(PREFIX[path]),
                        batch_events=1 if path == "unbatched" else 256,
                    )
                    outbox.start()
                    start = time.monotonic_ns()
                    for i, (subject, data) in enumerate(messages):
                        outbox.put(subject, data)
                        if i % 1000 == 999:  # a gateway's events arrive over time
                            await asyncio.sleep(0)
                    if not await outbox.flush(timeout=600):
                        raise RuntimeError(f"outbox: {outbox.pending} events not acked")
                    end = time.monotonic_ns()
                    stats = (outbox.published, outbox.duplicates, outbox.failures)
                    await outbox.close()
                cpu = time.process_time_ns() - cpu
                print("done", start, end, *stats, cpu, flush=True)
            elif words[0] == "pace":
                n, rate, seed = int(words[1]), float(words[2]), int(words[3])
                maker = FillMaker(seed, PREFIX["durable"])
                outbox = Outbox(main, GATEWAY, subjects=Subjects(PREFIX["durable"]))
                outbox.start()
                cpu = time.process_time_ns()
                start = time.monotonic_ns()
                batch = max(1, int(rate // 100))  # every 10 ms at 1,000/s
                sent = 0
                while sent < n:
                    for _ in range(min(batch, n - sent)):
                        outbox.put(*maker.next(time.time_ns()))
                        sent += 1
                    due = start + int(sent / rate * 1e9)
                    await asyncio.sleep(max(0.0, (due - time.monotonic_ns()) / 1e9))
                if not await outbox.flush(timeout=600):
                    raise RuntimeError(f"outbox: {outbox.pending} events not acked")
                end = time.monotonic_ns()
                cpu = time.process_time_ns() - cpu
                print(
                    "done", start, end, outbox.published, outbox.duplicates, outbox.failures,
                    cpu, flush=True,
                )  # fmt: skip
                await outbox.close()
    finally:
        for c in conns.values():
            await c.close()


class Publisher:
    """The publisher child process, driven over its stdin/stdout."""

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

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

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


# ---- helpers ---------------------------------------------------------------------------------


def proc_cpu_ns(pid: int | None) -> int:
    """User + system CPU of a process so far (``/proc/<pid>/stat``), in ns; 0 if unknown."""
    if pid is None:
        return 0
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = text.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks * 10**9 // os.sysconf("SC_CLK_TCK")


async def delete_stream(js_nc: Client, config: DaemonConfig) -> None:
    js = js_nc.jetstream(timeout=10)
    with contextlib.suppress(NotFoundError):
        await js.delete_stream(config.events.stream_name(config.subject_prefix))


async def stream_state(js_nc: Client, config: DaemonConfig) -> tuple[int, int]:
    """(messages, last sequence) of the events stream."""
    js = js_nc.jetstream(timeout=10)
    info = await js.stream_info(config.events.stream_name(config.subject_prefix))
    return info.state.messages, info.state.last_seq


def check_applied(daemon: Daemon, n: int) -> list[str]:
    """What differs between the daemon's algorithms and ``n`` fills of ``FillMaker``."""
    problems = []
    for algo, (count, net) in expected_fills(n).items():
        snap = daemon.engine.snapshot(algo)
        qty = sum(p.qty for p in snap.positions)
        if snap.fills != count or not math.isclose(qty, net, abs_tol=1e-9):
            problems.append(f"{algo}: {snap.fills} fills, position {qty} (sent {count}, {net})")
    return problems


def pct(sorted_ns: list[int], p: float) -> float:
    """Nearest-rank percentile, in ms."""
    k = max(1, math.ceil(p / 100 * len(sorted_ns)))
    return sorted_ns[k - 1] / MS


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


# ---- 1. throughput -----------------------------------------------------------------------------


@dataclass
class Round:
    path: str
    round: int
    fills: int
    applied: int = 0
    rate: float = 0.0  # fills/s applied by the daemon, sampled (first to last)
    end_to_end: float = 0.0  # fills / (go -> last applied)
    seconds: float = 0.0
    publisher_rate: float = 0.0  # durable: acked by the stream (outbox) per second
    acked: int = 0
    duplicates: int = 0
    failures: int = 0
    # durable: the stream messages that carried the fills (the outbox batches what waits)
    messages: int = 0
    # CPU seconds over the round (go -> last applied): this process, the publisher, the server
    cpu_daemon: float = 0.0
    cpu_publisher: float = 0.0
    cpu_server: float = 0.0
    wall: float = 0.0
    rejected: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    complete: bool = False


async def throughput_round(
    path: str,
    rnd: int,
    n: int,
    args: argparse.Namespace,
    server: EmbeddedNatsServer,
    admin: Client,
    publisher: Publisher,
    workdir: Path,
    profile: cProfile.Profile | None = None,
) -> Round:
    config = flow_config(workdir / f"tp-{path}-{rnd}", path)
    await publisher.ask(f"prepare {n} {args.seed + rnd} {path} {server.url}", "ready", timeout=120)
    r = Round(path=path, round=rnd, fills=n)
    daemon = Daemon(config, servers=[server.url])
    await daemon.start()
    try:
        stats = daemon.stats
        published = asyncio.Event()
        sampler = asyncio.ensure_future(
            sample(
                lambda: stats.ingested,
                n,
                published,
                interval=0.001,
                stall_timeout=args.stall_timeout,
                hard_timeout=args.timeout,
            )
        )
        cpu0 = (time.process_time_ns(), proc_cpu_ns(publisher.pid), proc_cpu_ns(server.pid))
        t0 = time.perf_counter_ns()
        if profile is not None:
            profile.enable()
        try:
            words = await publisher.ask("go", "done", timeout=args.timeout)
            published.set()
            s = await asyncio.wait_for(sampler, args.timeout + 5)
        finally:
            if profile is not None:
                profile.disable()
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        t_start, t_end, acked, dups, failures, _pub_cpu = map(int, words)
        r.publisher_rate = n / ((t_end - t_start) / 1e9)
        r.acked, r.duplicates, r.failures = acked, dups, failures
        r.applied = stats.ingested
        r.complete = r.applied == n
        if s.last_t > s.first_t:
            r.seconds = (s.last_t - s.first_t) / 1e9
            r.rate = (s.last_count - s.first_count) / r.seconds
        if s.last_t:
            r.wall = (s.last_t - t0) / 1e9
            r.end_to_end = r.applied / r.wall
        # CPU up to now (a little after the last fill applied: the sampler's last interval)
        r.cpu_daemon = (time.process_time_ns() - cpu0[0]) / 1e9
        r.cpu_publisher = (proc_cpu_ns(publisher.pid) - cpu0[1]) / 1e9
        r.cpu_server = (proc_cpu_ns(server.pid) - cpu0[2]) / 1e9
        r.rejected = dict(stats.rejected)
        if path != "core":
            r.messages, last = await stream_state(admin, config)
            if stats.events_seq != last:
                r.problems.append(f"cursor {stats.events_seq}, the stream ends at {last}")
        r.problems += check_applied(daemon, n)
    finally:
        await daemon.close()
        if path != "core":
            await delete_stream(admin, config)
    return r


def throughput_report(runs: list[Round], paths: tuple[str, ...]) -> dict[str, Any]:
    print()
    print(
        f"{'path':<8} {'rnd':>3} {'applied/s':>10} {'end-to-end/s':>12} {'pub/s':>9} "
        f"{'applied':>8} {'msgs':>7} {'dup':>4} {'fail':>4} {'wall s':>7} "
        f"{'cpu daemon':>10} {'cpu pub':>8} {'cpu server':>10}"
    )
    for r in runs:
        print(
            f"{r.path:<8} {r.round:>3} {r.rate:>10,.0f} {r.end_to_end:>12,.0f} "
            f"{r.publisher_rate:>9,.0f} {r.applied:>8} {r.messages:>7} {r.duplicates:>4} "
            f"{r.failures:>4} "
            f"{r.wall:>7.2f} {r.cpu_daemon:>10.2f} {r.cpu_publisher:>8.2f} {r.cpu_server:>10.2f}"
        )
    ok = [r for r in runs if r.complete and not r.problems]
    med: dict[str, dict[str, float]] = {}
    for path in paths:
        mine = [r for r in ok if r.path == path]
        med[path] = {
            "applied_per_s": _median([r.rate for r in mine]),
            "end_to_end_per_s": _median([r.end_to_end for r in mine]),
            "publisher_per_s": _median([r.publisher_rate for r in mine]),
            # CPU seconds per 1,000 fills, per process
            "cpu_ms_per_1k_daemon": _median([1e6 * r.cpu_daemon / r.fills for r in mine]),
            "cpu_ms_per_1k_publisher": _median([1e6 * r.cpu_publisher / r.fills for r in mine]),
            "cpu_ms_per_1k_server": _median([1e6 * r.cpu_server / r.fills for r in mine]),
            "complete_rounds": len(mine),
        }
    d, c = med["durable"], med["core"]
    ratio = d["applied_per_s"] / c["applied_per_s"] if c["applied_per_s"] else 0.0
    e2e_ratio = d["end_to_end_per_s"] / c["end_to_end_per_s"] if c["end_to_end_per_s"] else 0.0
    by = {(r.path, r.round): r for r in ok}
    paired = [
        by[("durable", i)].rate / by[("core", i)].rate
        for i in sorted({r.round for r in ok})
        if ("durable", i) in by and ("core", i) in by and by[("core", i)].rate
    ]
    met = d["end_to_end_per_s"] >= AIM_FILLS_PER_S
    print()
    for path in paths:
        m = med[path]
        print(
            f"median {path:<8}: {m['applied_per_s']:>9,.0f} fills/s applied (sampled), "
            f"{m['end_to_end_per_s']:>9,.0f} end to end, publisher {m['publisher_per_s']:>9,.0f}"
            f"/s; CPU ms per 1,000 fills: daemon {m['cpu_ms_per_1k_daemon']:.1f}, publisher "
            f"{m['cpu_ms_per_1k_publisher']:.1f}, nats-server {m['cpu_ms_per_1k_server']:.1f} "
            f"({m['complete_rounds']} complete rounds)"
        )
    print(
        f"ratio durable / core: {ratio:.3f} applied (sampled), {e2e_ratio:.3f} end to end; "
        f"per round: {', '.join(f'{x:.3f}' for x in paired)}"
    )
    print(
        f"aim >= {AIM_FILLS_PER_S:,} fills/s sustained through the durable path (end to end): "
        f"{'MET' if met else 'NOT MET'} ({d['end_to_end_per_s']:,.0f})"
    )
    if "nosync" in med and c["applied_per_s"]:
        ns_ratio = med["nosync"]["end_to_end_per_s"] / c["end_to_end_per_s"]
        print(
            f"diagnostic: the same durable path on a server without sync_interval always: "
            f"{med['nosync']['end_to_end_per_s']:,.0f} fills/s end to end ({ns_ratio:.3f} of core)"
        )
    if "unbatched" in med and med["unbatched"]["end_to_end_per_s"]:
        u = med["unbatched"]["end_to_end_per_s"]
        print(
            f"batches: the durable path without them (one stream message per fill): {u:,.0f} "
            f"fills/s end to end; with them {d['end_to_end_per_s'] / u:.1f}x that"
        )
    bad = [f"{r.path} round {r.round}: {r.problems or 'incomplete'}" for r in runs if r not in ok]
    if bad:
        print("incomplete or wrong rounds:", "; ".join(bad))
    return {
        "medians": med,
        "ratio_applied": ratio,
        "ratio_end_to_end": e2e_ratio,
        "per_round_ratios": paired,
        "aim_fills_per_s": AIM_FILLS_PER_S,
        "aim_met": met,
        "bad_rounds": bad,
    }


def profile_text(profile: cProfile.Profile, top: int) -> str:
    out = io.StringIO()
    st = pstats.Stats(profile, stream=out)
    st.sort_stats("tottime").print_stats(top)
    return out.getvalue()


# ---- 2. catch-up -------------------------------------------------------------------------------


async def catch_up(
    args: argparse.Namespace,
    server: EmbeddedNatsServer,
    publisher: Publisher,
    admin: Client,
    workdir: Path,
) -> dict[str, Any]:
    n = int(args.catchup_seconds * args.catchup_rate)
    config = flow_config(workdir / "catchup", "durable")
    first = Daemon(config, servers=[server.url])
    await first.start()
    cursor_before = first.stats.events_seq
    await first.close()
    print(
        f"catch-up: daemon stopped at cursor {cursor_before}; publishing {n} fills through the "
        f"Outbox at {args.catchup_rate:g}/s ..."
    )
    words = await publisher.ask(
        f"pace {n} {args.catchup_rate} {args.seed}",
        "done",
        timeout=args.catchup_seconds * 3 + 60,
    )
    t_start, t_end, acked, dups, failures, _ = map(int, words)
    msgs, last_seq = await stream_state(admin, config)
    second = Daemon(config, servers=[server.url])
    stats = second.stats
    never = asyncio.Event()
    sampler = asyncio.ensure_future(
        sample(
            lambda: stats.ingested,
            n,
            never,
            interval=0.001,
            stall_timeout=math.inf,
            hard_timeout=args.timeout,
        )
    )
    t0 = time.perf_counter_ns()
    cpu0 = (time.process_time_ns(), proc_cpu_ns(server.pid))
    result: dict[str, Any] = {}
    try:
        await second.start()
        t_started = time.perf_counter_ns()
        s = await asyncio.wait_for(sampler, args.timeout + 5)
        t_done = s.last_t
        cpu_daemon = (time.process_time_ns() - cpu0[0]) / 1e9
        cpu_server = (proc_cpu_ns(server.pid) - cpu0[1]) / 1e9
        problems = check_applied(second, n)
        if stats.ingested != n:
            problems.append(f"applied {stats.ingested} of {n}")
        if stats.events_seq != last_seq:
            problems.append(f"cursor {stats.events_seq}, stream ends at {last_seq}")
        seconds = (t_done - t0) / 1e9
        result = {
            "fills": n,
            "publish_seconds": (t_end - t_start) / 1e9,
            "publish_rate": n / ((t_end - t_start) / 1e9),
            "outbox_acked": acked,
            "outbox_duplicates": dups,
            "outbox_failures": failures,
            "stream_messages": msgs,
            "stream_last_seq": last_seq,
            "cursor_before": cursor_before,
            "cursor_after": stats.events_seq,
            "applied": stats.ingested,
            "start_returned_s": (t_started - t0) / 1e9,
            "catch_up_s": seconds,
            "catch_up_rate": n / seconds if seconds else 0.0,
            # the steady part, sampled as in part 1 (first applied -> last applied)
            "apply_rate": (s.last_count - s.first_count) / ((s.last_t - s.first_t) / 1e9)
            if s.last_t > s.first_t
            else 0.0,
            "cpu_daemon_s": cpu_daemon,
            "cpu_server_s": cpu_server,
            "rejected": dict(stats.rejected),
            "breaches": stats.breaches,
            "problems": problems,
            "exact": not problems,
        }
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await second.close()
        await delete_stream(admin, config)
    print(
        f"catch-up: {n} fills published in {result['publish_seconds']:.1f} s "
        f"({result['publish_rate']:,.0f}/s, {dups} duplicates, {failures} failed attempts); "
        f"the new daemon applied them {result['catch_up_s']:.2f} s after start() was called "
        f"({result['catch_up_rate']:,.0f} fills/s; steady {result['apply_rate']:,.0f}/s); "
        f"start() returned after {result['start_returned_s']:.2f} s; CPU: daemon "
        f"{cpu_daemon:.2f} s, nats-server {cpu_server:.2f} s"
    )
    print(
        f"catch-up: applied {stats.ingested}/{n}, cursor {cursor_before} -> {stats.events_seq} "
        f"(stream's last {last_seq}): "
        + (
            "exact (fill counts and positions per algorithm match)"
            if not problems
            else "; ".join(problems)
        )
    )
    return result


# ---- 3. fill -> breach latency -----------------------------------------------------------------


async def breach_latency(
    args: argparse.Namespace, server: EmbeddedNatsServer, workdir: Path
) -> dict[str, Any]:
    per_path = args.breaches + args.warmup
    algos = [f"lat-{i:05d}" for i in range(per_path)]
    symbol = {a: f"S{i:05d}" for i, a in enumerate(algos)}
    loop = asyncio.get_running_loop()
    daemons: dict[str, Daemon] = {}
    waiting: dict[tuple[str, str], asyncio.Future[int]] = {}
    feed: Client | None = None
    outbox: Outbox | None = None
    samples: dict[str, list[int]] = {p: [] for p in PATHS}
    try:
        for path in PATHS:
            config = make_config(
                workdir / f"lat-{path}",
                path,
                algos,
                capital=100_000,
                limits="max_drawdown = 0.05",
            )
            daemon = Daemon(config, servers=[server.url])
            await daemon.start()
            daemons[path] = daemon

            def listener(breaches: list[Breach], path: str = path) -> None:
                t = time.perf_counter_ns()
                for b in breaches:
                    fut = waiting.pop((path, b.algo_id), None)
                    if fut is not None and not fut.done():
                        fut.set_result(t)

            assert daemon.guard is not None
            daemon.breach_listeners.remove(daemon.guard.on_breaches)
            daemon.breach_listeners.insert(0, listener)
        feed = await nats.connect(server.url, name="bench-feed")
        outbox = Outbox(feed, GATEWAY, subjects=Subjects(PREFIX["durable"]))
        outbox.start()
        t0 = time.time_ns()
        for path in PATHS:
            subjects = Subjects(PREFIX[path])
            for i, a in enumerate(algos):
                q = Quote(symbol=symbol[a], bid=5399.75, ask=5400.25, ts=t0 + i)
                await feed.publish(subjects.market(symbol[a]), encoder.encode(q))
        await feed.flush()
        deadline = time.monotonic() + 30
        while any(d.stats.ingested < per_path for d in daemons.values()):
            if time.monotonic() > deadline:
                raise TimeoutError("the set-up quotes were not ingested")
            await asyncio.sleep(0.005)
        core_subjects = Subjects(PREFIX["core"])
        next_algo = {p: 0 for p in PATHS}
        for i in range(2 * per_path):
            # ABBA: durable, core, core, durable, ...
            path = PATHS[(i % 2) ^ ((i // 2) % 2)]
            algo = algos[next_algo[path]]
            next_algo[path] += 1
            fill = Fill(
                algo=algo,
                symbol=symbol[algo],
                side="buy",
                qty=10.0,
                price=6000.0,
                ts=time.time_ns(),
                order_id=f"{GATEWAY}-{algo}-1",
            )
            fut: asyncio.Future[int] = loop.create_future()
            waiting[(path, algo)] = fut
            start = time.perf_counter_ns()
            if path == "durable":
                outbox.fill(fill)
            else:
                await feed.publish(core_subjects.fills(GATEWAY, algo), encoder.encode(fill))
            t = await asyncio.wait_for(fut, args.timeout)
            if path == "durable" and not await outbox.flush(args.timeout):
                raise RuntimeError("the breaching fill was not acked")
            if next_algo[path] > args.warmup:
                samples[path].append(t - start)
            await asyncio.sleep(args.gap)
        rejected = {p: dict(d.stats.rejected) for p, d in daemons.items()}
        breaches = {p: d.stats.breaches for p, d in daemons.items()}
    finally:
        if outbox is not None:
            await outbox.close()
        if feed is not None:
            await feed.close()
        for d in daemons.values():
            await d.close()
    rows = {}
    print()
    print(
        f"3. fill -> breach listener, {args.breaches} breaches per path (+{args.warmup} warm-up), "
        "alternating ABBA, nearest rank"
    )
    print(f"  {'path':<40} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    labels = {
        "durable": "durable: Outbox -> stream -> daemon",
        "core": "core: nc.publish -> daemon",
    }
    for path in PATHS:
        s = sorted(samples[path])
        rows[path] = {"n": len(s), "p50_ms": pct(s, 50), "p99_ms": pct(s, 99), "max_ms": s[-1] / MS}
        r = rows[path]
        print(
            f"  {labels[path]:<40} {r['n']:>5} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
            f"{r['max_ms']:>8.3f}"
        )
    ratios = {k: rows["durable"][k] / rows["core"][k] for k in ("p50_ms", "p99_ms", "max_ms")}
    print(
        f"  ratio durable / core: p50 {ratios['p50_ms']:.2f}x, p99 {ratios['p99_ms']:.2f}x, "
        f"max {ratios['max_ms']:.2f}x"
    )
    return {
        "rows": rows,
        "ratios": ratios,
        "breaches_counted": breaches,
        "rejected": rejected,
        "samples_ns": samples if args.raw else None,
    }


# ---- main --------------------------------------------------------------------------------------


class DefaultSyncServer(EmbeddedNatsServer):
    """The embedded server without ``sync_interval: always`` (nats-server's default: fsync
    every 2 minutes). Diagnostic only: an acked write may be lost to a power cut."""

    def write_config(self) -> None:
        store = json.dumps(str(self.store_dir / "jetstream"), ensure_ascii=False)
        text = f"jetstream {{\n  store_dir: {store}\n}}\n"
        self.config_file.write_text(text)


def fsync_floor(directory: Path, n: int = 300) -> dict[str, float]:
    """Append 250 bytes and fsync, ``n`` times, in ``directory`` (the JetStream store's file
    system): what one synced write costs there, in ms (nearest rank)."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 250)
            t = time.perf_counter_ns()
            os.fsync(fd)
            times.append(time.perf_counter_ns() - t)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    p50 = pct(times, 50)
    return {"p50_ms": p50, "p99_ms": pct(times, 99), "per_s_at_p50": 1e3 / p50}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    started_at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    workdir = Path(tempfile.mkdtemp(prefix="rampart-bench-durable-"))
    logging.basicConfig(
        level=logging.WARNING,
        filename=str(workdir / "bench.log"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    server = EmbeddedNatsServer(store_dir=workdir / "nats")
    nosync: EmbeddedNatsServer | None = None
    publisher: Publisher | None = None
    admins: list[Client] = []
    result: dict[str, Any] = {
        "benchmark": "the durable events path vs core NATS",
        "command": " ".join([".venv/bin/python", "benches/durable.py", *sys.argv[1:]]),
        "started": started_at,
    }
    runs: list[Round] = []
    paths = (
        PATHS + (("nosync",) if args.nosync else ()) + (("unbatched",) if args.unbatched else ())
    )
    try:
        url = await asyncio.to_thread(server.start)
        admin = await nats.connect(url, name="bench-admin")
        admins.append(admin)
        target = {"durable": (server, admin), "core": (server, admin)}
        target["unbatched"] = (server, admin)
        if args.nosync:
            nosync = DefaultSyncServer(store_dir=workdir / "nats-nosync")
            nosync_admin = await nats.connect(await asyncio.to_thread(nosync.start))
            admins.append(nosync_admin)
            target["nosync"] = (nosync, nosync_admin)
        publisher = Publisher(url)
        await publisher.start()
        floor = result["fsync_floor"] = fsync_floor(workdir)
        print(
            f"nats-server {url} (JetStream store in {workdir}, sync_interval always); "
            "publisher in a separate process; daemon in this process"
        )
        print(
            f"fsync of a 250-byte append in that directory: p50 {floor['p50_ms']:.2f} ms, p99 "
            f"{floor['p99_ms']:.2f} ms ({floor['per_s_at_p50']:,.0f} synced writes/s at p50)"
        )
        if args.fills:
            if args.warmup_fills:
                for path in paths:
                    w = await throughput_round(
                        path, -1, args.warmup_fills, args, *target[path], publisher, workdir
                    )
                    print(f"warm-up {path}: {w.applied}/{w.fills} at {w.rate:,.0f} fills/s")
            for rnd in range(args.rounds):
                k = rnd % len(paths)
                order = paths[k:] + paths[:k]
                for path in order if rnd % 2 == 0 else order[::-1]:
                    r = await throughput_round(
                        path, rnd, args.fills, args, *target[path], publisher, workdir
                    )
                    runs.append(r)
                    print(
                        f"round {rnd} {path:<7}: {r.rate:>9,.0f} fills/s applied, "
                        f"{r.end_to_end:>9,.0f} end to end, publisher {r.publisher_rate:>9,.0f}/s"
                        f", {r.applied}/{r.fills}"
                        + (f", PROBLEMS {r.problems}" if r.problems else "")
                        + (f", refused {r.rejected}" if r.rejected else "")
                    )
            result["throughput"] = {
                "runs": [asdict(r) for r in runs],
                "summary": throughput_report(runs, paths),
            }
            if args.profile:
                prof = cProfile.Profile()
                r = await throughput_round(
                    "durable", 99, args.fills, args, server, admin, publisher, workdir, prof
                )
                prof.dump_stats(str(args.profile))
                text = profile_text(prof, 20)
                print()
                print(
                    f"cProfile of the daemon process over one more durable round "
                    f"({r.rate:,.0f} fills/s under the profiler), top 20 by own time:"
                )
                print(text)
                result["throughput"]["profile_top"] = text
        if args.catchup_seconds:
            print()
            result["catch_up"] = await catch_up(args, server, publisher, admin, workdir)
        if args.breaches:
            result["latency"] = await breach_latency(args, server, workdir)
    finally:
        if publisher is not None:
            await publisher.stop()
        for c in admins:
            await c.close()
        await asyncio.to_thread(server.stop)
        if nosync is not None:
            await asyncio.to_thread(nosync.stop)
        logging.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    result["machine"] = {
        **machine(),
        "loadavg_at_start": load_at_start,
        "tmp_filesystem": tmp_filesystem(),
    }
    result["params"] = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "publisher"
    }
    print()
    m = result["machine"]
    print(
        f"machine: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, nats-py "
        f"{m['nats-py']}, uvloop {m['uvloop']}, {m['nats-server']}; JetStream store on "
        f"{m['tmp_filesystem']}; load average at start {load_at_start}, at end "
        f"{m['loadavg_at_end']}; {started_at} -> {m['date']}"
    )
    return result


def tmp_filesystem() -> str:
    """The file system the JetStream store is on (the system temporary directory)."""
    tmp = os.path.realpath(tempfile.gettempdir())
    best = ("?", "")
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mount, fstype = parts[1], parts[2]
            if (tmp == mount or tmp.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(
                best[1]
            ):
                best = (fstype, mount)
    return f"{best[0]} ({tmp}, mounted at {best[1]})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fills", type=int, default=50_000, help="fills per throughput round; 0: skip")
    p.add_argument("--rounds", type=int, default=5, help="throughput rounds per path")
    p.add_argument("--warmup-fills", type=int, default=10_000, help="0: no warm-up round")
    p.add_argument(
        "--no-nosync",
        dest="nosync",
        action="store_false",
        help="skip the diagnostic third path (a second server without sync_interval always)",
    )
    p.add_argument(
        "--no-unbatched",
        dest="unbatched",
        action="store_false",
        help="skip the durable path without batches (one stream message per fill)",
    )
    p.add_argument("--profile", type=Path, help="cProfile one more durable round, dump here")
    p.add_argument("--catchup-seconds", type=float, default=60.0, help="0: skip the catch-up")
    p.add_argument("--catchup-rate", type=float, default=1000.0, help="fills/s while down")
    p.add_argument("--breaches", type=int, default=500, help="per path; 0: skip latency")
    p.add_argument("--warmup", type=int, default=20, help="warm-up breaches per path")
    p.add_argument("--gap", type=float, default=0.002, help="pause between breaches, s")
    p.add_argument("--stall-timeout", type=float, default=10.0, help="s without progress")
    p.add_argument("--timeout", type=float, default=300.0, help="bound of one round, s")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--raw", action="store_true", help="include every latency sample in the JSON")
    p.add_argument("--publisher", metavar="URL", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.publisher:
        uvloop.run(publisher_main(args.publisher))
        return 0
    result = uvloop.run(bench(args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.json}")
    tp = result.get("throughput", {}).get("summary", {})
    ok = not tp.get("bad_rounds") and result.get("catch_up", {}).get("exact", True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
