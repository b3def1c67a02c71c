"""The fleet view (``rampart status --fleet``, docs/ha.md): two shards on one real 3-node
cluster, found through ``$SRV`` discovery, with who leads each and who stands by; after a
kill -9 of a leader, its standby shows as the leader with the next term. And the view's own
judgement of what it finds (no leader, two leaders on one prefix, other services ignored)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
from cluster import NatsCluster
from ha_daemons import Daemon, cli, wait_for

from rampart.fleet import PING_TYPE, Instance, format_fleet, group, instance_of


def fleet(daemon: Daemon) -> tuple[int, list[dict[str, Any]]]:
    out = cli(daemon, "status", "--fleet", "--json")
    assert out.returncode in (0, 1), out.stdout + out.stderr
    views: list[dict[str, Any]] = json.loads(out.stdout)
    return out.returncode, views


def by_prefix(views: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {v["prefix"]: v for v in views}


def roles(view: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for i in view["instances"]:
        out.setdefault(i["role"], []).append(i["holder"])
    return out


def test_fleet_view_shows_each_shard_its_leader_and_standbys(tmp_path: Path) -> None:
    with NatsCluster(tmp_path / "cluster") as cluster:
        a = Daemon(tmp_path, "a", cluster.urls, shard="desk-a")
        b = Daemon(tmp_path, "b", cluster.urls, shard="desk-a")
        c = Daemon(
            tmp_path,
            "c",
            cluster.urls,
            shard="desk-b",
            algos=[("beta", "gw2"), ("gamma", "gw2")],
            top='subject_prefix = "deskb"\n',
        )
        try:
            a.start()
            wait_for(lambda: a.said("leads shard desk-a"), 60, "daemon a leading desk-a")
            b.start()
            c.start()
            wait_for(lambda: b.said("standby for shard desk-a"), 60, "daemon b standing by")
            wait_for(lambda: c.said("leads shard desk-b"), 60, "daemon c leading desk-b")
            assert a.proc is not None and b.proc is not None and c.proc is not None

            def settled() -> bool:  # a standby's discovery answer starts just after its log line
                code, views = fleet(c)
                return code == 0 and sum(len(v["instances"]) for v in views) == 3

            wait_for(settled, 30, "three processes discovered")
            code, views = fleet(c)
            assert code == 0
            shards = by_prefix(views)
            assert set(shards) == {"rampart", "deskb"}, views
            desk_a, desk_b = shards["rampart"], shards["deskb"]
            assert desk_a["shard"] == "desk-a" and desk_b["shard"] == "desk-b"
            (leader,) = roles(desk_a)["leader"]
            (standby,) = roles(desk_a)["standby"]
            assert f":{a.proc.pid}:" in leader and f":{b.proc.pid}:" in standby
            (leader_b,) = roles(desk_b)["leader"]
            assert f":{c.proc.pid}:" in leader_b and "standby" not in roles(desk_b)
            assert desk_a["algorithms"] == 1 and desk_b["algorithms"] == 2
            assert desk_a["ok"] and desk_b["ok"] and not desk_a["problems"]
            terms = {i["role"]: i["term"] for i in desk_a["instances"]}
            assert terms["leader"] == 1

            text = cli(a, "status", "--fleet")
            assert text.returncode == 0, text.stdout + text.stderr
            assert "desk-a" in text.stdout and "desk-b" in text.stdout
            assert "2 shard(s), 2 ok" in text.stdout
            assert f"desk-a: standby {standby}" in text.stdout

            # the leader of desk-a dies: its standby leads with the next term, and shows so
            a.proc.kill()
            a.proc.wait()
            wait_for(lambda: b.said("leads shard desk-a"), 30, "daemon b taking over")

            def b_leads() -> bool:
                _, views = fleet(c)
                desk = by_prefix(views).get("rampart")
                return desk is not None and [i["role"] for i in desk["instances"]] == ["leader"]

            wait_for(b_leads, 30, "the fleet view showing b as desk-a's only process")
            code, views = fleet(b)
            assert code == 0
            (only,) = by_prefix(views)["rampart"]["instances"]
            assert f":{b.proc.pid}:" in only["holder"] and only["term"] == 2
        finally:
            for d in (a, b, c):
                d.stop()


def test_fleet_view_without_any_rampart_says_so(tmp_path: Path) -> None:
    with NatsCluster(tmp_path / "cluster") as cluster:
        d = Daemon(tmp_path, "a", cluster.urls)
        out = cli(d, "status", "--fleet")
        assert out.returncode == 1
        assert "no Rampart process answered $SRV.PING" in out.stderr


def ping(name: str, id_: str, **meta: str) -> bytes:
    body = {"name": name, "id": id_, "version": "0.1.0", "type": PING_TYPE, "metadata": meta}
    return msgspec.json.encode(body)


def test_other_services_and_unreadable_answers_are_not_rampart() -> None:
    assert instance_of(b"not json") is None
    assert instance_of(ping("orders", "x1")) is None  # no prefix: another service
    other_type = msgspec.json.encode({"name": "x", "id": "y", "type": "io.nats.micro.v1.info"})
    assert instance_of(other_type) is None
    inst = instance_of(ping("rampart", "i1", prefix="p", role="leader", term="7", holder="h"))
    assert inst == Instance(
        name="rampart", id="i1", version="0.1.0", prefix="p", role="leader", term=7, holder="h"
    )
    assert instance_of(ping("rampart", "i2", prefix="p", term="x")) == Instance(
        name="rampart", id="i2", version="0.1.0", prefix="p"
    )


def test_a_shard_without_a_leader_or_with_two_is_a_problem() -> None:
    def inst(id_: str, prefix: str, role: str, shard: str | None = "s") -> Instance:
        return Instance(name="r", id=id_, version="", prefix=prefix, role=role, shard=shard)

    views = group(
        [
            inst("1", "p", "standby"),
            inst("2", "q", "leader"),
            inst("3", "q", "standby"),
            inst("4", "r", "single", None),
            inst("5", "r", "single", None),
        ]
    )
    by = {v.prefix: v for v in views}
    assert "no leader answers" in by["p"].problems[0]
    assert by["q"].ok and [i.id for i in by["q"].standbys] == ["3"]
    assert "2 processes answer status and control for prefix 'r'" in by["r"].problems[0]
    text = format_fleet(views)
    assert "p: PROBLEM: no leader answers" not in text  # shown by shard name, not prefix
    assert "s: PROBLEM: no leader answers" in text
    assert "3 shard(s), 1 ok" in text
