"""The core's Sharpe and max drawdown against empyrical-reloaded on the same return series.

docs/metrics.md: the rolling Sharpe "is empyrical-reloaded's ``sharpe_ratio(r, risk_free=rf/N,
annualization=N)``", and drawdown is measured from a peak that starts at the allocated capital,
which is ``-empyrical.max_drawdown`` of the returns of the equity curve (empyrical anchors the curve
at its start).

To know the core's return series exactly, the tests hold one position and send at most one mark per
return period: a period then closes with the equity of the last mark before it, ``C + q·(p - p0)``,
and a period without any event closes with ``r = 0``.
"""

from __future__ import annotations

import math
import statistics
import sys

import empyrical  # type: ignore[import-untyped]
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rampart._core import AlgoConfig, Engine

T0 = 1_764_028_800_000_000_000  # 2025-11-25 00:00 UTC: a multiple of every interval used here
HOUR = 3_600 * 10**9
YEAR = 365 * 24 * HOUR
REL = 1e-9
RETURN_ROUNDING = 8 * sys.float_info.epsilon  # docs/metrics.md: |r| <= 8·ε is recorded as 0


def recorded(r: float) -> float:
    """The return the core records for a period that returned ``r`` (docs/metrics.md, "Returns")."""
    return 0.0 if abs(r) <= RETURN_ROUNDING else r


def empyrical_sharpe(returns: list[float], rf: float, n: float) -> float | None:
    value = float(empyrical.sharpe_ratio(np.array(returns), risk_free=rf / n, annualization=n))
    return None if math.isnan(value) or math.isinf(value) else value


def equity(capital: float, fee: float, qty: float, p0: float, price: float) -> float:
    """The core's equity holding ``qty`` bought at ``p0``: C + realized - fees + Q·(mark - A)."""
    return capital + 0.0 - fee + qty * (price - p0)


def run_one_mark_per_period(
    config: AlgoConfig, qty: float, prices: list[float], gaps: list[int]
) -> tuple[Engine, list[float]]:
    """Buy ``qty`` at ``prices[0]`` in period 0, then mark ``prices[k]`` ``gaps[k-1]`` empty periods
    after the previous mark. Returns the engine, rolled past the last period, and the return series
    the doc gives for it."""
    interval = config.return_interval_ns
    engine = Engine()
    engine.register(config)
    capital, p0 = config.capital, prices[0]
    engine.fill(config.algo_id, "X", qty, p0, 0.0, T0 + interval // 3)  # opens period 0
    period = 0
    returns = []
    start = capital  # the open period's start equity
    end = equity(capital, 0.0, qty, p0, p0)  # the equity it would close with
    for price, gap in zip(prices[1:], gaps, strict=True):
        period += 1 + gap
        engine.mark("X", price, T0 + period * interval + interval // 2)
        returns.append(recorded(end / start - 1.0))  # the mark closes the open period first...
        returns.extend([0.0] * gap)  # ...and the empty ones after it
        start, end = end, equity(capital, 0.0, qty, p0, price)
    engine.advance(T0 + (period + 1) * interval)
    returns.append(recorded(end / start - 1.0))
    return engine, returns


def well_conditioned(returns: list[float], window: int, rf_per_period: float) -> bool:
    """Sharpe is a ratio of mean and spread ``s``; when ``s`` is tiny against the numbers that
    went into it, no two float implementations agree to 1e-9. Two such numbers here:

    - the returns that passed through the window since the core last recomputed its sums (the
      last ``2W``: the doc keeps the window "incrementally (Welford with removal)", recomputed
      every ``W`` removals), largest magnitude ``M``. Each removal rounds the sum of squares by
      about ε·M², a relative Sharpe error of about c·ε·(M/s)² (c up to 0.42 in a targeted search):
      ``s >= 1e-3·M`` keeps it below c·2.2e-10, 1e-9 up to c = 4.5;
    - the per-period risk-free rate: empyrical subtracts it from every return before taking the
      spread, each difference rounded by up to ε/2·|rf/N|, a relative error of about ε·|rf/N|/s:
      ``s >= 1e-6·rf/N`` keeps it below 2.2e-10.

    The property tests against the reference cover that regime with an explicit rounding
    allowance; here we keep to well-conditioned series."""
    last = returns[-window:]
    if len(last) < 2:
        return True
    spread = statistics.stdev(last)
    scale = max(abs(r) for r in returns[-2 * window :])
    return spread == 0 or (spread >= 1e-3 * scale and spread >= 1e-6 * abs(rf_per_period))


price_steps = st.lists(st.floats(-0.03, 0.03), min_size=1, max_size=60)


@settings(max_examples=80)
@given(
    capital=st.floats(1e4, 1e7),
    qty=st.sampled_from([1.0, 2.0, 4.0, 8.0, -1.0, -4.0]),  # powers of 2: A = (|q|·p0)/|q| = p0
    p0=st.floats(20.0, 200.0),
    steps=price_steps,
    gap_choices=st.lists(st.sampled_from([0, 0, 0, 0, 1, 3]), min_size=60, max_size=60),
    interval=st.sampled_from([HOUR, 60 * 10**9, 1_000]),
    window=st.sampled_from([2, 3, 10, 720]),
    rf=st.one_of(st.just(0.0), st.floats(0.0, 0.1)),
    periods_per_year=st.one_of(st.none(), st.floats(1.0, 1e5)),
)
def test_sharpe_equals_empyrical(
    capital: float,
    qty: float,
    p0: float,
    steps: list[float],
    gap_choices: list[int],
    interval: int,
    window: int,
    rf: float,
    periods_per_year: float | None,
) -> None:
    prices = [p0]
    for s in steps:
        prices.append(prices[-1] * (1.0 + s))
    config = AlgoConfig(
        "algo",
        "1.0.0",
        capital,
        return_interval_ns=interval,
        sharpe_window=window,
        risk_free_rate=rf,
        periods_per_year=periods_per_year,
    )
    engine, returns = run_one_mark_per_period(config, qty, prices, gap_choices[: len(steps)])
    expected_window = returns[-window:]
    n = YEAR / interval if periods_per_year is None else periods_per_year
    assume(well_conditioned(returns, window, rf / n))
    snap = engine.snapshot("algo")
    assert snap.returns_count == len(expected_window)
    want = empyrical_sharpe(expected_window, rf, n)
    if want is None:
        assert snap.sharpe is None
    else:
        assert snap.sharpe is not None
        assert snap.sharpe == pytest.approx(want, rel=REL, abs=1e-9)


def test_sharpe_known_series() -> None:
    """A hand-checkable series: returns 0, +1 %, -0.5 %, +2 % of hourly periods (N = 8760)."""
    capital, qty, p0 = 100_000.0, 1_000.0, 100.0
    # equity 100000 -> 101000 -> 100495 -> 102504.9: prices from E = C + q (p - p0)
    e1 = capital * 1.01
    e2 = e1 * 0.995
    e3 = e2 * 1.02
    prices = [p0, p0 + (e1 - capital) / qty, p0 + (e2 - capital) / qty, p0 + (e3 - capital) / qty]
    config = AlgoConfig("algo", "1.0.0", capital)
    engine, returns = run_one_mark_per_period(config, qty, prices, [0, 0, 0])
    assert returns == pytest.approx([0.0, 0.01, -0.005, 0.02], abs=1e-12)
    snap = engine.snapshot("algo")
    assert snap.returns_count == 4
    want = empyrical_sharpe(returns, 0.0, 8760.0)
    assert want is not None
    assert snap.sharpe == pytest.approx(want, rel=REL)
    by_hand = statistics.mean(returns) / statistics.stdev(returns) * math.sqrt(8760)
    assert snap.sharpe == pytest.approx(by_hand, rel=REL)


def test_sharpe_is_undefined_like_empyrical() -> None:
    """Fewer than 2 returns, or all equal: empyrical gives NaN and the core gives None."""
    config = AlgoConfig("algo", "1.0.0", 10_000.0, sharpe_window=4)
    engine, returns = run_one_mark_per_period(config, 1.0, [100.0], [])
    assert returns == [0.0]
    assert engine.snapshot("algo").sharpe is None
    assert empyrical_sharpe(returns, 0.0, 8760.0) is None
    # a price that never moves: every return is 0
    engine, returns = run_one_mark_per_period(config, 1.0, [100.0] * 6, [0, 1, 0, 2, 0])
    assert returns[-4:] == [0.0] * 4
    assert engine.snapshot("algo").sharpe is None
    assert empyrical_sharpe(returns[-4:], 0.0, 8760.0) is None


@pytest.mark.parametrize("ulps", [8, 9])
def test_sharpe_at_the_return_rounding_threshold(ulps: int) -> None:
    """A period returning exactly 8 ulps is recorded as 0 (so ``[0, 0]`` has no Sharpe), 9 ulps is
    a return (``[0, r]`` has Sharpe sqrt(N / 2) whatever r). Found by test_sharpe_equals_empyrical
    (capital 431767, price 20 -> 20·(1 + 3.94e-11): a return of exactly 8·ε), while its expected
    series missed the rule: empyrical then saw ``[0, 8·ε]`` and gave 66.18 = sqrt(8760 / 2)."""
    capital, p0 = 2.0**14, 20.0
    eps = sys.float_info.epsilon
    config = AlgoConfig("algo", "1.0.0", capital, sharpe_window=2)
    price = p0 + ulps * eps * capital  # exact: the equity is C·(1 + ulps·ε), a float
    engine, returns = run_one_mark_per_period(config, 1.0, [p0, price], [0])
    assert engine.returns("algo") == returns == [0.0, 0.0 if ulps == 8 else ulps * eps]
    want = empyrical_sharpe(returns, 0.0, 8760.0)
    if ulps == 8:
        assert want is None
        assert engine.snapshot("algo").sharpe is None
    else:
        assert want == pytest.approx(math.sqrt(8760 / 2), rel=1e-12)
        assert engine.snapshot("algo").sharpe == pytest.approx(want, rel=REL)


@settings(max_examples=80)
@given(
    capital=st.floats(1e3, 1e7),
    qty=st.sampled_from([1.0, 3.0, 0.5, -2.0, -7.0]),
    p0=st.floats(20.0, 200.0),
    fee=st.one_of(st.just(0.0), st.floats(0.0, 5.0)),
    steps=st.lists(st.floats(-0.05, 0.05), min_size=1, max_size=80),
    dts=st.lists(st.integers(0, 3 * HOUR), min_size=80, max_size=80),
)
def test_max_drawdown_equals_empyrical(
    capital: float,
    qty: float,
    p0: float,
    fee: float,
    steps: list[float],
    dts: list[int],
) -> None:
    """Any number of marks per period: drawdown follows every equity change."""
    assume(abs(qty) * p0 * 3 < capital)  # the equity stays well above 0
    engine = Engine()
    engine.register(AlgoConfig("algo", "1.0.0", capital))
    ts = T0
    engine.fill("algo", "X", qty, p0, fee, ts)
    a = abs(qty) * p0 / abs(qty)  # the doc's average cost on opening, (0·A + |q|·p) / (0 + |q|)
    curve = [capital, capital + 0.0 - fee + qty * (p0 - a)]
    price = p0
    for step, dt in zip(steps, dts, strict=False):
        price *= 1.0 + step
        ts += dt
        engine.mark("X", price, ts)
        curve.append(capital + 0.0 - fee + qty * (price - a))
    eq = np.array(curve)
    returns = eq[1:] / eq[:-1] - 1.0
    want = -float(empyrical.max_drawdown(returns))
    snap = engine.snapshot("algo")
    assert snap.max_drawdown == pytest.approx(want, rel=REL, abs=1e-15)
    # and the current drawdown is measured from the running peak, the capital included
    peak = max(curve)
    assert snap.peak_equity == pytest.approx(peak, rel=1e-12)
    assert snap.drawdown == pytest.approx((peak - curve[-1]) / peak, rel=REL, abs=1e-15)


def test_max_drawdown_known_curve() -> None:
    """100 -> 120 -> 90 -> 130 -> 117: the worst fall is 120 -> 90, i.e. 25 %."""
    engine = Engine()
    engine.register(AlgoConfig("algo", "1.0.0", 100.0))
    engine.fill("algo", "X", 1.0, 50.0, 0.0, T0)
    for i, price in enumerate([70.0, 40.0, 80.0, 67.0], start=1):
        engine.mark("X", price, T0 + i)
    returns = np.array([1.2, 0.75, 130 / 90, 0.9]) - 1.0
    assert -empyrical.max_drawdown(returns) == pytest.approx(0.25)
    snap = engine.snapshot("algo")
    assert snap.max_drawdown == pytest.approx(0.25, rel=REL)
    assert snap.drawdown == pytest.approx(0.1, rel=REL)
    assert snap.peak_equity == 130.0


# --------------------------------------------------------------------------------------------------
# Session sampling: one return per trading session that saw events (docs/metrics.md, "Returns").

DAY = 24 * HOUR


def trading_days(n: int, holidays: frozenset[int] = frozenset({17, 45, 88, 150, 201})) -> list[int]:
    """Event times of ``n`` trading-day closes (21:00 UTC): weekdays from T0 (a Tuesday), less
    a few holidays, as an exchange calendar would."""
    days: list[int] = []
    d = 0
    while len(days) < n:
        weekday = (1 + d) % 7  # T0 = 2025-11-25 is a Tuesday: 0 = Monday
        if weekday < 5 and d not in holidays:
            days.append(T0 + d * DAY + 21 * HOUR)
        d += 1
    return days


@settings(max_examples=40)
@given(
    moves=st.lists(st.floats(-0.03, 0.03), min_size=260, max_size=400),
    qty=st.floats(0.5, 50.0),
    window=st.sampled_from([20, 63, 252]),
)
def test_session_sharpe_equals_empyrical_on_trading_days(
    moves: list[float], qty: float, window: int
) -> None:
    capital, p0 = 1_000_000.0, 4_000.0
    config = AlgoConfig("spx", "1", capital, return_sampling="session", sharpe_window=window)
    assert config.periods_per_year == 252.0, "session sampling annualizes over 252 sessions"
    engine = Engine()
    engine.register(config)
    closes = trading_days(len(moves) + 1)
    engine.fill("spx", "SPX", qty, p0, 0.0, closes[0])
    prices = [p0]
    for ts, m in zip(closes[1:], moves, strict=True):
        prices.append(prices[-1] * (1.0 + m))
        engine.mark("SPX", prices[-1], ts)
    engine.advance(closes[-1] + DAY)  # the next session opens: the last one closes
    # The equity at each close; the first session's return is measured from the capital.
    closes_equity = [capital + qty * (p - p0) for p in prices]
    expected = [e / s - 1.0 for s, e in zip([capital, *closes_equity], closes_equity, strict=False)]
    expected = [recorded(r) for r in expected]
    got = engine.returns("spx")
    assert len(got) == min(window, len(expected)), "weekends and holidays add no return"
    assert got == pytest.approx(expected[-window:], rel=REL, abs=1e-15)
    want = empyrical_sharpe(expected[-window:], 0.0, 252.0)
    sharpe = engine.snapshot("spx").sharpe
    if want is None:
        assert sharpe is None
    else:
        assert sharpe == pytest.approx(want, rel=1e-8)
    assert engine.snapshot("spx").returns_count == len(got)


def test_interval_sampling_adds_zero_returns_on_closed_days_and_session_sampling_does_not() -> None:
    closes = trading_days(30)
    counts = {}
    for mode in ("interval", "session"):
        engine = Engine()
        engine.register(AlgoConfig("a", "1", 1e6, return_sampling=mode, return_interval_ns=DAY))
        engine.fill("a", "X", 1.0, 100.0, 0.0, closes[0])
        for i, ts in enumerate(closes[1:]):
            engine.mark("X", 100.0 + i, ts)
        engine.advance(closes[-1] + DAY)
        counts[mode] = engine.snapshot("a").returns_count
    calendar_days = (closes[-1] + DAY - closes[0]) // DAY
    assert counts["session"] == 30
    assert counts["interval"] == calendar_days  # one per calendar day, closed days as 0
    assert counts["interval"] > counts["session"]
