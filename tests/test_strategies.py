"""The four seed deployments driven through their lifecycles on an event-time clock, and
hypothesis state-machine tests of the strategy invariants. Nothing sleeps: seven days of paper
trading take milliseconds."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from rampart.deployment import (
    BlueGreenDeployment,
    CanaryDeployment,
    PaperTradingDeployment,
    ProgressiveDeployment,
    load_deployment,
)
from rampart.strategies import Decision, DeploymentState, Observation, machine_for
from rampart.strategies.base import (
    Activate,
    Complete,
    Decommission,
    NewMeasurement,
    RequestApproval,
    RollbackAction,
    SetAllocation,
    Standby,
)
from rampart.strategies.blue_green import BlueGreenMachine
from rampart.strategies.canary import CanaryMachine
from rampart.strategies.paper import PaperMachine
from rampart.strategies.progressive import ProgressiveMachine, allocation_for

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "deployments"
T0 = 1_764_028_800_000_000_000
S = 1_000_000_000
H = 3600 * S
D = 24 * H


@dataclass(frozen=True)
class M:
    """Metrics as a strategy sees them."""

    capital: float = 1_000_000.0
    equity: float = 1_000_000.0
    daily_pnl: float = 0.0
    stage_pnl: float = 0.0
    drawdown: float = 0.0
    max_drawdown: float = 0.0
    sharpe: float | None = None
    win_rate: float | None = None
    trades: int = 0
    error_rate: float | None = None
    latency_p99_ns: int | None = None
    confidence: float = 0.0


GOOD = M(sharpe=2.0, win_rate=0.6, trades=150, max_drawdown=0.02, stage_pnl=10.0, confidence=0.9)


def load(name: str) -> Any:
    return load_deployment(EXAMPLES / name)


def obs(algo: str, m: M, healthy: bool | None = None) -> Observation:
    return Observation({algo: m}, {} if healthy is None else {algo: healthy})


def kinds(d: Decision) -> list[str]:
    return [type(a).__name__ for a in d.actions]


# ---- paper trading -----------------------------------------------------------------------


def paper() -> tuple[PaperMachine, DeploymentState]:
    doc = load("paper-trading.json")
    assert isinstance(doc, PaperTradingDeployment)
    machine = PaperMachine(doc)
    return machine, machine.start(T0).state


def test_paper_holds_while_inconclusive_and_never_passes_on_too_little_evidence() -> None:
    machine, state = paper()
    algo = machine.algo
    # great numbers but only 6 days: inconclusive
    assert machine.step(state, obs(algo, GOOD), T0 + 6 * D).state.phase == "paper"
    # 7 days but 99 trades: inconclusive
    thin = replace(GOOD, trades=99)
    assert machine.step(state, obs(algo, thin), T0 + 7 * D).state.phase == "paper"
    # enough evidence but a criterion fails: holds (never passes)
    for bad in (
        replace(GOOD, sharpe=1.4),
        replace(GOOD, sharpe=None),
        replace(GOOD, max_drawdown=0.051),
        replace(GOOD, win_rate=0.5),
    ):
        d = machine.step(state, obs(algo, bad), T0 + 8 * D)
        assert d.state.phase == "paper" and d.actions == []
    # and approval before the criteria hold is refused
    assert machine.command(state, "approve", "alice", T0 + D).refused


def test_paper_promotes_to_the_first_canary_stage_only_with_approval() -> None:
    machine, state = paper()
    algo = machine.algo
    d = machine.step(state, obs(algo, GOOD), T0 + 7 * D)
    assert d.state.phase == "awaiting_approval"
    assert isinstance(d.actions[0], RequestApproval) and d.actions[0].verb == "approve"
    t = d.transitions[0]
    assert t.metrics["sharpe"] == 2.0 and t.thresholds["min_sharpe_ratio"] == 1.5
    # limits are checked while waiting: the criteria slip, the request is withdrawn
    slipped = machine.step(d.state, obs(algo, replace(GOOD, win_rate=0.4)), T0 + 7 * D + H)
    assert slipped.state.phase == "paper"
    d = machine.step(slipped.state, obs(algo, GOOD), T0 + 7 * D + 2 * H)
    promoted = machine.command(d.state, "approve", "risk@desk", T0 + 7 * D + 3 * H)
    assert promoted.state.phase == "canary" and promoted.state.stage == 0
    assert promoted.state.approved_by == "risk@desk"
    alloc = promoted.actions[0]
    assert isinstance(alloc, SetAllocation)
    assert (alloc.allocation, alloc.capital) == (0.01, 1_000_000)
    assert promoted.transitions[0].actor == "risk@desk"
    # and the canary is measured on its real capital: a new measurement after the capital change
    assert kinds(promoted)[-1] == "NewMeasurement"
    assert isinstance(promoted.actions[-1], NewMeasurement) and promoted.actions[-1].algo == algo


def test_promotion_measures_the_canary_on_its_capital_not_on_the_paper_pnl() -> None:
    """Paper trading on 1,000,000 ends 0.5% below its peak; the canary gets 1% of the real
    capital. As a cash flow the paper drawdown in money would be 20%+ of the canary's 10,000
    (its 5% drawdown limit would trip at once); the new measurement starts it at 10,000."""
    from rampart._core import AlgoConfig, Engine
    from rampart.runner import DeploymentRunner

    doc = load("paper-trading.json")
    algo = doc.algorithm_id
    engine = Engine()
    engine.register(AlgoConfig(algo, algo, 1_000_000.0, max_drawdown=0.05))
    engine.quote("ES", 100.0, 100.0, T0)
    runner = DeploymentRunner(engine)
    runner.deploy(doc, T0, "alice")
    engine.fill(algo, "ES", 1_000.0, 100.0, 2.0, T0 + S)
    engine.quote("ES", 110.0, 110.0, T0 + H)
    engine.quote("ES", 105.0, 105.0, T0 + 2 * H)  # 0.5% below the peak
    paper_dd = engine.snapshot(algo).drawdown
    assert 0.004 < paper_dd < 0.006
    run = runner.deployments[doc.deployment_id]
    run.state.phase = "awaiting_approval"  # the criteria held (tested above)
    outcome = runner.command(doc.deployment_id, "approve", "risk@desk", T0 + 3 * H)
    assert outcome.decision.refused is None and outcome.decision.state.phase == "canary"
    s = engine.snapshot(algo)
    assert (s.capital, s.equity, s.peak_equity) == (10_000.0, 10_000.0, 10_000.0)
    assert (s.drawdown, s.max_drawdown, s.trades, s.breached) == (0.0, 0.0, 0, [])
    assert s.positions[0].avg_cost == 105.0, "the position is held on at its mark"
    # from here the canary's own PnL: a 1% move of the held position is 10% of 10,000
    assert engine.quote("ES", 106.0, 106.0, T0 + 3 * H + S) is None
    assert engine.snapshot(algo).equity == 11_000.0


def test_paper_seven_days_run_in_event_time() -> None:
    machine, state = paper()
    now = T0
    phases = []
    while now <= T0 + 8 * D:  # one decision per event-time minute
        state = machine.step(state, obs(machine.algo, GOOD), now).state
        phases.append(state.phase)
        now += 60 * S
    assert phases.index("awaiting_approval") == 7 * 24 * 60


# ---- canary --------------------------------------------------------------------------------


def canary() -> tuple[CanaryMachine, DeploymentState]:
    doc = load("canary.json")
    assert isinstance(doc, CanaryDeployment)
    machine = CanaryMachine.from_document(doc)
    return machine, machine.start(T0).state


def test_canary_walks_every_seed_stage_to_full_and_completes() -> None:
    machine, state = canary()
    now = T0
    allocations = [state.allocation]
    for stage in machine.config.stages:
        now += int(stage.min_duration.total_seconds() * S)
        d = machine.step(state, obs(machine.algo, M(stage_pnl=1.0)), now)
        state = d.state
        allocations.append(state.allocation)
    assert allocations[:6] == [0.01, 0.05, 0.10, 0.25, 0.50, 1.00]
    assert state.phase == "completed" and "Complete" in kinds(d)


def test_canary_waits_for_duration_and_min_pnl() -> None:
    machine, state = canary()
    algo = machine.algo
    assert machine.step(state, obs(algo, M(stage_pnl=5)), T0 + H - 1).state.stage == 0
    assert machine.step(state, obs(algo, M(stage_pnl=-0.01)), T0 + H).state.stage == 0
    assert machine.step(state, obs(algo, M(stage_pnl=0.0)), T0 + H).state.stage == 1


@pytest.mark.parametrize(
    ("metrics", "why"),
    [
        (M(daily_pnl=-2_001.0), "daily PnL"),  # 2% of the Micro stage's 100,000
        (M(drawdown=0.0501), "drawdown"),
        (M(error_rate=0.011), "error rate"),
    ],
)
def test_canary_rolls_back_on_each_threshold(metrics: M, why: str) -> None:
    machine, state = canary()
    d = machine.step(state, obs(machine.algo, metrics), T0 + 1)
    assert d.state.phase == "rolled_back" and d.state.allocation == 0
    assert isinstance(d.actions[0], RollbackAction) and why in d.actions[0].reason
    assert d.transitions[0].thresholds["max_drawdown"] == 0.05


def test_canary_without_auto_progress_waits_for_promote_and_checks_limits_meanwhile() -> None:
    machine, state = canary()
    machine.config = replace_config(machine.config, auto_progress=False)
    d = machine.step(state, obs(machine.algo, M()), T0 + H)
    assert d.state.phase == "awaiting_operator" and "RequestApproval" in kinds(d)
    bad = machine.step(d.state, obs(machine.algo, M(drawdown=0.06)), T0 + H + 1)
    assert bad.state.phase == "rolled_back", "limits are checked while waiting"
    promoted = machine.command(d.state, "promote", "ops", T0 + H + 2)
    assert promoted.state.phase == "canary" and promoted.state.stage == 1


def test_canary_pause_resume_promote_abort() -> None:
    machine, state = canary()
    paused = machine.command(state, "pause", "ops", T0 + 1).state
    assert machine.step(paused, obs(machine.algo, M()), T0 + 2 * H).state.stage == 0
    assert machine.step(paused, obs(machine.algo, M(drawdown=0.2)), T0 + 2 * H).state.phase == (
        "rolled_back"
    ), "paused is not exempt from limits"
    assert machine.command(paused, "promote", "ops", T0 + 2).refused
    resumed = machine.command(paused, "resume", "ops", T0 + 3).state
    skipped = machine.command(resumed, "promote", "ops", T0 + 4).state
    assert skipped.stage == 1 and skipped.stage_started_at == T0 + 4
    aborted = machine.command(skipped, "abort", "ops", T0 + 5)
    assert aborted.state.phase == "aborted" and aborted.state.allocation == 0
    # abort beats a pending promotion
    assert machine.command(aborted.state, "promote", "ops", T0 + 6).refused


def test_halt_beats_resume() -> None:
    machine, state = canary()
    halted = machine.command(state, "halt", "risk", T0 + 1)
    assert halted.state.halted and "RollbackAction" in kinds(halted)
    assert machine.command(halted.state, "resume", "ops", T0 + 2).refused


def replace_config(config: Any, **changes: Any) -> Any:
    import msgspec

    return msgspec.structs.replace(config, **changes)


# ---- blue/green ----------------------------------------------------------------------------


def blue_green() -> tuple[BlueGreenMachine, DeploymentState]:
    doc = load("blue-green.json")
    assert isinstance(doc, BlueGreenDeployment)
    machine = BlueGreenMachine(doc)
    return machine, machine.start(T0).state


def bg_obs(machine: BlueGreenMachine, green: M, healthy: bool = True, blue: M = M()) -> Observation:
    return Observation({machine.green: green, machine.blue: blue}, {machine.green: healthy})


def test_blue_green_full_lifecycle() -> None:
    machine, state = blue_green()
    assert (state.phase, state.active, state.standby) == ("warmup", machine.blue, machine.green)
    assert machine.step(state, bg_obs(machine, M()), T0 + 29 * S).state.phase == "warmup"
    state = machine.step(state, bg_obs(machine, M()), T0 + 30 * S).state
    assert state.phase == "validating"
    d = machine.step(state, bg_obs(machine, M()), T0 + 31 * S)
    assert d.state.phase == "monitoring" and d.state.active == machine.green
    assert d.state.standby == machine.blue
    assert {type(a) for a in d.actions} >= {Activate, Standby, SetAllocation}
    state = d.state
    assert machine.step(state, bg_obs(machine, M()), T0 + 31 * S + 599 * S).state.phase == (
        "monitoring"
    )
    done = machine.step(state, bg_obs(machine, M()), T0 + 31 * S + 600 * S)
    assert done.state.phase == "completed" and done.state.standby is None
    assert any(isinstance(a, Decommission) and a.algo == machine.blue for a in done.actions)


@pytest.mark.parametrize(
    "green",
    [M(error_rate=0.02), M(latency_p99_ns=101_000_000), M(stage_pnl=-20_000.0)],
)
def test_blue_green_rolls_back_to_blue(green: M) -> None:
    machine, state = blue_green()
    state = machine.step(state, bg_obs(machine, M()), T0 + 30 * S).state
    state = machine.step(state, bg_obs(machine, M()), T0 + 31 * S).state
    d = machine.step(state, bg_obs(machine, green), T0 + 60 * S)
    assert d.state.phase == "rolled_back" and d.state.active == machine.blue
    rollback = d.actions[0]
    assert isinstance(rollback, RollbackAction) and rollback.algos == [machine.green]
    assert rollback.previous == {machine.green: machine.blue}, "the rollback re-activates blue"
    assert any(
        isinstance(a, SetAllocation) and a.algo == machine.blue and a.allocation == 1.0
        for a in d.actions
    )


def test_blue_green_unhealthy_green_never_cuts_over() -> None:
    machine, state = blue_green()
    state = machine.step(state, bg_obs(machine, M()), T0 + 30 * S).state
    state = machine.step(state, bg_obs(machine, M(), healthy=False), T0 + 31 * S).state
    assert state.phase == "validating" and state.active == machine.blue
    d = machine.step(state, bg_obs(machine, M(), healthy=False), T0 + 60 * S)
    assert d.state.phase == "rolled_back" and d.state.active == machine.blue


# ---- progressive ---------------------------------------------------------------------------


def test_progressive_follows_the_seed_threshold_table() -> None:
    doc = load("progressive.json")
    assert isinstance(doc, ProgressiveDeployment)
    table = doc.configuration.confidence_thresholds
    cases = {0.49: 0.0, 0.5: 0.01, 0.65: 0.05, 0.7: 0.10, 0.85: 0.25, 0.9: 0.5, 0.99: 1.0}
    for confidence, allocation in cases.items():
        assert allocation_for(confidence, table) == allocation
    machine = ProgressiveMachine(doc)
    state = machine.start(T0).state
    d = machine.step(state, obs(machine.algo, M(confidence=0.72)), T0)
    assert d.state.allocation == 0.10
    # not re-evaluated before updateFrequency (15 minutes)
    early = machine.step(d.state, obs(machine.algo, M(confidence=0.99)), T0 + 14 * 60 * S)
    assert early.state.allocation == 0.10
    later = machine.step(d.state, obs(machine.algo, M(confidence=0.3)), T0 + 15 * 60 * S)
    assert later.state.allocation == 0.0
    assert isinstance(later.actions[0], SetAllocation)


def test_aborting_a_progressive_deployment_halts_only_if_it_ever_had_capital() -> None:
    """An abort withdraws capital; one that never got any halts nothing (issue 13: an abort
    left a halt latch that needed a release even when nothing had traded)."""
    doc = load("progressive.json")
    assert isinstance(doc, ProgressiveDeployment)
    machine = ProgressiveMachine(doc)
    state = machine.start(T0).state
    low = machine.step(state, obs(machine.algo, M(confidence=0.3)), T0)  # below every threshold
    assert low.state.allocation == 0.0 and not low.state.funded
    quiet = machine.command(low.state, "abort", "ops", T0 + S)
    assert quiet.state.phase == "aborted" and not quiet.state.halted
    assert quiet.actions == [], "nothing to withdraw, nothing to halt"
    funded = machine.step(state, obs(machine.algo, M(confidence=0.72)), T0)
    back = machine.step(funded.state, obs(machine.algo, M(confidence=0.3)), T0 + 15 * 60 * S)
    assert back.state.allocation == 0.0 and back.state.funded
    aborted = machine.command(back.state, "abort", "ops", T0 + 16 * 60 * S)
    assert aborted.state.phase == "aborted" and kinds(aborted) == ["RollbackAction"]


# ---- hypothesis: invariants of every machine ----------------------------------------------

metric_values = st.builds(
    M,
    daily_pnl=st.floats(-50_000, 50_000),
    stage_pnl=st.floats(-20_000, 20_000),
    drawdown=st.floats(0, 0.2),
    max_drawdown=st.floats(0, 0.2),
    sharpe=st.one_of(st.none(), st.floats(-3, 5)),
    win_rate=st.one_of(st.none(), st.floats(0, 1)),
    trades=st.integers(0, 300),
    error_rate=st.one_of(st.none(), st.floats(0, 0.05)),
    latency_p99_ns=st.one_of(st.none(), st.integers(0, 200_000_000)),
    confidence=st.floats(0, 1),
)


class StrategyMachineTest(RuleBasedStateMachine):
    """Random metrics, times and operator commands against each seed deployment."""

    def __init__(self) -> None:
        super().__init__()
        self.machine: Any = None
        self.state: DeploymentState | None = None
        self.now = T0
        self.max_stage = 0

    @precondition(lambda self: self.machine is None)
    @rule(name=st.sampled_from(sorted(p.name for p in EXAMPLES.glob("*.json"))))
    def deploy(self, name: str) -> None:
        self.machine = machine_for(load(name))
        self.state = self.machine.start(self.now).state

    @precondition(lambda self: self.machine is not None)
    @rule(
        m=metric_values,
        dt=st.integers(0, 3 * D),
        healthy=st.booleans(),
    )
    def step(self, m: M, dt: int, healthy: bool) -> None:
        assert self.state is not None
        self.now += dt
        algos = {"momentum-v2.1.0", "momentum-v2.2.0", "ml-model-v3.0.0"}
        d = self.machine.step(
            self.state,
            Observation(dict.fromkeys(algos, m), dict.fromkeys(algos, healthy)),
            self.now,
        )
        self.check(d)

    @precondition(lambda self: self.machine is not None)
    @rule(verb=st.sampled_from(["approve", "promote", "pause", "resume", "abort", "halt"]))
    def command(self, verb: str) -> None:
        assert self.state is not None
        before_halted = self.state.halted
        d = self.machine.command(self.state, verb, "op", self.now)
        if before_halted:
            assert d.state.halted, "a halt is never lifted by a strategy command"
        self.check(d)

    def check(self, d: Decision) -> None:
        assert self.state is not None
        old = self.state
        new = d.state
        if old.phase in ("completed", "rolled_back", "aborted"):
            assert new.phase == old.phase, "terminal phases are final"
        rolled_back = any(isinstance(a, RollbackAction) for a in d.actions)
        if new.stage < old.stage:
            assert rolled_back, "the stage moves back only by a rollback"
        for t in d.transitions:
            assert t.at == self.now and t.deployment_id == new.deployment_id
        self.state = new

    @invariant()
    def halted_means_no_capital(self) -> None:
        s = self.state
        if s is not None and (s.halted or s.phase in ("rolled_back", "aborted")):
            if s.strategy != "BlueGreen":
                assert s.allocation == 0.0

    @invariant()
    def allocation_never_above_the_stage(self) -> None:
        s, machine = self.state, self.machine
        if s is None:
            return
        if isinstance(machine, CanaryMachine) or (
            isinstance(machine, PaperMachine) and s.phase not in ("paper", "awaiting_approval")
        ):
            cfg = machine.config if isinstance(machine, CanaryMachine) else machine.canary.config
            assert s.allocation <= cfg.stages[s.stage].allocation
        if isinstance(machine, PaperMachine) and s.phase in ("paper", "awaiting_approval"):
            assert s.allocation == 0.0, "paper trading puts no real capital at risk"

    @invariant()
    def exactly_one_active_version(self) -> None:
        s = self.state
        if s is not None and s.strategy == "BlueGreen":
            assert s.active in (self.machine.blue, self.machine.green)
            assert s.standby != s.active


StrategyMachineTest.TestCase.settings = settings(max_examples=150, stateful_step_count=30)
TestStrategyMachines = StrategyMachineTest.TestCase


def test_every_action_of_a_decision_is_serialisable() -> None:
    import msgspec

    machine, state = canary()
    d = machine.step(state, obs(machine.algo, M()), T0 + H)
    assert msgspec.json.decode(msgspec.json.encode(d), type=Decision) == d
    assert any(isinstance(a, SetAllocation) for a in d.actions)
    assert not any(isinstance(a, Complete) for a in d.actions)
