"""The reconciler alone (issue 9): the pure planner's rules, and the real ``Reconciler`` loops
against a simulated gateway (the SDK's own ``CommandBook``) behind a channel that loses,
duplicates, delays and expires commands, fails acks, restarts the gateway and trips its dead-man's
switch. Properties: it converges once the faults stop, never sends an increase for an algorithm
whose halt is wanted, and never sends an increase while it knows of an outstanding reduction."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from rampart.gateway.commands import CommandBook
from rampart.protocol import AlgoActual, Command, Intent, Subjects, TargetResult
from rampart.reconcile import Op, describe, plan, split_actions
from rampart.reconciler import Reconciler, ReconcileSettings
from rampart.rollback import RollbackExecutor, StepOutcome
from rampart.strategies import Action
from rampart.strategies.base import Activate, Complete, RollbackAction, SetAllocation, Standby

ALGOS = ("a", "b", "c")
INCREASES = ("resume", "activate")


def actual(algo: str, **kw: Any) -> AlgoActual:
    return AlgoActual(algo=algo, **{"halted": False, **kw})


# ---- the planner ------------------------------------------------------------------------------


def test_reductions_come_first_and_hold_every_increase() -> None:
    intents = [
        Intent(algo="green", halted=True, allocation=0.0),
        Intent(algo="blue", allocation=1.0, active=True),
    ]
    seen = {
        "green": actual("green", allocation=1.0, active=True),
        "blue": actual("blue", allocation=0.0, active=False),
    }
    p = plan(intents, seen)
    assert p.reductions == (Op("halt", "green"), Op("set_allocation", "green", 0.0))
    assert p.increases == ()
    assert set(p.held) == {Op("set_allocation", "blue", 1.0), Op("activate", "blue")}
    # once green is halted with no capital, blue gets its capital back
    seen["green"] = actual("green", halted=True, halt_cause="command", allocation=0.0)
    p = plan(intents, seen)
    assert p.reductions == () and set(p.increases) == set(
        [Op("set_allocation", "blue", 1.0), Op("activate", "blue")]
    )


def test_nothing_is_raised_on_a_halted_algorithm_and_only_released_halts_are_resumed() -> None:
    by_command = actual(
        "a", halted=True, halt_cause="command", allocation=0.1, active=False, epochs={"halt": 5}
    )
    # wanted running after a release (epoch 6) that lifted the halt (epoch 5): resume first,
    # nothing else yet
    p = plan([Intent(algo="a", allocation=0.5, active=True, released_epoch=6)], {"a": by_command})
    assert p.increases == (Op("resume", "a"),) and p.adopt == ()
    # a halt newer than any release, that no latch records (a crash between sending and
    # storing it): adopted, never resumed
    p = plan([Intent(algo="a", allocation=0.5, released_epoch=4)], {"a": by_command})
    assert p.adopt == (("a", "command without a latch"),) and p.increases == ()
    # halted by the dead-man's switch: adopted (latched), never resumed
    p = plan(
        [Intent(algo="a", allocation=0.5, released_epoch=9)],
        {"a": actual("a", halted=True, halt_cause="deadman")},
    )
    assert p.adopt == (("a", "deadman"),) and p.ops == ()
    # wanted halted: an allocation increase waits (a decrease does not)
    p = plan([Intent(algo="a", halted=True, allocation=0.5)], {"a": by_command})
    assert p.ops == ()
    p = plan([Intent(algo="a", halted=True, allocation=0.0)], {"a": by_command})
    assert p.reductions == (Op("set_allocation", "a", 0.0),)


def test_a_release_by_a_newer_leader_lifts_a_halt_whose_epoch_a_faster_clock_made() -> None:
    """Epochs are each leader's wall clock: term 1's host ran 10 s ahead of term 2's. A halt
    term 1 sent is older than term 2's release whatever their epochs say (gateways order
    decisions by (term, epoch) too), so it is resumed, not adopted back as a latch."""
    ahead = 10_000_000_000
    halted_by_term_1 = actual(
        "a", halted=True, halt_cause="command", epochs={"halt": 50 + ahead}, terms={"halt": 1}
    )
    release = Intent(algo="a", allocation=0.5, released_epoch=50, released_term=2)
    p = plan([release], {"a": halted_by_term_1})
    assert p.increases == (Op("resume", "a"),) and p.adopt == ()
    # a halt term 2 itself sent after its release: newer, adopted (never resumed)
    halted_by_term_2 = actual(
        "a", halted=True, halt_cause="command", epochs={"halt": 60}, terms={"halt": 2}
    )
    p = plan([release], {"a": halted_by_term_2})
    assert p.adopt == (("a", "command without a latch"),) and p.increases == ()
    # a gateway that does not report terms: its halt epoch is compared alone, as before
    no_terms = actual("a", halted=True, halt_cause="command", epochs={"halt": 50 + ahead})
    p = plan([release], {"a": no_terms})
    assert p.adopt == (("a", "command without a latch"),) and p.increases == ()


def test_drift_says_what_differs_and_an_unknown_allocation_is_only_reduced_by_zero() -> None:
    i = Intent(algo="a", halted=True, allocation=0.25, active=True)
    assert describe(i, None) == "not reported by its gateway"
    text = describe(i, actual("a", allocation=None, active=False))
    assert text is not None
    assert "wanted halted, gateway has it running" in text
    assert "allocation wanted 0.25, gateway has unknown" in text
    assert "wanted active, gateway has it standby" in text
    assert (
        describe(i, actual("a", halted=True, halt_cause="command", allocation=0.25, active=True))
        is None
    )
    assert plan([Intent(algo="a", allocation=0.0)], {"a": actual("a")}).reductions == (
        Op("set_allocation", "a", 0.0),
    )
    assert plan([Intent(algo="a", allocation=0.3)], {"a": actual("a")}).increases == (
        Op("set_allocation", "a", 0.3),
    )


def test_a_decision_sends_its_reductions_before_its_increases() -> None:
    """A blue/green rollback: the rollback (green halted) before blue's capital; a cutover:
    blue to 0 and standby before green is activated and funded."""
    rollback = RollbackAction(algos=["green"], trigger="t", reason="r", previous={"green": "blue"})
    raise_blue = SetAllocation(algo="blue", allocation=1.0, reason="r")
    r, i, n = split_actions([raise_blue, rollback, Complete(reason="done")])
    assert r == [rollback] and i == [raise_blue] and len(n) == 1
    cutover: list[Action] = [
        Activate(algo="green", reason="c"),
        SetAllocation(algo="green", allocation=1.0, reason="c"),
        SetAllocation(algo="blue", allocation=0.0, reason="c"),
        Standby(algo="blue", reason="c"),
    ]
    r, i, _ = split_actions(cutover)
    assert [type(a).__name__ for a in r] == ["SetAllocation", "Standby"]
    assert {type(a).__name__ for a in i} == {"Activate", "SetAllocation"}


# ---- the loops against a faulty simulated gateway ---------------------------------------------


@dataclass
class SimGateway:
    """A gateway that obeys the protocol with the SDK's own rules (``CommandBook``)."""

    algos: tuple[str, ...]
    book: CommandBook = field(default_factory=CommandBook)
    now: int = 0
    ts: int = 0

    def apply(self, cmd: Command, error: bool = False) -> list[TargetResult]:
        out = []
        for t in cmd.targets:
            status = self.book.admit(cmd, t, self.now)
            if status is None and error:
                out.append(TargetResult(algo=t.algo, status="error", detail="simulated"))
            elif status is None:
                self.book.applied(cmd, t)
                out.append(TargetResult(algo=t.algo, status="applied"))
            else:
                out.append(TargetResult(algo=t.algo, status=status))
        return out

    def report(self) -> list[AlgoActual]:
        self.ts += 1
        return [self.book.report(a) for a in self.algos]

    def restart(self) -> None:
        self.book = CommandBook()

    def trip_deadman(self) -> None:
        for a in self.algos:
            self.book.halt_locally(a)


class FaultyExecutor(RollbackExecutor):
    """Sends the reconciler's commands to the simulated gateway through a faulty channel, and
    checks, at every send, the reconciler's own promises."""

    def __init__(self, gw: SimGateway, halted: set[str]) -> None:
        super().__init__(cast(Client, None), Subjects(), lambda a: "gw")
        self.gw = gw
        self.halted = halted
        self.fault = "none"
        self.delayed: list[Command] = []
        self.violations: list[str] = []
        self.reconciler: Reconciler | None = None
        self.sent = 0

    async def send(
        self,
        gateway: str,
        command: Command,
        deadline: float,
        encoded: tuple[bytes, dict[str, str] | None] | None = None,
        *,
        reepoched: bool = False,
    ) -> StepOutcome:
        self.sent += 1
        self._check(command)
        for late in self.delayed:  # a reordered command arrives before this one
            self.gw.apply(late)
        self.delayed.clear()
        fault, targets = self.fault, [t.algo for t in command.targets]
        if fault == "lose_command":
            return StepOutcome(False, 1, 0, "no ack (lost)", targets)
        if fault == "delay":
            self.delayed.append(command)
            return StepOutcome(False, 1, 0, "no ack (delayed)", targets)
        if fault == "expire":
            self.gw.now = command.valid_until + 1
        results = self.gw.apply(command, error=fault == "error")
        self.gw.now = 0
        if fault == "duplicate":
            results = self.gw.apply(command)
        if fault == "lose_ack":
            return StepOutcome(False, 1, 0, "no ack (ack lost)", targets)
        failed = [r.algo for r in results if r.status not in ("applied", "duplicate")]
        detail = "; ".join(f"{r.algo}: {r.status}" for r in results if r.algo in failed)
        return StepOutcome(not failed, 1, 0, detail, failed)

    def _check(self, command: Command) -> None:
        assert self.reconciler is not None
        for t in command.targets:
            seen = self._seen_allocation(t.algo) or 0.0
            up = command.kind in INCREASES or (
                command.kind == "set_allocation" and (t.allocation or 0.0) > seen
            )
            if not up:
                continue
            if t.algo in self.halted:
                self.violations.append(f"{command.kind} {t.algo} sent while its halt is wanted")
            if self.reconciler.plan_for("gw").reductions:
                self.violations.append(f"{command.kind} sent while reductions are outstanding")

    def _seen_allocation(self, algo: str) -> float | None:
        assert self.reconciler is not None
        a = self.reconciler.seen("gw").get(algo)
        return None if a is None else a.allocation


Step = tuple[str, Any]
steps = st.one_of(
    st.tuples(
        st.just("want"),
        st.tuples(
            st.sampled_from(ALGOS),
            st.sampled_from([0.0, 0.1, 0.5, 1.0]),
            st.sampled_from([None, True, False]),
        ),
    ),
    st.tuples(st.just("halt"), st.sampled_from(ALGOS)),
    st.tuples(st.just("release"), st.sampled_from(ALGOS)),
    st.tuples(st.just("report"), st.none()),
    st.tuples(
        st.just("fault"),
        st.sampled_from(
            ["none", "lose_command", "lose_ack", "duplicate", "delay", "error", "expire"]
        ),
    ),
    st.tuples(st.just("restart"), st.none()),
    st.tuples(st.just("deadman"), st.none()),
    st.tuples(st.just("wait"), st.integers(0, 3)),
)


def in_sync(rec: Reconciler, gw: SimGateway) -> bool:
    """Settled: the gateway really does what Rampart wants, except for the increases the rules
    hold back while an algorithm is halted (no activation or capital for a halted algorithm)."""
    truth = {a.algo: a for a in gw.report()}
    intents = [rec.intent(a) for a in ALGOS]
    p = plan(intents, truth)
    held_only = all(i.halted or truth[i.algo].halted for i in intents if i.algo in p.drift)
    return not p.ops and not p.adopt and held_only


@settings(max_examples=100)
@given(st.lists(steps, max_size=30))
def test_the_reconciler_converges_through_faults_and_keeps_its_promises(seq: list[Step]) -> None:
    async def scenario() -> None:
        gw = SimGateway(ALGOS)
        halted: set[str] = set()
        ex = FaultyExecutor(gw, halted)

        async def adopt(gateway: str, halts: list[tuple[str, str]]) -> None:
            halted.update(a for a, _ in halts)  # the guard latches them
            rec.kick()

        async def stuck(gateway: str, text: str) -> None:
            pass

        rec = Reconciler(
            ex,
            {"gw": ALGOS},
            halted=lambda: halted,
            busy=lambda: (),
            on_adopt=adopt,
            on_stuck=stuck,
            settings=ReconcileSettings(
                resync_interval=0.002, backoff_base=0.001, backoff_max=0.004, deadline=0.01
            ),
        )
        ex.reconciler = rec
        rec.start()
        try:
            rec.on_report("gw", gw.ts, gw.report())
            for kind, arg in seq:
                if kind == "want":
                    algo, alloc, active = arg
                    rec.remember([rec.wanted(algo, allocation=alloc, active=active)])
                elif kind == "halt":
                    halted.add(arg)
                    rec.kick([arg])
                elif kind == "release":  # as the guard does: stored with the release's epoch
                    halted.discard(arg)
                    rec.remember([rec.wanted(arg, released_epoch=ex.epochs.next())])
                elif kind == "report":
                    rec.on_report("gw", gw.ts, gw.report())
                elif kind == "fault":
                    ex.fault = arg
                elif kind == "restart":
                    gw.restart()
                elif kind == "deadman":
                    gw.trip_deadman()
                else:
                    await asyncio.sleep(0.001 * arg)
                await asyncio.sleep(0)
            # the faults stop: it converges, with heartbeats as the only input
            ex.fault = "none"
            for _ in range(400):
                rec.on_report("gw", gw.ts, gw.report())
                await asyncio.sleep(0.002)
                if in_sync(rec, gw) and not ex.delayed:
                    break
            truth = {a.algo: a for a in gw.report()}
            drift = {a: describe(rec.intent(a), truth[a]) for a in ALGOS}
            assert in_sync(rec, gw), drift
        finally:
            await rec.close()
        assert not ex.violations, ex.violations

    asyncio.run(scenario())


def test_a_restarted_gateway_is_halted_again_and_a_deadman_trip_is_latched() -> None:
    async def scenario() -> None:
        gw = SimGateway(ALGOS)
        halted = {"a"}
        adopted: list[tuple[str, str]] = []
        ex = FaultyExecutor(gw, halted)

        async def adopt(gateway: str, halts: list[tuple[str, str]]) -> None:
            adopted.extend(halts)
            halted.update(a for a, _ in halts)

        async def stuck(gateway: str, text: str) -> None:
            pass

        rec = Reconciler(
            ex,
            {"gw": ALGOS},
            halted=lambda: halted,
            busy=lambda: (),
            on_adopt=adopt,
            on_stuck=stuck,
            settings=ReconcileSettings(resync_interval=0.002),
        )
        ex.reconciler = rec
        rec.start()
        try:
            rec.on_report("gw", gw.ts, gw.report())
            await _until(lambda: gw.book.report("a").halted)
            gw.restart()  # forgets the halt
            assert not gw.book.report("a").halted
            rec.on_report("gw", gw.ts, gw.report())
            await _until(lambda: gw.book.report("a").halted)
            gw.trip_deadman()
            rec.on_report("gw", gw.ts, gw.report())
            await _until(lambda: {a for a, _ in adopted} == {"b", "c"})
            assert all(c == "deadman" for _, c in adopted)
            # never resumed by Rampart: only an operator's release lifts it
            await asyncio.sleep(0.02)
            assert all(gw.book.report(x).halted for x in ALGOS)
            assert not any(v for v in ex.violations)
        finally:
            await rec.close()

    asyncio.run(scenario())


async def _until(cond: Any, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            pytest.fail("condition not met in time")
        await asyncio.sleep(0.001)


# ---- the memoized plan -------------------------------------------------------------------------

intents_st = st.builds(
    Intent,
    algo=st.sampled_from(ALGOS),
    allocation=st.none() | st.sampled_from([0.0, 0.5, 1.0]),
    active=st.none() | st.booleans(),
    released_epoch=st.integers(0, 3),
    released_term=st.integers(0, 2),
)
actuals_st = st.builds(
    AlgoActual,
    algo=st.sampled_from(ALGOS),
    halted=st.booleans(),
    halt_cause=st.none() | st.sampled_from(["command", "deadman", "gateway"]),
    allocation=st.none() | st.sampled_from([0.0, 0.5, 1.0]),
    active=st.none() | st.booleans(),
    epochs=st.dictionaries(st.sampled_from(["halt", "allocation"]), st.integers(0, 3)),
    terms=st.dictionaries(st.sampled_from(["halt", "allocation"]), st.integers(0, 2)),
)
changes = st.one_of(
    st.tuples(st.just("intent"), intents_st),
    st.tuples(st.just("latch"), st.sampled_from(ALGOS)),
    st.tuples(st.just("report"), st.lists(actuals_st, max_size=3)),
    st.tuples(st.just("same report"), st.none()),
    st.tuples(
        st.just("ack"),
        st.builds(
            Op,
            kind=st.sampled_from(["halt", "resume", "set_allocation", "activate", "standby"]),
            algo=st.sampled_from(ALGOS),
            allocation=st.sampled_from([0.0, 1.0]),
        ),
    ),
)


@settings(max_examples=200)
@given(st.lists(changes, max_size=25))
def test_the_memoized_plan_is_always_the_plan_of_what_is_known_now(
    seq: list[tuple[str, Any]],
) -> None:
    """``plan_for`` re-plans only the algorithms marked since its last pass, and of those only
    the ones whose inputs changed: after any sequence of stored intents, latches, reports (new
    and repeated) and acks, it equals the pure planner's plan of the current intents and actual
    state."""

    async def scenario() -> None:
        halted: set[str] = set()

        async def ignore(gateway: str, arg: Any) -> None:
            pass

        rec = Reconciler(
            RollbackExecutor(cast(Client, None), Subjects(), lambda a: "gw"),
            {"gw": ALGOS},
            halted=lambda: halted,
            busy=lambda: (),
            on_adopt=ignore,
            on_stuck=ignore,
        )
        rec.on_report("gw", 0, [])
        for kind, arg in seq:
            match kind:
                case "intent":
                    rec.remember([arg])
                case "latch":  # the guard kicks for every latch it sets or lifts
                    halted.symmetric_difference_update({arg})
                    rec.kick([arg])
                case "report":
                    rec.on_report("gw", 0, arg)
                case "same report":
                    rec.on_report("gw", 0, None)
                case _:
                    rec.note_acked([arg])
            fresh = plan([rec.intent(a) for a in ALGOS], rec.seen("gw"))
            # a pass over what was marked since the last one, as the loop makes between its
            # full passes, and a full one: both are the pure planner's plan
            assert rec.plan_for("gw", full=False) == fresh
            assert rec.plan_for("gw") == fresh

    asyncio.run(scenario())
