"""The gateway's command rules (pure): once-only, expiry, epochs, halt beats resume, dead-man."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import get_args

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rampart.gateway import sdk
from rampart.gateway.commands import DEDUP_CAPACITY, CommandBook, DeadMansSwitch
from rampart.gateway.sdk import LANES, GatewayAgent, GatewayHandlers
from rampart.protocol import Command, CommandAck, CommandKind, CommandTarget, encoder
from rampart.signing import SigningKey, sign_headers

NOW = 1_000_000


def cmd(
    kind: CommandKind,
    epoch: int,
    *algos: str,
    cid: str | None = None,
    valid_until: int = NOW + 1_000,
    allocation: float | None = None,
) -> Command:
    return Command(
        command_id=cid or f"{kind}-{epoch}-{'-'.join(algos)}",
        epoch=epoch,
        kind=kind,
        targets=[CommandTarget(algo=a, allocation=allocation) for a in algos],
        issued_at=NOW - 10,
        valid_until=valid_until,
    )


class Recorder(GatewayHandlers):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail: set[str] = set()

    async def _do(self, what: str, algo: str) -> None:
        if algo in self.fail:
            raise RuntimeError(f"{algo} is wedged")
        self.calls.append((what, algo))

    async def halt(self, algo: str) -> None:
        await self._do("halt", algo)

    async def resume(self, algo: str) -> None:
        await self._do("resume", algo)

    async def cancel_all(self, algo: str) -> None:
        await self._do("cancel_all", algo)

    async def set_allocation(self, algo: str, allocation: float) -> None:
        await self._do(f"allocation={allocation}", algo)

    def algorithms(self) -> list[str]:
        return ["a", "b"]


KEY = SigningKey.generate()


def agent(handlers: Recorder) -> GatewayAgent:
    # handle() does no I/O, so the agent can run without a connection
    return GatewayAgent(
        None,  # type: ignore[arg-type]
        "gw",
        handlers,
        wall_clock=lambda: NOW,
        trusted_keys=[KEY.public_key],
    )


def test_a_command_is_applied_once_and_retries_are_duplicates() -> None:
    h = Recorder()
    ag = agent(h)
    c = cmd("halt", 1, "a", "b")
    first = asyncio.run(ag.handle(c))
    again = asyncio.run(ag.handle(c))
    assert [r.status for r in first] == ["applied", "applied"]
    assert [r.status for r in again] == ["duplicate", "duplicate"]
    assert h.calls == [("halt", "a"), ("halt", "b")]


def test_a_failed_target_is_applied_again_on_retry_and_reported_as_error() -> None:
    h = Recorder()
    h.fail.add("b")
    ag = agent(h)
    c = cmd("cancel_all", 1, "a", "b")
    first = asyncio.run(ag.handle(c))
    assert [(r.status, r.detail) for r in first] == [("applied", ""), ("error", "b is wedged")]
    h.fail.clear()
    again = asyncio.run(ag.handle(c))
    assert [r.status for r in again] == ["duplicate", "applied"]
    assert h.calls == [("cancel_all", "a"), ("cancel_all", "b")]


def test_expired_commands_are_refused_but_a_late_retry_of_an_applied_one_is_a_duplicate() -> None:
    h = Recorder()
    ag = agent(h)
    late = asyncio.run(ag.handle(cmd("halt", 1, "a", valid_until=NOW - 1)))
    assert late[0].status == "expired" and "valid_until" in late[0].detail
    assert h.calls == []
    c = cmd("halt", 2, "a", cid="x")
    asyncio.run(ag.handle(c))
    ag.wall_clock = lambda: NOW + 10_000  # now past valid_until
    assert asyncio.run(ag.handle(c))[0].status == "duplicate"


def test_halt_beats_resume_in_either_order() -> None:
    for order in (("resume", "halt"), ("halt", "resume")):
        h = Recorder()
        ag = agent(h)
        asyncio.run(ag.handle(cmd("halt", 1, "a")))  # the algo starts halted
        commands = {"resume": cmd("resume", 5, "a"), "halt": cmd("halt", 6, "a")}
        for kind in order:
            asyncio.run(ag.handle(commands[kind]))
        assert ag.is_halted("a"), order


def test_stale_epochs_and_bad_allocations_are_refused() -> None:
    """Epochs grow per dimension (halt/resume, allocation, activation): an older allocation is
    stale after a newer allocation, not after a halt, which is a decision of another kind."""
    h = Recorder()
    ag = agent(h)
    asyncio.run(ag.handle(cmd("halt", 10, "a")))
    assert asyncio.run(ag.handle(cmd("set_allocation", 9, "a", allocation=0.5)))[0].status == (
        "applied"
    )
    asyncio.run(ag.handle(cmd("set_allocation", 12, "a", allocation=0.0)))
    stale = asyncio.run(ag.handle(cmd("set_allocation", 11, "a", allocation=0.5)))[0]
    assert stale.status == "stale_epoch" and "allocation" in stale.detail
    assert asyncio.run(ag.handle(cmd("resume", 10, "a")))[0].status == "stale_epoch"
    bad = asyncio.run(ag.handle(cmd("set_allocation", 13, "a", allocation=1.5)))[0]
    assert bad.status == "refused" and "allocation" in bad.detail
    assert asyncio.run(ag.handle(cmd("resume", 11, "a")))[0].status == "applied"
    assert not ag.is_halted("a")


@given(
    st.lists(
        st.tuples(st.sampled_from(["halt", "resume"]), st.integers(min_value=0, max_value=20)),
        max_size=30,
    )
)
def test_halt_wins_whatever_the_arrival_order(ops: list[tuple[CommandKind, int]]) -> None:
    """The final state depends only on the decisions, not on the order they arrive in: the
    algorithm ends halted iff its highest-epoch halt is at or above every resume's epoch."""
    book = CommandBook()
    for i, (kind, epoch) in enumerate(ops):
        c = cmd(kind, epoch, "a", cid=str(i))
        if book.admit(c, c.targets[0], NOW) is None:
            book.applied(c, c.targets[0])
    halts = [e for k, e in ops if k == "halt"]
    resumes = [e for k, e in ops if k == "resume"]
    expected = bool(halts) and max(halts) >= max(resumes, default=-1)
    assert book.control("a").halted == expected


def test_deadmans_switch_arms_on_the_first_heartbeat_and_trips_once() -> None:
    d = DeadMansSwitch(timeout_ns=100)
    assert not d.check(10_000), "not armed before Rampart was ever seen"
    d.heartbeat(0)
    assert not d.check(100)
    assert d.check(101)
    assert not d.check(500), "trips once"
    d.heartbeat(600)
    assert d.tripped, "heartbeats coming back do not lift the halt"
    d.reset()
    assert not d.check(650) and d.check(701)


class Batcher(Recorder):
    """A gateway that cancels in one pass and leaves the other kinds to the default."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[str, list[str]]] = []

    async def apply_batch(
        self, kind: CommandKind, targets: list[CommandTarget]
    ) -> dict[str, BaseException]:
        if kind != "cancel_all":
            return await super().apply_batch(kind, targets)
        self.batches.append((kind, [t.algo for t in targets]))
        if "boom" in self.fail:
            raise RuntimeError("venue down")
        return {t.algo: RuntimeError("wedged") for t in targets if t.algo in self.fail}


def test_a_command_is_applied_as_one_batch_and_its_failures_are_told_apart() -> None:
    """Issue 15: the targets a command applies go to the handlers in one call; a failure of one
    algorithm is that algorithm's, a batch that raises fails each of its targets."""
    h = Batcher()
    ag = agent(h)
    h.fail.add("b")
    first = asyncio.run(ag.handle(cmd("cancel_all", 1, "a", "b", "c")))
    assert [r.status for r in first] == ["applied", "error", "applied"]
    assert h.batches == [("cancel_all", ["a", "b", "c"])], "one call for the three"
    # a retry sends only what is not applied yet
    h.fail.clear()
    again = asyncio.run(ag.handle(cmd("cancel_all", 1, "a", "b", "c")))
    assert [r.status for r in again] == ["duplicate", "applied", "duplicate"]
    assert h.batches[-1] == ("cancel_all", ["b"])
    h.fail.add("boom")
    whole = asyncio.run(ag.handle(cmd("cancel_all", 2, "a", "c", cid="c2")))
    assert [(r.status, r.detail) for r in whole] == [("error", "venue down")] * 2
    # other kinds: the default, one handler call per algorithm, set_allocation with its value
    h.fail.clear()
    alloc = asyncio.run(ag.handle(cmd("set_allocation", 3, "a", "b", allocation=0.0)))
    assert [r.status for r in alloc] == ["applied", "applied"]
    assert h.calls[-2:] == [("allocation=0.0", "a"), ("allocation=0.0", "b")]
    assert ag.book.control("a").allocation == 0.0


# ---- a whole command in one pass: the same rules as one target at a time -----------------------


@dataclass
class Model:
    """One algorithm's control state, as the rules below keep it."""

    last: dict[str, tuple[int, int]] = field(default_factory=dict)  # per dimension
    halt: tuple[int, int] = (0, -1)
    halted: bool = False
    allocation: float | None = None
    active: bool | None = None


MODEL_DIMS = {"halt": "halt", "resume": "halt", "set_allocation": "allocation"} | {
    "activate": "activation",
    "standby": "activation",
}


def model_admit(
    state: dict[str, Model],
    applied: dict[str, set[str]],
    book_term: int,
    c: Command,
    t: CommandTarget,
    now: int,
) -> str | None:
    """The command rules for one target, written out plainly (the model ``admit_all`` must
    equal): duplicate, stale term, expired, stale epoch per dimension, halt beats resume, a
    valid allocation."""
    if t.algo in applied.get(c.command_id, set()):
        return "duplicate"
    if c.term < book_term:
        return "stale_term"
    if now > c.valid_until:
        return "expired"
    s = state.setdefault(t.algo, Model())
    dim = MODEL_DIMS.get(c.kind)
    if dim is not None and (c.term, c.epoch) < s.last.get(dim, (0, -1)):
        return "stale_epoch"
    if c.kind == "resume" and (c.term, c.epoch) <= s.halt:
        return "stale_epoch"
    if c.kind == "set_allocation" and (t.allocation is None or not 0 <= t.allocation <= 1):
        return "refused"
    return None


def model_applied(
    state: dict[str, Model], applied: dict[str, set[str]], c: Command, t: CommandTarget
) -> None:
    applied.setdefault(c.command_id, set()).add(t.algo)
    s = state[t.algo]
    dim = MODEL_DIMS.get(c.kind)
    if dim is not None:
        s.last[dim] = max(s.last.get(dim, (0, -1)), (c.term, c.epoch))
    if c.kind == "halt":
        s.halted = True
        s.halt = max(s.halt, (c.term, c.epoch))
    elif c.kind == "resume":
        s.halted = False
    elif c.kind == "set_allocation":
        s.allocation = t.allocation
    elif c.kind in ("activate", "standby"):
        s.active = c.kind == "activate"


KINDS: list[CommandKind] = [
    "halt",
    "resume",
    "cancel_all",
    "flatten",
    "set_allocation",
    "activate",
    "standby",
]


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([*KINDS, "halt", "resume"]),  # the kinds with most rules, twice
            st.integers(min_value=0, max_value=3),  # epoch
            st.integers(min_value=0, max_value=1),  # term
            st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=6),
            st.sampled_from([None, 0.0, 0.5, 1.0, 1.5]),  # allocation
            st.booleans(),  # expired
            st.integers(min_value=0, max_value=3),  # command id (a retry reuses one)
        ),
        max_size=25,
    )
)
def test_a_whole_command_is_judged_in_one_pass_exactly_as_target_by_target(
    ops: list[tuple[CommandKind, int, int, list[str], float | None, bool, int]],
) -> None:
    """Issue 15: ``admit_all`` / ``applied_all`` (one pass over a command of many targets) give
    every target the status the rules give it alone, and leave the same control state."""
    book = CommandBook()
    state: dict[str, Model] = {}
    applied: dict[str, set[str]] = {}
    for kind, epoch, term, algos, allocation, expired, cid in ops:
        c = Command(
            command_id=f"{kind}-{epoch}-{term}-{cid}",
            epoch=epoch,
            kind=kind,
            targets=[CommandTarget(algo=a, allocation=allocation) for a in dict.fromkeys(algos)],
            issued_at=NOW - 10,
            valid_until=NOW - 1 if expired else NOW + 1_000,
            term=term,
        )
        expected = {t.algo: model_admit(state, applied, book.term, c, t, NOW) for t in c.targets}
        book.see_term(term)
        to_apply, refused = book.admit_all(c, NOW)
        assert [t.algo for t in to_apply] == [a for a, s in expected.items() if s is None]
        assert refused == {a: s for a, s in expected.items() if s is not None}
        book.applied_all(c, to_apply)
        for t in to_apply:
            model_applied(state, applied, c, t)
        for algo, m in state.items():
            ctl = book.control(algo)
            assert (ctl.halted, ctl.allocation, ctl.active) == (m.halted, m.allocation, m.active)
            assert {d: ctl.last(d) for d in m.last} == m.last, algo


def test_an_expired_command_of_many_targets_is_one_log_line_per_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Recorder()
    ag = agent(h)
    algos = [f"a{i}" for i in range(500)]
    with caplog.at_level(logging.WARNING, logger="rampart.gateway"):
        out = asyncio.run(ag.handle(cmd("halt", 1, *algos, valid_until=NOW - 1)))
    assert [r.status for r in out] == ["expired"] * 500 and h.calls == []
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "a0 refused" in lines[0] and "500 algorithms" in lines[1]


# ---- lanes: a halt never waits behind a slow cancel-all ----------------------------------------


class SlowVenue(Recorder):
    """Cancel-all and halt wait for the test to let them finish (a venue that is slow)."""

    def __init__(self) -> None:
        super().__init__()
        self.release: dict[str, asyncio.Event] = {}

    async def _wait(self, what: str) -> None:
        event = self.release.setdefault(what, asyncio.Event())
        await event.wait()

    async def cancel_all(self, algo: str) -> None:
        await self._wait("cancel_all")
        await super().cancel_all(algo)

    async def halt(self, algo: str) -> None:
        await self._wait("halt")
        await super().halt(algo)


class Reply:
    """A command message as the agent receives it, signed by Rampart's key; its ack is kept."""

    def __init__(self, c: Command) -> None:
        self.subject = "rampart.cmd.gw"
        self.data = encoder.encode(c)
        self.headers: dict[str, str] | None = sign_headers(KEY, self.subject, self.data)
        self.reply = "_INBOX.test"
        self.acks: list[CommandAck] = []

    async def respond(self, data: bytes) -> None:
        self.acks.append(msgspec.json.decode(data, type=CommandAck))


def test_every_command_kind_has_a_lane() -> None:
    assert set(LANES) == set(get_args(CommandKind))


def test_commands_of_other_lanes_do_not_wait_behind_a_slow_one_and_a_lane_keeps_its_order() -> None:
    """Issue 15: with the venue slow to cancel, a halt, an allocation and an activation that
    come after the cancel-all are applied and acked before it; within the halt lane, a resume
    sent after a slow halt is applied after it (halt, then resume: the algorithm ends resumed)."""

    async def scenario() -> None:
        h = SlowVenue()
        ag = agent(h)
        cancel = Reply(cmd("cancel_all", 1, "a"))
        halt_b = Reply(cmd("halt", 1, "b"))
        alloc = Reply(cmd("set_allocation", 1, "a", allocation=0.0))
        h.release["halt"] = asyncio.Event()
        h.release["halt"].set()  # halts go through at once in this part
        for m in (cancel, halt_b, alloc):
            await ag._on_command(m)  # type: ignore[arg-type]
        for _ in range(20):
            await asyncio.sleep(0)
        assert [a.results[0].status for a in halt_b.acks] == ["applied"]
        assert [a.results[0].status for a in alloc.acks] == ["applied"]
        assert cancel.acks == [], "the cancel-all is still at the venue"
        assert ag.is_halted("b")
        h.release["cancel_all"].set()
        for _ in range(20):
            await asyncio.sleep(0)
        assert [a.results[0].status for a in cancel.acks] == ["applied"]

        # one lane, in order: a resume waits for the slow halt before it
        h.release["halt"] = asyncio.Event()
        halt_c, resume_c = Reply(cmd("halt", 5, "c")), Reply(cmd("resume", 6, "c"))
        await ag._on_command(halt_c)  # type: ignore[arg-type]
        await ag._on_command(resume_c)  # type: ignore[arg-type]
        for _ in range(20):
            await asyncio.sleep(0)
        assert halt_c.acks == [] and resume_c.acks == []
        h.release["halt"].set()
        for _ in range(20):
            await asyncio.sleep(0)
        assert [a.results[0].status for a in halt_c.acks] == ["applied"]
        assert [a.results[0].status for a in resume_c.acks] == ["applied"]
        assert not ag.is_halted("c")
        assert ("halt", "c") in h.calls and h.calls[-1] == ("resume", "c")
        await ag.close()

    asyncio.run(scenario())


# ---- lanes: what the review of issue 15 found ---------------------------------------------------


async def settle() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


def test_a_cancel_all_waits_for_a_halt_still_being_applied() -> None:
    """Rampart sends cancel-all after its halt step's deadline even when the halt is still at a
    slow venue: the cancel must not run while the algorithm still trades (new orders would
    outlive it)."""

    async def scenario() -> None:
        h = SlowVenue()
        ag = agent(h)
        h.release["cancel_all"] = asyncio.Event()
        h.release["cancel_all"].set()
        halt, cancel = Reply(cmd("halt", 1, "a")), Reply(cmd("cancel_all", 1, "a"))
        await ag._on_command(halt)  # type: ignore[arg-type]
        await ag._on_command(cancel)  # type: ignore[arg-type]
        await settle()
        assert halt.acks == [] and cancel.acks == [] and h.calls == []
        h.release["halt"].set()
        await settle()
        assert h.calls == [("halt", "a"), ("cancel_all", "a")]
        assert len(halt.acks) == len(cancel.acks) == 1
        await ag.close()

    asyncio.run(scenario())


def test_a_lane_is_bounded_but_never_drops_a_halt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdk, "MAX_LANE_QUEUE", 3)

    async def scenario() -> None:
        h = SlowVenue()
        h.release["halt"] = asyncio.Event()  # halts hang too
        ag = agent(h)
        for i in range(8):
            await ag._on_command(Reply(cmd("cancel_all", i, "a", cid=f"c{i}")))  # type: ignore[arg-type]
            await ag._on_command(Reply(cmd("halt", i, "a", cid=f"h{i}")))  # type: ignore[arg-type]
        await settle()
        # the orders lane took 3 (waiting for the hanging halts), dropped the other 5
        assert ag._order_line.pending == 3 and ag.lane_dropped == 5
        assert ag._halt_line.pending == 8  # every halt kept, in order behind the first
        # resumes beyond the bound are dropped (unacked: Rampart resends), halts never
        await ag._on_command(Reply(cmd("resume", 9, "b", cid="r9")))  # type: ignore[arg-type]
        await ag._on_command(Reply(cmd("halt", 10, "b", cid="h10")))  # type: ignore[arg-type]
        assert ag.lane_dropped == 6 and ag._halt_line.pending == 9
        await ag.close()
        assert ag._halt_line.tails == {} and ag._halt_line.pending == 0
        assert ag._order_line.tails == {} and ag._order_line.pending == 0

    asyncio.run(scenario())


class SlowResume(SlowVenue):
    """A venue slow to re-enable an algorithm: resumes wait for the test (halts and cancel-alls
    go through at once)."""

    def __init__(self) -> None:
        super().__init__()
        for what in ("halt", "cancel_all"):
            self.release[what] = asyncio.Event()
            self.release[what].set()

    async def resume(self, algo: str) -> None:
        await self._wait("resume")
        await super().resume(algo)


def test_a_halt_never_waits_behind_a_resume_of_another_algorithm() -> None:
    """Found from outside: halts and resumes of every algorithm shared one lane, so the
    emergency halt of b waited (seconds, trading) behind a's slow release. The order is kept per
    algorithm: b's halt is applied at once; a's halt waits for a's resume before it."""

    async def scenario() -> None:
        h = SlowResume()
        ag = agent(h)
        for m in (Reply(cmd("halt", 1, "a")), Reply(cmd("halt", 1, "b"))):
            await ag._on_command(m)  # type: ignore[arg-type]
        await settle()
        resume_a = Reply(cmd("resume", 2, "a"))
        halt_b, halt_a = Reply(cmd("halt", 3, "b")), Reply(cmd("halt", 3, "a"))
        for m in (resume_a, halt_b, halt_a):
            await ag._on_command(m)  # type: ignore[arg-type]
        await settle()
        assert [x.results[0].status for x in halt_b.acks] == ["applied"]
        assert resume_a.acks == [] and halt_a.acks == [], "a's halt waits for a's resume"
        h.release["resume"].set()
        await settle()
        assert [x.results[0].status for x in resume_a.acks] == ["applied"]
        assert [x.results[0].status for x in halt_a.acks] == ["applied"]
        assert h.calls[-2:] == [("resume", "a"), ("halt", "a")] and ag.is_halted("a")
        await ag.close()

    asyncio.run(scenario())


def test_a_halt_of_many_algorithms_halts_at_once_those_no_resume_holds_up() -> None:
    """Found in review: a rollback's halt names every algorithm of a gateway; one of them with a
    resume at a slow venue held up the halt of all the others. Those are halted at once, the
    one behind its resume after it, and the command is acked once, for all."""

    async def scenario() -> None:
        h = SlowResume()
        ag = agent(h)
        await ag._on_command(Reply(cmd("halt", 1, "a")))  # type: ignore[arg-type]
        await settle()
        resume_a, halt_all = Reply(cmd("resume", 2, "a")), Reply(cmd("halt", 3, "a", "b", "c"))
        await ag._on_command(resume_a)  # type: ignore[arg-type]
        await ag._on_command(halt_all)  # type: ignore[arg-type]
        await settle()
        assert ag.is_halted("b") and ag.is_halted("c"), "not held up by a's resume"
        assert halt_all.acks == [] and resume_a.acks == []
        h.release["resume"].set()
        await settle()
        assert ag.is_halted("a") and h.calls[-1] == ("halt", "a")
        [ack] = halt_all.acks
        assert [(r.algo, r.status) for r in ack.results] == [
            ("a", "applied"),
            ("b", "applied"),
            ("c", "applied"),
        ]
        assert ag._halt_line.pending == 0 and ag._halt_line.tails == {}
        # Rampart's retry of the same command: duplicates, acked at once
        again = Reply(cmd("halt", 3, "a", "b", "c"))
        await ag._on_command(again)  # type: ignore[arg-type]
        await settle()
        assert [r.status for r in again.acks[0].results] == ["duplicate"] * 3
        await ag.close()

    asyncio.run(scenario())


def test_a_cancel_all_waits_only_for_halts_and_resumes_of_its_own_algorithms() -> None:
    """Found in review: the orders lane waited for every halt or resume on the gateway, so one
    resume at a slow venue held up a rollback's cancel-all of every other algorithm (and one
    cancel-all waiting held up the next). Cancel-alls are in order per algorithm, after a halt
    or resume of their own algorithms still being applied, never behind another's."""

    async def scenario() -> None:
        h = SlowResume()
        ag = agent(h)
        await ag._on_command(Reply(cmd("halt", 1, "a")))  # type: ignore[arg-type]
        await settle()
        resume_a = Reply(cmd("resume", 2, "a"))
        cancel_a, cancel_b = Reply(cmd("cancel_all", 3, "a")), Reply(cmd("cancel_all", 3, "b"))
        for m in (resume_a, cancel_a, cancel_b):
            await ag._on_command(m)  # type: ignore[arg-type]
        await settle()
        assert [x.results[0].status for x in cancel_b.acks] == ["applied"]
        assert cancel_a.acks == [], "a's cancel-all waits for a's resume"
        h.release["resume"].set()
        await settle()
        assert [x.results[0].status for x in cancel_a.acks] == ["applied"]
        assert h.calls[-2:] == [("resume", "a"), ("cancel_all", "a")]
        await ag.close()

    asyncio.run(scenario())


class SlowAllocationOfA(Recorder):
    """A venue slow to change a's capital (only a's)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def set_allocation(self, algo: str, allocation: float) -> None:
        if algo == "a":
            await self.release.wait()
        await super().set_allocation(algo, allocation)


def test_an_allocation_never_waits_behind_another_algorithms_and_keeps_its_order() -> None:
    """Every lane keeps its order per algorithm only: a rollback's allocation 0 of b is not
    held up by a's allocation at a slow venue, while a's own allocations stay in order."""

    async def scenario() -> None:
        h = SlowAllocationOfA()
        ag = agent(h)
        first_a = Reply(cmd("set_allocation", 1, "a", allocation=0.5))
        zero_b = Reply(cmd("set_allocation", 2, "b", allocation=0.0))
        then_a = Reply(cmd("set_allocation", 3, "a", allocation=0.0))
        for m in (first_a, zero_b, then_a):
            await ag._on_command(m)  # type: ignore[arg-type]
        await settle()
        assert [x.results[0].status for x in zero_b.acks] == ["applied"]
        assert first_a.acks == [] and then_a.acks == []
        h.release.set()
        await settle()
        assert [c for c in h.calls if c[1] == "a"] == [
            ("allocation=0.5", "a"),
            ("allocation=0.0", "a"),
        ]
        assert ag.book.control("a").allocation == 0.0
        await ag.close()

    asyncio.run(scenario())


def test_a_resume_overtaken_by_the_deadmans_switch_leaves_the_algorithm_halted() -> None:
    """Found from outside: the dead-man's switch tripped while a resume was at the venue; the
    resume then finished, cleared the halt and re-armed the switch, and the algorithm traded
    with Rampart silent. The gateway's own halt wins: the algorithm is halted again, the
    resume refused (not applied), the switch stays tripped."""

    async def scenario() -> None:
        h = SlowResume()
        ag = agent(h)
        await ag._on_command(Reply(cmd("halt", 1, "a")))  # type: ignore[arg-type]
        await settle()
        ag.deadman.tripped = True  # it tripped before: the release is Rampart coming back
        resume = Reply(cmd("resume", 2, "a"))
        await ag._on_command(resume)  # type: ignore[arg-type]
        await settle()
        await ag.trip_deadman()  # Rampart went silent again, the resume still at the venue
        h.release["resume"].set()
        await settle()
        [ack] = resume.acks
        assert ack.results[0].status == "refused" and "deadman" in ack.results[0].detail
        assert ag.is_halted("a") and ag.book.control("a").halt_cause == "deadman"
        assert h.calls[-2:] == [("resume", "a"), ("halt", "a")], "halted again after it"
        assert ag.deadman.tripped, "a resume that did not apply re-arms nothing"
        await ag.close()

    asyncio.run(scenario())


class Cancelling(Recorder):
    async def halt(self, algo: str) -> None:
        if algo == "a":
            raise asyncio.CancelledError  # a venue client's future cancelled under it
        await super().halt(algo)


def test_a_handler_raising_cancelled_error_does_not_stop_its_lane() -> None:
    async def scenario() -> None:
        ag = agent(Cancelling())
        first, second = Reply(cmd("halt", 1, "a")), Reply(cmd("halt", 2, "b"))
        await ag._on_command(first)  # type: ignore[arg-type]
        await ag._on_command(second)  # type: ignore[arg-type]
        await settle()
        assert first.acks == []  # not acked: Rampart resends it
        assert [a.results[0].status for a in second.acks] == ["applied"]
        assert ag.is_halted("b")
        await ag.close()

    asyncio.run(scenario())


def test_after_close_nothing_is_queued_or_applied() -> None:
    async def scenario() -> None:
        h = Recorder()
        ag = agent(h)
        await ag._on_command(Reply(cmd("halt", 1, "a")))  # type: ignore[arg-type]
        await ag.close()
        assert all(not line.pending and not line.tails for line in ag._lines.values())
        late = Reply(cmd("halt", 2, "b"))
        await ag._on_command(late)  # type: ignore[arg-type]
        await settle()
        assert late.acks == [] and not ag.is_halted("b")
        assert all(not line.pending and not line.tails for line in ag._lines.values())

    asyncio.run(scenario())


def test_a_command_nothing_of_which_applied_takes_no_dedup_slot() -> None:
    book = CommandBook()
    x = cmd("cancel_all", 1, "a", cid="x")
    book.applied_all(x, [x.targets[0]])
    version = book.version
    for i in range(DEDUP_CAPACITY):
        book.applied_all(cmd("cancel_all", 1, "a", cid=f"f{i}"), [])
    assert book.admit(x, x.targets[0], NOW) == "duplicate" and book.version == version


def test_numbers_beyond_128_bits_are_refused_not_raised() -> None:
    h = Recorder()
    ag = agent(h)
    huge = msgspec.structs.replace(cmd("halt", 1, "a"), term=2**130)
    (result,) = asyncio.run(ag.handle(huge))
    assert result.status == "refused" and "128 bits" in result.detail
    assert h.calls == [] and ag.book.term == 0


def test_the_deadman_switch_is_reset_only_by_a_resume_that_applied() -> None:
    h = Recorder()
    ag = agent(h)
    asyncio.run(ag.handle(cmd("halt", 5, "a")))
    ag.deadman.tripped = True
    stale = asyncio.run(ag.handle(cmd("resume", 4, "a")))
    assert stale[0].status == "stale_epoch" and ag.deadman.tripped
    assert asyncio.run(ag.handle(cmd("resume", 6, "a")))[0].status == "applied"
    assert not ag.deadman.tripped
