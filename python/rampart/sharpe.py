"""How far to trust a Sharpe ratio: its standard error from the number of returns behind it."""

from __future__ import annotations

import math


def sharpe_standard_error(
    sharpe: float | None, returns: int, periods_per_year: float
) -> float | None:
    """The standard error of an annualized Sharpe ratio estimated from ``returns`` returns
    (Lo, 2002, for independent returns: ``sqrt((1 + s^2 / 2) / n)`` per period, annualized).
    A week of hourly returns gives about 7: a week's Sharpe of 4 is "somewhere from -3 to 11"."""
    if sharpe is None or not math.isfinite(sharpe) or returns < 2:
        return None
    per_period = sharpe / math.sqrt(periods_per_year)
    return math.sqrt((1 + per_period**2 / 2) / returns * periods_per_year)
