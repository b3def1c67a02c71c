"""The sidecar's durable store: one SQLite file, the source of truth for its own state.

WAL journal with ``synchronous=FULL``: every write has been committed and fsynced when the call
returns. Committed pages live in the write-ahead log (``<file>-wal``) until a checkpoint copies
them into the main file: :meth:`Store.checkpoint` (the daemon runs it on a timer), at open, and
:meth:`Store.close`. Memory-mapped I/O of the database file is off (``mmap_size=0``): a file
truncated or made unreadable under a mapping kills the process with SIGBUS instead of raising an
error. The file holds the halted latches, rollback records, a small key/value table for other
durable state, and the audit chain (:mod:`rampart.audit`) with its head row, so one
:meth:`Store.transaction` can store a state change together with its audit record.

Opening checks the file (SQLite header, ``PRAGMA quick_check``, application id, schema version)
and creates or migrates the schema (``create=False``: only an existing, initialised store).
Anything wrong raises :class:`StoreError`, whose message says what to fix; the daemon then starts
with every algorithm halted (fail closed). Runtime database errors (disk full, I/O errors) raise
StoreError too.

One connection, guarded by a lock: calls may come from any thread (``asyncio.to_thread``) and are
short. Never ``await`` inside :meth:`Store.transaction`: the lock is re-entrant per thread, so
another task on the event loop thread would join the open transaction.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from rampart import failpoints
from rampart.audit import (
    GENESIS_HASH,
    AuditHead,
    AuditRecord,
    Link,
    VerifyResult,
    check_chain,
    compute_hash,
    new_record,
)

SCHEMA_VERSION: Final = 1
APPLICATION_ID: Final = 0x52414D50  # "RAMP", in the SQLite header of every Rampart store
# The store's identity and generation (see StoreIdentity), in the kv table.
STORE_ID_KEY: Final = "store/id"
# Keys of this process's own, never replicated (docs/ha.md): where it is in the state stream.
LOCAL_PREFIX: Final = "local/"
REPLICATED_SEQ_KEY: Final = LOCAL_PREFIX + "replicated_seq"

# One write of a transaction, as replicated: ("put", key, value), ("delete", key),
# ("halt", algo, halted, reason, actor, ts), ("rollback", body), ("audit", *row).
Op = tuple[Any, ...]


def encode_ops(ops: list[Op]) -> bytes:
    """A transaction's writes as one state-stream message: msgpack, zlib-compressed."""
    return zlib.compress(msgspec.msgpack.encode(ops), 1)


def decode_ops(data: bytes) -> list[Op]:
    return [tuple(op) for op in msgspec.msgpack.decode(zlib.decompress(data), type=list[list[Any]])]


# A snapshot of the replicated state in the state stream (docs/ha.md, "Snapshots"): n messages
# in a row, each opening with ("snapshot", i, n), that together rebuild every replicated table.
SNAPSHOT_OP: Final = "snapshot"
# kv keys a snapshot neither carries nor clears: this process's own, and the store's identity
KEPT_PREFIXES: Final = (LOCAL_PREFIX, "store/")


def snapshot_part(ops: list[Op]) -> tuple[int, int] | None:
    """``(i, n)`` when ``ops`` is part i of an n-part snapshot, else ``None``."""
    if ops and ops[0][0] == SNAPSHOT_OP:
        return int(ops[0][1]), int(ops[0][2])
    return None


def _op_size(op: Op) -> int:
    return 32 + sum(len(x) if isinstance(x, (str, bytes)) else 8 for x in op)


def split_snapshot(ops: list[Op], max_bytes: int) -> list[bytes]:
    """``ops`` as snapshot messages of about ``max_bytes`` (before compression) each."""
    parts: list[list[Op]] = [[]]
    size = 0
    for op in ops:
        n = _op_size(op)
        if parts[-1] and size + n > max_bytes:
            parts.append([])
            size = 0
        parts[-1].append(op)
        size += n
    total = len(parts)
    return [encode_ops([(SNAPSHOT_OP, i, total), *part]) for i, part in enumerate(parts, 1)]


GENERATION_KEY: Final = "store/generation"
# Busy timeout (ms) of the checkpoint at close: a reader (`rampart audit verify`, `rampart backup`)
# may hold the log for this long before the close gives up on truncating it.
CLOSE_CHECKPOINT_BUSY_MS: Final = 1000


class StoreError(Exception):
    """The store cannot be opened, read or written; the message says what to do about it."""


class StoreReadOnly(StoreError):
    """The store's files or their directory cannot be written by this process (permissions, a
    read-only mount): the store is intact, the process just may not write it."""


class HaltLatch(msgspec.Struct, frozen=True, kw_only=True):
    """A halted algorithm: halted since ``ts`` (ns) by ``actor`` because of ``reason``."""

    algo: str
    reason: str
    actor: str
    ts: int


StepStatus = Literal["pending", "acked", "failed", "timeout"]
RollbackScope = Literal["algo", "gateway", "all"]
# "completed": failed at first (a step not acked in time), then converged by the reconciler.
RollbackState = Literal["running", "succeeded", "failed", "completed"]


class StepRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a rollback (halt, cancel_all, ...), with its measured duration."""

    name: str
    status: StepStatus = "pending"
    attempts: int = 0
    duration_ns: int | None = None
    detail: str = ""


class RollbackRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A rollback and the state of each of its steps; ``target_ms`` is each step's deadline."""

    rollback_id: str
    algos: list[str]
    scope: RollbackScope
    trigger: str
    reason: str
    actor: str
    started_at: int
    finished_at: int | None = None
    state: RollbackState = "running"
    steps: list[StepRecord] = []
    target_ms: dict[str, float] = {}


_rollback_decoder: Final = msgspec.json.Decoder(RollbackRecord)


class StoreIdentity(msgspec.Struct, frozen=True, kw_only=True):
    """Which store this is: ``store_id`` is random, given once (a backup or a restored copy keeps
    it); ``generation`` counts the deliberate steps back in time (a restore, an accepted rollback),
    so a head mirrored before one of them is recognised as older than the store."""

    store_id: str | None
    generation: int


class CheckpointResult(msgspec.Struct, frozen=True, kw_only=True):
    """``PRAGMA wal_checkpoint``: ``busy`` when a reader kept it from finishing; ``log_frames``
    in the WAL, ``checkpointed`` of them now in the main file (both -1 when not in WAL mode)."""

    busy: bool
    log_frames: int
    checkpointed: int

    @property
    def complete(self) -> bool:
        return not self.busy and self.checkpointed == self.log_frames


# _MIGRATIONS[n] takes a store from schema n to n + 1.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE halts (
            algo TEXT PRIMARY KEY,
            halted INTEGER NOT NULL,
            reason TEXT NOT NULL,
            actor TEXT NOT NULL,
            ts INTEGER NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE rollbacks (
            rollback_id TEXT PRIMARY KEY,
            started_at INTEGER NOT NULL,
            state TEXT NOT NULL,
            body BLOB NOT NULL
        )""",
        "CREATE INDEX rollbacks_by_start ON rollbacks (started_at)",
        "CREATE INDEX rollbacks_open ON rollbacks (started_at) WHERE state != 'succeeded'",
        """CREATE TABLE rollback_algos (
            algo TEXT NOT NULL,
            rollback_id TEXT NOT NULL,
            started_at INTEGER NOT NULL,
            PRIMARY KEY (algo, rollback_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX rollback_algos_by_id ON rollback_algos (rollback_id)",
        "CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
        """CREATE TABLE audit (
            seq INTEGER PRIMARY KEY,
            ts INTEGER NOT NULL,
            kind TEXT NOT NULL,
            actor TEXT NOT NULL,
            payload TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        )""",
        """CREATE TABLE audit_head (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq INTEGER NOT NULL,
            hash TEXT NOT NULL
        )""",
        # Guards against bugs, not attackers (who can drop them): the chain is what proves.
        """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
            BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
        """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
            BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    ),
)
_TABLES: Final = frozenset({"halts", "rollbacks", "rollback_algos", "kv", "audit", "audit_head"})
_AUDIT_COLUMNS: Final = "seq, ts, kind, actor, payload, prev_hash, hash"
# Text columns come back as bytes, so a row an attacker filled with invalid UTF-8 or the wrong
# types is reported by verify instead of raising inside the sqlite3 module.
_AUDIT_RAW_COLUMNS: Final = (
    "seq, ts, CAST(kind AS BLOB), CAST(actor AS BLOB), CAST(payload AS BLOB), "
    "CAST(prev_hash AS BLOB), CAST(hash AS BLOB)"
)


class Store:
    """The durable store at ``path``.

    ``create=False`` refuses to create a missing file (use it when state must already exist);
    ``readonly=True`` opens an existing store without writing or migrating it (for
    ``rampart audit verify`` next to a running daemon).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, create: bool = True, readonly: bool = False
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        self._depth = 0
        # Called (on the writing thread) with every write that fails: the daemon fails closed.
        self.on_write_failure: Callable[[StoreError], None] | None = None
        # a transaction reached the state stream (HA) and then failed to commit here: this
        # store is behind the shard's; its leader steps down (docs/ha.md)
        self.behind_replica = False
        # The audit head appended by the open transaction, and the last one committed.
        self._pending_head: AuditHead | None = None
        self._committed_head: AuditHead | None = None
        # Called (on the committing thread, under the store's lock) with the new audit head after
        # every commit that appended to the audit log. Must be quick and must not use the store.
        self.head_listener: Callable[[AuditHead], None] | None = None
        # High availability (docs/ha.md): called on the committing thread with every top-level
        # transaction's writes (``encode_ops``) before it commits; if it raises, nothing is
        # committed. The leader's replicates them to its shard's state stream.
        self.replicator: Callable[[bytes], int] | None = None
        self._ops: list[Op] = []
        self._conn: sqlite3.Connection | None = self._open(create=create and not readonly)

    # -- opening ---------------------------------------------------------------------------

    def _fail(self, problem: str, fix: str) -> StoreError:
        return StoreError(f"state store {self.path}: {problem}; {fix}")

    def _open(self, *, create: bool) -> sqlite3.Connection:
        restore = (
            "restore it from a backup (`rampart restore BACKUP`) or move it aside to start empty "
            "(the daemon keeps every algorithm halted until then)"
        )
        if self.path.is_dir():
            raise self._fail("is a directory", "point the store at a file path")
        if self.path.exists():
            if self.path.stat().st_size == 0:
                raise self._fail("the file is empty (truncated?)", restore)
        elif not create:
            raise self._fail(
                "no such file", "check the path, or restore a backup (`rampart restore BACKUP`)"
            )
        if not self.readonly:
            self._check_writable()
        target = f"{self.path.absolute().as_uri()}?mode=ro" if self.readonly else str(self.path)
        try:
            conn = sqlite3.connect(
                target,
                uri=self.readonly,
                isolation_level=None,
                check_same_thread=False,
                timeout=5.0,
            )
        except sqlite3.Error as exc:
            raise self._fail(f"cannot open ({exc})", "check the directory and permissions") from exc
        try:
            self._prepare(conn, restore, create=create)
            with self._errors("reading the audit head"):
                self._committed_head = self._audit_head(conn)
            if not self.readonly:
                # what a crash left in the WAL goes to the main file now
                self._checkpoint(conn, "PASSIVE")
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_writable(self) -> None:
        """Raise StoreReadOnly naming the first of the store's files (or its directory) this
        process may not write. SQLite would open a read-only file read-only without a word and
        fail later with "attempt to write a readonly database", naming no file. ``access(2)``,
        not a trial open: closing a descriptor of the database would drop the POSIX locks SQLite
        holds on it in this process."""
        directory = self.path.absolute().parent
        name = self.path.name
        paths = [self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")]
        for path, mode in [*((p, os.W_OK) for p in paths), (directory, os.W_OK | os.X_OK)]:
            if path.exists() and not os.access(path, mode):
                what = "directory" if path is directory else "file"
                raise StoreReadOnly(
                    f"state store {self.path}: the {what} {path} is read-only for this process "
                    f"(uid {os.geteuid()}); give it write access to the directory {directory} "
                    f"and the store's files in it ({name}, {name}-wal, {name}-shm and the head "
                    "file beside them), then try again; nothing was written"
                )

    def _prepare(self, conn: sqlite3.Connection, restore: str, *, create: bool) -> None:
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            check = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        except sqlite3.DatabaseError as exc:
            raise self._fail(f"not a readable SQLite database ({exc})", restore) from exc
        if check != ["ok"]:
            raise self._fail(f"the database is corrupt ({'; '.join(check)})", restore)
        if version > SCHEMA_VERSION:
            raise self._fail(
                f"schema version {version} is newer than this Rampart understands "
                f"({SCHEMA_VERSION})",
                "run the Rampart release that wrote it, or restore a backup",
            )
        if app_id != APPLICATION_ID:
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app_id != 0 or version != 0 or tables:
                raise self._fail(
                    "is an SQLite database but not a Rampart state store",
                    "point the store at another path",
                )
            if self.readonly or not create:
                # An empty database: never written, or (WAL mode) every page of it is in a
                # write-ahead log that is not there. Never "migrate" it: that writes an empty
                # store over whatever the missing log held.
                raise self._fail(
                    "holds no Rampart state (an empty SQLite database)",
                    f"if a daemon ran on it, its state was in the write-ahead log {self.path}-wal, "
                    "which is missing: put that file back beside it, or restore a backup "
                    "(`rampart restore BACKUP`); do not start a daemon on this file",
                )
        try:
            conn.execute("PRAGMA mmap_size=0")
            # Not `locking_mode=EXCLUSIVE`, although it would keep the WAL index in heap memory
            # instead of the memory-mapped -shm file: it locks every other connection out, and
            # `rampart audit verify`, `rampart backup` and `rampart restore` (which checks that
            # no one uses the store) open the store beside the running daemon.
            if self.readonly:
                if version < SCHEMA_VERSION:
                    raise self._fail(
                        f"schema version {version} is older than this Rampart's ({SCHEMA_VERSION})",
                        "verify it with the Rampart release that wrote it; to upgrade it, "
                        "back it up (`rampart backup`), then start this release's daemon on it "
                        "(the upgrade keeps every record)",
                    )
            else:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode != "wal":
                    raise self._fail(
                        f"cannot use WAL journaling (got {mode!r})",
                        "put the store on a local file system",
                    )
                if version < SCHEMA_VERSION:
                    self._migrate(conn)
            conn.execute("PRAGMA synchronous=FULL")
            names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        except sqlite3.Error as exc:
            raise self._fail(f"cannot prepare the database ({exc})", restore) from exc
        if missing := sorted(_TABLES - names):
            raise self._fail(f"tables missing: {', '.join(missing)}", restore)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # again, under the lock
            for step in _MIGRATIONS[version:]:
                for statement in step:
                    conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- plumbing -------------------------------------------------------------------------

    def close(self) -> None:
        """Checkpoint the WAL into the main file (TRUNCATE: the -wal file is emptied) and close.

        A reader that holds the log longer than CLOSE_CHECKPOINT_BUSY_MS leaves part of it in the
        -wal file, which stays valid; SQLite checkpoints it at the next open.
        """
        with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                try:
                    if not self.readonly and not conn.in_transaction:
                        conn.execute(f"PRAGMA busy_timeout={CLOSE_CHECKPOINT_BUSY_MS}")
                        self._checkpoint(conn, "TRUNCATE")
                except (sqlite3.Error, StoreError):
                    pass  # committed data is safe in the WAL either way
                finally:
                    conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._conn is None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"state store {self.path}: used after close(); open a new Store")
        return self._conn

    def checkpoint(self, mode: Literal["PASSIVE", "TRUNCATE"] = "PASSIVE") -> CheckpointResult:
        """Copy committed pages from the WAL into the main file, so that the main file alone holds
        the state as of now (a lost -wal file then loses nothing committed before).

        PASSIVE never waits: it copies what no reader still needs and reports ``busy`` for the
        rest (the next call copies it). TRUNCATE waits for readers (the busy timeout) and empties
        the -wal file. Inside a transaction nothing is done (``busy``).
        """
        with self._lock:
            conn = self._db()
            if self._depth or conn.in_transaction:
                return CheckpointResult(busy=True, log_frames=-1, checkpointed=-1)
            return self._checkpoint(conn, mode)

    def _checkpoint(self, conn: sqlite3.Connection, mode: str) -> CheckpointResult:
        if self.readonly:
            raise self._fail("checkpoint refused", "this store is open read-only")
        with self._errors("checkpointing the WAL"):
            busy, log_frames, done = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return CheckpointResult(busy=bool(busy), log_frames=log_frames, checkpointed=done)

    @property
    def committed_head(self) -> AuditHead | None:
        """The audit head as of the last commit of this Store (or as opened): never ahead of what
        is durable. Thread-safe."""
        return self._committed_head

    def backup_into(self, target: sqlite3.Connection) -> None:
        """Copy the whole database into ``target`` with SQLite's online backup API, in one step:
        one read transaction, so the copy is one consistent state even while another process
        writes (safe beside the running daemon)."""
        with self._lock, self._errors("copying the database"):
            self._db().backup(target, pages=-1)

    # -- identity -----------------------------------------------------------------------------

    def identity(self) -> StoreIdentity:
        """The store's id (None until :meth:`ensure_identity`) and generation (0 until set)."""
        store_id = self.get(STORE_ID_KEY)
        generation = self.get(GENERATION_KEY)
        try:
            gen = int(generation) if generation is not None else 0
        except ValueError as exc:
            raise self._fail(
                f"{GENERATION_KEY} is unreadable ({generation!r})", "restore a backup"
            ) from exc
        return StoreIdentity(
            store_id=store_id.decode(errors="replace") if store_id is not None else None,
            generation=gen,
        )

    def ensure_identity(self) -> StoreIdentity:
        """Give the store a random id if it has none (a new store, or one from before ids)."""
        with self.transaction():
            if self.get(STORE_ID_KEY) is None:
                self.put(STORE_ID_KEY, uuid.uuid4().hex.encode())
            return self.identity()

    def set_generation(self, generation: int) -> None:
        """Record a deliberate step back in time (use inside the transaction that audits it)."""
        _check_int(generation=generation)
        self.put(GENERATION_KEY, str(generation).encode())

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            fix = (
                "this store is open read-only"
                if self.readonly
                else "check disk space, permissions and the file's health"
            )
            raise self._fail(f"{action} failed ({exc})", fix) from exc

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Make every write inside the block atomic and durable together.

        Commits (and fsyncs) on normal exit; any exception rolls everything back and propagates.
        Blocks nest (savepoints). Writes outside a block are each their own transaction. A
        write the store could not make is reported to ``on_write_failure`` as well.
        """
        with self._lock:
            top = self._depth == 0
            try:
                with self._written():
                    yield
            except StoreError as e:
                if top and self.on_write_failure is not None and not self.readonly:
                    self.on_write_failure(e)
                raise

    @contextmanager
    def _written(self) -> Iterator[None]:
        with self._lock:
            if self.behind_replica:  # one more write would leave a hole behind it, for good
                raise self._fail(
                    "it is behind its shard's state stream (a write reached the stream, then "
                    "failed here): it takes no more writes",
                    "fix the disk and restart this process: it catches up as a standby",
                )
            conn = self._db()
            depth = self._depth
            savepoint = f"sp{depth}"
            with self._errors("starting a transaction"):
                conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT {savepoint}")
            self._depth = depth + 1
            pending = self._pending_head
            ops_before = len(self._ops)
            try:
                yield
            except BaseException:
                self._depth = depth
                self._pending_head = pending
                del self._ops[ops_before:]
                self._rollback(conn, savepoint if depth else None)
                raise
            self._depth = depth
            replicated = False
            if depth == 0 and self._ops:
                ops, self._ops = self._ops, []
                if self.replicator is not None:
                    try:
                        seq = self.replicator(encode_ops(ops))
                        replicated = True
                        conn.execute(
                            "INSERT INTO kv (key, value) VALUES (?, ?) "
                            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                            (REPLICATED_SEQ_KEY, str(seq).encode()),
                        )
                    except BaseException as exc:
                        self._pending_head = pending
                        self._rollback(conn, None)
                        raise self._fail(
                            f"the write could not be replicated ({exc})",
                            "nothing was committed; see docs/ha.md",
                        ) from exc
            try:
                if replicated and failpoints.fails(
                    "commit_after_replication", *{str(op[0]) for op in ops}
                ):
                    raise sqlite3.OperationalError("disk I/O error (failpoint)")
                if depth == 0 and failpoints.fails("commit"):
                    raise sqlite3.OperationalError("database or disk is full (failpoint)")
                conn.execute("COMMIT" if depth == 0 else f"RELEASE {savepoint}")
            except sqlite3.Error as exc:
                self._pending_head = pending
                self._rollback(conn, savepoint if depth else None)
                if replicated:  # the shard's state stream has it, this store does not
                    self.behind_replica = True
                raise self._fail(
                    f"commit failed ({exc})", "check disk space and the file system"
                ) from exc
            if depth == 0 and self._pending_head is not None:
                head, self._pending_head = self._pending_head, None
                self._committed_head = head
                listener = self.head_listener
                if listener is not None:
                    try:
                        listener(head)
                    except Exception:  # committed: the caller must not see a failure
                        pass

    @staticmethod
    def _rollback(conn: sqlite3.Connection, savepoint: str | None) -> None:
        try:
            if savepoint is None:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            else:
                conn.execute(f"ROLLBACK TO {savepoint}")
                conn.execute(f"RELEASE {savepoint}")
        except sqlite3.Error:
            pass  # the original exception is the one worth raising

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """Several reads that see one consistent state."""
        with self._lock:
            conn = self._db()
            if self._depth:
                yield conn
                return
            with self._errors("reading"):
                conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock, self._errors("reading"):
            return self._db().execute(sql, params).fetchall()

    # -- halted latches ---------------------------------------------------------------------

    def set_halt(self, algo: str, *, halted: bool, reason: str, actor: str, ts: int) -> None:
        """Latch ``algo`` halted (or release it). The latch survives restarts until released."""
        _check_text(algo=algo, reason=reason, actor=actor)
        _check_int(ts=ts)
        with self.transaction(), self._errors("saving a halt latch"):
            self._db().execute(
                "INSERT INTO halts (algo, halted, reason, actor, ts) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (algo) DO UPDATE SET halted = excluded.halted, "
                "reason = excluded.reason, actor = excluded.actor, ts = excluded.ts",
                (algo, int(bool(halted)), reason, actor, ts),
            )
            self._op(("halt", algo, bool(halted), reason, actor, ts))

    def halts(self) -> dict[str, HaltLatch]:
        """The algorithms currently halted."""
        rows = self._query(
            "SELECT algo, reason, actor, ts FROM halts WHERE halted != 0 ORDER BY algo"
        )
        return {a: HaltLatch(algo=a, reason=r, actor=who, ts=ts) for a, r, who, ts in rows}

    def is_halted(self, algo: str) -> bool:
        rows = self._query("SELECT 1 FROM halts WHERE algo = ? AND halted != 0", (algo,))
        return bool(rows)

    # -- rollback records -------------------------------------------------------------------

    def save_rollback(self, rec: RollbackRecord) -> None:
        """Insert or replace the record with ``rec.rollback_id``."""
        body = msgspec.json.encode(rec)
        try:
            _rollback_decoder.decode(body)  # never store what could not be read back
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid rollback record: {exc}") from exc
        with self.transaction(), self._errors("saving a rollback record"):
            conn = self._db()
            conn.execute(
                "INSERT INTO rollbacks (rollback_id, started_at, state, body) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (rollback_id) DO UPDATE SET started_at = excluded.started_at, "
                "state = excluded.state, body = excluded.body",
                (rec.rollback_id, rec.started_at, rec.state, body),
            )
            conn.execute("DELETE FROM rollback_algos WHERE rollback_id = ?", (rec.rollback_id,))
            conn.executemany(
                "INSERT OR IGNORE INTO rollback_algos (algo, rollback_id, started_at) "
                "VALUES (?, ?, ?)",
                [(algo, rec.rollback_id, rec.started_at) for algo in rec.algos],
            )
            self._op(("rollback", body))

    def rollbacks(self, algo: str | None = None, limit: int = 100) -> list[RollbackRecord]:
        """The newest ``limit`` rollbacks, newest first; only those naming ``algo`` if given."""
        if algo is None:
            rows = self._query(
                "SELECT rollback_id, body FROM rollbacks "
                "ORDER BY started_at DESC, rollback_id DESC LIMIT ?",
                (limit,),
            )
        else:
            rows = self._query(
                "SELECT r.rollback_id, r.body FROM rollback_algos a "
                "JOIN rollbacks r ON r.rollback_id = a.rollback_id WHERE a.algo = ? "
                "ORDER BY a.started_at DESC, a.rollback_id DESC LIMIT ?",
                (algo, limit),
            )
        return [self._decode_rollback(rid, body) for rid, body in rows]

    def open_rollbacks(self) -> list[RollbackRecord]:
        """Rollbacks still running or failed (they need attention after a restart), oldest
        first."""
        rows = self._query(
            "SELECT rollback_id, body FROM rollbacks WHERE state NOT IN ('succeeded', 'completed') "
            "ORDER BY started_at, rollback_id"
        )
        return [self._decode_rollback(rid, body) for rid, body in rows]

    def _decode_rollback(self, rollback_id: str, body: bytes) -> RollbackRecord:
        try:
            return _rollback_decoder.decode(body)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            raise self._fail(
                f"rollback record {rollback_id!r} is unreadable ({exc})",
                "restore the store from a backup",
            ) from exc

    # -- key/value --------------------------------------------------------------------------

    def put(self, key: str, value: bytes) -> None:
        _check_text(key=key)
        if not isinstance(value, bytes):
            raise TypeError(f"value for {key!r} must be bytes, got {type(value).__name__}")
        with self.transaction(), self._errors("writing a value"):
            self._db().execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
            if not key.startswith(LOCAL_PREFIX):
                self._op(("put", key, value))

    def get(self, key: str) -> bytes | None:
        rows = self._query("SELECT value FROM kv WHERE key = ?", (key,))
        return bytes(rows[0][0]) if rows else None

    def delete(self, key: str) -> bool:
        """Remove ``key``; True when it existed."""
        with self.transaction(), self._errors("deleting a value"):
            existed = self._db().execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount > 0
            if not key.startswith(LOCAL_PREFIX):
                self._op(("delete", key))
            return existed

    def items(self, prefix: str = "") -> list[tuple[str, bytes]]:
        """Every ``(key, value)`` whose key starts with ``prefix``, in key order."""
        out: list[tuple[str, bytes]] = []
        with self._lock, self._errors("reading"):
            cursor = self._db().execute(
                "SELECT key, value FROM kv WHERE key >= ? ORDER BY key", (prefix,)
            )
            for key, value in cursor:
                if not key.startswith(prefix):
                    break
                out.append((key, bytes(value)))
        return out

    # -- audit log --------------------------------------------------------------------------

    def append_audit(
        self, kind: str, payload: Mapping[str, Any], *, actor: str, ts: int
    ) -> AuditRecord:
        """Append a record to the chain and advance the head, in one transaction (or in the
        caller's :meth:`transaction`, in which case it is durable when that commits)."""
        with self.transaction(), self._errors("appending to the audit log"):
            conn = self._db()
            rec = new_record(self._audit_head(conn), kind, payload, actor=actor, ts=ts)
            row = (
                rec.seq,
                rec.ts,
                rec.kind,
                rec.actor,
                msgspec.json.encode(rec.payload, order="sorted").decode(),
                rec.prev_hash,
                rec.hash,
            )
            self._insert_audit(conn, row)
            self._op(("audit", *row))
        return rec

    def _insert_audit(self, conn: sqlite3.Connection, row: tuple[Any, ...]) -> None:
        conn.execute(f"INSERT INTO audit ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", row)
        seq, digest = row[0], row[6]
        conn.execute(
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            (seq, digest),
        )
        self._pending_head = AuditHead(seq=seq, hash=digest)

    # -- replication (docs/ha.md) -----------------------------------------------------------

    def _op(self, op: Op) -> None:
        if self.replicator is not None:
            self._ops.append(op)

    def apply_replicated(self, data: bytes, seq: int) -> None:
        """Apply one transaction of the leader's (``encode_ops``) as it was written, audit
        records verbatim (the chain goes on across leaders), and note ``seq`` (its place in the
        state stream) in the same transaction."""
        self.apply_ops(decode_ops(data), seq)

    def note_replicated(self, seq: int) -> None:
        """The state stream's message ``seq`` is in this store's state already (a snapshot of
        what was applied here): note the place only."""
        self.put(REPLICATED_SEQ_KEY, str(seq).encode())

    def apply_snapshot(self, parts: list[list[Op]], seq: int) -> None:
        """Replace the replicated state with a snapshot's (its parts' ops, the ``("snapshot",
        i, n)`` heads removed), in one transaction, noting ``seq`` (its last part's place in the
        state stream). Keys of ``KEPT_PREFIXES`` stay. The audit log is append-only: the
        snapshot's records up to this store's head must be this store's (the head's hash is
        compared, the chain vouches for the rest), and only the newer ones are added."""
        with self.transaction(), self._errors("applying a state snapshot"):
            conn = self._db()
            head = self._audit_head(conn)
            have = head.seq if head is not None else 0
            met = head is None
            conn.execute(
                "DELETE FROM kv WHERE " + " AND ".join("key NOT LIKE ?" for _ in KEPT_PREFIXES),
                tuple(p + "%" for p in KEPT_PREFIXES),
            )
            for table in ("halts", "rollback_algos", "rollbacks"):
                conn.execute(f"DELETE FROM {table}")
            for part in parts:
                rest: list[Op] = []
                for op in part:
                    if op[0] != "audit" or op[1] > have:
                        rest.append(op)
                    elif head is not None and op[1] == have and op[7] == head.hash:
                        met = True
                self.apply_ops(rest, seq)
            if not met:  # the transaction is rolled back: nothing of the snapshot stays
                raise self._fail(
                    f"its audit log (to record {have}) is not the shard's: the state stream's "
                    "snapshot does not hold the same record there",
                    "this process's store belongs to another history: move its data_dir aside "
                    "and start it again as a standby (docs/ha.md, 'Snapshots')",
                )

    def snapshot_ops(self) -> list[Op]:
        """Every replicated write that rebuilds this store's state from nothing, as one
        consistent read: the content of a snapshot (``write_snapshot``)."""
        with self._lock, self._errors("reading the state for a snapshot"):
            conn = self._db()
            ops: list[Op] = []
            for key, value in conn.execute("SELECT key, value FROM kv ORDER BY key"):
                if not key.startswith(KEPT_PREFIXES):
                    ops.append(("put", key, bytes(value)))
            rows = conn.execute("SELECT algo, halted, reason, actor, ts FROM halts ORDER BY algo")
            for algo, halted, reason, actor, ts in rows:
                ops.append(("halt", algo, bool(halted), reason, actor, ts))
            for (body,) in conn.execute("SELECT body FROM rollbacks ORDER BY rollback_id"):
                ops.append(("rollback", bytes(body)))
            for row in conn.execute(f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY seq"):
                ops.append(("audit", *row))
            return ops

    def write_snapshot(self, max_bytes: int) -> tuple[int, int]:
        """The leader's snapshot: read the whole replicated state and hand it to the
        ``replicator`` as snapshot messages, holding the store's lock throughout so that no
        transaction comes between the read and the last message. Returns the first and last
        message's sequence; the stream's history before the first may then be purged."""
        with self._lock:
            replicate = self.replicator
            if replicate is None:
                raise StoreError("a snapshot is written by the leader only (no replicator)")
            seqs = [replicate(data) for data in split_snapshot(self.snapshot_ops(), max_bytes)]
            self.note_replicated(seqs[-1])
            return seqs[0], seqs[-1]

    def apply_ops(self, ops: list[Op], seq: int) -> None:
        """Apply one transaction's writes (``decode_ops``) and note ``seq``."""
        with self.transaction(), self._errors("applying a replicated transaction"):
            conn = self._db()
            for op in ops:
                match op[0]:
                    case "put":
                        self.put(op[1], op[2])
                    case "delete":
                        self.delete(op[1])
                    case "halt":
                        self.set_halt(op[1], halted=op[2], reason=op[3], actor=op[4], ts=op[5])
                    case "rollback":
                        self.save_rollback(_rollback_decoder.decode(op[1]))
                    case "audit":
                        self._insert_audit(conn, tuple(op[1:]))
                    case other:
                        raise self._fail(
                            f"a replicated transaction holds an unknown write {other!r}",
                            "run the same Rampart release on every process of the shard",
                        )
            self.put(REPLICATED_SEQ_KEY, str(seq).encode())

    def apply_all(self, transactions: list[tuple[list[Op], int]]) -> None:
        """``apply_ops`` of each (ops, seq) in order, in one transaction: one commit for them
        all (a standby catching up), all or nothing."""
        with self.transaction():
            for ops, seq in transactions:
                self.apply_ops(ops, seq)

    def replicated_seq(self) -> int:
        """The state stream's sequence of the last transaction applied here (0: none)."""
        raw = self.get(REPLICATED_SEQ_KEY)
        return int(raw) if raw else 0

    def audit_head(self) -> AuditHead | None:
        """The newest record's ``(seq, hash)`` as recorded by the head row."""
        with self._lock, self._errors("reading the audit head"):
            return self._audit_head(self._db())

    def audit_hash(self, seq: int) -> str | None:
        """The stored hash of record ``seq`` (None: no such record)."""
        rows = self._query("SELECT CAST(hash AS BLOB) FROM audit WHERE seq = ?", (seq,))
        if not rows or not isinstance(rows[0][0], bytes):
            return None
        return bytes(rows[0][0]).decode(errors="replace")

    @staticmethod
    def _audit_head(conn: sqlite3.Connection) -> AuditHead | None:
        row = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        return AuditHead(seq=row[0], hash=row[1]) if row else None

    def audit(self, after_seq: int = 0, limit: int | None = None) -> list[AuditRecord]:
        """Records with ``seq > after_seq`` in seq order, at most ``limit``."""
        rows = self._query(
            f"SELECT {_AUDIT_RAW_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, -1 if limit is None else limit),
        )
        records = []
        for row in rows:
            try:
                records.append(_row_record(row))
            except (ValueError, msgspec.DecodeError) as exc:
                raise self._fail(
                    f"audit record seq {row[0]} is unreadable ({exc})",
                    "run `rampart audit verify` to see what was tampered with",
                ) from exc
        return records

    def verify_audit(self) -> VerifyResult:
        """Verify the whole chain against the head row, from one consistent snapshot."""
        with self._snapshot() as conn, self._errors("reading the audit log"):
            head = self._audit_head(conn)
            rows = conn.execute(f"SELECT {_AUDIT_RAW_COLUMNS} FROM audit ORDER BY seq")
            # No head row means no record was ever appended: any record is then unanchored.
            start = head or AuditHead(seq=0, hash=GENESIS_HASH)
            result = check_chain((_row_link(row) for row in rows), start)
        if head is None and not result.ok:
            problems = [*result.problems, "the audit head row is missing (deleted?)"]
            return msgspec.structs.replace(result, problems=problems)
        return result


def _check_text(**values: str) -> None:
    for name, value in values.items():
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    for name in ("algo", "key", "actor"):
        if name in values and not values[name]:
            raise ValueError(f"{name} must not be empty")


def _check_int(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int (ns since the epoch), got {value!r}")


def _text(value: object, column: str) -> str:
    if not isinstance(value, bytes):
        raise ValueError(f"{column} is {type(value).__name__}, not text")
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{column} is not UTF-8") from exc


def _row_link(row: tuple[Any, ...]) -> Link:
    seq, ts, kind, actor, payload, prev_hash, digest = row
    try:
        prev_text, hash_text = _text(prev_hash, "prev_hash"), _text(digest, "hash")
    except ValueError as exc:
        return Link(seq, "", "", None, str(exc))
    try:
        if not isinstance(ts, int):
            raise ValueError(f"ts is {type(ts).__name__}, not an integer")
        if not isinstance(payload, bytes):
            raise ValueError(f"payload is {type(payload).__name__}, not text")
        kind_text, actor_text = _text(kind, "kind"), _text(actor, "actor")
    except ValueError as exc:
        return Link(seq, prev_text, hash_text, None, str(exc))
    computed = compute_hash(seq, ts, kind_text, actor_text, payload, prev_text)
    return Link(seq, prev_text, hash_text, computed)


def _row_record(row: tuple[Any, ...]) -> AuditRecord:
    seq, ts, kind, actor, payload, prev_hash, digest = row
    if not isinstance(ts, int) or not isinstance(payload, bytes):
        raise ValueError("wrong column types")
    return AuditRecord(
        seq=seq,
        ts=ts,
        kind=_text(kind, "kind"),
        actor=_text(actor, "actor"),
        payload=msgspec.json.decode(payload, type=dict[str, Any]),
        prev_hash=_text(prev_hash, "prev_hash"),
        hash=_text(digest, "hash"),
    )
