"""The status client: finds the daemon's NATS, asks its status service, formats the answer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from rampart._core import SigningKey
from rampart.config import DaemonConfig, NatsConfig
from rampart.loop_lag import BUCKETS
from rampart.nats_auth import embedded_login
from rampart.nats_connection import URL_FILE, connect_options
from rampart.operators import new_request
from rampart.position_watch import describe
from rampart.protocol import (
    ControlReply,
    ControlVerb,
    LoopLagStats,
    StatusReply,
    StatusRequest,
    Subjects,
    WireStatus,
    control_reply_decoder,
    encoder,
    error_reply_decoder,
    status_reply_decoder,
)
from rampart.store import RollbackRecord
from rampart.strategies.base import DeploymentState, Metrics
from rampart.view import LiveView, ViewRow

ENV_URL = "RAMPART_NATS_URL"


class NoDaemonError(RuntimeError):
    """No Rampart daemon answered, or NATS could not be reached."""


class StatusError(RuntimeError):
    """The daemon answered with an error (e.g. an unknown algorithm)."""


@dataclass(frozen=True)
class DaemonLink:
    """Where the daemon's NATS is, and how to log in to it: the configuration's credentials
    (user and password, token, NKEY seed, .creds file, TLS), the same the daemon uses."""

    servers: list[str]
    nats: NatsConfig = field(default_factory=NatsConfig)

    def __str__(self) -> str:
        return ", ".join(self.servers)


def resolve_servers(flag: str | None, config: DaemonConfig) -> DaemonLink:
    """Where the daemon's NATS is: --servers, $RAMPART_NATS_URL, the config, or the URL file
    an embedded server left in the data directory; with the config's credentials."""
    for source in (flag, os.environ.get(ENV_URL)):
        if source:
            servers = [s.strip() for s in source.split(",") if s.strip()]
            return DaemonLink(servers, embedded_credentials(config))
    if config.nats.servers:
        return DaemonLink(list(config.nats.servers), config.nats)
    url_file = Path(config.data_dir) / URL_FILE
    try:
        url = url_file.read_text().strip()
    except OSError:
        raise NoDaemonError(
            f"no NATS server to ask: pass --servers, set {ENV_URL}, configure nats.servers, "
            f"or start `rampart run` (its embedded server writes {url_file})"
        ) from None
    return DaemonLink([url], embedded_credentials(config))


def embedded_credentials(config: DaemonConfig) -> NatsConfig:
    """The configuration's [nats], or, when it names no credentials, the operator's login on
    the embedded server (``<data_dir>/nats-auth/operator.nk``: no anonymous access there)."""
    nats_cfg = config.nats
    if nats_cfg.user or nats_cfg.token or nats_cfg.nkeys_seed or nats_cfg.credentials:
        return nats_cfg
    login = embedded_login(config.data_dir, "operator")
    if login is None:
        return nats_cfg
    seed, inbox = login
    return msgspec.structs.replace(nats_cfg, nkeys_seed=str(seed), inbox_prefix=inbox)


class _CliClient(Client):
    """A CLI connection that keeps the errors the server sent it (a permissions violation
    arrives as an asynchronous -ERR while the request times out): the message names them."""

    def __init__(self) -> None:
        super().__init__()
        self.refusals: list[str] = []


async def _connect(link: DaemonLink, timeout: float) -> Client:
    opts = connect_options(link.nats, link.servers)
    opts |= {
        "connect_timeout": min(timeout, 5.0),
        "allow_reconnect": False,
        "max_reconnect_attempts": 0,
        "name": f"{link.nats.name}-cli",
    }
    nc = _CliClient()

    async def on_error(e: Exception) -> None:
        nc.refusals.append(str(e))

    try:
        await nc.connect(**opts, error_cb=on_error)
    except Exception as e:
        with contextlib.suppress(Exception):
            await nc.close()  # a refused login leaves its transport open otherwise
        raise NoDaemonError(f"cannot reach NATS at {link}: {e or type(e).__name__}") from None
    return nc


async def _request(
    nc: Client,
    servers: DaemonLink,
    subject: str,
    payload: bytes,
    timeout: float,
    headers: dict[str, str] | None = None,
) -> Msg:
    try:
        msg = await nc.request(subject, payload, timeout=timeout, headers=headers)
    except (NoRespondersError, NatsTimeoutError):
        refusals: list[str] = getattr(nc, "refusals", [])
        denied = [r for r in refusals if "permissions violation" in r.lower()]
        if denied:
            raise NoDaemonError(
                f"NATS refused this user: {denied[0]} (its NATS permissions do not include "
                f"{subject}: a viewer may not send control verbs; docs/security.md)"
            ) from None
        raise NoDaemonError(f"no Rampart daemon answered on {subject} at {servers}") from None
    if msg.headers and "Nats-Service-Error" in msg.headers:
        try:
            detail = error_reply_decoder.decode(msg.data).error
        except msgspec.DecodeError:
            detail = msg.headers["Nats-Service-Error"]
        raise StatusError(detail)
    return msg


async def request(
    servers: DaemonLink,
    subject: str,
    payload: bytes,
    timeout: float,
    headers: dict[str, str] | None = None,
) -> Msg:
    """One request to the daemon; ``NoDaemonError`` if nobody answers, ``StatusError`` if it
    answers with a services-API error."""
    nc = await _connect(servers, timeout)
    try:
        return await _request(nc, servers, subject, payload, timeout, headers)
    finally:
        await nc.close()


def _decode_status(data: bytes) -> StatusReply:
    try:
        return status_reply_decoder.decode(data)
    except msgspec.DecodeError as e:
        raise StatusError(f"the daemon's status reply cannot be read: {e}") from None


async def fetch_status(
    servers: DaemonLink, prefix: str, algo: str | None = None, timeout: float = 2.0
) -> StatusReply:
    """The daemon's status: one algorithm, or every algorithm (every page, merged)."""
    subjects = Subjects(prefix)
    nc = await _connect(servers, timeout)
    try:
        if algo:
            msg = await _request(nc, servers, subjects.status("algorithm"), algo.encode(), timeout)
            return _decode_status(msg.data)
        subject = subjects.status("algorithms")
        pages: list[StatusReply] = []
        offset = 0
        while True:
            body = encoder.encode(StatusRequest(offset=offset)) if offset else b""
            page = _decode_status((await _request(nc, servers, subject, body, timeout)).data)
            pages.append(page)
            if page.next_offset is None:
                return merge_pages(pages)
            if page.next_offset <= offset:
                raise StatusError(
                    f"the daemon's status pages do not advance (offset {offset}, next "
                    f"{page.next_offset})"
                )
            offset = page.next_offset
    finally:
        await nc.close()


def merge_pages(pages: Sequence[StatusReply]) -> StatusReply:
    """One reply from a daemon's status pages: the first page's daemon section, every page's
    algorithms, and each deployment once."""
    first = pages[0]
    deployments = {d.deployment_id: d for p in pages for d in p.deployments}
    return msgspec.structs.replace(
        first,
        algorithms=[a for p in pages for a in p.algorithms],
        unavailable=[u for p in pages for u in p.unavailable],
        deployments=[deployments[k] for k in sorted(deployments)],
        offset=0,
        next_offset=None,
    )


async def control(
    servers: DaemonLink,
    prefix: str,
    verb: ControlVerb,
    key: SigningKey,
    target: str,
    *,
    reason: str = "",
    document: dict[str, Any] | None = None,
    timeout: float,
) -> ControlReply:
    """Send an operator's control request, signed with ``key`` (operators.py); the reply says
    whether it was carried out."""
    subject = Subjects(prefix).control(verb)
    body, headers = new_request(key, subject, target, reason=reason, document=document)
    msg = await request(servers, subject, body, timeout, headers=headers)
    return control_reply_decoder.decode(msg.data)


async def wait_converged(
    servers: DaemonLink, prefix: str, algos: Sequence[str], wait: float, timeout: float = 2.0
) -> dict[str, str]:
    """Poll status until every one of ``algos`` is in sync (its gateway does what Rampart
    wants) or ``wait`` seconds pass; returns the drift of those that are not."""
    loop = asyncio.get_running_loop()
    end = loop.time() + wait
    while True:
        drift: dict[str, str] = {}
        for algo in algos:
            reply = await fetch_status(servers, prefix, algo, timeout)
            c = reply.algorithms[0].control if reply.algorithms else None
            if c is None or not c.in_sync:
                drift[algo] = (c.drift if c is not None else None) or "no report yet"
        if not drift or loop.time() >= end:
            return drift
        await asyncio.sleep(0.1)


def now_ns() -> int:
    return time.time_ns()


def _ts(ns: int | None) -> str:
    if ns is None:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _opt(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _sharpe(v: float | None, se: float | None) -> str:
    """``3.10 ±7.2``: a Sharpe ratio with its standard error when the row carries one."""
    return _opt(v, ".2f") if v is None or se is None else f"{v:.2f} ±{se:.1f}"


class MetricsRow(Metrics, Protocol):
    """What the table needs: satisfied by the core's Snapshot and by protocol.AlgoStatus."""

    @property
    def algo_id(self) -> str: ...
    @property
    def breached(self) -> Sequence[str]: ...


METRIC_COLUMNS = (
    "algorithm", "equity", "daily PnL", "drawdown", "max DD", "Sharpe", "trades", "win%",
    "rej%", "p99 ms", "conf", "breached",
)  # fmt: skip


def format_metrics(rows: Sequence[MetricsRow]) -> str:
    """A table of the key metrics, one row per algorithm: each column as wide as its widest
    cell, two spaces apart (long ids and large equities never run together)."""
    cells = []
    for s in rows:
        p99 = None if s.latency_p99_ns is None else s.latency_p99_ns / 1e6
        win = None if s.win_rate is None else 100 * s.win_rate
        rej = None if s.error_rate is None else 100 * s.error_rate
        cells.append(
            (
                s.algo_id,
                f"{s.equity:,.2f}",
                f"{s.daily_pnl:,.2f}",
                f"{s.drawdown:.2%}",
                f"{s.max_drawdown:.2%}",
                _sharpe(s.sharpe, getattr(s, "sharpe_se", None)),
                str(s.trades),
                _opt(win, ".0f"),
                _opt(rej, ".0f"),
                _opt(p99, ".2f"),
                f"{s.confidence:.2f}",
                ",".join(s.breached) or "-",
            )
        )
    widths = [max([len(h), *(len(c[k]) for c in cells)]) for k, h in enumerate(METRIC_COLUMNS)]
    last = len(METRIC_COLUMNS) - 1

    def line(values: Sequence[str]) -> str:
        out = [
            v.ljust(w) if k in (0, last) else v.rjust(w)
            for k, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    head = line(METRIC_COLUMNS)
    return "\n".join([head, "-" * len(head), *(line(c) for c in cells)])


def strategy_label(dep: DeploymentState) -> str:
    """The deployment's strategy as it is now: a paper deployment approved into its canary
    stages reads as such, not as paper trading."""
    if dep.strategy == "PaperTrading" and dep.approved_by is not None:
        return "PaperTrading->Canary"
    return dep.strategy


def format_deployment(dep: DeploymentState) -> str:
    """One deployment: what it is now (a paper deployment promoted to canary says so), since
    when, with what capital."""
    flags = "".join(
        f" {flag}" for flag, on in (("PAUSED", dep.paused), ("HALTED", dep.halted)) if on
    )
    kind = dep.strategy
    if dep.strategy == "PaperTrading" and dep.approved_by is not None:
        kind = f"PaperTrading, promoted to Canary by {dep.approved_by}"
    staged = dep.phase in ("canary", "awaiting_operator")
    where = (
        f"{dep.phase}, stage {dep.stage + 1} since {_ts(dep.stage_started_at)}"
        if staged
        else f"{dep.phase} since {_ts(dep.phase_started_at)}"
    )
    return (
        f"deployment {dep.deployment_id} ({kind}): {where}, allocation {dep.allocation:g}, "
        f"active {dep.active}{flags}"
    )


def format_loop_lag(lag: LoopLagStats) -> str:
    """``event loop lag p50 <= 1 ms, p99 <= 2 ms, p99.9 <= 5 ms, max 3.2 ms (41,200 probes)``."""

    def bound(v: float | None) -> str:
        return f"> {BUCKETS[-1] * 1e3:g} ms" if v is None else f"<= {v:g} ms"

    return (
        f"event loop lag p50 {bound(lag.p50_ms)}, p99 {bound(lag.p99_ms)}, "
        f"p99.9 {bound(lag.p999_ms)}, max {lag.max_ms:.1f} ms ({lag.samples:,} probes)"
    )


def format_wire(w: WireStatus) -> str:
    """The market-data connection of the wire path (``[ingest] wire = "rust"``): one line."""
    state = (
        f"connected to {w.server or '-'}{' (TLS)' if w.tls else ''}"
        if w.connected
        else "DISCONNECTED, reconnecting: no market data meanwhile"
    )
    troubles = [
        f"{n} {what}"
        for n, what in (
            (w.disconnects, "disconnects"),
            (w.slow_consumer, "slow-consumer cut-offs"),
            (w.protocol_errors, "protocol errors"),
        )
        if n
    ]
    last = f", last error: {w.last_error}" if w.last_error and troubles else ""
    return f"market data (wire path): {state}; {w.bytes:,} bytes in {w.chunks:,} reads" + (
        f"; {', '.join(troubles)}{last}" if troubles else ""
    )


def format_status(reply: StatusReply) -> str:
    d = reply.daemon
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(d.ingest.rejected.items())) or "none"
    lines = [
        f"rampart {d.version} ({d.name}) on {d.server or '-'}, "
        f"{'connected' if d.connected else 'DISCONNECTED'}; event time {_ts(d.now)}",
        f"ingested {d.ingest.ingested}, refused: {rejected}, dead-lettered "
        f"{d.ingest.dead_lettered}, breaches {d.ingest.breaches}",
    ]
    if d.store_error:
        lines.append(f"STATE STORE PROBLEM, everything halted: {d.store_error}")
    for o in d.others:
        signed = (
            "signed with THIS Rampart's key (a copy of its data directory)"
            if o.same_key
            else f"key {o.key or 'none (unsigned)'}"
        )
        lines.append(
            f"ANOTHER RAMPART on this prefix: {o.name!r} (boot {o.boot}, {signed}), last heard "
            f"{_ts(o.last_seen)}: status and control requests are shared with it"
        )
    if d.wire is not None:
        lines.append(format_wire(d.wire))
    if d.loop_lag is not None and d.loop_lag.samples:
        lines.append(format_loop_lag(d.loop_lag))
    for g in d.gateways:
        health = "healthy" if g.health.ok else "UNHEALTHY"
        if g.alive is False:
            health = f"DEAD (no heartbeat for {(g.heartbeat_age_ms or 0) / 1000:.1f}s)"
        lines.append(f"gateway {g.gateway}: {health}, last heartbeat {_ts(g.last_heartbeat_ts)}")
    for h in d.halted:
        lines.append(f"HALTED {h.algo} since {_ts(h.ts)} by {h.actor}: {h.reason}")
    for r in d.rollbacks[:5]:
        lines.append(format_rollback(r))
    for name, count in sorted(d.omitted.items()):
        lines.append(f"({count} more {name} not listed: the reply must fit in one NATS message)")
    for u in reply.unavailable:
        lines.append(f"UNAVAILABLE {u.algo_id} (gateway {u.gateway or '-'}): {u.error}")
    for dep in reply.deployments:
        lines.append(format_deployment(dep))
    lines.append("")
    lines.append(format_metrics(reply.algorithms))
    drifting = [a for a in reply.algorithms if a.control is not None and not a.control.in_sync]
    for a in drifting[:20]:
        c = a.control
        assert c is not None
        since = f" since {_ts(c.drift_since)}" if c.drift_since else ""
        lines.append(f"DRIFT {a.algo_id} on {a.gateway or '-'}{since}: {c.drift}")
    if len(drifting) > 20:
        lines.append(f"DRIFT ... and {len(drifting) - 20} more (see --json)")
    off = [a for a in reply.algorithms if a.position_check and not a.position_check.in_sync]
    for a in off[:20]:
        check = a.position_check
        assert check is not None
        since = f" since {_ts(check.drift_since)}" if check.drift_since else ""
        lines.append(
            f"POSITION DRIFT {a.algo_id} on {a.gateway or '-'}{since}: {describe(check.drift)}"
        )
    if len(off) > 20:
        lines.append(f"POSITION DRIFT ... and {len(off) - 20} more (see --json)")
    if len(reply.algorithms) == 1:
        a = reply.algorithms[0]
        lines.append("")
        lines.append(
            f"{a.algo_id} {a.version} on gateway {a.gateway or '-'}: capital {a.capital:,.2f}, "
            f"realized {a.realized_pnl:,.2f}, unrealized {a.unrealized_pnl:,.2f}, "
            f"fees {a.fees:,.2f}, stage PnL {a.stage_pnl:,.2f}"
        )
        for p in a.positions:
            lines.append(
                f"  {p.symbol:<10} qty {p.qty:>12g}  avg {p.avg_cost:>12.4f}  "
                f"mark {_opt(p.mark, '.4f'):>12}  unrealized {p.unrealized_pnl:>12,.2f}"
            )
        if a.positions_omitted:
            lines.append(f"  ({a.positions_omitted} more positions not listed)")
    return "\n".join(lines)


def format_rollback(r: RollbackRecord, *, when: bool = True) -> str:
    """One line per rollback: its outcome and each step's time against the seed's target."""
    parts = []
    for step in r.steps:
        took = "-" if step.duration_ns is None else f"{step.duration_ns / 1e6:.2f} ms"
        target = r.target_ms.get(step.name)
        mark = (
            ""
            if target is None or step.duration_ns is None or step.status != "acked"
            else (" ok" if step.duration_ns / 1e6 < target else f" OVER {target:g} ms")
        )
        flag = "" if step.status == "acked" else f" {step.status.upper()}"
        parts.append(f"{step.name} {took}{mark}{flag}")
    at = f" {_ts(r.started_at)}" if when else ""
    return (
        f"rollback {r.state.upper()}{at} {','.join(r.algos)} ({r.trigger} by "
        f"{r.actor}): " + ", ".join(parts)
    )


def view_rows(reply: StatusReply) -> list[ViewRow]:
    """The live view's rows from a status reply: one per algorithm, with its deployment."""
    by_algo: dict[str, DeploymentState] = {}
    for d in reply.deployments:
        if d.phase == "aborted":  # over, and it left nothing behind worth a row
            continue
        by_algo.setdefault(d.active, d)
        if d.standby:
            by_algo.setdefault(d.standby, d)
    halted = {h.algo for h in reply.daemon.halted}
    halted.update(a.algo_id for a in reply.algorithms if a.halted)
    rows = []
    for a in reply.algorithms:
        found = by_algo.get(a.algo_id)
        allocation = None
        if found is not None:
            allocation = found.allocation if found.active == a.algo_id else 0.0
        dep = found
        rows.append(
            ViewRow(
                deployment=dep.deployment_id if dep else None,
                strategy=strategy_label(dep) if dep else None,
                phase=dep.phase if dep else None,
                stage=f"stage {dep.stage + 1}" if dep and dep.strategy != "BlueGreen" else None,
                algo=a.algo_id,
                allocation=allocation,
                equity=a.equity,
                drawdown=a.drawdown,
                sharpe=a.sharpe,
                sharpe_se=a.sharpe_se,
                win_rate=a.win_rate,
                error_rate=a.error_rate,
                latency_p99_ms=None if a.latency_p99_ns is None else a.latency_p99_ns / 1e6,
                halted=a.algo_id in halted,
            )
        )
    return rows


def status_events(reply: StatusReply) -> list[tuple[str, str]]:
    """The latest things worth seeing, as (when, what): rollbacks, halts, connectivity changes,
    refusals. ``when`` is the event's own time, or the daemon's clock for a running count."""
    d = reply.daemon
    now = _ts(d.now)
    events = [(_ts(c.ts), f"NATS {c.state} {c.server or ''}".rstrip()) for c in d.connectivity]
    events += [(_ts(h.ts), f"HALTED {h.algo} by {h.actor}: {h.reason}") for h in d.halted]
    events += [(_ts(r.started_at), format_rollback(r, when=False)) for r in reversed(d.rollbacks)]
    if d.ingest.rejected:
        refused = ", ".join(f"{k} {v}" for k, v in sorted(d.ingest.rejected.items()))
        events.append((now, f"refused input: {refused}"))
    events += [(now, f"UNAVAILABLE {u.algo_id}: {u.error}") for u in reply.unavailable]
    return events[-20:]


# `status --watch`: retry a lost daemon after this many seconds, doubling up to the most
WATCH_RETRY_MIN: Final = 0.5
WATCH_RETRY_MAX: Final = 5.0


async def watch(
    servers: DaemonLink, prefix: str, view: LiveView, *, interval: float, count: int | None
) -> None:
    """Refresh the live view from the daemon's status every ``interval`` seconds. When the daemon
    or NATS cannot be reached the view says so once ("disconnected, retrying"), keeps its last
    rows, retries with a growing pause, and says when it is back."""
    n = 0
    seen: set[tuple[str, str]] = set()
    lost: str | None = None
    retry = WATCH_RETRY_MIN
    view.start()
    try:
        while count is None or n < count:
            try:
                reply = await fetch_status(servers, prefix, None, timeout=max(interval, 1.0))
            except (NoDaemonError, StatusError, OSError) as e:
                if lost is None:
                    lost = str(e)
                    view.event(f"DISCONNECTED from the daemon: {lost}; retrying", _ts(now_ns()))
                n += 1
                await asyncio.sleep(retry)
                retry = min(retry * 2, WATCH_RETRY_MAX)
                continue
            if lost is not None:
                view.event("reconnected to the daemon", _ts(reply.daemon.now or now_ns()))
                lost, retry = None, WATCH_RETRY_MIN
            for when, text in status_events(reply):
                if (when, text) not in seen:
                    seen.add((when, text))
                    view.event(text, when)
            view.update(view_rows(reply), [], _ts(reply.daemon.now))
            n += 1
            if count is None or n < count:
                await asyncio.sleep(interval)
    finally:
        view.stop()
