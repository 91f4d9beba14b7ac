"""The one line a failed start is reported with, and reading back only this start's log."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from twisted.internet.error import CannotListenError
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from nanocore import start_report
from nanocore.store.errors import DamagedStore, StoreError


def listen_error(code: int, interface: str = "127.0.0.1", port: int = 5850) -> CannotListenError:
    return CannotListenError(interface, port, OSError(code, os.strerror(code)))


class ExplainTests(SynchronousTestCase):
    def test_a_port_in_use_names_address_and_port(self) -> None:
        self.assertEqual(
            start_report.explain(listen_error(errno.EADDRINUSE)),
            "cannot listen on 127.0.0.1:5850: the port is already in use by another program",
        )

    def test_an_address_of_another_host_names_the_config_key(self) -> None:
        self.assertEqual(
            start_report.explain(listen_error(errno.EADDRNOTAVAIL, "192.0.2.1")),
            "cannot listen on 192.0.2.1:5850: 192.0.2.1 is not an address of this host"
            " (listen_address in domain.cfg)",
        )

    def test_other_listen_errors(self) -> None:
        self.assertIn(
            "permission denied", start_report.explain(listen_error(errno.EACCES, port=80))
        )
        self.assertEqual(
            start_report.explain(listen_error(errno.ENOBUFS)),
            f"cannot listen on 127.0.0.1:5850: {os.strerror(errno.ENOBUFS)}",
        )
        last_of_a_range = CannotListenError("", 5799, listen_error(errno.EADDRINUSE, port=5799))
        self.assertIn(
            "127.0.0.1:5799: the port is already in use", start_report.explain(last_of_a_range)
        )

    def test_store_errors_keep_their_sentence(self) -> None:
        damaged = DamagedStore("/d/nanocore.db failed its integrity check; restore it")
        self.assertEqual(
            start_report.explain(damaged),
            "damaged database: /d/nanocore.db failed its integrity check; restore it",
        )
        in_use = StoreError("/d/nanocore.db is in use by another nanocore process")
        self.assertEqual(
            start_report.explain(in_use),
            "state database: /d/nanocore.db is in use by another nanocore process",
        )

    def test_anything_else_is_one_line(self) -> None:
        self.assertEqual(
            start_report.explain(RuntimeError("two\nlines")), "RuntimeError: two lines"
        )
        self.assertEqual(start_report.explain(RuntimeError()), "RuntimeError")


class LogFailureTests(SynchronousTestCase):
    def logged(self, error: Exception) -> dict[str, object]:
        observer = EventLoggingObserver()
        try:
            raise error
        except Exception:
            start_report.log_failure(Logger(observer=observer), Failure())
        (event,) = observer
        return dict(event)

    def test_an_expected_error_is_one_line_without_traceback(self) -> None:
        event = self.logged(listen_error(errno.EADDRINUSE))
        self.assertEqual(
            formatEvent(event),
            "nanocore could not start: cannot listen on 127.0.0.1:5850:"
            " the port is already in use by another program",
        )
        self.assertNotIn("log_failure", event)

    def test_an_unexpected_error_keeps_its_traceback(self) -> None:
        event = self.logged(ZeroDivisionError("boom"))
        self.assertEqual(formatEvent(event), "nanocore could not start: ZeroDivisionError: boom")
        self.assertIn("log_failure", event)


class ReasonTests(SynchronousTestCase):
    def test_the_last_reason_logged(self) -> None:
        lines = [
            "2026-01-01T00:00:00+0000 [nanocore.service#critical] nanocore could not start: a",
            "2026-01-01T00:00:01+0000 [-] something else",
            "2026-01-01T00:00:02+0000 [nanocore.service#critical] nanocore could not start: b ",
        ]
        self.assertEqual(start_report.reason_in(lines), "b")
        self.assertIsNone(start_report.reason_in(lines[1:2]))


class LinesSinceTests(SynchronousTestCase):
    def setUp(self) -> None:
        folder = Path(self.mktemp())
        folder.mkdir()
        self.log = folder / "core.log"

    def test_only_lines_written_after_the_mark(self) -> None:
        self.log.write_text("earlier run\n")
        mark = start_report.LogMark.of(self.log)
        with self.log.open("a") as handle:
            handle.write("this run 1\nthis run 2\n")
        self.assertEqual(start_report.lines_since(self.log, mark), ["this run 1", "this run 2"])

    def test_a_log_that_did_not_exist_is_read_whole(self) -> None:
        mark = start_report.LogMark.of(self.log)
        self.assertEqual(start_report.lines_since(self.log, mark), [])
        self.log.write_text("first line ever\n")
        self.assertEqual(start_report.lines_since(self.log, mark), ["first line ever"])

    def test_a_rotation_during_the_start_is_followed(self) -> None:
        """twistd renames core.log to core.log.1 at 1 MB and starts a new core.log."""
        self.log.write_text("earlier run\n")
        mark = start_report.LogMark.of(self.log)
        with self.log.open("a") as handle:
            handle.write("this run, before the rotation\n")
        self.log.rename(self.log.with_name("core.log.1"))
        self.log.write_text("this run, after the rotation\n")
        self.assertEqual(
            start_report.lines_since(self.log, mark),
            ["this run, before the rotation", "this run, after the rotation"],
        )

    def test_a_replaced_log_is_read_from_its_start(self) -> None:
        self.log.write_text("earlier run, long line\n")
        mark = start_report.LogMark.of(self.log)
        self.log.unlink()
        self.log.write_text("new\n")
        self.assertEqual(start_report.lines_since(self.log, mark), ["new"])
        self.log.write_text("")  # truncated in place
        self.assertEqual(start_report.lines_since(self.log, mark), [])

    def test_reads_at_most_the_end_of_a_huge_log(self) -> None:
        mark = start_report.LogMark.of(self.log)
        line = "x" * 99 + "\n"
        self.log.write_text(line * (start_report.MAX_READ // 100 + 50) + "the end\n")
        lines = start_report.lines_since(self.log, mark)
        self.assertEqual(lines[-1], "the end")
        self.assertLessEqual(sum(len(text) + 1 for text in lines), start_report.MAX_READ)
