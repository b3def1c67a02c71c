"""The `rampart` command line."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import io
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
    from rampart.deployment import Deployment
    from rampart.status import DaemonLink

ENV_CONFIG = "RAMPART_CONFIG"  # as rampart.config.ENV_CONFIG (not imported: a fast --help)
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
    from rampart.config import load_config_or_default

    return load_config_or_default(path)


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
        # the story runs in event time: the record's wall-clock start would contradict it
        print(format_rollback(result.rollback, when=False))
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
        # `kill -USR1 PID`: what every task of the daemon is waiting for, in its log
        loop.add_signal_handler(signal.SIGUSR1, log_task_stacks)
        try:
            await daemon.run()
        except DaemonError as e:
            log.error("%s", e)
            return 1
        # deposed (docs/ha.md): 75 (EX_TEMPFAIL), for the supervisor to start it again, standby
        return 75 if daemon.deposed or daemon.stepped_down else 0

    return uvloop.run(main())


def log_task_stacks() -> None:
    """Every asyncio task's stack, in the log (SIGUSR1): where a stuck daemon waits."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        print(f"-- task {task.get_name()}", file=out)
        task.print_stack(limit=12, file=out)
    log.warning("SIGUSR1: the daemon's tasks:\n%s", out.getvalue())


def _validate_one(path: Path) -> tuple[str, object]:
    """The kind of document at ``path`` and the document, if valid; raises ValueError with the
    reason (starting with the path) if not."""
    from rampart.config import load_config, parse_config
    from rampart.deployment import decode_deployment
    from rampart.jsonpos import describe

    if path.suffix.lower() != ".json":
        cfg = load_config(path)
        return _config_summary(cfg), cfg
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror}") from None
    try:
        head = msgspec.json.decode(data)
    except msgspec.DecodeError as e:
        raise ValueError(f"{path}: {describe(data, e)}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text: {e}") from None
    if isinstance(head, dict) and head.keys() & {"strategy", "deploymentId", "algorithmId"}:
        try:
            d = decode_deployment(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        return f"{type(d).__name__} {d.deployment_id}", d
    try:
        cfg = parse_config(data, suffix=".json")
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return _config_summary(cfg), cfg


def _config_summary(cfg: DaemonConfig) -> str:
    n = len(cfg.algorithms)
    return f"daemon configuration, {n} algorithm{'' if n == 1 else 's'}"


def _ungoverned(name: str, deployment: Deployment, config_name: str, config: DaemonConfig) -> str:
    """Why ``deployment`` cannot run under ``config`` ("" if it can): the daemon refuses to
    deploy an algorithm its configuration does not govern."""
    from rampart.runner import algorithms_of

    governed = [a.id for a in config.algorithms]
    missing = [a for a in algorithms_of(deployment) if a not in governed]
    if not missing:
        return ""
    which = (
        f"algorithm {missing[0]!r} is"
        if len(missing) == 1
        else f"algorithms {', '.join(map(repr, missing))} are"
    )
    them = "it" if len(missing) == 1 else "them"
    return (
        f"{name}: deployment {deployment.deployment_id}: {which} not governed by {config_name} "
        f"(its [[algorithms]]: {', '.join(governed) or 'none'}): add {them} there, or deploy "
        "one of those"
    )


def cmd_validate(args: argparse.Namespace) -> int:
    from rampart.config import DaemonConfig
    from rampart.deployment import Deployment

    results: list[tuple[str, str, object]] = []  # (name, kind, document), or (name, error, None)
    for name in args.files:
        try:
            kind, doc = _validate_one(Path(name))
        except ValueError as e:
            results.append((name, f"INVALID {e}", None))
        else:
            results.append((name, kind, doc))
    # configurations and deployments given together are checked together: every deployment
    # against every valid configuration given
    configs = [(n, d) for n, _, d in results if isinstance(d, DaemonConfig)]
    failures = 0
    for name, kind, doc in results:
        errors = [kind] if doc is None else []
        if isinstance(doc, Deployment):
            errors = [
                f"INVALID {why}"
                for config_name, config in configs
                if (why := _ungoverned(name, doc, config_name, config))
            ]
        if errors:
            failures += 1
            for line in errors:
                print(line, file=sys.stderr)
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
        if args.fleet:
            return _fleet(servers, args)
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


def _fleet(servers: DaemonLink, args: argparse.Namespace) -> int:
    """``rampart status --fleet``: every shard on the cluster; exit 1 if one has a problem."""
    from rampart.fleet import fleet, fleet_json, format_fleet

    if args.algo or args.watch:
        print("rampart status: --fleet takes no ALGO and no --watch", file=sys.stderr)
        return 2
    views = asyncio.run(fleet(servers, args.timeout))
    if args.json:
        sys.stdout.write(json.dumps(fleet_json(views), indent=2) + "\n")
    else:
        print(format_fleet(views))
    return 0 if all(v.ok for v in views) else 1


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
            f"{args.verb} {target}: {st['strategy']} now {st['phase']}, stage {st['stage'] + 1}, "
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
    """The state store: ``STATE_DB`` or ``--db`` (both: the same file), else
    ``<data_dir>/rampart.db`` of the configuration (None: printed why; exit 2)."""
    from rampart.daemon import STORE_FILE

    positional = getattr(args, "state_db", None)
    if positional is not None and args.db is not None:
        if Path(positional).resolve() != Path(args.db).resolve():
            print(
                f"rampart {verb}: STATE_DB {positional} and --db {args.db} name different "
                "files: give one of them",
                file=sys.stderr,
            )
            return None
    db = positional if positional is not None else args.db
    if db is not None:
        return str(db)
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


def cmd_audit_log(args: argparse.Namespace) -> int:
    from rampart.audit import AuditRecord
    from rampart.audit_log import AuditLogReader, follow, format_record, record_json
    from rampart.durability import EXIT_UNREADABLE
    from rampart.store import StoreError

    if args.limit is not None and args.limit < 0:
        print(f"rampart audit log: --limit must be >= 0, got {args.limit}", file=sys.stderr)
        return 2
    if not args.interval > 0:
        print(f"rampart audit log: --interval must be > 0, got {args.interval}", file=sys.stderr)
        return 2
    db = _store_path(args, "audit log")
    if db is None:
        return 2
    fmt = record_json if args.json else format_record

    def emit(records: list[AuditRecord]) -> None:
        for rec in records:
            sys.stdout.write(fmt(rec) + "\n")
        sys.stdout.flush()

    def note(text: str) -> None:
        print(f"rampart audit log: {text}", file=sys.stderr, flush=True)

    try:
        with AuditLogReader(db, algo=args.algo) as reader:
            records, last = reader.newest(args.limit)
            emit(records)
            if args.follow:
                follow(reader, last, emit, note, interval=args.interval)
    except StoreError as e:
        print(
            f"rampart audit log: cannot read the audit log: {e} (check the path: --db, or the "
            "configuration's data_dir with -c)",
            file=sys.stderr,
        )
        return EXIT_UNREADABLE
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `| head`: the reader has gone; nothing more to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return 0


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
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="what to do (COMMAND --help: how)"
    )

    demo = sub.add_parser(
        "demo",
        help="the whole story on an embedded NATS: paper, canary, blue/green, rollback",
        description="Run the whole story on an embedded NATS server: a paper deployment, its "
        "promotion to a canary, a blue/green cutover and an emergency rollback, with a live view "
        "and an HTML report.",
    )
    demo.add_argument("--seed", type=int, default=3, help="market seed (default: 3)")
    demo.add_argument(
        "--data",
        help="replay real prices (at least 200, one minute apart in event time): a CSV with a "
        "header naming a price column (e.g. date,close) or bid and ask, headerless ts,bid,ask, "
        "or JSON lines of quotes/marks",
    )
    demo.add_argument(
        "--report",
        default="rampart-demo-report.html",
        help="HTML report path (default: %(default)s)",
    )
    demo.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    demo.set_defaults(func=cmd_demo)

    scenario = sub.add_parser(
        "scenario",
        help="a scripted market through the Rust core only",
        description="Drive a scripted market (changing regimes, a faulty build) through the Rust "
        "risk core alone, without NATS, and print the breaches and the metrics table.",
    )
    scenario.add_argument("--seed", type=int, default=7, help="market seed (default: 7)")
    scenario.set_defaults(func=cmd_scenario)

    config_help = f"daemon configuration file, TOML or JSON (default: ${ENV_CONFIG})"
    servers_help = "comma-separated NATS URLs (default: config, else an embedded server)"

    run = sub.add_parser(
        "run",
        help="run the daemon",
        description="Run the daemon: govern the configured algorithms over NATS, enforce their "
        "limits, run deployments and roll back on breaches. SIGTERM or SIGINT drains and stops it.",
    )
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
        "validate",
        help="check daemon configurations and deployment documents",
        description="Check daemon configurations (TOML, or JSON) and deployment documents (JSON) "
        "without running anything; a JSON syntax error is reported with its line and column. "
        "Configurations and deployments given together are checked together: every algorithm a "
        "deployment puts to work must be governed by each configuration ([[algorithms]]). Exit "
        "status 1 if any file is invalid.",
    )
    validate.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="configuration files (.toml, .json) and deployment documents (.json), in any order",
    )
    validate.set_defaults(func=cmd_validate)

    key = sub.add_parser(
        "key",
        help="print the public key Rampart signs commands with (gateways trust it)",
        description="Print the public key Rampart signs gateway commands with (creating its "
        "signing key if there is none yet): every gateway must trust it. With --new, create an "
        "operator's key instead.",
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
        description="Write least-privilege NATS users for this configuration (an NKEY per role "
        "and per configured operator) and the authorization block to include in the nats-server "
        "configuration (docs/security.md).",
    )
    nc_cfg.add_argument("-c", "--config", help=config_help)
    nc_cfg.add_argument("--out", required=True, help="directory for the files (created, 0700)")
    nc_cfg.add_argument("-s", "--servers", help="NATS URLs for the roles' [nats] sections")
    nc_cfg.set_defaults(func=cmd_nats_config)

    status = sub.add_parser(
        "status",
        help="show a running daemon's algorithms and metrics",
        description="Ask a running daemon for its algorithms, their metrics and limits, its "
        "deployments and rollbacks; one algorithm in detail, as JSON, or as a live view.",
    )
    status.add_argument("algo", nargs="?", metavar="ALGO", help="one algorithm in detail")
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    status.add_argument("-c", "--config", help=config_help)
    status.add_argument("-s", "--servers", help="comma-separated NATS URLs of the daemon")
    status.add_argument("--prefix", help="subject prefix (default: from config, else rampart)")
    status.add_argument("--timeout", type=float, default=2.0, help="seconds to wait (default 2)")
    status.add_argument("--watch", action="store_true", help="the live view, refreshed")
    status.add_argument(
        "--fleet",
        action="store_true",
        help="every shard on the cluster ($SRV discovery): who leads, who stands by; exit 1 if "
        "a shard has no leader or two",
    )
    status.add_argument("--interval", type=float, default=1.0, help="--watch refresh, seconds")
    status.add_argument("--count", type=int, help="--watch: stop after this many refreshes")
    status.set_defaults(func=cmd_status)

    algos = (
        "ALGO",
        "what to {}: an algorithm id, gateway:GATEWAY for every algorithm of that gateway, or "
        "'*' for every algorithm",
    )
    dep = ("DEPLOYMENT", "the deployment's id (the deploymentId of its document)")
    for verb, text, (metavar, target_help) in (
        (
            "rollback",
            "emergency rollback: halt, cancel, allocation 0, previous version back",
            (algos[0], algos[1].format("roll back")),
        ),
        (
            "release",
            "lift the halt of algorithms after a rollback (a person's decision)",
            (algos[0], algos[1].format("release")),
        ),
        (
            "deploy",
            "start a deployment from its JSON document",
            ("FILE.json", "the deployment document (JSON, docs/deployments.md)"),
        ),
        ("approve", "a risk manager approves a paper deployment's promotion", dep),
        ("promote", "move a deployment to its next stage now", dep),
        ("pause", "stop a deployment's progress (limits still apply)", dep),
        ("resume", "let a paused deployment progress again", dep),
        ("abort", "stop a deployment and withdraw its capital", dep),
        ("halt", "halt a deployment's algorithm (emergency rollback)", dep),
    ):
        p = sub.add_parser(
            verb,
            help=text,
            description=f"{text[0].upper()}{text[1:]}. A request signed with your operator key "
            "to the running daemon, recorded in its audit log; exit status 0 done, 1 refused or "
            "failed, 2 usage, "
            + (
                ""
                if verb in ("rollback", "release")
                else "3 not applied by the gateway in --wait, "
            )
            + "4 waiting for a second operator (docs/operations.md).",
        )
        p.add_argument("target", metavar=metavar, help=target_help)
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

    rp = sub.add_parser(
        "replay",
        help="run a deployment over recorded events (JSON lines)",
        description="Run a deployment's policy over recorded events offline, through the same "
        "code as the daemon, and print the timeline of its decisions.",
    )
    rp.add_argument(
        "deployment", metavar="DEPLOYMENT.json", help="the deployment document to replay (JSON)"
    )
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
    audit.description = (
        "Read and check the tamper-evident, hash-chained audit log in the daemon's state store "
        "(docs/audit.md). Both actions open the store read-only: safe beside the running daemon."
    )
    audit_sub = audit.add_subparsers(
        dest="audit_command", required=True, metavar="ACTION", help="what to do with the log"
    )
    state_db_help = (
        "the state store (same as --db; default: <data_dir>/rampart.db of the configuration)"
    )
    verify = audit_sub.add_parser(
        "verify",
        help="check the hash chain of the audit log",
        description="Check the hash chain of the audit log in the state store against its head "
        "row and the head file beside it. Exit status 0 intact, 1 tampered with or behind its "
        "head file, 2 usage error, 3 the store cannot be read.",
    )
    verify.add_argument("state_db", nargs="?", metavar="STATE_DB", help=state_db_help)
    verify.add_argument("--db", metavar="STATE_DB", help="the state store (same as STATE_DB)")
    verify.add_argument("-c", "--config", help=config_help)
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=cmd_audit_verify)

    alog = audit_sub.add_parser(
        "log",
        help="print the audit log (--follow: as it grows)",
        description="Print the audit log from the state store, oldest first: one line per "
        "record (UTC time, seq, kind, actor, a summary of its payload), or JSON lines. With "
        "--follow, keep printing new records as the daemon appends them, until interrupted. "
        "Exit status 0, 2 usage error, 3 the store cannot be read.",
    )
    alog.add_argument("state_db", nargs="?", metavar="STATE_DB", help=state_db_help)
    alog.add_argument("--db", metavar="STATE_DB", help="the state store (same as STATE_DB)")
    alog.add_argument("-c", "--config", help=config_help)
    alog.add_argument(
        "--algo",
        metavar="ALGO",
        help="only records that concern this algorithm (naming it, a deployment of it, or all "
        "algorithms)",
    )
    alog.add_argument("--limit", type=int, metavar="N", help="only the newest N records")
    alog.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new records (like tail -f)"
    )
    alog.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="--follow: how often to look for new records (default: %(default)s)",
    )
    alog.add_argument(
        "--json", action="store_true", help="one JSON object per record (docs/audit.md)"
    )
    alog.set_defaults(func=cmd_audit_log)

    bk = sub.add_parser(
        "backup",
        help="a consistent, verified copy of the state store (safe while it runs)",
        description="Write a consistent copy of the state store and verify its audit log; safe "
        "while the daemon runs. Exit status 0 done, 1 failed, 2 usage.",
    )
    bk.add_argument("dest", metavar="DEST", help="file to write, or a directory to write into")
    bk.add_argument("--db", help="state store path (default: <data_dir>/rampart.db)")
    bk.add_argument("-c", "--config", help=config_help)
    bk.add_argument("--json", action="store_true", help="print the result as JSON")
    bk.set_defaults(func=cmd_backup)

    rs = sub.add_parser(
        "restore",
        help="put a backup in place of the state store (the daemon must be stopped)",
        description="Put a backup written by `rampart backup` in place of the state store, "
        "keeping the store it replaces beside it; the daemon must be stopped. Exit status 0 "
        "done, 1 refused or failed, 2 usage.",
    )
    rs.add_argument("source", metavar="BACKUP", help="a file written by `rampart backup`")
    rs.add_argument("--db", help="state store path (default: <data_dir>/rampart.db)")
    rs.add_argument("-c", "--config", help=config_help)
    rs.add_argument("--operator", help=f"who is restoring (default: ${ENV_OPERATOR})")
    rs.add_argument("--reason", help="why (recorded in the audit log)")
    rs.add_argument("--json", action="store_true", help="print the result as JSON")
    rs.set_defaults(func=cmd_restore)
    _describe_all(parser)
    return parser


def _describe_all(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand without a description its one-line help as one, so that no
    `--help` page lacks one (tests/test_cli_polish.py checks descriptions and positionals)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if not sub.description and helps.get(name):
                    text = str(helps[name])
                    sub.description = f"{text[0].upper()}{text[1:]}."
                _describe_all(sub)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
