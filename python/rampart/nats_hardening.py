"""One message on the bus must not deafen a nats-py connection.

nats-py 2.16 decodes a message's subject and reply as UTF-8 in ``Client._build_message``; a
publisher that sends a subject that is not (nats-server forwards it) raises
``UnicodeDecodeError`` there, which ends the connection's read loop: the process hears nothing
more on that connection until its PINGs time out and it reconnects (the daemon: seconds deaf,
then a ``connectivity:nats`` rollback of everything; a gateway on its default ping interval:
minutes). Found from outside (issue 15's review); the Rust wire path refuses such a message
alone (``bad_subject``). ``install()`` (done when ``rampart`` is imported) makes nats-py drop
the message instead, counted in ``dropped`` and logged (the first few, then one in 1,000). The
same for any other error taking one message apart (a header block of exactly ``NATS/1.0``
raises ``IndexError`` in ``Client._process_headers``).
"""

from __future__ import annotations

import logging
from typing import Any

from nats.aio.client import Client

log = logging.getLogger("rampart.nats")

dropped = 0
_installed = False


def install() -> None:
    """Wrap ``Client._process_msg`` once: a message nats-py cannot take apart (a subject,
    reply or headers that do not decode) is dropped, the connection goes on."""
    global _installed
    if _installed:
        return
    original = Client._process_msg

    async def _process_msg(self: Client, sid: int, subject: bytes, *rest: Any) -> None:
        try:
            await original(self, sid, subject, *rest)
        except Exception as e:  # (not CancelledError: the read loop's own end goes through)
            global dropped
            dropped += 1
            if dropped <= 10 or dropped % 1000 == 0:
                log.warning(
                    "dropped a NATS message nats-py could not take apart (#%d, subject %r): %s: %s",
                    dropped,
                    subject[:200],
                    type(e).__name__,
                    e,
                )

    setattr(Client, "_process_msg", _process_msg)  # noqa: B010 (mypy: a method replaced)
    _installed = True
