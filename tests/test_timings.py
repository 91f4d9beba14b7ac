"""Decision times: kept in bounded memory, logged now and then, recorded by placement."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from nanocore.durations import Durations, DurationSummary, nearest_rank
from nanocore.operations.core import Operations
from nanocore.services.timings import TimingReport
from tests.test_guests_properties import World, _end


class DurationsTests(SynchronousTestCase):
    def test_nothing_recorded_takes_none(self) -> None:
        self.assertIsNone(Durations().take())

    def test_summary_of_a_span(self) -> None:
        durations = Durations()
        for milliseconds in range(100, 0, -1):
            durations.add(milliseconds / 1000)
        self.assertEqual(durations.take(), DurationSummary(100, 100, 0.05, 0.099, 0.1))

    def test_a_take_begins_a_new_span(self) -> None:
        durations = Durations()
        durations.add(9.0)
        durations.take()
        durations.add(1.0)
        self.assertEqual(durations.take(), DurationSummary(1, 1, 1.0, 1.0, 1.0))
        self.assertIsNone(durations.take())

    def test_only_the_latest_are_kept_the_count_and_longest_cover_all(self) -> None:
        durations = Durations(keep=3)
        for seconds in (7.0, 1.0, 2.0, 3.0):
            durations.add(seconds)
        self.assertEqual(durations.take(), DurationSummary(4, 3, 2.0, 3.0, 7.0))

    def test_nearest_rank(self) -> None:
        self.assertEqual(nearest_rank([1.0], 0.99), 1.0)
        self.assertEqual(nearest_rank([1.0, 2.0], 0.5), 1.0)
        self.assertEqual(nearest_rank([1.0, 2.0], 0.51), 2.0)


class TimingReportTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.decisions = Durations()
        self.report = TimingReport(self.clock, {"placement decision": self.decisions}, interval=60)

    def lines(self, events: list[dict[str, object]]) -> list[str]:
        return [str(e["summary"]) for e in events if e.get("step") == "placement decision"]

    def test_a_line_per_interval_with_records_and_one_on_stop(self) -> None:
        with capturedLogs() as events:
            self.report.startService()
            self.decisions.add(0.002)
            self.clock.advance(60)
            self.clock.advance(60)  # nothing recorded: no line
            self.decisions.add(0.004)
            self.report.stopService()
        self.assertEqual(
            self.lines(events),
            [
                "1 in all, p50 2.000 ms, p99 2.000 ms, longest 2.000 ms",
                "1 in all, p50 4.000 ms, p99 4.000 ms, longest 4.000 ms",
            ],
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_report_never_started_says_nothing_on_stop(self) -> None:
        self.decisions.add(0.002)
        with capturedLogs() as events:
            self.report.stopService()
        self.assertEqual(self.lines(events), [])


class TimedWorld(World):
    """A World whose placement records into ``decisions``."""

    decisions: Durations

    def operations(self, **options: Any) -> Operations:
        self.decisions = Durations()
        return super().operations(decision_times=self.decisions)


class PlacementTimesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp())
        self.world = TimedWorld(self.folder)

    def tearDown(self) -> None:
        _end(self.world, self.folder)

    def test_every_decision_is_timed_refusals_too(self) -> None:
        """Two Cells of 4 GiB hold eight 1 GiB guests: ten creates are ten decisions, two of
        them refusals; a name already taken is refused before any decision."""
        for index in range(10):
            self.world.create(index, "ok")
        self.world.create(0, "ok")
        self.assertEqual(len(self.world.store.view.instances), 8)
        summary = self.decisions_taken()
        self.assertEqual(summary.count, 10)
        self.assertGreater(summary.longest, 0.0)

    def decisions_taken(self) -> DurationSummary:
        summary = self.world.decisions.take()
        assert summary is not None
        return summary
