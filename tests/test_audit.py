"""The hash-chained audit log: the hash rule, tamper detection in memory and in the database,
comparison with an external copy, and `rampart audit verify`."""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rampart.audit import (
    GENESIS_HASH,
    MAX_PROBLEMS,
    AuditHead,
    AuditRecord,
    canonical_payload,
    decode_record,
    encode_record,
    new_record,
    record_hash,
    verify,
    verify_against,
)
from rampart.durability import EXIT_UNREADABLE, audit_verify_main
from rampart.store import Store, StoreError

# ---- the hash rule ------------------------------------------------------------------------

# The test vector of docs/audit.md: these bytes, hashed with SHA-256, in any language.
VECTOR_INPUT = (
    b'[1,1700000000000000000,"halt","alice",{"algo":"momentum-v2.1.0","limits":'
    b'{"daily_loss":25000.0,"max_drawdown":0.05},"n":[1,2.5,-0.0,null,true,1e-7],'
    b'"reason":"drawdown 5.2% > 5%","\xc3\xa9":"\xc3\xbc\\n\\""},'
    b'"0000000000000000000000000000000000000000000000000000000000000000"]'
)
VECTOR_HASH = "6ba6aba8a3b4bfcbb16cb39eb72bee703178705d57c2cfc860d57a6da090cced"
VECTOR_PAYLOAD: dict[str, Any] = {
    "reason": "drawdown 5.2% > 5%",
    "algo": "momentum-v2.1.0",
    "limits": {"max_drawdown": 0.05, "daily_loss": 25000.0},
    "n": (1, 2.5, -0.0, None, True, 1e-7),
    "é": 'ü\n"',
}


def test_hash_rule_matches_the_documented_vector() -> None:
    assert hashlib.sha256(VECTOR_INPUT).hexdigest() == VECTOR_HASH
    rec = new_record(None, "halt", VECTOR_PAYLOAD, actor="alice", ts=1_700_000_000_000_000_000)
    assert rec.seq == 1
    assert rec.prev_hash == GENESIS_HASH == "0" * 64
    assert rec.hash == VECTOR_HASH
    assert record_hash(rec) == VECTOR_HASH
    fields = [rec.seq, rec.ts, rec.kind, rec.actor, rec.payload, rec.prev_hash]
    assert msgspec.json.encode(fields, order="sorted") == VECTOR_INPUT
    nxt = new_record(AuditHead(seq=1, hash=rec.hash), "resume", {}, actor="bob", ts=1)
    assert (nxt.seq, nxt.prev_hash) == (2, VECTOR_HASH)


def test_payload_is_normalised_to_what_was_hashed() -> None:
    body, raw = canonical_payload({"b": (1, 2), "a": float("nan")})
    assert body == {"a": None, "b": [1, 2]}
    assert raw == b'{"a":null,"b":[1,2]}'
    with pytest.raises(TypeError):
        canonical_payload({1: "x"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="actor"):
        new_record(None, "halt", {}, actor="", ts=1)
    with pytest.raises(ValueError, match="ts"):
        new_record(None, "halt", {}, actor="a", ts=True)


def documented_float(value: float) -> str:
    """The float rule of docs/audit.md, written out independently of msgspec."""
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    negative, digit_tuple, exponent = Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exponent += len(digit_tuple) - len(digits)
    n = len(digits)
    e = exponent + n - 1  # value = d.ddd x 10**e
    if -5 <= e <= 15:
        if e >= n - 1:
            body = digits + "0" * (e - n + 1) + ".0"
        elif e >= 0:
            body = digits[: e + 1] + "." + digits[e + 1 :]
        else:
            body = "0." + "0" * (-e - 1) + digits
    else:
        body = digits[0] + ("." + digits[1:] if n > 1 else "") + f"e{e}"
    return ("-" if negative else "") + body


BOUNDARY_FLOATS = [1e15, 1e16, 1.5e15, 9.999e15, 1e-5, 1e-6, 1.5e-5, 0.1, 100.0, 5e-324, 1.7e308]


@settings(max_examples=500)
@given(st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(BOUNDARY_FLOATS))
def test_float_encoding_follows_the_documented_rule(value: float) -> None:
    for v in (value, -value):
        assert msgspec.json.encode(v).decode() == documented_float(v)


def test_external_encoding_carries_the_canonical_payload_verbatim() -> None:
    rec = new_record(None, "halt", VECTOR_PAYLOAD, actor="alice", ts=1_700_000_000_000_000_000)
    data = encode_record(rec)
    assert b'"payload":' + canonical_payload(rec.payload)[1] + b',"prev_hash"' in data
    assert decode_record(data) == rec
    assert verify([decode_record(data)]).ok


# ---- chains in memory ---------------------------------------------------------------------


def chain(n: int, start: int = 0) -> list[AuditRecord]:
    out: list[AuditRecord] = []
    for i in range(n):
        prev = AuditHead(seq=out[-1].seq, hash=out[-1].hash) if out else None
        payload = {"algo": f"algo-{i % 3}", "i": start + i, "value": i / 7}
        out.append(new_record(prev, "event", payload, actor="rampart", ts=1_000 + i))
    return out


def head_of(records: list[AuditRecord]) -> AuditHead:
    return AuditHead(seq=records[-1].seq, hash=records[-1].hash)


def test_intact_chain_verifies() -> None:
    records = chain(10)
    result = verify(records, head_of(records))
    assert result.ok and result.count == 10 and result.problems == []
    assert result.first_bad_seq is None and result.last == head_of(records)
    assert verify(records, (10, records[-1].hash)).ok
    assert verify([]).ok and verify([], (0, GENESIS_HASH)).ok
    assert verify(records[4:], head_of(records), anchor=(4, records[3].hash)).ok
    assert not verify(records[4:], head_of(records)).ok


def test_list_reorder_and_duplicate_are_detected() -> None:
    records = chain(6)
    swapped = [*records[:2], records[3], records[2], *records[4:]]
    result = verify(swapped)
    assert not result.ok and result.first_bad_seq == 3
    assert any("reordered" in p for p in result.problems)
    duplicated = [*records[:3], records[2], *records[3:]]
    assert not verify(duplicated).ok


def test_problem_list_is_bounded() -> None:
    records = chain(3 * MAX_PROBLEMS)
    edited = [msgspec.structs.replace(r, kind="forged") for r in records]
    result = verify(edited)
    assert len(result.problems) == MAX_PROBLEMS + 1
    assert result.problems[-1].startswith(f"... and {2 * MAX_PROBLEMS} more")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
payloads = st.dictionaries(st.text(max_size=6), json_values, max_size=4)


@st.composite
def chains(draw: st.DrawFn) -> list[AuditRecord]:
    items = draw(st.lists(payloads, min_size=1, max_size=12))
    out: list[AuditRecord] = []
    for i, payload in enumerate(items):
        prev = head_of(out) if out else None
        kind = draw(st.sampled_from(["halt", "resume", "rollback.started", "deploy"]))
        ts = draw(st.integers(min_value=0, max_value=2**62))
        out.append(new_record(prev, kind, payload, actor=f"op-{i % 2}", ts=ts))
    return out


def _flip(hex_digest: str) -> str:
    return ("1" if hex_digest[0] == "0" else "0") + hex_digest[1:]


def _edit(rec: AuditRecord, field: str) -> AuditRecord:
    changes: dict[str, Any] = {
        "ts": {"ts": rec.ts + 1},
        "kind": {"kind": rec.kind + "!"},
        "actor": {"actor": "mallory"},
        "payload": {"payload": {**rec.payload, "\x00tampered": True}},
        "prev_hash": {"prev_hash": _flip(rec.prev_hash)},
        "hash": {"hash": _flip(rec.hash)},
        "seq": {"seq": rec.seq + 1},
    }
    return msgspec.structs.replace(rec, **changes[field])


TAMPERS = ["edit", "delete", "insert", "swap", "truncate", "duplicate", "append"]


@settings(max_examples=250)
@given(records=chains(), data=st.data())
def test_any_single_tamper_is_detected(records: list[AuditRecord], data: st.DataObject) -> None:
    head = head_of(records)
    assert verify(records, head).ok
    n = len(records)
    tamper = data.draw(st.sampled_from([t for t in TAMPERS if n > 1 or t != "swap"]))
    i = data.draw(st.integers(min_value=0, max_value=n - 1))
    out = list(records)
    if tamper == "edit":
        field = data.draw(
            st.sampled_from(["ts", "kind", "actor", "payload", "prev_hash", "hash", "seq"])
        )
        out[i] = _edit(out[i], field)
    elif tamper == "delete":
        del out[i]
    elif tamper in ("insert", "append"):
        at = n if tamper == "append" else i
        prev = head_of(out[:at]) if at else None
        forged = new_record(prev, "forged", {"by": "mallory"}, actor="mallory", ts=0)
        out.insert(at, forged)
    elif tamper == "swap":
        j = data.draw(st.integers(min_value=0, max_value=n - 2))
        if j >= i:  # any index but i
            j += 1
        out[i], out[j] = out[j], out[i]
    elif tamper == "truncate":
        out = out[:i]
    else:
        out.insert(i + 1, out[i])
    result = verify(out, head)
    assert not result.ok, (tamper, i)
    assert result.first_bad_seq is not None and result.problems


@settings(max_examples=120)
@given(records=chains(), data=st.data())
def test_consistent_rewrite_passes_verify_but_not_the_external_copy(
    records: list[AuditRecord], data: st.DataObject
) -> None:
    """An attacker who rewrites the tail and the head consistently fools verify(); the copy
    published to JetStream still disagrees."""
    n = len(records)
    i = data.draw(st.integers(min_value=0, max_value=n - 1))
    truncate = data.draw(st.booleans())
    if truncate:
        rewritten = records[:i]
    else:
        rewritten = records[:i]
        for rec in records[i:]:
            prev = head_of(rewritten) if rewritten else None
            payload = {**rec.payload, "\x00rewritten": True} if rec.seq == i + 1 else rec.payload
            rewritten.append(new_record(prev, rec.kind, payload, actor=rec.actor, ts=rec.ts))
    new_head = head_of(rewritten) if rewritten else (0, GENESIS_HASH)
    assert verify(rewritten, new_head).ok
    result = verify_against(rewritten, records)
    assert not result.ok
    assert result.first_bad_seq == i + 1
    assert verify_against(records, records).ok


def test_verify_against_tolerates_a_lagging_or_lossy_copy() -> None:
    records = chain(10)
    external = [encode_record(r) for r in records[:7]]
    del external[2]  # the mirror lost seq 3; publication has not reached seq 8-10 yet
    result = verify_against(records, [decode_record(b) for b in external])
    assert result.ok and result.count == 6
    missing_locally = verify_against([*records[:4], *records[5:]], records)
    assert not missing_locally.ok and missing_locally.first_bad_seq == 5


# ---- tampering with the database ----------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def published(db: Path) -> list[AuditRecord]:
    """Ten records appended through the store; the returned list is the JetStream copy."""
    with Store(db) as store:
        return [
            decode_record(encode_record(store.append_audit("event", {"i": i}, actor="t", ts=i)))
            for i in range(1, 11)
        ]


def attack(db: Path, *statements: str | tuple[str, tuple[Any, ...]]) -> None:
    """Edit the file as an attacker would: directly, dropping the append-only triggers."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("DROP TRIGGER audit_no_delete")
    for statement in statements:
        sql, params = (statement, ()) if isinstance(statement, str) else statement
        conn.execute(sql, params)
    conn.close()


def check(db: Path) -> tuple[bool, int | None, str]:
    with Store(db) as store:
        result = store.verify_audit()
    return result.ok, result.first_bad_seq, " | ".join(result.problems)


def test_untouched_database_verifies(db: Path, published: list[AuditRecord]) -> None:
    with Store(db) as store:
        assert store.audit() == published
        assert store.audit(after_seq=8) == published[8:]
        assert store.audit(after_seq=2, limit=3) == published[2:5]
        assert store.audit_head() == head_of(published)
        assert verify_against(store.audit(), published).ok
    assert check(db) == (True, None, "")


def test_edited_payload_is_detected(db: Path, published: list[AuditRecord]) -> None:
    attack(db, """UPDATE audit SET payload = '{"i":999}' WHERE seq = 5""")
    ok, first, problems = check(db)
    assert (ok, first) == (False, 5)
    assert "record edited" in problems


def test_deleted_middle_row_is_detected(db: Path, published: list[AuditRecord]) -> None:
    attack(db, "DELETE FROM audit WHERE seq = 4")
    ok, first, problems = check(db)
    assert (ok, first) == (False, 4)
    assert "deleted" in problems


def test_forged_row_past_the_head_is_detected(db: Path, published: list[AuditRecord]) -> None:
    forged = new_record(head_of(published), "resume", {"algo": "a"}, actor="mallory", ts=11)
    attack(
        db,
        (
            "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?)",
            (forged.seq, forged.ts, forged.kind, forged.actor, "{}", forged.prev_hash, forged.hash),
        ),
    )
    ok, first, problems = check(db)
    assert (ok, first) == (False, 11)
    assert "past the head" in problems


def test_replaced_middle_row_is_detected(db: Path, published: list[AuditRecord]) -> None:
    forged = new_record(head_of(published[:5]), "resume", {}, actor="mallory", ts=6)
    attack(
        db,
        "DELETE FROM audit WHERE seq = 6",
        (
            "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?)",
            (6, forged.ts, forged.kind, forged.actor, "{}", forged.prev_hash, forged.hash),
        ),
    )
    ok, first, problems = check(db)
    assert (ok, first) == (False, 7)  # seq 6 is self-consistent; seq 7 no longer links to it
    assert "prev_hash" in problems
    with Store(db) as store:
        assert verify_against(store.audit(), published).first_bad_seq == 6


def test_truncated_tail_is_detected(db: Path, published: list[AuditRecord]) -> None:
    attack(db, "DELETE FROM audit WHERE seq > 7")
    ok, first, problems = check(db)
    assert (ok, first) == (False, 8)
    assert "truncated" in problems


def test_truncated_tail_with_rewritten_head_needs_the_external_copy(
    db: Path, published: list[AuditRecord]
) -> None:
    attack(
        db,
        "DELETE FROM audit WHERE seq > 7",
        "UPDATE audit_head SET seq = 7, hash = (SELECT hash FROM audit WHERE seq = 7)",
    )
    assert check(db)[0]  # consistent: the database alone cannot tell
    with Store(db) as store:
        result = verify_against(store.audit(), published)
    assert not result.ok and result.first_bad_seq == 8
    assert "truncated" in result.problems[0]
    assert not verify(published[:7], head=head_of(published)).ok  # or with a head kept elsewhere


def test_consistent_rewrite_needs_the_external_copy(db: Path, published: list[AuditRecord]) -> None:
    rewritten = published[:3]
    for rec in published[3:]:
        payload = {"i": -1} if rec.seq == 4 else rec.payload
        rewritten.append(new_record(head_of(rewritten), rec.kind, payload, actor="t", ts=rec.ts))
    attack(
        db,
        *[
            (
                "UPDATE audit SET payload = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (canonical_payload(r.payload)[1].decode(), r.prev_hash, r.hash, r.seq),
            )
            for r in rewritten[3:]
        ],
        ("UPDATE audit_head SET hash = ?", (rewritten[-1].hash,)),
    )
    assert check(db)[0]
    with Store(db) as store:
        result = verify_against(store.audit(), published)
    assert not result.ok and result.first_bad_seq == 4
    assert "payload" in result.problems[0] and "hash" in result.problems[0]


def test_reordered_rows_are_detected(db: Path, published: list[AuditRecord]) -> None:
    attack(
        db,
        "UPDATE audit SET seq = -1 WHERE seq = 3",
        "UPDATE audit SET seq = 3 WHERE seq = 4",
        "UPDATE audit SET seq = 4 WHERE seq = -1",
    )
    ok, first, _ = check(db)
    assert (ok, first) == (False, 3)


def test_deleted_head_row_is_detected(db: Path, published: list[AuditRecord]) -> None:
    attack(db, "DELETE FROM audit_head")
    ok, first, problems = check(db)
    assert (ok, first) == (False, 1)
    assert "head row is missing" in problems


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit SET payload = x'ff00' WHERE seq = 5",  # not UTF-8
        "UPDATE audit SET payload = 'not json' WHERE seq = 5",
        "UPDATE audit SET ts = 'yesterday' WHERE seq = 5",
        "UPDATE audit SET hash = NULL WHERE seq = 5",
        "UPDATE audit SET kind = x'c3' WHERE seq = 5",
    ],
)
def test_malformed_rows_are_reported_not_raised(
    db: Path, published: list[AuditRecord], sql: str
) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TABLE audit")  # NOT NULL and the triggers go with a rebuilt table
    conn.execute(
        "CREATE TABLE audit (seq INTEGER PRIMARY KEY, ts, kind, actor, payload, prev_hash, hash)"
    )
    conn.executemany(
        "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (
                r.seq,
                r.ts,
                r.kind,
                r.actor,
                canonical_payload(r.payload)[1].decode(),
                r.prev_hash,
                r.hash,
            )
            for r in published
        ],
    )
    conn.execute(sql)
    conn.close()
    ok, first, _ = check(db)
    assert (ok, first) == (False, 5)
    with Store(db) as store, pytest.raises(StoreError, match="seq 5"):
        store.audit()


# ---- rampart audit verify -----------------------------------------------------------------


def test_cli_ok(db: Path, published: list[AuditRecord], capsys: pytest.CaptureFixture[str]) -> None:
    assert audit_verify_main(str(db)) == 0
    out = capsys.readouterr().out
    assert "audit log OK" in out and "10 records" in out and published[-1].hash in out
    assert audit_verify_main(str(db), json_out=True) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["count"] == 10
    assert report["last"] == {"seq": 10, "hash": published[-1].hash}


def test_cli_tampered(
    db: Path, published: list[AuditRecord], capsys: pytest.CaptureFixture[str]
) -> None:
    attack(db, "UPDATE audit SET actor = 'mallory' WHERE seq = 6")
    assert audit_verify_main(str(db)) == 1
    out = capsys.readouterr().out
    assert "TAMPERED" in out and "seq 6: hash does not match" in out
    assert audit_verify_main(str(db), json_out=True) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["first_bad_seq"] == 6


def test_cli_unreadable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x00" * 4096)
    assert audit_verify_main(str(garbage)) == EXIT_UNREADABLE == 3
    assert "UNREADABLE" in capsys.readouterr().err
    missing = tmp_path / "missing.db"
    assert audit_verify_main(str(missing), json_out=True) == EXIT_UNREADABLE
    assert "no such file" in json.loads(capsys.readouterr().out)["error"]
    assert not missing.exists()  # verify never creates a store


def test_cli_verifies_next_to_a_running_writer(db: Path) -> None:
    with Store(db) as store:
        store.append_audit("a", {}, actor="t", ts=1)
        assert audit_verify_main(str(db)) == 0
        store.append_audit("b", {}, actor="t", ts=2)
        assert audit_verify_main(str(db)) == 0
