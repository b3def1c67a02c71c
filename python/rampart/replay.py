"""``rampart replay DEPLOYMENT.json EVENTS``: a deployment over recorded events at full speed.

Events are JSON lines in the core's event format (docs/events.md: quote, mark, fill, order).
The deployment starts at the first event; every event goes through the same Rust core and the
same :class:`~rampart.runner.DeploymentRunner` as in the live daemon, so the same events yield
the same decisions. The output is the timeline: stage changes, allocations, breaches and
rollbacks, with the metrics at each decision.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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

DEFAULT_BLUE_GREEN_CAPITAL = 1_000_000.0
# The largest step of the event clock a replay accepts by default (`future` beyond): a week
# covers weekends and holidays of daily data; one absurd timestamp cannot end the replay.
DEFAULT_MAX_JUMP: Final = timedelta(days=7)


class TimelineEntry(msgspec.Struct, frozen=True, kw_only=True):
    ts: int
    kind: str  # transition | action | breach | refused
    deployment_id: str
    text: str
    data: dict[str, Any] = {}


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
    """``engine``: one with its algorithms registered (e.g. ``DaemonConfig.engine``); else one
    is made with ``configs`` (or the deployment's own), ``time_tolerance_ns`` and
    ``max_jump_ns``."""
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
    for raw in events:
        if not raw.strip():
            continue
        try:
            breaches = engine.ingest_json(raw)
        except InvalidEventError as e:
            timeline.append(
                TimelineEntry(
                    ts=engine.now or 0,
                    kind="refused",
                    deployment_id=doc.deployment_id,
                    text=f"event refused ({e.reason}): {e}",
                )
            )
            continue
        now = engine.now
        assert now is not None
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
    return timeline


def format_timeline(timeline: Iterable[TimelineEntry]) -> str:
    lines = []
    for e in timeline:
        at = datetime.fromtimestamp(e.ts / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        line = f"{at}  {e.kind:<10} {e.text}"
        if e.kind == "transition" and e.data.get("metrics"):
            m = e.data["metrics"]
            line += (
                f"  [equity {m['equity']:,.2f}, stage PnL {m['stage_pnl']:,.2f}, "
                f"drawdown {m['drawdown']:.4f}, Sharpe {m['sharpe']}, trades {m['trades']}]"
            )
        lines.append(line)
    return "\n".join(lines)
