"""Least-privilege NATS users for a Rampart deployment (docs/security.md): an NKEY user per role
and the nats-server ``authorization`` block that lets each publish and subscribe only where its
job needs, with a private reply inbox each (``inbox_prefix``), so nobody reads another's replies.

``rampart nats-config --out DIR`` writes them for an external cluster: ``DIR/authorization.conf``
(include it in the server's configuration), one seed file per role (mode 0600: the seed is the
login) and one ``[nats]`` fragment per role to paste into its configuration. The server holds
only public keys.

The roles, for subject prefix ``p`` (the table in docs/security.md):

- ``daemon``: Rampart itself. Everything under ``p.`` (it serves status and control, sends
  commands and heartbeats, publishes alerts and breaches, consumes the events stream), the
  JetStream API (the events stream, the audit copy, the state bucket) and the services API.
- ``gateway-<id>``, one per configured gateway: publishes only its own fills, order events,
  batches and heartbeat, and receives only its own commands, Rampart's heartbeat and market data.
  It may answer the commands it receives (``allow_responses``) and nothing else.
- ``feed``: publishes market data, nothing else.
- ``operator``: status and the control verbs; alerts, breaches and connectivity events.
- ``viewer``: status, alerts and breaches; no control verb.
- ``recorder``: reads market data, fills, order events and batches (``rampart record``);
  publishes nothing.
- ``person-<name>``, one per ``[[control.operators]]`` entry: that person's own NATS login with
  the permissions of ``operator`` (``viewer`` for a viewer). A login key of its own, never the
  key they sign control requests with: a NATS server signs its login nonce with the login key,
  so a forged server could have a control request signed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from rampart._core import SigningKey
from rampart.config import DaemonConfig, person_login
from rampart.signing import read_key, write_private

__all__ = [
    "EMBEDDED_AUTH_DIR",
    "Role",
    "authorization",
    "embedded_login",
    "inbox_of",
    "roles",
    "write",
]

# In data_dir: the embedded nats-server's users (`rampart run` without [nats] servers)
EMBEDDED_AUTH_DIR = "nats-auth"


@dataclass(frozen=True)
class Role:
    name: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    # may publish a reply to a request it received (a gateway's command acks, the daemon's
    # status and control replies), whatever the reply subject
    responses: bool = False

    @property
    def inbox(self) -> str:
        return inbox_of(self.name)


def inbox_of(role: str) -> str:
    """A role's reply inbox prefix (a NATS token): ``_INBOX_<role>``."""
    return "_INBOX_" + role


def roles(config: DaemonConfig) -> list[Role]:
    s = config.subjects
    p = s.prefix
    daemon = Role(
        "daemon",
        publish=(f"{p}.>", "$JS.API.>", "$KV.>", "$SRV.>"),
        subscribe=(f"{p}.>", "$SRV.>"),
        responses=True,
    )
    gateways = [
        Role(
            f"gateway-{gw}",
            publish=(f"{p}.fills.{gw}.>", f"{p}.orders.{gw}.>", s.batch(gw), s.heartbeat(gw)),
            subscribe=(s.command(gw), s.sidecar_heartbeat, s.market_all),
            responses=True,
        )
        for gw in sorted({a.gateway for a in config.algorithms})
    ]
    feed = Role("feed", publish=(s.market_all,), subscribe=())
    operator = Role(
        "operator",
        publish=(f"{p}.ctl.>", f"{p}.status.>", "$SRV.>"),
        subscribe=(f"{p}.alert.>", f"{p}.breach.>", f"{p}.events.>"),
    )
    viewer = Role(
        "viewer",
        publish=(f"{p}.status.>", "$SRV.PING", "$SRV.INFO", "$SRV.STATS", "$SRV.*.>"),
        subscribe=(f"{p}.alert.>", f"{p}.breach.>"),
    )
    recorder = Role(
        "recorder",
        publish=(),
        subscribe=(s.market_all, s.fills_all, s.orders_all, s.batch_all),
    )
    people = [
        Role(
            person_login(op.name),
            publish=(viewer if op.role == "viewer" else operator).publish,
            subscribe=(viewer if op.role == "viewer" else operator).subscribe,
        )
        for op in config.control.operators
    ]
    return [daemon, *gateways, feed, operator, viewer, recorder, *people]


def _list(subjects: tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(x) for x in subjects) + "]"


def authorization(users: list[tuple[Role, str]]) -> str:
    """The nats-server ``authorization`` block for ``(role, public key)`` pairs: each user may
    subscribe to its own reply inbox besides its role's subjects; nothing else is allowed, and
    there is no anonymous user."""
    lines = [
        "# Written by `rampart nats-config`: one NKEY user per role, least privilege.",
        "authorization {",
        "  users = [",
    ]
    for role, key in users:
        subscribe = (*role.subscribe, f"{role.inbox}.>")
        responses = "\n        allow_responses: true" if role.responses else ""
        # an empty allow list is no restriction at all for nats-server: deny everything instead
        publish = f"allow: {_list(role.publish)}" if role.publish else 'deny: [">"]'
        lines += [
            f"    # {role.name} (replies to {role.inbox}.>)",
            "    {",
            f'      nkey: "{key}"',
            "      permissions: {",
            f"        publish: {{ {publish} }}",
            f"        subscribe: {{ allow: {_list(subscribe)} }}{responses}",
            "      }",
            "    }",
        ]
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def write(config: DaemonConfig, out: Path, servers: list[str]) -> list[Path]:
    """Generate a key per role (an existing seed file is kept) and write the authorization
    block, the seeds (0600) and each role's ``[nats]`` fragment into ``out``."""
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    written: list[Path] = []
    users: list[tuple[Role, str]] = []
    for role in roles(config):
        seed_path = out / f"{role.name}.nk"
        fresh = SigningKey.generate()
        new = write_private(seed_path, fresh.seed() + "\n")
        users.append((role, (fresh if new else read_key(seed_path)).public_key))
        seed_line = f"nkeys_seed = {json.dumps(str(seed_path.resolve()))}\n"
        written.append(seed_path)
        fragment = out / f"{role.name}.toml"
        fragment.write_text(
            f"# [nats] of the {role.name} role: paste into its configuration\n"
            "[nats]\n"
            + (f"servers = {json.dumps(servers)}\n" if servers else "")
            + seed_line
            + f'inbox_prefix = "{role.inbox}"\n'
        )
        written.append(fragment)
    auth = out / "authorization.conf"
    auth.write_text(authorization(users))
    written.append(auth)
    return written


def embedded_login(data_dir: str | os.PathLike[str], role: str) -> tuple[Path, str] | None:
    """The seed file and inbox prefix of ``role`` on the embedded server of ``data_dir`` (the
    CLI on the same host logs in as ``operator``), or None when there are none."""
    seed = Path(data_dir) / EMBEDDED_AUTH_DIR / f"{role}.nk"
    if not seed.exists():
        return None
    return seed, inbox_of(role)
