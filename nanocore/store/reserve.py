"""Room kept on the data disk for what Core must record even when the disk is full.

A full disk fails every commit. Most of them can wait: an API client is told 503 and tries
again. Some cannot: a Cell's goodbye, lost, becomes at the next start the presumed loss of a
Cell stopped on purpose, and the failover of guests it may keep running (QA pass 24: the disk
full, the Cells stopped, Core stopped, the disk cleared, Core started: the guests ran twice).
:class:`DiskReserve` holds a file of :data:`RESERVE_BYTES` beside the database; the store
gives a piece of it back to the disk to commit such an *essential* unit when the disk is full,
and makes it whole again once there is room. Everything here runs on the store's writer
thread.
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
#: What one essential batch on a full disk is given at a time (more pieces if it needs them):
#: a piece of the reserve, so that each of many such moments (a goodbye, then another Cell's)
#: has its own room (QA pass 26: one reserve given up whole was taken by the other writes, and
#: a second goodbye was lost; pass 27: a seventeenth deletion found none left of 1 MiB pieces).
RESERVE_PIECE = 256 << 10
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
    """A file of ``size`` bytes at ``path``, given back to the disk ``piece`` by ``piece`` when
    room is needed, and made whole again once there is room."""

    def __init__(self, path: Path, size: int | None = None, piece: int = RESERVE_PIECE) -> None:
        self.path = path
        self.size = reserve_size() if size is None else size
        self.piece = min(piece, self.size) if self.size else piece
        self._tried = -RESTORE_INTERVAL

    def held(self) -> int:
        """The bytes of the disk the reserve holds now (a sparse copy of it holds none: QA
        pass 26, a data folder moved with ``cp --sparse=always``)."""
        try:
            status = self.path.stat()
        except FileNotFoundError:
            return 0
        return min(status.st_size, status.st_blocks * 512)

    def kept(self) -> bool:
        return bool(self.size) and self.held() >= self.size

    def make(self) -> bool:
        """Make the reserve whole (its blocks the disk's, not sparse); whether it is."""
        self._tried = time.monotonic()
        if self.kept() or not self.size:
            return bool(self.size)
        try:
            before = self.path.stat().st_size
        except FileNotFoundError:
            before = 0
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            self._cut_to(before)  # what no room was found for would hold nothing
            return False
        return True

    def make_again(self) -> bool:
        """:meth:`make`, if it is not whole and was not tried within :data:`RESTORE_INTERVAL`;
        whether it was made now."""
        if not self.size or time.monotonic() - self._tried < RESTORE_INTERVAL:
            return False
        if self.kept():
            self._tried = time.monotonic()  # looked at once an interval, not every batch
            return False
        return self.make()

    def release(self) -> int:
        """Give one piece of the reserve back to the disk; how many bytes (0: none left)."""
        if not self.size or self.held() <= 0:
            return 0
        size = self.path.stat().st_size
        given = min(self.piece, size)
        self._cut_to(size - given)
        self._tried = time.monotonic()  # not made again at once: the disk is full
        return given

    def _cut_to(self, size: int) -> None:
        if size <= 0:
            self.path.unlink(missing_ok=True)
        else:
            os.truncate(self.path, size)
