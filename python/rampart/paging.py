"""Status replies that always fit in one NATS message (docs/protocol.md, "Status").

A reply is a page: the daemon's own status with every list bounded, then as many algorithms
from ``offset`` as fit in ``max_bytes`` (the server's max payload), with the deployments they are
in. Pure functions over protocol Structs: the daemon supplies the entries, this module sizes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, Final, cast

import msgspec

from rampart.protocol import (
    AlgoStatus,
    AlgoUnavailable,
    DaemonStatus,
    StatusReply,
    to_wire,
)
from rampart.strategies.base import DeploymentState

# At most this many entries of each growing list of DaemonStatus, before any byte budget.
LIST_CAPS: Final = {"halted": 100, "rollbacks": 20, "gateways": 100, "connectivity": 50}
# the status service lets the event loop run after this many algorithms of a page (~0.5-1 ms)
YIELD_EVERY: Final = 16


class StatusTooLargeError(RuntimeError):
    """Even the daemon's summary does not fit in one message (``max_bytes`` is too small)."""


def _size(wire: Any) -> int:
    return len(msgspec.json.encode(wire))


def fit_daemon(status: DaemonStatus, budget: int) -> DaemonStatus:
    """``status`` with its lists cut to ``LIST_CAPS``, then halved (largest list first) until it
    encodes in ``budget`` bytes. What was left out is counted in ``omitted``."""
    omitted = dict(status.omitted)
    cut: dict[str, list[Any]] = {}
    for name, cap in LIST_CAPS.items():
        items: list[Any] = getattr(status, name)
        if len(items) > cap:
            cut[name] = items[:cap]
            omitted[name] = omitted.get(name, 0) + len(items) - cap
    status = msgspec.structs.replace(status, **cut, omitted=omitted)
    while _size(to_wire(status)) > budget:
        present = [name for name in LIST_CAPS if getattr(status, name)]
        if not present:
            break  # nothing left to cut; the caller checks the whole reply
        name = max(present, key=lambda n: _size(to_wire(getattr(status, n))))
        items = getattr(status, name)
        keep = len(items) // 2
        omitted[name] = omitted.get(name, 0) + len(items) - keep
        status = msgspec.structs.replace(status, **{name: items[:keep]}, omitted=dict(omitted))
    return status


def trim_positions(algo: AlgoStatus, budget: int) -> AlgoStatus | None:
    """``algo`` with as many positions as fit in ``budget`` bytes, open ones first (the rest
    counted in ``positions_omitted``); None if it does not fit even without positions."""
    ordered = sorted(algo.positions, key=lambda p: p.qty == 0)  # stable: open ones first
    keep = len(ordered)
    while True:
        trimmed = msgspec.structs.replace(
            algo,
            positions=ordered[:keep],
            positions_omitted=algo.positions_omitted + len(ordered) - keep,
        )
        if _size(to_wire(trimmed)) <= budget:
            return trimmed
        if keep == 0:
            return None
        keep //= 2


def build_page(
    daemon: DaemonStatus,
    ids: Sequence[str],
    entry: Callable[[str], AlgoStatus | AlgoUnavailable],
    deployments: Mapping[str, Sequence[DeploymentState]],
    *,
    max_bytes: int,
    offset: int = 0,
    limit: int | None = None,
) -> bytes:
    """The encoded ``StatusReply`` page of ``ids`` from ``offset``: never more than ``max_bytes``
    and, while any algorithm is left from ``offset``, never empty. ``entry(id)`` reads one
    algorithm; ``deployments[id]`` are the deployments it is in."""
    steps = page_steps(
        daemon, ids, entry, deployments, max_bytes=max_bytes, offset=offset, limit=limit
    )
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return cast(bytes, done.value)


async def build_page_async(
    daemon: DaemonStatus,
    ids: Sequence[str],
    entry: Callable[[str], AlgoStatus | AlgoUnavailable],
    deployments: Mapping[str, Sequence[DeploymentState]],
    *,
    max_bytes: int,
    offset: int = 0,
    limit: int | None = None,
    every: int = YIELD_EVERY,
) -> bytes:
    """``build_page`` on the event loop without holding it: it lets the loop run after every
    ``every`` algorithms, so a halt, a heartbeat or a quote never waits behind a whole page
    (10-15 ms for a page of ~300 algorithms)."""
    steps = page_steps(
        daemon, ids, entry, deployments, max_bytes=max_bytes, offset=offset, limit=limit
    )
    n = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return cast(bytes, done.value)
        n += 1
        if n % every == 0:
            await asyncio.sleep(0)


def page_steps(
    daemon: DaemonStatus,
    ids: Sequence[str],
    entry: Callable[[str], AlgoStatus | AlgoUnavailable],
    deployments: Mapping[str, Sequence[DeploymentState]],
    *,
    max_bytes: int,
    offset: int = 0,
    limit: int | None = None,
) -> Generator[None, None, bytes]:
    """``build_page`` one algorithm at a time: yields after each, returns the page."""
    total = len(ids)
    end = total if limit is None else min(total, offset + limit)
    daemon = fit_daemon(daemon, max_bytes // 4)
    # sized with the largest offsets it can carry
    head = StatusReply(daemon=daemon, algorithms=[], total=total, offset=offset, next_offset=total)
    room = max_bytes - _size(to_wire(head)) - len("null")
    algos: list[Any] = []
    unavailable: list[Any] = []
    listed: dict[str, Any] = {}
    i = offset
    while i < end:
        algo_id = ids[i]
        new = {
            d.deployment_id: to_wire(d)
            for d in deployments.get(algo_id, ())
            if d.deployment_id not in listed
        }
        deps_cost = sum(_size(w) + 1 for w in new.values())
        item = entry(algo_id)
        wire = to_wire(item)
        cost = _size(wire) + 1 + deps_cost
        if cost > room:
            if i > offset:
                break  # the next page starts here
            # alone on its page and still too large: cut its positions to fit
            item, new = _shrink(item, new, room, max_bytes)
            wire = to_wire(item)
            cost = _size(wire) + 1 + sum(_size(w) + 1 for w in new.values())
            if cost > room:
                raise StatusTooLargeError(
                    f"the status of {algo_id!r} does not fit in one NATS message of "
                    f"{max_bytes} bytes"
                )
        (algos if isinstance(item, AlgoStatus) else unavailable).append(wire)
        listed.update(new)
        room -= cost
        i += 1
        yield
    reply = to_wire(head)
    reply["algorithms"] = algos
    reply["unavailable"] = unavailable
    reply["deployments"] = [listed[k] for k in sorted(listed)]
    reply["next_offset"] = i if i < total else None
    data = msgspec.json.encode(reply)
    if len(data) > max_bytes:
        raise StatusTooLargeError(
            f"the daemon's status does not fit in one NATS message of {max_bytes} bytes"
        )
    return data


def _shrink(
    item: AlgoStatus | AlgoUnavailable, deployments: dict[str, Any], room: int, max_bytes: int
) -> tuple[AlgoStatus | AlgoUnavailable, dict[str, Any]]:
    """An entry too large for a page of its own: fewer positions, then without its
    deployments, else only the news that it does not fit."""
    if isinstance(item, AlgoStatus):
        for deps in (deployments, {}):
            trimmed = trim_positions(item, room - 1 - sum(_size(w) + 1 for w in deps.values()))
            if trimmed is not None:
                return trimmed, deps
    return AlgoUnavailable(
        algo_id=item.algo_id,
        gateway=item.gateway,
        error=f"its status does not fit in one NATS message of {max_bytes} bytes",
    ), {}
