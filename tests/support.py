"""Helpers shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from rampart._core import SigningKey
from rampart.operators import local_admin_path, new_request
from rampart.protocol import DEFAULT_PREFIX, ControlReply, Subjects, control_reply_decoder
from rampart.signing import default_seed_path, load_or_create, read_key


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait (bounded) for asynchronous delivery to make ``predicate`` true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the timeout")
        await asyncio.sleep(0.005)


async def eventually(cond: Callable[[], Any], timeout: float, what: str = "") -> None:
    """Wait (bounded) until ``cond()`` is true; ``cond`` may return an awaitable (a status
    request over NATS, say). The fault tests' wait, with what was awaited in the failure."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        ok = cond()
        if asyncio.iscoroutine(ok):
            ok = await ok
        if ok:
            return
        if loop.time() > end:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


async def spawn(
    *args: str, log: Path, prefix: Sequence[str] = (), env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """``python ARGS...`` as its own process (run by ``PREFIX...``: ``setpriv ... --``, say),
    its stderr appended to ``log``; ``env`` adds to this process's environment."""
    with log.open("ab") as f:
        return await asyncio.create_subprocess_exec(
            *prefix,
            sys.executable,
            *args,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=f,
            env={**os.environ, **(env or {})},
        )


def rampart_keys(data_dir: str | Path) -> list[str]:
    """The public key a Rampart on ``data_dir`` signs with, as a gateway's ``trusted_keys``: the
    key is created now if it is not there yet (the daemon, started before or after, uses it)."""
    return [load_or_create(default_seed_path(data_dir)).public_key]


def local_admin(data_dir: str | Path) -> SigningKey:
    """The local admin key of the daemon on ``data_dir`` (created at its start)."""
    return read_key(local_admin_path(data_dir))


async def control(
    nc: Client,
    data_dir: str | Path | None,
    verb: str,
    target: str,
    *,
    reason: str = "test",
    document: dict[str, Any] | None = None,
    key: SigningKey | None = None,
    prefix: str = DEFAULT_PREFIX,
    timeout: float = 10.0,
) -> ControlReply:
    """A control request signed as the CLI signs it: by ``key``, else the local admin of the
    daemon on ``data_dir``."""
    subject = Subjects(prefix).control(verb)
    signer = key if key is not None else local_admin(data_dir or ".")
    body, headers = new_request(signer, subject, target, reason=reason, document=document)
    msg = await nc.request(subject, body, timeout=timeout, headers=headers)
    return control_reply_decoder.decode(msg.data)


def live_config(algos: Sequence[tuple[str, str]], *, top: str = "", triggers: str = "") -> str:
    """The daemon configuration the end-to-end tests share, with a ``{data_dir}`` placeholder
    (``.format(data_dir=...)``): fast heartbeats and checks, the staleness triggers off, and
    each (algorithm, gateway) with capital 100,000. ``top`` and ``triggers`` add lines."""
    text = f'\ndata_dir = "{{data_dir}}"\n{top}heartbeat_interval = "PT0.05S"\n\n'
    text += (
        '[triggers]\ncheck_interval = "PT0.02S"\ngateway_heartbeat_timeout = "PT1H"\n'
        f'market_data_timeout = "PT1H"\nnats_disconnect = false\n{triggers}'
    )
    for algo, gateway in algos:
        text += (
            f'\n[[algorithms]]\nid = "{algo}"\nversion = "1"\ngateway = "{gateway}"\n'
            "capital = 100000\n"
        )
    return text
