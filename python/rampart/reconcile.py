"""Level-triggered control, the pure part: what Rampart wants of each algorithm (its *intent*)
against what its gateway reports doing (its *actual* state), and the fewest commands that close
the gap. No I/O and no clock: the daemon's :class:`~rampart.reconciler.Reconciler` feeds it the
stored intents and each heartbeat's report, and sends what it plans (docs/operations.md,
"Reconciliation").

The rules, per gateway:

- **Reductions before increases.** A halt, an allocation decrease or a standby is a reduction; a
  resume, an allocation increase or an activation is an increase. While any reduction of the
  gateway is outstanding, no increase is planned (a blue/green rollback halts green before blue
  gets capital back).
- **Nothing is raised on a halted algorithm.** While an algorithm is halted (wanted, or reported
  by the gateway), no allocation increase or activation is planned for it; a resume is planned
  only for a halt that an operator's release lifted (the gateway reports its halt epoch, and it
  is older than the release's).
- **A halt Rampart did not lift is adopted, never overruled.** An algorithm the gateway reports
  halted by its dead-man's switch or its own decision, or by a command of Rampart's that no latch
  records (a crash between sending a halt and storing it), while Rampart wants it running, is
  returned in ``adopt``: the daemon latches it for an operator to release.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from rampart.protocol import AlgoActual, CommandKind, Intent
from rampart.strategies import Action
from rampart.strategies.base import (
    Activate,
    Complete,
    Decommission,
    RequestApproval,
    RollbackAction,
    SetAllocation,
    Standby,
)

# Allocations closer than this are equal (they travel as JSON doubles).
ALLOCATION_EPS = 1e-9


@dataclass(frozen=True)
class Op:
    """One command to one algorithm."""

    kind: CommandKind
    algo: str
    allocation: float | None = None


@dataclass(frozen=True)
class Plan:
    """What to send to one gateway now, and what differs."""

    reductions: tuple[Op, ...] = ()
    # Empty while any reduction is outstanding (they are in ``held`` then).
    increases: tuple[Op, ...] = ()
    held: tuple[Op, ...] = ()
    # (algo, cause): halted by the gateway itself while Rampart wants it running.
    adopt: tuple[tuple[str, str], ...] = ()
    # algo -> what differs between intent and actual; absent when in sync.
    drift: dict[str, str] = field(default_factory=dict)

    @property
    def in_sync(self) -> bool:
        return not self.drift

    @property
    def ops(self) -> tuple[Op, ...]:
        return self.reductions + self.increases


def _allocation_op(intent: Intent, actual: AlgoActual) -> Op | None:
    want = intent.allocation
    if want is None:
        return None
    have = actual.allocation
    if have is not None and abs(have - want) <= ALLOCATION_EPS:
        return None
    return Op("set_allocation", intent.algo, want)


def _is_decrease(op: Op, actual: AlgoActual) -> bool:
    """An unknown allocation is reduced only by setting 0: any other value may be an increase."""
    want = op.allocation if op.allocation is not None else 0.0
    if actual.allocation is None:
        return want <= ALLOCATION_EPS
    return want < actual.allocation


def _released_after_halt(intent: Intent, actual: AlgoActual) -> bool:
    """The operator's last release is newer than the halt the gateway holds. Decisions are
    ordered by (term, epoch), as gateways order them: a release by a newer leader lifts an
    older leader's halt even if the older leader's clock ran ahead. A gateway that does not
    report terms has its halt epoch compared alone."""
    halt_epoch = actual.epochs.get("halt")
    if halt_epoch is None:
        return False
    halt_term = actual.terms.get("halt")
    if halt_term is None:
        return halt_epoch < intent.released_epoch
    return (halt_term, halt_epoch) < (intent.released_term, intent.released_epoch)


def algo_ops(intent: Intent, actual: AlgoActual) -> tuple[list[Op], list[Op], str | None]:
    """(reductions, increases, cause to adopt) for one algorithm."""
    reductions: list[Op] = []
    increases: list[Op] = []
    adopt: str | None = None
    if intent.halted and not actual.halted:
        reductions.append(Op("halt", intent.algo))
    lifted = False  # a halt an operator's release lifted, still in place at the gateway
    if not intent.halted and actual.halted:
        cause = actual.halt_cause or "gateway"
        if _released_after_halt(intent, actual):
            lifted = True
        else:
            # the gateway's own halt, or one of Rampart's that no latch records, newer than any
            # release (or of unknown age): keep it
            adopt = cause if cause != "command" else "command without a latch"
    alloc = _allocation_op(intent, actual)
    if alloc is not None:
        (reductions if _is_decrease(alloc, actual) else increases).append(alloc)
    if intent.active is False and actual.active is not False:
        reductions.append(Op("standby", intent.algo))
    elif intent.active is True and actual.active is not True:
        increases.append(Op("activate", intent.algo))
    if intent.halted or actual.halted:
        # nothing raised on a halted algorithm; a resume only lifts what a release lifted
        increases = [Op("resume", intent.algo)] if lifted else []
    return reductions, increases, adopt


def describe(intent: Intent, actual: AlgoActual | None) -> str | None:
    """What differs, in words; ``None`` when the gateway does what Rampart wants."""
    if actual is None:
        return "not reported by its gateway"
    parts = []
    if intent.halted != actual.halted:
        want = "halted" if intent.halted else "running"
        have = f"halted ({actual.halt_cause or 'unknown'})" if actual.halted else "running"
        parts.append(f"wanted {want}, gateway has it {have}")
    if intent.allocation is not None and (
        actual.allocation is None or abs(actual.allocation - intent.allocation) > ALLOCATION_EPS
    ):
        have_alloc = "unknown" if actual.allocation is None else f"{actual.allocation:g}"
        parts.append(f"allocation wanted {intent.allocation:g}, gateway has {have_alloc}")
    if intent.active is not None and actual.active is not intent.active:
        want_a = "active" if intent.active else "standby"
        have_a = {True: "active", False: "standby", None: "unknown"}[actual.active]
        parts.append(f"wanted {want_a}, gateway has it {have_a}")
    return "; ".join(parts) or None


@dataclass(frozen=True)
class AlgoPlan:
    """One algorithm's part of a plan: what differs, and the commands that close it."""

    drift: str | None = None
    reductions: tuple[Op, ...] = ()
    increases: tuple[Op, ...] = ()
    adopt: str | None = None


IN_SYNC = AlgoPlan()


def plan_algo(intent: Intent, actual: AlgoActual | None) -> AlgoPlan:
    """One algorithm's part of :func:`plan` (``IN_SYNC`` when nothing differs)."""
    text = describe(intent, actual)
    if actual is None:
        return IN_SYNC if text is None else AlgoPlan(drift=text)
    r, i, cause = algo_ops(intent, actual)
    if text is None and not r and not i and cause is None:
        return IN_SYNC
    return AlgoPlan(text, tuple(r), tuple(i), cause)


def combine(parts: Iterable[tuple[str, AlgoPlan]]) -> Plan:
    """One gateway's plan from its algorithms' parts, ``(algo, part)``."""
    reductions: list[Op] = []
    increases: list[Op] = []
    adopt: list[tuple[str, str]] = []
    drift: dict[str, str] = {}
    for algo, part in parts:
        if part is IN_SYNC:
            continue
        if part.drift is not None:
            drift[algo] = part.drift
        reductions.extend(part.reductions)
        increases.extend(part.increases)
        if part.adopt is not None:
            adopt.append((algo, part.adopt))
    if reductions:
        return Plan(tuple(reductions), (), tuple(increases), tuple(adopt), drift)
    return Plan((), tuple(increases), (), tuple(adopt), drift)


def plan(intents: Iterable[Intent], actual: Mapping[str, AlgoActual]) -> Plan:
    """The commands that bring one gateway's algorithms to ``intents``, given its last report."""
    return combine((i.algo, plan_algo(i, actual.get(i.algo))) for i in intents)


Reduction = RollbackAction | SetAllocation | Standby | Decommission
Increase = SetAllocation | Activate
Notice = RequestApproval | Complete


def split_actions(
    actions: Iterable[Action],
) -> tuple[list[Reduction], list[Increase], list[Notice]]:
    """A decision's actions as (reductions, increases, notices), each in its order: a rollback,
    an allocation to 0, a standby or a decommission reduces; any other allocation and an
    activation may increase, so they are sent only once the reductions are acked (a cutover
    takes blue's capital before green gets it). Engine-side actions (``MarkStage``,
    ``NewMeasurement``) are left out: the runner applies them."""
    reductions: list[Reduction] = []
    increases: list[Increase] = []
    notices: list[Notice] = []
    for a in actions:
        if isinstance(a, (RollbackAction, Standby, Decommission)):
            reductions.append(a)
        elif isinstance(a, SetAllocation):
            (reductions if a.allocation <= ALLOCATION_EPS else increases).append(a)
        elif isinstance(a, Activate):
            increases.append(a)
        elif isinstance(a, (RequestApproval, Complete)):
            notices.append(a)
    return reductions, increases, notices
