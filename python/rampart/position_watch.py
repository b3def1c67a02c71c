"""Position reconciliation (docs/operations.md, "Positions"): each gateway's reported positions
against the core's, per algorithm and symbol.

A gateway on the durable events stream reports its positions as of its last event (``events``:
its outbox's ``<boot>.<n>``). Such a report waits until Rampart has applied exactly that event of
the gateway, and is compared then: fills still in flight never look like drift, however busy the
algorithm. A report of a gateway on core NATS (no ``events``) is compared when it arrives.

A symbol whose quantities differ by more than ``tolerance`` is drift: shown in status and
alerted at once. Drift that lasts ``drift_after`` is a breach (trigger ``position_drift``). So is
a gateway whose reports Rampart has not been able to compare for ``drift_after`` while it is
caught up with the stream: events the gateway says it sent never arrived.

Pure bookkeeping: the daemon feeds it reports, applied events and the time, and acts on the
:class:`Finding` list each call returns (alerts, rollbacks).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

from rampart._core import DecodeError, Engine
from rampart.protocol import PositionCheck, PositionFrame, SymbolDrift

# reports of one gateway waiting for Rampart to apply the event they are as of (one per event:
# a quiet gateway's next report replaces the last); more means Rampart is that many heartbeats
# behind the gateway, and the oldest is dropped
MAX_WAITING: Final = 64


@dataclass(frozen=True)
class Finding:
    """What the daemon must do: ``drift`` alert, ``in_sync`` notice (drift gone), ``breach``
    (roll ``algos`` back, trigger ``position_drift``)."""

    kind: Literal["drift", "in_sync", "breach"]
    gateway: str
    algos: tuple[str, ...]
    detail: str


@dataclass
class _Drift:
    since: int
    symbols: list[SymbolDrift]
    # when it is (again) a breach: drift_after after it began, then every drift_after while
    # it lasts (a released algorithm whose positions still differ is rolled back again)
    breach_at: int | None = None
    # seen by comparing a report on arrival (core NATS): shown, never alerted or a breach
    quiet: bool = False


@dataclass
class _Gateway:
    # the gateway's events the core holds: every one of ``applied``'s boot up to its n (a
    # contiguous run), and those beyond it that came early (a retried publish can be stored
    # after later ones): (boot, n)
    applied: tuple[str, int] | None = None
    ahead: set[int] = field(default_factory=set)
    # the gateway's boots in the order they were first seen (a report of a later boot can
    # come while the earlier boot's last events are still being applied)
    boots: dict[str, int] = field(default_factory=dict)

    def boot_rank(self, boot: str) -> int:
        return self.boots.setdefault(boot, len(self.boots))

    # reports waiting for their event: (boot, n, raw positions)
    waiting: deque[tuple[str, int, bytes]] = field(default_factory=deque)
    # when reports were last compared, or started to arrive (wall clock, ns)
    compared_at: int | None = None
    first_report_at: int | None = None
    # when reports that could not be compared are (again) a breach
    unmatched_breach_at: int | None = None


def parse_event_span(header: str) -> tuple[str, int, int] | None:
    """A message's ``Rampart-Seq``: ``<boot>.<n>`` (an event) or ``<boot>.<first>-<last>`` (a
    batch) -> (boot, first, last); ``None`` for anything else."""
    boot, _, numbers = header.rpartition(".")
    first, _, last = numbers.partition("-")
    if not boot or not first.isdigit() or (last and not last.isdigit()):
        return None
    return boot, int(first), int(last or first)


def parse_event_id(event_id: str) -> tuple[str, int] | None:
    """``<boot>.<n>`` -> (boot, n); ``None`` for anything else."""
    boot, _, n = event_id.rpartition(".")
    if not boot or not n.isdigit():
        return None
    return boot, int(n)


class PositionWatch:
    def __init__(
        self,
        engine: Engine,
        gateways: dict[str, tuple[str, ...]],
        *,
        tolerance: float,
        drift_after_ns: int | None,
        caught_up: Callable[[], bool] = lambda: True,
    ) -> None:
        self.engine = engine
        self.algos_of = gateways
        self.tolerance = tolerance
        self.drift_after_ns = drift_after_ns
        self.caught_up = caught_up
        self._gateways = {gw: _Gateway() for gw in gateways}
        self._drift: dict[str, _Drift] = {}
        self._checked_at: dict[str, int] = {}

    # ---- state the checkpoints keep ---------------------------------------------------------

    def applied(self) -> dict[str, str]:
        """Each gateway's last applied event (stored with the core's checkpoint: a restart
        resumes matching reports where the restored core is)."""
        return {
            gw: f"{g.applied[0]}.{g.applied[1]}"
            + (";" + ",".join(map(str, sorted(g.ahead))) if g.ahead else "")
            for gw, g in self._gateways.items()
            if g.applied is not None
        }

    def restore(self, applied: dict[str, str]) -> None:
        for gw, event_id in applied.items():
            g = self._gateways.get(gw)
            run, _, early = event_id.partition(";")
            parsed = parse_event_id(run)
            if g is not None and parsed is not None:
                g.applied = parsed
                g.ahead = {int(x) for x in early.split(",") if x.isdigit()}

    # ---- inputs -------------------------------------------------------------------------------

    def on_event(self, gateway: str, event_id: str | None) -> bytes | None:
        """The core is applying one of ``gateway``'s durable events or batches
        (``event_id``: its ``Rampart-Seq`` header, ``<boot>.<n>`` or ``<boot>.<first>-<last>``).
        Returns the report that waited for exactly the events now held: the caller compares it
        (``compare``) once the message is applied."""
        g = self._gateways.get(gateway)
        if g is None or event_id is None:
            return None
        span = parse_event_span(event_id)
        if span is None:
            return None
        boot, first, n = span
        if g.applied is None or g.applied[0] != boot:
            g.applied, g.ahead = (boot, n), set()  # a new boot (or the first event seen)
        elif first <= g.applied[1] + 1 < n + 1:
            top = n
            while top + 1 in g.ahead:
                g.ahead.discard(top + 1)
                top += 1
            g.applied = (boot, top)
        elif first > g.applied[1] + 1:
            g.ahead.update(range(first, n + 1))  # early: its predecessors are still to come
        # (at or below the run: a duplicate; nothing changes)
        held = g.applied[1]
        match = None
        rank = g.boot_rank(boot)
        while g.waiting:
            wb, wn, raw = g.waiting[0]
            if wb != boot:
                if g.boot_rank(wb) < rank:
                    g.waiting.popleft()  # an earlier boot's: its events are over, never matches
                    continue
                break  # a later boot's: its events come after these
            if wn > held:
                break  # later: waits
            g.waiting.popleft()
            if wn == held and not g.ahead:
                match = raw  # the core holds exactly the events this report is as of
        return match

    def on_report(self, gateway: str, report: PositionFrame, now: int) -> list[Finding]:
        """A heartbeat's position report: compared now, or kept until the core has applied the
        event it is as of; then what ``check`` finds. Raises ``InvalidEventError`` (with its
        ``reason``) for a report that cannot be taken."""
        return self._take(gateway, report, now) + self.check(now)

    def _take(self, gateway: str, report: PositionFrame, now: int) -> list[Finding]:
        g = self._gateways.get(gateway)
        if g is None:
            return []
        if g.first_report_at is None:
            g.first_report_at = now
        raw = bytes(report.algos)
        if report.events is None:
            # core NATS: fills in flight can always differ, so this is shown in status but
            # neither alerted nor a breach (docs/operations.md, "Positions")
            self._compare(gateway, raw, now, quiet=True)
            return []
        parsed = parse_event_id(report.events)
        if parsed is None:
            err = DecodeError(f"position report as of event {report.events!r}: not <boot>.<n>")
            err.reason = "decode"
            raise err
        g.boot_rank(parsed[0])
        if (parsed == g.applied and not g.ahead) or (parsed[1] == 0 and self.caught_up()):
            # as of the event the core applied last, or of none since the gateway started
            g.waiting.clear()
            return self._compare(gateway, raw, now)
        if g.applied is not None and parsed[0] == g.applied[0] and parsed[1] < g.applied[1]:
            return []  # the core is past it already: the next report will do
        if parsed[1] > 0:
            if g.waiting and g.waiting[-1][:2] == parsed:
                g.waiting.pop()
            g.waiting.append((*parsed, raw))
            while len(g.waiting) > MAX_WAITING:
                g.waiting.popleft()
        return []

    def check(self, now: int) -> list[Finding]:
        """Drift that has lasted ``drift_after``, and gateways whose reports could not be
        compared for that long (called with every heartbeat)."""
        if self.drift_after_ns is None:
            return []
        after = self.drift_after_ns
        out: list[Finding] = []
        for algo, d in self._drift.items():
            if d.quiet:
                continue
            if now >= (d.breach_at or d.since + after):
                d.breach_at = now + after
                gw = self._gateway_of(algo)
                out.append(
                    Finding(
                        "breach",
                        gw,
                        (algo,),
                        f"positions of {algo} differ from gateway {gw}'s for "
                        f"{(now - d.since) / 1e9:.1f}s: {describe(d.symbols)}",
                    )
                )
        if not self.caught_up():
            return out
        for gw, g in self._gateways.items():
            since = g.compared_at if g.compared_at is not None else g.first_report_at
            if since is None or not g.waiting:
                continue
            if now >= (g.unmatched_breach_at or since + after):
                g.unmatched_breach_at = now + after
                wb, wn, _ = g.waiting[-1]
                applied = "none" if g.applied is None else f"{g.applied[0]}.{g.applied[1]}"
                out.append(
                    Finding(
                        "breach",
                        gw,
                        self.algos_of[gw],
                        f"gateway {gw}'s positions could not be checked for "
                        f"{(now - since) / 1e9:.1f}s: it reports them as of its event "
                        f"{wb}.{wn}, Rampart has applied its events up to {applied} "
                        "(events it sent have not arrived: lost, or the events stream "
                        "stalled)",
                    )
                )
        return out

    # ---- status -------------------------------------------------------------------------------

    def status(self, algo: str) -> PositionCheck | None:
        checked = self._checked_at.get(algo)
        if checked is None:
            return None
        d = self._drift.get(algo)
        if d is None:
            return PositionCheck(checked_at=checked, in_sync=True)
        return PositionCheck(
            checked_at=checked, in_sync=False, drift=list(d.symbols), drift_since=d.since
        )

    def drifting(self) -> dict[str, int]:
        """Algorithms in drift -> since when."""
        return {algo: d.since for algo, d in self._drift.items()}

    # ---- comparing ----------------------------------------------------------------------------

    def compare(self, gateway: str, raw: bytes, now: int) -> list[Finding]:
        """``gateway``'s report (raw JSON positions) against the core, now. Raises
        ``InvalidEventError`` (with its ``reason``) for a report the core cannot take."""
        return self._compare(gateway, raw, now) + self.check(now)

    def _compare(self, gateway: str, raw: bytes, now: int, *, quiet: bool = False) -> list[Finding]:
        rows = self.engine.position_drift(gateway, raw, self.tolerance)
        g = self._gateways[gateway]
        g.compared_at = now
        g.unmatched_breach_at = None
        by_algo: dict[str, list[SymbolDrift]] = {}
        for algo, symbol, ours, theirs in rows:
            by_algo.setdefault(algo, []).append(
                SymbolDrift(symbol=symbol, rampart=ours, gateway=theirs)
            )
        out: list[Finding] = []
        for algo in self.algos_of[gateway]:
            self._checked_at[algo] = now
            symbols = by_algo.get(algo)
            d = self._drift.get(algo)
            if symbols is None:
                if d is not None:
                    del self._drift[algo]
                    out.append(
                        Finding("in_sync", gateway, (algo,), f"positions of {algo} agree again")
                    )
                continue
            if d is None:
                self._drift[algo] = _Drift(since=now, symbols=symbols, quiet=quiet)
                out.append(
                    Finding(
                        "drift",
                        gateway,
                        (algo,),
                        f"positions of {algo} differ from gateway {gateway}'s: {describe(symbols)}",
                    )
                )
            else:
                d.symbols = symbols
                d.quiet = quiet
        return out

    def _gateway_of(self, algo: str) -> str:
        for gw, algos in self.algos_of.items():
            if algo in algos:
                return gw
        return "?"


def describe(symbols: Iterable[SymbolDrift]) -> str:
    return ", ".join(f"{s.symbol} Rampart {s.rampart:g} vs gateway {s.gateway:g}" for s in symbols)
