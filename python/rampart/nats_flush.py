"""``flush`` that holds after ``subscribe``: what nats-py's own does not guarantee.

nats-py (2.16) queues a SUB (and any publish) for its flusher task, but ``Client.flush`` writes
its PING straight to the socket: called right after ``subscribe``, the PING can leave before the
SUB, the server's PONG then proves nothing about the subscription, and a message another
connection publishes at once can arrive before the server knows of it (seen: the first quote
after a daemon's start lost, 1 run in ~20 on a loaded machine). Letting the flusher run first
puts the SUB on the wire ahead of the PING.
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client


async def flush(nc: Client, timeout: float = 10.0) -> None:
    """Everything queued on ``nc`` so far (subscriptions included) is at the server when this
    returns: the flusher task writes it, then the PING/PONG round trip."""
    await asyncio.sleep(0)  # the flusher, woken by what was queued, writes it before the PING
    await nc.flush(timeout=timeout)  # type: ignore[arg-type]
