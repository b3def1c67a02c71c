"""The leader lease (rampart.lease, docs/ha.md): never two leaders at once, terms that only
grow, and a takeover once the holder stops renewing. The pure machine under a simulated KV
(random schedules: delays, pauses, lost writes), then real processes on a real 3-node
nats-server cluster (tests/cluster.py): kill -9, SIGSTOP past the lease, a NATS node killed."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cluster import NatsCluster
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.js.errors import KeyNotFoundError

from rampart.lease import LeaseKeeper, LeaseMachine, LeaseRecord, Write

MS = 1_000_000
TTL = 1000 * MS
RENEW = 250 * MS


@dataclass
class SimKV:
    """One key with a revision; compare-and-set writes."""

    revision: int = 0
    record: LeaseRecord | None = None
    history: list[LeaseRecord] = field(default_factory=list)

    def cas(self, write: Write) -> int | None:
        if write.last != self.revision:
            return None
        self.revision += 1
        self.record = write.record
        self.history.append(write.record)
        return self.revision


@dataclass
class Pending:
    write: Write
    started: int
    commit_at: int  # when the server applies it
    reply_at: int  # when the process hears back
    result: int | str | None = "pending"  # revision, None (lost the race), "pending"


def run_schedule(seed: int, processes: int, steps: int) -> None:
    """Processes read, write and sleep in a random order over one global time; the server
    applies a write between its start and its reply; a paused process does nothing for a while
    (SIGSTOP). At every instant at most one process may believe it leads."""
    rnd = random.Random(seed)
    kv = SimKV()
    machines = [LeaseMachine(f"p{i}", TTL, RENEW) for i in range(processes)]
    pending: list[Pending | None] = [None] * processes
    paused_until = [0] * processes
    now = 0
    led: dict[int, set[str]] = {}  # term -> who led in it
    for _ in range(steps):
        now += rnd.choice([1, 10, 50, 100, 300]) * MS
        # the server applies the writes due
        for p in pending:
            if p is not None and p.result == "pending" and p.commit_at <= now:
                p.result = kv.cas(p.write)
        for i, m in enumerate(machines):
            if now < paused_until[i]:
                continue
            p = pending[i]
            if p is not None:
                if p.reply_at > now:
                    continue
                pending[i] = None
                if p.result is None:
                    m.lost_race()
                elif isinstance(p.result, int):
                    if rnd.random() < 0.1:
                        pass  # the reply was lost: the process does not know it wrote
                    else:
                        m.written(p.write, p.result, p.started, now)
            if rnd.random() < 0.02:
                paused_until[i] = now + rnd.choice([500, 1500, 3000]) * MS
                continue
            m.observe(kv.revision, kv.record, now)
            w = m.next_write(now)
            if w is not None:
                commit = now + rnd.choice([0, 1, 5, 40, 400]) * MS
                reply = commit + rnd.choice([0, 1, 5, 40]) * MS
                pending[i] = Pending(w, now, commit, reply)
        leaders = [m.me for m in machines if m.is_leader(now)]
        assert len(leaders) <= 1, f"two leaders at {now / MS:.0f} ms: {leaders}"
        for m in machines:
            if m.is_leader(now):
                led.setdefault(m.term, set()).add(m.me)
    # one leader per term; each term was written once by the one who took it
    assert all(len(who) == 1 for who in led.values()), led
    takes = [r for r in kv.history if not r.released]
    terms = [r.term for r in takes]
    assert terms == sorted(terms)
    firsts: dict[int, str] = {}
    for r in takes:
        assert firsts.setdefault(r.term, r.holder) == r.holder, (r, firsts)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), processes=st.integers(2, 4))
def test_never_two_leaders_and_one_holder_per_term(seed: int, processes: int) -> None:
    run_schedule(seed, processes, 400)


def test_a_free_lease_is_taken_and_renewed_and_an_expired_one_taken_over() -> None:
    a, b = LeaseMachine("a", TTL, RENEW), LeaseMachine("b", TTL, RENEW)
    kv = SimKV()
    a.observe(0, None, 0)
    w = a.next_write(0)
    assert w is not None and w.record == LeaseRecord(holder="a", term=1, ttl_ms=1000)
    rev = kv.cas(w)
    assert rev is not None
    a.written(w, rev, 0, 1 * MS)
    assert a.is_leader(1 * MS) and a.term == 1
    b.observe(kv.revision, kv.record, 2 * MS)
    assert b.next_write(2 * MS) is None  # held
    assert a.next_write(100 * MS) is None  # not yet time to renew
    renew = a.next_write(RENEW)
    assert renew is not None and renew.record.term == 1
    # a stops (killed): its lease ends 0.9 ttl after its last write started
    assert not a.is_leader(900 * MS)
    # b takes it over once the revision it saw has not moved for a ttl
    assert b.next_write(2 * MS + TTL - 1) is None
    take = b.next_write(2 * MS + TTL)
    assert take is not None and take.record.term == 2 and take.record.holder == "b"


def test_a_released_lease_is_taken_at_once_and_a_write_by_another_deposes() -> None:
    a, b = LeaseMachine("a", TTL, RENEW), LeaseMachine("b", TTL, RENEW)
    kv = SimKV()
    a.observe(0, None, 0)
    w = a.next_write(0)
    assert w is not None
    a.written(w, kv.cas(w) or 0, 0, 0)
    release = a.release()
    assert release is not None and release.record.released and not a.is_leader(1)
    kv.cas(release)
    b.observe(kv.revision, kv.record, 5 * MS)
    take = b.next_write(5 * MS)
    assert take is not None and take.record.term == 2
    # a process that believed it led and reads another's record is deposed at once
    c = LeaseMachine("c", TTL, RENEW)
    c.observe(0, None, 0)
    wc = c.next_write(0)
    assert wc is not None
    c.written(wc, 1, 0, 0)
    assert c.is_leader(1)
    c.observe(2, LeaseRecord(holder="d", term=2, ttl_ms=1000), 10 * MS)
    assert not c.is_leader(10 * MS)
    # a lagging replica's older revision is ignored
    c.observe(1, LeaseRecord(holder="c", term=1, ttl_ms=1000), 11 * MS)
    assert c.seen is not None and c.seen.revision == 2


# ---- real processes on a real 3-node cluster --------------------------------------------


def claims(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def check_one_leader_at_a_time(lines: list[dict[str, Any]]) -> dict[int, tuple[str, int, int]]:
    """Each term has one process; a term's claims all come before the next term's first one.
    Returns term -> (who, first claim, last claim)."""
    terms: dict[int, tuple[str, int, int]] = {}
    for c in lines:
        who, first, last = terms.get(c["term"], (c["me"], c["at"], c["at"]))
        assert who == c["me"], f"term {c['term']} claimed by {who} and {c['me']}"
        terms[c["term"]] = (who, min(first, c["at"]), max(last, c["at"]))
    ordered = sorted(terms.items())
    for (t1, (_, _, last1)), (t2, (_, first2, _)) in itertools.pairwise(ordered):
        assert last1 < first2, f"term {t1} acted at {last1} after term {t2} began at {first2}"
    return terms


class Contender:
    def __init__(self, cluster: NatsCluster, base: Path, me: str, ttl: float = 1.0) -> None:
        self.log = base / f"{me}.jsonl"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("lease_proc.py")),
                ",".join(cluster.urls),
                "shard-a",
                me,
                str(self.log),
                "--ttl",
                str(ttl),
            ]
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s")
        time.sleep(0.02)


def leader_of(contenders: list[Contender]) -> Contender:
    """The contender with the newest claim (after one has claimed)."""
    latest = [(c, lines[-1]["at"]) for c in contenders if (lines := claims(c.log))]
    assert latest, "nobody leads"
    return max(latest, key=lambda x: x[1])[0]


def test_kill_9_sigstop_and_a_lost_nats_node_never_make_two_leaders(tmp_path: Path) -> None:
    """Three contenders for one shard on a 3-node cluster. The leader is killed (-9): another
    takes over in a newer term. The next leader is stopped (SIGSTOP) past its lease: another
    takes over; resumed (SIGCONT), the stopped one acts no more in its old term. A NATS node is
    killed: there is still one leader. Throughout, every term has one process and ends before
    the next begins (CLOCK_MONOTONIC is one clock for all the processes)."""
    with NatsCluster(tmp_path / "cluster") as cluster:
        contenders = [Contender(cluster, tmp_path, f"p{i}") for i in range(3)]
        try:
            wait_for(lambda: any(claims(c.log) for c in contenders), 30, "a leader")
            first = leader_of(contenders)
            first_term = claims(first.log)[-1]["term"]
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait()
            killed_at = time.monotonic_ns()
            others = [c for c in contenders if c is not first]

            def new_term_after(t: int) -> bool:
                return any(line["term"] > t for c in others for line in claims(c.log))

            wait_for(lambda: new_term_after(first_term), 20, "a takeover after kill -9")
            second = leader_of(others)
            second_term = claims(second.log)[-1]["term"]
            took_over = min(
                line["at"] for line in claims(second.log) if line["term"] == second_term
            )
            assert took_over > killed_at
            # SIGSTOP past the lease, then SIGCONT
            second.proc.send_signal(signal.SIGSTOP)
            third = next(c for c in others if c is not second)
            wait_for(
                lambda: any(line["term"] > second_term for line in claims(third.log)),
                20,
                "a takeover from a stopped leader",
            )
            second.proc.send_signal(signal.SIGCONT)
            time.sleep(1.0)  # the woken one runs: it must not act in its old term
            woken = [line for line in claims(second.log) if line["term"] == second_term]
            third_first = min(
                line["at"] for line in claims(third.log) if line["term"] > second_term
            )
            assert all(line["at"] < third_first for line in woken)
            # a NATS node dies: the lease lives on (R3), one leader still
            cluster.kill("n1")
            mark = time.monotonic_ns()
            wait_for(
                lambda: any(
                    line["at"] > mark + 2_000_000_000
                    for c in contenders
                    if c.proc.poll() is None
                    for line in claims(c.log)
                ),
                30,
                "a leader after a NATS node was killed",
            )
        finally:
            for c in contenders:
                c.stop()
        every = [line for c in contenders for line in claims(c.log)]
        terms = check_one_leader_at_a_time(every)
        assert len(terms) >= 3, terms


class FlakyKV:
    """A KV bucket that answers, then stops answering (NATS gone): counts the calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.down = False
        self.revision = 0
        self.value: bytes | None = None

    def _call(self) -> None:
        self.calls += 1
        if self.down:
            raise ConnectionError("nats: outbound buffer limit exceeded")

    async def get(self, key: str) -> Any:
        self._call()
        if self.value is None:
            raise KeyNotFoundError
        return SimpleNamespace(revision=self.revision, value=self.value)

    async def create(self, key: str, value: bytes) -> int:
        self._call()
        self.revision += 1
        self.value = value
        return self.revision

    async def update(self, key: str, value: bytes, last: int) -> int:
        return await self.create(key, value)


def test_a_leader_whose_nats_is_gone_polls_at_its_pace_and_stops_leading() -> None:
    """Once its lease has run out, a keeper that cannot reach NATS reads every ``poll``, not
    in a busy loop (which once filled a daemon's memory with log lines), and no longer leads."""

    async def scenario() -> tuple[int, bool, list[tuple[bool, int]]]:
        kv = FlakyKV()
        changes: list[tuple[bool, int]] = []
        keeper = LeaseKeeper(
            kv,  # type: ignore[arg-type]
            "s",
            "me",
            ttl=0.2,
            renew=0.05,
            poll=0.05,
            on_change=lambda leader, term: changes.append((leader, term)),
        )
        keeper.start()
        await asyncio.sleep(0.1)
        assert keeper.is_leader()
        kv.down = True
        before = kv.calls
        await asyncio.sleep(0.6)
        leading = keeper.is_leader()
        await keeper.close(release=False)
        return kv.calls - before, leading, changes

    calls, leading, changes = asyncio.run(scenario())
    assert not leading
    assert changes == [(True, 1), (False, 1)]
    assert calls <= 20, f"{calls} reads in 0.6 s with a poll of 0.05 s"
