"""Expired records are deleted one commit at a time, however many reads ask for it."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from nanocore import model as m
from nanocore.operations.base import Sweep
from nanocore.store import Delete, StoreClosed


class RecordingContext:
    """The part of ``Context`` a sweep uses: commits recorded, answered by the test."""

    def __init__(self) -> None:
        self.commits: list[tuple[tuple[Any, ...], Deferred[None]]] = []

    def commit(self, *changes: Any) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.commits.append((changes, d))
        return d


GONE = Delete(m.BatchTask, "b1")


class SweepTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.context = RecordingContext()
        self.sweep = Sweep(self.context, "batches")  # type: ignore[arg-type]
        self.observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def test_a_sweep_asked_for_while_one_commits_is_skipped(self) -> None:
        """Three reads in a row each swept the same expired batch: the second and third
        deletes failed (``does not exist``), logged as critical."""
        for _ in range(3):
            self.sweep.delete([GONE])
        self.assertEqual([changes for changes, _ in self.context.commits], [(GONE,)])
        self.context.commits[0][1].callback(None)
        self.sweep.delete([GONE])  # the view would no longer hold it; here it still does
        self.assertEqual(len(self.context.commits), 2)
        self.assertEqual(list(self.observer), [])

    def test_nothing_expired_commits_nothing(self) -> None:
        self.sweep.delete([])
        self.sweep.delete(iter(()))
        self.assertEqual(self.context.commits, [])

    def test_a_failed_sweep_is_logged_and_the_next_one_runs(self) -> None:
        self.sweep.delete([GONE])
        self.context.commits[0][1].errback(RuntimeError("disk on fire"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.sweep.delete([GONE])
        self.assertEqual(len(self.context.commits), 2)

    def test_a_closed_store_is_only_told(self) -> None:
        self.sweep.delete([GONE])
        self.context.commits[0][1].errback(StoreClosed("closed"))
        levels = [event["log_level"] for event in self.observer]
        self.assertEqual(levels, [LogLevel.info])
