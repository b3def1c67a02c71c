"""The command line's rough edges (issue 13): every `--help` page, `rampart audit log`, the
`STATE_DB` of `rampart audit verify` and its exit statuses as documented, and `rampart validate`
on broken JSON and on configurations and deployments given together."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from rampart.audit import decode_record
from rampart.audit_log import AuditLogReader, concerns, follow, format_time, summary
from rampart.cli import build_parser, main
from rampart.deployment import DeploymentError, encode_deployment, load_deployment
from rampart.durability import EXIT_UNREADABLE
from rampart.effects import DEPLOYMENT_KEY
from rampart.jsonpos import line_column
from rampart.runner import StoredDeployment
from rampart.store import Store
from rampart.strategies import DeploymentState

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "deployments"
T0 = 1_741_079_702_118_000_000  # 2025-03-04 09:15:02.118 UTC


# ---- every --help page ----------------------------------------------------------------------


def _subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _subcommands(sub, (*path, name))


SUBCOMMANDS = [" ".join(path) for path, _ in _subcommands(build_parser())]


def test_the_known_subcommands_are_all_checked() -> None:
    for name in ("demo", "run", "validate", "deploy", "rollback", "audit verify", "audit log"):
        assert name in SUBCOMMANDS


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_help_page_has_a_description_and_explains_its_positionals(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*command.split(), "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    parser = dict((" ".join(p), s) for p, s in _subcommands(build_parser()))[command]
    assert parser.description, f"`rampart {command}` has no description"
    # the description is printed, between the usage and the arguments (argparse wraps lines,
    # at hyphens too: compare without whitespace)
    flat, description = "".join(out.split()), "".join(parser.description.split())
    assert description in flat
    assert flat.index(description) < flat.index("options:")
    for action in parser._actions:
        if action.option_strings:
            continue
        metavar = action.metavar if isinstance(action.metavar, str) else action.dest
        assert action.help, f"`rampart {command}`: {metavar} has no help"
        assert action.help not in (metavar, action.dest), f"`rampart {command}`: {metavar}"
    # no `  FILE.json  FILE.json` line: a positional explained by its own name
    for line in out.splitlines():
        words = line.split()
        assert not (len(words) == 2 and words[0] == words[1]), line


# ---- rampart audit log ----------------------------------------------------------------------


def _stored(doc_path: Path, **changes: str) -> bytes:
    """A deployment as the daemon stores it (rampart.effects: DEPLOYMENT_KEY + id)."""
    doc = load_deployment(doc_path)
    doc = msgspec.structs.replace(doc, **changes)
    state = DeploymentState(
        deployment_id=doc.deployment_id,
        strategy=type(doc).__name__,
        phase="paper",
        started_at=T0,
        phase_started_at=T0,
    )
    return msgspec.json.encode(
        StoredDeployment(document=msgspec.Raw(encode_deployment(doc)), state=state)
    )


RECORDS: list[tuple[str, dict[str, Any], str]] = [
    # kind, payload, actor; which concern "a1": seq 1, 3, 4, 6, 8
    ("release", {"algos": ["a1"], "reason": "checked the fills"}, "bob"),
    (
        "rollback",
        {
            "rollback_id": "rb-1",
            "algos": ["a2"],
            "scope": "algo",
            "trigger": "limit:max_drawdown",
            "reason": "drawdown 5.2% > 5%",
            "state": "succeeded",
            "steps": [{"name": "halt", "status": "acked", "attempts": 1, "duration_ns": 120000}],
            "target_ms": {"halt": 10.0},
        },
        "rampart",
    ),
    (
        "transition",
        {
            "deployment_id": "dep-1",
            "at": T0,
            "actor": "alice",
            "from_phase": "canary",
            "to_phase": "canary",
            "from_stage": 0,
            "to_stage": 1,
            "reason": "stage criteria met",
            "metrics": {"a1": {"pnl": 1.0}},
            "thresholds": {},
        },
        "alice",
    ),
    ("control_pending", {"verb": "pause", "target": "dep-1", "reason": ""}, "carol"),
    ("adopted_halt", {"gateway": "gw1", "halts": [["a2", "deadman"]]}, "rampart"),
    ("control_pending", {"verb": "rollback", "target": "*", "reason": "drill"}, "carol"),
    ("control_refused", {"verb": "approve", "reason": "role viewer", "kind": "role"}, "dave"),
    ("clock_reset", {"algos": ["a1"], "clocks": {"a1": T0}, "wall_clock": T0}, "rampart"),
    ("transition", {"deployment_id": "dep-bg", "from_phase": "x", "to_phase": "y"}, "rampart"),
]
A1 = [1, 3, 4, 6, 8]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "rampart.db"
    with Store(path) as store:
        store.put(DEPLOYMENT_KEY + "dep-1", _stored(EXAMPLES / "canary.json", algorithm_id="a1"))
        store.put(DEPLOYMENT_KEY + "dep-bg", _stored(EXAMPLES / "blue-green.json"))
        for i, (kind, payload, actor) in enumerate(RECORDS):
            store.append_audit(kind, payload, actor=actor, ts=T0 + i * 1_000_000_000)
    return path


def _seqs(out: str) -> list[int]:
    return [int(m) for m in re.findall(r"^\S+ \S+ UTC  #(\d+)  ", out, re.M)]


def test_audit_log_prints_one_line_per_record(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "log", "--db", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(RECORDS)
    assert lines[0] == (
        "2025-03-04 09:15:02.118 UTC  #1  release  bob  algos=a1 reason='checked the fills'"
    )
    assert lines[1].endswith(
        "#2  rollback  rampart  algos=a2 trigger=limit:max_drawdown scope=algo state=succeeded "
        "rollback_id=rb-1 reason='drawdown 5.2% > 5%'"
    )
    assert "steps" not in lines[1] and "reason='drawdown 5.2% > 5%'" in lines[1]
    assert lines[2].endswith(
        "#3  transition  alice  dep-1: canary -> canary, stage 0 -> 1: stage criteria met"
    )
    assert "gateway=gw1 halts=a2:deadman" in lines[4]
    assert format_time(0) == "1970-01-01 00:00:00.000 UTC"


def test_audit_log_keeps_what_concerns_an_algorithm(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "log", "--db", str(db), "--algo", "a1"]) == 0
    assert _seqs(capsys.readouterr().out) == A1
    # blue/green: both versions, through the stored document of the deployment
    for algo in ("momentum-v2.1.0", "momentum-v2.2.0"):
        assert main(["audit", "log", str(db), "--algo", algo]) == 0
        assert _seqs(capsys.readouterr().out) == [6, 9]
    assert main(["audit", "log", str(db), "--algo", "a2"]) == 0
    assert _seqs(capsys.readouterr().out) == [2, 5, 6]
    # a request for every algorithm concerns any
    assert main(["audit", "log", str(db), "--algo", "nobody", "--json"]) == 0
    assert [decode_record(line).seq for line in capsys.readouterr().out.splitlines()] == [6]
    assert not concerns({"reason": "a1 is fine"}, "a1", {})  # a name, not a substring


def test_audit_log_limit_keeps_the_newest(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "log", str(db), "--limit", "2"]) == 0
    assert _seqs(capsys.readouterr().out) == [8, 9]
    assert main(["audit", "log", str(db), "--limit", "3", "--algo", "a1"]) == 0
    assert _seqs(capsys.readouterr().out) == A1[-3:]
    assert main(["audit", "log", str(db), "--limit", "0"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["audit", "log", str(db), "--limit", "-1"]) == 2
    assert "--limit" in capsys.readouterr().err


def test_audit_log_json_lines_are_the_records(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "log", str(db), "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    with Store(db, readonly=True) as store:
        assert [decode_record(line) for line in lines] == store.audit()


def test_audit_log_finds_the_store_like_verify(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "rampart.toml"
    cfg.write_text(f"data_dir = {str(db.parent)!r}\n")
    assert main(["audit", "log", "-c", str(cfg), "--limit", "1"]) == 0
    assert _seqs(capsys.readouterr().out) == [9]
    assert main(["audit", "log", str(db), "--db", str(db), "--limit", "1"]) == 0
    assert _seqs(capsys.readouterr().out) == [9]
    assert main(["audit", "log", str(db), "--db", str(tmp_path / "other.db")]) == 2
    assert "name different files" in capsys.readouterr().err


def test_audit_log_cannot_read_exits_3_and_says_what_to_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.db"
    assert main(["audit", "log", str(missing)]) == EXIT_UNREADABLE == 3
    err = capsys.readouterr().err
    assert "no such file" in err and "check the path" in err
    assert not missing.exists()  # never created
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x00" * 4096)
    assert main(["audit", "log", "--follow", str(garbage)]) == 3
    assert "not a readable SQLite database" in capsys.readouterr().err


class Stop(Exception):
    pass


def test_follow_prints_new_records_and_survives_a_replaced_store(db: Path, tmp_path: Path) -> None:
    emitted: list[int] = []
    notes: list[str] = []
    steps = iter(range(6))

    def sleep(_: float) -> None:
        step = next(steps)
        if step == 1:
            with Store(db) as store:
                store.append_audit("release", {"algos": ["a1"]}, actor="bob", ts=T0)
                store.append_audit("release", {"algos": ["a3"]}, actor="bob", ts=T0)
        elif step == 2:  # a restore puts an older store (2 records) in its place
            older = tmp_path / "older.db"
            with Store(older) as store:
                for kind, payload, actor in RECORDS[:2]:
                    store.append_audit(kind, payload, actor=actor, ts=T0)
            os.replace(older, db)
            for side in ("-wal", "-shm"):
                Path(f"{db}{side}").unlink(missing_ok=True)
        elif step == 3:
            with Store(db) as store:  # the restarted daemon's first record
                store.append_audit("store_restored", {"algos": ["a1"]}, actor="ed", ts=T0)
        elif step == 4:
            db.unlink()  # gone for a moment: said once, then read again
        elif step == 5:
            raise Stop

    with AuditLogReader(str(db), algo="a1") as reader:
        records, last = reader.newest(None)
        assert [r.seq for r in records] == A1 and last == len(RECORDS)
        with pytest.raises(Stop):
            follow(
                reader,
                last,
                lambda rs: emitted.extend(r.seq for r in rs),
                notes.append,
                interval=0.01,
                sleep=sleep,
            )
    assert emitted == [10, 3]  # a3's release is not a1's; seq 3 of the restored store
    assert "ends at seq 2, before seq 11" in notes[0]
    assert "cannot read the store" in notes[1] and len(notes) == 2


def test_follow_as_a_process_beside_a_writer_until_interrupted(db: Path) -> None:
    command = ["audit", "log", "--follow", "--interval", "0.05", "--json", str(db)]
    with subprocess.Popen(
        [sys.executable, "-m", "rampart", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        _follow_beside_a_writer(proc, db)


def _follow_beside_a_writer(proc: subprocess.Popen[str], db: Path) -> None:
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
        reader.start()

        def wait_for(n: int) -> None:
            deadline = time.monotonic() + 20
            while len(lines) < n:
                assert proc.poll() is None and time.monotonic() < deadline, lines
                time.sleep(0.02)

        wait_for(len(RECORDS))
        with Store(db) as store:  # the writer is never held up by the follower
            for i in range(3):
                store.append_audit("release", {"algos": [f"x{i}"]}, actor="bob", ts=T0)
            assert not store.checkpoint("TRUNCATE").busy
        wait_for(len(RECORDS) + 3)
        assert [json.loads(line)["seq"] for line in lines] == list(range(1, len(RECORDS) + 4))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_summary_stays_on_one_short_line() -> None:
    from rampart.audit import new_record

    rec = new_record(None, "x", {"reason": "a\nb " * 200, "n": 1.5, "ok": True}, actor="t", ts=1)
    text = summary(rec)
    assert "\n" not in text and len(text) <= 160 and text.startswith("n=1.5 ok=true reason=")


# ---- rampart audit verify: STATE_DB, exit statuses as documented -------------------------------


def test_audit_verify_takes_the_store_as_an_argument(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "verify", str(db)]) == 0
    assert "audit log OK" in capsys.readouterr().out
    assert main(["audit", "verify", str(db), "--db", str(db)]) == 0
    capsys.readouterr()
    assert main(["audit", "verify", str(db), "--db", str(tmp_path / "other.db")]) == 2
    assert "name different files" in capsys.readouterr().err
    assert main(["audit", "verify", str(tmp_path / "missing.db")]) == 3
    assert "UNREADABLE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse's usage errors: 2
        main(["audit", "verify", "--no-such-option"])
    assert exc.value.code == 2


def test_docs_give_the_exit_statuses_and_synopsis_the_code_has() -> None:
    text = (ROOT / "docs" / "audit.md").read_text()
    assert "rampart audit verify [STATE_DB | --db STATE_DB | --config FILE] [--json]" in text
    assert re.search(r"^\| 2 \| usage error", text, re.M)
    assert re.search(rf"^\| {EXIT_UNREADABLE} \| the database cannot be read", text, re.M)
    assert "(exit 2)" not in text
    assert "rampart audit log [STATE_DB | --db STATE_DB | --config FILE]" in text
    assert "rampart.durability.audit_verify_main" in text


# ---- rampart validate --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column", "what"),
    [
        # truncated: where the document stops
        ('{\n  "deploymentId": "d",\n  "strategy": "Canary",\n  "algorithmId": "a', 4, 20, "ends"),
        # a trailing comma: the comma itself
        ('{\n  "deploymentId": "d",\n  "strategy": "Canary",\n}\n', 3, 23, "trailing comma"),
        ('{"deploymentId": "d" "strategy": 1}', 1, 22, "expected ','"),
        ("", 0, 0, "the file is empty"),
    ],
)
def test_validate_reports_json_syntax_errors_with_line_and_column(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    line: int,
    column: int,
    what: str,
) -> None:
    path = tmp_path / "deployment.json"
    path.write_text(text)
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "unknown field" not in err and what in err
    if line:
        assert f"{path}: invalid JSON at line {line}, column {column}: " in err
    # `rampart deploy` and `rampart replay` read it the same way
    with pytest.raises(DeploymentError, match="invalid JSON"):
        load_deployment(path)


def test_a_broken_json_configuration_says_where_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rampart.json"
    path.write_text('{"name": "r1",\n "algorithms": [],\n}')
    assert main(["validate", str(path)]) == 1
    assert "invalid JSON at line 2, column 18: trailing comma in object" in capsys.readouterr().err


def test_line_column_counts_characters() -> None:
    data = '{"é": 1,\n "ü": [}'.encode()
    assert line_column(data, data.index(b"}")) == (2, 8)
    assert line_column(data, 0) == (1, 1)


def _config(tmp_path: Path, *ids: str) -> Path:
    cfg = tmp_path / "rampart.toml"
    cfg.write_text(
        "".join(
            f'[[algorithms]]\nid = "{i}"\nversion = "1"\ngateway = "gw1"\ncapital = 1e6\n'
            for i in ids
        )
    )
    return cfg


def test_validate_checks_a_configuration_and_deployments_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    canary, blue_green = str(EXAMPLES / "canary.json"), str(EXAMPLES / "blue-green.json")
    cfg = _config(tmp_path, "momentum-v1", "momentum-v2.1.0")
    assert main(["validate", str(cfg), canary]) == 0
    assert main(["validate", canary]) == 0  # alone: nothing to check it against
    capsys.readouterr()
    # blue/green needs both versions governed; the config may come after the deployments
    assert main(["validate", blue_green, canary, str(cfg)]) == 1
    out, err = capsys.readouterr()
    assert f"ok      {canary}" in out and f"ok      {cfg}" in out
    assert blue_green not in out
    assert (
        f"INVALID {blue_green}: deployment algo-deploy-003: algorithm 'momentum-v2.2.0' is not "
        f"governed by {cfg} (its [[algorithms]]: momentum-v1, momentum-v2.1.0)"
    ) in err
    (tmp_path / "other").mkdir()
    other = _config(tmp_path / "other", "b")
    assert main(["validate", str(cfg), str(other), canary]) == 1
    err = capsys.readouterr().err
    assert f"algorithm 'momentum-v2.1.0' is not governed by {other} (its [[algorithms]]: b)" in err
    assert f"governed by {cfg}" not in err


def test_the_example_configuration_governs_the_example_deployments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = [str(ROOT / "examples" / "rampart.toml"), *map(str, sorted(EXAMPLES.glob("*.json")))]
    assert main(["validate", *files]) == 0, capsys.readouterr().err
