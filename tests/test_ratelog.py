"""RateLimitedLog: a flood gives a bounded number of lines, and the lines say how big it was."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
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

    def test_each_source_is_said_once_in_its_own_period(self) -> None:
        """QA pass 24: with one period for all sources, a source first said just before it
        ended was said again seconds later."""
        self.bad("10.0.0.1")
        self.bad("10.0.0.1")
        self.clock.advance(59)
        self.bad("10.0.0.2")
        self.clock.advance(2)  # 10.0.0.1's period ended, and its count was written
        self.bad("10.0.0.2")
        self.assertEqual(self.lines.texts(), [
            "bad packet from 10.0.0.1",
            "bad packet from 10.0.0.2",
            "1 more bad packets from 10.0.0.1 in the last 60 s (one line per source every 60 s)",
        ])  # fmt: skip
        self.clock.advance(58)
        self.assertEqual(
            self.lines.texts()[-1],
            "1 more bad packets from 10.0.0.2 in the last 60 s (one line per source every 60 s)",
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_source_whose_period_ended_frees_its_place(self) -> None:
        for number in range(3):
            self.bad(f"10.0.0.{number}")
        self.clock.advance(60)
        self.bad("10.0.0.9")
        self.bad("10.0.0.9")
        self.noise.flush()
        counts = [(e["source"], e["count"]) for e in self.lines.events if e.get("suppressed")]
        self.assertEqual(counts, [("10.0.0.9", 1)])  # told apart, not among "other sources"

    @given(
        st.lists(
            st.tuples(st.floats(0, 90), st.sampled_from(["a", "b", "c", "d", "e"])),
            max_size=60,
        )
    )
    def test_no_source_is_said_twice_within_a_period_and_every_event_is_counted(
        self, events: list[tuple[float, str]]
    ) -> None:
        clock, lines = Clock(), Lines()
        noise = RateLimitedLog(lines.log, clock, period=60.0, max_sources=5)
        for step, source in events:
            clock.advance(step)
            noise.warn("bad packets", source, "bad packet from {source}", at=clock.seconds())
        clock.advance(60)  # every count due is written by the timer, which then stops
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(lines.whole() + lines.suppressed(), len(events))
        said: dict[str, float] = {}
        for event in lines.events:
            if not event.get("suppressed"):
                last = said.get(event["source"])
                self.assertTrue(last is None or event["at"] - last >= 60.0, (last, event))
                said[event["source"]] = event["at"]

    def test_bad_settings_are_refused(self) -> None:
        self.assertRaises(ValueError, RateLimitedLog, self.lines.log, self.clock, period=0)
        self.assertRaises(ValueError, RateLimitedLog, self.lines.log, self.clock, max_sources=0)
