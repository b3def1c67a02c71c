"""``rampart replay DEPLOYMENT.json EVENTS``: a deployment over recorded events at full speed.

Events are JSON lines in the core's event format (docs/events.md: quote, mark, fill, order).
The deployment starts at the first event; every event goes through the same Rust core and the
same :class:`~rampart.runner.DeploymentRunner` as in the live daemon, so the same events yield
the same decisions. The output is the timeline: stage changes, allocations, breaches and
rollbacks, with the metrics at each decision.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

from rampart._core import AlgoConfig, Engine, InvalidEventError
from rampart.deployment import (
    BlueGreenDeployment,
    CanaryDeployment,
    Deployment,
    PaperTradingDeployment,
    ProgressiveDeployment,
    RollbackThresholds,
)
from rampart.runner import DEFAULT_DECISION_INTERVAL_NS, DeploymentRunner, Outcome, algorithms_of
from rampart.strategies import DeploymentState

DEFAULT_BLUE_GREEN_CAPITAL = 1_000_000.0
# The largest step of the event clock a replay accepts by default (`future` beyond): a week
# covers weekends and holidays of daily data; one absurd timestamp cannot end the replay.
DEFAULT_MAX_JUMP: Final = timedelta(days=7)


class TimelineEntry(msgspec.Struct, frozen=True, kw_only=True):
    ts: int
    kind: str  # transition | action | breach | refused (| summary: the last, see ReplaySummary)
    deployment_id: str
    text: str
    data: dict[str, Any] = {}


class ReplaySummary(msgspec.Struct, frozen=True, kw_only=True):
    """What a replay did, in numbers, and where it left the deployment."""

    deployment_id: str
    events: int  # non-blank lines read
    applied: int  # of those, accepted by the core
    refused: dict[str, int]  # the others, by reason (docs/events.md, "Refusals")
    breaches: int
    transitions: int
    rollbacks: dict[str, int]  # rollback actions by trigger (limit:<kind>, limit, manual, ...)
    first_ts: int | None  # event time of the first and last applied events
    last_ts: int | None
    # the deployment at the end; phase None: it never started (no event was applied)
    phase: str | None = None
    stage: int | None = None
    stage_name: str | None = None
    allocation: float | None = None
    active: str | None = None
    halted: bool = False
    paused: bool = False


@dataclass(frozen=True)
class ReplayResult:
    timeline: list[TimelineEntry]
    summary: ReplaySummary


def algo_configs_for(doc: Deployment) -> list[AlgoConfig]:
    """Core configurations for a deployment's algorithms when no daemon configuration is given:
    its capital, and its rollback thresholds as the core's limits."""
    thresholds: RollbackThresholds | None = None
    if isinstance(doc, PaperTradingDeployment):
        capital = doc.configuration.simulated_capital
        thresholds = doc.promotion_canary().rollback_thresholds
    elif isinstance(doc, CanaryDeployment):
        capital = doc.configuration.total_capital
        thresholds = doc.configuration.rollback_thresholds
    elif isinstance(doc, ProgressiveDeployment):
        capital = doc.configuration.total_capital
    else:
        assert isinstance(doc, BlueGreenDeployment)
        capital = DEFAULT_BLUE_GREEN_CAPITAL
        thresholds = doc.configuration.rollback_thresholds
    limits: dict[str, Any] = {}
    if thresholds is not None:
        limits = {
            "max_daily_loss": thresholds.max_daily_loss,
            "max_drawdown": thresholds.max_drawdown,
            "max_error_rate": thresholds.max_error_rate,
            "max_latency_ns": thresholds.max_latency_ns,
        }
    return [AlgoConfig(algo, algo, capital, **limits) for algo in algorithms_of(doc)]


def _entries(outcome: Outcome, now: int) -> Iterator[TimelineEntry]:
    d = outcome.decision
    dep = outcome.deployment_id
    if outcome.breach is not None:
        b = outcome.breach
        yield TimelineEntry(
            ts=b.ts,
            kind="breach",
            deployment_id=dep,
            text=f"BREACH {b.algo_id} {b.kind} {b.value:.6g} (limit {b.threshold:.6g})",
            data={"algo": b.algo_id, "kind": b.kind, "value": b.value, "threshold": b.threshold},
        )
    for t in d.transitions:
        yield TimelineEntry(
            ts=t.at,
            kind="transition",
            deployment_id=dep,
            text=f"{t.from_phase}/{t.from_stage} -> {t.to_phase}/{t.to_stage}: {t.reason}",
            data=msgspec.to_builtins(t),
        )
    for a in d.actions:
        yield TimelineEntry(
            ts=now,
            kind="action",
            deployment_id=dep,
            text=_describe(a),
            data=msgspec.to_builtins(a),
        )


def _describe(action: Any) -> str:
    data = msgspec.to_builtins(action)
    kind = data.pop("action")
    reason = data.pop("reason", "")
    fields = ", ".join(f"{k}={v}" for k, v in data.items() if v is not None)
    return f"{kind}({fields}): {reason}"


def replay(
    doc: Deployment,
    events: Iterable[bytes],
    *,
    configs: list[AlgoConfig] | None = None,
    engine: Engine | None = None,
    decision_interval_ns: int = DEFAULT_DECISION_INTERVAL_NS,
    time_tolerance_ns: int = 5_000_000_000,
    max_jump_ns: int | None = int(DEFAULT_MAX_JUMP.total_seconds()) * 1_000_000_000,
) -> list[TimelineEntry]:
    """The timeline of :func:`run_replay` (same arguments)."""
    return run_replay(
        doc,
        events,
        configs=configs,
        engine=engine,
        decision_interval_ns=decision_interval_ns,
        time_tolerance_ns=time_tolerance_ns,
        max_jump_ns=max_jump_ns,
    ).timeline


def run_replay(
    doc: Deployment,
    events: Iterable[bytes],
    *,
    configs: list[AlgoConfig] | None = None,
    engine: Engine | None = None,
    decision_interval_ns: int = DEFAULT_DECISION_INTERVAL_NS,
    time_tolerance_ns: int = 5_000_000_000,
    max_jump_ns: int | None = int(DEFAULT_MAX_JUMP.total_seconds()) * 1_000_000_000,
) -> ReplayResult:
    """``doc`` over ``events``: the timeline and its summary. ``engine``: one with its
    algorithms registered (e.g. ``DaemonConfig.engine``); else one is made with ``configs`` (or
    the deployment's own), ``time_tolerance_ns`` and ``max_jump_ns``."""
    if engine is None:
        engine = Engine(time_tolerance_ns=time_tolerance_ns, max_jump_ns=max_jump_ns)
        for cfg in configs if configs is not None else algo_configs_for(doc):
            engine.register(cfg)
    capital = {a: engine.snapshot(a).capital for a in engine.algorithms()}
    runner = DeploymentRunner(
        engine, decision_interval_ns=decision_interval_ns, capital_of=capital.__getitem__
    )
    timeline: list[TimelineEntry] = []
    started = False
    read = applied = 0
    refused: Counter[str] = Counter()
    first_ts: int | None = None
    for raw in events:
        if not raw.strip():
            continue
        read += 1
        try:
            breaches = engine.ingest_json(raw)
        except InvalidEventError as e:
            refused[e.reason] += 1
            timeline.append(
                TimelineEntry(
                    ts=engine.now or 0,
                    kind="refused",
                    deployment_id=doc.deployment_id,
                    text=f"event refused ({e.reason}): {e}",
                )
            )
            continue
        applied += 1
        now = engine.now
        assert now is not None
        if first_ts is None:
            first_ts = now
        if not started:
            started = True
            timeline.extend(_entries(runner.deploy(doc, now, "replay"), now))
            continue
        if breaches is not None:
            for outcome in runner.on_breaches(breaches, now):
                timeline.extend(_entries(outcome, now))
        if now >= runner.next_decision_at:
            for outcome in runner.tick(now):
                timeline.extend(_entries(outcome, now))
    running = runner.deployments.get(doc.deployment_id)
    state = running.state if running is not None else None
    rollbacks = Counter(
        str(e.data.get("trigger"))
        for e in timeline
        if e.kind == "action" and e.data.get("action") == "rollback"
    )
    summary = ReplaySummary(
        deployment_id=doc.deployment_id,
        events=read,
        applied=applied,
        refused=dict(sorted(refused.items())),
        breaches=sum(e.kind == "breach" for e in timeline),
        transitions=sum(e.kind == "transition" for e in timeline),
        rollbacks=dict(sorted(rollbacks.items())),
        first_ts=first_ts,
        last_ts=engine.now if first_ts is not None else None,
        **(_final(doc, state) if state is not None else {}),
    )
    return ReplayResult(timeline, summary)


def _final(doc: Deployment, state: DeploymentState) -> dict[str, Any]:
    """The summary's view of the deployment's last state."""
    stages = None
    if isinstance(doc, CanaryDeployment):
        stages = doc.configuration.stages
    elif isinstance(doc, PaperTradingDeployment) and state.approved_by is not None:
        stages = doc.promotion_canary().stages
    name = stages[state.stage].name if stages and 0 <= state.stage < len(stages) else None
    return {
        "phase": state.phase,
        "stage": state.stage,
        "stage_name": name,
        "allocation": state.allocation,
        "active": state.active or None,
        "halted": state.halted,
        "paused": state.paused,
    }


def summary_entry(summary: ReplaySummary) -> TimelineEntry:
    """The summary as the last entry of ``rampart replay --json`` (kind ``summary``)."""
    return TimelineEntry(
        ts=summary.last_ts or 0,
        kind="summary",
        deployment_id=summary.deployment_id,
        text=format_summary(summary),
        data=msgspec.to_builtins(summary),
    )


def format_summary(s: ReplaySummary) -> str:
    """The summary, a few lines for people."""

    def counts(c: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in c.items()) or "none"

    lines = [f"summary of {s.deployment_id}:"]
    span = ""
    if s.first_ts is not None and s.last_ts is not None:
        span = f", event time {_at(s.first_ts)} to {_at(s.last_ts)}"
    refused = sum(s.refused.values())
    lines.append(
        f"  events      {s.events} read, {s.applied} applied, {refused} refused"
        + (f" ({counts(s.refused)})" if refused else "")
        + span
    )
    lines.append(
        f"  decisions   transitions {s.transitions}, breaches {s.breaches}, "
        f"rollbacks {sum(s.rollbacks.values())}"
        + (f" ({counts(s.rollbacks)})" if s.rollbacks else "")
    )
    if s.phase is None:
        lines.append("  deployment  never started: no event was applied")
    else:
        stage = f"stage {s.stage}" + (f" ({s.stage_name})" if s.stage_name else "")
        flags = [f for f, on in (("halted", s.halted), ("paused", s.paused)) if on]
        lines.append(
            f"  final       {s.phase}, {stage}, allocation {s.allocation:g}"
            + (f", active {s.active}" if s.active else "")
            + (f" ({', '.join(flags)})" if flags else "")
        )
    return "\n".join(lines)


def _at(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def format_timeline(timeline: Iterable[TimelineEntry]) -> str:
    lines = []
    for e in timeline:
        line = f"{_at(e.ts)}  {e.kind:<10} {e.text}"
        if e.kind == "transition" and e.data.get("metrics"):
            m = e.data["metrics"]
            line += (
                f"  [equity {m['equity']:,.2f}, stage PnL {m['stage_pnl']:,.2f}, "
                f"drawdown {m['drawdown']:.4f}, Sharpe {m['sharpe']}, trades {m['trades']}]"
            )
        lines.append(line)
    return "\n".join(lines)
