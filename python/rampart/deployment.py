"""Deployment documents: the JSON a user writes to put an algorithm in front of capital.

The four strategies of the seed (``PaperTrading``, ``Canary``, ``BlueGreen``, ``Progressive``) are
frozen msgspec Structs forming one tagged union on the ``"strategy"`` field; the seed's documents
decode verbatim. Where a document is silent, the seed's own numbers are the defaults. Decoding is
followed by semantic validation (ranges, ordering, identifiers); every failure is a
:class:`DeploymentError` whose message names the field path, as msgspec does
(``$.configuration.stages[2].allocation``). Reference: docs/deployments.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Literal, NoReturn, TypeAlias, assert_never

import msgspec

from rampart._core import RampartError
from rampart.jsonpos import describe as describe_json_error
from rampart.tokens import is_subject, is_token

__all__ = [
    "BlueGreenConfig",
    "BlueGreenDeployment",
    "CanaryConfig",
    "CanaryDeployment",
    "CanaryStage",
    "ConfidenceThreshold",
    "Deployment",
    "DeploymentError",
    "MarketDataSource",
    "PaperTradingConfig",
    "PaperTradingDeployment",
    "ProgressiveConfig",
    "ProgressiveDeployment",
    "PromotionCriteria",
    "RollbackThresholds",
    "SlippageModel",
    "decode_deployment",
    "default_canary",
    "encode_deployment",
    "load_deployment",
    "validate_deployment",
]

SlippageModel: TypeAlias = Literal["None", "FixedBps", "SpreadCrossing", "RealisticSlippage"]
MarketDataSource: TypeAlias = Literal["LiveMarketData"]


class DeploymentError(RampartError, ValueError):
    """A deployment document is malformed or invalid; the message names the field path."""

    reason = "invalid_deployment"


class _Document(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    """Options every deployment Struct inherits: immutable, strict, camelCase JSON names.

    Subclasses repeat ``frozen=True`` (for type checkers) and ``kw_only=True`` (msgspec applies it
    only to the fields of the class that sets it).
    """


# --- Paper trading -------------------------------------------------------------------------------


class PaperTradingConfig(_Document, frozen=True, kw_only=True):
    """Simulated execution: capital in account currency, commission as a fraction of notional."""

    simulated_capital: float
    market_data_source: MarketDataSource = "LiveMarketData"
    slippage_model: SlippageModel = "RealisticSlippage"
    slippage_bps: float | None = None
    impact_coefficient: float | None = None
    commission_rate: float
    min_trading_duration: timedelta = timedelta(days=7)


class PromotionCriteria(_Document, frozen=True, kw_only=True):
    """Thresholds a paper run must meet before promotion; ``null`` switches one off."""

    min_sharpe_ratio: float | None = 1.5
    max_drawdown: float | None = 0.05
    min_win_rate: float | None = 0.55
    min_trades: int | None = 100


class _DeploymentDocument(_Document, tag_field="strategy", frozen=True, kw_only=True):
    """Fields every deployment has; ``strategy`` (the tag) selects the subclass."""

    deployment_id: str
    algorithm_id: str


class PaperTradingDeployment(_DeploymentDocument, tag="PaperTrading", frozen=True, kw_only=True):
    """``canary`` (a Rampart extension) is the canary the deployment continues as once promoted;
    by default the seed's six stages over ``simulatedCapital`` (:func:`default_canary`)."""

    environment: Literal["PaperTrading"] = "PaperTrading"
    configuration: PaperTradingConfig
    promotion_criteria: PromotionCriteria = msgspec.field(default_factory=PromotionCriteria)
    canary: CanaryConfig | None = None

    def promotion_canary(self) -> CanaryConfig:
        return self.canary or default_canary(self.configuration.simulated_capital)


# --- Rollback thresholds (Canary, BlueGreen) -----------------------------------------------------


class RollbackThresholds(_Document, frozen=True, kw_only=True):
    """Limits whose breach rolls the deployment back; ``null`` switches one off.

    The defaults are the seed's emergency-rollback triggers (2% daily loss, 5% drawdown, 1% error
    rate); ``maxLatency`` (milliseconds) has no default.
    """

    max_daily_loss: float | None = 0.02
    max_drawdown: float | None = 0.05
    max_error_rate: float | None = 0.01
    max_latency: float | None = None

    @property
    def max_latency_ns(self) -> int | None:
        """``maxLatency`` in nanoseconds, the unit of the core's ``AlgoConfig.max_latency_ns``."""
        return None if self.max_latency is None else round(self.max_latency * 1_000_000)


# --- Canary --------------------------------------------------------------------------------------


class CanaryStage(_Document, frozen=True, kw_only=True):
    """One step: a fraction of ``totalCapital`` held at least ``minDuration``, PnL >= ``minPnL``."""

    name: str
    allocation: float
    min_duration: timedelta
    min_pnl: float = msgspec.field(default=0.0, name="minPnL")


class CanaryConfig(_Document, frozen=True, kw_only=True):
    """Stages of strictly increasing allocation.

    ``flattenOnRollback`` and ``previousVersion`` are Rampart extensions to the seed's document.
    """

    total_capital: float
    stages: tuple[CanaryStage, ...]
    auto_progress: bool = True
    rollback_thresholds: RollbackThresholds = msgspec.field(default_factory=RollbackThresholds)
    flatten_on_rollback: bool = False
    previous_version: str | None = None


def default_canary(total_capital: float) -> CanaryConfig:
    """The seed's canary: Micro 1% (1 h), Small 5% (2 h), Medium 10% (4 h), Large 25% (8 h),
    Half 50% (1 day), Full 100% (2 days), each with minPnL 0, auto-progressing."""
    stages = (
        ("Micro", 0.01, timedelta(hours=1)),
        ("Small", 0.05, timedelta(hours=2)),
        ("Medium", 0.10, timedelta(hours=4)),
        ("Large", 0.25, timedelta(hours=8)),
        ("Half", 0.50, timedelta(days=1)),
        ("Full", 1.00, timedelta(days=2)),
    )
    return CanaryConfig(
        total_capital=total_capital,
        stages=tuple(CanaryStage(name=n, allocation=a, min_duration=d) for n, a, d in stages),
    )


class CanaryDeployment(_DeploymentDocument, tag="Canary", frozen=True, kw_only=True):
    environment: Literal["Production"] = "Production"
    configuration: CanaryConfig


# --- Blue/green ----------------------------------------------------------------------------------


class BlueGreenConfig(_Document, frozen=True, kw_only=True):
    """Cut all of the capital over from ``blueVersion`` to ``greenVersion`` at once."""

    blue_version: str
    green_version: str
    warmup_duration: timedelta = timedelta(seconds=30)
    cutover_type: Literal["Instant"] = "Instant"
    monitoring_duration: timedelta = timedelta(minutes=10)
    auto_rollback: bool = True
    rollback_thresholds: RollbackThresholds = msgspec.field(default_factory=RollbackThresholds)


class BlueGreenDeployment(_DeploymentDocument, tag="BlueGreen", frozen=True, kw_only=True):
    environment: Literal["Production"] = "Production"
    configuration: BlueGreenConfig


# --- Progressive ---------------------------------------------------------------------------------


class ConfidenceThreshold(_Document, frozen=True, kw_only=True):
    """At a confidence score >= ``confidence``, allocate this fraction of ``totalCapital``."""

    confidence: float
    allocation: float


class ProgressiveConfig(_Document, frozen=True, kw_only=True):
    """Allocation follows the confidence score through a step function over the thresholds.

    ``flattenOnRollback`` and ``previousVersion`` are Rampart extensions to the seed's document.
    """

    total_capital: float
    allocation_curve: str | None = None
    update_frequency: timedelta = timedelta(minutes=15)
    confidence_thresholds: tuple[ConfidenceThreshold, ...]
    flatten_on_rollback: bool = False
    previous_version: str | None = None


class ProgressiveDeployment(_DeploymentDocument, tag="Progressive", frozen=True, kw_only=True):
    environment: Literal["Production"] = "Production"
    configuration: ProgressiveConfig


Deployment: TypeAlias = (
    PaperTradingDeployment | CanaryDeployment | BlueGreenDeployment | ProgressiveDeployment
)

_DECODER: msgspec.json.Decoder[Deployment] = msgspec.json.Decoder(Deployment)
_ENCODER = msgspec.json.Encoder()


def decode_deployment(data: bytes | str) -> Deployment:
    """Decode and validate one JSON deployment document."""
    try:
        deployment = _DECODER.decode(data)
    except msgspec.DecodeError as e:  # ValidationError included; its message carries the path
        # a syntax error says where (line and column), not what a half-read document lacks
        raise DeploymentError(describe_json_error(data, e)) from e
    except UnicodeDecodeError as e:  # raised by msgspec for invalid UTF-8 inside a string
        raise DeploymentError(f"not UTF-8 text: {e}") from e
    validate_deployment(deployment)
    return deployment


def load_deployment(path: str | Path) -> Deployment:
    """Read, decode and validate a deployment file; error messages start with the path."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DeploymentError(f"{path}: cannot read: {e.strerror}") from e
    try:
        return decode_deployment(data)
    except DeploymentError as e:
        raise DeploymentError(f"{path}: {e}") from e.__cause__


def encode_deployment(deployment: Deployment) -> bytes:
    """Validate and encode a deployment as JSON, every field explicit (defaults included)."""
    validate_deployment(deployment)
    return _ENCODER.encode(deployment)


# --- Semantic validation -------------------------------------------------------------------------


def validate_deployment(deployment: Deployment) -> None:
    """Check the rules msgspec's types cannot express; raise :class:`DeploymentError` if broken.

    Decoding already runs this; call it on deployments built in Python.
    """
    _check_token(deployment.deployment_id, "$.deploymentId")
    _check_subject(deployment.algorithm_id, "$.algorithmId")
    at = "$.configuration"
    match deployment:
        case PaperTradingDeployment(configuration=config, promotion_criteria=criteria):
            _check_paper(config, at)
            _check_criteria(criteria, "$.promotionCriteria")
            if deployment.canary is not None:
                _check_canary(deployment.canary, deployment.algorithm_id, "$.canary")
        case CanaryDeployment(configuration=config):
            _check_canary(config, deployment.algorithm_id, at)
        case BlueGreenDeployment(configuration=config):
            _check_blue_green(config, at)
        case ProgressiveDeployment(configuration=config):
            _check_progressive(config, deployment.algorithm_id, at)
        case _:
            assert_never(deployment)


def _check_paper(config: PaperTradingConfig, at: str) -> None:
    _check_positive(config.simulated_capital, f"{at}.simulatedCapital")
    _check_fraction(config.commission_rate, f"{at}.commissionRate")
    _check_duration(config.min_trading_duration, f"{at}.minTradingDuration")
    model = config.slippage_model
    if model == "FixedBps":
        if config.slippage_bps is None:
            _fail(f"{at}.slippageBps", 'is required when `slippageModel` is "FixedBps"', None)
        _check_non_negative(config.slippage_bps, f"{at}.slippageBps")
    elif config.slippage_bps is not None:
        _fail(f"{at}.slippageBps", 'is only allowed with `slippageModel` "FixedBps"', model)
    if model == "RealisticSlippage":
        if config.impact_coefficient is not None:
            _check_non_negative(config.impact_coefficient, f"{at}.impactCoefficient")
    elif config.impact_coefficient is not None:
        _fail(
            f"{at}.impactCoefficient",
            'is only allowed with `slippageModel` "RealisticSlippage"',
            model,
        )


def _check_criteria(criteria: PromotionCriteria, at: str) -> None:
    if criteria.min_sharpe_ratio is not None:
        _check_finite(criteria.min_sharpe_ratio, f"{at}.minSharpeRatio")
    if criteria.max_drawdown is not None:
        _check_fraction(criteria.max_drawdown, f"{at}.maxDrawdown")
    if criteria.min_win_rate is not None:
        _check_fraction(criteria.min_win_rate, f"{at}.minWinRate")
    if criteria.min_trades is not None and criteria.min_trades < 0:
        _fail(f"{at}.minTrades", "must be >= 0", criteria.min_trades)


def _check_thresholds(thresholds: RollbackThresholds, at: str) -> None:
    for name, value in (
        ("maxDailyLoss", thresholds.max_daily_loss),
        ("maxDrawdown", thresholds.max_drawdown),
        ("maxErrorRate", thresholds.max_error_rate),
    ):
        if value is not None:
            _check_fraction(value, f"{at}.{name}")
    if thresholds.max_latency is not None:
        _check_positive(thresholds.max_latency, f"{at}.maxLatency")


def _check_previous_version(version: str | None, algorithm_id: str, path: str) -> None:
    if version is not None:
        _check_subject(version, path)
        if version == algorithm_id:
            _fail(path, "must differ from `$.algorithmId`", version)


def _check_canary(config: CanaryConfig, algorithm_id: str, at: str) -> None:
    _check_positive(config.total_capital, f"{at}.totalCapital")
    _check_non_empty(config.stages, f"{at}.stages")
    names: set[str] = set()
    previous = 0.0
    for i, stage in enumerate(config.stages):
        path = f"{at}.stages[{i}]"
        if not stage.name:
            _fail(f"{path}.name", "must not be empty", stage.name)
        if stage.name in names:
            _fail(f"{path}.name", "must be unique among the stages", stage.name)
        names.add(stage.name)
        _check_allocation(stage.allocation, f"{path}.allocation")
        if i and stage.allocation <= previous:
            _fail(
                f"{path}.allocation",
                f"must be greater than the previous stage's allocation ({previous})",
                stage.allocation,
            )
        previous = stage.allocation
        _check_duration(stage.min_duration, f"{path}.minDuration")
        _check_finite(stage.min_pnl, f"{path}.minPnL")
    _check_thresholds(config.rollback_thresholds, f"{at}.rollbackThresholds")
    _check_previous_version(config.previous_version, algorithm_id, f"{at}.previousVersion")


def _check_blue_green(config: BlueGreenConfig, at: str) -> None:
    _check_subject(config.blue_version, f"{at}.blueVersion")
    _check_subject(config.green_version, f"{at}.greenVersion")
    if config.blue_version == config.green_version:
        _fail(f"{at}.greenVersion", f"must differ from `{at}.blueVersion`", config.green_version)
    _check_duration(config.warmup_duration, f"{at}.warmupDuration")
    _check_duration(config.monitoring_duration, f"{at}.monitoringDuration")
    _check_thresholds(config.rollback_thresholds, f"{at}.rollbackThresholds")


def _check_progressive(config: ProgressiveConfig, algorithm_id: str, at: str) -> None:
    _check_positive(config.total_capital, f"{at}.totalCapital")
    _check_duration(config.update_frequency, f"{at}.updateFrequency")
    if config.allocation_curve is not None and not config.allocation_curve:
        _fail(f"{at}.allocationCurve", "must not be empty", config.allocation_curve)
    _check_non_empty(config.confidence_thresholds, f"{at}.confidenceThresholds")
    previous: ConfidenceThreshold | None = None
    for i, threshold in enumerate(config.confidence_thresholds):
        path = f"{at}.confidenceThresholds[{i}]"
        _check_fraction(threshold.confidence, f"{path}.confidence")
        _check_allocation(threshold.allocation, f"{path}.allocation")
        if previous is not None:
            if threshold.confidence <= previous.confidence:
                _fail(
                    f"{path}.confidence",
                    f"must be greater than the previous confidence ({previous.confidence})",
                    threshold.confidence,
                )
            if threshold.allocation < previous.allocation:
                _fail(
                    f"{path}.allocation",
                    f"must be >= the previous allocation ({previous.allocation})",
                    threshold.allocation,
                )
        previous = threshold
    _check_previous_version(config.previous_version, algorithm_id, f"{at}.previousVersion")


def _show(value: object) -> str:
    """The value as it would appear in JSON (durations as ISO 8601), e.g. ``1.5``, ``"PT0S"``."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return _ENCODER.encode(value).decode()


def _fail(path: str, rule: str, value: object) -> NoReturn:
    raise DeploymentError(f"`{path}` {rule}, got {_show(value)}")


def _check_positive(value: float, path: str) -> None:
    if not (value > 0 and math.isfinite(value)):
        _fail(path, "must be > 0", value)


def _check_non_negative(value: float, path: str) -> None:
    if not (value >= 0 and math.isfinite(value)):
        _fail(path, "must be >= 0", value)


def _check_finite(value: float, path: str) -> None:
    if not math.isfinite(value):
        _fail(path, "must be a finite number", value)


def _check_fraction(value: float, path: str) -> None:
    if not 0 <= value <= 1:  # False for NaN too
        _fail(path, "must be in [0, 1]", value)


def _check_allocation(value: float, path: str) -> None:
    if not 0 < value <= 1:
        _fail(path, "must be in (0, 1]", value)


def _check_duration(value: timedelta, path: str) -> None:
    if value <= timedelta(0):
        _fail(path, "must be a positive duration", value)


def _check_non_empty(items: Sequence[object], path: str) -> None:
    if not items:
        _fail(path, "must have at least one entry", items)


def _check_token(value: str, path: str) -> None:
    if not is_token(value):
        _fail(
            path, "must be a NATS subject token (non-empty; no whitespace, '.', '*' or '>')", value
        )


def _check_subject(value: str, path: str) -> None:
    if not is_subject(value):
        _fail(
            path,
            "must be a NATS subject (non-empty tokens joined by '.'; no whitespace, '*' or '>')",
            value,
        )
