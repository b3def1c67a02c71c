"""Level-triggered control, the I/O part: one loop per gateway drives its algorithms until what the
gateway reports equals what Rampart wants (docs/operations.md, "Reconciliation").

The intents are stored before anything is sent (the daemon and the guard write them in the same
transaction as the decision that made them); each gateway reports its actual state in every
heartbeat. On every report, every intent change and every ``resync_interval``, the loop plans
with :func:`rampart.reconcile.plan` and sends what it plans: reductions first, increases only once
every reduction is acked. A failed send is retried with exponential backoff and jitter, at most
one batch per gateway at a time; the command id is kept while the command is the same, with a
fresh ``valid_until`` per attempt. Nothing here gives up, and no error ends a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import msgspec

from rampart.config import DaemonConfig
from rampart.protocol import (
    AlgoActual,
    Command,
    CommandKind,
    CommandTarget,
    ControlStatus,
    Intent,
)
from rampart.reconcile import IN_SYNC, AlgoPlan, Op, Plan, combine, describe, plan_algo
from rampart.rollback import RollbackExecutor
from rampart.tasks import stop_tasks

log = logging.getLogger("rampart.reconciler")

# Send order within one batch: the reductions' kinds first.
KIND_ORDER: Final[tuple[CommandKind, ...]] = (
    "halt",
    "set_allocation",
    "standby",
    "resume",
    "activate",
)
INTENT_KEY: Final = "intent/"

AdoptListener = Callable[[str, list[tuple[str, str]]], Awaitable[None]]


@dataclass(frozen=True)
class ReconcileSettings:
    # Plan again this often even when nothing happened (a lost heartbeat, a missed kick).
    resync_interval: float = 1.0
    # After a failed send: wait base x 2^n (up to max), with +-jitter, before the next.
    backoff_base: float = 0.1
    backoff_max: float = 5.0
    jitter: float = 0.2
    # How long one attempt of one command may take.
    deadline: float = 1.0
    # Drift older than this is alerted (once per episode).
    converge_timeout: float = 10.0


def reconcile_settings(config: DaemonConfig) -> ReconcileSettings:
    r = config.reconcile
    return ReconcileSettings(
        resync_interval=config.heartbeat_interval.total_seconds(),
        backoff_base=r.backoff_base.total_seconds(),
        backoff_max=r.backoff_max.total_seconds(),
        deadline=r.command_timeout.total_seconds(),
        converge_timeout=r.converge_timeout.total_seconds(),
    )


class Reconciler:
    """``intents`` holds the stored part of each algorithm's intent (allocation, activation); its
    halt comes from the guard's latches (``halted``)."""

    def __init__(
        self,
        executor: RollbackExecutor,
        gateways: Mapping[str, tuple[str, ...]],
        *,
        halted: Callable[[], Collection[str]],
        busy: Callable[[], Iterable[str]],
        on_adopt: AdoptListener,
        on_stuck: Callable[[str, str], Awaitable[None]],
        settings: ReconcileSettings | None = None,
        wall_clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.executor = executor
        self.gateways = dict(gateways)
        self.halted = halted
        self.busy = busy
        self.on_adopt = on_adopt
        self.on_stuck = on_stuck
        self.settings = settings or ReconcileSettings()
        self.wall_clock = wall_clock
        self.gateway_of = {a: gw for gw, algos in self.gateways.items() for a in algos}
        self.intents: dict[str, Intent] = {a: Intent(algo=a) for a in self.gateway_of}
        self.actual: dict[str, dict[str, AlgoActual]] = {}
        self.reported_at: dict[str, int] = {}
        self.drift_since: dict[str, int] = {}
        self.sends = 0
        self.send_failures = 0
        # acked but not yet in a heartbeat: the state each ack implies
        self._acked: dict[str, dict[str, AlgoActual]] = {}
        self._same: dict[tuple[str, CommandKind], tuple[tuple[Op, ...], str, int]] = {}
        # per algorithm: the inputs of its last plan (stored intent, halted, actual, all by
        # identity) and the plan; a pass re-plans only the algorithms whose inputs changed
        self._memo: dict[str, tuple[Intent | None, bool, AlgoActual | None, AlgoPlan]] = {}
        # per gateway: its algorithms' parts that are not in sync (what a plan is made of), the
        # algorithms to plan again at the next pass (None: all of them), and when the next full
        # pass is due (a full pass every resync_interval catches any change nobody kicked for)
        self._parts: dict[str, dict[str, AlgoPlan]] = {gw: {} for gw in self.gateways}
        self._dirty: dict[str, set[str] | None] = dict.fromkeys(self.gateways)
        self._next_full: dict[str, float] = dict.fromkeys(self.gateways, 0.0)
        self._order = {a: i for algos in self.gateways.values() for i, a in enumerate(algos)}
        self._kicks = {gw: asyncio.Event() for gw in self.gateways}
        self._stuck: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._alerts: set[asyncio.Task[None]] = set()
        self._rng = random.Random()

    # ---- intents ------------------------------------------------------------------------------

    def load(self, stored: Iterable[tuple[str, bytes]]) -> list[str]:
        """Intents from the store (``INTENT_KEY`` items); returns the unreadable ones."""
        bad = []
        for key, value in stored:
            algo = key.removeprefix(INTENT_KEY)
            try:
                intent = msgspec.json.decode(value, type=Intent)
            except msgspec.DecodeError as e:
                bad.append(f"{key}: {e}")
                continue
            if algo in self.intents:
                self.intents[algo] = msgspec.structs.replace(intent, algo=algo, halted=False)
        return bad

    def wanted(
        self,
        algo: str,
        *,
        allocation: float | None = None,
        active: bool | None = None,
        released_epoch: int | None = None,
        released_term: int | None = None,
    ) -> Intent:
        """The stored intent of ``algo`` with these parts changed (``None`` keeps a part).
        Store it (``item``) before ``remember``-ing it: the loops act on what is remembered."""
        cur = self.intents.get(algo, Intent(algo=algo))
        return msgspec.structs.replace(
            cur,
            allocation=cur.allocation if allocation is None else allocation,
            active=cur.active if active is None else active,
            released_epoch=cur.released_epoch if released_epoch is None else released_epoch,
            released_term=cur.released_term if released_term is None else released_term,
            halted=False,
        )

    @staticmethod
    def item(intent: Intent) -> tuple[str, bytes]:
        """The store item of an intent (its halt lives in the latches)."""
        return INTENT_KEY + intent.algo, msgspec.json.encode(intent)

    def remember(self, intents: Iterable[Intent]) -> None:
        """Stored intents: act on them."""
        changed = []
        for intent in intents:
            self.intents[intent.algo] = intent
            changed.append(intent.algo)
        self.kick(changed)

    def intent(self, algo: str) -> Intent:
        base = self.intents.get(algo, Intent(algo=algo))
        # membership in the latches' own view: O(1), never a copy per algorithm
        return msgspec.structs.replace(base, halted=algo in self.halted())

    def kick(self, algos: Iterable[str] | None = None) -> None:
        """Plan again now: for these algorithms' gateways (every gateway with ``None``)."""
        if algos is None:
            targets = set(self.gateways)
            for gw in targets:
                self._dirty[gw] = None
        else:
            targets = set()
            for a in algos:
                owner = self.gateway_of.get(a)
                if owner is not None:
                    targets.add(owner)
                    self._mark(owner, (a,))
        for gw in targets:
            self._kicks[gw].set()

    def _mark(self, gateway: str, algos: Iterable[str]) -> None:
        dirty = self._dirty[gateway]
        if dirty is not None:
            dirty.update(algos)

    # ---- reports --------------------------------------------------------------------------------

    def on_report(self, gateway: str, ts: int, state: list[AlgoActual] | None) -> None:
        """A heartbeat's actual state (``None``: the same as the previous report's): it
        replaces the previous report and every ack received before it (the gateway's word now;
        one sent just before an ack arrived costs at most a duplicate command, which the
        gateway applies idempotently). An unchanged report changes no plan: the loop's resync
        covers it."""
        if gateway not in self.gateways:
            return
        self.reported_at[gateway] = self.wall_clock()
        acked = self._acked.pop(gateway, None)
        changed = acked is not None
        if acked:
            self._mark(gateway, acked)
        if state is not None or gateway not in self.actual:
            # the epochs it holds, of its own algorithms only (a gateway speaks for those)
            owner = self.gateway_of
            self.executor.observe(a for a in state or () if owner.get(a.algo) == gateway)
            self.actual[gateway] = {a.algo: a for a in state or ()}
            self._dirty[gateway] = None
            changed = True
        if changed:
            self._kicks[gateway].set()

    def seen(self, gateway: str) -> Mapping[str, AlgoActual]:
        """The gateway's actual state: its last report, with what it has acked since."""
        acked = self._acked.get(gateway)
        if not acked:
            return self.actual.get(gateway, {})
        seen = dict(self.actual.get(gateway, {}))
        seen.update(acked)
        return seen

    def seen_one(self, gateway: str, algo: str) -> AlgoActual | None:
        acked = self._acked.get(gateway)
        if acked and algo in acked:
            return acked[algo]
        return self.actual.get(gateway, {}).get(algo)

    def plan_for(self, gateway: str, *, full: bool = True) -> Plan:
        """The gateway's plan. ``full``: look at every algorithm; otherwise only at those
        marked since the last pass (by ``kick``, ``remember``, a changed report or an ack):
        the caller promises that nothing else changed (the guard kicks for every latch it sets
        or lifts). Either way an algorithm is planned again only when its stored intent, its
        latch or its actual state is another object than at its last plan (reports and acks
        replace objects, never change them), so a pass costs a lookup per algorithm looked at,
        and the plan is made of the parts not in sync."""
        dirty = self._dirty[gateway]
        self._dirty[gateway] = set()
        looked = self.gateways[gateway] if full or dirty is None else dirty
        seen = self.seen(gateway)
        halted = self.halted()
        memo = self._memo
        parts = self._parts[gateway]
        for algo in looked:
            base = self.intents.get(algo)
            h = algo in halted
            act = seen.get(algo)
            m = memo.get(algo)
            if m is None or m[0] is not base or m[1] != h or m[2] is not act:
                intent = msgspec.structs.replace(base or Intent(algo=algo), halted=h)
                m = memo[algo] = (base, h, act, plan_algo(intent, act))
            if m[3] is IN_SYNC:
                parts.pop(algo, None)
            else:
                parts[algo] = m[3]
        order = self._order
        return combine(sorted(parts.items(), key=lambda kv: order[kv[0]]))

    def control_status(self, algo: str, gateway: str) -> ControlStatus:
        intent = self.intent(algo)
        actual = self.seen_one(gateway, algo)
        drift = describe(intent, actual)
        return ControlStatus(
            intent=intent,
            actual=actual,
            in_sync=drift is None,
            drift=drift,
            drift_since=self.drift_since.get(algo) if drift is not None else None,
        )

    # ---- the loops ------------------------------------------------------------------------------

    def start(self) -> None:
        for gw in self.gateways:
            task = asyncio.ensure_future(self._loop(gw))
            task.set_name(f"reconcile-{gw}")
            self._tasks.append(task)

    async def close(self) -> None:
        self._closed = True
        await stop_tasks(self._tasks, "reconciler")
        self._tasks.clear()

    async def _loop(self, gateway: str) -> None:
        kick = self._kicks[gateway]
        s = self.settings
        backoff = s.backoff_base
        wait = s.resync_interval
        while not self._closed:
            # (asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # races the event being set, and close() would then wait forever)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await kick.wait()
            kick.clear()
            wait = s.resync_interval
            try:
                ok = await self._step(gateway)
            except Exception:  # a bug must not end the loop: log it and go on planning
                log.exception("reconciling %s failed; trying again", gateway)
                ok = False
            if ok is None:
                backoff = s.backoff_base
            elif ok:
                backoff = s.backoff_base
                wait = 0.0  # plan again at once: the acks may allow the increases
            else:
                jitter = 1.0 + s.jitter * (2 * self._rng.random() - 1)
                wait = backoff * jitter
                backoff = min(backoff * 2, s.backoff_max)

    async def _step(self, gateway: str) -> bool | None:
        """One round: ``None`` when nothing was sent, else whether every command was acked."""
        if gateway not in self.actual:
            return None  # no report yet: nothing to compare with
        if any(self.gateway_of.get(a) == gateway for a in self.busy()):
            return None  # a rollback is on it; it kicks when done
        now = time.monotonic()
        full = now >= self._next_full[gateway]
        if full:
            self._next_full[gateway] = now + self.settings.resync_interval
        p = self.plan_for(gateway, full=full)
        self._track_drift(gateway, p)
        if p.adopt:
            adopted = [a for a, _ in p.adopt]
            await self.on_adopt(gateway, list(p.adopt))
            self._mark(gateway, adopted)  # their latches changed: plan them again
            return True  # the latches changed the intents: plan again
        if not p.ops:
            return None
        return await self._send(gateway, p.ops)

    def _track_drift(self, gateway: str, p: Plan) -> None:
        now = self.wall_clock()
        halted = self.halted()
        drifting: set[str] = set()
        for algo, text in p.drift.items():
            act = self.seen_one(gateway, algo)
            # what the rules hold back on a halted algorithm (no capital, no activation) is not
            # a failure to converge
            if algo in halted and act is not None and act.halted:
                continue
            drifting.add(algo)
            since = self.drift_since.setdefault(algo, now)
            age = (now - since) / 1e9
            if age > self.settings.converge_timeout and algo not in self._stuck:
                self._stuck.add(algo)
                self._notify(self.on_stuck(gateway, f"{algo}: {text} for {age:.1f}s"))
        gw_of = self.gateway_of
        for algo in [a for a in self.drift_since if a not in drifting and gw_of[a] == gateway]:
            del self.drift_since[algo]
            self._stuck.discard(algo)

    def _notify(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._alerts.add(task)
        task.add_done_callback(self._alerts.discard)

    async def _send(self, gateway: str, ops: tuple[Op, ...]) -> bool:
        by_kind: dict[CommandKind, list[Op]] = {}
        for op in ops:
            by_kind.setdefault(op.kind, []).append(op)
        for kind in KIND_ORDER:
            batch = tuple(by_kind.get(kind, ()))
            if not batch:
                continue
            cmd = self._command(gateway, kind, batch)
            self.sends += 1
            outcome = await self.executor.send(gateway, cmd, self.settings.deadline)
            done = [op for op in batch if op.algo not in outcome.failed]
            self._apply_acks(gateway, done)
            if not outcome.ok:
                self.send_failures += 1
                if "stale_epoch" in outcome.detail:
                    self._same.pop((gateway, kind), None)  # a newer decision: new epoch
                log.warning(
                    "reconcile %s: %s of %s not acked: %s",
                    gateway,
                    kind,
                    ", ".join(outcome.failed),
                    outcome.detail,
                )
                return False  # nothing further (no increase after a failed reduction)
            self._same.pop((gateway, kind), None)
        return True

    def _command(self, gateway: str, kind: CommandKind, batch: tuple[Op, ...]) -> Command:
        targets = [CommandTarget(algo=op.algo, allocation=op.allocation) for op in batch]
        cmd = self.executor.command(
            kind, targets, self.executor.epochs.next(), self.settings.deadline, "reconcile"
        )
        same = self._same.get((gateway, kind))
        if same is not None and same[0] == batch:
            # the same command again: same id and epoch (applied once), a fresh valid_until
            cmd = msgspec.structs.replace(cmd, command_id=same[1], epoch=same[2])
        else:
            self._same[(gateway, kind)] = (batch, cmd.command_id, cmd.epoch)
        return cmd

    def note_acked(self, ops: Iterable[Op]) -> None:
        """Commands sent by someone else (a deployment's decision, a rollback) that the gateway
        acked: they count as its actual state until its next report."""
        by_gateway: dict[str, list[Op]] = {}
        for op in ops:
            gw = self.gateway_of.get(op.algo)
            if gw is not None:
                by_gateway.setdefault(gw, []).append(op)
        for gw, done in by_gateway.items():
            self._apply_acks(gw, done)

    def _apply_acks(self, gateway: str, done: list[Op]) -> None:
        if not done:
            return
        acked = self._acked.setdefault(gateway, {})
        self._mark(gateway, (op.algo for op in done))
        for op in done:
            cur = self.seen_one(gateway, op.algo) or AlgoActual(algo=op.algo, halted=False)
            match op.kind:
                case "halt":
                    new = msgspec.structs.replace(cur, halted=True, halt_cause="command")
                case "resume":
                    new = msgspec.structs.replace(cur, halted=False, halt_cause=None)
                case "set_allocation":
                    new = msgspec.structs.replace(cur, allocation=op.allocation)
                case "activate":
                    new = msgspec.structs.replace(cur, active=True)
                case _:
                    new = msgspec.structs.replace(cur, active=False)
            acked[op.algo] = new
