"""The gateway's command rules as a pure state machine: dedup, expiry, terms, epochs, halt beats
resume.

No I/O: ``CommandBook.admit_all(command, now)`` says which targets the gateway must apply and
why the others are not, and ``applied_all(...)`` remembers what was applied. The rules run in the
Rust core (``rust/rampart-core/src/commands.rs``); the SDK wires them to NATS; they are tested
here, in Rust and in tests/test_gateway_commands.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import msgspec

from rampart import _core
from rampart.protocol import (
    AlgoActual,
    Command,
    CommandKind,
    CommandStatus,
    CommandTarget,
    HaltCause,
)

# Remember this many command ids for dedup (a retry arrives within seconds; this is hours of
# them): the Rust core's DEDUP_CAPACITY.
DEDUP_CAPACITY = 100_000


# Epochs only grow per control dimension: a halt/resume, an allocation and an activation are
# independent decisions, each superseded only by a later one of its own kind. Cancel-all and
# flatten are always safe to apply and have no dimension.
DIMENSIONS: dict[CommandKind, str] = {
    "halt": "halt",
    "resume": "halt",
    "set_allocation": "allocation",
    "activate": "activation",
    "standby": "activation",
}


@dataclass(frozen=True)
class AlgoControl:
    """What the gateway knows about one algorithm's control state (a copy, taken by
    ``CommandBook.control``): what it reports to Rampart in every heartbeat (``report``)."""

    halted: bool = False
    halt_epoch: int = -1
    halt_term: int = 0
    halt_cause: HaltCause | None = None
    # None while nothing has been set since the gateway started.
    allocation: float | None = None
    active: bool | None = None
    # Highest epoch applied per dimension (see DIMENSIONS), and the term it came in: decisions
    # are ordered by (term, epoch), so a newer leader's beat an older one's whatever its clock
    epochs: dict[str, int] = field(default_factory=dict)
    terms: dict[str, int] = field(default_factory=dict)

    def last(self, dim: str) -> tuple[int, int]:
        """(term, epoch) of the last decision applied in ``dim``."""
        return (self.terms.get(dim, 0), self.epochs.get(dim, -1))

    def report(self, algo: str) -> AlgoActual:
        return AlgoActual(
            algo=algo,
            halted=self.halted,
            halt_cause=self.halt_cause if self.halted else None,
            allocation=self.allocation,
            active=self.active,
            epochs=dict(self.epochs),
            terms=dict(self.terms),
        )


class CommandBook:
    """Per-gateway command state, kept in the Rust core (``rampart._core.CommandBook``): a
    command's targets are judged in one call (``admit_all``) and recorded in one call
    (``applied_all``), so a rollback of 1,000 algorithms costs the gateway one message's
    bookkeeping, not 1,000."""

    def __init__(self) -> None:
        self._book = _core.CommandBook()

    @property
    def version(self) -> int:
        """Bumped by every change a report would show (a heartbeat re-encodes its state only
        then)."""
        return self._book.version

    @property
    def term(self) -> int:
        """The newest leadership term seen in a verified command or sidecar heartbeat
        (docs/ha.md)."""
        return self._book.term

    def see_term(self, term: int) -> None:
        """A verified message of ``term``: from now on, what an older term sends is refused."""
        self._book.see_term(term)

    def __contains__(self, algo: str) -> bool:
        """Has a command (or a local halt) touched ``algo``?"""
        return algo in self._book

    def is_halted(self, algo: str) -> bool:
        return self._book.halted(algo)

    def control(self, algo: str) -> AlgoControl:
        """A copy of ``algo``'s control state (the default for one never touched)."""
        r = self._book.report(algo)
        if r is None:
            return AlgoControl()
        halted, cause, allocation, active, last = r
        halt_term, halt_epoch = self._book.halt_decision(algo)
        return AlgoControl(
            halted=halted,
            halt_epoch=halt_epoch,
            halt_term=halt_term,
            halt_cause=cast(HaltCause | None, cause),
            allocation=allocation,
            active=active,
            epochs={d: e for d, _, e in last},
            terms={d: t for d, t, _ in last},
        )

    def admit(self, command: Command, target: CommandTarget, now: int) -> CommandStatus | None:
        """``None`` when the target must be applied now, else its status without applying.

        A retry of a target already applied under the same command id is a ``duplicate`` (checked
        first: a late retry of an applied command is a success, not an expiry). A target that
        failed is applied again when the command is retried.
        """
        _, refused = self.admit_all(msgspec.structs.replace(command, targets=[target]), now)
        return refused.get(target.algo)

    def admit_all(
        self, command: Command, now: int
    ) -> tuple[list[CommandTarget], dict[str, CommandStatus]]:
        """``admit`` for every target of ``command`` in one call: the targets to apply now, in
        order, and the status of the others by algorithm."""
        targets = command.targets
        try:
            apply, refused = self._book.admit(
                command.command_id,
                command.kind,
                command.term,
                command.epoch,
                command.valid_until,
                now,
                [t.algo for t in targets],
                _allocations(command, targets),
            )
        except OverflowError:  # a term, epoch or time beyond 128 bits: not a command of ours
            return [], {t.algo: "refused" for t in targets}
        return (
            [targets[i] for i in apply],
            {targets[i].algo: cast(CommandStatus, status) for i, status in refused},
        )

    def applied(self, command: Command, target: CommandTarget) -> None:
        self.applied_all(command, [target])

    def applied_all(self, command: Command, targets: list[CommandTarget]) -> None:
        """``targets`` of ``command`` were applied: remembered for dedup, and their control state
        moves (one call for a whole command)."""
        self._book.applied(
            command.command_id,
            command.kind,
            command.term,
            command.epoch,
            [t.algo for t in targets],
            _allocations(command, targets),
        )

    def halt_locally(self, algo: str, cause: HaltCause = "deadman") -> None:
        """A halt the gateway decided itself (its dead-man's switch, or its own risk checks):
        only a later resume lifts it, and it is reported with its cause."""
        self._book.halt_locally(algo, cause)

    def allocate_locally(self, algo: str, allocation: float) -> None:
        """An allocation the gateway set itself (its own risk checks cut an algorithm's
        capital): reported as it is, with no epoch moved."""
        self._book.allocate_locally(algo, allocation)

    def held_epoch(self, algo: str, kind: CommandKind) -> int | None:
        """The epoch of the decision ``algo`` holds in ``kind``'s dimension (a halt: the
        newer of the last applied halt-dimension command and the halt decision), None if none."""
        ctl = self.control(algo)
        dim = DIMENSIONS.get(kind, kind)
        held = ctl.epochs.get(dim, -1)
        if dim == "halt":
            held = max(held, ctl.halt_epoch)
        return held if held >= 0 else None

    def report(self, algo: str) -> AlgoActual:
        """The algorithm's actual state as this gateway knows it."""
        return self.control(algo).report(algo)


I128_MIN, I128_MAX = -(2**127), 2**127 - 1


def fits(*values: int) -> bool:
    """Do these integers fit the Rust rules' 128 bits? (msgspec decodes any size; Rampart's
    terms, epochs and times are far inside.)"""
    return all(I128_MIN <= v <= I128_MAX for v in values)


def _allocations(command: Command, targets: list[CommandTarget]) -> list[float | None] | None:
    if command.kind != "set_allocation":
        return None
    return [t.allocation for t in targets]


def refusal_detail(
    status: CommandStatus, command: Command, target: CommandTarget, term: int = 0
) -> str:
    if status == "stale_term":
        return (
            f"term {command.term} is older than term {term} this gateway has seen: sent by a "
            "Rampart that no longer leads"
        )
    if status == "expired":
        return f"received after valid_until {command.valid_until}"
    if status == "stale_epoch":
        return (
            f"epoch {command.epoch} is older than the algorithm's last applied "
            f"{DIMENSIONS.get(command.kind, command.kind)} decision"
        )
    return f"allocation must be in [0, 1], got {target.allocation}"


@dataclass
class DeadMansSwitch:
    """Trips when no sidecar heartbeat has been seen for ``timeout_ns`` (times are monotonic ns).

    It arms on the first heartbeat: a gateway started before Rampart is not halted for that.
    Once tripped it stays tripped until ``reset()``: heartbeats coming back do not resume trading.
    """

    timeout_ns: int
    last_seen: int | None = None
    tripped: bool = False

    def heartbeat(self, now: int) -> None:
        self.last_seen = now

    def check(self, now: int) -> bool:
        """True exactly once: when the switch trips at this check."""
        if self.tripped or self.last_seen is None:
            return False
        if now - self.last_seen > self.timeout_ns:
            self.tripped = True
            return True
        return False

    def reset(self) -> None:
        self.tripped = False
