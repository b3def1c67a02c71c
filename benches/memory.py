"""Memory of the core with many algorithms, every metric window full (issue 15: 10,000 algorithms
under 500 MB RSS).

Run: ``.venv/bin/python benches/memory.py [--algos 10000] [--json PATH]``

One ``Engine`` in this process. Each algorithm is registered with the daemon's default windows
(``sharpe_window`` 720 returns, error and latency windows of 60 s), holds a position in one of 20
symbols, and is driven until every window is full: 720 return intervals of quotes (the Sharpe
window), and in the last 60 s of event time one order a second, submitted and acked with a
latency (the error and latency windows). RSS is read from ``/proc/self/status`` before the engine
exists, after registration and after the windows are full; what the interpreter holds besides
(the bench's own lists) is measured by the same read before the engine is made.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

from machine_info import machine

from rampart._core import AlgoConfig, Engine

T0 = 1_764_028_800_000_000_000
SEC = 1_000_000_000
INTERVAL = 60 * SEC  # one return per minute of event time
SYMBOLS = [f"SYM{i}" for i in range(20)]
AIM_MB = 500.0


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algos", type=int, default=10_000)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    n = args.algos
    ids = [f"algo-{i:05d}" for i in range(n)]
    gc.collect()
    base = rss_mb()
    started = time.perf_counter()
    engine = Engine(max_future_ns=None)
    for algo in ids:
        engine.register(
            AlgoConfig(
                algo,
                "1",
                1_000_000.0,
                max_drawdown=0.5,
                max_daily_loss=0.5,
                max_error_rate=0.9,
                max_latency_ns=SEC,
                return_interval_ns=INTERVAL,
            )
        )
    registered = rss_mb()
    mids = {s: 100.0 + i for i, s in enumerate(SYMBOLS)}
    ts = T0
    for i, algo in enumerate(ids):
        s = SYMBOLS[i % len(SYMBOLS)]
        engine.fill(algo, s, 10.0 if i % 2 else -10.0, mids[s], 0.1, ts)
    intervals = 721  # sharpe_window + 1 returns' worth
    for k in range(intervals):
        ts = T0 + (k + 1) * INTERVAL
        bids, asks, syms, stamps = [], [], [], []
        for j, s in enumerate(SYMBOLS):
            mids[s] += 0.05 if (k + j) % 3 else -0.04
            syms.append(s)
            bids.append(mids[s] - 0.01)
            asks.append(mids[s] + 0.01)
            stamps.append(ts)
        engine.quotes(syms, bids, asks, stamps)
    # the last 60 s: one order a second per algorithm, submitted and acked (error and latency
    # windows full), quotes going on
    for second in range(60):
        t = ts + (second + 1) * SEC
        for algo in ids:
            engine.order_submitted(algo, t)
            engine.order_acked(algo, 200_000 + second * 1000, t)
    filled = rss_mb()
    seconds = time.perf_counter() - started
    snap = engine.snapshot(ids[-1])
    returns = len(engine.returns(ids[-1]))
    checkpoint = len(engine.checkpoint(ids[-1]))
    core_mb = filled - base
    result: dict[str, Any] = {
        "benchmark": "memory of the core with full windows",
        "command": " ".join([".venv/bin/python", "benches/memory.py", *sys.argv[1:]]),
        "machine": machine(),
        "algos": n,
        "rss_mb_before": round(base, 1),
        "rss_mb_registered": round(registered, 1),
        "rss_mb_full": round(filled, 1),
        "core_mb": round(core_mb, 1),
        "kb_per_algo": round(core_mb * 1024 / n, 2),
        "returns_in_window": returns,
        "checkpoint_bytes_per_algo": checkpoint,
        "sharpe_defined": snap.sharpe is not None,
        "seconds": round(seconds, 1),
        "aim_mb": AIM_MB,
    }
    print(
        f"{n} algorithms: RSS {base:.1f} MB before the engine, {registered:.1f} MB registered, "
        f"{filled:.1f} MB with every window full ({returns} returns in the Sharpe window, "
        f"60 s of orders and acks): the core holds {core_mb:.1f} MB, "
        f"{core_mb * 1024 / n:.1f} kB per algorithm (aim: whole process < {AIM_MB:.0f} MB: "
        f"{'OK' if filled < AIM_MB else 'MISSED'}); a checkpoint is {checkpoint} bytes; "
        f"{seconds:.1f} s to fill"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
