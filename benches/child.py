"""A benchmark's helper process, stopped politely: ``quit`` on stdin, then a kill after 10 s."""

from __future__ import annotations

import asyncio
import contextlib


async def stop_child(proc: asyncio.subprocess.Process | None) -> None:
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(Exception):
        assert proc.stdin is not None
        proc.stdin.write(b"quit\n")
        await proc.stdin.drain()
        proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()
