"""Fencing by leadership term (docs/ha.md, docs/protocol.md "Terms"): once a gateway has seen
a verified command or sidecar heartbeat of term T, it applies nothing an older term sends
(``stale_term``) and does not count an older term's heartbeats for its dead-man's switch; within
the newer term, decisions beat the older term's whatever their epochs (a new leader's clock may
be behind the old one's)."""

from __future__ import annotations

import asyncio
import time
import uuid
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from rampart.gateway.commands import CommandBook
from rampart.gateway.sdk import GatewayAgent, GatewayHandlers
from rampart.protocol import Command, CommandTarget, Intent, SidecarHeartbeat, Subjects, encoder
from rampart.reconcile import plan
from rampart.signing import SigningKey, sign_headers

SUBJ = Subjects()
NOW = 1_764_028_800_000_000_000


def cmd(kind: str, term: int, epoch: int, allocation: float | None = None) -> Command:
    return Command(
        command_id=uuid.uuid4().hex,
        epoch=epoch,
        kind=kind,  # type: ignore[arg-type]
        targets=[CommandTarget(algo="alpha", allocation=allocation)],
        issued_at=NOW,
        valid_until=NOW + 10**9,
        reason="test",
        term=term,
    )


def send(book: CommandBook, c: Command) -> str:
    """What the SDK does with a verified command: see its term, admit, apply."""
    book.see_term(c.term)
    status = book.admit(c, c.targets[0], NOW)
    if status is None:
        book.applied(c, c.targets[0])
        return "applied"
    return status


def test_an_older_terms_commands_are_refused_and_a_newer_terms_win_whatever_the_epoch() -> None:
    book = CommandBook()
    assert send(book, cmd("halt", 1, 5_000)) == "applied"
    # the new leader's clock is behind: its epochs are lower, its term higher
    assert send(book, cmd("resume", 2, 10)) == "applied"
    assert not book.report("alpha").halted
    for kind in ("halt", "resume", "cancel_all", "flatten", "activate"):
        assert send(book, cmd(kind, 1, 9_000)) == "stale_term", kind
    assert send(book, cmd("set_allocation", 1, 9_000, 1.0)) == "stale_term"
    # within term 2, epochs order decisions as before; halt beats resume
    assert send(book, cmd("halt", 2, 20)) == "applied"
    assert send(book, cmd("resume", 2, 15)) == "stale_epoch"
    assert send(book, cmd("resume", 3, 1)) == "applied"


def test_the_report_carries_the_term_of_each_epoch_and_a_newer_leaders_release_is_resumed() -> None:
    """What the reconciler needs to judge a halt against a release made by another host: the
    gateway reports the term each epoch came in, and a release stored by term 2 lifts term 1's
    halt even though term 1's clock ran ahead."""
    book = CommandBook()
    assert send(book, cmd("halt", 1, 5_000)) == "applied"
    assert send(book, cmd("set_allocation", 2, 10, 0.5)) == "applied"
    report = book.report("alpha")
    assert report.epochs == {"halt": 5_000, "allocation": 10}
    assert report.terms == {"halt": 1, "allocation": 2}
    released = Intent(algo="alpha", allocation=0.5, released_epoch=20, released_term=2)
    assert [op.kind for op in plan([released], {"alpha": report}).increases] == ["resume"]


@st.composite
def streams(draw: st.DrawFn) -> list[Command]:
    kinds = st.sampled_from(["halt", "resume", "set_allocation", "activate", "cancel_all"])
    return [
        cmd(k, draw(st.integers(0, 3)), draw(st.integers(0, 50)), 0.5)
        for k in draw(st.lists(kinds, min_size=1, max_size=40))
    ]


@settings(max_examples=200, deadline=None)
@given(streams())
def test_nothing_of_an_older_term_is_applied_after_a_newer_one_was_seen(
    commands: list[Command],
) -> None:
    book = CommandBook()
    newest = 0
    last: dict[str, tuple[int, int]] = {}
    for c in commands:
        outcome = send(book, c)
        if c.term < newest:
            assert outcome == "stale_term"
        newest = max(newest, c.term)
        if outcome == "applied" and c.kind in ("halt", "set_allocation", "activate"):
            dim = {"halt": "halt", "set_allocation": "allocation", "activate": "activation"}
            key = dim[c.kind]
            assert (c.term, c.epoch) >= last.get(key, (0, -1))
            last[key] = (c.term, c.epoch)
    assert book.term == max(c.term for c in commands)


def test_an_older_terms_heartbeat_does_not_keep_the_deadmans_switch_alive() -> None:
    """A deposed leader woken up (SIGCONT) still sends heartbeats before it notices: once the
    gateway has seen the newer term they do not count, so if the new leader dies too the switch
    trips."""
    key = SigningKey.generate()
    now = [time.time_ns()]
    mono = [1_000]
    agent = GatewayAgent(
        None,  # type: ignore[arg-type]
        "gw1",
        GatewayHandlers(),
        deadman_timeout=3.0,
        wall_clock=lambda: now[0],
        monotonic=lambda: mono[0],
        trusted_keys=[key.public_key],
    )
    subject = SUBJ.sidecar_heartbeat

    def beat(term: int, boot: str) -> None:
        now[0] += 1_000_000
        mono[0] += 1_000_000
        data = encoder.encode(SidecarHeartbeat(daemon="r", ts=now[0], boot=boot, term=term))
        msg = SimpleNamespace(subject=subject, data=data, headers=sign_headers(key, subject, data))
        asyncio.run(agent._on_sidecar_heartbeat(msg))  # type: ignore[arg-type]

    beat(1, "old")
    assert agent.deadman.last_seen == mono[0]
    beat(2, "new")
    seen = mono[0]
    assert agent.book.term == 2
    beat(1, "old")  # the deposed leader's
    assert agent.deadman.last_seen == seen
    assert agent.refused_signatures == {}  # not a forgery
    beat(2, "new")
    assert agent.deadman.last_seen == mono[0]


class Cancels(GatewayHandlers):
    async def cancel_all(self, algo: str) -> None:
        return None


def test_the_sdk_answers_an_older_terms_command_stale_term_naming_why() -> None:
    agent = GatewayAgent(
        None,  # type: ignore[arg-type]
        "gw1",
        Cancels(),
        wall_clock=lambda: NOW,
        trusted_keys=[SigningKey.generate().public_key],
    )
    (first,) = asyncio.run(agent.handle(cmd("cancel_all", 2, 1)))
    assert first.status == "applied"
    (late,) = asyncio.run(agent.handle(cmd("cancel_all", 1, 99)))
    assert late.status == "stale_term"
    assert late.detail is not None and "no longer leads" in late.detail
