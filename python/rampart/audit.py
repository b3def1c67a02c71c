"""The tamper-evident audit log: append-only records chained by SHA-256.

Every record carries the hash of the record before it; the first carries 64 zeros. A record's
hash is the SHA-256 of its canonical encoding, the JSON array ``[seq,ts,kind,actor,payload,
prev_hash]`` written by msgspec with sorted object keys and no whitespace (docs/audit.md gives the
byte-level rules so another language can verify). The records live in the daemon's SQLite store
(:mod:`rampart.store`), next to a head row ``(seq, hash)`` written in the same transaction, and are
published to a JetStream stream; :func:`verify` checks one chain, :func:`verify_against` compares
two copies (``rampart audit verify`` is :func:`rampart.durability.audit_verify_main`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final, NamedTuple

import msgspec

GENESIS_HASH: Final = "0" * 64
MAX_PROBLEMS: Final = 100  # problems listed in a VerifyResult; the rest are counted


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of the chain. ``ts`` is event time in ns since the epoch; ``actor`` is who did
    it (an operator, ``"rampart"`` for automatic actions); ``payload`` is a JSON object."""

    seq: int
    ts: int
    kind: str
    actor: str
    payload: dict[str, Any]
    prev_hash: str
    hash: str


class AuditHead(msgspec.Struct, frozen=True, kw_only=True):
    """The position of the newest record: its ``seq`` and ``hash``."""

    seq: int
    hash: str


class VerifyResult(msgspec.Struct, frozen=True, kw_only=True):
    """``problems`` name the seq they concern, in chain order (at most MAX_PROBLEMS are listed;
    a final entry counts the rest). ``last`` is the newest record examined."""

    ok: bool
    count: int
    problems: list[str] = []
    first_bad_seq: int | None = None
    last: AuditHead | None = None


HeadLike = AuditHead | tuple[int, str]

_record_decoder: Final = msgspec.json.Decoder(AuditRecord)
_payload_decoder: Final = msgspec.json.Decoder(dict[str, Any])


def _json(value: Any) -> bytes:
    return msgspec.json.encode(value, order="sorted")


def canonical_payload(payload: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Normalise ``payload`` to plain JSON values and return it with its canonical bytes.

    The payload goes through one JSON round trip, so the record holds exactly what is hashed:
    tuples become lists, Structs objects, non-finite floats ``null``. Raises TypeError when the
    payload is not JSON-encodable (e.g. a non-string key).
    """
    value = _payload_decoder.decode(_json(payload))
    return value, _json(value)


def hash_input(
    seq: int, ts: int, kind: str, actor: str, payload_json: bytes, prev_hash: str
) -> bytes:
    """The bytes that are hashed: ``[seq,ts,kind,actor,payload,prev_hash]`` as canonical JSON,
    with ``payload_json`` (already canonical) spliced in verbatim."""
    return b"".join(
        (
            b"[",
            str(seq).encode(),
            b",",
            str(ts).encode(),
            b",",
            _json(kind),
            b",",
            _json(actor),
            b",",
            payload_json,
            b",",
            _json(prev_hash),
            b"]",
        )
    )


def compute_hash(
    seq: int, ts: int, kind: str, actor: str, payload_json: bytes, prev_hash: str
) -> str:
    """Lower-case hex SHA-256 of :func:`hash_input`."""
    return hashlib.sha256(hash_input(seq, ts, kind, actor, payload_json, prev_hash)).hexdigest()


def record_hash(rec: AuditRecord) -> str:
    """The hash ``rec`` should carry, recomputed from its other fields."""
    return compute_hash(rec.seq, rec.ts, rec.kind, rec.actor, _json(rec.payload), rec.prev_hash)


def new_record(
    prev: AuditHead | None, kind: str, payload: Mapping[str, Any], *, actor: str, ts: int
) -> AuditRecord:
    """The record that follows ``prev`` (``None``: the first record of a chain)."""
    for name, value in (("kind", kind), ("actor", actor)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"audit {name} must be a non-empty string, got {value!r}")
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise ValueError(f"audit ts must be an int (ns since the epoch), got {ts!r}")
    seq = prev.seq + 1 if prev else 1
    prev_hash = prev.hash if prev else GENESIS_HASH
    body, body_json = canonical_payload(payload)
    digest = compute_hash(seq, ts, kind, actor, body_json, prev_hash)
    return AuditRecord(
        seq=seq, ts=ts, kind=kind, actor=actor, payload=body, prev_hash=prev_hash, hash=digest
    )


def encode_record(rec: AuditRecord) -> bytes:
    """The record as JSON for the JetStream copy. Keys are sorted at every level, so the value of
    ``"payload"`` in these bytes is exactly the canonical payload that was hashed."""
    return _json(rec)


def decode_record(data: bytes | str) -> AuditRecord:
    """Inverse of :func:`encode_record`; raises msgspec.DecodeError/ValidationError."""
    return _record_decoder.decode(data)


# ---- verification --------------------------------------------------------------------------


class Link(NamedTuple):
    """What the chain check needs from one record. ``computed`` is the hash recomputed from the
    record's contents, or ``None`` with ``malformed`` saying why it could not be."""

    seq: int
    prev_hash: str
    hash: str
    computed: str | None
    malformed: str | None = None


class _Problems:
    """Problems keyed by seq; listed in seq order (stable), the first MAX_PROBLEMS found."""

    def __init__(self) -> None:
        self.items: list[tuple[int, str]] = []
        self.total = 0

    def add(self, seq: int, text: str) -> None:
        self.total += 1
        if len(self.items) < MAX_PROBLEMS:
            self.items.append((seq, text))

    def result(self, count: int, last: AuditHead | None) -> VerifyResult:
        ordered = sorted(self.items, key=lambda item: item[0])
        listed = [f"seq {seq}: {text}" for seq, text in ordered]
        if self.total > len(listed):
            listed.append(f"... and {self.total - len(listed)} more problems")
        return VerifyResult(
            ok=self.total == 0,
            count=count,
            problems=listed,
            first_bad_seq=ordered[0][0] if ordered else None,
            last=last,
        )


def _as_head(value: HeadLike | None) -> AuditHead | None:
    if value is None or isinstance(value, AuditHead):
        return value
    seq, digest = value
    return AuditHead(seq=seq, hash=digest)


def check_chain(
    links: Iterable[Link], head: HeadLike | None = None, *, anchor: HeadLike | None = None
) -> VerifyResult:
    """The chain check behind :func:`verify` and ``Store.verify_audit`` (which feeds it raw rows,
    so that a record whose stored payload is not even JSON is still reported, not raised)."""
    head = _as_head(head)
    start = _as_head(anchor) or AuditHead(seq=0, hash=GENESIS_HASH)
    problems = _Problems()
    prev_seq, prev_hash, count = start.seq, start.hash, 0
    for link in links:
        count += 1
        if link.computed is None:
            problems.add(link.seq, f"malformed record: {link.malformed}")
        elif link.computed != link.hash:
            problems.add(link.seq, "hash does not match the record's contents (record edited)")
        if link.seq > prev_seq + 1:
            gap = (
                f"{prev_seq + 1}" if link.seq == prev_seq + 2 else f"{prev_seq + 1}..{link.seq - 1}"
            )
            problems.add(
                prev_seq + 1,
                f"missing: the chain jumps from seq {prev_seq} to seq "
                f"{link.seq}, seq {gap} absent (records deleted)",
            )
        elif link.seq <= prev_seq:
            problems.add(
                link.seq,
                f"comes after seq {prev_seq} (records reordered, duplicated or inserted)",
            )
        if link.prev_hash != prev_hash:
            problems.add(
                link.seq,
                f"prev_hash does not match the hash of the record before it (seq {prev_seq}): "
                "a record was inserted, deleted, replaced or reordered",
            )
        prev_seq, prev_hash = link.seq, link.hash
    last = AuditHead(seq=prev_seq, hash=prev_hash) if count else None
    if head is not None:
        if prev_seq < head.seq:
            problems.add(
                prev_seq + 1,
                f"missing: the chain ends at seq {prev_seq} but the head is at seq {head.seq} "
                "(log truncated)",
            )
        elif prev_seq > head.seq:
            problems.add(
                head.seq + 1,
                f"the chain runs to seq {prev_seq}, past the head at seq {head.seq} "
                "(records appended outside Rampart, or the head was rolled back)",
            )
        elif prev_hash != head.hash:
            problems.add(head.seq, "hash differs from the head's hash (record or head replaced)")
    return problems.result(count, last)


def _links(records: Iterable[AuditRecord]) -> Iterator[Link]:
    for rec in records:
        try:
            computed: str | None = record_hash(rec)
            why = None
        except (TypeError, ValueError) as exc:
            computed, why = None, f"payload cannot be encoded ({exc})"
        yield Link(rec.seq, rec.prev_hash, rec.hash, computed, why)


def verify(
    records: Iterable[AuditRecord],
    head: HeadLike | None = None,
    *,
    anchor: HeadLike | None = None,
) -> VerifyResult:
    """Check a chain given in seq order.

    Detects edited records (hash mismatch), deletions and insertions (seq gaps, duplicate seqs,
    broken prev_hash links), reordering, and, when a ``head`` ``(seq, hash)`` is given (the
    store's head row, or one obtained elsewhere), truncation of the tail and records past the
    head. Without ``anchor`` the chain must start at seq 1 with the genesis prev_hash; with it,
    ``records`` is the segment that follows the record ``anchor`` names.
    """
    return check_chain(_links(records), head, anchor=anchor)


def verify_against(
    records: Iterable[AuditRecord], other_records: Iterable[AuditRecord]
) -> VerifyResult:
    """Compare the local chain with an independent copy (the JetStream stream).

    Reports every seq the two copies both hold but disagree on, every seq the copy holds within
    the local range that is missing locally, and a copy that runs past the local end (local tail
    truncated). This catches a consistent rewrite of the database, head included. Local records
    the copy lacks are not problems: publication lags the store and a mirror may have lost
    messages. ``count`` is the number of seqs compared. Check each chain itself with
    :func:`verify`.
    """
    mine = {rec.seq: rec for rec in records}
    theirs = {rec.seq: rec for rec in other_records}
    problems = _Problems()
    local_end = max(mine, default=0)
    compared = 0
    for seq in sorted(theirs):
        other = theirs[seq]
        rec = mine.get(seq)
        if rec is None:
            if seq <= local_end:
                problems.add(seq, "present in the external copy but missing locally (deleted)")
            continue
        compared += 1
        if rec != other:
            fields = [
                f for f in AuditRecord.__struct_fields__ if getattr(rec, f) != getattr(other, f)
            ]
            problems.add(
                seq, f"differs from the external copy in {', '.join(fields)} (record rewritten)"
            )
    other_end = max(theirs, default=0)
    if other_end > local_end:
        problems.add(
            local_end + 1,
            f"missing: the external copy runs to seq {other_end} but the local log ends at seq "
            f"{local_end} (local log truncated)",
        )
    last = mine.get(local_end)
    return problems.result(compared, AuditHead(seq=last.seq, hash=last.hash) if last else None)
