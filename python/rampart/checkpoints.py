"""Every algorithm's core state in the store: written every ``checkpoint_interval`` and with each
deployment decision, read back into the engine at start (docs/metrics.md, "Checkpoints").

Incremental: a round writes the checkpoints of the algorithms changed since the last round (the
core's ``take_changed``), every symbol's mark with the engine clock, and the events cursor, in one
transaction; an unchanged algorithm's stored checkpoint is still exact. The rounds are written in
the order they were taken, by one writer thread, and a round that failed is written again with
the next (its items first, the newer ones over them), so the store always holds one consistent
state: nothing waits on the event loop for a thousand quiet algorithms.

One algorithm whose state cannot be checkpointed is left out and failed closed (halted, alerted);
the others are never held back by it, and the loop never dies. A checkpoint whose event clock is
ahead of this host's wall clock by more than ``ingest.max_future`` is not trusted on restore.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, TypeVar

from rampart._core import Engine, RampartError
from rampart.config import DaemonConfig, ns
from rampart.store import Store
from rampart.throttle import ERROR_CHARS, REPEAT_EVERY, Throttle

if TYPE_CHECKING:
    from rampart.guard import Guard

log = logging.getLogger("rampart.checkpoints")

CHECKPOINT_KEY: Final = "checkpoint/"
# the events stream's cursor (rampart.event_stream): the last sequence applied, decimal text
CURSOR_KEY: Final = "ingest/events_seq"
# each gateway's last durable event the core has applied (position_watch.py), JSON
GATEWAY_EVENTS_KEY: Final = "ingest/gateway_events"
# every symbol's mark and the engine clock (the core's ``marks_checkpoint``), JSON
MARKS_KEY: Final = "engine/marks"
# the Throttle key of a checkpoint write that failed as a whole
ALL_CHECKPOINTS: Final = "*"

Spawn = Callable[[Awaitable[None], str], None]
T = TypeVar("T")


def put_all(store: Store, items: list[tuple[str, bytes]]) -> None:
    """Write items in one transaction (runs in a worker thread)."""
    with store.transaction():
        for key, value in items:
            store.put(key, value)


class Checkpointer:
    """Owned by the daemon. ``guard`` is looked up at each use (it exists once NATS is up);
    ``spawn`` runs an alert without holding anything up."""

    def __init__(
        self,
        engine: Engine,
        store: Store,
        config: DaemonConfig,
        *,
        guard: Callable[[], Guard | None],
        spawn: Spawn,
        cursor: Callable[[], int | None] = lambda: None,
        gateway_events: Callable[[], dict[str, str]] = dict,
        on_failure: Callable[[str], None] = lambda _reason: None,
        wall_clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.engine = engine
        self.store = store
        self.config = config
        self.guard = guard
        self.spawn = spawn
        # the events stream's cursor (event_stream.py): stored with every checkpoint, in the
        # same transaction, so that state and cursor always agree
        self.cursor = cursor
        self.gateway_events = gateway_events
        # a checkpoint write that failed: the daemon fails closed
        self.on_failure = on_failure
        self._stored_cursor: int | None = None
        self.wall_clock = wall_clock
        # when the last periodic checkpoint of every algorithm was stored (wall clock, ns)
        self.checkpoint_at: int | None = None
        self._failures = Throttle(REPEAT_EVERY)
        # algorithms whose checkpoint failed: tried again in every round until one is taken
        self._retry: set[str] = set()
        # one writer: rounds commit in the order they were taken
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rampart-checkpoints")
        # the items of rounds that failed to commit (touched only on the writer thread)
        self._unwritten: dict[str, bytes] = {}

    def take(self) -> list[tuple[str, bytes]]:
        """A round: the core state of every algorithm changed since the last round, every
        symbol's mark with the engine clock, the events cursor and each gateway's last applied
        event, all at this instant. An unchanged algorithm's stored checkpoint is still exact
        (reads and clock moves are not changes). One whose state cannot be checkpointed is left
        out, failed closed and tried again next round; the others are never held back by it."""
        items = []
        cursor = self.cursor()
        if cursor is not None:
            items.append((CURSOR_KEY, str(cursor).encode()))
            items.append((GATEWAY_EVENTS_KEY, json.dumps(self.gateway_events()).encode()))
        items.append((MARKS_KEY, self.engine.marks_checkpoint()))
        changed = self.engine.take_changed()
        retry, self._retry = self._retry, set()
        for a in [*changed, *sorted(retry.difference(changed))]:
            try:
                items.append((CHECKPOINT_KEY + a, self.engine.checkpoint(a)))
            except Exception as e:
                if a in self.engine:
                    self._retry.add(a)
                self._failed(a, e)
            else:
                if self._failures.clear(a):
                    log.warning("%s: checkpoints work again (it stays halted until released)", a)
        return items

    async def write(
        self, items: list[tuple[str, bytes]], also: Callable[[], T] | None = None
    ) -> T | None:
        """Commit a round (and ``also``, run in the same transaction) on the writer thread,
        after every round taken before it. If it fails it raises, and its items are written
        again with the next round."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self._write, items, also)

    def _write(self, items: list[tuple[str, bytes]], also: Callable[[], T] | None) -> T | None:
        # a failed round's items first, this round's over them: an algorithm in the failed
        # round and not in this one has not changed since, so the union is one instant's state
        merged = {**self._unwritten, **dict(items)}
        try:
            with self.store.transaction():
                for key, value in merged.items():
                    self.store.put(key, value)
                result = also() if also is not None else None
        except BaseException:
            self._unwritten = merged
            raise
        self._unwritten = {}
        return result

    def close(self) -> None:
        """Wait for the rounds in flight, then stop the writer thread."""
        self._writer.shutdown(wait=True)

    def _failed(self, algo: str, error: Exception) -> None:
        """Fail closed: halt the algorithm (once: an algorithm already halted is not rolled back
        again each interval), log and alert (once per REPEAT_EVERY). Its last good checkpoint
        stays in the store."""
        reason = f"checkpoint failed: {type(error).__name__}: {error}"[:ERROR_CHARS]
        guard = self.guard()
        if guard is not None:
            guard.trigger((algo,), "algo", "checkpoint", reason)
        if not self._failures.ready(algo):
            return
        log.critical("%s: %s; halted (fail closed), its last good checkpoint kept", algo, reason)
        if guard is not None:
            self.spawn(
                guard.alert(
                    "critical",
                    f"checkpoints of {algo} failing: halted",
                    f"{reason}; a restart would resume its metrics from the last good "
                    "checkpoint. Investigate before releasing it.",
                    algos=[algo],
                ),
                "checkpoint-alert",
            )

    def restore(self) -> dict[str, int]:
        """Resume each algorithm's metrics from its last checkpoint, if its configuration is
        unchanged (a changed configuration starts its metrics afresh, with a warning).

        A checkpoint whose event clock is further ahead of this host's wall clock than
        ``ingest.max_future`` is not trusted (a clock dragged forward before, or a wall clock
        stepped back): its times are reset to the bound (the core's ``restore``), and so are the
        stored marks' (``MARKS_KEY``). Returns those algorithms with the untrusted clock (and
        ``MARKS_KEY`` for the marks), for ``report_untrusted``."""
        max_clock = self.wall_clock() + ns(self.config.ingest.max_future)
        untrusted: dict[str, int] = {}
        marks = self.store.get(MARKS_KEY)
        if marks is not None:
            # first: an algorithm whose own checkpoint is older is re-marked to these
            try:
                clock = self.engine.restore_marks(marks, max_clock=max_clock)
            except RampartError as e:
                log.error("stored marks unreadable (%s); each algorithm keeps its own", e)
            else:
                if clock is not None:  # the symbols' quote times and the engine clock
                    untrusted[MARKS_KEY] = clock
        for key, data in self.store.items(CHECKPOINT_KEY):
            algo = key.removeprefix(CHECKPOINT_KEY)
            if algo not in self.engine:
                continue
            fresh = config_of(self.engine.checkpoint(algo))
            if config_of(data) != fresh:
                log.warning("%s: configuration changed since the checkpoint; metrics restart", algo)
                continue
            before = self.engine.checkpoint(algo)
            self.engine.unregister(algo)
            try:
                clock = self.engine.restore(data, max_clock=max_clock)
            except RampartError as e:
                log.error("%s: checkpoint unreadable (%s); metrics restart", algo, e)
                self.engine.restore(before)
                continue
            if clock is not None:
                untrusted[algo] = clock
        return untrusted

    async def report_untrusted(self, untrusted: dict[str, int]) -> None:
        """Alert and audit checkpoints whose clock was reset (see ``restore``)."""
        guard = self.guard()
        if not untrusted or guard is None:
            return
        wall = self.wall_clock()
        algos = sorted(a for a in untrusted if a != MARKS_KEY)
        detail = "; ".join(
            f"{'the marks of every symbol' if key == MARKS_KEY else key}: checkpoint clock "
            f"{_iso(clock)} is {(clock - wall) / 1e9:,.0f} s ahead of the wall clock {_iso(wall)}"
            for key, clock in sorted(untrusted.items())
        )
        detail += (
            f" (more than ingest.max_future = {self.config.ingest.max_future}); their event "
            "times were reset to the bound, order windows emptied, return periods and sessions "
            "restarted; positions, PnL and peak equity are kept"
        )
        log.critical("untrusted event clock in checkpoints: %s", detail)
        payload = {"algos": algos, "clocks": untrusted, "wall_clock": wall}
        await asyncio.to_thread(
            self.store.append_audit, "clock_reset", payload, actor="rampart", ts=wall
        )
        await guard.alert("critical", "untrusted event clock reset", detail, algos=algos)

    async def loop(self) -> None:
        """Every ``checkpoint_interval``, once the engine has seen an event."""
        interval = self.config.checkpoint_interval.total_seconds()
        while True:
            await asyncio.sleep(interval)
            cursor = self.cursor()
            if self.engine.now is None and cursor == self._stored_cursor:
                continue
            try:
                await self.write(self.take())
                self._stored_cursor = cursor
            except Exception as e:  # the loop never dies: the next interval tries again
                self._loop_failed(e)
                continue
            if self._failures.clear(ALL_CHECKPOINTS):
                log.warning("checkpoints are written again")
            self.checkpoint_at = self.wall_clock()

    def _loop_failed(self, error: Exception) -> None:
        text = f"{type(error).__name__}: {error}"[:ERROR_CHARS]
        self.on_failure(f"checkpoints could not be written: {text}")
        if not self._failures.ready(ALL_CHECKPOINTS):
            return
        log.critical("checkpoints could not be written: %s; retrying", text, exc_info=error)
        guard = self.guard()
        if guard is not None:
            alert = guard.alert(
                "emergency",
                "checkpoints could not be written",
                f"{text}; retrying every checkpoint_interval. A restart now would resume "
                "metrics from older checkpoints.",
                algos=[],
            )
            self.spawn(alert, "checkpoint-alert")  # delivery retries; the loop goes on


def _iso(ts: int) -> str:
    """Nanoseconds since the epoch as an ISO 8601 UTC time (for messages)."""
    try:
        return datetime.fromtimestamp(ts / 1e9, tz=UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"{ts} ns"


def config_of(checkpoint: bytes) -> dict[str, object] | None:
    """A checkpoint's algorithm configuration, less the capital (deployments move it)."""
    try:
        config = dict(json.loads(checkpoint)["algo"]["config"])
    except (ValueError, KeyError, TypeError):
        return None
    config.pop("capital", None)
    return config
