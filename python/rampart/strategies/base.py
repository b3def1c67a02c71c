"""What every deployment strategy shares: its state, the actions it asks for, its transitions.

A strategy is a pure state machine: ``step(state, metrics, now) -> Decision`` and
``command(state, verb, operator, now) -> Decision``. No I/O, no clock reads, no sleeping: time
arrives as event-time nanoseconds, stage timers are stored as start times, and the daemon (or the
replay tool) carries out the actions. The same inputs always give the same decisions.

Rules taken from the failures of Argo Rollouts and Flagger: an abort beats a pending promotion; a
halt beats a resume; limits are checked in every phase, waiting for approval included; a stage's
timer is its start time, never an in-memory countdown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol

import msgspec

Phase = Literal[
    "paper",  # simulated capital, collecting evidence
    "awaiting_approval",  # criteria met, a risk manager must approve
    "canary",  # real capital, stage by stage
    "awaiting_operator",  # a stage is done and autoProgress is off
    "warmup",  # blue/green: green deployed at 0%, warming up
    "validating",  # blue/green: checking green's health
    "monitoring",  # blue/green: cut over, watching green
    "progressive",  # allocation follows the confidence score
    "completed",
    "rolled_back",
    "aborted",
]
TERMINAL: frozenset[str] = frozenset({"completed", "rolled_back", "aborted"})

Verb = Literal["approve", "promote", "pause", "resume", "abort", "halt"]


class Metrics(Protocol):
    """The metrics a strategy reads: satisfied by the core's Snapshot and protocol.AlgoStatus."""

    @property
    def capital(self) -> float: ...
    @property
    def equity(self) -> float: ...
    @property
    def daily_pnl(self) -> float: ...
    @property
    def stage_pnl(self) -> float: ...
    @property
    def drawdown(self) -> float: ...
    @property
    def max_drawdown(self) -> float: ...
    @property
    def sharpe(self) -> float | None: ...
    @property
    def win_rate(self) -> float | None: ...
    @property
    def trades(self) -> int: ...
    @property
    def error_rate(self) -> float | None: ...
    @property
    def latency_p99_ns(self) -> int | None: ...
    @property
    def confidence(self) -> float: ...


# ---- actions: what the daemon must do ----------------------------------------------------


class _Action(msgspec.Struct, frozen=True, kw_only=True, tag_field="action"):
    reason: str


class SetAllocation(_Action, frozen=True, kw_only=True, tag="set_allocation"):
    """Give ``algo`` ``allocation`` (a fraction, 0 withdraws it) of ``capital``: the deployment's
    total capital in account currency, or, when ``None``, the algorithm's configured capital."""

    algo: str
    allocation: float
    capital: float | None = None


class Activate(_Action, frozen=True, kw_only=True, tag="activate"):
    algo: str


class Standby(_Action, frozen=True, kw_only=True, tag="standby"):
    algo: str


class Decommission(_Action, frozen=True, kw_only=True, tag="decommission"):
    algo: str


class MarkStage(_Action, frozen=True, kw_only=True, tag="mark_stage"):
    """Start measuring stage PnL of ``algo`` from now."""

    algo: str


class NewMeasurement(_Action, frozen=True, kw_only=True, tag="new_measurement"):
    """Measure ``algo`` afresh from its current capital (paper trading promoted to real
    capital: the simulated PnL is not the canary's; docs/metrics.md "A new measurement")."""

    algo: str


class RequestApproval(_Action, frozen=True, kw_only=True, tag="request_approval"):
    """Ask a risk manager (``approve``) or an operator (``promote``) to let the deployment on."""

    verb: Verb


class RollbackAction(_Action, frozen=True, kw_only=True, tag="rollback"):
    """The emergency rollback of ``algos`` (halt, cancel, allocation 0, previous version);
    ``previous`` names the version to re-activate when the strategy knows it (blue/green)."""

    algos: list[str]
    trigger: str
    previous: dict[str, str] = {}


class Complete(_Action, frozen=True, kw_only=True, tag="complete"):
    pass


Action = (
    SetAllocation
    | Activate
    | Standby
    | Decommission
    | MarkStage
    | NewMeasurement
    | RequestApproval
    | RollbackAction
    | Complete
)


# ---- state and decisions -------------------------------------------------------------------


class DeploymentState(msgspec.Struct, kw_only=True):
    """Everything a strategy needs to resume exactly where it was. Stored durably after every
    decision; timers are start times (event-time ns)."""

    deployment_id: str
    strategy: str
    phase: Phase
    started_at: int
    phase_started_at: int
    stage: int = 0
    stage_started_at: int = 0
    allocation: float = 0.0
    paused: bool = False
    halted: bool = False
    approved_by: str | None = None
    # the algorithm (version) that trades; blue/green also keeps the standby one
    active: str = ""
    standby: str | None = None
    last_update: int = 0
    # blue/green: blue's return over the warm-up, the reference for green's trajectory
    reference_return: float | None = None
    outcome: str = ""
    # whether the deployment ever gave its algorithm capital (an abort of one that never did
    # withdraws nothing and halts nothing); True for states stored before it was kept
    funded: bool = True


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """One change of phase or stage, with the numbers that caused it (for the audit log)."""

    deployment_id: str
    at: int
    actor: str
    from_phase: str
    to_phase: str
    from_stage: int
    to_stage: int
    reason: str
    metrics: dict[str, Any] = {}
    thresholds: dict[str, Any] = {}


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    state: DeploymentState
    actions: list[Action] = []
    transitions: list[Transition] = []
    refused: str | None = None  # an operator command that was not carried out, and why


class Observation:
    """What a strategy sees at a decision: each algorithm's metrics, and whether the gateway
    running it reports itself healthy (market data, order routing, risk engine)."""

    __slots__ = ("healthy", "metrics")

    def __init__(
        self, metrics: Mapping[str, Metrics], healthy: Mapping[str, bool] | None = None
    ) -> None:
        self.metrics = metrics
        self.healthy = healthy or {}


def metrics_dict(m: Metrics | None) -> dict[str, Any]:
    """The metric values recorded with a transition."""
    if m is None:
        return {}
    return {
        "equity": m.equity,
        "daily_pnl": m.daily_pnl,
        "stage_pnl": m.stage_pnl,
        "drawdown": m.drawdown,
        "max_drawdown": m.max_drawdown,
        "sharpe": m.sharpe,
        "win_rate": m.win_rate,
        "trades": m.trades,
        "error_rate": m.error_rate,
        "latency_p99_ns": m.latency_p99_ns,
        "confidence": m.confidence,
    }


class Move:
    """Builds one Decision: a copy of the state, the actions and the transitions."""

    def __init__(self, state: DeploymentState, now: int, actor: str) -> None:
        self.state = msgspec.structs.replace(state)
        self.now = now
        self.actor = actor
        self.actions: list[Action] = []
        self.transitions: list[Transition] = []

    def go(
        self,
        phase: Phase,
        reason: str,
        *,
        stage: int | None = None,
        metrics: Metrics | None = None,
        thresholds: Mapping[str, Any] | None = None,
    ) -> None:
        s = self.state
        new_stage = s.stage if stage is None else stage
        self.transitions.append(
            Transition(
                deployment_id=s.deployment_id,
                at=self.now,
                actor=self.actor,
                from_phase=s.phase,
                to_phase=phase,
                from_stage=s.stage,
                to_stage=new_stage,
                reason=reason,
                metrics=metrics_dict(metrics),
                thresholds=dict(thresholds or {}),
            )
        )
        if phase != s.phase:
            s.phase = phase
            s.phase_started_at = self.now
        if new_stage != s.stage or stage is not None:
            s.stage = new_stage
            s.stage_started_at = self.now

    def do(self, *actions: Action) -> None:
        self.actions.extend(actions)

    def decision(self, refused: str | None = None) -> Decision:
        return Decision(
            state=self.state, actions=self.actions, transitions=self.transitions, refused=refused
        )


def refuse(state: DeploymentState, why: str) -> Decision:
    return Decision(state=state, refused=why)
