"""Leader election for a Rampart shard: a lease in JetStream KV (docs/ha.md).

Two or more ``rampart run`` processes governing the same gateways (a *shard*) agree on one
leader through one key, ``<shard>``, in the KV bucket ``rampart_leases`` (R3 on a 3-node
cluster). Every write is a compare-and-set on the key's revision, so of two processes that saw
the same value only one can write the next.

No clock is compared across hosts. The leader counts its lease from the moment it *started* the
write that renewed it, on its own monotonic clock, and stops acting ``ttl`` (less a tenth, for
clock rates) later unless a renewal succeeded since. A standby counts the holder's lease from the
moment it first *saw* that revision, on its own monotonic clock, and takes over only when the
revision has not changed for ``ttl``. The standby's count starts after the leader's, so the two
never both believe they lead, whatever the network does, as long as both clocks advance at about
the same rate.

Each leadership has a *term*, one more than the last, written with the lease: every command and
heartbeat carries it, and a gateway refuses what an older term sends (docs/protocol.md,
"Terms"), so a deposed leader that wakes up (SIGSTOP, a partition) gets nothing applied.

``LeaseMachine`` is the pure state machine (observations, write results and time in; what to
write out); ``LeaseKeeper`` drives it over NATS.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = logging.getLogger("rampart.lease")

LEASE_BUCKET: Final = "rampart_leases"


class LeaseRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The key's value: who holds the lease, in which term, for how long after each write."""

    holder: str
    term: int
    ttl_ms: int
    # given back (a clean stop): the next process may take it at once
    released: bool = False


lease_decoder: Final = msgspec.json.Decoder(LeaseRecord)


@dataclass(frozen=True)
class Write:
    """Write ``record`` if the key is still at revision ``last`` (0: only if there is none)."""

    last: int
    record: LeaseRecord


@dataclass
class Seen:
    revision: int  # 0: no key
    record: LeaseRecord | None
    since: int  # monotonic ns this process first saw this revision


class LeaseMachine:
    """Who leads, as far as this process may act on it. Times are monotonic ns."""

    def __init__(self, me: str, ttl_ns: int, renew_ns: int) -> None:
        if not 0 < renew_ns < ttl_ns:
            raise ValueError("the lease must be renewed more often than its ttl")
        self.me = me
        self.ttl_ns = ttl_ns
        self.renew_ns = renew_ns
        self.term = 0  # the term this process leads (or last led)
        self.seen: Seen | None = None
        self._valid_until: int | None = None  # leader while now < this
        self._renewed_at: int | None = None  # when the last successful write started

    def is_leader(self, now: int) -> bool:
        return self._valid_until is not None and now < self._valid_until

    @property
    def valid_until(self) -> int | None:
        return self._valid_until

    def observe(self, revision: int, record: LeaseRecord | None, now: int) -> None:
        """The key as read at ``now`` (revision 0, no record: there is no key). A revision
        older than one already seen (a lagging replica answered) is ignored."""
        if self.seen is not None and revision < self.seen.revision:
            return
        if self.seen is None or self.seen.revision != revision:
            self.seen = Seen(revision, record, now)
            if (
                record is not None
                and self._valid_until is not None
                and (record.holder != self.me or record.term != self.term)
            ):
                self._valid_until = None  # somebody else wrote: deposed at once

    def next_write(self, now: int) -> Write | None:
        """What to write now, if anything: take a free or expired lease, or renew ours."""
        seen = self.seen
        if seen is None:
            return None  # not read yet
        rec = seen.record
        ttl_ms = self.ttl_ns // 1_000_000
        if rec is None:
            return Write(seen.revision, LeaseRecord(holder=self.me, term=1, ttl_ms=ttl_ms))
        mine = rec.holder == self.me and rec.term == self.term and not rec.released
        if mine and self.is_leader(now):
            if self._renewed_at is not None and now - self._renewed_at < self.renew_ns:
                return None
            return Write(seen.revision, rec)
        # another's (or a lapsed one of ours): taken when released, or unchanged for its ttl
        if rec.released or now - seen.since >= rec.ttl_ms * 1_000_000:
            return Write(
                seen.revision, LeaseRecord(holder=self.me, term=rec.term + 1, ttl_ms=ttl_ms)
            )
        return None

    def written(self, write: Write, revision: int, started: int, now: int) -> None:
        """``write``, started at ``started``, succeeded: the key is at ``revision``."""
        self.seen = Seen(revision, write.record, now)
        if write.record.holder == self.me and not write.record.released:
            self.term = write.record.term
            self._renewed_at = started
            # counted from the start of the write, less a tenth for clock rates
            self._valid_until = started + self.ttl_ns - self.ttl_ns // 10
        else:
            self._valid_until = None

    def lost_race(self) -> None:
        """The key was not at the revision a write expected: somebody else wrote; read again."""
        self.seen = None
        self._valid_until = None

    def release(self) -> Write | None:
        """What to write to give the lease back (a clean stop), if this process holds it."""
        seen = self.seen
        if seen is None or seen.record is None or seen.record.holder != self.me:
            return None
        self._valid_until = None
        return Write(
            seen.revision,
            LeaseRecord(holder=self.me, term=seen.record.term, ttl_ms=0, released=True),
        )


class LeaseKeeper:
    """Drives a ``LeaseMachine`` over a JetStream KV bucket: reads the key every ``poll``
    seconds, writes what the machine asks, and calls ``on_change(leader, term)`` when this
    process becomes leader or stops being one (at the latest when its lease runs out, even if
    NATS does not answer)."""

    def __init__(
        self,
        kv: KeyValue,
        shard: str,
        me: str,
        *,
        ttl: float = 1.0,
        renew: float = 0.25,
        poll: float = 0.1,
        on_change: Callable[[bool, int], None] | None = None,
        monotonic: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.kv = kv
        self.key = shard
        self.machine = LeaseMachine(me, int(ttl * 1e9), int(renew * 1e9))
        self.poll = poll
        self.on_change = on_change
        self.monotonic = monotonic
        self._leader = False
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def term(self) -> int:
        return self.machine.term

    def is_leader(self) -> bool:
        """Whether this process may act as the leader now (check it before every command)."""
        return self.machine.is_leader(self.monotonic())

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="lease")

    async def close(self, release: bool = True) -> None:
        """Stop; give the lease back (``release``) so a standby takes over at once."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        write = self.machine.release() if release else None
        if write is not None:
            try:
                await self.kv.update(self.key, msgspec.json.encode(write.record), last=write.last)
            except Exception as e:  # the lease then runs out by itself
                log.warning("could not give the lease of %s back: %s", self.key, e)
        self._notify()

    async def step(self) -> None:
        """One read, and the write it calls for."""
        now = self.monotonic()
        try:
            entry = await self.kv.get(self.key)
        except KeyNotFoundError as e:
            revision = e.entry.revision if getattr(e, "entry", None) is not None else 0
            self.machine.observe(revision or 0, None, now)
        else:
            record = None
            if entry.value:
                try:
                    record = lease_decoder.decode(entry.value)
                except msgspec.DecodeError as e:
                    log.error("the lease %s is unreadable (%s): taken as free", self.key, e)
            self.machine.observe(entry.revision or 0, record, now)
        write = self.machine.next_write(self.monotonic())
        if write is None:
            return
        started = self.monotonic()
        data = msgspec.json.encode(write.record)
        try:
            if write.last == 0:
                revision = await self.kv.create(self.key, data)
            else:
                revision = await self.kv.update(self.key, data, last=write.last)
        except KeyWrongLastSequenceError:
            self.machine.lost_race()
            return
        self.machine.written(write, revision, started, self.monotonic())

    async def _run(self) -> None:
        failing: str | None = None
        while not self._closing:
            try:
                await self.step()
                if failing is not None:
                    log.warning("lease %s: NATS answers again", self.key)
                    failing = None
            except asyncio.CancelledError:
                raise
            except Exception as e:  # NATS down, a timeout: the lease runs out by itself
                what = f"{type(e).__name__}: {e}"
                if what != failing:  # once per kind of failure, not once per poll
                    log.warning("lease %s: %s (retrying every %.3gs)", self.key, what, self.poll)
                    failing = what
            self._notify()
            # wake when the lease would run out, if that is sooner than the next poll
            delay = self.poll
            until = self.machine.valid_until
            if until is not None and until > self.monotonic():
                delay = min(delay, (until - self.monotonic()) / 1e9 + 0.001)
            await asyncio.sleep(delay)

    def _notify(self) -> None:
        leader = self.is_leader()
        if leader != self._leader:
            self._leader = leader
            log.warning(
                "%s %s of %s (term %d)",
                self.machine.me,
                "leads" if leader else "no longer leads",
                self.key,
                self.term,
            )
            if self.on_change is not None:
                self.on_change(leader, self.term)


async def lease_bucket(js: object, replicas: int = 1) -> KeyValue:
    """The lease bucket, created (history 1, file storage, ``replicas``) when missing."""
    from nats.js.api import KeyValueConfig, StorageType
    from nats.js.client import JetStreamContext
    from nats.js.errors import BucketNotFoundError

    assert isinstance(js, JetStreamContext)
    try:
        return await js.key_value(LEASE_BUCKET)
    except BucketNotFoundError:
        config = KeyValueConfig(
            bucket=LEASE_BUCKET, history=1, storage=StorageType.FILE, replicas=replicas
        )
        return await js.create_key_value(config)
