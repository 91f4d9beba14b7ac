"""The store: durable commits with group commit, and a read model that mirrors them.

One single-thread pool owns the SQLite connection, so the reactor never waits on an fsync.
Units queued while a batch is being committed form the next batch; each unit runs in its
own savepoint, so a refused unit fails alone. A unit's Deferred fires on the reactor thread
only after COMMIT has returned, at the same moment the read model changes.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import cast

from attrs import frozen
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from nanocore.clocks import wall_seconds
from nanocore.durations import Durations
from nanocore.model import TIME_FORMAT
from nanocore.ratelog import RateLimitedLog
from nanocore.store.backup import KEEP_BACKUPS, Backup
from nanocore.store.changes import UnitOfWork
from nanocore.store.errors import CommitFailed, StoreClosed, StoreError
from nanocore.store.interfaces import CommitStore
from nanocore.store.readmodel import ReadModel
from nanocore.store.reserve import RESERVE_NAME, DiskReserve, disk_full
from nanocore.store.schema import SchemaScript, bundled_scripts, open_database
from nanocore.store.writer import State, Writer

log = Logger()

#: Each queued unit, who waits for it, and when it was handed over (``timer``).
Pending = list[tuple[UnitOfWork, Deferred[None], float]]


def new_template_id() -> str:
    """An id shaped like the original's xid strings (20 characters)."""
    return uuid.uuid4().hex[:20]


@frozen
class _Applied:
    """What the writer thread did with a batch: each unit's outcome, and what the reserve
    gave (``given`` bytes, for ``essential`` units, ``left`` after) or got back."""

    outcomes: list[StoreError | None]
    given: int = 0
    essential: int = 0
    left: int = 0
    reserve_back: bool = False


@implementer(CommitStore)
class Store:
    """Cluster state in ``data/nanocore.db``; see docs/architecture.md for the contract."""

    def __init__(
        self,
        reactor: IReactorFromThreads,
        threadpool: ThreadPool,
        writer: Writer,
        state: State,
        max_batch: int = 1024,
        *,
        commit_times: Durations | None = None,
        timer: Callable[[], float] = time.perf_counter,
        clock: IReactorTime | None = None,
        reserve: DiskReserve | None = None,
    ) -> None:
        """``commit_times`` records how long each unit took from :meth:`commit` to its
        answer, by ``timer``: what a slow disk costs the operations that wait for it.
        ``clock`` paces the lines about failed commits (the reactor's by default).
        ``reserve``: the room given up for essential units on a full disk."""
        self._reactor = reactor
        self._threadpool = threadpool
        self._writer = writer
        self._reserve = reserve
        self._state = state
        self._max_batch = max_batch
        self._commit_times = commit_times if commit_times is not None else Durations()
        self._timer = timer
        self.view = ReadModel(state)
        if clock is None:
            if not IReactorTime.providedBy(reactor):
                raise TypeError("a Store needs a clock: the reactor's, or one given as clock")
            clock = cast(IReactorTime, reactor)
        #: A full disk fails every commit, and anyone who can write causes one: one line
        #: per cause per minute, with a count, not a traceback per request.
        self._failures = RateLimitedLog(log, clock)
        self._queue: Pending = []
        self._in_flight = False
        self._dispatching = False
        self._closing = False
        self._closed: Deferred[None] | None = None
        self._close_waiters: list[Deferred[None]] = []
        #: batches and units committed, for benchmarks and tests of group commit.
        self.batches_committed = 0
        self.units_committed = 0

    @classmethod
    def open(
        cls,
        data_dir: Path,
        reactor: IReactorFromThreads,
        *,
        scripts: tuple[SchemaScript, ...] | None = None,
        max_batch: int = 1024,
        commit_times: Durations | None = None,
        clock: IReactorTime | None = None,
    ) -> Deferred[Store]:
        """Check, migrate and load the store in ``data_dir`` (created with defaults if new).

        Whoever opens a store closes it (``close``); it registers no shutdown trigger of its
        own, so that a Core can close it after the services that commit to it have stopped.
        """
        threadpool = ThreadPool(minthreads=1, maxthreads=1, name="nanocore-store")
        threadpool.start()
        timekeeper = reactor if IReactorTime.providedBy(reactor) else None
        seconds = wall_seconds(timekeeper) if timekeeper is not None else time.time()
        now = time.strftime(TIME_FORMAT, time.localtime(seconds))
        chosen = scripts if scripts is not None else bundled_scripts()

        reserve = DiskReserve(data_dir / RESERVE_NAME)

        def work() -> tuple[Writer, State]:
            connection = open_database(data_dir, chosen, now, new_template_id)
            try:
                writer = Writer(connection)
                loaded = writer, writer.load()
            except BaseException:
                connection.close()
                raise
            if not reserve.make() and reserve.size:
                log.warn(
                    "no room on the data disk for {path} ({size} bytes), kept for what Core"
                    " must record when the disk is full: made once there is room",
                    path=str(reserve.path),
                    size=reserve.size,
                )
            return loaded

        def opened(result: tuple[Writer, State]) -> Store:
            store = cls(
                reactor,
                threadpool,
                *result,
                max_batch=max_batch,
                commit_times=commit_times,
                clock=clock,
                reserve=reserve,
            )
            log.info(
                "store open: {pools} pools, {cells} cells, {instances} instances",
                pools=len(store.view.compute_pools),
                cells=len(store.view.cells),
                instances=len(store.view.instances),
            )
            return store

        def refused(failure: Failure) -> Failure:
            threadpool.stop()
            return failure

        opening = deferToThreadPool(reactor, threadpool, work)
        return opening.addCallbacks(opened, refused)

    # --- committing ------------------------------------------------------------------------

    def commit(self, unit: UnitOfWork) -> Deferred[None]:
        """Fire once ``unit`` is durable (and visible in ``view``), or fail with StoreError."""
        if not isinstance(unit, UnitOfWork):
            return fail(TypeError(f"commit() takes a UnitOfWork, not {unit!r}"))
        if self._closing:
            return fail(StoreClosed("the store is closed"))
        done: Deferred[None] = Deferred()
        self._queue.append((unit, done, self._timer()))
        if not (self._in_flight or self._dispatching):
            self._flush()
        return done

    def _flush(self) -> None:
        batch = self._queue[: self._max_batch]
        self._queue = self._queue[self._max_batch :]
        self._in_flight = True
        units = [unit for unit, _, _ in batch]
        committing = deferToThreadPool(self._reactor, self._threadpool, self._apply, units)
        committing.addBoth(self._batch_done, batch)

    def _apply(self, units: list[UnitOfWork]) -> _Applied:
        """On the writer thread: the batch; on a full disk, its essential units once more in
        the room the reserve gives up, a piece at a time until they fit (the others fail, as
        the whole batch would have)."""
        reserve = self._reserve
        try:
            outcomes = self._writer.apply_batch(units)
        except sqlite3.OperationalError as error:
            essential = [index for index, unit in enumerate(units) if unit.essential]
            if reserve is None or not (essential and disk_full(error)):
                raise
            given = 0
            while True:
                piece = reserve.release()
                if not piece:
                    raise
                given += piece
                try:
                    kept = self._writer.apply_batch([units[index] for index in essential])
                    break
                except sqlite3.OperationalError as again:
                    if not disk_full(again):
                        raise
            failed = CommitFailed(f"state could not be saved: {error}")
            outcomes = [failed] * len(units)
            for index, outcome in zip(essential, kept, strict=True):
                outcomes[index] = outcome
            return _Applied(outcomes, given=given, essential=len(essential), left=reserve.held())
        return _Applied(outcomes, reserve_back=reserve is not None and reserve.make_again())

    def _batch_done(self, result: _Applied | Failure, batch: Pending) -> None:
        self._in_flight = False
        outcomes: list[StoreError | Failure | None]
        if isinstance(result, Failure):
            reason = f"state could not be saved: {self._failed(result, len(batch))}"
            outcomes = [CommitFailed(reason) for _ in batch]
        else:
            self._say_reserve(result)
            outcomes = list(result.outcomes)
            self.batches_committed += 1
            for (unit, _, _), outcome in zip(batch, outcomes, strict=True):
                if outcome is None:
                    self.view.mirror(unit)
                    self.units_committed += 1
        # Writers woken by these callbacks usually commit again at once: hold the next
        # batch until all of them had their turn, so they share one transaction and fsync.
        self._dispatching = True
        finished = self._timer()
        try:
            for (_, done, began), outcome in zip(batch, outcomes, strict=True):
                self._commit_times.add(finished - began)
                if outcome is None:
                    done.callback(None)
                else:
                    done.errback(Failure(outcome))
        finally:
            self._dispatching = False
        if self._queue:
            self._flush()
        elif self._closing:
            self._finish_close()

    def _say_reserve(self, applied: _Applied) -> None:
        reserve = self._reserve
        if reserve is None:
            return
        if applied.given:
            log.warn(
                "the data disk is full: {given} bytes of {path} were given back to it to record"
                " {kept} unit(s) Core must keep (what a Cell did or said); {failed} other"
                " unit(s) not saved; {left} bytes of the reserve left. Free room on the disk:"
                " the reserve is made whole again then",
                path=str(reserve.path),
                given=applied.given,
                kept=applied.essential,
                failed=len(applied.outcomes) - applied.essential,
                left=applied.left,
            )
        if applied.reserve_back:
            log.info("room on the data disk again: {path} is kept again", path=str(reserve.path))

    def _failed(self, failure: Failure, count: int) -> str:
        """Log why a batch did not commit, once per cause per minute; the cause, in words
        for the client (the database's own for its errors, nothing of a bug's)."""
        if failure.check(sqlite3.Error):
            cause = failure.getErrorMessage()
            self._failures.emit(
                LogLevel.error,
                f"failed store commits ({cause})",
                "nanocore.db",
                "store commit failed, {count} unit(s) not saved: {cause}",
                count=count,
                cause=cause,
            )
            return cause
        # Not the database's refusal but a fault of ours: its traceback, once per batch.
        log.failure("store commit failed; {count} unit(s) not saved", failure, count=count)
        return "internal error"

    # --- backups ---------------------------------------------------------------------------

    def backup(self, folder: Path, seconds: float, keep: int = KEEP_BACKUPS) -> Deferred[Backup]:
        """Copy every unit committed so far into ``folder``, named for ``seconds``, keeping
        the newest ``keep`` there. It runs on the writer thread between two batches, so units
        queued meanwhile wait for it (a large store holds writes for as long as the copy
        takes), and none of its file work falls on the reactor."""
        if self._closing:
            return fail(StoreClosed("the store is closed"))
        backup = self._writer.backup
        return deferToThreadPool(self._reactor, self._threadpool, backup, folder, seconds, keep)

    # --- closing ---------------------------------------------------------------------------

    def close(self) -> Deferred[None]:
        """Refuse new units, let queued ones commit, then close the database and thread."""
        waiter: Deferred[None] = Deferred()
        if self._closed is not None and self._closed.called:
            return succeed(None)
        self._close_waiters.append(waiter)
        if not self._closing:
            self._closing = True
            if not self._in_flight and not self._queue:
                self._finish_close()
        return waiter

    def _finish_close(self) -> None:
        if self._closed is not None:
            return
        self._closed = deferToThreadPool(
            self._reactor,
            self._threadpool,
            self._writer.close,
        )

        def stopped(result: object) -> None:
            self._threadpool.stop()
            self._failures.flush()
            if isinstance(result, Failure):
                log.failure("closing the store failed", result)
            waiters, self._close_waiters = self._close_waiters, []
            for waiter in waiters:
                waiter.callback(None)

        self._closed.addBoth(stopped)

    @property
    def writer_threads(self) -> frozenset[str]:
        """Names of the threads that have run SQL for this store."""
        return frozenset(self._writer.threads_seen)
