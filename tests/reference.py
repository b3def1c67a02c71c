"""A plain-Python reference implementation of ``docs/metrics.md``.

``ReferenceEngine`` has the same methods as ``rampart._core.Engine`` and is written to be obviously
correct rather than fast: it recomputes equity from the positions, keeps the order and ack events of
the sliding windows in deques, computes latency quantiles exactly (nearest rank) and computes Sharpe
from the window of returns with :mod:`statistics` (exact arithmetic) at every snapshot. The property
tests hold the Rust core to it; the benchmarks use it as the plain-Python baseline.

Every rule below quotes the section of ``docs/metrics.md`` it implements. Where the doc leaves room,
this is the reading taken (the core agrees on all of them except where noted in the tests):

- marks are per symbol, engine-wide; a quote or mark event makes a symbol "quoted";
- an event that changes an algorithm's equity (a fill; a quote or mark of a symbol it holds) first
  rolls its periods and session, then applies, then evaluates the daily-loss and drawdown limits -
  every such event is one evaluation for the ``*_consecutive`` counts, changed value or not;
- "the first event an algorithm sees" is its own fill, order event or capital change; ``advance``
  and ``snapshot`` only roll algorithms that have seen one (a read must not change results);
- the metric clock of an event is ``max(engine clock, ts)``: windows, periods, sessions and
  ``Breach.ts`` use it; ``last_*_ts`` are the latest event times seen on each stream;
- ``last_event_ts`` is the latest fill or order event of the algorithm (not ``set_capital``).
"""

from __future__ import annotations

import math
import statistics
from bisect import bisect_left, insort
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from typing import Literal, Protocol

from rampart._core import (
    ConfigError,
    InvalidEventError,
    OutOfOrderError,
    UnknownAlgorithmError,
)

__all__ = [
    "DAY_NS",
    "YEAR_NS",
    "AlgoConfigLike",
    "RefBreach",
    "RefPosition",
    "RefSnapshot",
    "ReferenceEngine",
]

Kind = Literal["daily_loss", "drawdown", "error_rate", "latency"]

DAY_NS = 86_400 * 10**9
YEAR_NS = 365 * DAY_NS
FLAT_EPS = 1e-9  # "flat when |Q| <= 1e-9 * max(|Q_before|, |q|) after a fill"
EPS = 2.0**-52
# Two implementations of the same formulas may round differently (summation order, incremental vs
# recomputed sums); this many ulps of the magnitudes involved is what ``sharpe_tolerance`` allows.
ROUNDING = 2 * EPS


class AlgoConfigLike(Protocol):
    """The attributes of ``rampart._core.AlgoConfig`` that the reference reads."""

    @property
    def algo_id(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def capital(self) -> float: ...
    @property
    def max_daily_loss(self) -> float | None: ...
    @property
    def max_drawdown(self) -> float | None: ...
    @property
    def max_error_rate(self) -> float | None: ...
    @property
    def max_latency_ns(self) -> int | None: ...
    @property
    def daily_loss_consecutive(self) -> int: ...
    @property
    def drawdown_consecutive(self) -> int: ...
    @property
    def error_rate_consecutive(self) -> int: ...
    @property
    def latency_consecutive(self) -> int: ...
    @property
    def error_window_ns(self) -> int: ...
    @property
    def error_min_orders(self) -> int: ...
    @property
    def latency_window_ns(self) -> int: ...
    @property
    def latency_min_samples(self) -> int: ...
    @property
    def return_interval_ns(self) -> int: ...
    @property
    def sharpe_window(self) -> int: ...
    @property
    def periods_per_year(self) -> float | None: ...
    @property
    def risk_free_rate(self) -> float: ...
    @property
    def session_offset_ns(self) -> int: ...
    @property
    def confidence_drawdown_ref(self) -> float: ...


@dataclass(frozen=True)
class RefBreach:
    algo_id: str
    kind: Kind
    value: float
    threshold: float
    ts: int


@dataclass(frozen=True)
class RefPosition:
    symbol: str
    qty: float
    avg_cost: float
    mark: float | None
    unrealized_pnl: float
    realized_pnl: float


@dataclass
class RefSnapshot:
    algo_id: str
    version: str
    ts: int | None
    capital: float
    equity: float
    realized_pnl: float
    unrealized_pnl: float
    fees: float
    peak_equity: float
    drawdown: float
    max_drawdown: float
    daily_pnl: float
    session_start_equity: float
    stage_pnl: float
    returns_count: int
    sharpe: float | None
    trades: int
    wins: int
    win_rate: float | None
    fills: int
    orders_in_window: int
    rejects_in_window: int
    error_rate: float | None
    acks_in_window: int
    latency_p50_ns: int | None
    latency_p99_ns: int | None
    orders_submitted_total: int
    orders_rejected_total: int
    orders_acked_total: int
    orders_cancelled_total: int
    last_fill_ts: int | None
    last_order_ts: int | None
    last_event_ts: int | None
    confidence: float
    breached: list[Kind]
    positions: list[RefPosition]

    def to_dict(self) -> dict[str, object]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["breached"] = list(self.breached)
        out["positions"] = [asdict(p) for p in self.positions]
        return out


# --------------------------------------------------------------------------------------------------
# helpers


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite_positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _clamp01(x: float) -> float:
    return min(1.0, max(0.0, x))


def nearest_rank(sorted_values: list[int], q_percent: int) -> int:
    """The value at rank ``ceil(q·n)`` (1-based, at least 1), ``q = q_percent / 100`` exactly."""
    n = len(sorted_values)
    rank = max(1, -(-q_percent * n // 100))  # integer ceil, no float rounding
    return sorted_values[rank - 1]


@dataclass
class _Trade:
    """The open round trip of a symbol: realized PnL of its closing fills and its share of fees."""

    realized: float = 0.0
    fees: float = 0.0


@dataclass
class _Position:
    qty: float = 0.0
    avg_cost: float = 0.0
    realized: float = 0.0
    trade: _Trade | None = None


@dataclass
class _Limit:
    threshold: float | None
    consecutive: int
    streak: int = 0
    latched: bool = False


@dataclass
class _Algo:
    algo_id: str
    version: str
    capital: float
    error_window_ns: int
    error_min_orders: int
    latency_window_ns: int
    latency_min_samples: int
    return_interval_ns: int
    sharpe_window: int
    periods_per_year: float
    risk_free_rate: float
    session_offset_ns: int
    confidence_drawdown_ref: float
    limits: dict[Kind, _Limit]
    # accounting
    realized: float = 0.0
    fees: float = 0.0
    positions: dict[str, _Position] = field(default_factory=dict)
    peak: float = 0.0
    max_drawdown: float = 0.0
    stage_mark: float = 0.0
    # event-time clocks: None until the algorithm's first event
    period: int | None = None
    period_start: float = 0.0
    day: int | None = None
    session_start: float = 0.0
    returns: deque[float] = field(default_factory=deque)  # the Sharpe window: the last W returns
    # for sharpe_tolerance only: the rounding noise of each return, and the last 2W returns
    noise: deque[float] = field(default_factory=deque)
    recent_returns: deque[float] = field(default_factory=deque)
    period_start_scale: float = 0.0
    abs_flow: float = 0.0  # sum of |realized PnL increments| and fees: the scale of their rounding
    # trades
    trades: int = 0
    wins: int = 0
    near_zero_trades: int = 0  # closed trades whose net PnL is ~0 (win or not is float noise)
    fills: int = 0
    # orders (times are metric-clock times, non-decreasing)
    submits: deque[int] = field(default_factory=deque)
    rejects: deque[int] = field(default_factory=deque)
    acks: deque[tuple[int, int]] = field(default_factory=deque)
    ack_latencies_sorted: list[int] = field(default_factory=list)
    submitted_total: int = 0
    rejected_total: int = 0
    acked_total: int = 0
    cancelled_total: int = 0
    last_fill_ts: int | None = None
    last_order_ts: int | None = None
    last_event_ts: int | None = None


# --------------------------------------------------------------------------------------------------


class ReferenceEngine:
    """Same API and semantics as ``rampart._core.Engine`` (see ``docs/metrics.md``)."""

    def __init__(self, *, time_tolerance_ns: int = 5_000_000_000) -> None:
        if not _is_int(time_tolerance_ns) or time_tolerance_ns < 0:
            raise ConfigError(
                f"time_tolerance_ns must be an integer >= 0, got {time_tolerance_ns!r}"
            )
        self._tolerance = time_tolerance_ns
        self._now: int | None = None
        self._algos: dict[str, _Algo] = {}
        self._marks: dict[str, float] = {}  # the mark of each symbol, engine-wide
        self._market_data: set[str] = set()  # symbols that have had a quote or mark event
        self._last_quote_ts: dict[str, int] = {}

    # ---------------------------------------------------------------- properties and registry

    @property
    def now(self) -> int | None:
        return self._now

    @property
    def time_tolerance_ns(self) -> int:
        return self._tolerance

    def register(self, config: AlgoConfigLike) -> None:
        c = config
        if c.algo_id in self._algos:
            raise ConfigError(f"algorithm {c.algo_id!r} is already registered")
        if not _finite_positive(c.capital):
            raise ConfigError(f"capital must be finite and > 0, got {c.capital!r}")
        for name in ("error_window_ns", "latency_window_ns", "return_interval_ns"):
            if getattr(c, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        if c.sharpe_window < 2:
            raise ConfigError("sharpe_window must be >= 2")
        for name in ("max_daily_loss", "max_drawdown", "max_error_rate"):
            value = getattr(c, name)
            if value is not None and not 0 <= value <= 1:  # also rejects NaN
                raise ConfigError(f"{name} must be a fraction in [0, 1]")
        if c.max_latency_ns is not None and c.max_latency_ns < 0:
            raise ConfigError("max_latency_ns must be >= 0")
        for limit_name, name in (
            ("max_daily_loss", "daily_loss_consecutive"),
            ("max_drawdown", "drawdown_consecutive"),
            ("max_error_rate", "error_rate_consecutive"),
            ("max_latency_ns", "latency_consecutive"),
        ):
            if getattr(c, limit_name) is not None and getattr(c, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if c.error_min_orders < 0 or c.latency_min_samples < 0:
            raise ConfigError("minimum counts must be >= 0")
        if not math.isfinite(c.risk_free_rate):
            raise ConfigError("risk_free_rate must be finite")
        if not 0 <= c.session_offset_ns < DAY_NS:
            raise ConfigError("session_offset_ns must be in [0, 1 day)")
        ppy = c.periods_per_year
        if ppy is None:
            # "default 365·24·3600 s / return_interval"
            ppy = YEAR_NS / c.return_interval_ns
        if not _finite_positive(ppy):
            raise ConfigError("periods_per_year must be finite and > 0")
        if not _finite_positive(c.confidence_drawdown_ref):
            raise ConfigError("confidence_drawdown_ref must be finite and > 0")
        limits: dict[Kind, _Limit] = {
            "daily_loss": _Limit(c.max_daily_loss, c.daily_loss_consecutive),
            "drawdown": _Limit(c.max_drawdown, c.drawdown_consecutive),
            "error_rate": _Limit(c.max_error_rate, c.error_rate_consecutive),
            "latency": _Limit(
                None if c.max_latency_ns is None else float(c.max_latency_ns),
                c.latency_consecutive,
            ),
        }
        self._algos[c.algo_id] = _Algo(
            algo_id=c.algo_id,
            version=c.version,
            capital=c.capital,
            error_window_ns=c.error_window_ns,
            error_min_orders=c.error_min_orders,
            latency_window_ns=c.latency_window_ns,
            latency_min_samples=c.latency_min_samples,
            return_interval_ns=c.return_interval_ns,
            sharpe_window=c.sharpe_window,
            periods_per_year=ppy,
            risk_free_rate=c.risk_free_rate,
            session_offset_ns=c.session_offset_ns,
            confidence_drawdown_ref=c.confidence_drawdown_ref,
            limits=limits,
            peak=c.capital,  # "peak ... starting at C"
            stage_mark=c.capital,  # "The mark is C until set"
            session_start=c.capital,
            period_start=c.capital,
            returns=deque(maxlen=c.sharpe_window),
            noise=deque(maxlen=c.sharpe_window),
            recent_returns=deque(maxlen=2 * c.sharpe_window),
        )

    def unregister(self, algo_id: str) -> None:
        self._algo(algo_id)
        del self._algos[algo_id]

    def algorithms(self) -> list[str]:
        return list(self._algos)

    def __contains__(self, algo_id: str) -> bool:
        return algo_id in self._algos

    def __len__(self) -> int:
        return len(self._algos)

    # ---------------------------------------------------------------- validation

    def _algo(self, algo_id: str) -> _Algo:
        try:
            return self._algos[algo_id]
        except KeyError:
            raise UnknownAlgorithmError(f"unknown algorithm {algo_id!r}") from None

    def _check_ts(self, ts: int) -> None:
        if not _is_int(ts):
            raise InvalidEventError(f"ts must be an integer, got {ts!r}")
        # "timestamps more than time_tolerance behind the engine clock" are rejected
        if self._now is not None and ts < self._now - self._tolerance:
            raise OutOfOrderError(
                f"ts {ts} is {self._now - ts} ns behind the engine clock {self._now} "
                f"(tolerance {self._tolerance} ns)"
            )

    def _tick(self, ts: int) -> int:
        """Accept a validated event time; returns the metric clock, which never runs back."""
        self._now = ts if self._now is None else max(self._now, ts)
        return self._now

    # ---------------------------------------------------------------- accounting

    def _unrealized(self, a: _Algo) -> float:
        total = 0.0
        for symbol, pos in a.positions.items():
            if pos.qty != 0.0:
                total += pos.qty * (self._marks[symbol] - pos.avg_cost)
        return total

    def _equity(self, a: _Algo) -> float:
        # "equity E = C + realized - fees + unrealized"
        return a.capital + a.realized - a.fees + self._unrealized(a)

    def _holders(self, symbol: str) -> list[_Algo]:
        return [
            a
            for a in self._algos.values()
            if symbol in a.positions and a.positions[symbol].qty != 0
        ]

    def _roll(self, a: _Algo, t: int) -> None:
        """Close the return periods and the session that ended before metric time ``t``."""
        if a.period is None or a.day is None:
            # "The first event an algorithm sees opens its first period with start equity C"
            # "... opens its first session with E_session_start = C"
            a.period = t // a.return_interval_ns
            a.period_start = a.capital
            a.period_start_scale = a.capital
            a.day = (t - a.session_offset_ns) // DAY_NS
            a.session_start = a.capital
            return
        k = t // a.return_interval_ns
        if k > a.period:
            e_end = self._equity(a)
            # "A period whose start equity is <= 0 yields no return"
            scale = self._equity_scale(a)
            if a.period_start > 0:
                r = e_end / a.period_start - 1.0
                noise = ROUNDING * (scale + a.period_start_scale * abs(1 + r)) / a.period_start
                self._record_return(a, r, noise)
            if e_end > 0:
                # "every empty period in between closes with r = 0 (at most W of them are recorded)"
                for _ in range(min(k - a.period - 1, a.sharpe_window)):
                    self._record_return(a, 0.0, 0.0)
            a.period = k
            a.period_start = e_end
            a.period_start_scale = scale
        d = (t - a.session_offset_ns) // DAY_NS
        if d > a.day:
            # "the equity at session start is set to the equity before that event"
            a.day = d
            a.session_start = self._equity(a)

    @staticmethod
    def _record_return(a: _Algo, r: float, noise: float) -> None:
        a.returns.append(r)
        a.noise.append(noise)
        a.recent_returns.append(r)

    def _equity_scale(self, a: _Algo) -> float:
        """The magnitude of the terms summed into equity: its rounding is a few ulps of this."""
        held = sum(
            abs(p.qty) * (self._marks[s] + p.avg_cost) for s, p in a.positions.items() if p.qty != 0
        )
        return a.capital + a.abs_flow + held

    def _apply_fill(self, a: _Algo, symbol: str, q: float, p: float, f: float) -> None:
        pos = a.positions.setdefault(symbol, _Position())
        a.fees += f
        a.abs_flow += f
        a.fills += 1
        big_q = pos.qty
        if big_q == 0.0 or _sign(q) == _sign(big_q):
            # opening / adding
            if big_q == 0.0:
                pos.trade = _Trade()
            assert pos.trade is not None
            pos.trade.fees += f
            pos.avg_cost = (abs(big_q) * pos.avg_cost + abs(q) * p) / (abs(big_q) + abs(q))
            pos.qty = big_q + q
            return
        assert pos.trade is not None
        new_q = big_q + q
        flat = abs(new_q) <= FLAT_EPS * max(abs(big_q), abs(q))
        closed = min(abs(q), abs(big_q))
        pnl = closed * (p - pos.avg_cost) * _sign(big_q)
        a.realized += pnl
        a.abs_flow += abs(pnl)
        pos.realized += pnl
        pos.trade.realized += pnl
        if flat or abs(q) <= abs(big_q):
            # reducing (or closing to flat, float residue absorbed): the whole fee is the trade's
            pos.trade.fees += f
            if flat:
                self._close_trade(a, pos.trade)
                pos.trade = None
                pos.qty = 0.0
                pos.avg_cost = 0.0
            else:
                pos.qty = new_q
            return
        # flipping: "the fee ... is split pro rata: f · closed / |q| to the closing trade"
        closing_fee = f * closed / abs(q)
        pos.trade.fees += closing_fee
        self._close_trade(a, pos.trade)
        pos.trade = _Trade(fees=f - closing_fee)
        pos.qty = new_q
        pos.avg_cost = p

    def _close_trade(self, a: _Algo, trade: _Trade) -> None:
        net = trade.realized - trade.fees
        a.trades += 1
        if net > 0:
            a.wins += 1
        if abs(net) <= 1e-9 * (abs(trade.realized) + trade.fees):
            a.near_zero_trades += 1

    # ---------------------------------------------------------------- limits

    def _evaluate(
        self, a: _Algo, kind: Kind, breaching: bool, value: float, t: int
    ) -> RefBreach | None:
        limit = a.limits[kind]
        if limit.threshold is None:
            return None
        limit.streak = limit.streak + 1 if breaching else 0
        if not breaching or limit.latched or limit.streak < limit.consecutive:
            return None
        limit.latched = True
        return RefBreach(a.algo_id, kind, value, limit.threshold, t)

    def _on_equity_change(self, a: _Algo, t: int, out: list[RefBreach]) -> None:
        e = self._equity(a)
        a.peak = max(a.peak, e)
        dd = self._drawdown(a, e)
        a.max_drawdown = max(a.max_drawdown, dd)
        daily_limit = a.limits["daily_loss"].threshold
        if daily_limit is not None:
            daily = e - a.session_start
            # "daily PnL < -max_daily_loss · C"
            b = self._evaluate(a, "daily_loss", daily < -daily_limit * a.capital, daily, t)
            if b is not None:
                out.append(b)
        dd_limit = a.limits["drawdown"].threshold
        if dd_limit is not None:
            b = self._evaluate(a, "drawdown", dd > dd_limit, dd, t)
            if b is not None:
                out.append(b)

    @staticmethod
    def _drawdown(a: _Algo, e: float) -> float:
        return (a.peak - e) / a.peak if a.peak > 0 else 0.0

    @staticmethod
    def _prune(a: _Algo, t: int) -> None:
        """Drop order events that have left the windows ``(t - window, t]``."""
        while a.submits and a.submits[0] <= t - a.error_window_ns:
            a.submits.popleft()
        while a.rejects and a.rejects[0] <= t - a.error_window_ns:
            a.rejects.popleft()
        while a.acks and a.acks[0][0] <= t - a.latency_window_ns:
            _, latency = a.acks.popleft()
            del a.ack_latencies_sorted[bisect_left(a.ack_latencies_sorted, latency)]

    @staticmethod
    def _error_rate(a: _Algo) -> float | None:
        if not a.submits:
            return None
        return min(1.0, len(a.rejects) / len(a.submits))

    def _check_error_rate(self, a: _Algo, t: int, out: list[RefBreach]) -> None:
        limit = a.limits["error_rate"].threshold
        if limit is None:
            return
        rate = self._error_rate(a)
        breaching = rate is not None and rate > limit and len(a.submits) >= a.error_min_orders
        b = self._evaluate(a, "error_rate", breaching, 0.0 if rate is None else rate, t)
        if b is not None:
            out.append(b)

    def _check_latency(self, a: _Algo, t: int, out: list[RefBreach]) -> None:
        limit = a.limits["latency"].threshold
        if limit is None:
            return
        p99 = nearest_rank(a.ack_latencies_sorted, 99)
        breaching = p99 > limit and len(a.ack_latencies_sorted) >= a.latency_min_samples
        b = self._evaluate(a, "latency", breaching, float(p99), t)
        if b is not None:
            out.append(b)

    # ---------------------------------------------------------------- market data

    def quote(self, symbol: str, bid: float, ask: float, ts: int) -> list[RefBreach] | None:
        if not (_finite_positive(bid) and _finite_positive(ask)):
            raise InvalidEventError(f"bad quote prices bid={bid!r} ask={ask!r}")
        if bid > ask:
            raise InvalidEventError(f"crossed quote: bid {bid} > ask {ask}")
        self._check_ts(ts)
        return self._set_mark(symbol, (float(bid) + float(ask)) / 2, ts)

    def mark(self, symbol: str, price: float, ts: int) -> list[RefBreach] | None:
        if not _finite_positive(price):
            raise InvalidEventError(f"bad mark price {price!r}")
        self._check_ts(ts)
        return self._set_mark(symbol, float(price), ts)

    def _set_mark(self, symbol: str, price: float, ts: int) -> list[RefBreach] | None:
        t = self._tick(ts)
        self._last_quote_ts[symbol] = max(ts, self._last_quote_ts.get(symbol, ts))
        self._market_data.add(symbol)
        holders = self._holders(symbol)
        for a in holders:
            self._roll(a, t)  # the period/session closes with the equity *before* this event
        self._marks[symbol] = price
        out: list[RefBreach] = []
        for a in holders:
            self._on_equity_change(a, t, out)
        return out or None

    def quotes(
        self, symbols: list[str], bids: list[float], asks: list[float], ts: list[int]
    ) -> tuple[list[RefBreach], int, list[tuple[int, str]]]:
        """Batch of quotes: (breaches, accepted, [(index, message)])."""
        breaches: list[RefBreach] = []
        errors: list[tuple[int, str]] = []
        accepted = 0
        for i, (s, b, a, t) in enumerate(zip(symbols, bids, asks, ts, strict=True)):
            try:
                got = self.quote(s, b, a, t)
            except InvalidEventError as exc:
                errors.append((i, str(exc)))
                continue
            accepted += 1
            breaches.extend(got or [])
        return breaches, accepted, errors

    def last_quote_ts(self, symbol: str) -> int | None:
        return self._last_quote_ts.get(symbol)

    # ---------------------------------------------------------------- fills and orders

    def fill(
        self, algo_id: str, symbol: str, qty: float, price: float, fee: float, ts: int
    ) -> list[RefBreach] | None:
        a = self._algo(algo_id)
        if not math.isfinite(qty) or qty == 0:
            raise InvalidEventError(f"bad quantity {qty!r}")
        if not _finite_positive(price):
            raise InvalidEventError(f"bad price {price!r}")
        if not math.isfinite(fee) or fee < 0:
            raise InvalidEventError(f"bad fee {fee!r}")
        self._check_ts(ts)
        qty, price, fee = float(qty), float(price), float(fee)
        t = self._tick(ts)
        # "Until a symbol has been quoted, fills of that symbol set its mark to the fill price."
        moves_mark = symbol not in self._market_data
        others = [b for b in self._holders(symbol) if b is not a] if moves_mark else []
        self._roll(a, t)
        for b in others:
            self._roll(b, t)
        if moves_mark:
            self._marks[symbol] = price
        self._apply_fill(a, symbol, qty, price, fee)
        a.last_fill_ts = ts if a.last_fill_ts is None else max(a.last_fill_ts, ts)
        self._touch(a, ts)
        out: list[RefBreach] = []
        self._on_equity_change(a, t, out)
        for b in others:
            self._on_equity_change(b, t, out)
        return out or None

    def _touch(self, a: _Algo, ts: int) -> None:
        a.last_event_ts = ts if a.last_event_ts is None else max(a.last_event_ts, ts)

    def _order_event(self, algo_id: str, ts: int) -> tuple[_Algo, int]:
        a = self._algo(algo_id)
        self._check_ts(ts)
        t = self._tick(ts)
        self._roll(a, t)
        self._prune(a, t)
        a.last_order_ts = ts if a.last_order_ts is None else max(a.last_order_ts, ts)
        self._touch(a, ts)
        return a, t

    def order_submitted(self, algo_id: str, ts: int) -> list[RefBreach] | None:
        a, t = self._order_event(algo_id, ts)
        a.submits.append(t)
        a.submitted_total += 1
        out: list[RefBreach] = []
        self._check_error_rate(a, t, out)
        return out or None

    def order_rejected(self, algo_id: str, ts: int) -> list[RefBreach] | None:
        a, t = self._order_event(algo_id, ts)
        a.rejects.append(t)
        a.rejected_total += 1
        out: list[RefBreach] = []
        self._check_error_rate(a, t, out)
        return out or None

    def order_acked(self, algo_id: str, latency_ns: int, ts: int) -> list[RefBreach] | None:
        self._algo(algo_id)
        if not _is_int(latency_ns) or latency_ns < 0:
            raise InvalidEventError(f"bad latency {latency_ns!r}")
        a, t = self._order_event(algo_id, ts)
        a.acks.append((t, latency_ns))
        insort(a.ack_latencies_sorted, latency_ns)
        a.acked_total += 1
        out: list[RefBreach] = []
        self._check_latency(a, t, out)
        return out or None

    def order_cancelled(self, algo_id: str, ts: int) -> list[RefBreach] | None:
        a, _ = self._order_event(algo_id, ts)
        a.cancelled_total += 1
        return None

    # ---------------------------------------------------------------- control

    def set_capital(self, algo_id: str, capital: float, ts: int) -> list[RefBreach] | None:
        a = self._algo(algo_id)
        if not _finite_positive(capital):
            raise ConfigError(f"capital must be finite and > 0, got {capital!r}")
        self._check_ts(ts)
        capital = float(capital)
        t = self._tick(ts)
        self._roll(a, t)
        # "a cash flow, not a profit": everything measured against equity moves with it
        delta = capital - a.capital
        a.capital = capital
        a.peak += delta
        a.session_start += delta
        a.stage_mark += delta
        a.period_start += delta
        a.period_start_scale += abs(delta)
        out: list[RefBreach] = []
        self._on_equity_change(a, t, out)
        return out or None

    def mark_stage(self, algo_id: str) -> None:
        a = self._algo(algo_id)
        a.stage_mark = self._equity(a)

    def new_measurement(self, algo_id: str, ts: int) -> None:
        """docs/metrics.md "A new measurement": equity restarts at C, positions held on at their
        marks, the PnL-derived state restarts, the orders' state is kept."""
        a = self._algo(algo_id)
        self._check_ts(ts)
        t = self._tick(ts)
        self._roll(a, t)
        for symbol, pos in a.positions.items():
            if pos.qty != 0.0:
                # "held on as if opened at its current mark"
                pos.avg_cost = self._marks[symbol]
                pos.trade = _Trade()
            pos.realized = 0.0
        a.realized = a.fees = a.abs_flow = 0.0
        a.peak = a.session_start = a.stage_mark = a.period_start = a.capital
        a.period_start_scale = a.capital
        a.max_drawdown = 0.0
        a.returns.clear()
        a.noise.clear()
        a.recent_returns.clear()
        a.trades = a.wins = a.near_zero_trades = 0
        for kind in ("daily_loss", "drawdown"):
            a.limits[kind].latched = False
            a.limits[kind].streak = 0

    def reset_breaches(self, algo_id: str) -> None:
        a = self._algo(algo_id)
        for limit in a.limits.values():
            limit.latched = False
            limit.streak = 0

    def advance(self, ts: int) -> None:
        self._check_ts(ts)
        t = self._tick(ts)
        for a in self._algos.values():
            if a.period is not None:
                self._roll(a, t)

    # ---------------------------------------------------------------- reads

    def sharpe_tolerance(self, algo_id: str) -> float:
        """How far a correct implementation's Sharpe may be from this one's (absolute): rounding.

        Two sources, both far below 1e-9 relative for well-conditioned windows:

        - each return ``E_end / E_start - 1`` inherits the rounding of the two equities (a few ulps
          of the terms summed into them), which matters when returns are tiny against the equity;
        - ``docs/metrics.md`` keeps the window "incrementally (Welford with removal)", recomputed
          every ``W`` removals. Between recomputes each update and removal rounds at the scale of
          the values that passed through (the last ``2W`` returns): after a large return has left a
          window of small ones, the window's variance can be below that error.

        ``inf`` when the window's spread is within its rounding (the value is then noise). Call
        after ``snapshot`` (which rolls the periods).
        """
        a = self._algo(algo_id)
        window = list(a.returns)
        if len(window) < 2:
            return 0.0
        var = statistics.variance(window)
        if var == 0:
            return 0.0
        std = math.sqrt(var)
        noise = max(a.noise)
        big = max(abs(r) for r in a.recent_returns)
        updates = 2 * a.sharpe_window  # 2W updates and removals since the last recompute
        d_mean = noise + updates * EPS * big
        d_std = 1.5 * noise + updates * EPS * big * big / std
        if d_std >= std / 4:
            return math.inf
        excess = abs(statistics.mean(window) - a.risk_free_rate / a.periods_per_year)
        return math.sqrt(a.periods_per_year) * (d_mean / std + excess * d_std / var)

    def sharpe_window(self, algo_id: str) -> list[float]:
        """The returns of the Sharpe window, oldest first (call after ``snapshot``)."""
        return list(self._algo(algo_id).returns)

    def near_zero_trades(self, algo_id: str) -> int:
        """Closed trades whose net PnL is within float noise of 0 (win or loss is a coin toss)."""
        return self._algo(algo_id).near_zero_trades

    def snapshot(self, algo_id: str) -> RefSnapshot:
        a = self._algo(algo_id)
        now = self._now
        if now is not None:
            if a.period is not None:
                self._roll(a, now)
            self._prune(a, now)
        e = self._equity(a)
        unrealized = self._unrealized(a)
        dd = self._drawdown(a, e)
        window = list(a.returns)
        sharpe: float | None = None
        if len(window) >= 2:
            std = statistics.stdev(window)
            if std > 0:
                n = a.periods_per_year
                sharpe = (statistics.mean(window) - a.risk_free_rate / n) / std * math.sqrt(n)
        win_rate = a.wins / a.trades if a.trades else None
        lat = a.ack_latencies_sorted
        confidence = (
            0.4 * (_clamp01(sharpe / 2) if sharpe is not None else 0.0)
            + 0.3 * (_clamp01(win_rate) if win_rate is not None else 0.0)
            + 0.3 * _clamp01(1 - dd / a.confidence_drawdown_ref)
        )
        positions = [
            RefPosition(
                symbol=s,
                qty=p.qty,
                avg_cost=p.avg_cost,
                mark=self._marks.get(s),
                unrealized_pnl=p.qty * (self._marks[s] - p.avg_cost) if p.qty != 0 else 0.0,
                realized_pnl=p.realized,
            )
            for s, p in a.positions.items()
        ]
        return RefSnapshot(
            algo_id=a.algo_id,
            version=a.version,
            ts=now,
            capital=a.capital,
            equity=e,
            realized_pnl=a.realized,
            unrealized_pnl=unrealized,
            fees=a.fees,
            peak_equity=a.peak,
            drawdown=dd,
            max_drawdown=a.max_drawdown,
            daily_pnl=e - a.session_start,
            session_start_equity=a.session_start,
            stage_pnl=e - a.stage_mark,
            returns_count=len(window),
            sharpe=sharpe,
            trades=a.trades,
            wins=a.wins,
            win_rate=win_rate,
            fills=a.fills,
            orders_in_window=len(a.submits),
            rejects_in_window=len(a.rejects),
            error_rate=self._error_rate(a),
            acks_in_window=len(lat),
            latency_p50_ns=nearest_rank(lat, 50) if lat else None,
            latency_p99_ns=nearest_rank(lat, 99) if lat else None,
            orders_submitted_total=a.submitted_total,
            orders_rejected_total=a.rejected_total,
            orders_acked_total=a.acked_total,
            orders_cancelled_total=a.cancelled_total,
            last_fill_ts=a.last_fill_ts,
            last_order_ts=a.last_order_ts,
            last_event_ts=a.last_event_ts,
            confidence=confidence,
            breached=[k for k, lim in a.limits.items() if lim.latched],
            positions=positions,
        )

    def snapshots(self) -> list[RefSnapshot]:
        return [self.snapshot(algo_id) for algo_id in self._algos]
