"""Rotated logs are kept to a bound: the newest ``keep``, at start and every interval."""

from __future__ import annotations

import errno
from pathlib import Path
from unittest.mock import patch

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from nanocore.services.logs import RotatedLogs, rotated


class RotatedLogsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = Path(self.mktemp())
        self.folder.mkdir()
        self.log_file = self.folder / "core.log"
        self.log_file.write_text("now\n")
        self.clock = Clock()
        self.logs = RotatedLogs(self.clock, self.log_file, keep=3, interval=600)

    def rotate_into(self, *numbers: int) -> None:
        for number in numbers:
            (self.folder / f"core.log.{number}").write_text(f"{number}\n")

    def names(self) -> list[str]:
        return sorted(path.name for path in self.folder.iterdir())

    def test_copies_beyond_the_newest_are_removed_at_start(self) -> None:
        self.rotate_into(1, 2, 3, 4, 5, 12)
        (self.folder / "core.log.old").write_text("an operator's own copy\n")
        (self.folder / "core-fault.log").write_text("tracebacks\n")
        self.logs.startService()
        self.addCleanup(self.logs.stopService)
        self.assertEqual(
            self.names(),
            [
                "core-fault.log",
                "core.log",
                "core.log.1",
                "core.log.2",
                "core.log.3",
                "core.log.old",
            ],
        )
        self.assertEqual((self.folder / "core.log.3").read_text(), "3\n")

    def test_and_again_every_interval(self) -> None:
        self.logs.startService()
        self.rotate_into(1, 2, 3, 4)
        self.clock.advance(599)
        self.assertIn("core.log.4", self.names())
        self.clock.advance(1)
        self.assertEqual(sorted(rotated(self.log_file)), [1, 2, 3])
        self.logs.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_nothing_to_remove_removes_nothing(self) -> None:
        self.rotate_into(1, 2)
        self.assertEqual(self.logs.prune(), 0)
        self.assertEqual(self.names(), ["core.log", "core.log.1", "core.log.2"])

    def test_a_log_folder_gone_is_no_fault(self) -> None:
        logs = RotatedLogs(self.clock, Path(self.mktemp()) / "core.log")
        self.assertEqual(logs.prune(), 0)

    def test_a_folder_that_cannot_be_read_is_said_and_looked_at_again(self) -> None:
        """Out of file descriptors, the glob failed and the looping call died with an
        Unhandled Error (QA pass 22, D1): nothing more was ever pruned."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.rotate_into(1, 2, 3, 4)

        def no_descriptor(self: Path, pattern: str) -> list[Path]:
            raise OSError(errno.EMFILE, "Too many open files", str(self))

        with patch.object(Path, "glob", no_descriptor):
            self.assertEqual(self.logs.prune(), 0)
        self.assertEqual(
            [formatEvent(e) for e in events],
            [
                "cannot look for old logs to remove: [Errno 24] Too many open files:"
                f" '{self.folder}'"
            ],
        )
        self.assertEqual(self.logs.prune(), 1)  # the next look

    def test_stopping_before_it_started_is_no_fault(self) -> None:
        """A sibling's start failed first: every service is stopped, started or not."""
        self.assertIsNone(self.logs.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])
