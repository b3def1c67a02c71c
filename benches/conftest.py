"""Benchmark harness: per-event timing, the shared result registry and the end-of-run summary.

Every benchmark runs a loop (or a batch call) of ``n`` events per round via
``benchmark.pedantic``; the events of each round are built in the (untimed) setup. Results are
reported per event and the summary at the end of the run prints the ratios between results of the
*same run* (no wall-clock thresholds are asserted anywhere). The summary goes to the terminal and to
``.benchmarks/summary.md``.

Run: ``make bench`` (``.venv/bin/python -m pytest benches --benchmark-only ...``).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

# ``tests/reference.py`` (the plain-Python reference engine) is the baseline of several benchmarks.
TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


@dataclass(frozen=True)
class Result:
    key: str
    label: str
    events_per_round: int
    rounds: int
    median_ns: float  # per event
    min_ns: float  # per event


RESULTS: dict[str, Result] = {}


@dataclass(frozen=True)
class Partner:
    """A second workload timed round-for-round with the benchmarked one (see ``PerEvent``)."""

    key: str  # the result key of the partner's own (unpaired) benchmark
    target: Callable[..., object]
    make_args: Callable[[], tuple[Any, ...]]
    n: int  # events per partner round


# (benchmarked key, partner key) -> per-round ratios (benchmarked / partner, per event)
PAIRED: dict[tuple[str, str], list[float]] = {}

Args = tuple[tuple[Any, ...], dict[str, Any]]


class PerEvent:
    """``per_event(key, label, target, make_args, n=..., rounds=...)``: time ``target`` per event.

    ``make_args()`` builds the arguments of one round (``n`` fresh events, untimed);
    ``target(*args)`` processes them. Stores the per-event median and minimum in ``RESULTS`` and
    in ``extra_info``.

    With a ``partner``, every round is preceded by one round of the partner, timed with the same
    clock inside the (untimed by pytest-benchmark) setup, and the per-event ratio of each pair is
    kept in ``PAIRED``. The two rounds of a pair are milliseconds apart, so they see the same
    machine: on a shared 2-core VM, ratios of separately measured medians swing with whatever
    else runs, paired ratios barely move.
    """

    def __init__(self, benchmark: BenchmarkFixture) -> None:
        self.benchmark = benchmark

    @staticmethod
    def partner(
        key: str,
        target: Callable[..., object],
        make_args: Callable[[], tuple[Any, ...]],
        n: int,
    ) -> Partner:
        return Partner(key, target, make_args, n)

    def __call__(
        self,
        key: str,
        label: str,
        target: Callable[..., object],
        make_args: Callable[[], tuple[Any, ...]],
        *,
        n: int,
        rounds: int,
        warmup_rounds: int = 1,
        partner: Partner | None = None,
    ) -> None:
        partner_times: list[float] = []

        def setup() -> Args:
            if partner is not None:
                p_args = partner.make_args()
                t0 = time.perf_counter()
                partner.target(*p_args)
                partner_times.append(time.perf_counter() - t0)
            return make_args(), {}

        self.benchmark.extra_info["events_per_round"] = n
        self.benchmark.pedantic(  # type: ignore[no-untyped-call]
            target, setup=setup, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1
        )
        meta = self.benchmark.stats
        if meta is None:  # --benchmark-disable: the target ran once, untimed
            return
        stats = meta.stats
        median_ns = stats.median / n * 1e9
        min_ns = stats.min / n * 1e9
        self.benchmark.extra_info["per_event_ns_median"] = round(median_ns, 2)
        self.benchmark.extra_info["per_event_ns_min"] = round(min_ns, 2)
        RESULTS[key] = Result(key, label, n, rounds, median_ns, min_ns)
        if partner is not None:
            own: list[float] = list(stats.data)
            theirs = partner_times[warmup_rounds:]  # the warmup rounds' setups ran too
            assert len(own) == len(theirs) == rounds, (len(own), len(theirs), rounds)
            ratios = [(o / n) / (t / partner.n) for o, t in zip(own, theirs, strict=True)]
            PAIRED[(key, partner.key)] = ratios
            self.benchmark.extra_info[f"paired_ratio_vs_{partner.key}"] = round(
                statistics.median(ratios), 2
            )


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """Collect ``bench_*.py`` (pytest's default ``python_files`` only matches ``test_*.py``)."""
    if parent.session.isinitpath(file_path):
        return None  # named on the command line: pytest collects it itself
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture
def per_event(benchmark: BenchmarkFixture) -> PerEvent:
    return PerEvent(benchmark)


# ----------------------------------------------------------------------------- summary

# (slower result, faster result, what the ratio means, aim or None)
RATIOS: list[tuple[str, str, str, float | None]] = [
    ("ref.quote", "core.quote", "quote re-marking a held position: reference / core", 30),
    ("ref.fill", "core.fill", "fill: reference / core", 30),
    ("ref.orders", "core.orders", "order_* events: reference / core", 30),
    ("ref.quote_fanout100", "core.quote_fanout100", "quote, 100 holders: reference / core", 30),
    ("ref.quotes_batch", "core.quotes_batch", "columnar quotes batch: reference / core", 30),
    (
        "ref.json_quotes",
        "core.json_batch_quotes",
        "JSON quotes: json.loads + reference / ingest_json_batch",
        30,
    ),
    (
        "ref.json_mixed",
        "core.json_batch_mixed",
        "JSON mixed: json.loads + reference / ingest_json_batch",
        30,
    ),
    ("core.quote", "core.quotes_batch", "batching: per-call quote / columnar quotes", None),
    (
        "core.quote_paired",
        "core.quote_columns",
        "columnar: per-call quote / quote_columns (numpy, interned symbol)",
        3,
    ),
    ("core.quote", "core.json_batch_quotes", "batching: per-call quote / JSON batch", None),
    ("core.ingest_json", "core.json_batch_quotes", "batching: ingest_json / JSON batch", None),
    (
        "recompute.empyrical",
        "core.quote_return",
        "empyrical recompute (10k) / core quote closing a return",
        1000,
    ),
    (
        "recompute.empyrical",
        "core.quote_return_snapshot",
        "empyrical recompute (10k) / core quote + snapshot",
        1000,
    ),
    (
        "recompute.pandas",
        "core.quote_return",
        "pandas recompute (10k) / core quote closing a return",
        None,
    ),
    (
        "recompute.numpy",
        "core.quote_return",
        "bare numpy recompute (10k) / core quote closing a return",
        None,
    ),
]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


LOAD_AT_START: list[float] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    LOAD_AT_START[:] = os.getloadavg()


def _load(load: list[float] | tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in load) if load else "n/a"


def render_summary(results: dict[str, Result]) -> list[str]:
    lines = [
        "## Rampart Python benchmarks: per-event cost and ratios (one run)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {os.cpu_count()} CPUs ({_cpu_model()}); "
        f"Python {platform.python_version()}; load average (1/5/15 min) at start "
        f"{_load(LOAD_AT_START)}, at end {_load(os.getloadavg())}",
        "",
        "| benchmark | events/round | rounds | median ns/event | min ns/event |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results.values():
        lines.append(
            f"| `{r.key}`: {r.label} | {r.events_per_round} | {r.rounds} "
            f"| {r.median_ns:,.1f} | {r.min_ns:,.1f} |"
        )
    lines += [
        "",
        "Ratios of ns/event (higher = the second is faster). paired: median and interquartile"
        " range of the per-round ratios when the two sides alternate round by round (robust to"
        " other load on the machine); min: best round of each side, measured separately;"
        " median: typical round of each side, measured separately.",
        "",
        "| ratio | paired median [IQR] | min-based | median-based | aim | met (paired) |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for slow, fast, what, aim in RATIOS:
        if slow not in results or fast not in results:
            lines.append(f"| {what} | n/a (not run) | | | {_aim(aim)} | |")
            continue
        r_min = results[slow].min_ns / results[fast].min_ns
        r_med = results[slow].median_ns / results[fast].median_ns
        pairs = PAIRED.get((slow, fast))
        if pairs and len(pairs) >= 4:
            q1, q2, q3 = statistics.quantiles(pairs, n=4)
            paired = f"{q2:,.1f}x [{q1:,.1f}, {q3:,.1f}]"
            met = "" if aim is None else _met(q2, aim)
        else:
            paired, met = "", "" if aim is None else f"{_met(r_med, aim)} (median-based)"
        lines.append(f"| {what} | {paired} | {r_min:,.1f}x | {r_med:,.1f}x | {_aim(aim)} | {met} |")
    return lines


def _met(ratio: float, aim: float) -> str:
    return "yes" if ratio >= aim else f"NO ({ratio / aim:.2f} of aim)"


def _aim(aim: float | None) -> str:
    return "" if aim is None else f">= {aim:g}x"


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not RESULTS:
        return
    lines = render_summary(RESULTS)
    out = config.rootpath / ".benchmarks" / "summary.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    terminalreporter.write_sep("=", "rampart per-event summary")
    for line in lines:
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"(written to {out})")
