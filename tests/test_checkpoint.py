"""Checkpoints: ``Engine.checkpoint`` / ``Engine.restore`` resume an algorithm exactly.

A restored engine fed the rest of an event sequence must produce the same breaches, the same
errors and the same snapshots as the engine that never stopped.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rampart._core import (
    AlgoConfig,
    Breach,
    ConfigError,
    DecodeError,
    Engine,
    InvalidEventError,
    RampartError,
    UnknownAlgorithmError,
)

T0 = 1_764_028_800_000_000_000  # 2025-11-25 00:00 UTC
SEC = 10**9
SYMS = ("ES", "NQ", "CL")
ALGOS = ("a", "b")

Event = tuple[Any, ...]


def configs() -> list[AlgoConfig]:
    return [
        AlgoConfig(
            "a",
            "1.0.0",
            10_000.0,
            max_daily_loss=0.02,
            daily_loss_consecutive=2,
            max_drawdown=0.03,
            drawdown_consecutive=4,
            max_error_rate=0.3,
            error_rate_consecutive=2,
            error_min_orders=5,
            max_latency_ns=5_000,
            latency_consecutive=3,
            latency_min_samples=5,
            error_window_ns=30 * SEC,
            latency_window_ns=20 * SEC,
            return_interval_ns=10 * SEC,
            sharpe_window=8,
            session_offset_ns=3_600 * SEC,
        ),
        AlgoConfig(
            "b", "2.0.0", 50_000.0, max_drawdown=0.01, drawdown_consecutive=3, sharpe_window=4
        ),
    ]


def fresh() -> Engine:
    engine = Engine()
    for cfg in configs():
        engine.register(cfg)
    return engine


prices = st.integers(1, 400).map(lambda p: p * 0.5)
algos = st.sampled_from(ALGOS)
syms = st.sampled_from(SYMS)
# Resets are frequent so that limits are often part-way through their debounce at the checkpoint.
events = st.one_of(
    st.tuples(
        st.just("fill"),
        algos,
        syms,
        st.integers(-20, 20).filter(bool).map(lambda q: q * 2.5),
        prices,
        st.integers(0, 30).map(lambda f: f * 0.01),
    ),
    st.tuples(st.just("quote"), syms, prices),
    st.tuples(st.just("mark"), syms, prices),
    st.tuples(st.just("submitted"), algos),
    st.tuples(st.just("rejected"), algos),
    st.tuples(st.just("acked"), algos, st.integers(0, 20_000)),
    st.tuples(st.just("cancelled"), algos),
    st.tuples(st.just("capital"), algos, st.integers(1_000, 100_000).map(float)),
    st.tuples(st.just("stage"), algos),
    st.tuples(st.just("reset"), algos),
    st.tuples(st.just("reset"), algos),
    st.tuples(st.just("reset"), algos),
    st.just(("advance",)),
)
small_step = st.integers(0, 3 * SEC)
steps = st.tuples(
    st.one_of(
        small_step,
        small_step,
        small_step,
        small_step,
        st.just(0),
        st.integers(-8 * SEC, -1),  # late: within the 5 s tolerance, or refused
        st.integers(1, 40).map(lambda h: h * 3_600 * SEC),  # empty periods, new sessions
    ),
    events,
)


def apply(engine: Engine, ts: int, ev: Event) -> object:
    """Apply one event; the outcome is the breaches (sorted) or the error's type and reason."""
    kind, *args = ev
    out: list[Breach] | None = None
    try:
        match kind:
            case "fill":
                algo, sym, qty, price, fee = args
                out = engine.fill(algo, sym, qty, price, fee, ts)
            case "quote":
                sym, p = args
                out = engine.quote(sym, p, p + 0.25, ts)
            case "mark":
                out = engine.mark(args[0], args[1], ts)
            case "submitted":
                out = engine.order_submitted(args[0], ts)
            case "rejected":
                out = engine.order_rejected(args[0], ts)
            case "acked":
                out = engine.order_acked(args[0], args[1], ts)
            case "cancelled":
                out = engine.order_cancelled(args[0], ts)
            case "capital":
                out = engine.set_capital(args[0], args[1], ts)
            case "stage":
                engine.mark_stage(args[0])
            case "reset":
                engine.reset_breaches(args[0])
            case "advance":
                engine.advance(ts)
            case _:
                raise AssertionError(kind)
    except RampartError as exc:
        return (type(exc).__name__, exc.reason)
    # Several algorithms holding one symbol may trip on one quote in either order.
    return sorted(out or [], key=lambda b: (b.algo_id, b.kind))


def state(engine: Engine) -> object:
    return (
        engine.now,
        [s.to_dict() for s in engine.snapshots()],
        {a: engine.returns(a) for a in engine.algorithms()},
        [engine.last_quote_ts(s) for s in SYMS],
    )


@settings(max_examples=120)
@given(st.lists(steps, min_size=40, max_size=250), st.floats(0.0, 1.0))
def test_restored_engine_continues_identically(seq: list[tuple[int, Event]], at: float) -> None:
    split = int(len(seq) * at)
    orig = fresh()
    ts = T0
    for dt, ev in seq[:split]:
        ts += dt
        apply(orig, ts, ev)

    saved = {a: orig.checkpoint(a) for a in orig.algorithms()}  # what a daemon would persist
    restored = Engine(time_tolerance_ns=orig.time_tolerance_ns)
    for data in saved.values():
        restored.restore(data)
    assert {a: restored.checkpoint(a) for a in restored.algorithms()} == saved
    # Checkpoints carry only the marks of the algorithms' own symbols: a symbol that was only
    # quoted is unknown to the restored engine until its next quote, which both engines get.
    for s in SYMS:
        if restored.last_quote_ts(s) != orig.last_quote_ts(s):
            assert restored.last_quote_ts(s) is None, s
            assert orig.now is not None
            for engine in (orig, restored):
                engine.quote(s, 100.0, 100.0, orig.now)
    assert state(restored) == state(orig)

    for dt, ev in seq[split:]:
        ts += dt
        assert apply(restored, ts, ev) == apply(orig, ts, ev), ev
    assert state(restored) == state(orig)
    for a in ALGOS:
        assert restored.checkpoint(a) == orig.checkpoint(a)


def busy() -> Engine:
    engine = fresh()
    engine.quote("ES", 99.0, 101.0, T0)
    engine.fill("a", "ES", 2.0, 100.5, 0.1, T0 + 1)
    engine.fill("a", "CL", -3.0, 70.0, 0.0, T0 + 2)
    engine.order_submitted("a", T0 + 3)
    engine.order_acked("a", 1_234, T0 + 4)
    engine.order_rejected("a", T0 + 5)
    return engine


def test_checkpoint_is_versioned_json() -> None:
    data = busy().checkpoint("a")
    assert isinstance(data, bytes)
    doc = json.loads(data)
    assert doc["v"] == 1
    assert doc["now"] == T0 + 5
    assert doc["algo"]["config"]["algo_id"] == "a"
    assert doc["position_symbols"] == ["ES", "CL"]
    assert doc["marks"]["ES"] == {"mark": 100.0, "last_quote_ts": T0}
    assert doc["marks"]["CL"] == {"mark": 70.0, "last_quote_ts": None}


def test_a_restored_limit_stays_latched_and_counts_carry_on() -> None:
    engine = fresh()
    breaches: list[Breach] = []
    for i in range(6):
        breaches += engine.order_submitted("a", T0 + i) or []
    for i in range(3):  # 2/6 > 0.3 counts once, 3/6 trips (2 consecutive needed)
        breaches += engine.order_rejected("a", T0 + 10 + i) or []
    assert [b.kind for b in breaches] == ["error_rate"]
    restored = Engine()
    restored.restore(engine.checkpoint("a"))
    assert restored.snapshot("a").breached == ["error_rate"]
    assert restored.order_rejected("a", T0 + 20) is None  # latched: no second breach
    restored.reset_breaches("a")
    assert [b.kind for b in restored.order_rejected("a", T0 + 21) or []] == []  # debounce: 1 of 2
    assert [b.kind for b in restored.order_rejected("a", T0 + 22) or []] == ["error_rate"]


def test_restore_refuses_bad_input_without_change() -> None:
    src = busy()
    good = src.checkpoint("a")
    target = Engine()
    target.register(configs()[1])
    target.mark("NQ", 10.0, T0)
    before = state(target)

    def edited(**changes: object) -> bytes:
        doc = json.loads(good)
        for path, value in changes.items():
            node = doc
            *parents, last = path.split("__")
            for p in parents:
                node = node[p]
            node[last] = value
        return json.dumps(doc).encode()

    cases: list[tuple[bytes, type[RampartError], str, str]] = [
        (b"", DecodeError, "decode", "not a Rampart checkpoint"),
        (b"{}", DecodeError, "decode", "`v` is missing"),
        (good[: len(good) // 2], DecodeError, "decode", "not a Rampart checkpoint"),
        (edited(v=2), DecodeError, "decode", "version 2 is not supported"),
        (edited(algo__peak="x"), DecodeError, "decode", "does not decode"),
        (edited(algo__config__capital=-1.0), ConfigError, "config", "capital must be"),
        (edited(algo__returns__values=[0.1] * 100), DecodeError, "decode", "sharpe_window"),
        (edited(position_symbols=["ES"]), DecodeError, "decode", "inconsistent"),
        (src.checkpoint("b"), ConfigError, "duplicate_algorithm", "already registered"),
    ]
    for data, exc_type, reason, words in cases:
        with pytest.raises(exc_type) as info:
            target.restore(data)
        assert info.value.reason == reason
        assert words in str(info.value)
        assert state(target) == before
    with pytest.raises(UnknownAlgorithmError):
        target.checkpoint("zz")

    target.restore(good)
    mine = target.snapshot("a").to_dict()
    assert target.now == T0 + 5
    assert mine == src.snapshot("a").to_dict()


def test_an_overflow_is_refused_and_the_state_keeps_checkpointing() -> None:
    # With the sanity bounds opened wide, the overflow check alone keeps the state finite.
    huge = 1.7e308
    engine = Engine(max_price=huge, max_quantity=huge, max_notional=huge)
    for cfg in configs():
        engine.register(cfg)
    engine.fill("a", "ES", 1e200, 1e100, 0.0, T0)
    before = engine.checkpoint("a")
    with pytest.raises(InvalidEventError, match="non-finite") as info:
        engine.quote("ES", 1e300, 1e300, T0 + 1)  # unrealized 1e200 x 1e300 = inf
    assert info.value.reason == "overflow"
    assert engine.checkpoint("a") == before
