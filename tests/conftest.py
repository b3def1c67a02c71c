"""Shared test setup: the Hypothesis profile."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

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
