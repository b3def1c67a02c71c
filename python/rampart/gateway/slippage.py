"""Slippage models: the execution price of a marketable order against the top of the book.

Each model is a small frozen class with one method, ``price(side, qty, quote) -> float``: what a
buy pays, or a sell receives, per unit for ``qty`` units executed against ``quote`` (a
:class:`TopOfBook`). Models are pure and deterministic; the formulas, units and defaults are in
docs/paper.md. :func:`slippage_model` maps the deployment documents' ``slippageModel`` names onto
them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Final, Literal, Protocol, TypeAlias

__all__ = [
    "MIN_SELL_FRACTION",
    "FixedBps",
    "NoSlippage",
    "Side",
    "SlippageModel",
    "SpreadCrossing",
    "SquareRootImpact",
    "TopOfBook",
    "VolumeShare",
    "slippage_model",
]

Side: TypeAlias = Literal["buy", "sell"]

MIN_SELL_FRACTION: Final = 1e-6
"""Impact models never price a sell below this fraction of the bid, so a price stays > 0."""


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class TopOfBook:
    """A quote as the models see it: bid and ask (finite, > 0, ``bid <= ask``), optionally the
    displayed size at each touch and an estimate of the instrument's daily volume (units of the
    instrument, >= 0). Invalid values raise ``ValueError``."""

    bid: float
    ask: float
    bid_size: float | None = None
    ask_size: float | None = None
    volume: float | None = None

    def __post_init__(self) -> None:
        if not (_finite(self.bid) and _finite(self.ask) and 0 < self.bid <= self.ask):
            raise ValueError(
                f"bad quote: bid {self.bid!r} and ask {self.ask!r} must be finite, > 0 "
                "and bid <= ask"
            )
        for name in ("bid_size", "ask_size", "volume"):
            value: float | None = getattr(self, name)
            if value is not None and not (_finite(value) and value >= 0):
                raise ValueError(f"bad quote: {name} {value!r} must be finite and >= 0")

    @property
    def mid(self) -> float:
        return (self.bid + self.ask) / 2

    @property
    def spread(self) -> float:
        return self.ask - self.bid

    def touch(self, side: Side) -> float:
        """The price a marketable order of ``side`` meets first: the ask for a buy, the bid for a
        sell."""
        return self.ask if side == "buy" else self.bid

    def touch_size(self, side: Side) -> float | None:
        """The displayed size on the side an order of ``side`` consumes."""
        return self.ask_size if side == "buy" else self.bid_size


class SlippageModel(Protocol):
    """What :class:`rampart.gateway.paper.PaperVenue` needs from a model."""

    def price(self, side: Side, qty: float, quote: TopOfBook) -> float:
        """The per-unit execution price of ``qty`` (finite, >= 0) units of ``side``: > 0, and
        finite unless the impact of an absurd order overflows (the venue then rejects it)."""
        ...


def _check_qty(qty: float) -> None:
    if not (math.isfinite(qty) and qty >= 0):
        raise ValueError(f"quantity {qty!r} must be finite and >= 0")


def _beyond_touch(side: Side, quote: TopOfBook, cost: float) -> float:
    """The touch moved ``cost`` (>= 0, currency per unit) against the order; a sell is floored at
    ``MIN_SELL_FRACTION * bid``."""
    if side == "buy":
        return quote.ask + cost
    return max(quote.bid - cost, quote.bid * MIN_SELL_FRACTION)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True, slots=True)
class NoSlippage:
    """Fill at the touch: a buy at the ask, a sell at the bid (the spread is the only cost)."""

    def price(self, side: Side, qty: float, quote: TopOfBook) -> float:
        _check_qty(qty)
        return quote.touch(side)


@dataclass(frozen=True, slots=True)
class FixedBps:
    """The touch moved ``bps`` basis points against the order: ``ask * (1 + bps/1e4)`` for a buy,
    ``bid * (1 - bps/1e4)`` for a sell. ``0 <= bps < 10_000``."""

    bps: float

    def __post_init__(self) -> None:
        _require(
            _finite(self.bps) and 0 <= self.bps < 10_000,
            f"FixedBps: bps {self.bps!r} must be finite and in [0, 10000)",
        )

    def price(self, side: Side, qty: float, quote: TopOfBook) -> float:
        _check_qty(qty)
        if side == "buy":
            return quote.ask * (1 + self.bps / 10_000)
        return quote.bid * (1 - self.bps / 10_000)


@dataclass(frozen=True, slots=True)
class SpreadCrossing:
    """Cross ``fraction`` of the half-spread beyond the mid: ``mid + fraction * spread / 2`` for a
    buy, ``mid - fraction * spread / 2`` for a sell. ``fraction`` is in [0, 1]: 0 fills at the mid,
    1 (the default) at the touch."""

    fraction: float = 1.0

    def __post_init__(self) -> None:
        _require(
            _finite(self.fraction) and 0 <= self.fraction <= 1,
            f"SpreadCrossing: fraction {self.fraction!r} must be in [0, 1]",
        )

    def price(self, side: Side, qty: float, quote: TopOfBook) -> float:
        _check_qty(qty)
        # Written from the touch so the default (fraction 1) is exactly the bid or the ask.
        inside = (1 - self.fraction) * quote.spread / 2
        return quote.ask - inside if side == "buy" else quote.bid + inside


@dataclass(frozen=True, slots=True)
class SquareRootImpact:
    """The square-root market-impact law, beyond the touch.

    ``impact = coefficient * volatility * sqrt(qty / daily_volume) * mid`` (currency per unit); a
    buy pays ``ask + impact``, a sell receives ``bid - impact`` (floored at
    ``MIN_SELL_FRACTION * bid``). ``volatility`` is the daily volatility of returns (a fraction),
    ``daily_volume`` the daily traded volume in the instrument's units; a quote's ``volume``
    estimate, when present and > 0, replaces ``daily_volume``.
    """

    coefficient: float = 1.0
    daily_volume: float = 1_000_000.0
    volatility: float = 0.02

    def __post_init__(self) -> None:
        _require(
            _finite(self.coefficient) and self.coefficient >= 0,
            f"SquareRootImpact: coefficient {self.coefficient!r} must be finite and >= 0",
        )
        _require(
            _finite(self.daily_volume) and self.daily_volume > 0,
            f"SquareRootImpact: daily_volume {self.daily_volume!r} must be finite and > 0",
        )
        _require(
            _finite(self.volatility) and self.volatility >= 0,
            f"SquareRootImpact: volatility {self.volatility!r} must be finite and >= 0",
        )

    def impact(self, qty: float, quote: TopOfBook) -> float:
        """The impact in currency per unit."""
        _check_qty(qty)
        if qty == 0 or self.coefficient == 0 or self.volatility == 0:
            return 0.0  # and never 0 * inf
        volume = quote.volume if quote.volume else self.daily_volume
        return self.coefficient * self.volatility * math.sqrt(qty / volume) * quote.mid

    def price(self, side: Side, qty: float, quote: TopOfBook) -> float:
        return _beyond_touch(side, quote, self.impact(qty, quote))


@dataclass(frozen=True, slots=True)
class VolumeShare:
    """Impact quadratic in the share of the displayed size consumed (zipline's
    ``VolumeShareSlippage`` against the touch, without its partial-fill cap).

    ``share = qty / touch_size``; a buy pays ``ask * (1 + price_impact * share**2)``, a sell
    receives ``bid * (1 - price_impact * share**2)`` (floored at ``MIN_SELL_FRACTION * bid``).
    Without a displayed size (absent or 0) there is nothing to take a share of: the touch.
    """

    price_impact: float = 0.1

    def __post_init__(self) -> None:
        _require(
            _finite(self.price_impact) and self.price_impact >= 0,
            f"VolumeShare: price_impact {self.price_impact!r} must be finite and >= 0",
        )

    def price(self, side: Side, qty: float, quote: TopOfBook) -> float:
        _check_qty(qty)
        size = quote.touch_size(side)
        touch = quote.touch(side)
        if not size or qty == 0 or self.price_impact == 0:
            return touch
        share = qty / size
        return _beyond_touch(side, quote, self.price_impact * share * share * touch)


_ModelClass: TypeAlias = (
    type[NoSlippage]
    | type[FixedBps]
    | type[SpreadCrossing]
    | type[SquareRootImpact]
    | type[VolumeShare]
)

_MODELS: Final[dict[str, _ModelClass]] = {
    "None": NoSlippage,
    "FixedBps": FixedBps,
    "SpreadCrossing": SpreadCrossing,
    "RealisticSlippage": SquareRootImpact,
    "VolumeShare": VolumeShare,
}


def slippage_model(name: str, **params: float) -> SlippageModel:
    """The model a deployment's ``slippageModel`` names, built with ``params`` (the model's
    fields, e.g. ``slippage_model("FixedBps", bps=2.5)``).

    ``"None"`` -> :class:`NoSlippage`, ``"FixedBps"`` -> :class:`FixedBps`, ``"SpreadCrossing"``
    -> :class:`SpreadCrossing`, ``"RealisticSlippage"`` -> :class:`SquareRootImpact`, and the
    Rampart extension ``"VolumeShare"`` -> :class:`VolumeShare`. An unknown name or parameter
    raises ``ValueError`` naming the valid ones.
    """
    factory = _MODELS.get(name)
    if factory is None:
        valid = ", ".join(repr(n) for n in _MODELS)
        raise ValueError(f"unknown slippage model {name!r}; valid names: {valid}")
    accepted = [f.name for f in fields(factory)]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "no parameters"
        raise ValueError(f"slippage model {name!r} takes {takes}; got unknown {', '.join(unknown)}")
    return factory(**params)
