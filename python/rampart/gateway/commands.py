"""The gateway's command rules as a pure state machine: dedup, expiry, epochs, halt beats resume.

No I/O: ``CommandBook.admit(command, now)`` says, per target, whether the gateway must apply it,
and ``record(...)`` remembers what was applied. The SDK wires it to NATS; the rules are tested here.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import msgspec

from rampart.protocol import (
    AlgoActual,
    Command,
    CommandKind,
    CommandStatus,
    CommandTarget,
    HaltCause,
)

# Remember this many command ids for dedup (a retry arrives within seconds; this is hours of them).
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


@dataclass
class AlgoControl:
    """What the gateway knows about one algorithm's control state: what it reports to Rampart
    in every heartbeat (``report``)."""

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


@dataclass
class CommandBook:
    """Per-gateway command state. ``algos`` holds every algorithm a command has touched."""

    algos: dict[str, AlgoControl] = field(default_factory=dict)
    # Bumped by every change a report would show (a heartbeat re-encodes its state only then).
    version: int = 0
    # command id -> algorithms it has been applied to (a retry of those is a duplicate)
    _applied: OrderedDict[str, set[str]] = field(default_factory=OrderedDict)
    # the newest leadership term seen in a verified command or sidecar heartbeat (docs/ha.md)
    term: int = 0

    def see_term(self, term: int) -> None:
        """A verified message of ``term``: from now on, what an older term sends is refused."""
        if term > self.term:
            self.term = term
            self.version += 1

    def control(self, algo: str) -> AlgoControl:
        ctl = self.algos.get(algo)
        if ctl is None:
            ctl = self.algos[algo] = AlgoControl()
        return ctl

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
        """``admit`` for every target of ``command`` in one pass (a rollback of a whole gateway
        is one command of 1,000 targets): the targets to apply now, in order, and the status of
        the others by algorithm. What depends on the command alone is judged once."""
        done = self._applied.get(command.command_id, ())
        whole: CommandStatus | None = None
        if command.term < self.term:
            whole = "stale_term"  # sent by a Rampart that no longer leads
        elif now > command.valid_until:
            whole = "expired"
        kind = command.kind
        dim = DIMENSIONS.get(kind)
        decision = (command.term, command.epoch)
        algos = self.algos
        to_apply: list[CommandTarget] = []
        refused: dict[str, CommandStatus] = {}
        for target in command.targets:
            algo = target.algo
            if algo in done:
                refused[algo] = "duplicate"
                continue
            if whole is not None:
                refused[algo] = whole
                continue
            ctl = algos.get(algo)
            if ctl is None:
                ctl = algos[algo] = AlgoControl()
            if dim is not None and decision < (ctl.terms.get(dim, 0), ctl.epochs.get(dim, -1)):
                refused[algo] = "stale_epoch"
            elif kind == "resume" and decision <= (ctl.halt_term, ctl.halt_epoch):
                refused[algo] = "stale_epoch"  # halt beats resume: only a later decision lifts it
            elif kind == "set_allocation" and not (
                target.allocation is not None and 0.0 <= target.allocation <= 1.0
            ):
                refused[algo] = "refused"
            else:
                to_apply.append(target)
        return to_apply, refused

    def applied(self, command: Command, target: CommandTarget) -> None:
        self.applied_all(command, [target])

    def applied_all(self, command: Command, targets: list[CommandTarget]) -> None:
        """``targets`` of ``command`` were applied: remembered for dedup, and their control state
        moves (one pass for a whole command)."""
        self.version += 1
        done = self._applied.get(command.command_id)
        if done is None:
            done = self._applied[command.command_id] = set()
            while len(self._applied) > DEDUP_CAPACITY:
                self._applied.popitem(last=False)
        kind = command.kind
        dim = DIMENSIONS.get(kind)
        decision = (command.term, command.epoch)
        algos = self.algos
        for target in targets:
            done.add(target.algo)
            ctl = algos.get(target.algo)
            if ctl is None:
                ctl = algos[target.algo] = AlgoControl()
            if dim is not None and decision > (ctl.terms.get(dim, 0), ctl.epochs.get(dim, -1)):
                ctl.terms[dim], ctl.epochs[dim] = decision
            if kind == "halt":
                ctl.halted = True
                ctl.halt_cause = "command"
                ctl.halt_term, ctl.halt_epoch = max((ctl.halt_term, ctl.halt_epoch), decision)
            elif kind == "resume":
                ctl.halted = False
                ctl.halt_cause = None
            elif kind == "set_allocation":
                ctl.allocation = target.allocation
            elif kind == "activate":
                ctl.active = True
            elif kind == "standby":
                ctl.active = False

    def halt_locally(self, algo: str, cause: HaltCause = "deadman") -> None:
        """A halt the gateway decided itself (its dead-man's switch, or its own risk checks):
        only a later resume lifts it, and it is reported with its cause."""
        self.version += 1
        ctl = self.control(algo)
        ctl.halted = True
        ctl.halt_cause = cause
        ctl.halt_term, ctl.halt_epoch = max((ctl.halt_term, ctl.halt_epoch), ctl.last("halt"))

    def report(self, algo: str) -> AlgoActual:
        """The algorithm's actual state as this gateway knows it."""
        ctl = self.algos.get(algo)
        return ctl.report(algo) if ctl is not None else AlgoActual(algo=algo, halted=False)


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
