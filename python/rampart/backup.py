"""``rampart backup`` and ``rampart restore``: consistent copies of the state store.

A backup is taken with SQLite's online backup API in one step (one read transaction), so it is one
consistent state of the store even while the daemon writes; the copy is a single self-contained
file (rollback journal mode, no -wal), written beside its destination and renamed into place only
once its audit chain verifies. Copying ``rampart.db`` with ``cp`` is not a backup: committed state
may sit in ``rampart.db-wal``, and a copy taken mid-write can be torn.

A restore refuses while a daemon (or anything else) uses the store, checks the backup, moves the
store it replaces aside (never deletes it), puts the copy in place with a new *generation* and a
note of the restore, and rewrites the head file deliberately; the daemon's next start writes the
restore to the audit log (see :mod:`rampart.durability`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from rampart.audit import AuditHead
from rampart.datalock import HeldDataDir
from rampart.durability import (
    RESTORED_KEY,
    HeadFileError,
    MirroredHead,
    behind,
    fsync_dir,
    head_path,
    mirrored,
    read_head_file,
    write_head_file,
)
from rampart.store import Store, StoreError, StoreIdentity


class BackupError(Exception):
    """The backup or restore was refused or failed; the message says why and what to do."""


class BackupResult(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    records: int
    head: AuditHead | None
    identity: StoreIdentity
    size: int
    # set when the store copied is itself behind its head file (the copy is still exact)
    warning: str | None = None


class RestoreResult(msgspec.Struct, frozen=True, kw_only=True):
    db: str
    source: str
    head: AuditHead | None
    identity: StoreIdentity
    replaced: list[str]
    replaced_head: AuditHead | None
    mirrored_head: MirroredHead | None


def _stamp(now_ns: int) -> str:
    return datetime.fromtimestamp(now_ns / 1e9, tz=UTC).strftime("%Y%m%dT%H%M%SZ")


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _remove(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _sidecars(db: Path) -> tuple[Path, Path]:
    return Path(f"{db}-wal"), Path(f"{db}-shm")


def _copy(store: Store, target: Path) -> None:
    """The whole of ``store`` into a new file ``target`` (online backup API, one step), as one
    self-contained file (rollback journal mode: no -wal beside it)."""
    _remove(target, *_sidecars(target))
    conn = sqlite3.connect(target, isolation_level=None)
    try:
        store.backup_into(conn)
        conn.execute("PRAGMA journal_mode=DELETE")
    except sqlite3.Error as exc:
        raise BackupError(f"cannot write {target}: {exc}") from exc
    finally:
        conn.close()
    if any(p.exists() for p in _sidecars(target)):
        raise BackupError(f"{target}: the copy left a -wal or -shm file behind")
    _fsync(target)


def backup(
    db: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    wall_clock: Callable[[], int] = time.time_ns,
) -> BackupResult:
    """Copy the store at ``db`` to ``dest`` (a directory, or a name ending in ``/``, created if
    need be: a file named after the time in it), atomically, and verify the copy's audit chain
    before it replaces anything at ``dest``."""
    db, target = Path(db), Path(dest)
    if str(dest).endswith(("/", os.sep)) and not target.exists():
        try:
            target.mkdir(mode=0o700, parents=True)
        except OSError as e:
            raise BackupError(f"{target}: cannot create the directory: {e.strerror}") from None
    if target.is_dir():
        target = target / f"rampart-{_stamp(wall_clock())}.db"
    own = {db, *_sidecars(db), head_path(db)}
    if target.resolve() in {p.resolve() for p in own}:
        raise BackupError(f"{target} is the store itself; back it up somewhere else")
    if not target.parent.is_dir():
        raise BackupError(f"{target.parent}: no such directory")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    # the head file first: it never leads the store, so it cannot lead what is opened after it
    hp = head_path(db)
    warning = None
    try:
        mirror = read_head_file(hp)
    except HeadFileError as exc:
        mirror, warning = None, str(exc)
    with Store(db, readonly=True) as store:
        try:
            _copy(store, tmp)
            with Store(tmp, readonly=True) as copy:
                result = copy.verify_audit()
                identity = copy.identity()
            if not result.ok:
                raise BackupError(
                    f"the copy's audit log does not verify ({result.problems[0]}): nothing "
                    f"written to {target}; run `rampart audit verify` on the store"
                )
            os.replace(tmp, target)
        except BaseException:
            _remove(tmp, *_sidecars(tmp))
            raise
        fsync_dir(target.parent)
        if mirror is not None and (problem := behind(store, mirror, str(hp))):
            warning = f"the store itself is behind its head file: {problem}"
    return BackupResult(
        path=str(target),
        records=result.count,
        head=result.last,
        identity=identity,
        size=target.stat().st_size,
        warning=warning,
    )


def refuse_if_in_use(db: Path) -> None:
    """Raise BackupError when another process has the store open (a daemon, `rampart backup`,
    `rampart audit verify`): in WAL mode every open connection holds a shared lock on the file,
    so an exclusive lock is granted only to a store nobody uses."""
    if not db.exists():
        return
    conn = sqlite3.connect(db, isolation_level=None, timeout=0)
    try:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise BackupError(
                f"{db} is in use by another process (a running daemon, `rampart backup`, "
                "`rampart audit verify`): stop the daemon first"
            ) from exc
        raise BackupError(f"cannot check whether {db} is in use: {exc}") from exc
    except sqlite3.DatabaseError:
        pass  # not a database: nothing uses it as one (it is moved aside all the same)
    finally:
        conn.close()


def restore(
    source: str | os.PathLike[str],
    db: str | os.PathLike[str],
    *,
    operator: str,
    reason: str,
    wall_clock: Callable[[], int] = time.time_ns,
) -> RestoreResult:
    """Put the backup ``source`` in place of the store at ``db`` (see the module docstring)."""
    src, db = Path(source), Path(db)
    data_dir = db.parent
    if not src.is_file():
        raise BackupError(f"{src}: no such file")
    if src.resolve() == db.resolve():
        raise BackupError(f"{src} is the store itself")
    data_dir.mkdir(parents=True, exist_ok=True)
    now = wall_clock()
    with HeldDataDir(data_dir, "rampart restore"):
        refuse_if_in_use(db)
        tmp = data_dir / f".{db.name}.restore.{os.getpid()}.tmp"
        try:
            with Store(src, readonly=True) as backup_store:
                checked = backup_store.verify_audit()
                if not checked.ok:
                    raise BackupError(
                        f"the backup's audit log does not verify ({checked.problems[0]}); "
                        "choose another backup"
                    )
                source_identity = backup_store.identity()
                _copy(backup_store, tmp)
            replaced_head, replaced_gen, notes = None, 0, []
            if db.exists():
                try:
                    with Store(db, readonly=True) as old:
                        replaced_head, replaced_gen = old.committed_head, old.identity().generation
                except StoreError as exc:
                    notes.append(f"the replaced store was unreadable: {exc}")
            hp = head_path(db)
            try:
                file_head = read_head_file(hp)
            except HeadFileError as exc:
                file_head = None
                notes.append(str(exc))
            generation = 1 + max(
                source_identity.generation,
                replaced_gen,
                file_head.generation if file_head else 0,
            )
            marker: dict[str, Any] = {
                "source": str(src.resolve()),
                "operator": operator,
                "reason": reason,
                "at": now,
                "generation": generation,
                "restored_head": msgspec.to_builtins(checked.last),
                "replaced_head": msgspec.to_builtins(replaced_head),
                "mirrored_head": msgspec.to_builtins(file_head),
                "notes": notes,
            }
            with Store(tmp) as restored:
                with restored.transaction():
                    restored.set_generation(generation)
                    restored.put(RESTORED_KEY, msgspec.json.encode(marker))
                identity = restored.identity()
                head = restored.committed_head
            if any(p.exists() for p in _sidecars(tmp)):
                raise BackupError(f"{tmp}: the restored copy could not be checkpointed")
            _fsync(tmp)
            # the store it replaces is moved aside, never deleted
            aside = db.with_name(f"{db.name}.replaced-{_stamp(now)}")
            wal, shm = _sidecars(db)
            replaced = []
            if db.exists():
                os.replace(db, aside)
                replaced.append(str(aside))
            if wal.exists():
                os.replace(wal, Path(f"{aside}-wal"))
                replaced.append(f"{aside}-wal")
            _remove(shm)
            os.replace(tmp, db)
            fsync_dir(data_dir)
        except BaseException:
            _remove(tmp, *_sidecars(tmp))
            raise
        write_head_file(hp, mirrored(identity, head, now))
    return RestoreResult(
        db=str(db),
        source=str(src),
        head=head,
        identity=identity,
        replaced=replaced,
        replaced_head=replaced_head,
        mirrored_head=file_head,
    )
