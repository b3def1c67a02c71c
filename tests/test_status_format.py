"""`rampart status` as text (issue 13): columns never run together, a deployment says what it is
now and since when (no stage for blue/green, no 1970), stages are 1-based."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from rampart.status import format_deployment, format_metrics
from rampart.strategies.base import DeploymentState

T = 1_764_028_800_000_000_000  # 2025-11-25 00:00 UTC


@dataclass
class Row:
    algo_id: str
    equity: float = 10_000_000.0
    daily_pnl: float = -123_456.78
    drawdown: float = 0.0123
    max_drawdown: float = 0.0456
    sharpe: float | None = 1.25
    trades: int = 1234
    win_rate: float | None = 0.55
    error_rate: float | None = None
    latency_p99_ns: int | None = 850_000
    confidence: float = 0.5
    breached: list[str] = field(default_factory=list)
    capital: float = 10_000_000.0
    stage_pnl: float = 0.0


def test_columns_never_run_together() -> None:
    rows = [Row("momentum-v2.1.0"), Row("a-much-longer-algorithm-id-v10.0.0", equity=1e11)]
    text = format_metrics(rows)
    lines = text.splitlines()
    assert "momentum-v2.1.0  " in lines[2] and "10,000,000.00" in lines[2]
    assert "a-much-longer-algorithm-id-v10.0.0  " in lines[3]
    assert "100,000,000,000.00" in lines[3]
    head = lines[0]
    for line in lines[2:]:  # every column ends where its header ends (right-aligned numbers)
        for title in ("equity", "daily PnL", "Sharpe", "conf"):
            end = head.index(title) + len(title)
            assert line[end - 1] != " " and (len(line) == end or line[end] == " "), (title, line)


@dataclass
class RowWithError(Row):
    sharpe_se: float | None = 7.2


def test_a_sharpe_shows_its_standard_error_when_the_row_has_one() -> None:
    """The daemon sends each Sharpe's standard error (a week of hourly returns: about 7): the
    table shows it beside the ratio; a row without one (the scenario's snapshots) shows the
    ratio alone."""
    text = format_metrics([RowWithError("a"), RowWithError("b", sharpe=None), Row("c")])
    lines = text.splitlines()
    assert "1.25 ±7.2" in lines[2]
    assert " - " in lines[3] and "±" not in lines[3]
    assert "1.25" in lines[4] and "±" not in lines[4]


def test_the_standard_error_follows_the_annualization() -> None:
    from rampart.sharpe import sharpe_standard_error

    assert sharpe_standard_error(1.25, 168, 8760.0) == pytest.approx(7.22, abs=0.01)
    assert sharpe_standard_error(1.25, 168, 252.0) == pytest.approx(1.227, abs=0.001)


def state(**kw: object) -> DeploymentState:
    base: dict[str, object] = {
        "deployment_id": "d1",
        "strategy": "Canary",
        "phase": "canary",
        "started_at": T,
        "phase_started_at": T,
    }
    return DeploymentState(**{**base, **kw})  # type: ignore[arg-type]


def test_a_deployment_says_what_it_is_now() -> None:
    canary = format_deployment(state(stage=0, stage_started_at=T, allocation=0.01))
    assert "canary, stage 1 since 2025-11-25 00:00:00" in canary
    bg = format_deployment(state(strategy="BlueGreen", phase="monitoring", allocation=1.0))
    assert "monitoring since 2025-11-25 00:00:00" in bg and "1970" not in bg and "stage" not in bg
    promoted = format_deployment(
        state(strategy="PaperTrading", phase="canary", stage=2, approved_by="rita <UAB>")
    )
    assert "(PaperTrading, promoted to Canary by rita <UAB>)" in promoted and "stage 3" in promoted
    paper = format_deployment(state(strategy="PaperTrading", phase="paper"))
    assert "(PaperTrading)" in paper and "paper since" in paper


def test_a_promoted_paper_deployment_is_labelled_as_a_canary_in_the_live_view() -> None:
    from rampart.status import strategy_label

    assert strategy_label(state(strategy="PaperTrading", phase="paper")) == "PaperTrading"
    promoted = state(strategy="PaperTrading", phase="canary", approved_by="rita <UAB>")
    assert strategy_label(promoted) == "PaperTrading->Canary"


def test_a_failed_step_is_failed_whatever_its_time() -> None:
    """Found from outside: a halt refused at once printed "halt 1.13 ms ok FAILED"."""
    from rampart.status import format_rollback
    from rampart.store import RollbackRecord, StepRecord

    record = RollbackRecord(
        rollback_id="r",
        algos=["alpha"],
        scope="algo",
        trigger="manual",
        reason="drill",
        actor="ops",
        started_at=0,
        state="failed",
        steps=[
            StepRecord(name="halt", status="failed", duration_ns=1_130_000),
            StepRecord(name="cancel", status="acked", duration_ns=2_000_000),
            StepRecord(name="total", status="failed", duration_ns=3_000_000),
        ],
        target_ms={"halt": 100.0, "cancel": 500.0, "total": 1000.0},
    )
    line = format_rollback(record, when=False)
    assert "halt 1.13 ms FAILED" in line and "cancel 2.00 ms ok" in line, line
    assert "total 3.00 ms FAILED" in line
