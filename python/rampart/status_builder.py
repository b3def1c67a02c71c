"""What ``rampart status`` shows, built from the daemon's live parts at the moment of the request:
the daemon itself (connection, ingest counters, halt latches, recent rollbacks, gateways judged by
their heartbeat's age now), every algorithm's metrics with its intent against its gateway's
actual state, and every deployment as stored. One algorithm's unreadable state never fails the
status of the others."""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

import msgspec
from nats.aio.client import Client

from rampart import __version__
from rampart._core import Engine
from rampart.checkpoints import Checkpointer
from rampart.config import DaemonConfig, ns
from rampart.effects import DeploymentEffects
from rampart.guard import Guard
from rampart.loop_lag import LoopLag
from rampart.other_ramparts import OtherRamparts
from rampart.paging import build_page, build_page_async
from rampart.position_watch import PositionWatch
from rampart.protocol import (
    AlgoStatus,
    AlgoUnavailable,
    ConnectivityEvent,
    DaemonStatus,
    GatewayStatus,
    HaStatus,
    IngestStats,
    StatusReply,
    WireStatus,
)
from rampart.reconciler import Reconciler
from rampart.runner import DeploymentRunner, algorithms_of
from rampart.sharpe import sharpe_standard_error
from rampart.signing import SigningKey
from rampart.store import HaltLatch
from rampart.strategies import DeploymentState
from rampart.throttle import ERROR_CHARS, REPEAT_EVERY, Throttle

log = logging.getLogger("rampart.status")


class StatusSource(Protocol):
    """The daemon's parts status reads (all live: read at each request)."""

    config: DaemonConfig
    engine: Engine
    gateway_of: dict[str, str]
    stats: IngestStats
    slow_consumer_drops: int
    gateways: dict[str, GatewayStatus]
    connectivity: deque[ConnectivityEvent]
    nc: Client | None
    guard: Guard | None
    checkpointer: Checkpointer | None
    reconciler: Reconciler | None
    position_watch: PositionWatch | None
    signing_key: SigningKey | None
    runner: DeploymentRunner
    effects: DeploymentEffects | None
    store_error: str | None
    started_at: int
    wall_clock: Callable[[], int]
    loop_lag: LoopLag
    others: OtherRamparts | None

    def ha_status(self) -> HaStatus | None: ...
    def wire_status(self) -> WireStatus | None: ...


class StatusBuilder:
    def __init__(self, source: StatusSource) -> None:
        self.d = source

    @property
    def checkpoint_at(self) -> int | None:
        """When every algorithm's core state was last stored (wall clock, ns)."""
        cp = self.d.checkpointer
        return cp.checkpoint_at if cp is not None else None

    def gateway_statuses(self) -> list[GatewayStatus]:
        """Each gateway as last heard, judged now: its heartbeat's age and whether it is alive."""
        d = self.d
        now = d.wall_clock()
        timeout = d.config.triggers.gateway_heartbeat_timeout
        out = []
        for g in sorted(d.gateways.values(), key=lambda g: g.gateway):
            age = max(now - g.received_at, 0)
            alive = timeout is None or age <= ns(timeout)
            out.append(msgspec.structs.replace(g, heartbeat_age_ms=age // 1_000_000, alive=alive))
        return out

    def daemon_status(self, algo_id: str | None = None) -> DaemonStatus:
        """The daemon's own status; ``algo_id``: its halt latch only (one algorithm's view)."""
        d = self.d
        nc = d.nc
        server = nc.connected_url.netloc if nc is not None and nc.connected_url else None
        stats = msgspec.structs.replace(
            d.stats,
            rejected={**d.stats.rejected, "slow_consumer": d.slow_consumer_drops}
            if d.slow_consumer_drops
            else dict(d.stats.rejected),
        )
        guard = d.guard
        halted: list[HaltLatch] = []
        if guard is not None:
            if algo_id is None:
                halted = sorted(guard.halted.values(), key=lambda h: h.algo)
            elif algo_id in guard.halted:
                halted = [guard.halted[algo_id]]
        return DaemonStatus(
            halted=halted,
            checkpoint_at=self.checkpoint_at,
            rollbacks=list(guard.recent) if guard else [],
            store_error=d.store_error,
            name=d.config.name,
            version=__version__,
            started_at=d.started_at,
            connected=bool(nc is not None and nc.is_connected),
            server=server,
            now=d.engine.now,
            ingest=stats,
            gateways=self.gateway_statuses(),
            connectivity=list(d.connectivity),
            public_key=d.signing_key.public_key if d.signing_key is not None else None,
            loop_lag=d.loop_lag.stats(),
            wire=d.wire_status(),
            ha=d.ha_status(),
            others=d.others.status() if d.others is not None else [],
        )

    def algo_status(self, algo_id: str) -> AlgoStatus:
        """One algorithm's metrics, intent and actual (raises if the core cannot give them)."""
        d = self.d
        snap = d.engine.snapshot(algo_id).to_dict()
        gateway = d.gateway_of.get(algo_id)
        snap["gateway"] = gateway
        snap["halted"] = d.guard is not None and algo_id in d.guard.halted
        status = msgspec.convert(snap, AlgoStatus)
        ppy = self._periods_per_year.get(algo_id)
        if ppy is not None:
            se = sharpe_standard_error(status.sharpe, status.returns_count, ppy)
            status = msgspec.structs.replace(status, sharpe_se=se)
        if d.reconciler is not None and gateway is not None:
            control = d.reconciler.control_status(algo_id, gateway)
            status = msgspec.structs.replace(status, control=control)
        if d.position_watch is not None:
            check = d.position_watch.status(algo_id)
            if check is not None:
                status = msgspec.structs.replace(status, position_check=check)
        return status

    @functools.cached_property
    def _periods_per_year(self) -> dict[str, float]:
        """Each configured algorithm's annualization (for its Sharpe's standard error)."""
        return {a.id: a.to_core().periods_per_year for a in self.d.config.algorithms}

    @functools.cached_property
    def _failures(self) -> Throttle:
        return Throttle(REPEAT_EVERY)

    def entry(self, algo_id: str) -> AlgoStatus | AlgoUnavailable:
        """One algorithm's status, or why it cannot be read."""
        try:
            return self.algo_status(algo_id)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"[:ERROR_CHARS]
            if self._failures.ready(algo_id):
                log.error("status of %s unavailable: %s", algo_id, error)
            return AlgoUnavailable(
                algo_id=algo_id, gateway=self.d.gateway_of.get(algo_id), error=error
            )

    def deployments_by_algo(self) -> dict[str, list[DeploymentState]]:
        """Each algorithm's deployments, as stored: a decision the runner has made but the
        store does not hold yet is not shown (a crash would lose it)."""
        effects = self.d.effects
        stored = effects.stored_states if effects is not None else {}
        by_algo: dict[str, list[DeploymentState]] = {}
        for dep_id, r in self.d.runner.deployments.items():
            state = stored.get(dep_id)
            if state is None:
                continue
            for a in algorithms_of(r.document):
                by_algo.setdefault(a, []).append(state)
        return by_algo

    def _ids(self, algo_id: str | None) -> list[str]:
        return [algo_id] if algo_id is not None else self.d.engine.algorithms()

    def status(self, algo_id: str | None = None) -> StatusReply:
        """The whole status in one Struct, for in-process readers (unbounded: the status
        service sends it in pages, see ``page``)."""
        ids = self._ids(algo_id)
        entries = [self.entry(a) for a in ids]
        by_algo = self.deployments_by_algo()
        deployments = {d.deployment_id: d for a in ids for d in by_algo.get(a, ())}
        return StatusReply(
            daemon=self.daemon_status(algo_id),
            algorithms=[e for e in entries if isinstance(e, AlgoStatus)],
            unavailable=[e for e in entries if isinstance(e, AlgoUnavailable)],
            deployments=[deployments[k] for k in sorted(deployments)],
            total=len(ids),
        )

    async def page_async(
        self, algo_id: str | None = None, *, offset: int = 0, limit: int | None = None
    ) -> bytes:
        """``page`` as the status service builds it: the event loop runs between algorithms
        (``paging.build_page_async``), so a status request never holds a halt up."""
        nc = self.d.nc
        return await build_page_async(
            self.daemon_status(algo_id),
            self._ids(algo_id),
            self.entry,
            self.deployments_by_algo(),
            max_bytes=nc.max_payload if nc is not None else 1024 * 1024,
            offset=offset,
            limit=limit,
        )

    def page(
        self,
        algo_id: str | None = None,
        *,
        offset: int = 0,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> bytes:
        """The encoded status reply as the service sends it: a page from ``offset`` that fits
        in ``max_bytes`` (default: the server's max payload). Raises StatusTooLargeError."""
        nc = self.d.nc
        if max_bytes is None:
            max_bytes = nc.max_payload if nc is not None else 1024 * 1024
        return build_page(
            self.daemon_status(algo_id),
            self._ids(algo_id),
            self.entry,
            self.deployments_by_algo(),
            max_bytes=max_bytes,
            offset=offset,
            limit=limit,
        )
