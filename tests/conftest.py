"""Shared test setup: the Hypothesis profile and small fixtures for the core engine."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, settings

from rampart._core import AlgoConfig, Engine

# The core is deterministic and never reads a clock, so per-example deadlines only add flakiness
# (the first call into a freshly built extension can be slow). Example counts are set per test.
settings.register_profile(
    "rampart",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile("rampart")


@pytest.fixture
def engine() -> Engine:
    return Engine()


ConfigFactory = Callable[..., AlgoConfig]


@pytest.fixture
def make_config() -> ConfigFactory:
    """``make_config(algo_id="algo", capital=100_000.0, **overrides)`` -> ``AlgoConfig``."""

    def make(algo_id: str = "algo", capital: float = 100_000.0, **kwargs: object) -> AlgoConfig:
        return AlgoConfig(algo_id, "1.0.0", capital, **kwargs)  # type: ignore[arg-type]

    return make
