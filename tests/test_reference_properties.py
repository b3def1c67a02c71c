"""The Rust core against the plain-Python reference (``tests/reference.py``) on random events.

Both engines get the same events; after every event (or at chosen points) every numeric field of
every algorithm's snapshot must agree to 1e-9 relative, the same breaches must trip at the same
events, and a bad event must raise in both and change nothing in either.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from reference import DAY_NS, ReferenceEngine, RefSnapshot

from rampart._core import (
    AlgoConfig,
    Engine,
    InvalidEventError,
    OutOfOrderError,
    RampartError,
    Snapshot,
    UnknownAlgorithmError,
)

T0 = 1_764_028_800_000_000_000  # 2025-11-25 00:00 UTC
ALGOS = ("a", "b")
SYMBOLS = ("X", "Y", "Z")
REL = 1e-9


# --------------------------------------------------------------------------------------------------
# The common surface of Engine and ReferenceEngine


class BreachLike(Protocol):
    @property
    def algo_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def ts(self) -> int: ...


Result = Sequence[BreachLike] | None


class EngineLike(Protocol):
    def register(self, config: AlgoConfig) -> None: ...
    @property
    def now(self) -> int | None: ...
    def quote(self, symbol: str, bid: float, ask: float, ts: int) -> Result: ...
    def mark(self, symbol: str, price: float, ts: int) -> Result: ...
    def fill(
        self, algo_id: str, symbol: str, qty: float, price: float, fee: float, ts: int
    ) -> Result: ...
    def order_submitted(self, algo_id: str, ts: int) -> Result: ...
    def order_acked(self, algo_id: str, latency_ns: int, ts: int) -> Result: ...
    def order_rejected(self, algo_id: str, ts: int) -> Result: ...
    def order_cancelled(self, algo_id: str, ts: int) -> Result: ...
    def set_capital(self, algo_id: str, capital: float, ts: int) -> Result: ...
    def mark_stage(self, algo_id: str) -> None: ...
    def new_measurement(self, algo_id: str, ts: int) -> None: ...
    def reset_breaches(self, algo_id: str) -> None: ...
    def advance(self, ts: int) -> None: ...
    def snapshot(self, algo_id: str) -> SnapshotLike: ...
    def last_quote_ts(self, symbol: str) -> int | None: ...


class SnapshotLike(Protocol):
    def to_dict(self) -> dict[str, object]: ...


# --------------------------------------------------------------------------------------------------
# Events. ``dt`` is the step from the engine clock; a negative ``dt`` is a jitter back in time that
# the driver clamps to the engine's tolerance (so it is always accepted).


@dataclass(frozen=True)
class Quote:
    symbol: str
    bid: float
    spread: float
    dt: int


@dataclass(frozen=True)
class Mark:
    symbol: str
    price: float
    dt: int


@dataclass(frozen=True)
class Fill:
    algo: str
    symbol: str
    qty: float
    price: float
    fee: float
    dt: int


OrderKind = Literal["submitted", "acked", "rejected", "cancelled"]


@dataclass(frozen=True)
class Order:
    algo: str
    event: OrderKind
    latency: int
    dt: int


@dataclass(frozen=True)
class SetCapital:
    algo: str
    capital: float
    dt: int


@dataclass(frozen=True)
class MarkStage:
    algo: str


@dataclass(frozen=True)
class Reset:
    algo: str


@dataclass(frozen=True)
class NewMeasurement:
    algo: str
    dt: int


@dataclass(frozen=True)
class Advance:
    dt: int


@dataclass(frozen=True)
class Look:
    """Take (and compare) a snapshot here, which also rolls the algorithm to the engine clock."""

    algo: str


BAD_KINDS = (
    "quote_nan_bid",
    "quote_inf_ask",
    "quote_zero_bid",
    "quote_negative_ask",
    "quote_crossed",
    "mark_nan",
    "mark_zero",
    "mark_negative_inf",
    "fill_zero_qty",
    "fill_nan_qty",
    "fill_inf_qty",
    "fill_zero_price",
    "fill_nan_price",
    "fill_negative_price",
    "fill_negative_fee",
    "fill_nan_fee",
    "fill_inf_fee",
    "fill_unknown_algo",
    "order_unknown_algo",
    "ack_negative_latency",
    "capital_negative",
    "capital_nan",
    "old_quote",
    "old_mark",
    "old_fill",
    "old_order",
    "old_ack",
    "old_capital",
    "old_measurement",
)


@dataclass(frozen=True)
class Bad:
    kind: str
    algo: str
    back: int  # how far beyond the tolerance an "old_*" event is


Op = (
    Quote
    | Mark
    | Fill
    | Order
    | SetCapital
    | MarkStage
    | Reset
    | NewMeasurement
    | Advance
    | Look
    | Bad
)


# --------------------------------------------------------------------------------------------------
# Strategies


def _price_grid() -> st.SearchStrategy[float]:
    return st.integers(-160, 160).map(lambda k: 100.0 + 0.25 * k)


prices = st.one_of(_price_grid(), _price_grid(), st.floats(40.0, 160.0))
qtys = st.builds(
    lambda q, s: q * s,
    st.sampled_from([0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0, 7.5, 10.0]),
    st.sampled_from([1.0, -1.0]),
)
fees = st.one_of(st.sampled_from([0.0, 0.0, 0.1, 0.2, 0.25, 1.0]), st.floats(0.0, 3.0))
dts = st.one_of(
    st.just(0),
    st.integers(1, 3_000),
    st.integers(1, 3_000),
    st.integers(1, 100_000),
    st.integers(1, 100_000),
    st.integers(1, 3 * 3_600 * 10**9),
    st.integers(DAY_NS // 3, 2 * DAY_NS),
    st.integers(-(10**10), -1),
)
algos = st.sampled_from(ALGOS)
symbols = st.sampled_from(SYMBOLS)

small_dts = st.one_of(st.just(0), st.integers(1, 2_000), st.integers(-3_000, -1))
order_kinds: st.SearchStrategy[OrderKind] = st.sampled_from(
    ["submitted", "submitted", "acked", "rejected", "rejected", "cancelled"]
)
latencies = st.one_of(st.integers(0, 5_000), st.integers(0, 10**9))
fill_symbols = st.sampled_from(["X", "X", "Y", "Z"])


def _weighted(*branches: tuple[int, st.SearchStrategy[Op]]) -> st.SearchStrategy[Op]:
    return st.one_of([s for weight, s in branches for _ in range(weight)])


ops: st.SearchStrategy[Op] = _weighted(
    (3, st.builds(Quote, symbols, prices, st.sampled_from([0.0, 0.25, 0.5, 2.0]), dts)),
    (2, st.builds(Mark, symbols, prices, dts)),
    (6, st.builds(Fill, algos, fill_symbols, qtys, prices, fees, dts)),
    (2, st.builds(Order, algos, order_kinds, latencies, dts)),
    (3, st.builds(Order, algos, order_kinds, latencies, small_dts)),
    (
        1,
        st.builds(
            SetCapital, algos, st.one_of(st.sampled_from([300.0, 1e6]), st.floats(100, 1e5)), dts
        ),
    ),
    (1, st.builds(MarkStage, algos)),
    (1, st.builds(Reset, algos)),
    (1, st.builds(NewMeasurement, algos, dts)),
    (1, st.builds(Advance, dts)),
    (1, st.builds(Look, algos)),
    (2, st.builds(Bad, st.sampled_from(BAD_KINDS), algos, st.integers(1, 10**10))),
)


@st.composite
def algo_configs(draw: st.DrawFn, algo_id: str) -> AlgoConfig:
    def maybe(s: st.SearchStrategy[float]) -> float | None:
        return draw(st.one_of(st.none(), s))

    latency_limit = draw(st.one_of(st.none(), st.integers(50, 4_000)))
    return AlgoConfig(
        algo_id,
        draw(st.sampled_from(["1.0.0", "2.1.0"])),
        draw(st.one_of(st.sampled_from([500.0, 10_000.0, 1e6]), st.floats(200.0, 1e6))),
        max_daily_loss=maybe(st.floats(0.001, 0.3)),
        max_drawdown=maybe(st.floats(0.001, 0.3)),
        max_error_rate=maybe(st.floats(0.01, 0.9)),
        max_latency_ns=latency_limit,
        daily_loss_consecutive=draw(st.integers(1, 3)),
        drawdown_consecutive=draw(st.integers(1, 3)),
        error_rate_consecutive=draw(st.integers(1, 3)),
        latency_consecutive=draw(st.integers(1, 3)),
        error_window_ns=draw(st.sampled_from([5_000, 50_000, 60 * 10**9])),
        error_min_orders=draw(st.integers(1, 5)),
        latency_window_ns=draw(st.sampled_from([5_000, 50_000, 60 * 10**9])),
        latency_min_samples=draw(st.integers(1, 5)),
        return_interval_ns=draw(st.sampled_from([1_000, 7_000, 3_600 * 10**9])),
        sharpe_window=draw(st.sampled_from([2, 3, 5, 50])),
        periods_per_year=maybe(st.floats(1.0, 1e6)),
        risk_free_rate=draw(st.one_of(st.just(0.0), st.floats(-0.05, 0.2))),
        session_offset_ns=draw(st.one_of(st.just(0), st.integers(0, DAY_NS - 1))),
        confidence_drawdown_ref=draw(st.one_of(st.just(0.1), st.floats(0.01, 0.5))),
    )


tolerances = st.sampled_from([0, 2_000, 5_000_000_000])


# --------------------------------------------------------------------------------------------------
# Driving both engines


def event_ts(ref: ReferenceEngine, dt: int) -> int:
    now = ref.now
    base = T0 if now is None else now
    if dt < 0:
        return base - min(-dt, ref.time_tolerance_ns)
    return base + dt


def apply(op: Op, engine: EngineLike, ts: int) -> Result:
    """Send one good event; ``ts`` is the (shared) event time."""
    match op:
        case Quote(symbol, bid, spread, _):
            return engine.quote(symbol, bid, bid + spread, ts)
        case Mark(symbol, price, _):
            return engine.mark(symbol, price, ts)
        case Fill(algo, symbol, qty, price, fee, _):
            return engine.fill(algo, symbol, qty, price, fee, ts)
        case Order(algo, "submitted", _, _):
            return engine.order_submitted(algo, ts)
        case Order(algo, "acked", latency, _):
            return engine.order_acked(algo, latency, ts)
        case Order(algo, "rejected", _, _):
            return engine.order_rejected(algo, ts)
        case Order(algo, "cancelled", _, _):
            return engine.order_cancelled(algo, ts)
        case SetCapital(algo, capital, _):
            return engine.set_capital(algo, capital, ts)
        case MarkStage(algo):
            engine.mark_stage(algo)
            return None
        case Reset(algo):
            engine.reset_breaches(algo)
            return None
        case NewMeasurement(algo, _):
            engine.new_measurement(algo, ts)
            return None
        case Advance(_):
            engine.advance(ts)
            return None
    raise AssertionError(f"not a good event: {op!r}")


BadCall = Callable[[EngineLike], object]


def bad_call(bad: Bad, now: int | None, tolerance: int) -> tuple[BadCall, type[Exception]] | None:
    """The call that sends a bad event, and the exception it must raise (None: not applicable)."""
    nan, inf = math.nan, math.inf
    a = bad.algo
    ts = T0 if now is None else now
    if bad.kind.startswith("old_"):
        if now is None:
            return None
        old = now - tolerance - bad.back
        old_calls: dict[str, BadCall] = {
            "old_quote": lambda e: e.quote("X", 100.0, 100.5, old),
            "old_mark": lambda e: e.mark("Y", 101.0, old),
            "old_fill": lambda e: e.fill(a, "X", 1.0, 100.0, 0.0, old),
            "old_order": lambda e: e.order_submitted(a, old),
            "old_ack": lambda e: e.order_acked(a, 10, old),
            "old_capital": lambda e: e.set_capital(a, 5_000.0, old),
            "old_measurement": lambda e: e.new_measurement(a, old),
        }
        return old_calls[bad.kind], OutOfOrderError
    calls: dict[str, tuple[BadCall, type[Exception]]] = {
        "quote_nan_bid": (lambda e: e.quote("X", nan, 100.0, ts), InvalidEventError),
        "quote_inf_ask": (lambda e: e.quote("X", 100.0, inf, ts), InvalidEventError),
        "quote_zero_bid": (lambda e: e.quote("X", 0.0, 100.0, ts), InvalidEventError),
        "quote_negative_ask": (lambda e: e.quote("X", -1.0, -0.5, ts), InvalidEventError),
        "quote_crossed": (lambda e: e.quote("X", 100.5, 100.25, ts), InvalidEventError),
        "mark_nan": (lambda e: e.mark("Y", nan, ts), InvalidEventError),
        "mark_zero": (lambda e: e.mark("Y", 0.0, ts), InvalidEventError),
        "mark_negative_inf": (lambda e: e.mark("Y", -inf, ts), InvalidEventError),
        "fill_zero_qty": (lambda e: e.fill(a, "X", 0.0, 100.0, 0.0, ts), InvalidEventError),
        "fill_nan_qty": (lambda e: e.fill(a, "X", nan, 100.0, 0.0, ts), InvalidEventError),
        "fill_inf_qty": (lambda e: e.fill(a, "X", -inf, 100.0, 0.0, ts), InvalidEventError),
        "fill_zero_price": (lambda e: e.fill(a, "X", 1.0, 0.0, 0.0, ts), InvalidEventError),
        "fill_nan_price": (lambda e: e.fill(a, "X", 1.0, nan, 0.0, ts), InvalidEventError),
        "fill_negative_price": (lambda e: e.fill(a, "X", 1.0, -5.0, 0.0, ts), InvalidEventError),
        "fill_negative_fee": (lambda e: e.fill(a, "X", 1.0, 100.0, -0.01, ts), InvalidEventError),
        "fill_nan_fee": (lambda e: e.fill(a, "X", 1.0, 100.0, nan, ts), InvalidEventError),
        "fill_inf_fee": (lambda e: e.fill(a, "X", 1.0, 100.0, inf, ts), InvalidEventError),
        "fill_unknown_algo": (
            lambda e: e.fill("nobody", "X", 1.0, 100.0, 0.0, ts),
            UnknownAlgorithmError,
        ),
        "order_unknown_algo": (lambda e: e.order_submitted("nobody", ts), UnknownAlgorithmError),
        "ack_negative_latency": (lambda e: e.order_acked(a, -1, ts), InvalidEventError),
        # a capital change is an event: a bad amount is a ConfigError or an InvalidEventError
        "capital_negative": (lambda e: e.set_capital(a, -1_000.0, ts), RampartError),
        "capital_nan": (lambda e: e.set_capital(a, nan, ts), RampartError),
    }
    return calls[bad.kind]


def state(engine: EngineLike, algo_ids: Sequence[str]) -> object:
    return (
        engine.now,
        [engine.snapshot(algo_id).to_dict() for algo_id in algo_ids],
        [engine.last_quote_ts(s) for s in SYMBOLS],
    )


def breaches(result: Result) -> list[tuple[str, str, int]] | None:
    if result is None:
        return None
    return sorted((b.algo_id, b.kind, b.ts) for b in result)


CONFIG_FIELDS = (
    "capital",
    "max_daily_loss",
    "max_drawdown",
    "max_error_rate",
    "max_latency_ns",
    "daily_loss_consecutive",
    "drawdown_consecutive",
    "error_rate_consecutive",
    "latency_consecutive",
    "error_window_ns",
    "error_min_orders",
    "latency_window_ns",
    "latency_min_samples",
    "return_interval_ns",
    "sharpe_window",
    "periods_per_year",
    "risk_free_rate",
    "session_offset_ns",
    "confidence_drawdown_ref",
)


def describe(config: AlgoConfig) -> str:
    """Every field of a config (its repr shows only a few), for failure messages."""
    return ", ".join(f"{name}={getattr(config, name)!r}" for name in CONFIG_FIELDS)


class Pair:
    """The core and the reference, registered with the same configurations."""

    def __init__(self, configs: Sequence[AlgoConfig], tolerance: int) -> None:
        self.core = Engine(time_tolerance_ns=tolerance)
        self.ref = ReferenceEngine(time_tolerance_ns=tolerance)
        self.algo_ids = [c.algo_id for c in configs]
        self.configs = {c.algo_id: describe(c) for c in configs}
        for config in configs:
            self.core.register(config)
            self.ref.register(config)
        self.steps = 0

    def step(self, op: Op) -> None:
        self.steps += 1
        if isinstance(op, Look):
            self.compare(op.algo)
            return
        if isinstance(op, Bad):
            self.bad(op)
            return
        ts = event_ts(self.ref, getattr(op, "dt", 0))
        ref_exc: Exception | None = None
        core_exc: Exception | None = None
        ref_result: Result = None
        core_result: Result = None
        try:
            ref_result = apply(op, self.ref, ts)
        except RampartError as exc:
            ref_exc = exc
        try:
            core_result = apply(op, self.core, ts)
        except RampartError as exc:
            core_exc = exc
        where = f"step {self.steps}: {op!r} at ts={ts}"
        assert type(core_exc) is type(ref_exc), f"{where}: core {core_exc!r}, reference {ref_exc!r}"
        assert breaches(core_result) == breaches(ref_result), (
            f"{where}: core breaches {core_result!r}, reference {ref_result!r}"
        )
        assert self.core.now == self.ref.now, where

    def bad(self, op: Bad) -> None:
        call = bad_call(op, self.ref.now, self.ref.time_tolerance_ns)
        if call is None:
            return
        send, expected = call
        for engine in (self.ref, self.core):
            before = state(engine, self.algo_ids)
            with pytest.raises(expected):
                send(engine)
            assert state(engine, self.algo_ids) == before, f"{op!r} changed {type(engine).__name__}"

    def compare(self, algo_id: str) -> None:
        where = f"after step {self.steps} (config {self.configs[algo_id]})"
        compare_snapshots(self.core, self.ref, algo_id, where)
        assert self.core.last_quote_ts("X") == self.ref.last_quote_ts("X")

    def compare_all(self) -> None:
        for algo_id in self.algo_ids:
            self.compare(algo_id)


MONEY = (
    "capital",
    "equity",
    "realized_pnl",
    "unrealized_pnl",
    "fees",
    "peak_equity",
    "daily_pnl",
    "session_start_equity",
    "stage_pnl",
)
FRACTIONS = ("drawdown", "max_drawdown", "error_rate")
EXACT = (
    "algo_id",
    "version",
    "ts",
    "returns_count",
    "trades",
    "fills",
    "orders_in_window",
    "rejects_in_window",
    "acks_in_window",
    "orders_submitted_total",
    "orders_rejected_total",
    "orders_acked_total",
    "orders_cancelled_total",
    "last_fill_ts",
    "last_order_ts",
    "last_event_ts",
)


LATENCY_CLAMP_NS = (1 << 42) - 1


def histogram_agrees(got: int, exact: int) -> bool:
    """The core's histogram quantile: the highest value of the exact value's bucket, so at or
    above it by at most 1/64; values above 2^42 - 1 ns are clamped to that (docs/metrics.md)."""
    exact = min(exact, LATENCY_CLAMP_NS)
    return exact <= got and got * 64 <= exact * 65


def close(got: object, want: object, abs_tol: float, rel: float = REL) -> bool:
    if got is None or want is None:
        return got is None and want is None
    assert isinstance(got, int | float) and isinstance(want, int | float)
    return math.isclose(got, want, rel_tol=rel, abs_tol=abs_tol)


def compare_snapshots(core: Engine, ref: ReferenceEngine, algo_id: str, where: str) -> None:
    c = core.snapshot(algo_id).to_dict()
    r = ref.snapshot(algo_id).to_dict()
    problems: list[str] = []

    def check(name: str, ok: bool) -> None:
        if not ok:
            problems.append(f"{name}: core={c[name]!r} reference={r[name]!r}")

    ref_capital = r["capital"]
    ref_peak = r["peak_equity"]
    assert isinstance(ref_capital, float) and isinstance(ref_peak, float)
    money_abs = 1e-9 * max(ref_capital, ref_peak, 1.0)
    for name in EXACT:
        check(name, c[name] == r[name])
    for name in MONEY:
        check(name, close(c[name], r[name], money_abs))
    for name in FRACTIONS:
        check(name, close(c[name], r[name], 1e-12))
    check_sharpe(c, r, ref, algo_id, problems)
    # A trade whose net PnL is within float noise of 0 may count as a win on one side only.
    slack = ref.near_zero_trades(algo_id)
    wins_c, wins_r, trades = c["wins"], r["wins"], r["trades"]
    assert isinstance(wins_c, int) and isinstance(wins_r, int) and isinstance(trades, int)
    check("wins", abs(wins_c - wins_r) <= slack)
    check("win_rate", close(c["win_rate"], r["win_rate"], 1e-12 + slack / max(trades, 1)))
    # confidence = 0.4·clamp(S/2) + 0.3·clamp(win rate) + 0.3·clamp(1 - dd/ref)
    sharpe_slack = min(0.4, 0.2 * ref.sharpe_tolerance(algo_id))

    conf_tol = 1e-9 + 0.3 * slack / max(trades, 1) + sharpe_slack
    check("confidence", close(c["confidence"], r["confidence"], conf_tol))
    conf = c["confidence"]
    assert isinstance(conf, float)
    check("confidence", 0.0 <= conf <= 1.0)
    for name in ("latency_p50_ns", "latency_p99_ns"):
        got, exact = c[name], r[name]
        if got is None or exact is None:
            check(name, got is None and exact is None)
        else:
            assert isinstance(got, int) and isinstance(exact, int)
            check(name, histogram_agrees(got, exact))
    check("breached", _strs(c["breached"]) == _strs(r["breached"]))
    problems.extend(compare_positions(c["positions"], r["positions"], money_abs))
    assert not problems, f"{algo_id} {where}:\n  " + "\n  ".join(problems)


def check_sharpe(
    c: dict[str, object],
    r: dict[str, object],
    ref: ReferenceEngine,
    algo_id: str,
    problems: list[str],
) -> None:
    """Sharpe to 1e-9 relative, plus the drift an incremental window may honestly have.

    Undefined (None) in the reference (fewer than 2 returns, or a window of identical returns: zero
    standard deviation) must be None in the core, exactly: that is what the doc and empyrical say.
    """
    got, want = c["sharpe"], r["sharpe"]
    if want is None or got is None:
        drift = ref.sharpe_tolerance(algo_id)
        # The core may only call Sharpe undefined where the window's variance is below rounding.
        if not (got is None and (want is None or drift == math.inf)):
            window = ref.sharpe_window(algo_id)
            problems.append(f"sharpe: core={got!r} reference={want!r} window={window!r}")
        return
    assert isinstance(got, float) and isinstance(want, float)
    drift = ref.sharpe_tolerance(algo_id)
    if not abs(got - want) <= REL * abs(want) + 1e-9 + drift:
        window = ref.sharpe_window(algo_id)
        problems.append(
            f"sharpe: core={got!r} reference={want!r} (rounding allowance {drift:.3g}) "
            f"window={window!r}"
        )


def _strs(values: object) -> list[str]:
    assert isinstance(values, list)
    return sorted(map(str, values))


def _open_positions(positions: object) -> dict[str, dict[str, object]]:
    assert isinstance(positions, list)
    out: dict[str, dict[str, object]] = {}
    for p in positions:
        d = (
            p
            if isinstance(p, dict)
            else {k: getattr(p, k) for k in dir(p) if not k.startswith("_")}
        )
        if d["qty"] != 0:
            out[str(d["symbol"])] = d
    return out


def compare_positions(core: object, ref: object, money_abs: float) -> list[str]:
    c, r = _open_positions(core), _open_positions(ref)
    if c.keys() != r.keys():
        return [f"open positions: core={sorted(c)} reference={sorted(r)}"]
    problems = []
    for symbol, rp in r.items():
        cp = c[symbol]
        for name, tol in (
            ("qty", 0.0),
            ("avg_cost", 0.0),
            ("mark", 0.0),
            ("unrealized_pnl", money_abs),
            ("realized_pnl", money_abs),
        ):
            if not close(cp[name], rp[name], tol):
                problems.append(f"position {symbol}.{name}: core={cp[name]!r} ref={rp[name]!r}")
    return problems


def run(configs: Sequence[AlgoConfig], tolerance: int, events: Sequence[Op], every: bool) -> None:
    pair = Pair(configs, tolerance)
    for op in events:
        pair.step(op)
        if every:
            pair.compare_all()
    pair.compare_all()


# --------------------------------------------------------------------------------------------------
# Tests


@settings(max_examples=150)
@given(
    config_a=algo_configs("a"),
    config_b=algo_configs("b"),
    tolerance=tolerances,
    events=st.lists(ops, min_size=25, max_size=80),
    every=st.booleans(),
)
def test_core_matches_reference(
    config_a: AlgoConfig,
    config_b: AlgoConfig,
    tolerance: int,
    events: list[Op],
    every: bool,
) -> None:
    run([config_a, config_b], tolerance, events, every)


@settings(max_examples=40)
@given(
    config=algo_configs("a"),
    events=st.lists(
        st.one_of(
            st.builds(Fill, st.just("a"), st.just("X"), qtys, prices, fees, dts),
            st.builds(Mark, st.just("X"), prices, dts),
        ),
        min_size=20,
        max_size=80,
    ),
)
def test_one_symbol_trading(config: AlgoConfig, events: list[Op]) -> None:
    """Dense fills and marks on one symbol: flips, partial closes, residues, returns, drawdown."""
    run([config], 5_000_000_000, events, every=True)


class CoreVsReference(RuleBasedStateMachine):
    """The same comparison as a Hypothesis state machine (snapshots compared after every step)."""

    def __init__(self) -> None:
        super().__init__()
        self.pair: Pair | None = None

    @initialize(config_a=algo_configs("a"), config_b=algo_configs("b"), tolerance=tolerances)
    def setup(self, config_a: AlgoConfig, config_b: AlgoConfig, tolerance: int) -> None:
        self.pair = Pair([config_a, config_b], tolerance)

    @rule(op=ops)
    def event(self, op: Op) -> None:
        assert self.pair is not None
        self.pair.step(op)

    @invariant()
    def agree(self) -> None:
        if self.pair is not None:
            self.pair.compare_all()


CoreVsReference.TestCase.settings = settings(max_examples=25, stateful_step_count=50)
TestCoreVsReference = CoreVsReference.TestCase


# --------------------------------------------------------------------------------------------------
# Long sequences from a seeded generator: thousands of events, many window evictions and removals
# from the Sharpe window, repeated ruin and recovery.


def random_config(rng: random.Random, algo_id: str) -> AlgoConfig:
    return AlgoConfig(
        algo_id,
        "1.0.0",
        rng.choice([500.0, 2_000.0, 50_000.0]),
        max_daily_loss=rng.choice([None, 0.02, 0.1]),
        max_drawdown=rng.choice([None, 0.03, 0.2]),
        max_error_rate=rng.choice([None, 0.3]),
        max_latency_ns=rng.choice([None, 2_000]),
        drawdown_consecutive=rng.randint(1, 3),
        daily_loss_consecutive=rng.randint(1, 3),
        error_min_orders=rng.randint(1, 10),
        latency_min_samples=rng.randint(1, 10),
        error_window_ns=rng.choice([20_000, 200_000]),
        latency_window_ns=rng.choice([20_000, 200_000]),
        return_interval_ns=rng.choice([1_000, 5_000]),
        sharpe_window=rng.choice([3, 10, 40]),
        risk_free_rate=rng.choice([0.0, 0.03]),
        session_offset_ns=rng.randrange(DAY_NS),
    )


def random_op(rng: random.Random, prices: dict[str, float]) -> Op:
    dt = rng.choice([0, rng.randint(1, 2_000), rng.randint(1, 10_000), -rng.randint(1, 3_000)])
    if rng.random() < 0.003:
        dt = rng.randint(DAY_NS // 2, DAY_NS)
    algo, symbol = rng.choice(ALGOS), rng.choice(SYMBOLS)
    prices[symbol] = max(1.0, prices[symbol] * (1 + rng.gauss(0, 0.01)))
    price = round(prices[symbol] * 4) / 4
    u = rng.random()
    if u < 0.3:
        return Fill(
            algo,
            symbol,
            rng.choice([0.1, 0.2, 0.3, 1.0, 2.0, 5.0]) * rng.choice([1, -1]),
            price,
            rng.choice([0.0, 0.1, 0.5]),
            dt,
        )
    if u < 0.5:
        return Quote(symbol, price, rng.choice([0.0, 0.25]), dt)
    if u < 0.6:
        return Mark(symbol, price, dt)
    if u < 0.85:
        event: OrderKind = rng.choice(["submitted", "submitted", "acked", "rejected", "cancelled"])
        return Order(algo, event, int(rng.expovariate(1 / 800)), dt)
    if u < 0.88:
        return SetCapital(algo, rng.choice([500.0, 2_000.0, 50_000.0]), dt)
    if u < 0.9:
        return MarkStage(algo)
    if u < 0.92:
        return Reset(algo)
    if u < 0.93:
        return NewMeasurement(algo, dt)
    if u < 0.95:
        return Advance(dt)
    if u < 0.97:
        return Look(algo)
    return Bad(rng.choice(BAD_KINDS), algo, rng.randint(1, 10**9))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_long_random_sequence(seed: int) -> None:
    rng = random.Random(seed)
    pair = Pair([random_config(rng, "a"), random_config(rng, "b")], rng.choice([0, 5_000]))
    prices = dict.fromkeys(SYMBOLS, 100.0)
    for i in range(3_000):
        op = random_op(rng, prices)
        pair.step(op)
        if i % 50 == 0:
            pair.compare_all()
    pair.compare_all()


# --------------------------------------------------------------------------------------------------
# Reads change nothing: the same events with and without snapshots in between give the same metrics.
# (A replay that looks at different moments than the live daemon must reach the same decisions.)


@settings(max_examples=60)
@given(
    config_a=algo_configs("a"),
    config_b=algo_configs("b"),
    events=st.lists(ops.filter(lambda op: not isinstance(op, Bad)), min_size=10, max_size=60),
)
def test_snapshots_do_not_change_results(
    config_a: AlgoConfig, config_b: AlgoConfig, events: list[Op]
) -> None:
    watched, unwatched = Engine(), Engine()
    ref = ReferenceEngine()  # only its clock is used, to place the events in time
    for engine in (watched, unwatched, ref):
        engine.register(config_a)
        engine.register(config_b)
    for i, op in enumerate(events):
        if isinstance(op, Look):
            continue
        ts = event_ts(ref, getattr(op, "dt", 0))
        apply(op, ref, ts)
        assert breaches(apply(op, watched, ts)) == breaches(apply(op, unwatched, ts)), (i, op)
        watched.snapshot("a")
        watched.snapshot("b")
    for algo_id in ALGOS:
        assert watched.snapshot(algo_id).to_dict() == unwatched.snapshot(algo_id).to_dict()


def test_a_snapshot_inside_a_long_gap_changes_nothing() -> None:
    """Found by the property above (a CI run): a snapshot rolls the returns to the engine clock,
    and a gap of more empty periods than the window used to be cut at the window on each roll,
    so a gap rolled in two (snapshot, then the next event) pushed one zero more than in one: one
    more removal from the rolling stats, whose rounding then moved the Sharpe in its last bits."""
    config = AlgoConfig(
        "b", "1.0.0", 500.0, return_interval_ns=1_000, sharpe_window=3, periods_per_year=3.1536e13
    )
    watched, unwatched = Engine(), Engine()
    for engine in (watched, unwatched):
        engine.register(config)
        engine.quote("X", 100.0, 100.0, T0)
        engine.order_submitted("b", T0)
    gap = T0 + 8 * 3_600 * 10**9
    for engine in (watched, unwatched):
        engine.quote("X", 100.0, 100.0, gap)
    watched.snapshot("b")  # rolls b across the gap now; unwatched rolls at the fill
    for engine in (watched, unwatched):
        engine.fill("b", "X", 0.1, 99.75, 0.0, gap + 1_901)
        engine.quote("X", 100.0, 100.0, gap + 3_000)
    assert watched.snapshot("b").to_dict() == unwatched.snapshot("b").to_dict()


# --------------------------------------------------------------------------------------------------
# Small explicit sequences, each pinning one rule of docs/metrics.md (core and reference both).

H = 3_600 * 10**9


@pytest.mark.parametrize("engine_type", [Engine, ReferenceEngine], ids=["core", "reference"])
def test_fills_set_the_mark_until_the_symbol_is_quoted(engine_type: type[EngineLike]) -> None:
    """ "Until a symbol has been quoted, fills of that symbol set its mark to the fill price." """
    e = engine_type()
    e.register(AlgoConfig("a", "1", 500.0))
    e.fill("a", "Y", 0.1, 100.0, 0.0, T0)
    e.fill("a", "Y", 0.1, 100.25, 0.0, T0 + 1)  # the latest fill price is the mark
    s = e.snapshot("a")
    assert isinstance(s, Snapshot | RefSnapshot)
    assert s.unrealized_pnl == pytest.approx(0.2 * (100.25 - 100.125), rel=1e-9)
    assert s.equity == pytest.approx(500.025, rel=1e-12)
    e.quote("Y", 99.0, 101.0, T0 + 2)  # quoted: the mid is the mark, fills no longer move it
    e.fill("a", "Y", 0.1, 102.0, 0.0, T0 + 3)
    s = e.snapshot("a")
    assert isinstance(s, Snapshot | RefSnapshot)
    assert [p.mark for p in s.positions if p.symbol == "Y"] == [100.0]


@pytest.mark.parametrize("engine_type", [Engine, ReferenceEngine], ids=["core", "reference"])
def test_sharpe_is_undefined_on_a_window_of_equal_returns(engine_type: type[EngineLike]) -> None:
    """ "Undefined (None) with ... zero standard deviation" - even after other returns left."""
    e = engine_type()
    e.register(AlgoConfig("a", "1", 500.0, return_interval_ns=1_000, sharpe_window=3))
    e.mark("X", 100.0, T0)
    e.fill("a", "X", 0.1, 99.75, 0.0, T0)  # +0.025 unrealized: the first period returns 5e-5
    e.mark("X", 100.0, T0 + 8 * H)  # then (at most W) empty periods: the window is [0, 0, 0]
    s = e.snapshot("a")
    assert isinstance(s, Snapshot | RefSnapshot)
    assert s.returns_count == 3
    assert s.sharpe is None


@pytest.mark.parametrize("engine_type", [Engine, ReferenceEngine], ids=["core", "reference"])
@pytest.mark.parametrize("step_by_step", [False, True])
def test_ruined_periods_yield_no_returns(engine_type: type[EngineLike], step_by_step: bool) -> None:
    """ "A period whose start equity is <= 0 yields no return" - empty ones included."""
    e = engine_type()
    e.register(AlgoConfig("a", "1", 500.0, return_interval_ns=1_000, sharpe_window=50))
    e.mark("X", 100.0, T0)
    e.fill("a", "X", 10.0, 100.0, 0.0, T0)
    e.mark("X", 40.0, T0 + 10)  # equity 500 - 600 = -100 within the first period
    if step_by_step:
        for k in range(1, 6):
            e.advance(T0 + k * 1_000)
    e.mark("X", 40.0, T0 + 5_500)
    s = e.snapshot("a")
    assert isinstance(s, Snapshot | RefSnapshot)
    assert s.equity == -100.0
    assert s.returns_count == 1  # the first period's -1.2; the later ones start at -100
    assert s.sharpe is None


@pytest.mark.parametrize("engine_type", [Engine, ReferenceEngine], ids=["core", "reference"])
@pytest.mark.parametrize("latency", [0, 63, 100, 128, 1_000, 65_535, 10**6, 10**9, 10**12, 2**62])
def test_latency_quantile_is_within_one_64th_above(
    engine_type: type[EngineLike], latency: int
) -> None:
    """ "a reported quantile is the highest value of its bucket, so it is >= the exact quantile
    and within 1/64 (1.6 %) of it"; latencies above 2^42 ns are clamped to that value."""
    e = engine_type()
    e.register(AlgoConfig("a", "1", 500.0))
    e.order_acked("a", latency, T0)
    s = e.snapshot("a")
    assert isinstance(s, Snapshot | RefSnapshot)
    for got in (s.latency_p50_ns, s.latency_p99_ns):
        assert got is not None
        if engine_type is ReferenceEngine:
            assert got == latency, "the reference is exact"
        else:
            assert histogram_agrees(got, latency)


@pytest.mark.parametrize("engine_type", [Engine, ReferenceEngine], ids=["core", "reference"])
def test_a_snapshot_does_not_open_the_first_period(engine_type: type[EngineLike]) -> None:
    """ "The first event an algorithm sees opens its first period": a read is not an event."""
    returns = []
    for look in (False, True):
        e = engine_type()
        e.register(AlgoConfig("a", "1", 500.0, sharpe_window=50))
        e.quote("X", 100.0, 100.0, T0)  # the engine clock is T0; nothing of algo "a" yet
        if look:
            e.snapshot("a")
        e.fill("a", "X", 1.0, 100.0, 0.0, T0 + 8 * H)  # the algorithm's first event
        s = e.snapshot("a")
        assert isinstance(s, Snapshot | RefSnapshot)
        returns.append(s.returns_count)
    assert returns == [0, 0]
