"""The shard's replicated state (rampart.state_stream, docs/ha.md) against a real nats-server:
a leader's transactions reach a standby's store whole and in order, audit chain included; a
second writer (expected last sequence wrong) fails and commits nothing; a write by a process
that does not hold the lease fails; a standby's follow loop stops when told, even if a
cancellation is swallowed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.errors import TimeoutError as NatsTimeoutError

from rampart import failpoints, state_stream
from rampart.embedded import EmbeddedNatsServer
from rampart.state_stream import StateStream
from rampart.store import Store, StoreError, decode_ops, encode_ops


def test_a_write_tried_again_after_a_lost_ack_is_stored_once(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """The leader tries a write again when JetStream does not answer (a stream electing a new
    leader after a NATS node died). If the first try was stored and only its ack was lost, the
    next is refused as "wrong last sequence" (JetStream checks that before duplicates): the
    message after the last sequence carries this write's id, so it is this write, stored once.
    A message there with another id is another writer's: refused."""

    async def scenario() -> None:
        nc = await nats.connect(server.url)
        try:
            stream = StateStream(nc, "rampart", "t2")
            await stream.ensure()
            real = stream.js.publish
            lost = {"acks": 0}

            async def ack_lost(*args: Any, **kwargs: Any) -> Any:
                ack = await real(*args, **kwargs)
                if lost["acks"]:
                    lost["acks"] -= 1
                    raise NatsTimeoutError
                return ack

            stream.js.publish = ack_lost  # type: ignore[method-assign]
            assert await stream._publish(b"one", "w1", lambda: True) == 1
            lost["acks"] = 1
            assert await stream._publish(b"two", "w1", lambda: True) == 2
            assert await stream.last_seq() == 2 and stream.last == 2
            # a lost ack while another writer's message took the place: refused
            stream.last = 1
            lost["acks"] = 1
            with pytest.raises(nats.js.errors.BadRequestError):
                await stream._publish(b"two'", "w2", lambda: True)
            assert await stream.last_seq() == 2
            # no longer leading: not tried again
            stream.last = 2
            lost["acks"] = 1
            with pytest.raises(NatsTimeoutError):
                await stream._publish(b"three", "w1", lambda: False)
        finally:
            await nc.close()

    asyncio.run(scenario())


def test_a_leaders_transactions_reach_a_standby_whole_and_in_order(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        nc = await nats.connect(server.url)
        leader_store, standby_store = Store(tmp_path / "l.db"), Store(tmp_path / "s.db")
        try:
            leader = StateStream(nc, "rampart", "t1")
            await leader.ensure()
            loop = asyncio.get_running_loop()
            leading = [True]
            leader_store.replicator = leader.replicator(lambda: leading[0], loop)

            def writes() -> None:
                with leader_store.transaction():
                    leader_store.set_halt("alpha", halted=True, reason="r", actor="a", ts=1)
                    leader_store.put("intent/alpha", b"halted")
                    leader_store.append_audit("rollback", {"algo": "alpha"}, actor="a", ts=2)
                leader_store.delete("intent/alpha")
                leader_store.append_audit("release", {"algo": "alpha"}, actor="a", ts=3)
                leader_store.set_halt("alpha", halted=False, reason="r", actor="a", ts=4)

            await asyncio.to_thread(writes)
            standby = StateStream(nc, "rampart", "t1")
            assert await standby.catch_up(standby_store) == 4
            assert standby_store.replicated_seq() == 4 == leader_store.replicated_seq()
            assert standby_store.audit_head() == leader_store.audit_head()
            assert standby_store.verify_audit().ok
            assert standby_store.halts() == {} and standby_store.get("intent/alpha") is None
            # caught up: nothing applied twice
            assert await standby.catch_up(standby_store) == 4
            assert len(standby_store.audit()) == 2

            # a second writer that did not see the last write: refused, nothing committed
            other_store = Store(tmp_path / "o.db")
            try:
                other = StateStream(nc, "rampart", "t1")
                other.last = 2  # behind
                other_store.replicator = other.replicator(lambda: True, loop)
                with pytest.raises(StoreError, match="could not be replicated"):
                    await asyncio.to_thread(other_store.put, "intent/alpha", b"resume")
                assert other_store.get("intent/alpha") is None
            finally:
                other_store.close()
            # a process that does not hold the lease writes nothing
            leading[0] = False
            with pytest.raises(StoreError, match="does not hold the lease"):
                await asyncio.to_thread(leader_store.put, "intent/beta", b"x")
            assert leader_store.get("intent/beta") is None
            assert await standby.last_seq() == 4
        finally:
            leader_store.close()
            standby_store.close()
            await nc.close()

    asyncio.run(scenario())


def _state(store: Store) -> tuple[Any, ...]:
    """Everything a snapshot carries, to compare two stores."""
    return (
        store.items("intent/"),
        store.items("checkpoint/"),
        store.halts(),
        store.rollbacks(),
        store.audit(),
        store.audit_head(),
    )


# how catching up reads: every message by its own request, or (past 0) by an ordered consumer
READS = pytest.mark.parametrize("by_request", [10**9, 0], ids=["requests", "consumer"])


@READS
def test_a_snapshot_bounds_the_stream_and_rebuilds_a_store_that_was_behind_it(
    server: EmbeddedNatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by_request: int
) -> None:
    """The leader writes its whole state as a snapshot (here in many small parts) and purges
    what came before: a new standby (empty store) is rebuilt from the snapshot and the writes
    after it, audit chain whole; a standby in step skips the snapshot and ends equal; a
    store behind a purged stream without a snapshot is refused with a clear error, and an
    unfinished snapshot at the tail (a leader that died writing it) is skipped. Transactions
    are applied 3 to a commit, so batches end mid-history and at snapshots."""
    monkeypatch.setattr(state_stream, "READ_BY_REQUEST", by_request)
    monkeypatch.setattr(state_stream, "APPLY_BATCH", 3)

    async def scenario() -> None:
        nc = await nats.connect(server.url)
        stores = {n: Store(tmp_path / f"{n}.db") for n in ("l", "in_step", "new", "late")}
        leader_store = stores["l"]
        try:
            leader = StateStream(nc, "rampart", "snap")
            await leader.ensure()
            loop = asyncio.get_running_loop()
            leader_store.replicator = leader.replicator(lambda: True, loop)

            def history(n: int, tag: str) -> None:
                for i in range(n):
                    with leader_store.transaction():
                        algo = f"algo-{i % 7}"
                        leader_store.put(f"intent/{algo}", f"{tag}{i}".encode())
                        leader_store.put(f"checkpoint/{algo}", bytes([i % 256]) * 300)
                        leader_store.set_halt(algo, halted=i % 2 == 0, reason=tag, actor="a", ts=i)
                        leader_store.append_audit("note", {"i": i, "tag": tag}, actor="a", ts=i)
                    if i % 10 == 3:
                        leader_store.delete(f"intent/algo-{(i + 1) % 7}")

            await asyncio.to_thread(history, 40, "before")
            late = StateStream(nc, "rampart", "snap")
            await late.catch_up(stores["late"])
            await asyncio.to_thread(history, 5, "late")  # unseen by "late" before the purge
            in_step = StateStream(nc, "rampart", "snap")
            await in_step.catch_up(stores["in_step"])
            first, last = await asyncio.to_thread(leader_store.write_snapshot, 2_000)
            assert last - first >= 3, "the snapshot was meant to come in several parts"
            await leader.purge_before(first)
            assert await leader.first_seq() == first
            await asyncio.to_thread(history, 6, "after")

            fresh = StateStream(nc, "rampart", "snap")
            assert await fresh.catch_up(stores["new"]) == leader.last
            assert await in_step.catch_up(stores["in_step"]) == leader.last
            for name in ("new", "in_step"):
                assert _state(stores[name]) == _state(leader_store), name
                assert stores[name].verify_audit().ok, name
                assert stores[name].replicated_seq() == leader.last
            assert len(stores["new"].audit()) == 51

            # a standby that was away: behind the snapshot, its audit log a prefix of the
            # shard's; rebuilt, the records it had kept, the newer ones added
            assert len(stores["late"].audit()) == 40
            assert await late.catch_up(stores["late"]) == leader.last
            assert _state(stores["late"]) == _state(leader_store)
            assert stores["late"].verify_audit().ok

            # a store of another history (its audit head differs): refused, nothing applied
            alien = Store(tmp_path / "alien.db")
            stores["alien"] = alien
            alien.append_audit("note", {"i": "elsewhere"}, actor="b", ts=1)
            before = _state(alien)
            with pytest.raises(StoreError, match="not the shard's"):
                await StateStream(nc, "rampart", "snap").catch_up(alien)
            assert _state(alien) == before and alien.replicated_seq() == 0

            # behind the stream's start, which is no snapshot: refused, nothing applied
            await leader.purge_before(last + 2)
            gone = Store(tmp_path / "gone.db")
            stores["gone"] = gone
            with pytest.raises(RuntimeError, match="not with a snapshot"):
                await StateStream(nc, "rampart", "snap").catch_up(gone)
            stores["empty"] = Store(tmp_path / "empty.db")
            assert _state(gone) == _state(stores["empty"])

            # an unfinished snapshot (its leader died after part 1 of 2): skipped
            from rampart.store import split_snapshot

            parts = split_snapshot(leader_store.snapshot_ops(), 2_000)
            await asyncio.to_thread(leader_store.replicator, parts[0])
            await asyncio.to_thread(history, 2, "tail")
            assert await in_step.catch_up(stores["in_step"]) == leader.last
            assert _state(stores["in_step"]) == _state(leader_store)
        finally:
            for store in stores.values():
                store.close()
            await nc.close()

    asyncio.run(scenario())


@READS
def test_a_message_missing_from_the_stream_is_never_skipped(
    server: EmbeddedNatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by_request: int
) -> None:
    """A hole in the stream (a message deleted, as a purge would while it is read): catching
    up stops at it with ``NotFoundError`` (``catch_up`` reads again, then gives up) and applies
    nothing after it; the store stays a prefix of the leader's history, and catches up in
    full from a snapshot written after the hole."""
    monkeypatch.setattr(state_stream, "READ_BY_REQUEST", by_request)

    async def scenario() -> None:
        nc = await nats.connect(server.url)
        leader_store, standby_store = Store(tmp_path / "l.db"), Store(tmp_path / "s.db")
        try:
            leader = StateStream(nc, "rampart", "hole")
            await leader.ensure()
            leader_store.replicator = leader.replicator(lambda: True, asyncio.get_running_loop())

            def writes(n: int) -> None:
                for i in range(n):
                    leader_store.append_audit("note", {"i": i}, actor="a", ts=i + 1)

            await asyncio.to_thread(writes, 40)
            await leader.js.delete_msg(leader.name, 20)
            standby = StateStream(nc, "rampart", "hole")
            with pytest.raises(nats.js.errors.NotFoundError):
                await standby.catch_up(standby_store)
            applied = standby_store.replicated_seq()
            assert applied < 20
            assert len(standby_store.audit()) == applied and standby_store.verify_audit().ok
            # a snapshot after the hole, and what came before purged: caught up in full
            first, _ = await asyncio.to_thread(leader_store.write_snapshot, 2_000)
            await leader.purge_before(first)
            assert await standby.catch_up(standby_store) == leader.last
            assert _state(standby_store) == _state(leader_store)
            assert standby_store.verify_audit().ok
        finally:
            leader_store.close()
            standby_store.close()
            await nc.close()

    asyncio.run(scenario())


def test_a_write_replicated_then_not_committed_leaves_the_store_refusing_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit fails after the write reached the stream (the error failpoint as a disk
    error): the store says it is behind its shard's (``behind_replica``, the daemon's cue to
    step down), kept nothing of the write, and takes no more writes: one more would leave a
    hole behind it for good (its replicated sequence past a write it never had)."""
    store = Store(tmp_path / "s.db")
    try:
        seqs = iter(range(1, 100))
        store.replicator = lambda data: next(seqs)
        store.put("intent/a", b"1")
        monkeypatch.setitem(failpoints._ERRORS, "commit_after_replication", 1)
        with pytest.raises(StoreError, match="commit failed"):
            store.put("intent/a", b"2")
        assert store.behind_replica
        assert store.get("intent/a") == b"1" and store.replicated_seq() == 1
        with pytest.raises(StoreError, match="behind its shard's state stream"):
            store.put("intent/b", b"x")
        assert store.get("intent/b") is None
    finally:
        store.close()


class Abandon(BaseException):
    """Raised into a loop that would not stop otherwise."""


def test_a_standby_stops_following_when_told_even_if_a_cancellation_is_swallowed(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """Python 3.11's ``asyncio.wait_for`` (inside nats-py's requests) can swallow a cancellation
    that arrives with the reply: a takeover once waited forever for its follow loop. The loop
    ends at ``stop``."""

    async def scenario() -> None:
        nc = await nats.connect(server.url)
        store = Store(tmp_path / "s.db")
        try:
            stream = StateStream(nc, "rampart", "t2")
            await stream.ensure()

            give_up = [False]

            async def swallowing_catch_up(store: Store) -> int:
                if give_up[0]:
                    raise Abandon  # ends the loop whatever it does (the test's clean-up)
                try:
                    await asyncio.sleep(0.01)
                except asyncio.CancelledError:
                    pass  # as wait_for does when its future completed at the same moment
                return 0

            stream.catch_up = swallowing_catch_up  # type: ignore[method-assign]
            stop = asyncio.Event()
            task = asyncio.ensure_future(stream.follow(store, 0.001, stop))
            await asyncio.sleep(0.05)
            stop.set()
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=5)
            give_up[0] = True
            await asyncio.wait({task}, timeout=5)
            assert task in done, "the follow loop went on after stop was set"
        finally:
            store.close()
            await nc.close()

    asyncio.run(scenario())


ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.text(min_size=1, max_size=8), st.binary(max_size=16)),
        st.tuples(st.just("delete"), st.text(min_size=1, max_size=8)),
        st.tuples(
            st.just("halt"),
            st.text(max_size=8),
            st.booleans(),
            st.text(max_size=8),
            st.text(max_size=8),
            st.integers(0, 2**62),
        ),
    ),
    max_size=20,
)


@settings(max_examples=100, deadline=None)
@given(ops)
def test_a_transactions_writes_survive_their_encoding(writes: list[tuple[object, ...]]) -> None:
    assert decode_ops(encode_ops(writes)) == writes
