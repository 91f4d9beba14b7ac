"""Log lines for events that anyone who can reach a port can cause at will, at a bounded rate.

An idle HTTP client timing out, a connection that never completes its handshake, a datagram
that is not a sonar packet, a request with a bad signature: each is worth a line when it
happens, and worthless as the ten-thousandth line of a flood (issue #14 measured 3.6 MB of such
lines in 15 minutes). :class:`RateLimitedLog` writes the first event of each kind from each
source in a period whole, counts the others, and at the end of the period writes one line per
source that had more, with their number. So a flood costs at most two lines per source per
period, however fast it comes, and the operator still learns how big it was.

This module imports nothing of ours, so that every room may use it.
"""

from __future__ import annotations

from typing import Any

from attrs import define
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel

#: Seconds over which the events of one kind from one source give one line and one count.
DEFAULT_PERIOD = 60.0
#: Sources told apart per period; the events of any further source are counted together.
DEFAULT_MAX_SOURCES = 100
#: The source the events of sources beyond ``max_sources`` are counted under.
OTHER_SOURCES = "other sources"


@define
class _Tally:
    level: LogLevel
    count: int = 0


class RateLimitedLog:
    """One line per kind of event and source per ``period``, and one more with the count.

    ``kind`` names the event in the count line ("refused signatures"); ``source`` is whoever
    caused it (a peer address). Both key the count, so one noisy peer does not hide another,
    and at most ``max_sources`` sources are told apart per period (memory and lines stay
    bounded when the sources are many). The count lines are written when the period ends, on
    the injected clock; :meth:`flush` writes them at once and cancels that timer (call it when
    the owner stops).
    """

    def __init__(
        self,
        log: Logger,
        clock: IReactorTime,
        *,
        period: float = DEFAULT_PERIOD,
        max_sources: int = DEFAULT_MAX_SOURCES,
    ) -> None:
        if not (period > 0 and max_sources >= 1):
            raise ValueError("period must be > 0 and max_sources >= 1")
        self._log = log
        self._clock = clock
        self._period = period
        self._max_sources = max_sources
        self._tallies: dict[tuple[str, str], _Tally] = {}
        #: Sources told apart this period, per kind.
        self._sources: dict[str, int] = {}
        self._started = 0.0
        self._flush_call: IDelayedCall | None = None

    def warn(self, kind: str, source: str, format: str, /, **fields: Any) -> None:
        self.emit(LogLevel.warn, kind, source, format, **fields)

    def info(self, kind: str, source: str, format: str, /, **fields: Any) -> None:
        self.emit(LogLevel.info, kind, source, format, **fields)

    def emit(self, level: LogLevel, kind: str, source: str, format: str, /, **fields: Any) -> None:
        """Log ``format`` with ``fields`` (and ``source``, unless given) if it is the first
        ``kind`` from ``source`` this period; otherwise count it."""
        now = self._clock.seconds()
        if self._tallies and now >= self._started + self._period:
            self.flush()
        if not self._tallies:
            self._started = now
        key = (kind, source)
        tally = self._tallies.get(key)
        if tally is None:
            sources = self._sources.get(kind, 0)
            if sources >= self._max_sources:
                key = (kind, OTHER_SOURCES)
                tally = self._tallies.get(key)
            if tally is None:
                tally = self._tallies[key] = _Tally(level)
                self._sources[kind] = sources + 1
        tally.count += 1
        if tally.count == 1:
            fields.setdefault("source", source)
            self._log.emit(level, format, **fields)
        elif self._flush_call is None:
            self._flush_call = self._clock.callLater(
                max(0.0, self._started + self._period - now), self.flush
            )

    def flush(self) -> None:
        """Write the count of every source that had more than its one line, and start over."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        tallies, self._tallies = self._tallies, {}
        self._sources = {}
        seconds = min(self._clock.seconds() - self._started, self._period)
        for (kind, source), tally in tallies.items():
            if tally.count > 1:
                self._log.emit(
                    tally.level,
                    "{count} more {kind} from {source} in the last {seconds:.0f} s"
                    " (one line per source every {period:g} s)",
                    count=tally.count - 1,
                    kind=kind,
                    source=source,
                    seconds=seconds,
                    period=self._period,
                    suppressed=True,
                )
