"""The Rampart daemon: the only place with I/O.

It connects to NATS (or starts an embedded nats-server), feeds market data, fills and order events
straight from the message bytes into the Rust core, dead-letters bad input with its reason, tracks
gateway heartbeats, publishes its own heartbeat and every breach, and serves status on the NATS
services API. Everything it starts, it stops in ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import SlowConsumerError
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from rampart import __version__, failpoints
from rampart._core import Breach, InvalidEventError
from rampart.checkpoints import Checkpointer, put_all
from rampart.config import DaemonConfig, NatsConfig, ns
from rampart.deployment import Deployment, DeploymentError, decode_deployment
from rampart.embedded import EmbeddedNatsServer
from rampart.guard import Guard
from rampart.paging import StatusTooLargeError, build_page
from rampart.protocol import (
    HEARTBEAT_VERSION,
    AlertSeverity,
    AlgoStatus,
    AlgoUnavailable,
    BreachEvent,
    CommandKind,
    ConnectivityEvent,
    ConnectivityState,
    ControlReply,
    ControlRequest,
    DaemonStatus,
    DeadLetter,
    ErrorReply,
    GatewayStatus,
    IngestStats,
    Intent,
    SidecarHeartbeat,
    StatusReply,
    StatusRequest,
    control_request_decoder,
    encoder,
    heartbeat_frame_decoder,
    state_decoder,
    status_request_decoder,
)
from rampart.reconcile import Op, split_actions
from rampart.reconciler import INTENT_KEY, Reconciler, reconcile_settings
from rampart.rollback import StepOutcome
from rampart.runner import DeploymentRunner, Outcome, algorithms_of
from rampart.store import HaltLatch, Store, StoreError
from rampart.strategies import TERMINAL, Action, Decision, DeploymentState, Verb
from rampart.strategies.base import (
    Activate,
    Complete,
    Decommission,
    RequestApproval,
    RollbackAction,
    SetAllocation,
    Standby,
)
from rampart.throttle import ERROR_CHARS, REPEAT_EVERY, Throttle

log = logging.getLogger("rampart.daemon")

URL_FILE: Final = "nats.url"
DEPLOYMENT_KEY: Final = "deployment/"
STORE_FILE: Final = "rampart.db"
# Refusals that look like a broken or hostile sender, not just noise: each raises an alert (at
# most one per reason a minute), beside the dead letter.
ALERTED_REFUSALS: Final[dict[str, AlertSeverity]] = {
    "future": "warning",
    "bad_timestamp": "warning",
    "price_band": "warning",
    "overflow": "warning",
    "wrong_subject": "critical",
    "wrong_gateway": "critical",
    "unknown_gateway": "critical",
}
REFUSAL_ALERT_INTERVAL: Final = 60.0
# Log the first few rejections of each reason, then one in this many.
LOG_EVERY: Final = 1000
LOG_FIRST: Final = 10

BreachListener = Callable[[list[Breach]], Awaitable[None] | None]
ConnectivityListener = Callable[[ConnectivityEvent], Awaitable[None] | None]


class DaemonError(RuntimeError):
    """The daemon cannot start (NATS unreachable, embedded server failed)."""


def _seconds(cfg: NatsConfig) -> dict[str, float]:
    return {
        "connect_timeout": cfg.connect_timeout.total_seconds(),
        "ping_interval": cfg.ping_interval.total_seconds(),
        "reconnect_time_wait": cfg.reconnect_time_wait.total_seconds(),
    }


def _tls_context(cfg: NatsConfig) -> ssl.SSLContext | None:
    if cfg.tls is None:
        return None
    ctx = ssl.create_default_context(cafile=cfg.tls.ca_file)
    ctx.check_hostname = cfg.tls.verify_hostname
    if cfg.tls.cert_file:
        ctx.load_cert_chain(cfg.tls.cert_file, cfg.tls.key_file)
    return ctx


def connect_options(cfg: NatsConfig, servers: list[str]) -> dict[str, Any]:
    """nats-py connect() options for a risk process.

    A dead link is noticed within ``ping_interval x (max_outstanding_pings + 1)``; reconnects are
    retried forever; ``pending_size=0`` disables the reconnect buffer, so nothing published while
    disconnected is replayed later (a stale command must never arrive late).
    """
    opts: dict[str, Any] = {
        "servers": servers,
        "name": cfg.name,
        "max_outstanding_pings": cfg.max_outstanding_pings,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "pending_size": 0,
        **_seconds(cfg),
    }
    if cfg.user is not None:
        opts["user"] = cfg.user
        opts["password"] = cfg.password
    if cfg.token is not None:
        opts["token"] = cfg.token
    if cfg.nkeys_seed is not None:
        opts["nkeys_seed"] = cfg.nkeys_seed
    if cfg.credentials is not None:
        opts["user_credentials"] = cfg.credentials
    tls = _tls_context(cfg)
    if tls is not None:
        opts["tls"] = tls
    return opts


class Daemon:
    """One Rampart daemon. ``await start()`` then ``await close()``, or ``run()`` until stopped."""

    def __init__(
        self,
        config: DaemonConfig,
        *,
        servers: list[str] | None = None,
        wall_clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.config = config
        self.subjects = config.subjects
        self.wall_clock = wall_clock
        self._servers = list(servers) if servers else list(config.nats.servers)
        # Every algorithm registered, routed to its gateway, with the configured input bounds.
        self.engine = config.engine()
        self.gateway_of: dict[str, str] = {a.id: a.gateway for a in config.algorithms}
        self.stats = IngestStats()
        self.slow_consumer_drops = 0
        self.gateways: dict[str, GatewayStatus] = {}
        # each gateway's last reported state, raw (HeartbeatFrame)
        self._last_state: dict[str, msgspec.Raw] = {}
        self.connectivity: deque[ConnectivityEvent] = deque(maxlen=50)
        self.breach_listeners: list[BreachListener] = []
        self.connectivity_listeners: list[ConnectivityListener] = []
        self.nc: Client | None = None
        self.embedded: EmbeddedNatsServer | None = None
        self.store: Store | None = None
        self.store_error: str | None = None
        self.guard: Guard | None = None
        self.started_at = 0
        self._subs: list[Subscription] = []
        self._service: Service | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._closing = False
        self._max_payload = config.ingest.max_payload_bytes
        self._ingest = self.engine.ingest_msg
        self.capital_of = {a.id: a.capital for a in config.algorithms}
        self.runner = DeploymentRunner(
            self.engine,
            decision_interval_ns=ns(config.decision_interval),
            healthy=self._healthy,
            capital_of=self.capital_of.__getitem__,
            converged=self._converged,
        )
        self._outcomes: asyncio.Queue[list[Outcome]] = asyncio.Queue()
        self._effects_busy = False
        self.checkpointer: Checkpointer | None = None
        self.deployment_error: str | None = None
        self._refusal_alerts = Throttle(REFUSAL_ALERT_INTERVAL)
        self.reconciler: Reconciler | None = None
        # Each deployment's state as last stored: what status shows.
        self.stored_states: dict[str, DeploymentState] = {}

    # ---- life cycle ---------------------------------------------------------------------

    @property
    def url_file(self) -> Path:
        return Path(self.config.data_dir) / URL_FILE

    @property
    def servers(self) -> list[str]:
        return list(self._servers)

    async def start(self) -> None:
        self.started_at = self.wall_clock()
        Path(self.config.data_dir).mkdir(parents=True, exist_ok=True)
        self.store = await asyncio.to_thread(self._open_store)
        if not self._servers:
            await self._start_embedded()
        try:
            self.nc = await nats.connect(
                **connect_options(self.config.nats, self._servers),
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                closed_cb=self._on_closed,
            )
        except Exception as e:
            await self._stop_embedded()
            raise DaemonError(
                f"cannot connect to NATS at {', '.join(self._servers)}: {e or type(e).__name__}"
            ) from e
        self.guard = Guard(
            self.config,
            self.engine,
            self.store,
            self.nc,
            gateways=lambda: self.gateways,
            wall_clock=self.wall_clock,
        )
        self.breach_listeners.append(self.guard.on_breaches)
        self.guard.rollback_listeners.append(self._on_rollback)
        self.connectivity_listeners.append(self.guard.on_connectivity)
        guard = self.guard
        self.reconciler = Reconciler(
            guard.executor,
            {gw: guard.algos_of_gateway(gw) for gw in sorted(self.configured_gateways)},
            halted=lambda: guard.halted.keys(),
            busy=lambda: guard.in_flight | guard.releasing,
            on_adopt=guard.adopt_halts,
            on_stuck=self._on_stuck,
            settings=reconcile_settings(self.config),
            wall_clock=self.wall_clock,
        )
        guard.reconciler = self.reconciler
        self.checkpointer = Checkpointer(
            self.engine,
            self.store,
            self.config,
            guard=lambda: self.guard,
            spawn=self._spawn,
            wall_clock=self.wall_clock,
        )
        untrusted_clocks = self.checkpointer.restore()
        self.deployment_error = await asyncio.to_thread(self._load_deployments)
        intent_error = self._load_intents()
        # Fail closed: without our state we cannot know what was halted, so halt everything.
        await self.guard.start(
            halt_all_because=self.store_error or self.deployment_error or intent_error
        )
        await self.checkpointer.report_untrusted(untrusted_clocks)
        self._spawn(self._outcome_worker(), "deployment-effects")
        self._spawn(self.checkpointer.loop(), "checkpoints")
        await self._seed_intents()
        self.reconciler.start()
        await self._subscribe()
        await self._start_status_service()
        if self.config.metrics_port is not None:
            from rampart.prom import serve_metrics

            serve_metrics(self, self.config.metrics_port, self.config.metrics_host)
        self._spawn(self._heartbeat_loop(), "sidecar-heartbeat")
        await self.nc.flush()
        log.info(
            "rampart %s up: %d algorithms, NATS %s, prefix %r",
            __version__,
            len(self.engine),
            ", ".join(self._servers),
            self.subjects.prefix,
        )

    def _open_store(self) -> Store:
        path = Path(self.config.data_dir) / STORE_FILE
        try:
            return Store(path)
        except StoreError as e:
            self.store_error = str(e)
            log.critical("%s; every algorithm starts HALTED until it is fixed", e)
            fallback = Path(tempfile.mkdtemp(prefix="rampart-unsafe-")) / STORE_FILE
            return Store(fallback)

    async def _start_embedded(self) -> None:
        emb = self.config.embedded
        data_dir = Path(self.config.data_dir)
        self.embedded = EmbeddedNatsServer(
            host=emb.host, port=emb.port, jetstream=emb.jetstream, store_dir=data_dir / "nats"
        )
        try:
            url = await asyncio.to_thread(self.embedded.start)
        except Exception as e:
            self.embedded = None
            raise DaemonError(f"cannot start the embedded nats-server: {e}") from e
        self._servers = [url]
        self.url_file.write_text(url + "\n")
        log.info("embedded nats-server on %s (JetStream: %s)", url, emb.jetstream)

    async def _stop_embedded(self) -> None:
        if self.embedded is not None:
            with contextlib.suppress(OSError):
                self.url_file.unlink()
            await asyncio.to_thread(self.embedded.stop)
            self.embedded = None

    async def _subscribe(self) -> None:
        assert self.nc is not None
        s = self.subjects
        limit = self.config.ingest.pending_msgs_limit
        for subject in (s.market_all, s.fills_all, s.orders_all):
            sub = await self.nc.subscribe(
                subject, cb=self._on_event, pending_msgs_limit=limit, pending_bytes_limit=-1
            )
            self._subs.append(sub)
        self._subs.append(await self.nc.subscribe(s.heartbeat_all, cb=self._on_heartbeat))

    def request_stop(self) -> None:
        """Ask ``run()`` to shut down (safe from a signal handler)."""
        self._stop.set()

    async def run(self) -> None:
        """Start, serve until ``request_stop()``, then shut down cleanly."""
        await self.start()
        try:
            await self._stop.wait()
        finally:
            await self.close()

    async def close(self) -> None:
        """Drain subscriptions, flush, stop tasks and the service, stop an embedded server."""
        self._closing = True
        if self.reconciler is not None:
            await self.reconciler.close()
        if self.guard is not None:
            await self.guard.close()
        if self._service is not None:
            with contextlib.suppress(Exception):
                await self._service.stop()
            self._service = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.drain()  # processes what is buffered, flushes, closes
            except Exception as e:
                log.warning("NATS drain failed (%s); closing", e)
                with contextlib.suppress(Exception):
                    await self.nc.close()
        self._subs.clear()
        await self._stop_embedded()
        if self.store is not None:
            self.store.close()
        log.info(
            "rampart stopped: %d events ingested, %d rejected",
            self.stats.ingested,
            sum(self.stats.rejected.values()),
        )

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    # ---- ingest (hot path) ----------------------------------------------------------------

    async def _on_event(self, msg: Msg) -> None:
        data = msg.data
        if len(data) > self._max_payload:
            await self._reject(
                msg,
                "oversize",
                f"payload of {len(data)} bytes exceeds ingest.max_payload_bytes "
                f"= {self._max_payload}",
            )
            return
        try:
            # Identity from the subject; event time bounded by this host's clock.
            breaches = self._ingest(msg.subject, data, self.wall_clock())
        except InvalidEventError as e:
            await self._reject(msg, e.reason, str(e))
            return
        self.stats.ingested += 1
        if breaches is not None:
            await self._on_breaches(breaches)
        runner = self.runner
        if runner.deployments:
            now = self.engine.now
            if breaches is not None and now is not None:
                self._queue(runner.on_breaches(breaches, now))
            if now is not None and now >= runner.next_decision_at:
                self._queue(runner.tick(now))

    def _on_rollback(self, algos: tuple[str, ...], trigger: str, actor: str) -> None:
        if self.runner.deployments:
            now = self.engine.now if self.engine.now is not None else self.wall_clock()
            self._queue(self.runner.on_rollback(algos, f"{actor}:{trigger}", now))

    def _queue(self, outcomes: list[Outcome]) -> None:
        if outcomes:
            self._outcomes.put_nowait(outcomes)

    async def _reject(self, msg: Msg, reason: str, error: str) -> None:
        rejected = self.stats.rejected
        count = rejected.get(reason, 0) + 1
        rejected[reason] = count
        if count <= LOG_FIRST or count % LOG_EVERY == 0:
            log.warning("refused message on %s (%s, #%d): %s", msg.subject, reason, count, error)
        severity = ALERTED_REFUSALS.get(reason)
        if severity is not None and self.guard is not None and self._refusal_alerts.ready(reason):
            title = f"refused {reason} message on {msg.subject[:200]}"
            detail = f"{error[:1000]} ({count} refused as {reason} since start)"
            self._spawn(self.guard.alert(severity, title, detail, algos=[]), "refusal-alert")
        if not self.config.ingest.dead_letter or self.nc is None:
            return
        limit = self.config.ingest.dead_letter_payload_limit
        letter = DeadLetter(
            reason=reason,
            error=error,
            subject=msg.subject,
            payload=msg.data[:limit].decode("utf-8", errors="replace"),
            payload_size=len(msg.data),
            received_at=self.wall_clock(),
        )
        try:
            await self.nc.publish(self.subjects.dead_letter(reason), encoder.encode(letter))
            self.stats.dead_lettered += 1
        except Exception as e:
            self.stats.dead_letter_failures += 1
            log.error("could not dead-letter a %s message: %s", reason, e)

    async def _on_breaches(self, breaches: list[Breach]) -> None:
        self.stats.breaches += len(breaches)
        # the rollback first: logging and publishing must not delay the halt
        for listener in self.breach_listeners:
            result = listener(breaches)
            if result is not None:
                await result
        for b in breaches:
            log.warning(
                "BREACH %s %s: value %.6g, limit %.6g at %d",
                b.algo_id,
                b.kind,
                b.value,
                b.threshold,
                b.ts,
            )
            if self.nc is not None:
                event = BreachEvent(
                    algo=b.algo_id, kind=b.kind, value=b.value, threshold=b.threshold, ts=b.ts
                )
                try:
                    await self.nc.publish(self.subjects.breach(b.algo_id), encoder.encode(event))
                except Exception as e:
                    log.error("could not publish breach of %s: %s", b.algo_id, e)

    @functools.cached_property
    def configured_gateways(self) -> frozenset[str]:
        """The gateways of the configured algorithms: the only ones heartbeats are taken from,
        so ``gateways`` never holds more than these."""
        return frozenset(a.gateway for a in self.config.algorithms)

    async def _on_heartbeat(self, msg: Msg) -> None:
        """A gateway's heartbeat on ``<p>.hb.<gateway>``. Refused, in this order: ``oversize``
        (before decoding), ``unknown_gateway`` (the subject names no configured gateway),
        ``decode``, ``wrong_gateway`` (the body names another gateway than the subject)."""
        data = msg.data
        limit = self.config.ingest.max_heartbeat_bytes
        if len(data) > limit:
            await self._reject(
                msg,
                "oversize",
                f"heartbeat of {len(data)} bytes exceeds ingest.max_heartbeat_bytes = {limit}",
            )
            return
        gateway = msg.subject.rpartition(".")[2]
        if gateway not in self.configured_gateways:
            await self._reject(
                msg,
                "unknown_gateway",
                f"heartbeat from gateway {gateway!r}, which runs no configured algorithm",
            )
            return
        try:
            hb = heartbeat_frame_decoder.decode(data)
        except msgspec.DecodeError as e:  # ValidationError is a DecodeError
            await self._reject(msg, "decode", f"not a gateway heartbeat: {e}")
            return
        if hb.gateway != gateway:
            await self._reject(
                msg,
                "wrong_gateway",
                f"heartbeat on {msg.subject} names gateway {hb.gateway!r}, not {gateway!r}",
            )
            return
        if hb.v < HEARTBEAT_VERSION:
            await self._reject(
                msg,
                "unsupported_version",
                f"gateway {gateway} sends heartbeat version {hb.v}; Rampart needs version "
                f"{HEARTBEAT_VERSION} (each algorithm's actual state, docs/protocol.md): update "
                "its gateway SDK",
            )
            return
        if self.reconciler is not None:
            # the state is decoded only when it changed (see HeartbeatFrame)
            state = None
            if hb.state != self._last_state.get(gateway):
                try:
                    state = state_decoder.decode(hb.state)
                except msgspec.DecodeError as e:
                    await self._reject(msg, "decode", f"heartbeat state: {e}")
                    return
                self._last_state[gateway] = hb.state
            self.reconciler.on_report(gateway, hb.ts, state)
        self.stats.heartbeats += 1
        first = hb.gateway not in self.gateways
        self.gateways[hb.gateway] = GatewayStatus(
            gateway=hb.gateway,
            last_heartbeat_ts=hb.ts,
            received_at=self.wall_clock(),
            health=hb.health,
            algos=hb.algos,
        )
        if first and self.guard is not None:
            self.guard.on_gateway_seen(hb.gateway)

    # ---- connectivity ---------------------------------------------------------------------

    async def _connectivity(self, state: ConnectivityState) -> None:
        server = None
        if self.nc is not None and self.nc.connected_url is not None:
            server = self.nc.connected_url.netloc
        event = ConnectivityEvent(state=state, ts=self.wall_clock(), server=server)
        self.connectivity.append(event)
        level = logging.INFO if self._closing else logging.WARNING
        log.log(level, "NATS %s (%s)", state, server or "-")
        for listener in self.connectivity_listeners:
            result = listener(event)
            if result is not None:
                await result
        if state == "reconnected" and self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.publish(self.subjects.connectivity(), encoder.encode(event))

    async def _on_disconnected(self) -> None:
        await self._connectivity("disconnected")

    async def _on_reconnected(self) -> None:
        await self._connectivity("reconnected")

    async def _on_closed(self) -> None:
        await self._connectivity("closed")

    async def _on_error(self, e: Exception) -> None:
        if isinstance(e, SlowConsumerError):
            self.slow_consumer_drops += 1
            if self.slow_consumer_drops <= LOG_FIRST or self.slow_consumer_drops % LOG_EVERY == 0:
                log.error("slow consumer on %s: NATS dropped a message", e.subject)
            return
        log.error("NATS error: %s", e)

    # ---- own heartbeat ----------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_interval.total_seconds()
        subject = self.subjects.sidecar_heartbeat
        while True:
            if self.nc is not None and self.nc.is_connected:
                hb = SidecarHeartbeat(
                    daemon=self.config.name,
                    ts=self.wall_clock(),
                    interval_ms=int(interval * 1000),
                )
                with contextlib.suppress(Exception):
                    await self.nc.publish(subject, encoder.encode(hb))
            await asyncio.sleep(interval)

    # ---- status -------------------------------------------------------------------------------

    @property
    def checkpoint_at(self) -> int | None:
        """When every algorithm's core state was last stored (wall clock, ns)."""
        return self.checkpointer.checkpoint_at if self.checkpointer is not None else None

    def _gateway_statuses(self) -> list[GatewayStatus]:
        """Each gateway as last heard, judged now: its heartbeat's age and whether it is alive."""
        now = self.wall_clock()
        timeout = self.config.triggers.gateway_heartbeat_timeout
        out = []
        for g in sorted(self.gateways.values(), key=lambda g: g.gateway):
            age = max(now - g.received_at, 0)
            alive = timeout is None or age <= ns(timeout)
            out.append(msgspec.structs.replace(g, heartbeat_age_ms=age // 1_000_000, alive=alive))
        return out

    def daemon_status(self, algo_id: str | None = None) -> DaemonStatus:
        """The daemon's own status; ``algo_id``: its halt latch only (one algorithm's view)."""
        nc = self.nc
        server = nc.connected_url.netloc if nc is not None and nc.connected_url else None
        stats = msgspec.structs.replace(
            self.stats,
            rejected={**self.stats.rejected, "slow_consumer": self.slow_consumer_drops}
            if self.slow_consumer_drops
            else dict(self.stats.rejected),
        )
        guard = self.guard
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
            store_error=self.store_error,
            name=self.config.name,
            version=__version__,
            started_at=self.started_at,
            connected=bool(nc is not None and nc.is_connected),
            server=server,
            now=self.engine.now,
            ingest=stats,
            gateways=self._gateway_statuses(),
            connectivity=list(self.connectivity),
        )

    def algo_status(self, algo_id: str) -> AlgoStatus:
        """One algorithm's metrics (raises if the core cannot give them)."""
        snap = self.engine.snapshot(algo_id).to_dict()
        gateway = self.gateway_of.get(algo_id)
        snap["gateway"] = gateway
        snap["halted"] = self.guard is not None and algo_id in self.guard.halted
        status = msgspec.convert(snap, AlgoStatus)
        if self.reconciler is not None and gateway is not None:
            control = self.reconciler.control_status(algo_id, gateway)
            status = msgspec.structs.replace(status, control=control)
        return status

    @functools.cached_property
    def _status_failures(self) -> Throttle:
        return Throttle(REPEAT_EVERY)

    def _status_entry(self, algo_id: str) -> AlgoStatus | AlgoUnavailable:
        """One algorithm's metrics, or why they cannot be read: one algorithm's bad state never
        fails the status of the others."""
        try:
            return self.algo_status(algo_id)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"[:ERROR_CHARS]
            if self._status_failures.ready(algo_id):
                log.error("status of %s unavailable: %s", algo_id, error)
            return AlgoUnavailable(
                algo_id=algo_id, gateway=self.gateway_of.get(algo_id), error=error
            )

    def _deployments_by_algo(self) -> dict[str, list[DeploymentState]]:
        """Each algorithm's deployments, as stored: a decision the runner has made but the
        store does not hold yet is not shown (a crash would lose it)."""
        by_algo: dict[str, list[DeploymentState]] = {}
        for dep_id, r in self.runner.deployments.items():
            state = self.stored_states.get(dep_id)
            if state is None:
                continue
            for a in algorithms_of(r.document):
                by_algo.setdefault(a, []).append(state)
        return by_algo

    def status(self, algo_id: str | None = None) -> StatusReply:
        """The whole status in one Struct, for in-process readers (unbounded: the status
        service sends it in pages, see ``status_page``)."""
        ids = [algo_id] if algo_id is not None else self.engine.algorithms()
        entries = [self._status_entry(a) for a in ids]
        by_algo = self._deployments_by_algo()
        deployments = {d.deployment_id: d for a in ids for d in by_algo.get(a, ())}
        return StatusReply(
            daemon=self.daemon_status(algo_id),
            algorithms=[e for e in entries if isinstance(e, AlgoStatus)],
            unavailable=[e for e in entries if isinstance(e, AlgoUnavailable)],
            deployments=[deployments[k] for k in sorted(deployments)],
            total=len(ids),
        )

    def status_page(
        self,
        algo_id: str | None = None,
        *,
        offset: int = 0,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> bytes:
        """The encoded status reply as the service sends it: a page from ``offset`` that fits
        in ``max_bytes`` (default: the server's max payload). Raises StatusTooLargeError."""
        if max_bytes is None:
            max_bytes = self.nc.max_payload if self.nc is not None else 1024 * 1024
        ids = [algo_id] if algo_id is not None else self.engine.algorithms()
        return build_page(
            self.daemon_status(algo_id),
            ids,
            self._status_entry,
            self._deployments_by_algo(),
            max_bytes=max_bytes,
            offset=offset,
            limit=limit,
        )

    async def _start_status_service(self) -> None:
        assert self.nc is not None
        self._service = await add_service(
            self.nc,
            name=self.config.name,
            version=__version__,
            description="Rampart risk sidecar: algorithm metrics and deployment status",
            metadata={"prefix": self.subjects.prefix},
        )
        await self._service.add_endpoint(
            name="algorithms",
            subject=self.subjects.status("algorithms"),
            handler=self._status_all,
        )
        await self._service.add_endpoint(
            name="algorithm",
            subject=self.subjects.status("algorithm"),
            handler=self._status_one,
        )
        await self._service.add_endpoint(
            name="rollback", subject=self.subjects.control("rollback"), handler=self._ctl_rollback
        )
        await self._service.add_endpoint(
            name="deploy", subject=self.subjects.control("deploy"), handler=self._ctl_deploy
        )
        verbs: tuple[Verb, ...] = ("approve", "promote", "pause", "resume", "abort", "halt")
        for verb in verbs:
            await self._service.add_endpoint(
                name=verb, subject=self.subjects.control(verb), handler=self._ctl_verb(verb)
            )
        await self._service.add_endpoint(
            name="release", subject=self.subjects.control("release"), handler=self._ctl_release
        )

    async def _status_all(self, req: Request) -> None:
        try:
            page = status_request_decoder.decode(req.data) if req.data.strip() else StatusRequest()
        except msgspec.DecodeError as e:
            error = (
                f"bad status request: {e}; send an empty body or "
                '{"offset": N, "limit": M} (both optional)'
            )
            await req.respond_error("400", error, data=encoder.encode(ErrorReply(error=error)))
            return
        await self._respond_status(req, None, page.offset, page.limit)

    async def _status_one(self, req: Request) -> None:
        algo_id = req.data.decode("utf-8", errors="replace").strip()
        if algo_id not in self.engine:
            known = self.engine.algorithms()
            listed = ", ".join(known[:20]) + (f" and {len(known) - 20} more" if known[20:] else "")
            error = f"unknown algorithm {algo_id[:200]!r}; known: {listed or 'none'}"
            await req.respond_error("404", error, data=encoder.encode(ErrorReply(error=error)))
            return
        await self._respond_status(req, algo_id, 0, None)

    async def _respond_status(
        self, req: Request, algo_id: str | None, offset: int, limit: int | None
    ) -> None:
        try:
            data = self.status_page(algo_id, offset=offset, limit=limit)
        except StatusTooLargeError as e:
            log.error("status request failed: %s", e)
            await req.respond_error("500", str(e), data=encoder.encode(ErrorReply(error=str(e))))
            return
        await req.respond(data)

    # ---- operator control -----------------------------------------------------------------

    async def _control(
        self, req: Request, act: Callable[[ControlRequest, Guard], Awaitable[dict[str, Any]]]
    ) -> None:
        try:
            ctl = control_request_decoder.decode(req.data)
            if not ctl.operator.strip():
                raise ValueError("`operator` must name who is acting")
            if self.guard is None:
                raise RuntimeError("the daemon is not ready")
            state = await act(ctl, self.guard)
        except (msgspec.DecodeError, ValueError, KeyError, RuntimeError, DeploymentError) as e:
            error = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
            await req.respond(encoder.encode(ControlReply(ok=False, error=error)))
            return
        await req.respond(encoder.encode(ControlReply(ok=True, state=state)))

    async def _ctl_rollback(self, req: Request) -> None:
        async def act(ctl: ControlRequest, guard: Guard) -> dict[str, Any]:
            scope, algos = guard.resolve(ctl.target)
            reason = ctl.reason or "manual intervention"
            log.critical("manual rollback of %s by %s: %s", ctl.target, ctl.operator, reason)
            task = guard.trigger(algos, scope, "manual", reason, ctl.operator, force=True)
            if task is None:
                raise RuntimeError(f"{ctl.target}: a rollback is already running")
            record = await task
            if record is None:
                raise RuntimeError("the rollback did not run")
            return msgspec.to_builtins(record)  # type: ignore[no-any-return]

        await self._control(req, act)

    async def _ctl_release(self, req: Request) -> None:
        async def act(ctl: ControlRequest, guard: Guard) -> dict[str, Any]:
            _, algos = guard.resolve(ctl.target)
            if not ctl.reason.strip():
                raise ValueError("`reason` must say why it is safe to resume")
            await guard.release(algos, ctl.operator, ctl.reason)
            return {"resumed": list(algos), "halted": sorted(guard.halted)}

        await self._control(req, act)

    # ---- deployments ------------------------------------------------------------------------

    def _converged(self, algo: str) -> bool:
        """Does the algorithm's gateway report what Rampart wants of it?"""
        gateway = self.gateway_of.get(algo)
        if self.reconciler is None or gateway is None:
            return False
        return self.reconciler.control_status(algo, gateway).in_sync

    def _healthy(self, algo: str) -> bool:
        status = self.gateways.get(self.gateway_of.get(algo, ""))
        return status is not None and status.health.ok

    def _load_deployments(self) -> str | None:
        """Restore every stored deployment; an unreadable one makes the daemon fail closed."""
        assert self.store is not None
        problems = []
        for key, value in self.store.items(DEPLOYMENT_KEY):
            try:
                self.runner.restore(value)
            except (ValueError, msgspec.DecodeError) as e:
                problems.append(f"{key}: {e}")
                continue
            dep_id = key.removeprefix(DEPLOYMENT_KEY)
            if dep_id in self.runner.deployments:
                self.stored_states[dep_id] = self.runner.deployments[dep_id].state
        if problems:
            text = "unreadable deployment state: " + "; ".join(problems)
            log.critical("%s; every algorithm starts HALTED", text)
            return text
        return None

    def _load_intents(self) -> str | None:
        """The stored intents; an unreadable one makes the daemon fail closed."""
        assert self.store is not None and self.reconciler is not None
        bad = self.reconciler.load(self.store.items(INTENT_KEY))
        if bad:
            text = "unreadable intent: " + "; ".join(bad)
            log.critical("%s; every algorithm starts HALTED", text)
            return text
        return None

    async def _seed_intents(self) -> None:
        """Running deployments stored before intents were (an older Rampart): their state is the
        intent of their algorithms. Stored first; the reconciler then drives the gateways."""
        assert self.store is not None and self.reconciler is not None
        rec, intents = self.reconciler, []
        for r in self.runner.deployments.values():
            s = r.state
            if s.phase in TERMINAL or s.halted:
                continue
            if rec.intents.get(s.active) == Intent(algo=s.active):
                intents.append(rec.wanted(s.active, allocation=s.allocation, active=True))
                if s.standby:
                    intents.append(rec.wanted(s.standby, active=False))
        if intents:
            await asyncio.to_thread(put_all, self.store, [rec.item(i) for i in intents])
            rec.remember(intents)

    async def _on_stuck(self, gateway: str, text: str) -> None:
        if self.guard is not None:
            await self.guard.alert(
                "critical",
                f"gateway {gateway} does not converge",
                f"{text}; Rampart keeps sending with backoff (see `rampart status`)",
                algos=[],
            )

    async def _outcome_worker(self) -> None:
        while True:
            outcomes = await self._outcomes.get()
            self._effects_busy = True
            try:
                for outcome in outcomes:
                    try:
                        await self._persist(outcome)
                        await self._carry_out(outcome.deployment_id, outcome.decision.actions)
                    except Exception:
                        log.exception("deployment %s: effects failed", outcome.deployment_id)
            finally:
                self._effects_busy = False

    def effects_idle(self) -> bool:
        """No deployment decision or rollback is being carried out or waiting to be."""
        guard = self.guard
        return (
            self._outcomes.empty()
            and not self._effects_busy
            and (guard is None or not guard.in_flight)
        )

    async def _persist(self, outcome: Outcome) -> None:
        """The new state and every transition (an audit record each), in one transaction."""
        assert self.store is not None
        store, dep_id = self.store, outcome.deployment_id
        data = self.runner.dump(dep_id, outcome.decision.state)
        transitions = outcome.decision.transitions
        assert self.checkpointer is not None
        checkpoints = self.checkpointer.take()
        intents = self._intents_of(outcome.decision.actions)
        items = [Reconciler.item(i) for i in intents]

        def write() -> None:
            with store.transaction():
                store.put(DEPLOYMENT_KEY + dep_id, data)
                for key, value in (*checkpoints, *items):
                    store.put(key, value)
                for t in transitions:
                    store.append_audit("transition", msgspec.to_builtins(t), actor=t.actor, ts=t.at)

        await asyncio.to_thread(write)
        self.stored_states[dep_id] = outcome.decision.state
        if self.reconciler is not None:
            self.reconciler.remember(intents)
        if transitions:
            failpoints.hit("after_persist")  # crash tests: stored, not yet carried out
        if self.guard is not None:
            await self.guard.mirror_state(f"deployment.{dep_id}", data)
        for t in transitions:
            log.info(
                "deployment %s: %s/%d -> %s/%d by %s: %s",
                dep_id,
                t.from_phase,
                t.from_stage,
                t.to_phase,
                t.to_stage,
                t.actor,
                t.reason,
            )

    def _intents_of(self, actions: list[Action]) -> list[Intent]:
        """The intents a decision's actions set (stored with the decision, before any is sent).
        A rollback's intents are the guard's (stored with its latch)."""
        rec = self.reconciler
        if rec is None:
            return []
        wanted: dict[str, Intent] = {}
        for a in actions:
            change: dict[str, Any]
            if isinstance(a, SetAllocation):
                change = {"allocation": a.allocation}
            elif isinstance(a, (Activate, Standby, Decommission)):
                change = {"active": isinstance(a, Activate)}
            else:
                continue
            base = wanted.get(a.algo) or rec.intents.get(a.algo) or Intent(algo=a.algo)
            wanted[a.algo] = msgspec.structs.replace(base, halted=False, **change)
        return list(wanted.values())

    async def _carry_out(self, dep_id: str, actions: list[Action]) -> None:
        """Send a decision's commands: reductions (rollbacks, allocations to 0, standbys) first
        and acked before any increase; if one is not acked, the increases are held (their
        intents are stored: the reconciler sends them, in order, once the reductions hold)."""
        guard = self.guard
        assert guard is not None
        reductions, increases, notices = split_actions(actions)
        acked = True
        for r in reductions:
            acked = await self._send_action(dep_id, r) and acked
        if not acked and increases:
            await guard.alert(
                "emergency",
                f"deployment {dep_id}: increases held",
                "a reduction was not acked, so "
                + ", ".join(f"{type(i).__name__}({i.algo})" for i in increases)
                + " waits: the reconciler sends it once the gateway reports the reductions",
                algos=[i.algo for i in increases],
            )
        else:
            for i in increases:
                await self._send_action(dep_id, i)
        for n in notices:
            if isinstance(n, RequestApproval):
                title = f"deployment {dep_id} waits for `{n.verb}`"
                await guard.alert("warning", title, n.reason, algos=[])
            elif isinstance(n, Complete):
                await guard.alert("info", f"deployment {dep_id} completed", n.reason, algos=[])

    async def _send_action(self, dep_id: str, a: Action) -> bool:
        """One command action, now; True when every gateway acked it."""
        guard = self.guard
        assert guard is not None
        ex = guard.executor
        outcomes: list[StepOutcome] = []
        op: Op | None = None
        if isinstance(a, SetAllocation):
            outcomes = [await ex.set_allocation(a.algo, a.allocation, a.reason, deadline=1.0)]
            op = Op("set_allocation", a.algo, a.allocation)
        elif isinstance(a, (Activate, Standby, Decommission)):
            kind: CommandKind = "activate" if isinstance(a, Activate) else "standby"
            outcomes = list((await ex.broadcast(kind, [a.algo], a.reason, deadline=1.0)).values())
            op = Op(kind, a.algo)
        elif isinstance(a, RollbackAction):
            task = guard.trigger(
                a.algos, "algo", f"strategy:{a.trigger}", a.reason, force=True, previous=a.previous
            )
            record = await task if task is not None else None
            return record is not None and record.state == "succeeded"
        acked = all(o.ok for o in outcomes)
        if acked and op is not None and self.reconciler is not None:
            self.reconciler.note_acked([op])
        for failed in (o for o in outcomes if not o.ok):
            await guard.alert(
                "emergency",
                f"deployment {dep_id}: {type(a).__name__} not acked",
                failed.detail,
                algos=failed.failed,
            )
        return acked

    async def deploy(self, doc: Deployment, actor: str) -> DeploymentState:
        now = self.engine.now if self.engine.now is not None else self.wall_clock()
        outcome = self.runner.deploy(doc, now, actor)
        await self._persist(outcome)
        await self._carry_out(outcome.deployment_id, outcome.decision.actions)
        return outcome.decision.state

    async def command(self, deployment_id: str, verb: Verb, actor: str) -> Decision:
        now = self.engine.now if self.engine.now is not None else self.wall_clock()
        outcome = self.runner.command(deployment_id, verb, actor, now)
        if outcome.decision.refused is None:
            await self._persist(outcome)
            await self._carry_out(deployment_id, outcome.decision.actions)
        return outcome.decision

    async def _ctl_deploy(self, req: Request) -> None:
        async def act(ctl: ControlRequest, guard: Guard) -> dict[str, Any]:
            if ctl.document is None:
                raise ValueError("`document` must hold the deployment document")
            doc = decode_deployment(msgspec.json.encode(ctl.document))
            state = await self.deploy(doc, ctl.operator)
            return msgspec.to_builtins(state)  # type: ignore[no-any-return]

        await self._control(req, act)

    def _ctl_verb(self, verb: Verb) -> Callable[[Request], Awaitable[None]]:
        async def handler(req: Request) -> None:
            async def act(ctl: ControlRequest, guard: Guard) -> dict[str, Any]:
                decision = await self.command(ctl.target, verb, ctl.operator)
                if decision.refused is not None:
                    raise RuntimeError(f"{verb} refused: {decision.refused}")
                return msgspec.to_builtins(decision.state)  # type: ignore[no-any-return]

            await self._control(req, act)

        return handler
