"""A reference gateway built on the SDK: hosts example algorithms, trades them on the paper venue
against live quotes from NATS, publishes their order events and fills, and obeys Rampart.

Used by the demo and the tests. The example algorithm is a momentum strategy; its faulty build
fades every move with an oversized position and sends unmarketable limit orders that the venue
rejects, so every kind of breach can be provoked on purpose.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from rampart.config import NatsConfig
from rampart.gateway.outbox import Outbox
from rampart.gateway.paper import PaperVenue, VenueEvent
from rampart.gateway.sdk import GatewayAgent, GatewayHandlers
from rampart.gateway.slippage import FixedBps, Side
from rampart.protocol import (
    CommandKind,
    CommandTarget,
    Fill,
    Health,
    Quote,
    Subjects,
    encoder,
    hot_event_decoder,
)

log = logging.getLogger("rampart.gateway.reference")


@dataclass
class Momentum:
    """Target position = ``sign * lot`` after a move of more than ``threshold`` over ``lookback``
    quotes in one direction, scaled by the allocation. ``sign=-1`` is the faulty build."""

    lot: float = 2.0
    lookback: int = 5
    threshold: float = 0.5
    sign: int = 1
    # Probability that an order goes out with an absurd limit price (rejected by the venue).
    bad_limit_prob: float = 0.0
    _mids: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    _last_target: float = 0.0

    def target(self, mid: float) -> float:
        self._mids.append(mid)
        if len(self._mids) <= self.lookback:
            return 0.0
        move = mid - self._mids[-1 - self.lookback]
        if abs(move) >= self.threshold:
            self._last_target = self.lot * self.sign * (1.0 if move > 0 else -1.0)
        return self._last_target


@dataclass
class HostedAlgo:
    """One algorithm version hosted by the gateway. It trades only when active, not halted, and
    with an allocation above zero."""

    algo_id: str
    symbol: str
    strategy: Momentum
    allocation: float = 0.0
    active: bool = False
    halted: bool = False
    orders_sent: int = 0


class ReferenceGateway(GatewayHandlers):
    """``start()`` subscribes to market data and to Rampart's commands; ``close()`` stops both."""

    def __init__(
        self,
        nc: Client,
        gateway: str,
        algos: list[HostedAlgo],
        *,
        venue: PaperVenue | None = None,
        subjects: Subjects | None = None,
        heartbeat_interval: float = 1.0,
        deadman_timeout: float = 3.0,
        seed: int = 0,
        durable: bool = True,
        trusted_keys: Iterable[str],
        wire_servers: Sequence[str] | None = None,
        wire_nats: NatsConfig | None = None,
    ) -> None:
        self.nc = nc
        self.gateway = gateway
        self.subjects = subjects or Subjects()
        self.algos = {a.algo_id: a for a in algos}
        self.venue = venue or PaperVenue(FixedBps(1.0), commission_rate=0.00002)
        # fills and order events onto Rampart's events stream, each once (``durable=False``:
        # core NATS, at most once, for a Rampart with ``[events] durable = false``)
        self.outbox = Outbox(nc, gateway, subjects=self.subjects) if durable else None
        self.agent = GatewayAgent(
            nc,
            gateway,
            self,
            subjects=self.subjects,
            heartbeat_interval=heartbeat_interval,
            deadman_timeout=deadman_timeout,
            outbox=self.outbox,
            trusted_keys=trusted_keys,
            wire_servers=wire_servers,
            wire_nats=wire_nats,
        )
        self.rng = random.Random(seed)
        self.now = 0  # event time: the latest quote's ts
        self.blocked_orders = 0
        self.events_published = 0
        self._sub: Subscription | None = None

    async def start(self) -> None:
        if self.outbox is not None:
            self.outbox.start()
        self._sub = await self.nc.subscribe(self.subjects.market_all, cb=self._on_market)
        await self.agent.start()

    async def close(self) -> None:
        await self.agent.close()
        if self.outbox is not None:
            await self.outbox.close(timeout=2.0)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    # ---- trading ------------------------------------------------------------------------------

    async def _on_market(self, msg: Msg) -> None:
        try:
            event = hot_event_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return  # Rampart dead-letters bad market data; the gateway just ignores it
        if not isinstance(event, Quote):
            return
        await self.on_quote(event)

    async def on_quote(self, q: Quote) -> None:
        self.now = max(self.now, q.ts)
        await self._publish(self.venue.on_quote(q.symbol, q.bid, q.ask, q.ts))
        mid = 0.5 * (q.bid + q.ask)
        for algo in self.algos.values():
            if algo.symbol != q.symbol:
                continue
            target = algo.strategy.target(mid) * algo.allocation
            if not algo.active or algo.allocation <= 0:
                continue
            held = self.venue.positions(algo.algo_id).get(algo.symbol, 0.0)
            delta = target - held
            if abs(delta) < 1e-9:
                continue
            side: Side = "buy" if delta > 0 else "sell"
            await self.send_order(algo, side, abs(delta), q)

    async def send_order(self, algo: HostedAlgo, side: Side, qty: float, q: Quote) -> None:
        """Route an order to the venue; a halted algorithm may only reduce its position."""
        if algo.halted and not self._reduces(algo, side, qty):
            self.blocked_orders += 1
            return
        algo.orders_sent += 1
        limit = None
        if self.rng.random() < algo.strategy.bad_limit_prob:
            limit = q.bid * 0.5 if side == "buy" else q.ask * 2.0  # never marketable
        order_id = f"{self.gateway}-{algo.algo_id}-{algo.orders_sent}"
        events = self.venue.submit(algo.algo_id, algo.symbol, side, qty, q.ts, order_id, limit)
        await self._publish(events)

    def _reduces(self, algo: HostedAlgo, side: Side, qty: float) -> bool:
        held = self.venue.positions(algo.algo_id).get(algo.symbol, 0.0)
        signed = qty if side == "buy" else -qty
        return held != 0 and signed * held < 0 and qty <= abs(held) + 1e-12

    async def _publish(self, events: list[VenueEvent]) -> None:
        for ev in events:
            if self.outbox is not None:
                if isinstance(ev, Fill):
                    self.outbox.fill(ev)
                else:
                    self.outbox.order(ev)
            else:
                if isinstance(ev, Fill):
                    subject = self.subjects.fills(self.gateway, ev.algo)
                else:
                    subject = self.subjects.orders(self.gateway, ev.algo)
                await self.nc.publish(subject, encoder.encode(ev))
            self.events_published += 1

    # ---- Rampart's commands -------------------------------------------------------------------

    def _algo(self, algo: str) -> HostedAlgo:
        try:
            return self.algos[algo]
        except KeyError:
            raise KeyError(f"gateway {self.gateway} does not host {algo!r}") from None

    async def halt(self, algo: str) -> None:
        self._algo(algo).halted = True

    async def resume(self, algo: str) -> None:
        self._algo(algo).halted = False

    async def cancel_all(self, algo: str) -> None:
        self._algo(algo)
        await self._publish(list(self.venue.cancel_all(algo, self.now)))

    async def flatten(self, algo: str) -> None:
        self._algo(algo)
        await self._publish(self.venue.flatten(algo, self.now))

    async def apply_batch(
        self, kind: CommandKind, targets: list[CommandTarget]
    ) -> dict[str, BaseException]:
        """Cancel-all and flatten of many algorithms in one pass: the venue's events of all of
        them go out together (one batch on the events stream where the outbox can); the other
        kinds one algorithm after another (``GatewayHandlers.apply_batch``), through the
        per-algorithm handlers a subclass may override (a halt it times, a resume that places
        orders again): a batch that set their state here would bypass those."""
        if kind not in ("cancel_all", "flatten"):
            return await super().apply_batch(kind, targets)
        failures: dict[str, BaseException] = {}
        events: list[VenueEvent] = []
        for t in targets:
            if t.algo not in self.algos:
                failures[t.algo] = KeyError(f"gateway {self.gateway} does not host {t.algo!r}")
            elif kind == "cancel_all":
                events.extend(self.venue.cancel_all(t.algo, self.now))
            else:
                events.extend(self.venue.flatten(t.algo, self.now))
        await self._publish(events)
        return failures

    async def set_allocation(self, algo: str, allocation: float) -> None:
        self._algo(algo).allocation = allocation

    async def activate(self, algo: str) -> None:
        self._algo(algo).active = True

    async def standby(self, algo: str) -> None:
        self._algo(algo).active = False

    def health(self) -> Health:
        connected = self.nc.is_connected
        return Health(
            market_data=connected and self._sub is not None,
            order_routing=connected,
            risk_engine=True,
        )

    def algorithms(self) -> list[str]:
        return sorted(self.algos)

    def positions(self) -> dict[str, dict[str, float]]:
        return {a: self.venue.positions(a) for a in self.algos}
