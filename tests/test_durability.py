"""The state store against its mirrors (issue 10), from outside: `rampart run`, `rampart backup`,
`rampart restore` and `rampart audit verify` as separate processes beside a real nats-server.

A store that lost committed state (its -wal file gone, an older copy put back) is refused at start
(every algorithm halted, the message says how far behind and how to recover), until it is restored
or the loss is accepted with `--accept-store-rollback` (audited). Backups are consistent while the
daemon writes; a restore refuses while the daemon runs and is audited at the next start."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from support import control, eventually

from rampart.backup import BackupError, restore
from rampart.durability import read_head_file
from rampart.embedded import EmbeddedNatsServer
from rampart.protocol import (
    StatusReply,
    Subjects,
    status_reply_decoder,
)
from rampart.store import Store

SUBJ = Subjects()
TIMEOUT = 30.0  # bound on waiting for a process to do something; never a performance threshold

# No gateway runs: a rollback's steps fail fast and it is recorded all the same, and a release is
# stored before its resume is sent. Each gives one audit record.
CONFIG = """
data_dir = "{data_dir}"
heartbeat_interval = "PT0.1S"
checkpoint_interval = "PT0.05S"
wal_checkpoint_interval = "{wal_interval}"

[triggers]
check_interval = "PT0.05S"
gateway_heartbeat_timeout = "PT1H"
market_data_timeout = "PT1H"
nats_disconnect = false

[rollback]
attempt_timeout = "PT0.01S"
halt_deadline = "PT0.02S"
cancel_deadline = "PT0.02S"
flatten_deadline = "PT0.02S"
allocate_deadline = "PT0.02S"
activate_deadline = "PT0.02S"
retry_interval = "PT0.05S"

[[algorithms]]
id = "alpha"
version = "1"
gateway = "gw1"
capital = 100000

[[algorithms]]
id = "beta"
version = "1"
gateway = "gw1"
capital = 100000
"""


class World:
    def __init__(self, url: str, tmp: Path, wal_interval: str) -> None:
        self.url, self.tmp = url, tmp
        self.data = tmp / "data"
        self.db = self.data / "rampart.db"
        self.head_file = self.data / "rampart.head"
        self.cfg = tmp / "rampart.toml"
        self.cfg.write_text(CONFIG.format(data_dir=self.data, wal_interval=wal_interval))
        self.nc: Client | None = None
        self.daemon: asyncio.subprocess.Process | None = None
        self.runs = 0

    @property
    def log(self) -> Path:
        return self.tmp / f"daemon-{self.runs}.log"

    async def start_daemon(self, *extra: str) -> None:
        self.runs += 1
        with self.log.open("ab") as f:
            self.daemon = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "rampart", "run", "--config", str(self.cfg),
                "--servers", self.url, *extra,
                stdout=asyncio.subprocess.DEVNULL, stderr=f,
            )  # fmt: skip
        await until(self.answers, what=f"the daemon answers status (log: {self.log})")

    async def stop_daemon(self, sig: int = signal.SIGTERM) -> int:
        assert self.daemon is not None
        self.daemon.send_signal(sig)
        code = await asyncio.wait_for(self.daemon.wait(), TIMEOUT)
        self.daemon = None
        return code

    async def status(self) -> StatusReply:
        assert self.nc is not None
        reply = await self.nc.request(SUBJ.status("algorithms"), b"", timeout=2)
        return status_reply_decoder.decode(reply.data)

    async def answers(self) -> bool:
        try:
            await self.status()
        except Exception:
            return False
        return True

    async def control(self, verb: str, target: str) -> None:
        assert self.nc is not None
        await control(self.nc, self.data, verb, target, reason="durability test", timeout=TIMEOUT)

    def head_seq(self) -> int:
        """The store's audit head, read beside the running daemon."""
        with Store(self.db, readonly=True) as store:
            head = store.committed_head
        return head.seq if head else 0

    async def audit_records(self, n: int) -> int:
        """Append ``n`` audit records through the daemon (rollbacks and releases of alpha)."""
        target = self.head_seq() + n
        for i in range(n):
            await self.control("rollback" if i % 2 == 0 else "release", "alpha")
        if n % 2:
            await self.control("release", "alpha")
            target += 1
        await until(lambda: self.head_seq() >= target, what=f"audit seq {target}")
        return target


async def until(cond: Any, timeout: float = TIMEOUT, what: str = "") -> None:
    await eventually(cond, timeout, what)


@asynccontextmanager
async def world(
    server: EmbeddedNatsServer, tmp: Path, wal_interval: str = "PT10S"
) -> AsyncIterator[World]:
    w = World(server.url, tmp, wal_interval)
    w.nc = await nats.connect(server.url)
    try:
        yield w
    finally:
        if w.daemon is not None and w.daemon.returncode is None:
            w.daemon.kill()
            await w.daemon.wait()
        await w.nc.close()


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rampart", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def put_back(backup: Path, w: World) -> None:
    """What the issue did: an older copy of rampart.db put in place, without its -wal/-shm."""
    shutil.copyfile(backup, w.db)
    for suffix in ("-wal", "-shm"):
        Path(f"{w.db}{suffix}").unlink(missing_ok=True)


def audit_kinds(db: Path) -> list[tuple[int, str, str]]:
    with Store(db, readonly=True) as store:
        assert store.verify_audit().ok
        return [(r.seq, r.kind, r.actor) for r in store.audit()]


def test_a_store_behind_its_mirror_is_refused_until_the_loss_is_accepted(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with world(server, tmp_path) as w:
            await w.start_daemon()
            await w.audit_records(2)
            backup = tmp_path / "backup.db"
            code, out, err = await cli("backup", str(backup), "--config", str(w.cfg))
            assert code == 0, err
            assert "audit head seq 2 hash" in out
            await w.audit_records(2)
            assert await w.stop_daemon() == 0
            head = read_head_file(w.head_file)
            assert head is not None and (head.seq, head.generation) == (4, 0)

            # an older copy put back: refused, every algorithm halted, the store left alone
            put_back(backup, w)
            await w.start_daemon()
            st = (await w.status()).daemon
            assert st.store_error is not None
            for text in (
                "behind its mirror",
                "the store's audit log ends at seq 2",
                "2 audit records behind",
                f"rampart restore BACKUP.db --config {w.cfg} --operator NAME",
                f"rampart run --config {w.cfg} --accept-store-rollback --operator NAME",
            ):
                assert text in st.store_error
            assert "JetStream KV" in st.store_error  # both mirrors say so
            assert {h.algo for h in st.halted} == {"alpha", "beta"}
            assert "behind its mirror" in w.log.read_text()
            assert await w.stop_daemon() == 0
            assert w.head_seq() == 2  # untouched
            assert read_head_file(w.head_file) == head  # the evidence is kept

            # without an operator the override is refused
            code, _, err = await cli("run", "--config", str(w.cfg), "--accept-store-rollback")
            assert code == 2 and "--operator" in err

            # the loss accepted: starts, and the acceptance is in the audit log
            await w.start_daemon("--accept-store-rollback", "--operator", "bob@risk")
            st = (await w.status()).daemon
            assert st.store_error is None
            assert not st.halted
            kinds = audit_kinds(w.db)
            assert kinds[-1] == (3, "store_rollback_accepted", "bob@risk")
            with Store(w.db, readonly=True) as store:
                payload = store.audit(after_seq=2)[0].payload
                assert store.identity().generation == 1
            assert payload["store_head"]["seq"] == 2 and payload["generation"] == 1
            assert {m["mirror"] for m in payload["mirrors"]} == {"head_file", "jetstream_kv"}
            await until(
                lambda: (
                    (h := read_head_file(w.head_file)) is not None
                    and (h.seq, h.generation) == (3, 1)
                ),
                what="the head file names the accepted store",
            )
            assert await w.stop_daemon() == 0
            code, out, err = await cli("audit", "verify", "--config", str(w.cfg))
            assert code == 0, out + err

            # the old copy again, with the head file gone too: the JetStream copy still knows
            put_back(backup, w)
            w.head_file.unlink()
            await w.start_daemon()
            st = (await w.status()).daemon
            assert st.store_error is not None
            assert "JetStream KV" in st.store_error
            assert "generation 1 but the store of generation 0" in st.store_error
            assert await w.stop_daemon() == 0

    asyncio.run(scenario())


def test_a_lost_or_replaced_data_directory_is_refused_until_accepted(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """The whole data directory gone (a new disk, a wrong path) or replaced by another store,
    NATS kept: the JetStream KV mirror names the store that was there, so the new one starts
    failed closed (it holds no positions, no events cursor, no halts), until an operator
    accepts it; after that the mirror names the new store and it starts as usual."""

    async def scenario() -> None:
        async with world(server, tmp_path) as w:
            await w.start_daemon()
            await w.audit_records(2)
            assert await w.stop_daemon() == 0
            old = Store(w.db, readonly=True)
            old_id = old.identity().store_id
            old.close()
            shutil.rmtree(w.data)

            await w.start_daemon()
            st = (await w.status()).daemon
            assert st.store_error is not None
            for text in (
                f"records store {old_id} at audit seq 2, but this store is new",
                "data directory was lost or replaced",
                "--accept-store-rollback --operator NAME",
            ):
                assert text in st.store_error, st.store_error
            assert {h.algo for h in st.halted} == {"alpha", "beta"}
            assert await w.stop_daemon() == 0

            # another store put in its place (its own id): refused the same way
            shutil.rmtree(w.data)
            w.data.mkdir()
            Store(w.db).ensure_identity()
            await w.start_daemon()
            st = (await w.status()).daemon
            assert st.store_error is not None and "this store is another store" in st.store_error
            assert await w.stop_daemon() == 0

            await w.start_daemon("--accept-store-rollback", "--operator", "bob@risk")
            st = (await w.status()).daemon
            assert st.store_error is None and not st.halted
            assert audit_kinds(w.db)[-1][1:] == ("store_rollback_accepted", "bob@risk")
            await w.audit_records(2)  # the mirrors now name this store
            assert await w.stop_daemon() == 0
            await w.start_daemon()
            st = (await w.status()).daemon
            assert st.store_error is None and not st.halted
            assert await w.stop_daemon() == 0

    asyncio.run(scenario())


def test_a_lost_wal_file_is_refused_and_reported_not_migrated(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        # no timed checkpoint during the test: what it commits stays in the WAL
        async with world(server, tmp_path, wal_interval="PT1H") as w:
            await w.start_daemon()
            seq = await w.audit_records(3)
            await until(
                lambda: (h := read_head_file(w.head_file)) is not None and h.seq == seq,
                what="the head file follows the store",
            )
            assert await w.stop_daemon(signal.SIGKILL) == -signal.SIGKILL
            wal = Path(f"{w.db}-wal")
            assert wal.stat().st_size > 0
            wal.unlink()
            Path(f"{w.db}-shm").unlink(missing_ok=True)

            code, out, err = await cli("audit", "verify", "--config", str(w.cfg))
            assert code == 1, out + err
            assert "BEHIND ITS HEAD FILE" in out
            assert f"{seq} audit records behind" in out
            assert "rampart restore" in out
            assert "migrate" not in out + err

            await w.start_daemon()
            st = (await w.status()).daemon
            assert st.store_error is not None
            assert "the store's audit log ends at seq 0 but the head file" in st.store_error
            assert {h.algo for h in st.halted} == {"alpha", "beta"}
            assert await w.stop_daemon() == 0

    asyncio.run(scenario())


def test_backups_taken_while_the_daemon_writes_are_consistent(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with world(server, tmp_path) as w:
            await w.start_daemon()
            await w.audit_records(2)
            stop = asyncio.Event()

            async def writer() -> None:
                while not stop.is_set():
                    await w.audit_records(2)

            task = asyncio.create_task(writer())
            seen = []
            try:
                for i in range(4):
                    if i:  # the writer has appended since the last backup (not left to timing)
                        grown = w.head_seq()
                        await until(lambda g=grown: w.head_seq() > g, what="the log grew")
                    dest = tmp_path / f"backup-{i}.db"
                    code, out, err = await cli(
                        "backup", str(dest), "--config", str(w.cfg), "--json"
                    )
                    assert code == 0, err
                    assert "WARNING" not in err  # the store is not behind its head file
                    seen.append((dest, out))
            finally:
                stop.set()
                await task
            assert w.daemon is not None and w.daemon.returncode is None
            assert await w.stop_daemon() == 0
        seqs = []
        for dest, out in seen:
            assert not Path(f"{dest}-wal").exists()  # one self-contained file
            with Store(dest, readonly=True) as copy:
                result = copy.verify_audit()
                assert result.ok, result.problems
                assert result.last is not None
                assert f'"seq":{result.last.seq},' in out
                seqs.append(result.last.seq)
        assert seqs == sorted(seqs) and seqs[-1] > seqs[0]  # taken while the log grew

    asyncio.run(scenario())


def test_restore_refuses_while_the_daemon_runs_and_the_next_start_audits_it(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with world(server, tmp_path) as w:
            await w.start_daemon()
            await w.audit_records(2)
            backup = tmp_path / "backup.db"
            code, _, err = await cli("backup", str(backup), "--config", str(w.cfg))
            assert code == 0, err
            await w.audit_records(2)
            restore_cmd = ("restore", str(backup), "--config", str(w.cfg), "--operator", "carol")
            code, _, err = await cli(*restore_cmd, "--reason", "drill")
            assert code == 1 and "in use" in err and "stop the daemon first" in err
            assert w.head_seq() == 4
            # nor does a second daemon start on the same data directory
            code, _, err = await cli("run", "--config", str(w.cfg), "--servers", w.url)
            assert code == 1 and "only one daemon may run on a data_dir" in err
            assert f"PID {w.daemon.pid}" in err  # type: ignore[union-attr]
            assert await w.stop_daemon() == 0

            code, out, err = await cli(*restore_cmd, "--reason", "drill")
            assert code == 0, err
            assert "audit head seq 2" in out and "generation 1" in out
            replaced = [p for p in w.data.glob("rampart.db.replaced-*") if p.name[-4:] != "-wal"]
            assert len(replaced) == 1 and replaced[0].name in out
            with Store(replaced[0], readonly=True) as old:  # kept, whole
                assert old.committed_head is not None and old.committed_head.seq == 4
            head = read_head_file(w.head_file)
            assert head is not None and (head.seq, head.generation) == (2, 1)

            await w.start_daemon()
            st = (await w.status()).daemon
            assert st.store_error is None
            kinds = audit_kinds(w.db)
            assert kinds[-1] == (3, "store_restored", "carol")
            with Store(w.db, readonly=True) as store:
                note = store.audit(after_seq=2)[0].payload
            assert note["reason"] == "drill" and note["replaced_head"]["seq"] == 4
            assert note["source"] == str(backup.resolve())
            assert await w.stop_daemon() == 0
            code, out, err = await cli("audit", "verify", "--config", str(w.cfg))
            assert code == 0, out + err

    asyncio.run(scenario())


HOLDER = """
import sys, time
from rampart.store import Store
store = Store(sys.argv[1])
print("open", flush=True)
time.sleep(60)
"""


def test_restore_refuses_a_store_another_process_has_open(tmp_path: Path) -> None:
    db = tmp_path / "data" / "rampart.db"
    db.parent.mkdir()
    with Store(db) as store:
        store.append_audit("x", {}, actor="t", ts=1)
        conn = sqlite3.connect(tmp_path / "b.db")
        store.backup_into(conn)
        conn.close()
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)], stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "open\n"
            with pytest.raises(BackupError, match="in use"):
                restore(tmp_path / "b.db", db, operator="op", reason="")
        finally:
            holder.kill()
    restore(tmp_path / "b.db", db, operator="op", reason="")  # nobody has it open now


def test_a_fatal_signal_leaves_a_traceback_in_the_log(
    server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """SQLite maps the -shm file of a WAL store into memory (every connection that shares the
    store must); truncated under the daemon, the next access is a SIGBUS. The daemon cannot
    survive that, but it must not die silently."""

    async def scenario() -> None:
        async with world(server, tmp_path, wal_interval="PT0.05S") as w:
            await w.start_daemon()
            shm = Path(f"{w.db}-shm")
            assert shm.stat().st_size > 0
            with shm.open("r+b") as f:
                f.truncate(0)
            assert w.daemon is not None
            code = await asyncio.wait_for(w.daemon.wait(), TIMEOUT)  # its next checkpoint
            assert code == -signal.SIGBUS
            log = w.log.read_text()
            assert "Fatal Python error: Bus error" in log
            assert "rampart/store.py" in log  # where it was

    asyncio.run(scenario())
