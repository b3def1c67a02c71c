"""``rampart audit log``: the audit log read from the state store, filtered, formatted, followed.

The store is opened read-only (:class:`rampart.store.Store` with ``readonly=True``): nothing is
created, migrated or written, and every read is one short statement outside any open transaction,
so a running daemon is never held up (in WAL mode readers do not block the writer, and no read
pins the log between polls). ``--follow`` keeps the connection open and polls; a store replaced
underneath (a restore renames a new file into place) is noticed and reopened.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from rampart.audit import AuditRecord, encode_record
from rampart.store import Store, StoreError

BATCH: Final = 1000  # records per read
SUMMARY_WIDTH: Final = 160  # characters of a record's payload summary in the human format
# payload fields left out of the one-line summary (too long for a line; --json has them)
_BULKY: Final = frozenset({"steps", "target_ms", "metrics", "thresholds", "mirrors", "clocks"})
# payload fields first in the summary, in this order (then the others by name, the reason last)
_FIRST: Final = (
    "algos",
    "algo",
    "deployment_id",
    "gateway",
    "halts",
    "verb",
    "target",
    "trigger",
    "scope",
    "state",
)
# where a deployment's algorithms are kept (rampart.effects.DEPLOYMENT_KEY): the stored document
_DEPLOYMENT_PREFIX: Final = "deployment/"


class _StoredConfig(msgspec.Struct, rename="camel"):
    blue_version: str | None = None
    green_version: str | None = None


class _StoredDocument(msgspec.Struct, rename="camel"):
    algorithm_id: str = ""
    configuration: _StoredConfig = msgspec.field(default_factory=_StoredConfig)


class _StoredDeployment(msgspec.Struct):
    document: _StoredDocument


_stored_decoder: Final = msgspec.json.Decoder(_StoredDeployment)


# ---- which records concern an algorithm ---------------------------------------------------------


def _strings(value: object) -> Iterator[str]:
    """Every string in a JSON value: string values and object keys, at any depth."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def concerns(
    payload: Mapping[str, Any], algo: str, deployments: Mapping[str, Collection[str]]
) -> bool:
    """Whether a record with ``payload`` concerns algorithm ``algo``: the payload names it
    (``algo``, ``algos``, ``algorithm_id``, ``halts``, ``clocks``, a control verb's ``target``:
    any string in it equal to the id), names a deployment of it (``deployment_id`` of a
    transition, a ``target``; ``deployments`` maps deployment ids to their algorithms), or is a
    control request for every algorithm (``target`` ``*``)."""
    if payload.get("target") == "*":
        return True
    for s in _strings(payload):
        if s == algo or algo in deployments.get(s, ()):
            return True
    return False


def deployment_algorithms(store: Store) -> dict[str, list[str]]:
    """Deployment id -> the algorithms its stored document names (its ``algorithmId`` and, for a
    blue/green deployment, both versions). Unreadable entries are skipped."""
    out: dict[str, list[str]] = {}
    for key, value in store.items(_DEPLOYMENT_PREFIX):
        try:
            doc = _stored_decoder.decode(value).document
        except (msgspec.DecodeError, UnicodeDecodeError):
            continue
        algos = [doc.algorithm_id, doc.configuration.blue_version, doc.configuration.green_version]
        out[key[len(_DEPLOYMENT_PREFIX) :]] = [a for a in algos if a]
    return out


# ---- formatting ----------------------------------------------------------------------------------


def format_time(ts: int) -> str:
    """``ts`` (ns since the epoch) as ``2025-01-02 03:04:05.678 UTC``."""
    dt = datetime.fromtimestamp(ts // 1_000_000_000, tz=UTC)
    return f"{dt:%Y-%m-%d %H:%M:%S}.{ts % 1_000_000_000 // 1_000_000:03d} UTC"


def _scalar(value: object) -> str:
    if isinstance(value, str):
        return value if value and not any(c.isspace() for c in value) else repr(value)
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "null"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ",".join(
            ":".join(_scalar(x) for x in v) if isinstance(v, list | tuple) else _scalar(v)
            for v in value
        )
    if isinstance(value, dict):
        return "{...}"
    return str(value)


def summary(rec: AuditRecord) -> str:
    """A short, one-line account of a record's payload (at most SUMMARY_WIDTH characters)."""
    p = rec.payload
    if rec.kind == "transition" and "from_phase" in p and "to_phase" in p:
        text = f"{p.get('deployment_id', '?')}: {p['from_phase']} -> {p['to_phase']}"
        if p.get("from_stage") != p.get("to_stage"):
            text += f", stage {p.get('from_stage')} -> {p.get('to_stage')}"
        if p.get("reason"):
            text += f": {p['reason']}"
    else:
        keys = sorted(
            (
                k
                for k, v in p.items()
                if k not in _BULKY and k != "reason" and not isinstance(v, dict)
            ),
            key=lambda k: (_FIRST.index(k) if k in _FIRST else len(_FIRST), k),
        )
        parts = [f"{k}={_scalar(p[k])}" for k in keys]
        if p.get("reason"):
            parts.append(f"reason={_scalar(p['reason'])}")
        text = " ".join(parts)
    text = " ".join(text.split())  # no line breaks from a payload
    return text if len(text) <= SUMMARY_WIDTH else text[: SUMMARY_WIDTH - 3] + "..."


def format_record(rec: AuditRecord) -> str:
    """One line: UTC time, seq, kind, actor, payload summary."""
    line = f"{format_time(rec.ts)}  #{rec.seq}  {rec.kind}  {rec.actor}"
    text = summary(rec)
    return f"{line}  {text}" if text else line


def record_json(rec: AuditRecord) -> str:
    """The record as one line of JSON: the JetStream copy's form (docs/audit.md), keys sorted."""
    return encode_record(rec).decode()


# ---- reading ------------------------------------------------------------------------------------


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class AuditLogReader:
    """The audit log of the store at ``path``, read-only; raises StoreError when unreadable."""

    def __init__(self, path: str, *, algo: str | None = None) -> None:
        self.path = path
        self.algo = algo
        self._store: Store | None = None
        self._file: tuple[int, int] | None = None
        self.deployments: dict[str, list[str]] = {}
        self.open()

    def open(self) -> None:
        self.close()
        file = _file_id(self.path)
        self._store = Store(self.path, readonly=True)
        self._file = file

    def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            store.close()

    def __enter__(self) -> AuditLogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def store(self) -> Store:
        if self._store is None:
            self.open()
        assert self._store is not None
        return self._store

    @property
    def closed(self) -> bool:
        return self._store is None

    def replaced(self) -> bool:
        """Whether the path now names another file than the one last opened (a restore renamed
        a new store into place, or the file is gone)."""
        return _file_id(self.path) != self._file

    def head_seq(self) -> int:
        head = self.store.audit_head()
        return head.seq if head is not None else 0

    def matches(self, rec: AuditRecord) -> bool:
        return self.algo is None or concerns(rec.payload, self.algo, self.deployments)

    def read(self, after: int) -> tuple[list[AuditRecord], int]:
        """The records after seq ``after`` that match (one batch), and the last seq read."""
        batch = self.store.audit(after_seq=after, limit=BATCH)
        if not batch:
            return [], after
        if self.algo is not None:
            self.deployments = deployment_algorithms(self.store)
        return [r for r in batch if self.matches(r)], batch[-1].seq

    def newest(self, limit: int | None) -> tuple[list[AuditRecord], int]:
        """The newest ``limit`` matching records (None: all), oldest first, and the last seq."""
        after = 0
        if limit is not None and self.algo is None:
            after = max(0, self.head_seq() - limit)
        kept: deque[AuditRecord] = deque(maxlen=limit)
        while True:
            records, last = self.read(after)
            if last == after:
                return list(kept), after
            kept.extend(records)
            after = last


def follow(
    reader: AuditLogReader,
    after: int,
    emit: Callable[[list[AuditRecord]], None],
    note: Callable[[str], None],
    *,
    interval: float,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Poll for records after seq ``after`` every ``interval`` seconds and ``emit`` them, until
    interrupted (KeyboardInterrupt, or whatever ``sleep`` raises). A store that cannot be read
    for a while (a restore in progress) is retried every poll, with one ``note``; a store
    replaced by another file is reopened, from its own end when it ends before ``after``."""
    failing = False
    while True:
        sleep(interval)
        try:
            replaced = reader.replaced()
            if replaced or reader.closed:
                reader.open()
                head = reader.head_seq()
                if head < after:
                    note(
                        f"{reader.path} was replaced (restored?): its audit log ends at seq "
                        f"{head}, before seq {after}: following it from there"
                    )
                    after = head
                elif replaced:
                    note(f"{reader.path} was replaced (restored?): following the new store")
            while True:
                records, last = reader.read(after)
                if last == after:
                    break
                after = last
                if records:
                    emit(records)
        except StoreError as e:
            reader.close()
            if not failing:
                note(f"cannot read the store ({e}); trying again every {interval:g}s")
            failing = True
        else:
            if failing:
                note(f"reading {reader.path} again")
            failing = False
