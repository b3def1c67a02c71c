"""Canary: capital in stages (1% -> 100%), each held for its minimum duration and minimum PnL,
progressing per the seed's ``ShouldProgressToNextStage``, rolled back when a threshold breaks."""

from __future__ import annotations

from typing import Any

from rampart.deployment import CanaryConfig, CanaryDeployment, RollbackThresholds
from rampart.strategies.base import (
    TERMINAL,
    Complete,
    Decision,
    DeploymentState,
    MarkStage,
    Metrics,
    Move,
    Observation,
    Phase,
    RequestApproval,
    RollbackAction,
    SetAllocation,
    Verb,
    refuse,
)

NS = 1_000_000_000


def _ns(td: Any) -> int:
    return int(td.total_seconds() * NS)


def thresholds_dict(t: RollbackThresholds) -> dict[str, Any]:
    return {
        "max_daily_loss": t.max_daily_loss,
        "max_drawdown": t.max_drawdown,
        "max_error_rate": t.max_error_rate,
        "max_latency_ms": t.max_latency,
    }


def breach(m: Metrics, t: RollbackThresholds, stage_capital: float) -> str | None:
    """Which rollback threshold ``m`` breaks, if any. Daily loss is measured against the capital
    the stage allocates (the seed's ``MaxDailyLoss * CapitalAllocation``)."""
    if t.max_daily_loss is not None and m.daily_pnl < -t.max_daily_loss * stage_capital:
        return f"daily PnL {m.daily_pnl:.2f} below -{t.max_daily_loss:g} x {stage_capital:.2f}"
    if t.max_drawdown is not None and m.drawdown > t.max_drawdown:
        return f"drawdown {m.drawdown:.4f} above {t.max_drawdown:g}"
    if t.max_error_rate is not None and m.error_rate is not None:
        if m.error_rate > t.max_error_rate:
            return f"error rate {m.error_rate:.4f} above {t.max_error_rate:g}"
    if t.max_latency is not None and m.latency_p99_ns is not None:
        if m.latency_p99_ns > t.max_latency * 1e6:
            return f"p99 latency {m.latency_p99_ns / 1e6:.2f} ms above {t.max_latency:g} ms"
    return None


class CanaryMachine:
    """Stages of a canary over ``config``; ``algo`` is the algorithm (version) that trades."""

    strategy = "Canary"

    def __init__(self, deployment_id: str, algo: str, config: CanaryConfig) -> None:
        self.deployment_id = deployment_id
        self.algo = algo
        self.config = config

    @classmethod
    def from_document(cls, doc: CanaryDeployment) -> CanaryMachine:
        return cls(doc.deployment_id, doc.algorithm_id, doc.configuration)

    def stage_capital(self, stage: int) -> float:
        return self.config.stages[stage].allocation * self.config.total_capital

    def enter_stage(self, move: Move, stage: int, reason: str, m: Metrics | None) -> None:
        st = self.config.stages[stage]
        move.go("canary", reason, stage=stage, metrics=m, thresholds={"stage": st.name})
        move.state.allocation = st.allocation
        move.do(
            SetAllocation(
                algo=self.algo,
                allocation=st.allocation,
                capital=self.config.total_capital,
                reason=f"stage {st.name}",
            ),
            MarkStage(algo=self.algo, reason=f"stage {st.name} starts"),
        )

    def start(self, now: int, actor: str = "rampart") -> Decision:
        state = DeploymentState(
            deployment_id=self.deployment_id,
            strategy=self.strategy,
            phase="canary",
            started_at=now,
            phase_started_at=now,
            stage_started_at=now,
            active=self.algo,
        )
        move = Move(state, now, actor)
        self.enter_stage(move, 0, "deployed", None)
        return move.decision()

    # ---- the seed's ShouldProgressToNextStage ----------------------------------------------

    def progress_blocker(self, state: DeploymentState, m: Metrics, now: int) -> str | None:
        st = self.config.stages[state.stage]
        t = self.config.rollback_thresholds
        if now - state.stage_started_at < _ns(st.min_duration):
            return "minimum duration not reached"
        if m.stage_pnl < st.min_pnl:
            return f"stage PnL {m.stage_pnl:.2f} below {st.min_pnl:g}"
        if t.max_drawdown is not None and m.drawdown > t.max_drawdown:
            return "drawdown above the threshold"
        if t.max_error_rate is not None and (m.error_rate or 0.0) > t.max_error_rate:
            return "error rate above the threshold"
        if t.max_daily_loss is not None:
            if m.daily_pnl < -t.max_daily_loss * self.stage_capital(state.stage):
                return "daily loss beyond the threshold"
        return None

    def step(self, state: DeploymentState, obs: Observation, now: int) -> Decision:
        if state.phase in TERMINAL or state.halted:
            return Decision(state=state)
        m = obs.metrics.get(self.algo)
        if m is None:
            return Decision(state=state)
        move = Move(state, now, "rampart")
        # limits first, in every phase (waiting for an operator, paused: all the same)
        t = self.config.rollback_thresholds
        broken = breach(m, t, self.stage_capital(state.stage))
        if broken is not None:
            self.roll_back(move, f"limit: {broken}", "limit", m)
            return move.decision()
        if state.paused or state.phase != "canary":
            return move.decision()
        if self.progress_blocker(state, m, now) is not None:
            return move.decision()
        last = state.stage == len(self.config.stages) - 1
        if last:
            move.go("completed", "final stage held", metrics=m, thresholds=thresholds_dict(t))
            move.state.outcome = "completed"
            move.do(Complete(reason="canary completed at full allocation"))
        elif self.config.auto_progress:
            self.enter_stage(move, state.stage + 1, "stage criteria met", m)
        else:
            move.go("awaiting_operator", "stage criteria met; autoProgress is off", metrics=m)
            move.do(RequestApproval(verb="promote", reason="stage criteria met"))
        return move.decision()

    def roll_back(
        self,
        move: Move,
        reason: str,
        trigger: str,
        m: Metrics | None,
        phase: Phase = "rolled_back",
    ) -> None:
        t = thresholds_dict(self.config.rollback_thresholds)
        move.go(phase, reason, metrics=m, thresholds=t)
        move.state.allocation = 0.0
        move.state.outcome = reason
        move.do(RollbackAction(algos=[self.algo], trigger=trigger, reason=reason))

    def command(
        self, state: DeploymentState, verb: Verb, actor: str, now: int, *, trigger: str = "manual"
    ) -> Decision:
        if state.phase in TERMINAL:
            return refuse(state, f"deployment is {state.phase}")
        move = Move(state, now, actor)
        if verb == "abort":
            self.roll_back(move, f"aborted by {actor}", "abort", None, phase="aborted")
            return move.decision()
        if verb == "halt":
            move.state.halted = True
            self.roll_back(move, f"halted by {actor}", trigger, None)
            return move.decision()
        if verb == "pause":
            move.state.paused = True
            return move.decision()
        if verb == "resume":
            if state.halted:
                return refuse(state, "halted: a halt is lifted only by releasing the algorithm")
            move.state.paused = False
            return move.decision()
        if verb == "promote":
            if state.halted or state.paused:
                return refuse(state, "paused or halted: resume first")
            if state.stage == len(self.config.stages) - 1:
                move.go("completed", f"promoted to completion by {actor}")
                move.state.outcome = "completed"
                move.do(Complete(reason=f"promoted by {actor}"))
            else:
                self.enter_stage(move, state.stage + 1, f"promoted by {actor}", None)
            return move.decision()
        return refuse(state, f"{verb} does not apply to a canary")
