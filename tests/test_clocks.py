"""Timers ignore steps of the system clock; dates follow them (QA pass 22, C1: a step back of
10 minutes held every keep-alive and silence check armed before it for 10 minutes)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nanocore.clocks import steady_timers, wall_seconds


class SteadyTimersTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.monotonic = 5_000.0
        self.wall = 1_796_000_000.0
        # A Clock schedules as the reactor does: by comparing its calls with ``seconds()``.
        self.reactor = Clock()
        steady_timers(self.reactor, lambda: self.monotonic, lambda: self.wall)

    def elapse(self, seconds: float, wall_step: float = 0.0) -> None:
        self.monotonic += seconds
        self.wall += seconds + wall_step
        self.reactor.advance(0)  # the reactor looks at its due calls

    def test_the_steady_time_reads_the_wall_time_at_start(self) -> None:
        self.assertEqual(self.reactor.seconds(), 1_796_000_000.0)
        self.assertEqual(wall_seconds(self.reactor), 1_796_000_000.0)

    def test_a_step_back_holds_no_timer_and_dates_follow_it(self) -> None:
        fired: list[float] = []
        self.reactor.callLater(5.0, lambda: fired.append(self.monotonic))
        self.elapse(1.0, wall_step=-600.0)
        self.assertEqual(wall_seconds(self.reactor), 1_796_000_001.0 - 600.0)
        self.elapse(4.0)
        self.assertEqual(fired, [5_005.0])

    def test_a_step_forward_fires_no_timer_early(self) -> None:
        fired: list[float] = []
        self.reactor.callLater(5.0, lambda: fired.append(self.monotonic))
        self.elapse(1.0, wall_step=600.0)
        self.assertEqual(fired, [])
        self.elapse(4.0)
        self.assertEqual(fired, [5_005.0])

    def test_a_clock_without_a_wall_of_its_own_is_both(self) -> None:
        clock = Clock()
        clock.advance(42.0)
        self.assertEqual(wall_seconds(clock), 42.0)
