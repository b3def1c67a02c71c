"""Verified operators: who sent a control request, and whether they may (docs/security.md,
"Operators").

A control request is signed with its operator's NKEY, exactly as Rampart signs its own
commands (``Rampart-Key``, ``Rampart-Sig`` over ``rampart-sig-v1\\n<subject>\\n<body>``, so a
request for one verb cannot be replayed as another). The daemon admits it only when

1. the key is a configured operator's (or the host's local admin key) and the signature holds;
2. its ``ts`` is within ``control.replay_window`` of the daemon's clock, not before the daemon
   started (a nonce seen by an earlier run is not remembered), and its ``nonce`` is unseen;
3. the operator's role may use the verb (``ROLE_FOR``);
4. for a verb under the two-person rule, a second, distinct key asks for the same thing within
   ``control.two_person_window`` (the first request is recorded and answered ``pending``).

Anything else is refused with a reason; the daemon alerts on the refusals (``Refusal.alert``).
The audit log records the verified identity, ``name <KEY>``, never a name from the body.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import msgspec

from rampart._core import SigningKey
from rampart.config import (
    LOCAL_ADMIN,
    ROLE_FOR,
    ROLE_RANK,
    ControlConfig,
    DaemonConfig,
    OperatorRole,
    ns,
)
from rampart.protocol import ControlRequest, ControlVerb, control_request_decoder, encoder
from rampart.signing import (
    KEY_DIR,
    KEY_HEADER,
    SIG_HEADER,
    SigningKeyError,
    Verifier,
    read_key,
    sign_headers,
)

__all__ = [
    "LOCAL_ADMIN_FILE",
    "ROLE_FOR",
    "ROLE_RANK",
    "ControlAuth",
    "Identity",
    "NoOperatorKeyError",
    "Pending",
    "Refusal",
    "local_admin_path",
    "new_request",
    "operator_key",
]

LOCAL_ADMIN_FILE: Final = "local-admin.nk"
NONCE_MIN: Final = 16
NONCE_MAX: Final = 64
# Requests one key may have admitted within the replay window; more are refused (never is a
# remembered nonce dropped early: that would let its request be replayed).
PER_KEY_CAP: Final = 1_000
# Requests one key may have waiting for a second operator.
PENDING_PER_KEY: Final = 16

RefusalKind = Literal[
    "unsigned",
    "unknown_key",
    "bad_signature",
    "malformed",
    "stale",
    "replayed",
    "flood",
    "role",
    "same_key",
    "two_person",
]


class Refusal(Exception):
    """A control request not carried out. ``alert``: whether it may be an attack (forged,
    replayed, out of role), as opposed to a mistake the sender can fix."""

    def __init__(self, kind: RefusalKind, message: str, who: Identity | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.who = who

    @property
    def alert(self) -> bool:
        return self.kind not in ("malformed", "same_key", "two_person")


@dataclass(frozen=True)
class Identity:
    name: str
    key: str
    role: OperatorRole

    @property
    def actor(self) -> str:
        """How the audit log names this operator: ``name <KEY>``."""
        return f"{self.name} <{self.key}>"

    def may(self, verb: ControlVerb) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[ROLE_FOR[verb]]


@dataclass(frozen=True)
class Pending:
    """A request waiting for its second operator."""

    first: Identity
    reason: str
    at: int  # daemon wall clock, ns
    message: str


def local_admin_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / KEY_DIR / LOCAL_ADMIN_FILE


class NoOperatorKeyError(RuntimeError):
    """The CLI has no key to sign a control request with; the message says what to give."""


def operator_key(explicit: str | None, config: DaemonConfig) -> SigningKey:
    """The key the CLI signs control requests with: ``explicit`` (--key or $RAMPART_KEY), else
    the configuration's ``control.key_file``, else this host's local admin key (on the daemon's
    host, when ``control.local_admin`` is on and this user may read it). Never the NATS login
    seed: a NATS server signs its login nonce with it, and a forged server could choose a nonce
    that is a control request."""
    chosen = explicit or config.control.key_file
    if chosen:
        return _read_operator_key(Path(chosen))
    local = local_admin_path(config.data_dir)
    if config.control.local_admin and local.exists():
        return _read_operator_key(local)
    where = (
        f", or run on the daemon's host (its {local} is the local admin key)"
        if config.control.local_admin
        else ""
    )
    raise NoOperatorKeyError(
        "no operator key to sign with: pass --key FILE (your NKEY seed; `rampart key --new "
        "FILE` makes one, and its public key goes into the daemon's [[control.operators]]), "
        f"set $RAMPART_KEY or `control.key_file`{where}"
    )


def _read_operator_key(path: Path) -> SigningKey:
    try:
        return read_key(path)
    except OSError as e:
        raise NoOperatorKeyError(f"operator key {path}: {e.strerror or e}") from None
    except SigningKeyError as e:
        raise NoOperatorKeyError(str(e)) from None


def new_request(
    key: SigningKey,
    subject: str,
    target: str,
    *,
    reason: str = "",
    document: dict[str, object] | None = None,
    ts: int | None = None,
    nonce: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A signed control request: its body and headers, for ``subject``
    (``Subjects.control(verb)``)."""
    import secrets

    ctl = ControlRequest(
        target=target,
        ts=time.time_ns() if ts is None else ts,
        nonce=secrets.token_urlsafe(18) if nonce is None else nonce,
        reason=reason,
        document=document,
    )
    body = encoder.encode(ctl)
    return body, sign_headers(key, subject, body)


class ControlAuth:
    """Admits control requests (the module's rules). ``clock``: the daemon's wall clock, ns."""

    def __init__(
        self,
        config: ControlConfig,
        *,
        local_admin: str | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        ops = [Identity(o.name, o.key, o.role) for o in config.operators]
        if local_admin is not None:
            ops.append(Identity(LOCAL_ADMIN, local_admin, "admin"))
        self.operators: dict[str, Identity] = {o.key: o for o in ops}
        self._verifier = Verifier(self.operators) if self.operators else None
        self.window = ns(config.replay_window)
        self.two_person: frozenset[ControlVerb] = frozenset(config.two_person)
        self.two_person_window = ns(config.two_person_window)
        self.clock = clock
        self._high = clock()  # the latest reading of the clock
        # nonce -> (ts, key), in arrival order; how many each key has in there
        self._nonces: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self._per_key: dict[str, int] = {}
        self._pending: dict[tuple[str, str, str], Pending] = {}

    def admit(
        self, verb: ControlVerb, subject: str, body: bytes, headers: Mapping[str, str] | None
    ) -> tuple[Identity, ControlRequest]:
        """Who sent this request, and the request; ``Refusal`` when it is not to be carried
        out (rules 1-3 of the module)."""
        key = (headers or {}).get(KEY_HEADER)
        if key is None or (headers or {}).get(SIG_HEADER) is None:
            raise Refusal(
                "unsigned",
                "unsigned control request: requests must be signed with an operator's key "
                "(the `rampart` CLI does it: --key FILE; docs/security.md, Operators)",
            )
        who = self.operators.get(key)
        if who is None or self._verifier is None:
            raise Refusal(
                "unknown_key",
                f"signed by a key this daemon does not know ({key[:60]}): add it to "
                "[[control.operators]] with a role",
            )
        why = self._verifier.check(subject, body, headers)
        if why is not None:  # not verified: who it claims to be is named, never trusted
            raise Refusal("bad_signature", f"signature refused: {why} (claims {who.actor})")
        try:
            ctl = control_request_decoder.decode(body)
        except msgspec.DecodeError as e:
            raise Refusal("malformed", f"bad control request: {e}", who) from None
        self._check_fresh(ctl, who)
        if not who.may(verb):  # before its nonce is kept: a viewer cannot fill the memory
            raise Refusal(
                "role",
                f"{who.name} is a {who.role}: `{verb}` needs the role {ROLE_FOR[verb]} or "
                "higher (docs/security.md, Operators)",
                who,
            )
        self.remember(ctl, who)
        return who, ctl

    def _check_fresh(self, ctl: ControlRequest, who: Identity) -> None:
        now = self.clock()
        self._high = max(self._high, now)
        if not NONCE_MIN <= len(ctl.nonce) <= NONCE_MAX:
            raise Refusal("malformed", f"`nonce` must be {NONCE_MIN}-{NONCE_MAX} characters", who)
        skew = ctl.ts - now
        if abs(skew) > self.window or ctl.ts < self._high - self.window:
            side = "ahead of" if skew > 0 else "behind"
            raise Refusal(
                "stale",
                f"request stamped {abs(skew) / 1e9:.1f} s {side} the daemon's clock (window "
                f"{self.window / 1e9:g} s): a replay, or a clock to fix (NTP) on one side",
                who,
            )
        # forgotten only once older than the window behind the latest clock reading: a clock
        # stepped back does not bring a forgotten request back into the window
        self._forget(self._high - self.window)
        if ctl.nonce in self._nonces:
            raise Refusal("replayed", f"replayed request (nonce {ctl.nonce!r} seen before)", who)
        if self._per_key.get(who.key, 0) >= PER_KEY_CAP:
            raise Refusal(
                "flood",
                f"{who.name} sent more than {PER_KEY_CAP} requests within "
                f"{self.window / 1e9:g} s: refused until they age out",
                who,
            )

    def remember(self, ctl: ControlRequest, who: Identity) -> None:
        """Note an admitted request's nonce (refused as a replay from now on)."""
        self._nonces[ctl.nonce] = (ctl.ts, who.key)
        self._per_key[who.key] = self._per_key.get(who.key, 0) + 1

    def load(self, seen: Iterable[tuple[str, int, str]]) -> None:
        """The nonces an earlier run admitted, ``(nonce, ts, key)`` (the daemon keeps them in
        its store): replays across a restart are refused too."""
        for nonce, ts, key in sorted(seen, key=lambda x: x[1]):
            if nonce not in self._nonces:
                self._nonces[nonce] = (ts, key)
                self._per_key[key] = self._per_key.get(key, 0) + 1

    def horizon(self) -> int:
        """Nonces stamped before this may be forgotten (by the store too)."""
        return self._high - self.window

    def _forget(self, before: int) -> None:
        nonces = self._nonces
        while nonces:
            nonce, (ts, key) = next(iter(nonces.items()))
            if ts >= before:
                # arrival order, not ts order: an old ts behind a newer one waits its turn,
                # which only keeps it longer
                return
            del nonces[nonce]
            left = self._per_key[key] - 1
            if left:
                self._per_key[key] = left
            else:
                del self._per_key[key]

    def second(
        self, verb: ControlVerb, who: Identity, ctl: ControlRequest
    ) -> tuple[str, str] | Pending:
        """Rule 4: the actor and reason to act with, or the request now pending. A verb under
        the two-person rule acts when ``who`` confirms a distinct operator's pending request for
        the same thing (same verb, target and document): the actor names both, first the one
        who asked. Other verbs act at once, as ``who``."""
        if verb not in self.two_person:
            return who.actor, ctl.reason
        if who.name == LOCAL_ADMIN:
            raise Refusal(
                "two_person",
                f"`{verb}` needs two operators' own keys (two-person rule); the host's local "
                "admin key is nobody's: sign with yours (--key)",
                who,
            )
        now = self.clock()
        for k, p in list(self._pending.items()):
            if now - p.at > self.two_person_window:
                del self._pending[k]
        doc = encoder.encode(ctl.document) if ctl.document is not None else b""
        key = (verb, ctl.target, hashlib.sha256(doc).hexdigest())
        pending = self._pending.get(key)
        if pending is None:
            if sum(p.first.key == who.key for p in self._pending.values()) >= PENDING_PER_KEY:
                raise Refusal(
                    "two_person",
                    f"{who.name} has {PENDING_PER_KEY} requests waiting for a second operator "
                    "already: let them be confirmed or expire",
                    who,
                )
            minutes = self.two_person_window / 60e9
            p = self._pending[key] = Pending(
                who,
                ctl.reason,
                now,
                f"{verb} {ctl.target}: recorded for {who.name}; a second operator must send "
                f"the same within {minutes:g} min (two-person rule)",
            )
            return p
        if pending.first.key == who.key:
            raise Refusal(
                "same_key",
                f"{verb} {ctl.target} is already waiting for a second operator: the same key "
                "cannot be both (two-person rule)",
                who,
            )
        del self._pending[key]
        reasons = [r for r in dict.fromkeys((pending.reason, ctl.reason)) if r]
        return f"{pending.first.actor} + {who.actor}", "; ".join(reasons)
