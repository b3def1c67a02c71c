"""Hostile and absurd input at the core's Python boundary (issue 11, docs/events.md "Refusals").

Every refused input leaves every algorithm's state byte-identical (its checkpoint) and the clock
where it was, with the documented reason; no single hostile message disables a limit or blocks
the valid events after it. Fuzzed with Hypothesis (bytes on every subject, absurd values on every
entry point), plus a named test per hostile message.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
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
)

T0 = 1_764_028_800_000_000_000  # 2025-11-25 00:00 UTC
SEC = 10**9
YEAR = 365 * 86_400 * SEC
ALGOS = {"a": "gw1", "b": "gw2"}

# Every reason the core gives, in the order its checks run (docs/events.md).
REASON_ORDER = (
    "decode",
    "wrong_subject",
    "unknown_algorithm",
    "wrong_gateway",
    "bad_timestamp",
    "out_of_order",
    "future",
    "bad_price",
    "bad_quantity",
    "bad_notional",
    "bad_fee",
    "bad_latency",
    "price_band",
    "overflow",
)


def live_engine(**guards: Any) -> Engine:
    """Two algorithms on two gateways, a drawdown limit each, the wall clock at T0."""
    engine = Engine(max_future_ns=5 * SEC, **guards)
    for algo, gateway in ALGOS.items():
        engine.register(AlgoConfig(algo, "1", 100_000.0, max_drawdown=0.10))
        engine.set_gateway(algo, gateway)
    engine.set_wall_clock(T0)
    return engine


def state(engine: Engine) -> tuple[object, ...]:
    """Everything a refusal must leave alone: every algorithm's checkpoint, and the clock."""
    return (engine.now, tuple(engine.checkpoint(a) for a in engine.algorithms()))


def refused(engine: Engine, reason: str, event: Callable[[], object]) -> None:
    before = state(engine)
    with pytest.raises(InvalidEventError) as info:
        event()
    assert info.value.reason == reason, info.value
    assert state(engine) == before, f"a refused {reason} event changed the state"


def ev(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def fill_msg(algo: str, qty: float, price: float, ts: int, side: str = "buy") -> bytes:
    return ev(type="fill", algo=algo, symbol="ES", side=side, qty=qty, price=price, ts=ts)


def drawdown_still_trips(engine: Engine, algo: str = "a", ts: int = T0 + 2 * SEC) -> None:
    """A 20% loss on a fresh position in a fresh symbol must trip the 10% drawdown limit."""
    sym = f"CRASH-{algo}"
    engine.fill(algo, sym, 1_000.0, 100.0, 0.0, ts)
    out = engine.quote(sym, 79.0, 79.0, ts + 1) or []
    assert any(b.kind == "drawdown" and b.algo_id == algo for b in out), out


# ---- one hostile message at a time ----------------------------------------------------------


def test_one_future_timestamp_neither_freezes_the_clock_nor_survives() -> None:
    engine = live_engine()
    engine.fill("a", "ES", 10.0, 100.0, 0.0, T0)
    for ahead in (3_600 * SEC, YEAR, 75 * YEAR):
        msg = ev(type="quote", symbol="IDLE", bid=1.0, ask=1.0, ts=T0 + ahead)
        refused(engine, "future", partial(engine.ingest_msg, "rampart.md.IDLE", msg, T0))
    assert engine.now == T0 and engine.horizon == T0 + 5 * SEC
    # later correct events flow, and the limits still work
    engine.ingest_msg("rampart.md.ES", ev(type="quote", symbol="ES", bid=99, ask=99, ts=T0 + 1))
    engine.ingest_msg(
        "rampart.orders.gw1.a", ev(type="order", algo="a", event="submitted", ts=T0 + 2)
    )
    assert engine.snapshot("a").orders_submitted_total == 1
    drawdown_still_trips(engine)


def test_one_absurd_price_cannot_switch_off_the_drawdown_limit() -> None:
    engine = live_engine()
    engine.fill("a", "ES", 1_000.0, 100.0, 0.0, T0)
    for price in (1e307, 1e308, 1.7976931348623157e308):
        refused(engine, "bad_price", partial(engine.quote, "ES", price, price, T0 + 1))
    snap = engine.snapshot("a")
    assert snap.peak_equity == 100_000.0 and snap.equity == 100_000.0
    out = engine.quote("ES", 70.0, 70.0, T0 + 2) or []
    assert [b.kind for b in out] == ["drawdown"], "a 30% loss trips the 10% drawdown"


def test_an_overflow_is_refused_even_with_the_bounds_opened() -> None:
    huge = 1.7976931348623157e308
    engine = live_engine(max_price=huge, max_quantity=huge, max_notional=huge)
    engine.fill("a", "ES", 3.0, 100.0, 0.0, T0)
    refused(engine, "overflow", lambda: engine.quote("ES", huge, huge, T0 + 1))
    drawdown_still_trips(engine)


def test_a_gateway_cannot_report_fills_for_another_gateways_algorithm() -> None:
    engine = live_engine()
    losing = fill_msg("b", 1_000.0, 100.0, T0)
    refused(engine, "wrong_gateway", lambda: engine.ingest_msg("rampart.fills.gw1.b", losing))
    refused(engine, "wrong_gateway", lambda: engine.ingest_msg("rampart.fills.gw1.a", losing))
    refused(engine, "wrong_subject", lambda: engine.ingest_msg("rampart.md.ES", losing))
    refused(engine, "wrong_subject", lambda: engine.ingest_msg("rampart.orders.gw2.b", losing))
    engine.ingest_msg("rampart.fills.gw2.b", losing)  # its own gateway's subject
    assert engine.snapshot("b").fills == 1


def test_an_absurd_window_is_a_config_error_not_an_abort() -> None:
    with pytest.raises(ConfigError, match="sharpe_window must be between 2 and 1000000"):
        AlgoConfig("x", "1", 1.0, sharpe_window=10**12)
    for window in (2**64, 2**70, -1):
        with pytest.raises(ConfigError, match=f"{window} \\(int\\) is not a valid value"):
            AlgoConfig("x", "1", 1.0, sharpe_window=window)
    with pytest.raises(ConfigError, match="error_window_ns"):
        AlgoConfig("x", "1", 1.0, error_window_ns=2 * 3_600 * SEC)
    with pytest.raises(ConfigError):
        AlgoConfig("x", "1", 1.0, sharpe_window="many")  # type: ignore[arg-type]


def test_timestamps_outside_the_range_are_rampart_errors() -> None:
    engine = live_engine()
    for ts in (-1, 0, 315_532_800 * SEC - 1, 7_258_118_400 * SEC + 1, 2**63, -(2**63) - 1, 10**30):
        refused(engine, "bad_timestamp", partial(engine.mark, "ES", 1.0, ts))
        refused(engine, "bad_timestamp", partial(engine.advance, ts))
    # in range but a century ahead of the wall clock
    refused(engine, "future", lambda: engine.mark("ES", 1.0, 2**62))
    with pytest.raises(InvalidEventError) as info:
        engine.fill("a", "ES", 1.0, 1.0, 0.0, "soon")  # type: ignore[arg-type]
    assert info.value.reason == "bad_timestamp"


def test_binding_conversion_errors_are_rampart_errors_with_a_reason() -> None:
    engine = live_engine()
    lone = "\ud800"
    refused(engine, "decode", lambda: engine.fill(lone, "ES", 1.0, 1.0, 0.0, T0))
    refused(engine, "decode", lambda: engine.quote(lone, 1.0, 1.0, T0))
    refused(engine, "decode", lambda: engine.quote("ES", "1", 1.0, T0))  # type: ignore[arg-type]
    refused(engine, "decode", lambda: engine.quote("ES", 10**400, 1.0, T0))
    refused(engine, "bad_latency", lambda: engine.order_acked("a", 2**64, T0))
    with pytest.raises(RampartError):
        engine.set_gateway("a", lone)
    assert lone not in engine


def test_invalid_utf8_anywhere_in_a_message_is_refused() -> None:
    engine = live_engine()
    raw = b'{"type":"mark","symbol":"ES","price":1,"ts":%d,"note":"\xff\xfe"}' % T0
    refused(engine, "decode", lambda: engine.ingest_msg("rampart.md.ES", raw))
    refused(engine, "decode", lambda: engine.ingest_json(raw))


def test_the_same_bad_fill_gets_the_same_reason_on_every_entry_point() -> None:
    cases = [
        ("unknown_algorithm", "ghost", -1.0, -1.0, -1.0, -1),
        ("bad_timestamp", "a", -1.0, -1.0, -1.0, -1),
        ("bad_price", "a", -1.0, -1.0, -1.0, T0),
        ("bad_quantity", "a", -1.0, 1.0, -1.0, T0),
        ("bad_quantity", "a", 0.0, 1.0, 0.0, T0),
        ("bad_notional", "a", 1e9, 1e9, 0.0, T0),
        ("bad_fee", "a", 1.0, 1.0, -1.0, T0),
    ]
    for reason, algo, qty, price, fee, ts in cases:
        engine = live_engine()
        raw = ev(
            type="fill", algo=algo, symbol="ES", side="buy", qty=qty, price=price, fee=fee, ts=ts
        )
        calls: list[Callable[[], object]] = [
            partial(engine.ingest_json, raw),
            partial(engine.ingest_msg, f"rampart.fills.gw1.{algo}", raw),
        ]
        if qty > 0:  # (a negative quantity is a sell through the signed per-call API)
            calls.append(partial(engine.fill, algo, "ES", qty, price, fee, ts))
        for call in calls:
            refused(engine, reason, call)
        result = engine.ingest_json_batch([raw])
        assert [e[1] for e in result.errors] == [reason]


def test_the_price_band_refuses_a_jump_and_breaches_holders_after_a_run() -> None:
    engine = live_engine(price_band=0.2, price_band_consecutive=3)
    engine.fill("a", "ES", 1.0, 100.0, 0.0, T0)
    engine.quote("ES", 100.0, 100.0, T0 + 1)
    refused(engine, "price_band", lambda: engine.quote("ES", 1_000.0, 1_000.0, T0 + 2))
    refused(engine, "price_band", lambda: engine.quote("ES", 1_000.0, 1_000.0, T0 + 3))
    out: list[Breach] = engine.quote("ES", 1_000.0, 1_000.0, T0 + 4) or []
    assert [(b.algo_id, b.kind) for b in out] == [("a", "price_band")]
    engine.set_price_band("NQ", 0.01)
    engine.quote("NQ", 100.0, 100.0, T0 + 5)
    refused(engine, "price_band", lambda: engine.quote("NQ", 102.0, 102.0, T0 + 6))


def test_a_checkpoint_carries_only_the_marks_its_algorithm_needs() -> None:
    engine = live_engine()
    engine.fill("a", "ES", 1.0, 100.0, 0.0, T0)
    size = len(engine.checkpoint("a"))
    engine.quotes([f"S{i}" for i in range(8_000)], [1.0] * 8_000, [1.0] * 8_000, [T0 + 1] * 8_000)
    assert len(engine.checkpoint("a")) == size
    assert set(json.loads(engine.checkpoint("a"))["marks"]) == {"ES"}


def test_a_restored_clock_ahead_of_the_wall_clock_is_not_trusted() -> None:
    src = Engine()
    src.register(AlgoConfig("a", "1", 100_000.0))
    src.fill("a", "ES", 1.0, 100.0, 0.0, T0)
    src.order_submitted("a", T0 + 100 * YEAR // 10)
    data = src.checkpoint("a")
    engine = Engine(max_future_ns=5 * SEC)
    assert engine.restore(data, max_clock=T0 + 5 * SEC) == T0 + 100 * YEAR // 10
    assert engine.now == T0 + 5 * SEC
    snap = engine.snapshot("a")
    assert snap.positions[0].qty == 1.0 and snap.orders_in_window == 0
    engine.set_wall_clock(T0)
    engine.quote("ES", 101.0, 101.0, T0 + 1)  # the present is accepted again


def test_reading_never_changes_results() -> None:
    """The issue's sequence: Mark, Quote, Fill(a), Fill(b), 3 x Order(a, submitted), Fill(a),
    MarkStage(a), then 3,000 more updates across the re-sum boundary: snapshots in between
    change nothing."""
    watched, unwatched = live_engine(), live_engine()

    def run(engine: Engine, look: bool) -> None:
        ts = T0
        steps: list[Callable[[], object]] = [
            lambda: engine.mark("ES", 100.3, ts),
            lambda: engine.quote("NQ", 20.1, 20.3, ts),
            lambda: engine.fill("a", "ES", 0.7, 100.1, 0.13, ts),
            lambda: engine.fill("b", "ES", -1.3, 100.2, 0.07, ts),
            lambda: engine.order_submitted("a", ts),
            lambda: engine.order_submitted("a", ts),
            lambda: engine.order_submitted("a", ts),
            lambda: engine.fill("a", "NQ", 2.9, 20.2, 0.01, ts),
            lambda: engine.mark_stage("a"),
        ]
        for step in steps:
            step()
            if look:
                engine.snapshot("a")
                engine.snapshot("b")
        for i in range(3_000):
            engine.quote("ES", 100 + (i % 37) * 0.013, 100 + (i % 37) * 0.013, T0 + i)
            if look:
                engine.snapshot("a")

    run(watched, look=True)
    run(unwatched, look=False)
    for algo in ALGOS:
        assert watched.snapshot(algo).to_dict() == unwatched.snapshot(algo).to_dict()
        assert watched.checkpoint(algo) == unwatched.checkpoint(algo)


# ---- fuzzing ----------------------------------------------------------------------------------

SUBJECTS = (
    "rampart.md.ES",
    "rampart.md.NQ",
    "rampart.fills.gw1.a",
    "rampart.fills.gw2.b",
    "rampart.fills.gw1.b",
    "rampart.orders.gw1.a",
    "rampart.orders.gw2.ghost",
    "rampart.hb.gw1",
    "rampart.md",
    "other.md.ES",
)

finite = st.floats(allow_nan=False, allow_infinity=False)
number = st.one_of(finite, st.integers(-(2**70), 2**70), st.sampled_from([1e308, -0.0, 5e-324]))
timestamps = st.one_of(
    st.integers(-(2**64), 2**64),
    st.integers(T0 - 10 * SEC, T0 + 10 * SEC),
    st.sampled_from([T0 + YEAR, 0, -1, 2**63 - 1]),
)
symbols = st.sampled_from(["ES", "NQ", "", "\u00e9", "a.b"])
algos = st.sampled_from(["a", "b", "ghost", ""])
messages = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda t, s, b, a, ts: ev(type=t, symbol=s, bid=b, ask=a, price=b, ts=ts),
        st.sampled_from(["quote", "mark"]),
        symbols,
        number,
        number,
        timestamps,
    ),
    st.builds(
        lambda al, s, side, q, p, f, ts: ev(
            type="fill", algo=al, symbol=s, side=side, qty=q, price=p, fee=f, ts=ts
        ),
        algos,
        symbols,
        st.sampled_from(["buy", "sell", "hold"]),
        number,
        number,
        number,
        timestamps,
    ),
    st.builds(
        lambda al, e, lat, ts: ev(type="order", algo=al, event=e, latency_ns=lat, ts=ts),
        algos,
        st.sampled_from(["submitted", "acked", "rejected", "cancelled", "lost"]),
        st.integers(-(2**64), 2**64),
        timestamps,
    ),
)
valid = st.one_of(
    st.builds(
        lambda p, dt: ("rampart.md.ES", ev(type="quote", symbol="ES", bid=p, ask=p, ts=dt)),
        st.integers(80, 120).map(float),
        st.integers(0, SEC),
    ),
    st.builds(
        lambda al, q, dt: (
            f"rampart.fills.{ALGOS[al]}.{al}",
            fill_msg(al, float(q), 100.0, dt),
        ),
        st.sampled_from(list(ALGOS)),
        st.integers(1, 50),
        st.integers(0, SEC),
    ),
)


@settings(max_examples=150)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("hostile"), st.sampled_from(SUBJECTS), messages),
            st.tuples(st.just("valid"), valid),
        ),
        max_size=40,
    )
)
def test_fuzz_every_refusal_changes_nothing_and_valid_events_keep_flowing(
    steps: list[tuple[Any, ...]],
) -> None:
    engine = live_engine(price_band=0.5)
    for step in steps:
        if step[0] == "valid":
            subject, raw = step[1]
            # stamps relative to the engine clock, so they are never out of order
            doc = json.loads(raw)
            doc["ts"] = (engine.now or T0) + doc["ts"] % SEC
            engine.set_wall_clock(doc["ts"])
            try:
                engine.ingest_msg(subject, json.dumps(doc).encode())
            except InvalidEventError as e:
                assert e.reason in ("price_band", "overflow"), e
            continue
        _, subject, raw = step
        before = state(engine)
        try:
            engine.ingest_msg(subject, raw)
        except InvalidEventError as e:
            assert e.reason in REASON_ORDER, e
            assert state(engine) == before, f"refused ({e.reason}) but changed the state"
            if isinstance(e, DecodeError):
                assert e.reason == "decode"
    for snap in engine.snapshots():
        for name, value in snap.to_dict().items():
            if isinstance(value, float):
                assert value == value and abs(value) != float("inf"), (snap.algo_id, name)
    engine.set_wall_clock((engine.now or T0) + SEC)
    for algo in ALGOS:
        if "drawdown" not in engine.snapshot(algo).breached:
            drawdown_still_trips(engine, algo, (engine.now or T0) + 1)
