"""Helpers shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rampart.signing import default_seed_path, load_or_create


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


async def spawn(*args: str, log: Path, prefix: Sequence[str] = ()) -> asyncio.subprocess.Process:
    """``python ARGS...`` as its own process (run by ``PREFIX...``: ``setpriv ... --``, say),
    its stderr appended to ``log``."""
    with log.open("ab") as f:
        return await asyncio.create_subprocess_exec(
            *prefix, sys.executable, *args, stdout=asyncio.subprocess.DEVNULL, stderr=f
        )


def rampart_keys(data_dir: str | Path) -> list[str]:
    """The public key a Rampart on ``data_dir`` signs with, as a gateway's ``trusted_keys``: the
    key is created now if it is not there yet (the daemon, started before or after, uses it)."""
    return [load_or_create(default_seed_path(data_dir)).public_key]


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
