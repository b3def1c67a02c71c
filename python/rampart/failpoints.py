"""Failpoints for crash tests: ``RAMPART_FAILPOINT=NAME:N`` kills the process with SIGKILL the
N-th time it reaches the failpoint ``NAME``. Unset (always, in production), a failpoint costs one
dictionary lookup."""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("RAMPART_FAILPOINT", "")
_ARMED: dict[str, int] = {}
if _SPEC:
    _name, _, _count = _SPEC.partition(":")
    _ARMED[_name] = int(_count or "1")


def hit(name: str) -> None:
    """Die here (SIGKILL, no cleanup, like a crash) if this failpoint is armed and due."""
    left = _ARMED.get(name)
    if left is None:
        return
    left -= 1
    _ARMED[name] = left
    if left <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
