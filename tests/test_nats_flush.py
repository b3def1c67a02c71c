"""rampart.nats_flush: a flush after subscribe puts the SUB on the wire before the PING (nats-py's
own flush writes its PING ahead of what its flusher task has not written yet)."""

from __future__ import annotations

import asyncio

import nats
from nats.aio.client import Client

from rampart import nats_flush
from rampart.embedded import EmbeddedNatsServer


def wire_order(nc: Client) -> list[bytes]:
    """What ``nc`` writes to its socket, command by command (nats-py's transport, private)."""
    sent: list[bytes] = []
    transport = nc._transport
    assert transport is not None
    write, writelines = transport.write, transport.writelines

    def rec_write(data: bytes) -> None:
        sent.append(bytes(data))
        write(data)

    def rec_writelines(lines: list[bytes]) -> None:
        sent.extend(bytes(x) for x in lines)
        writelines(lines)

    transport.write = rec_write  # type: ignore[method-assign,assignment]
    transport.writelines = rec_writelines  # type: ignore[method-assign,assignment]
    return sent


def test_the_subscription_leaves_before_the_ping(server: EmbeddedNatsServer) -> None:
    async def scenario() -> None:
        nc = await nats.connect(server.url)
        try:
            sent = wire_order(nc)
            await nc.subscribe("rampart.md.>")
            await nats_flush.flush(nc)
            # (nats-py 2.16's own flush writes [PING, SUB] here: its PONG says nothing of the SUB)
            kinds = [c.split(b" ")[0].strip() for c in sent if c[:3] in (b"SUB", b"PIN")]
            assert kinds.index(b"SUB") < kinds.index(b"PING"), kinds
        finally:
            await nc.close()

    asyncio.run(scenario())
