"""One writer per data directory: an exclusive lock on ``<data_dir>/rampart.lock``.

The lock is an OS lock (``flock``) on the open file, so it ends with the process however the
process ends (kill -9 included): there is never a stale lock to clean up. The file holds the
holder's PID, for the message the next daemon gives; the file itself stays.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Final

LOCK_FILE: Final = "rampart.lock"


class DataDirLocked(RuntimeError):
    """Another process holds the data directory."""

    def __init__(self, data_dir: Path, holder: int | None) -> None:
        self.data_dir = data_dir
        self.holder = holder
        who = f"PID {holder}" if holder is not None else "a process whose PID it did not write"
        super().__init__(
            f"data_dir {data_dir} is in use by another Rampart daemon ({who}, holding "
            f"{data_dir / LOCK_FILE}): only one daemon may run on a data_dir. Stop that one, "
            "or give this one its own data_dir"
        )


class DataDirLock:
    """``acquire()`` takes the lock or raises ``DataDirLocked``; ``release()`` gives it back."""

    def __init__(self, data_dir: str | os.PathLike[str], role: str = "daemon") -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_FILE
        self.role = role  # who takes it (the daemon, `rampart restore`), for messages
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        # O_CLOEXEC: a child (the embedded nats-server) must not inherit the lock
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise DataDirLocked(self.data_dir, holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Idempotent. Closing the file gives the lock back."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.ftruncate(fd, 0)  # no PID of a daemon that has stopped
            finally:
                os.close(fd)


def _holder(fd: int) -> int | None:
    """The PID the holder wrote; it writes it right after locking, so wait a moment for it."""
    deadline = time.monotonic() + 1.0
    while True:
        try:
            return int(os.pread(fd, 32, 0).decode().strip())
        except ValueError:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.01)


class HeldDataDir:
    """``with HeldDataDir(data_dir, role):`` the lock for a block (``rampart restore``)."""

    def __init__(self, data_dir: str | os.PathLike[str], role: str) -> None:
        self.lock = DataDirLock(data_dir, role)

    def __enter__(self) -> DataDirLock:
        self.lock.acquire()
        return self.lock

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
