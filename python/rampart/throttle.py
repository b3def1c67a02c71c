"""Rate limits for repeated logs and alerts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

# A failure that repeats (a checkpoint, an unreadable status) is logged and alerted once per
# algorithm in this many seconds.
REPEAT_EVERY: Final = 60.0
# Error texts in logs, alerts and status replies are cut to this many characters.
ERROR_CHARS: Final = 500


class Throttle:
    """Lets one event per key through every ``interval`` seconds (for repeated logs, alerts)."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}

    def ready(self, key: str) -> bool:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        self._last[key] = now
        return True

    def clear(self, key: str) -> bool:
        """Forget ``key`` (its next event goes through); True if it had fired."""
        return self._last.pop(key, None) is not None
