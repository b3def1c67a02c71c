"""Shared test setup: the Hypothesis profile and a real nats-server per test."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from rampart.embedded import EmbeddedNatsServer

# The core is deterministic and never reads a clock, so per-example deadlines only add flakiness
# (the first call into a freshly built extension can be slow). Example counts are set per test.
# One bug at a time: shrinking several distinct failures of a long event sequence takes minutes.
settings.register_profile(
    "rampart",
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
# CI: fail fast and clearly. The explain phase runs under sys.settrace on Python < 3.12, which
# can take longer than the per-test timeout on a long failing sequence: the timeout would then
# hide the bug that was found. Still random: the session's seed is printed in the header.
settings.register_profile(
    "ci",
    parent=settings.get_profile("rampart"),
    phases=[p for p in Phase if sys.version_info >= (3, 12) or p is not Phase.explain],
)
settings.load_profile("ci" if os.environ.get("CI") else "rampart")


def pytest_configure(config: pytest.Config) -> None:
    """One random Hypothesis seed per session unless one is given, so every failure can be
    replayed with ``--hypothesis-seed=N`` (property tests stay random from run to run)."""
    if config.getoption("hypothesis_seed", None) is None:
        config.option.hypothesis_seed = random.SystemRandom().randrange(2**32)


def pytest_report_header(config: pytest.Config) -> str:
    seed = config.getoption("hypothesis_seed", None)
    profile = settings.get_current_profile_name()
    return f"hypothesis: profile {profile!r}, seed {seed} (replay with --hypothesis-seed={seed})"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedNatsServer]:
    """A real nats-server with JetStream on a free loopback port, stopped after the test."""
    srv = EmbeddedNatsServer(store_dir=tmp_path / "nats")
    srv.start()
    yield srv
    srv.cleanup()
