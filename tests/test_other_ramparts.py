"""rampart.other_ramparts: another Rampart heard on this prefix, told apart from a copy of this
one (its key), at a bounded cost whatever anybody on the bus publishes."""

from __future__ import annotations

from rampart import other_ramparts
from rampart._core import SigningKey
from rampart.other_ramparts import OtherRamparts
from rampart.protocol import SidecarHeartbeat, Subjects, encoder
from rampart.signing import sign_headers

SUBJECT = Subjects().sidecar_heartbeat
S = 1_000_000_000


def beat(boot: str, key: SigningKey | None, ts: int = 2 * S) -> tuple[bytes, dict[str, str] | None]:
    data = encoder.encode(SidecarHeartbeat(daemon="x", ts=ts, boot=boot))
    return data, sign_headers(key, SUBJECT, data) if key is not None else None


def test_its_own_key_another_key_and_its_own_heartbeats() -> None:
    mine, theirs = SigningKey.generate(), SigningKey.generate()
    others = OtherRamparts("me", mine.public_key, started_at=S)
    assert others.on_heartbeat(SUBJECT, *beat("me", mine), now=S) is None
    other = others.on_heartbeat(SUBJECT, *beat("b1", theirs), now=S)
    assert other is not None and not other.same_key and other.key == theirs.public_key
    copy = others.on_heartbeat(SUBJECT, *beat("b2", mine), now=S)
    assert copy is not None and copy.same_key
    # a forgery claiming this key without its signature is another process, not a copy
    data, _ = beat("b3", None)
    forged = {"Rampart-Key": mine.public_key, "Rampart-Sig": "AAAA"}
    found = others.on_heartbeat(SUBJECT, data, forged, now=S)
    assert found is not None and not found.same_key
    assert [o.boot for o in others.status()] == ["b1", "b2", "b3"]


def test_a_flood_of_made_up_boots_costs_a_bounded_number_of_checks_and_one_alert() -> None:
    """Anyone on the bus can make up boots. Those that do not claim this Rampart's key cost no
    signature check; those that claim it are checked 64 a second, then sampled; one alert a
    minute whatever their number."""
    mine = SigningKey.generate()
    others = OtherRamparts("me", mine.public_key, started_at=S)
    heard = [others.on_heartbeat(SUBJECT, *beat(f"b{i}", None), now=S) for i in range(1000)]
    assert all(o is not None for o in heard) and len(others.status()) == other_ramparts.KEPT
    alerts = [others.alert_due(o) for o in heard if o is not None]
    assert alerts.count(True) == 1
    # the next second, an alert again only after ALERT_EVERY
    later = others.on_heartbeat(SUBJECT, *beat("late", None), now=2 * S)
    assert later is not None and not others.alert_due(later)
    last = others.on_heartbeat(SUBJECT, *beat("last", None), now=S + other_ramparts.ALERT_EVERY)
    assert last is not None and others.alert_due(last)


def test_forged_claims_of_its_key_cannot_hide_a_real_copy() -> None:
    """Found in review: 16 made-up boots at the start of every second used the whole budget of
    checks, and a real copy's heartbeats were never checked. Claims past the budget are
    sampled: with 200 forgeries a second ahead of it, the copy is found (each second it is
    checked with probability 64/201; not in 60 s: below 1e-9) at a bounded cost."""
    mine = SigningKey.generate()
    others = OtherRamparts("me", mine.public_key, started_at=S)
    checks = 0
    real_check = others._ours.check

    def counted(*args: object) -> str | None:
        nonlocal checks
        checks += 1
        return real_check(*args)  # type: ignore[arg-type]

    others._ours.check = counted  # type: ignore[assignment]
    forged = {"Rampart-Key": mine.public_key, "Rampart-Sig": "AAAA"}
    found = None
    for second in range(1, 61):
        now = second * S
        for i in range(200):
            data, _ = beat(f"f{second}-{i}", None, ts=now)
            others.on_heartbeat(SUBJECT, data, forged, now=now)
        copy = others.on_heartbeat(SUBJECT, *beat("copy", mine, ts=now), now=now)
        if copy is not None and copy.same_key:
            found = second
            break
    assert found is not None, "a real copy was never checked"
    assert checks <= found * 250, (checks, found)


def test_a_heartbeat_of_an_earlier_run_replayed_is_not_a_copy() -> None:
    """Found in review: every gateway receives Rampart's signed heartbeats; one recorded before
    a restart (another boot, this key) and replayed made the new run fail closed as if a copy
    of its data directory ran. Only a heartbeat stamped after this process started, and fresh,
    counts as a copy's; a replay is counted apart and changes nothing."""
    mine = SigningKey.generate()
    started = 100 * S
    others = OtherRamparts("me", mine.public_key, started_at=started)
    old = beat("earlier-run", mine, ts=started - 5 * S)
    assert others.on_heartbeat(SUBJECT, *old, now=started + S) is None
    assert others.replays == 1 and others.status() == []
    # a copy's heartbeat: after this start, fresh
    copy = others.on_heartbeat(SUBJECT, *beat("copy", mine, ts=started + S), now=started + S)
    assert copy is not None and copy.same_key
    # a heartbeat of this run's, long recorded and replayed much later: stale, a replay too
    late = beat("later", mine, ts=started + S)
    assert others.on_heartbeat(SUBJECT, *late, now=started + S + other_ramparts.FRESH + 1) is None
    assert others.replays == 2
