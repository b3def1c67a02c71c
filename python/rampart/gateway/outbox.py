"""A gateway's fills and order events to Rampart, exactly once (docs/protocol.md, "Durable
events").

Each event is published to Rampart's JetStream events stream until the stream acks it, with a
``Nats-Msg-Id``: the stream drops a second copy of an id it has seen within its duplicate window,
so a retry after a lost ack is harmless. Events wait in memory, in order, while NATS is away, and
go out as soon as it is back.

Events that wait while earlier ones are in flight go out together, as one batch message on
``<prefix>.batch.<gateway>`` (a JSON array, up to ``batch_events`` events and ``batch_bytes``
bytes): the stream stores (and fsyncs) one message instead of many, so a busy gateway is not held
to one disk sync per fill. Nothing waits to fill a batch: an idle sender sends whatever is there
at once, so a quiet gateway sends each event on its own subject. A batch, once formed, is never
re-formed: its retries carry the same events under the same id.

Ids: ``<gateway>.<boot>.<n>`` for an event, ``<gateway>.<boot>.<first>-<last>`` for a batch,
unless the caller gives an event its own id (a gateway that persists its events across its own
restarts passes a stable one, e.g. the venue's execution id, so a re-publish after the restart is
dropped too): such an event is always sent alone. Every message also carries ``Rampart-Seq``:
``<boot>.<n>`` for an event, ``<boot>.<first>-<last>`` for a batch; position reports refer to
these numbers (``mark``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Final

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck

from rampart.protocol import Fill, OrderEvent, Subjects, encoder

log = logging.getLogger("rampart.gateway.outbox")

MSG_ID: Final = "Nats-Msg-Id"
# the event's place in this outbox, ``<boot>.<n>``: what a position report is "as of"
# (docs/protocol.md, "Positions")
EVENT_SEQ: Final = "Rampart-Seq"


class OutboxFullError(RuntimeError):
    """More events wait than the outbox holds: NATS has been away too long. The gateway must
    stop trading (it cannot tell Rampart what it does)."""


@dataclass(frozen=True)
class Pending:
    """One message: an event on its own subject, or a batch on the gateway's batch subject."""

    subject: str
    data: bytes
    msg_id: str
    seq: str  # Rampart-Seq: the number of its (last) event
    events: int = 1


class Outbox:
    """``put`` an event (never blocks, never loses it while the process lives); ``start`` the
    sender. ``pending`` events are not acked by the stream yet."""

    def __init__(
        self,
        nc: Client,
        gateway: str,
        *,
        subjects: Subjects | None = None,
        max_pending: int = 1_000_000,
        window: int = 512,
        batch_events: int = 256,
        batch_bytes: int = 64 * 1024,
        ack_timeout: float = 2.0,
        retry_interval: float = 0.25,
    ) -> None:
        self.nc = nc
        self.gateway = gateway
        self.subjects = subjects or Subjects()
        self.max_pending = max_pending
        self.window = window
        # 1: no batches, every event on its own subject (a Rampart before batches)
        self.batch_events = max(1, batch_events)
        self.batch_bytes = batch_bytes
        self.ack_timeout = ack_timeout
        self.retry_interval = retry_interval
        self.boot = secrets.token_hex(4)
        self.published = 0  # events acked by the stream
        self.duplicates = 0  # events acked as duplicates (a retry of one already stored)
        self.failures = 0  # attempts that were not acked (retried)
        self.batches = 0  # batch messages acked
        self._seq = 0
        self._queue: deque[Pending] = deque()  # formed messages, in order
        self._open: list[tuple[str, bytes]] = []  # events not formed into a message yet
        self._open_bytes = 0
        self._open_first = 0
        self._pending_events = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._js: JetStreamContext | None = None

    @property
    def pending(self) -> int:
        return self._pending_events

    def mark(self) -> str:
        """The id of the last event put, ``<boot>.<n>`` (``n`` = 0 before the first), as a
        position report taken now refers to it: the events waiting are formed into a message
        here, so that one ends at this event (Rampart applies messages whole)."""
        self._form()
        return f"{self.boot}.{self._seq}"

    def fill(self, fill: Fill, msg_id: str | None = None) -> str:
        return self.put(self.subjects.fills(self.gateway, fill.algo), encoder.encode(fill), msg_id)

    def order(self, event: OrderEvent, msg_id: str | None = None) -> str:
        subject = self.subjects.orders(self.gateway, event.algo)
        return self.put(subject, encoder.encode(event), msg_id)

    def put(self, subject: str, data: bytes, msg_id: str | None = None) -> str:
        """Queue one event (JSON) for its subject; returns its number, ``<boot>.<n>``."""
        if self._pending_events >= self.max_pending:
            raise OutboxFullError(
                f"{self._pending_events} events wait for NATS (outbox limit {self.max_pending}): "
                "stop trading until they are delivered"
            )
        if msg_id is not None or (
            self._open
            and (
                len(self._open) >= self.batch_events
                or self._open_bytes + len(data) + 1 > self.batch_bytes
            )
        ):
            self._form()  # an event with its own id goes alone, after everything before it
        self._seq += 1
        self._pending_events += 1
        seq = f"{self.boot}.{self._seq}"
        if msg_id is not None:
            self._queue.append(Pending(subject, data, msg_id, seq))
        else:
            if not self._open:
                self._open_first = self._seq
            self._open.append((subject, data))
            self._open_bytes += len(data) + 1
        self._wake.set()
        return seq

    def _form(self) -> None:
        """The open events become one message: alone on its subject, or a batch."""
        events = self._open
        if not events:
            return
        first = self._open_first
        last = first + len(events) - 1
        self._open = []
        self._open_bytes = 0
        seq = f"{self.boot}.{last}"
        if len(events) == 1:
            subject, data = events[0]
            self._queue.append(Pending(subject, data, f"{self.gateway}.{seq}", seq))
            return
        span = f"{self.boot}.{first}-{last}"
        self._queue.append(
            Pending(
                self.subjects.batch(self.gateway),
                b"[" + b",".join(d for _, d in events) + b"]",
                f"{self.gateway}.{span}",
                span,
                len(events),
            )
        )

    def start(self) -> None:
        self._js = self.nc.jetstream(timeout=self.ack_timeout)
        self._task = asyncio.ensure_future(self._run())
        self._task.set_name(f"outbox-{self.gateway}")

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event put so far is acked; False if that took longer than
        ``timeout``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self._pending_events:
            if loop.time() > end:
                return False
            await asyncio.sleep(0.005)
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Deliver what waits (up to ``timeout``), then stop; what is still pending is logged."""
        if self._task is None:
            return
        await self.flush(timeout)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._pending_events:
            log.error(
                "outbox of %s closed with %d events not delivered", self.gateway, self.pending
            )

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if not self._open:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                self._form()  # idle: what waits goes now, however little
            batch = [self._queue[i] for i in range(min(self.window, len(self._queue)))]
            acked = await self._send(batch)
            # the stream holds the acked prefix; the rest goes again, in order
            for _ in range(acked):
                self._pending_events -= self._queue.popleft().events
            if acked < len(batch):
                await asyncio.sleep(self.retry_interval)

    async def _send(self, batch: list[Pending]) -> int:
        """Publish a window of messages, in order; returns how many of its first messages the
        stream acked (a later one acked after a failed one counts on the next turn as a
        duplicate, not twice)."""
        assert self._js is not None
        futures: list[asyncio.Future[PubAck]] = []
        try:
            for p in batch:
                futures.append(
                    await self._js.publish_async(
                        p.subject, p.data, headers={MSG_ID: p.msg_id, EVENT_SEQ: p.seq}
                    )
                )
        except Exception as e:
            self.failures += 1
            log.debug("outbox publish failed: %s", e)
        acked = 0
        for p, fut in zip(batch, futures, strict=False):
            try:
                async with asyncio.timeout(self.ack_timeout):
                    ack = await fut
            except Exception as e:
                self.failures += 1
                log.debug("outbox message not acked: %s", e)
                break
            acked += 1
            if ack.duplicate:
                self.duplicates += p.events
            else:
                self.published += p.events
                self.batches += p.events > 1
        for fut in futures[acked:]:
            fut.cancel()
        return acked
