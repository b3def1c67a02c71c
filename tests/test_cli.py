"""The command line, the scripted scenario and the README's example."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from rampart.cli import main
from rampart.scenario import run_scenario

ROOT = Path(__file__).resolve().parent.parent


def test_scenario_halts_the_faulty_build_and_only_it() -> None:
    result = run_scenario(seed=7)
    tripped = {(b.algo_id, b.kind) for b in result.breaches}
    assert ("momentum-v2", "daily_loss") in tripped
    assert all(algo == "momentum-v2" for algo, _ in tripped)
    snaps = {s.algo_id: s for s in result.snapshots}
    assert snaps["momentum-v1"].breached == []
    assert snaps["momentum-v2"].equity < snaps["momentum-v1"].equity
    assert snaps["momentum-v1"].trades > 50
    first = result.breaches[0]
    assert first.value < first.threshold, "a daily loss breach is below its (negative) floor"


def test_scenario_is_deterministic() -> None:
    a, b = run_scenario(seed=3), run_scenario(seed=3)
    assert [s.to_dict() for s in a.snapshots] == [s.to_dict() for s in b.snapshots]
    assert a.breaches == b.breaches


def test_scenario_prints_breaches_and_the_metrics_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["scenario", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"BREACH .* momentum-v2: daily_loss", out)
    assert "momentum-v1" in out and "Sharpe" in out


def test_module_entry_point_reports_its_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rampart", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert proc.stdout.startswith("rampart ")


def test_unknown_command_exits_non_zero() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


def test_readme_python_example_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S)
    assert code is not None
    exec(compile(code.group(1), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith("drawdown 0.0625")
