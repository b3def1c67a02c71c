"""Per-event cost of ``rampart._core.Engine`` through Python, against the plain-Python reference.

Each benchmark feeds ``n`` events per round (built untimed in the round's setup) and reports the
cost per event; the core and the reference (``tests/reference.py``) get the same event sequences,
built by the same functions, on engines registered with the same configuration. Each reference
benchmark also runs a fresh core engine on the same workload, alternating round by round, so the
ratio is taken between rounds milliseconds apart. The summary at the end of the run
(``benches/conftest.py``) prints the per-event costs and the ratios.

Scenario (mirrors ``rust/rampart-core/benches/engine.rs``): algorithms with capital 1e6 and all
four limits configured, each holding 10 ES bought at 100; quotes 1 µs apart re-mark the position;
fills alternate -1 / +1 lots. Order events are 1 ms apart (1k/s) with 1 s error and latency
windows, warmed up so that the windows are in steady state (about 333 acks in the latency window).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import pytest
from reference import ReferenceEngine

from rampart._core import AlgoConfig, Engine, InvalidEventError

if TYPE_CHECKING:
    from conftest import PerEvent

T0 = 1_764_028_800_000_000_000  # 2025-11-25 00:00:00 UTC
STEP = 1_000  # 1 µs between market-data and fill events
ORDER_STEP = 1_000_000  # 1 ms between order events
MIXED_STEP = 100_000  # 100 µs between the events of the mixed JSON stream
WINDOW = 1_000_000_000  # error-rate and latency windows: 1 s
LATENCIES = [350_000, 420_000, 510_000, 480_000, 640_000, 800_000, 1_200_000, 390_000]

N = 10_000  # events per round for the per-event loops
CORE_ROUNDS = 150  # ~2 ms each: many short rounds, so the median shrugs off a noisy neighbour
REF_ROUNDS = 20  # ~50-150 ms each
N_FANOUT = 500  # quotes per round with 100 holders (the reference needs ~100x longer per quote)

AnyEngine: TypeAlias = Engine | ReferenceEngine


def make_config(algo_id: str) -> AlgoConfig:
    return AlgoConfig(
        algo_id,
        "v1",
        1_000_000.0,
        max_daily_loss=0.5,
        max_drawdown=0.5,
        max_error_rate=0.9,
        max_latency_ns=1_000_000_000,
        error_window_ns=WINDOW,
        latency_window_ns=WINDOW,
    )


def make_engine(cls: type[AnyEngine], algos: int = 1) -> Any:
    """An engine with ``algos`` algorithms, each holding 10 ES at 100, ES quoted at 100."""
    engine = cls()
    engine.quote("ES", 99.99, 100.01, T0)
    for i in range(algos):
        engine.register(make_config(f"algo-{i}"))
        engine.fill(f"algo-{i}", "ES", 10.0, 100.0, 0.1, T0)
    return engine


class Clock:
    """Event times for successive rounds (each engine has its own)."""

    def __init__(self, t: int = T0) -> None:
        self.t = t

    def take(self, n: int, step: int) -> list[int]:
        ts = list(range(self.t + step, self.t + step * (n + 1), step))
        self.t = ts[-1]
        return ts


ENGINES = [pytest.param(Engine, id="core"), pytest.param(ReferenceEngine, id="ref")]


def check_no_breach(engine: Any, algos: int = 1) -> None:
    """The scenario must not trip a limit (a tripped limit would change the code path measured)."""
    for i in range(algos):
        assert engine.snapshot(f"algo-{i}").breached == []


# ----------------------------------------------------------------------------- event builders

PRICES = [round(100.0 + (i % 7) * 0.01, 2) for i in range(N)]
BIDS = [round(p - 0.01, 2) for p in PRICES]
ASKS = [round(p + 0.01, 2) for p in PRICES]
SYMBOLS = ["ES"] * N


def quote_columns(clock: Clock, n: int) -> tuple[list[str], list[float], list[float], list[int]]:
    return SYMBOLS[:n], BIDS[:n], ASKS[:n], clock.take(n, STEP)


def run_quotes(
    quote: Callable[[str, float, float, int], object],
    symbols: list[str],
    bids: list[float],
    asks: list[float],
    ts: list[int],
) -> None:
    for s, b, a, t in zip(symbols, bids, asks, ts, strict=True):
        quote(s, b, a, t)


SUBMITTED, ACKED, CANCELLED = 0, 1, 2
ORDER_KINDS = [SUBMITTED, ACKED, CANCELLED] * (N // 3 + 1)
ORDER_LATENCIES = [LATENCIES[i % len(LATENCIES)] for i in range(N)]


def order_columns(clock: Clock, n: int) -> tuple[list[int], list[int], list[int]]:
    """submitted, acked (varying latency), cancelled, ... ``ORDER_STEP`` apart: (kind, latency, ts).

    Columns and an if/elif dispatch, as a consumer would write it. (A prebuilt list of
    (bound method, args) pairs got ~2x slower over a few hundred rounds while direct calls on the
    same engine stayed flat: an interpreter effect that would have been charged to the engine.)
    """
    return ORDER_KINDS[:n], ORDER_LATENCIES[:n], clock.take(n, ORDER_STEP)


def run_orders(engine: Any, kinds: list[int], latencies: list[int], ts: list[int]) -> None:
    sub, ack, cancel = engine.order_submitted, engine.order_acked, engine.order_cancelled
    for k, lat, t in zip(kinds, latencies, ts, strict=True):
        if k == SUBMITTED:
            sub("algo-0", t)
        elif k == ACKED:
            ack("algo-0", lat, t)
        else:
            cancel("algo-0", t)


def quote_json(clock: Clock, n: int) -> list[bytes]:
    return [
        b'{"type":"quote","symbol":"ES","bid":%r,"ask":%r,"ts":%d}' % (b, a, t)
        for b, a, t in zip(BIDS[:n], ASKS[:n], clock.take(n, STEP), strict=True)
    ]


def mixed_json(clock: Clock, n: int) -> list[bytes]:
    """Per 10 events: 6 quotes, 1 fill (alternating sell/buy 1 lot), submitted, acked, cancelled."""
    out: list[bytes] = []
    for i, t in enumerate(clock.take(n, MIXED_STEP)):
        k = i % 10
        if k < 6:
            out.append(
                b'{"type":"quote","symbol":"ES","bid":%r,"ask":%r,"ts":%d}'
                % (BIDS[i % N], ASKS[i % N], t)
            )
        elif k == 6:
            side = b"sell" if (i // 10) % 2 == 0 else b"buy"
            out.append(
                b'{"type":"fill","algo":"algo-0","symbol":"ES","side":"%s","qty":1,'
                b'"price":%r,"fee":0.01,"ts":%d}' % (side, PRICES[i % N], t)
            )
        elif k == 7:
            out.append(b'{"type":"order","algo":"algo-0","event":"submitted","ts":%d}' % t)
        elif k == 8:
            out.append(
                b'{"type":"order","algo":"algo-0","event":"acked","latency_ns":%d,"ts":%d}'
                % (LATENCIES[i % len(LATENCIES)], t)
            )
        else:
            out.append(b'{"type":"order","algo":"algo-0","event":"cancelled","ts":%d}' % t)
    return out


def ref_ingest(engine: ReferenceEngine, messages: list[bytes]) -> int:
    """The plain-Python equivalent of ``Engine.ingest_json_batch``: json.loads + dispatch."""
    accepted = 0
    loads = json.loads
    for m in messages:
        try:
            d = loads(m)
            typ = d["type"]
            if typ == "quote":
                engine.quote(d["symbol"], d["bid"], d["ask"], d["ts"])
            elif typ == "fill":
                qty = d["qty"] if d["side"] == "buy" else -d["qty"]
                engine.fill(d["algo"], d["symbol"], qty, d["price"], d.get("fee", 0.0), d["ts"])
            elif typ == "mark":
                engine.mark(d["symbol"], d["price"], d["ts"])
            elif typ == "order":
                ev = d["event"]
                if ev == "submitted":
                    engine.order_submitted(d["algo"], d["ts"])
                elif ev == "acked":
                    engine.order_acked(d["algo"], d["latency_ns"], d["ts"])
                elif ev == "rejected":
                    engine.order_rejected(d["algo"], d["ts"])
                elif ev == "cancelled":
                    engine.order_cancelled(d["algo"], d["ts"])
                else:
                    continue
            else:
                continue
        except (InvalidEventError, KeyError, ValueError):
            continue
        accepted += 1
    return accepted


def ingest_all(engine: Any, messages: list[bytes]) -> int:
    """Apply a JSON batch to either engine; returns the number of accepted events."""
    if isinstance(engine, Engine):
        result = engine.ingest_json_batch(messages)
        assert not result.errors, result.errors[:3]
        return result.accepted
    return ref_ingest(engine, messages)


# ----------------------------------------------------------------------------- floors


def _noop(symbol: str, bid: float, ask: float, ts: int) -> None:
    return None


def test_floor_loop(per_event: PerEvent) -> None:
    """The bare loop over the columns (no call): part of every per-call number below."""
    clock = Clock()

    def run(symbols: list[str], bids: list[float], asks: list[float], ts: list[int]) -> None:
        for _s, _b, _a, _t in zip(symbols, bids, asks, ts, strict=True):
            pass

    per_event(
        "floor.loop",
        "loop over 4 columns, no call",
        run,
        lambda: quote_columns(clock, N),
        n=N,
        rounds=CORE_ROUNDS,
    )


def test_floor_noop_call(per_event: PerEvent) -> None:
    """The loop plus a call of a no-op Python function with the quote's arguments."""
    clock = Clock()
    per_event(
        "floor.noop_call",
        "loop + no-op Python function call (4 args)",
        run_quotes,
        lambda: (_noop, *quote_columns(clock, N)),
        n=N,
        rounds=CORE_ROUNDS,
    )


def test_floor_quote_no_holder(per_event: PerEvent) -> None:
    """``Engine.quote`` of a symbol nobody holds: the binding's cost with almost no core work."""
    engine = Engine()
    clock = Clock()
    per_event(
        "floor.core_quote_no_holder",
        "engine.quote, nobody holds the symbol (call + binding, minimal core work)",
        run_quotes,
        lambda: (engine.quote, *quote_columns(clock, N)),
        n=N,
        rounds=CORE_ROUNDS,
    )


def test_floor_quotes_batch_no_holder(per_event: PerEvent) -> None:
    """``Engine.quotes`` of a symbol nobody holds: column conversion, little core work."""
    engine = Engine()
    clock = Clock()
    per_event(
        "floor.core_quotes_batch_no_holder",
        f"engine.quotes(columns of {N}), nobody holds the symbol",
        engine.quotes,
        lambda: quote_columns(clock, N),
        n=N,
        rounds=CORE_ROUNDS,
    )


# ----------------------------------------------------------------------------- core vs reference


@dataclass(frozen=True)
class Scenario:
    """One workload, run the same way on the core and on the reference.

    ``prepare(cls)`` builds a warmed-up engine and its clock; ``make_args(engine, clock)`` builds
    one round (untimed); ``target(*args)`` processes it. The reference's benchmark is paired round
    by round with a fresh core engine doing the same (see ``PerEvent``).
    """

    core_key: str
    ref_key: str
    core_label: str
    ref_label: str
    target: Callable[..., object]
    make_args: Callable[[Any, Clock], tuple[Any, ...]]
    n: int = N
    core_rounds: int = CORE_ROUNDS
    ref_rounds: int = REF_ROUNDS
    algos: int = 1
    warm: Callable[[Any, Clock], object] | None = None

    def prepare(self, cls: type[AnyEngine]) -> tuple[Any, Clock]:
        engine, clock = make_engine(cls, self.algos), Clock()
        if self.warm is not None:
            self.warm(engine, clock)
        return engine, clock

    def run(self, per_event: PerEvent, cls: type[AnyEngine]) -> Any:
        engine, clock = self.prepare(cls)
        partner = None
        if cls is ReferenceEngine:
            core, core_clock = self.prepare(Engine)
            partner = per_event.partner(
                self.core_key, self.target, lambda: self.make_args(core, core_clock), self.n
            )
        per_event(
            self.core_key if cls is Engine else self.ref_key,
            self.core_label if cls is Engine else self.ref_label,
            self.target,
            lambda: self.make_args(engine, clock),
            n=self.n,
            rounds=self.core_rounds if cls is Engine else self.ref_rounds,
            partner=partner,
        )
        check_no_breach(engine, self.algos)
        return engine


def run_quotes_on(
    engine: Any, symbols: list[str], bids: list[float], asks: list[float], ts: list[int]
) -> None:
    run_quotes(engine.quote, symbols, bids, asks, ts)


FILL_QTYS = [-1.0 if i % 2 == 0 else 1.0 for i in range(N)]
FILL_PRICES = [round(100.0 + (i % 5) * 0.01, 2) for i in range(N)]


def run_fills(engine: Any, qtys: list[float], prices: list[float], ts: list[int]) -> None:
    fill = engine.fill
    for q, p, t in zip(qtys, prices, ts, strict=True):
        fill("algo-0", "ES", q, p, 0.01, t)


def call_quotes(
    engine: Any, symbols: list[str], bids: list[float], asks: list[float], ts: list[int]
) -> None:
    engine.quotes(symbols, bids, asks, ts)


QUOTE = Scenario(
    "core.quote",
    "ref.quote",
    "engine.quote re-marking 1 held position, 4 limits",
    "ReferenceEngine.quote, same events",
    run_quotes_on,
    lambda e, c: (e, *quote_columns(c, N)),
)
FILL = Scenario(
    "core.fill",
    "ref.fill",
    "engine.fill, alternating -1/+1 on a 10-lot position",
    "ReferenceEngine.fill, same events",
    run_fills,
    lambda e, c: (e, FILL_QTYS, FILL_PRICES, c.take(N, STEP)),
)
ORDERS = Scenario(
    "core.orders",
    "ref.orders",
    "order_submitted / order_acked / order_cancelled, 1 ms apart",
    "ReferenceEngine.order_*, same events",
    run_orders,
    lambda e, c: (e, *order_columns(c, N)),
    # 3 s of events: the 1 s windows are full
    warm=lambda e, c: run_orders(e, *order_columns(c, 3_000)),
)
FANOUT = Scenario(
    "core.quote_fanout100",
    "ref.quote_fanout100",
    "engine.quote re-marking 100 algorithms' positions",
    "ReferenceEngine.quote, 100 holders, same events",
    run_quotes_on,
    lambda e, c: (e, *quote_columns(c, N_FANOUT)),
    n=N_FANOUT,
    core_rounds=100,
    ref_rounds=8,
    algos=100,
)
QUOTES_BATCH = Scenario(
    "core.quotes_batch",
    "ref.quotes_batch",
    f"engine.quotes(columns of {N})",
    "ReferenceEngine.quotes, same columns",
    call_quotes,
    lambda e, c: (e, *quote_columns(c, N)),
)
JSON_QUOTES = Scenario(
    "core.json_batch_quotes",
    "ref.json_quotes",
    f"engine.ingest_json_batch({N} quote messages)",
    "json.loads + ReferenceEngine.quote, same messages",
    ingest_all,
    lambda e, c: (e, quote_json(c, N)),
    ref_rounds=REF_ROUNDS // 2,
)
JSON_MIXED = Scenario(
    "core.json_batch_mixed",
    "ref.json_mixed",
    f"engine.ingest_json_batch({N} mixed: 60% quotes, 10% fills, 30% orders)",
    "json.loads + ReferenceEngine, same messages",
    ingest_all,
    lambda e, c: (e, mixed_json(c, N)),
    ref_rounds=REF_ROUNDS // 2,
    # 3 s of events: the 1 s windows are full
    warm=lambda e, c: ingest_all(e, mixed_json(c, 30_000)),
)


@pytest.mark.parametrize("cls", ENGINES)
def test_quote(per_event: PerEvent, cls: type[AnyEngine]) -> None:
    QUOTE.run(per_event, cls)


@pytest.mark.parametrize("cls", ENGINES)
def test_fill(per_event: PerEvent, cls: type[AnyEngine]) -> None:
    FILL.run(per_event, cls)


@pytest.mark.parametrize("cls", ENGINES)
def test_orders(per_event: PerEvent, cls: type[AnyEngine]) -> None:
    engine = ORDERS.run(per_event, cls)
    assert 300 <= engine.snapshot("algo-0").acks_in_window <= 340  # the windows are in use


@pytest.mark.parametrize("cls", ENGINES)
def test_quote_fanout100(per_event: PerEvent, cls: type[AnyEngine]) -> None:
    FANOUT.run(per_event, cls)


def test_ingest_json_per_call(per_event: PerEvent) -> None:
    engine = make_engine(Engine)
    clock = Clock()

    def run(ingest: Callable[[bytes], object], messages: list[bytes]) -> None:
        for m in messages:
            ingest(m)

    per_event(
        "core.ingest_json",
        "engine.ingest_json(bytes) per quote message",
        run,
        lambda: (engine.ingest_json, quote_json(clock, N)),
        n=N,
        rounds=CORE_ROUNDS,
    )
    check_no_breach(engine)


# ----------------------------------------------------------------------------- batches


@pytest.mark.parametrize("cls", ENGINES)
def test_quotes_batch(per_event: PerEvent, cls: type[AnyEngine]) -> None:
    QUOTES_BATCH.run(per_event, cls)


def column_args(engine: Engine, clock: Clock) -> tuple[Any, ...]:
    """One round of quotes as numpy columns, the symbol interned (untimed)."""
    (es,) = engine.intern(["ES"])
    return (
        engine,
        np.full(N, es, dtype=np.uint32),
        np.array(BIDS),
        np.array(ASKS),
        np.array(clock.take(N, STEP), dtype=np.int64),
    )


def call_columns(engine: Engine, ids: Any, bids: Any, asks: Any, ts: Any) -> None:
    engine.quote_columns(ids, bids, asks, ts)


def test_quote_columns(per_event: PerEvent) -> None:
    """``Engine.quote_columns``: numpy columns, the symbol interned (issue 15: >= 3x per call)."""
    engine, clock = make_engine(Engine), Clock()
    per_event(
        "core.quote_columns",
        f"engine.quote_columns(numpy columns of {N}, interned symbol)",
        call_columns,
        lambda: column_args(engine, clock),
        n=N,
        rounds=CORE_ROUNDS,
    )
    check_no_breach(engine)


def test_quote_per_call_paired_with_columns(per_event: PerEvent) -> None:
    """Per-call ``engine.quote``, each round paired with a round of ``quote_columns`` on an
    engine of its own: the columnar ratio, robust to other load."""
    engine, clock = make_engine(Engine), Clock()
    other, other_clock = make_engine(Engine), Clock()
    per_event(
        "core.quote_paired",
        "engine.quote per call, paired round by round with quote_columns",
        run_quotes_on,
        lambda: (engine, *quote_columns(clock, N)),
        n=N,
        rounds=CORE_ROUNDS,
        partner=per_event.partner(
            "core.quote_columns", call_columns, lambda: column_args(other, other_clock), N
        ),
    )
    check_no_breach(engine)
    check_no_breach(other)


@pytest.mark.parametrize("cls", ENGINES)
def test_json_batch_quotes(per_event: PerEvent, cls: type[AnyEngine]) -> None:
    JSON_QUOTES.run(per_event, cls)


@pytest.mark.parametrize("cls", ENGINES)
def test_json_batch_mixed(per_event: PerEvent, cls: type[AnyEngine]) -> None:
    JSON_MIXED.run(per_event, cls)
