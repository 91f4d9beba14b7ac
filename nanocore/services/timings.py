"""A log line now and then saying how long Core's recurring steps took (store commits from
request to durable answer, placement decisions), for operators and benchmarks alike: a slow
disk shows in the commits' p99 (``benchmarks/guest_bench.py`` reads the last lines after
stopping Core).

Every ``interval`` seconds, and once more on stop, each named :class:`Durations` with records
since the last line gets one line; quiet spans log nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nanocore.durations import Durations

#: Seconds between two lines of the same step.
REPORT_INTERVAL = 600.0

log = Logger()


class TimingReport(TimerService):
    """Logs each step's :class:`~nanocore.durations.DurationSummary` since its last line."""

    def __init__(
        self,
        clock: IReactorTime,
        steps: Mapping[str, Durations],
        *,
        interval: float = REPORT_INTERVAL,
    ) -> None:
        super().__init__(interval, self.report)
        self.clock = clock
        self._steps = steps

    def report(self) -> None:
        for step, durations in self._steps.items():
            summary = durations.take()
            if summary is not None:
                log.info("{step} times since the last line: {summary}", step=step, summary=summary)

    def stopService(self) -> object:
        if not self.running:
            return None  # never started (a sibling's start failed first)
        self.report()
        return super().stopService()
