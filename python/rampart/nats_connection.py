"""How a Rampart process connects to NATS: the options every connection of the daemon (and the
tools that act like it) uses, and where the embedded server's URL is written."""

from __future__ import annotations

import ssl
from typing import Any, Final

from rampart.config import NatsConfig

# In data_dir: the URL of the embedded nats-server, for the CLI on the same host.
URL_FILE: Final = "nats.url"


def _seconds(cfg: NatsConfig) -> dict[str, float]:
    return {
        "connect_timeout": cfg.connect_timeout.total_seconds(),
        "ping_interval": cfg.ping_interval.total_seconds(),
        "reconnect_time_wait": cfg.reconnect_time_wait.total_seconds(),
    }


def tls_context(cfg: NatsConfig) -> ssl.SSLContext | None:
    """The TLS context of ``[nats.tls]`` (None when it is not configured)."""
    if cfg.tls is None:
        return None
    ctx = ssl.create_default_context(cafile=cfg.tls.ca_file)
    ctx.check_hostname = cfg.tls.verify_hostname
    if cfg.tls.cert_file:
        ctx.load_cert_chain(cfg.tls.cert_file, cfg.tls.key_file)
    return ctx


def connect_options(cfg: NatsConfig, servers: list[str]) -> dict[str, Any]:
    """nats-py connect() options for a risk process.

    A dead link is noticed within ``ping_interval x (max_outstanding_pings + 1)``; reconnects are
    retried forever; ``pending_size=0`` disables the reconnect buffer, so nothing published while
    disconnected is replayed later (a stale command must never arrive late).
    """
    opts: dict[str, Any] = {
        "servers": servers,
        "name": cfg.name,
        "max_outstanding_pings": cfg.max_outstanding_pings,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "pending_size": 0,
        "inbox_prefix": cfg.inbox_prefix,
        **_seconds(cfg),
    }
    if cfg.user is not None:
        opts["user"] = cfg.user
        opts["password"] = cfg.password
    if cfg.token is not None:
        opts["token"] = cfg.token
    if cfg.nkeys_seed is not None:
        opts["nkeys_seed"] = cfg.nkeys_seed
    if cfg.credentials is not None:
        opts["user_credentials"] = cfg.credentials
    tls = tls_context(cfg)
    if tls is not None:
        opts["tls"] = tls
    return opts
