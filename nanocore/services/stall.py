"""Saying when Core itself did not run: stopped (``SIGSTOP``), paused (a VM), starved of CPU;
and when the system clock stepped (timers run on a steady clock: ``nanocore.clocks``).

Timers that fell due meanwhile run late, before what peers sent meanwhile is read. The Cell
links look again before they judge a Cell silent (``clocks.STALL_AFTER``); requests that
were waiting on a Cell may have timed out, and their late answers are taken as such. This says
it once in the log, so that whoever reads those lines knows why.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nanocore.clocks import STALL_AFTER, wall_seconds
from nanocore.cluster.transport import DISCONNECT_AFTER
from nanocore.services.periodic import Periodic

#: Seconds between two looks at the clock.
STEP = 1.0
#: A change of the wall clock against the steady one said as a step (NTP slews by less
#: than 0.5 ms a second).
CLOCK_STEP = 1.0
#: Said of a stall as long as a Cell's own patience: each dropped the silent Core (QA pass 18:
#: the goodbyes that follow such a stall were tied to nothing in the log).
DROPPED_BY_CELLS = (
    f". Cells drop a Core silent for {DISCONNECT_AFTER:g} s themselves: those that said "
    "goodbye meanwhile (their guests shown lost) link again within seconds"
)


class StallWatch(Periodic):
    """Logs every stretch of at least ``threshold`` seconds in which the reactor did not run."""

    log = Logger()

    def __init__(
        self, clock: IReactorTime, *, step: float = STEP, threshold: float = STALL_AFTER
    ) -> None:
        super().__init__(step, self.look)
        self.clock = clock  # the timer's
        self._clock = clock
        self._threshold = threshold
        #: The steady and the wall time at the last look.
        self._last: tuple[float, float] | None = None
        #: Stalls seen so far.
        self.stalls = 0

    def startService(self) -> None:
        self._last = None
        super().startService()

    def look(self) -> None:
        now, wall = self._clock.seconds(), wall_seconds(self._clock)
        previous, self._last = self._last, (now, wall)
        if previous is None:
            return
        last, last_wall = previous
        stepped = (wall - last_wall) - (now - last)
        if abs(stepped) >= CLOCK_STEP:
            self.log.warn(
                "the system clock stepped {way} by {seconds:.1f} s: Core's timers and the"
                " silences of Cells are measured on a steady clock and did not move; signed"
                " dates and the dates Core writes follow the new time",
                way="back" if stepped < 0 else "forward",
                seconds=abs(stepped),
            )
        if now - last - self.step < self._threshold:
            return
        self.stalls += 1
        seconds = now - last
        self.log.warn(
            "nanocore did not run for {seconds:.1f} s (stopped, paused or starved of CPU): "
            "Cell links are heard again before any is judged silent; requests waiting on a "
            "Cell meanwhile may have answered 'cell timeout'{dropped}",
            seconds=seconds,
            dropped=DROPPED_BY_CELLS if seconds >= DISCONNECT_AFTER else "",
        )
