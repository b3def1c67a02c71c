"""Progressive: allocation follows the seed's confidence score through its threshold table,
re-evaluated every ``updateFrequency``; below the lowest threshold the allocation is 0."""

from __future__ import annotations

from collections.abc import Sequence

from rampart.deployment import ConfidenceThreshold, ProgressiveDeployment
from rampart.strategies.base import (
    TERMINAL,
    Activate,
    Decision,
    DeploymentState,
    Move,
    Observation,
    RollbackAction,
    SetAllocation,
    Verb,
    refuse,
)
from rampart.strategies.canary import _ns


def allocation_for(confidence: float, thresholds: Sequence[ConfidenceThreshold]) -> float:
    """The seed's ``CalculateAllocation``: the allocation of the highest threshold the score
    reaches, 0 below the lowest ("no confidence, no capital")."""
    reached = [t for t in thresholds if confidence >= t.confidence]
    if not reached:
        return 0.0
    return max(reached, key=lambda t: t.confidence).allocation


class ProgressiveMachine:
    strategy = "Progressive"

    def __init__(self, doc: ProgressiveDeployment) -> None:
        self.doc = doc
        self.config = doc.configuration
        self.algo = doc.algorithm_id

    def start(self, now: int, actor: str = "rampart") -> Decision:
        state = DeploymentState(
            deployment_id=self.doc.deployment_id,
            strategy=self.strategy,
            phase="progressive",
            started_at=now,
            phase_started_at=now,
            active=self.algo,
            funded=False,
        )
        move = Move(state, now, actor)
        move.go("progressive", "deployed: allocation follows confidence")
        move.do(
            SetAllocation(
                algo=self.algo,
                allocation=0.0,
                capital=self.config.total_capital,
                reason="no confidence yet",
            ),
            Activate(algo=self.algo, reason="progressive deployment"),
        )
        return move.decision()

    def step(self, state: DeploymentState, obs: Observation, now: int) -> Decision:
        if state.phase in TERMINAL or state.halted or state.paused:
            return Decision(state=state)
        due = state.last_update == 0 or now - state.last_update >= _ns(self.config.update_frequency)
        m = obs.metrics.get(self.algo)
        if not due or m is None:
            return Decision(state=state)
        move = Move(state, now, "rampart")
        move.state.last_update = now
        target = allocation_for(m.confidence, self.config.confidence_thresholds)
        if target != state.allocation:
            move.go(
                "progressive",
                f"confidence {m.confidence:.3f}: allocation {state.allocation:g} -> {target:g}",
                metrics=m,
                thresholds={
                    "confidence_thresholds": [
                        [t.confidence, t.allocation] for t in self.config.confidence_thresholds
                    ]
                },
            )
            move.state.allocation = target
            move.state.funded = move.state.funded or target > 0
            move.do(
                SetAllocation(
                    algo=self.algo,
                    allocation=target,
                    capital=self.config.total_capital,
                    reason=f"confidence {m.confidence:.3f}",
                )
            )
        return move.decision()

    def command(
        self, state: DeploymentState, verb: Verb, actor: str, now: int, *, trigger: str = "manual"
    ) -> Decision:
        if state.phase in TERMINAL:
            return refuse(state, f"deployment is {state.phase}")
        move = Move(state, now, actor)
        if verb == "abort" and not state.funded:
            # it never had capital: nothing to withdraw, nothing to halt
            move.go("aborted", f"abort by {actor} before any capital")
            move.state.outcome = f"abort by {actor}"
            return move.decision()
        if verb in ("abort", "halt"):
            move.go("aborted" if verb == "abort" else "rolled_back", f"{verb} by {actor}")
            move.state.allocation = 0.0
            move.state.halted = verb == "halt"
            move.state.outcome = f"{verb} by {actor}"
            move.do(
                RollbackAction(
                    algos=[self.algo],
                    trigger=trigger if verb == "halt" else "manual",
                    reason=f"{verb} by {actor}",
                )
            )
            return move.decision()
        if verb == "pause":
            move.state.paused = True
            return move.decision()
        if verb == "resume":
            if state.halted:
                return refuse(state, "halted: a halt is lifted only by releasing the algorithm")
            move.state.paused = False
            return move.decision()
        return refuse(state, f"{verb} does not apply to a progressive deployment")
