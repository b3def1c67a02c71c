"""The fleet view (``rampart status --fleet``, docs/ha.md): every Rampart process on a NATS
cluster, found through the NATS services API's discovery (``$SRV.PING``), grouped into shards
by subject prefix, with who leads each shard, who stands by, and the leader's own summary.

Each process's service carries its subject prefix and role in its metadata (``role``: single,
leader or standby; a shard's processes add ``shard``, ``term`` and ``holder``). A standby
answers discovery only: status and control requests go to its shard's leader."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from rampart.protocol import DaemonStatus, StatusRequest, Subjects, encoder
from rampart.status import (
    DaemonLink,
    NoDaemonError,
    StatusError,
    _connect,
    _decode_status,
    _request,
)

PING_SUBJECT: Final = "$SRV.PING"
PING_TYPE: Final = "io.nats.micro.v1.ping_response"
# how long discovery collects answers: the whole cluster's, one round trip each
DISCOVERY_WINDOW: Final = 0.5
LEADING_ROLES: Final = frozenset({"single", "leader"})


class Instance(msgspec.Struct, frozen=True, kw_only=True):
    """One process's answer to ``$SRV.PING`` (a Rampart one: its metadata has a prefix)."""

    name: str
    id: str
    version: str
    prefix: str
    role: str = "single"
    shard: str | None = None
    term: int | None = None
    holder: str | None = None


class _Ping(msgspec.Struct, frozen=True):
    name: str
    id: str
    version: str = ""
    type: str = ""
    metadata: dict[str, str] | None = None


_ping_decoder: Final = msgspec.json.Decoder(_Ping)


def instance_of(data: bytes) -> Instance | None:
    """The Rampart process behind one discovery answer; None for another service's answer,
    or one that cannot be read (anybody may answer ``$SRV.PING``)."""
    try:
        ping = _ping_decoder.decode(data)
    except msgspec.DecodeError:
        return None
    meta = ping.metadata or {}
    if ping.type != PING_TYPE or "prefix" not in meta:
        return None
    term = meta.get("term", "")
    return Instance(
        name=ping.name,
        id=ping.id,
        version=ping.version,
        prefix=meta["prefix"],
        role=meta.get("role", "single"),
        shard=meta.get("shard") or None,
        term=int(term) if term.isdigit() else None,
        holder=meta.get("holder") or None,
    )


@dataclass
class ShardView:
    """The processes answering for one subject prefix, and the leader's status summary."""

    prefix: str
    instances: list[Instance]
    status: DaemonStatus | None = None
    algorithms: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def shard(self) -> str:
        shards = sorted({i.shard for i in self.instances if i.shard})
        return ", ".join(shards) if shards else (self.instances[0].name if self.instances else "")

    @property
    def leaders(self) -> list[Instance]:
        return [i for i in self.instances if i.role in LEADING_ROLES]

    @property
    def standbys(self) -> list[Instance]:
        return [i for i in self.instances if i.role == "standby"]

    @property
    def ok(self) -> bool:
        return not self.problems


async def discover(nc: Client, window: float = DISCOVERY_WINDOW) -> list[Instance]:
    """Every Rampart process that answers ``$SRV.PING`` within ``window`` seconds."""
    found: dict[str, Instance] = {}

    async def on_reply(msg: Msg) -> None:
        inst = instance_of(msg.data)
        if inst is not None:
            found[inst.id] = inst

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_reply)
    try:
        await nc.publish(PING_SUBJECT, b"", reply=inbox)
        await nc.flush()
        await asyncio.sleep(window)
    finally:
        await sub.unsubscribe()
    return sorted(found.values(), key=lambda i: (i.prefix, i.role, i.holder or i.id))


def group(instances: Sequence[Instance]) -> list[ShardView]:
    """One view per subject prefix, with what is wrong with it on the face of it."""
    by_prefix: dict[str, list[Instance]] = {}
    for inst in instances:
        by_prefix.setdefault(inst.prefix, []).append(inst)
    views = []
    for prefix, members in sorted(by_prefix.items()):
        view = ShardView(prefix, members)
        leaders = view.leaders
        if not leaders:
            view.problems.append(
                "no leader answers: a takeover is under way, or the lease holder cannot be "
                "reached (its standbys take over when the lease expires)"
            )
        elif len(leaders) > 1:
            who = ", ".join(i.holder or i.id for i in leaders)
            view.problems.append(
                f"{len(leaders)} processes answer status and control for prefix {prefix!r} "
                f"({who}): two shards share a subject prefix (give each its own "
                "`subject_prefix`), or two daemons run without [ha]"
            )
        if len({i.shard for i in members}) > 1:
            view.problems.append(
                "processes of different shards share this prefix: give each shard its own "
                "`subject_prefix`"
            )
        views.append(view)
    return views


async def fleet(link: DaemonLink, timeout: float = 2.0) -> list[ShardView]:
    """Discover the cluster's Rampart processes, and ask each shard's leader for its summary
    (the first page of its status: the daemon section and the algorithm count)."""
    nc = await _connect(link, timeout)
    try:
        views = group(await discover(nc, min(DISCOVERY_WINDOW, timeout)))
        if not views:
            raise NoDaemonError(
                f"no Rampart process answered {PING_SUBJECT} at {link} (is one running, and may "
                "this user publish $SRV.PING? docs/security.md)"
            )
        body = encoder.encode(StatusRequest(limit=1))

        async def summary(view: ShardView) -> None:
            if len(view.leaders) != 1:
                return
            subject = Subjects(view.prefix).status("algorithms")
            try:
                reply = _decode_status((await _request(nc, link, subject, body, timeout)).data)
            except (NoDaemonError, StatusError) as e:
                view.problems.append(f"its leader did not answer status: {e}")
                return
            view.status, view.algorithms = reply.daemon, reply.total
            ha = reply.daemon.ha
            leader = view.leaders[0]
            if ha is not None and leader.holder and ha.holder != leader.holder:
                view.problems.append(
                    f"status came from {ha.holder}, not from {leader.holder}, the process "
                    "that announced itself leader: two processes answer this prefix"
                )

        await asyncio.gather(*(summary(v) for v in views))
        return views
    finally:
        await nc.close()


def _gateways(status: DaemonStatus | None) -> str:
    if status is None:
        return "-"
    alive = sum(1 for g in status.gateways if g.alive)
    return f"{alive}/{len(status.gateways)} alive"


def format_fleet(views: Sequence[ShardView]) -> str:
    """A table of the shards, then their standbys and problems."""
    head = ("SHARD", "PREFIX", "LEADER", "TERM", "STANDBYS", "ALGOS", "HALTED", "GATEWAYS", "")
    rows = [head]
    for v in views:
        leaders = v.leaders
        leader = (
            ", ".join(i.holder or f"{i.name} ({i.id[:8]})" for i in leaders) if leaders else "-"
        )
        terms = sorted({i.term for i in leaders if i.term is not None})
        s = v.status
        rows.append(
            (
                v.shard,
                v.prefix,
                leader,
                ", ".join(map(str, terms)) or "-",
                str(len(v.standbys)),
                "-" if v.algorithms is None else str(v.algorithms),
                "-" if s is None else str(len(s.halted)),
                _gateways(s),
                "ok" if v.ok else "PROBLEM",
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    for v in views:
        for standby in v.standbys:
            lines.append(f"{v.shard}: standby {standby.holder or standby.id}")
        for problem in v.problems:
            lines.append(f"{v.shard}: PROBLEM: {problem}")
    n_ok = sum(1 for v in views if v.ok)
    lines.append(f"{len(views)} shard(s), {n_ok} ok (discovered through {PING_SUBJECT})")
    return "\n".join(lines)


def fleet_json(views: Sequence[ShardView]) -> list[dict[str, object]]:
    """The fleet view as JSON-ready builtins (``rampart status --fleet --json``)."""
    return [
        {
            "prefix": v.prefix,
            "shard": v.shard,
            "instances": msgspec.to_builtins(v.instances),
            "algorithms": v.algorithms,
            "halted": None if v.status is None else [h.algo for h in v.status.halted],
            "gateways": None
            if v.status is None
            else {g.gateway: bool(g.alive) for g in v.status.gateways},
            "problems": v.problems,
            "ok": v.ok,
        }
        for v in views
    ]
