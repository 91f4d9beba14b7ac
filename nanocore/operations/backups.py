"""Backups of the store on request (``POST /backups/``, ``nanocore backup``), kept in
``data/backups/``.

A backup holds every change acknowledged before it was asked for. Requests that arrive
while one is being written share the next one rather than queueing a copy each: a burst of
them costs at most two copies, and each still holds what was acknowledged before it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from nanocore.clocks import wall_seconds
from nanocore.operations.errors import InvalidRequest
from nanocore.store.backup import KEEP_BACKUPS, Backup
from nanocore.store.errors import CommitFailed, StoreClosed, StoreError

log = Logger()

#: Backs the committed store up into a folder, named for a time, keeping the newest so many
#: (``Store.backup``).
BackupWriter = Callable[[Path, float, int], "Deferred[Backup]"]


class Backups:
    """Makes backups into ``folder`` with ``write``, one at a time, keeping the newest
    ``keep``."""

    def __init__(
        self,
        write: BackupWriter | None,
        folder: Path,
        clock: IReactorTime,
        keep: int = KEEP_BACKUPS,
    ) -> None:
        """``write`` None: a Core whose store cannot be copied (tests without one)."""
        self._write = write
        self._folder = folder.absolute()
        self._clock = clock
        self._keep = keep
        self._writing = False
        #: Who asked since the copy being written began: they share the next one.
        self._waiting: list[Deferred[Backup]] = []

    def make(self) -> Deferred[Backup]:
        """A new backup holding every change acknowledged before this call."""
        if self._write is None:
            raise InvalidRequest("this Core keeps no store to back up")
        waiter: Deferred[Backup] = Deferred()
        self._waiting.append(waiter)
        if not self._writing:
            self._next()
        return waiter

    def _next(self) -> None:
        assert self._write is not None
        waiting, self._waiting = self._waiting, []
        self._writing = True
        writing = self._write(self._folder, wall_seconds(self._clock), self._keep)

        def done(result: Backup | Failure) -> None:
            self._writing = False
            if isinstance(result, Backup):
                self._written(result)
            else:
                result = self._refusal(result)
            for waiter in waiting:
                if isinstance(result, Backup):
                    waiter.callback(result)
                else:
                    waiter.errback(result)
            if self._waiting:
                self._next()

        writing.addBoth(done)

    def _refusal(self, failure: Failure) -> Failure:
        """What the clients read when the copy could not be written, and the log line."""
        if failure.check(StoreClosed):
            return failure  # Core is stopping
        if not failure.check(OSError, sqlite3.Error, StoreError):
            log.failure("store backup into {folder} failed", failure, folder=self._folder)
            return failure
        reason = failure.getErrorMessage()
        log.error(
            "store backup into {folder} failed: {reason}", folder=self._folder, reason=reason
        )
        return Failure(CommitFailed(f"backup could not be written: {reason}"))

    def _written(self, backup: Backup) -> None:
        removed = backup.removed
        log.info(
            "store backed up to {path} ({size} bytes){removed}",
            path=backup.path,
            size=backup.size,
            removed=f"; removed the oldest: {', '.join(p.name for p in removed)}"
            if removed
            else "",
        )
