"""Paper trading: simulated capital until every promotion criterion holds and a risk manager has
approved; then the deployment continues as a canary at its first stage.

Not enough trades or time is *inconclusive*: the deployment holds, it never passes. Criteria are
re-checked while waiting for approval; if they stop holding, the request is withdrawn.
"""

from __future__ import annotations

from typing import Any

from rampart.deployment import PaperTradingDeployment
from rampart.strategies.base import (
    TERMINAL,
    Activate,
    Decision,
    DeploymentState,
    Metrics,
    Move,
    NewMeasurement,
    Observation,
    RequestApproval,
    SetAllocation,
    Verb,
    refuse,
)
from rampart.strategies.canary import CanaryMachine, _ns


class PaperMachine:
    strategy = "PaperTrading"

    def __init__(self, doc: PaperTradingDeployment) -> None:
        self.doc = doc
        self.algo = doc.algorithm_id
        self.canary = CanaryMachine(doc.deployment_id, self.algo, doc.promotion_canary())

    def thresholds(self) -> dict[str, Any]:
        c = self.doc.promotion_criteria
        return {
            "min_sharpe_ratio": c.min_sharpe_ratio,
            "max_drawdown": c.max_drawdown,
            "min_win_rate": c.min_win_rate,
            "min_trades": c.min_trades,
            "min_trading_duration_s": self.doc.configuration.min_trading_duration.total_seconds(),
        }

    def verdict(self, state: DeploymentState, m: Metrics, now: int) -> tuple[str, str]:
        """``("pass" | "inconclusive" | "fail", why)`` for the seed's promotion criteria."""
        c = self.doc.promotion_criteria
        elapsed = now - state.started_at
        if elapsed < _ns(self.doc.configuration.min_trading_duration):
            return "inconclusive", "minimum trading duration not reached"
        if c.min_trades is not None and m.trades < c.min_trades:
            return "inconclusive", f"{m.trades} trades, {c.min_trades} needed"
        failed = []
        if c.min_sharpe_ratio is not None and (m.sharpe is None or m.sharpe < c.min_sharpe_ratio):
            failed.append(f"Sharpe {m.sharpe} below {c.min_sharpe_ratio:g}")
        if c.max_drawdown is not None and m.max_drawdown > c.max_drawdown:
            failed.append(f"max drawdown {m.max_drawdown:.4f} above {c.max_drawdown:g}")
        if c.min_win_rate is not None and (m.win_rate is None or m.win_rate < c.min_win_rate):
            failed.append(f"win rate {m.win_rate} below {c.min_win_rate:g}")
        if failed:
            return "fail", "; ".join(failed)
        return "pass", "every promotion criterion holds"

    def start(self, now: int, actor: str = "rampart") -> Decision:
        state = DeploymentState(
            deployment_id=self.doc.deployment_id,
            strategy=self.strategy,
            phase="paper",
            started_at=now,
            phase_started_at=now,
            active=self.algo,
        )
        move = Move(state, now, actor)
        move.go("paper", "deployed to paper trading", thresholds=self.thresholds())
        # the simulated capital, on the paper venue; state.allocation (real capital) stays 0
        move.do(
            SetAllocation(
                algo=self.algo,
                allocation=1.0,
                capital=self.doc.configuration.simulated_capital,
                reason="paper trading: all of the simulated capital",
            ),
            Activate(algo=self.algo, reason="paper trading on simulated capital"),
        )
        return move.decision()

    def step(self, state: DeploymentState, obs: Observation, now: int) -> Decision:
        if state.phase not in ("paper", "awaiting_approval"):
            return self.canary.step(state, obs, now)
        m = obs.metrics.get(self.algo)
        if m is None or state.halted:
            return Decision(state=state)
        verdict, why = self.verdict(state, m, now)
        move = Move(state, now, "rampart")
        if state.phase == "paper" and verdict == "pass" and not state.paused:
            move.go("awaiting_approval", why, metrics=m, thresholds=self.thresholds())
            move.do(RequestApproval(verb="approve", reason=why))
        elif state.phase == "awaiting_approval" and verdict != "pass":
            move.go(
                "paper", f"criteria no longer hold: {why}", metrics=m, thresholds=self.thresholds()
            )
        return move.decision()

    def command(
        self, state: DeploymentState, verb: Verb, actor: str, now: int, *, trigger: str = "manual"
    ) -> Decision:
        if state.phase not in ("paper", "awaiting_approval"):
            if verb == "approve":
                return refuse(state, f"nothing to approve: the deployment is {state.phase}")
            return self.canary.command(state, verb, actor, now, trigger=trigger)
        if state.phase in TERMINAL:
            return refuse(state, f"deployment is {state.phase}")
        move = Move(state, now, actor)
        if verb == "approve":
            if state.halted or state.paused:
                return refuse(state, "paused or halted: resume first")
            if state.phase != "awaiting_approval":
                return refuse(state, "the promotion criteria do not hold yet: nothing to approve")
            move.state.approved_by = actor
            self.canary.enter_stage(move, 0, f"approved by {actor}: promoted to canary", None)
            # the canary is measured on its real capital from here, not on the paper PnL
            move.do(
                NewMeasurement(
                    algo=self.algo,
                    reason="promoted from paper trading: measured on real capital from here",
                )
            )
            return move.decision()
        if verb == "promote":
            return refuse(state, "paper trading is promoted by a risk manager's approve")
        if verb == "abort":
            move.go("aborted", f"aborted by {actor}")
            move.state.outcome = f"aborted by {actor}"
            move.do(SetAllocation(algo=self.algo, allocation=0.0, reason="abort"))
            return move.decision()
        return self.canary.command(state, verb, actor, now, trigger=trigger)
