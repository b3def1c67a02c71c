"""Runs deployments: feeds their state machines metrics at event-time decision points, applies
the engine-side effects of their actions, and hands the rest (gateway commands, rollbacks,
alerts) back to the caller. The live daemon and the replay tool both drive this class, from the
same events, so they reach the same decisions.

Decision points are fixed in event time: every ``decision_interval`` of the engine clock (the
first event at or after each boundary triggers one), plus each breach as it happens. Nothing
here reads a clock or does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec

from rampart._core import Breach, Engine
from rampart.deployment import (
    BlueGreenDeployment,
    Deployment,
    decode_deployment,
    encode_deployment,
)
from rampart.strategies import (
    TERMINAL,
    Decision,
    DeploymentState,
    Machine,
    Observation,
    Verb,
    machine_for,
)
from rampart.strategies.base import MarkStage, NewMeasurement, RollbackAction, SetAllocation

DEFAULT_DECISION_INTERVAL_NS = 1_000_000_000


class DeploymentError(ValueError):
    """A deployment cannot be started or commanded; the message says why."""


@dataclass
class Running:
    document: Deployment
    machine: Machine
    state: DeploymentState


@dataclass
class Outcome:
    """One decision of one deployment, ready for the caller to persist and carry out."""

    deployment_id: str
    decision: Decision
    breach: Breach | None = None


def algorithms_of(doc: Deployment) -> list[str]:
    if isinstance(doc, BlueGreenDeployment):
        return [doc.configuration.blue_version, doc.configuration.green_version]
    return [doc.algorithm_id]


class StoredDeployment(msgspec.Struct, frozen=True, kw_only=True):
    """What is persisted per deployment: the document as written and the machine's state."""

    document: msgspec.Raw
    state: DeploymentState


_stored_decoder = msgspec.json.Decoder(StoredDeployment)


@dataclass
class DeploymentRunner:
    engine: Engine
    decision_interval_ns: int = DEFAULT_DECISION_INTERVAL_NS
    # algorithm id -> does its gateway report itself healthy (blue/green's validation)
    healthy: Callable[[str], bool] = field(default=lambda _algo: True)
    # algorithm id -> its configured capital (what an allocation without a total applies to)
    capital_of: Callable[[str], float] | None = None
    # algorithm id -> does its gateway report what Rampart wants of it (the reconciler's view;
    # replays have no gateways: always)
    converged: Callable[[str], bool] = field(default=lambda _algo: True)
    # algorithm id -> has its gateway reported it since this process started (or took over)
    reported: Callable[[str], bool] = field(default=lambda _algo: True)
    deployments: dict[str, Running] = field(default_factory=dict)
    next_decision_at: int = 0

    # ---- life cycle -----------------------------------------------------------------------

    def deploy(self, doc: Deployment, now: int, actor: str) -> Outcome:
        if doc.deployment_id in self.deployments:
            state = self.deployments[doc.deployment_id].state
            if state.phase not in TERMINAL:
                raise DeploymentError(
                    f"deployment {doc.deployment_id!r} is already running ({state.phase})"
                )
        busy = self.algorithms_in_use()
        for algo in algorithms_of(doc):
            if algo not in self.engine:
                raise DeploymentError(
                    f"algorithm {algo!r} is not governed by this daemon: add it to "
                    "`algorithms` in the daemon configuration (with its gateway)"
                )
            owner = busy.get(algo)
            if owner is not None and owner != doc.deployment_id:
                raise DeploymentError(f"algorithm {algo!r} is in deployment {owner!r} already")
        machine = machine_for(doc)
        decision = machine.start(now, actor)
        self.deployments[doc.deployment_id] = Running(doc, machine, decision.state)
        # the first decision is at the next boundary after the deployment starts
        interval = self.decision_interval_ns
        self.next_decision_at = max(self.next_decision_at, (now // interval + 1) * interval)
        self._apply_local(decision)
        return Outcome(doc.deployment_id, decision)

    def algorithms_in_use(self) -> dict[str, str]:
        return {
            algo: dep_id
            for dep_id, r in self.deployments.items()
            if r.state.phase not in TERMINAL
            for algo in algorithms_of(r.document)
        }

    def restore(self, stored: bytes) -> str:
        """Load a deployment saved by :meth:`dump`; raises ValueError if unreadable."""
        s = _stored_decoder.decode(stored)
        doc = decode_deployment(bytes(s.document))
        self.deployments[doc.deployment_id] = Running(doc, machine_for(doc), s.state)
        return doc.deployment_id

    def dump(self, deployment_id: str, state: DeploymentState | None = None) -> bytes:
        """The stored form of a deployment, at ``state`` (default: its current state). The
        daemon stores each decision's own state, so what is stored never runs ahead of the
        transitions recorded with it."""
        r = self.deployments[deployment_id]
        document = msgspec.Raw(encode_deployment(r.document))
        return msgspec.json.encode(StoredDeployment(document=document, state=state or r.state))

    # ---- decisions --------------------------------------------------------------------------

    def observe(self, r: Running) -> Observation:
        algos = algorithms_of(r.document)
        return Observation(
            {a: self.engine.snapshot(a) for a in algos}, {a: self.healthy(a) for a in algos}
        )

    def tick(self, now: int) -> list[Outcome]:
        """Decide every running deployment if ``now`` has reached the next decision point."""
        if now < self.next_decision_at:
            return []
        interval = self.decision_interval_ns
        self.next_decision_at = (now // interval + 1) * interval
        return self.decide(now)

    def decide(self, now: int) -> list[Outcome]:
        out = []
        for dep_id, r in self.deployments.items():
            if r.state.phase in TERMINAL:
                continue
            decision = r.machine.step(r.state, self.observe(r), now)
            algos = algorithms_of(r.document)
            settled = all(self.converged(a) for a in algos)
            if not settled and not r.state.halted and not _protects(decision):
                if not all(self.reported(a) for a in algos):
                    # This process has not heard the gateway since it started or took over: it
                    # does not know that the gateway lags, so nothing moves, timers included
                    # (a failover or a restart does not restart a stage's minimum duration).
                    continue
                # The gateway does not do what was decided yet: the deployment holds (its limits
                # and thresholds still act: a rollback goes through), and its stage and phase
                # count from when the gateway does, not from when it was sent.
                held = self._hold(r.state, now)
                if held is not None:
                    r.state = held
                    out.append(Outcome(dep_id, Decision(state=held)))
                continue
            if decision.actions or decision.transitions or decision.state != r.state:
                r.state = decision.state
                self._apply_local(decision)
                out.append(Outcome(dep_id, decision))
        return out

    @staticmethod
    def _hold(state: DeploymentState, now: int) -> DeploymentState | None:
        """The state with its timers restarted at ``now`` (``None``: already there)."""
        if state.phase_started_at == now and state.stage_started_at in (0, now):
            return None
        held = msgspec.structs.replace(state, phase_started_at=now)
        if state.stage_started_at:
            held.stage_started_at = now
        return held

    def on_breaches(self, breaches: Iterable[Breach], now: int) -> list[Outcome]:
        """A limit tripped in the core: the deployments trading that algorithm are halted
        (their rollback is the guard's; the state machine records it, with the guard's trigger
        ``limit:<kind>``)."""
        out = []
        for b in breaches:
            for dep_id, r in self.deployments.items():
                if r.state.phase in TERMINAL or b.algo_id != r.state.active:
                    continue
                trigger = f"limit:{b.kind}"
                decision = r.machine.command(
                    r.state, "halt", f"rampart:{trigger}", now, trigger=trigger
                )
                if decision.refused is None:
                    r.state = decision.state
                    self._apply_local(decision)
                    out.append(Outcome(dep_id, decision, breach=b))
        return out

    def on_rollback(
        self, algos: Iterable[str], actor: str, now: int, trigger: str = "manual"
    ) -> list[Outcome]:
        """A rollback outside the strategy (a limit, staleness, a person): the deployments
        trading those algorithms record the halt, caused by ``trigger`` (the guard's)."""
        out = []
        hit = set(algos)
        for dep_id, r in self.deployments.items():
            if r.state.phase in TERMINAL or r.state.active not in hit:
                continue
            decision = r.machine.command(r.state, "halt", actor, now, trigger=trigger)
            if decision.refused is None:
                r.state = decision.state
                self._apply_local(decision)
                out.append(Outcome(dep_id, decision))
        return out

    def command(self, deployment_id: str, verb: Verb, actor: str, now: int) -> Outcome:
        r = self.deployments.get(deployment_id)
        if r is None:
            known = ", ".join(sorted(self.deployments)) or "none"
            raise DeploymentError(f"unknown deployment {deployment_id!r}; known: {known}")
        decision = r.machine.command(r.state, verb, actor, now)
        if decision.refused is None:
            r.state = decision.state
            self._apply_local(decision)
        return Outcome(deployment_id, decision)

    # ---- engine-side effects ------------------------------------------------------------------

    def _apply_local(self, decision: Decision) -> None:
        """Effects on the engine itself, applied at once so live and replay agree: stage marks,
        the capital each algorithm is measured against, and a new measurement."""
        for action in decision.actions:
            if isinstance(action, MarkStage):
                self.engine.mark_stage(action.algo)
            elif isinstance(action, NewMeasurement) and self.engine.now is not None:
                self.engine.new_measurement(action.algo, self.engine.now)
            elif isinstance(action, SetAllocation) and action.allocation > 0:
                base = action.capital
                if base is None:
                    base = (
                        self.capital_of(action.algo)
                        if self.capital_of is not None
                        else self.engine.snapshot(action.algo).capital
                    )
                if base > 0 and self.engine.now is not None:
                    self.engine.set_capital(action.algo, action.allocation * base, self.engine.now)


def _protects(decision: Decision) -> bool:
    """A decision that takes risk away (a rollback, a halt, an end): never held back."""
    return (
        decision.state.halted
        or decision.state.phase in TERMINAL
        or any(isinstance(a, RollbackAction) for a in decision.actions)
    )
