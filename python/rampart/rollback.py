"""The emergency rollback executor: halt, then cancel-all, allocation 0 and the previous version in
parallel, flatten after cancel when configured.

Every step is one command per gateway batched over its algorithms, sent as a NATS request with a
per-attempt deadline; retries reuse the command id (the gateway applies it once) until the step's
deadline. A step is a success only when every target is acked ``applied`` or ``duplicate``; a step
that fails is reported loudly by the caller and retried in the background until acked or the
rollback is closed by an operator. Durations are measured per step and compared with the seed's
targets (halt < 100 ms, cancel < 500 ms, whole rollback < 1 s).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from rampart.protocol import (
    AlgoActual,
    ArmedHalt,
    Command,
    CommandKind,
    CommandTarget,
    Subjects,
    TargetResult,
    command_ack_decoder,
    encoder,
)
from rampart.signing import MAX_ARMED, REVEAL_HEADER, armed_commit, b64url
from rampart.store import RollbackRecord, StepRecord

log = logging.getLogger("rampart.rollback")

# Answers a gateway gives again to the same command: resending it cannot help.
FINAL_REFUSALS: Final = frozenset({"stale_epoch", "stale_term", "expired", "refused"})
# The seed's targets, in milliseconds.
TARGET_MS: Final = {"halt": 100.0, "cancel": 500.0, "total": 1000.0}
STEP_NAMES: Final = ("halt", "cancel", "flatten", "allocate", "activate")
# the highest epoch a gateway's report can move the epoch clock to (room for 2^62 more commands)
MAX_EPOCH: Final = 2**62
# a reported epoch further ahead of this host's clock (ns) is not followed (logged at most
# once a minute)
MAX_EPOCH_LEAD: Final = 24 * 3600 * 1_000_000_000
EPOCH_LOG_EVERY: Final = 60 * 1_000_000_000
# a reported epoch this far (ns) ahead of the wall clock is logged as it is adopted
EPOCH_AHEAD_WARNING: Final = 1_000_000_000
# how far past an epoch a gateway reports (and this process did not issue) the next one is
OBSERVED_MARGIN: Final = 1_000_000_000
# the epochs a process remembers issuing (a command lives seconds; this is many minutes' worth)
ISSUED_KEPT: Final = 65_536
Scope = Literal["algo", "gateway", "all"]


class EpochClock:
    """Command epochs: strictly increasing, from the wall clock in nanoseconds, and past every
    epoch a gateway reports holding (``observe``). A gateway refuses a decision older than the
    last it applied (``stale_epoch``), so an epoch below one an earlier run issued (this host's
    clock stepped back since, or that run's host clock was ahead) could not halt anything."""

    def __init__(self, wall_clock: Callable[[], int] = time.time_ns) -> None:
        self._wall_clock = wall_clock
        self._last = 0
        self._refused_at = -EPOCH_LOG_EVERY  # when an epoch too far ahead was last logged
        # the epochs this process issued lately, oldest first (an ordered set, bounded)
        self._issued: dict[int, None] = {}

    def next(self) -> int:
        self._last = max(self._last + 1, self._wall_clock())
        issued = self._issued
        issued[self._last] = None
        if len(issued) > ISSUED_KEPT:
            del issued[next(iter(issued))]
        return self._last

    def issued_here(self, epoch: int) -> bool:
        """Did this process issue ``epoch`` (among its last ``ISSUED_KEPT``)?"""
        return epoch in self._issued

    def observe(self, epoch: int) -> None:
        """An epoch a gateway holds: every later ``next()`` is above it, unless it is more than
        ``MAX_EPOCH_LEAD`` ahead of this host's clock: then it is ignored and logged (a
        gateway that lies, or a clock years off, must not drag every epoch toward the 64-bit
        end, where the next run's could not follow). The gateway's refusals show it."""
        if epoch <= self._last:
            return
        wall = self._wall_clock()
        ahead = epoch - wall
        if ahead > MAX_EPOCH_LEAD or epoch > MAX_EPOCH - OBSERVED_MARGIN:
            if wall - self._refused_at > EPOCH_LOG_EVERY:
                self._refused_at = wall
                log.error(
                    "a gateway reports command epoch %d, %.0fs ahead of this host's clock: "
                    "not followed (more than %.0fs ahead); its commands may be refused as "
                    "stale_epoch until its state is looked at",
                    epoch,
                    ahead / 1e9,
                    MAX_EPOCH_LEAD / 1e9,
                )
            return
        if ahead > EPOCH_AHEAD_WARNING:
            log.warning(
                "a gateway holds command epoch %d, %.1fs ahead of this host's clock (an earlier "
                "run's clock was ahead, or this one stepped back): commands go on from it",
                epoch,
                ahead / 1e9,
            )
        # a margin past it: epochs issued here stay apart from the other run's, which may be
        # consecutive (``issued_here`` tells them apart)
        self._last = epoch + OBSERVED_MARGIN


@dataclass(frozen=True)
class RollbackRequest:
    """What to roll back and why. ``previous`` maps an algorithm to the version to re-activate."""

    algos: tuple[str, ...]
    scope: Scope
    trigger: str
    reason: str
    actor: str
    flatten: bool = False
    previous: dict[str, str] = field(default_factory=dict)
    # halts already sent from the ingest path (``RollbackExecutor.fire_halt``), by algorithm:
    # the halt step waits for their acks instead of sending them
    fired: dict[str, FiredHalt] = field(default_factory=dict)


@dataclass
class StepOutcome:
    ok: bool
    attempts: int
    duration_ns: int
    detail: str
    failed: list[str]


@dataclass(frozen=True)
class ExecutorSettings:
    # One request attempt waits this long for the gateway's ack before retrying (same command id),
    # plus per_target for every algorithm in the batch (a gateway takes longer for 1,000).
    attempt_timeout: float = 0.05
    per_target: float = 0.0002
    # A step is declared failed (loudly) after this long; background retries go on.
    step_deadline: dict[str, float] = field(
        default_factory=lambda: {
            "halt": 0.25,
            "cancel": 1.0,
            "flatten": 2.0,
            "allocate": 1.0,
            "activate": 1.0,
        }
    )
    # Pause between background retries of a failed step.
    retry_interval: float = 0.5
    # The steps retried in the background. The daemon retries only cancel and flatten: its
    # reconciler drives halt, allocation and activation from the stored intents until the
    # gateway reports them, and two senders of one dimension would only race their epochs.
    retried_steps: tuple[str, ...] = STEP_NAMES
    # How long a halt signed in advance stays valid (0: halts are signed when sent). A
    # one-algorithm rollback sends its algorithm's halt already encoded and signed: signing
    # (~15 us) leaves the halt path. Refreshed once less than half of it is left.
    presign_validity: float = 30.0


@dataclass(frozen=True)
class PresignedHalt:
    """A halt of one algorithm, encoded and signed ahead of need (``RollbackExecutor.presign``)."""

    gateway: str
    command: Command
    payload: bytes
    headers: dict[str, str] | None
    # its commitment, announced to the gateway in a heartbeat (None: not armed, unsigned)
    armed: ArmedHalt | None = None


# (subject, payload, reply, headers) -> written
DirectWrite = Callable[[str, bytes, str, dict[str, str] | None], bool]


@dataclass(frozen=True)
class FiredHalt:
    """A halt of one algorithm already published from the ingest path, before the rollback's
    task ran (``RollbackExecutor.fire_halt``); ``ack`` resolves with the gateway's reply."""

    gateway: str
    command: Command
    payload: bytes
    headers: dict[str, str] | None
    ack: asyncio.Future[Msg]
    sent_at: int  # the executor's monotonic clock, ns


# the reason a halt signed in advance carries (the rollback's own follows in its next commands)
PRESIGNED_REASON: Final = "emergency halt (signed in advance; the reason follows)"


class RollbackExecutor:
    """Executes rollbacks over NATS. ``gateway_of`` maps an algorithm id to its gateway."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        gateway_of: Callable[[str], str],
        *,
        settings: ExecutorSettings | None = None,
        epochs: EpochClock | None = None,
        wall_clock: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], int] = time.perf_counter_ns,
        sign: Callable[[str, bytes], dict[str, str]] | None = None,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        # the signature headers of a command (signing.py); None: unsigned (tests)
        self.sign = sign
        self.gateway_of = gateway_of
        self.settings = settings or ExecutorSettings()
        self.epochs = epochs or EpochClock(wall_clock)
        self.wall_clock = wall_clock
        self.monotonic = monotonic
        self._retries: set[asyncio.Task[None]] = set()
        self._closing = False
        # halts signed in advance, by algorithm, and the highest epoch of a halt or resume made
        # for each algorithm (a signed halt older than it is never sent: a resume with a higher
        # epoch would beat it, and a newer halt makes it pointless)
        self._presigned: dict[str, PresignedHalt] = {}
        self._halt_floor: dict[str, int] = {}
        # armed halts (docs/protocol.md, "Armed halts"): commitments not yet announced in a
        # heartbeat (by algorithm), when each held one was announced (wall ns), and the count
        # each gateway last reported holding (with when it came)
        self._to_arm: list[tuple[str, ArmedHalt]] = []
        self._announced: dict[str, int] = {}
        self._armed_reports: dict[str, tuple[int, int]] = {}
        self.rearmed = 0
        self.presigned_used = 0
        # halts sent from the ingest path: their replies come to <_ack_prefix>.<command id>
        self._ack_prefix: str | None = None
        self._ack_sub: Subscription | None = None
        self._fired_acks: dict[str, asyncio.Future[Msg]] = {}
        self.fired_used = 0
        # writes a command on a socket at once, no await (the market-data wire connection's:
        # ``fire_halt_direct``); returns False when it cannot
        self.direct: DirectWrite | None = None
        self.fired_direct = 0
        # high availability (docs/ha.md): the leadership term every command carries, and
        # whether this process was deposed (then it sends nothing at all)
        self.term = 0
        self.fenced = False

    # ---- halts signed in advance ----------------------------------------------------------

    def observe(self, actual: Iterable[AlgoActual]) -> None:
        """A gateway's report of what it holds: every command made from now on has a newer
        epoch than any it reports, and a halt signed in advance with an older epoch than its
        halt decision is dropped (it would be refused as ``stale_epoch``)."""
        for a in actual:
            for epoch in a.epochs.values():
                self.epochs.observe(epoch)
            halt = a.epochs.get("halt")
            if halt is not None:
                self.note_halt_epoch((a.algo,), halt)

    def _judge_ack(self, data: bytes, pending: set[str]) -> tuple[set[str], str, bool, bool]:
        """``_judge_ack``, with the epochs a ``stale_epoch`` refusal says the gateway holds
        observed (the next command, the reconciler's or a retry's, goes past them), and
        whether every target left was refused for a decision this process never made (an
        earlier run's, whose clock was ahead of this one's)."""
        still, detail, final, results = _judge_ack(data, pending)
        foreign = bool(still)
        for r in results:
            if r.algo not in still:
                continue
            if r.status == "stale_epoch" and r.held_epoch is not None:
                foreign = foreign and not self.epochs.issued_here(r.held_epoch)
                self.epochs.observe(r.held_epoch)
            else:
                foreign = False
        return still, detail, final, foreign

    def note_halt_epoch(self, algos: Iterable[str], epoch: int) -> None:
        """A halt or resume of ``algos`` with ``epoch`` is decided (or sent): every halt signed
        in advance with an older epoch is dropped."""
        for a in algos:
            if epoch > self._halt_floor.get(a, -1):
                self._halt_floor[a] = epoch
            held = self._presigned.get(a)
            if held is not None and held.command.epoch < epoch:
                del self._presigned[a]
                self._announced.pop(a, None)

    def presign(self, algo: str) -> None:
        """Encode and sign a halt of ``algo`` now, valid ``presign_validity`` from now, with an
        epoch newer than any halt or resume made for it so far; armed: its commitment goes to
        the gateway in the next heartbeat (``take_armed``), so the gateway accepts it by a
        SHA-256 instead of an Ed25519 verification (docs/protocol.md, "Armed halts")."""
        validity = self.settings.presign_validity
        if validity <= 0:
            return
        held = self._encode_halt(algo, self.gateway_of(algo), validity, arm=True)
        self._presigned[algo] = held
        self._announced.pop(algo, None)
        if held.armed is not None:
            self._to_arm.append((algo, held.armed))
            if len(self._to_arm) > MAX_ARMED:  # no heartbeat takes them (NATS down)
                del self._to_arm[: len(self._to_arm) - MAX_ARMED]

    def take_armed(self, limit: int = 1024) -> list[ArmedHalt]:
        """The commitments of halts signed in advance since the last call (at most ``limit``;
        the rest wait for the next), for the sidecar heartbeat."""
        taken, self._to_arm = self._to_arm[:limit], self._to_arm[limit:]
        now = self.wall_clock()
        out = []
        for algo, armed in taken:
            held = self._presigned.get(algo)
            if held is not None and held.armed is armed and armed.valid_until > now:
                self._announced[algo] = now
                out.append(armed)
        return out

    def note_armed_report(self, gateway: str, count: int) -> None:
        """``gateway`` says it holds ``count`` armed halts (its heartbeat)."""
        self._armed_reports[gateway] = (count, self.wall_clock())

    def rearm(self, gateways: Iterable[str]) -> None:
        """Announce every armed halt of ``gateways`` again with the next heartbeat (a gateway
        that appeared, restarted or missed a heartbeat)."""
        wanted = set(gateways)
        for algo, held in self._presigned.items():
            if held.gateway in wanted and held.armed is not None:
                self._announced.pop(algo, None)
                self._to_arm.append((algo, held.armed))
        self.rearmed += len(wanted)

    def rearm_lost(self, grace: float = 0.25) -> list[str]:
        """The gateways holding fewer armed halts than were announced to them ``grace``
        (the two transit times) before their last report: ``rearm``. Returns them."""
        grace_ns = int(grace * 1e9)
        expected: dict[str, int] = defaultdict(int)
        for algo, held in self._presigned.items():
            at = self._announced.get(algo)
            report = self._armed_reports.get(held.gateway)
            if at is not None and report is not None and at < report[1] - grace_ns:
                expected[held.gateway] += 1
        lost = sorted(gw for gw, n in expected.items() if self._armed_reports[gw][0] < n)
        if lost:
            log.info("armed halts announced again to %s: fewer held than announced", lost)
            self.rearm(lost)
        return lost

    def _encode_halt(
        self, algo: str, gateway: str, validity: float, *, arm: bool = False
    ) -> PresignedHalt:
        now = self.wall_clock()
        cmd = Command(
            command_id=uuid.uuid4().hex,
            epoch=self.epochs.next(),
            kind="halt",
            targets=[CommandTarget(algo=algo)],
            issued_at=now,
            valid_until=now + int(validity * 1e9),
            reason=PRESIGNED_REASON,
            term=self.term,
        )
        payload = encoder.encode(cmd)
        subject = self.subjects.command(gateway)
        headers = self.sign(subject, payload) if self.sign is not None else None
        armed = None
        if arm and headers is not None:
            reveal = os.urandom(32)
            headers = {**headers, REVEAL_HEADER: b64url(reveal)}
            commit = armed_commit(reveal, subject, payload)
            armed = ArmedHalt(gateway=gateway, commit=commit, valid_until=cmd.valid_until)
        return PresignedHalt(gateway, cmd, payload, headers, armed)

    def needs_presign(self, algo: str) -> bool:
        """No usable signed halt, or less than half its validity left."""
        held = self._presigned.get(algo)
        if held is None:
            return self.settings.presign_validity > 0
        left = held.command.valid_until - self.wall_clock()
        return left < self.settings.presign_validity * 1e9 / 2

    def _take_presigned(self, algo: str, gateway: str, deadline: float) -> PresignedHalt | None:
        held = self._presigned.pop(algo, None)
        self._announced.pop(algo, None)
        if held is None or held.gateway != gateway:
            return None
        if held.command.epoch < self._halt_floor.get(algo, -1):
            return None
        # it must stay valid for as long as the step may send it
        if held.command.valid_until - self.wall_clock() < deadline * 1e9:
            return None
        return held

    async def presign_loop(
        self, algos: Callable[[], Iterable[str]], interval: float = 0.25
    ) -> None:
        """Keep a signed halt ready for every algorithm: at most 32 signatures per pass (~0.5 ms
        of the event loop), every ``interval``."""
        passes = 0
        while not self._closing:
            passes += 1
            if passes % 4 == 0:  # every ~1 s: a gateway that lost its armed halts gets them
                self.rearm_lost()
            signed = 0
            for a in algos():
                if signed >= 32:
                    break
                if self.needs_presign(a):
                    try:
                        self.presign(a)
                    except Exception as e:  # never fatal: the halt is then signed when sent
                        log.error("cannot sign a halt of %s in advance: %s", a, e)
                    signed += 1
            await asyncio.sleep(interval)

    # ---- halts sent from the ingest path --------------------------------------------------

    async def start_fast_acks(self) -> None:
        """Subscribe to the replies of halts sent by ``fire_halt`` (one wildcard subscription
        in this connection's inbox space, so a role's ``inbox_prefix`` permissions hold)."""
        if self._ack_sub is None:
            self._ack_prefix = self.nc.new_inbox()
            self._ack_sub = await self.nc.subscribe(f"{self._ack_prefix}.*", cb=self._on_fast_ack)

    async def _on_fast_ack(self, msg: Msg) -> None:
        fut = self._fired_acks.pop(msg.subject.rpartition(".")[2], None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def fire_halt(self, algo: str) -> FiredHalt | None:
        """Publish a halt of ``algo`` now, from the caller's own step (the ingest path), before
        any task runs: its halt signed in advance, or one encoded and signed here. The rollback
        that follows waits for its ack (``RollbackRequest.fired``). ``None`` when it could not be
        sent (no reply subscription, NATS refused the publish): the rollback sends it then."""
        ready = self._ready_to_fire(algo)
        if ready is None:
            return None
        gateway, held, reply, sent_at = ready
        try:
            await self.nc.publish(
                self.subjects.command(gateway), held.payload, reply=reply, headers=held.headers
            )
        except Exception as e:  # NATS down, buffer full: the rollback's halt step sends it
            self._not_fired(algo, held, e)
            return None
        return self._fired(gateway, held, sent_at)

    def fire_halt_direct(self, algo: str) -> FiredHalt | None:
        """``fire_halt`` without awaiting anything: the halt is written by ``direct`` (the
        market-data wire connection's socket, docs/protocol.md "The wire path") in the caller's
        own call, before any task or nats-py's flusher runs. The ack comes back on this
        executor's reply subscription as for ``fire_halt``. ``None`` when there is no direct
        writer or it could not write: the caller sends it the usual way."""
        direct = self.direct
        if direct is None:
            return None
        ready = self._ready_to_fire(algo)
        if ready is None:
            return None
        gateway, held, reply, sent_at = ready
        try:
            written = direct(self.subjects.command(gateway), held.payload, reply, held.headers)
        except Exception as e:
            self._not_fired(algo, held, e)
            return None
        if not written:
            self._not_fired(algo, held, "the market-data connection is down")
            return None
        self.fired_direct += 1
        return self._fired(gateway, held, sent_at)

    def _ready_to_fire(self, algo: str) -> tuple[str, PresignedHalt, str, int] | None:
        """The halt to fire (signed in advance, or now), its ack awaited under its reply."""
        if self._ack_prefix is None or self._closing or self.fenced:
            return None
        gateway = self.gateway_of(algo)
        deadline = self.settings.step_deadline["halt"]
        held = self._take_presigned(algo, gateway, deadline)
        if held is not None:
            self.presigned_used += 1
        else:
            held = self._encode_halt(algo, gateway, deadline)
        self.note_halt_epoch((algo,), held.command.epoch)
        token = held.command.command_id
        self._fired_acks[token] = asyncio.get_running_loop().create_future()
        return gateway, held, f"{self._ack_prefix}.{token}", self.monotonic()

    def _not_fired(self, algo: str, held: PresignedHalt, why: object) -> None:
        self._fired_acks.pop(held.command.command_id, None)
        log.warning("could not send the halt of %s from the ingest path: %s", algo, why)

    def _fired(self, gateway: str, held: PresignedHalt, sent_at: int) -> FiredHalt:
        ack = self._fired_acks[held.command.command_id]
        self.fired_used += 1
        return FiredHalt(gateway, held.command, held.payload, held.headers, ack, sent_at)

    def drop_fired(self, fired: FiredHalt) -> None:
        """A fired halt no rollback will wait for (its algorithm was already rolling back)."""
        self._fired_acks.pop(fired.command.command_id, None)

    async def _await_fired(self, fired: FiredHalt, deadline: float) -> StepOutcome:
        """The halt step of a halt sent by ``fire_halt``: its ack within one attempt's timeout;
        otherwise (no answer, an error) the same command is requested again as ``send`` does
        until ``deadline`` from when it was fired."""
        pending = {t.algo for t in fired.command.targets}
        timeout = self.settings.attempt_timeout + self.settings.per_target * len(pending)
        detail = f"no ack from gateway {fired.gateway} within {timeout * 1000:.0f} ms"
        # what is requested next: the fired command again (as ``send`` does), or a newer halt
        command = fired.command
        encoded: tuple[bytes, dict[str, str] | None] | None = (fired.payload, fired.headers)
        newer = False
        try:
            reply = await asyncio.wait_for(asyncio.shield(fired.ack), timeout)
            if reply.headers and reply.headers.get("Status") == "503":
                raise NoRespondersError
            pending, detail, final, foreign = self._judge_ack(reply.data, pending)
            if not pending:
                return StepOutcome(True, 1, self.monotonic() - fired.sent_at, "", [])
            newer = final and foreign and _reduces(fired.command)
            if final and not newer:
                return StepOutcome(
                    False, 1, self.monotonic() - fired.sent_at, detail, sorted(pending)
                )
        except TimeoutError:
            pass
        except NoRespondersError:
            subject = self.subjects.command(fired.gateway)
            detail = f"gateway {fired.gateway} is not listening on {subject}"
        except msgspec.DecodeError as e:
            detail = f"unreadable ack from gateway {fired.gateway}: {e}"
        finally:
            self.drop_fired(fired)
        left = deadline - (self.monotonic() - fired.sent_at) / 1e9
        if newer:  # refused for an earlier run's decision: a newer halt, at once
            left = max(left, 0.001)
            command, encoded = self._newer(command, pending, left), None
        elif left <= 0:
            return StepOutcome(False, 1, self.monotonic() - fired.sent_at, detail, sorted(pending))
        again = await self.send(fired.gateway, command, left, encoded, reepoched=newer)
        return StepOutcome(
            again.ok,
            again.attempts + 1,
            self.monotonic() - fired.sent_at,
            again.detail,
            again.failed,
        )

    # ---- one command, one gateway --------------------------------------------------------

    def _newer(self, command: Command, pending: set[str], deadline: float) -> Command:
        """``command`` again for its ``pending`` targets with a new epoch: refused for a
        decision this process never made (an earlier run's, its clock ahead of this one's)."""
        targets = [t for t in command.targets if t.algo in pending]
        log.warning(
            "%s of %s sent again with a newer epoch than an earlier run's",
            command.kind,
            ", ".join(t.algo for t in targets),
        )
        return self.command(command.kind, targets, self.epochs.next(), deadline, command.reason)

    def command(
        self, kind: CommandKind, targets: list[CommandTarget], epoch: int, deadline: float, why: str
    ) -> Command:
        if kind in ("halt", "resume"):
            self.note_halt_epoch((t.algo for t in targets), epoch)
        now = self.wall_clock()
        return Command(
            command_id=uuid.uuid4().hex,
            epoch=epoch,
            kind=kind,
            targets=targets,
            issued_at=now,
            valid_until=now + int(deadline * 1e9),
            reason=why,
            term=self.term,
        )

    async def send(
        self,
        gateway: str,
        command: Command,
        deadline: float,
        encoded: tuple[bytes, dict[str, str] | None] | None = None,
        *,
        reepoched: bool = False,
    ) -> StepOutcome:
        """Request ``command`` from ``gateway`` until every target is acked or ``deadline``.
        ``encoded``: its payload and signature headers, made in advance. ``reepoched``: it
        was made newer than an earlier run's decision already (not again)."""
        subject = self.subjects.command(gateway)
        if encoded is not None:
            payload, headers = encoded
        else:
            payload = encoder.encode(command)
            headers = self.sign(subject, payload) if self.sign is not None else None
        start = self.monotonic()
        stop_at = start + int(deadline * 1e9)
        attempts = 0
        pending = {t.algo for t in command.targets}
        attempt_timeout = self.settings.attempt_timeout + self.settings.per_target * len(pending)
        detail = "no answer"
        while True:
            if self.fenced:
                return StepOutcome(
                    False,
                    attempts,
                    self.monotonic() - start,
                    "this Rampart no longer leads its shard: it sends nothing",
                    sorted(pending),
                )
            attempts += 1
            remaining = (stop_at - self.monotonic()) / 1e9
            timeout = max(min(attempt_timeout, remaining), 0.001)
            try:
                reply = await self.nc.request(subject, payload, timeout=timeout, headers=headers)
                pending, detail, final, foreign = self._judge_ack(reply.data, pending)
                if final and foreign and not reepoched and _reduces(command):
                    # refused for a decision this process never made (an earlier run's, its
                    # clock ahead of this one's): a halt, standby or allocation 0 is sent again,
                    # newer than it (anything else waits for the reconciler's next command)
                    reepoched = True
                    left = max((stop_at - self.monotonic()) / 1e9, 0.001)
                    command = self._newer(command, pending, left)
                    payload = encoder.encode(command)
                    headers = self.sign(subject, payload) if self.sign is not None else None
                    continue
                if final:
                    # the gateway answered and will answer the same to the same command: a
                    # superseded epoch, an expiry, an invalid target. Report it, do not resend.
                    return StepOutcome(
                        False, attempts, self.monotonic() - start, detail, sorted(pending)
                    )
                if pending:  # an error at the gateway: pause before trying again
                    await asyncio.sleep(min(0.01, max(remaining, 0.0)))
            except (TimeoutError, NatsTimeoutError):
                detail = (
                    f"no ack from gateway {gateway} within {deadline * 1000:.0f} ms "
                    f"({attempts} attempt{'s' if attempts != 1 else ''})"
                )
            except NoRespondersError:
                detail = f"gateway {gateway} is not listening on {subject}"
                # answered at once: pause briefly instead of spinning
                await asyncio.sleep(min(0.005, max(remaining, 0.0)))
            except msgspec.DecodeError as e:
                detail = f"unreadable ack from gateway {gateway}: {e}"
            except Exception as e:  # NATS down, buffer full, closed: retried, never fatal
                detail = f"cannot reach gateway {gateway}: {type(e).__name__}: {e}"
                await asyncio.sleep(min(0.01, max(remaining, 0.0)))
            if not pending:
                return StepOutcome(True, attempts, self.monotonic() - start, "", [])
            if self.monotonic() >= stop_at:
                return StepOutcome(
                    False, attempts, self.monotonic() - start, detail, sorted(pending)
                )

    async def broadcast(
        self,
        kind: CommandKind,
        algos: Iterable[str],
        reason: str,
        *,
        deadline: float,
        epoch: int | None = None,
    ) -> dict[str, StepOutcome]:
        """Send one command kind to every gateway of ``algos`` at once, with ``epoch`` (the
        decision's, taken when it was made) or a new one."""
        if epoch is None:
            epoch = self.epochs.next()
        by_gateway = _group(algos, self.gateway_of)

        async def one(gw: str, members: list[str]) -> StepOutcome:
            targets = [CommandTarget(algo=a) for a in members]
            return await self.send(
                gw, self.command(kind, targets, epoch, deadline, reason), deadline
            )

        outcomes = await asyncio.gather(*(one(gw, m) for gw, m in by_gateway.items()))
        return dict(zip(by_gateway, outcomes, strict=True))

    async def set_allocation(
        self, algo: str, allocation: float, reason: str, *, deadline: float
    ) -> StepOutcome:
        """One algorithm's allocation (a fraction of its capital), with a new epoch."""
        target = [CommandTarget(algo=algo, allocation=allocation)]
        cmd = self.command("set_allocation", target, self.epochs.next(), deadline, reason)
        return await self.send(self.gateway_of(algo), cmd, deadline)

    # ---- a whole rollback --------------------------------------------------------------------

    async def execute(self, req: RollbackRequest, rollback_id: str | None = None) -> RollbackRecord:
        """Run every step for every gateway; returns the record with measured durations."""
        started_at = self.wall_clock()
        t0 = self.monotonic()
        epoch = self.epochs.next()
        why = f"{req.trigger}: {req.reason}"
        by_gateway = _group(req.algos, self.gateway_of)
        previous_by_gateway = _group(
            [req.previous[a] for a in req.algos if a in req.previous], self.gateway_of
        )
        gateways = sorted(set(by_gateway) | set(previous_by_gateway))
        per_gateway = await asyncio.gather(
            *(
                self._gateway_rollback(
                    gw, by_gateway.get(gw, []), previous_by_gateway.get(gw, []), req, epoch, why
                )
                for gw in gateways
            )
        )
        total_ns = self.monotonic() - t0
        steps = _merge_steps(per_gateway)
        ok = all(s.status == "acked" for s in steps)
        record = RollbackRecord(
            rollback_id=rollback_id or uuid.uuid4().hex,
            algos=list(req.algos),
            scope=req.scope,
            trigger=req.trigger,
            reason=req.reason,
            actor=req.actor,
            started_at=started_at,
            finished_at=self.wall_clock(),
            state="succeeded" if ok else "failed",
            steps=[
                *steps,
                StepRecord(
                    name="total",
                    status="acked" if ok else "failed",
                    attempts=1,
                    duration_ns=total_ns,
                    detail="",
                ),
            ],
            target_ms=dict(TARGET_MS),
        )
        if not ok:
            self._retry_failed(record.rollback_id, req, epoch, why, per_gateway)
        return record

    async def _gateway_rollback(
        self,
        gateway: str,
        algos: list[str],
        previous: list[str],
        req: RollbackRequest,
        epoch: int,
        why: str,
    ) -> dict[str, tuple[StepOutcome, Command]]:
        s = self.settings.step_deadline
        out: dict[str, tuple[StepOutcome, Command]] = {}

        async def step(name: str, kind: CommandKind, targets: list[CommandTarget]) -> None:
            cmd = self.command(kind, targets, epoch, s[name], why)
            out[name] = (await self.send(gateway, cmd, s[name]), cmd)

        targets = [CommandTarget(algo=a) for a in algos]
        fired = req.fired.get(algos[0]) if len(algos) == 1 else None
        held = None
        if fired is None and len(algos) == 1:
            held = self._take_presigned(algos[0], gateway, s["halt"])
        if fired is not None and fired.gateway == gateway:
            # sent from the ingest path already: only its ack is waited for
            out["halt"] = (await self._await_fired(fired, s["halt"]), fired.command)
        elif held is not None:
            # the halt leaves already encoded and signed; the next commands carry the reason
            self.presigned_used += 1
            encoded = (held.payload, held.headers)
            out["halt"] = (await self.send(gateway, held.command, s["halt"], encoded), held.command)
        elif targets:
            await step("halt", "halt", targets)

        async def cancel_then_flatten() -> None:
            await step("cancel", "cancel_all", targets)
            if req.flatten:
                await step("flatten", "flatten", targets)

        parallel = []
        if targets:
            parallel.append(cancel_then_flatten())
            parallel.append(
                step(
                    "allocate",
                    "set_allocation",
                    [CommandTarget(algo=a, allocation=0.0) for a in algos],
                )
            )
        if previous:
            parallel.append(step("activate", "activate", [CommandTarget(algo=a) for a in previous]))
        await asyncio.gather(*parallel)
        return out

    def _retry_failed(
        self,
        rollback_id: str,
        req: RollbackRequest,
        epoch: int,
        why: str,
        per_gateway: list[dict[str, tuple[StepOutcome, Command]]],
    ) -> None:
        """Keep re-sending failed steps (fresh command ids, same epoch) until acked or
        ``cancel_retries()``: success is never assumed, and never given up on silently."""
        by_gateway = _group(req.algos, self.gateway_of)
        prev_gw = _group([req.previous[a] for a in req.algos if a in req.previous], self.gateway_of)
        gateways = sorted(set(by_gateway) | set(prev_gw))
        for gw, steps in zip(gateways, per_gateway, strict=True):
            for name, (outcome, cmd) in steps.items():
                if not outcome.ok and name in self.settings.retried_steps:
                    task = asyncio.ensure_future(
                        self._retry(gw, name, cmd, outcome.failed, epoch, why)
                    )
                    task.set_name(f"retry-{name}-{gw}-{rollback_id}")
                    self._retries.add(task)
                    task.add_done_callback(self._retries.discard)

    async def _retry(
        self, gateway: str, name: str, cmd: Command, failed: list[str], epoch: int, why: str
    ) -> None:
        targets = [t for t in cmd.targets if t.algo in failed]
        deadline = self.settings.step_deadline[name]
        attempt = 0
        while not self._closing:  # (a cancellation nats-py swallowed still ends the loop)
            await asyncio.sleep(self.settings.retry_interval)
            attempt += 1
            retry = self.command(cmd.kind, targets, epoch, deadline, why)
            outcome = await self.send(gateway, retry, deadline)
            if outcome.ok:
                log.warning("rollback step %s on %s acked after %d retries", name, gateway, attempt)
                return
            if "stale_epoch" in outcome.detail or "expired" in outcome.detail:
                # a later decision of the same kind was applied, or the gateway could not take it
                # in time: this one is superseded (the reconciler drives the algorithm to what
                # Rampart wants now, with fresh commands)
                log.warning("rollback step %s on %s superseded: %s", name, gateway, outcome.detail)
                return
            targets = [t for t in targets if t.algo in outcome.failed]
            if attempt == 1 or attempt % 20 == 0:
                log.error(
                    "rollback step %s on %s still failing (retry %d): %s",
                    name,
                    gateway,
                    attempt,
                    outcome.detail,
                )

    @property
    def retrying(self) -> int:
        return len(self._retries)

    def retrying_for(self, rollback_id: str) -> bool:
        """Is a step of this rollback still being retried (not acked yet)?"""
        return any(t.get_name().endswith(f"-{rollback_id}") for t in self._retries)

    async def cancel_retries(self) -> None:
        """Stop every background retry (on shutdown). Bounded: a retry whose cancellation was
        swallowed inside a request (``wait_for`` on Python 3.11) ends at its next turn, and one
        that does not within 2 s is left behind with a warning rather than hanging shutdown."""
        self._closing = True
        # a rollback waiting for a fired halt's ack goes on as if none came (it requests the
        # halt again and finishes its steps): its futures are forgotten, never cancelled
        self._fired_acks.clear()
        tasks = list(self._retries)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=2.0)
            if pending:
                log.warning("%d rollback retries did not stop in 2 s", len(pending))


def _group(algos: Iterable[str], gateway_of: Callable[[str], str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for a in algos:
        out[gateway_of(a)].append(a)
    return dict(out)


def _reduces(command: Command) -> bool:
    """A command that only takes away: a halt, a standby, an allocation of 0."""
    if command.kind == "set_allocation":
        return all(t.allocation == 0.0 for t in command.targets)
    return command.kind in ("halt", "standby")


def _unacked(results: list[TargetResult], pending: set[str]) -> tuple[set[str], str]:
    still = set(pending)
    problems = []
    for r in results:
        if r.algo not in still:
            continue
        if r.status in ("applied", "duplicate"):
            still.discard(r.algo)
        else:
            problems.append(f"{r.algo}: {r.status}{' (' + r.detail + ')' if r.detail else ''}")
    return still, "; ".join(problems) or "some targets not acked"


def _judge_ack(data: bytes, pending: set[str]) -> tuple[set[str], str, bool, list[TargetResult]]:
    """A gateway's ack of a command, for the targets still ``pending``: those it did not ack
    yet, what it said of them, whether that is final (it answers the same to the same
    command: a superseded epoch, an expiry, an invalid target; resending cannot help), and
    the results. Raises ``msgspec.DecodeError`` for an unreadable ack."""
    ack = command_ack_decoder.decode(data)
    still, detail = _unacked(ack.results, pending)
    final = bool(still) and {r.status for r in ack.results if r.algo in still} <= FINAL_REFUSALS
    return still, detail, final, ack.results


def _merge_steps(per_gateway: list[dict[str, tuple[StepOutcome, Command]]]) -> list[StepRecord]:
    """One record per step over all gateways: acked only if acked everywhere; the slowest
    gateway's duration."""
    steps = []
    for name in STEP_NAMES:
        outcomes = [g[name][0] for g in per_gateway if name in g]
        if not outcomes:
            continue
        ok = all(o.ok for o in outcomes)
        steps.append(
            StepRecord(
                name=name,
                status="acked" if ok else "failed",
                attempts=sum(o.attempts for o in outcomes),
                duration_ns=max(o.duration_ns for o in outcomes),
                detail="; ".join(o.detail for o in outcomes if o.detail),
            )
        )
    return steps
