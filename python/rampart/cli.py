"""The `rampart` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from rampart import __version__
from rampart._core import Snapshot


def _fmt_ts(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _opt(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_snapshots(snapshots: Sequence[Snapshot]) -> str:
    """A fixed-width table of the key metrics, one row per algorithm."""
    head = (
        f"{'algorithm':<14}{'equity':>12}{'daily PnL':>11}{'drawdown':>9}{'max DD':>8}"
        f"{'Sharpe':>8}{'trades':>7}{'win%':>6}{'rej%':>6}{'p99 ms':>7}{'conf':>6}  breached"
    )
    lines = [head, "-" * len(head)]
    for s in snapshots:
        p99 = None if s.latency_p99_ns is None else s.latency_p99_ns / 1e6
        lines.append(
            f"{s.algo_id:<14}{s.equity:>12,.2f}{s.daily_pnl:>11,.2f}{s.drawdown:>9.2%}"
            f"{s.max_drawdown:>8.2%}{_opt(s.sharpe, '.2f'):>8}{s.trades:>7}"
            f"{_opt(None if s.win_rate is None else 100 * s.win_rate, '.0f'):>6}"
            f"{_opt(None if s.error_rate is None else 100 * s.error_rate, '.0f'):>6}"
            f"{_opt(p99, '.2f'):>7}{s.confidence:>6.2f}  {','.join(s.breached) or '-'}"
        )
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    # Imported here so `rampart --version` stays instant.
    from rampart.scenario import run_scenario

    result = run_scenario(seed=args.seed)
    print(f"rampart {__version__}: scripted scenario on the Rust risk core (seed {args.seed})")
    regimes = ", ".join(f"{name} from {_fmt_ts(ts)}" for name, ts in result.regimes)
    print(f"market regimes: {regimes}")
    print(f"{result.events} events through the core\n")
    for b in result.breaches:
        print(
            f"BREACH {_fmt_ts(b.ts)} {b.algo_id}: {b.kind} {b.value:.6g} "
            f"(limit {b.threshold:.6g}) -> halt"
        )
    if not result.breaches:
        print("no limit tripped")
    print()
    print(format_snapshots(result.snapshots))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rampart",
        description="Deploy trading algorithms with capital instead of traffic; roll back in ms.",
    )
    parser.add_argument("--version", action="version", version=f"rampart {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="run a scripted scenario through the risk core")
    demo.add_argument("--seed", type=int, default=7, help="market seed (default: 7)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
