"""Failpoints for crash and fault tests: ``RAMPART_FAILPOINT=NAME:N`` kills the process with
SIGKILL the N-th time it reaches the failpoint ``NAME`` (``hit``);
``RAMPART_FAILPOINT=NAME:N:error`` makes the N-th pass through ``fails(NAME)`` answer True, for
the caller to fail as the fault would (a disk error, say); ``NAME:N:errors``, the N-th and every
later pass (a disk that stays full). Unset (always, in production), a failpoint costs one
dictionary lookup."""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("RAMPART_FAILPOINT", "")
_ARMED: dict[str, int] = {}
_ERRORS: dict[str, int] = {}
_LASTING: set[str] = set()  # error failpoints that go on failing once due
if _SPEC:
    _name, _, _rest = _SPEC.partition(":")
    _count, _, _mode = _rest.partition(":")
    (_ERRORS if _mode in ("error", "errors") else _ARMED)[_name] = int(_count or "1")
    if _mode == "errors":
        _LASTING.add(_name)


def hit(name: str) -> None:
    """Die here (SIGKILL, no cleanup, like a crash) if this failpoint is armed and due."""
    left = _ARMED.get(name)
    if left is None:
        return
    left -= 1
    _ARMED[name] = left
    if left <= 0:
        os.kill(os.getpid(), signal.SIGKILL)


def fails(name: str, *qualifiers: str) -> bool:
    """True the N-th time this error failpoint is reached (and only then). With
    ``qualifiers``, ``NAME.QUALIFIER`` counts only the passes that carry that qualifier (say,
    the kind of write a transaction holds)."""
    if not _ERRORS:
        return False
    hit = False
    for key in (name, *(f"{name}.{q}" for q in qualifiers)):
        left = _ERRORS.get(key)
        if left is not None:
            _ERRORS[key] = left - 1
            hit = hit or left - 1 == 0 or (left - 1 < 0 and key in _LASTING)
    return hit
