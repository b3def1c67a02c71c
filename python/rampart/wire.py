"""The wire path (docs/protocol.md, "The wire path"): NATS connections whose bytes Rust parses.

``WireSubscription``: the daemon's market data (``[ingest] wire = "rust"``). ``WireMessages``:
any subjects' messages handed back whole, for the gateway SDK's commands and Rampart's
heartbeats (``GatewayAgent(wire_servers=...)``). Both are a ``WireConnection``.

Market data comes on a NATS connection of its own, owned by the event loop as an
``asyncio.Protocol``: each chunk the socket gives is handed to the Rust core in one call
(``WireIngest.feed``), which parses the NATS frames, decodes the quotes and marks and applies
them, and returns only what Python must act on: breaches, refusals, PINGs to answer, INFO,
-ERR, and a stream that is not the protocol. nats-py stays for everything else (control,
status, JetStream, commands).

The connection keeps the semantics of the daemon's nats-py one: the same servers and
credentials (user/password, token, NKEY seed, .creds) and TLS (``[nats.tls]``, a ``tls://`` URL or
a server that requires it: the INFO in the clear, then the handshake, as nats-py), a PING
every ``nats.ping_interval`` with the link declared dead after ``max_outstanding_pings``
unanswered, and reconnection forever, every ``reconnect_time_wait``. Nothing is buffered in
Python: a consumer too slow is cut off by the server (-ERR 'Slow Consumer'), counted, and
reconnects.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, cast
from urllib.parse import unquote, urlsplit

from rampart import __version__
from rampart._core import Engine, Frames, WireFrames, WireIngest, WireResult
from rampart.config import NatsConfig
from rampart.nats_connection import tls_context

log = logging.getLogger("rampart.wire")

# the blocks of a .creds file (as nats-py and nsc read and write them)
_JWT = re.compile(rb"-+BEGIN NATS USER JWT-+\s*\n(.+?)\n\s*-+END NATS USER JWT-+", re.S)
_SEED = re.compile(rb"-+BEGIN USER NKEY SEED-+\s*\n(.+?)\n\s*-+END USER NKEY SEED-+", re.S)


class WireError(RuntimeError):
    """The wire path cannot connect as configured (credentials, TLS, the server refused)."""


def _read_creds(path: str) -> tuple[str, bytes]:
    """(user JWT, user seed) of a .creds file."""
    data = Path(path).read_bytes()
    jwt, seed = _JWT.search(data), _SEED.search(data)
    if jwt is None or seed is None:
        raise WireError(f"{path}: not a NATS .creds file (no user JWT and NKEY seed in it)")
    return jwt.group(1).strip().decode(), seed.group(1).strip()


def _read_seed(path: str) -> bytes:
    data = Path(path).read_bytes().strip()
    found = _SEED.search(data)  # a .creds file given as the seed works too
    return found.group(1).strip() if found else data


def _sign(seed: bytes, nonce: str) -> tuple[str, str]:
    """(public key, signature of ``nonce``) for an NKEY seed, as nats-py sends them."""
    import nkeys  # type: ignore[import-untyped]

    kp = nkeys.from_seed(bytearray(seed))
    try:
        return kp.public_key.decode(), base64.b64encode(kp.sign(nonce.encode())).decode()
    finally:
        kp.wipe()


def connect_fields(cfg: NatsConfig, info: dict[str, Any], url: str) -> dict[str, Any]:
    """The CONNECT options for ``cfg``'s credentials, after the server's ``info`` (its nonce),
    as nats-py would send them for the same configuration."""
    fields: dict[str, Any] = {
        "verbose": False,
        "pedantic": False,
        "lang": "python-rampart-wire",
        "version": __version__,
        "protocol": 1,
        "name": f"{cfg.name}-market-data",
        "echo": False,
        "headers": True,
    }
    nonce = info.get("nonce")
    if cfg.credentials is not None or cfg.nkeys_seed is not None:
        if not isinstance(nonce, str):
            raise WireError("the server sent no nonce to sign: it does not take NKEY logins")
        if cfg.credentials is not None:
            jwt, seed = _read_creds(cfg.credentials)
            fields["jwt"] = jwt
            fields["sig"] = _sign(seed, nonce)[1]
        else:
            assert cfg.nkeys_seed is not None
            fields["nkey"], fields["sig"] = _sign(_read_seed(cfg.nkeys_seed), nonce)
        if cfg.token is not None:
            fields["auth_token"] = cfg.token
    elif cfg.user is not None and cfg.password is not None:
        fields["user"], fields["pass"] = cfg.user, cfg.password
    elif cfg.token is not None:
        fields["auth_token"] = cfg.token
    else:
        parts = urlsplit(url)
        if parts.username is not None and parts.password is None:
            fields["auth_token"] = unquote(parts.username)
        elif parts.username is not None:
            fields["user"] = unquote(parts.username)
            fields["pass"] = unquote(parts.password or "")
    return fields


@dataclass
class WireStats:
    """The wire path's counters, shown in status (``daemon.wire``)."""

    connected: bool = False
    server: str | None = None
    tls: bool = False
    connects: int = 0
    disconnects: int = 0
    bytes: int = 0
    chunks: int = 0
    slow_consumer: int = 0
    protocol_errors: int = 0
    published: int = 0  # halts written on this connection (``publish``)
    refused: int = 0  # messages not handed on (WireMessages: bad subject or headers, unknown sid)
    last_error: str | None = None
    errors: list[str] = field(default_factory=list)


class _Parsed(Protocol):
    """What a parser returns for a chunk: the protocol's own frames (the rest is the owner's)."""

    pings: int
    pongs: int
    errors: list[str]
    infos: list[bytes]
    failed: tuple[str, str] | None


class _Parser(Protocol):
    def feed(self, data: bytes) -> _Parsed: ...
    def set_max_payload(self, max_payload: int) -> None: ...
    def set_sids(self, sids: int) -> None: ...


# The largest max_payload taken from a server's INFO (nats-server allows at most 64 MiB): an
# INFO is read before the login, so what it says bounds nothing we would buffer beyond this.
MAX_PAYLOAD_CAP: Final = 64 * 1024 * 1024
# What may wait unsent on the socket (PONGs to a server that never reads them, acks, halts)
# before the connection is given up as stuck.
MAX_WRITE_BUFFER: Final = 8 * 1024 * 1024


class _Protocol(asyncio.Protocol):
    """One TCP connection's bytes into its owner's parser; what the owner must act on to it."""

    def __init__(self, owner: WireConnection) -> None:
        self.owner = owner
        # a fresh parser per connection: a partial frame never outlives its connection
        self.parser = owner.new_parser()
        self.transport: asyncio.Transport | None = None
        self.info: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.outstanding = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses; they behave as one)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        result = self.parser.feed(data)  # applied: what it held must reach the owner
        try:
            stats = owner.stats
            stats.bytes += len(data)
            stats.chunks += 1
            transport = self.transport
            if result.pings and transport is not None:
                transport.write(b"PONG\r\n" * result.pings)
                if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
                    self._close("the server does not read what this connection writes")
            for raw in result.infos:
                self._on_info(raw)
            for text in result.errors:  # before the PONG: a refused login or SUB is not ready
                self._on_err(text)
            if result.pongs:
                self.outstanding = 0
                if not self.ready.done():
                    self.ready.set_result(None)
            if result.failed is not None:
                reason, text = result.failed
                stats.protocol_errors += 1
                self._close(f"the server's bytes are not the NATS protocol ({reason}: {text})")
        except Exception as e:  # never out of data_received: the chunk is delivered below
            log.exception("%s: reading a chunk failed", owner.name)
            self._close(f"reading a chunk failed: {type(e).__name__}: {e}")
        finally:
            owner.deliver(result)

    def _on_info(self, raw: bytes) -> None:
        try:
            info = json.loads(raw)
        except (ValueError, RecursionError):
            info = None
        if not isinstance(info, dict):
            self._close(f"an INFO that is not a JSON object: {raw[:200]!r}")
            return
        max_payload = info.get("max_payload")
        if type(max_payload) is int and max_payload > 0:
            self.parser.set_max_payload(min(max_payload, MAX_PAYLOAD_CAP))
        if not self.info.done():
            self.info.set_result(info)

    def _on_err(self, text: str) -> None:
        stats = self.owner.stats
        stats.last_error = text
        stats.errors = [*stats.errors[-9:], text]
        if "slow consumer" in text.lower():
            stats.slow_consumer += 1
        log.error("%s: the server says -ERR %s", self.owner.name, text)
        if not self.ready.done():
            self.ready.set_exception(WireError(f"the server refused the login: {text}"))

    def _close(self, why: str) -> None:
        log.error("%s: %s; closing it", self.owner.name, why)
        if not self.lost.done():
            self.lost.set_result(why)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        why = f"connection lost ({exc})" if exc else "connection closed"
        if not self.lost.done():
            self.lost.set_result(why)
        for fut in (self.info, self.ready):
            if not fut.done():
                fut.set_exception(WireError(why))
                fut.exception()  # retrieved: nobody may be waiting any more

    def ping(self) -> bool:
        """Send a PING; False when too many went unanswered (the link is dead)."""
        if self.transport is None or self.transport.is_closing():
            return False
        self.outstanding += 1  # as nats-py: dead when this one is past the maximum
        if self.outstanding > self.owner.cfg.max_outstanding_pings:
            return False
        self.transport.write(b"PING\r\n")
        return True


class WireConnection:
    """One NATS connection subscribed to ``subjects``, its bytes parsed in Rust
    (``new_parser``) and what they held handed on (``deliver``), kept up in the background:
    pings, reconnection forever. ``name`` says which in logs."""

    name = "wire connection"

    def __init__(self, cfg: NatsConfig, servers: list[str], subjects: list[str]) -> None:
        if not servers:
            raise WireError(f"{self.name}: no NATS server URL")
        self.cfg = cfg
        self.servers = servers
        self.subjects = subjects
        self.stats = WireStats()
        self._protocol: _Protocol | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # told when the link is lost (False, why) and back (True, the server): the daemon
        # alerts on it; not called for the first connection nor when closed on purpose
        self.on_link: Callable[[bool, str], None] | None = None

    def new_parser(self) -> _Parser:
        raise NotImplementedError

    def deliver(self, result: Any) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        """Connect and subscribe (raises ``WireError`` when no server takes the login), then
        keep the connection up in the background."""
        await self._connect_any()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        proto = self._protocol
        if proto is not None and proto.transport is not None:
            proto.transport.close()
        self.stats.connected = False

    def publish(
        self,
        subject: str,
        payload: bytes,
        reply: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> bool:
        """Write one message on this connection's socket now (no await, no flusher): the halts
        fired from the ingest path (``RollbackExecutor.fire_halt_direct``), a gateway's acks.
        False when the connection is not up. Header names and values must not hold CR or LF
        (Rampart's own: a key id, a base64url signature, a hex reveal)."""
        proto = self._protocol
        transport = proto.transport if proto is not None else None
        if transport is None or transport.is_closing() or not self.stats.connected:
            return False
        to = b" %s" % reply.encode() if reply else b""
        if headers:
            if any("\r" in x or "\n" in x for kv in headers.items() for x in kv):
                raise ValueError("a header with CR or LF in it")
            block = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            hdr = (block + "\r\n").encode()
            size = (len(hdr), len(hdr) + len(payload))
            frame = b"HPUB %s%s %d %d\r\n%s%s\r\n" % (subject.encode(), to, *size, hdr, payload)
        else:
            frame = b"PUB %s%s %d\r\n%s\r\n" % (subject.encode(), to, len(payload), payload)
        transport.write(frame)
        self.stats.published += 1
        return True

    async def _connect_any(self) -> None:
        errors = []
        for url in self.servers:
            try:
                await self._connect(url)
                return
            except TimeoutError:
                wait = self.cfg.connect_timeout.total_seconds()
                errors.append(f"{url}: no login within nats.connect_timeout ({wait:g}s)")
            except (OSError, WireError) as e:  # ssl.SSLError is an OSError
                errors.append(f"{url}: {e}")
            except Exception as e:  # a damaged seed or .creds file: say which, as a WireError
                errors.append(f"{url}: {type(e).__name__}: {e}")
        raise WireError(f"{self.name}: " + "; ".join(errors))

    async def _connect(self, url: str) -> None:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        host, port = parts.hostname or "127.0.0.1", parts.port or 4222
        loop = asyncio.get_running_loop()
        timeout = self.cfg.connect_timeout.total_seconds()
        proto = _Protocol(self)
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: proto, host, port)
            try:
                info = await proto.info
                if self.cfg.tls is not None or parts.scheme == "tls" or info.get("tls_required"):
                    # as nats-py does: the INFO in the clear, then TLS before the CONNECT
                    ctx = tls_context(self.cfg) or ssl.create_default_context()
                    assert proto.transport is not None
                    tls = await loop.start_tls(proto.transport, proto, ctx, server_hostname=host)
                    if tls is None:
                        raise WireError("the TLS handshake did not complete")
                    proto.transport = tls
                    # nothing sent in the clear after the INFO is read: a fresh parser
                    proto.parser = self.new_parser()
                    self.stats.tls = True
                connect = json.dumps(connect_fields(self.cfg, info, url), sort_keys=True)
                subs = "".join(f"SUB {s} {i}\r\n" for i, s in enumerate(self.subjects, 1))
                assert proto.transport is not None
                # a message is ours only once subscribed, and only for these sids
                proto.parser.set_sids(len(self.subjects))
                proto.transport.write(f"CONNECT {connect}\r\n{subs}PING\r\n".encode())
                await proto.ready
            except BaseException:
                if proto.transport is not None:
                    proto.transport.close()
                raise
        self._protocol = proto
        stats = self.stats
        stats.connected, stats.server = True, f"{host}:{port}"
        stats.connects += 1
        log.info("%s to %s:%d (the Rust wire path)", self.name, host, port)

    async def _run(self) -> None:
        """Ping while connected; reconnect, forever, when the link is lost or dead."""
        interval = self.cfg.ping_interval.total_seconds()
        wait = self.cfg.reconnect_time_wait.total_seconds()
        while not self._closing:
            proto = self._protocol
            if proto is not None:
                while True:
                    done, _ = await asyncio.wait({proto.lost}, timeout=interval)
                    if done:
                        why = proto.lost.result()
                        break
                    if not proto.ping():
                        why = "no PONG to the last PINGs: the link is dead"
                        if proto.transport is not None:
                            proto.transport.close()
                        break
                self.stats.connected = False
                self.stats.disconnects += 1
                self._protocol = None
                log.warning("%s: %s; reconnecting", self.name, why)
                if not self._closing:
                    self._tell(False, why)
            await asyncio.sleep(wait)
            try:
                await self._connect_any()
            except (WireError, OSError, TimeoutError) as e:
                log.warning("%s; trying again in %.3gs", e, wait)
            except Exception:  # never the end of reconnecting
                log.exception("%s: reconnecting failed; trying again in %.3gs", self.name, wait)
            else:
                self._tell(True, self.stats.server or "?")

    def _tell(self, up: bool, what: str) -> None:
        if self.on_link is not None:
            try:
                self.on_link(up, what)
            except Exception:
                log.exception("%s: the link listener failed", self.name)


class _IngestParser:
    """``WireIngest`` bound to its engine and clock, as ``_Protocol`` calls a parser."""

    def __init__(self, owner: WireSubscription) -> None:
        self.ingest = WireIngest(max_event=owner.max_event, keep=owner.keep)
        self.engine = owner.engine
        self.wall_clock = owner.wall_clock

    def feed(self, data: bytes) -> WireResult:
        return self.ingest.feed(self.engine, data, self.wall_clock())

    def set_max_payload(self, max_payload: int) -> None:
        self.ingest.set_max_payload(max_payload)

    def set_sids(self, sids: int) -> None:
        self.ingest.set_sids(sids)


class WireSubscription(WireConnection):
    """The market-data subscription (``subject``) on its own connection, applied to
    ``engine`` in Rust; ``on_result`` gets every chunk's ingested count, breaches and
    refusals (synchronously, from ``data_received``)."""

    name = "market-data connection"

    def __init__(
        self,
        cfg: NatsConfig,
        servers: list[str],
        subject: str,
        engine: Engine,
        wall_clock: Callable[[], int],
        on_result: Callable[[WireResult], None],
        *,
        max_event: int,
        keep: int = 4096,
    ) -> None:
        super().__init__(cfg, servers, [subject])
        self.engine = engine
        self.wall_clock = wall_clock
        self.on_result = on_result
        self.max_event = max_event
        self.keep = keep

    def new_parser(self) -> _Parser:
        return _IngestParser(self)

    def deliver(self, result: WireResult) -> None:
        if result.ingested or result.breaches or result.refused:
            self.on_result(result)


@dataclass(frozen=True)
class WireMsg:
    """A message of a ``WireMessages`` connection, read as nats-py's ``Msg`` is."""

    subject: str
    reply: str
    data: bytes
    headers: dict[str, str] | None
    conn: WireConnection

    async def respond(self, data: bytes) -> None:
        """Publish ``data`` to the reply subject on the same connection (nothing without one)."""
        if self.reply and not self.conn.publish(self.reply, data):
            raise WireError(f"{self.conn.name}: down; the reply to {self.subject} is lost")


def parse_headers(block: bytes) -> dict[str, str]:
    """A NATS header block (``NATS/1.0[ status]\\r\\nName: value\\r\\n...``) as a dict, as
    nats-py reads one (names as sent, values stripped; a status line gives ``Status``)."""
    lines = block.split(b"\r\n")
    out: dict[str, str] = {}
    status = lines[0][len(b"NATS/1.0") :].strip()
    if status:
        out["Status"] = status[:3].decode("ascii", "replace")
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip():
            out[name.strip().decode("ascii", "replace")] = value.strip().decode("utf-8", "replace")
    return out


class WireMessages(WireConnection):
    """``subjects`` on a connection of their own, parsed in Rust; ``on_message`` gets each
    message (a ``WireMsg``) in order, synchronously from ``data_received``."""

    name = "command connection"

    def __init__(
        self,
        cfg: NatsConfig,
        servers: list[str],
        subjects: list[str],
        on_message: Callable[[WireMsg], None],
    ) -> None:
        super().__init__(cfg, servers, subjects)
        self.on_message = on_message

    def new_parser(self) -> _Parser:
        return WireFrames()

    def deliver(self, result: Frames) -> None:
        for subject, reason in result.refused:
            self.stats.refused += 1
            if self.stats.refused <= 10 or self.stats.refused % 1000 == 0:
                log.warning("%s: refused a message on %r: %s", self.name, subject[:200], reason)
        for subject, reply, headers, payload in result.messages:
            hdr = parse_headers(headers) if headers is not None else None
            self.on_message(WireMsg(subject, reply or "", payload, hdr, self))
