"""Blue/green: green deployed at 0% and warmed up, its health validated, an instant cutover, a
monitoring window with automatic rollback, then blue decommissioned. Exactly one version trades
at any time; blue stays in standby until the window has passed."""

from __future__ import annotations

from rampart.deployment import BlueGreenDeployment
from rampart.strategies.base import (
    TERMINAL,
    Activate,
    Complete,
    Decision,
    Decommission,
    DeploymentState,
    MarkStage,
    Metrics,
    Move,
    Observation,
    Phase,
    RollbackAction,
    SetAllocation,
    Standby,
    Verb,
    refuse,
)
from rampart.strategies.canary import _ns, breach, thresholds_dict

# Green's return since cutover may trail blue's return over the warm-up by at most this much
# (a fraction of capital) before the PnL trajectory counts as broken. Rampart's default.
TRAJECTORY_TOLERANCE = 0.01


class BlueGreenMachine:
    strategy = "BlueGreen"

    def __init__(self, doc: BlueGreenDeployment) -> None:
        self.doc = doc
        self.config = doc.configuration
        self.blue = self.config.blue_version
        self.green = self.config.green_version

    def start(self, now: int, actor: str = "rampart") -> Decision:
        state = DeploymentState(
            deployment_id=self.doc.deployment_id,
            strategy=self.strategy,
            phase="warmup",
            started_at=now,
            phase_started_at=now,
            active=self.blue,
            standby=self.green,
            allocation=1.0,
        )
        move = Move(state, now, actor)
        move.go("warmup", f"green {self.green} deployed at 0%, warming up")
        move.do(
            SetAllocation(algo=self.green, allocation=0.0, reason="deploy green"),
            Standby(algo=self.green, reason="warm-up: loaded, receiving data, not trading"),
            MarkStage(algo=self.blue, reason="blue's reference return over the warm-up"),
        )
        return move.decision()

    def _return(self, m: Metrics) -> float:
        return m.stage_pnl / m.capital if m.capital > 0 else 0.0

    def step(self, state: DeploymentState, obs: Observation, now: int) -> Decision:
        if state.phase in TERMINAL or state.halted:
            return Decision(state=state)
        move = Move(state, now, "rampart")
        t = self.config.rollback_thresholds
        elapsed = now - state.phase_started_at
        if state.phase == "warmup":
            if elapsed >= _ns(self.config.warmup_duration):
                move.go("validating", "warm-up done: validating green's health")
            return move.decision()
        if state.phase == "validating":
            if obs.healthy.get(self.green):
                self._cutover(move, obs.metrics.get(self.blue))
            elif elapsed >= _ns(self.config.warmup_duration):
                move.go("rolled_back", "green failed health validation; blue keeps trading")
                move.state.outcome = "green unhealthy"
                move.do(Decommission(algo=self.green, reason="failed health validation"))
            return move.decision()
        # monitoring: green trades, blue waits in standby
        m = obs.metrics.get(self.green)
        if m is None:
            return move.decision()
        broken = breach(m, t, m.capital)
        if broken is None and state.reference_return is not None:
            ret = self._return(m)
            if ret < state.reference_return - TRAJECTORY_TOLERANCE:
                broken = (
                    f"PnL trajectory: green returned {ret:.4%} since cutover, blue "
                    f"{state.reference_return:.4%} over the warm-up"
                )
        if broken is not None and self.config.auto_rollback:
            self._roll_back(move, f"limit: {broken}", "limit", m)
        elif elapsed >= _ns(self.config.monitoring_duration):
            move.go(
                "completed", "monitoring window passed", metrics=m, thresholds=thresholds_dict(t)
            )
            move.state.standby = None
            move.state.outcome = "completed"
            move.do(
                Decommission(algo=self.blue, reason="green held through the monitoring window"),
                Complete(reason=f"{self.green} is live"),
            )
        return move.decision()

    def _cutover(self, move: Move, blue: Metrics | None) -> None:
        move.go("monitoring", "green healthy: instant cutover", metrics=blue)
        move.state.active = self.green
        move.state.standby = self.blue
        move.state.reference_return = self._return(blue) if blue is not None else None
        move.do(
            Activate(algo=self.green, reason="cutover"),
            SetAllocation(algo=self.green, allocation=1.0, reason="cutover"),
            SetAllocation(algo=self.blue, allocation=0.0, reason="cutover"),
            Standby(algo=self.blue, reason="cutover: blue kept warm for an instant rollback"),
            MarkStage(algo=self.green, reason="green's PnL since cutover"),
        )

    def _roll_back(
        self,
        move: Move,
        reason: str,
        trigger: str,
        m: Metrics | None,
        phase: Phase = "rolled_back",
    ) -> None:
        t = thresholds_dict(self.config.rollback_thresholds)
        move.go(phase, reason, metrics=m, thresholds=t)
        move.state.active = self.blue
        move.state.standby = None
        move.state.outcome = reason
        move.do(
            # the rollback itself re-activates blue; its capital comes back with it
            RollbackAction(
                algos=[self.green],
                trigger=trigger,
                reason=reason,
                previous={self.green: self.blue},
            ),
            SetAllocation(algo=self.blue, allocation=1.0, reason="rollback to blue"),
        )

    def command(
        self, state: DeploymentState, verb: Verb, actor: str, now: int, *, trigger: str = "manual"
    ) -> Decision:
        if state.phase in TERMINAL:
            return refuse(state, f"deployment is {state.phase}")
        move = Move(state, now, actor)
        if verb in ("abort", "halt"):
            phase: Phase = "aborted" if verb == "abort" else "rolled_back"
            if state.phase == "monitoring":
                cause = trigger if verb == "halt" else "manual"
                self._roll_back(move, f"{verb} by {actor}", cause, None, phase)
            else:
                move.go(phase, f"{verb} by {actor} before cutover")
                move.state.standby = None
                move.do(Decommission(algo=self.green, reason=f"{verb} before cutover"))
            move.state.halted = verb == "halt"
            move.state.outcome = f"{verb} by {actor}"
            return move.decision()
        if verb == "pause":
            return refuse(state, "blue/green has no stages to pause; abort to keep blue")
        if verb == "promote":
            if state.phase != "validating":
                return refuse(state, "promote applies while green is being validated")
            self._cutover(move, None)
            return move.decision()
        return refuse(state, f"{verb} does not apply to blue/green")
