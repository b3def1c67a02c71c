"""The start-up heap out of the garbage collector's sight (``gc.freeze``), for long-running
processes on the halt path: Rampart's daemon, and a gateway built on the SDK.

A full (generation 2) collection walks every live object. With 1,000+ algorithms that is 10-21
ms, one stall of the event loop, and of any halt waiting behind it, every few thousand events
(BENCHMARKS.md, "The event loop's stalls" and "the worst case"). What lives as long as the
process (configuration, algorithms, engine bindings, connections) is made before the first
event: collected once, then frozen, it is never walked again.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("rampart.heap")


def freeze_startup_heap() -> None:
    """Collect once, then freeze everything alive. Once per process, after start-up: what is
    frozen is never collected, so a process that starts many daemons or gateways (tests) should
    not call it."""
    gc.collect()
    gc.freeze()
    log.debug("%d objects of the start-up heap frozen", gc.get_freeze_count())
