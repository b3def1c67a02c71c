"""The deployments' effects: every decision of the :class:`~rampart.runner.DeploymentRunner` is
stored first (its state, its transitions with an audit record each, the intents its actions set
and the core checkpoints, in one transaction), then carried out: reductions sent and acked before
any increase (docs/operations.md, "Reconciliation"). The strategies stay pure; this is their I/O.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

import msgspec

from rampart import failpoints
from rampart.checkpoints import Checkpointer, put_all
from rampart.deployment import Deployment
from rampart.guard import Guard
from rampart.protocol import CommandKind, Intent
from rampart.reconcile import Op, split_actions
from rampart.reconciler import INTENT_KEY, Reconciler
from rampart.rollback import StepOutcome
from rampart.runner import DeploymentRunner, Outcome
from rampart.store import Store
from rampart.strategies import TERMINAL, Action, Decision, DeploymentState, Verb
from rampart.strategies.base import (
    Activate,
    Complete,
    Decommission,
    RequestApproval,
    RollbackAction,
    SetAllocation,
    Standby,
)

log = logging.getLogger("rampart.effects")

DEPLOYMENT_KEY: Final = "deployment/"


class DeploymentEffects:
    """Stores and carries out the runner's decisions, one batch at a time, off the hot path:
    ingest only ``queue``-s them. ``stored_states`` is each deployment's state as last stored,
    which is what status shows (a decision not stored yet would be lost by a crash)."""

    def __init__(
        self,
        runner: DeploymentRunner,
        store: Store,
        guard: Guard,
        reconciler: Reconciler,
        checkpointer: Checkpointer,
        *,
        now: Callable[[], int],
        failed: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.runner = runner
        self.store = store
        self.guard = guard
        self.reconciler = reconciler
        self.checkpointer = checkpointer
        self.now = now
        self.failed = failed
        self.stored_states: dict[str, DeploymentState] = {}
        self._outcomes: asyncio.Queue[list[Outcome]] = asyncio.Queue()
        self._busy = False

    # ---- start --------------------------------------------------------------------------------

    def load_deployments(self) -> str | None:
        """Restore every stored deployment (in a thread); returns what was unreadable (the
        daemon then fails closed), else ``None``."""
        problems = []
        for key, value in self.store.items(DEPLOYMENT_KEY):
            try:
                self.runner.restore(value)
            except (ValueError, msgspec.DecodeError) as e:
                problems.append(f"{key}: {e}")
                continue
            dep_id = key.removeprefix(DEPLOYMENT_KEY)
            if dep_id in self.runner.deployments:
                self.stored_states[dep_id] = self.runner.deployments[dep_id].state
        if problems:
            text = "unreadable deployment state: " + "; ".join(problems)
            log.critical("%s; every algorithm starts HALTED", text)
            return text
        return None

    def load_intents(self) -> str | None:
        """The stored intents; returns what was unreadable (the daemon then fails closed)."""
        bad = self.reconciler.load(self.store.items(INTENT_KEY))
        if bad:
            text = "unreadable intent: " + "; ".join(bad)
            log.critical("%s; every algorithm starts HALTED", text)
            return text
        return None

    async def seed_intents(self) -> None:
        """Running deployments stored before intents were (an older Rampart): their state is the
        intent of their algorithms. Stored first; the reconciler then drives the gateways."""
        rec, intents = self.reconciler, []
        for r in self.runner.deployments.values():
            s = r.state
            if s.phase in TERMINAL or s.halted:
                continue
            if rec.intents.get(s.active) == Intent(algo=s.active):
                intents.append(rec.wanted(s.active, allocation=s.allocation, active=True))
                if s.standby:
                    intents.append(rec.wanted(s.standby, active=False))
        if intents:
            await asyncio.to_thread(put_all, self.store, [rec.item(i) for i in intents])
            rec.remember(intents)

    # ---- the queue ----------------------------------------------------------------------------

    def queue(self, outcomes: list[Outcome]) -> None:
        """Decisions made on the hot path: stored and carried out by ``worker``, in order."""
        if outcomes:
            self._outcomes.put_nowait(outcomes)

    async def worker(self) -> None:
        while True:
            outcomes = await self._outcomes.get()
            if self.failed() is not None:
                continue  # failed closed: nothing more is decided (the guard halts everything)
            self._busy = True
            try:
                for outcome in outcomes:
                    try:
                        await self.persist(outcome)
                        await self.carry_out(outcome.deployment_id, outcome.decision.actions)
                    except Exception:
                        log.exception("deployment %s: effects failed", outcome.deployment_id)
            finally:
                self._busy = False

    def idle(self) -> bool:
        """No deployment decision or rollback is being carried out or waiting to be."""
        return self._outcomes.empty() and not self._busy and not self.guard.in_flight

    # ---- operator verbs -----------------------------------------------------------------------

    def _refuse_if_failed(self) -> None:
        reason = self.failed()
        if reason is not None:
            raise RuntimeError(
                f"refused: Rampart failed closed ({reason}); every algorithm is halted: fix the "
                "cause and restart Rampart"
            )

    async def deploy(self, doc: Deployment, actor: str) -> DeploymentState:
        self._refuse_if_failed()
        outcome = self.runner.deploy(doc, self.now(), actor)
        await self.persist(outcome)
        await self.carry_out(outcome.deployment_id, outcome.decision.actions)
        return outcome.decision.state

    async def command(self, deployment_id: str, verb: Verb, actor: str) -> Decision:
        self._refuse_if_failed()
        outcome = self.runner.command(deployment_id, verb, actor, self.now())
        if outcome.decision.refused is None:
            await self.persist(outcome)
            await self.carry_out(deployment_id, outcome.decision.actions)
        return outcome.decision

    # ---- store, then act ----------------------------------------------------------------------

    async def persist(self, outcome: Outcome) -> None:
        """The new state and every transition (an audit record each), in one transaction."""
        store, dep_id = self.store, outcome.deployment_id
        data = self.runner.dump(dep_id, outcome.decision.state)
        transitions = outcome.decision.transitions
        checkpoints = self.checkpointer.take()
        intents = self.intents_of(outcome.decision.actions)
        items = [Reconciler.item(i) for i in intents]

        def write() -> None:
            store.put(DEPLOYMENT_KEY + dep_id, data)
            for key, value in items:
                store.put(key, value)
            for t in transitions:
                store.append_audit("transition", msgspec.to_builtins(t), actor=t.actor, ts=t.at)

        # with the core checkpoints, in one transaction, after every round taken before them
        await self.checkpointer.write(checkpoints, write)
        self.stored_states[dep_id] = outcome.decision.state
        self.reconciler.remember(intents)
        if transitions:
            failpoints.hit("after_persist")  # crash tests: stored, not yet carried out
        await self.guard.mirror_state(f"deployment.{dep_id}", data)
        for t in transitions:
            log.info(
                "deployment %s: %s/%d -> %s/%d by %s: %s",
                dep_id,
                t.from_phase,
                t.from_stage,
                t.to_phase,
                t.to_stage,
                t.actor,
                t.reason,
            )

    def intents_of(self, actions: list[Action]) -> list[Intent]:
        """The intents a decision's actions set (stored with the decision, before any is sent).
        A rollback's intents are the guard's (stored with its latch)."""
        wanted: dict[str, Intent] = {}
        for a in actions:
            change: dict[str, Any]
            if isinstance(a, SetAllocation):
                change = {"allocation": a.allocation}
            elif isinstance(a, (Activate, Standby, Decommission)):
                change = {"active": isinstance(a, Activate)}
            else:
                continue
            base = wanted.get(a.algo) or self.reconciler.wanted(a.algo)
            wanted[a.algo] = msgspec.structs.replace(base, **change)
        return list(wanted.values())

    async def carry_out(self, dep_id: str, actions: list[Action]) -> None:
        """Send a decision's commands: reductions (rollbacks, allocations to 0, standbys) first
        and acked before any increase; if one is not acked, the increases are held (their
        intents are stored: the reconciler sends them, in order, once the reductions hold)."""
        guard = self.guard
        reductions, increases, notices = split_actions(actions)
        acked = True
        for r in reductions:
            acked = await self._send(dep_id, r) and acked
        if not acked and increases:
            await guard.alert(
                "emergency",
                f"deployment {dep_id}: increases held",
                "a reduction was not acked, so "
                + ", ".join(f"{type(i).__name__}({i.algo})" for i in increases)
                + " waits: the reconciler sends it once the gateway reports the reductions",
                algos=[i.algo for i in increases],
            )
        else:
            for i in increases:
                held = self._held_back(i.algo)
                if held is not None:  # its intent is stored: nothing is sent while it is halted
                    log.warning(
                        "deployment %s: %s(%s) not sent: %s", dep_id, type(i).__name__, i.algo, held
                    )
                    continue
                await self._send(dep_id, i)
        for n in notices:
            if isinstance(n, RequestApproval):
                title = f"deployment {dep_id} waits for `{n.verb}`"
                await guard.alert("warning", title, n.reason, algos=[])
            elif isinstance(n, Complete):
                await guard.alert("info", f"deployment {dep_id} completed", n.reason, algos=[])

    def _held_back(self, algo: str) -> str | None:
        """Why an increase for ``algo`` must not go out now, or None: a halt (a rollback, a fail
        closed) that came while the decision was being stored or its reductions sent. Checked
        right before each send: the halt is already at the gateway, and an allocation with a
        later epoch would still be applied there."""
        reason = self.failed()
        if reason is not None:
            return f"Rampart failed closed ({reason})"
        if algo in self.guard.halted or algo in self.guard.in_flight:
            return f"{algo} is halted"
        return None

    async def _send(self, dep_id: str, a: Action) -> bool:
        """One command action, now; True when every gateway acked it."""
        guard = self.guard
        ex = guard.executor
        outcomes: list[StepOutcome] = []
        op: Op | None = None
        if isinstance(a, SetAllocation):
            outcomes = [await ex.set_allocation(a.algo, a.allocation, a.reason, deadline=1.0)]
            op = Op("set_allocation", a.algo, a.allocation)
        elif isinstance(a, (Activate, Standby, Decommission)):
            kind: CommandKind = "activate" if isinstance(a, Activate) else "standby"
            outcomes = list((await ex.broadcast(kind, [a.algo], a.reason, deadline=1.0)).values())
            op = Op(kind, a.algo)
        elif isinstance(a, RollbackAction):
            task = guard.trigger(
                a.algos, "algo", f"strategy:{a.trigger}", a.reason, force=True, previous=a.previous
            )
            record = await task if task is not None else None
            return record is not None and record.state == "succeeded"
        acked = all(o.ok for o in outcomes)
        if acked and op is not None:
            self.reconciler.note_acked([op])
        for failed in (o for o in outcomes if not o.ok):
            await guard.alert(
                "emergency",
                f"deployment {dep_id}: {type(a).__name__} not acked",
                failed.detail,
                algos=failed.failed,
            )
        return acked
