"""The two times Core keeps: a steady one for timers and durations, the wall clock for dates.

Twisted schedules by the wall clock (twisted#2424): a step of the system clock back by ten
minutes (NTP correcting a clock set wrong at boot, a VM restored or migrated) held every timer
armed before it for ten minutes, so no keep-alive went out (every TLS Cell dropped Core) and no
silent Cell was judged lost (QA pass 22, C1); a step forward made every timer fall due at once.
Go's timers run on the monotonic clock. :func:`steady_timers` makes the reactor's ``seconds``
monotonic, anchored at the wall time when Core starts, so timers and every duration Core
measures (silences, deadlines, retries) ignore steps; what is compared with the world outside
(a request's signed date, the dates written in records and file names) reads the wall clock,
through :func:`wall_seconds`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime


def steady_timers(
    reactor: Any,
    monotonic: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> None:
    """Make ``reactor.seconds`` steady (``monotonic``, reading the ``wall`` time now), and
    keep ``wall`` as the reactor's ``wall_seconds``. Call it before the reactor runs: a timer
    armed earlier is due at the same moment either way (the two read alike now)."""
    offset = wall() - monotonic()
    reactor.seconds = lambda: monotonic() + offset
    reactor.wall_seconds = wall


def wall_seconds(clock: IReactorTime) -> float:
    """The wall clock's time: ``clock``'s own ``wall_seconds`` where it keeps one apart (the
    reactor, once :func:`steady_timers`), else its ``seconds`` (a test's ``Clock`` is both)."""
    wall: Callable[[], float] | None = getattr(clock, "wall_seconds", None)
    return wall() if wall is not None else clock.seconds()
