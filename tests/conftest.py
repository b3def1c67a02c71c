"""Shared test setup: the Hypothesis profile and a real nats-server per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

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
settings.load_profile("rampart")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedNatsServer]:
    """A real nats-server with JetStream on a free loopback port, stopped after the test."""
    srv = EmbeddedNatsServer(store_dir=tmp_path / "nats")
    srv.start()
    yield srv
    srv.cleanup()
