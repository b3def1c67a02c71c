"""The paper venue: simulated execution of marketable orders against live quotes.

Pure logic, no I/O and no clock: time is the event time (integer ns) carried by the inputs. The
venue keeps the latest quote per symbol, and per algorithm its virtual positions, cash and fees;
it answers each input with the protocol messages a gateway publishes (``OrderEvent`` on the orders
subject, ``Fill`` with ``paper=True`` on the fills subject). Semantics: docs/paper.md.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import TypeAlias

from rampart.deployment import PaperTradingConfig
from rampart.gateway.slippage import Side, SlippageModel, TopOfBook, slippage_model
from rampart.protocol import Fill, OrderEvent

__all__ = ["PaperVenue", "VenueEvent", "venue_for"]

VenueEvent: TypeAlias = OrderEvent | Fill
"""What the venue emits: publish an ``OrderEvent`` on the orders subject, a ``Fill`` on fills."""

# The core's flat rule (docs/metrics.md): |Q| <= FLAT_TOLERANCE * max(|Q_before|, |q|) is zero.
_FLAT_TOLERANCE = 1e-9


@dataclass(slots=True)
class _Order:
    algo: str
    symbol: str
    side: Side
    qty: float
    order_id: str
    arrival: int
    limit_price: float | None


@dataclass(slots=True)
class _Book:
    positions: dict[str, float] = field(default_factory=dict)
    cash: float = 0.0
    fees: float = 0.0


class PaperVenue:
    """A simulated venue for marketable orders (market orders, and limit orders that cross).

    ``slippage`` prices every execution (:mod:`rampart.gateway.slippage`); ``commission_rate`` is
    the fee as a fraction of notional (``fee = commission_rate * qty * price``); an order reaches
    the venue ``latency_ns`` after it is submitted, plus, when ``latency_jitter_ns`` > 0, a uniform
    integer draw in ``[0, latency_jitter_ns]`` from ``rng`` (required then: the venue uses no other
    randomness). ``venue_id`` prefixes the ids of the orders :meth:`flatten` sends.
    """

    def __init__(
        self,
        slippage: SlippageModel,
        commission_rate: float,
        latency_ns: int = 0,
        *,
        venue_id: str = "paper",
        latency_jitter_ns: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        if not (math.isfinite(commission_rate) and 0 <= commission_rate <= 1):
            raise ValueError(f"commission_rate {commission_rate!r} must be in [0, 1]")
        if latency_ns < 0 or latency_jitter_ns < 0:
            raise ValueError(
                f"latency_ns {latency_ns!r} and latency_jitter_ns {latency_jitter_ns!r} "
                "must be >= 0"
            )
        if latency_jitter_ns and rng is None:
            raise ValueError("latency_jitter_ns needs a seeded random.Random as rng")
        self.slippage = slippage
        self.commission_rate = commission_rate
        self.latency_ns = latency_ns
        self.latency_jitter_ns = latency_jitter_ns
        self.venue_id = venue_id
        self._rng = rng
        self._quotes: dict[str, TopOfBook] = {}
        self._books: dict[str, _Book] = {}
        # Orders submitted but not yet executed, in submission order, keyed by (algo, order_id).
        self._pending: dict[tuple[str, str], _Order] = {}
        # algo -> ids of its pending orders, in submission order (cancel_all must not scan every
        # algorithm's orders)
        self._pending_of: dict[str, dict[str, None]] = {}
        self._flatten_seq = 0

    def __repr__(self) -> str:
        return (
            f"PaperVenue({self.slippage!r}, commission_rate={self.commission_rate!r}, "
            f"latency_ns={self.latency_ns!r}, venue_id={self.venue_id!r})"
        )

    # -- market data ---------------------------------------------------------------------------

    def on_quote(
        self,
        symbol: str,
        bid: float,
        ask: float,
        ts: int,
        *,
        bid_size: float | None = None,
        ask_size: float | None = None,
        volume: float | None = None,
    ) -> list[VenueEvent]:
        """Record the quote and execute, at it, every pending order of ``symbol`` that has
        arrived (``submit_ts + latency <= ts``), earliest arrival first.

        Returns a ``Fill`` per execution, or ``rejected`` for an order that cannot execute at this
        quote (a limit order not marketable, or no finite execution price). A bad quote raises
        ``ValueError`` and changes nothing.
        """
        quote = TopOfBook(bid, ask, bid_size, ask_size, volume)
        self._quotes[symbol] = quote
        due = [o for o in self._pending.values() if o.symbol == symbol and o.arrival <= ts]
        due.sort(key=lambda o: o.arrival)  # stable: submission order among equal arrivals
        events: list[VenueEvent] = []
        for order in due:
            self._unpend(order.algo, order.order_id)
            events.append(self._execute(order, quote, ts))
        return events

    def quote(self, symbol: str) -> TopOfBook | None:
        """The latest quote of ``symbol``, if any."""
        return self._quotes.get(symbol)

    # -- orders --------------------------------------------------------------------------------

    def submit(
        self,
        algo: str,
        symbol: str,
        side: Side,
        qty: float,
        ts: int,
        order_id: str,
        limit_price: float | None = None,
    ) -> list[VenueEvent]:
        """Submit a market order (or a marketable limit order) at event time ``ts``.

        Returns ``submitted``, then either ``rejected`` (with the reason) or ``acked`` (at
        ``ts + latency``, with ``latency_ns``); with a latency of 0 the order executes at once
        against the latest quote and its ``Fill`` follows (or, for a limit order that does not
        cross, ``rejected`` replaces the ack). Otherwise it waits for :meth:`on_quote`.
        """
        events: list[VenueEvent] = [
            OrderEvent(algo=algo, event="submitted", ts=ts, order_id=order_id)
        ]
        quote = self._quotes.get(symbol)
        reason = self._check(algo, side, qty, order_id, limit_price)
        if quote is None or reason is not None:
            events.append(_rejected(algo, order_id, ts, reason or f"no quote for {symbol}"))
            return events
        latency = self.latency_ns
        if self.latency_jitter_ns and self._rng is not None:
            latency += self._rng.randint(0, self.latency_jitter_ns)
        order = _Order(algo, symbol, side, qty, order_id, ts + latency, limit_price)
        ack = OrderEvent(
            algo=algo, event="acked", ts=ts + latency, latency_ns=latency, order_id=order_id
        )
        if latency > 0:
            self._pending[(algo, order_id)] = order
            self._pending_of.setdefault(algo, {})[order_id] = None
            return [*events, ack]
        result = self._execute(order, quote, ts)
        return [*events, result] if isinstance(result, OrderEvent) else [*events, ack, result]

    def cancel_all(self, algo: str, ts: int) -> list[OrderEvent]:
        """Cancel every pending order of ``algo`` at once; a ``cancelled`` event for each."""
        ids = sorted(
            self._pending_of.pop(algo, set()), key=lambda i: self._pending[(algo, i)].arrival
        )
        cancelled = [self._pending.pop((algo, i)) for i in ids]
        return [
            OrderEvent(algo=algo, event="cancelled", ts=ts, order_id=o.order_id) for o in cancelled
        ]

    def flatten(self, algo: str, ts: int) -> list[VenueEvent]:
        """Cancel ``algo``'s pending orders, then send a market order closing each open position
        (ids ``<venue_id>-flatten-<n>``); with latency they fill at the next quotes."""
        events: list[VenueEvent] = list(self.cancel_all(algo, ts))
        for symbol, position in sorted(self.positions(algo).items()):
            self._flatten_seq += 1
            order_id = f"{self.venue_id}-flatten-{self._flatten_seq}"
            side: Side = "sell" if position > 0 else "buy"
            events += self.submit(algo, symbol, side, abs(position), ts, order_id)
        return events

    # -- books ---------------------------------------------------------------------------------

    def positions(self, algo: str) -> dict[str, float]:
        """``algo``'s open positions (signed quantity per symbol; flat symbols are absent)."""
        book = self._books.get(algo)
        return dict(book.positions) if book else {}

    def cash(self, algo: str) -> float:
        """Sum of ``-signed qty * price`` over ``algo``'s fills: cash from trading, before fees."""
        book = self._books.get(algo)
        return book.cash if book else 0.0

    def fees(self, algo: str) -> float:
        """Sum of ``algo``'s commissions."""
        book = self._books.get(algo)
        return book.fees if book else 0.0

    def open_orders(self, algo: str) -> list[str]:
        """Ids of ``algo``'s pending orders, in submission order."""
        return list(self._pending_of.get(algo, {}))

    def _unpend(self, algo: str, order_id: str) -> None:
        del self._pending[(algo, order_id)]
        ids = self._pending_of.get(algo)
        if ids is not None:
            ids.pop(order_id, None)
            if not ids:
                del self._pending_of[algo]

    # -- internals -----------------------------------------------------------------------------

    def _check(
        self,
        algo: str,
        side: str,
        qty: float,
        order_id: str,
        limit_price: float | None,
    ) -> str | None:
        if side not in ("buy", "sell"):
            return f"bad side {side!r}: must be 'buy' or 'sell'"
        if not (math.isfinite(qty) and qty > 0):
            return f"bad quantity {qty!r}: must be finite and > 0"
        if limit_price is not None and not (math.isfinite(limit_price) and limit_price > 0):
            return f"bad limit price {limit_price!r}: must be finite and > 0"
        if (algo, order_id) in self._pending:
            return f"duplicate order id {order_id!r}: an order with this id is pending"
        return None

    def _refusal(self, order: _Order, price: float) -> str | None:
        """Why ``order`` cannot execute at ``price``, if it cannot."""
        if not (math.isfinite(price) and price > 0):
            return f"no execution price: {self.slippage!r} gives {price!r}"
        limit = order.limit_price
        if limit is None:
            return None
        if (order.side == "buy" and price > limit) or (order.side == "sell" and price < limit):
            return f"not marketable: {order.side} limit {limit!r}, execution price {price!r}"
        return None

    def _execute(self, order: _Order, quote: TopOfBook, ts: int) -> VenueEvent:
        price = self.slippage.price(order.side, order.qty, quote)
        reason = self._refusal(order, price)
        if reason is not None:
            return _rejected(order.algo, order.order_id, ts, reason)
        fee = self.commission_rate * order.qty * price
        self._book(order, price, fee)
        return Fill(
            algo=order.algo,
            symbol=order.symbol,
            side=order.side,
            qty=order.qty,
            price=price,
            fee=fee,
            ts=ts,
            order_id=order.order_id,
            paper=True,
        )

    def _book(self, order: _Order, price: float, fee: float) -> None:
        book = self._books.setdefault(order.algo, _Book())
        signed = order.qty if order.side == "buy" else -order.qty
        before = book.positions.get(order.symbol, 0.0)
        after = before + signed
        if abs(after) <= _FLAT_TOLERANCE * max(abs(before), order.qty):
            book.positions.pop(order.symbol, None)
        else:
            book.positions[order.symbol] = after
        book.cash -= signed * price
        book.fees += fee


def _rejected(algo: str, order_id: str, ts: int, reason: str) -> OrderEvent:
    return OrderEvent(algo=algo, event="rejected", ts=ts, order_id=order_id, reason=reason)


def venue_for(config: PaperTradingConfig, *, latency_ns: int = 0) -> PaperVenue:
    """The venue a PaperTrading deployment's ``configuration`` describes: its slippage model
    (``slippageBps`` -> ``bps``, ``impactCoefficient`` -> ``coefficient``) and commission rate."""
    params: dict[str, float] = {}
    if config.slippage_bps is not None:
        params["bps"] = config.slippage_bps
    if config.impact_coefficient is not None:
        params["coefficient"] = config.impact_coefficient
    return PaperVenue(
        slippage_model(config.slippage_model, **params), config.commission_rate, latency_ns
    )
