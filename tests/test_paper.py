"""The paper venue and its slippage models (docs/paper.md), down to the core's equity."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rampart._core import AlgoConfig, Engine
from rampart.gateway.paper import PaperVenue, VenueEvent
from rampart.gateway.slippage import (
    MIN_SELL_FRACTION,
    FixedBps,
    NoSlippage,
    Side,
    SlippageModel,
    SpreadCrossing,
    SquareRootImpact,
    TopOfBook,
    VolumeShare,
    slippage_model,
)
from rampart.protocol import Fill, OrderEvent, Quote, encoder, hot_event_decoder

T0 = 1_764_028_800_000_000_000  # 2025-11-25 00:00 UTC
BOOK = TopOfBook(bid=99.99, ask=100.01)

ALL_MODELS: list[SlippageModel] = [
    NoSlippage(),
    FixedBps(2.5),
    SpreadCrossing(),
    SpreadCrossing(0.5),
    SquareRootImpact(),
    SquareRootImpact(coefficient=0.7, daily_volume=5_000.0, volatility=0.03),
    VolumeShare(),
]


def fills(events: list[VenueEvent]) -> list[Fill]:
    return [e for e in events if isinstance(e, Fill)]


def kinds(events: list[VenueEvent]) -> list[str]:
    return ["fill" if isinstance(e, Fill) else e.event for e in events]


# --------------------------------------------------------------------------------------------------
# Slippage models


def test_no_slippage_fills_at_the_touch() -> None:
    assert NoSlippage().price("buy", 5, BOOK) == 100.01
    assert NoSlippage().price("sell", 5, BOOK) == 99.99


def test_fixed_bps_moves_the_touch() -> None:
    model = FixedBps(10)
    assert model.price("buy", 1, BOOK) == pytest.approx(100.01 * 1.001, rel=1e-15)
    assert model.price("sell", 1, BOOK) == pytest.approx(99.99 * 0.999, rel=1e-15)
    assert FixedBps(0).price("buy", 1, BOOK) == 100.01


def test_spread_crossing_fraction_of_the_half_spread() -> None:
    assert SpreadCrossing().price("buy", 1, BOOK) == 100.01  # default: exactly the touch
    assert SpreadCrossing().price("sell", 1, BOOK) == 99.99
    assert SpreadCrossing(0).price("buy", 1, BOOK) == pytest.approx(100.0, rel=1e-15)
    assert SpreadCrossing(0).price("sell", 1, BOOK) == pytest.approx(100.0, rel=1e-15)
    assert SpreadCrossing(0.5).price("buy", 1, BOOK) == pytest.approx(100.005, rel=1e-15)
    assert SpreadCrossing(0.5).price("sell", 1, BOOK) == pytest.approx(99.995, rel=1e-15)


def test_square_root_impact_formula() -> None:
    model = SquareRootImpact(coefficient=1.0, daily_volume=1_000_000, volatility=0.02)
    # impact = 1 * 0.02 * sqrt(10_000 / 1_000_000) * mid(100) = 0.2
    assert model.impact(10_000, BOOK) == pytest.approx(0.2, rel=1e-12)
    assert model.price("buy", 10_000, BOOK) == pytest.approx(100.21, rel=1e-12)
    assert model.price("sell", 10_000, BOOK) == pytest.approx(99.79, rel=1e-12)
    # The quote's volume estimate replaces the configured daily volume.
    busy = TopOfBook(bid=99.99, ask=100.01, volume=100_000_000)
    assert model.impact(10_000, busy) == pytest.approx(0.02, rel=1e-12)


def test_square_root_impact_defaults() -> None:
    assert SquareRootImpact() == SquareRootImpact(1.0, 1_000_000.0, 0.02)


def test_volume_share_is_quadratic_in_the_share_of_the_touch() -> None:
    book = TopOfBook(bid=99.99, ask=100.01, bid_size=200, ask_size=100)
    model = VolumeShare(price_impact=0.1)
    assert model.price("buy", 50, book) == pytest.approx(100.01 * (1 + 0.1 * 0.25), rel=1e-12)
    assert model.price("sell", 50, book) == pytest.approx(99.99 * (1 - 0.1 * 0.0625), rel=1e-12)


@pytest.mark.parametrize("model", ALL_MODELS, ids=repr)
def test_zero_quantity_costs_no_impact(model: SlippageModel) -> None:
    spread = isinstance(model, SpreadCrossing)
    buy, sell = model.price("buy", 0, BOOK), model.price("sell", 0, BOOK)
    if spread:
        assert BOOK.bid <= sell <= buy <= BOOK.ask
    elif isinstance(model, FixedBps):
        assert buy > BOOK.ask and sell < BOOK.bid
    else:
        assert (buy, sell) == (BOOK.ask, BOOK.bid)


@pytest.mark.parametrize("size", [None, 0.0])
def test_volume_share_without_displayed_size_fills_at_the_touch(size: float | None) -> None:
    book = TopOfBook(bid=99.99, ask=100.01, bid_size=size, ask_size=size)
    assert VolumeShare().price("buy", 10, book) == 100.01
    assert VolumeShare().price("sell", 10, book) == 99.99


def test_zero_spread_quote() -> None:
    flat = TopOfBook(bid=100.0, ask=100.0)
    for model in ALL_MODELS:
        assert model.price("buy", 1, flat) >= 100.0 >= model.price("sell", 1, flat)


def test_impact_never_prices_a_sell_at_or_below_zero() -> None:
    huge = 1e18
    assert SquareRootImpact().price("sell", huge, BOOK) == BOOK.bid * MIN_SELL_FRACTION
    thin = TopOfBook(bid=99.99, ask=100.01, bid_size=1, ask_size=1)
    assert VolumeShare().price("sell", huge, thin) == thin.bid * MIN_SELL_FRACTION


def test_impact_overflow_is_infinite_never_nan_or_an_exception() -> None:
    dust = TopOfBook(bid=99.99, ask=100.01, bid_size=1e-300, ask_size=1e-300, volume=1e-300)
    for model in (SquareRootImpact(), VolumeShare()):
        assert model.price("buy", 1e10, dust) == math.inf
        assert model.price("sell", 1e10, dust) == dust.bid * MIN_SELL_FRACTION
    for model in (SquareRootImpact(coefficient=0), VolumeShare(price_impact=0)):
        assert model.price("buy", 1e10, dust) == dust.ask


books = st.builds(
    lambda mid, half, bs, as_, vol: TopOfBook(mid - half, mid + half, bs, as_, vol),
    st.floats(1.0, 10_000.0),
    st.floats(0.0, 0.5),
    st.none() | st.floats(0.0, 1e6),
    st.none() | st.floats(0.0, 1e6),
    st.none() | st.floats(0.0, 1e9),
)
quantities = st.floats(0.0, 1e6)


@settings(max_examples=300)
@given(book=books, q1=quantities, q2=quantities, model=st.sampled_from(ALL_MODELS))
def test_prices_are_positive_sided_and_monotone_in_quantity(
    book: TopOfBook, q1: float, q2: float, model: SlippageModel
) -> None:
    small, large = sorted((q1, q2))
    for side in ("buy", "sell"):
        assert model.price(side, small, book) > 0  # not NaN either; inf only for absurd impact
    buy, sell = model.price("buy", small, book), model.price("sell", small, book)
    slack = 1e-12 * book.ask
    if isinstance(model, SpreadCrossing):  # between the mid and the touch
        assert book.mid - slack <= buy <= book.ask
        assert book.bid <= sell <= book.mid + slack
    else:  # at or beyond the touch
        assert buy >= book.ask and sell <= book.bid
    assert model.price("buy", large, book) >= buy
    assert model.price("sell", large, book) <= sell


def test_impact_grows_with_quantity() -> None:
    model = SquareRootImpact()
    prices = [model.price("buy", q, BOOK) for q in (1, 100, 10_000, 1_000_000)]
    assert prices == sorted(prices) and len(set(prices)) == 4


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: FixedBps(-1), "bps"),
        (lambda: FixedBps(10_000), "bps"),
        (lambda: FixedBps(math.nan), "bps"),
        (lambda: SpreadCrossing(1.5), "fraction"),
        (lambda: SpreadCrossing(-0.1), "fraction"),
        (lambda: SquareRootImpact(coefficient=-1), "coefficient"),
        (lambda: SquareRootImpact(daily_volume=0), "daily_volume"),
        (lambda: SquareRootImpact(volatility=math.inf), "volatility"),
        (lambda: VolumeShare(price_impact=-0.1), "price_impact"),
        (lambda: TopOfBook(101, 100), "bid"),
        (lambda: TopOfBook(0, 100), "bid"),
        (lambda: TopOfBook(math.nan, 100), "bid"),
        (lambda: TopOfBook(99, 100, ask_size=-1), "ask_size"),
        (lambda: TopOfBook(99, 100, volume=math.inf), "volume"),
    ],
)
def test_invalid_parameters_are_refused(make: object, message: str) -> None:
    assert callable(make)
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("qty", [-1.0, math.nan, math.inf])
def test_models_refuse_bad_quantities(qty: float) -> None:
    for model in ALL_MODELS:
        with pytest.raises(ValueError, match="quantity"):
            model.price("buy", qty, BOOK)


def test_factory_maps_the_seed_names() -> None:
    assert slippage_model("None") == NoSlippage()
    assert slippage_model("FixedBps", bps=3) == FixedBps(3)
    assert slippage_model("SpreadCrossing") == SpreadCrossing(1.0)
    assert slippage_model("SpreadCrossing", fraction=0.5) == SpreadCrossing(0.5)
    assert slippage_model("RealisticSlippage") == SquareRootImpact()
    assert slippage_model("RealisticSlippage", coefficient=0.1) == SquareRootImpact(0.1)
    assert slippage_model("VolumeShare", price_impact=0.2) == VolumeShare(0.2)


def test_factory_errors_name_the_valid_choices() -> None:
    with pytest.raises(ValueError, match="'None', 'FixedBps', 'SpreadCrossing', 'Realistic"):
        slippage_model("Realistic")
    with pytest.raises(ValueError, match="takes coefficient, daily_volume, volatility"):
        slippage_model("RealisticSlippage", impact=0.1)
    with pytest.raises(ValueError, match="takes no parameters"):
        slippage_model("None", bps=1)
    with pytest.raises(TypeError):
        slippage_model("FixedBps")  # bps is required


# --------------------------------------------------------------------------------------------------
# The venue


def venue(latency_ns: int = 0, rate: float = 0.0, model: SlippageModel | None = None) -> PaperVenue:
    return PaperVenue(model or NoSlippage(), rate, latency_ns)


def test_immediate_fill_with_commission() -> None:
    v = venue(rate=0.001)
    assert v.on_quote("X", 100.0, 100.5, T0) == []
    events = v.submit("a", "X", "buy", 2, T0 + 5, "o-1")
    assert events == [
        OrderEvent(algo="a", event="submitted", ts=T0 + 5, order_id="o-1"),
        OrderEvent(algo="a", event="acked", ts=T0 + 5, latency_ns=0, order_id="o-1"),
        Fill(
            algo="a",
            symbol="X",
            side="buy",
            qty=2,
            price=100.5,
            fee=0.001 * 2 * 100.5,
            ts=T0 + 5,
            order_id="o-1",
            paper=True,
        ),
    ]
    assert v.positions("a") == {"X": 2}
    assert v.cash("a") == -201.0
    assert v.fees("a") == pytest.approx(0.201, rel=1e-15)
    sold = fills(v.submit("a", "X", "sell", 2, T0 + 6, "o-2"))
    assert sold[0].price == 100.0 and sold[0].fee == pytest.approx(0.2, rel=1e-15)
    assert v.positions("a") == {} and v.cash("a") == -1.0


def test_fill_message_on_the_wire() -> None:
    v = venue(rate=0.001)
    v.on_quote("X", 100.0, 100.5, T0)
    fill = fills(v.submit("a", "X", "buy", 2, T0, "o-1"))[0]
    wire = msgspec.json.decode(encoder.encode(fill))
    assert wire["type"] == "fill" and wire["paper"] is True and wire["order_id"] == "o-1"
    assert hot_event_decoder.decode(encoder.encode(fill)) == fill


def test_latency_fills_at_the_first_quote_at_or_after_arrival() -> None:
    v = venue(latency_ns=1_000)
    v.on_quote("X", 100.0, 100.5, T0)
    events = v.submit("a", "X", "buy", 1, T0 + 10, "o-1")
    assert events[1] == OrderEvent(
        algo="a", event="acked", ts=T0 + 1_010, latency_ns=1_000, order_id="o-1"
    )
    assert kinds(events) == ["submitted", "acked"]
    assert v.open_orders("a") == ["o-1"]
    assert v.on_quote("X", 101.0, 101.5, T0 + 1_009) == []  # before arrival
    assert v.on_quote("Y", 50.0, 50.5, T0 + 1_010) == []  # another symbol
    assert v.positions("a") == {}
    (fill,) = v.on_quote("X", 102.0, 102.5, T0 + 1_010)  # exactly at arrival
    assert isinstance(fill, Fill)
    assert (fill.price, fill.ts, fill.order_id) == (102.5, T0 + 1_010, "o-1")
    assert v.on_quote("X", 103.0, 103.5, T0 + 2_000) == []  # filled once
    assert v.positions("a") == {"X": 1} and v.open_orders("a") == []


def test_latency_quote_after_arrival_fills_at_that_quote() -> None:
    v = venue(latency_ns=1_000)
    v.on_quote("X", 100.0, 100.5, T0)
    v.submit("a", "X", "sell", 3, T0, "o-1")
    (fill,) = fills(v.on_quote("X", 99.0, 99.5, T0 + 5_000))
    assert (fill.price, fill.ts) == (99.0, T0 + 5_000)


def test_pending_orders_execute_in_arrival_order() -> None:
    rng = random.Random(3)
    v = PaperVenue(NoSlippage(), 0.0, 100, latency_jitter_ns=1_000, rng=rng)
    v.on_quote("X", 100.0, 100.5, T0)
    acks: dict[str, int] = {}
    for i in range(20):
        for event in v.submit("a", "X", "buy", 1, T0, f"o-{i}"):
            if isinstance(event, OrderEvent) and event.event == "acked":
                assert event.latency_ns is not None and 100 <= event.latency_ns <= 1_100
                acks[f"o-{i}"] = event.ts
    out = v.on_quote("X", 100.0, 100.5, T0 + 2_000)
    order_ids = [f.order_id for f in fills(out)]
    assert order_ids == sorted(acks, key=lambda oid: (acks[oid], int(oid[2:])))


def test_jitter_is_deterministic_given_the_seed() -> None:
    def latencies(seed: int) -> list[int | None]:
        v = PaperVenue(NoSlippage(), 0.0, 0, latency_jitter_ns=10_000, rng=random.Random(seed))
        v.on_quote("X", 100.0, 100.5, T0)
        return [
            e.latency_ns
            for i in range(50)
            for e in v.submit("a", "X", "buy", 1, T0, f"o-{i}")
            if isinstance(e, OrderEvent) and e.event == "acked"
        ]

    assert latencies(7) == latencies(7)
    assert latencies(7) != latencies(8)


@dataclass(frozen=True)
class Step:
    side: Side
    qty: float
    position: float  # expected after the fill (0 = flat)


def test_positions_through_partial_closes_and_flips() -> None:
    v = venue()
    v.on_quote("X", 100.0, 100.0, T0)
    steps = [
        Step("buy", 10, 10),
        Step("sell", 4, 6),  # partial close
        Step("sell", 10, -4),  # flip
        Step("sell", 1, -5),  # add short
        Step("buy", 5, 0),  # close
        Step("buy", 0.1, 0.1),
        Step("buy", 0.2, 0.30000000000000004),
        Step("sell", 0.3, 0),  # float residue is flat, as in the core
    ]
    for i, step in enumerate(steps):
        v.submit("a", "X", step.side, step.qty, T0 + i, f"o-{i}")
        assert v.positions("a") == ({"X": step.position} if step.position else {})
    assert v.cash("a") == pytest.approx(0.0, abs=1e-9)  # one price: round trips net to zero


def test_algorithms_have_separate_books() -> None:
    v = venue()
    v.on_quote("X", 100.0, 100.0, T0)
    v.submit("a", "X", "buy", 1, T0, "o-1")
    v.submit("b", "X", "sell", 2, T0, "o-1")  # ids are per algorithm
    assert v.positions("a") == {"X": 1} and v.positions("b") == {"X": -2}
    assert v.positions("c") == {} and v.cash("c") == 0.0 and v.fees("c") == 0.0


def test_cancel_all_removes_pending_orders() -> None:
    v = venue(latency_ns=1_000)
    v.on_quote("X", 100.0, 100.5, T0)
    v.submit("a", "X", "buy", 1, T0, "o-1")
    v.submit("a", "X", "sell", 2, T0 + 1, "o-2")
    v.submit("b", "X", "buy", 3, T0 + 2, "o-3")
    assert v.cancel_all("a", T0 + 3) == [
        OrderEvent(algo="a", event="cancelled", ts=T0 + 3, order_id="o-1"),
        OrderEvent(algo="a", event="cancelled", ts=T0 + 3, order_id="o-2"),
    ]
    assert v.open_orders("a") == [] and v.open_orders("b") == ["o-3"]
    assert [f.algo for f in fills(v.on_quote("X", 100.0, 100.5, T0 + 5_000))] == ["b"]
    assert v.positions("a") == {}
    assert v.cancel_all("a", T0 + 6_000) == []


def test_flatten_closes_every_position_at_once() -> None:
    v = venue(rate=0.001)
    v.on_quote("X", 100.0, 100.5, T0)
    v.on_quote("Y", 20.0, 20.1, T0)
    v.submit("a", "X", "buy", 3, T0, "o-1")
    v.submit("a", "Y", "sell", 0.7, T0, "o-2")
    events = v.flatten("a", T0 + 1)
    assert kinds(events) == ["submitted", "acked", "fill"] * 2
    closing = fills(events)
    assert [(f.symbol, f.side, f.qty) for f in closing] == [("X", "sell", 3), ("Y", "buy", 0.7)]
    assert [f.order_id for f in closing] == ["paper-flatten-1", "paper-flatten-2"]
    assert v.positions("a") == {}
    assert v.flatten("a", T0 + 2) == []


def test_flatten_with_latency_cancels_then_closes_at_the_next_quote() -> None:
    v = venue(latency_ns=1_000)
    v.on_quote("X", 100.0, 100.5, T0)
    v.submit("a", "X", "buy", 3, T0, "o-1")
    v.on_quote("X", 100.0, 100.5, T0 + 1_000)
    v.submit("a", "X", "buy", 5, T0 + 1_001, "o-2")  # still pending at flatten
    events = v.flatten("a", T0 + 1_002)
    assert kinds(events) == ["cancelled", "submitted", "acked"]
    assert v.positions("a") == {"X": 3}
    v.on_quote("X", 100.0, 100.5, T0 + 2_002)
    assert v.positions("a") == {}


@pytest.mark.parametrize(
    ("qty", "reason"),
    [
        (0.0, "bad quantity 0.0"),
        (-1.0, "bad quantity -1.0"),
        (math.nan, "bad quantity nan"),
        (math.inf, "bad quantity inf"),
    ],
)
def test_bad_quantities_are_rejected(qty: float, reason: str) -> None:
    v = venue()
    v.on_quote("X", 100.0, 100.5, T0)
    events = v.submit("a", "X", "buy", qty, T0, "o-1")
    assert kinds(events) == ["submitted", "rejected"]
    assert isinstance(events[1], OrderEvent) and events[1].reason is not None
    assert events[1].reason.startswith(reason)
    assert (events[1].ts, events[1].order_id) == (T0, "o-1")
    assert v.positions("a") == {} and v.open_orders("a") == []


def rejection(events: list[VenueEvent]) -> str:
    assert kinds(events) == ["submitted", "rejected"]
    last = events[-1]
    assert isinstance(last, OrderEvent) and last.reason is not None
    return last.reason


def test_rejects_name_their_reason() -> None:
    v = venue(latency_ns=10)
    assert rejection(v.submit("a", "X", "buy", 1, T0, "o-1")) == "no quote for X"
    v.on_quote("X", 100.0, 100.5, T0)
    bad_side = v.submit("a", "X", "hold", 1, T0, "o-1")  # type: ignore[arg-type]
    assert rejection(bad_side).startswith("bad side 'hold'")
    assert rejection(v.submit("a", "X", "buy", 1, T0, "o-1", limit_price=-1.0)).startswith(
        "bad limit price -1.0"
    )
    v.submit("a", "X", "buy", 1, T0, "o-1")
    assert rejection(v.submit("a", "X", "buy", 1, T0, "o-1")).startswith("duplicate order id")
    assert v.open_orders("a") == ["o-1"]


def test_limit_orders_must_be_marketable() -> None:
    v = venue(model=FixedBps(10))
    v.on_quote("X", 100.0, 100.5, T0)
    reason = rejection(v.submit("a", "X", "buy", 1, T0, "o-1", limit_price=100.5))
    assert reason.startswith("not marketable: buy limit 100.5")  # the ask plus 10 bps is above
    assert rejection(v.submit("a", "X", "sell", 1, T0, "o-2", limit_price=100.0)).startswith(
        "not marketable: sell limit 100.0"
    )
    (fill,) = fills(v.submit("a", "X", "buy", 1, T0, "o-3", limit_price=101.0))
    assert fill.price == pytest.approx(100.5 * 1.001, rel=1e-15) and fill.price <= 101.0
    assert v.positions("a") == {"X": 1}


def test_limit_checked_again_at_arrival() -> None:
    v = venue(latency_ns=1_000)
    v.on_quote("X", 100.0, 100.5, T0)
    assert kinds(v.submit("a", "X", "buy", 1, T0, "o-1", limit_price=100.5)) == [
        "submitted",
        "acked",
    ]
    assert kinds(v.submit("a", "X", "buy", 1, T0, "o-2", limit_price=101.0)) == [
        "submitted",
        "acked",
    ]
    events = v.on_quote("X", 100.5, 100.75, T0 + 1_000)  # the market moved away from o-1
    assert kinds(events) == ["rejected", "fill"]
    assert isinstance(events[0], OrderEvent) and events[0].order_id == "o-1"
    assert events[0].reason is not None and events[0].reason.startswith("not marketable")
    assert events[0].ts == T0 + 1_000
    assert v.positions("a") == {"X": 1} and v.open_orders("a") == []


def test_an_unpriceable_order_is_rejected() -> None:
    v = venue(model=VolumeShare())
    v.on_quote("X", 100.0, 100.5, T0, ask_size=1e-300)
    reason = rejection(v.submit("a", "X", "buy", 1e10, T0, "o-1"))
    assert reason == "no execution price: VolumeShare(price_impact=0.1) gives inf"
    assert v.positions("a") == {}


def test_bad_quote_raises_and_changes_nothing() -> None:
    v = venue(latency_ns=1_000)
    v.on_quote("X", 100.0, 100.5, T0)
    v.submit("a", "X", "buy", 1, T0, "o-1")
    with pytest.raises(ValueError, match="bad quote"):
        v.on_quote("X", 101.0, 100.0, T0 + 2_000)
    assert v.quote("X") == TopOfBook(100.0, 100.5) and v.open_orders("a") == ["o-1"]


def test_venue_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="commission_rate"):
        PaperVenue(NoSlippage(), -0.001)
    with pytest.raises(ValueError, match="commission_rate"):
        PaperVenue(NoSlippage(), math.nan)
    with pytest.raises(ValueError, match="latency_ns"):
        PaperVenue(NoSlippage(), 0.0, -1)
    with pytest.raises(ValueError, match="rng"):
        PaperVenue(NoSlippage(), 0.0, latency_jitter_ns=5)


# --------------------------------------------------------------------------------------------------
# End to end: the venue's messages through the Rust core


ALGOS = ("a", "b")
SYMBOLS = ("X", "Y")
CAPITAL = 1_000_000.0


def quote_action(symbol: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[object, ...]]:
    return st.tuples(
        st.just("quote"),
        symbol,
        st.floats(50.0, 150.0),  # mid
        st.floats(0.0, 0.005),  # half spread, fraction of the mid
        st.none() | st.floats(1.0, 500.0),  # displayed size
    )


quote_actions = quote_action(st.sampled_from(SYMBOLS))
opening_quotes = st.tuples(*(quote_action(st.just(symbol)) for symbol in SYMBOLS))
order_actions = st.tuples(
    st.just("order"),
    st.sampled_from(ALGOS),
    st.sampled_from(SYMBOLS),
    st.sampled_from(("buy", "sell")),
    st.sampled_from((0.1, 0.2, 0.3, 1.0, 2.5, 7.0, 40.0)),
    st.none() | st.floats(-0.01, 0.01),  # limit offset from the mid
)
algo_actions = st.tuples(st.sampled_from(("cancel_all", "flatten")), st.sampled_from(ALGOS))
actions = st.lists(
    st.tuples(
        st.sampled_from((1, 400_000, 1_000_000, 2_500_000)) | st.integers(1, 3_000_000),  # dt
        # Weighted: 3 quotes and 5 orders to each cancel_all or flatten.
        st.integers(0, 8).flatmap(
            lambda k: quote_actions if k < 3 else order_actions if k < 8 else algo_actions
        ),
    ),
    min_size=10,
    max_size=80,
)


@settings(max_examples=150)
@given(
    model=st.sampled_from(ALL_MODELS),
    rate=st.sampled_from((0.0, 0.0002, 0.001)),
    latency=st.sampled_from((0, 500_000, 2_000_000)),
    opening=opening_quotes,
    steps=actions,
)
def test_core_equity_matches_the_venue_books(
    model: SlippageModel,
    rate: float,
    latency: int,
    opening: tuple[tuple[object, ...], ...],
    steps: list[tuple[int, tuple[object, ...]]],
) -> None:
    v = PaperVenue(model, rate, latency)
    engine = Engine()
    for algo in ALGOS:
        engine.register(AlgoConfig(algo, "1.0.0", CAPITAL))
    mids: dict[str, float] = {}
    published: list[VenueEvent] = []
    ts = T0
    for n, (dt, action) in enumerate([(1, q) for q in opening] + steps):
        ts += dt
        match action:
            case ("quote", str(symbol), float(mid), float(half), size):
                bid, ask = mid * (1 - half), mid * (1 + half)
                engine.ingest_json(encoder.encode(Quote(symbol=symbol, bid=bid, ask=ask, ts=ts)))
                mids[symbol] = (bid + ask) / 2
                assert size is None or isinstance(size, float)
                events = v.on_quote(symbol, bid, ask, ts, bid_size=size, ask_size=size)
            case ("order", str(algo), str(symbol), "buy" | "sell" as side, float(qty), offset):
                limit = None
                if isinstance(offset, float):
                    limit = mids.get(symbol, 100.0) * (1 + offset)
                events = v.submit(algo, symbol, side, qty, ts, f"o-{n}", limit)
            case ("cancel_all", str(algo)):
                events = list(v.cancel_all(algo, ts))
            case ("flatten", str(algo)):
                events = v.flatten(algo, ts)
            case _:
                raise AssertionError(action)
        for event in events:
            engine.ingest_json(encoder.encode(event))
        published += events

        for algo in ALGOS:
            positions = v.positions(algo)
            expected = CAPITAL + v.cash(algo) - v.fees(algo)
            expected += sum(q * mids[s] for s, q in positions.items())
            snap = engine.snapshot(algo)
            assert math.isclose(snap.equity, expected, rel_tol=1e-9), (snap.equity, expected)
            core_positions = {p.symbol: p.qty for p in snap.positions if p.qty != 0}
            assert core_positions.keys() == positions.keys()
            for symbol, qty in positions.items():
                assert math.isclose(core_positions[symbol], qty, rel_tol=1e-12)

    # The books are the sum of the published fills; the core counted every order event.
    for algo in ALGOS:
        mine = [f for f in published if isinstance(f, Fill) and f.algo == algo]
        assert all(f.paper and f.order_id for f in mine)
        cash = sum((-f.qty if f.side == "buy" else f.qty) * f.price for f in mine)
        assert math.isclose(v.cash(algo), cash, rel_tol=1e-9, abs_tol=1e-6)
        assert math.isclose(v.fees(algo), sum(f.fee for f in mine), rel_tol=1e-12, abs_tol=0)
        assert all(f.fee == pytest.approx(rate * f.qty * f.price, rel=1e-15) for f in mine)
        orders = [e for e in published if isinstance(e, OrderEvent) and e.algo == algo]
        snap = engine.snapshot(algo)
        assert snap.fills == len(mine)
        assert snap.orders_submitted_total == sum(e.event == "submitted" for e in orders)
        assert snap.orders_rejected_total == sum(e.event == "rejected" for e in orders)
        assert snap.orders_acked_total == sum(e.event == "acked" for e in orders)
        assert snap.orders_cancelled_total == sum(e.event == "cancelled" for e in orders)


@pytest.mark.parametrize("name", ["paper-trading.json"])
def test_the_seed_paper_deployment_builds_its_venue(name: str) -> None:
    from pathlib import Path

    from rampart.deployment import PaperTradingDeployment, load_deployment
    from rampart.gateway.paper import venue_for
    from rampart.gateway.slippage import SquareRootImpact

    doc = load_deployment(Path(__file__).parent.parent / "examples" / "deployments" / name)
    assert isinstance(doc, PaperTradingDeployment)
    venue = venue_for(doc.configuration)
    assert isinstance(venue.slippage, SquareRootImpact)
    assert venue.commission_rate == doc.configuration.commission_rate == 0.001
