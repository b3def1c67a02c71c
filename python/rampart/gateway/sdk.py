"""What a gateway embeds to obey Rampart: ``GatewayAgent`` plus the ``GatewayHandlers`` it calls.

The agent subscribes to the gateway's command subject, applies each command once (dedup by command
id, expired and stale commands refused, halt beats resume), acks every target, publishes the
gateway's heartbeat with its health, and runs the dead-man's switch: when Rampart's own heartbeat
stops for ``deadman_timeout``, it halts every algorithm the gateway hosts (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from rampart import nats_flush
from rampart.config import NatsConfig
from rampart.gateway.commands import (
    AlgoControl,
    CommandBook,
    DeadMansSwitch,
    fits,
    refusal_detail,
)
from rampart.gateway.outbox import Outbox
from rampart.protocol import (
    HEARTBEAT_VERSION,
    Command,
    CommandAck,
    CommandKind,
    CommandStatus,
    CommandTarget,
    ErrorReply,
    Health,
    HeartbeatFrame,
    PositionFrame,
    Subjects,
    TargetResult,
    command_decoder,
    encoder,
    sidecar_heartbeat_decoder,
)
from rampart.signing import Verifier
from rampart.wire import WireMessages, WireMsg

log = logging.getLogger("rampart.gateway")

# the command kinds whose handler takes the algorithm alone (``set_allocation`` takes its value)
ONE_ALGO_KINDS: frozenset[str] = frozenset(
    {"halt", "resume", "cancel_all", "flatten", "activate", "standby"}
)


# Commands are applied in order within a lane and concurrently across lanes: a halt never waits
# behind a cancel-all whose venue is slow, and a rollback's cancel-all, allocation 0 and
# activation, which arrive together, are applied together. Within a lane the order is Rampart's
# (a halt then a resume, a cancel-all then a flatten); lanes are the epoch dimensions of
# rampart.gateway.commands.DIMENSIONS, plus orders (cancel-all, flatten: always safe to apply).
# Within a lane the order is kept per algorithm only: a halt of one algorithm never waits behind
# a resume of another that the venue is slow to apply, nor an allocation behind another's.
LANES: dict[CommandKind, str] = {
    "halt": "halt",
    "resume": "halt",
    "set_allocation": "allocation",
    "activate": "activation",
    "standby": "activation",
    "cancel_all": "orders",
    "flatten": "orders",
}


# Verified messages of one subject waiting on the wire connection, at most (beyond: dropped,
# counted, logged; nats-py's own pending limit plays this part on the other path).
MAX_WIRE_QUEUE = 10_000
# Commands waiting in one lane, at most (beyond: dropped unacked, so Rampart resends them;
# halts and resumes are never dropped).
MAX_LANE_QUEUE = 10_000


class _InOrder:
    """Commands applied in order per algorithm: each waits for the earlier ones that share an
    algorithm with it, none for the others. ``tails``: the last command of each algorithm not
    done yet (its future, done when it is); ``pending``: how many wait or run."""

    def __init__(self) -> None:
        self.tails: dict[str, asyncio.Future[None]] = {}
        self.pending = 0

    def enter(self, command: Command) -> tuple[set[asyncio.Future[None]], asyncio.Future[None]]:
        """(the earlier commands of its algorithms still to finish, its own completion)."""
        algos = [t.algo for t in command.targets]
        tails = self.tails
        before = {f for a in algos if (f := tails.get(a)) is not None} if tails else set()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        tails.update(dict.fromkeys(algos, done))
        self.pending += 1
        return before, done

    def leave(self, command: Command, done: asyncio.Future[None]) -> None:
        if not done.done():
            done.set_result(None)
        if self.pending == 1:  # the only one waiting or running: every tail is it
            self.tails.clear()
        else:
            tails = self.tails
            for t in command.targets:
                if tails.get(t.algo) is done:
                    del tails[t.algo]
        self.pending = max(self.pending - 1, 0)

    def of(self, command: Command) -> set[asyncio.Future[None]]:
        """The commands of ``command``'s algorithms not done yet."""
        tails = self.tails
        if not tails:
            return set()
        return {f for t in command.targets if (f := tails.get(t.algo)) is not None}

    def clear(self) -> None:
        self.tails.clear()
        self.pending = 0


class GatewayHandlers:
    """Override these with what your gateway does. Each returns once the action is done and
    raises to report a failure (the agent acks it as ``error`` with the exception's message)."""

    async def halt(self, algo: str) -> None:
        raise NotImplementedError

    async def resume(self, algo: str) -> None:
        raise NotImplementedError

    async def cancel_all(self, algo: str) -> None:
        raise NotImplementedError

    async def flatten(self, algo: str) -> None:
        raise NotImplementedError

    async def set_allocation(self, algo: str, allocation: float) -> None:
        raise NotImplementedError

    async def activate(self, algo: str) -> None:
        raise NotImplementedError

    async def standby(self, algo: str) -> None:
        raise NotImplementedError

    async def apply_batch(
        self, kind: CommandKind, targets: list[CommandTarget]
    ) -> dict[str, BaseException]:
        """Apply one command to several algorithms (a rollback of a whole gateway sends one
        command for all of them); return the failures by algorithm, the others count as done.
        This default calls the per-algorithm handler of ``kind`` for each target in turn;
        override it where your gateway does a batch in one pass (one venue call, one message),
        and fall back to ``super().apply_batch`` for the kinds you do not batch."""
        failures: dict[str, BaseException] = {}
        if kind == "set_allocation":
            for t in targets:
                try:
                    assert t.allocation is not None  # admit() refuses a missing allocation
                    await self.set_allocation(t.algo, t.allocation)
                except Exception as e:
                    failures[t.algo] = e
            return failures
        if kind not in ONE_ALGO_KINDS:
            raise ValueError(f"unknown command kind {kind!r}")
        handler: Callable[[str], Awaitable[None]] = getattr(self, kind)
        for t in targets:
            try:
                await handler(t.algo)
            except Exception as e:
                failures[t.algo] = e
        return failures

    def health(self) -> Health:
        """Market data connected, order routing operational, risk engine initialised."""
        return Health(market_data=True, order_routing=True, risk_engine=True)

    def algorithms(self) -> list[str]:
        """The algorithms (versions) this gateway hosts: the dead-man's switch halts them all."""
        return []

    def positions(self) -> dict[str, dict[str, float]] | None:
        """Each hosted algorithm's position per symbol (signed quantity), reflecting exactly the
        fills published so far (Rampart compares them with its own: docs/protocol.md,
        "Positions"); ``None``: this gateway does not report positions."""
        return None


class GatewayAgent:
    """Connects a gateway's ``GatewayHandlers`` to Rampart over NATS. ``start()`` / ``close()``."""

    def __init__(
        self,
        nc: Client,
        gateway: str,
        handlers: GatewayHandlers,
        *,
        subjects: Subjects | None = None,
        heartbeat_interval: float = 1.0,
        deadman_timeout: float = 3.0,
        wall_clock: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], int] = time.monotonic_ns,
        outbox: Outbox | None = None,
        trusted_keys: Iterable[str],
        wire_servers: Sequence[str] | None = None,
        wire_nats: NatsConfig | None = None,
    ) -> None:
        self.nc = nc
        # with ``wire_servers``: commands and Rampart's heartbeats on a connection of their own
        # whose bytes Rust parses (rampart.wire; docs/protocol.md, "The wire path"), its acks
        # written on it at once; ``wire_nats``: its credentials and timings (as nats-py's)
        self.wire_servers = list(wire_servers) if wire_servers else None
        self.wire_nats = wire_nats or NatsConfig()
        self.wire: WireMessages | None = None
        # per subject: the messages waiting, handled one at a time in order (as nats-py does)
        self._wire_queues: dict[str, deque[WireMsg]] = {}
        self.wire_dropped = 0  # verified messages dropped past MAX_WIRE_QUEUE
        # the public keys of Rampart's signing key (more than one while it is rotated): a command
        # or a sidecar heartbeat signed by anything else is refused (docs/protocol.md,
        # "Signatures"); read_public_key(data_dir) gives a co-located Rampart's
        self.verifier = Verifier(trusted_keys)
        self.refused_signatures: dict[str, int] = {}
        self._last_sidecar_ts: dict[str, int] = {}  # per boot of Rampart
        # the gateway's durable events: position reports say which of its events they are as of
        self.outbox = outbox
        self.gateway = gateway
        self.handlers = handlers
        self.subjects = subjects or Subjects()
        self.heartbeat_interval = heartbeat_interval
        self.wall_clock = wall_clock
        self.monotonic = monotonic
        self.book = CommandBook()
        self.deadman = DeadMansSwitch(timeout_ns=int(deadman_timeout * 1e9))
        self.deadman_listeners: list[Callable[[], Awaitable[None] | None]] = []
        self.commands_handled = 0
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.lane_dropped = 0  # commands dropped past MAX_LANE_QUEUE (never halts)
        # Rampart's heartbeats that came later than the dead-man timeout, in order (this
        # gateway or the bus was stopped): not counted for the switch, not refused as forged
        self.late_heartbeats = 0
        self._closing = False
        # every lane: in order per algorithm (``_InOrder``)
        self._lines = {lane: _InOrder() for lane in set(LANES.values())}
        self._halt_line = self._lines["halt"]
        self._order_line = self._lines["orders"]

    async def start(self) -> None:
        command, heartbeat = self.subjects.command(self.gateway), self.subjects.sidecar_heartbeat
        if self.wire_servers is not None:
            self.wire = WireMessages(
                self.wire_nats, self.wire_servers, [command, heartbeat], self._on_wire_message
            )
            await self.wire.start()
        else:
            self._subs.append(await self.nc.subscribe(command, cb=self._on_command))
            self._subs.append(await self.nc.subscribe(heartbeat, cb=self._on_sidecar_heartbeat))
        self._spawn(self._heartbeat_loop(), "gateway-heartbeat")
        self._spawn(self._deadman_loop(), "deadman-switch")
        await nats_flush.flush(self.nc)  # the subscriptions are at the server

    async def close(self) -> None:
        # nothing new comes in first, then what runs is stopped (queued commands are not
        # acked: Rampart resends them to whoever serves the gateway next)
        self._closing = True
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        if self.wire is not None:
            await self.wire.close()
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                self._tasks.discard(task)
        for line in self._lines.values():
            line.clear()

    def is_halted(self, algo: str) -> bool:
        return self.book.is_halted(algo)

    # ---- commands -------------------------------------------------------------------------

    def _refuse(self, kind: str, subject: str, why: str) -> None:
        n = self.refused_signatures.get(kind, 0) + 1
        self.refused_signatures[kind] = n
        if n <= 10 or n % 1000 == 0:
            log.critical(
                "%s: refused %s on %s (#%d): %s; it is not from Rampart",
                self.gateway,
                kind,
                subject,
                n,
                why,
            )

    def _on_wire_message(self, msg: WireMsg) -> None:
        """A message of the wire connection, from its ``data_received``: its signature checked
        at once (a forged one is refused here, never queued); a command goes straight into its
        lane, a heartbeat is handled when none of its subject is, else after those before it."""
        command = msg.subject == self.subjects.command(self.gateway)
        refusal = self.verifier.check(msg.subject, msg.data, msg.headers)
        if refusal is not None:
            self._refuse("commands" if command else "heartbeats", msg.subject, refusal)
            return
        if command:  # straight into its lane (the lanes keep the order)
            decoded = self._decode_command(msg)
            if decoded is not None:
                self._enqueue(decoded, msg)
            return
        queue = self._wire_queues.get(msg.subject)
        if queue is not None:
            if len(queue) >= MAX_WIRE_QUEUE:
                self.wire_dropped += 1
                if self.wire_dropped <= 10 or self.wire_dropped % 1000 == 0:
                    log.error(
                        "%s: %d messages of %s wait already: one more dropped (#%d)",
                        self.gateway,
                        len(queue),
                        msg.subject,
                        self.wire_dropped,
                    )
                return
            queue.append(msg)
            return
        self._wire_queues[msg.subject] = deque([msg])
        self._spawn(self._drain_wire(msg.subject), "gateway-wire-heartbeats")

    async def _drain_wire(self, subject: str) -> None:
        """Rampart's heartbeats of the wire connection, one at a time in order."""
        queue = self._wire_queues[subject]
        try:
            while queue:
                msg = queue.popleft()
                try:
                    await self._on_sidecar_heartbeat(msg, verified=True)
                except Exception:
                    log.exception("%s: handling a message on %s failed", self.gateway, subject)
        finally:
            del self._wire_queues[subject]

    async def _on_command(self, msg: Msg | WireMsg, *, verified: bool = False) -> None:
        """A command message: verified (unless ``verified`` already) and decoded at once, then
        applied in its lane (``LANES``) after the commands of that lane before it, while the
        other lanes go on."""
        refusal = None if verified else self.verifier.check(msg.subject, msg.data, msg.headers)
        if refusal is not None:
            # no reply: with NATS's allow_responses, a reply would let the forger make this
            # gateway publish on a subject of its choosing (its reply subject)
            self._refuse("commands", msg.subject, refusal)
            return
        command = self._decode_command(msg)
        if command is not None:
            self._enqueue(command, msg)

    def _decode_command(self, msg: Msg | WireMsg) -> Command | None:
        """The verified message's command; ``None`` for a malformed one (answered with why)."""
        try:
            return command_decoder.decode(msg.data)
        except msgspec.DecodeError as e:
            log.error("%s: refused a malformed command: %s", self.gateway, e)
            if msg.reply:
                reply = encoder.encode(ErrorReply(error=f"malformed command: {e}"))
                self._spawn(msg.respond(reply), "gateway-malformed-reply")
            return None

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{name}-{self.gateway}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _enqueue(self, command: Command, msg: Msg | WireMsg) -> None:
        """Into its lane (``LANES``), behind the earlier commands of its algorithms there."""
        if self._closing:
            return  # not acked: Rampart resends it
        lane = LANES[command.kind]
        if lane == "halt":
            self._enqueue_halt_lane(command, msg)
            return
        line = self._lines[lane]
        if line.pending >= MAX_LANE_QUEUE:
            self._dropped(command, line.pending, f"{lane} commands")  # Rampart resends it
            return
        self._apply_in_line(line, command, msg)

    def _apply_in_line(self, line: _InOrder, command: Command, msg: Msg | WireMsg) -> None:
        before, done = line.enter(command)
        self._spawn(self._apply_in(line, command, msg, before, done), "gateway-commands")

    async def _apply_in(
        self,
        line: _InOrder,
        command: Command,
        msg: Msg | WireMsg,
        before: set[asyncio.Future[None]],
        done: asyncio.Future[None],
    ) -> None:
        """Once ``before`` are done, apply ``command`` and ack it. A cancel-all or flatten
        also waits for a halt or resume of its algorithms still being applied: orders
        cancelled while the algorithm still trades come back."""
        try:
            if before:
                await asyncio.wait(before)
            if line is self._order_line:
                halts = self._halt_line.of(command)
                if halts:
                    await asyncio.wait(halts)
            await self._apply_and_ack(command, msg)
        finally:
            line.leave(command, done)

    def _enqueue_halt_lane(self, command: Command, msg: Msg | WireMsg) -> None:
        """A halt or resume: applied after the earlier ones of the same algorithms, at once
        if none waits. A halt of many algorithms some of which wait (a resume at a slow venue)
        halts the others at once and those after theirs, with one ack for all; a resume of
        many waits for each one's. Resumes beyond ``MAX_LANE_QUEUE`` waiting are dropped
        unacked; halts never are."""
        line = self._halt_line
        if command.kind == "resume" and line.pending >= MAX_LANE_QUEUE:
            self._dropped(command, line.pending, "halts and resumes")
            return
        if command.kind == "halt" and line.tails and len(command.targets) > 1:
            free = [t for t in command.targets if t.algo not in line.tails]
            if free and len(free) < len(command.targets):
                waiting = [t for t in command.targets if t.algo in line.tails]
                loop = asyncio.get_running_loop()
                parts = []
                for targets in (free, waiting):
                    part = msgspec.structs.replace(command, targets=targets)
                    out: asyncio.Future[list[TargetResult] | None] = loop.create_future()
                    before, done = line.enter(part)
                    self._spawn(self._apply_part(part, before, done, out), "halt-part")
                    parts.append(out)
                self._spawn(self._ack_parts(command, msg, parts), "gateway-commands-ack")
                return
        self._apply_in_line(line, command, msg)

    def _dropped(self, command: Command, waiting: int, what: str) -> None:
        self.lane_dropped += 1
        if self.lane_dropped <= 10 or self.lane_dropped % 1000 == 0:
            log.error(
                "%s: %d %s wait already: %s %s dropped (#%d)",
                self.gateway,
                waiting,
                what,
                command.kind,
                command.command_id,
                self.lane_dropped,
            )

    async def _apply_part(
        self,
        part: Command,
        before: set[asyncio.Future[None]],
        done: asyncio.Future[None],
        out: asyncio.Future[list[TargetResult] | None],
    ) -> None:
        """A part of a halt: once ``before`` are done, applied; its results (None: it failed)
        to ``out`` for ``_ack_parts``."""
        try:
            if before:
                await asyncio.wait(before)
            out.set_result(await self._apply(part))
        finally:
            if not out.done():
                out.set_result(None)
            self._halt_line.leave(part, done)

    async def _ack_parts(
        self,
        command: Command,
        msg: Msg | WireMsg,
        parts: list[asyncio.Future[list[TargetResult] | None]],
    ) -> None:
        """One ack for a command applied in parts, once every part is: none if one failed
        (Rampart resends it; what was applied is a duplicate then)."""
        outs = await asyncio.gather(*parts)
        if any(o is None for o in outs):
            return
        by_algo = {r.algo: r for o in outs if o is not None for r in o}
        await self._ack(command, msg, [by_algo[t.algo] for t in command.targets])

    async def _apply_and_ack(self, command: Command, msg: Msg | WireMsg) -> None:
        """``handle`` the command and answer with its results (not acked if it failed)."""
        results = await self._apply(command)
        if results is not None:
            await self._ack(command, msg, results)

    async def _apply(self, command: Command) -> list[TargetResult] | None:
        """``handle`` the command: its results, or None when it failed (logged; not acked:
        Rampart resends it, and a retry applies what did not apply). A handler raising
        ``CancelledError`` is such a failure, unless this task itself is being stopped."""
        try:
            return await self.handle(command)
        except (Exception, asyncio.CancelledError) as e:
            task = asyncio.current_task()
            if isinstance(e, asyncio.CancelledError) and (
                self._closing or (task is not None and task.cancelling())
            ):
                raise  # the lane itself is stopped (close)
            log.exception(
                "%s: %s command %s failed", self.gateway, command.kind, command.command_id
            )
            return None

    async def _ack(self, command: Command, msg: Msg | WireMsg, results: list[TargetResult]) -> None:
        if not msg.reply:
            return
        ack = CommandAck(
            command_id=command.command_id,
            gateway=self.gateway,
            results=results,
            ts=self.wall_clock(),
        )
        try:
            await msg.respond(encoder.encode(ack))
        except Exception as e:  # the link is down: Rampart resends, the retry is a duplicate
            log.warning("%s: ack of %s not sent: %s", self.gateway, command.command_id, e)

    async def handle(self, command: Command) -> list[TargetResult]:
        """Apply one command to each of its targets (concurrently) and say what happened."""
        self.commands_handled += 1
        now = self.wall_clock()
        if not fits(command.term, command.epoch, command.valid_until):
            detail = "term, epoch or valid_until beyond 128 bits: not a command Rampart makes"
            log.error(
                "%s: %s %s refused: %s", self.gateway, command.kind, command.command_id, detail
            )
            return [
                TargetResult(algo=t.algo, status="refused", detail=detail) for t in command.targets
            ]
        self.book.see_term(command.term)  # verified: a newer leader fences the older ones
        results: dict[str, TargetResult] = {}
        # every target judged in one pass (CommandBook.admit_all), applied in one batch
        # (GatewayHandlers.apply_batch: one after another by default, in one pass where the
        # gateway can) and recorded in one pass
        to_apply, refused = self.book.admit_all(command, now)
        if refused:
            self._refused(command, refused, results)
        if to_apply:
            # a resume's algorithms as they stood (halt decisions): the gateway's own halt
            # while the resume is being applied (its dead-man's switch) must win over it
            watched = (
                {t.algo: _halt_state(self.book.control(t.algo)) for t in to_apply}
                if command.kind == "resume"
                else None
            )
            try:
                failures = await self.handlers.apply_batch(command.kind, to_apply)
            except Exception as e:  # the batch as a whole: every target failed
                failures = {t.algo: e for t in to_apply}
            done = [t for t in to_apply if t.algo not in failures]
            if watched is not None:
                done = await self._overtaken_resumes(done, watched, results)
            if done:  # (a command nothing of which applied takes no dedup slot)
                self.book.applied_all(command, done)
            for target in done:
                results[target.algo] = TargetResult(algo=target.algo, status="applied")
            for target in to_apply:
                outcome = failures.get(target.algo)
                if outcome is not None:
                    log.error(
                        "%s: %s %s failed: %s", self.gateway, command.kind, target.algo, outcome
                    )
                    detail = str(outcome) or type(outcome).__name__
                    results[target.algo] = TargetResult(
                        algo=target.algo, status="error", detail=detail
                    )
        if (
            command.kind == "resume"
            and self.deadman.tripped
            and any(r.status == "applied" for r in results.values())
        ):
            self.deadman.reset()  # Rampart is back and has resumed something: re-arm
        return [results[t.algo] for t in command.targets]

    async def _overtaken_resumes(
        self,
        done: list[CommandTarget],
        watched: dict[str, tuple[object, ...]],
        results: dict[str, TargetResult],
    ) -> list[CommandTarget]:
        """Of the algorithms a resume was applied to, those halted by this gateway meanwhile
        (its dead-man's switch, its own risk checks) are halted again and refused: the resume
        came before that halt, which stays. Returns the others (the resume stands)."""
        overtaken = [t for t in done if _halt_state(self.book.control(t.algo)) != watched[t.algo]]
        if not overtaken:
            return done
        try:
            failures = await self.handlers.apply_batch("halt", overtaken)
        except Exception as e:
            failures = {t.algo: e for t in overtaken}
        for t in overtaken:
            cause = self.book.control(t.algo).halt_cause
            detail = f"halted by this gateway ({cause}) while the resume was applied: not resumed"
            results[t.algo] = TargetResult(algo=t.algo, status="refused", detail=detail)
            if t.algo in failures:
                log.critical(
                    "%s: %s resumed after this gateway halted it, and halting it again failed: %s",
                    self.gateway,
                    t.algo,
                    failures[t.algo],
                )
            else:
                log.warning("%s: resume of %s %s", self.gateway, t.algo, detail)
        gone = {t.algo for t in overtaken}
        return [t for t in done if t.algo not in gone]

    def _refused(
        self,
        command: Command,
        refused: dict[str, CommandStatus],
        results: dict[str, TargetResult],
    ) -> None:
        """The results of the targets not applied; one log line per reason (an expired command
        of 1,000 targets is one line, not 1,000)."""
        by_algo = {t.algo: t for t in command.targets}
        logged: dict[str, int] = {}
        for algo, status in refused.items():
            if status == "duplicate":
                results[algo] = TargetResult(algo=algo, status="duplicate")
                continue
            detail = refusal_detail(status, command, by_algo[algo], self.book.term)
            held = self.book.held_epoch(algo, command.kind) if status == "stale_epoch" else None
            results[algo] = TargetResult(algo=algo, status=status, detail=detail, held_epoch=held)
            logged[status] = logged.get(status, 0) + 1
            if logged[status] == 1:
                log.warning("%s: %s %s refused: %s", self.gateway, command.kind, algo, detail)
        for reason, n in logged.items():
            if n > 1:
                log.warning(
                    "%s: %s refused as %s for %d algorithms in all (command %s)",
                    self.gateway,
                    command.kind,
                    reason,
                    n,
                    command.command_id,
                )

    # ---- heartbeats and the dead-man's switch -------------------------------------------------

    async def _on_sidecar_heartbeat(self, msg: Msg | WireMsg, *, verified: bool = False) -> None:
        """Rampart's heartbeat keeps the dead-man's switch from tripping only when Rampart
        signed it, when it is newer than the last one of the same boot of Rampart, and no
        further from this host's clock than the switch's timeout (a recorded heartbeat
        replayed cannot keep it alive)."""
        refusal = None if verified else self.verifier.check(msg.subject, msg.data, msg.headers)
        if refusal is None:
            try:
                hb = sidecar_heartbeat_decoder.decode(msg.data)
            except msgspec.DecodeError as e:
                refusal = f"not a sidecar heartbeat: {e}"
            else:
                last = self._last_sidecar_ts.get(hb.boot)
                age = self.wall_clock() - hb.ts
                if hb.term < self.book.term:
                    # a deposed leader's: it must not keep the switch armed for a shard that
                    # may have nobody leading it (not a forgery: not counted as refused)
                    log.info(
                        "%s: sidecar heartbeat of term %d ignored (term %d seen)",
                        self.gateway,
                        hb.term,
                        self.book.term,
                    )
                    return
                if not fits(hb.term):
                    refusal = f"a term beyond 128 bits ({hb.term}): not a heartbeat Rampart makes"
                elif last is not None and hb.ts <= last:
                    refusal = f"not newer than the last one ({hb.ts} <= {last}): a replay"
                elif last is not None and age > self.deadman.timeout_ns:
                    # signed, in order after the last one of its boot, only late: they waited
                    # while this gateway (or the bus) was stopped. Not counted for the switch,
                    # and not a forgery either (not counted as refused: no security alert)
                    self._last_sidecar_ts[hb.boot] = hb.ts
                    self.late_heartbeats += 1
                    if self.late_heartbeats <= 10 or self.late_heartbeats % 1000 == 0:
                        log.warning(
                            "%s: Rampart's heartbeat arrived %.1fs late (#%d): not counted for "
                            "the dead-man's switch",
                            self.gateway,
                            age / 1e9,
                            self.late_heartbeats,
                        )
                    return
                elif abs(age) > self.deadman.timeout_ns:
                    refusal = (
                        f"stamped {age / 1e9:+.1f}s from this host's clock, more than the "
                        "dead-man timeout: a replay, or clocks out of step"
                    )
                else:
                    # per boot of Rampart (a few kept): a recorded heartbeat of an earlier boot
                    # passes only while it is fresh, so at most once within the timeout
                    self._last_sidecar_ts[hb.boot] = hb.ts
                    self.book.see_term(hb.term)
                    while len(self._last_sidecar_ts) > 8:
                        del self._last_sidecar_ts[next(iter(self._last_sidecar_ts))]
                    # halts Rampart signed in advance for this gateway: accepted, when they
                    # come, by their commitment (docs/protocol.md, "Armed halts")
                    self.verifier.arm(
                        ((a.commit, a.valid_until) for a in hb.armed if a.gateway == self.gateway),
                        self.wall_clock(),
                    )
        if refusal is not None:
            self._refuse("heartbeats", msg.subject, refusal)
            return
        self.deadman.heartbeat(self.monotonic())

    async def _heartbeat_loop(self) -> None:
        subject = self.subjects.heartbeat(self.gateway)
        interval_ms = int(self.heartbeat_interval * 1000)
        cached: tuple[int, list[str], msgspec.Raw] | None = None
        while True:
            if self.nc.is_connected:
                algos = self.handlers.algorithms()
                # the state of every algorithm, encoded again only when it changed
                if cached is None or cached[0] != self.book.version or cached[1] != algos:
                    state = [self.book.report(a) for a in algos]
                    cached = (self.book.version, list(algos), msgspec.Raw(encoder.encode(state)))
                hb = HeartbeatFrame(
                    gateway=self.gateway,
                    ts=self.wall_clock(),
                    health=self.handlers.health(),
                    algos=algos,
                    state=cached[2],
                    interval_ms=interval_ms,
                    positions=self.position_report(),
                    refused_signatures=dict(self.refused_signatures),
                    armed=self.verifier.armed,
                    v=HEARTBEAT_VERSION,
                )
                with contextlib.suppress(Exception):
                    await self.nc.publish(subject, encoder.encode(hb))
            await asyncio.sleep(self.heartbeat_interval)

    def position_report(self) -> PositionFrame | None:
        """The handlers' positions, as of the outbox's last event (taken in one step: no event
        can be put between the two)."""
        positions = self.handlers.positions()
        if positions is None:
            return None
        events = self.outbox.mark() if self.outbox is not None else None
        return PositionFrame(algos=msgspec.Raw(encoder.encode(positions)), events=events)

    async def _deadman_loop(self) -> None:
        period = max(self.deadman.timeout_ns / 1e9 / 10, 0.005)
        while True:
            await asyncio.sleep(period)
            if self.deadman.check(self.monotonic()):
                await self.trip_deadman()

    async def trip_deadman(self) -> None:
        """Halt every hosted algorithm: Rampart has gone silent."""
        algos = self.handlers.algorithms()
        log.critical(
            "%s: no Rampart heartbeat for %.1fs: halting %d algorithms",
            self.gateway,
            self.deadman.timeout_ns / 1e9,
            len(algos),
        )
        for algo in algos:
            self.book.halt_locally(algo)
        results = await asyncio.gather(
            *(self.handlers.halt(a) for a in algos), return_exceptions=True
        )
        for algo, r in zip(algos, results, strict=True):
            if isinstance(r, BaseException):
                log.critical("%s: dead-man's switch could not halt %s: %s", self.gateway, algo, r)
        for listener in self.deadman_listeners:
            out = listener()
            if out is not None:
                await out


def _halt_state(ctl: AlgoControl) -> tuple[object, ...]:
    """What an algorithm's halt decision is: its halt dimension of the command book."""
    return (
        ctl.halted,
        ctl.halt_cause,
        ctl.halt_term,
        ctl.halt_epoch,
        ctl.epochs.get("halt"),
        ctl.terms.get("halt"),
    )
