"""Rollback latency: tick-to-halt through the daemon, and the executor's steps for 1/100/1000
algorithms on one gateway, over a real nats-server on 127.0.0.1.

Run: ``.venv/bin/python benches/rollback_latency.py [--t2h-iterations 1000]
[--sizes 1:1000,100:200,1000:50] [--gateway both] [--open-orders 1] [--events core|durable]
[--signing on|ab] [--fast-halt on|ab] [--t2h-gateway process|in-process] [--json PATH]``

baselines: bare nats-py on the same server: one hop (publish -> callback on another connection)
   and one request -> reply round trip; the floor under every step below.
a. tick-to-halt, each party on its own NATS connection: the daemon (``rampart.daemon.Daemon``)
   and the publisher of the breaching events in this uvloop process, the reference gateway
   (``ReferenceGateway`` and its ``GatewayAgent``) in a child process as in production
   (``--t2h-gateway in-process``: on this process's event loop, as before issue 15); one
   monotonic clock times them all (``time.perf_counter_ns`` is CLOCK_MONOTONIC, the same in
   every process of the host; the child reports its times after the halt). Timed from just
   before ``publish`` of a fill that breaches the
   algorithm's drawdown limit (buying 10 at 6000 with the market at 5400: 6% of a 100k capital,
   limit 5%) to the moment the gateway's ``halt`` handler is entered, split at the daemon's
   breach listeners, the executor sending the halt and the gateway receiving it. Each iteration
   uses a fresh algorithm (the config registers one per iteration, each with its own symbol,
   quoted once at set-up), so every breach is the first breach of a clean algorithm. An iteration
   ends when the daemon's rollback alert arrives (rollback acked, recorded and audited); the
   algorithm is then released with ``guard.release``, so the set of halted algorithms stays empty
   and the guard's periodic work (its watchdog walks the algorithms not halted) is the same for
   every iteration. The daemon logs (breach, rollback) to a file, as it logs to stderr in
   production. ``--signing ab`` alternates the iterations (ABBA) between the signed path (every
   command signed by the daemon, verified by the gateway) and the same path with signing off
   (no signature headers; the gateway takes unsigned commands, as before issue 12), and
   reports the ratio of their percentiles.
b. the executor alone: ``RollbackExecutor.execute`` (default ``ExecutorSettings``: 50 ms per
   attempt) against a ``ReferenceGateway`` hosting N faulty versions, each with ``--open-orders``
   resting orders, and their N previous versions; the gateway runs in this process or in a child
   process (``--gateway``). The step durations come from the returned record (halt, cancel,
   allocate, activate, total). Between iterations the faulty versions are resumed with
   ``executor.broadcast("resume", ...)`` (which places their resting orders again, so the next
   halt and cancel are real), then an empty command is acked as a barrier, so that no retry of one
   iteration is still queued at the gateway when the next starts.

Percentiles are nearest-rank. Targets: the seed's (halt < 100 ms, cancel < 500 ms, whole rollback
< 1 s; checked against the max) and our aims on the p99 (tick-to-halt < 2 ms; cancel-all < 5 ms;
whole rollback < 5 ms for 1 algorithm, < 10 ms for 100, < 20 ms for 1000: issue 15's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import inspect
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats
import uvloop
from child import stop_child
from machine_info import machine
from nats.aio.client import Client
from nats.aio.msg import Msg

import rampart.daemon as daemon_module
from rampart._core import Breach
from rampart.config import DaemonConfig, IngestConfig, parse_config
from rampart.daemon import Daemon
from rampart.embedded import EmbeddedNatsServer
from rampart.gateway.reference import HostedAlgo, Momentum, ReferenceGateway
from rampart.protocol import Command, Fill, Quote, Subjects, alert_decoder, encoder
from rampart.rollback import ExecutorSettings, RollbackExecutor, RollbackRequest, StepOutcome

SUBJ = Subjects()
GATEWAY = "gw1"
SEED_MS = {"halt": 100.0, "cancel": 500.0, "total": 1000.0}
AIM_T2H_MS = 2.0
AIM_CANCEL_MS = 5.0
AIM_TOTAL_MS = {1: 5.0, 100: 10.0, 1000: 20.0}  # issue 15's (1,000 was 50 before)
MS = 1e6

CONFIG = """
name = "rampart-bench"
data_dir = "{data_dir}"

[triggers]
# Staleness triggers stay on (the watchdog runs), but must not fire on the quotes of the set-up.
market_data_timeout = "PT1H"

[ingest]
# A heartbeat v2 (issue 9) carries each algorithm's state, ~110-220 bytes per algorithm: 112 KB
# for the 1,020 algorithms of part a. Up to 7a623d3 heartbeats had the events' 16 KiB limit and
# were refused ("oversize"); since 3d8a922 they have their own (max_heartbeat_bytes, 1 MiB). Kept
# so that this file runs unchanged on both sides of the issue 9 comparison (BENCHMARKS.md).
max_payload_bytes = 1048576
"""

ALGO = """
[[algorithms]]
id = "{id}"
version = "1.0.0"
gateway = "{gateway}"
capital = 100000
limits = {{ max_drawdown = 0.05 }}
"""


# ---- statistics and report -----------------------------------------------------------------


def pct(sorted_ns: list[int], p: float) -> float:
    """Nearest-rank percentile, in ms."""
    k = max(1, math.ceil(p / 100 * len(sorted_ns)))
    return sorted_ns[k - 1] / MS


@dataclass
class Metric:
    name: str
    samples: list[int] = field(default_factory=list)  # ns
    seed_ms: float | None = None
    aim_ms: float | None = None  # aim on the p99

    def row(self, raw: bool = False) -> dict[str, Any]:
        s = sorted(self.samples)
        out: dict[str, Any] = {"metric": self.name.strip(), "n": len(s)}
        if s:
            out |= {"p50_ms": pct(s, 50), "p99_ms": pct(s, 99), "max_ms": s[-1] / MS}
        out["seed_target_ms"] = self.seed_ms
        out["aim_p99_ms"] = self.aim_ms
        if s and self.seed_ms is not None:
            out["vs_seed"] = "OK" if s[-1] / MS < self.seed_ms else "MISSED"
        if s and self.aim_ms is not None:
            out["vs_aim"] = "OK" if pct(s, 99) < self.aim_ms else "MISSED"
        if raw:
            out["samples_ns"] = self.samples  # in iteration order
        return out


def table(title: str, metrics: list[Metric], raw: bool) -> list[dict[str, Any]]:
    rows = [m.row(raw) for m in metrics]
    print()
    print(title)
    print(
        f"  {'metric':<48} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'seed (max)':>14} {'aim (p99)':>14}"
    )

    def verdict(r: dict[str, Any], limit: float | None, key: str) -> str:
        return "—" if limit is None else f"< {limit:g} {r.get(key, '?')}"

    for m, r in zip(metrics, rows, strict=True):
        nums = (
            f"{r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['max_ms']:>8.3f}"
            if r["n"]
            else f"{'-':>8} {'-':>8} {'-':>8}"
        )
        print(
            f"  {m.name:<48} {r['n']:>5} {nums} "
            f"{verdict(r, r['seed_target_ms'], 'vs_seed'):>14} "
            f"{verdict(r, r['aim_p99_ms'], 'vs_aim'):>14}"
        )
    return rows


# ---- baselines: bare nats-py on the same server, in the same process -------------------------


async def nats_baselines(url: str, n: int, timeout: float) -> list[Metric]:
    """One hop (publish -> callback on another connection) and one request -> reply round trip
    (a responder on another connection answering at once): the floor under every step."""
    a = await nats.connect(url, name="bench-a")
    b = await nats.connect(url, name="bench-b")
    loop = asyncio.get_running_loop()
    hop = Metric("one hop: publish -> callback, other connection")
    rtt = Metric("request -> reply, responder on other connection")
    waiting: list[asyncio.Future[int]] = []

    async def on_hop(msg: Msg) -> None:
        t = time.perf_counter_ns()
        if waiting and not waiting[0].done():
            waiting[0].set_result(t)

    async def on_request(msg: Msg) -> None:
        await msg.respond(b"ok")

    try:
        await b.subscribe("bench.hop", cb=on_hop)
        await b.subscribe("bench.rtt", cb=on_request)
        # (nats-py's own flush can put its PING ahead of the SUBs: the first publish was then
        # lost and the run timed out; rampart.nats_flush yields to the flusher first)
        await flush_subscriptions(b)
        payload = b"x" * 200
        for i in range(n + 20):
            fut: asyncio.Future[int] = loop.create_future()
            waiting[:] = [fut]
            start = time.perf_counter_ns()
            await a.publish("bench.hop", payload)
            t = await asyncio.wait_for(fut, timeout)
            start2 = time.perf_counter_ns()
            await a.request("bench.rtt", payload, timeout=timeout)
            t2 = time.perf_counter_ns()
            if i >= 20:
                hop.samples.append(t - start)
                rtt.samples.append(t2 - start2)
    finally:
        await a.close()
        await b.close()
    return [hop, rtt]


# ---- a. tick-to-halt through the daemon --------------------------------------------------------


class TimedGateway(ReferenceGateway):
    """The reference gateway, timestamping the arrival of each command message and the entry of
    its halt handler (the agent handles one command message at a time)."""

    def positions(self) -> None:  # type: ignore[override]
        """No position reports: the breaching fills come from the bench's feed, not from this
        gateway's venue, so its positions would differ from Rampart's by construction (drift,
        alerted, rolled back), which is not what is timed here."""
        return None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # algo -> future of (halt handler entered, its command message arrived)
        self.waiting: dict[str, asyncio.Future[tuple[int, int]]] = {}
        self.command_rx = 0
        # in a child process: told of each halt (algo, halt handler entered, command arrived)
        self.report: Callable[[str, int, int], None] | None = None
        on_command = self.agent._on_command

        async def timed(msg: Msg) -> None:
            self.command_rx = time.perf_counter_ns()
            await on_command(msg)

        self.agent._on_command = timed  # type: ignore[method-assign]

    async def halt(self, algo: str) -> None:
        t = time.perf_counter_ns()
        fut = self.waiting.pop(algo, None)
        if fut is not None and not fut.done():
            fut.set_result((t, self.command_rx))
        if self.report is not None:
            self.report(algo, t, self.command_rx)
        await super().halt(algo)


T2H_REPORTS = "bench.t2h.halted"


def t2h_gateway(nc: Client, spec: dict[str, Any]) -> TimedGateway:
    """Part a's gateway, in this process or in a child (the same ``spec`` either way)."""
    gateway = TimedGateway(
        nc,
        GATEWAY,
        [
            HostedAlgo(a, sym, Momentum(), allocation=1.0, active=False)
            for a, sym in spec["symbols"].items()
        ],
        deadman_timeout=3600.0,
        **({"durable": spec["durable"]} if GATEWAY_HAS_DURABLE else {}),
        **({"wire_servers": spec.get("wire_servers")} if GATEWAY_HAS_WIRE else {}),
        **trusting(spec["keys"]),
    )
    if spec["accept_unsigned"]:
        verify = gateway.agent.verifier.check
        gateway.agent.verifier.check = (  # type: ignore[method-assign]
            lambda subject, body, headers: verify(subject, body, headers) if headers else None
        )
    return gateway


async def request_status(nc: Client, every: float, counts: dict[str, int]) -> None:
    """Ask for the status of every algorithm (its first page, as `rampart status` does) every
    ``every`` seconds, until cancelled."""
    while True:
        await asyncio.sleep(every)
        try:
            await nc.request(SUBJ.status("algorithms"), b"", timeout=5.0)
            counts["answered"] += 1
        except Exception:
            counts["failed"] += 1


async def serve_t2h_gateway(url: str, spec_path: str) -> None:
    """Part a's gateway as a child process: each halt handler's entry and its command's arrival
    (``time.perf_counter_ns``: CLOCK_MONOTONIC, one clock for every process on the host) are
    published on ``T2H_REPORTS`` after the fact; ``ready`` on stdout once it listens, EOF on
    stdin ends it."""
    loop = asyncio.get_running_loop()
    nc = await nats.connect(url, name="bench-gateway")
    gateway = t2h_gateway(nc, json.loads(Path(spec_path).read_text()))
    reports: set[asyncio.Task[None]] = set()

    def report(algo: str, t_halt: int, t_rx: int) -> None:
        armed = getattr(gateway.agent.verifier, "armed_used", 0)
        task = asyncio.ensure_future(
            nc.publish(T2H_REPORTS, f"{algo} {t_halt} {t_rx} {armed}".encode())
        )
        reports.add(task)
        task.add_done_callback(reports.discard)

    gateway.report = report
    try:
        await gateway.start()
        spec = json.loads(Path(spec_path).read_text())
        if spec.get("gc_freeze") and heap_module is not None:
            heap_module.freeze_startup_heap()  # as a gateway on the SDK should (docs)
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.read)
    finally:
        await gateway.close()
        await nc.close()


# Since issue 10 fills travel on a JetStream stream (``[events] durable = true``, the default);
# ``--events core`` takes them from core NATS as before, so the halt path can be compared with
# a tree from before issue 10 (which has no ``[events]``) on the same transport.
HAS_EVENTS = "events" in DaemonConfig.__struct_fields__
GATEWAY_HAS_DURABLE = "durable" in inspect.signature(ReferenceGateway.__init__).parameters
try:  # a tree from before the SUB/PING race was found (stop 20) flushes as nats-py does
    from rampart.nats_flush import flush as flush_subscriptions
except ImportError:

    async def flush_subscriptions(nc: Client) -> None:
        await nc.flush()


try:  # issue 15: the gateway child freezes its start-up heap too
    import rampart.heap as heap_module
except ImportError:
    heap_module = None  # type: ignore[assignment]
# issue 15: the gateway SDK's commands parsed in Rust on a connection of their own
GATEWAY_HAS_WIRE = "wire_servers" in inspect.signature(ReferenceGateway.__init__).parameters
# a tree from before issue 12: commands and heartbeats unsigned, gateways trusting anyone
GATEWAY_TRUSTS = "trusted_keys" in inspect.signature(ReferenceGateway.__init__).parameters
# part b's executor signs with this key when the tree signs (its gateway trusts it)
BENCH_SEED: str | None = None
# a tree from before issue 15's batch-applying gateways
GATEWAY_BATCHES = hasattr(ReferenceGateway, "apply_batch")
# a tree from before issue 15's halt from the ingest path
HAS_FAST_HALT = hasattr(RollbackExecutor, "fire_halt")
# issue 15: market data parsed and applied in Rust on its own connection ([ingest] wire)
HAS_WIRE = "wire" in IngestConfig.__struct_fields__
# armed halts (issue 12): halts signed in advance, their commitments in the sidecar heartbeat
HAS_ARMED = hasattr(RollbackExecutor, "take_armed")
if GATEWAY_TRUSTS:
    from rampart.signing import SigningKey, sign_headers

    BENCH_SEED = SigningKey.generate().seed()


def trusting(keys: list[str]) -> dict[str, Any]:
    """The gateway's ``trusted_keys`` argument, where the tree has it."""
    return {"trusted_keys": keys} if GATEWAY_TRUSTS else {}


def bench_signer() -> dict[str, Any]:
    """Part b's executor ``sign`` argument, where the tree signs."""
    if BENCH_SEED is None:
        return {}
    key = SigningKey(BENCH_SEED)
    return {"sign": lambda subject, body: sign_headers(key, subject, body)}


def bench_keys(seed: str | None) -> list[str]:
    return [SigningKey(seed).public_key] if seed is not None and GATEWAY_TRUSTS else []


def t2h_config(data_dir: Path, algos: list[str], events: str, wire: str) -> DaemonConfig:
    text = CONFIG.format(data_dir=data_dir)
    if HAS_WIRE:
        text = text.replace("[ingest]\n", f'[ingest]\nwire = "{wire}"\n', 1)
    elif wire != "nats-py":
        raise SystemExit("--wire rust: this tree has no Rust wire path")
    if HAS_EVENTS:
        text += f"\n[events]\ndurable = {'true' if events == 'durable' else 'false'}\n"
    elif events == "durable":
        raise SystemExit("--events durable: this tree has no durable events stream")
    if HAS_ARMED:
        # every halt signed (and armed) once before the breaches, valid for the whole run
        text += '\n[rollback]\npresign_validity = "PT1H"\n'
    text += "".join(ALGO.format(id=a, gateway=GATEWAY) for a in algos)
    return parse_config(text.encode())


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Bounded polling, only for state that has no event (set-up only)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout}s")
        await asyncio.sleep(0.002)


async def tick_to_halt(
    url: str, workdir: Path, args: argparse.Namespace
) -> tuple[list[Metric], dict[str, Any]]:
    n_total = max(args.t2h_algos, args.t2h_warmup + args.t2h_iterations)
    algos = [f"t2h-{i:05d}" for i in range(n_total)]
    symbol = {a: f"S{i:05d}" for i, a in enumerate(algos)}
    config = t2h_config(workdir / "t2h", algos, args.events, args.wire)
    daemon = Daemon(config, servers=[url])
    status_nc: Client | None = None
    status_load: asyncio.Future[None] | None = None
    status_counts = {"answered": 0, "failed": 0}
    gw_nc: Client | None = None
    feed: Client | None = None
    gateway: TimedGateway | None = None
    child: ChildProcess | None = None
    reports: Client | None = None
    # algo -> future of (halt handler entered, its command message arrived)
    waiting: dict[str, asyncio.Future[tuple[int, int]]] = {}
    alerts: dict[str, asyncio.Future[None]] = {}
    breach_at: dict[str, int] = {}

    async def on_alert(msg: Msg) -> None:
        alert = alert_decoder.decode(msg.data)
        for a in alert.algos:
            fut = alerts.pop(a, None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    def on_breaches(breaches: list[Breach]) -> None:
        t = time.perf_counter_ns()
        for b in breaches:
            breach_at.setdefault(b.algo_id, t)

    sent_at: dict[str, int] = {}
    # the gateway's count of halts accepted armed (by their commitment, no Ed25519 verification)
    armed_used = [0]

    # --signing ab: iterations alternate (ABBA) between the signed path and the same path with
    # the signing switched off (the executor sends no signature headers; the gateway takes an
    # unsigned command as the SDK did before issue 12, and still verifies a signed one)
    #
    # --fast-halt ab: iterations alternate (ABBA) between the halt sent from the ingest path
    # (issue 15: ``RollbackExecutor.fire_halt``, before the rollback's task runs) and the halt
    # sent by the rollback's task, as before
    if args.signing == "ab" and args.fast_halt == "ab":
        raise SystemExit("--signing ab and --fast-halt ab: one comparison per run")
    if args.signing == "ab" and GATEWAY_TRUSTS:
        modes = ["signed", "unsigned"]
    elif args.fast_halt == "ab" and HAS_FAST_HALT:
        modes = ["fast halt", "halt from the task"]
    else:
        modes = ["as built"]
    per_mode: dict[str, list[Metric]] = {}
    for mode in modes:
        tag = "" if mode in ("signed", "as built", "fast halt") else f"[{mode}] "
        t2h = Metric(
            f"{tag}tick-to-halt (publish -> gateway halt handler)", seed_ms=SEED_MS["halt"]
        )
        t2h.aim_ms = AIM_T2H_MS
        cancel_step = Metric(f"{tag}daemon record: cancel step acked", seed_ms=SEED_MS["cancel"])
        cancel_step.aim_ms = AIM_CANCEL_MS
        total = Metric(f"{tag}daemon record: whole rollback acked", seed_ms=SEED_MS["total"])
        total.aim_ms = AIM_TOTAL_MS[1]
        per_mode[mode] = [
            t2h,
            Metric(f"{tag}  publish -> daemon breach listeners"),
            Metric(f"{tag}  breach listeners -> executor sends the halt"),
            Metric(f"{tag}  halt sent -> gateway receives the command"),
            Metric(f"{tag}  gateway receives -> halt handler entered"),
            Metric(f"{tag}daemon record: halt step acked", seed_ms=SEED_MS["halt"]),
            cancel_step,
            total,
        ]
    extra: dict[str, Any] = {}
    loop = asyncio.get_running_loop()
    started = False
    try:
        await daemon.start()
        started = True
        if args.gc_freeze and hasattr(daemon_module, "freeze_startup_heap"):
            daemon_module.freeze_startup_heap()  # as ``Daemon.run`` does
        assert daemon.guard is not None
        guard = daemon.guard
        daemon.breach_listeners.insert(0, on_breaches)
        executor = guard.executor
        send = executor.send

        async def timed_send(
            gateway: str,
            command: Command,
            deadline: float,
            encoded: tuple[bytes, dict[str, str] | None] | None = None,
        ) -> StepOutcome:
            if command.kind == "halt":
                t = time.perf_counter_ns()
                for target in command.targets:
                    sent_at.setdefault(target.algo, t)
            return await send(gateway, command, deadline, encoded)

        executor.send = timed_send  # type: ignore[method-assign]
        fire = getattr(executor, "fire_halt", None)

        async def timed_fire(algo: str) -> Any:
            if fast_off:
                return None
            sent_at.setdefault(algo, time.perf_counter_ns())
            return await fire(algo)  # type: ignore[misc]

        fast_off = False
        if fire is not None:
            executor.fire_halt = timed_fire  # type: ignore[method-assign]
        fire_direct = getattr(executor, "fire_halt_direct", None)

        def timed_fire_direct(algo: str) -> Any:
            # the wire path writes the halt before the breach listeners run: this row
            # ("breach listeners -> executor sends the halt") is then negative
            if fast_off:
                return None
            sent_at.setdefault(algo, time.perf_counter_ns())
            return fire_direct(algo)  # type: ignore[misc]

        if fire_direct is not None:
            executor.fire_halt_direct = timed_fire_direct  # type: ignore[method-assign]
        sign = getattr(executor, "sign", None)
        spec = {
            "symbols": symbol,
            "durable": args.events == "durable",
            "keys": [daemon.public_key] if GATEWAY_TRUSTS else [],
            # the unsigned half of --signing ab: taken as the SDK did before issue 12
            "accept_unsigned": modes == ["signed", "unsigned"],
            "wire_servers": [url] if args.gateway_wire == "rust" else None,
            "gc_freeze": args.gc_freeze,
        }
        if args.t2h_gateway == "process":
            spec_path = workdir / "t2h-gateway.json"
            spec_path.write_text(json.dumps(spec))
            reports = await nats.connect(url, name="bench-reports")

            async def on_report(msg: Msg) -> None:
                algo, t_halt, t_rx, armed = msg.data.decode().split()
                armed_used[0] = int(armed)
                fut = waiting.pop(algo, None)
                if fut is not None and not fut.done():
                    fut.set_result((int(t_halt), int(t_rx)))

            await reports.subscribe(T2H_REPORTS, cb=on_report)
            await reports.flush()
            child = ChildProcess(["--serve-t2h-gateway", url, str(spec_path)])
            await child.start(30)
        else:
            gw_nc = await nats.connect(url, name="bench-gateway")
            gateway = t2h_gateway(gw_nc, spec)
            gateway.waiting = waiting
            await gateway.start()
        feed = await nats.connect(url, name="bench-feed")
        await feed.subscribe(f"{SUBJ.prefix}.alert.>", cb=on_alert)
        await until(lambda: GATEWAY in daemon.gateways, 10, "the daemon did not see the gateway")
        # Quote every symbol once (no algorithm holds anything yet: nothing happens).
        t0 = time.time_ns()
        for i, a in enumerate(algos):
            # --tick fill: marked at 5400, a buy at 6000 breaches; --tick quote: marked at
            # 6000, the buy does not, the quote at 5400 that follows does
            mid = 6000.0 if args.tick == "quote" else 5400.0
            q = Quote(symbol=symbol[a], bid=mid - 0.25, ask=mid + 0.25, ts=t0 + i)
            await feed.publish(SUBJ.market(symbol[a]), encoder.encode(q))
        await feed.flush()
        await until(
            lambda: daemon.stats.ingested >= n_total, 30, "the set-up quotes were not ingested"
        )
        # The guard's watchdog walks the algorithms every check_interval on the event loop.
        extra["watchdog_check_ms"] = watchdog_cost(daemon)

        def mode_of(i: int) -> str:
            return modes[0] if len(modes) == 1 else modes[(i % 4) in (1, 2)]  # ABBA

        measured = algos[: args.t2h_warmup + args.t2h_iterations]
        if HAS_ARMED:
            # As the daemon does (presign_loop, a sidecar heartbeat): each halt is signed in
            # advance and its commitment reaches the gateway before any breach (the unsigned
            # half has no signature and nothing to arm).
            for i, algo in enumerate(measured):
                executor.sign = sign if mode_of(i) != "unsigned" else None
                executor.presign(algo)
            executor.sign = sign
            await until(lambda: not executor._to_arm, 30, "the halts were not armed")
            await asyncio.sleep(2 * config.heartbeat_interval.total_seconds())
        if args.status_every > 0:  # an operator's (or a dashboard's) status requests meanwhile
            status_nc = await nats.connect(url, name="bench-status")
            status_load = asyncio.ensure_future(
                request_status(status_nc, args.status_every / 1000, status_counts)
            )
        for i, algo in enumerate(measured):
            mode = mode_of(i)
            if GATEWAY_TRUSTS:
                executor.sign = sign if mode != "unsigned" else None
            fast_off = mode == "halt from the task"
            if hasattr(executor, "presign") and not HAS_ARMED:
                # its halt signed in advance (or not, for the unsigned path), as the daemon
                # keeps one ready for every algorithm (rollback.presign_validity)
                executor.presign(algo)
            fill = Fill(
                algo=algo,
                symbol=symbol[algo],
                side="buy",
                qty=10.0,
                price=6000.0,
                ts=time.time_ns(),
                order_id=f"{GATEWAY}-{algo}-1",
            )
            data = encoder.encode(fill)
            subject = SUBJ.fills(GATEWAY, algo)
            if args.tick == "quote":  # the fill first, untimed; the breaching quote is the tick
                await feed.publish(subject, data)
                await until(
                    lambda a=algo: daemon.engine.snapshot(a).fills == 1, 10, "fill not applied"
                )
                tick = Quote(symbol=symbol[algo], bid=5399.75, ask=5400.25, ts=time.time_ns())
                subject, data = SUBJ.market(symbol[algo]), encoder.encode(tick)
            halted: asyncio.Future[tuple[int, int]] = loop.create_future()
            alerted: asyncio.Future[None] = loop.create_future()
            waiting[algo] = halted
            alerts[algo] = alerted
            start = time.perf_counter_ns()
            await feed.publish(subject, data)
            t_halt, t_rx = await asyncio.wait_for(halted, args.timeout)
            await asyncio.wait_for(alerted, args.timeout)
            record = guard.recent[0]
            if record.algos != [algo] or record.state != "succeeded":
                raise RuntimeError(f"unexpected rollback record for {algo}: {record}")
            await asyncio.wait_for(
                guard.release((algo,), "bench", "benchmark: next iteration"), args.timeout
            )
            t_breach, t_send = breach_at.pop(algo), sent_at.pop(algo)
            if i < args.t2h_warmup:
                if i == args.t2h_warmup - 1:
                    if hasattr(daemon, "loop_lag"):  # (a tree before issue 15 has no probe)
                        daemon.loop_lag.reset()  # the lag over the measured breaches only
                continue
            m = per_mode[mode]
            t2h, to_breach, to_send, to_rx, to_handler, halt_step, cancel_step, total = m
            t2h.samples.append(t_halt - start)
            to_breach.samples.append(t_breach - start)
            to_send.samples.append(t_send - t_breach)
            to_rx.samples.append(t_rx - t_send)
            to_handler.samples.append(t_halt - t_rx)
            steps = {s.name: s.duration_ns for s in record.steps}
            for metric, name in ((halt_step, "halt"), (cancel_step, "cancel"), (total, "total")):
                d = steps.get(name)
                if d is not None:
                    metric.samples.append(d)
        if status_load is not None:
            status_load.cancel()
            await asyncio.gather(status_load, return_exceptions=True)
            extra["status_requests"] = dict(status_counts)
        # the daemon's event-loop lag over the measured breaches (a stall delays every halt)
        if hasattr(daemon, "loop_lag"):
            extra["loop_lag"] = msgspec.structs.asdict(daemon.loop_lag.stats())
        extra["daemon_rejected"] = dict(daemon.stats.rejected)
        extra["presigned_halts_used"] = getattr(executor, "presigned_used", None)
        if gateway is not None:
            armed_used[0] = getattr(gateway.agent.verifier, "armed_used", 0)
        extra["armed_halts_used"] = armed_used[0] if HAS_ARMED else None
        extra["daemon_breaches"] = daemon.stats.breaches
        extra["algorithms_registered"] = n_total
    finally:
        if status_nc is not None:
            await status_nc.close()
        if feed is not None:
            await feed.close()
        if gateway is not None:
            await gateway.close()
        if gw_nc is not None:
            await gw_nc.close()
        if child is not None:
            await child.stop()
        if reports is not None:
            await reports.close()
        if started:
            if os.environ.get("RAMPART_BENCH_DEBUG") and daemon.reconciler is not None:
                print("reconciler sends", daemon.reconciler.sends, file=sys.stderr)
            await daemon.close()
    if len(modes) > 1:
        p99 = {mode: pct(sorted(per_mode[mode][0].samples), 99) for mode in modes}
        p50 = {mode: pct(sorted(per_mode[mode][0].samples), 50) for mode in modes}
    if modes == ["fast halt", "halt from the task"]:
        a, b = modes
        extra["fast_halt_ab"] = {
            "t2h_p50_ms": p50,
            "t2h_p99_ms": p99,
            "p50_ratio_fast_task": p50[a] / p50[b],
            "p99_ratio_fast_task": p99[a] / p99[b],
        }
        extra["fast_halts_used"] = getattr(executor, "fired_used", None)
    extra["halts_fired"] = getattr(executor, "fired_used", None)
    # issue 15: halts written on the market-data wire connection from data_received
    extra["halts_fired_on_the_wire"] = getattr(executor, "fired_direct", None)
    if modes == ["signed", "unsigned"]:
        extra["signing_ab"] = {
            "t2h_p50_ms": p50,
            "t2h_p99_ms": p99,
            "p50_ratio_signed_unsigned": p50["signed"] / p50["unsigned"],
            "p99_ratio_signed_unsigned": p99["signed"] / p99["unsigned"],
        }
    return [m for mode in modes for m in per_mode[mode]], extra


def watchdog_cost(daemon: Daemon) -> float:
    """One pass of the guard's market-data staleness check over every algorithm, in ms (median of
    20): the watchdog runs it on the event loop every ``triggers.check_interval``."""
    guard = daemon.guard
    assert guard is not None
    limit = 3600 * 10**9
    times = []
    for _ in range(20):
        t = time.perf_counter_ns()
        guard._check_market_data(time.time_ns(), limit)
        times.append(time.perf_counter_ns() - t)
    times.sort()
    return times[len(times) // 2] / MS


# ---- b. the executor against a gateway hosting N algorithms --------------------------------------


class BenchGateway(ReferenceGateway):
    """The reference gateway hosting ``n`` faulty versions (``x<n>-<j>-v2``), each with
    ``open_orders`` resting orders, and their previous versions (``-v1``). Resuming a faulty
    version places its resting orders again, so the next cancel-all has work to do. Counts how
    often its cancel-all handler runs."""

    def __init__(self, nc: Client, n: int, open_orders: int, seed: str | None) -> None:
        self.faulty = [f"x{n}-{j:04d}-v2" for j in range(n)]
        self.previous = {a: a.replace("-v2", "-v1") for a in self.faulty}
        hosted = [
            HostedAlgo(a, "ESZ5", Momentum(), allocation=1.0, active=True) for a in self.faulty
        ]
        hosted += [HostedAlgo(p, "ESZ5", Momentum(), active=False) for p in self.previous.values()]
        super().__init__(nc, GATEWAY, hosted, deadman_timeout=3600.0, **trusting(bench_keys(seed)))
        self.open_orders = open_orders
        self.cancel_calls = 0
        self._order_seq = 0
        # Orders rest at the venue (they would arrive in 1000 s).
        self.venue.latency_ns = 10**12
        self.venue.on_quote("ESZ5", 5999.75, 6000.25, time.time_ns())
        for a in self.faulty:
            self.place_orders(a)

    def place_orders(self, algo: str) -> None:
        ts = time.time_ns()
        for _ in range(self.open_orders):
            self._order_seq += 1
            self.venue.submit(algo, "ESZ5", "buy", 1.0, ts, f"o{self._order_seq}", 5000.0)

    async def apply_batch(self, kind: Any, targets: list[Any]) -> dict[str, BaseException]:
        # (only called by an SDK with batches: GatewayHandlers.apply_batch, issue 15)
        if kind == "cancel_all":
            self.cancel_calls += len(targets)
        return await super().apply_batch(kind, targets)

    async def cancel_all(self, algo: str) -> None:
        if not GATEWAY_BATCHES:  # (counted by the batch)
            self.cancel_calls += 1
        await super().cancel_all(algo)

    async def resume(self, algo: str) -> None:
        await super().resume(algo)
        self.place_orders(algo)


async def serve_gateway(
    url: str, n: int, open_orders: int, seed: str | None, gc_freeze: bool
) -> None:
    """The gateway as a child process: ``ready`` on stdout once it listens; on stdin, ``stats``
    -> ``stats <command messages> <cancel-all calls>``, ``quit`` or EOF ends it."""
    loop = asyncio.get_running_loop()
    nc = await nats.connect(url, name="bench-gateway")
    gateway = BenchGateway(nc, n, open_orders, seed)
    try:
        await gateway.start()
        if gc_freeze and heap_module is not None:
            heap_module.freeze_startup_heap()  # as a gateway on the SDK should (docs)
        print("ready", flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if line.strip() == "stats":
                print("stats", gateway.agent.commands_handled, gateway.cancel_calls, flush=True)
            else:
                return
    finally:
        await gateway.close()
        await nc.close()


class ChildProcess:
    """This script in a child process with ``args`` (a hidden ``--serve-...`` option); it says
    ``ready`` on stdout once it serves, and ends at EOF on its stdin."""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).resolve()),
            *self.args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        await self._expect("ready", timeout)

    async def _expect(self, word: str, timeout: float) -> list[str]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        words = line.decode().split()
        if not words or words[0] != word:
            raise RuntimeError(f"the gateway process said {line!r}, expected {word!r}")
        return words[1:]

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        await stop_child(proc)


class GatewayProcess(ChildProcess):
    """``serve_gateway`` in a child process (this script with the hidden ``--serve-gateway``)."""

    def __init__(self, url: str, n: int, open_orders: int, gc_freeze: bool = True) -> None:
        args = [url, str(n), str(open_orders), BENCH_SEED or "-"]
        super().__init__(["--serve-gateway", *args, *([] if gc_freeze else ["--no-gc-freeze"])])

    async def stats(self, timeout: float) -> tuple[int, int]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"stats\n")
        await self.proc.stdin.drain()
        commands, cancels = await self._expect("stats", timeout)
        return int(commands), int(cancels)


async def executor_rollbacks(
    url: str,
    n_algos: int,
    iterations: int,
    warmup: int,
    args: argparse.Namespace,
    *,
    separate: bool,
) -> tuple[list[Metric], dict[str, Any]]:
    aim_total = AIM_TOTAL_MS.get(n_algos)
    metrics = {
        "halt": Metric("halt acked", seed_ms=SEED_MS["halt"]),
        "cancel": Metric("cancel-all acked (step)", seed_ms=SEED_MS["cancel"]),
        "halt+cancel": Metric("halt + cancel-all acked (from start)", seed_ms=SEED_MS["cancel"]),
        "allocate": Metric("allocation 0 acked (step)"),
        "activate": Metric("previous version activated (step)"),
        "total": Metric("whole rollback acked", seed_ms=SEED_MS["total"]),
    }
    metrics["cancel"].aim_ms = AIM_CANCEL_MS
    metrics["total"].aim_ms = aim_total
    resume = Metric("(between iterations) resume broadcast")
    extra: dict[str, Any] = {"retried_steps": 0, "failed": 0, "gateway_process": separate}
    faulty = [f"x{n_algos}-{j:04d}-v2" for j in range(n_algos)]
    previous = {a: a.replace("-v2", "-v1") for a in faulty}
    gw_nc: Client | None = None
    gateway: BenchGateway | None = None
    child: GatewayProcess | None = None
    ex_nc: Client | None = None
    try:
        if separate:
            child = GatewayProcess(url, n_algos, args.open_orders, args.gc_freeze)
            await child.start(args.timeout * 3)
        else:
            gw_nc = await nats.connect(url, name="bench-gateway")
            gateway = BenchGateway(gw_nc, n_algos, args.open_orders, BENCH_SEED)
            await gateway.start()
        ex_nc = await nats.connect(url, name="bench-rampart")
        executor = RollbackExecutor(
            ex_nc, SUBJ, lambda _algo: GATEWAY, settings=ExecutorSettings(), **bench_signer()
        )
        request = RollbackRequest(
            algos=tuple(faulty),
            scope="algo" if n_algos == 1 else "gateway",
            trigger="bench",
            reason="benchmark",
            actor="bench",
            previous=previous,
        )
        for i in range(warmup + iterations):
            record = await asyncio.wait_for(executor.execute(request), args.timeout)
            if record.state != "succeeded":
                extra["failed"] += 1
                await executor.cancel_retries()
            if gateway is not None and (
                gateway.venue.open_orders(faulty[0]) or not gateway.algos[faulty[-1]].halted
            ):
                raise RuntimeError("the rollback did not cancel and halt")
            t = time.perf_counter_ns()
            outcomes = await executor.broadcast("resume", faulty, "bench", deadline=1.0)
            resume_ns = time.perf_counter_ns() - t
            if not all(o.ok for o in outcomes.values()):
                raise RuntimeError(f"the resume was not acked: {outcomes}")
            # Barrier: the gateway handles one command message at a time, so once this empty
            # command is acked, no retry of this iteration is left queued for the next one.
            now = time.time_ns()
            barrier = Command(
                command_id=f"barrier-{i}",
                epoch=0,
                kind="standby",
                targets=[],
                issued_at=now,
                valid_until=now + 60 * 10**9,
            )
            body = encoder.encode(barrier)
            sign = getattr(executor, "sign", None)  # a gateway since issue 12 ignores unsigned
            headers = sign(SUBJ.command(GATEWAY), body) if sign is not None else None
            await ex_nc.request(SUBJ.command(GATEWAY), body, args.timeout, headers=headers)
            if i < warmup:
                continue
            steps = {s.name: s for s in record.steps}
            extra["retried_steps"] += sum(
                1 for s in record.steps if s.name != "total" and s.attempts > 1
            )
            for name, step in steps.items():
                if name in metrics and step.duration_ns is not None:
                    metrics[name].samples.append(step.duration_ns)
            halt, cancel = steps["halt"].duration_ns, steps["cancel"].duration_ns
            if halt is not None and cancel is not None:
                metrics["halt+cancel"].samples.append(halt + cancel)
            resume.samples.append(resume_ns)
        rollbacks = warmup + iterations
        # 6 command messages per iteration (halt, cancel, allocate, activate, resume, barrier):
        # more are retries after an attempt timed out (``attempt_timeout``).
        if child is not None:
            commands, cancels = await child.stats(args.timeout)
        else:
            assert gateway is not None
            commands, cancels = gateway.agent.commands_handled, gateway.cancel_calls
        extra["gateway_commands"] = commands
        extra["commands_sent_once"] = 6 * rollbacks
        extra["cancel_handler_calls"] = cancels
        extra["cancel_handler_calls_needed"] = n_algos * rollbacks
    finally:
        if ex_nc is not None:
            await ex_nc.close()
        if gateway is not None:
            with contextlib.suppress(Exception):
                await gateway.close()
        if gw_nc is not None:
            await gw_nc.close()
        if child is not None:
            await child.stop()
    return [*metrics.values(), resume], extra


# ---- main -----------------------------------------------------------------------------------


def parse_sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in filter(None, text.split(",")):
        n, _, iters = part.partition(":")
        out.append((int(n), int(iters)))
    return out


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    workdir = Path(tempfile.mkdtemp(prefix="rampart-bench-rollback-"))
    # The daemon logs every breach and rollback (WARNING/CRITICAL): to a file, as in production.
    logging.basicConfig(
        level=logging.WARNING,
        filename=str(workdir / "bench.log"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    server = EmbeddedNatsServer(store_dir=workdir / "nats")
    result: dict[str, Any] = {
        "benchmark": "rollback latency",
        "command": " ".join([".venv/bin/python", "benches/rollback_latency.py", *sys.argv[1:]]),
        "setup": (
            "one uvloop process; daemon, reference gateway and publisher each on their own NATS "
            "connection to an embedded nats-server on 127.0.0.1; perf_counter_ns"
        ),
    }
    try:
        url = await asyncio.to_thread(server.start)
        where = "in a child process" if args.t2h_gateway == "process" else "in this process"
        print(
            f"nats-server {url}; daemon and publisher in this process (uvloop), part a's "
            f"gateway {where}"
        )
        if args.baseline_iterations:
            metrics = await nats_baselines(url, args.baseline_iterations, args.timeout)
            title = f"baselines: bare nats-py, {args.baseline_iterations} round trips each"
            result["baselines"] = table(title, metrics, args.raw)
        if args.t2h_iterations:
            t = time.monotonic()
            metrics, extra = await tick_to_halt(url, workdir, args)
            title = (
                f"a. tick-to-halt through the daemon: {args.t2h_iterations} breaches "
                f"(+{args.t2h_warmup} warm-up), one fresh algorithm each, "
                f"{extra['algorithms_registered']} registered ({time.monotonic() - t:.1f} s)"
            )
            rows = table(title, metrics, args.raw)
            print(
                f"  guard watchdog, market-data check over {extra['algorithms_registered']} "
                f"algorithms: {extra['watchdog_check_ms']:.2f} ms per pass, on the event loop, "
                "every triggers.check_interval (100 ms)"
            )
            if extra.get("presigned_halts_used") is not None:
                print(f"  halts sent signed in advance: {extra['presigned_halts_used']}")
            if extra.get("status_requests") is not None:
                print(
                    f"  status requests meanwhile (every algorithm, every {args.status_every:g} "
                    f"ms): {extra['status_requests']}"
                )
            if extra.get("halts_fired_on_the_wire") is not None:
                print(
                    f"  halts sent from the ingest path: {extra['halts_fired']}, of them written "
                    f"on the market-data wire connection: {extra['halts_fired_on_the_wire']}"
                )
            if extra.get("armed_halts_used") is not None:
                print(
                    "  halts the gateway accepted armed (by their commitment, no Ed25519 "
                    f"verification): {extra['armed_halts_used']}"
                )
            lag = extra.get("loop_lag")
            if lag is not None:
                print(
                    f"  the daemon's event loop (a 10 ms timer, ~1 ms resolution, "
                    f"{lag['samples']} probes): lag p50 <= {lag['p50_ms']} ms, p99 <= "
                    f"{lag['p99_ms']} ms, p99.9 <= {lag['p999_ms']} ms, max {lag['max_ms']} ms"
                )
            ab = extra.get("signing_ab")
            if ab is not None:
                print(
                    f"  signing: tick-to-halt signed / unsigned, same run (ABBA): p50 "
                    f"{ab['p50_ratio_signed_unsigned']:.3f}x, p99 "
                    f"{ab['p99_ratio_signed_unsigned']:.3f}x (aim: p99 within 1.10x)"
                )
            fast = extra.get("fast_halt_ab")
            if fast is not None:
                print(
                    f"  halt from the ingest path / from the rollback's task, same run (ABBA): "
                    f"p50 {fast['p50_ratio_fast_task']:.3f}x, p99 "
                    f"{fast['p99_ratio_fast_task']:.3f}x ({extra['fast_halts_used']} sent from "
                    "the ingest path)"
                )
            result["tick_to_halt"] = {"rows": rows, **extra}
        result["executor"] = []
        modes = {"in-process": [False], "process": [True], "both": [False, True]}
        plan = [(sep, n, it) for sep in modes[args.gateway] for n, it in parse_sizes(args.sizes)]
        for separate, n_algos, iterations in plan:
            t = time.monotonic()
            warmup = max(2, iterations // 20)
            metrics, extra = await executor_rollbacks(
                url, n_algos, iterations, warmup, args, separate=separate
            )
            where = "in a separate process" if separate else "in this process"
            title = (
                f"b. executor -> reference gateway {where}, {n_algos} algorithm(s) at once: "
                f"{iterations} rollbacks (+{warmup} warm-up), {args.open_orders} resting "
                f"order(s) each ({time.monotonic() - t:.1f} s)"
            )
            rows = table(title, metrics, args.raw)
            if extra["retried_steps"] or extra["failed"]:
                print(
                    f"  steps that needed a retry: {extra['retried_steps']}, "
                    f"failed rollbacks: {extra['failed']}; the gateway handled "
                    f"{extra['gateway_commands']} command messages for "
                    f"{extra['commands_sent_once']} commands and ran cancel-all "
                    f"{extra['cancel_handler_calls']} times for "
                    f"{extra['cancel_handler_calls_needed']} needed (warm-up included)"
                )
            result["executor"].append(
                {"algorithms": n_algos, "rollbacks": iterations, "rows": rows, **extra}
            )
            gc.collect()
        total = sum(e["rollbacks"] for e in result["executor"])
        print()
        print(
            f"rollbacks measured: {args.t2h_iterations} through the daemon + {total} by the "
            f"executor = {args.t2h_iterations + total} (warm-ups not counted)"
        )
    finally:
        await asyncio.to_thread(server.stop)
        logging.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    result["machine"] = {
        **machine(),
        "loadavg_at_start": load_at_start,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    result["params"] = {
        "t2h_iterations": args.t2h_iterations,
        "t2h_warmup": args.t2h_warmup,
        "sizes": args.sizes,
        "open_orders": args.open_orders,
        "events": args.events,
        "signing": args.signing,
        "fast_halt": args.fast_halt,
        "t2h_gateway": args.t2h_gateway,
        "gc_freeze": args.gc_freeze,
    }
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--t2h-iterations", type=int, default=1000, help="0: skip tick-to-halt")
    p.add_argument(
        "--events",
        choices=("core", "durable"),
        default="core",
        help="part a: fills from core NATS (as before issue 10) or from the durable events stream",
    )
    p.add_argument(
        "--wire",
        choices=("nats-py", "rust"),
        default="nats-py",
        help="part a: how the daemon takes market data ([ingest] wire, docs/protocol.md)",
    )
    p.add_argument(
        "--gateway-wire",
        choices=("nats-py", "rust"),
        default="nats-py",
        help="part a: how the gateway SDK takes its commands (GatewayAgent wire_servers)",
    )
    p.add_argument(
        "--status-every",
        type=float,
        default=0.0,
        metavar="MS",
        help="part a: meanwhile, a status request for every algorithm every MS milliseconds",
    )
    p.add_argument(
        "--tick",
        choices=("fill", "quote"),
        default="fill",
        help="part a: what breaches: a fill against the mark (as before), or a quote moving "
        "the mark of a position filled just before (market data: the wire path's input)",
    )
    p.add_argument("--t2h-warmup", type=int, default=20)
    p.add_argument("--baseline-iterations", type=int, default=1000, help="0: skip")
    p.add_argument(
        "--t2h-algos",
        type=int,
        default=0,
        help="algorithms registered for tick-to-halt (default and minimum: one per iteration)",
    )
    p.add_argument(
        "--sizes",
        default="1:1000,100:200,1000:50",
        help="algorithms:rollbacks pairs for the executor part ('' to skip)",
    )
    p.add_argument("--open-orders", type=int, default=1, help="resting orders per algorithm")
    p.add_argument(
        "--signing",
        choices=("on", "ab"),
        default="on",
        help="ab: tick-to-halt alternates (ABBA) signed and unsigned commands in one run",
    )
    p.add_argument(
        "--fast-halt",
        choices=("on", "ab"),
        default="on",
        help="ab: tick-to-halt alternates (ABBA) the halt sent from the ingest path and the "
        "halt sent by the rollback's task",
    )
    p.add_argument(
        "--gateway",
        choices=("in-process", "process", "both"),
        default="both",
        help="part b: the gateway in this process, in a child process, or both in turn",
    )
    p.add_argument(
        "--t2h-gateway",
        choices=("process", "in-process"),
        default="process",
        help="part a: the gateway in a child process (as in production) or on this process's "
        "event loop beside the daemon (as before issue 15)",
    )
    p.add_argument(
        "--no-gc-freeze",
        dest="gc_freeze",
        action="store_false",
        help="leave the start-up heap to the collector, the daemon's and the gateway "
        "child's (as before issue 15; `rampart run` freezes it, and a gateway should: "
        "rampart.heap.freeze_startup_heap)",
    )
    p.add_argument("--serve-gateway", nargs=4, metavar="ARG", help=argparse.SUPPRESS)
    p.add_argument("--serve-t2h-gateway", nargs=2, metavar="ARG", help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=10.0, help="bound of one iteration, s")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--raw", action="store_true", help="include every sample in the JSON")
    args = p.parse_args()
    if args.serve_t2h_gateway:
        uvloop.run(serve_t2h_gateway(*args.serve_t2h_gateway))
        return 0
    if args.serve_gateway:
        url, n, open_orders, seed = args.serve_gateway
        seed_or_none = None if seed == "-" else seed
        uvloop.run(serve_gateway(url, int(n), int(open_orders), seed_or_none, args.gc_freeze))
        return 0
    result = uvloop.run(bench(args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
