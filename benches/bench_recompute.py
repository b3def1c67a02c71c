"""Incremental core update vs the naive approach: recompute the metrics over a 10k window per event.

The naive risk monitor keeps the last 10,000 returns and, on every event, recomputes Sharpe and
max drawdown from them (``empyrical.sharpe_ratio(window)`` + ``empyrical.max_drawdown(window)``).
To be fair to it, the window is a zero-copy slice of a preallocated float64 numpy array of returns
(no list conversion, no appending, the returns themselves are given), and a bare-numpy and a pandas
variant are measured too.

The core side is ``Engine.quote`` through Python on an algorithm whose return interval equals the
quote spacing, so every quote closes a return period: the rolling Sharpe over ``sharpe_window =
10_000`` returns (Welford add + remove), equity, peak, drawdown, max drawdown and the four limits
are all updated per event. A second variant also reads every metric back with ``Engine.snapshot``
per event.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import empyrical  # type: ignore[import-untyped]
import numpy as np
import pandas as pd  # type: ignore[import-untyped]
from numpy.typing import NDArray

from rampart._core import AlgoConfig, Engine

if TYPE_CHECKING:
    from conftest import Partner, PerEvent

T0 = 1_764_028_800_000_000_000
STEP = 1_000  # 1 µs between quotes, and the return interval: one return per quote
W = 10_000  # the window: last 10,000 returns
PERIODS_PER_YEAR = 365 * 86_400 * 1e9 / STEP

N_CORE = 10_000  # quotes per round, core
N_BASE = 100  # events per round, baselines (each recomputes over 10k samples)
BASE_ROUNDS = 15


def make_engine() -> Engine:
    engine = Engine()
    engine.register(
        AlgoConfig(
            "algo-0",
            "v1",
            1_000_000.0,
            max_daily_loss=0.5,
            max_drawdown=0.5,
            max_error_rate=0.9,
            max_latency_ns=1_000_000_000,
            return_interval_ns=STEP,
            sharpe_window=W,
        )
    )
    engine.quote("ES", 99.99, 100.01, T0)
    engine.fill("algo-0", "ES", 10.0, 100.0, 0.1, T0)
    return engine


class QuoteFeed:
    """Quotes 1 µs apart; the mid walks over 7 levels, so every return period has a return."""

    def __init__(self) -> None:
        self.t = T0

    def take(self, n: int) -> tuple[list[float], list[float], list[int]]:
        ts = list(range(self.t + STEP, self.t + STEP * (n + 1), STEP))
        self.t = ts[-1]
        mids = [100.0 + ((t // STEP) % 7) * 0.01 for t in ts]
        return [m - 0.01 for m in mids], [m + 0.01 for m in mids], ts


def warm(engine: Engine, feed: QuoteFeed) -> None:
    """Fill the Sharpe window (10k returns): every measured quote also drops the oldest one."""
    bids, asks, ts = feed.take(W + 10)
    result = engine.quotes(["ES"] * len(ts), bids, asks, ts)
    assert not result.errors
    snap = engine.snapshot("algo-0")
    assert snap.returns_count == W and snap.sharpe is not None, snap


def run_quotes(engine: Engine, bids: list[float], asks: list[float], ts: list[int]) -> None:
    quote = engine.quote
    for b, a, t in zip(bids, asks, ts, strict=True):
        quote("ES", b, a, t)


def core_partner(per_event: PerEvent) -> Partner:
    """A fresh warmed-up core engine, timed round by round against a baseline."""
    engine = make_engine()
    feed = QuoteFeed()
    warm(engine, feed)
    return per_event.partner(
        "core.quote_return", run_quotes, lambda: (engine, *feed.take(N_CORE)), N_CORE
    )


def test_core_quote_return(per_event: PerEvent) -> None:
    engine = make_engine()
    feed = QuoteFeed()
    warm(engine, feed)
    per_event(
        "core.quote_return",
        "engine.quote closing a return period (Sharpe window 10k) + drawdown + limits",
        run_quotes,
        lambda: (engine, *feed.take(N_CORE)),
        n=N_CORE,
        rounds=150,
    )
    snap = engine.snapshot("algo-0")
    assert snap.returns_count == W and snap.sharpe is not None and snap.breached == []


def test_core_quote_return_snapshot(per_event: PerEvent) -> None:
    engine = make_engine()
    feed = QuoteFeed()
    warm(engine, feed)

    def run(engine: Engine, bids: list[float], asks: list[float], ts: list[int]) -> None:
        quote, snapshot = engine.quote, engine.snapshot
        for b, a, t in zip(bids, asks, ts, strict=True):
            quote("ES", b, a, t)
            snapshot("algo-0")

    per_event(
        "core.quote_return_snapshot",
        "engine.quote as above + engine.snapshot (every metric read back)",
        run,
        lambda: (engine, *feed.take(N_CORE)),
        n=N_CORE,
        rounds=60,
    )


# ----------------------------------------------------------------------------- the naive baselines


def returns_array() -> NDArray[np.float64]:
    rng = np.random.default_rng(20251125)
    n = W + N_BASE * (BASE_ROUNDS + 1) + 1
    return rng.normal(0.0, 1e-4, n).astype(np.float64)


class WindowFeed:
    """Start indices of successive windows: event ``i`` sees ``returns[i : i + W]``."""

    def __init__(self) -> None:
        self.i = 0

    def take(self, n: int) -> range:
        r = range(self.i, self.i + n)
        self.i += n
        return r


def test_recompute_empyrical(per_event: PerEvent) -> None:
    rets = returns_array()
    feed = WindowFeed()

    def run(rets: NDArray[np.float64], starts: range) -> None:
        sharpe_ratio, max_drawdown = empyrical.sharpe_ratio, empyrical.max_drawdown
        for i in starts:
            window = rets[i : i + W]
            sharpe_ratio(window, annualization=PERIODS_PER_YEAR)
            max_drawdown(window)

    per_event(
        "recompute.empyrical",
        "empyrical.sharpe_ratio + empyrical.max_drawdown over the last 10k returns",
        run,
        lambda: (rets, feed.take(N_BASE)),
        n=N_BASE,
        rounds=BASE_ROUNDS,
        partner=core_partner(per_event),
    )


def test_recompute_pandas(per_event: PerEvent) -> None:
    series = pd.Series(returns_array())
    feed = WindowFeed()
    sqrt_n = math.sqrt(PERIODS_PER_YEAR)

    def run(series: pd.Series[float], starts: range) -> None:
        for i in starts:
            window = series.iloc[i : i + W]
            _sharpe = window.mean() / window.std() * sqrt_n
            wealth = (1.0 + window).cumprod()
            _mdd = (wealth / wealth.cummax() - 1.0).min()

    per_event(
        "recompute.pandas",
        "pandas Series: mean/std Sharpe + cumprod/cummax max drawdown over the last 10k",
        run,
        lambda: (series, feed.take(N_BASE)),
        n=N_BASE,
        rounds=BASE_ROUNDS,
        partner=core_partner(per_event),
    )


def test_recompute_numpy(per_event: PerEvent) -> None:
    rets = returns_array()
    feed = WindowFeed()
    sqrt_n = math.sqrt(PERIODS_PER_YEAR)

    def run(rets: NDArray[np.float64], starts: range) -> None:
        for i in starts:
            window = rets[i : i + W]
            _sharpe = window.mean() / window.std(ddof=1) * sqrt_n
            wealth = np.cumprod(1.0 + window)
            _mdd = (wealth / np.maximum.accumulate(wealth) - 1.0).min()

    per_event(
        "recompute.numpy",
        "bare numpy: mean/std Sharpe + cumprod/maximum.accumulate drawdown over the last 10k",
        run,
        lambda: (rets, feed.take(N_BASE)),
        n=N_BASE,
        rounds=BASE_ROUNDS,
        partner=core_partner(per_event),
    )
