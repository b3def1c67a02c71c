"""Stopping asyncio tasks on shutdown, bounded."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("rampart.tasks")


async def stop_tasks(tasks: list[asyncio.Task[None]], owner: str, timeout: float = 5.0) -> None:
    """Cancel and wait, bounded: a task whose cancellation was swallowed (``wait_for`` inside
    nats-py, Python 3.11) is cancelled again and then left behind with a warning, never waited
    for forever."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        _, pending = await asyncio.wait(pending, timeout=1.0)
    if pending:
        names = ", ".join(t.get_name() for t in pending)
        log.warning("%s: tasks %s did not stop; leaving them", owner, names)
