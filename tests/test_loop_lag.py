"""The event loop's lag probe: buckets, quantiles, and a real stall caught (issue 15: "measure
event-loop lag"; a stall delays every message, halts included)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
import uvloop

from rampart.loop_lag import BUCKETS, LoopLag
from rampart.protocol import LoopLagStats
from rampart.status import format_loop_lag


def test_quantiles_are_bucket_bounds_and_the_max_is_exact() -> None:
    lag = LoopLag()
    assert lag.quantile(0.99) is None and lag.stats().samples == 0
    for _ in range(990):
        lag.record(0.0003)  # <= 0.5 ms
    for _ in range(9):
        lag.record(0.004)  # <= 5 ms
    lag.record(0.0372)  # <= 50 ms: the one stall
    assert lag.samples == 1000
    assert lag.quantile(0.5) == 0.0005
    assert lag.quantile(0.99) == 0.0005  # the 990th sample
    assert lag.quantile(0.995) == 0.005
    assert lag.quantile(0.999) == 0.005
    assert lag.quantile(1.0) == 0.05
    stats = lag.stats()
    assert stats == LoopLagStats(samples=1000, p50_ms=0.5, p99_ms=0.5, p999_ms=5.0, max_ms=37.2)
    lag.record(-0.001)  # a timer early by rounding counts as no lag
    assert lag.counts[0] == 991
    lag.record(60.0)  # beyond the last bucket: the quantile says so, the max says how far
    assert lag.quantile(1.0) == float("inf") and lag.stats().max_ms == 60_000.0
    assert format_loop_lag(lag.stats()).endswith("max 60000.0 ms (1,002 probes)")
    lag.reset()
    assert (lag.samples, lag.max, lag.total, lag.quantile(0.5)) == (0, 0.0, 0.0, None)


def test_format_says_bounds() -> None:
    text = format_loop_lag(
        LoopLagStats(samples=41_200, p50_ms=1.0, p99_ms=2.0, p999_ms=None, max_ms=3.21)
    )
    assert text == (
        f"event loop lag p50 <= 1 ms, p99 <= 2 ms, p99.9 > {BUCKETS[-1] * 1e3:g} ms, "
        "max 3.2 ms (41,200 probes)"
    )


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_blocked_loop_is_seen(loop: str) -> None:
    """The loop blocked for 60 ms: the probe, sleeping 10 ms, fires at least 50 ms late."""
    lag = LoopLag()

    async def scenario() -> None:
        probe = asyncio.create_task(lag.run(0.01))
        while lag.samples < 3:
            await asyncio.sleep(0.005)
        time.sleep(0.06)  # a callback that holds the loop (periodic work over everything)
        before = lag.samples
        while lag.samples == before:
            await asyncio.sleep(0.005)
        probe.cancel()

    (uvloop.run if loop == "uvloop" else asyncio.run)(scenario())
    assert lag.max >= 0.05, lag.max
    assert sum(lag.counts[BUCKETS.index(0.05) :]) >= 1


FROZEN_CHILD = """
import asyncio, gc, sys
from rampart.config import parse_config
from rampart.daemon import Daemon

config = parse_config(open(sys.argv[1], "rb").read())
daemon = Daemon(config, servers=[sys.argv[2]])

async def main():
    before = gc.get_freeze_count()
    run = asyncio.ensure_future(daemon.run())
    loop = asyncio.get_running_loop()
    end = loop.time() + 30
    while daemon.nc is None or not daemon.nc.is_connected or gc.get_freeze_count() == before:
        if run.done():
            run.result()
            raise SystemExit("the daemon stopped before freezing")
        if loop.time() > end:
            raise SystemExit("the running daemon froze nothing within 30 s")
        await asyncio.sleep(0.01)
    print(before, gc.get_freeze_count(), flush=True)
    daemon.request_stop()
    await run

asyncio.run(main())
"""


def test_a_running_daemon_freezes_its_start_up_heap(server: object, tmp_path: Path) -> None:
    """``Daemon.run`` (``rampart run``) takes what start-up built out of the collector's sight:
    a full collection over it stalled the loop 16-21 ms with 1,020 algorithms (BENCHMARKS.md).
    In a child process: the freeze is process-wide."""
    url = server.url  # type: ignore[attr-defined]
    config = tmp_path / "rampart.toml"
    config.write_text(
        f'name = "frozen"\ndata_dir = "{tmp_path / "data"}"\n\n[[algorithms]]\n'
        'id = "alpha"\nversion = "1"\ngateway = "gw1"\ncapital = 100000\n'
    )
    out = subprocess.run(
        [sys.executable, "-c", FROZEN_CHILD, str(config), url],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    before, after = map(int, out.stdout.split())
    assert before == 0 and after > 1000, (before, after)
