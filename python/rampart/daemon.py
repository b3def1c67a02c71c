"""The Rampart daemon: the only place with I/O.

It connects to NATS (or starts an embedded nats-server), feeds market data, fills and order events
straight from the message bytes into the Rust core, dead-letters bad input with its reason, tracks
gateway heartbeats, publishes its own heartbeat and every breach, and serves status on the NATS
services API. Everything it starts, it stops in ``close()``. One daemon per ``data_dir``: it holds
an exclusive lock on ``<data_dir>/rampart.lock`` from the start of ``start()`` to the end of
``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import SlowConsumerError
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.micro import add_service
from nats.micro.service import Service

from rampart import __version__, failpoints, nats_flush
from rampart._core import Breach, InvalidEventError, WireResult
from rampart.checkpoints import CURSOR_KEY, GATEWAY_EVENTS_KEY, Checkpointer, put_all
from rampart.config import DaemonConfig, ns
from rampart.datalock import DataDirLock, DataDirLocked
from rampart.deployment import Deployment
from rampart.durability import (
    RESTORED_KEY,
    HeadFileError,
    HeadMirror,
    MirroredHead,
    behind,
    decode_head,
    foreign_store,
    head_path,
    kv_key,
    read_head_file,
)
from rampart.effects import DEPLOYMENT_KEY, DeploymentEffects
from rampart.embedded import EmbeddedNatsServer
from rampart.event_stream import EventStreamError, ensure_stream, event_subjects, start_cursor
from rampart.fail_marker import FailMarker
from rampart.gateway.outbox import EVENT_SEQ
from rampart.guard import STATE_BUCKET, SYSTEM_ACTOR, Guard
from rampart.heap import freeze_startup_heap
from rampart.lease import LeaseKeeper, lease_bucket
from rampart.loop_lag import LoopLag
from rampart.nats_auth import EMBEDDED_AUTH_DIR, inbox_of
from rampart.nats_auth import write as write_nats_auth
from rampart.nats_connection import URL_FILE, connect_options
from rampart.operators import ControlAuth, Refusal, local_admin_path
from rampart.other_ramparts import OtherRamparts
from rampart.position_watch import Finding, PositionWatch
from rampart.protocol import (
    HEARTBEAT_VERSION,
    AlertSeverity,
    BreachEvent,
    ConnectivityEvent,
    ConnectivityState,
    DaemonStatus,
    DeadLetter,
    GatewayStatus,
    HaStatus,
    IngestStats,
    SidecarHeartbeat,
    StatusReply,
    WireStatus,
    encoder,
    heartbeat_frame_decoder,
    state_decoder,
)
from rampart.reconciler import Reconciler, reconcile_settings
from rampart.rollback import Scope
from rampart.runner import DeploymentRunner, Outcome
from rampart.service import DaemonService
from rampart.signing import (
    SigningKey,
    SigningKeyError,
    default_seed_path,
    load_or_create,
    sign_headers,
)
from rampart.state_stream import StateStream
from rampart.status_builder import StatusBuilder
from rampart.store import Store, StoreError, StoreReadOnly
from rampart.strategies import Decision, DeploymentState, Verb
from rampart.tasks import stop_tasks
from rampart.throttle import Throttle
from rampart.wire import WireError, WireSubscription

__all__ = ["DEPLOYMENT_KEY", "STORE_FILE", "URL_FILE", "Daemon", "DaemonError"]

log = logging.getLogger("rampart.daemon")

STORE_FILE: Final = "rampart.db"
# the most a takeover's catching up and first write may take before the process gives up
TAKEOVER_STEP_TIMEOUT: Final = 10.0
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
# dead letters of the wire path's refusals waiting to be published, at most (beyond: dropped,
# counted in dead_letter_failures)
MAX_DEAD_LETTERS_WAITING: Final = 10_000
# a Rampart heartbeat on this prefix larger than this is not looked at (its armed halts: at most
# MAX_ARMED of ~150 bytes each)
MAX_SIDECAR_HEARTBEAT: Final = 512 * 1024

# Tasks that must run as long as the daemon: one that ends or dies fails the daemon closed.
SUPERVISED: Final = frozenset({"deployment-effects", "checkpoints", "sidecar-heartbeat"})

BreachListener = Callable[[list[Breach]], Awaitable[None] | None]
ConnectivityListener = Callable[[ConnectivityEvent], Awaitable[None] | None]


class DaemonError(RuntimeError):
    """The daemon cannot start (NATS unreachable, embedded server failed, another daemon holds
    the data directory)."""


class Daemon:
    """One Rampart daemon. ``await start()`` then ``await close()``, or ``run()`` until stopped."""

    def __init__(
        self,
        config: DaemonConfig,
        *,
        servers: list[str] | None = None,
        wall_clock: Callable[[], int] = time.time_ns,
        accept_store_rollback: str | None = None,
        config_path: str | None = None,
    ) -> None:
        """``accept_store_rollback``: the operator who accepts running on a store that is behind
        its mirror (recorded in the audit log); ``config_path``: named in recovery advice."""
        self.config = config
        self.accept_store_rollback = accept_store_rollback
        self.config_path = config_path
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
        # stops the Prometheus endpoint's server thread (``metrics_port``)
        self._stop_metrics: Callable[[], None] | None = None
        # how late the event loop runs a timer (status, Prometheus, benchmarks)
        self.loop_lag = LoopLag()
        self.connectivity_listeners: list[ConnectivityListener] = []
        self.nc: Client | None = None
        self.embedded: EmbeddedNatsServer | None = None
        self.store: Store | None = None
        self.store_error: str | None = None
        # Why Rampart failed closed (``fail_closed``), None while it has not.
        self.failed: str | None = None
        # the store's audit head, mirrored beside it and in JetStream KV (not for a fallback store)
        self.head_mirror: HeadMirror | None = None
        self._file_head: MirroredHead | None = None
        self._head_file_error: str | None = None
        self.guard: Guard | None = None
        # high availability (docs/ha.md): "single" unless [ha] is on, then "standby" until
        # this process holds the lease, "leader", or "deposed" (it then stops)
        self.role = "single"
        self.term = 0
        self.deposed = False
        # random per start: this process's sidecar heartbeats (``others`` tells them apart)
        self.boot = uuid.uuid4().hex[:12]
        # other Rampart processes heard on this prefix (without [ha])
        self.others: OtherRamparts | None = None
        # the wire path's dead letters waiting for ``_publish_dead_letters`` (one task)
        self._dead_letters: deque[DeadLetter] = deque()
        # that this process failed closed, for the next start (rampart.fail_marker)
        self.fail_marker = FailMarker(config.data_dir)
        self.lease: LeaseKeeper | None = None
        self.state_stream: StateStream | None = None
        self.started_at = 0
        self._subs: list[Subscription] = []
        # the market-data connection of the wire path (``[ingest] wire = "rust"``)
        self.wire: WireSubscription | None = None
        # HA: this leader gave its lease back after its store fell behind the state stream
        self.stepped_down = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._closing = False
        self._max_payload = config.ingest.max_payload_bytes
        self._events_prefix_len = len(config.subject_prefix) + 1
        # how Rampart logs in to NATS (the embedded server's generated daemon user, if it runs)
        self._nats = config.nats
        self._batch_prefix = config.subjects.batch("")
        self._ingest = self.engine.ingest_msg
        self.capital_of = {a.id: a.capital for a in config.algorithms}
        self.runner = DeploymentRunner(
            self.engine,
            decision_interval_ns=ns(config.decision_interval),
            healthy=self._healthy,
            capital_of=self.capital_of.__getitem__,
            converged=self._converged,
            reported=self._reported,
        )
        self.checkpointer: Checkpointer | None = None
        self.deployment_error: str | None = None
        self._refusal_alerts = Throttle(REFUSAL_ALERT_INTERVAL)
        self._wire_alerts = Throttle(REFUSAL_ALERT_INTERVAL)
        self.reconciler: Reconciler | None = None
        self.position_watch: PositionWatch | None = None
        self.signing_key: SigningKey | None = None
        # per gateway: the messages it refused for their signature, as last reported
        self._refused_signatures: dict[str, dict[str, int]] = {}
        self._signature_alerts = Throttle(REFUSAL_ALERT_INTERVAL)
        self._control_alerts = Throttle(REFUSAL_ALERT_INTERVAL)
        self.control_auth: ControlAuth | None = None
        self.effects: DeploymentEffects | None = None
        self.service: DaemonService | None = None
        self.status_builder = StatusBuilder(self)
        # the events stream (None: fills on core NATS) and whether ingest has caught up with it
        self._events_stream: str | None = None
        self._caught_up = asyncio.Event()
        self.data_lock = DataDirLock(config.data_dir)

    # ---- life cycle ---------------------------------------------------------------------

    @property
    def url_file(self) -> Path:
        return Path(self.config.data_dir) / URL_FILE

    @property
    def servers(self) -> list[str]:
        return list(self._servers)

    @property
    def store_path(self) -> Path:
        return Path(self.config.data_dir) / STORE_FILE

    @property
    def public_key(self) -> str:
        """The public key of Rampart's signing key: what its gateways trust (after ``start``)."""
        if self.signing_key is None:
            raise DaemonError("the daemon has not started: its signing key is not loaded yet")
        return self.signing_key.public_key

    @property
    def kv_head_key(self) -> str:
        return kv_key(self.config.subject_prefix, self.config.name)

    async def start(self) -> None:
        """Start everything; on failure, stop what was started (``close()``) and raise."""
        Path(self.config.data_dir).mkdir(parents=True, exist_ok=True)
        # One writer per data_dir, before anything else (the store, the embedded server and its
        # nats.url): a second daemon stops here, naming the first's PID.
        try:
            self.data_lock.acquire()
        except DataDirLocked as e:
            raise DaemonError(str(e)) from e
        except OSError as e:  # a read-only data_dir or lock file
            raise DaemonError(
                f"cannot take the data_dir lock {self.data_lock.path} ({e.strerror or e}): give "
                f"the daemon's user write access to {self.config.data_dir} and the files in it"
            ) from e
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        self.started_at = self.wall_clock()
        seed_file = self.config.signing.seed_file or default_seed_path(self.config.data_dir)
        try:
            self.signing_key = await asyncio.to_thread(load_or_create, seed_file)
        except SigningKeyError as e:
            raise DaemonError(str(e)) from e
        log.info("signing commands and heartbeats with %s", self.signing_key.public_key)
        self.control_auth = control_auth = await asyncio.to_thread(self._control_auth)
        self.store = await asyncio.to_thread(self._open_store)
        loop = asyncio.get_running_loop()

        def store_failed(e: StoreError) -> None:  # on the writing thread
            loop.call_soon_threadsafe(self.fail_closed, f"the state store cannot be written: {e}")

        self.store.on_write_failure = store_failed
        if not self._servers:
            await self._start_embedded()
        try:
            self.nc = await nats.connect(
                **connect_options(self._nats, self._servers),
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                closed_cb=self._on_closed,
            )
        except Exception as e:
            raise DaemonError(
                f"cannot connect to NATS at {', '.join(self._servers)}: {e or type(e).__name__}"
            ) from e
        if self.config.ha.enabled and not await self._lead():
            return  # stopped while a standby
        await self._check_mirrors()
        self.guard = Guard(
            self.config,
            self.engine,
            self.store,
            self.nc,
            gateways=lambda: self.gateways,
            wall_clock=self.wall_clock,
            sign=self._sign,
        )
        self.breach_listeners.append(self.guard.on_breaches)
        self.guard.rollback_listeners.append(self._on_rollback)
        self.connectivity_listeners.append(self.guard.on_connectivity)
        guard = self.guard
        guard.executor.term = self.term  # every command carries it (docs/ha.md, fencing)
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
        t = self.config.triggers
        watch = self.position_watch = PositionWatch(
            self.engine,
            {gw: guard.algos_of_gateway(gw) for gw in sorted(self.configured_gateways)},
            tolerance=t.position_tolerance,
            drift_after_ns=None if t.position_drift is None else ns(t.position_drift),
            caught_up=lambda: self._caught_up.is_set() and self.stats.events_behind == 0,
        )
        self.checkpointer = Checkpointer(
            self.engine,
            self.store,
            self.config,
            guard=lambda: self.guard,
            spawn=self._spawn,
            cursor=lambda: self.stats.events_seq,
            gateway_events=watch.applied,
            on_failure=self.fail_closed,
            wall_clock=self.wall_clock,
        )
        untrusted_clocks = self.checkpointer.restore()
        events_lost = await self._open_events() if self.config.events.durable else None
        effects = self.effects = DeploymentEffects(
            self.runner,
            self.store,
            guard,
            self.reconciler,
            self.checkpointer,
            now=self._now,
            failed=lambda: self.failed,
        )
        self.deployment_error = await asyncio.to_thread(effects.load_deployments)
        intent_error = effects.load_intents()
        # Fail closed: without our state we cannot know what was halted, so halt everything;
        # and an earlier run that failed closed (its halts maybe not stored: a full disk)
        # leaves everything latched halted, for an operator to release
        marker = self.fail_marker
        earlier = await asyncio.to_thread(marker.read)
        if earlier is not None and self.config.ha.enabled:
            # the shard's state stream holds what every leader stored, halts included; a
            # failure of this process when it led long ago is not the shard's state now
            log.warning("%s ignored under [ha]: %s", marker.path, earlier)
            earlier = None
            await asyncio.to_thread(marker.clear)
        await self.guard.start(
            halt_all_because=self.store_error
            or self.deployment_error
            or intent_error
            or events_lost,
            latch_all_because=(
                f"Rampart failed closed before this start: {earlier.get('reason')}"
                if earlier is not None
                else None
            ),
        )
        if earlier is not None:
            log.critical(
                "an earlier run failed closed (%s): every algorithm latched halted", earlier
            )
            if self.store_error is None:
                await asyncio.to_thread(marker.clear)  # the latches are stored
        try:
            await asyncio.to_thread(marker.arm)
        except OSError as e:
            log.error(
                "cannot create %s (%s): a failure could not be recorded there", marker.path, e
            )
        if self.store_error is None:  # a fallback store is never mirrored
            mirror = self.head_mirror = HeadMirror(
                self.store,
                head_path(self.store_path),
                kv_put=self._mirror_kv,
                wall_clock=self.wall_clock,
                on_failure=self.fail_closed,
            )
            self.store.head_listener = mirror.wake
            self._spawn(mirror.run(), "head-mirror")
        self._spawn(self._wal_checkpoints(), "wal-checkpoint")
        stream, every = self.state_stream, self.config.ha.snapshot_every
        if stream is not None and self.role == "leader" and every > 0:
            interval = self.config.ha.poll_interval.total_seconds()
            self._spawn(stream.snapshots(self.store, every, interval), "state-snapshots")
        await self.checkpointer.report_untrusted(untrusted_clocks)
        self._spawn(effects.worker(), "deployment-effects")
        self._spawn(self.checkpointer.loop(), "checkpoints")
        self._spawn(self.loop_lag.run(), "loop-lag")
        await effects.seed_intents()
        self.reconciler.start()
        await self._subscribe_events()
        self.service = DaemonService(
            self.nc,
            self.config,
            self.status_builder,
            self.engine,
            guard,
            effects,
            control_auth,
            self._on_control_refused,
            metadata=self.service_metadata(),
        )
        await self.service.start()
        if self.config.metrics_port is not None:
            from rampart.prom import serve_metrics

            self._stop_metrics = serve_metrics(
                self, self.config.metrics_port, self.config.metrics_host
            )
        # heartbeats (the gateways' dead-man's switch) and status while the events stream is
        # caught up: Rampart applies fills and judges breaches meanwhile
        self._spawn(self._heartbeat_loop(), "sidecar-heartbeat")
        await self._subscribe_market_data()
        await nats_flush.flush(self.nc)  # the subscriptions are at the server
        self.loop_lag.reset()  # the lag of the running daemon, not of its start-up
        log.info(
            "rampart %s up: %d algorithms, NATS %s, prefix %r",
            __version__,
            len(self.engine),
            ", ".join(self._servers),
            self.subjects.prefix,
        )

    # ---- high availability (docs/ha.md) -----------------------------------------------------

    async def _lead(self) -> bool:
        """Follow the shard's state stream as a standby until this process holds the lease;
        then catch up, make the stream this process's (a first write with the expected last
        sequence), and go on starting as the leader with the lease's term. False: stopped
        (``request_stop``) while a standby."""
        ha = self.config.ha
        shard = ha.shard or self.config.name
        assert self.nc is not None and self.store is not None
        if not self._servers or self.embedded is not None:
            raise DaemonError(
                "ha.enabled: configure nats.servers (a NATS cluster with JetStream); an "
                "embedded server dies with its daemon, and the standby with it"
            )
        stream = self.state_stream = StateStream(
            self.nc, self.subjects.prefix, shard, replicas=ha.replicas
        )
        js = self.nc.jetstream(timeout=2.0)
        kv = None
        deadline = time.monotonic() + 30
        while kv is None:  # a cluster elects its JetStream meta leader first
            try:
                await stream.ensure()
                kv = await lease_bucket(js, ha.replicas)
            except Exception as e:
                if time.monotonic() > deadline:
                    raise DaemonError(
                        f"ha: cannot create the lease bucket or the state stream: {e}"
                    ) from e
                await asyncio.sleep(0.2)
        elected = asyncio.Event()

        def on_change(leader: bool, term: int) -> None:
            if leader:
                elected.set()
            elif self.role == "leader" and not self._closing:
                self._deposed(shard, term)
            elif self.role == "leader":  # this process stops and hands the lease over
                log.warning("%s released the lease of shard %s (term %d)", me, shard, term)

        me = f"{self.config.name}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        poll = ha.poll_interval.total_seconds()
        self.lease = LeaseKeeper(
            kv,
            shard,
            me,
            ttl=ha.lease_ttl.total_seconds(),
            renew=ha.lease_renew.total_seconds(),
            poll=poll,
            on_change=on_change,
        )
        self.lease.start()
        self.role = "standby"
        log.warning("%s: standby for shard %s, following its state stream", me, shard)
        standby = await self._standby_service()
        following = asyncio.Event()
        follow = asyncio.get_running_loop().create_task(stream.follow(self.store, poll, following))
        waits = [asyncio.ensure_future(elected.wait()), asyncio.ensure_future(self._stop.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            following.set()  # ends the loop even if a cancellation is swallowed (follow())
            for task in (follow, *waits):
                task.cancel()
            await asyncio.gather(follow, *waits, return_exceptions=True)
            if standby is not None:  # the leader's own service replaces it
                with contextlib.suppress(Exception):
                    await standby.stop()
        if self._stop.is_set():
            return False
        step = "catching up with the state stream"
        why: str | None = None
        try:
            async with asyncio.timeout(TAKEOVER_STEP_TIMEOUT):
                log.info("%s holds the lease of shard %s: %s", me, shard, step)
                seq = await stream.catch_up(self.store)
                self.term = self.lease.term
                self.store.replicator = stream.replicator(
                    self.lease.is_leader, asyncio.get_running_loop()
                )
                # the term's first write: with the expected last sequence, it fails if anybody
                # else wrote since this process caught up, and from now on anybody else's fails
                step = f"writing the term's first record (state at {seq})"
                log.info("%s: %s", me, step)
                await asyncio.to_thread(
                    self.store.append_audit,
                    "leader_elected",
                    {"shard": shard, "term": self.term, "holder": me, "state_seq": seq},
                    actor=SYSTEM_ACTOR,
                    ts=self.wall_clock(),
                )
        except TimeoutError:
            why = f"stalled for {TAKEOVER_STEP_TIMEOUT:.0f}s"
        except Exception as e:
            why = f"failed ({type(e).__name__}: {e})"
        if why is not None:
            text = (
                f"ha: taking over shard {shard} {why} while {step}: this process stops (its "
                "supervisor starts it again, as a standby)"
            )
            log.critical("%s", text)  # now: stopping may take a while
            raise DaemonError(text)
        self.role = "leader"
        log.warning("%s leads shard %s (term %d, state at %d)", me, shard, self.term, seq)
        return True

    def service_metadata(self) -> dict[str, str]:
        """What ``$SRV`` discovery shows of this process besides its subject prefix: its role
        and, in a shard, the shard, its term and the lease holder's name (``rampart status
        --fleet``, docs/ha.md). Fixed for the service's life: a leader never leads again."""
        ha = self.ha_status()
        if ha is None:
            return {"role": "single"}
        return {"role": ha.role, "shard": ha.shard, "term": str(ha.term), "holder": ha.holder or ""}

    async def _standby_service(self) -> Service | None:
        """A standby's answer to ``$SRV`` discovery, without endpoints (status and control are
        the leader's): so the fleet view shows who is ready to take over."""
        assert self.nc is not None
        try:
            return await add_service(
                self.nc,
                name=self.config.name,
                version=__version__,
                description="Rampart risk sidecar, standby (status: ask the shard's leader)",
                metadata={"prefix": self.subjects.prefix, **self.service_metadata()},
            )
        except Exception as e:  # discovery only: the standby follows and takes over without it
            log.warning("standby: not shown to $SRV discovery (rampart status --fleet): %s", e)
            return None

    def wire_status(self) -> WireStatus | None:
        wire = self.wire
        if wire is None:
            return None
        s = wire.stats
        return WireStatus(
            connected=s.connected,
            server=s.server,
            tls=s.tls,
            connects=s.connects,
            disconnects=s.disconnects,
            bytes=s.bytes,
            chunks=s.chunks,
            slow_consumer=s.slow_consumer,
            protocol_errors=s.protocol_errors,
            last_error=s.last_error,
        )

    def ha_status(self) -> HaStatus | None:
        if not self.config.ha.enabled:
            return None
        lease = self.lease
        return HaStatus(
            shard=self.config.ha.shard or self.config.name,
            role=self.role,  # type: ignore[arg-type]
            term=self.term,
            holder=lease.machine.me if lease is not None else None,
        )

    def _step_down(self, reason: str) -> None:
        """A write reached the shard's state stream and then failed to commit in this process's
        store (a full disk, an I/O error): the standbys have it, this store does not. Halting
        the desk would be failing closed on a fault the shard does not have: this process sends
        nothing more, gives its lease back and exits 75, and a standby leads on from the state
        stream at once (docs/ha.md, "A leader's disk fails"). If none can, the gateways'
        dead-man's switches halt."""
        if self.stepped_down:
            return
        log.critical(
            "%s after the write reached the state stream: this process's store is behind its "
            "shard's. It steps down (exit 75); a standby, which has the write, leads on",
            reason,
        )
        self.stepped_down = True
        self.store_error = self.store_error or reason
        guard = self.guard
        if guard is not None:
            guard.executor.fenced = True
            detail = (
                f"{reason}. This process's store is behind the shard's state stream: it stopped "
                "leading and a standby takes over. Fix its disk, then start it again (as a "
                "standby, it catches up from the stream)."
            )
            self._spawn(
                guard.alert("critical", "Rampart leader stepped down", detail, algos=[]),
                "step-down-alert",
            )
        self.request_stop()

    def _deposed(self, shard: str, term: int) -> None:
        """The lease ran out or somebody else took it: send nothing more, and stop (the
        supervisor starts this process again, as a standby)."""
        log.critical(
            "this process no longer leads shard %s (it led term %d): it sends nothing more and "
            "stops; another process leads",
            shard,
            term,
        )
        self.role = "deposed"
        self.deposed = True
        if self.guard is not None:
            self.guard.executor.fenced = True
        self.request_stop()

    def _open_store(self) -> Store:
        path = self.store_path
        try:
            self._file_head = read_head_file(head_path(path))
        except HeadFileError as e:
            self._head_file_error = str(e)
        # The head file says the store held records: never create (or initialise) it anew.
        must_exist = self._head_file_error is not None or (
            self._file_head is not None and self._file_head.seq > 0
        )
        try:
            return Store(path, create=not must_exist or self.accept_store_rollback is not None)
        except StoreError as e:
            # a read-only store is intact, not lost: say what to fix, not that it is behind
            if must_exist and self._head_file_error is None and not isinstance(e, StoreReadOnly):
                assert self._file_head is not None
                self._fail_closed(
                    self._refusal(
                        [
                            f"{e}, but the head file {head_path(path)} records audit seq "
                            f"{self._file_head.seq} as committed"
                        ]
                    )
                )
            else:
                self._fail_closed(str(e))
            return self._fallback_store()

    def _fail_closed(self, error: str) -> None:
        self.store_error = error
        log.critical("%s; every algorithm starts HALTED until it is fixed", error)

    @staticmethod
    def _fallback_store() -> Store:
        return Store(Path(tempfile.mkdtemp(prefix="rampart-unsafe-")) / STORE_FILE)

    def _recovery(self) -> str:
        cfg = f" --config {self.config_path}" if self.config_path else ""
        return (
            "To recover, stop this daemon, then either restore the newest backup: "
            f"`rampart restore BACKUP.db{cfg} --operator NAME`, or accept the loss and run on "
            f"the store as it is (written to the audit log): `rampart run{cfg} "
            "--accept-store-rollback --operator NAME`"
        )

    def _refusal(self, problems: list[str]) -> str:
        return (
            f"state store {self.store_path} is behind its mirror: {'; '.join(problems)}. "
            "Committed state is missing from the store (a lost rampart.db-wal file, an older "
            "copy of rampart.db put back, or a data directory lost or replaced); the store is "
            "left as it is. " + self._recovery()
        )

    # ---- the store against its mirrors ----------------------------------------------------------

    async def _check_mirrors(self) -> None:
        """Refuse a store behind its mirrored head (fail closed on a fallback store), unless an
        operator accepts it; audit a restore; give the store an id. Runs once NATS is up (the
        JetStream KV copy of the head) and before anything uses the store."""
        store = self.store
        if self.store_error is not None or store is None:
            return
        kv_head = await self._read_kv_head(store)
        problems = await asyncio.to_thread(self._mirror_problems, store, kv_head)
        if problems and self.accept_store_rollback is None:
            self._fail_closed(self._refusal([text for text, _, _ in problems]))
            await asyncio.to_thread(store.close)
            self.store = await asyncio.to_thread(self._fallback_store)
            return
        await asyncio.to_thread(self._settle_store, store, problems)

    async def _read_kv_head(self, store: Store) -> MirroredHead | None:
        """The head mirrored in JetStream KV under this daemon's name (whichever store wrote
        it), if JetStream and the key are there."""
        if self.nc is None:
            return None
        try:
            js = self.nc.jetstream(timeout=1.0)
            kv = await js.key_value(STATE_BUCKET)
            entry = await kv.get(self.kv_head_key)
        except Exception as e:  # no JetStream, no bucket, no key: nothing to compare with
            log.debug("no audit head in JetStream KV (%s)", e)
            return None
        if entry.value is None:
            return None
        try:
            head = decode_head(entry.value)
        except msgspec.DecodeError as e:
            log.warning("audit head in JetStream KV %s is unreadable (%s); ignored", entry.key, e)
            return None
        return head

    def _mirror_problems(
        self, store: Store, kv_head: MirroredHead | None
    ) -> list[tuple[str, str, MirroredHead | None]]:
        """(what is wrong, which mirror, its head) for each mirror the store is behind."""
        problems: list[tuple[str, str, MirroredHead | None]] = []
        if self._head_file_error is not None:
            problems.append((self._head_file_error, "head_file", None))
        hp = head_path(self.store_path)
        if self._file_head is not None:
            text = behind(store, self._file_head, f"the head file {hp}")
            if text is not None:
                problems.append((text, "head_file", self._file_head))
        if kv_head is not None:
            where = f"the JetStream KV mirror ({STATE_BUCKET} {self.kv_head_key})"
            identity = store.identity()
            if kv_head.store_id == identity.store_id:
                text = behind(store, kv_head, where)
            elif self.config.ha.enabled or kv_head.generation < identity.generation:
                # [ha]: each process of the shard has a store of its own, brought up to date
                # from the state stream, and the leader mirrors its own. Else: a mirror written
                # before this store's accepted rollback (--accept-store-rollback)
                text = None
            else:
                text = foreign_store(identity.store_id, kv_head, where)
            if text is not None:
                problems.append((text, "jetstream_kv", kv_head))
        return problems

    def _settle_store(
        self, store: Store, problems: list[tuple[str, str, MirroredHead | None]]
    ) -> None:
        """Give the store an id; record an accepted rollback (a new generation) and a restore."""
        identity = store.ensure_identity()
        now = self.wall_clock()
        if problems:
            operator = self.accept_store_rollback
            assert operator is not None
            heads = [h for _, _, h in problems if h is not None]
            generation = 1 + max([identity.generation, *(h.generation for h in heads)])
            head = store.committed_head
            payload = {
                "store_head": msgspec.to_builtins(head),
                "generation": generation,
                "mirrors": [
                    {"mirror": which, "problem": text, "head": msgspec.to_builtins(h)}
                    for text, which, h in problems
                ],
            }
            with store.transaction():
                store.set_generation(generation)
                store.append_audit("store_rollback_accepted", payload, actor=operator, ts=now)
            log.warning(
                "%s accepted running on a store behind its mirror (now generation %d): %s",
                operator,
                generation,
                "; ".join(text for text, _, _ in problems),
            )
        elif self.accept_store_rollback is not None:
            log.info("--accept-store-rollback: the store is not behind its mirror; nothing to do")
        marker = store.get(RESTORED_KEY)
        if marker is not None:
            try:
                note: dict[str, object] = msgspec.json.decode(marker, type=dict[str, object])
            except msgspec.DecodeError:
                note = {"note": marker.decode(errors="replace")}
            actor = note.get("operator")
            with store.transaction():
                store.append_audit(
                    "store_restored",
                    note,
                    actor=actor if isinstance(actor, str) and actor else SYSTEM_ACTOR,
                    ts=now,
                )
                store.delete(RESTORED_KEY)
            log.warning("the store was restored from a backup: %s", note.get("source"))
        store.checkpoint()  # the id, generation and records above into the main file now

    async def _mirror_kv(self, data: bytes) -> None:
        if self.guard is not None:
            await self.guard.mirror_state(self.kv_head_key, data)

    async def _wal_checkpoints(self) -> None:
        """Copy the WAL into the main file every ``wal_checkpoint_interval`` (PASSIVE: never
        waits for a reader; what it could not copy goes next time). The loop never dies."""
        interval = self.config.wal_checkpoint_interval.total_seconds()
        failing = False
        while True:
            await asyncio.sleep(interval)
            store = self.store
            if store is None or store.closed:
                continue
            try:
                result = await asyncio.to_thread(store.checkpoint)
            except StoreError as e:
                if not failing:
                    log.error("WAL checkpoint failed (%s); retrying every %.3gs", e, interval)
                failing = True
                continue
            if failing:
                log.warning("WAL checkpoints work again")
            failing = False
            if not result.complete:
                log.debug("WAL checkpoint incomplete (a reader): %s", result)

    async def _start_embedded(self) -> None:
        """The embedded nats-server, secure by default: an NKEY user per role in
        ``<data_dir>/nats-auth`` (generated once, seeds 0600), least privilege for each, no
        anonymous access (docs/security.md). Rampart logs in as ``daemon``."""
        emb = self.config.embedded
        data_dir = Path(self.config.data_dir)
        auth_dir = data_dir / EMBEDDED_AUTH_DIR
        try:
            await asyncio.to_thread(write_nats_auth, self.config, auth_dir, [])
            authorization = (auth_dir / "authorization.conf").read_text()
        except (OSError, ValueError, SigningKeyError) as e:
            raise DaemonError(f"cannot write the embedded server's users in {auth_dir}: {e}") from e
        self._nats = msgspec.structs.replace(
            self.config.nats,
            nkeys_seed=str(auth_dir / "daemon.nk"),
            inbox_prefix=inbox_of("daemon"),
        )
        self.embedded = EmbeddedNatsServer(
            host=emb.host,
            port=emb.port,
            jetstream=emb.jetstream,
            store_dir=data_dir / "nats",
            extra_config=authorization,
        )
        try:
            # In a worker thread, not to block the loop: the fork itself happens on the embedded
            # module's own long-lived thread, so that the server's parent-death signal comes
            # when this process dies, not when the worker thread ends (see embedded._Spawner).
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

    async def _open_events(self) -> str | None:
        """Create or check the events stream and find where to resume; returns why Rampart
        must start halted (events lost), else ``None``. Raises DaemonError when the stream
        cannot be used safely."""
        assert self.nc is not None and self.store is not None
        js = self.nc.jetstream(timeout=2.0)
        try:
            stream = await ensure_stream(
                js,
                self.config.events,
                self.subjects,
                max(self.config.ingest.max_payload_bytes, self.config.ingest.max_batch_bytes),
            )
        except EventStreamError as e:
            raise DaemonError(str(e)) from e
        raw = await asyncio.to_thread(self.store.get, CURSOR_KEY)
        stored = int(raw) if raw is not None else None
        cursor, lost = start_cursor(stored, stream)
        if cursor != stored:
            await asyncio.to_thread(put_all, self.store, [(CURSOR_KEY, str(cursor).encode())])
        self.stats.events_seq = cursor
        applied = await asyncio.to_thread(self.store.get, GATEWAY_EVENTS_KEY)
        if applied is not None and cursor == stored and self.position_watch is not None:
            self.position_watch.restore(msgspec.json.decode(applied, type=dict[str, str]))
        self._events_stream = stream.name
        if stream.last_seq <= cursor:
            self._caught_up.set()
        log.info(
            "events stream %s: resuming after sequence %d (%d waiting)",
            stream.name,
            cursor,
            max(stream.last_seq - cursor, 0),
        )
        if lost:
            log.critical("%s; every algorithm starts HALTED", lost)
        return lost

    async def _subscribe_events(self) -> None:
        """Gateway heartbeats, and the events stream from the cursor on (or fills and order
        events on core NATS, with ``[events] durable = false``)."""
        assert self.nc is not None
        s = self.subjects
        limit = self.config.ingest.pending_msgs_limit
        self._subs.append(await self.nc.subscribe(s.heartbeat_all, cb=self._on_heartbeat))
        if not self.config.ha.enabled:
            self.others = OtherRamparts(self.boot, self.public_key, self.started_at)
            sub = await self.nc.subscribe(s.sidecar_heartbeat, cb=self._on_sidecar_heartbeat)
            self._subs.append(sub)
        if self._events_stream is None:
            for subject in (s.fills_all, s.orders_all):
                sub = await self.nc.subscribe(
                    subject, cb=self._on_event, pending_msgs_limit=limit, pending_bytes_limit=-1
                )
                self._subs.append(sub)
        else:
            cursor = self.stats.events_seq or 0
            js = self.nc.jetstream(timeout=2.0)
            events = await js.subscribe(
                "",
                stream=self._events_stream,
                cb=self._on_stream_event,
                ordered_consumer=True,
                config=ConsumerConfig(
                    filter_subjects=event_subjects(s),
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=cursor + 1,
                ),
                pending_msgs_limit=limit,
                pending_bytes_limit=-1,
            )
            self._subs.append(events)

    async def _subscribe_market_data(self) -> None:
        """Market data, once the events stream is caught up (quotes newer than the fills still
        waiting would make them look late), or after ``events.catch_up_timeout``."""
        assert self.nc is not None
        if self._events_stream is not None:
            wait = self.config.events.catch_up_timeout.total_seconds()
            try:
                async with asyncio.timeout(wait):
                    await self._caught_up.wait()
            except TimeoutError:
                log.warning(
                    "events stream not caught up after %.0fs (%d waiting): taking market data "
                    "anyway",
                    wait,
                    self.stats.events_behind,
                )
        if self.config.ingest.wire == "rust":
            self.wire = WireSubscription(
                self._nats,
                self._servers,
                self.subjects.market_all,
                self.engine,
                self.wall_clock,
                self._on_wire_result,
                max_event=self._max_payload,
                keep=self.config.ingest.dead_letter_payload_limit,
            )
            try:
                await self.wire.start()
            except WireError as e:
                raise DaemonError(str(e)) from e
            if self.guard is not None:  # halts fired from the ingest path leave on its socket
                self.guard.executor.direct = self.wire.publish
            self.wire.on_link = self._on_wire_link
            return
        sub = await self.nc.subscribe(
            self.subjects.market_all,
            cb=self._on_event,
            pending_msgs_limit=self.config.ingest.pending_msgs_limit,
            pending_bytes_limit=-1,
        )
        self._subs.append(sub)

    def request_stop(self) -> None:
        """Ask ``run()`` to shut down (safe from a signal handler)."""
        self._stop.set()

    async def run(self) -> None:
        """Start, serve until ``request_stop()``, then shut down cleanly."""
        await self.start()
        freeze_startup_heap()
        try:
            await self._stop.wait()
        finally:
            await self.close()

    async def close(self) -> None:
        """Drain subscriptions, flush, stop tasks and the service, stop an embedded server."""
        self._closing = True
        if self.lease is not None:  # a standby takes over at once (not when deposed)
            lease, self.lease = self.lease, None
            if self.guard is not None and not self.deposed:
                self.guard.executor.fenced = True  # nothing more after the lease is given back
            await lease.close(release=not self.deposed)
        if self.reconciler is not None:
            await self.reconciler.close()
        if self.guard is not None:
            await self.guard.close()
        if self.service is not None:
            with contextlib.suppress(Exception):
                await self.service.stop()
        await stop_tasks(list(self._tasks), "daemon")
        if self._stop_metrics is not None:  # the port is free for the next daemon
            stop_metrics, self._stop_metrics = self._stop_metrics, None
            await asyncio.to_thread(stop_metrics)
        if (
            self.head_mirror is not None
            and self.nc is not None
            and not self.nc.is_closed
            and not self.deposed
        ):
            with contextlib.suppress(Exception):  # the head file is written again below
                async with asyncio.timeout(5):
                    await self.head_mirror.flush()  # file and JetStream KV, while NATS is up
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.drain()  # processes what is buffered, flushes, closes
            except Exception as e:
                log.warning("NATS drain failed (%s); closing", e)
                with contextlib.suppress(Exception):
                    await self.nc.close()
        self._subs.clear()
        if self.wire is not None:
            await self.wire.close()
        await self._stop_embedded()
        if self.checkpointer is not None:  # the rounds in flight commit before the store closes
            await asyncio.to_thread(self.checkpointer.close)
        if self.store is not None:
            self.store.close()  # checkpoints the WAL into the main file
        if self.head_mirror is not None:
            try:  # the final head, after the last commit
                self.head_mirror.write_file()
            except OSError as e:
                log.error("cannot write the head file %s: %s", self.head_mirror.path, e)
        self.data_lock.release()  # last: the next daemon may start now
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
        if task.cancelled() or self._closing:
            return
        error = task.exception()
        if error is not None:
            log.error("task %s failed", task.get_name(), exc_info=error)
            self.fail_closed(f"task {task.get_name()} died: {type(error).__name__}: {error}")
        elif task.get_name() in SUPERVISED:
            self.fail_closed(f"task {task.get_name()} ended")

    def fail_closed(self, reason: str) -> None:
        """A fault Rampart cannot rule out (a store it cannot write, a task that died): halt
        every algorithm it governs (the halts are sent even if they cannot be stored), alert,
        show it in status, and refuse deploys and stage advances until a restart, which
        re-reads the store and the gateways and resumes nothing by itself."""
        if self.failed is not None or self._closing:
            return
        lease = self.lease
        if self.role == "leader" and lease is not None and not lease.is_leader():
            # Not a fault of the state: this process's lease ran out (NATS or JetStream did not
            # answer for lease_ttl), so its writes are refused. It stops commanding and exits
            # (75); the process that holds the lease next carries on from the replicated state,
            # and if none does, the gateways' dead-man's switches halt (docs/ha.md, "A NATS
            # node lost"). A halt from here would be latched by the next leader for nothing.
            log.critical("%s, because its lease ran out", reason)
            self._deposed(self.config.ha.shard or self.config.name, self.term)
            return
        store = self.store
        if self.role == "leader" and lease is not None and store is not None:
            if store.behind_replica:
                self._step_down(reason)
                return
        self.failed = reason
        self.store_error = self.store_error or reason
        # kept for the next start even if the store cannot take the halts (a full disk)
        self.fail_marker.write(reason, self.wall_clock())
        log.critical("FAIL CLOSED: %s; halting every algorithm", reason)
        guard = self.guard
        if guard is None:
            return
        guard.trigger(tuple(self.gateway_of), "all", "fail_closed", reason, force=True)
        detail = (
            f"{reason}. Every algorithm is being halted; deploys and stage advances are "
            "refused. Fix the cause, then restart Rampart: it comes back halted and an operator "
            "releases what is safe."
        )
        self._spawn(
            guard.alert("emergency", "Rampart failed closed", detail, algos=[]), "fail-alert"
        )

    # ---- ingest (hot path) ----------------------------------------------------------------

    async def _on_stream_event(self, msg: Msg) -> None:
        """A fill or order event from the events stream: applied once, in stream order; the
        cursor moves with it, before anything awaits (a checkpoint taken meanwhile must hold
        the event and the cursor together, or neither)."""
        md = msg.metadata
        seq = md.sequence.stream
        stats = self.stats
        if stats.events_seq is not None and seq <= stats.events_seq:
            return  # delivered again (the ordered consumer re-created itself): applied already
        stats.events_behind = md.num_pending
        if md.num_pending == 0:
            self._caught_up.set()
        # the event (or batch) is applied (or refused) before the first await: no checkpoint
        # can come between it and the cursor
        stats.events_seq = seq
        batch = msg.subject.startswith(self._batch_prefix)
        apply = self._on_batch(msg) if batch else self._on_event(msg, durable=True)
        watch = self.position_watch
        if watch is None or not msg.headers:
            await apply
            return
        # which of its gateway's events the core holds, moved with the cursor (a refused event
        # counts: the gateway's positions hold it, Rampart's do not, and that is drift);
        # <prefix>.fills|orders.<gateway>.<algo> (an algorithm id may hold dots), or
        # <prefix>.batch.<gateway>
        gateway = msg.subject[self._events_prefix_len :].split(".", 2)[1]
        waiting = watch.on_event(gateway, msg.headers.get(EVENT_SEQ))
        await apply
        if waiting is not None:
            try:
                found = watch.compare(gateway, waiting, self.wall_clock())
            except InvalidEventError as e:  # a malformed report that waited for its event
                self.stats.rejected[e.reason] = self.stats.rejected.get(e.reason, 0) + 1
                log.error("position report of %s refused: %s", gateway, e)
                return
            self._on_positions(found)

    async def _on_batch(self, msg: Msg) -> None:
        """A gateway outbox's batch of fills and order events, from the events stream: applied
        in one call to the core, in order; a refused event is dead-lettered on its own (after
        the breaches are dealt with), the others count."""
        data = msg.data
        limit = self.config.ingest.max_batch_bytes
        if len(data) > limit:
            await self._reject(
                msg,
                "oversize",
                f"batch of {len(data)} bytes exceeds ingest.max_batch_bytes = {limit}",
            )
            return
        try:
            result = self.engine.ingest_batch(msg.subject, data, self.wall_clock())
        except InvalidEventError as e:
            await self._reject(msg, e.reason, str(e))
            return
        self.stats.ingested += result.accepted
        await self._after_ingest(result.breaches or None)
        for index, reason, error in result.errors:
            await self._reject(msg, reason, f"event {index} of the batch: {error}")

    def _ingest_durable(self, subject: str, data: bytes, wall: int) -> list[Breach] | None:
        return self.engine.ingest_msg(subject, data, wall, durable=True)

    async def _on_event(self, msg: Msg, *, durable: bool = False) -> None:
        """Market data from core NATS; fills and order events from the events stream
        (``durable``), or from core NATS with ``[events] durable = false``."""
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
            ingest = self._ingest_durable if durable else self._ingest
            breaches = ingest(msg.subject, data, self.wall_clock())
        except InvalidEventError as e:
            await self._reject(msg, e.reason, str(e))
            return
        self.stats.ingested += 1
        await self._after_ingest(breaches)

    def _on_wire_result(self, result: WireResult) -> None:
        """A chunk of market data the Rust wire path applied (``rampart.wire``): its breaches'
        halts are written on that connection's socket in this call, before anything else
        (``Guard.on_breaches_now``); then the breaches' other work and the refusals are queued,
        and the deployments decide."""
        self.stats.ingested += result.ingested
        if result.breaches:
            if self.guard is not None:
                try:
                    if failpoints.fails("wire_breaches"):  # fault tests, from outside
                        raise RuntimeError("failpoint wire_breaches: acting on breaches raised")
                    self.guard.on_breaches_now(result.breaches)
                except Exception as e:  # a breach nobody acts on: halt everything instead
                    log.exception("acting on breaches from the wire path failed")
                    self.fail_closed(f"acting on breaches from the market-data wire path: {e!r}")
                    return
            self._spawn(self._after_ingest(result.breaches), "wire-breaches")
        else:
            self._decide(None)
        for subject, reason, error, kept, size in result.refused:
            letter = self._refused_now(subject, kept, reason, error, size)
            if letter is not None:
                self._dead_letter_later(letter)

    def _on_wire_link(self, up: bool, what: str) -> None:
        """The wire path's market-data connection was lost, or is back: alerted (throttled per
        direction), since market data is missed while it is down. Lost, with
        ``triggers.nats_disconnect``: every algorithm is rolled back at once, as when the main
        NATS link is lost (Rampart is blind: a breach in what it misses would not be seen)."""
        if self.guard is None or self._closing:
            return
        if not up and self.config.triggers.nats_disconnect:
            self.guard.trigger(
                tuple(self.gateway_of),
                "all",
                "connectivity:market-data",
                f"the market-data connection was lost ({what}): quotes are missed until it is "
                "back, and a breach among them would not be seen",
            )
        if not self._wire_alerts.ready("back" if up else "lost"):
            return
        if up:
            alert = self.guard.alert(
                "info",
                "market data connection back",
                f"the wire path's market-data connection is up again, to {what}",
                algos=[],
            )
        else:
            wait = self.config.nats.reconnect_time_wait.total_seconds()
            alert = self.guard.alert(
                "warning",
                "market data connection lost",
                f"the wire path's market-data connection: {what}. Reconnecting every {wait:g}s; "
                "market data is missed meanwhile (triggers.market_data_timeout halts the "
                "algorithms whose marks go stale)",
                algos=[],
            )
        self._spawn(alert, "wire-link-alert")

    async def _after_ingest(self, breaches: list[Breach] | None) -> None:
        """Breaches first (the rollback), then the deployments' decisions."""
        if breaches is not None:
            await self._on_breaches(breaches)
        self._decide(breaches)

    def _decide(self, breaches: list[Breach] | None) -> None:
        """The deployments' decisions after an ingest: on breaches, and when one is due."""
        runner = self.runner
        if runner.deployments and self.failed is None:
            now = self.engine.now
            try:
                if failpoints.fails("decide"):  # fault tests, from outside
                    raise RuntimeError("failpoint decide: a deployment's decision raised")
                if breaches is not None and now is not None:
                    self._queue(runner.on_breaches(breaches, now))
                if now is not None and now >= runner.next_decision_at:
                    self._queue(runner.tick(now))
            except Exception as e:  # a deployment Rampart cannot decide: it cannot follow it
                log.exception("a deployment's decision failed")
                self.fail_closed(f"a deployment's decision failed: {e!r}")

    def _on_rollback(self, algos: tuple[str, ...], trigger: str, actor: str) -> None:
        if self.runner.deployments:
            now = self.engine.now if self.engine.now is not None else self.wall_clock()
            self._queue(self.runner.on_rollback(algos, f"{actor}:{trigger}", now, trigger))

    def _queue(self, outcomes: list[Outcome]) -> None:
        if outcomes and self.effects is not None and self.failed is None:
            self.effects.queue(outcomes)

    async def _reject(self, msg: Msg, reason: str, error: str, size: int | None = None) -> None:
        letter = self._refused_now(msg.subject, msg.data, reason, error, size)
        if letter is not None:
            await self._dead_letter(letter)

    def _refused_now(
        self, subject: str, data: bytes, reason: str, error: str, size: int | None
    ) -> DeadLetter | None:
        """A refused message counted, logged (the first few of each reason, then one in
        ``LOG_EVERY``) and alerted (throttled): its dead letter, if there are dead letters."""
        rejected = self.stats.rejected
        count = rejected.get(reason, 0) + 1
        rejected[reason] = count
        if count <= LOG_FIRST or count % LOG_EVERY == 0:
            log.warning("refused message on %s (%s, #%d): %s", subject, reason, count, error)
        severity = ALERTED_REFUSALS.get(reason)
        if severity is not None and self.guard is not None and self._refusal_alerts.ready(reason):
            title = f"refused {reason} message on {subject[:200]}"
            detail = f"{error[:1000]} ({count} refused as {reason} since start)"
            self._spawn(self.guard.alert(severity, title, detail, algos=[]), "refusal-alert")
        if not self.config.ingest.dead_letter or self.nc is None:
            return None
        limit = self.config.ingest.dead_letter_payload_limit
        return DeadLetter(
            reason=reason,
            error=error,
            subject=subject,
            payload=data[:limit].decode("utf-8", errors="replace"),
            payload_size=len(data) if size is None else size,
            received_at=self.wall_clock(),
        )

    def _dead_letter_later(self, letter: DeadLetter) -> None:
        """Queue a dead letter for one task to publish (the wire path's refusals: a flood of
        them costs a queue append each, not a task each). Beyond ``MAX_DEAD_LETTERS_WAITING``
        the letter is dropped, counted in ``dead_letter_failures``."""
        queue = self._dead_letters
        if len(queue) >= MAX_DEAD_LETTERS_WAITING:
            self.stats.dead_letter_failures += 1
            failures = self.stats.dead_letter_failures
            if failures <= LOG_FIRST or failures % LOG_EVERY == 0:
                log.error(
                    "%d dead letters wait to be published: a %s one dropped (#%d)",
                    len(queue),
                    letter.reason,
                    failures,
                )
            return
        queue.append(letter)
        if len(queue) == 1:
            self._spawn(self._publish_dead_letters(), "dead-letters")

    async def _publish_dead_letters(self) -> None:
        queue = self._dead_letters
        while queue:
            await self._dead_letter(queue[0])
            queue.popleft()

    async def _dead_letter(self, letter: DeadLetter) -> None:
        if self.nc is None:
            return
        try:
            await self.nc.publish(self.subjects.dead_letter(letter.reason), encoder.encode(letter))
            self.stats.dead_lettered += 1
        except Exception as e:
            self.stats.dead_letter_failures += 1
            log.error("could not dead-letter a %s message: %s", letter.reason, e)

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
        watch = self.position_watch
        if watch is not None:
            now = self.wall_clock()
            try:
                found = watch.on_report(gateway, hb.positions, now) if hb.positions else None
            except InvalidEventError as e:
                # the report is refused, not the heartbeat: the gateway stays heard
                await self._reject(msg, e.reason, f"position report: {e}")
                found = None
            self._on_positions(watch.check(now) if found is None else found)
        if hb.refused_signatures:
            self._on_refused_signatures(gateway, hb.refused_signatures)
        if hb.armed is not None and self.guard is not None:
            self.guard.executor.note_armed_report(gateway, hb.armed)
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

    def _control_auth(self) -> ControlAuth:
        """Who may send control requests: the configured operators, and the host's local admin
        key (created in data_dir if there is none) unless ``control.local_admin`` is false."""
        c = self.config.control
        local = None
        if c.local_admin:
            try:
                local = load_or_create(local_admin_path(self.config.data_dir)).public_key
            except SigningKeyError as e:
                raise DaemonError(str(e)) from e
        auth = ControlAuth(c, local_admin=local, clock=self.wall_clock)
        if not auth.operators:
            log.warning(
                "no operator may send control requests (control.local_admin is false and "
                "[[control.operators]] is empty): Rampart still halts by itself, but nobody "
                "can release, deploy or roll back through it"
            )
        return auth

    def _on_control_refused(self, verb: str, refusal: Refusal) -> None:
        """A control request refused: logged, and alerted when it may be an attack (unsigned,
        unknown key, bad signature, replayed, stale, out of role), at most once a minute per
        kind."""
        who = refusal.who.actor if refusal.who else "unknown sender"
        log.warning("control request `%s` from %s refused: %s", verb, who, refusal)
        if not refusal.alert or self.guard is None:
            return
        if not self._control_alerts.ready(refusal.kind):
            return
        detail = (
            f"`{verb}` from {who} refused ({refusal.kind}): {refusal}. A process on the bus "
            "forging or replaying operator requests, or an operator outside their role; the "
            "log has every refusal (alerted at most once a minute per kind)"
        )
        alert = self.guard.alert("critical", "control request refused", detail, algos=[])
        self._spawn(alert, "control-refusal-alert")

    def _on_refused_signatures(self, gateway: str, counts: dict[str, int]) -> None:
        """A gateway refused messages that claimed to be Rampart's: alerted as they grow (a
        forger on the bus, or a gateway that does not trust Rampart's key)."""
        before = self._refused_signatures.get(gateway, {})
        if any(n < before.get(k, 0) for k, n in counts.items()):
            before = {}  # the gateway restarted: its counts start again
        self._refused_signatures[gateway] = dict(counts)
        grown = {k: n - before.get(k, 0) for k, n in counts.items() if n > before.get(k, 0)}
        if not grown or self.guard is None or not self._signature_alerts.ready(gateway):
            return
        what = ", ".join(f"{n} {kind}" for kind, n in sorted(grown.items()))
        detail = (
            f"gateway {gateway} refused {what} (not signed by a key it trusts, or a heartbeat "
            "stamped out of step with its clock): a process on the bus forging Rampart's "
            "messages, a gateway whose trusted key is not Rampart's "
            f"({self.signing_key.public_key if self.signing_key else '?'}), or clocks out of "
            "step; its log says which (alerted at most once a minute per gateway)"
        )
        log.critical("%s", detail)
        alert = self.guard.alert(
            "critical", f"forged messages refused by {gateway}", detail, algos=[]
        )
        self._spawn(alert, "signature-alert")

    def _on_positions(self, findings: list[Finding]) -> None:
        """Drift alerted, its end noted, a lasting one rolled back (position_watch.py)."""
        guard = self.guard
        for f in findings:
            if f.kind == "breach":
                log.critical("position drift: %s", f.detail)
                if guard is not None:
                    scope: Scope = "gateway" if len(f.algos) > 1 else "algo"
                    guard.trigger(f.algos, scope, "position_drift", f.detail)
            elif f.kind == "drift":
                log.error("position drift: %s", f.detail)
                if guard is not None:
                    alert = guard.alert("critical", "position drift", f.detail, algos=list(f.algos))
                    self._spawn(alert, "drift-alert")
            else:
                log.warning("position drift over: %s", f.detail)
                if guard is not None:
                    alert = guard.alert(
                        "info", "position drift over", f.detail, algos=list(f.algos)
                    )
                    self._spawn(alert, "drift-alert")

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

    def _sign(self, subject: str, body: bytes) -> dict[str, str]:
        """The signature headers of a message to the gateways (docs/protocol.md, "Signatures")."""
        assert self.signing_key is not None
        return sign_headers(self.signing_key, subject, body)

    async def _heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_interval.total_seconds()
        subject = self.subjects.sidecar_heartbeat
        boot = self.boot
        while True:
            if self.nc is not None and self.nc.is_connected:
                if self.deposed:
                    return
                hb = SidecarHeartbeat(
                    daemon=self.config.name,
                    term=self.term,
                    ts=self.wall_clock(),
                    interval_ms=int(interval * 1000),
                    boot=boot,
                    # the halts signed in advance since the last one (docs/protocol.md,
                    # "Armed halts")
                    armed=self.guard.executor.take_armed() if self.guard is not None else [],
                )
                data = encoder.encode(hb)
                with contextlib.suppress(Exception):
                    await self.nc.publish(subject, data, headers=self._sign(subject, data))
            await asyncio.sleep(interval)

    async def _on_sidecar_heartbeat(self, msg: Msg) -> None:
        """A Rampart heartbeat on this prefix: another process's is alerted (shown in status);
        one signed with this Rampart's own key fails it closed (``rampart.other_ramparts``)."""
        others = self.others
        if others is None or len(msg.data) > MAX_SIDECAR_HEARTBEAT or self.guard is None:
            return
        other = others.on_heartbeat(msg.subject, msg.data, msg.headers, self.wall_clock())
        if other is None:
            return
        if other.same_key:
            self.fail_closed(
                f"another Rampart process ({other.name!r}, boot {other.boot}) sends heartbeats "
                "signed with this Rampart's own key on this prefix: a copy of this data "
                "directory runs elsewhere, and both command the same gateways. Stop one of them"
            )
        if not others.alert_due(other):
            return
        log.critical(
            "another Rampart on prefix %r: %r (boot %s, key %s)",
            self.config.subject_prefix,
            other.name,
            other.boot,
            other.key,
        )
        detail = (
            f"{other.name!r} (boot {other.boot}, signing key {other.key or 'none'}) sends "
            f"Rampart heartbeats on prefix {self.config.subject_prefix!r}: status and control "
            "requests are shared between the two (an operator's release may reach the other), "
            "and the gateways refuse its commands unless they trust its key. Give each Rampart "
            "its own subject_prefix, or use [ha] for a standby (docs/ha.md)"
        )
        self._spawn(
            self.guard.alert("critical", "another Rampart on this prefix", detail, algos=[]),
            "other-rampart-alert",
        )

    # ---- what the runner asks of the live state ---------------------------------------------

    def _converged(self, algo: str) -> bool:
        """Does the algorithm's gateway report what Rampart wants of it?"""
        gateway = self.gateway_of.get(algo)
        if self.reconciler is None or gateway is None:
            return False
        return self.reconciler.control_status(algo, gateway).in_sync

    def _reported(self, algo: str) -> bool:
        """Has the algorithm's gateway reported it since this process started?"""
        gateway = self.gateway_of.get(algo)
        if self.reconciler is None or gateway is None:
            return False
        return self.reconciler.seen_one(gateway, algo) is not None

    def _healthy(self, algo: str) -> bool:
        status = self.gateways.get(self.gateway_of.get(algo, ""))
        return status is not None and status.health.ok

    async def _on_stuck(self, gateway: str, text: str) -> None:
        if self.guard is not None:
            await self.guard.alert(
                "critical",
                f"gateway {gateway} does not converge",
                f"{text}; Rampart keeps sending with backoff (see `rampart status`)",
                algos=[],
            )

    # ---- in-process access (the demo, tests, benchmarks) --------------------------------------

    def _now(self) -> int:
        return self.engine.now if self.engine.now is not None else self.wall_clock()

    def _effects(self) -> DeploymentEffects:
        if self.effects is None:
            raise RuntimeError("the daemon is not started")
        return self.effects

    async def deploy(self, doc: Deployment, actor: str) -> DeploymentState:
        return await self._effects().deploy(doc, actor)

    async def command(self, deployment_id: str, verb: Verb, actor: str) -> Decision:
        return await self._effects().command(deployment_id, verb, actor)

    def effects_idle(self) -> bool:
        """No deployment decision or rollback is being carried out or waiting to be."""
        return self.effects is None or self.effects.idle()

    @property
    def stored_states(self) -> dict[str, DeploymentState]:
        return self.effects.stored_states if self.effects is not None else {}

    @property
    def checkpoint_at(self) -> int | None:
        return self.status_builder.checkpoint_at

    def daemon_status(self, algo_id: str | None = None) -> DaemonStatus:
        return self.status_builder.daemon_status(algo_id)

    def status(self, algo_id: str | None = None) -> StatusReply:
        return self.status_builder.status(algo_id)

    def status_page(
        self,
        algo_id: str | None = None,
        *,
        offset: int = 0,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> bytes:
        return self.status_builder.page(algo_id, offset=offset, limit=limit, max_bytes=max_bytes)
