"""Prometheus metrics on an optional HTTP port (``metrics_port`` in the configuration).

A custom collector reads the daemon's state when Prometheus scrapes, so the ingest hot path pays
nothing for it: events ingested and refused by reason, per-algorithm equity, drawdown,
allocation and deployment stage, breaches, and rollbacks with their step durations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from rampart._core import Engine
from rampart.guard import Guard
from rampart.loop_lag import BUCKETS, LoopLag
from rampart.protocol import IngestStats
from rampart.runner import DeploymentRunner


class Scraped(Protocol):
    """The daemon's parts the collector reads at each scrape."""

    stats: IngestStats
    slow_consumer_drops: int
    guard: Guard | None
    engine: Engine
    gateway_of: dict[str, str]
    runner: DeploymentRunner
    loop_lag: LoopLag


PHASE_CODES = {
    "paper": 0,
    "awaiting_approval": 1,
    "canary": 2,
    "awaiting_operator": 3,
    "warmup": 4,
    "validating": 5,
    "monitoring": 6,
    "progressive": 7,
    "completed": 8,
    "rolled_back": 9,
    "aborted": 10,
}


class DaemonCollector(Collector):
    def __init__(self, daemon: Scraped) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        d = self.daemon
        lag = d.loop_lag
        cumulative, buckets = 0, []
        for bound, count in zip((*BUCKETS, float("inf")), lag.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            "rampart_event_loop_lag_seconds",
            "How late the daemon's event loop ran a 10 ms timer (resolution ~1 ms)",
            buckets=buckets,
            sum_value=lag.total,
        )
        ingested = CounterMetricFamily("rampart_events_ingested", "Events applied to the core")
        ingested.add_metric([], d.stats.ingested)
        yield ingested
        refused = CounterMetricFamily(
            "rampart_events_refused", "Input messages refused, by reason", labels=["reason"]
        )
        for reason, count in sorted(d.stats.rejected.items()):
            refused.add_metric([reason], count)
        refused.add_metric(["slow_consumer"], d.slow_consumer_drops)
        yield refused
        breaches = CounterMetricFamily("rampart_breaches", "Limits tripped in the core")
        breaches.add_metric([], d.stats.breaches)
        yield breaches

        labels = ["algo", "version", "gateway"]
        equity = GaugeMetricFamily("rampart_equity", "Equity per algorithm", labels=labels)
        drawdown = GaugeMetricFamily("rampart_drawdown", "Drawdown from the peak", labels=labels)
        daily = GaugeMetricFamily("rampart_daily_pnl", "PnL since the session start", labels=labels)
        halted = GaugeMetricFamily(
            "rampart_halted", "1 when the algorithm is halted", labels=labels
        )
        halts = d.guard.halted if d.guard is not None else {}
        for algo in d.engine.algorithms():
            try:
                s = d.engine.snapshot(algo)
            except Exception:  # status lists it as unavailable; the others are still scraped
                continue
            values = [algo, s.version, d.gateway_of.get(algo, "")]
            equity.add_metric(values, s.equity)
            drawdown.add_metric(values, s.drawdown)
            daily.add_metric(values, s.daily_pnl)
            halted.add_metric(values, 1.0 if algo in halts else 0.0)
        yield from (equity, drawdown, daily, halted)

        dep_labels = ["deployment", "strategy", "algo"]
        allocation = GaugeMetricFamily(
            "rampart_allocation",
            "Capital allocation (fraction) per deployment; 0 while its algorithm is halted",
            labels=dep_labels,
        )
        stage = GaugeMetricFamily("rampart_stage", "Current stage index", labels=dep_labels)
        phase = GaugeMetricFamily(
            "rampart_phase",
            "Deployment phase code: " + ", ".join(f"{k}={v}" for k, v in PHASE_CODES.items()),
            labels=dep_labels,
        )
        for r in d.runner.deployments.values():
            st = r.state
            values = [st.deployment_id, st.strategy, st.active]
            # a halted algorithm has no capital, whatever the deployment last decided
            halted_now = st.halted or st.active in halts
            allocation.add_metric(values, 0.0 if halted_now else st.allocation)
            stage.add_metric(values, st.stage)
            phase.add_metric(values, PHASE_CODES.get(st.phase, -1))
        yield from (allocation, stage, phase)

        rollbacks = CounterMetricFamily(
            "rampart_rollbacks",
            "Rollbacks since this daemon started, by their outcome when carried out (succeeded, "
            "failed); completed: those not succeeded then that completed later",
            labels=["state"],
        )
        steps = GaugeMetricFamily(
            "rampart_rollback_step_seconds",
            "Step durations of the most recent rollback",
            labels=["step"],
        )
        recent = d.guard.recent if d.guard is not None else []
        counts = d.guard.rollback_counts if d.guard is not None else {}
        for state, count in sorted(counts.items()):
            rollbacks.add_metric([state], count)
        if recent:
            for step in recent[0].steps:
                if step.duration_ns is not None:
                    steps.add_metric([step.name], step.duration_ns / 1e9)
        yield from (rollbacks, steps)


def serve_metrics(daemon: Scraped, port: int, host: str = "127.0.0.1") -> Callable[[], None]:
    """Expose the daemon's metrics on ``http://host:port/metrics`` (a server thread); returns
    what stops it and frees the port."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    server, thread = start_http_server(port, addr=host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
