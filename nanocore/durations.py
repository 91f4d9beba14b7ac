"""How long a recurring step takes in a running Core, kept in bounded memory for its report.

The store records each commit and placement each decision here (``docs/architecture.md``,
"service tree"); the :mod:`nanocore.services.timings` service logs what was recorded since
its last line. Only the latest ``keep`` durations are kept for the percentiles; the count and
the longest cover every one since the last report.
"""

from __future__ import annotations

import math
from collections import deque

from attrs import frozen


@frozen
class DurationSummary:
    """What a span of records showed; times in seconds."""

    count: int
    #: How many of the latest records the percentiles are taken over.
    sampled: int
    median: float
    p99: float
    longest: float

    def __str__(self) -> str:
        return (
            f"{self.count} in all, p50 {self.median * 1000:.3f} ms, p99 {self.p99 * 1000:.3f} "
            f"ms, longest {self.longest * 1000:.3f} ms"
        )


def nearest_rank(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of an ascending, non-empty list."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class Durations:
    """The durations recorded since the last :meth:`take`: their count, the longest, and the
    latest ``keep`` of them."""

    def __init__(self, keep: int = 10_000) -> None:
        self._latest: deque[float] = deque(maxlen=keep)
        self._count = 0
        self._longest = 0.0

    def add(self, seconds: float) -> None:
        self._latest.append(seconds)
        self._count += 1
        if seconds > self._longest:
            self._longest = seconds

    def take(self) -> DurationSummary | None:
        """The summary of what was recorded since the last call (None: nothing), and a new
        span begins."""
        if not self._count:
            return None
        ordered = sorted(self._latest)
        summary = DurationSummary(
            self._count,
            len(ordered),
            nearest_rank(ordered, 0.5),
            nearest_rank(ordered, 0.99),
            self._longest,
        )
        self._latest.clear()
        self._count, self._longest = 0, 0.0
        return summary
