"""`rampart replay`: a rollback names what caused it (a limit breach is not `manual`), and the
replay ends with a summary (human output; a last `summary` entry with --json)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from rampart._core import AlgoConfig, Engine
from rampart.deployment import load_deployment
from rampart.protocol import Fill, Quote, encoder
from rampart.replay import format_summary, format_timeline, run_replay
from rampart.runner import DeploymentRunner
from rampart.strategies import machine_for
from rampart.strategies.base import RollbackAction

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "deployments"
CANARY = EXAMPLES / "canary.json"  # 1% of 10,000,000 in its first stage, 2% daily loss
ALGO = "momentum-v2.1.0"
S = 1_000_000_000
T0 = 1_764_028_800 * S


def daily_loss_events() -> list[bytes]:
    """Long 5,000 at 100 on the stage's 100,000: a fall of 0.5 loses 2,500, beyond 2% (2,000),
    while the drawdown stays under 5%."""
    out = [encoder.encode(Quote(symbol="ES", bid=100.0, ask=100.0, ts=T0))]
    out.append(
        encoder.encode(Fill(algo=ALGO, symbol="ES", side="buy", qty=5_000, price=100.0, ts=T0 + S))
    )
    px = 100.0
    for i in range(1, 60):
        px = px - 0.1 if i > 20 else px + 0.01
        out.append(encoder.encode(Quote(symbol="ES", bid=px, ask=px, ts=T0 + i * 10 * S)))
    return out


def test_a_daily_loss_rollback_names_its_limit_not_manual() -> None:
    result = run_replay(load_deployment(CANARY), daily_loss_events())
    (breach,) = [e for e in result.timeline if e.kind == "breach"]
    assert breach.data["kind"] == "daily_loss"
    (rollback,) = [e for e in result.timeline if e.data.get("action") == "rollback"]
    assert rollback.data["trigger"] == "limit:daily_loss"
    text = format_timeline(result.timeline)
    assert "trigger=limit:daily_loss" in text and "trigger=manual" not in text
    s = result.summary
    assert (s.events, s.applied, s.refused) == (61, 61, {})
    assert (s.transitions, s.breaches, s.rollbacks) == (2, 1, {"limit:daily_loss": 1})
    assert (s.phase, s.stage, s.stage_name, s.allocation) == ("rolled_back", 0, "Micro", 0.0)
    assert s.halted and s.active == ALGO
    assert (s.first_ts, s.last_ts) == (T0, T0 + 59 * 10 * S)


def test_the_cli_prints_the_timeline_then_the_summary(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join([*daily_loss_events(), b"not json", b""]) + b"\n")
    cmd = [sys.executable, "-m", "rampart", "replay", str(CANARY), str(events)]
    human = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert human.returncode == 0, human.stderr
    timeline, _, summary = human.stdout.rstrip("\n").partition("\n\nsummary of ")
    assert "trigger=limit:daily_loss" in timeline
    assert summary.splitlines() == [
        "algo-deploy-002:",
        "  events      62 read, 61 applied, 1 refused (decode 1), event time "
        "2025-11-25 00:00:00.000 to 2025-11-25 00:09:50.000",
        "  decisions   transitions 2, breaches 1, rollbacks 1 (limit:daily_loss 1)",
        "  final       rolled_back, stage 0 (Micro), allocation 0, active momentum-v2.1.0 (halted)",
    ]
    # --json: the timeline entries as before, then one `summary` entry
    out = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    *entries, last = [json.loads(line) for line in out.stdout.splitlines()]
    result = run_replay(load_deployment(CANARY), events.read_bytes().splitlines())
    assert entries == [msgspec.to_builtins(e) for e in result.timeline]
    assert last["kind"] == "summary" and last["text"] == format_summary(result.summary)
    assert last["data"]["rollbacks"] == {"limit:daily_loss": 1}
    assert last["data"]["refused"] == {"decode": 1}
    assert last["data"]["phase"] == "rolled_back"


def test_a_replay_without_events_says_the_deployment_never_started() -> None:
    result = run_replay(load_deployment(CANARY), [b"", b"  "])
    assert result.timeline == [] and result.summary.phase is None
    assert "never started" in format_summary(result.summary)


@pytest.mark.parametrize("name", ["canary.json", "paper-trading.json", "progressive.json"])
def test_a_limit_breach_halts_with_the_breachs_trigger(name: str) -> None:
    doc = load_deployment(EXAMPLES / name)
    algo = doc.algorithm_id
    engine = Engine()
    engine.register(AlgoConfig(algo, algo, 100_000.0, max_drawdown=0.05))
    engine.quote("ES", 100.0, 100.0, T0)
    engine.fill(algo, "ES", 10_000.0, 100.0, 0.0, T0 + S)
    runner = DeploymentRunner(engine)
    runner.deploy(doc, T0 + S, "alice")
    breaches = engine.quote("ES", 90.0, 90.0, T0 + 2 * S)
    assert breaches is not None and breaches[0].kind == "drawdown"
    (outcome,) = runner.on_breaches(breaches, T0 + 2 * S)
    (rollback,) = [a for a in outcome.decision.actions if isinstance(a, RollbackAction)]
    assert rollback.trigger == "limit:drawdown"
    assert outcome.decision.state.halted


def test_a_rollback_from_outside_records_its_trigger_and_a_persons_halt_stays_manual() -> None:
    doc = load_deployment(CANARY)
    engine = Engine()
    engine.register(AlgoConfig(ALGO, ALGO, 100_000.0))
    engine.quote("ES", 100.0, 100.0, T0)
    runner = DeploymentRunner(engine)
    runner.deploy(doc, T0, "alice")
    (outcome,) = runner.on_rollback([ALGO], "rampart:stale", T0 + S, "connectivity:market_data")
    (rollback,) = outcome.decision.actions
    assert isinstance(rollback, RollbackAction) and rollback.trigger == "connectivity:market_data"
    machine = machine_for(doc)
    state = machine.start(T0, "alice").state
    (halt,) = machine.command(state, "halt", "bob", T0 + S).actions
    assert isinstance(halt, RollbackAction) and halt.trigger == "manual"
    (abort,) = machine.command(state, "abort", "bob", T0 + S).actions
    assert isinstance(abort, RollbackAction) and abort.trigger == "abort"
