"""Convergence time of the closed loop (issue 9): how long until a gateway again does what
Rampart's stored intent says, after a gateway restart and after a NATS outage.

Run: ``.venv/bin/python benches/convergence.py [--restarts 40] [--sizes 1,100]
[--outages 20] [--outage-s 2.0] [--hb 1.0,0.1] [--json PATH]``

Everything runs in this one uvloop process, each party on its own NATS connection to an
external ``EmbeddedNatsServer`` on 127.0.0.1: the daemon (``rampart.daemon.Daemon`` with its
real configuration from ``parse_config``, a temp ``data_dir``, ``servers=[url]``) and the
reference gateway (``ReferenceGateway``), so one clock (``time.perf_counter_ns``) times both;
they also share one event loop (in production they are separate processes).

The daemon's ``heartbeat_interval`` is left at its default (1 s): the reconciler plans on every
gateway heartbeat, on every intent change and every ``heartbeat_interval``. The gateway's own
heartbeat interval is the variable: the reference gateway's default 1 s, and 0.1 s (``--hb``);
part a alternates the two restart by restart, part b runs them one after the other. Triggers
that a fault would fire on their own are off, so that only the one latched halt is measured:
``gateway_heartbeat_timeout`` and ``market_data_timeout`` = 1 h, ``nats_disconnect = false``
(and ``ingest.max_payload_bytes`` = 1 MiB, for commits before heartbeats had their own limit);
the gateway's dead-man's switch is 1 h. The gateway connects with ``max_reconnect_attempts=-1,
reconnect_time_wait=0.25`` (the daemon's own default ``nats.reconnect_time_wait``).

a. gateway restart: N algorithms (``--sizes``) are rolled back once by the daemon
   (``guard.rollback``: latched, intent halted with allocation 0) and the gateway applies it.
   Then, ``--restarts`` times: the gateway is closed (agent and NATS connection) and a fresh one
   is started on a new connection; it has forgotten every halt (it hosts the algorithms active
   with allocation 1.0, its command book empty). Timed from just before the new gateway's
   ``start()`` until its own state (``gw.agent.is_halted`` / ``book.report``) has every algorithm
   halted, and until every algorithm is also at allocation 0 (the whole intent). Split at the
   daemon receiving the new gateway's first heartbeat.
b. NATS outage: each iteration takes a fresh algorithm (running, unhalted at the gateway). The
   nats-server is stopped (``EmbeddedNatsServer.stop``, SIGTERM) -- or frozen (``freeze``,
   SIGSTOP: connections stay open, nothing is delivered) -- and once the daemon has lost its link
   (stop) the rollback of that algorithm is started (``guard.rollback``), so its halt cannot be
   delivered: the rollback fails, its steps are retried in the background every 0.5 s, and the
   reconciler holds the latch and the intent. ``--outage-s`` after the fault the server is started
   again on the same port (or thawed). Timed from ``start()`` returning (the server accepts
   connections) or from ``thaw()`` until the gateway's own state has the algorithm halted with
   allocation 0. Split at the daemon's NATS link coming back, the gateway's, and the daemon's
   first heartbeat from the gateway after the outage; the sender of the commands that converged
   it (the rollback's background retry, or the reconciler) is counted. Before each fault a random
   pause of 0-1.2 s, so that the fault falls at a random phase of the heartbeat and resync timers.

Percentiles are nearest-rank (as in ``rollback_latency.py``). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import uvloop
from machine_info import machine
from nats.aio.client import Client
from rollback_latency import Metric, table, until

from rampart.config import DaemonConfig, parse_config
from rampart.daemon import Daemon
from rampart.embedded import EmbeddedNatsServer
from rampart.gateway.reference import HostedAlgo, Momentum, ReferenceGateway
from rampart.protocol import AlgoActual, Command, TargetResult

GATEWAY = "gw1"

CONFIG = """
name = "rampart-bench-convergence"
data_dir = "{data_dir}"
# heartbeat_interval: the default (1 s)

[triggers]
# Only the one latched halt is measured: no rollbacks of the fault's own making.
gateway_heartbeat_timeout = "PT1H"
market_data_timeout = "PT1H"
nats_disconnect = false

[ingest]
# A heartbeat v2 carries each algorithm's state: ~210 bytes per halted algorithm with its epochs,
# 20 KB for 100. Up to 7a623d3 heartbeats had the events' 16 KiB limit and were refused
# ("oversize"); since 3d8a922 they have their own (max_heartbeat_bytes, 1 MiB).
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


def config(data_dir: Path, algos: list[str]) -> DaemonConfig:
    text = CONFIG.format(data_dir=data_dir)
    text += "".join(ALGO.format(id=a, gateway=GATEWAY) for a in algos)
    return parse_config(text.encode())


class WatchedGateway(ReferenceGateway):
    """The reference gateway, hosting ``algos`` active with allocation 1.0 (as a gateway restarted
    from its own configuration would). After each command message it has handled, it checks its
    own state against the targets set by ``watch`` and resolves the future with the time."""

    def __init__(
        self, nc: Client, algos: list[str], heartbeat_interval: float, keys: list[str]
    ) -> None:
        hosted = [HostedAlgo(a, "ESZ5", Momentum(), allocation=1.0, active=True) for a in algos]
        super().__init__(
            nc,
            GATEWAY,
            hosted,
            heartbeat_interval=heartbeat_interval,
            deadman_timeout=3600.0,
            trusted_keys=keys,
        )
        self.watches: list[tuple[list[str], bool, asyncio.Future[int]]] = []
        self.senders: Counter[str] = Counter()  # command reason of applied halt/allocation
        # the sender of the command message after which each watch was reached
        self.reached_by: dict[int, str] = {}
        handle = self.agent.handle

        async def watched(command: Command) -> list[TargetResult]:
            results = await handle(command)
            t = time.perf_counter_ns()
            if command.kind in ("halt", "set_allocation") and any(
                r.status == "applied" for r in results
            ):
                self.senders[f"{command.kind} by {sender(command.reason)}"] += 1
            self._check(t, f"{command.kind} by {sender(command.reason)}")
            return results

        self.agent.handle = watched  # type: ignore[method-assign]

    def actual(self, algo: str) -> AlgoActual:
        return self.agent.book.report(algo)

    def reached(self, algos: list[str], with_allocation: bool) -> bool:
        for a in algos:
            if not self.agent.is_halted(a):
                return False
            if with_allocation and self.actual(a).allocation != 0.0:
                return False
        return True

    def watch(self, algos: list[str], with_allocation: bool) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.watches.append((algos, with_allocation, fut))
        return fut

    def _check(self, t: int, by: str) -> None:
        for algos, with_allocation, fut in list(self.watches):
            if not fut.done() and self.reached(algos, with_allocation):
                fut.set_result(t)
                self.reached_by[id(fut)] = by
                self.watches.remove((algos, with_allocation, fut))


def sender(reason: str) -> str:
    return "reconciler" if reason == "reconcile" else "rollback"


async def gateway_connection(url: str, events: list[tuple[str, int]] | None = None) -> Client:
    async def disconnected() -> None:
        if events is not None:
            events.append(("disconnected", time.perf_counter_ns()))

    async def reconnected() -> None:
        if events is not None:
            events.append(("reconnected", time.perf_counter_ns()))

    return await nats.connect(
        url,
        name="bench-gateway",
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
    )


def watch_reports(daemon: Daemon) -> list[int]:
    """perf_counter_ns of every gateway report the daemon's reconciler receives."""
    rec = daemon.reconciler
    assert rec is not None
    on_report = rec.on_report
    times: list[int] = []

    def timed(gateway: str, ts: int, state: list[AlgoActual]) -> None:
        times.append(time.perf_counter_ns())
        on_report(gateway, ts, state)

    rec.on_report = timed  # type: ignore[method-assign]
    return times


def first_after(times: list[int], t: int) -> int | None:
    return next((x for x in times if x >= t), None)


def any_after(times: list[int], t: int) -> bool:
    return first_after(times, t) is not None


async def close_daemon(daemon: Daemon, stats: Counter[str]) -> None:
    """``daemon.close()``, cancelling the executor's background retries again while it hangs:
    on Python 3.11 a retry's ``nc.request`` (``asyncio.wait_for`` inside nats-py) can swallow the
    cancellation that ``cancel_retries()`` sends, and the retry then loops on (counted, and shown
    in BENCHMARKS.md, issue 9)."""
    closing = asyncio.ensure_future(daemon.close())
    while True:
        done, _ = await asyncio.wait({closing}, timeout=5.0)
        if done:
            closing.result()
            return
        stats["daemon.close() hung 5 s: retries cancelled again"] += 1
        assert daemon.guard is not None
        for task in list(daemon.guard.executor._retries):
            task.cancel()


# ---- a. gateway restart ------------------------------------------------------------------------


async def gateway_restarts(
    url: str, workdir: Path, n: int, args: argparse.Namespace, hbs: list[float]
) -> dict[str, Any]:
    algos = [f"r{n}-{i:04d}" for i in range(n)]
    daemon = Daemon(config(workdir / f"restart-{n}", algos), servers=[url])
    metrics: dict[float, dict[str, Metric]] = {
        hb: {
            "halted": Metric(f"gw hb {hb:g} s: start -> all halted"),
            "intent": Metric(f"gw hb {hb:g} s: start -> halted, allocation 0"),
            "hb": Metric(f"gw hb {hb:g} s:   start -> daemon gets 1st hb"),
            "send": Metric(f"gw hb {hb:g} s:   1st hb -> all halted"),
        }
        for hb in hbs
    }
    nc: Client | None = None
    gw: WatchedGateway | None = None
    senders: Counter[str] = Counter()
    teardown: Counter[str] = Counter()
    started = False
    try:
        await daemon.start()
        started = True
        guard = daemon.guard
        assert guard is not None
        reports = watch_reports(daemon)
        nc = await gateway_connection(url)
        gw = WatchedGateway(nc, algos, hbs[0], [daemon.public_key])
        await gw.start()
        await until(lambda: GATEWAY in daemon.gateways, 10, "the daemon did not see the gateway")
        record = await asyncio.wait_for(
            guard.rollback(
                tuple(algos), "gateway" if n > 1 else "algo", "bench", "benchmark", "bench"
            ),
            args.timeout,
        )
        if record is None or record.state != "succeeded":
            raise RuntimeError(f"the set-up rollback did not succeed: {record}")
        await until(lambda: gw is not None and gw.reached(algos, True), 10, "set-up converged")
        for i in range(args.restart_warmup + args.restarts * len(hbs)):
            hb = hbs[i % len(hbs)]
            await asyncio.sleep(random.uniform(0.1, 0.5))
            await gw.close()
            await nc.close()
            nc = await gateway_connection(url)
            gw = WatchedGateway(nc, algos, hb, [daemon.public_key])
            halted = gw.watch(algos, with_allocation=False)
            intent = gw.watch(algos, with_allocation=True)
            t0 = time.perf_counter_ns()
            await gw.start()
            t_halted = await asyncio.wait_for(halted, args.timeout)
            t_intent = await asyncio.wait_for(intent, args.timeout)
            if i < args.restart_warmup:
                continue
            m = metrics[hb]
            m["halted"].samples.append(t_halted - t0)
            m["intent"].samples.append(t_intent - t0)
            t_hb = first_after(reports, t0)
            if t_hb is not None:
                m["hb"].samples.append(t_hb - t0)
                m["send"].samples.append(t_halted - t_hb)
            senders.update(gw.senders)
    finally:
        if gw is not None:
            await gw.close()
        if nc is not None:
            await nc.close()
        if started:
            await close_daemon(daemon, teardown)
    return {
        "metrics": [m for hb in hbs for m in metrics[hb].values()],
        "senders": dict(senders),
        "daemon_rejected": dict(daemon.stats.rejected),
        "teardown": dict(teardown),
    }


# ---- b. NATS outage ---------------------------------------------------------------------------


async def nats_outages(
    server: EmbeddedNatsServer, workdir: Path, args: argparse.Namespace, hbs: list[float], mode: str
) -> dict[str, Any]:
    runs = (args.outage_warmup + args.outages) * len(hbs)
    algos = [f"o-{mode}-{i:04d}" for i in range(runs)]
    daemon = Daemon(config(workdir / f"outage-{mode}", algos), servers=[server.url])
    metrics: dict[float, dict[str, Metric]] = {
        hb: {
            "conv": Metric(f"gw hb {hb:g} s: back -> halted, allocation 0"),
            "halted": Metric(f"gw hb {hb:g} s: back -> halted"),
            "d_link": Metric(f"gw hb {hb:g} s:   back -> daemon's link up"),
            "g_link": Metric(f"gw hb {hb:g} s:   back -> gateway's link up"),
            "hb": Metric(f"gw hb {hb:g} s:   back -> daemon gets a hb"),
        }
        for hb in hbs
    }
    states: list[tuple[str, int]] = []
    gw_events: list[tuple[str, int]] = []
    senders: dict[float, Counter[str]] = {hb: Counter() for hb in hbs}
    last: dict[float, Counter[str]] = {hb: Counter() for hb in hbs}
    record_states: Counter[str] = Counter()
    teardown: Counter[str] = Counter()
    handled = 0  # command messages the gateway handled
    retrying: list[int] = []  # the rollbacks' background retry tasks alive before each fault
    nc: Client | None = None
    gw: WatchedGateway | None = None
    started = False
    port = server.port
    try:
        await daemon.start()
        started = True
        guard = daemon.guard
        assert guard is not None and daemon.nc is not None
        daemon.connectivity_listeners.append(
            lambda e: states.append((e.state, time.perf_counter_ns()))
        )
        reports = watch_reports(daemon)
        nc = await gateway_connection(server.url, gw_events)
        gw = None
        plan = [(hb, j) for hb in hbs for j in range(args.outage_warmup + args.outages)]
        for i, (hb, j) in enumerate(plan):
            algo = algos[i]
            if gw is None or gw.agent.heartbeat_interval != hb:
                if gw is not None:
                    handled += gw.agent.commands_handled
                    await gw.close()
                gw = WatchedGateway(nc, algos, hb, [daemon.public_key])
                await gw.start()
                # a fresh gateway has forgotten the halts: the daemon puts them back first
                await until(functools.partial(gw.reached, algos[:i], True), 10, "settled")
            gw.senders.clear()
            await asyncio.sleep(random.uniform(0.0, 1.2))
            retrying.append(guard.executor.retrying)
            fut = gw.watch([algo], with_allocation=True)
            halted = gw.watch([algo], with_allocation=False)
            if mode == "stop":
                await asyncio.to_thread(server.stop)
                await until(lambda: not daemon.nc.is_connected, 10, "the daemon lost NATS")
            else:
                server.freeze()
            t_fault = time.perf_counter_ns()
            rollback = asyncio.ensure_future(
                guard.rollback((algo,), "algo", "bench", "benchmark: NATS outage", "bench")
            )
            await asyncio.sleep(args.outage_s - (time.perf_counter_ns() - t_fault) / 1e9)
            if mode == "stop":
                server.port = port
                await asyncio.to_thread(server.start)
            else:
                server.thaw()
            t_back = time.perf_counter_ns()
            t_conv = await asyncio.wait_for(fut, args.timeout * 3)
            t_halted = await asyncio.wait_for(halted, args.timeout)
            record = await asyncio.wait_for(rollback, args.timeout * 3)
            record_states[record.state if record is not None else "none"] += 1
            await until(lambda: daemon.nc.is_connected and nc.is_connected, 30, "links back")
            after = functools.partial(any_after, reports, t_back)
            await until(after, 10, "a heartbeat after the outage")
            if j < args.outage_warmup:
                continue
            m = metrics[hb]
            m["conv"].samples.append(t_conv - t_back)
            m["halted"].samples.append(t_halted - t_back)
            if mode == "stop":
                d = first_after([t for s, t in states if s == "reconnected"], t_fault)
                g = first_after([t for s, t in gw_events if s == "reconnected"], t_fault)
                if d is not None:
                    m["d_link"].samples.append(d - t_back)
                if g is not None:
                    m["g_link"].samples.append(g - t_back)
            h = first_after(reports, t_back)
            if h is not None:
                m["hb"].samples.append(h - t_back)
            senders[hb].update(gw.senders)
            last[hb][gw.reached_by.get(id(fut), "?")] += 1
    finally:
        if gw is not None:
            handled += gw.agent.commands_handled
            await gw.close()
        if nc is not None:
            await nc.close()
        if started:
            await close_daemon(daemon, teardown)
        if not server.running:
            server.port = port
            await asyncio.to_thread(server.start)
    rows = [m for hb in hbs for m in metrics[hb].values() if m.samples]
    return {
        "metrics": rows,
        "senders": {f"{hb:g}": dict(c) for hb, c in senders.items()},
        "converged_by": {f"{hb:g}": dict(c) for hb, c in last.items()},
        "rollback_records": dict(record_states),
        "daemon_rejected": dict(daemon.stats.rejected),
        "teardown": dict(teardown),
        "gateway_command_messages": handled,
        "retry_tasks_before_each_fault": retrying,
    }


# ---- main -----------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    workdir = Path(tempfile.mkdtemp(prefix="rampart-bench-convergence-"))
    logging.basicConfig(
        level=logging.WARNING,
        filename=str(workdir / "bench.log"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    hbs = [float(x) for x in args.hb.split(",")]
    server = EmbeddedNatsServer(store_dir=workdir / "nats")
    result: dict[str, Any] = {
        "benchmark": "closed-loop convergence",
        "command": " ".join([".venv/bin/python", "benches/convergence.py", *sys.argv[1:]]),
        "daemon_heartbeat_interval_s": 1.0,
        "gateway_heartbeat_intervals_s": hbs,
    }

    def rows(title: str, metrics: list[Metric]) -> list[dict[str, Any]]:
        return table(title, metrics, args.raw)

    try:
        url = await asyncio.to_thread(server.start)
        print(f"nats-server {url}; daemon (heartbeat_interval 1 s) and gateway in this process")
        result["restart"] = []
        for n in [int(x) for x in args.sizes.split(",") if x]:
            t = time.monotonic()
            out = await gateway_restarts(url, workdir, n, args, hbs)
            title = (
                f"a. gateway restart, {n} algorithm(s) latched: {args.restarts} restarts per "
                f"gateway heartbeat interval (+{args.restart_warmup} warm-up), "
                f"({time.monotonic() - t:.1f} s)"
            )
            result["restart"].append(
                {
                    "algorithms": n,
                    "rows": rows(title, out["metrics"]),
                    "senders": out["senders"],
                    "daemon_rejected": out["daemon_rejected"],
                    "teardown": out["teardown"],
                }
            )
            print(f"  commands that converged it: {out['senders']}")
            print(f"  messages the daemon refused: {out['daemon_rejected']}")
            if out["teardown"]:
                print(f"  teardown: {out['teardown']}")
            gc.collect()
        result["outage"] = []
        for mode in [m for m in args.outage_modes.split(",") if m]:
            if not args.outages:
                break
            t = time.monotonic()
            out = await nats_outages(server, workdir, args, hbs, mode)
            how = "stopped and started" if mode == "stop" else "frozen (SIGSTOP) and thawed"
            title = (
                f"b. NATS outage: nats-server {how}, {args.outage_s:g} s, halt not delivered: "
                f"{args.outages} per gateway heartbeat interval (+{args.outage_warmup} warm-up) "
                f"({time.monotonic() - t:.1f} s)"
            )
            result["outage"].append(
                {
                    "mode": mode,
                    "outage_s": args.outage_s,
                    "rows": rows(title, out["metrics"]),
                    "senders": out["senders"],
                    "converged_by": out["converged_by"],
                    "rollback_records": out["rollback_records"],
                    "daemon_rejected": out["daemon_rejected"],
                    "teardown": out["teardown"],
                    "gateway_command_messages": out["gateway_command_messages"],
                    "retry_tasks_before_each_fault": out["retry_tasks_before_each_fault"],
                }
            )
            print(f"  halt/allocation commands applied, per gateway interval: {out['senders']}")
            print(f"  the command that completed it, per gateway interval: {out['converged_by']}")
            print(f"  the rollbacks' own records: {out['rollback_records']}")
            print(
                f"  command messages the gateway handled: {out['gateway_command_messages']} for "
                f"{len(out['retry_tasks_before_each_fault'])} rollbacks; the rollbacks' background "
                f"retry tasks alive before each fault: {out['retry_tasks_before_each_fault']}"
            )
            print(f"  messages the daemon refused: {out['daemon_rejected']}")
            if out["teardown"]:
                print(f"  teardown: {out['teardown']}")
            gc.collect()
    finally:
        await asyncio.to_thread(server.stop)
        logging.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    result["machine"] = {
        **machine(),
        "loadavg_at_start": load_at_start,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    result["params"] = {k: v for k, v in vars(args).items() if k not in ("json",)}
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1,100", help="algorithms latched, part a ('' to skip)")
    p.add_argument("--restarts", type=int, default=40, help="per gateway heartbeat interval")
    p.add_argument("--restart-warmup", type=int, default=2)
    p.add_argument("--outages", type=int, default=20, help="per gateway heartbeat interval")
    p.add_argument("--outage-warmup", type=int, default=1)
    p.add_argument("--outage-s", type=float, default=2.0, help="how long NATS is down")
    p.add_argument("--outage-modes", default="stop,freeze", help="stop, freeze or both")
    p.add_argument("--hb", default="1.0,0.1", help="gateway heartbeat intervals, s")
    p.add_argument("--timeout", type=float, default=10.0, help="bound of one wait, s")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--raw", action="store_true", help="include every sample in the JSON")
    args = p.parse_args()
    result = uvloop.run(bench(args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
