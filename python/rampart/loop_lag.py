"""How long the daemon's event loop keeps a ready callback waiting: a timer every ``interval``
records how late it fired. A message that arrives during a stall (a long callback, periodic work,
a SIGSTOP, the GIL held by another thread) waits about as long, the halt it causes included.
Counted from the moment the daemon is up (start-up work is not a stall of a running daemon).

The timer's own resolution is the event loop's (libuv's timers are whole milliseconds): lags
below ~1 ms are noise; what this is for is the stalls above it. Histogram buckets are fixed (in
seconds, ``BUCKETS``), so a quantile is reported as the upper bound of its bucket; the maximum is
exact. Read by ``rampart status`` (``loop_lag``) and Prometheus
(``rampart_event_loop_lag_seconds``).
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable
from typing import Final

from rampart.protocol import LoopLagStats

# upper bounds, seconds (the last bucket is +Inf)
BUCKETS: Final = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
)
INTERVAL: Final = 0.01  # seconds between probes: 100 wake-ups a second, ~0.1% of a core


class LoopLag:
    """Counts of lags per bucket (cumulative over the daemon's life), their sum and maximum."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.max = 0.0

    def reset(self) -> None:
        """Start counting afresh (the daemon does once it is up: its start-up work, restoring
        checkpoints and the first round of them, is not a stall of a running daemon)."""
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.max = 0.0

    def record(self, lag: float) -> None:
        lag = max(lag, 0.0)
        self.counts[bisect.bisect_left(BUCKETS, lag)] += 1
        self.total += lag
        self.max = max(self.max, lag)

    @property
    def samples(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the ``q`` quantile (nearest rank); ``inf`` when
        it is beyond the last bound (then ``max`` says how far); ``None`` before any sample."""
        n = self.samples
        if n == 0:
            return None
        rank = max(1, -(-q * n // 1))  # ceil(q * n), at least 1
        seen = 0
        for bound, count in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            seen += count
            if seen >= rank:
                return bound
        return float("inf")

    def stats(self) -> LoopLagStats:
        def ms(v: float | None) -> float | None:
            return None if v is None or v == float("inf") else round(v * 1e3, 3)

        return LoopLagStats(
            samples=self.samples,
            p50_ms=ms(self.quantile(0.5)),
            p99_ms=ms(self.quantile(0.99)),
            p999_ms=ms(self.quantile(0.999)),
            max_ms=round(self.max * 1e3, 3),
        )

    async def run(self, interval: float = INTERVAL) -> None:
        """Probe forever (a supervised task of the daemon)."""
        while True:
            before = self.clock()
            await asyncio.sleep(interval)
            self.record(self.clock() - before - interval)
