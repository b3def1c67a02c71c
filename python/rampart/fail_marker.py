"""That Rampart failed closed, kept across a restart even when the store cannot be written.

When Rampart fails closed it halts every algorithm, but a full or failing disk may keep it from
storing those halts: a gateway that did not apply and report them (disconnected, or one that
does not take commands) would have its algorithms come back trading after the restart that
follows the fix (found from outside: a full disk). So the reason is also written here: a file
in the data directory, created at start with ``SIZE`` bytes of blanks and only ever overwritten
in place afterwards, so writing it needs no new disk blocks. The next start reads it, latches
every algorithm halted (an operator releases what is safe), and blanks it once the latches are
stored. With ``[ha]`` it is not read (blanked): the shard's state stream holds every stored halt,
and a leader whose disk fails steps down instead (docs/ha.md).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Final

log = logging.getLogger("rampart.fail_marker")

FILE: Final = "rampart.failed"
SIZE: Final = 4096


class FailMarker:
    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.path = Path(data_dir) / FILE

    def read(self) -> dict[str, object] | None:
        """The failure recorded by an earlier run ({"reason", "ts"}), None if there is none. A
        marker that is there but unreadable counts as a failure (fail closed)."""
        try:
            text = self.path.read_bytes().strip()
        except FileNotFoundError:
            return None
        if not text:
            return None
        try:
            found = json.loads(text)
        except ValueError:
            return {"reason": f"{self.path} is unreadable: {text[:100]!r}", "ts": None}
        if not isinstance(found, dict):
            return {"reason": f"{self.path} holds {text[:100]!r}", "ts": None}
        return found

    def arm(self) -> None:
        """Create the file, ``SIZE`` blanks, if it is not there (at start, while the disk has
        room): later writes overwrite it in place."""
        if self.path.exists() and self.path.stat().st_size >= SIZE:
            return
        self._overwrite(b"")
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write(self, reason: str, ts: int) -> bool:
        """Record the failure (best effort: False, logged, if it could not be written)."""
        data = json.dumps({"reason": reason[:600], "ts": ts}).encode()
        try:
            self._overwrite(data[: SIZE - 1])
        except OSError as e:
            log.critical("cannot record the failure in %s: %s", self.path, e)
            return False
        return True

    def clear(self) -> None:
        self._overwrite(b"")

    def _overwrite(self, data: bytes) -> None:
        flags = os.O_WRONLY | os.O_CREAT
        fd = os.open(self.path, flags, 0o600)
        try:
            os.pwrite(fd, data.ljust(SIZE - 1) + b"\n", 0)
            os.fsync(fd)
        finally:
            os.close(fd)
