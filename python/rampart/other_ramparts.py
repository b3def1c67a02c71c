"""Another Rampart on this one's prefix, heard in the sidecar heartbeats (without ``[ha]``).

Two daemons with the same ``subject_prefix`` share the status and control endpoints (NATS
spreads the requests of one queue group between them: an operator's ``release`` goes to either),
and each commands the same gateways. One with another key is a misconfiguration whose commands
the gateways refuse: it is alerted and shown in status. One whose heartbeats carry a valid
signature of this Rampart's own key is a copy of its data directory running elsewhere: two
processes commanding the gateways with the trusted key, which nothing fences. That is a fault
Rampart cannot rule out, so it fails closed. (A forged heartbeat cannot carry that signature,
and one of this Rampart's own recorded before it started and replayed is refused by its stamp
(``FRESH``), so nobody on the bus can make a Rampart fail closed this way without its key.)
With ``[ha]`` the lease and the terms do this work (docs/ha.md).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Final

import msgspec

from rampart.protocol import OtherRampart, sidecar_heartbeat_decoder
from rampart.signing import KEY_HEADER, Verifier

# the other processes remembered (the most recently heard)
KEPT: Final = 16
# an alert about other processes at most this often (ns), whatever their number: anyone on the
# bus can make up heartbeats of new boots
ALERT_EVERY: Final = 60 * 1_000_000_000
# a heartbeat signed with this Rampart's key counts as a copy's only when stamped after this
# process started and at most this far (ns) from this host's clock: one recorded before a
# restart (every gateway receives them) and replayed is a replay, not a copy
FRESH: Final = 30 * 1_000_000_000
# signatures checked per second before sampling: a heartbeat of a boot not heard before that
# claims this Rampart's key costs an Ed25519 verification (one that does not claim it costs
# nothing, and a boot already heard is not checked again). Past it, each claim of the second is
# checked with probability VERIFY_PER_SECOND / claims so far: a flood of made-up boots cannot
# keep a real copy's heartbeats from ever being checked
VERIFY_PER_SECOND: Final = 64


class OtherRamparts:
    def __init__(self, boot: str, public_key: str, started_at: int) -> None:
        self.boot = boot
        self._own = f'"boot":"{boot}"'.encode()
        self.started_at = started_at
        self.replays = 0  # heartbeats of an earlier run of this Rampart, replayed
        self._ours = Verifier([public_key])
        self.heard: dict[str, OtherRampart] = {}  # by boot
        self._alerted_at: int | None = None
        self._second = 0
        self._claims = 0
        self._public_key = public_key
        self._random = random.Random()

    def on_heartbeat(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None, now: int
    ) -> OtherRampart | None:
        """A sidecar heartbeat on this prefix: the other process it came from, or None (this
        process's own, not a heartbeat at all, a replay of this Rampart's own from before it
        started, or not checked: too many new ones this second, it is checked when it comes
        again)."""
        if self._own in data[:1024]:  # this process's own (its boot comes before its halts)
            return None
        try:
            hb = sidecar_heartbeat_decoder.decode(data)
        except msgspec.DecodeError:
            return None
        if hb.boot == self.boot:
            return None
        boot = hb.boot[:64]
        known = self.heard.pop(boot, None)
        key = headers.get(KEY_HEADER) if headers else None
        if known is not None:
            same_key = known.same_key
        elif key != self._public_key:
            same_key = False  # not even claimed: nothing to check
        else:
            if now // 1_000_000_000 != self._second:
                self._second, self._claims = now // 1_000_000_000, 0
            self._claims += 1
            if self._claims > VERIFY_PER_SECOND and (
                self._random.random() >= VERIFY_PER_SECOND / self._claims
            ):
                return None  # not checked this time: it comes again with the next heartbeat
            same_key = self._ours.check(subject, data, headers) is None
            if same_key and not (hb.ts > self.started_at and abs(now - hb.ts) <= FRESH):
                self.replays += 1  # signed by this Rampart, before it started: a replay
                return None
        other = OtherRampart(
            name=hb.daemon[:200],
            boot=boot,
            key=key[:64] if key else None,
            same_key=same_key,
            last_seen=now,
        )
        self.heard[boot] = other
        while len(self.heard) > KEPT:
            del self.heard[next(iter(self.heard))]
        return other

    def alert_due(self, other: OtherRampart) -> bool:
        """Is it time to alert (none in the last ``ALERT_EVERY``, for any other process)?"""
        last = self._alerted_at
        if last is not None and other.last_seen - last < ALERT_EVERY:
            return False
        self._alerted_at = other.last_seen
        return True

    def status(self) -> list[OtherRampart]:
        return list(self.heard.values())
