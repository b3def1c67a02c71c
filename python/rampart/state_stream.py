"""A shard's replicated state: one JetStream stream message per store transaction (docs/ha.md).

The leader's store hands every top-level transaction's writes to ``replicator()`` before it
commits: they are published with ``Nats-Expected-Last-Sequence`` set to the last sequence this
leader wrote or read, so a second writer (a deposed leader, a second process that thinks it
leads) fails instead of forking the history, and nothing it did not replicate is committed.
Standbys apply the messages in order to their own store (``catch_up``, ``follow``): the audit
chain goes on, record for record, across leaders.

So that the stream does not grow forever, the leader writes a snapshot of its whole store every
``ha.snapshot_every`` messages (``snapshots``) and purges what came before it: a standby behind
the stream's start is rebuilt from the snapshot, one in step skips it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Final

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NoStreamResponseError, NotFoundError

from rampart.store import Op, Store, decode_ops, snapshot_part

log = logging.getLogger("rampart.state_stream")

STREAM_PREFIX: Final = "RAMPART_STATE_"
# how long a replicated write may wait for JetStream's ack before it fails (and is not committed)
PUBLISH_TIMEOUT: Final = 5.0
# one try's wait for the ack, and the pause between tries (docs/ha.md, "A NATS node lost")
ATTEMPT_TIMEOUT: Final = 1.0
RETRY_EVERY: Final = 0.05
WRONG_LAST_SEQUENCE: Final = 10071  # JetStream's error code
# a snapshot message's content before compression, at most about (nats-server's max_payload
# is 1 MB by default)
SNAPSHOT_PART_BYTES: Final = 512 * 1024
# catching up: up to this many messages are read one request each, more by an ordered consumer
READ_BY_REQUEST: Final = 16
# how long catching up waits for the consumer's next message before it gives up (and tries again)
READ_TIMEOUT: Final = 5.0
# catching up: transactions applied to the store in one commit
APPLY_BATCH: Final = 256


class NotLeaderError(RuntimeError):
    """A write was attempted by a process that does not hold the lease."""


def stream_name(shard: str) -> str:
    return STREAM_PREFIX + re.sub(r"[^A-Za-z0-9_-]", "_", shard)


class StateStream:
    def __init__(self, nc: Client, prefix: str, shard: str, *, replicas: int = 1) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=PUBLISH_TIMEOUT)
        self.name = stream_name(shard)
        self.subject = f"{prefix}.state.{shard}"
        self.replicas = replicas
        self.last = 0  # the last sequence written or applied here

    async def ensure(self) -> None:
        """Create the stream when it is missing (file storage, every message kept)."""
        try:
            await self.js.stream_info(self.name)
        except NotFoundError:
            await self.js.add_stream(
                StreamConfig(
                    name=self.name,
                    subjects=[self.subject],
                    storage=StorageType.FILE,
                    num_replicas=self.replicas,
                )
            )

    async def last_seq(self) -> int:
        info = await self.js.stream_info(self.name)
        return int(info.state.last_seq)

    async def first_seq(self) -> int:
        info = await self.js.stream_info(self.name)
        return int(info.state.first_seq)

    async def catch_up(self, store: Store) -> int:
        """Apply every message after the store's last applied one; returns the last sequence.
        A store behind the stream's first message (its history was purged after a snapshot)
        is rebuilt from the snapshot the stream starts with; a store that has applied
        everything before a snapshot skips it (its state is the snapshot's)."""
        for attempt in range(3):
            try:
                return await self._catch_up(store)
            except NotFoundError:  # purged while read (a snapshot was written): read again
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _catch_up(self, store: Store) -> int:
        applied = await asyncio.to_thread(store.replicated_seq)
        info = await self.js.stream_info(self.name)
        first, last = int(info.state.first_seq), int(info.state.last_seq)
        behind = last > 0 and applied + 1 < first
        parts: list[list[Op]] = []
        # transactions read and not applied yet: applied together (one commit) by ``flush``
        pending: list[tuple[list[Op], int]] = []

        async def flush() -> None:
            if pending:
                await asyncio.to_thread(store.apply_all, list(pending))
                pending.clear()

        async for seq, data in self._read(first if behind else applied + 1, last):
            ops = decode_ops(data)
            part = snapshot_part(ops)
            if part is None and behind:
                raise RuntimeError(
                    f"state stream {self.name} starts at message {first}, after this store's "
                    f"last transaction ({applied}), and not with a snapshot: this store cannot "
                    "be brought up to date from it. Start this process with an empty data_dir "
                    "only if the stream begins with a snapshot (docs/ha.md, 'Snapshots')"
                )
            if part is None:
                pending.append((ops, seq))
                if len(pending) >= APPLY_BATCH:
                    await flush()
            elif not behind:
                await flush()
                await asyncio.to_thread(store.note_replicated, seq)  # its state is here
            else:
                i, n = part
                if i != len(parts) + 1:
                    raise RuntimeError(
                        f"state stream {self.name}: snapshot part {i}/{n} at message {seq} "
                        f"follows {len(parts)} parts"
                    )
                parts.append(ops[1:])
                if i == n:
                    await asyncio.to_thread(store.apply_snapshot, parts, seq)
                    log.info("state stream %s: store rebuilt from a snapshot (%d)", self.name, seq)
                    behind, parts = False, []
        await flush()
        if behind:  # the snapshot is still being written: what was read counts for nothing
            return applied
        self.last = max(applied, last)
        return self.last

    async def _read(self, start: int, last: int) -> AsyncIterator[tuple[int, bytes]]:
        """The stream's messages ``start`` to ``last``, in order, each once: one request each
        when they are few, else through an ordered consumer (one request per message cost
        about a millisecond: 10 s for the 10,000 a standby may be behind). A message missing
        (purged by a snapshot meanwhile) raises ``NotFoundError``: ``catch_up`` reads again."""
        if last - start + 1 <= READ_BY_REQUEST:
            for seq in range(start, last + 1):
                raw = await self.js.get_msg(self.name, seq)
                if raw.data is None:
                    raise RuntimeError(f"state stream {self.name} has no message {seq}")
                yield seq, raw.data
            return
        sub = await self.js.subscribe(
            self.subject,
            stream=self.name,
            ordered_consumer=True,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
            ),
            pending_bytes_limit=-1,
        )
        try:
            expected = start
            while expected <= last:
                msg = await sub.next_msg(timeout=READ_TIMEOUT)
                seq = int(msg.metadata.sequence.stream)
                if seq != expected:  # a hole: purged while read
                    raise NotFoundError(
                        description=f"state stream {self.name}: message {expected} is gone "
                        f"(the next is {seq})"
                    )
                yield seq, msg.data
                expected += 1
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def purge_before(self, seq: int) -> None:
        """Drop the stream's messages before ``seq`` (the first part of a snapshot)."""
        await self.js.purge_stream(self.name, seq=seq)

    async def snapshots(
        self,
        store: Store,
        every: int,
        interval: float,
        max_bytes: int = SNAPSHOT_PART_BYTES,
    ) -> None:
        """The leader's loop: when ``every`` messages were written since the stream's first,
        write a snapshot of the store and purge what came before it, so the stream (and a new
        standby's catching up) stays bounded. A failure is logged and tried again later:
        nothing is lost by a snapshot not written."""
        base: int | None = None
        while True:
            await asyncio.sleep(interval)
            try:
                if base is None:
                    base = await self.first_seq()
                if self.last - base < every:
                    continue
                first, last = await asyncio.to_thread(store.write_snapshot, max_bytes)
                await self.purge_before(first)
            except Exception as e:
                log.warning("state stream %s: no snapshot this time: %s", self.name, e)
                continue
            log.info(
                "state stream %s: snapshot at %d-%d, the %d messages before it purged",
                self.name,
                first,
                last,
                first - base,
            )
            base = first

    async def follow(self, store: Store, interval: float, stop: asyncio.Event) -> None:
        """A standby's loop: apply the leader's transactions as they come, until ``stop``.
        (Set ``stop`` before cancelling: Python 3.11's ``asyncio.wait_for``, inside nats-py's
        requests, can swallow a cancellation that comes as its reply does, and the loop would
        go on applying beside the new leader's own catching up.)"""
        while not stop.is_set():
            try:
                await self.catch_up(store)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # NATS down, a timeout: try again
                log.warning("state stream %s: %s: %s", self.name, type(e).__name__, e)
            await asyncio.sleep(interval)

    def replicator(
        self, is_leader: Callable[[], bool], loop: asyncio.AbstractEventLoop
    ) -> Callable[[bytes], int]:
        """The store's ``replicator`` for the leader: runs on the store's writing thread (never
        on the event loop's: it waits for JetStream's ack)."""

        writer = uuid.uuid4().hex[:12]

        def replicate(data: bytes) -> int:
            if not is_leader():
                raise NotLeaderError("this process does not hold the lease")
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                raise RuntimeError("a replicated write on the event loop's thread")
            fut = asyncio.run_coroutine_threadsafe(self._publish(data, writer, is_leader), loop)
            return fut.result(PUBLISH_TIMEOUT + 1.0)

        return replicate

    async def _publish(self, data: bytes, writer: str, is_leader: Callable[[], bool]) -> int:
        """Publish one write after the last sequence. A stream without a leader for a moment
        (a NATS node lost: its replicas elect another) answers 503 or nothing: the write is
        tried again, with the same ``Nats-Msg-Id`` (stored once, whichever try got through),
        while this process leads, for up to ``PUBLISH_TIMEOUT``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PUBLISH_TIMEOUT
        headers = {
            "Nats-Expected-Last-Sequence": str(self.last),
            "Nats-Msg-Id": f"{writer}.{self.last + 1}",
        }
        tries = 0
        while True:
            tries += 1
            left = deadline - loop.time()
            try:
                ack = await self.js.publish(
                    self.subject,
                    data,
                    stream=self.name,
                    headers=headers,
                    timeout=max(min(left, ATTEMPT_TIMEOUT), 0.05),
                )
                break
            except (NoStreamResponseError, NoRespondersError, NatsTimeoutError) as e:
                if not is_leader() or deadline - loop.time() < RETRY_EVERY:
                    raise
                if tries == 1:
                    log.warning("state stream %s: %s; trying again", self.name, e or type(e))
                await asyncio.sleep(RETRY_EVERY)
            except BadRequestError as e:
                # JetStream checks the expected last sequence before duplicates: a try whose
                # ack was lost makes the next one "wrong last sequence". Ours, if the message
                # after ``last`` carries our id; anybody else's write is a refusal
                if tries == 1 or e.err_code != WRONG_LAST_SEQUENCE:
                    raise
                stored = await self.js.get_msg(self.name, self.last + 1)
                if (stored.headers or {}).get("Nats-Msg-Id") != headers["Nats-Msg-Id"]:
                    raise
                log.warning("state stream %s: written (its ack was lost)", self.name)
                self.last = self.last + 1
                return self.last
        if tries > 1:
            log.warning("state stream %s: written after %d tries", self.name, tries)
        self.last = ack.seq
        return int(ack.seq)
