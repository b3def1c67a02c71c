"""``rampart record``: the events on the bus, into a file ``rampart replay`` reads.

The recorder subscribes to market data, fills, order events and gateways' batches (by default
``<p>.md.>``, ``<p>.fills.>``, ``<p>.orders.>`` and ``<p>.batch.*``) on core NATS and writes each
event as one JSON line in the core's format (docs/events.md), as it arrived: a batch is written
as its events, one line each, in order. Each line is flushed to the operating system as it is
written, so a crash of the recorder loses at most the line being written.

What is written is what the daemon would take: a message the daemon would refuse before looking
at its numbers is skipped and counted by reason: ``oversize`` (beyond ``ingest.max_payload_bytes``,
``ingest.max_batch_bytes``), ``decode`` (not an event), ``wrong_subject`` (an event on a subject
that may not carry it, or outside the prefix), ``wrong_gateway`` (a fill or order event whose
``algo`` is not its subject's, or from another gateway than the configuration's for its
algorithm). The core's own decoder decides, so a line the recorder writes is one the core
decodes. Refusals that depend on the daemon's state or configuration (an unknown
algorithm, a bad price, an event out of order) are recorded: ``rampart replay`` refuses them
the same way and shows them in its timeline.

Fills and order events are durable: gateways publish them to JetStream (docs/protocol.md), and
a JetStream publish is also delivered to core subscribers of its subject, which is what the
recorder sees. So it also sees a gateway's retry of a publish whose ack was lost, which the
stream stores once: a message with a ``Nats-Msg-Id`` seen before (among the last
:data:`SEEN_IDS`) is counted as a duplicate and not written again. What it does not see: events
published while it is disconnected (the stream has them; the recorder counts disconnections and
says so) and messages NATS dropped because it could not keep up (counted, ``slow consumer``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import SlowConsumerError

from rampart._core import Engine, InvalidEventError
from rampart.config import DaemonConfig, NatsConfig
from rampart.nats_auth import embedded_login
from rampart.nats_connection import connect_options
from rampart.protocol import DEFAULT_PREFIX, Subjects
from rampart.status import DaemonLink, NoDaemonError, resolve_servers

# Refusals the recorder applies itself (the daemon refuses these before anything else): the rest
# depend on the daemon's state and are left to the replay.
SKIPPED_REASONS: Final = frozenset({"oversize", "decode", "wrong_subject", "wrong_gateway"})
# How many Nats-Msg-Ids the recorder remembers to drop retried publishes.
SEEN_IDS: Final = 100_000
DEFAULT_MAX_PAYLOAD: Final = 16 * 1024
DEFAULT_MAX_BATCH: Final = 256 * 1024
MSG_ID: Final = "Nats-Msg-Id"
# The embedded server's login with the recorder's permissions (rampart.nats_auth.roles).
RECORDER_ROLE: Final = "recorder"


class _Head(msgspec.Struct):
    """The fields of an event the recorder reads (the core has decoded it already)."""

    type: str
    algo: str | None = None


_head = msgspec.json.Decoder(_Head)
_items = msgspec.json.Decoder(list[msgspec.Raw])


@dataclass(frozen=True)
class Expanded:
    """What one NATS message gives: ``lines`` (one event each, no newline) and their ``kinds``
    (quote, mark, fill, order), and a reason for each message or batch item skipped."""

    lines: list[bytes] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def event_lines(
    subject: str,
    data: bytes,
    *,
    prefix: str = DEFAULT_PREFIX,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD,
    max_batch_bytes: int = DEFAULT_MAX_BATCH,
    gateways: Mapping[str, str] | None = None,
) -> Expanded:
    """The JSON lines of the message ``data`` received on ``subject``: one for an event, one per
    event for a batch on ``<prefix>.batch.<gateway>``; nothing (and the reason) for what the
    daemon would refuse as ``oversize``, ``decode``, ``wrong_subject`` or ``wrong_gateway``.
    ``gateways`` (algorithm id -> the gateway that runs it, the configuration's): an event of
    one of those algorithms from another gateway is ``wrong_gateway``.

    Pure: a fresh core engine (no algorithms, no clock) per call decides whether the event
    decodes and may arrive on the subject, the checks the core makes first."""
    gateways = gateways or {}
    if subject.startswith(f"{prefix}.batch."):
        return _batch(subject, data, prefix, max_batch_bytes, gateways)
    if len(data) > max_payload_bytes:
        return Expanded(skipped=["oversize"])
    try:
        Engine(subject_prefix=prefix).ingest_msg(subject, data)
    except InvalidEventError as e:
        if e.reason in SKIPPED_REASONS:
            return Expanded(skipped=[e.reason])
    head = _head.decode(data)
    if head.type in ("fill", "order"):
        # <prefix>.fills|orders.<gateway>.<algo>: an algorithm id may hold dots
        _, gateway, algo = subject[len(prefix) + 1 :].split(".", 2)
        if head.algo != algo or gateways.get(algo, gateway) != gateway:
            return Expanded(skipped=["wrong_gateway"])
    return Expanded(lines=[_line(data)], kinds=[head.type])


def _batch(
    subject: str, data: bytes, prefix: str, limit: int, gateways: Mapping[str, str]
) -> Expanded:
    if len(data) > limit:
        return Expanded(skipped=["oversize"])
    try:
        result = Engine(subject_prefix=prefix).ingest_batch(subject, data)
        items = _items.decode(data)
    except InvalidEventError as e:  # not an array, or not a batch subject
        return Expanded(skipped=[e.reason])
    except msgspec.DecodeError:
        return Expanded(skipped=["decode"])
    refused = {i: reason for i, reason, _ in result.errors if reason in SKIPPED_REASONS}
    gateway = subject[len(prefix) + len(".batch.") :]
    out = Expanded()
    for i, item in enumerate(items):
        if i in refused:
            out.skipped.append(refused[i])
            continue
        raw = bytes(item)
        head = _head.decode(raw)
        if head.algo is not None and gateways.get(head.algo, gateway) != gateway:
            out.skipped.append("wrong_gateway")
            continue
        out.lines.append(_line(raw))
        out.kinds.append(head.type)
    return out


def _line(raw: bytes) -> bytes:
    """The event as received, on one line (JSON allows line breaks only between tokens)."""
    raw = raw.strip()
    if b"\n" in raw or b"\r" in raw:
        raw = msgspec.json.format(raw, indent=-1)
    return raw


# ---- the recorder ---------------------------------------------------------------------------


@dataclass
class RecordStats:
    messages: int = 0
    events: Counter[str] = field(default_factory=Counter)  # written, by kind
    skipped: Counter[str] = field(default_factory=Counter)  # by reason
    duplicates: int = 0  # retried publishes (a Nats-Msg-Id seen before), not written again
    dropped: int = 0  # NATS dropped them: the recorder did not keep up (slow consumer)
    disconnects: int = 0

    @property
    def written(self) -> int:
        return sum(self.events.values())


class Recorder:
    """Writes the events of NATS messages to ``out``, one JSON line each, flushed per line;
    stops taking messages once ``count`` events are written (``full``)."""

    def __init__(
        self,
        out: BinaryIO,
        *,
        prefix: str = DEFAULT_PREFIX,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD,
        max_batch_bytes: int = DEFAULT_MAX_BATCH,
        count: int | None = None,
        seen_ids: int = SEEN_IDS,
        gateways: Mapping[str, str] | None = None,
    ) -> None:
        self.out = out
        self.gateways = dict(gateways or {})
        self.prefix = prefix
        self.max_payload_bytes = max_payload_bytes
        self.max_batch_bytes = max_batch_bytes
        self.count = count
        self.stats = RecordStats()
        self._seen: dict[str, None] = {}  # insertion-ordered: the oldest is evicted first
        self._seen_max = seen_ids

    @property
    def full(self) -> bool:
        return self.count is not None and self.stats.written >= self.count

    def add(self, subject: str, data: bytes, msg_id: str | None = None) -> int:
        """Record one message; the number of events written."""
        if self.full:
            return 0
        stats = self.stats
        stats.messages += 1
        if msg_id:
            if msg_id in self._seen:
                stats.duplicates += 1
                return 0
            self._seen[msg_id] = None
            if len(self._seen) > self._seen_max:
                del self._seen[next(iter(self._seen))]
        found = event_lines(
            subject,
            data,
            prefix=self.prefix,
            max_payload_bytes=self.max_payload_bytes,
            max_batch_bytes=self.max_batch_bytes,
            gateways=self.gateways,
        )
        stats.skipped.update(found.skipped)
        written = 0
        for line, kind in zip(found.lines, found.kinds, strict=True):
            if self.full:
                break
            self.out.write(line + b"\n")
            self.out.flush()
            stats.events[kind] += 1
            written += 1
        return written


def format_stats(stats: RecordStats, path: str, seconds: float) -> str:
    def counts(c: Counter[str]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(c.items()))

    lines = [
        f"recorded {stats.written} events into {path} in {seconds:.1f}s "
        f"({stats.messages} messages)" + (f": {counts(stats.events)}" if stats.events else "")
    ]
    skipped = sum(stats.skipped.values())
    lines.append(f"skipped {skipped}" + (f": {counts(stats.skipped)}" if skipped else ""))
    if stats.duplicates:
        lines.append(
            f"duplicates {stats.duplicates}: retried publishes (a Nats-Msg-Id seen before), "
            "written once"
        )
    if stats.dropped:
        lines.append(
            f"WARNING: NATS dropped {stats.dropped} messages the recorder did not take in time "
            "(slow consumer): the file misses them"
        )
    if stats.disconnects:
        lines.append(
            f"WARNING: the connection to NATS was lost {stats.disconnects} time(s): events "
            "published meanwhile are not in the file"
        )
    return "\n".join(lines)


# ---- the command ----------------------------------------------------------------------------


def recorder_link(flag: str | None, config: DaemonConfig) -> DaemonLink:
    """Where to record from and how to log in: as ``resolve_servers`` (--servers,
    $RAMPART_NATS_URL, the configuration, the embedded server's URL file), except that on the
    embedded server, with no credentials configured, the login is the ``recorder`` role's
    (the ``operator`` role may not subscribe to events)."""
    link = resolve_servers(flag, config)
    operator = embedded_login(config.data_dir, "operator")
    login = embedded_login(config.data_dir, RECORDER_ROLE)
    if operator is None or login is None or link.nats.nkeys_seed != str(operator[0]):
        return link
    seed, inbox = login
    nats_cfg: NatsConfig = msgspec.structs.replace(
        link.nats, nkeys_seed=str(seed), inbox_prefix=inbox
    )
    return DaemonLink(link.servers, nats_cfg)


class _Connection:
    """The recorder's NATS connection: reconnects forever (counting the losses) and keeps
    what the server refused."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.nc = Client()
        self.refusals: deque[str] = deque(maxlen=10)  # the latest
        self.done = asyncio.Event()  # the recorder is full (--count)
        self.closing = False

    async def connect(self, link: DaemonLink) -> None:
        opts = connect_options(link.nats, link.servers)
        opts["name"] = f"{link.nats.name}-recorder"
        opts["connect_timeout"] = min(opts["connect_timeout"], 5.0)
        stats = self.recorder.stats

        async def on_error(e: Exception) -> None:
            if isinstance(e, SlowConsumerError):
                stats.dropped += 1
            else:
                self.refusals.append(str(e))

        async def on_disconnect() -> None:
            if self.closing:
                return
            stats.disconnects += 1
            print("rampart record: NATS connection lost; reconnecting", file=sys.stderr)

        async def on_reconnect() -> None:
            print("rampart record: NATS connection back", file=sys.stderr)

        # nats-py retries the first connection forever when it reconnects forever: bounded
        # here, a recorder pointed at the wrong place says so
        wait = opts["connect_timeout"] * max(len(link.servers), 1) + 1.0
        try:
            async with asyncio.timeout(wait):
                await self.nc.connect(
                    **opts,
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                )
        except Exception as e:
            self.closing = True
            with contextlib.suppress(Exception):
                await self.nc.close()
            why = str(e) or type(e).__name__
            if isinstance(e, TimeoutError):
                last = f" (last error: {self.refusals[-1]})" if self.refusals else ""
                why = f"no connection within {wait:g}s{last}"
            raise NoDaemonError(f"cannot reach NATS at {link}: {why}") from None

    async def subscribe(self, subjects: list[str], timeout: float) -> None:
        recorder = self.recorder

        async def on_msg(msg: Msg) -> None:
            headers = msg.headers
            recorder.add(msg.subject, msg.data, headers.get(MSG_ID) if headers else None)
            if recorder.full:
                self.done.set()

        for subject in subjects:
            # NATS's pending limits: a burst waits in memory rather than being dropped
            await self.nc.subscribe(
                subject, cb=on_msg, pending_msgs_limit=1_000_000, pending_bytes_limit=-1
            )
        await self.nc.flush(timeout=max(1, round(timeout)))
        denied = [r for r in self.refusals if "permissions violation" in r.lower()]
        if denied:
            raise NoDaemonError(
                f"NATS refused this user: {denied[0]} (the recorder needs to subscribe to the "
                "events: log in as the `recorder` role of `rampart nats-config`, "
                "docs/security.md)"
            )


def _open_out(path: Path, append: bool) -> BinaryIO:
    if not append:
        return path.open("xb")  # never overwrites a recording
    f = path.open("ab+")
    if f.tell() > 0:  # a recording that ended mid-line (a crash): start on a new line
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":
            f.write(b"\n")
    return f


async def _record(
    link: DaemonLink,
    subjects: list[str],
    recorder: Recorder,
    duration: float | None,
    stop: asyncio.Event,
) -> None:
    conn = _Connection(recorder)
    await conn.connect(link)
    try:
        await conn.subscribe(subjects, timeout=5.0)
        print(
            f"rampart record: recording {', '.join(subjects)} from {link} (Ctrl-C to stop)",
            file=sys.stderr,
        )
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(conn.done.wait())]
        try:
            await asyncio.wait(waits, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        conn.closing = True
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                await conn.nc.drain()  # what NATS delivered already is recorded too
    finally:
        conn.closing = True
        if not conn.nc.is_closed:
            await conn.nc.close()


def cmd_record(args: argparse.Namespace) -> int:
    """``rampart record``: see the module's docstring and docs/events.md, "Recording"."""
    from rampart.config import ConfigFileError, load_config_or_default

    if args.duration is not None and not args.duration > 0:
        print("rampart record: --duration must be > 0 seconds", file=sys.stderr)
        return 2
    if args.count is not None and args.count <= 0:
        print("rampart record: --count must be > 0", file=sys.stderr)
        return 2
    try:
        config = load_config_or_default(args.config)
        subj = Subjects(args.prefix or config.subject_prefix)
    except (ConfigFileError, ValueError, OSError) as e:
        print(f"rampart record: {e}", file=sys.stderr)
        return 2
    subjects = list(
        dict.fromkeys(
            args.subjects or [subj.market_all, subj.fills_all, subj.orders_all, subj.batch_all]
        )
    )
    for s in subjects:
        if not s.startswith(subj.prefix + "."):
            print(
                f"rampart record: {s} is not under the prefix {subj.prefix!r}: its events are "
                "skipped (wrong_subject)",
                file=sys.stderr,
            )
    try:
        link = recorder_link(args.servers, config)
    except NoDaemonError as e:
        print(f"rampart record: {e}", file=sys.stderr)
        return 1
    path = Path(args.out)
    try:
        out = _open_out(path, args.append)
    except FileExistsError:
        print(
            f"rampart record: {path} exists: give another --out, or --append to add to it",
            file=sys.stderr,
        )
        return 2
    except OSError as e:
        print(f"rampart record: cannot write {path}: {e.strerror or e}", file=sys.stderr)
        return 2
    recorder = Recorder(
        out,
        prefix=subj.prefix,
        max_payload_bytes=config.ingest.max_payload_bytes,
        max_batch_bytes=config.ingest.max_batch_bytes,
        count=args.count,
        gateways={a.id: a.gateway for a in config.algorithms},
    )

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await _record(link, subjects, recorder, args.duration, stop)
        except NoDaemonError as e:
            print(f"rampart record: {e}", file=sys.stderr)
            return 1
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return 0

    started = time.monotonic()
    with out:
        code = asyncio.run(main())
        out.flush()
        os.fsync(out.fileno())
    if code != 0:
        if not args.append and recorder.stats.messages == 0:
            path.unlink(missing_ok=True)  # nothing was recorded: leave no empty file behind
        return code
    print(format_stats(recorder.stats, str(path), time.monotonic() - started))
    return 0
