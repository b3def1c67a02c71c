"""Deployment documents: the seed's four documents load verbatim, and every rule is enforced."""

from __future__ import annotations

import copy
import json
import math
import re
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rampart import RampartError
from rampart.deployment import (
    BlueGreenDeployment,
    CanaryDeployment,
    CanaryStage,
    Deployment,
    DeploymentError,
    PaperTradingDeployment,
    ProgressiveDeployment,
    RollbackThresholds,
    decode_deployment,
    encode_deployment,
    load_deployment,
    validate_deployment,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "deployments"
SEED = Path("/work/shared/seed/deployment-strategies.md")
KINDS: dict[str, type[Deployment]] = {
    "paper-trading": PaperTradingDeployment,
    "canary": CanaryDeployment,
    "blue-green": BlueGreenDeployment,
    "progressive": ProgressiveDeployment,
}

Doc = dict[str, Any]


def path_of(name: str) -> Path:
    return EXAMPLES / f"{name}.json"


def example(name: str) -> Doc:
    doc: Doc = json.loads(path_of(name).read_text())
    return doc


def with_value(doc: Doc, path: str, value: object) -> Doc:
    """A copy of ``doc`` with the field at a msgspec-style path (``$.a.b[2].c``) set to value."""
    keys: list[str | int] = [
        key if key else int(index) for key, index in re.findall(r"\.(\w+)|\[(\d+)\]", path)
    ]
    doc = copy.deepcopy(doc)
    parent: Any = doc
    for key in keys[:-1]:
        parent = parent[key]
    parent[keys[-1]] = value
    return doc


def encode(doc: Doc) -> bytes:
    return msgspec.json.encode(doc)  # also encodes timedelta values as ISO 8601 durations


def rejection(doc: Doc) -> str:
    with pytest.raises(DeploymentError) as info:
        decode_deployment(encode(doc))
    return str(info.value)


# --- The seed's documents -------------------------------------------------------------------------


@pytest.mark.parametrize("name", KINDS)
def test_examples_load_as_their_strategy(name: str) -> None:
    deployment = load_deployment(path_of(name))
    assert type(deployment) is KINDS[name]
    assert deployment == decode_deployment(path_of(name).read_text())


@pytest.mark.skipif(not SEED.exists(), reason="the seed document is not on this machine")
def test_seed_documents_are_the_examples_verbatim_and_load() -> None:
    blocks = re.findall(r"```json\n(.*?)\n```", SEED.read_text(), re.DOTALL)
    assert len(blocks) == len(KINDS)
    for block, name in zip(blocks, KINDS, strict=True):
        assert path_of(name).read_text() == block + "\n"
        assert type(decode_deployment(block)) is KINDS[name]


def test_paper_trading_values() -> None:
    d = load_deployment(path_of("paper-trading"))
    assert isinstance(d, PaperTradingDeployment)
    assert (d.deployment_id, d.algorithm_id, d.environment) == (
        "algo-deploy-001",
        "momentum-v2.1.0",
        "PaperTrading",
    )
    c = d.configuration
    assert c.simulated_capital == 1_000_000
    assert c.market_data_source == "LiveMarketData"
    assert c.slippage_model == "RealisticSlippage"
    assert (c.slippage_bps, c.impact_coefficient) == (None, None)
    assert c.commission_rate == 0.001
    assert c.min_trading_duration == timedelta(days=7)
    p = d.promotion_criteria
    assert (p.min_sharpe_ratio, p.max_drawdown, p.min_win_rate, p.min_trades) == (
        1.5,
        0.05,
        0.55,
        100,
    )


def test_canary_values() -> None:
    d = load_deployment(path_of("canary"))
    assert isinstance(d, CanaryDeployment)
    c = d.configuration
    assert d.environment == "Production"
    assert c.total_capital == 10_000_000
    assert [s.name for s in c.stages] == ["Micro", "Small", "Medium", "Large", "Half", "Full"]
    assert [s.allocation for s in c.stages] == [0.01, 0.05, 0.10, 0.25, 0.50, 1.00]
    hours = [1, 2, 4, 8, 24, 48]
    assert [s.min_duration for s in c.stages] == [timedelta(hours=h) for h in hours]
    assert all(s.min_pnl == 0 for s in c.stages)
    assert c.auto_progress is True
    assert c.rollback_thresholds == RollbackThresholds(
        max_daily_loss=0.02, max_drawdown=0.05, max_error_rate=0.01, max_latency=None
    )
    assert (c.flatten_on_rollback, c.previous_version) == (False, None)


def test_blue_green_values() -> None:
    d = load_deployment(path_of("blue-green"))
    assert isinstance(d, BlueGreenDeployment)
    c = d.configuration
    assert (c.blue_version, c.green_version) == ("momentum-v2.1.0", "momentum-v2.2.0")
    assert c.warmup_duration == timedelta(seconds=30)
    assert c.monitoring_duration == timedelta(minutes=10)
    assert (c.cutover_type, c.auto_rollback) == ("Instant", True)
    assert c.rollback_thresholds.max_error_rate == 0.01
    assert c.rollback_thresholds.max_latency == 100
    assert c.rollback_thresholds.max_latency_ns == 100_000_000


def test_progressive_values() -> None:
    d = load_deployment(path_of("progressive"))
    assert isinstance(d, ProgressiveDeployment)
    c = d.configuration
    assert d.algorithm_id == "ml-model-v3.0.0"
    assert c.total_capital == 10_000_000
    assert c.allocation_curve == "ExponentialGrowth"
    assert c.update_frequency == timedelta(minutes=15)
    assert [(t.confidence, t.allocation) for t in c.confidence_thresholds] == [
        (0.50, 0.01),
        (0.60, 0.05),
        (0.70, 0.10),
        (0.80, 0.25),
        (0.90, 0.50),
        (0.95, 1.00),
    ]


@pytest.mark.parametrize("name", KINDS)
def test_encode_round_trips(name: str) -> None:
    deployment = load_deployment(path_of(name))
    encoded = encode_deployment(deployment)
    assert decode_deployment(encoded) == deployment
    assert encode_deployment(decode_deployment(encoded)) == encoded


def test_defaults_where_the_document_is_silent() -> None:
    doc = {
        "deploymentId": "d1",
        "strategy": "Canary",
        "algorithmId": "algo",
        "configuration": {
            "totalCapital": 1000,
            "stages": [{"name": "All", "allocation": 1, "minDuration": "PT1H"}],
        },
    }
    d = decode_deployment(encode(doc))
    assert isinstance(d, CanaryDeployment)
    assert d.environment == "Production"
    assert d.configuration.auto_progress is True
    assert d.configuration.rollback_thresholds == RollbackThresholds()
    assert d.configuration.rollback_thresholds.max_daily_loss == 0.02
    assert d.configuration.stages == (
        CanaryStage(name="All", allocation=1.0, min_duration=timedelta(hours=1), min_pnl=0.0),
    )
    assert (d.configuration.flatten_on_rollback, d.configuration.previous_version) == (False, None)

    paper = example("paper-trading")
    del paper["environment"], paper["promotionCriteria"]
    del paper["configuration"]["minTradingDuration"]
    p = decode_deployment(encode(paper))
    assert isinstance(p, PaperTradingDeployment)
    assert p.environment == "PaperTrading"
    assert p.promotion_criteria.min_trades == 100
    assert p.configuration.min_trading_duration == timedelta(days=7)


def test_null_switches_a_threshold_off() -> None:
    doc = with_value(example("canary"), "$.configuration.rollbackThresholds.maxDailyLoss", None)
    d = decode_deployment(encode(doc))
    assert isinstance(d, CanaryDeployment)
    assert d.configuration.rollback_thresholds.max_daily_loss is None


def test_rampart_extensions() -> None:
    doc = example("canary")
    doc["configuration"] |= {"flattenOnRollback": True, "previousVersion": "momentum-v2.0.0"}
    d = decode_deployment(encode(doc))
    assert isinstance(d, CanaryDeployment)
    assert d.configuration.flatten_on_rollback is True
    assert d.configuration.previous_version == "momentum-v2.0.0"
    assert decode_deployment(encode_deployment(d)) == d


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("None", {}),
        ("SpreadCrossing", {}),
        ("FixedBps", {"slippageBps": 2.5}),
        ("RealisticSlippage", {"impactCoefficient": 0.2}),
    ],
)
def test_slippage_models(model: str, params: dict[str, float]) -> None:
    doc = example("paper-trading")
    doc["configuration"] |= {"slippageModel": model, **params}
    d = decode_deployment(encode(doc))
    assert isinstance(d, PaperTradingDeployment)
    assert d.configuration.slippage_model == model


# --- Invalid documents ----------------------------------------------------------------------------

SUBJECT_TOKEN = "NATS subject token"
SUBJECT = "NATS subject ("
FRACTION = "must be in [0, 1]"
ALLOCATION = "must be in (0, 1]"
POSITIVE = "must be > 0"
DURATION = "must be a positive duration"
NON_EMPTY = "at least one entry"
GREATER = "must be greater than the previous"

INVALID: list[tuple[str, str, object, str]] = [
    ("paper-trading", "$.deploymentId", "", SUBJECT_TOKEN),
    ("paper-trading", "$.deploymentId", "algo.deploy", SUBJECT_TOKEN),
    ("paper-trading", "$.deploymentId", "algo deploy", SUBJECT_TOKEN),
    ("paper-trading", "$.deploymentId", "algo\tdeploy", SUBJECT_TOKEN),
    ("paper-trading", "$.deploymentId", "algo-*", SUBJECT_TOKEN),
    ("paper-trading", "$.deploymentId", "algo->", SUBJECT_TOKEN),
    ("paper-trading", "$.algorithmId", "", SUBJECT),
    ("paper-trading", "$.algorithmId", "momentum v2", SUBJECT),
    ("paper-trading", "$.algorithmId", "momentum..v2", SUBJECT),
    ("paper-trading", "$.algorithmId", "momentum.", SUBJECT),
    ("paper-trading", "$.algorithmId", "momentum.*", SUBJECT),
    ("paper-trading", "$.configuration.simulatedCapital", 0, POSITIVE),
    ("paper-trading", "$.configuration.simulatedCapital", -1e6, POSITIVE),
    ("paper-trading", "$.configuration.commissionRate", -0.001, FRACTION),
    ("paper-trading", "$.configuration.commissionRate", 1.5, FRACTION),
    ("paper-trading", "$.configuration.minTradingDuration", "PT0S", DURATION),
    ("paper-trading", "$.configuration.minTradingDuration", "-P1D", DURATION),
    ("paper-trading", "$.configuration.slippageBps", 2.0, "only allowed with"),
    ("paper-trading", "$.configuration.impactCoefficient", -0.1, "must be >= 0"),
    ("paper-trading", "$.promotionCriteria.maxDrawdown", 1.1, FRACTION),
    ("paper-trading", "$.promotionCriteria.minWinRate", -0.1, FRACTION),
    ("paper-trading", "$.promotionCriteria.minTrades", -1, "must be >= 0"),
    ("canary", "$.configuration.totalCapital", 0, POSITIVE),
    ("canary", "$.configuration.stages", [], NON_EMPTY),
    ("canary", "$.configuration.stages[2].allocation", 1.5, ALLOCATION),
    ("canary", "$.configuration.stages[0].allocation", 0, ALLOCATION),
    ("canary", "$.configuration.stages[0].allocation", -0.01, ALLOCATION),
    ("canary", "$.configuration.stages[3].allocation", 0.10, GREATER),
    ("canary", "$.configuration.stages[3].allocation", 0.07, GREATER),
    ("canary", "$.configuration.stages[0].minDuration", "PT0S", DURATION),
    ("canary", "$.configuration.stages[5].minDuration", "-PT1H", DURATION),
    ("canary", "$.configuration.stages[1].name", "", "must not be empty"),
    ("canary", "$.configuration.stages[1].name", "Micro", "must be unique"),
    ("canary", "$.configuration.rollbackThresholds.maxDailyLoss", 1.5, FRACTION),
    ("canary", "$.configuration.rollbackThresholds.maxDrawdown", -0.01, FRACTION),
    ("canary", "$.configuration.rollbackThresholds.maxErrorRate", 2, FRACTION),
    ("canary", "$.configuration.previousVersion", "momentum-v2.1.0", "must differ"),
    ("canary", "$.configuration.previousVersion", "momentum v2", SUBJECT),
    ("blue-green", "$.configuration.greenVersion", "momentum-v2.1.0", "must differ"),
    ("blue-green", "$.configuration.blueVersion", "", SUBJECT),
    ("blue-green", "$.configuration.warmupDuration", "PT0S", DURATION),
    ("blue-green", "$.configuration.monitoringDuration", "-PT10M", DURATION),
    ("blue-green", "$.configuration.rollbackThresholds.maxLatency", 0, POSITIVE),
    ("blue-green", "$.configuration.rollbackThresholds.maxLatency", -5, POSITIVE),
    ("blue-green", "$.configuration.rollbackThresholds.maxErrorRate", 1.01, FRACTION),
    ("progressive", "$.configuration.totalCapital", -1, POSITIVE),
    ("progressive", "$.configuration.updateFrequency", "PT0S", DURATION),
    ("progressive", "$.configuration.allocationCurve", "", "must not be empty"),
    ("progressive", "$.configuration.confidenceThresholds", [], NON_EMPTY),
    ("progressive", "$.configuration.confidenceThresholds[0].confidence", 1.5, FRACTION),
    ("progressive", "$.configuration.confidenceThresholds[0].confidence", -0.1, FRACTION),
    ("progressive", "$.configuration.confidenceThresholds[2].confidence", 0.6, GREATER),
    ("progressive", "$.configuration.confidenceThresholds[2].confidence", 0.55, GREATER),
    ("progressive", "$.configuration.confidenceThresholds[1].allocation", 0, ALLOCATION),
    ("progressive", "$.configuration.confidenceThresholds[5].allocation", 1.01, ALLOCATION),
    ("progressive", "$.configuration.confidenceThresholds[3].allocation", 0.05, ">= the previous"),
    ("progressive", "$.configuration.previousVersion", "ml-model-v3.0.0", "must differ"),
]


@pytest.mark.parametrize(("name", "path", "value", "rule"), INVALID)
def test_invalid_value_is_refused_naming_its_path(
    name: str, path: str, value: object, rule: str
) -> None:
    message = rejection(with_value(example(name), path, value))
    assert message.startswith(f"`{path}` "), message
    assert rule in message
    assert ", got " in message


def test_fixed_bps_requires_slippage_bps() -> None:
    doc = with_value(example("paper-trading"), "$.configuration.slippageModel", "FixedBps")
    assert rejection(doc).startswith("`$.configuration.slippageBps` is required")
    doc = with_value(doc, "$.configuration.slippageBps", -1)
    assert rejection(doc).startswith("`$.configuration.slippageBps` must be >= 0")


def test_impact_coefficient_needs_the_realistic_model() -> None:
    doc = example("paper-trading")
    doc["configuration"] |= {"slippageModel": "SpreadCrossing", "impactCoefficient": 0.1}
    assert rejection(doc).startswith("`$.configuration.impactCoefficient` is only allowed")


@pytest.mark.parametrize(
    ("name", "path", "value", "expected"),
    [
        ("canary", "$.configuration.stages[2].allocation", "0.1", "Expected `float`, got `str`"),
        ("canary", "$.configuration.stages[2].minDuration", "4 hours", "Invalid ISO8601"),
        ("canary", "$.configuration.stages[2].minDuration", "P1W", "Only units"),
        ("canary", "$.configuration.stages[2].minDuration", 3600, "Expected `duration`"),
        ("canary", "$.configuration.totalCapital", True, "Expected `float`, got `bool`"),
        ("canary", "$.configuration.autoProgress", "yes", "Expected `bool`"),
        ("paper-trading", "$.promotionCriteria.minTrades", 100.5, "Expected `int | null`"),
        ("paper-trading", "$.environment", "Production", "Invalid enum value 'Production'"),
        ("paper-trading", "$.configuration.slippageModel", "Linear", "Invalid enum value"),
        ("paper-trading", "$.configuration.marketDataSource", "Replay", "Invalid enum value"),
        ("blue-green", "$.configuration.cutoverType", "Gradual", "Invalid enum value"),
        (
            "progressive",
            "$.configuration.confidenceThresholds[1]",
            [0.6, 0.05],
            "Expected `object`",
        ),
    ],
)
def test_wrong_type_is_refused_with_msgspec_message(
    name: str, path: str, value: object, expected: str
) -> None:
    message = rejection(with_value(example(name), path, value))
    assert expected in message
    assert message.endswith(f"- at `{path}`"), message


@pytest.mark.parametrize(
    ("name", "path", "where"),
    [
        ("paper-trading", "$.simulatedCapital", None),
        ("paper-trading", "$.configuration.minSharpeRatio", "$.configuration"),
        ("canary", "$.configuration.stages[1].minPnl", "$.configuration.stages[1]"),
        ("canary", "$.configuration.stages[1].min_pnl", "$.configuration.stages[1]"),
        (
            "canary",
            "$.configuration.rollbackThresholds.maxLoss",
            "$.configuration.rollbackThresholds",
        ),
        ("blue-green", "$.configuration.flattenOnRollback", "$.configuration"),
        (
            "progressive",
            "$.configuration.confidenceThresholds[0].weight",
            "$.configuration.confidenceThresholds[0]",
        ),
    ],
)
def test_unknown_field_is_refused_with_its_path(name: str, path: str, where: str | None) -> None:
    field = path.rsplit(".", 1)[1]
    message = rejection(with_value(example(name), path, 1))
    assert f"Object contains unknown field `{field}`" in message
    assert where is None or message.endswith(f"- at `{where}`"), message


@pytest.mark.parametrize("tag", ["Rolling", "canary", "", None])
def test_unknown_strategy_is_refused(tag: str | None) -> None:
    message = rejection(with_value(example("canary"), "$.strategy", tag))
    assert "`$.strategy`" in message


def test_missing_strategy_is_refused() -> None:
    doc = example("canary")
    del doc["strategy"]
    assert "missing required field `strategy`" in rejection(doc)


def test_a_document_under_another_strategys_tag_is_refused() -> None:
    message = rejection(with_value(example("canary"), "$.strategy", "BlueGreen"))
    assert "- at `$.configuration`" in message


def test_missing_required_field_is_refused() -> None:
    doc = example("blue-green")
    del doc["configuration"]["blueVersion"]
    assert rejection(doc) == "Object missing required field `blueVersion` - at `$.configuration`"


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b"null", b'{"strategy": "Canary"', b"\xff"])
def test_malformed_input_is_a_deployment_error(data: bytes) -> None:
    with pytest.raises(DeploymentError):
        decode_deployment(data)


def test_invalid_utf8_inside_a_string_is_a_deployment_error() -> None:
    data = (path_of("canary")).read_bytes().replace(b"Micro", b"Mi\xffro")
    with pytest.raises(DeploymentError, match="not UTF-8"):
        decode_deployment(data)


def test_error_type() -> None:
    with pytest.raises(DeploymentError) as info:
        decode_deployment(b"{}")
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, RampartError)
    assert info.value.reason == "invalid_deployment"
    assert isinstance(info.value.__cause__, msgspec.ValidationError)


# --- Files ----------------------------------------------------------------------------------------


def test_load_errors_start_with_the_path(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{")
    bad_value = tmp_path / "bad-value.json"
    bad_value.write_bytes(encode(with_value(example("canary"), "$.configuration.totalCapital", 0)))
    missing = tmp_path / "missing.json"
    for path, fragment in [
        (bad_json, "truncated"),
        (bad_value, "`$.configuration.totalCapital` must be > 0, got 0"),
        (missing, "cannot read"),
    ]:
        with pytest.raises(DeploymentError) as info:
            load_deployment(path)
        assert str(info.value).startswith(f"{path}: ")
        assert fragment in str(info.value)
    with pytest.raises(DeploymentError, match=r"^bad\.json: "):
        load_deployment(Path("bad.json"))


def test_encode_validates_deployments_built_in_python() -> None:
    d = load_deployment(path_of("canary"))
    assert isinstance(d, CanaryDeployment)
    broken = msgspec.structs.replace(
        d, configuration=msgspec.structs.replace(d.configuration, total_capital=math.nan)
    )
    with pytest.raises(
        DeploymentError, match=r"^`\$\.configuration\.totalCapital` must be > 0, got nan$"
    ):
        encode_deployment(broken)
    with pytest.raises(DeploymentError):
        validate_deployment(broken)


# --- Properties -----------------------------------------------------------------------------------

fraction_like = st.floats(min_value=-2.0, max_value=2.0, allow_nan=False)


def canary(allocations: list[float], min_duration: timedelta = timedelta(hours=1)) -> Doc:
    stages = [
        {"name": f"s{i}", "allocation": a, "minDuration": min_duration}
        for i, a in enumerate(allocations)
    ]
    return {
        "deploymentId": "d",
        "strategy": "Canary",
        "algorithmId": "a",
        "configuration": {"totalCapital": 1e6, "stages": stages},
    }


def first_canary_violation(allocations: list[float]) -> str | None:
    if not allocations:
        return "$.configuration.stages"
    for i, a in enumerate(allocations):
        if not 0 < a <= 1 or (i and a <= allocations[i - 1]):
            return f"$.configuration.stages[{i}].allocation"
    return None


@given(st.lists(fraction_like, max_size=6))
def test_canary_allocations_in_range_and_strictly_increasing(allocations: list[float]) -> None:
    doc = canary(allocations)
    violation = first_canary_violation(allocations)
    if violation is None:
        d = decode_deployment(encode(doc))
        assert decode_deployment(encode_deployment(d)) == d
    else:
        assert rejection(doc).startswith(f"`{violation}` ")


@given(st.lists(fraction_like, min_size=1, max_size=6).map(sorted))
def test_sorted_canary_allocations_are_accepted_iff_distinct_and_in_range(
    allocations: list[float],
) -> None:
    valid = len(set(allocations)) == len(allocations) and all(0 < a <= 1 for a in allocations)
    doc = canary(allocations)
    if valid:
        decode_deployment(encode(doc))
    else:
        rejection(doc)


@given(st.timedeltas(min_value=timedelta(days=-30), max_value=timedelta(days=30)))
def test_stage_durations_must_be_positive(duration: timedelta) -> None:
    doc = canary([0.5, 1.0], min_duration=duration)
    if duration > timedelta(0):
        d = decode_deployment(encode(doc))
        assert isinstance(d, CanaryDeployment)
        assert d.configuration.stages[0].min_duration == duration
    else:
        assert rejection(doc).startswith(
            "`$.configuration.stages[0].minDuration` must be a positive"
        )


@given(st.lists(st.tuples(fraction_like, fraction_like), max_size=6))
def test_confidence_thresholds(pairs: list[tuple[float, float]]) -> None:
    doc = with_value(
        example("progressive"),
        "$.configuration.confidenceThresholds",
        [{"confidence": c, "allocation": a} for c, a in pairs],
    )
    valid = (
        bool(pairs)
        and all(0 <= c <= 1 and 0 < a <= 1 for c, a in pairs)
        and all(c0 < c1 and a0 <= a1 for (c0, a0), (c1, a1) in pairwise(pairs))
    )
    if valid:
        d = decode_deployment(encode(doc))
        assert decode_deployment(encode_deployment(d)) == d
    else:
        assert "`$.configuration.confidenceThresholds" in rejection(doc)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_rollback_fractions(value: float) -> None:
    for field in ("maxDailyLoss", "maxDrawdown", "maxErrorRate"):
        path = f"$.configuration.rollbackThresholds.{field}"
        doc = with_value(example("canary"), path, value)
        if 0 <= value <= 1:
            decode_deployment(encode(doc))
        else:
            shown = msgspec.json.encode(value).decode()
            assert rejection(doc) == f"`{path}` must be in [0, 1], got {shown}"


token_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)


@given(token_text)
def test_deployment_id_must_be_a_subject_token(value: str) -> None:
    doc = with_value(example("canary"), "$.deploymentId", value)
    if value and not re.search(r"[\s.*>]", value):
        assert decode_deployment(encode(doc)).deployment_id == value
    else:
        assert rejection(doc).startswith("`$.deploymentId` must be a NATS subject token")


@given(st.lists(token_text, min_size=1, max_size=4).map(".".join))
def test_algorithm_id_must_be_a_subject(value: str) -> None:
    doc = with_value(example("canary"), "$.algorithmId", value)
    tokens = value.split(".")
    if all(t and not re.search(r"[\s*>]", t) for t in tokens):
        assert decode_deployment(encode(doc)).algorithm_id == value
    else:
        assert rejection(doc).startswith("`$.algorithmId` must be a NATS subject")
