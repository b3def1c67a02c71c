"""The daemon's guard: turns triggers into rollbacks and keeps their record.

Triggers: a limit tripping in the core (daily loss, drawdown, reject rate, latency), a gateway's
heartbeat going stale or reporting itself unhealthy, market data going stale on a symbol an
algorithm holds, Rampart's own NATS link having been lost, and a risk manager's manual request.
Each names its scope (one algorithm, a gateway, or everything) and runs the rollback executor.

The halt goes out first and nothing waits for disk before it: the halted latch is written to the
store while the halt is in flight; the rollback record, its audit record and the alert follow once
the gateway has answered. Alerts and audit copies that cannot be delivered are retried, never
dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from rampart._core import Breach, Engine
from rampart.audit import encode_record
from rampart.config import DaemonConfig, ns
from rampart.protocol import (
    Alert,
    AlertSeverity,
    ConnectivityEvent,
    GatewayStatus,
    Intent,
    encoder,
)
from rampart.reconcile import ALLOCATION_EPS, Op
from rampart.rollback import (
    EpochClock,
    ExecutorSettings,
    FiredHalt,
    RollbackExecutor,
    RollbackRequest,
    Scope,
)
from rampart.store import HaltLatch, RollbackRecord, Store

if TYPE_CHECKING:
    from rampart.reconciler import Reconciler

log = logging.getLogger("rampart.guard")

AUDIT_STREAM: Final = "RAMPART_AUDIT"
# Algorithms whose metrics the watchdog reads per pass (fail closed if unreadable).
READ_CHECKS_PER_PASS: Final = 64
# A watchdog wake-up this much later than planned means Rampart itself was stalled.
STALL_SECONDS: Final = 0.5
STATE_BUCKET: Final = "RAMPART_STATE"
SYSTEM_ACTOR: Final = "rampart"


def executor_settings(config: DaemonConfig) -> ExecutorSettings:
    r = config.rollback
    return ExecutorSettings(
        attempt_timeout=r.attempt_timeout.total_seconds(),
        step_deadline={
            "halt": r.halt_deadline.total_seconds(),
            "cancel": r.cancel_deadline.total_seconds(),
            "flatten": r.flatten_deadline.total_seconds(),
            "allocate": r.allocate_deadline.total_seconds(),
            "activate": r.activate_deadline.total_seconds(),
        },
        retry_interval=r.retry_interval.total_seconds(),
        presign_validity=0.0 if r.presign_validity is None else r.presign_validity.total_seconds(),
        # halt, allocation and activation: the reconciler's (see ExecutorSettings)
        retried_steps=("cancel", "flatten"),
    )


class Guard:
    """Owned by the daemon; ``start()`` after NATS is connected, ``close()`` before it drains."""

    def __init__(
        self,
        config: DaemonConfig,
        engine: Engine,
        store: Store,
        nc: Client,
        *,
        gateways: Callable[[], dict[str, GatewayStatus]],
        wall_clock: Callable[[], int] = time.time_ns,
        sign: Callable[[str, bytes], dict[str, str]] | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.store = store
        self.nc = nc
        self.subjects = config.subjects
        self.gateways = gateways
        self.wall_clock = wall_clock
        self.algo_config = {a.id: a for a in config.algorithms}
        self.executor = RollbackExecutor(
            nc,
            self.subjects,
            self.gateway_of,
            settings=executor_settings(config),
            epochs=EpochClock(wall_clock),
            wall_clock=wall_clock,
            sign=sign,
        )
        self.halted: dict[str, HaltLatch] = {}
        self.in_flight: set[str] = set()
        # algorithms whose release is sending its resume
        self.releasing: set[str] = set()
        self.recent: list[RollbackRecord] = []
        # rollbacks since this daemon started, by how they ended at first ("succeeded",
        # "failed", ...) and how many of those that did not succeed completed later
        self.rollback_counts: dict[str, int] = {}
        self.store_error: str | None = None
        self._js: JetStreamContext | None = None
        self.kv: KeyValue | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stale_gateways: set[str] = set()
        self._stale_symbols: set[tuple[str, str]] = set()
        self._read_cursor = 0  # where the next readability check starts (_check_readable)
        self._link_lost = False
        # told of every rollback as it starts: (algorithms, trigger, actor)
        self.rollback_listeners: list[Callable[[tuple[str, ...], str, str], None]] = []
        # set by the daemon: stores what each algorithm should be, and drives the gateways to it
        self.reconciler: Reconciler | None = None
        # rollbacks whose steps were not all acked, until the reconciler converges their algos
        self.unfinished: dict[str, RollbackRecord] = {}
        # the watchdog's own stalls (event loop blocked, process stopped): the wall clock when
        # the latest one ended, so a heartbeat gap that the stall explains is not a gateway's
        self.stall_ended_at = 0

    # ---- life cycle ---------------------------------------------------------------------------

    async def start(
        self, *, halt_all_because: str | None = None, latch_all_because: str | None = None
    ) -> None:
        """Load the halted latches and re-assert them; ``halt_all_because``: halt everything
        (the state store was unreadable); ``latch_all_because``: latch everything halted in
        a store that works (an earlier run failed closed), for an operator to release."""
        if halt_all_because is not None:
            self.store_error = halt_all_because
        reason = halt_all_because or latch_all_because
        if reason is not None:
            ts = self.wall_clock()
            await asyncio.to_thread(
                self._latch,
                tuple(self.algo_config),
                f"fail closed: {reason[:200]}",
                SYSTEM_ACTOR,
                ts,
            )
        self.halted = await asyncio.to_thread(self.store.halts)
        self.recent = await asyncio.to_thread(self.store.rollbacks, None, 20)
        # failed rollbacks of an earlier run: completed once the reconciler converges them
        self.unfinished = {
            r.rollback_id: r for r in await asyncio.to_thread(self.store.open_rollbacks)
        }
        await self._setup_jetstream()
        await self.executor.start_fast_acks()
        if self.halted:
            # A halted algorithm stays halted: re-assert it on every start.
            log.warning("re-asserting the halt of %d algorithms from the store", len(self.halted))
            self.reassert_halts(list(self.halted), "restart: halted before")
        self._spawn(self._watchdog(), "guard-watchdog")
        if self.executor.settings.presign_validity > 0:
            self._spawn(self.executor.presign_loop(lambda: self.algo_config), "presign-halts")

    async def close(self) -> None:
        await self.executor.cancel_retries()
        for task in list(self._tasks):
            if task.get_name() in ("guard-watchdog", "reassert-halts", "presign-halts"):
                task.cancel()
        # let rollbacks, alerts and audit copies in flight finish
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=5)
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("guard task %s failed", task.get_name(), exc_info=task.exception())

    async def _setup_jetstream(self) -> None:
        try:
            js = self.nc.jetstream(timeout=1.0)
            await js.find_stream_name_by_subject(f"{self.subjects.prefix}.audit.>")
            self._js = js
        except Exception:
            try:
                js = self.nc.jetstream(timeout=1.0)
                await js.add_stream(name=AUDIT_STREAM, subjects=[f"{self.subjects.prefix}.audit.>"])
                self._js = js
            except Exception as e:
                log.info("no JetStream (%s): the audit log lives in the store only", e)
                return
        try:
            try:
                self.kv = await self._js.key_value(STATE_BUCKET)
            except Exception:
                self.kv = await self._js.create_key_value(bucket=STATE_BUCKET, history=5)
        except Exception as e:
            log.info("no JetStream KV (%s): state lives in the store only", e)

    async def mirror_state(self, key: str, value: bytes) -> None:
        """Copy durable state to JetStream KV for fleet visibility (the store stays the source
        of truth: a failed copy is logged and the next change copies again)."""
        if self.kv is None:
            return
        try:
            await self.kv.put(key, value)
        except Exception as e:
            log.warning("state mirror to JetStream KV failed for %s: %s", key, e)

    # ---- scopes -------------------------------------------------------------------------------

    def gateway_of(self, algo: str) -> str:
        cfg = self.algo_config.get(algo)
        if cfg is None:
            raise KeyError(f"unknown algorithm {algo!r}")
        return cfg.gateway

    def algos_of_gateway(self, gateway: str) -> tuple[str, ...]:
        return tuple(a.id for a in self.config.algorithms if a.gateway == gateway)

    def resolve(self, target: str) -> tuple[Scope, tuple[str, ...]]:
        """``*`` (everything), ``gateway:<id>`` or an algorithm id."""
        if target in ("*", "all"):
            return "all", tuple(self.algo_config)
        if target.startswith("gateway:"):
            gw = target.removeprefix("gateway:")
            algos = self.algos_of_gateway(gw)
            if not algos:
                raise KeyError(f"no algorithm runs on gateway {gw!r}")
            return "gateway", algos
        if target not in self.algo_config:
            known = ", ".join(sorted(self.algo_config)) or "none"
            raise KeyError(f"unknown algorithm {target!r}; known: {known}")
        return "algo", (target,)

    # ---- triggers -----------------------------------------------------------------------------

    async def on_breaches(self, breaches: list[Breach]) -> None:
        """The ingest path's breaches: each algorithm's halt is published here, in the ingest
        callback's own step, before its rollback task runs (``RollbackExecutor.fire_halt``);
        the loop then runs once, so nats-py writes the halts before anything else is done.
        An algorithm is rolling back (``in_flight``, which every path that resumes respects)
        before its halt's epoch is chosen, so no resume decided meanwhile can beat it."""
        fired_any = False
        for algo, trigger, reason in self._to_halt(breaches):
            fired: FiredHalt | None = None
            try:
                fired = await self.executor.fire_halt(algo)
            except Exception as e:  # the rollback's halt step sends it, signed there
                log.error("cannot send the halt of %s from the ingest path: %s", algo, e)
            finally:
                # (started even if the above raised: the halt must go out and be latched)
                self._start_rollback((algo,), "algo", trigger, reason, SYSTEM_ACTOR, None, fired)
            fired_any = fired_any or fired is not None
        if fired_any:
            # nats-py writes from its flusher task, woken by the publish and queued before the
            # rollbacks' tasks: let it run now, before the caller's logging, breach events and
            # deployment decisions
            await asyncio.sleep(0)

    def on_breaches_now(self, breaches: list[Breach]) -> None:
        """``on_breaches`` without awaiting anything, for the market-data wire path's
        ``data_received``: each halt is written on that connection's socket in this call
        (``RollbackExecutor.fire_halt_direct``), before any task runs; one that cannot be is
        sent by its rollback's halt step. ``on_breaches`` then finds them rolling back."""
        for algo, trigger, reason in self._to_halt(breaches):
            fired: FiredHalt | None = None
            try:
                fired = self.executor.fire_halt_direct(algo)
            except Exception as e:
                log.error("cannot send the halt of %s from the ingest path: %s", algo, e)
            finally:
                self._start_rollback((algo,), "algo", trigger, reason, SYSTEM_ACTOR, None, fired)

    def _to_halt(self, breaches: list[Breach]) -> Iterator[tuple[str, str, str]]:
        """(algorithm, trigger, reason) of each breaching algorithm not halted or rolling back
        yet, marked rolling back (``in_flight``) before its halt's epoch is chosen."""
        by_algo: dict[str, list[Breach]] = {}
        for b in breaches:
            by_algo.setdefault(b.algo_id, []).append(b)
        for algo, found in by_algo.items():
            if algo in self.in_flight or algo in self.halted:
                continue
            self.in_flight.add(algo)
            reason = "; ".join(f"{b.kind} {b.value:.6g} beyond {b.threshold:.6g}" for b in found)
            yield algo, f"limit:{found[0].kind}", reason

    async def on_connectivity(self, event: ConnectivityEvent) -> None:
        if event.state == "disconnected":
            self._link_lost = True
        elif event.state == "reconnected" and self._link_lost:
            self._link_lost = False
            if self.config.triggers.nats_disconnect:
                self.trigger(
                    tuple(self.algo_config),
                    "all",
                    "connectivity:nats",
                    "Rampart's NATS link was lost; gateways may have halted on their own",
                )

    def trigger(
        self,
        algos: Iterable[str],
        scope: Scope,
        trigger: str,
        reason: str,
        actor: str = SYSTEM_ACTOR,
        *,
        force: bool = False,
        previous: dict[str, str] | None = None,
        fired: FiredHalt | None = None,
    ) -> asyncio.Task[RollbackRecord | None] | None:
        """Start a rollback of ``algos`` unless each is already halted or rolling back
        (``force``: roll back anyway, for a person's explicit request). ``fired``: the halt of
        the one algorithm already sent from the ingest path."""
        todo = tuple(
            a for a in algos if a not in self.in_flight and (force or a not in self.halted)
        )
        if not todo:
            if fired is not None:
                self.executor.drop_fired(fired)
            return None
        self.in_flight.update(todo)
        return self._start_rollback(todo, scope, trigger, reason, actor, previous, fired)

    def _start_rollback(
        self,
        todo: tuple[str, ...],
        scope: Scope,
        trigger: str,
        reason: str,
        actor: str,
        previous: dict[str, str] | None,
        fired: FiredHalt | None,
    ) -> asyncio.Task[RollbackRecord | None]:
        """The rollback task of ``todo``, already marked ``in_flight``; its listeners told
        (a listener that raises is logged: the rollback starts regardless)."""
        task: asyncio.Task[RollbackRecord | None] = self._spawn(
            self.rollback(todo, scope, trigger, reason, actor, previous, fired),
            f"rollback-{trigger}",
        )
        for listener in self.rollback_listeners:
            try:
                listener(todo, trigger, actor)
            except Exception:
                log.exception("a rollback listener failed for %s", ", ".join(todo))
        return task

    async def rollback(
        self,
        algos: tuple[str, ...],
        scope: Scope,
        trigger: str,
        reason: str,
        actor: str,
        previous_override: dict[str, str] | None = None,
        fired: FiredHalt | None = None,
    ) -> RollbackRecord | None:
        """``previous_override``: the versions to re-activate when the caller knows them (a
        blue/green deployment's blue); otherwise each algorithm's ``previous_version``."""
        ts = self.wall_clock()
        previous = {a: p for a in algos if (p := self.algo_config[a].previous_version) is not None}
        previous.update({a: p for a, p in (previous_override or {}).items() if a in algos})
        flatten = any(self.algo_config[a].flatten_on_rollback for a in algos)
        request = RollbackRequest(
            algos,
            scope,
            trigger,
            reason,
            actor,
            flatten,
            previous,
            {fired.command.targets[0].algo: fired} if fired is not None else {},
        )
        # The halt goes out first: the executor runs up to its first request before anything
        # else here; the log line and the latch (written to disk in a thread) follow it.
        execution = asyncio.ensure_future(self.executor.execute(request))
        await asyncio.sleep(0)
        log.critical("ROLLBACK %s of %s (%s): %s", trigger, ", ".join(algos), actor, reason)
        for a in algos:  # in memory at once (on this thread); on disk while the halt is in flight
            self.halted[a] = HaltLatch(algo=a, reason=reason, actor=actor, ts=ts)
        intents = self._rollback_intents(algos, previous)
        items = [self.reconciler.item(i) for i in intents] if self.reconciler else []
        latch = self._spawn(
            asyncio.to_thread(self._latch, algos, reason, actor, ts, items), "latch"
        )
        try:
            record = await execution
        finally:
            self.in_flight.difference_update(algos)
        await latch
        self.recent = [record, *self.recent[:19]]
        self.rollback_counts[record.state] = self.rollback_counts.get(record.state, 0) + 1
        if record.state != "succeeded":
            self.unfinished[record.rollback_id] = record
        if self.reconciler is not None:
            self.reconciler.remember(intents)
            # what the gateways acked is their state until their next report: nothing is sent
            # again that they have already done
            self.reconciler.note_acked(_acked_ops(record, algos, previous))
            self.reconciler.kick(algos)
        self._spawn(self._record(record), "rollback-record")
        return record

    def _rollback_intents(self, algos: tuple[str, ...], previous: dict[str, str]) -> list[Intent]:
        """What a rollback wants after the halt: no capital for the rolled-back algorithms, the
        previous versions active (stored with the latches)."""
        rec = self.reconciler
        if rec is None:
            return []
        intents = [rec.wanted(a, allocation=0.0) for a in algos]
        intents += [rec.wanted(p, active=True) for p in previous.values() if p in self.algo_config]
        return intents

    def _latch(
        self,
        algos: tuple[str, ...],
        reason: str,
        actor: str,
        ts: int,
        intents: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Write halt latches (and the intents that go with them) to the store, in one
        transaction (runs in a worker thread: touches no loop state)."""
        with self.store.transaction():
            for a in algos:
                self.store.set_halt(a, halted=True, reason=reason, actor=actor, ts=ts)
            for key, value in intents:
                self.store.put(key, value)

    async def adopt_halts(self, gateway: str, halts: list[tuple[str, str]]) -> None:
        """Halts a gateway made on its own (its dead-man's switch tripped while Rampart was away,
        or its own risk checks) while Rampart wanted the algorithms running: Rampart latches
        them too (trigger ``deadman``/``gateway``) and never lifts them by itself; an operator
        releases them (docs/operations.md, "Dead-man's switch")."""
        ts = self.wall_clock()
        todo = [(a, c) for a, c in halts if a not in self.halted]
        if not todo:
            return
        algos = tuple(a for a, _ in todo)
        reasons = {a: f"halted by gateway {gateway} itself ({c})" for a, c in todo}
        for a in algos:
            self.halted[a] = HaltLatch(algo=a, reason=reasons[a], actor=SYSTEM_ACTOR, ts=ts)
        lowered = self._adopted_allocations(gateway, algos)
        items = [self.reconciler.item(i) for i in lowered] if self.reconciler else []

        def persist() -> Any:
            with self.store.transaction():
                for a in algos:
                    self.store.set_halt(
                        a, halted=True, reason=reasons[a], actor=SYSTEM_ACTOR, ts=ts
                    )
                for key, value in items:
                    self.store.put(key, value)
                return self.store.append_audit(
                    "adopted_halt",
                    {"gateway": gateway, "halts": [list(h) for h in todo]},
                    actor=SYSTEM_ACTOR,
                    ts=ts,
                )

        audit = await asyncio.to_thread(persist)
        if lowered and self.reconciler is not None:
            self.reconciler.remember(lowered)
        log.critical("gateway %s halted %s on its own: latched", gateway, ", ".join(algos))
        await self._publish_audit(audit.kind, encode_record(audit))
        await self.alert(
            "critical",
            f"gateway {gateway} halted {', '.join(algos)} on its own",
            "; ".join(f"{a}: {c}" for a, c in todo)
            + ". Rampart has latched the halt and will not lift it by itself: check the gateway "
            "and `rampart release` when it is safe",
            algos=list(algos),
        )

    def _adopted_allocations(self, gateway: str, algos: tuple[str, ...]) -> list[Intent]:
        """The intents of adopted halts whose gateway holds less capital than Rampart wants:
        lowered to what the gateway holds. Such a halt came with its reductions (a rollback of
        a process that died before storing it, a gateway's own risk check): Rampart keeps
        them, as it keeps the halt, and an operator's release does not raise them back."""
        rec = self.reconciler
        if rec is None:
            return []
        lowered = []
        for a in algos:
            want = rec.intents.get(a)
            have = rec.seen_one(gateway, a)
            if want is None or want.allocation is None or have is None:
                continue
            if have.allocation is not None and have.allocation < want.allocation - ALLOCATION_EPS:
                lowered.append(rec.wanted(a, allocation=have.allocation))
        return lowered

    async def complete_converged(self) -> None:
        """A failed rollback whose algorithms the reconciler has since brought to what Rampart
        wants (halted, no capital, the configured previous version active) and whose cancel
        and flatten the executor has had acked is completed: recorded, audited and alerted,
        with the time it took."""
        rec = self.reconciler
        if rec is None:
            return
        for rid, record in list(self.unfinished.items()):
            if any(a in self.in_flight for a in record.algos) or self.executor.retrying_for(rid):
                continue  # still being carried out: a cancel or flatten not acked yet
            # the rolled-back algorithms halted with no capital, their previous versions active
            previous = (self.algo_config[a].previous_version for a in record.algos)
            check = [*record.algos, *(p for p in previous if p in self.algo_config)]
            if not all(rec.control_status(a, self.gateway_of(a)).in_sync for a in check):
                continue
            del self.unfinished[rid]
            finished = self.wall_clock()
            done = msgspec.structs.replace(record, state="completed", finished_at=finished)
            self.recent = [done if r.rollback_id == rid else r for r in self.recent]
            self.rollback_counts["completed"] = self.rollback_counts.get("completed", 0) + 1
            took = (finished - record.started_at) / 1e9
            await asyncio.to_thread(self._save_completed, done, took)
            await self.alert(
                "critical",
                f"rollback of {', '.join(record.algos)} completed",
                f"{record.trigger}: the gateways now do what Rampart wants, {took:.1f}s after "
                "the rollback started (some steps had failed and were retried)",
                algos=list(record.algos),
            )

    def _save_completed(self, record: RollbackRecord, took: float) -> None:
        with self.store.transaction():
            self.store.save_rollback(record)
            self.store.append_audit(
                "rollback_completed",
                {"rollback_id": record.rollback_id, "algos": record.algos, "seconds": took},
                actor=SYSTEM_ACTOR,
                ts=record.finished_at or self.wall_clock(),
            )

    async def _record(self, record: RollbackRecord) -> None:
        """Persist the rollback and its audit record, then publish the audit copy and alert."""
        steps = {s.name: s.duration_ns for s in record.steps if s.duration_ns is not None}
        payload = {
            "rollback_id": record.rollback_id,
            "algos": record.algos,
            "scope": record.scope,
            "trigger": record.trigger,
            "reason": record.reason,
            "state": record.state,
            "steps": [
                {
                    "name": s.name,
                    "status": s.status,
                    "attempts": s.attempts,
                    "duration_ns": s.duration_ns,
                }
                for s in record.steps
            ],
            "target_ms": record.target_ms,
        }

        def persist() -> Any:
            with self.store.transaction():
                self.store.save_rollback(record)
                return self.store.append_audit(
                    "rollback", payload, actor=record.actor, ts=record.started_at
                )

        audit = await asyncio.to_thread(persist)
        await self._publish_audit(audit.kind, encode_record(audit))
        ok = record.state == "succeeded"
        timing = ", ".join(
            f"{name} {steps[name] / 1e6:.2f} ms"
            for name in ("halt", "cancel", "total")
            if name in steps
        )
        await self.alert(
            "critical" if ok else "emergency",
            f"rollback of {', '.join(record.algos)} {'done' if ok else 'INCOMPLETE'}",
            f"{record.trigger}: {record.reason} ({timing})"
            + ("" if ok else f"; failed steps: {_failed(record)}: retrying until acked"),
            algos=record.algos,
        )

    def reassert_halts(self, algos: Iterable[str], reason: str) -> None:
        """Send the halt of already-halted algorithms again, retrying until every gateway has
        acked: at start, and when a gateway (re)appears, since a restarted gateway forgets."""
        todo = tuple(a for a in algos if a in self.halted and a in self.algo_config)
        if todo:
            self._spawn(self._reassert(todo, reason), "reassert-halts")

    async def _reassert(self, algos: tuple[str, ...], reason: str) -> None:
        pending = algos
        alerted = False
        while pending:
            outcomes = await self.executor.broadcast("halt", pending, reason, deadline=1.0)
            # a stale epoch means a newer halt decision was applied: this one is superseded
            pending = tuple(
                a for o in outcomes.values() if "stale_epoch" not in o.detail for a in o.failed
            )
            if pending:
                if not alerted:
                    alerted = True
                    detail = "; ".join(o.detail for o in outcomes.values() if not o.ok)
                    await self.alert(
                        "emergency",
                        "could not re-assert a halt; retrying until acked",
                        detail,
                        algos=list(pending),
                    )
                await asyncio.sleep(self.executor.settings.retry_interval)

    def on_gateway_seen(self, gateway: str) -> None:
        """A gateway's first heartbeat (at start, or after it went stale): halts it must keep,
        and the halts signed in advance for it, armed (docs/protocol.md, "Armed halts")."""
        self.reassert_halts(self.algos_of_gateway(gateway), f"gateway {gateway} (re)appeared")
        self.executor.rearm((gateway,))

    # ---- staleness watchdog -----------------------------------------------------------------

    async def _watchdog(self) -> None:
        t = self.config.triggers
        interval = t.check_interval.total_seconds()
        failing = False
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(interval)
            lag = loop.time() - before - interval
            if lag > max(interval, STALL_SECONDS):
                # Rampart itself was stalled (blocked loop, SIGSTOP): the heartbeats queued
                # meanwhile are not processed yet. Judge the gateways from now on.
                log.warning("event loop stalled for %.2fs: gateway heartbeats restart now", lag)
                self.stall_ended_at = self.wall_clock()
                await asyncio.sleep(0)  # let queued messages (heartbeats) be processed first
            now = self.wall_clock()
            try:  # the watchdog never dies: a failed check is logged and tried again
                if self.unfinished:
                    await self.complete_converged()
                if t.gateway_heartbeat_timeout is not None or t.unhealthy_gateway:
                    self._check_gateways(now)
                if t.market_data_timeout is not None:
                    self._check_market_data(now, ns(t.market_data_timeout))
                self._check_readable()
            except Exception:
                if not failing:
                    log.exception("staleness check failed; retrying every %.3fs", interval)
                failing = True
            else:
                failing = False

    def _check_gateways(self, now: int) -> None:
        t = self.config.triggers
        seen = self.gateways()
        for gw in sorted({a.gateway for a in self.config.algorithms}):
            status = seen.get(gw)
            if status is None:
                continue  # never heard from: nothing to compare against yet
            problem = None
            # a gap that Rampart's own stall explains is not the gateway's
            heard = max(status.received_at, self.stall_ended_at)
            if t.gateway_heartbeat_timeout is not None and now - heard > ns(
                t.gateway_heartbeat_timeout
            ):
                age = (now - status.received_at) / 1e9
                problem = (
                    "connectivity:gateway_heartbeat",
                    f"no heartbeat from {gw} for {age:.1f}s",
                )
            elif t.unhealthy_gateway and not status.health.ok:
                h = status.health
                bad = [
                    k for k in ("market_data", "order_routing", "risk_engine") if not getattr(h, k)
                ]
                problem = ("connectivity:gateway_unhealthy", f"{gw} reports {', '.join(bad)} down")
            if problem is None:
                if gw in self._stale_gateways:
                    self._stale_gateways.discard(gw)
                    self.on_gateway_seen(gw)
            elif gw not in self._stale_gateways:
                self._stale_gateways.add(gw)
                self.trigger(self.algos_of_gateway(gw), "gateway", *problem)

    def _check_readable(self) -> None:
        """An algorithm whose metrics cannot be read cannot have its limits watched: halt it
        (fail closed). A slice of ``READ_CHECKS_PER_PASS`` algorithms per pass, in turn, so the
        pass stays small however many there are (every one is read within a few passes)."""
        algos = list(self.algo_config)
        if not algos:
            return
        start = self._read_cursor % len(algos)
        batch = (algos[start:] + algos[:start])[:READ_CHECKS_PER_PASS]
        self._read_cursor = start + len(batch)
        for algo in batch:
            if algo in self.halted or algo in self.in_flight:
                continue
            try:
                self.engine.snapshot(algo)
            except Exception as e:  # its limits cannot be watched: fail closed
                reason = f"metrics unreadable: {type(e).__name__}: {e}"[:500]
                self.trigger((algo,), "algo", "metrics", reason)

    def _check_market_data(self, now: int, limit_ns: int) -> None:
        """A symbol an algorithm holds is stale when neither a quote nor a fill of the algorithm
        has arrived for ``limit_ns`` (a position never quoted counts from its last fill). One
        pass in the core over the open positions (not a snapshot of every algorithm)."""
        skip = self.halted.keys() | self.in_flight
        stale = {
            (algo, symbol): (qty, last)
            for algo, symbol, qty, last in self.engine.stale_holdings(now, limit_ns)
            if algo in self.algo_config
        }
        for key in [k for k in self._stale_symbols if k not in stale and k[0] not in skip]:
            self._stale_symbols.discard(key)  # quoted again (or flat): judged afresh
        for key, (qty, last) in stale.items():
            algo, symbol = key
            if algo in skip or key in self._stale_symbols:
                continue
            self._stale_symbols.add(key)
            self.trigger(
                (algo,),
                "algo",
                "connectivity:market_data",
                f"no quote for {symbol} for {(now - last) / 1e9:.1f}s while holding {qty:g}",
            )

    # ---- operator actions ---------------------------------------------------------------------

    async def release(self, algos: tuple[str, ...], actor: str, reason: str) -> None:
        """Lift halts after a person has looked. Stored first (latches cleared, the release's
        epoch in each intent, an audit record), then the resume is sent; the core's breach
        latches are reset. If a gateway does not ack, the reconciler keeps resuming what this
        release lifted (and nothing newer) and this raises to say so."""
        ts = self.wall_clock()
        epoch = self.executor.epochs.next()
        # a halt signed in advance before this release would lose to its resume: never sent
        self.executor.note_halt_epoch(algos, epoch)
        # the latches this release lifts: one made while it is stored (a person's rollback, a
        # fail-closed halt) is newer than the release and stays
        lifting = {a: self.halted.get(a) for a in algos}
        rec = self.reconciler
        term = self.executor.term
        intents = (
            [rec.wanted(a, released_epoch=epoch, released_term=term) for a in algos] if rec else []
        )
        items = [rec.item(i) for i in intents] if rec else []

        def persist() -> Any:
            with self.store.transaction():
                for a in algos:
                    self.store.set_halt(a, halted=False, reason=reason, actor=actor, ts=ts)
                for key, value in items:
                    self.store.put(key, value)
                return self.store.append_audit(
                    "release", {"algos": list(algos), "reason": reason}, actor=actor, ts=ts
                )

        audit = await asyncio.to_thread(persist)
        superseded = tuple(
            a for a in algos if a in self.in_flight or self.halted.get(a) is not lifting[a]
        )
        if superseded:
            await self._keep_latched(superseded)
            algos = tuple(a for a in algos if a not in superseded)
            intents = [i for i in intents if i.algo not in superseded]
        # the resume in flight is the release's own: the reconciler keeps out until it is acked
        # (a breach meanwhile still rolls back: ``in_flight`` is untouched)
        self.releasing.update(algos)
        try:
            for a in algos:
                self.halted.pop(a, None)
                self.engine.reset_breaches(a)
            if rec is not None:
                rec.remember(intents)
            # with the release's own epoch: a halt decided after the release (a newer epoch)
            # beats this resume at the gateway, whatever order they arrive in
            outcomes = (
                await self.executor.broadcast("resume", algos, reason, deadline=1.0, epoch=epoch)
                if algos
                else {}
            )
            await self._publish_audit(audit.kind, encode_record(audit))
        finally:
            self.releasing.difference_update(algos)
        if rec is not None:
            failed = {a for o in outcomes.values() for a in o.failed}
            rec.note_acked(Op("resume", a) for a in algos if a not in failed)
            rec.kick(algos)
        for gw, outcome in outcomes.items():
            if not outcome.ok:
                raise RuntimeError(
                    f"released (stored), but gateway {gw} did not ack the resume yet: "
                    f"{outcome.detail}; Rampart keeps sending it"
                )
        if superseded:
            raise RuntimeError(
                f"not released: {', '.join(superseded)} halted again while the release was "
                "being stored (a newer halt stands); release again once it is understood"
            )

    async def _keep_latched(self, algos: tuple[str, ...]) -> None:
        """Latches made while a release of ``algos`` was being stored: written again, so the
        release's store transaction, whichever thread ran first, cannot have lifted them."""
        rec = self.reconciler
        for a in algos:
            latch = self.halted.get(a)
            if latch is None:  # rolling back, latched in memory in a moment by its own task
                latch = HaltLatch(algo=a, reason="rolling back", actor=SYSTEM_ACTOR, ts=0)
            items = [rec.item(rec.wanted(a, allocation=0.0))] if rec is not None else []
            await asyncio.to_thread(
                self._latch, (a,), latch.reason, latch.actor, latch.ts or self.wall_clock(), items
            )

    # ---- alerts and audit copies ----------------------------------------------------------------

    async def note(self, kind: str, payload: dict[str, Any], actor: str) -> None:
        """An audit record of something an operator did that changed nothing yet (a request
        waiting for its second operator, a request refused for its role)."""
        ts = self.wall_clock()
        rec = await asyncio.to_thread(self.store.append_audit, kind, payload, actor=actor, ts=ts)
        await self._publish_audit(rec.kind, encode_record(rec))

    async def alert(
        self, severity: AlertSeverity, title: str, detail: str, *, algos: list[str]
    ) -> None:
        alert = Alert(
            severity=severity, title=title, detail=detail, algos=algos, ts=self.wall_clock()
        )
        data = encoder.encode(alert)
        await self._deliver(self.subjects.alert(severity), data, "alert")
        if self.config.alerts.webhook_url:
            self._spawn(self._webhook(data), "alert-webhook")

    async def _publish_audit(self, kind: str, data: bytes) -> None:
        if self._js is None:
            return
        subject = f"{self.subjects.prefix}.audit.{kind}"
        for attempt in range(10):
            try:
                await self._js.publish(subject, data, timeout=1.0)
                return
            except Exception as e:
                if attempt == 0:
                    log.warning("audit copy to JetStream failed (%s); retrying", e)
                await asyncio.sleep(min(0.1 * 2**attempt, 5))
        log.error("audit copy to JetStream gave up after 10 tries; the store keeps the record")

    async def _deliver(self, subject: str, data: bytes, what: str) -> None:
        delay = 0.05
        while True:
            try:
                await self.nc.publish(subject, data)
                return
            except Exception as e:
                log.warning("%s publish failed (%s); retrying", what, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _webhook(self, data: bytes) -> None:
        url = self.config.alerts.webhook_url
        assert url is not None
        timeout = self.config.alerts.webhook_timeout.total_seconds()

        def post() -> None:
            req = urllib.request.Request(
                url, data=data, headers={"Content-Type": "application/json"}, method="POST"
            )
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                resp.read()

        delay = 0.5
        for _ in range(8):
            try:
                await asyncio.to_thread(post)
                return
            except Exception as e:
                log.warning("alert webhook failed (%s); retrying", e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        log.error("alert webhook gave up: %s", json.loads(data).get("title"))


def _acked_ops(
    record: RollbackRecord, algos: tuple[str, ...], previous: dict[str, str]
) -> list[Op]:
    """The commands a rollback's acked steps applied (a step is acked only if every gateway
    acked it)."""
    acked = {s.name for s in record.steps if s.status == "acked"}
    ops: list[Op] = []
    if "halt" in acked:
        ops += [Op("halt", a) for a in algos]
    if "allocate" in acked:
        ops += [Op("set_allocation", a, 0.0) for a in algos]
    if "activate" in acked:
        ops += [Op("activate", p) for p in previous.values()]
    return ops


def _failed(record: RollbackRecord) -> str:
    return ", ".join(f"{s.name} ({s.detail})" for s in record.steps if s.status != "acked")
