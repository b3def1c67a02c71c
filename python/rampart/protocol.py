"""Rampart's wire protocol: the NATS subject layout and every message as a msgspec Struct.

The reference for other languages is docs/protocol.md; this module is its executable form. Every
message carries a schema version ``v``. Hot-path events (quotes, marks, fills, order events) use the
JSON format of docs/events.md and are decoded by the Rust core straight from the message bytes; the
Structs here are what publishers (the gateway SDK, the tests, the tools) encode them with.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Final, Literal

import msgspec

from rampart.store import HaltLatch, RollbackRecord
from rampart.strategies.base import DeploymentState
from rampart.tokens import is_token

SCHEMA_VERSION: Final = 1
DEFAULT_PREFIX: Final = "rampart"


class Subjects:
    """The subject layout under one prefix (default ``rampart``). See docs/protocol.md."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        parts = prefix.split(".")
        if not prefix or not all(is_token(p) for p in parts):
            raise ValueError(
                f"subject prefix {prefix!r} must be dot-separated NATS tokens "
                "(letters, digits, '-', '_'; no spaces or wildcards)"
            )
        self.prefix = prefix

    # -- streams Rampart ingests --
    def market(self, symbol: str) -> str:
        return f"{self.prefix}.md.{symbol}"

    def fills(self, gateway: str, algo: str) -> str:
        return f"{self.prefix}.fills.{gateway}.{algo}"

    def orders(self, gateway: str, algo: str) -> str:
        return f"{self.prefix}.orders.{gateway}.{algo}"

    def batch(self, gateway: str) -> str:
        """A gateway's batches of durable events (its outbox's, on the events stream only)."""
        return f"{self.prefix}.batch.{gateway}"

    def heartbeat(self, gateway: str) -> str:
        return f"{self.prefix}.hb.{gateway}"

    @property
    def market_all(self) -> str:
        return f"{self.prefix}.md.>"

    @property
    def fills_all(self) -> str:
        return f"{self.prefix}.fills.>"

    @property
    def orders_all(self) -> str:
        return f"{self.prefix}.orders.>"

    @property
    def batch_all(self) -> str:
        return f"{self.prefix}.batch.*"

    @property
    def heartbeat_all(self) -> str:
        return f"{self.prefix}.hb.*"

    # -- what Rampart publishes --
    def command(self, gateway: str) -> str:
        return f"{self.prefix}.cmd.{gateway}"

    @property
    def sidecar_heartbeat(self) -> str:
        return f"{self.prefix}.sidecar.hb"

    def dead_letter(self, reason: str) -> str:
        return f"{self.prefix}.dlq.{reason}"

    @property
    def dead_letter_all(self) -> str:
        return f"{self.prefix}.dlq.>"

    def breach(self, algo: str) -> str:
        return f"{self.prefix}.breach.{algo}"

    def alert(self, severity: str) -> str:
        return f"{self.prefix}.alert.{severity}"

    def connectivity(self) -> str:
        return f"{self.prefix}.events.connectivity"

    # -- request/reply --
    def control(self, verb: str) -> str:
        return f"{self.prefix}.ctl.{verb}"

    def status(self, endpoint: str) -> str:
        return f"{self.prefix}.status.{endpoint}"


# ---- hot-path events (docs/events.md) -----------------------------------------------------


class Quote(msgspec.Struct, frozen=True, kw_only=True, tag="quote", tag_field="type"):
    """Top of book; marks positions at the mid. Subject: ``<prefix>.md.<symbol>``."""

    symbol: str
    bid: float
    ask: float
    ts: int
    v: int = SCHEMA_VERSION


class Mark(msgspec.Struct, frozen=True, kw_only=True, tag="mark", tag_field="type"):
    """A trade price or reference mark. Subject: ``<prefix>.md.<symbol>``."""

    symbol: str
    price: float
    ts: int
    v: int = SCHEMA_VERSION


class Fill(msgspec.Struct, frozen=True, kw_only=True, tag="fill", tag_field="type"):
    """An execution. Subject: ``<prefix>.fills.<gateway>.<algo>``."""

    algo: str
    symbol: str
    side: Literal["buy", "sell"]
    qty: float
    price: float
    ts: int
    fee: float = 0.0
    order_id: str | None = None
    paper: bool = False
    v: int = SCHEMA_VERSION


OrderEventKind = Literal["submitted", "acked", "rejected", "cancelled"]


class OrderEvent(msgspec.Struct, frozen=True, kw_only=True, tag="order", tag_field="type"):
    """An order life-cycle event. Subject: ``<prefix>.orders.<gateway>.<algo>``.

    ``latency_ns`` (submit to venue ack) is required for ``acked``; ``reason`` explains a reject.
    """

    algo: str
    event: OrderEventKind
    ts: int
    latency_ns: int | None = None
    order_id: str | None = None
    reason: str | None = None
    v: int = SCHEMA_VERSION


HotEvent = Quote | Mark | Fill | OrderEvent

# ---- gateway health ---------------------------------------------------------------------


class Health(msgspec.Struct, frozen=True, kw_only=True):
    market_data: bool
    order_routing: bool
    risk_engine: bool

    @property
    def ok(self) -> bool:
        return self.market_data and self.order_routing and self.risk_engine


# Heartbeats carry each algorithm's actual state since version 2 (docs/protocol.md): Rampart
# refuses older ones (`unsupported_version`), since it cannot reconcile a gateway it cannot see.
HEARTBEAT_VERSION: Final = 2

# Why a gateway has an algorithm halted: Rampart's command, its dead-man's switch (Rampart went
# silent), or its own decision (its risk checks, an operator at the gateway).
HaltCause = Literal["command", "deadman", "gateway"]


class AlgoActual(msgspec.Struct, frozen=True, kw_only=True):
    """What a gateway is doing with one algorithm, as it reports it in every heartbeat.

    ``allocation`` and ``active`` are ``None`` while unknown (nothing set since the gateway
    started); ``epochs`` is the highest command epoch applied per dimension (``halt``,
    ``allocation``, ``activation``)."""

    algo: str
    halted: bool
    halt_cause: HaltCause | None = None
    allocation: float | None = None
    active: bool | None = None
    epochs: dict[str, int] = {}
    # the leadership term each of ``epochs`` came in (docs/ha.md); a gateway that leaves it out
    # has its epochs compared alone, which is right when one host's clock made them all
    terms: dict[str, int] = {}


class Intent(msgspec.Struct, frozen=True, kw_only=True):
    """What Rampart wants of one algorithm; stored before anything is sent. ``None``: nothing
    decided (leave it as the gateway has it). ``halted`` mirrors the algorithm's halt latch.

    ``released_epoch``: the epoch of the operator's last release, and ``released_term`` the
    leadership term that sent it (0: single node). A halt the gateway applied with an older
    (term, epoch) is one the release lifted (Rampart resumes it); a newer one Rampart has no
    latch for (a crash between sending a halt and storing it) is adopted as a latch. The term
    comes first because epochs are each leader's wall clock, and two hosts' clocks differ."""

    algo: str
    halted: bool = False
    allocation: float | None = None
    active: bool | None = None
    released_epoch: int = 0
    released_term: int = 0


class ControlStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Intent against actual for one algorithm (docs/operations.md, "Reconciliation")."""

    intent: Intent
    actual: AlgoActual | None = None
    in_sync: bool = False
    # What differs, and since when (wall clock, ns); None when in sync.
    drift: str | None = None
    drift_since: int | None = None


class PositionReport(msgspec.Struct, frozen=True, kw_only=True):
    """A gateway's positions: algorithm -> symbol -> signed quantity (docs/protocol.md,
    "Positions"). ``events``: the id of the last durable event the gateway had published when
    it took them (its outbox's ``<boot>.<n>``, ``n`` = 0 before the first); Rampart compares
    the report once it has applied exactly that event. ``None``: events on core NATS, compared
    on arrival."""

    algos: dict[str, dict[str, float]]
    events: str | None = None


class PositionFrame(msgspec.Struct, frozen=True, kw_only=True):
    """How Rampart reads a :class:`PositionReport`: the positions stay raw JSON, for the core
    to compare in one call."""

    algos: msgspec.Raw
    events: str | None = None


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True, tag="heartbeat", tag_field="type"):
    """A gateway's liveness, health and the actual state of every algorithm it hosts.
    Subject: ``<prefix>.hb.<gateway>``."""

    gateway: str
    ts: int
    health: Health
    algos: list[str] = []
    state: list[AlgoActual] = []
    interval_ms: int = 1000
    positions: PositionReport | None = None
    # messages the gateway refused since it started because their signature was not Rampart's:
    # "commands", "heartbeats" -> count (Rampart alerts when one grows)
    refused_signatures: dict[str, int] = {}
    # how many armed halts the gateway holds (docs/protocol.md, "Armed halts"); None: it does
    # not arm halts. Fewer than Rampart announced: Rampart announces them again
    armed: int | None = None
    v: int = HEARTBEAT_VERSION


class HeartbeatFrame(msgspec.Struct, frozen=True, kw_only=True, tag="heartbeat", tag_field="type"):
    """How Rampart reads a :class:`Heartbeat`: ``state`` stays raw JSON, decoded (with
    ``state_decoder``) only when it differs from the gateway's previous report, which in a
    steady run it never does (1,000 algorithms are ~130 KB of state a second per gateway). A
    heartbeat without ``v`` is version 0, refused like every version before 2."""

    gateway: str
    ts: int
    health: Health
    algos: list[str] = []
    state: msgspec.Raw = msgspec.Raw(b"[]")
    interval_ms: int = 1000
    positions: PositionFrame | None = None
    refused_signatures: dict[str, int] = {}
    armed: int | None = None
    v: int = 0


class ArmedHalt(msgspec.Struct, frozen=True, kw_only=True):
    """A halt Rampart has encoded and signed in advance, announced in its heartbeat so the
    gateway can accept it, when it comes, by one SHA-256 instead of an Ed25519 verification
    (docs/protocol.md, "Armed halts").

    ``commit``: base64url (no padding) of SHA-256(reveal + the halt's signed bytes), where
    ``reveal`` is 32 random bytes Rampart sends only with the halt (``Rampart-Reveal``).
    """

    gateway: str
    commit: str
    valid_until: int


class SidecarHeartbeat(
    msgspec.Struct, frozen=True, kw_only=True, tag="sidecar_heartbeat", tag_field="type"
):
    """Rampart's own liveness, for the gateways' dead-man's switch.

    Subject: ``<prefix>.sidecar.hb``.
    """

    daemon: str
    ts: int
    interval_ms: int = 1000
    # random per start of the daemon: a gateway orders heartbeats by ts within one boot, so a
    # restarted Rampart whose clock is behind the previous one's is still heard
    boot: str = ""
    # halts signed in advance since the last heartbeat, for any gateway (each takes its own)
    armed: list[ArmedHalt] = []
    # the sender's leadership term (docs/ha.md): a gateway does not count the heartbeat of an
    # older term than one it has seen for its dead-man's switch
    term: int = 0
    v: int = SCHEMA_VERSION


# ---- gateway commands (request/reply on <prefix>.cmd.<gateway>) ---------------------------

CommandKind = Literal[
    "halt", "resume", "cancel_all", "flatten", "set_allocation", "activate", "standby"
]


class CommandTarget(msgspec.Struct, frozen=True, kw_only=True):
    """One algorithm (version) a command applies to; ``allocation`` for set_allocation."""

    algo: str
    allocation: float | None = None


class Command(msgspec.Struct, frozen=True, kw_only=True, tag="command", tag_field="type"):
    """A command to a gateway, batched over algorithms.

    ``command_id`` is reused by retries (the gateway applies it once); ``epoch`` only grows; a
    command received after ``valid_until`` (ns since epoch) is refused as expired.
    """

    command_id: str
    epoch: int
    kind: CommandKind
    targets: list[CommandTarget]
    issued_at: int
    valid_until: int
    reason: str = ""
    # the leadership term of the Rampart that sent it (docs/ha.md): a gateway refuses a command
    # of an older term than one it has seen (``stale_term``), so a deposed leader gets nothing
    # applied; within a term, ``epoch`` orders decisions as before. 0: single node
    term: int = 0
    v: int = SCHEMA_VERSION


CommandStatus = Literal[
    "applied", "duplicate", "expired", "stale_epoch", "stale_term", "refused", "error"
]


class TargetResult(msgspec.Struct, frozen=True, kw_only=True):
    algo: str
    status: CommandStatus
    detail: str = ""
    # with ``stale_epoch``: the epoch of the newer decision the gateway holds in the command's
    # dimension (Rampart's next commands go past it: a restarted Rampart whose clock is behind
    # its previous run's would be refused until its clock caught up)
    held_epoch: int | None = None


class CommandAck(msgspec.Struct, frozen=True, kw_only=True, tag="command_ack", tag_field="type"):
    """The gateway's reply to a Command: one result per target."""

    command_id: str
    gateway: str
    results: list[TargetResult]
    ts: int
    v: int = SCHEMA_VERSION


# ---- dead letters and breaches ----------------------------------------------------------


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True, tag="dead_letter", tag_field="type"):
    """Published on ``<prefix>.dlq.<reason>`` for every refused input message.

    ``payload`` is the original message body (UTF-8, with invalid bytes replaced; at most
    ``payload_limit`` bytes), ``subject`` the subject it arrived on.
    """

    reason: str
    error: str
    subject: str
    payload: str
    payload_size: int
    received_at: int
    v: int = SCHEMA_VERSION


class BreachEvent(msgspec.Struct, frozen=True, kw_only=True, tag="breach", tag_field="type"):
    """A limit tripped in the core. Published on ``<prefix>.breach.<algo>``."""

    algo: str
    kind: str
    value: float
    threshold: float
    ts: int
    v: int = SCHEMA_VERSION


AlertSeverity = Literal["info", "warning", "critical", "emergency"]


class Alert(msgspec.Struct, frozen=True, kw_only=True, tag="alert", tag_field="type"):
    """Published on ``<prefix>.alert.<severity>`` (and to the webhook, if configured).

    ``critical``: a rollback ran; ``emergency``: something needs a person now (a step could not
    be acked, a halt could not be re-asserted).
    """

    severity: AlertSeverity
    title: str
    detail: str
    algos: list[str]
    ts: int
    v: int = SCHEMA_VERSION


ConnectivityState = Literal["disconnected", "reconnected", "closed"]


class ConnectivityEvent(
    msgspec.Struct, frozen=True, kw_only=True, tag="connectivity", tag_field="type"
):
    """The daemon's NATS link changed state (``disconnected``, ``reconnected``, ``closed``)."""

    state: ConnectivityState
    ts: int
    server: str | None = None
    v: int = SCHEMA_VERSION


# ---- operator control (request/reply on <prefix>.ctl.<verb>) ------------------------------

ControlVerb = Literal[
    "rollback", "release", "deploy", "approve", "promote", "pause", "resume", "abort", "halt"
]


class ControlRequest(msgspec.Struct, frozen=True, kw_only=True):
    """An operator's command, signed with the operator's key (docs/security.md, "Operators"):
    the ``Rampart-Key`` and ``Rampart-Sig`` headers over the subject and this body, exactly as
    Rampart signs its own commands. Who acted is the verified key's configured name, never a
    string in the body. ``target`` is an algorithm id, ``gateway:<id>`` or ``*`` (everything
    this daemon governs) for rollback/release, a deployment id for the deployment verbs.
    ``ts`` (wall clock, ns) and ``nonce`` (16-64 characters, never reused) make each request
    good once, within the daemon's ``control.replay_window``."""

    target: str
    ts: int
    nonce: str
    reason: str = ""
    document: dict[str, Any] | None = None
    v: int = SCHEMA_VERSION


class ControlReply(msgspec.Struct, frozen=True, kw_only=True):
    """``ok``: carried out (``state`` says the outcome), or ``pending``: recorded, and waiting
    for a second operator (the two-person rule); else ``error`` says why not. ``actor``: the
    verified identity the audit log records."""

    ok: bool
    error: str | None = None
    state: dict[str, Any] | None = None
    pending: str | None = None
    actor: str | None = None
    v: int = SCHEMA_VERSION


# ---- status (NATS services API, service "rampart") ---------------------------------------


class PositionStatus(msgspec.Struct, frozen=True, kw_only=True):
    symbol: str
    qty: float
    avg_cost: float
    mark: float | None
    unrealized_pnl: float
    realized_pnl: float


class SymbolDrift(msgspec.Struct, frozen=True, kw_only=True):
    """A symbol whose quantity at the gateway differs from Rampart's."""

    symbol: str
    rampart: float
    gateway: float


class PositionCheck(msgspec.Struct, frozen=True, kw_only=True):
    """An algorithm's positions against its gateway's report (docs/operations.md,
    "Positions"). ``checked_at``: when they were last compared (wall clock, ns); ``drift``:
    the symbols that differed then, since ``drift_since``."""

    checked_at: int | None = None
    in_sync: bool = False
    drift: list[SymbolDrift] = []
    drift_since: int | None = None


class AlgoStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Every metric of one algorithm: the core's ``Snapshot.to_dict()``, plus its gateway."""

    algo_id: str
    version: str
    ts: int | None
    capital: float
    equity: float
    realized_pnl: float
    unrealized_pnl: float
    fees: float
    peak_equity: float
    drawdown: float
    max_drawdown: float
    daily_pnl: float
    session_start_equity: float
    stage_pnl: float
    returns_count: int
    sharpe: float | None
    trades: int
    wins: int
    win_rate: float | None
    fills: int
    orders_in_window: int
    rejects_in_window: int
    error_rate: float | None
    acks_in_window: int
    latency_p50_ns: int | None
    latency_p99_ns: int | None
    orders_submitted_total: int
    orders_rejected_total: int
    orders_acked_total: int
    orders_cancelled_total: int
    last_fill_ts: int | None
    last_order_ts: int | None
    last_event_ts: int | None
    confidence: float
    breached: list[str]
    positions: list[PositionStatus]
    gateway: str | None = None
    # the algorithm is halted (its latch, with the reason, is in ``DaemonStatus.halted``)
    halted: bool = False
    # positions left out because the reply had to fit in one NATS message (open ones are kept
    # first)
    positions_omitted: int = 0
    # what Rampart wants of it, what its gateway reports, and what differs
    control: ControlStatus | None = None
    # its positions against its gateway's (None: the gateway reports no positions)
    position_check: PositionCheck | None = None
    # the standard error of ``sharpe`` from the returns behind it (rampart.sharpe)
    sharpe_se: float | None = None


class AlgoUnavailable(msgspec.Struct, frozen=True, kw_only=True):
    """An algorithm whose metrics could not be read for this reply, and why."""

    algo_id: str
    gateway: str | None
    error: str


class GatewayStatus(msgspec.Struct, frozen=True, kw_only=True):
    gateway: str
    last_heartbeat_ts: int
    received_at: int
    health: Health
    algos: list[str]
    # computed when status is asked for: how old the last heartbeat is, and whether that is
    # within `triggers.gateway_heartbeat_timeout` (a dead gateway never shows as healthy)
    heartbeat_age_ms: int | None = None
    alive: bool | None = None


class WireStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The market-data wire path's connection (``[ingest] wire = "rust"``)."""

    connected: bool
    server: str | None = None
    tls: bool = False
    connects: int = 0
    disconnects: int = 0
    bytes: int = 0
    chunks: int = 0
    slow_consumer: int = 0
    protocol_errors: int = 0
    last_error: str | None = None


class IngestStats(msgspec.Struct, kw_only=True):
    ingested: int = 0
    rejected: dict[str, int] = {}
    breaches: int = 0
    heartbeats: int = 0
    dead_lettered: int = 0
    dead_letter_failures: int = 0
    # The durable events stream (docs/operations.md, "What is durable"): the sequence of the
    # last fill or order event applied (None when events are not durable), and how many were
    # waiting behind it when it arrived.
    events_seq: int | None = None
    events_behind: int = 0


class LoopLagStats(msgspec.Struct, frozen=True, kw_only=True):
    """How late the daemon's event loop ran a timer, over its life (``rampart.loop_lag``):
    quantiles are bucket upper bounds in ms (``None``: no sample yet, or beyond the last bucket:
    see ``max_ms``, exact). Resolution ~1 ms: below that it is the timer's noise."""

    samples: int
    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float


class HaStatus(msgspec.Struct, frozen=True, kw_only=True):
    """This process's place in its shard (docs/ha.md): only the leader answers status."""

    shard: str
    role: Literal["single", "standby", "leader", "deposed"]
    term: int
    holder: str | None = None


class OtherRampart(msgspec.Struct, frozen=True, kw_only=True):
    """Another Rampart process heard on this prefix (its sidecar heartbeats; without [ha]).
    ``same_key``: signed with this Rampart's own key (a copy of its data directory: this one
    failed closed); ``key``: the key its heartbeats are signed with (None: unsigned)."""

    name: str
    boot: str
    key: str | None
    same_key: bool
    last_seen: int


class DaemonStatus(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: str
    started_at: int
    connected: bool
    server: str | None
    now: int | None
    ingest: IngestStats
    gateways: list[GatewayStatus]
    connectivity: list[ConnectivityEvent]
    halted: list[HaltLatch] = []
    rollbacks: list[RollbackRecord] = []
    store_error: str | None = None
    checkpoint_at: int | None = None
    # the public key Rampart signs commands and heartbeats with (what gateways must trust)
    public_key: str | None = None
    # entries left out of a bounded list (``halted``, ``rollbacks``, ``gateways``,
    # ``connectivity``) so that the reply fits in one NATS message: list name -> count
    omitted: dict[str, int] = {}
    # how late the event loop ran a timer (a stall delays every message, halts included)
    loop_lag: LoopLagStats | None = None
    # the market-data connection of the wire path; None with ``[ingest] wire = "nats-py"``
    wire: WireStatus | None = None
    # with [ha] on: the shard, this process's role and term
    ha: HaStatus | None = None
    # other Rampart processes heard on this prefix (without [ha]: there should be none)
    others: list[OtherRampart] = []


class StatusRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Optional body of ``<prefix>.status.algorithms``: the page wanted. ``limit``: at most this
    many algorithms (a page also ends where the next would not fit in one NATS message)."""

    offset: Annotated[int, msgspec.Meta(ge=0)] = 0
    limit: Annotated[int, msgspec.Meta(ge=1)] | None = None
    v: int = SCHEMA_VERSION


class StatusReply(msgspec.Struct, frozen=True, kw_only=True):
    """Reply of ``<prefix>.status.algorithms`` (a page of the algorithms, from ``offset``) and
    ``<prefix>.status.algorithm`` (request body: the algorithm id; the page holds that one).

    ``total`` counts the algorithms in all; ``next_offset`` is the offset of the next page, null
    on the last. An algorithm whose metrics cannot be read is listed in ``unavailable``, and only
    there. Encode with ``encode_explicit``: non-finite numbers travel as strings.
    """

    daemon: DaemonStatus
    algorithms: list[AlgoStatus]
    deployments: list[DeploymentState] = []
    unavailable: list[AlgoUnavailable] = []
    total: int | None = None
    offset: int = 0
    next_offset: int | None = None
    v: int = SCHEMA_VERSION


class ErrorReply(msgspec.Struct, frozen=True, kw_only=True):
    error: str
    v: int = SCHEMA_VERSION


# ---- non-finite numbers ----------------------------------------------------------------------


def _explicit_float(x: float) -> float | str:
    if math.isfinite(x):
        return x
    if x != x:
        return "nan"
    return "inf" if x > 0 else "-inf"


def to_wire(obj: Any) -> Any:
    """``obj`` as JSON-ready builtins, every non-finite float written out as ``"inf"``,
    ``"-inf"`` or ``"nan"`` (JSON has no such numbers; msgspec would write ``null``)."""
    return _explicit(msgspec.to_builtins(obj))


def _explicit(obj: Any) -> Any:
    kind = type(obj)
    if kind is float:
        return _explicit_float(obj)
    if kind is dict:
        return {k: _explicit(v) for k, v in obj.items()}
    if kind is list:
        return [_explicit(v) for v in obj]
    return obj


def encode_explicit(obj: Any) -> bytes:
    """JSON of ``obj`` with non-finite floats as strings (see ``to_wire``): for status replies,
    which show whatever the metrics hold, including values that are not finite."""
    return msgspec.json.encode(to_wire(obj))


# ---- codecs, built once --------------------------------------------------------------------

encoder: Final = msgspec.json.Encoder()
hot_event_decoder: Final = msgspec.json.Decoder(HotEvent)
heartbeat_decoder: Final = msgspec.json.Decoder(Heartbeat)
heartbeat_frame_decoder: Final = msgspec.json.Decoder(HeartbeatFrame)
state_decoder: Final = msgspec.json.Decoder(list[AlgoActual])
sidecar_heartbeat_decoder: Final = msgspec.json.Decoder(SidecarHeartbeat)
command_decoder: Final = msgspec.json.Decoder(Command)
command_ack_decoder: Final = msgspec.json.Decoder(CommandAck)
dead_letter_decoder: Final = msgspec.json.Decoder(DeadLetter)
breach_decoder: Final = msgspec.json.Decoder(BreachEvent)
alert_decoder: Final = msgspec.json.Decoder(Alert)
control_request_decoder: Final = msgspec.json.Decoder(ControlRequest)
control_reply_decoder: Final = msgspec.json.Decoder(ControlReply)
# lax: a float field also accepts the strings "inf", "-inf" and "nan" (encode_explicit's output)
status_reply_decoder: Final = msgspec.json.Decoder(StatusReply, strict=False)
status_request_decoder: Final = msgspec.json.Decoder(StatusRequest)
error_reply_decoder: Final = msgspec.json.Decoder(ErrorReply)
