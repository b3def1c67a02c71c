"""Daemon ingest vs a bare nats-py subscriber on the same feed, in one run, as a ratio.

Run: ``.venv/bin/python benches/ingest.py [--messages 200000] [--rounds 7] [--ping-interval 1]
[--json PATH]`` (exit status 1 when a run lost messages)

An embedded nats-server on 127.0.0.1; a publisher in a separate process (this script with the
hidden ``--publisher`` flag) pre-encodes ``--messages`` realistic events (quotes, fills and order
events of the algorithms registered in the daemon's config, encoded with
``rampart.protocol.encoder``) and then publishes them as fast as nats-py can, flushing at the end.
The receiving side is measured in this process, with uvloop, alternating:

* A, bare: a nats-py connection with the daemon's connect options, subscribed to the same three
  wildcards with the same pending limits, whose callback only counts;
* B, daemon: ``rampart.daemon.Daemon`` (fresh data directory each round), counting
  ``daemon.stats.ingested``.

Both cases are timed the same way: a sampler task reads the case's counter every
``--sample-interval`` seconds and the rate is (count at the end - count at the first non-zero
sample) / (time between those samples). There is no event for "the daemon has ingested N
messages", and a sampler costs both cases the same. A case has received everything when its count
reaches N; it has dropped messages when its count stops moving for ``--stall-timeout`` seconds after
the publisher has flushed (slow-consumer errors, the server's slow-consumer log lines and
reconnects are reported per run). The result is the median rate per case over the complete runs of
``--rounds`` rounds, and the ratio daemon / bare (aim: >= 0.8); the same per CPU-second of the
receiving thread, which a busy machine disturbs less; and, without NATS, the per-message cost of
the Rust core, of the counting callback and of the daemon's ``_on_event`` on the same messages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nats
import uvloop
from child import stop_child
from machine_info import machine
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import SlowConsumerError

from rampart._core import Engine
from rampart.config import DaemonConfig, ns, parse_config
from rampart.daemon import Daemon
from rampart.embedded import EmbeddedNatsServer
from rampart.nats_connection import connect_options
from rampart.protocol import Fill, OrderEvent, Quote, Subjects, encoder

GATEWAY = "gw1"
# (algorithm id, the symbol it trades)
ALGOS: tuple[tuple[str, str], ...] = (
    ("mom-es-v2", "ESZ5"),
    ("meanrev-es-v1", "ESZ5"),
    ("mom-nq-v2", "NQZ5"),
    ("meanrev-nq-v1", "NQZ5"),
)
START_MID = {"ESZ5": 6000.0, "NQZ5": 21000.0}
TICK = 0.25
EVENT_STEP_NS = 1_000  # 1 µs of event time between messages
AIM_RATIO = 0.8

CONFIG = """
name = "rampart-bench"
data_dir = "{data_dir}"

[nats]
ping_interval = "PT{ping_interval}S"
max_outstanding_pings = {max_pings}

[ingest]
pending_msgs_limit = {pending}

[triggers]
# Stale-data triggers are not what this measures (the run lasts seconds).
market_data_timeout = "PT1H"
gateway_heartbeat_timeout = "PT1H"
"""

ALGO = """
[[algorithms]]
id = "{id}"
version = "1.0.0"
gateway = "{gateway}"
capital = 1000000
limits = {{ max_drawdown = 0.5, max_daily_loss = 0.5, max_error_rate = 0.5, max_latency = "PT1S" }}
"""


def make_config(
    data_dir: Path, pending: int, ping_interval: float = 1.0, max_pings: int = 2
) -> DaemonConfig:
    text = CONFIG.format(
        data_dir=data_dir, pending=pending, ping_interval=ping_interval, max_pings=max_pings
    )
    text += "".join(ALGO.format(id=a, gateway=GATEWAY) for a, _ in ALGOS)
    return parse_config(text.encode())


def make_messages(n: int, t0: int, seed: int) -> list[tuple[str, bytes]]:
    """``n`` (subject, payload) pairs: per 10 messages, 6 quotes, 1 fill and 3 order events.

    Mids random-walk by a tick; fills are 1 lot at the touch, alternating sides every few fills
    per algorithm; acks carry a venue latency of 0.2-0.9 ms; one order in ten is rejected, the
    others are cancelled. Nothing breaches the (loose) limits of ``make_config``.
    """
    subjects = Subjects()
    rng = random.Random(seed)
    mids = dict(START_MID)
    symbols = list(mids)
    out: list[tuple[str, bytes]] = []
    order_seq = 0
    fills = 0
    for i in range(n):
        ts = t0 + i * EVENT_STEP_NS
        slot = i % 10
        algo, symbol = ALGOS[(i // 10) % len(ALGOS)]
        msg: Quote | Fill | OrderEvent
        if slot < 6:
            symbol = symbols[slot % 2]
            mid = mids[symbol] = mids[symbol] + rng.choice((-TICK, 0.0, TICK))
            msg = Quote(symbol=symbol, bid=mid - TICK / 2, ask=mid + TICK / 2, ts=ts)
            out.append((subjects.market(symbol), encoder.encode(msg)))
            continue
        if slot == 6:
            fills += 1
            buy = (fills // 8) % 2 == 0
            price = mids[symbol] + (TICK / 2 if buy else -TICK / 2)
            msg = Fill(
                algo=algo,
                symbol=symbol,
                side="buy" if buy else "sell",
                qty=1.0,
                price=price,
                fee=round(price * 2e-5, 6),
                ts=ts,
                order_id=f"{GATEWAY}-{algo}-{order_seq}",
            )
            out.append((subjects.fills(GATEWAY, algo), encoder.encode(msg)))
            continue
        if slot == 7:
            order_seq += 1
            msg = OrderEvent(
                algo=algo, event="submitted", ts=ts, order_id=f"{GATEWAY}-{algo}-{order_seq}"
            )
        elif slot == 8:
            msg = OrderEvent(
                algo=algo,
                event="acked",
                ts=ts,
                latency_ns=rng.randint(200_000, 900_000),
                order_id=f"{GATEWAY}-{algo}-{order_seq}",
            )
        elif rng.random() < 0.1:
            msg = OrderEvent(
                algo=algo,
                event="rejected",
                ts=ts,
                reason="price band",
                order_id=f"{GATEWAY}-{algo}-{order_seq}",
            )
        else:
            msg = OrderEvent(
                algo=algo, event="cancelled", ts=ts, order_id=f"{GATEWAY}-{algo}-{order_seq}"
            )
        out.append((subjects.orders(GATEWAY, algo), encoder.encode(msg)))
    return out


# ---- the publisher process ---------------------------------------------------------------------


async def publisher_main(url: str) -> None:
    """Line protocol on stdin/stdout: ``prepare <n> <seed>`` -> ``ready <bytes>``;
    ``go`` -> ``done <t_start_ns> <t_end_ns>`` (monotonic clock, shared by all processes);
    ``quit`` or EOF ends it."""
    loop = asyncio.get_running_loop()
    nc = await nats.connect(url, name="bench-publisher", connect_timeout=5)
    messages: list[tuple[str, bytes]] = []
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            words = line.split()
            if not words or words[0] == "quit":
                return
            if words[0] == "prepare":
                messages = make_messages(int(words[1]), time.time_ns(), int(words[2]))
                print("ready", sum(len(d) for _, d in messages), flush=True)
            elif words[0] == "go":
                publish = nc.publish
                start = time.monotonic_ns()
                for subject, data in messages:
                    await publish(subject, data)
                await nc.flush(timeout=120)
                print("done", start, time.monotonic_ns(), flush=True)
    finally:
        await nc.close()


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


# ---- the receiving cases -----------------------------------------------------------------------


@dataclass
class Run:
    case: str  # "bare" or "daemon"
    round: int
    expected: int
    received: int = 0
    rate: float = 0.0  # msgs/s, first to last message
    seconds: float = 0.0
    # msgs per CPU-second of the receiving thread (the event loop) over the same interval, and
    # the share of a core that thread got: below ~0.9 it waited (for the publisher, or the CPU)
    cpu_rate: float = 0.0
    cpu_share: float = 0.0
    publisher_rate: float = 0.0
    slow_consumer: int = 0
    # the server's own view: "Slow Consumer" lines in its log, and our reconnects
    server_slow_consumer: int = 0
    disconnects: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    breaches: int = 0
    complete: bool = False

    @property
    def drops(self) -> int:
        return self.expected - self.received


class BareSubscriber:
    """nats-py with the daemon's connect options and subscriptions; the callback only counts."""

    def __init__(self, config: DaemonConfig, url: str) -> None:
        self.config = config
        self.url = url
        self.count = 0
        self.slow_consumer = 0
        self.disconnects = 0
        self.nc: Client | None = None

    async def _on_msg(self, msg: Msg) -> None:
        self.count += 1

    async def _on_error(self, e: Exception) -> None:
        if isinstance(e, SlowConsumerError):
            self.slow_consumer += 1

    async def _on_disconnected(self) -> None:
        self.disconnects += 1

    async def start(self) -> None:
        self.nc = await nats.connect(
            **connect_options(self.config.nats, [self.url]),
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
        )
        s = self.config.subjects
        limit = self.config.ingest.pending_msgs_limit
        for subject in (s.market_all, s.fills_all, s.orders_all):
            await self.nc.subscribe(
                subject, cb=self._on_msg, pending_msgs_limit=limit, pending_bytes_limit=-1
            )
        await self.nc.flush()

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()


@dataclass
class Sampled:
    first_t: int = 0
    first_cpu: int = 0
    first_count: int = 0
    last_t: int = 0
    last_cpu: int = 0
    last_count: int = 0


async def sample(
    count: Callable[[], int],
    n: int,
    published: asyncio.Event,
    *,
    interval: float,
    stall_timeout: float,
    hard_timeout: float,
) -> Sampled:
    """Read ``count()`` every ``interval`` until it reaches ``n``, or stalls for
    ``stall_timeout`` once everything is published, or ``hard_timeout`` passes."""
    s = Sampled()
    begin = time.perf_counter_ns()
    last_change = begin
    while True:
        await asyncio.sleep(interval)
        c = count()
        now, cpu = time.perf_counter_ns(), time.thread_time_ns()
        if c and not s.first_t:
            s.first_t, s.first_cpu, s.first_count = now, cpu, c
        if c != s.last_count:
            last_change = now
            s.last_t, s.last_cpu, s.last_count = now, cpu, c
        if c >= n:
            return s
        if published.is_set() and (now - last_change) / 1e9 > stall_timeout:
            return s
        if (now - begin) / 1e9 > hard_timeout:
            return s


def slow_consumer_lines(server: EmbeddedNatsServer) -> int:
    """How many times the server has logged a slow consumer so far."""
    log = server.store_dir / "nats-server.log"
    try:
        return log.read_text(errors="replace").lower().count("slow consumer")
    except OSError:
        return 0


async def one_run(
    case: str,
    rnd: int,
    args: argparse.Namespace,
    server: EmbeddedNatsServer,
    publisher: Publisher,
    workdir: Path,
    n: int,
) -> Run:
    url = server.url
    seed = args.seed + rnd
    server_slow_before = slow_consumer_lines(server)
    await publisher.ask(f"prepare {n} {seed}", "ready", timeout=120)
    config = make_config(
        workdir / f"{case}-{rnd}",
        args.pending_msgs_limit,
        args.ping_interval,
        args.max_outstanding_pings,
    )
    run = Run(case=case, round=rnd, expected=n)
    bare: BareSubscriber | None = None
    daemon: Daemon | None = None
    try:
        if case == "bare":
            bare = BareSubscriber(config, url)
            await bare.start()
            sub = bare

            def count() -> int:
                return sub.count
        else:
            daemon = Daemon(config, servers=[url])
            await daemon.start()
            d = daemon

            def count() -> int:
                return d.stats.ingested

        published = asyncio.Event()
        sampler = asyncio.ensure_future(
            sample(
                count,
                n,
                published,
                interval=args.sample_interval,
                stall_timeout=args.stall_timeout,
                hard_timeout=args.timeout,
            )
        )
        try:
            t_start, t_end = map(int, await publisher.ask("go", "done", timeout=args.timeout))
            run.publisher_rate = n / ((t_end - t_start) / 1e9)
            published.set()
            s = await asyncio.wait_for(sampler, args.timeout + 5)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        run.received = count()
        run.complete = run.received == n
        if s.last_t > s.first_t:
            run.seconds = (s.last_t - s.first_t) / 1e9
            run.rate = (s.last_count - s.first_count) / run.seconds
            cpu_seconds = (s.last_cpu - s.first_cpu) / 1e9
            run.cpu_share = cpu_seconds / run.seconds
            if cpu_seconds > 0:
                run.cpu_rate = (s.last_count - s.first_count) / cpu_seconds
        if bare is not None:
            run.slow_consumer = bare.slow_consumer
            run.disconnects = bare.disconnects
        if daemon is not None:
            run.slow_consumer = daemon.slow_consumer_drops
            run.disconnects = sum(e.state == "disconnected" for e in daemon.connectivity)
            run.rejected = dict(daemon.stats.rejected)
            run.breaches = daemon.stats.breaches
    finally:
        if bare is not None:
            await bare.close()
        if daemon is not None:
            await daemon.close()
    run.server_slow_consumer = slow_consumer_lines(server) - server_slow_before
    return run


async def callback_costs(n: int, seed: int, rounds: int = 5) -> dict[str, float]:
    """Per-message cost without NATS (us, best of ``rounds``) on the same messages: the Rust core
    alone (``Engine.ingest_json`` in a Python loop), the bare case's counting callback, and the
    daemon's ``_on_event`` (a ``Daemon`` built but not started: no connection is needed)."""
    config = make_config(Path("unused"), 1)
    payloads = [(subj, d) for subj, d in make_messages(n, time.time_ns(), seed)]
    msgs = [Msg(None, subject=subj, data=d) for subj, d in payloads]  # type: ignore[arg-type]
    best = {"core": math.inf, "count": math.inf, "daemon": math.inf}
    for _ in range(rounds):
        engine = Engine(time_tolerance_ns=ns(config.ingest.time_tolerance))
        for algo in config.algorithms:
            engine.register(algo.to_core())
        ingest = engine.ingest_json
        start = time.perf_counter_ns()
        for _subject, data in payloads:
            ingest(data)
        best["core"] = min(best["core"], (time.perf_counter_ns() - start) / n / 1e3)

        bare = BareSubscriber(config, "unused")
        on_msg = bare._on_msg
        start = time.perf_counter_ns()
        for msg in msgs:
            await on_msg(msg)
        best["count"] = min(best["count"], (time.perf_counter_ns() - start) / n / 1e3)

        daemon = Daemon(config)
        on_event = daemon._on_event
        start = time.perf_counter_ns()
        for msg in msgs:
            await on_event(msg)
        best["daemon"] = min(best["daemon"], (time.perf_counter_ns() - start) / n / 1e3)
        if daemon.stats.ingested != n:
            raise RuntimeError(f"the daemon refused messages: {daemon.stats.rejected}")
    return best


# ---- report --------------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def report(runs: list[Run], costs: dict[str, float], args: argparse.Namespace) -> dict[str, Any]:
    print()
    print(
        f"{'case':<7} {'rnd':>3} {'msgs/s':>9} {'msgs/cpu-s':>10} {'cpu':>5} {'received':>8} "
        f"{'drops':>6} {'slow':>4} {'srv-slow':>8} {'disc':>4} {'seconds':>7} {'pub msgs/s':>10}"
    )
    for r in runs:
        print(
            f"{r.case:<7} {r.round:>3} {r.rate:>9,.0f} {r.cpu_rate:>10,.0f} {r.cpu_share:>5.2f} "
            f"{r.received:>8} {r.drops:>6} {r.slow_consumer:>4} {r.server_slow_consumer:>8} "
            f"{r.disconnects:>4} {r.seconds:>7.3f} {r.publisher_rate:>10,.0f}"
        )
    # A run that lost messages (a reconnect) has no valid rate: medians over complete runs.
    ok = [r for r in runs if r.complete]
    med: dict[tuple[str, str], float] = {}
    for case in ("bare", "daemon"):
        med[(case, "wall")] = _median([r.rate for r in ok if r.case == case])
        med[(case, "cpu")] = _median([r.cpu_rate for r in ok if r.case == case])
    ratio = med[("daemon", "wall")] / med[("bare", "wall")] if med[("bare", "wall")] else 0.0
    cpu_ratio = med[("daemon", "cpu")] / med[("bare", "cpu")] if med[("bare", "cpu")] else 0.0
    by = {(r.case, r.round): r for r in ok}
    paired = [
        by[("daemon", i)].rate / by[("bare", i)].rate
        for i in range(args.rounds)
        if ("bare", i) in by and ("daemon", i) in by
    ]
    complete = all(r.complete and not r.slow_consumer and not r.server_slow_consumer for r in runs)
    incomplete = [f"{r.case} round {r.round}" for r in runs if not r.complete]
    clean = all(not r.rejected and not r.breaches for r in runs if r.case == "daemon")
    verdict = "OK" if ratio >= AIM_RATIO else "MISSED"
    cpu_verdict = "OK" if cpu_ratio >= AIM_RATIO else "MISSED"
    n_ok = {c: sum(r.case == c for r in ok) for c in ("bare", "daemon")}
    print()
    for case, label in (("bare", "bare nats-py"), ("daemon", "daemon")):
        w, c = med[(case, "wall")], med[(case, "cpu")]
        print(
            f"median {label:<12}: {w:>9,.0f} msgs/s ({1e6 / w if w else 0:.2f} us/msg wall), "
            f"{c:>9,.0f} msgs/cpu-s ({1e6 / c if c else 0:.2f} us CPU/msg), "
            f"{n_ok[case]} complete runs"
        )
    print(
        f"ratio daemon / bare : {ratio:.3f} wall clock (aim >= {AIM_RATIO}: {verdict}); "
        f"{cpu_ratio:.3f} per CPU-second ({cpu_verdict})"
    )
    print(f"per-round wall ratios (back-to-back pairs): {', '.join(f'{x:.3f}' for x in paired)}")
    print(
        f"without NATS, per message (same messages, best of 5): Rust core alone "
        f"{costs['core']:.2f} us (Engine.ingest_json in a Python loop); the bare counting "
        f"callback {costs['count']:.2f} us; the daemon's _on_event {costs['daemon']:.2f} us"
    )
    print(
        f"every run received all {args.messages} messages, no slow consumer: {complete}"
        + (f" (incomplete: {', '.join(incomplete)})" if incomplete else "")
    )
    print(f"daemon: nothing refused, no breach: {clean}")
    print(
        f"both cases: pending_msgs_limit {args.pending_msgs_limit}, nats.ping_interval "
        f"{args.ping_interval:g} s, max_outstanding_pings {args.max_outstanding_pings}; "
        "the publisher was not paced"
    )
    return {
        "median_bare_msgs_per_s": med[("bare", "wall")],
        "median_daemon_msgs_per_s": med[("daemon", "wall")],
        "ratio": ratio,
        "verdict": verdict,
        "median_bare_msgs_per_cpu_s": med[("bare", "cpu")],
        "median_daemon_msgs_per_cpu_s": med[("daemon", "cpu")],
        "cpu_ratio": cpu_ratio,
        "cpu_verdict": cpu_verdict,
        "per_round_ratios": paired,
        "aim_ratio": AIM_RATIO,
        "per_msg_us_without_nats": costs,
        "all_received": complete,
        "incomplete_runs": incomplete,
        "daemon_clean": clean,
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    workdir = Path(tempfile.mkdtemp(prefix="rampart-bench-ingest-"))
    logging.basicConfig(
        level=logging.WARNING,
        filename=str(workdir / "bench.log"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    server = EmbeddedNatsServer(store_dir=workdir / "nats")
    publisher: Publisher | None = None
    runs: list[Run] = []
    try:
        url = await asyncio.to_thread(server.start)
        publisher = Publisher(url)
        await publisher.start()
        print(f"nats-server {url}; publisher in a separate process; receiver in this process")
        if args.warmup_messages:
            for case in ("bare", "daemon"):
                w = await one_run(case, -1, args, server, publisher, workdir, args.warmup_messages)
                print(f"warm-up {case}: {w.received}/{w.expected} at {w.rate:,.0f} msgs/s")
        for rnd in range(args.rounds):
            for case in ("bare", "daemon") if rnd % 2 == 0 else ("daemon", "bare"):
                run = await one_run(case, rnd, args, server, publisher, workdir, args.messages)
                runs.append(run)
                print(
                    f"round {rnd} {case:<6}: {run.rate:>10,.0f} msgs/s, "
                    f"{run.received}/{run.expected} received"
                    + (f", {run.slow_consumer} slow-consumer errors" if run.slow_consumer else "")
                    + (
                        f", server logged {run.server_slow_consumer} slow consumer(s)"
                        if run.server_slow_consumer
                        else ""
                    )
                    + (f", {run.disconnects} disconnect(s)" if run.disconnects else "")
                    + (f", refused {run.rejected}" if run.rejected else "")
                )
    finally:
        if publisher is not None:
            await publisher.stop()
        await asyncio.to_thread(server.stop)
        logging.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    costs = await callback_costs(args.messages, args.seed)
    summary = report(runs, costs, args)
    return {
        "benchmark": "daemon ingest vs bare nats-py",
        "command": " ".join([".venv/bin/python", "benches/ingest.py", *sys.argv[1:]]),
        "machine": {**machine(), "loadavg_at_start": load_at_start},
        "params": {
            "messages": args.messages,
            "rounds": args.rounds,
            "pending_msgs_limit": args.pending_msgs_limit,
            "ping_interval_s": args.ping_interval,
            "max_outstanding_pings": args.max_outstanding_pings,
            "sample_interval_s": args.sample_interval,
            "seed": args.seed,
        },
        "runs": [{**asdict(r), "drops": r.drops} for r in runs],
        "summary": summary,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = DaemonConfig()
    p.add_argument("--messages", type=int, default=200_000, help="messages per run")
    p.add_argument("--rounds", type=int, default=7, help="runs per case, alternating")
    p.add_argument("--warmup-messages", type=int, default=20_000, help="0: no warm-up run")
    p.add_argument(
        "--pending-msgs-limit",
        type=int,
        default=defaults.ingest.pending_msgs_limit,
        help="subscription pending limit, both cases (the daemon's ingest.pending_msgs_limit)",
    )
    p.add_argument(
        "--ping-interval",
        type=float,
        default=defaults.nats.ping_interval.total_seconds(),
        help="nats.ping_interval of both cases, seconds (the daemon's default)",
    )
    p.add_argument(
        "--max-outstanding-pings",
        type=int,
        default=defaults.nats.max_outstanding_pings,
        help="nats.max_outstanding_pings of both cases (the daemon's default)",
    )
    p.add_argument("--sample-interval", type=float, default=0.001, help="seconds")
    p.add_argument("--stall-timeout", type=float, default=3.0, help="seconds without progress")
    p.add_argument("--timeout", type=float, default=60.0, help="bound of one run, seconds")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--publisher", metavar="URL", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.publisher:
        uvloop.run(publisher_main(args.publisher))
        return 0
    result = uvloop.run(bench(args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0 if result["summary"]["all_received"] else 1


if __name__ == "__main__":
    sys.exit(main())
