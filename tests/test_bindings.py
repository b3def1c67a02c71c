"""The Python surface of the core (``rampart._core``): errors, configuration, events in and out."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pytest

import rampart
from rampart._core import (
    AlgoConfig,
    BatchResult,
    Breach,
    ConfigError,
    DecodeError,
    Engine,
    InvalidEventError,
    OutOfOrderError,
    Position,
    RampartError,
    Snapshot,
    UnknownAlgorithmError,
)

T0 = 1_764_028_800_000_000_000  # 2025-11-25 00:00 UTC
SEC = 10**9
DAY = 86_400 * SEC
nan, inf = math.nan, math.inf


def registered(capital: float = 10_000.0, algo_id: str = "algo", **limits: object) -> Engine:
    engine = Engine()
    engine.register(AlgoConfig(algo_id, "1.0.0", capital, **limits))  # type: ignore[arg-type]
    return engine


def state(engine: Engine) -> object:
    return (
        engine.now,
        [s.to_dict() for s in engine.snapshots()],
        [engine.last_quote_ts(s) for s in ("X", "Y")],
    )


# --------------------------------------------------------------------------------------------------
# Errors


def test_exception_hierarchy() -> None:
    assert issubclass(RampartError, Exception)
    for cls in (ConfigError, InvalidEventError):
        assert issubclass(cls, RampartError)
        assert issubclass(cls, ValueError)
    for cls in (UnknownAlgorithmError, OutOfOrderError, DecodeError):
        assert issubclass(cls, InvalidEventError)
    assert not issubclass(ConfigError, InvalidEventError)
    assert not issubclass(InvalidEventError, ConfigError)


def test_package_reexports_the_core() -> None:
    for name in ("Engine", "AlgoConfig", "Snapshot", "Breach", "RampartError", "DecodeError"):
        assert getattr(rampart, name) is getattr(rampart._core, name)
    assert isinstance(rampart.__version__, str) and rampart.__version__


def test_errors_are_ordinary_exceptions() -> None:
    """Bad input is an Exception the daemon can catch, never a panic (a BaseException)."""
    engine = registered()
    calls: list[Callable[[], object]] = [
        lambda: engine.fill("algo", "X", nan, 100.0, 0.0, T0),
        lambda: engine.ingest_json(b"\xff\xfe"),
        lambda: engine.ingest_json(b'{"type": "quote", "symbol": "X", "bid": 1e400, "ts": 1}'),
        lambda: engine.order_acked("algo", -1, T0),
        lambda: engine.snapshot("nobody"),
    ]
    for call in calls:
        with pytest.raises(Exception) as info:
            call()
        assert isinstance(info.value, RampartError)


# --------------------------------------------------------------------------------------------------
# Configuration


def test_config_defaults() -> None:
    c = AlgoConfig("momentum", "2.1.0", 250_000.0)
    assert (c.algo_id, c.version, c.capital) == ("momentum", "2.1.0", 250_000.0)
    assert c.max_daily_loss is None and c.max_drawdown is None
    assert c.max_error_rate is None and c.max_latency_ns is None
    assert c.daily_loss_consecutive == c.drawdown_consecutive == 1
    assert c.error_rate_consecutive == c.latency_consecutive == 1
    assert c.error_window_ns == c.latency_window_ns == 60 * SEC
    assert c.error_min_orders == c.latency_min_samples == 20
    assert c.return_interval_ns == 3_600 * SEC
    assert c.sharpe_window == 720
    assert c.periods_per_year == 365 * 24  # 365·24·3600 s / return_interval
    assert c.risk_free_rate == 0.0
    assert c.session_offset_ns == 0
    assert c.confidence_drawdown_ref == 0.10
    minute = AlgoConfig("m", "1", 1.0, return_interval_ns=60 * SEC)
    assert minute.periods_per_year == 365 * 24 * 60


@pytest.mark.parametrize(
    ("capital", "kwargs"),
    [
        (-1.0, {}),
        (nan, {}),
        (inf, {}),
        (1e5, {"error_window_ns": 0}),
        (1e5, {"latency_window_ns": 0}),
        (1e5, {"return_interval_ns": 0}),
        (1e5, {"return_interval_ns": -3_600 * SEC}),
        (1e5, {"sharpe_window": 0}),
        (1e5, {"max_drawdown": 0.1, "drawdown_consecutive": 0}),
        (1e5, {"max_drawdown": -0.1}),
        (1e5, {"max_daily_loss": nan}),
        (1e5, {"max_latency_ns": -1}),
        (1e5, {"periods_per_year": 0.0}),
        (1e5, {"risk_free_rate": nan}),
        (1e5, {"confidence_drawdown_ref": 0.0}),
    ],
)
def test_bad_config_is_a_config_error(capital: float, kwargs: dict[str, object]) -> None:
    engine = Engine()
    with pytest.raises(ConfigError):
        engine.register(AlgoConfig("algo", "1.0.0", capital, **kwargs))  # type: ignore[arg-type]
    assert len(engine) == 0


def test_duplicate_registration_is_a_config_error() -> None:
    engine = registered()
    engine.fill("algo", "X", 1.0, 100.0, 0.0, T0)
    with pytest.raises(ConfigError):
        engine.register(AlgoConfig("algo", "2.0.0", 1.0))
    snap = engine.snapshot("algo")
    assert (snap.version, snap.capital, snap.fills) == ("1.0.0", 10_000.0, 1)


def test_engine_tolerance() -> None:
    assert Engine().time_tolerance_ns == 5 * SEC
    assert Engine(time_tolerance_ns=0).time_tolerance_ns == 0
    with pytest.raises(ConfigError):
        Engine(time_tolerance_ns=-1)


# --------------------------------------------------------------------------------------------------
# Registry


def test_register_unregister() -> None:
    engine = Engine()
    assert len(engine) == 0 and engine.algorithms() == [] and engine.snapshots() == []
    engine.register(AlgoConfig("a", "1", 1_000.0))
    engine.register(AlgoConfig("b", "1", 2_000.0))
    assert len(engine) == 2
    assert sorted(engine.algorithms()) == ["a", "b"]
    assert "a" in engine and "c" not in engine
    assert sorted(s.algo_id for s in engine.snapshots()) == ["a", "b"]
    engine.fill("a", "X", 1.0, 100.0, 0.0, T0)
    engine.unregister("a")
    assert "a" not in engine and len(engine) == 1
    with pytest.raises(UnknownAlgorithmError):
        engine.snapshot("a")
    with pytest.raises(UnknownAlgorithmError):
        engine.fill("a", "X", 1.0, 100.0, 0.0, T0)
    with pytest.raises(UnknownAlgorithmError):
        engine.unregister("a")
    # registering the id again starts from scratch
    engine.register(AlgoConfig("a", "2", 5_000.0))
    snap = engine.snapshot("a")
    assert (snap.version, snap.equity, snap.fills, snap.positions) == ("2", 5_000.0, 0, [])


@pytest.mark.parametrize(
    "call",
    [
        lambda e: e.snapshot("nobody"),
        lambda e: e.mark_stage("nobody"),
        lambda e: e.reset_breaches("nobody"),
        lambda e: e.set_capital("nobody", 1.0, T0),
        lambda e: e.order_submitted("nobody", T0),
        lambda e: e.order_acked("nobody", 5, T0),
        lambda e: e.order_rejected("nobody", T0),
        lambda e: e.order_cancelled("nobody", T0),
        lambda e: e.fill("nobody", "X", 1.0, 1.0, 0.0, T0),
    ],
)
def test_unknown_algorithm(call: Callable[[Engine], object]) -> None:
    engine = registered()
    with pytest.raises(UnknownAlgorithmError):
        call(engine)


# --------------------------------------------------------------------------------------------------
# Rejected events change nothing


BAD_EVENTS: list[tuple[str, Callable[[Engine, int], object], type[Exception]]] = [
    ("nan bid", lambda e, t: e.quote("X", nan, 101.0, t), InvalidEventError),
    ("inf ask", lambda e, t: e.quote("X", 100.0, inf, t), InvalidEventError),
    ("zero bid", lambda e, t: e.quote("X", 0.0, 101.0, t), InvalidEventError),
    ("negative prices", lambda e, t: e.quote("X", -2.0, -1.0, t), InvalidEventError),
    ("crossed quote", lambda e, t: e.quote("X", 101.0, 100.0, t), InvalidEventError),
    ("nan mark", lambda e, t: e.mark("X", nan, t), InvalidEventError),
    ("negative mark", lambda e, t: e.mark("X", -100.0, t), InvalidEventError),
    ("zero qty", lambda e, t: e.fill("algo", "X", 0.0, 100.0, 0.0, t), InvalidEventError),
    ("nan qty", lambda e, t: e.fill("algo", "X", nan, 100.0, 0.0, t), InvalidEventError),
    ("inf qty", lambda e, t: e.fill("algo", "X", inf, 100.0, 0.0, t), InvalidEventError),
    ("zero price", lambda e, t: e.fill("algo", "X", 1.0, 0.0, 0.0, t), InvalidEventError),
    ("nan price", lambda e, t: e.fill("algo", "X", 1.0, nan, 0.0, t), InvalidEventError),
    ("negative fee", lambda e, t: e.fill("algo", "X", 1.0, 100.0, -0.5, t), InvalidEventError),
    ("nan fee", lambda e, t: e.fill("algo", "X", 1.0, 100.0, nan, t), InvalidEventError),
    ("negative latency", lambda e, t: e.order_acked("algo", -1, t), InvalidEventError),
    ("unknown algo", lambda e, t: e.fill("ghost", "X", 1.0, 100.0, 0.0, t), UnknownAlgorithmError),
    ("old quote", lambda e, t: e.quote("X", 100.0, 101.0, t - 5 * SEC - 1), OutOfOrderError),
    ("old fill", lambda e, t: e.fill("algo", "X", 1.0, 100.0, 0.0, t - 6 * SEC), OutOfOrderError),
    ("old order", lambda e, t: e.order_submitted("algo", t - 60 * SEC), OutOfOrderError),
    ("old capital", lambda e, t: e.set_capital("algo", 1e6, t - 10 * SEC), OutOfOrderError),
    ("old advance", lambda e, t: e.advance(t - DAY), OutOfOrderError),
    ("negative capital", lambda e, t: e.set_capital("algo", -5.0, t), RampartError),
    ("bad json", lambda e, t: e.ingest_json(b'{"type": "quote"'), DecodeError),
]


@pytest.mark.parametrize(
    ("send", "error"), [(s, err) for _, s, err in BAD_EVENTS], ids=[n for n, _, _ in BAD_EVENTS]
)
def test_rejected_event_changes_nothing(
    send: Callable[[Engine, int], object], error: type[Exception]
) -> None:
    engine = registered(max_drawdown=0.01, max_daily_loss=0.01)
    engine.quote("X", 99.5, 100.5, T0)
    engine.fill("algo", "X", 10.0, 100.0, 1.0, T0 + SEC)
    engine.order_submitted("algo", T0 + SEC)
    engine.order_acked("algo", 1_000, T0 + SEC)
    now = T0 + 2 * SEC
    engine.mark("Y", 50.0, now)
    before = state(engine)
    with pytest.raises(error):
        send(engine, now)
    assert state(engine) == before


def test_time_tolerance() -> None:
    """Events up to the tolerance behind the clock apply (the clock does not move back); older ones
    raise OutOfOrderError."""
    engine = registered()
    engine.quote("X", 100.0, 101.0, T0)
    engine.quote("X", 100.0, 102.0, T0 - 5 * SEC)  # exactly at the tolerance: accepted
    assert engine.now == T0
    assert engine.snapshot("algo").ts == T0
    with pytest.raises(OutOfOrderError):
        engine.quote("X", 100.0, 101.0, T0 - 5 * SEC - 1)
    strict = Engine(time_tolerance_ns=0)
    strict.quote("X", 100.0, 101.0, T0)
    strict.quote("X", 100.0, 101.0, T0)  # the same time is not behind
    with pytest.raises(OutOfOrderError):
        strict.quote("X", 100.0, 101.0, T0 - 1)


# --------------------------------------------------------------------------------------------------
# JSON events (docs/events.md)


def j(obj: dict[str, object]) -> bytes:
    return json.dumps(obj).encode()


def test_ingest_json_each_event_type_matches_the_direct_calls() -> None:
    direct, decoded = registered(), registered()
    steps: list[tuple[dict[str, object], Callable[[Engine], object]]] = [
        (
            {"type": "quote", "symbol": "ESZ6", "bid": 6012.25, "ask": 6012.5, "ts": T0},
            lambda e: e.quote("ESZ6", 6012.25, 6012.5, T0),
        ),
        (
            {
                "type": "fill",
                "algo": "algo",
                "symbol": "ESZ6",
                "side": "buy",
                "qty": 2,
                "price": 6012.5,
                "fee": 1.2,
                "ts": T0 + 100_000,
            },
            lambda e: e.fill("algo", "ESZ6", 2.0, 6012.5, 1.2, T0 + 100_000),
        ),
        (
            {"type": "order", "algo": "algo", "event": "submitted", "ts": T0 + 200_000},
            lambda e: e.order_submitted("algo", T0 + 200_000),
        ),
        (
            {
                "type": "order",
                "algo": "algo",
                "event": "acked",
                "latency_ns": 850_000,
                "ts": T0 + 300_000,
            },
            lambda e: e.order_acked("algo", 850_000, T0 + 300_000),
        ),
        (
            {"type": "order", "algo": "algo", "event": "rejected", "ts": T0 + 400_000},
            lambda e: e.order_rejected("algo", T0 + 400_000),
        ),
        (
            {"type": "order", "algo": "algo", "event": "cancelled", "ts": T0 + 500_000},
            lambda e: e.order_cancelled("algo", T0 + 500_000),
        ),
        (  # fee defaults to 0; unknown fields such as a schema version are ignored
            {
                "v": 1,
                "type": "fill",
                "algo": "algo",
                "symbol": "NQZ6",
                "side": "sell",
                "qty": 1.5,
                "price": 21000.0,
                "ts": T0 + 600_000,
                "venue": "XCME",
            },
            lambda e: e.fill("algo", "NQZ6", -1.5, 21000.0, 0.0, T0 + 600_000),
        ),
        (
            {"type": "mark", "symbol": "NQZ6", "price": 20990.25, "ts": T0 + 700_000},
            lambda e: e.mark("NQZ6", 20990.25, T0 + 700_000),
        ),
    ]
    for message, call in steps:
        assert decoded.ingest_json(j(message)) is None
        assert call(direct) is None
        assert state(decoded) == state(direct), message
    snap = decoded.snapshot("algo")
    assert snap.fills == 2 and snap.fees == pytest.approx(1.2)
    assert snap.orders_submitted_total == snap.orders_acked_total == 1
    assert snap.orders_rejected_total == snap.orders_cancelled_total == 1
    assert snap.acks_in_window == 1 and snap.latency_p50_ns is not None
    assert {p.symbol: p.qty for p in snap.positions} == {"ESZ6": 2.0, "NQZ6": -1.5}
    assert decoded.last_quote_ts("ESZ6") == T0


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"not json",
        b"[]",
        b'{"symbol": "X", "bid": 1.0, "ask": 2.0, "ts": 1}',  # no type
        b'{"type": "trade", "symbol": "X", "price": 1.0, "ts": 1}',  # unknown type
        b'{"type": "quote", "symbol": "X", "bid": 1.0, "ts": 1}',  # missing ask
        b'{"type": "quote", "symbol": "X", "bid": "1.0", "ask": 2.0, "ts": 1}',  # mistyped
        b'{"type": "quote", "symbol": 7, "bid": 1.0, "ask": 2.0, "ts": 1}',
        b'{"type": "quote", "symbol": "X", "bid": 1.0, "ask": 2.0, "ts": 1.5}',  # ts not an int
        b'{"type": "mark", "symbol": "X", "ts": 1}',
        b'{"type": "fill", "algo": "algo", "symbol": "X", "side": "hold", "qty": 1, "price": 1,'
        b' "ts": 1}',
        b'{"type": "fill", "algo": "algo", "symbol": "X", "qty": 1, "price": 1, "ts": 1}',
        b'{"type": "order", "algo": "algo", "event": "acked", "ts": 1}',  # acked needs latency
        b'{"type": "order", "algo": "algo", "event": "filled", "ts": 1}',
    ],
)
def test_ingest_json_decode_errors(message: bytes) -> None:
    engine = registered()
    before = state(engine)
    with pytest.raises(DecodeError):
        engine.ingest_json(message)
    assert state(engine) == before


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"type": "quote", "symbol": "X", "bid": 2.0, "ask": 1.0, "ts": T0}, InvalidEventError),
        ({"type": "mark", "symbol": "X", "price": 0.0, "ts": T0}, InvalidEventError),
        (
            {
                "type": "fill",
                "algo": "algo",
                "symbol": "X",
                "side": "buy",
                "qty": 0,
                "price": 1.0,
                "ts": T0,
            },
            InvalidEventError,
        ),
        (
            {
                "type": "fill",
                "algo": "algo",
                "symbol": "X",
                "side": "buy",
                "qty": -1,
                "price": 1.0,
                "ts": T0,
            },
            InvalidEventError,
        ),
        (
            {
                "type": "fill",
                "algo": "algo",
                "symbol": "X",
                "side": "buy",
                "qty": 1,
                "price": 1.0,
                "fee": -1,
                "ts": T0,
            },
            InvalidEventError,
        ),
        (
            {"type": "order", "algo": "algo", "event": "acked", "latency_ns": -5, "ts": T0},
            InvalidEventError,
        ),
        ({"type": "order", "algo": "ghost", "event": "submitted", "ts": T0}, UnknownAlgorithmError),
    ],
)
def test_ingest_json_bad_values(message: dict[str, object], error: type[Exception]) -> None:
    engine = registered()
    with pytest.raises(error) as info:
        engine.ingest_json(j(message))
    assert not isinstance(info.value, DecodeError)  # well-formed: a bad value, not a decode error


def test_ingest_json_returns_breaches() -> None:
    engine = registered(capital=1_000.0, max_drawdown=0.05)
    assert (
        engine.ingest_json(
            j(
                {
                    "type": "fill",
                    "algo": "algo",
                    "symbol": "X",
                    "side": "buy",
                    "qty": 10,
                    "price": 100.0,
                    "ts": T0,
                }
            )
        )
        is None
    )
    got = engine.ingest_json(j({"type": "mark", "symbol": "X", "price": 90.0, "ts": T0 + 1}))
    assert got is not None and [(b.kind, b.algo_id, b.ts) for b in got] == [
        ("drawdown", "algo", T0 + 1)
    ]


def test_ingest_json_batch_reports_bad_messages_and_applies_good_ones() -> None:
    engine = registered(capital=1_000.0, max_drawdown=0.05)
    engine.quote("X", 100.0, 100.0, T0)
    engine.fill("algo", "X", 10.0, 100.0, 0.0, T0)
    messages = [
        j({"type": "quote", "symbol": "Y", "bid": 10.0, "ask": 10.5, "ts": T0 + 1}),  # 0 ok
        b"{oops",  # 1 decode
        j({"type": "quote", "symbol": "Y", "bid": 11.0, "ask": 10.0, "ts": T0 + 2}),  # 2 bad_price
        j(
            {
                "type": "fill",
                "algo": "algo",
                "symbol": "Y",
                "side": "buy",
                "qty": 0,
                "price": 10.0,
                "ts": T0 + 3,
            }
        ),  # 3 bad_quantity
        j(
            {
                "type": "fill",
                "algo": "algo",
                "symbol": "Y",
                "side": "buy",
                "qty": 1,
                "price": 10.0,
                "fee": -0.1,
                "ts": T0 + 4,
            }
        ),  # 4 bad_fee
        j({"type": "order", "algo": "algo", "event": "acked", "latency_ns": -1, "ts": T0 + 5}),
        j({"type": "order", "algo": "ghost", "event": "submitted", "ts": T0 + 6}),  # 6 unknown
        j({"type": "quote", "symbol": "X", "bid": 90.0, "ask": 90.0, "ts": T0 + 7}),  # 7 breach
        j({"type": "mark", "symbol": "Y", "price": 10.0, "ts": T0 - 60 * SEC}),  # 8 out_of_order
        j({"type": "order", "algo": "algo", "event": "submitted", "ts": T0 + 8}),  # 9 ok
    ]
    result = engine.ingest_json_batch(messages)
    assert isinstance(result, BatchResult)
    assert result.accepted == 3
    codes = [(i, code) for i, code, _ in result.errors]
    assert codes == [
        (1, "decode"),
        (2, "bad_price"),
        (3, "bad_quantity"),
        (4, "bad_fee"),
        (5, "bad_latency"),
        (6, "unknown_algorithm"),
        (8, "out_of_order"),
    ]
    assert all(isinstance(message, str) and message for _, _, message in result.errors)
    assert [(b.kind, b.algo_id, b.ts) for b in result.breaches] == [("drawdown", "algo", T0 + 7)]
    snap = engine.snapshot("algo")
    assert snap.orders_submitted_total == 1
    assert snap.fills == 1
    assert engine.last_quote_ts("Y") == T0 + 1
    assert engine.now == T0 + 8


def test_batches_that_trip_nothing_return_an_empty_list() -> None:
    engine = registered()
    result = engine.ingest_json_batch([j({"type": "mark", "symbol": "X", "price": 1.0, "ts": T0})])
    assert (result.accepted, result.breaches, result.errors) == (1, [], [])
    empty = engine.ingest_json_batch([])
    assert (empty.accepted, empty.breaches, empty.errors) == (0, [], [])


def test_quotes_batch() -> None:
    engine = registered(capital=1_000.0, max_drawdown=0.05)
    engine.fill("algo", "X", 10.0, 100.0, 0.0, T0)
    result = engine.quotes(
        ["X", "Y", "Y", "X", "Z"],
        [99.0, 10.0, 12.0, 90.0, 5.0],
        [99.5, 10.5, 11.0, 90.5, 5.5],
        [T0 + 1, T0 + 2, T0 + 3, T0 + 4, T0 - 60 * SEC],
    )
    assert result.accepted == 3
    assert [(i, code) for i, code, _ in result.errors] == [(2, "bad_price"), (4, "out_of_order")]
    assert [(b.kind, b.ts) for b in result.breaches] == [("drawdown", T0 + 4)]
    assert engine.last_quote_ts("Y") == T0 + 2
    assert engine.last_quote_ts("Z") is None
    snap = engine.snapshot("algo")
    assert snap.unrealized_pnl == pytest.approx(10 * (90.25 - 100.0))


def test_quote_columns_of_numpy_arrays_are_quotes_by_name() -> None:
    """The columnar entry point: interned symbols and buffers, each row as ``quote`` would
    apply it (the same refusals, breaches and state), and clear errors for wrong columns."""
    by_name = registered(capital=1_000.0, max_drawdown=0.05)
    by_id = registered(capital=1_000.0, max_drawdown=0.05)
    for e in (by_name, by_id):
        e.fill("algo", "X", 10.0, 100.0, 0.0, T0)
    symbols = ["X", "Y", "Y", "X", "Z"]
    bids = [99.0, 10.0, 12.0, 90.0, 5.0]
    asks = [99.5, 10.5, 11.0, 90.5, 5.5]
    ts = [T0 + 1, T0 + 2, T0 + 3, T0 + 4, T0 - 60 * SEC]
    want = by_name.quotes(symbols, bids, asks, ts)
    ids = by_id.intern(symbols)
    assert ids[1] == ids[2] != ids[0] and by_id.intern(["X"]) == [ids[0]]
    got = by_id.quote_columns(
        np.array(ids, dtype=np.uint32),
        np.array(bids),
        np.array(asks),
        np.array(ts, dtype=np.int64),
    )
    assert (got.accepted, got.errors, got.breaches) == (want.accepted, want.errors, want.breaches)
    assert state(by_id) == state(by_name)
    one = (np.array([0], dtype=np.uint32), np.array([1.0]), np.array([2.0]))
    with pytest.raises(TypeError, match="ts must be a buffer of int64"):
        by_id.quote_columns(*one, [T0])
    with pytest.raises(TypeError, match="symbol_ids must be a buffer of uint32"):
        by_id.quote_columns(np.array([0], dtype=np.int64), *one[1:], np.array([T0]))
    with pytest.raises(ValueError, match="same length"):
        by_id.quote_columns(*one, np.array([T0, T0], dtype=np.int64))
    two = (np.array([0, 0], dtype=np.uint32), np.ones(2), np.ones(4)[::2])  # asks: strided
    with pytest.raises(ValueError, match="asks must be a C-contiguous buffer"):
        by_id.quote_columns(*two, np.array([T0 + 5, T0 + 6], dtype=np.int64))
    unknown = by_id.quote_columns(
        np.array([99], dtype=np.uint32), np.array([1.0]), np.array([2.0]), np.array([T0 + 9])
    )
    assert [(i, code) for i, code, _ in unknown.errors] == [(0, "decode")]


# --------------------------------------------------------------------------------------------------
# Snapshots


def test_snapshot_to_dict_is_json_serialisable() -> None:
    engine = registered(max_drawdown=0.001)
    engine.quote("X", 100.0, 100.5, T0)
    engine.fill("algo", "X", 3.0, 100.5, 0.3, T0 + 1)
    engine.order_submitted("algo", T0 + 2)
    engine.order_acked("algo", 12_345, T0 + 3)
    engine.mark("X", 90.0, T0 + 4)
    snap = engine.snapshot("algo")
    d = snap.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["algo_id"] == "algo" and d["ts"] == T0 + 4
    assert d["breached"] == ["drawdown"]
    for name in (
        "capital",
        "equity",
        "realized_pnl",
        "unrealized_pnl",
        "fees",
        "peak_equity",
        "drawdown",
        "max_drawdown",
        "daily_pnl",
        "session_start_equity",
        "stage_pnl",
        "returns_count",
        "sharpe",
        "trades",
        "wins",
        "win_rate",
        "fills",
        "orders_in_window",
        "rejects_in_window",
        "error_rate",
        "acks_in_window",
        "latency_p50_ns",
        "latency_p99_ns",
        "orders_submitted_total",
        "orders_rejected_total",
        "orders_acked_total",
        "orders_cancelled_total",
        "last_fill_ts",
        "last_order_ts",
        "last_event_ts",
        "confidence",
    ):
        assert d[name] == getattr(snap, name), name
    assert d["positions"] == [
        {
            "symbol": "X",
            "qty": 3.0,
            "avg_cost": 100.5,
            "mark": 90.0,
            "unrealized_pnl": pytest.approx(3 * (90.0 - 100.5)),
            "realized_pnl": 0.0,
        }
    ]


def test_snapshot_before_any_event() -> None:
    engine = registered(capital=5_000.0)
    snap = engine.snapshot("algo")
    assert isinstance(snap, Snapshot)
    assert snap.ts is None and engine.now is None
    assert (snap.equity, snap.peak_equity, snap.session_start_equity) == (5_000.0,) * 3
    assert (snap.drawdown, snap.max_drawdown, snap.daily_pnl, snap.stage_pnl) == (0.0,) * 4
    assert (snap.sharpe, snap.win_rate, snap.error_rate) == (None, None, None)
    assert (snap.latency_p50_ns, snap.latency_p99_ns) == (None, None)
    assert (snap.last_fill_ts, snap.last_order_ts, snap.last_event_ts) == (None, None, None)
    assert snap.breached == [] and snap.positions == []
    assert snap.confidence == pytest.approx(0.3)  # only the drawdown term: 0.3·(1 - 0/0.1)


def test_positions() -> None:
    engine = registered(capital=100_000.0)
    engine.quote("X", 99.0, 101.0, T0)
    engine.fill("algo", "X", 10.0, 100.0, 1.0, T0)
    engine.fill("algo", "X", 10.0, 102.0, 1.0, T0 + 1)  # add: A = 101
    engine.fill("algo", "X", -5.0, 104.0, 0.5, T0 + 2)  # reduce: realized 5·3 = 15
    engine.fill("algo", "Y", -4.0, 50.0, 0.0, T0 + 3)  # short, unquoted: marked at the fill
    engine.fill("algo", "Z", 1.0, 10.0, 0.0, T0 + 4)
    engine.fill("algo", "Z", -1.0, 12.0, 0.0, T0 + 5)  # a closed round trip
    snap = engine.snapshot("algo")
    by_symbol = {p.symbol: p for p in snap.positions}
    assert all(isinstance(p, Position) for p in snap.positions)
    x, y = by_symbol["X"], by_symbol["Y"]
    assert (x.qty, x.mark) == (15.0, 100.0)
    assert x.avg_cost == pytest.approx(101.0)
    assert x.realized_pnl == pytest.approx(15.0)
    assert x.unrealized_pnl == pytest.approx(15 * (100.0 - 101.0))
    assert (y.qty, y.avg_cost, y.mark, y.unrealized_pnl) == (-4.0, 50.0, 50.0, 0.0)
    if "Z" in by_symbol:  # a flat position may be listed, with its realized PnL
        z = by_symbol["Z"]
        assert (z.qty, z.unrealized_pnl) == (0.0, 0.0)
        assert z.realized_pnl == pytest.approx(2.0)
    assert snap.realized_pnl == pytest.approx(17.0)
    assert snap.fees == pytest.approx(2.5)
    assert snap.equity == pytest.approx(100_000.0 + 17.0 - 2.5 - 15.0)
    assert (snap.trades, snap.wins, snap.win_rate) == (1, 1, 1.0)


@pytest.mark.parametrize(
    "scenario",
    ["nothing", "big sharpe", "deep drawdown", "losing trades", "winning trades", "ruin"],
)
def test_confidence_is_between_0_and_1(scenario: str) -> None:
    hour = 3_600 * SEC
    engine = registered(capital=1_000.0, sharpe_window=5)
    engine.quote("X", 100.0, 100.0, T0)
    if scenario in ("big sharpe", "deep drawdown", "ruin"):
        engine.fill("algo", "X", 5.0, 100.0, 0.0, T0)
        path = {
            "big sharpe": [101.0, 102.5, 103.0, 104.9, 106.0, 107.0],
            "deep drawdown": [95.0, 80.0, 70.0, 60.0, 50.0, 49.0],
            "ruin": [50.0, 10.0, 1.0, 0.5, 0.25, 0.1],
        }[scenario]
        for k, price in enumerate(path, start=1):
            engine.mark("X", price, T0 + k * hour)
    for k in range(5 if scenario.endswith("trades") else 0):
        exit_price = 99.0 if scenario == "losing trades" else 101.0
        engine.fill("algo", "Y", 1.0, 100.0, 0.1, T0 + k)
        engine.fill("algo", "Y", -1.0, exit_price, 0.1, T0 + k)
    snap = engine.snapshot("algo")
    assert 0.0 <= snap.confidence <= 1.0
    if scenario == "nothing":
        assert snap.confidence == pytest.approx(0.3)
    if scenario == "big sharpe":
        assert snap.sharpe is not None and snap.sharpe > 2
        assert snap.confidence == pytest.approx(0.4 + 0.3 * max(0.0, 1 - snap.drawdown / 0.1))
    if scenario == "winning trades":
        assert (snap.trades, snap.wins) == (5, 5)
        assert snap.confidence == pytest.approx(0.3 + 0.3 * max(0.0, 1 - snap.drawdown / 0.1))
    if scenario in ("deep drawdown", "ruin"):
        assert snap.drawdown > 0.1
        assert snap.confidence == pytest.approx(0.4 * min(1.0, max(0.0, (snap.sharpe or 0) / 2)))


def test_stage_pnl_and_set_capital() -> None:
    engine = registered(capital=10_000.0)
    engine.quote("X", 100.0, 100.0, T0)
    engine.fill("algo", "X", 10.0, 100.0, 0.0, T0)
    engine.mark("X", 110.0, T0 + 1)  # +100
    engine.mark_stage("algo")
    engine.mark("X", 105.0, T0 + 2)  # -50 since the stage mark
    snap = engine.snapshot("algo")
    assert (snap.stage_pnl, snap.daily_pnl, snap.equity) == (-50.0, 50.0, 10_050.0)
    assert snap.peak_equity == 10_100.0
    # a capital change is a cash flow: PnLs and the drawdown in currency do not move
    assert engine.set_capital("algo", 20_000.0, T0 + 3) is None
    snap = engine.snapshot("algo")
    assert (snap.capital, snap.equity, snap.peak_equity) == (20_000.0, 20_050.0, 20_100.0)
    assert (snap.stage_pnl, snap.daily_pnl) == (-50.0, 50.0)
    assert snap.drawdown == pytest.approx(50.0 / 20_100.0)


def test_staleness_clocks() -> None:
    engine = registered()
    assert engine.last_quote_ts("X") is None
    engine.quote("X", 1.0, 2.0, T0)
    engine.fill("algo", "X", 1.0, 2.0, 0.0, T0 + 10)
    engine.order_submitted("algo", T0 + 20)
    engine.quote("Y", 1.0, 2.0, T0 + 30)
    snap = engine.snapshot("algo")
    assert engine.last_quote_ts("X") == T0 and engine.last_quote_ts("Y") == T0 + 30
    assert (snap.last_fill_ts, snap.last_order_ts, snap.last_event_ts) == (
        T0 + 10,
        T0 + 20,
        T0 + 20,
    )
    assert engine.now == snap.ts == T0 + 30
    engine.advance(T0 + DAY)
    assert engine.now == T0 + DAY
    assert engine.snapshot("algo").last_event_ts == T0 + 20


# --------------------------------------------------------------------------------------------------
# Breaches


def test_nothing_tripped_returns_none() -> None:
    engine = registered(
        max_daily_loss=0.5, max_drawdown=0.5, max_error_rate=0.9, max_latency_ns=10**9
    )
    assert engine.quote("X", 100.0, 100.0, T0) is None
    assert engine.mark("X", 100.0, T0) is None
    assert engine.fill("algo", "X", 1.0, 100.0, 0.1, T0) is None
    assert engine.order_submitted("algo", T0) is None
    assert engine.order_acked("algo", 1_000, T0) is None
    assert engine.order_rejected("algo", T0) is None
    assert engine.order_cancelled("algo", T0) is None
    assert engine.set_capital("algo", 20_000.0, T0) is None
    assert engine.mark_stage("algo") is None  # type: ignore[func-returns-value]
    assert engine.reset_breaches("algo") is None  # type: ignore[func-returns-value]
    assert engine.advance(T0 + 1) is None  # type: ignore[func-returns-value]
    assert engine.snapshot("algo").breached == []


def test_breach_is_returned_once_then_latched_until_reset() -> None:
    engine = registered(capital=1_000.0, max_drawdown=0.05)
    engine.fill("algo", "X", 10.0, 100.0, 0.0, T0)
    assert engine.mark("X", 96.0, T0 + 1) is None  # drawdown 4 %
    got = engine.mark("X", 94.0, T0 + 2)  # 6 %
    assert got is not None and len(got) == 1
    b = got[0]
    assert isinstance(b, Breach)
    assert (b.algo_id, b.kind, b.ts) == ("algo", "drawdown", T0 + 2)
    assert b.value == pytest.approx(0.06) and b.threshold == 0.05
    assert engine.mark("X", 90.0, T0 + 3) is None  # still breaching: latched, silent
    assert engine.mark("X", 99.0, T0 + 4) is None  # recovered: still latched
    assert engine.snapshot("algo").breached == ["drawdown"]
    engine.reset_breaches("algo")
    assert engine.snapshot("algo").breached == []
    assert engine.mark("X", 98.0, T0 + 5) is None  # 2 %
    again = engine.mark("X", 93.0, T0 + 6)  # 7 %: trips again
    assert again is not None and [(x.kind, x.ts) for x in again] == [("drawdown", T0 + 6)]


def test_consecutive_evaluations_debounce() -> None:
    engine = registered(capital=1_000.0, max_drawdown=0.05, drawdown_consecutive=3)
    engine.fill("algo", "X", 10.0, 100.0, 0.0, T0)
    assert engine.mark("X", 90.0, T0 + 1) is None  # 1st breaching evaluation
    assert engine.mark("X", 90.0, T0 + 2) is None  # 2nd
    assert engine.mark("X", 99.0, T0 + 3) is None  # recovered: the count restarts
    assert engine.mark("X", 90.0, T0 + 4) is None  # 1
    assert engine.mark("X", 91.0, T0 + 5) is None  # 2
    got = engine.mark("X", 92.0, T0 + 6)  # 3: trips
    assert got is not None and [(b.kind, b.ts) for b in got] == [("drawdown", T0 + 6)]
    assert engine.snapshot("algo").breached == ["drawdown"]


def test_daily_loss_uses_the_session_start() -> None:
    offset = 8 * 3_600 * SEC  # sessions start at 08:00 UTC
    engine = registered(capital=1_000.0, max_daily_loss=0.05, session_offset_ns=offset)
    start = T0 + offset - 10 * SEC  # 10 s before a session boundary
    engine.fill("algo", "X", 10.0, 100.0, 0.0, start)
    assert engine.mark("X", 96.0, start + 1) is None  # -40: daily PnL -4 % of C
    engine.advance(start + 20 * SEC)  # a new session starts at equity 960
    snap = engine.snapshot("algo")
    assert (snap.session_start_equity, snap.daily_pnl) == (960.0, 0.0)
    assert engine.mark("X", 92.0, start + 21 * SEC) is None  # -40 today: within 5 % of C
    got = engine.mark("X", 90.5, start + 22 * SEC)  # -55 today
    assert got is not None and [b.kind for b in got] == ["daily_loss"]
    assert got[0].value == pytest.approx(-55.0) and got[0].threshold == pytest.approx(-50.0)


def test_error_rate_limit_needs_a_minimum_of_orders() -> None:
    engine = registered(max_error_rate=0.2, error_min_orders=10)
    for i in range(9):
        assert engine.order_submitted("algo", T0 + i) is None
    for i in range(3):  # 3/9 > 20 %, but only 9 submits in the window
        assert engine.order_rejected("algo", T0 + 10 + i) is None
    got = engine.order_submitted("algo", T0 + 20)  # 10 submits, 3 rejects: 30 %
    assert got is not None and [(b.kind, b.ts) for b in got] == [("error_rate", T0 + 20)]
    assert got[0].value == pytest.approx(0.3)
    snap = engine.snapshot("algo")
    assert (snap.orders_in_window, snap.rejects_in_window) == (10, 3)
    assert snap.error_rate == pytest.approx(0.3)
    # the window slides: a minute later nothing is left in it
    engine.advance(T0 + 61 * SEC)
    snap = engine.snapshot("algo")
    assert (snap.orders_in_window, snap.rejects_in_window, snap.error_rate) == (0, 0, None)
    assert snap.orders_submitted_total == 10 and snap.orders_rejected_total == 3


def test_latency_limit_needs_a_minimum_of_samples() -> None:
    engine = registered(max_latency_ns=1_000_000, latency_min_samples=5)
    for i in range(4):
        assert engine.order_acked("algo", 5_000_000, T0 + i) is None
    got = engine.order_acked("algo", 100, T0 + 4)  # p99 of 5 samples is 5 ms > 1 ms
    assert got is not None and [(b.kind, b.ts) for b in got] == [("latency", T0 + 4)]
    snap = engine.snapshot("algo")
    assert snap.acks_in_window == 5
    # (how close the reported quantiles are: test_reference_properties.py)
    assert snap.latency_p99_ns is not None and snap.latency_p50_ns is not None
    assert snap.latency_p99_ns >= snap.latency_p50_ns > 1_000_000


def test_breaches_of_several_algorithms_in_one_quote() -> None:
    engine = Engine()
    engine.register(AlgoConfig("a", "1", 1_000.0, max_drawdown=0.05))
    engine.register(AlgoConfig("b", "1", 1_000.0, max_drawdown=0.05, max_daily_loss=0.01))
    engine.register(AlgoConfig("c", "1", 1_000.0, max_drawdown=0.05))
    engine.quote("X", 100.0, 100.0, T0)
    for algo_id in ("a", "b"):
        engine.fill(algo_id, "X", 10.0, 100.0, 0.0, T0)
    engine.fill("c", "X", -10.0, 100.0, 0.0, T0)  # short: gains when X falls
    got = engine.quote("X", 90.0, 90.0, T0 + 1)
    assert got is not None
    assert sorted((b.algo_id, b.kind) for b in got) == [
        ("a", "drawdown"),
        ("b", "daily_loss"),
        ("b", "drawdown"),
    ]
