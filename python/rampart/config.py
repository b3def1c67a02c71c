"""Daemon configuration: one TOML or JSON file decoded into msgspec Structs.

Unknown fields are refused; every error names the field path (``$.algorithms[0].capital``) and the
problem. The reference is docs/configuration.md.
"""

from __future__ import annotations

import os
import re
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec

from rampart._core import AlgoConfig, ConfigError, Engine, RampartError, is_public_key
from rampart.jsonpos import describe as describe_json_error
from rampart.protocol import DEFAULT_PREFIX, ControlVerb, Subjects
from rampart.tokens import is_subject, is_token

NS_PER_SECOND: Final = 1_000_000_000


def ns(d: timedelta) -> int:
    """A timedelta as integer nanoseconds (exact for microsecond resolution)."""
    return (d.days * 86_400 + d.seconds) * NS_PER_SECOND + d.microseconds * 1_000


class TlsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    # Verify the server's hostname (disable only for self-signed test setups).
    verify_hostname: bool = True


class NatsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How to reach NATS. No ``servers``: Rampart starts an embedded nats-server."""

    servers: list[str] = []
    name: str = "rampart"
    user: str | None = None
    password: str | None = None
    token: str | None = None
    # Path of an NKEY seed file, or of a .creds file (JWT + seed).
    nkeys_seed: str | None = None
    credentials: str | None = None
    tls: TlsConfig | None = None
    # The subject prefix of this connection's reply inboxes. With per-user permissions, each
    # user has its own (`rampart nats-config` sets _INBOX_<role>), so nobody can read the
    # replies meant for another.
    inbox_prefix: str = "_INBOX"
    connect_timeout: timedelta = timedelta(seconds=2)
    # A dead link is noticed after ping_interval x (max_outstanding_pings + 1): 8 s by default.
    # Much tighter risks declaring a busy link dead (the PONG waits behind the backlog), which
    # drops the backlog on reconnect.
    ping_interval: timedelta = timedelta(seconds=2)
    max_outstanding_pings: int = 3
    reconnect_time_wait: timedelta = timedelta(milliseconds=250)


class EmbeddedConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The nats-server Rampart starts when no servers are configured."""

    host: str = "127.0.0.1"
    # 0: a free port, written to <data_dir>/nats.url for `rampart status` to find.
    port: int = 0
    jetstream: bool = True


EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# The year-2200 ceiling of event time (the core's MAX_TS).
MAX_TIMESTAMP: Final = datetime(2200, 1, 1, tzinfo=UTC)


def epoch_ns(t: datetime) -> int:
    """A timezone-aware datetime as integer nanoseconds since the epoch."""
    return ns(t - EPOCH)


class IngestConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the daemon accepts from the bus (docs/events.md, "Refusals")."""

    # Larger messages are refused as `oversize` (and dead-lettered, truncated).
    max_payload_bytes: int = 16 * 1024
    # How market data is received (docs/protocol.md, "The wire path"): "rust", a connection of
    # its own whose bytes the Rust core parses and applies in one call per chunk (its halts
    # written on that socket); "nats-py", a Python callback per message on the daemon's
    # connection (the path before the wire path, kept as a fallback).
    wire: Literal["nats-py", "rust"] = "rust"
    # Larger batches of durable events (a gateway outbox's, on <prefix>.batch.<gateway>) are
    # refused as `oversize`; the events stream takes messages up to this size. Keep the
    # gateways' outbox batch size below it.
    max_batch_bytes: int = 256 * 1024
    # Larger gateway heartbeats are refused as `oversize`. A heartbeat carries every hosted
    # algorithm's actual state (~110-220 bytes each), so 1,000 algorithms take ~200 KB; the
    # default is NATS's own default max_payload. Only configured gateways are heard at all.
    max_heartbeat_bytes: int = 1024 * 1024
    # Events further behind the latest event time are refused as `out_of_order`.
    time_tolerance: timedelta = timedelta(seconds=5)
    # Events stamped further ahead of this host's wall clock are refused as `future`: the event
    # clock (stage timers, paper periods, windows) never runs ahead of real time by more.
    max_future: timedelta = timedelta(seconds=5)
    # Earlier events are refused as `bad_timestamp` (as are negative ones and any after 2200).
    min_timestamp: datetime = datetime(1980, 1, 1, tzinfo=UTC)
    # Sanity bounds: larger prices are `bad_price`, quantities `bad_quantity`, fill notionals
    # (qty x price) and fees `bad_notional` / `bad_fee`.
    max_price: float = 1e9
    max_quantity: float = 1e12
    max_notional: float = 1e13
    # Price band: a quote or mark moving a symbol's mark by more than this fraction of the last
    # accepted one is refused (`price_band`) and alerted; after `price_band_consecutive` such
    # refusals in a row the move is accepted and every holder of the symbol breaches
    # (`price_band`: a feed that jumps that often has really moved, or is broken). None: off.
    price_band: float | None = None
    price_band_consecutive: int = 3
    # Per-symbol bands, overriding `price_band` (e.g. {"ESZ6" = 0.05}).
    price_bands: dict[str, float] = {}
    dead_letter: bool = True
    # Dead letters carry at most this many bytes of the original payload.
    dead_letter_payload_limit: int = 4096
    # Messages a subscription may buffer before NATS counts it a slow consumer.
    pending_msgs_limit: int = 1_000_000


class LimitsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Per-algorithm limits, checked by the core on every event (docs/metrics.md)."""

    max_daily_loss: float | None = None
    max_drawdown: float | None = None
    max_error_rate: float | None = None
    max_latency: timedelta | None = None
    daily_loss_consecutive: int = 1
    drawdown_consecutive: int = 1
    error_rate_consecutive: int = 1
    latency_consecutive: int = 1


class MetricsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    return_interval: timedelta = timedelta(hours=1)
    # "interval": one return per return_interval of event time (empty periods return 0);
    # "session": one return per trading session that saw events (docs/metrics.md).
    return_sampling: Literal["interval", "session"] = "interval"
    sharpe_window: int = 720
    periods_per_year: float | None = None
    risk_free_rate: float = 0.0
    session_offset: timedelta = timedelta(0)
    error_window: timedelta = timedelta(seconds=60)
    error_min_orders: int = 20
    latency_window: timedelta = timedelta(seconds=60)
    latency_min_samples: int = 20


class AlgorithmConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One algorithm Rampart governs: its id, version, the gateway that runs it, its capital.

    ``previous_version`` is the algorithm id a rollback re-activates; ``flatten_on_rollback``
    closes its positions after cancelling its orders.
    """

    id: str
    version: str
    gateway: str
    capital: float
    previous_version: str | None = None
    flatten_on_rollback: bool = False
    limits: LimitsConfig = LimitsConfig()
    metrics: MetricsConfig = MetricsConfig()

    def to_core(self) -> AlgoConfig:
        lim, m = self.limits, self.metrics
        return AlgoConfig(
            self.id,
            self.version,
            self.capital,
            max_daily_loss=lim.max_daily_loss,
            max_drawdown=lim.max_drawdown,
            max_error_rate=lim.max_error_rate,
            max_latency_ns=None if lim.max_latency is None else ns(lim.max_latency),
            daily_loss_consecutive=lim.daily_loss_consecutive,
            drawdown_consecutive=lim.drawdown_consecutive,
            error_rate_consecutive=lim.error_rate_consecutive,
            latency_consecutive=lim.latency_consecutive,
            error_window_ns=ns(m.error_window),
            error_min_orders=m.error_min_orders,
            latency_window_ns=ns(m.latency_window),
            latency_min_samples=m.latency_min_samples,
            return_interval_ns=ns(m.return_interval),
            return_sampling=m.return_sampling,
            sharpe_window=m.sharpe_window,
            periods_per_year=m.periods_per_year,
            risk_free_rate=m.risk_free_rate,
            session_offset_ns=ns(m.session_offset),
        )


class TriggersConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What rolls an algorithm back besides its limits. ``None`` disables a staleness trigger."""

    # How often staleness is checked.
    check_interval: timedelta = timedelta(milliseconds=100)
    # A gateway whose heartbeat is older than this: roll back its algorithms.
    gateway_heartbeat_timeout: timedelta | None = timedelta(seconds=3)
    # A gateway reporting unhealthy market data / order routing / risk engine: roll it back.
    unhealthy_gateway: bool = True
    # No quote for this long on a symbol an algorithm holds: roll that algorithm back.
    market_data_timeout: timedelta | None = timedelta(seconds=5)
    # After Rampart's own NATS link was lost (gateways' dead-man's switches may have halted
    # everything meanwhile): roll back every algorithm once the link is back.
    nats_disconnect: bool = True
    # An algorithm whose positions differ from its gateway's report (docs/operations.md,
    # "Positions") for this long: roll it back (trigger position_drift). Drift is shown and
    # alerted at once; None: shown and alerted only.
    position_drift: timedelta | None = timedelta(seconds=5)
    # Quantities closer than this (in lots, per symbol) are equal.
    position_tolerance: Annotated[float, msgspec.Meta(ge=0)] = 1e-6


class RollbackConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Deadlines of the rollback executor's steps (each retried with the same command id)."""

    attempt_timeout: timedelta = timedelta(milliseconds=50)
    halt_deadline: timedelta = timedelta(milliseconds=250)
    cancel_deadline: timedelta = timedelta(seconds=1)
    flatten_deadline: timedelta = timedelta(seconds=2)
    allocate_deadline: timedelta = timedelta(seconds=1)
    activate_deadline: timedelta = timedelta(seconds=1)
    # Pause between background retries of a step that missed its deadline.
    retry_interval: timedelta = timedelta(milliseconds=500)
    # Each algorithm's halt is encoded and signed this long ahead, so a rollback's halt leaves
    # without being signed on its way (refreshed at half-life; null: sign every halt when sent).
    presign_validity: timedelta | None = timedelta(seconds=30)


class ReconcileConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The reconciler: how it drives each gateway to Rampart's intent (docs/operations.md,
    "Reconciliation"). It plans on every gateway report, every intent change and every
    ``heartbeat_interval``."""

    # An algorithm whose drift is older than this raises one critical alert per episode, and a
    # deployment that waits for its gateway this long holds and says so.
    converge_timeout: timedelta = timedelta(seconds=10)
    # How long one attempt of one command may take before it counts as not acked.
    command_timeout: timedelta = timedelta(seconds=1)
    # After a failed send the next waits backoff_base x 2^n, at most backoff_max, +-20% jitter.
    backoff_base: timedelta = timedelta(milliseconds=100)
    backoff_max: timedelta = timedelta(seconds=5)


class EventsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Fills and order events travel on a JetStream stream (docs/operations.md, "What is
    durable"): Rampart creates it, or checks an existing one, at start, and applies each event
    exactly once across its own crashes. Market data stays on core NATS."""

    # false: fills and order events on core NATS, at most once (what a crash or an outage of
    # Rampart loses is lost for good; for tests and benchmarks, never for money).
    durable: bool = True
    # The stream's name (default: the subject prefix's tokens joined by "_", then "_events").
    stream: str | None = None
    # How long events are kept: how long Rampart may be down and still catch up. Older ones
    # are gone, and a Rampart that missed them starts with every algorithm halted.
    max_age: timedelta = timedelta(days=7)
    # The stream's size limit. When it is full, new events are refused (the gateways' outboxes
    # keep them and retry), never old ones dropped.
    max_bytes: int = 8 * 1024**3
    # A retry of an event (same Nats-Msg-Id) within this window is stored once.
    duplicate_window: timedelta = timedelta(minutes=2)
    # Replicas on a JetStream cluster (1 on the embedded server; 3 recommended in production).
    replicas: int = 1
    # At start, ingest waits this long at most for the stream to be caught up before taking
    # market data (quotes newer than the missed fills would make them look out of order).
    catch_up_timeout: timedelta = timedelta(seconds=30)

    def stream_name(self, prefix: str) -> str:
        return self.stream or prefix.replace(".", "_") + "_events"


class SigningConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The key Rampart signs its commands and heartbeats with (docs/protocol.md, "Signatures")."""

    # An NKEY user seed file (mode 0600). Default: <data_dir>/keys/rampart.nk, created at the
    # first start (its public key beside it, in rampart.pub: what the gateways trust).
    seed_file: str | None = None


OperatorRole = Literal["viewer", "operator", "risk_manager", "admin"]
ROLE_RANK: Final[dict[OperatorRole, int]] = {
    "viewer": 0,
    "operator": 1,
    "risk_manager": 2,
    "admin": 3,
}
# The least role that may use each control verb. A viewer reads status and nothing else.
ROLE_FOR: Final[dict[ControlVerb, OperatorRole]] = {
    "rollback": "operator",
    "halt": "operator",
    "release": "operator",
    "deploy": "operator",
    "promote": "operator",
    "pause": "operator",
    "resume": "operator",
    "abort": "operator",
    "approve": "risk_manager",
}
# The verbs a second, distinct operator key may be required for (never rollback or halt: an
# emergency stop does not wait for a second person).
TwoPersonVerb = Literal["release", "approve", "deploy", "promote", "resume"]


class OperatorConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A person who may send control requests: their NKEY public key (``rampart key --new``
    makes one) and their role (docs/security.md, "Operators")."""

    name: str
    key: str
    role: OperatorRole


class ControlConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Who may send control requests, and how they are checked (docs/security.md)."""

    operators: list[OperatorConfig] = []
    # Trust the host's own key, <data_dir>/keys/local-admin.nk (created at start, mode 0600),
    # as an admin named `local-admin`: the CLI on the daemon's host uses it. Whoever can read
    # data_dir can already sign as Rampart itself; set false when operators work elsewhere.
    local_admin: bool = True
    # A request's timestamp must be within this of the daemon's clock, and its nonce unseen.
    replay_window: timedelta = timedelta(seconds=30)
    # Verbs carried out only when two distinct operator keys ask for the same thing within
    # `two_person_window`.
    two_person: list[TwoPersonVerb] = []
    two_person_window: timedelta = timedelta(minutes=15)
    # For the CLI: the operator's own seed file it signs control requests with (--key and
    # $RAMPART_KEY take precedence). Not the NATS login seed: keep the two keys apart.
    key_file: str | None = None


class AlertsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Alerts go to ``<prefix>.alert.<severity>``, and to ``webhook_url`` (JSON POST) if set."""

    webhook_url: str | None = None
    webhook_timeout: timedelta = timedelta(seconds=5)


class HaConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Active/standby (docs/ha.md): several ``rampart run`` processes for one shard, one leading
    through a lease in JetStream KV, the others following its state stream, ready to take over."""

    enabled: bool = False
    # The shard this process governs with its peers (default: ``name``).
    shard: str | None = None
    # The leader stops acting this long (less a tenth) after its last renewal started; a
    # standby takes over when the lease has not moved for this long.
    lease_ttl: timedelta = timedelta(seconds=1)
    # The leader renews its lease this often.
    lease_renew: timedelta = timedelta(milliseconds=250)
    # How often every process reads the lease, and a standby the state stream.
    poll_interval: timedelta = timedelta(milliseconds=100)
    # JetStream replicas of the lease bucket and the state stream: 3 on a 3-node cluster.
    replicas: int = 1
    # The leader writes a snapshot of its state into the state stream every this many messages
    # and purges what came before it (0: never; the stream then grows with every transaction).
    snapshot_every: int = 10_000


class DaemonConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole daemon configuration file."""

    name: str = "rampart"
    subject_prefix: str = DEFAULT_PREFIX
    data_dir: str = ".rampart"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = False
    # Interval of the daemon's own heartbeat (the gateways' dead-man's switch watches it).
    heartbeat_interval: timedelta = timedelta(seconds=1)
    # Deployments are decided every this much event time (and at every breach).
    decision_interval: timedelta = timedelta(seconds=1)
    # Every algorithm's core state (positions, peak equity, windows, latches) is checkpointed to
    # the store this often, and with every deployment decision.
    checkpoint_interval: timedelta = timedelta(seconds=1)
    # The state store's write-ahead log is copied into its main file this often (and at start
    # and shutdown), so that the main file alone trails the store by about this much. Losing
    # the -wal file is detected whatever the interval (the mirrored audit head); this bounds
    # what such a loss costs. 10 s: one PASSIVE checkpoint (which never waits for readers)
    # copies at most 10 s of commits, next to the ~1 s engine checkpoints and the WAL's own
    # automatic checkpoint at ~4 MB, for one extra fsync of the main file per interval.
    wal_checkpoint_interval: timedelta = timedelta(seconds=10)
    # Prometheus metrics on http://metrics_host:metrics_port/metrics (off when None).
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    nats: NatsConfig = NatsConfig()
    embedded: EmbeddedConfig = EmbeddedConfig()
    ingest: IngestConfig = IngestConfig()
    triggers: TriggersConfig = TriggersConfig()
    rollback: RollbackConfig = RollbackConfig()
    reconcile: ReconcileConfig = ReconcileConfig()
    events: EventsConfig = EventsConfig()
    alerts: AlertsConfig = AlertsConfig()
    signing: SigningConfig = SigningConfig()
    control: ControlConfig = ControlConfig()
    ha: HaConfig = HaConfig()
    algorithms: list[AlgorithmConfig] = []

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.subject_prefix)

    def engine(self, *, max_jump: timedelta | None = None) -> Engine:
        """A core engine with this configuration's input bounds, every algorithm registered and
        routed to its gateway. ``max_jump`` (replays): the largest step of the event clock."""
        g = self.ingest
        engine = Engine(
            time_tolerance_ns=ns(g.time_tolerance),
            max_future_ns=ns(g.max_future),
            max_jump_ns=None if max_jump is None else ns(max_jump),
            min_ts_ns=epoch_ns(g.min_timestamp),
            max_price=g.max_price,
            max_quantity=g.max_quantity,
            max_notional=g.max_notional,
            price_band=g.price_band,
            price_band_consecutive=g.price_band_consecutive,
            subject_prefix=self.subject_prefix,
        )
        for symbol, band in g.price_bands.items():
            engine.set_price_band(symbol, band)
        for algo in self.algorithms:
            engine.register(algo.to_core())
            engine.set_gateway(algo.id, algo.gateway)
        return engine


class ConfigFileError(RampartError, ValueError):
    """The configuration file is unreadable or invalid; the message says where and why."""

    reason = "invalid_config"


def _check(cfg: DaemonConfig) -> None:
    """Rules beyond types: ids usable as subject tokens, unique ids, core-valid limits."""
    try:
        Subjects(cfg.subject_prefix)
    except ValueError as e:
        raise ConfigFileError(f"`$.subject_prefix`: {e}") from None
    if not is_token(cfg.name):
        raise ConfigFileError(f"`$.name` {cfg.name!r} must be a NATS subject token")
    ha = cfg.ha
    if ha.enabled:
        if ha.shard is not None and not is_token(ha.shard):
            raise ConfigFileError(f"`$.ha.shard` {ha.shard!r} must be a NATS subject token")
        if not cfg.events.durable:
            raise ConfigFileError(
                "`$.ha.enabled` needs `$.events.durable = true`: a standby taking over must "
                "find every fill the leader had not applied yet on the durable stream"
            )
        if not timedelta(0) < ha.lease_renew < ha.lease_ttl:
            raise ConfigFileError("`$.ha.lease_renew` must be > 0 and shorter than `lease_ttl`")
        if not timedelta(0) < ha.poll_interval < ha.lease_ttl:
            raise ConfigFileError("`$.ha.poll_interval` must be > 0 and shorter than `lease_ttl`")
        if ha.replicas not in (1, 3, 5):
            raise ConfigFileError(f"`$.ha.replicas` must be 1, 3 or 5, got {ha.replicas}")
        if ha.snapshot_every < 0:
            raise ConfigFileError(
                f"`$.ha.snapshot_every` must be >= 0 (0: never), got {ha.snapshot_every}"
            )
    seen: set[str] = set()
    for i, algo in enumerate(cfg.algorithms):
        path = f"$.algorithms[{i}]"
        if not is_subject(algo.id):
            raise ConfigFileError(
                f"`{path}.id` {algo.id!r} must be usable in a NATS subject "
                "(no spaces or wildcards, no empty parts between dots)"
            )
        if not is_token(algo.gateway):
            raise ConfigFileError(
                f"`{path}.gateway` {algo.gateway!r} must be one NATS subject token "
                "(no spaces, dots or wildcards)"
            )
        if algo.id in seen:
            raise ConfigFileError(f"`{path}.id` {algo.id!r} is listed twice")
        seen.add(algo.id)
        try:
            algo.to_core()
        except ConfigError as e:
            raise ConfigFileError(f"`{path}`: {e}") from None
    ids = {a.id for a in cfg.algorithms}
    for i, algo in enumerate(cfg.algorithms):
        prev = algo.previous_version
        if prev is not None and (prev not in ids or prev == algo.id):
            raise ConfigFileError(
                f"`$.algorithms[{i}].previous_version` {prev!r} must be the id of another "
                "algorithm in this file"
            )
    for field, value in (
        ("ingest.max_payload_bytes", cfg.ingest.max_payload_bytes),
        ("ingest.max_heartbeat_bytes", cfg.ingest.max_heartbeat_bytes),
        ("ingest.pending_msgs_limit", cfg.ingest.pending_msgs_limit),
        ("nats.max_outstanding_pings", cfg.nats.max_outstanding_pings),
    ):
        if value <= 0:
            raise ConfigFileError(f"`$.{field}` must be > 0, got {value}")
    g = cfg.ingest
    if g.min_timestamp.tzinfo is None:
        raise ConfigFileError("`$.ingest.min_timestamp` must carry a time zone (e.g. ...Z)")
    if not EPOCH <= g.min_timestamp < MAX_TIMESTAMP:
        raise ConfigFileError(
            f"`$.ingest.min_timestamp` must be between 1970 and 2200, got {g.min_timestamp}"
        )
    for field, td in (
        ("ingest.time_tolerance", g.time_tolerance),
        ("ingest.max_future", g.max_future),
    ):
        if td < timedelta(0):
            raise ConfigFileError(f"`$.{field}` must not be negative, got {td}")
    for field, bound in (
        ("ingest.max_price", g.max_price),
        ("ingest.max_quantity", g.max_quantity),
        ("ingest.max_notional", g.max_notional),
    ):
        if not (0 < bound < float("inf")):
            raise ConfigFileError(f"`$.{field}` must be a finite number > 0, got {bound}")
    bands = {"": g.price_band} if g.price_band is not None else {}
    for symbol, band in {**bands, **g.price_bands}.items():
        where = f"ingest.price_bands.{symbol}" if symbol else "ingest.price_band"
        if not (0 < band < float("inf")):
            raise ConfigFileError(f"`$.{where}` must be a fraction > 0 (0.2 = 20%), got {band}")
        if symbol and not is_token(symbol):
            raise ConfigFileError(f"`$.{where}`: {symbol!r} must be one NATS subject token")
    if g.price_band_consecutive < 1:
        raise ConfigFileError(
            f"`$.ingest.price_band_consecutive` must be >= 1, got {g.price_band_consecutive}"
        )
    ev = cfg.events
    if ev.stream is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", ev.stream):
        raise ConfigFileError(
            f"`$.events.stream` {ev.stream!r} must be 1-64 letters, digits, '-' or '_'"
        )
    if ev.max_age < timedelta(hours=1):
        raise ConfigFileError(
            f"`$.events.max_age` must be at least PT1H (how long Rampart may be down), got "
            f"{ev.max_age}"
        )
    if ev.duplicate_window < timedelta(seconds=10) or ev.duplicate_window > ev.max_age:
        raise ConfigFileError(
            "`$.events.duplicate_window` must be between PT10S and `events.max_age`, got "
            f"{ev.duplicate_window}"
        )
    if ev.max_bytes < 1024**2 or not 1 <= ev.replicas <= 5:
        raise ConfigFileError(
            f"`$.events`: max_bytes must be >= 1 MiB and replicas 1..5, got {ev.max_bytes} "
            f"and {ev.replicas}"
        )
    if ev.catch_up_timeout <= timedelta(0):
        raise ConfigFileError(f"`$.events.catch_up_timeout` must be > 0, got {ev.catch_up_timeout}")
    if cfg.wal_checkpoint_interval <= timedelta(0):
        raise ConfigFileError(
            f"`$.wal_checkpoint_interval` must be > 0, got {cfg.wal_checkpoint_interval}"
        )
    r = cfg.reconcile
    for field, td in (
        ("reconcile.converge_timeout", r.converge_timeout),
        ("reconcile.command_timeout", r.command_timeout),
        ("reconcile.backoff_base", r.backoff_base),
        ("reconcile.backoff_max", r.backoff_max),
    ):
        if td <= timedelta(0):
            raise ConfigFileError(f"`$.{field}` must be > 0, got {td}")
    if r.backoff_max < r.backoff_base:
        raise ConfigFileError(
            f"`$.reconcile.backoff_max` ({r.backoff_max}) must be >= "
            f"`$.reconcile.backoff_base` ({r.backoff_base})"
        )
    _check_control(cfg.control)
    positive = [
        ("heartbeat_interval", cfg.heartbeat_interval),
        ("decision_interval", cfg.decision_interval),
        ("checkpoint_interval", cfg.checkpoint_interval),
        ("triggers.check_interval", cfg.triggers.check_interval),
        ("alerts.webhook_timeout", cfg.alerts.webhook_timeout),
        *((f"rollback.{f}", getattr(cfg.rollback, f)) for f in cfg.rollback.__struct_fields__),
    ]
    for field, td in positive:
        if td <= timedelta(0):
            raise ConfigFileError(f"`$.{field}` must be > 0, got {td}")
    if cfg.metrics_port is not None and not 1 <= cfg.metrics_port <= 65535:
        raise ConfigFileError(f"`$.metrics_port` must be in 1..65535, got {cfg.metrics_port}")
    if not 0 <= cfg.embedded.port <= 65535:
        raise ConfigFileError(f"`$.embedded.port` must be in 0..65535, got {cfg.embedded.port}")


LOCAL_ADMIN: Final = "local-admin"
_OPERATOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def _check_control(c: ControlConfig) -> None:
    names: set[str] = {LOCAL_ADMIN, "rampart"}
    keys: set[str] = set()
    for i, op in enumerate(c.operators):
        path = f"$.control.operators[{i}]"
        if not _OPERATOR_NAME.fullmatch(op.name):
            raise ConfigFileError(
                f"`{path}.name` {op.name!r} must be 1-64 letters, digits, '.', '_', '@' or '-'"
            )
        if op.name in names:
            what = "is reserved" if op.name in (LOCAL_ADMIN, "rampart") else "is listed twice"
            raise ConfigFileError(f"`{path}.name` {op.name!r} {what}")
        if not is_public_key(op.key):
            raise ConfigFileError(
                f"`{path}.key` must be an NKEY user public key (U..., 56 characters; "
                "`rampart key --new FILE` makes a key and prints it)"
            )
        if op.key in keys:
            raise ConfigFileError(f"`{path}.key` is listed twice: one key is one person")
        names.add(op.name)
        keys.add(op.key)
    if c.replay_window < timedelta(seconds=1) or c.replay_window > timedelta(minutes=10):
        raise ConfigFileError(
            f"`$.control.replay_window` must be between PT1S and PT10M, got {c.replay_window}"
        )
    if c.two_person_window <= timedelta(0):
        raise ConfigFileError(
            f"`$.control.two_person_window` must be > 0, got {c.two_person_window}"
        )
    for verb in c.two_person:
        need = ROLE_FOR[verb]
        able = [op for op in c.operators if ROLE_RANK[op.role] >= ROLE_RANK[need]]
        if len(able) < 2:
            raise ConfigFileError(
                f"`$.control.two_person` has `{verb}`, which needs two configured operators "
                f"with the role {need} or higher (the local admin key does not count), got "
                f"{len(able)}"
            )
    people: dict[str, str] = {}
    for op in c.operators:
        login = person_login(op.name)
        if login in people:
            raise ConfigFileError(
                f"`$.control.operators`: {people[login]!r} and {op.name!r} would share the NATS "
                f"user {login!r} (names differing only in '.', '@' or '_'): rename one"
            )
        people[login] = op.name


def person_login(name: str) -> str:
    """The NATS user (and inbox) name of a configured operator: ``person-<name>``, with what a
    NATS subject token cannot hold as ``_``."""
    return "person-" + re.sub(r"[^A-Za-z0-9_-]", "_", name)


def parse_config(data: bytes, *, suffix: str = ".toml") -> DaemonConfig:
    """Decode and check a configuration document (TOML, or JSON when ``suffix`` is .json)."""
    try:
        if suffix == ".json":
            try:
                cfg = msgspec.json.decode(data, type=DaemonConfig)
            except msgspec.DecodeError as e:
                raise ConfigFileError(describe_json_error(data, e)) from None
        else:
            raw = tomllib.loads(data.decode("utf-8"))
            cfg = msgspec.convert(raw, DaemonConfig)
    except (msgspec.ValidationError, msgspec.DecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigFileError(str(e)) from None
    except UnicodeDecodeError as e:
        raise ConfigFileError(f"not UTF-8 text: {e}") from None
    _check(cfg)
    return cfg


def load_config(path: str | os.PathLike[str]) -> DaemonConfig:
    """Read a configuration file; errors start with the file's path."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigFileError(f"{p}: cannot read: {e.strerror}") from None
    try:
        return parse_config(data, suffix=p.suffix.lower())
    except ConfigFileError as e:
        raise ConfigFileError(f"{p}: {e}") from None


ENV_CONFIG: Final = "RAMPART_CONFIG"


def load_config_or_default(path: str | os.PathLike[str] | None) -> DaemonConfig:
    """The configuration a command uses: ``path`` (its --config), else ``$RAMPART_CONFIG``,
    else the defaults."""
    path = path or os.environ.get(ENV_CONFIG)
    return load_config(path) if path else DaemonConfig()
