"""The `rampart` command line."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from rampart import __version__

if TYPE_CHECKING:
    from rampart.config import DaemonConfig

ENV_CONFIG = "RAMPART_CONFIG"
ENV_OPERATOR = "RAMPART_OPERATOR"
ENV_KEY = "RAMPART_KEY"
# exit status of a control verb recorded but waiting for a second operator (two-person rule)
EXIT_PENDING = 4
log = logging.getLogger("rampart")


def _fmt_ts(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str, as_json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if as_json
        else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _load_config(path: str | None) -> DaemonConfig:
    from rampart.config import DaemonConfig, load_config

    path = path or os.environ.get(ENV_CONFIG)
    return load_config(path) if path else DaemonConfig()


# ---- commands -------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from rampart.demo import run_demo
    from rampart.view import LiveView

    console = Console(force_terminal=False) if args.plain else Console()
    view = LiveView(console, title="rampart demo")
    data = Path(args.data) if args.data else None
    if data is not None and not data.is_file():
        print(f"rampart demo: no such file: {data}", file=sys.stderr)
        return 2
    try:
        result = run_demo(view, seed=args.seed, data=data, report=Path(args.report))
    except (ValueError, RuntimeError) as e:
        print(f"rampart demo: {e}", file=sys.stderr)
        return 1
    print()
    print("The story:")
    for line in result.story:
        print(f"  - {line}")
    if result.rollback is not None:
        from rampart.status import format_rollback

        print()
        print(format_rollback(result.rollback))
    print(f"\nreport: {result.report.resolve()}")
    return 0


def cmd_scenario(args: argparse.Namespace) -> int:
    from rampart.scenario import run_scenario
    from rampart.status import format_metrics

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
    print(format_metrics(result.snapshots))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import uvloop

    from rampart.config import ConfigFileError
    from rampart.daemon import Daemon, DaemonError

    accept = None
    if args.accept_store_rollback:
        accept = args.operator or os.environ.get(ENV_OPERATOR)
        if not accept:
            print(
                "rampart run: --accept-store-rollback is recorded in the audit log: say who you "
                f"are with --operator NAME (or ${ENV_OPERATOR})",
                file=sys.stderr,
            )
            return 2
    try:
        config = _load_config(args.config)
    except ConfigFileError as e:
        print(f"rampart run: invalid configuration: {e}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_json)
    # A fatal signal (SIGBUS from a memory-mapped file that vanished, SIGSEGV) leaves a traceback
    # on stderr instead of nothing.
    faulthandler.enable()
    servers = [s.strip() for s in args.servers.split(",")] if args.servers else None
    Path(config.data_dir).mkdir(parents=True, exist_ok=True)

    async def main() -> int:
        daemon = Daemon(
            config,
            servers=servers,
            accept_store_rollback=accept,
            config_path=args.config or os.environ.get(ENV_CONFIG) or None,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, daemon.request_stop)
        try:
            await daemon.run()
        except DaemonError as e:
            log.error("%s", e)
            return 1
        return 0

    return uvloop.run(main())


def _validate_one(path: Path) -> str:
    """The kind of document at ``path`` if valid; raises ValueError with the reason if not."""
    from rampart.config import load_config
    from rampart.deployment import load_deployment

    if path.suffix.lower() == ".json":
        try:
            head = json.loads(path.read_bytes())
        except (OSError, ValueError):
            head = None
        if isinstance(head, dict) and "strategy" in head:
            d = load_deployment(path)
            return f"{type(d).__name__} {d.deployment_id}"
    cfg = load_config(path)
    return f"daemon configuration, {len(cfg.algorithms)} algorithms"


def cmd_validate(args: argparse.Namespace) -> int:
    failures = 0
    for name in args.files:
        try:
            kind = _validate_one(Path(name))
        except ValueError as e:
            failures += 1
            print(f"INVALID {e}", file=sys.stderr)
        else:
            print(f"ok      {name}: {kind}")
    return 1 if failures else 0


def cmd_key(args: argparse.Namespace) -> int:
    """Print the public key Rampart signs with (creating the key if there is none yet): what
    every gateway must trust (docs/protocol.md, "Signatures")."""
    from rampart.config import ConfigFileError
    from rampart.signing import SigningKeyError, default_seed_path, load_or_create

    if args.new:
        return _new_operator_key(Path(args.new))
    try:
        config = _load_config(args.config)
    except (ConfigFileError, OSError) as e:
        print(f"rampart key: {e}", file=sys.stderr)
        return 2
    seed = config.signing.seed_file or default_seed_path(config.data_dir)
    try:
        key = load_or_create(seed)
    except SigningKeyError as e:
        print(f"rampart key: {e}", file=sys.stderr)
        return 1
    print(key.public_key)
    print(
        f"(the seed is in {seed}; give the public key above to every gateway: "
        "GatewayAgent(trusted_keys=[...]))",
        file=sys.stderr,
    )
    return 0


def _new_operator_key(path: Path) -> int:
    from rampart._core import SigningKey
    from rampart.signing import write_private

    key = SigningKey.generate()
    try:
        if not write_private(path, key.seed() + "\n"):
            print(f"rampart key: {path} exists; it is never overwritten", file=sys.stderr)
            return 1
    except OSError as e:
        print(f"rampart key: {path}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(key.public_key)
    print(
        f"(the seed is in {path}: keep it to yourself; give the daemon's configuration\n"
        f'[[control.operators]] name = "YOU", key = "{key.public_key}", role = "operator")',
        file=sys.stderr,
    )
    return 0


def cmd_nats_config(args: argparse.Namespace) -> int:
    """Write least-privilege NATS users for every role of this configuration (nats_auth.py)."""
    from rampart.config import ConfigFileError
    from rampart.nats_auth import write
    from rampart.signing import SigningKeyError

    try:
        config = _load_config(args.config)
    except (ConfigFileError, OSError) as e:
        print(f"rampart nats-config: {e}", file=sys.stderr)
        return 2
    servers = (
        [s.strip() for s in args.servers.split(",") if s.strip()]
        if args.servers
        else list(config.nats.servers)
    )
    out = Path(args.out)
    try:
        files = write(config, out, servers)
    except (OSError, ValueError, SigningKeyError) as e:
        print(f"rampart nats-config: {e}", file=sys.stderr)
        return 1
    for f in files:
        print(f)
    print(
        f"include {out / 'authorization.conf'} in the nats-server configuration; give each "
        "role its seed (*.nk, mode 0600) and paste its *.toml [nats] section into its "
        "configuration (docs/security.md)",
        file=sys.stderr,
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from rampart.config import ConfigFileError
    from rampart.protocol import encode_explicit
    from rampart.status import (
        NoDaemonError,
        StatusError,
        fetch_status,
        format_status,
        resolve_servers,
    )

    try:
        config = _load_config(args.config)
        servers = resolve_servers(args.servers, config)
        prefix = args.prefix or config.subject_prefix
        if args.watch:
            from rich.console import Console

            from rampart.status import watch
            from rampart.view import LiveView

            view = LiveView(Console(), title=f"rampart status ({servers})")
            try:
                asyncio.run(watch(servers, prefix, view, interval=args.interval, count=args.count))
            except KeyboardInterrupt:
                pass
            return 0
        reply = asyncio.run(fetch_status(servers, prefix, args.algo, args.timeout))
    except ConfigFileError as e:
        print(f"rampart status: invalid configuration: {e}", file=sys.stderr)
        return 2
    except (NoDaemonError, StatusError) as e:
        print(f"rampart status: {e}", file=sys.stderr)
        return 1
    if args.json:  # non-finite numbers as "inf", "-inf", "nan" (docs/protocol.md)
        sys.stdout.write(encode_explicit(reply).decode() + "\n")
    else:
        print(format_status(reply))
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    from rampart.config import ConfigFileError
    from rampart.operators import NoOperatorKeyError, operator_key
    from rampart.protocol import encoder
    from rampart.status import (
        NoDaemonError,
        StatusError,
        control,
        resolve_servers,
        wait_converged,
    )

    document = None
    target = args.target
    if args.verb == "deploy":
        from rampart.deployment import load_deployment

        try:
            doc = load_deployment(args.target)
        except ValueError as e:
            print(f"rampart deploy: {e}", file=sys.stderr)
            return 2
        document = json.loads(Path(args.target).read_bytes())
        target = doc.deployment_id
    try:
        config = _load_config(args.config)
        key = operator_key(args.key or os.environ.get(ENV_KEY), config)
        servers = resolve_servers(args.servers, config)
        prefix = args.prefix or config.subject_prefix
        reply = asyncio.run(
            control(
                servers,
                prefix,
                args.verb,
                key,
                target,
                reason=args.reason or "",
                document=document,
                timeout=args.timeout,
            )
        )
    except ConfigFileError as e:
        print(f"rampart {args.verb}: invalid configuration: {e}", file=sys.stderr)
        return 2
    except NoOperatorKeyError as e:
        print(f"rampart {args.verb}: {e}", file=sys.stderr)
        return 2
    except (NoDaemonError, StatusError) as e:
        print(f"rampart {args.verb}: {e}", file=sys.stderr)
        return 1
    if reply.pending is not None:
        print(f"rampart {args.verb}: pending: {reply.pending}", file=sys.stderr)
        if args.json:
            sys.stdout.write(encoder.encode(reply).decode() + "\n")
        return EXIT_PENDING
    if not reply.ok:
        print(f"rampart {args.verb}: refused: {reply.error}", file=sys.stderr)
        return 1
    # A rollback whose steps were not all acked is a failure: say so in the exit status too.
    failed = (
        args.verb == "rollback"
        and reply.state is not None
        and reply.state.get("state") != "succeeded"
    )
    if args.json:
        sys.stdout.write(encoder.encode(reply).decode() + "\n")
    elif args.verb == "rollback" and reply.state is not None:
        from rampart.status import format_rollback
        from rampart.store import RollbackRecord

        print(format_rollback(msgspec.convert(reply.state, RollbackRecord)))
    elif reply.state is not None and "phase" in reply.state:
        st = reply.state
        print(
            f"{args.verb} {target}: {st['strategy']} now {st['phase']}, stage {st['stage']}, "
            f"allocation {st['allocation']:g}{' (paused)' if st['paused'] else ''}"
            f"{' HALTED' if st['halted'] else ''}"
        )
    else:
        print(f"{args.verb} {target}: done ({json.dumps(reply.state)})")
    if not args.json and reply.actor:
        print(f"(recorded in the audit log as {reply.actor})", file=sys.stderr)
    st = reply.state or {}
    algos = [a for a in (st.get("active"), st.get("standby")) if isinstance(a, str) and a]
    if "phase" in st and algos and args.wait > 0:
        # the answer says what was decided and stored; the gateway says what it does
        try:
            drift = asyncio.run(wait_converged(servers, prefix, algos, args.wait, args.timeout))
        except (NoDaemonError, StatusError) as e:
            print(f"rampart {args.verb}: cannot tell whether the gateway applied it: {e}")
            return 1
        if drift:
            text = "; ".join(f"{a}: {d}" for a, d in drift.items())
            print(
                f"rampart {args.verb}: accepted and stored, but the gateway has not applied it "
                f"within {args.wait:g}s ({text}); Rampart keeps sending (see `rampart status`)",
                file=sys.stderr,
            )
            return 3
        print(f"{args.verb} {target}: applied by the gateway")
    if failed:
        print(
            f"rampart rollback: FAILED: not every step was acked by the gateways; Rampart keeps "
            f"retrying (see `rampart status {target}`)",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from rampart._core import RampartError
    from rampart.config import ConfigFileError, ns
    from rampart.deployment import load_deployment
    from rampart.replay import format_summary, format_timeline, run_replay, summary_entry

    try:
        doc = load_deployment(args.deployment)
        max_jump = msgspec.convert(args.max_jump, timedelta)
        if max_jump <= timedelta(0):
            raise ValueError(f"--max-jump must be a positive duration, got {args.max_jump}")
        engine = None
        interval = 1_000_000_000
        if args.config:
            config = _load_config(args.config)
            engine = config.engine(max_jump=max_jump)
            interval = ns(config.decision_interval)
        with open(args.events, "rb") as f:
            result = run_replay(
                doc,
                f,
                engine=engine,
                decision_interval_ns=interval,
                max_jump_ns=ns(max_jump),
            )
    except msgspec.ValidationError as e:
        print(f"rampart replay: --max-jump {args.max_jump!r}: {e}", file=sys.stderr)
        return 2
    except (ValueError, ConfigFileError, RampartError) as e:
        print(f"rampart replay: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"rampart replay: cannot read {args.events}: {e.strerror}", file=sys.stderr)
        return 2
    if args.json:
        from rampart.protocol import encoder

        for entry in (*result.timeline, summary_entry(result.summary)):
            sys.stdout.write(encoder.encode(entry).decode() + "\n")
    else:
        if result.timeline:
            print(format_timeline(result.timeline))
            print()
        print(format_summary(result.summary))
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    from rampart.record import cmd_record as record

    return record(args)


def _store_path(args: argparse.Namespace, verb: str) -> str | None:
    """``--db``, else ``<data_dir>/rampart.db`` of the configuration (None: printed why)."""
    from rampart.daemon import STORE_FILE

    if args.db is not None:
        return str(args.db)
    try:
        config = _load_config(args.config)
    except ValueError as e:
        print(f"rampart {verb}: invalid configuration: {e}", file=sys.stderr)
        return None
    return str(Path(config.data_dir) / STORE_FILE)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from rampart.durability import audit_verify_main

    db = _store_path(args, "audit verify")
    if db is None:
        return 2
    return audit_verify_main(db, json_out=args.json)


def _head_text(head: object) -> str:
    from rampart.audit import AuditHead

    if isinstance(head, AuditHead):
        return f"audit head seq {head.seq} hash {head.hash}"
    return "no audit records"


def cmd_backup(args: argparse.Namespace) -> int:
    from rampart.backup import BackupError, backup
    from rampart.store import StoreError

    db = _store_path(args, "backup")
    if db is None:
        return 2
    try:
        result = backup(db, args.dest)
    except (BackupError, StoreError, OSError) as e:
        print(f"rampart backup: FAILED: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(msgspec.json.encode(result).decode())
    else:
        ident = result.identity
        print(
            f"backup {result.path}: {result.records} audit records verified, "
            f"{_head_text(result.head)}, store {ident.store_id or '-'} generation "
            f"{ident.generation}, {result.size} bytes (from {db})"
        )
    if result.warning:
        print(f"rampart backup: WARNING: {result.warning}", file=sys.stderr)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from rampart.backup import BackupError, restore
    from rampart.datalock import DataDirLocked
    from rampart.store import StoreError

    operator = args.operator or os.environ.get(ENV_OPERATOR)
    if not operator:
        print(
            f"rampart restore: say who you are with --operator NAME (or ${ENV_OPERATOR})",
            file=sys.stderr,
        )
        return 2
    db = _store_path(args, "restore")
    if db is None:
        return 2
    try:
        result = restore(args.source, db, operator=operator, reason=args.reason or "")
    except DataDirLocked as e:
        print(
            f"rampart restore: refused: {e.data_dir} is in use by a Rampart daemon "
            f"(PID {e.holder}): stop the daemon first",
            file=sys.stderr,
        )
        return 1
    except (BackupError, StoreError, OSError) as e:
        print(f"rampart restore: refused: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(msgspec.json.encode(result).decode())
        return 0
    print(
        f"restored {result.source} to {result.db}: {_head_text(result.head)}, generation "
        f"{result.identity.generation}"
    )
    if result.replaced:
        print(
            f"the store it replaced ({_head_text(result.replaced_head)}) is kept as "
            f"{', '.join(result.replaced)}"
        )
    print(
        "the head file now names the restored store; the daemon's next start writes the restore "
        "to the audit log. Start the daemon, then check `rampart status` and release what should "
        "trade"
    )
    return 0


# ---- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rampart",
        description="Deploy trading algorithms with capital instead of traffic; roll back in ms.",
    )
    parser.add_argument("--version", action="version", version=f"rampart {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="the whole story on an embedded NATS: paper, canary, blue/green, rollback"
    )
    demo.add_argument("--seed", type=int, default=7, help="market seed (default: 7)")
    demo.add_argument(
        "--data", help="replay real prices: JSON lines (quote/mark) or CSV ts,bid,ask"
    )
    demo.add_argument(
        "--report",
        default="rampart-demo-report.html",
        help="HTML report path (default: %(default)s)",
    )
    demo.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    demo.set_defaults(func=cmd_demo)

    scenario = sub.add_parser("scenario", help="a scripted market through the Rust core only")
    scenario.add_argument("--seed", type=int, default=7, help="market seed (default: 7)")
    scenario.set_defaults(func=cmd_scenario)

    config_help = f"daemon configuration file, TOML or JSON (default: ${ENV_CONFIG})"
    servers_help = "comma-separated NATS URLs (default: config, else an embedded server)"

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", help=config_help)
    run.add_argument("-s", "--servers", help=servers_help)
    run.add_argument(
        "--accept-store-rollback",
        action="store_true",
        help="start on a state store that is behind its mirrored audit head (committed state "
        "lost), recording who accepted it in the audit log; needs --operator",
    )
    run.add_argument("--operator", help=f"who accepts (default: ${ENV_OPERATOR})")
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser(
        "validate", help="check daemon configurations and deployment documents"
    )
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.set_defaults(func=cmd_validate)

    key = sub.add_parser(
        "key", help="print the public key Rampart signs commands with (gateways trust it)"
    )
    key.add_argument("-c", "--config", help=config_help)
    key.add_argument(
        "--new",
        metavar="FILE",
        help="instead: create an operator's key in FILE (mode 0600) and print its public key, "
        "for the daemon's [[control.operators]]",
    )
    key.set_defaults(func=cmd_key)

    nc_cfg = sub.add_parser(
        "nats-config",
        help="write least-privilege NATS users (NKEY per role) and the server's authorization",
    )
    nc_cfg.add_argument("-c", "--config", help=config_help)
    nc_cfg.add_argument("--out", required=True, help="directory for the files (created, 0700)")
    nc_cfg.add_argument("-s", "--servers", help="NATS URLs for the roles' [nats] sections")
    nc_cfg.set_defaults(func=cmd_nats_config)

    status = sub.add_parser("status", help="show a running daemon's algorithms and metrics")
    status.add_argument("algo", nargs="?", metavar="ALGO", help="one algorithm in detail")
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    status.add_argument("-c", "--config", help=config_help)
    status.add_argument("-s", "--servers", help="comma-separated NATS URLs of the daemon")
    status.add_argument("--prefix", help="subject prefix (default: from config, else rampart)")
    status.add_argument("--timeout", type=float, default=2.0, help="seconds to wait (default 2)")
    status.add_argument("--watch", action="store_true", help="the live view, refreshed")
    status.add_argument("--interval", type=float, default=1.0, help="--watch refresh, seconds")
    status.add_argument("--count", type=int, help="--watch: stop after this many refreshes")
    status.set_defaults(func=cmd_status)

    algo_target = "ALGO, gateway:GATEWAY, or '*' for all"
    for verb, text, target_help in (
        (
            "rollback",
            "emergency rollback: halt, cancel, allocation 0, previous version back",
            algo_target,
        ),
        (
            "release",
            "lift the halt of algorithms after a rollback (a person's decision)",
            algo_target,
        ),
        ("deploy", "start a deployment from its JSON document", "FILE.json"),
        ("approve", "a risk manager approves a paper deployment's promotion", "DEPLOYMENT"),
        ("promote", "move a deployment to its next stage now", "DEPLOYMENT"),
        ("pause", "stop a deployment's progress (limits still apply)", "DEPLOYMENT"),
        ("resume", "let a paused deployment progress again", "DEPLOYMENT"),
        ("abort", "stop a deployment and withdraw its capital", "DEPLOYMENT"),
        ("halt", "halt a deployment's algorithm (emergency rollback)", "DEPLOYMENT"),
    ):
        p = sub.add_parser(verb, help=text)
        p.add_argument("target", metavar=target_help.split(",")[0], help=target_help)
        p.add_argument(
            "--key",
            metavar="FILE",
            help=f"your operator NKEY seed, to sign the request (default: ${ENV_KEY}, else the "
            "config's control.key_file, else the host's local admin key)",
        )
        p.add_argument("--reason", help="why (recorded in the audit log)")
        p.add_argument("--json", action="store_true", help="print the reply as JSON")
        p.add_argument("-c", "--config", help=config_help)
        p.add_argument("-s", "--servers", help="comma-separated NATS URLs of the daemon")
        p.add_argument("--prefix", help="subject prefix (default: from config, else rampart)")
        p.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
        if verb in ("rollback", "release"):
            p.set_defaults(wait=0.0)
        else:
            p.add_argument(
                "--wait",
                type=float,
                default=10.0,
                help="seconds to wait for the gateway to apply a deployment's change; exit 3 "
                "if it has not (default 10; 0: do not wait)",
            )
        p.set_defaults(func=cmd_control, verb=verb)

    rp = sub.add_parser("replay", help="run a deployment over recorded events (JSON lines)")
    rp.add_argument("deployment", metavar="DEPLOYMENT.json")
    rp.add_argument("events", metavar="EVENTS", help="JSON lines in docs/events.md's format")
    rp.add_argument("-c", "--config", help="daemon configuration: algorithms, limits, intervals")
    rp.add_argument("--json", action="store_true", help="one JSON object per timeline entry")
    rp.add_argument(
        "--max-jump",
        default="P7D",
        metavar="DURATION",
        help="largest step of the event clock, ISO 8601 (default P7D); a later event is "
        "refused as `future`",
    )
    rp.set_defaults(func=cmd_replay)

    rec = sub.add_parser(
        "record", help="write the events on the bus to a file `rampart replay` reads (JSON lines)"
    )
    rec.add_argument(
        "subjects",
        nargs="*",
        metavar="SUBJECT",
        help="subjects to record (default: <p>.md.>, <p>.fills.>, <p>.orders.>, <p>.batch.*)",
    )
    rec.add_argument("--out", required=True, metavar="FILE", help="the recording (JSON lines)")
    rec.add_argument("--append", action="store_true", help="add to an existing FILE")
    rec.add_argument("-c", "--config", help=config_help)
    rec.add_argument("-s", "--servers", help="comma-separated NATS URLs")
    rec.add_argument("--prefix", help="subject prefix (default: from config, else rampart)")
    rec.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    rec.add_argument("--count", type=int, metavar="N", help="stop after N events")
    rec.set_defaults(func=cmd_record)

    audit = sub.add_parser("audit", help="the tamper-evident audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = audit_sub.add_parser("verify", help="check the hash chain of the audit log")
    verify.add_argument("--db", help="state store path (default: <data_dir>/rampart.db)")
    verify.add_argument("-c", "--config", help=config_help)
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=cmd_audit_verify)

    bk = sub.add_parser(
        "backup", help="a consistent, verified copy of the state store (safe while it runs)"
    )
    bk.add_argument("dest", metavar="DEST", help="file to write, or a directory to write into")
    bk.add_argument("--db", help="state store path (default: <data_dir>/rampart.db)")
    bk.add_argument("-c", "--config", help=config_help)
    bk.add_argument("--json", action="store_true", help="print the result as JSON")
    bk.set_defaults(func=cmd_backup)

    rs = sub.add_parser(
        "restore", help="put a backup in place of the state store (the daemon must be stopped)"
    )
    rs.add_argument("source", metavar="BACKUP", help="a file written by `rampart backup`")
    rs.add_argument("--db", help="state store path (default: <data_dir>/rampart.db)")
    rs.add_argument("-c", "--config", help=config_help)
    rs.add_argument("--operator", help=f"who is restoring (default: ${ENV_OPERATOR})")
    rs.add_argument("--reason", help="why (recorded in the audit log)")
    rs.add_argument("--json", action="store_true", help="print the result as JSON")
    rs.set_defaults(func=cmd_restore)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
