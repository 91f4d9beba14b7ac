"""What a client reads and Core logs when the store cannot save a change (QA2 finding 6).

The database's refusal is injected at the writer's connection, at ``COMMIT``: the unit's rows
are really written inside the transaction first, so the test also shows they are rolled back.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase

from nanocore.api.app import build_api_resource
from nanocore.api.testing import TEST_CREDENTIALS, APIClient
from nanocore.operations.core import Operations
from nanocore.store import Store

NOW = 1_714_529_472.0
FULL = "database or disk is full"


class FullDisk:
    """The writer's connection, whose ``COMMIT`` fails as SQLite's does on a full disk."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        self.full = True

    def execute(self, sql: str, *args: Any) -> Any:
        if self.full and sql == "COMMIT":
            raise sqlite3.OperationalError(FULL)
        return self.connection.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.connection, name)


class FullDiskTests(TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        self.data_dir = Path(self.mktemp())
        self.data_dir.mkdir(parents=True)
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = yield self.open()
        self.disk = FullDisk(self.store._writer._connection)
        self.store._writer._connection = self.disk  # type: ignore[assignment]
        ops = Operations(self.store, self.clock)
        self.client = APIClient(build_api_resource(ops, TEST_CREDENTIALS, self.clock), self.clock)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    @inlineCallbacks
    def open(self) -> Any:
        store = yield Store.open(self.data_dir, reactor, clock=self.clock)
        self.addCleanup(store.close)
        return store

    def store_lines(self) -> list[str]:
        """What the store logged at warning level or above."""
        return [
            event["log_format"].format(**event)
            for event in self.events
            if event["log_namespace"] == "nanocore.store.store"
            and event["log_level"] >= LogLevel.warn
        ]

    @inlineCallbacks
    def test_a_failed_commit_is_a_503_with_the_reason_and_nothing_is_kept(self) -> Any:
        answer = yield self.client.post("/compute_pools/lost")
        self.assertEqual(answer.status, 503)
        self.assertEqual(answer.header(b"Retry-After"), b"1")
        self.assertEqual(
            answer.envelope(),
            {"error_code": 500, "message": f"state could not be saved: {FULL}", "data": {}},
        )
        self.assertNotIn("lost", self.store.view.compute_pools)
        missing = yield self.client.get("/compute_pools/lost")
        self.assertEqual(missing.status, 200)
        self.assertIn("lost", missing.error)
        # Room again: the next write is saved, and the refused one was rolled back for good.
        self.disk.full = False
        kept = yield self.client.post("/compute_pools/kept")
        self.assertEqual(kept.envelope()["error_code"], 0)
        yield self.store.close()
        reopened = yield self.open()
        self.assertEqual(sorted(reopened.view.compute_pools), ["default", "kept"])

    @inlineCallbacks
    def test_the_cause_is_logged_once_per_minute_with_a_count_and_no_traceback(self) -> Any:
        for n in range(5):
            answer = yield self.client.post(f"/compute_pools/p{n}")
            self.assertEqual(answer.status, 503)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.store_lines(), [f"store commit failed, 1 unit(s) not saved: {FULL}"])
        self.assertFalse([e for e in self.events if e["log_level"] == LogLevel.critical])
        self.clock.advance(60)
        self.assertEqual(len(self.store_lines()), 2)
        self.assertIn(
            f"4 more failed store commits ({FULL}) from nanocore.db", self.store_lines()[1]
        )

    @inlineCallbacks
    def test_a_write_after_the_store_closed_is_a_503_saying_core_stops(self) -> Any:
        yield self.store.close()
        answer = yield self.client.post("/compute_pools/late")
        self.assertEqual(answer.status, 503)
        self.assertEqual(answer.error, "nanocore is stopping")
        self.assertEqual(self.flushLoggedErrors(), [])
