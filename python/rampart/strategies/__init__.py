"""Deployment strategies as pure state machines (see base.py for the contract)."""

from __future__ import annotations

from typing import Protocol

from rampart.deployment import (
    BlueGreenDeployment,
    CanaryDeployment,
    Deployment,
    PaperTradingDeployment,
    ProgressiveDeployment,
)
from rampart.strategies.base import (
    TERMINAL,
    Action,
    Decision,
    DeploymentState,
    Observation,
    Transition,
    Verb,
)
from rampart.strategies.blue_green import BlueGreenMachine
from rampart.strategies.canary import CanaryMachine
from rampart.strategies.paper import PaperMachine
from rampart.strategies.progressive import ProgressiveMachine

__all__ = [
    "TERMINAL",
    "Action",
    "Decision",
    "DeploymentState",
    "Machine",
    "Observation",
    "Transition",
    "Verb",
    "machine_for",
]


class Machine(Protocol):
    strategy: str

    def start(self, now: int, actor: str = "rampart") -> Decision: ...
    def step(self, state: DeploymentState, obs: Observation, now: int) -> Decision: ...
    def command(
        self, state: DeploymentState, verb: Verb, actor: str, now: int, *, trigger: str = "manual"
    ) -> Decision:
        """``trigger``: what a ``halt``'s rollback names as its cause (``manual`` for a person;
        ``limit:<kind>`` for a core limit breach, a guard trigger for its rollbacks)."""
        ...


def machine_for(doc: Deployment) -> Machine:
    """The state machine a deployment document describes."""
    if isinstance(doc, PaperTradingDeployment):
        return PaperMachine(doc)
    if isinstance(doc, CanaryDeployment):
        return CanaryMachine.from_document(doc)
    if isinstance(doc, BlueGreenDeployment):
        return BlueGreenMachine(doc)
    if isinstance(doc, ProgressiveDeployment):
        return ProgressiveMachine(doc)
    raise TypeError(f"no strategy for {type(doc).__name__}")
