"""What one round of checkpoints costs on the event loop: every algorithm serialized (before
incremental checkpoints) against only the changed ones plus the marks (now), in one run.

Run: ``.venv/bin/python benches/checkpoint_round.py [--algos 1020] [--changed 10] [--rounds 30]``

The engine holds ``--algos`` algorithms on 50 symbols with full windows (720 hourly returns,
50 orders and acks each): the state of a daemon that has run for a month. Each round, ``--changed``
algorithms get a fill (the rest are quiet), then the round is taken both ways, alternating which
goes first. Prints the median and max of each in ms and their ratio.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from rampart._core import AlgoConfig, Engine

T0 = 1_764_028_800_000_000_000
H = 3_600 * 10**9


def build(n: int) -> Engine:
    e = Engine()
    for i in range(n):
        e.register(AlgoConfig(f"a{i}", "v", 100_000.0, max_drawdown=0.5, max_latency_ns=10**9))
        e.quote(f"S{i % 50}", 100.0, 100.0, T0)
        e.fill(f"a{i}", f"S{i % 50}", 1.0, 100.0, 0.0, T0)
    r = random.Random(1)
    for h in range(1, 730):
        for s in range(50):
            e.quote(f"S{s}", 100 + r.random(), 101 + r.random(), T0 + h * H)
    for i in range(n):
        for k in range(50):
            e.order_submitted(f"a{i}", T0 + 729 * H + k)
            e.order_acked(f"a{i}", 1000 + k * 1000, T0 + 729 * H + k)
    return e


def full(e: Engine) -> int:
    return sum(len(e.checkpoint(a)) for a in e.algorithms())


def incremental(e: Engine) -> int:
    size = len(e.marks_checkpoint())
    return size + sum(len(e.checkpoint(a)) for a in e.take_changed())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algos", type=int, default=1020)
    ap.add_argument("--changed", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    e = build(args.algos)
    e.take_changed()
    r = random.Random(2)
    ts = T0 + 730 * H
    times: dict[str, list[float]] = {"full": [], "incremental": []}
    sizes: dict[str, int] = {}
    for k in range(args.rounds):
        for a in r.sample(range(args.algos), args.changed):
            ts += 1_000
            e.fill(f"a{a}", f"S{a % 50}", 1.0, 100.5, 0.0, ts)
        order = ("full", "incremental") if k % 2 == 0 else ("incremental", "full")
        for name in order:
            t = time.perf_counter()
            sizes[name] = full(e) if name == "full" else incremental(e)
            times[name].append((time.perf_counter() - t) * 1e3)
        # the incremental round took the changes; a full round never does
    for name, ts_ in times.items():
        print(
            f"{name:>11}: median {statistics.median(ts_):7.3f} ms, max {max(ts_):7.3f} ms, "
            f"{sizes[name] / 1e6:6.2f} MB per round"
        )
    ratio = statistics.median(times["full"]) / statistics.median(times["incremental"])
    print(
        f"{args.algos} algorithms, {args.changed} changed per round, {args.rounds} rounds: "
        f"a full round costs {ratio:.0f}x an incremental one (medians)"
    )


if __name__ == "__main__":
    main()
