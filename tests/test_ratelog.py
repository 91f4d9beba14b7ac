"""RateLimitedLog: a flood gives a bounded number of lines, and the lines say how big it was."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from nanocore.ratelog import OTHER_SOURCES, RateLimitedLog


class Lines:
    """A Logger's events, as the lines an operator reads."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.log = Logger(namespace="test.noise", observer=self.events.append)

    def texts(self) -> list[str]:
        return [formatEvent(event) for event in self.events]

    def suppressed(self) -> int:
        return sum(e["count"] for e in self.events if e.get("suppressed"))

    def whole(self) -> int:
        return sum(1 for e in self.events if not e.get("suppressed"))


class RateLimitedLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.lines = Lines()
        self.noise = RateLimitedLog(self.lines.log, self.clock, period=60.0, max_sources=3)

    def bad(self, source: str = "10.0.0.1") -> None:
        self.noise.warn("bad packets", source, "bad packet from {source}", source=source)

    def test_ten_thousand_events_from_one_source_give_bounded_lines_with_the_counts(self) -> None:
        for _ in range(10_000):
            self.bad()
            self.clock.advance(0.06)  # 10,000 events over 600 s: ten periods
        self.clock.advance(60)
        # At most one line as it happened and one count per period.
        self.assertLessEqual(len(self.lines.events), 2 * 11)
        self.assertEqual(self.lines.whole() + self.lines.suppressed(), 10_000)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_the_count_line_names_kind_source_and_number(self) -> None:
        for _ in range(5):
            self.bad()
        self.assertEqual(self.lines.texts(), ["bad packet from 10.0.0.1"])
        self.clock.advance(60)
        self.assertEqual(
            self.lines.texts()[1],
            "4 more bad packets from 10.0.0.1 in the last 60 s (one line per source every 60 s)",
        )
        self.assertEqual(self.lines.events[1]["log_level"], LogLevel.warn)

    def test_a_single_event_needs_no_count_line_and_no_timer(self) -> None:
        self.bad()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(120)
        self.bad()
        self.assertEqual(self.lines.texts(), ["bad packet from 10.0.0.1"] * 2)

    def test_sources_and_kinds_are_counted_apart(self) -> None:
        self.bad("10.0.0.1")
        self.bad("10.0.0.2")
        self.bad("10.0.0.1")
        self.noise.info("idle clients", "10.0.0.1", "idle {source}", source="10.0.0.1")
        self.assertEqual(self.lines.whole(), 3)
        self.noise.flush()
        self.assertEqual(
            [(e["source"], e["count"]) for e in self.lines.events if e.get("suppressed")],
            [("10.0.0.1", 1)],
        )

    def test_sources_beyond_the_bound_are_counted_together(self) -> None:
        for number in range(10):
            self.bad(f"10.0.0.{number}")
        # three sources told apart, the first of the others logged whole, the rest counted.
        self.assertEqual(self.lines.whole(), 4)
        self.noise.flush()
        counts = [(e["source"], e["count"]) for e in self.lines.events if e.get("suppressed")]
        self.assertEqual(counts, [(OTHER_SOURCES, 6)])

    def test_flush_writes_the_counts_now_and_stops_the_timer(self) -> None:
        self.bad()
        self.bad()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.noise.flush()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.lines.suppressed(), 1)

    def test_bad_settings_are_refused(self) -> None:
        self.assertRaises(ValueError, RateLimitedLog, self.lines.log, self.clock, period=0)
        self.assertRaises(ValueError, RateLimitedLog, self.lines.log, self.clock, max_sources=0)
