"""Rampart: deploy trading algorithms with capital instead of traffic, and roll them back in
milliseconds when they misbehave.

The risk core is written in Rust (``rampart._core``); metric definitions are in docs/metrics.md.
"""

from rampart import nats_hardening as _nats_hardening
from rampart._core import (
    AlgoConfig,
    BatchResult,
    Breach,
    ConfigError,
    DecodeError,
    Engine,
    InvalidEventError,
    OutOfOrderError,
    Position,
    RampartError,
    Snapshot,
    UnknownAlgorithmError,
    __version__,
)

_nats_hardening.install()  # one message with a bad subject must not deafen a connection

__all__ = [
    "AlgoConfig",
    "BatchResult",
    "Breach",
    "ConfigError",
    "DecodeError",
    "Engine",
    "InvalidEventError",
    "OutOfOrderError",
    "Position",
    "RampartError",
    "Snapshot",
    "UnknownAlgorithmError",
    "__version__",
]
