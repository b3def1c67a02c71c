"""Type stub for the compiled Rust core (``rampart._core``).

Metric definitions: ``docs/metrics.md``. All times are integer nanoseconds since the Unix epoch.
"""

from collections.abc import Sequence
from typing import Final, Literal, Self, TypeAlias, final

# An object with the buffer protocol (a numpy array, array.array, memoryview): numpy's stubs
# declare it to type checkers only from Python 3.12 (collections.abc.Buffer), so any object here.
BufferLike: TypeAlias = object

__version__: Final[str]
__all__ = [
    "AlgoConfig",
    "ArmedHalts",
    "BatchResult",
    "Breach",
    "CommandBook",
    "ConfigError",
    "DecodeError",
    "Engine",
    "Frames",
    "InvalidEventError",
    "KeyRing",
    "OutOfOrderError",
    "Position",
    "RampartError",
    "SigningKey",
    "Snapshot",
    "UnknownAlgorithmError",
    "WireFrames",
    "WireIngest",
    "WireResult",
    "__version__",
    "armed_commit",
    "is_public_key",
    "verify_message",
]

BreachKind = Literal["daily_loss", "drawdown", "error_rate", "latency", "price_band"]
ReturnSampling = Literal["interval", "session"]

class RampartError(Exception):
    """Root of every error raised by Rampart."""

    reason: str
    """A stable code for counting and dead-lettering (e.g. ``bad_price``; see docs/events.md)."""

class ConfigError(RampartError, ValueError):
    """An algorithm configuration is invalid, or the algorithm is already registered."""

class InvalidEventError(RampartError, ValueError):
    """An event was rejected; the engine state is unchanged."""

class UnknownAlgorithmError(InvalidEventError):
    """The event names an algorithm that is not registered."""

class OutOfOrderError(InvalidEventError):
    """The event's timestamp is further behind the engine clock than the tolerance allows."""

class DecodeError(InvalidEventError):
    """Raw message bytes could not be decoded into an event."""

@final
class AlgoConfig:
    algo_id: str
    version: str
    capital: float
    max_daily_loss: float | None
    max_drawdown: float | None
    max_error_rate: float | None
    max_latency_ns: int | None
    daily_loss_consecutive: int
    drawdown_consecutive: int
    error_rate_consecutive: int
    latency_consecutive: int
    error_window_ns: int
    error_min_orders: int
    latency_window_ns: int
    latency_min_samples: int
    return_interval_ns: int
    return_sampling: ReturnSampling
    sharpe_window: int
    periods_per_year: float
    risk_free_rate: float
    session_offset_ns: int
    confidence_drawdown_ref: float
    def __new__(
        cls,
        algo_id: str,
        version: str,
        capital: float,
        *,
        max_daily_loss: float | None = None,
        max_drawdown: float | None = None,
        max_error_rate: float | None = None,
        max_latency_ns: int | None = None,
        daily_loss_consecutive: int = 1,
        drawdown_consecutive: int = 1,
        error_rate_consecutive: int = 1,
        latency_consecutive: int = 1,
        error_window_ns: int = 60_000_000_000,
        error_min_orders: int = 20,
        latency_window_ns: int = 60_000_000_000,
        latency_min_samples: int = 20,
        return_interval_ns: int = 3_600_000_000_000,
        return_sampling: ReturnSampling = "interval",
        sharpe_window: int = 720,
        periods_per_year: float | None = None,
        risk_free_rate: float = 0.0,
        session_offset_ns: int = 0,
        confidence_drawdown_ref: float = 0.10,
    ) -> Self: ...

@final
class Breach:
    """A limit that tripped. Returned once per trip; the limit then stays latched."""

    algo_id: str
    kind: BreachKind
    value: float
    threshold: float
    ts: int

@final
class Position:
    symbol: str
    qty: float
    avg_cost: float
    mark: float | None
    unrealized_pnl: float
    realized_pnl: float

@final
class Snapshot:
    """Every metric of one algorithm at the engine clock (``ts``)."""

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
    breached: list[BreachKind]
    positions: list[Position]
    def to_dict(self) -> dict[str, object]: ...

@final
class BatchResult:
    """Outcome of a batch: breaches that tripped, and the events that were rejected."""

    breaches: list[Breach]
    accepted: int
    errors: list[tuple[int, str, str]]
    """(index in the batch, reason code, message) for each rejected event."""

@final
class WireResult:
    """What one chunk of a NATS connection held (``WireIngest.feed``), for the caller to act on."""

    breaches: list[Breach]
    ingested: int
    refused: list[tuple[str, str, str, bytes, int]]
    """(subject, reason code, message, the payload's first ``keep`` bytes, payload size)."""
    pings: int
    """PINGs from the server: answer each with PONG."""
    pongs: int
    oks: int
    errors: list[str]
    """-ERR texts from the server."""
    infos: list[bytes]
    """INFO payloads (JSON)."""
    failed: tuple[str, str] | None
    """(reason, message): the stream is not the protocol; close the connection. Everything
    before it in the chunk was applied once."""

@final
class WireIngest:
    """A NATS connection's incoming bytes parsed in Rust, market data applied to an engine as
    ``Engine.ingest_msg`` would (docs/protocol.md, "The wire path")."""

    def __new__(
        cls, max_payload: int = 1048576, max_event: int = 65536, keep: int = 4096
    ) -> Self: ...
    def set_max_payload(self, max_payload: int) -> None: ...
    def set_sids(self, sids: int) -> None:
        """The connection subscribed with sids 1..``sids``: a message of another sid (or one
        before the subscriptions) is refused as ``unknown_sid``, never applied."""
    @property
    def buffered(self) -> int: ...
    def feed(self, engine: Engine, data: bytes, wall_ns: int | None = None) -> WireResult: ...
    def scan(self, data: bytes) -> int:
        """Count the messages in ``data``, applying nothing (the parser's own cost)."""

@final
class Frames:
    """What one chunk of a NATS connection held (``WireFrames.feed``)."""

    messages: list[tuple[str, str | None, bytes | None, bytes]]
    """(subject, reply, header block or None, payload) of each message, in order."""
    refused: list[tuple[str, str]]
    """Messages not handed on: (subject, ``bad_subject`` | ``bad_headers`` | ``unknown_sid``)."""
    pings: int
    pongs: int
    oks: int
    errors: list[str]
    infos: list[bytes]
    failed: tuple[str, str] | None

@final
class WireFrames:
    """A NATS connection's incoming bytes parsed in Rust, its messages handed back whole."""

    def __new__(cls, max_payload: int = 1048576) -> Self: ...
    def set_max_payload(self, max_payload: int) -> None: ...
    def set_sids(self, sids: int) -> None: ...
    def feed(self, data: bytes) -> Frames: ...

@final
class Engine:
    """The per-algorithm risk engine, with its input bounds and clock guards (docs/events.md,
    "Refusals"): ``max_future_ns`` bounds event time by the wall clock (live), ``max_jump_ns``
    by the engine clock (replay), ``min_ts_ns``..``max_ts_ns`` is the accepted range."""

    def __new__(
        cls,
        *,
        time_tolerance_ns: int = 5_000_000_000,
        max_future_ns: int | None = None,
        max_jump_ns: int | None = None,
        min_ts_ns: int = 315_532_800_000_000_000,
        max_ts_ns: int = 7_258_118_400_000_000_000,
        max_price: float = 1e9,
        max_quantity: float = 1e12,
        max_notional: float = 1e13,
        price_band: float | None = None,
        price_band_consecutive: int = 3,
        subject_prefix: str = "rampart",
    ) -> Self: ...
    @property
    def now(self) -> int | None:
        """The engine clock: the latest event time accepted."""
    @property
    def time_tolerance_ns(self) -> int: ...
    @property
    def max_future_ns(self) -> int | None: ...
    @property
    def wall_clock(self) -> int | None:
        """The latest wall-clock reading given (``set_wall_clock``, ``ingest_msg``)."""
    @property
    def horizon(self) -> int | None:
        """The latest event time the engine accepts now (``None``: unbounded)."""
    def set_wall_clock(self, wall_ns: int) -> None:
        """Live mode: events stamped more than ``max_future_ns`` past this are refused."""
    def set_gateway(self, algo_id: str, gateway: str) -> None:
        """The gateway that runs ``algo_id``: ``ingest_msg`` takes its events only from there."""
    def set_price_band(self, symbol: str, band: float | None) -> None:
        """Override the default price band of one symbol (``None``: no band)."""
    def register(self, config: AlgoConfig) -> None: ...
    def unregister(self, algo_id: str) -> None: ...
    def algorithms(self) -> list[str]: ...
    def __contains__(self, algo_id: str, /) -> bool: ...
    def __len__(self) -> int: ...
    # --- per-event entry points; each returns None unless a limit trips ---
    def quote(self, symbol: str, bid: float, ask: float, ts: int) -> list[Breach] | None: ...
    def mark(self, symbol: str, price: float, ts: int) -> list[Breach] | None: ...
    def fill(
        self, algo_id: str, symbol: str, qty: float, price: float, fee: float, ts: int
    ) -> list[Breach] | None:
        """Apply a fill; ``qty`` is signed (> 0 buy, < 0 sell)."""
    def order_submitted(self, algo_id: str, ts: int) -> list[Breach] | None: ...
    def order_acked(self, algo_id: str, latency_ns: int, ts: int) -> list[Breach] | None: ...
    def order_rejected(self, algo_id: str, ts: int) -> list[Breach] | None: ...
    def order_cancelled(self, algo_id: str, ts: int) -> list[Breach] | None: ...
    # --- batches ---
    def quotes(
        self,
        symbols: Sequence[str],
        bids: Sequence[float],
        asks: Sequence[float],
        ts: Sequence[int],
    ) -> BatchResult: ...
    def intern(self, symbols: Sequence[str]) -> list[int]:
        """The ids of ``symbols`` for ``quote_columns`` (the same for the engine's life)."""
    def quote_columns(
        self, symbol_ids: BufferLike, bids: BufferLike, asks: BufferLike, ts: BufferLike
    ) -> BatchResult:
        """Quotes as C-contiguous buffers (numpy arrays): uint32 ids from ``intern``, float64
        bids and asks, int64 ts. Each row applied as ``quote`` would; refusals in ``errors``."""
    def ingest_json(self, data: bytes) -> list[Breach] | None:
        """Decode and apply one JSON event (format: docs/events.md); raises on bad input.

        No identity check: for trusted sources (replays, tests). Bus messages: ``ingest_msg``."""
    def ingest_msg(
        self, subject: str, data: bytes, wall_ns: int | None = None, *, durable: bool = False
    ) -> list[Breach] | None:
        """Decode one event received on NATS ``subject`` and apply it if the subject may carry
        it (market data on its own symbol's subject, an algorithm's events only on its own
        gateway's subjects); ``wall_ns`` first moves the wall clock. ``durable``: a fill or
        order event from the durable events stream; one that is late (behind the event clock
        by more than the tolerance) is applied at the clock's time instead of refused as
        ``out_of_order``, and market data is refused. Raises on bad input."""
    def ingest_batch(self, subject: str, data: bytes, wall_ns: int | None = None) -> BatchResult:
        """A batch of fills and order events from the durable events stream, received on
        ``<prefix>.batch.<gateway>`` (a JSON array of events of that gateway's algorithms):
        each applied as ``ingest_msg(..., durable=True)`` would, the refused ones listed in
        ``errors`` with their index. Raises ``InvalidEventError`` when the batch as a whole
        cannot be taken (``decode``: not an array; ``wrong_subject``)."""
    def ingest_json_batch(self, messages: Sequence[bytes]) -> BatchResult:
        """Decode and apply many JSON events; bad ones are reported in ``errors``, never raised."""
    # --- control ---
    def set_capital(self, algo_id: str, capital: float, ts: int) -> list[Breach] | None: ...
    def mark_stage(self, algo_id: str) -> None: ...
    def new_measurement(self, algo_id: str, ts: int) -> None:
        """Start a new measurement at the current capital (paper trading promoted to real
        capital): equity restarts at the capital; positions are held on at their marks; realized
        PnL, fees, peak, max drawdown, session/stage/period references, returns and trades
        restart; order counts and windows are kept (docs/metrics.md)."""
    def reset_breaches(self, algo_id: str) -> None: ...
    def advance(self, ts: int) -> None:
        """Move the engine clock to ``ts`` and roll every algorithm's periods and session to it."""
    # --- reads ---
    def snapshot(self, algo_id: str) -> Snapshot: ...
    def snapshots(self) -> list[Snapshot]: ...
    def last_quote_ts(self, symbol: str) -> int | None: ...
    def returns(self, algo_id: str) -> list[float]:
        """The returns in the Sharpe window, oldest first."""
    def position_drift(
        self, gateway: str, report: bytes, tolerance: float
    ) -> list[tuple[str, str, float, float]]:
        """``gateway``'s position report (JSON object: algorithm -> symbol -> quantity) against
        the core's positions of the algorithms it runs (an algorithm left out holds nothing;
        one the core does not know is skipped): ``(algo, symbol, ours, theirs)`` for each
        symbol whose quantities differ by more than ``tolerance``, sorted. Raises
        ``InvalidEventError`` (``decode``, ``wrong_gateway``) for a report it cannot take."""
    # --- checkpoints ---
    def checkpoint(self, algo_id: str) -> bytes:
        """The algorithm's complete state as a versioned JSON checkpoint (docs/metrics.md).

        Positions, PnL, fees, peak, drawdowns, session and stage marks, the open return period
        and the return window, trades, the order and latency windows, limit latches and debounce
        counters, last-seen times; plus the engine clock and the marks of the algorithm's own
        symbols. Raises ``UnknownAlgorithmError``, or ``InvalidEventError`` (reason
        ``overflow``) if the state holds a non-finite number, which the engine never creates.
        """
    def restore(self, data: bytes, *, max_clock: int | None = None) -> int | None:
        """Register an algorithm from ``checkpoint`` bytes, in exactly the state it was saved in.

        The engine clock advances to the checkpoint's if that is later. Symbols this engine has
        no mark for take the saved mark; symbols it has a mark for keep it, and the restored
        positions are re-marked to it. A checkpoint clock beyond ``max_clock`` is not trusted:
        its times are clamped to ``max_clock``, the order windows emptied, the return period and
        session restarted; that clock is returned (else ``None``). Raises, with the engine
        unchanged: ``DecodeError`` (not a checkpoint, another format version, malformed or
        inconsistent), ``ConfigError`` (the embedded configuration is invalid, or the algorithm
        is already registered).
        """
    def take_changed(self) -> list[str]:
        """The algorithms changed since the last call (or registered, or restored), each then
        marked unchanged: the ones whose stored checkpoint is out of date. Reads (``snapshot``)
        and clock moves (``advance``) are not changes."""
    def stale_holdings(self, now: int, limit_ns: int) -> list[tuple[str, str, float, int]]:
        """Every open position whose symbol had neither a quote nor a fill of its algorithm for
        more than ``limit_ns`` before ``now``: ``(algo, symbol, qty, last)`` (``last`` 0 if
        never). One pass in the core, for the staleness watchdog."""
    def mark_all_changed(self) -> None:
        """Mark every algorithm changed (after a checkpoint write failed)."""
    def marks_checkpoint(self) -> bytes:
        """Every symbol's mark and last quote time, and the engine clock (versioned JSON)."""
    def restore_marks(self, data: bytes, *, max_clock: int | None = None) -> int | None:
        """Take the marks and clock of ``marks_checkpoint`` before restoring algorithms (their
        positions are then re-marked to these). Symbols with a mark keep it; times beyond
        ``max_clock`` are clamped, and the latest of them is returned (the untrusted clock);
        ``None`` if none was. Raises ``DecodeError`` with the engine unchanged."""

@final
class SigningKey:
    """An Ed25519 key pair from an NKEY seed (``SU...``); its ``repr`` shows only the public key
    (docs/protocol.md, "Signatures")."""

    def __new__(cls, seed: str) -> Self:
        """Raises ``ValueError`` if ``seed`` is not an NKEY seed."""
    @staticmethod
    def generate() -> SigningKey:
        """A new user key pair from the operating system's random source."""
    @property
    def public_key(self) -> str:
        """The public key (``U...``): the key id gateways trust."""
    def seed(self) -> str:
        """The seed, to store (mode 0600): whoever has it can sign as Rampart."""
    def sign(self, data: bytes) -> bytes:
        """The raw 64-byte Ed25519 signature of ``data``."""
    def sign_message(self, subject: str, body: bytes) -> str:
        """The ``Rampart-Sig`` header value of a message on ``subject`` with ``body``: base64url
        (no padding) of the signature of ``b"rampart-sig-v1\n" + subject + b"\n" + body``."""

@final
class CommandBook:
    """A gateway's command rules (rust/rampart-core/src/commands.rs): once-only by command id,
    stale terms and expiry refused, epochs ordered per dimension by (term, epoch), halt beats
    resume. ``rampart.gateway.commands.CommandBook`` wraps it."""

    def __new__(cls) -> Self: ...
    @property
    def version(self) -> int:
        """Bumped by every change a report would show."""
    @property
    def term(self) -> int:
        """The newest leadership term seen."""
    def see_term(self, term: int) -> None: ...
    def __contains__(self, algo: str, /) -> bool: ...
    def halted(self, algo: str) -> bool: ...
    def admit(
        self,
        command_id: str,
        kind_name: str,
        term: int,
        epoch: int,
        valid_until: int,
        now: int,
        algos: list[str],
        allocations: list[float | None] | None,
    ) -> tuple[list[int], list[tuple[int, str]]]:
        """The indices of the targets to apply now, in order, and ``(index, status)`` of the
        others. ``ValueError`` for an unknown kind or allocations not one per algorithm;
        ``OverflowError`` for a number beyond 128 bits."""
    def applied(
        self,
        command_id: str,
        kind_name: str,
        term: int,
        epoch: int,
        algos: list[str],
        allocations: list[float | None] | None,
    ) -> None: ...
    def halt_locally(self, algo: str, cause: str) -> None: ...
    def allocate_locally(self, algo: str, allocation: float) -> None:
        """``ValueError`` outside [0, 1]."""
    def report(
        self, algo: str
    ) -> tuple[bool, str | None, float | None, bool | None, list[tuple[str, int, int]]] | None:
        """halted, halt cause (while halted), allocation, active, and per dimension set its
        last decision as (dimension, term, epoch); ``None`` for an algorithm never touched."""
    def halt_decision(self, algo: str) -> tuple[int, int]:
        """(term, epoch) of the latest halt; (0, -1) for none."""

@final
class ArmedHalts:
    """The halts a gateway holds armed: commitments learned from Rampart's signed heartbeats,
    each accepted once in place of an Ed25519 verification (docs/protocol.md, "Armed halts")."""

    def __new__(cls, capacity: int = 65536) -> Self: ...
    def __len__(self) -> int: ...
    def arm(self, commits: list[tuple[str, int]], now: int) -> int:
        """Keep ``(commit, valid_until)`` pairs (a commit that is not base64url of 32 bytes is
        skipped); forget those expired at ``now`` (ns) and the oldest beyond the capacity.
        Returns how many were kept."""
    def take(self, reveal: str, subject: str, body: bytes) -> bool:
        """Whether the message revealing ``reveal`` (its ``Rampart-Reveal`` header) is a halt
        armed here; if so it is used up."""

def armed_commit(reveal: bytes, subject: str, body: bytes) -> str:
    """base64url (no padding) of SHA-256(``reveal`` + the signed bytes of the message)."""

@final
class KeyRing:
    """Trusted public keys, decoded once (docs/protocol.md, "Signatures")."""

    def __new__(cls, keys: list[str]) -> Self:
        """Raises ``ValueError`` naming the first key that is not an NKEY public user key."""
    def __contains__(self, key: str, /) -> bool: ...
    def __len__(self) -> int: ...
    def verify(self, key: str, subject: str, body: bytes, signature: str) -> bool:
        """Whether ``signature`` is the signature of the message by ``key``, one of these."""

def verify_message(public_key: str, subject: str, body: bytes, signature: str) -> bool:
    """Whether ``signature`` (a ``Rampart-Sig`` value) is ``public_key``'s signature of the
    message on ``subject`` with ``body``; False for anything malformed."""

def is_public_key(key: str) -> bool:
    """Whether ``key`` is an NKEY public user key (``U...``, its checksum included)."""
