"""Room kept on the data disk for what Core must record even when the disk is full.

A full disk fails every commit. Most of them can wait: an API client is told 503 and tries
again. Some cannot: a Cell's goodbye, lost, becomes at the next start the presumed loss of a
Cell stopped on purpose, and the failover of guests it may keep running (QA pass 24: the disk
full, the Cells stopped, Core stopped, the disk cleared, Core started: the guests ran twice).
:class:`DiskReserve` holds a file of :data:`RESERVE_BYTES` beside the database; the store
removes it to commit such an *essential* unit when the disk is full, and makes it again once
there is room. Everything here runs on the store's writer thread.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

#: The reserve's size: the write-ahead log of many essential units (the losses of hundreds
#: of guests), and nothing on any disk that holds a cluster's state.
RESERVE_BYTES = 16 << 20
#: The environment variable that sets another size (bytes; 0: no reserve).
RESERVE_VARIABLE = "NANOCORE_RESERVE_BYTES"
#: Its name in the data folder.
RESERVE_NAME = "nanocore.reserve"
#: Seconds between two tries to make the reserve again while the disk has no room for it.
RESTORE_INTERVAL = 60.0


def reserve_size() -> int:
    """:data:`RESERVE_BYTES`, or the size :data:`RESERVE_VARIABLE` sets (the test suite
    opens hundreds of stores, which must not take gigabytes of disk)."""
    text = os.environ.get(RESERVE_VARIABLE, "")
    return int(text) if text.isdigit() else RESERVE_BYTES


def disk_full(error: sqlite3.Error) -> bool:
    """Whether SQLite refused for want of room (``SQLITE_FULL``)."""
    code = getattr(error, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or str(error) == "database or disk is full"


class DiskReserve:
    """A file of ``size`` bytes at ``path``, given up when room is needed, kept otherwise."""

    def __init__(self, path: Path, size: int | None = None) -> None:
        self.path = path
        self.size = reserve_size() if size is None else size
        self._tried = -RESTORE_INTERVAL

    def kept(self) -> bool:
        if not self.size:
            return False  # none wanted
        try:
            return self.path.stat().st_size >= self.size
        except FileNotFoundError:
            return False

    def make(self) -> bool:
        """Allocate the reserve (not sparse: its blocks are the disk's); whether it is kept."""
        self._tried = time.monotonic()
        if self.kept() or not self.size:
            return bool(self.size)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            self.path.unlink(missing_ok=True)  # a part of it would only hold room for nothing
            return False
        return True

    def make_again(self) -> bool:
        """:meth:`make`, if it is missing and was not tried within :data:`RESTORE_INTERVAL`;
        whether it was made now."""
        if not self.size or time.monotonic() - self._tried < RESTORE_INTERVAL:
            return False
        if self.kept():
            self._tried = time.monotonic()  # looked at once an interval, not every batch
            return False
        return self.make()

    def release(self) -> bool:
        """Give the reserve's room back to the disk; whether there was any to give."""
        if not self.kept():
            return False
        self.path.unlink(missing_ok=True)
        self._tried = time.monotonic()  # not made again at once: the disk is full
        return True
