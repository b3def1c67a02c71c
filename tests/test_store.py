"""The durable store: schema, durability, fail-closed opening, latches, rollbacks, kv, atomicity."""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from support import until

from rampart.audit import GENESIS_HASH, AuditHead
from rampart.durability import (
    HeadFileError,
    HeadMirror,
    MirroredHead,
    audit_verify_main,
    behind,
    decode_head,
    head_path,
    read_head_file,
    write_head_file,
)
from rampart.store import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    RollbackRecord,
    RollbackState,
    StepRecord,
    Store,
    StoreError,
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    with Store(db) as store:
        yield store


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def rollback(
    rid: str, *algos: str, started_at: int, state: RollbackState = "running"
) -> RollbackRecord:
    return RollbackRecord(
        rollback_id=rid,
        algos=list(algos),
        scope="algo",
        trigger="max_drawdown",
        reason="drawdown 6% > 5%",
        actor="rampart",
        started_at=started_at,
        state=state,
    )


# ---- opening and schema -------------------------------------------------------------------


def test_new_store_is_wal_with_full_sync_and_versioned(store: Store, db: Path) -> None:
    conn = raw(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    conn.close()
    assert store._db().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()
    assert store.closed


def test_reopen_keeps_everything(db: Path) -> None:
    with Store(db) as store:
        store.set_halt("momentum-v2", halted=True, reason="drawdown", actor="rampart", ts=10)
        store.save_rollback(rollback("rb-1", "momentum-v2", started_at=10))
        store.put("deploy/momentum", b"\x00stage-2")
        rec = store.append_audit("halt", {"algo": "momentum-v2"}, actor="rampart", ts=10)
    with Store(db) as store:
        assert store.is_halted("momentum-v2")
        assert [r.rollback_id for r in store.open_rollbacks()] == ["rb-1"]
        assert store.get("deploy/momentum") == b"\x00stage-2"
        assert store.audit() == [rec]
        assert store.verify_audit().ok


def test_garbage_file_raises_store_error(db: Path) -> None:
    db.write_bytes(b"this is not a database, it is a shopping list\n" * 200)
    with pytest.raises(StoreError, match="not a readable SQLite database"):
        Store(db)


def _filled(db: Path) -> bytes:
    with Store(db) as store, store.transaction():
        for i in range(300):
            store.append_audit("tick", {"i": i, "pad": "x" * 200}, actor="t", ts=i)
    return db.read_bytes()


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_file_raises_store_error(db: Path, keep: float) -> None:
    data = _filled(db)
    assert not Path(f"{db}-wal").exists()  # checkpointed on close: the main file is everything
    db.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(StoreError, match="restore it from a backup"):
        Store(db)


def test_file_cut_inside_the_header_raises_store_error(db: Path) -> None:
    db.write_bytes(_filled(db)[:60])
    with pytest.raises(StoreError):
        Store(db)


def test_empty_existing_file_is_not_silently_a_new_store(db: Path) -> None:
    _filled(db)
    db.write_bytes(b"")
    with pytest.raises(StoreError, match="empty"):
        Store(db)


def test_newer_schema_raises_store_error(db: Path) -> None:
    Store(db).close()
    conn = raw(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        Store(db)


def test_foreign_sqlite_database_raises_store_error(db: Path) -> None:
    conn = raw(db)
    conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.close()
    with pytest.raises(StoreError, match="not a Rampart state store"):
        Store(db)


def test_missing_table_raises_store_error(db: Path) -> None:
    Store(db).close()
    conn = raw(db)
    conn.execute("DROP TABLE halts")
    conn.close()
    with pytest.raises(StoreError, match="tables missing: halts"):
        Store(db)


def test_open_refusals(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such file"):
        Store(tmp_path / "missing.db", create=False)
    with pytest.raises(StoreError, match="no such file"):
        Store(tmp_path / "missing.db", readonly=True)
    with pytest.raises(StoreError, match="directory"):
        Store(tmp_path)
    with pytest.raises(StoreError, match="cannot open"):
        Store(tmp_path / "no-such-dir" / "state.db")


def test_readonly_store_reads_but_refuses_writes(db: Path) -> None:
    with Store(db) as store:
        store.set_halt("a", halted=True, reason="r", actor="op", ts=1)
        with Store(db, readonly=True) as reader:
            assert reader.is_halted("a")
            with pytest.raises(StoreError, match="read-only"):
                reader.put("k", b"v")
            store.set_halt("b", halted=True, reason="r", actor="op", ts=2)
            assert set(reader.halts()) == {"a", "b"}


def test_closed_store_raises_store_error(store: Store) -> None:
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="after close"):
        store.halts()


# ---- halted latches -----------------------------------------------------------------------


def test_halt_latch_survives_reopen_until_released(db: Path) -> None:
    with Store(db) as store:
        store.set_halt("a", halted=True, reason="daily loss", actor="rampart", ts=5)
        store.set_halt("b", halted=True, reason="operator", actor="alice", ts=6)
    with Store(db) as store:
        latch = store.halts()["a"]
        assert (latch.algo, latch.reason, latch.actor, latch.ts) == (
            "a",
            "daily loss",
            "rampart",
            5,
        )
        store.set_halt("a", halted=False, reason="reviewed", actor="bob", ts=7)
    with Store(db) as store:
        assert list(store.halts()) == ["b"]
        assert not store.is_halted("a")
        assert not store.is_halted("never-seen")
        store.set_halt("a", halted=True, reason="again", actor="rampart", ts=8)
        assert store.halts()["a"].ts == 8


def test_set_halt_rejects_bad_arguments(store: Store) -> None:
    with pytest.raises(ValueError, match="algo"):
        store.set_halt("", halted=True, reason="r", actor="a", ts=1)
    with pytest.raises(TypeError, match="ts"):
        store.set_halt("a", halted=True, reason="r", actor="a", ts=1.5)  # type: ignore[arg-type]
    assert store.halts() == {}


# ---- rollback records ---------------------------------------------------------------------


def test_rollback_upsert_and_queries(store: Store) -> None:
    store.save_rollback(rollback("rb-1", "a", "b", started_at=100))
    store.save_rollback(rollback("rb-2", "b", started_at=200))
    store.save_rollback(rollback("rb-3", "c", started_at=300, state="succeeded"))
    assert [r.rollback_id for r in store.rollbacks()] == ["rb-3", "rb-2", "rb-1"]
    assert [r.rollback_id for r in store.rollbacks(limit=1)] == ["rb-3"]
    assert [r.rollback_id for r in store.rollbacks("b")] == ["rb-2", "rb-1"]
    assert [r.rollback_id for r in store.open_rollbacks()] == ["rb-1", "rb-2"]

    steps = [
        StepRecord(name="halt", status="acked", attempts=1, duration_ns=800_000),
        StepRecord(name="cancel_all", status="timeout", attempts=3, detail="gw-1 silent"),
    ]
    done = msgspec.structs.replace(
        rollback("rb-1", "a", started_at=100, state="failed"),
        finished_at=900,
        steps=steps,
        target_ms={"halt": 2.0, "cancel_all": 5.0},
    )
    store.save_rollback(done)
    assert store.rollbacks("a") == [done]
    assert [r.rollback_id for r in store.rollbacks("b")] == ["rb-2"]  # b left rb-1
    assert len(store.rollbacks()) == 3
    assert store.open_rollbacks()[0] == done
    store.save_rollback(rollback("rb-1", "a", started_at=100, state="succeeded"))
    assert [r.rollback_id for r in store.open_rollbacks()] == ["rb-2"]


def test_invalid_rollback_record_is_refused(store: Store) -> None:
    bad = rollback("rb-x", "a", started_at=1, state="exploded")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid rollback record"):
        store.save_rollback(bad)
    assert store.rollbacks() == []


def test_unreadable_rollback_row_raises_store_error(store: Store, db: Path) -> None:
    store.save_rollback(rollback("rb-1", "a", started_at=1))
    conn = raw(db)
    conn.execute("UPDATE rollbacks SET body = x'00ff'")
    conn.close()
    with pytest.raises(StoreError, match="rb-1"):
        store.open_rollbacks()


# ---- key/value ----------------------------------------------------------------------------


def test_kv_put_get_items_delete(store: Store) -> None:
    for key in ["a", "a/", "a/1", "a/2", "a0", "ab", "b/1"]:
        store.put(key, key.encode())
    store.put("a/1", b"new")
    assert store.get("a/1") == b"new"
    assert store.get("zzz") is None
    assert store.items("a/") == [("a/", b"a/"), ("a/1", b"new"), ("a/2", b"a/2")]
    assert [k for k, _ in store.items("a")] == ["a", "a/", "a/1", "a/2", "a0", "ab"]
    assert len(store.items()) == 7
    assert store.items("c") == []
    assert store.delete("a/1")
    assert not store.delete("a/1")
    assert store.get("a/1") is None
    with pytest.raises(TypeError, match="bytes"):
        store.put("k", "text")  # type: ignore[arg-type]


# ---- transactions -------------------------------------------------------------------------


class Boom(Exception):
    pass


def test_exception_in_transaction_rolls_back_state_and_audit(store: Store) -> None:
    store.append_audit("start", {}, actor="t", ts=1)
    head = store.audit_head()
    with pytest.raises(Boom), store.transaction():
        store.set_halt("a", halted=True, reason="r", actor="op", ts=2)
        store.put("k", b"v")
        store.save_rollback(rollback("rb-1", "a", started_at=2))
        store.append_audit("halt", {"algo": "a"}, actor="op", ts=2)
        raise Boom
    assert store.halts() == {}
    assert store.get("k") is None
    assert store.rollbacks() == []
    assert len(store.audit()) == 1
    assert store.audit_head() == head
    with store.transaction():
        store.set_halt("a", halted=True, reason="r", actor="op", ts=3)
        rec = store.append_audit("halt", {"algo": "a"}, actor="op", ts=3)
    assert store.is_halted("a")
    assert store.audit()[-1] == rec
    assert store.verify_audit().ok


def test_nested_transaction_rolls_back_only_the_inner_block(store: Store) -> None:
    with store.transaction():
        store.put("outer", b"1")
        with pytest.raises(Boom), store.transaction():
            store.put("inner", b"2")
            store.append_audit("inner", {}, actor="t", ts=1)
            raise Boom
        store.append_audit("outer", {}, actor="t", ts=2)
    assert store.get("outer") == b"1"
    assert store.get("inner") is None
    assert [r.kind for r in store.audit()] == ["outer"]
    assert store.verify_audit().ok


def test_audit_log_refuses_update_and_delete_through_the_store(store: Store) -> None:
    store.append_audit("x", {}, actor="t", ts=1)
    conn = store._db()
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE audit SET kind = 'y'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit")


def test_threads_share_one_store_safely(store: Store) -> None:
    def work(n: int) -> None:
        for i in range(25):
            with store.transaction():
                store.set_halt(f"algo-{n}-{i}", halted=True, reason="r", actor="t", ts=i)
                store.append_audit("halt", {"algo": f"algo-{n}-{i}"}, actor="t", ts=i)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert len(store.halts()) == 100
    result = store.verify_audit()
    assert result.ok and result.count == 100


# ---- crash safety -------------------------------------------------------------------------

CHILD = """
import sys
from rampart.store import Store

store = Store(sys.argv[1])
i = 0
while True:
    i += 1
    with store.transaction():
        store.set_halt(f"algo-{i}", halted=True, reason="test", actor="child", ts=i)
        store.append_audit("halt", {"algo": f"algo-{i}"}, actor="child", ts=i)
    print(i, flush=True)
"""


def _read_acks(proc: subprocess.Popen[bytes], want: int, timeout: float) -> int:
    """Read the child's acknowledged counts until ``want``; bounded by ``timeout`` seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf, last = b"", 0
    while last < want:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"child acknowledged only {last} writes"
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        assert chunk, f"child exited early: {proc.wait(timeout=10)}"
        buf += chunk
        *lines, buf = buf.split(b"\n")
        if lines:
            last = int(lines[-1])
    return last


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_sigkill_mid_sequence_leaves_a_consistent_store(db: Path) -> None:
    errors = db.with_name("child.stderr")
    with (
        errors.open("wb") as err,
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, stderr=err
        ) as proc,
    ):
        try:
            acked = _read_acks(proc, want=40, timeout=60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; child stderr: {errors.read_text()}") from None
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with Store(db) as store:
        result = store.verify_audit()
        assert result.ok, result.problems
        records = store.audit()
        halts = store.halts()
    # Every acknowledged write is there; the transaction the kill interrupted is all or nothing.
    assert result.count >= acked
    assert {r.payload["algo"] for r in records} == set(halts)
    assert [r.seq for r in records] == list(range(1, len(records) + 1))


def test_a_write_the_store_cannot_make_is_reported_once_and_raised(store: Store) -> None:
    """Every failed write reaches ``on_write_failure`` (the daemon fails closed on it), once per
    top-level transaction; an error of the caller's own is not a store failure."""
    failures: list[StoreError] = []
    store.on_write_failure = failures.append
    with pytest.raises(ValueError), store.transaction():
        raise ValueError("the caller's own error")
    assert failures == []
    store._db().execute("PRAGMA query_only = ON")  # every write now fails inside SQLite
    with pytest.raises(StoreError, match="check disk space"):
        store.put("k", b"v")
    with pytest.raises(StoreError), store.transaction():
        store.put("a", b"1")
        store.put("b", b"2")
    assert len(failures) == 2 and all("readonly" in str(f) for f in failures)
    store._db().execute("PRAGMA query_only = OFF")
    store.put("k", b"v")
    assert store.get("k") == b"v" and len(failures) == 2


# ---- WAL checkpoints: the main file alone holds the state --------------------------------------


def main_file_alone(db: Path, where: Path) -> Path:
    """A copy of the main file without its -wal (what a naive backup, or a lost -wal, leaves)."""
    where.mkdir(exist_ok=True)
    copy = where / f"copy-{len(list(where.iterdir()))}.db"
    shutil.copyfile(db, copy)
    return copy


def test_checkpoint_puts_committed_state_in_the_main_file(db: Path, tmp_path: Path) -> None:
    with Store(db) as store:
        store.set_halt("a", halted=True, reason="r", actor="op", ts=1)
        rec = store.append_audit("halt", {"algo": "a"}, actor="op", ts=1)
        assert Path(f"{db}-wal").stat().st_size > 0
        with Store(main_file_alone(db, tmp_path / "alone"), readonly=True) as copy:
            assert copy.committed_head is None  # it was all in the WAL
            assert copy.halts() == {}
        result = store.checkpoint()
        assert result.complete and result.log_frames > 0
        with Store(main_file_alone(db, tmp_path / "alone"), readonly=True) as copy:
            assert copy.audit() == [rec]
            assert copy.is_halted("a")
            assert copy.verify_audit().ok


def test_checkpoint_inside_a_transaction_does_nothing(store: Store) -> None:
    with store.transaction():
        store.put("k", b"v")
        assert store.checkpoint().busy
    assert store.checkpoint().complete


def test_close_checkpoints_even_beside_a_reader(db: Path, tmp_path: Path) -> None:
    store = Store(db)
    rec = store.append_audit("x", {}, actor="t", ts=1)
    with Store(db, readonly=True) as reader:
        assert reader.audit() == [rec]
        store.close()
        with Store(main_file_alone(db, tmp_path / "alone"), readonly=True) as copy:
            assert copy.audit() == [rec]
        assert reader.verify_audit().ok


def test_memory_mapped_io_is_off(store: Store, db: Path) -> None:
    with Store(db, readonly=True) as reader:
        for s in (store, reader):
            assert s._db().execute("PRAGMA mmap_size").fetchone()[0] == 0


def test_an_empty_database_is_never_initialised_over_a_missing_wal(tmp_path: Path) -> None:
    # A WAL-mode database none of whose pages were ever checkpointed: without its -wal the main
    # file is the 4 KiB header page alone (what issue 10 found).
    db = tmp_path / "rampart.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    before = db.read_bytes()
    assert len(before) == 4096
    for kwargs in ({"create": False}, {"readonly": True}):
        with pytest.raises(StoreError, match="holds no Rampart state") as exc:
            Store(db, **kwargs)
        assert f"{db}-wal" in str(exc.value) and "restore" in str(exc.value)
        assert "migrate" not in str(exc.value)
    assert db.read_bytes() == before  # nothing written over it
    Store(db).close()  # a first start may create the store


# ---- the committed audit head and its mirrors ---------------------------------------------------


def test_committed_head_moves_only_after_a_commit_that_appended(db: Path) -> None:
    seen: list[AuditHead] = []
    with Store(db) as store:
        store.head_listener = seen.append
        assert store.committed_head is None
        with store.transaction():
            rec = store.append_audit("a", {}, actor="t", ts=1)
            assert store.committed_head is None and seen == []  # never ahead of the commit
        first = AuditHead(seq=1, hash=rec.hash)
        assert store.committed_head == first and seen == [first]
        with pytest.raises(Boom), store.transaction():
            store.append_audit("b", {}, actor="t", ts=2)
            raise Boom
        with store.transaction():
            with pytest.raises(Boom), store.transaction():
                store.append_audit("inner", {}, actor="t", ts=3)
                raise Boom
            store.put("k", b"v")
        store.put("k2", b"v")
        assert store.committed_head == first and seen == [first]
        with store.transaction():
            store.append_audit("c", {}, actor="t", ts=4)
            rec = store.append_audit("d", {}, actor="t", ts=5)
        last = AuditHead(seq=3, hash=rec.hash)
        assert store.committed_head == last and seen == [first, last]  # once per commit
    with Store(db) as store, Store(db, readonly=True) as reader:
        assert store.committed_head == reader.committed_head == last


def test_head_file_round_trip(tmp_path: Path) -> None:
    path = head_path(tmp_path / "rampart.db")
    assert path == tmp_path / "rampart.head"
    assert read_head_file(path) is None
    head = MirroredHead(store_id="abc", generation=2, seq=7, hash="f" * 64, written_at=5)
    write_head_file(path, head)
    assert read_head_file(path) == head
    assert json.loads(path.read_text())["seq"] == 7  # plain JSON, readable by people and tools
    write_head_file(path, msgspec.structs.replace(head, seq=8))
    assert read_head_file(path) == msgspec.structs.replace(head, seq=8)
    assert [p.name for p in tmp_path.iterdir()] == ["rampart.head"]  # no temporary file left


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", b'{"seq": -1, "hash": "x"}', b'{"hash": "x"}', b'{"seq": 1, "hash": 2}'],
)
def test_unreadable_head_file_raises(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "rampart.head"
    path.write_bytes(content)
    with pytest.raises(HeadFileError, match="unreadable"):
        read_head_file(path)


def test_behind_compares_generation_sequence_and_hash(store: Store) -> None:
    def mirror(seq: int, digest: str, generation: int = 0) -> MirroredHead:
        return MirroredHead(seq=seq, hash=digest, generation=generation)

    assert behind(store, mirror(0, GENESIS_HASH), "M") is None  # both new
    assert "ends at seq 0" in (behind(store, mirror(1, "a" * 64), "M") or "")
    r1 = store.append_audit("a", {}, actor="t", ts=1)
    r2 = store.append_audit("b", {}, actor="t", ts=2)
    assert behind(store, mirror(2, r2.hash), "M") is None  # the same head
    assert behind(store, mirror(1, r1.hash), "M") is None  # the mirror lags: fine
    text = behind(store, mirror(5, "a" * 64), "the head file")
    assert text is not None
    assert "ends at seq 2 but the head file records seq 5" in text
    assert "3 audit records behind" in text
    assert "another history" in (behind(store, mirror(2, "b" * 64), "M") or "")
    assert "another history from there on" in (behind(store, mirror(1, "c" * 64), "M") or "")
    with store.transaction():
        store.set_generation(1)
    # a mirror written before a restore or an accepted rollback is older than the store
    assert behind(store, mirror(9, "a" * 64, generation=0), "M") is None
    text = behind(store, mirror(2, r2.hash, generation=2), "M")
    assert text is not None and "M is of generation 2 but the store of generation 1" in text


def test_identity_is_given_once_and_kept_by_a_copy(db: Path, tmp_path: Path) -> None:
    with Store(db) as store:
        assert store.identity().store_id is None and store.identity().generation == 0
        ident = store.ensure_identity()
        assert ident.store_id and store.ensure_identity() == ident
        copy = tmp_path / "copy.db"
        conn = sqlite3.connect(copy)
        store.backup_into(conn)
        conn.close()
    with Store(copy) as other:
        assert other.identity() == ident


def test_head_mirror_writes_what_was_committed(db: Path) -> None:
    sent: list[MirroredHead] = []

    async def kv_put(data: bytes) -> None:
        sent.append(decode_head(data))

    async def scenario() -> None:
        with Store(db) as store:
            ident = store.ensure_identity()
            mirror = HeadMirror(store, head_path(db), kv_put=kv_put, wall_clock=lambda: 42)
            store.head_listener = mirror.wake
            task = asyncio.create_task(mirror.run())
            try:  # a store without a head file gets one at once
                await until(lambda: read_head_file(head_path(db)) is not None)
                first = read_head_file(head_path(db))
                assert first == MirroredHead(
                    store_id=ident.store_id, seq=0, hash=GENESIS_HASH, written_at=42
                )
                rec = await asyncio.to_thread(store.append_audit, "x", {}, actor="t", ts=1)
                await until(lambda: len(sent) == 2)
                head = read_head_file(head_path(db))
                assert head is not None and (head.seq, head.hash) == (1, rec.hash)
                assert sent == [first, head]
                assert not mirror.write_file()  # nothing new: nothing written
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

    asyncio.run(scenario())


def test_a_head_file_that_cannot_be_written_is_reported_once_and_retried(
    db: Path, tmp_path: Path
) -> None:
    """The daemon fails closed on it (``on_failure``): the store could no longer be checked
    against its head file at the next start. The mirror keeps trying and writes it once it can."""
    failures: list[str] = []

    async def scenario() -> None:
        with Store(db) as store:
            store.ensure_identity()
            path = tmp_path / "gone" / "rampart.head"  # its directory does not exist
            mirror = HeadMirror(
                store, path, kv_put=None, wall_clock=lambda: 42, on_failure=failures.append
            )
            store.head_listener = mirror.wake
            task = asyncio.create_task(mirror.run())
            try:
                await until(lambda: bool(failures))
                await asyncio.to_thread(store.append_audit, "x", {}, actor="t", ts=1)
                path.parent.mkdir()
                await until(lambda: read_head_file(path) is not None, timeout=5)
                head = read_head_file(path)
                assert head is not None and head.seq == 1
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
        assert len(failures) == 1, failures
        assert f"the head file {path} cannot be written" in failures[0]

    asyncio.run(scenario())


def test_audit_verify_reports_a_store_behind_its_head_file(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Store(db) as store:
        for i in range(3):
            rec = store.append_audit("x", {"i": i}, actor="t", ts=i)
    write_head_file(head_path(db), MirroredHead(seq=3, hash=rec.hash))
    assert audit_verify_main(str(db)) == 0
    assert "audit log OK" in capsys.readouterr().out
    write_head_file(head_path(db), MirroredHead(seq=5, hash="e" * 64))
    assert audit_verify_main(str(db)) == 1
    out = capsys.readouterr().out
    assert "BEHIND ITS HEAD FILE" in out and "2 audit records behind" in out
    assert "rampart restore" in out and "migrate" not in out
    assert audit_verify_main(str(db), json_out=True) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and "2 audit records behind" in report["behind"]
    assert report["mirror"]["seq"] == 5
