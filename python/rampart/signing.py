"""Rampart's signing key, and checking what claims to come from it (docs/protocol.md,
"Signatures").

Every command Rampart sends a gateway and every sidecar heartbeat carries two headers:
``Rampart-Key`` (the public NKEY of the key that signed it) and ``Rampart-Sig`` (base64url, no
padding, of the Ed25519 signature of ``b"rampart-sig-v1\\n" + subject + b"\\n" + body``). A
gateway trusts only the public keys it is configured with, so a process on the bus that can
publish on a gateway's command subject still cannot make it resume, raise an allocation or move
its epochs, nor keep its dead-man's switch from tripping.

The key is an NKEY user seed in ``<data_dir>/keys/rampart.nk`` (mode 0600, created at the first
start; ``[signing] seed_file`` puts it elsewhere), its public key beside it (``rampart.pub``: the
seed file's name ending ``.pub``) for the gateways' configuration. Signing and verifying are in
the Rust extension (``nkeys``, ``ed25519-dalek``).

A halt signed in advance is also *armed* (docs/protocol.md, "Armed halts"): its commitment,
SHA-256(reveal + signed bytes), goes to the gateway in a signed heartbeat, and the halt, sent with
``Rampart-Reveal``, is accepted by that one hash instead of an Ed25519 verification.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from rampart._core import (
    ArmedHalts,
    KeyRing,
    SigningKey,
    armed_commit,
    is_public_key,
    verify_message,
)

KEY_HEADER: Final = "Rampart-Key"
SIG_HEADER: Final = "Rampart-Sig"
REVEAL_HEADER: Final = "Rampart-Reveal"
# the most armed halts a gateway keeps (the oldest go first); one per algorithm is the norm
MAX_ARMED: Final = 65_536
KEY_DIR: Final = "keys"
SEED_FILE: Final = "rampart.nk"
PUBLIC_FILE: Final = "rampart.pub"

__all__ = [
    "KEY_HEADER",
    "REVEAL_HEADER",
    "SIG_HEADER",
    "SigningKey",
    "SigningKeyError",
    "Verifier",
    "armed_commit",
    "b64url",
    "load_or_create",
    "read_key",
    "read_public_key",
    "sign_headers",
    "verify_message",
    "write_private",
]


class SigningKeyError(RuntimeError):
    """The signing key cannot be read or created; the message says what to fix."""


def default_seed_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / KEY_DIR / SEED_FILE


def load_or_create(seed_path: str | os.PathLike[str]) -> SigningKey:
    """The key in ``seed_path``, created (mode 0600, never overwritten) when there is none; its
    public key is written beside it (the same name, ending ``.pub``)."""
    path = Path(seed_path)
    if path.suffix == ".pub":
        raise SigningKeyError(
            f"signing key {path}: a seed file must not end in .pub (its public key is written "
            "beside it, under that name)"
        )
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fresh = SigningKey.generate()
        key = fresh if write_private(path, fresh.seed() + "\n") else read_key(path)
        public = path.with_suffix(".pub")
        if not public.exists() or public.read_text().strip() != key.public_key:
            tmp = public.with_suffix(".tmp")
            tmp.write_text(key.public_key + "\n")
            tmp.replace(public)
    except OSError as e:
        raise SigningKeyError(
            f"signing key {path}: {e.strerror or e}: Rampart needs to read it (or create it in "
            "a directory it may write)"
        ) from e
    return key


def write_private(path: Path, text: str) -> bool:
    """Create ``path`` (mode 0600) holding ``text``, whole or not at all: written to a
    temporary file, fsynced, then linked into place (which fails if ``path`` exists: it is
    never overwritten). False if it existed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def read_key(path: Path) -> SigningKey:
    """A seed file's key; refused when others may read it."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SigningKeyError(
            f"signing key {path} is readable by others (mode {mode:o}): whoever reads it can "
            f"sign commands as Rampart; `chmod 600 {path}`, and replace the key if it leaked"
        )
    try:
        return SigningKey(path.read_text())
    except ValueError as e:
        raise SigningKeyError(f"signing key {path}: {e}") from None


def read_public_key(data_dir: str | os.PathLike[str]) -> str:
    """The public key a Rampart with this ``data_dir`` signs with (``keys/rampart.pub``): what a
    gateway on the same host trusts."""
    path = Path(data_dir) / KEY_DIR / PUBLIC_FILE
    key = path.read_text().strip()
    if not is_public_key(key):
        raise SigningKeyError(f"{path} does not hold an NKEY public key")
    return key


def sign_headers(key: SigningKey, subject: str, body: bytes) -> dict[str, str]:
    return {KEY_HEADER: key.public_key, SIG_HEADER: key.sign_message(subject, body)}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Verifier:
    """Checks a message's signature against the trusted public keys (more than one while a key
    is being rotated)."""

    def __init__(self, trusted_keys: Iterable[str]) -> None:
        keys = sorted(set(trusted_keys))
        bad = [k for k in keys if not is_public_key(k)]
        if bad:
            raise ValueError(f"not NKEY public keys: {', '.join(bad)}")
        if not keys:
            raise ValueError(
                "no trusted key: give the public key Rampart signs with (its "
                "<data_dir>/keys/rampart.pub, or `rampart status` shows it)"
            )
        self.trusted = frozenset(keys)
        self._ring = KeyRing(keys)
        # armed halts (docs/protocol.md, "Armed halts"): commitments learned from signed
        # heartbeats only, each accepted once by one SHA-256 in the extension
        self._armed = ArmedHalts(MAX_ARMED)
        self.armed_used = 0

    def arm(self, commits: Iterable[tuple[str, int]], now: int) -> None:
        """Keep the commitments of halts Rampart signed in advance (each ``(commit,
        valid_until)``, from a heartbeat whose signature was checked); forget the expired."""
        self._armed.arm(list(commits), now)

    @property
    def armed(self) -> int:
        """How many armed halts are held."""
        return len(self._armed)

    def check(self, subject: str, body: bytes, headers: Mapping[str, str] | None) -> str | None:
        """None when the message is signed by a trusted key, or is a halt Rampart armed (its
        commitment, announced in a signed heartbeat, matches: used once); else why not."""
        if not headers:
            return "unsigned"
        reveal = headers.get(REVEAL_HEADER)
        if reveal is not None and self._armed.take(reveal, subject, body):
            self.armed_used += 1
            return None
        # not armed here (this gateway restarted, the heartbeat was lost, used already): its
        # signature is checked as any message's
        key = headers.get(KEY_HEADER)
        sig = headers.get(SIG_HEADER)
        if key is None or sig is None:
            return "unsigned"
        if key not in self.trusted:
            return f"signed by an untrusted key {key[:12]}..."
        if not self._ring.verify(key, subject, body, sig):
            return "the signature does not match"
        return None
