"""A gateway's fills and order events to Rampart, exactly once (docs/protocol.md, "Durable
events").

Each event gets a ``Nats-Msg-Id`` and is published to Rampart's JetStream events stream until the
stream acks it: the stream drops a second copy of an id it has seen within its duplicate window,
so a retry after a lost ack is harmless. Events wait in memory, in order, while NATS is away, and
go out as soon as it is back. The id is ``<gateway>.<boot>.<n>`` unless the caller gives one (a
gateway that persists its events across its own restarts passes a stable id, e.g. the venue's
execution id, so a re-publish after the restart is dropped too).
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
    subject: str
    data: bytes
    msg_id: str
    seq: str


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
        ack_timeout: float = 2.0,
        retry_interval: float = 0.25,
    ) -> None:
        self.nc = nc
        self.gateway = gateway
        self.subjects = subjects or Subjects()
        self.max_pending = max_pending
        self.window = window
        self.ack_timeout = ack_timeout
        self.retry_interval = retry_interval
        self.boot = secrets.token_hex(4)
        self.published = 0  # acked by the stream
        self.duplicates = 0  # acked as a duplicate (a retry of one already stored)
        self.failures = 0  # attempts that were not acked (retried)
        self._seq = 0
        self._queue: deque[Pending] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._js: JetStreamContext | None = None

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def last_event(self) -> str:
        """The id of the last event put, ``<boot>.<n>`` (``n`` = 0 before the first): a position
        report taken now is as of this event."""
        return f"{self.boot}.{self._seq}"

    def fill(self, fill: Fill, msg_id: str | None = None) -> None:
        self.put(self.subjects.fills(self.gateway, fill.algo), encoder.encode(fill), msg_id)

    def order(self, event: OrderEvent, msg_id: str | None = None) -> None:
        self.put(self.subjects.orders(self.gateway, event.algo), encoder.encode(event), msg_id)

    def put(self, subject: str, data: bytes, msg_id: str | None = None) -> None:
        if len(self._queue) >= self.max_pending:
            raise OutboxFullError(
                f"{len(self._queue)} events wait for NATS (outbox limit {self.max_pending}): "
                "stop trading until they are delivered"
            )
        self._seq += 1
        seq = f"{self.boot}.{self._seq}"
        self._queue.append(Pending(subject, data, msg_id or f"{self.gateway}.{seq}", seq))
        self._wake.set()

    def start(self) -> None:
        self._js = self.nc.jetstream(timeout=self.ack_timeout)
        self._task = asyncio.ensure_future(self._run())
        self._task.set_name(f"outbox-{self.gateway}")

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event put so far is acked; False if that took longer than
        ``timeout``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self._queue:
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
        if self._queue:
            log.error(
                "outbox of %s closed with %d events not delivered", self.gateway, self.pending
            )

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue[i] for i in range(min(self.window, len(self._queue)))]
            acked = await self._send(batch)
            # the stream holds the acked prefix; the rest goes again, in order
            for _ in range(acked):
                self._queue.popleft()
            if acked < len(batch):
                await asyncio.sleep(self.retry_interval)

    async def _send(self, batch: list[Pending]) -> int:
        """Publish a window of events, in order; returns how many of its first events the
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
        for fut in futures:
            try:
                async with asyncio.timeout(self.ack_timeout):
                    ack = await fut
            except Exception as e:
                self.failures += 1
                log.debug("outbox event not acked: %s", e)
                break
            acked += 1
            if ack.duplicate:
                self.duplicates += 1
            else:
                self.published += 1
        for fut in futures[acked:]:
            fut.cancel()
        return acked
