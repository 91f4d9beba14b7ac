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
    #: When its first event was said: its period runs from then.
    started: float
    count: int = 0


class RateLimitedLog:
    """One line per kind of event and source per ``period``, and one more with the count.

    ``kind`` names the event in the count line ("refused signatures"); ``source`` is whoever
    caused it (a peer address). Both key the count, so one noisy peer does not hide another.
    Each key's period starts with its first line, so a source is said at most once a period
    whatever the others do (QA pass 24: with one period for all, a source first said just
    before it ended was said again seconds later). At most ``max_sources`` sources of a kind
    are told apart at a time (memory and lines stay bounded when the sources are many). The
    count lines are written when their period ends, on the injected clock (a timer runs only
    while some source has a count to write); :meth:`flush` writes them at once and cancels
    that timer (call it when the owner stops).
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
        #: Sources told apart now, per kind.
        self._sources: dict[str, int] = {}
        self._flush_call: IDelayedCall | None = None

    def warn(self, kind: str, source: str, format: str, /, **fields: Any) -> None:
        self.emit(LogLevel.warn, kind, source, format, **fields)

    def info(self, kind: str, source: str, format: str, /, **fields: Any) -> None:
        self.emit(LogLevel.info, kind, source, format, **fields)

    def emit(self, level: LogLevel, kind: str, source: str, format: str, /, **fields: Any) -> None:
        """Log ``format`` with ``fields`` (and ``source``, unless given) if it is the first
        ``kind`` from ``source`` in its period; otherwise count it."""
        now = self._clock.seconds()
        key = (kind, source)
        tally = self._current(key, now)
        if tally is None:
            if self._sources.get(kind, 0) >= self._max_sources:
                self._end_periods(now)  # sources whose period ended free their place
            if self._sources.get(kind, 0) >= self._max_sources:
                key = (kind, OTHER_SOURCES)
                tally = self._current(key, now)
            if tally is None:
                tally = self._tallies[key] = _Tally(level, now)
                self._sources[kind] = self._sources.get(kind, 0) + 1
        tally.count += 1
        if tally.count == 1:
            fields.setdefault("source", source)
            self._log.emit(level, format, **fields)
        elif tally.count == 2:
            self._wake_at(tally.started + self._period, now)

    def flush(self) -> None:
        """Write the count of every source that had more than its one line, and start over."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        now = self._clock.seconds()
        for key, tally in list(self._tallies.items()):
            self._end(key, tally, now)

    def _current(self, key: tuple[str, str], now: float) -> _Tally | None:
        """``key``'s tally if its period still runs (one that ended is ended first)."""
        tally = self._tallies.get(key)
        if tally is not None and now >= tally.started + self._period:
            self._end(key, tally, now)
            return None
        return tally

    def _end(self, key: tuple[str, str], tally: _Tally, now: float) -> None:
        del self._tallies[key]
        kind, source = key
        self._sources[kind] -= 1
        if not self._sources[kind]:
            del self._sources[kind]
        if tally.count > 1:
            self._log.emit(
                tally.level,
                "{count} more {kind} from {source} in the last {seconds:.0f} s"
                " (one line per source every {period:g} s)",
                count=tally.count - 1,
                kind=kind,
                source=source,
                seconds=min(now - tally.started, self._period),
                period=self._period,
                suppressed=True,
            )

    def _end_periods(self, now: float) -> None:
        """End every period that ran out. The tallies are kept in the order their periods
        began, all of one length: those that ended are the first ones, up to one that has not
        (a flood of new sources at the bound looks at one tally per event, not at all)."""
        while self._tallies:
            key, tally = next(iter(self._tallies.items()))
            if now < tally.started + self._period:
                return
            self._end(key, tally, now)

    def _wake_at(self, when: float, now: float) -> None:
        """Have the timer fire by ``when`` (a count is due to be written then)."""
        call = self._flush_call
        if call is not None and call.active():
            if call.getTime() > when:
                call.reset(max(0.0, when - now))
            return
        self._flush_call = self._clock.callLater(max(0.0, when - now), self._woken)

    def _woken(self) -> None:
        """Write the counts due, and wait for the next (only while counts are being kept)."""
        self._flush_call = None
        now = self._clock.seconds()
        self._end_periods(now)
        due = [t.started + self._period for t in self._tallies.values() if t.count > 1]
        if due:
            self._wake_at(min(due), now)
