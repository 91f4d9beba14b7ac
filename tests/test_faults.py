"""A Core never dies without a word: crashes in C code and deaths by signal leave tracebacks
in log/core-fault.log, and the next start says so."""

from __future__ import annotations

import signal
import stat
from pathlib import Path
from typing import IO

from attrs import define, field
from twisted.trial.unittest import SynchronousTestCase

from nanocore import faults, tap
from tests.coreprocess import CoreProcessCase

FAULT_CHILD = Path(__file__).with_name("fault_child.py")

#: What faulthandler writes for a segfault (the shape matters, not the frames).
SEGFAULT_REPORT = """\
Fatal Python error: Segmentation fault

Thread 0x00007f875041d6c0 (most recent call first):
  File "threading.py", line 982 in run

Current thread 0x00007f8750ea0b80 (most recent call first):
  File "epollreactor.py", line 220 in doPoll
"""


@define
class RecordingHandler:
    """Records what would be asked of the faulthandler module."""

    enabled: list[tuple[IO[bytes], bool]] = field(factory=list)
    registered: list[tuple[int, IO[bytes], bool, bool]] = field(factory=list)

    def enable(self, file: IO[bytes], all_threads: bool = True) -> None:
        self.enabled.append((file, all_threads))

    def register(
        self, signum: int, file: IO[bytes], all_threads: bool = True, chain: bool = False
    ) -> None:
        self.registered.append((signum, file, all_threads, chain))


class ReportFatalErrorsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp())
        self.handler = RecordingHandler()

    def report(self, handled: frozenset[int] = frozenset()) -> str | None:
        def default_of(signum: int) -> object:
            return signal.SIG_IGN if signum in handled else signal.SIG_DFL

        earlier = faults.report_fatal_errors(
            self.path,
            handler=self.handler,
            silent_deaths=(signal.SIGHUP, signal.SIGUSR2),
            default_of=default_of,
            now=lambda: 1796551200.0,
        )
        for file, _ in self.handler.enabled:
            self.addCleanup(file.close)
        return earlier

    def test_every_thread_goes_to_the_file_which_stays_open(self) -> None:
        self.report()
        [(file, all_threads)] = self.handler.enabled
        self.assertTrue(all_threads)
        self.assertEqual(Path(file.name), self.path)
        self.assertFalse(file.closed)
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)

    def test_each_start_appends_its_line(self) -> None:
        self.path.write_text("an operator's note\n")
        self.report()
        self.report()
        self.assertEqual(
            self.path.read_text(),
            "an operator's note\n"
            "--- nanocore started 2026-12-06T10:00:00Z\n"
            "--- nanocore started 2026-12-06T10:00:00Z\n",
        )

    def test_silent_deaths_dump_then_die_by_their_signal(self) -> None:
        self.report()
        [file] = [each for each, _ in self.handler.enabled]
        self.assertEqual(
            self.handler.registered,
            [(signal.SIGHUP, file, True, True), (signal.SIGUSR2, file, True, True)],
        )

    def test_a_signal_someone_handles_is_left_to_them(self) -> None:
        self.report(handled=frozenset({signal.SIGUSR2}))
        self.assertEqual([each[0] for each in self.handler.registered], [signal.SIGHUP])

    def test_the_terms_and_interrupts_of_the_reactor_are_not_touched(self) -> None:
        for kept in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGPIPE):
            self.assertNotIn(kept, faults.SILENT_DEATHS)
        self.assertIn(signal.SIGALRM, faults.SILENT_DEATHS)
        self.assertNotIn(signal.SIGHUP, faults.SILENT_DEATHS)  # said and outlived

    def test_no_file_and_clean_runs_tell_nothing(self) -> None:
        self.assertIsNone(faults.earlier_death(self.path))
        self.assertIsNone(self.report())
        self.assertIsNone(self.report())

    def test_a_traceback_after_the_last_start_is_that_runs_death(self) -> None:
        self.path.write_text(
            "--- nanocore started 2026-12-05T08:00:00Z\n"
            + SEGFAULT_REPORT
            + "--- nanocore started 2026-12-05T09:00:00Z\n"
            + SEGFAULT_REPORT
        )
        self.assertEqual(self.report(), "2026-12-05T09:00:00Z")
        # The run that told it has left no traceback (yet).
        self.assertIsNone(faults.earlier_death(self.path))

    def test_an_earlier_death_told_once_is_not_told_again(self) -> None:
        self.path.write_text("--- nanocore started 2026-12-05T09:00:00Z\n" + SEGFAULT_REPORT)
        self.assertEqual(self.report(), "2026-12-05T09:00:00Z")
        self.assertIsNone(self.report())

    def test_a_traceback_without_any_start_line(self) -> None:
        self.path.write_text(SEGFAULT_REPORT)
        self.assertEqual(faults.earlier_death(self.path), "an earlier run")

    def test_only_the_end_of_a_large_file_is_read(self) -> None:
        self.patch(faults, "MAX_READ", 200)
        self.path.write_text(
            "--- nanocore started 2026-12-05T08:00:00Z\n"
            + SEGFAULT_REPORT
            + "x" * 300
            + "\n--- nanocore started 2026-12-05T09:00:00Z\n"
        )
        self.assertIsNone(faults.earlier_death(self.path))


class FatalErrorProcessTests(CoreProcessCase):
    """A real Core, crashed in C code or killed by a signal nothing handles."""

    def fault_report(self) -> str:
        return self.layout.fault_file.read_text(errors="replace")

    async def test_a_crash_in_c_code_leaves_every_threads_traceback(self) -> None:
        process = self.spawn(runner=[str(FAULT_CHILD)])
        await self.serving(process)
        self.assertEqual(await self.signalled(process, signal.SIGUSR2), signal.SIGSEGV)
        report = self.fault_report()
        self.assertIn("Fatal Python error: Segmentation fault", report)
        self.assertIn("in crash_in_c", report)  # the crashing thread, at the crash
        self.assertIn("Current thread", report)
        # Every thread: the store's worker too, not only the one that crashed.
        self.assertGreaterEqual(report.count(faults.TRACEBACK_MARK), 2, report)

        # The next start says the previous run died, and where to read why.
        process = self.spawn()
        await self.serving(process)
        await self.stopped(process)
        log = self.log_file().read_text()
        self.assertIn("died of a fatal error or a signal", log)
        self.assertIn(str(self.layout.fault_file), log)

    async def test_a_hangup_is_said_and_outlived(self) -> None:
        """logrotate's usual ``postrotate kill -HUP`` ended Core without a word (QA pass 22)."""
        process = self.spawn()
        await self.serving(process)
        transport = process.transport
        assert transport is not None
        transport.signalProcess("HUP")

        async def said() -> bool:
            return tap.HANGUP_SAID in self.log_file().read_text()

        await self.eventually(said, "the hang-up said in the log")
        await self.serving(process)  # still answering
        await self.stopped(process)

    async def test_a_death_by_sigalrm_leaves_the_main_loops_traceback(self) -> None:
        process = self.spawn()
        await self.serving(process)
        self.assertEqual(await self.signalled(process, signal.SIGALRM), signal.SIGALRM)
        report = self.fault_report()
        self.assertIn("Current thread", report)
        self.assertIn("twisted", report)  # the reactor's loop, where the signal found it
        self.assertNotIn("Main loop terminated.", self.log_file().read_text())
