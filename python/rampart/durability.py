"""What keeps the state store honest from outside its own file (issue 10).

SQLite keeps committed pages in the write-ahead log (``rampart.db-wal``) until a checkpoint; a lost
or forgotten -wal file, or an older copy of ``rampart.db`` put back, opens as a perfectly valid
store that has silently lost state. So the audit head (the newest record's seq and hash, with the
store's id and generation) is mirrored outside the file, after every commit that appends to the
audit log:

* the **head file** beside the store (``<data_dir>/rampart.head``), replaced atomically (temporary
  file, fsync, rename, fsync of the directory); it may lag the store, never lead it;
* the **JetStream KV** bucket ``RAMPART_STATE`` (key ``audit.head.<prefix>.<name>``), when there.

At start the daemon compares the store with both (:func:`behind`): a store behind its mirror is
refused (every algorithm halted) until it is restored (``rampart restore``) or the loss is accepted
(``rampart run --accept-store-rollback``). The store's *generation* counts those deliberate steps
back, so a mirror written before one of them is recognised as older than the store.

Also here: the data directory lock a running daemon holds (``rampart restore`` refuses while it
is held).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final, Literal

import msgspec

from rampart.audit import GENESIS_HASH, AuditHead
from rampart.store import Store, StoreError, StoreIdentity

log = logging.getLogger("rampart.durability")

HEAD_SUFFIX: Final = ".head"
# A pending restore, in the restored store's kv table: the next start audits it and removes it.
RESTORED_KEY: Final = "store/restored"
HEAD_FORMAT: Final = "rampart-audit-head"

_KV_KEY_CHARS: Final = re.compile(r"[^-/_=.a-zA-Z0-9]")
_tmp_counter = itertools.count()


class HeadFileError(StoreError):
    """The head file exists but cannot be read or written; the message says what to do."""


class MirroredHead(msgspec.Struct, frozen=True, kw_only=True):
    """The audit head of a store as mirrored outside it. ``seq`` 0 (hash 64 zeros): no record
    yet. ``written_at``: wall clock ns of the write (information only)."""

    format: Literal["rampart-audit-head"] = HEAD_FORMAT
    store_id: str | None = None
    generation: int = 0
    seq: int
    hash: str
    written_at: int = 0

    def key(self) -> tuple[str | None, int, int, str]:
        return (self.store_id, self.generation, self.seq, self.hash)


_head_decoder: Final = msgspec.json.Decoder(MirroredHead)


def head_path(db: str | os.PathLike[str]) -> Path:
    """The head file of the store at ``db``: ``rampart.db`` -> ``rampart.head``."""
    return Path(db).with_suffix(HEAD_SUFFIX)


def kv_key(prefix: str, name: str) -> str:
    """The JetStream KV key of a daemon's mirrored head (one per subject prefix and name)."""
    return _KV_KEY_CHARS.sub("_", f"audit.head.{prefix}.{name}")


def mirrored(identity: StoreIdentity, head: AuditHead | None, written_at: int) -> MirroredHead:
    return MirroredHead(
        store_id=identity.store_id,
        generation=identity.generation,
        seq=head.seq if head else 0,
        hash=head.hash if head else GENESIS_HASH,
        written_at=written_at,
    )


def decode_head(data: bytes) -> MirroredHead:
    """Raises msgspec.DecodeError (ValidationError) when ``data`` is not a mirrored head."""
    head = _head_decoder.decode(data)
    if head.seq < 0 or head.generation < 0:
        raise msgspec.ValidationError("seq and generation must be >= 0")
    return head


def encode_head(head: MirroredHead) -> bytes:
    return msgspec.json.encode(head) + b"\n"


def read_head_file(path: Path) -> MirroredHead | None:
    """The head file at ``path``; None when there is none. Raises HeadFileError when it is
    there but unreadable (never guessed around: it is the evidence)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HeadFileError(
            f"head file {path}: cannot read ({exc.strerror}); check its permissions"
        ) from exc
    try:
        return decode_head(data)
    except msgspec.DecodeError as exc:
        raise HeadFileError(
            f"head file {path} is unreadable ({exc}); the store cannot be checked against it: "
            "restore it from the backup of the data directory, or, if the store is known to be "
            "complete, run `rampart audit verify` and start with --accept-store-rollback"
        ) from exc


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data``: a temporary file beside it, fsync, rename, fsync of the
    directory. A crash leaves the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_tmp_counter)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_head_file(path: Path, head: MirroredHead) -> None:
    write_atomically(path, encode_head(head))


def _short(digest: str) -> str:
    return digest[:12]


def behind(store: Store, mirror: MirroredHead, where: str) -> str | None:
    """Why ``store`` is behind (or beside) ``mirror``, or None when it is not.

    * a mirror of an older generation predates a restore or an accepted rollback: ignored;
    * a mirror of a newer generation: the store is a copy from before one of them;
    * a mirror further along than the store's head: records committed and then lost;
    * a mirror whose record the store holds with another hash: another history.
    """
    identity = store.identity()
    if mirror.generation < identity.generation:
        return None
    if mirror.generation > identity.generation:
        return (
            f"{where} is of generation {mirror.generation} but the store of generation "
            f"{identity.generation}: the store is a copy from before a restore or an accepted "
            "rollback"
        )
    head = store.audit_head()
    seq = head.seq if head else 0
    if mirror.seq > seq:
        return (
            f"the store's audit log ends at seq {seq} but {where} records seq {mirror.seq} "
            f"(hash {_short(mirror.hash)}...) as committed: the store is {mirror.seq - seq} "
            f"audit record{'s' if mirror.seq - seq != 1 else ''} behind"
        )
    if mirror.seq == 0:
        return None
    stored = store.audit_hash(mirror.seq)
    if stored == mirror.hash:
        return None
    have = f"hash {_short(stored)}..." if stored is not None else "no such record"
    return (
        f"the store's record seq {mirror.seq} has {have} but {where} records hash "
        f"{_short(mirror.hash)}...: the store holds another history"
        + (" from there on" if mirror.seq < seq else "")
    )


def foreign_store(store_id: str | None, mirror: MirroredHead, where: str) -> str:
    """Why a store that is not the one ``mirror`` was written by (``store_id``: None for a
    store with no id yet, a new one) cannot take its place."""
    this = "new (it has no id yet)" if store_id is None else f"another store (id {store_id})"
    return (
        f"{where} records store {mirror.store_id} at audit seq {mirror.seq}, but this store is "
        f"{this}: this daemon's data directory was lost or replaced, and what it held "
        "(positions, the events stream's cursor, halts, rollbacks, the audit log) is not here"
    )


class HeadMirror:
    """Keeps the store's committed audit head in the head file and in JetStream KV (created on
    the event loop; :meth:`wake` from any thread, it is the store's ``head_listener``)."""

    def __init__(
        self,
        store: Store,
        path: Path,
        *,
        kv_put: Callable[[bytes], Awaitable[None]] | None,
        wall_clock: Callable[[], int],
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.path = path
        self.identity = store.identity()
        self.kv_put = kv_put
        self.wall_clock = wall_clock
        # Called (on the event loop) when the head file cannot be written: the daemon fails
        # closed, since the store can no longer be checked against it at the next start.
        self.on_failure = on_failure
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._file_lock = threading.Lock()
        self._file_written: MirroredHead | None = None
        self._kv_written: MirroredHead | None = None
        self._failing = False

    def current(self) -> MirroredHead:
        return mirrored(self.identity, self.store.committed_head, self.wall_clock())

    def wake(self, _head: AuditHead | None = None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: close() writes the file
            self._loop.call_soon_threadsafe(self._wake.set)

    def write_file(self) -> bool:
        """Write the head file if the committed head moved on (never back). Blocking."""
        with self._file_lock:
            head = self.current()
            last = self._file_written
            if last is not None and (
                head.key() == last.key()
                or (head.generation, head.seq) < (last.generation, last.seq)
            ):
                return False
            write_head_file(self.path, head)
            self._file_written = head
            return True

    async def flush(self) -> None:
        """Mirror the committed head now (the file first, then JetStream KV)."""
        try:
            await asyncio.to_thread(self.write_file)
        except OSError as exc:
            first = not self._failing
            self._failing = True
            self._loop.call_later(1.0, self.wake)
            if first:
                log.error("cannot write the head file %s (%s); retrying", self.path, exc)
                if self.on_failure is not None:
                    self.on_failure(
                        f"the head file {self.path} cannot be written ({exc.strerror or exc}): "
                        "the store could not be checked against it at the next start; check the "
                        "permissions of the data directory and its files, and the disk"
                    )
        else:
            if self._failing:
                log.warning("head file %s written again", self.path)
            self._failing = False
        head = self._file_written
        if self.kv_put is not None and head is not None and head != self._kv_written:
            self._kv_written = head
            await self.kv_put(encode_head(head))

    async def run(self) -> None:
        """Mirror at start, then after every commit that appended to the audit log (coalesced:
        one write at a time, each with the newest head)."""
        self._wake.set()
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()


# ---- rampart audit verify ------------------------------------------------------------------


# Exit status of `rampart audit verify` and `rampart audit log` when the store cannot be read
# (2 is argparse's, for usage errors).
EXIT_UNREADABLE: Final = 3


def audit_verify_main(db_path: str, *, json_out: bool = False) -> int:
    """``rampart audit verify``: check the audit chain of the store at ``db_path``.

    Opens the database read-only (safe while the daemon runs: the check reads one consistent
    snapshot) and compares it with the head file beside it (``rampart.head``, the audit head the
    daemon mirrors after every commit): a store whose chain is intact but that ends before that
    head has lost committed records (a lost ``-wal`` file, an older copy put back). Prints a
    summary naming the first bad seq and why, or a JSON object with ``json_out``. Returns 0 when
    the chain verifies and the store is not behind its head file, 1 when it has been tampered
    with or is behind, 3 (EXIT_UNREADABLE) when the database cannot be read.
    """
    hp = head_path(db_path)
    mirror_note = None
    try:
        mirror = read_head_file(hp)
    except HeadFileError as exc:
        mirror, mirror_note = None, str(exc)
    mirror_json = msgspec.to_builtins(mirror) if mirror is not None else None
    lag = None
    try:
        with Store(db_path, readonly=True) as store:
            result = store.verify_audit()
            if mirror is not None:
                lag = behind(store, mirror, f"the head file {hp}")
    except StoreError as exc:
        error = str(exc)
        if mirror is not None and mirror.seq > 0:
            error += (
                f" (the head file {hp} records audit seq {mirror.seq} as committed to this store)"
            )
        if json_out:
            report = {"path": db_path, "ok": False, "error": error, "mirror": mirror_json}
            print(msgspec.json.encode(report).decode())
        else:
            print(f"audit log UNREADABLE: {error}", file=sys.stderr)
        return EXIT_UNREADABLE
    if lag is not None:
        lag = (
            f"{lag}: committed records are missing from this store (a lost {db_path}-wal file, "
            "or an older copy put back). Do not start the daemon on it as it is: restore the "
            "newest backup (`rampart restore BACKUP --operator NAME`), or accept the loss "
            "(`rampart run --accept-store-rollback --operator NAME`, recorded in the audit log)"
        )
        result = msgspec.structs.replace(result, ok=False, problems=[*result.problems, lag])
    if json_out:
        report = {
            "path": db_path,
            **msgspec.structs.asdict(result),
            "mirror": mirror_json,
            "behind": lag,
        }
        print(msgspec.json.encode(report).decode())
    elif result.ok:
        tip = f", head seq {result.last.seq} hash {result.last.hash}" if result.last else ""
        print(f"audit log OK: {db_path}: {result.count} records verified{tip}")
    elif lag is not None and len(result.problems) == 1:
        print(f"audit log BEHIND ITS HEAD FILE: {db_path}: {result.count} records verified; {lag}")
    else:
        print(f"audit log TAMPERED: {db_path}: first bad record {result.problems[0]}")
        print(f"{result.count} records checked; problems:")
        for problem in result.problems:
            print(f"  {problem}")
    if mirror_note is not None and not json_out:
        print(f"note: {mirror_note}", file=sys.stderr)
    return 0 if result.ok else 1
