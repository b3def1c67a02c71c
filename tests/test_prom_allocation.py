"""`rampart_allocation` says 0 while the deployment's algorithm is halted (issue 13: it stayed at
1.0 after a halt had set the allocation to 0)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from rampart._core import AlgoConfig, Engine
from rampart.loop_lag import LoopLag
from rampart.prom import DaemonCollector
from rampart.protocol import IngestStats
from rampart.strategies.base import DeploymentState


def allocation(halted: dict[str, Any]) -> float:
    engine = Engine()
    engine.register(AlgoConfig("green", "1", 1_000_000.0))
    state = DeploymentState(
        deployment_id="d1",
        strategy="BlueGreen",
        phase="monitoring",
        started_at=1,
        phase_started_at=1,
        allocation=1.0,
        active="green",
    )
    daemon = SimpleNamespace(
        stats=IngestStats(),
        slow_consumer_drops=0,
        guard=SimpleNamespace(halted=halted, recent=[]),
        engine=engine,
        gateway_of={"green": "gw1"},
        runner=SimpleNamespace(deployments={"d1": SimpleNamespace(state=state)}),
        loop_lag=LoopLag(),
    )
    metric = next(m for m in DaemonCollector(daemon).collect() if m.name == "rampart_allocation")
    (sample,) = metric.samples
    return float(sample.value)


def test_allocation_is_zero_while_the_algorithm_is_halted() -> None:
    assert allocation({}) == 1.0
    assert allocation({"green": object()}) == 0.0
