"""A stretch in which Core did not run is said once in the log."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from nanocore.services.stall import StallWatch


class StallWatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.watch = StallWatch(self.clock, step=1.0, threshold=2.0)
        self.watch.startService()
        self.addCleanup(self.watch.stopService)

    def lines(self) -> list[str]:
        return [
            formatEvent(event) for event in self.observer if "did not run" in formatEvent(event)
        ]

    def test_running_at_its_pace_says_nothing(self) -> None:
        self.clock.pump([1.0] * 120)
        self.clock.pump([2.9] * 10)  # late, but less than the threshold each time
        self.assertEqual((self.lines(), self.watch.stalls), ([], 0))

    def test_a_stop_of_10_s_is_said_once_with_its_length(self) -> None:
        self.clock.pump([1.0] * 5)
        self.clock.advance(10.0)
        self.clock.pump([1.0] * 5)
        self.assertEqual(self.lines(), [
            "nanocore did not run for 10.0 s (stopped, paused or starved of CPU): Cell links "
            "are heard again before any is judged silent; requests waiting on a Cell meanwhile "
            "may have answered 'cell timeout'"
        ])  # fmt: skip
        self.assertEqual(self.watch.stalls, 1)

    def test_a_stop_the_cells_dropped_core_for_says_so(self) -> None:
        self.clock.pump([1.0] * 5)
        self.clock.advance(30.0)
        self.clock.pump([1.0] * 5)
        (line,) = self.lines()
        self.assertTrue(line.startswith("nanocore did not run for 30.0 s"), line)
        said = (
            "Cells drop a Core silent for 15 s themselves: those that said goodbye meanwhile "
            "(their guests shown lost) link again within seconds"
        )
        self.assertIn(said, line)

    def test_a_step_of_the_system_clock_is_said_and_is_no_stall(self) -> None:
        """With timers on a steady clock, a step of the wall clock moves nothing but dates:
        said once, with its size and way; a forward step was said as a stall (QA pass 22)."""
        self.watch.stopService()
        wall = [0.0]
        self.clock.wall_seconds = lambda: self.clock.seconds() + wall[0]  # type: ignore[attr-defined]
        self.watch.startService()
        self.clock.pump([1.0] * 3)
        wall[0] = -600.0
        self.clock.pump([1.0] * 3)
        wall[0] = 0.0
        self.clock.pump([1.0] * 3)
        steps = [formatEvent(e) for e in self.observer if "stepped" in formatEvent(e)]
        self.assertEqual(steps, [
            "the system clock stepped back by 600.0 s: Core's timers and the silences of Cells"
            " are measured on a steady clock and did not move; signed dates and the dates Core"
            " writes follow the new time",
            "the system clock stepped forward by 600.0 s: Core's timers and the silences of"
            " Cells are measured on a steady clock and did not move; signed dates and the dates"
            " Core writes follow the new time",
        ])  # fmt: skip
        self.assertEqual((self.lines(), self.watch.stalls), ([], 0))

    def test_a_restart_of_the_service_does_not_count_its_pause(self) -> None:
        self.watch.stopService()
        self.clock.advance(60.0)
        self.watch.startService()
        self.clock.pump([1.0] * 3)
        self.assertEqual(self.watch.stalls, 0)
