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


#: How late a deadline may fire before Core counts the delay as its own stall (stopped,
#: paused, starved of CPU) rather than the peer's slowness: what the peer sent meanwhile is
#: then still unread (the reactor runs due timers before it reads), so the deadline is looked
#: at again ``STALL_GRACE`` seconds later, once.
STALL_AFTER = 2.0
STALL_GRACE = 1.0


def overdue_from_own_stall(clock: IReactorTime, due: float | None) -> bool:
    """Whether a deadline due at ``due`` fires :data:`STALL_AFTER` or more late: Core itself
    did not run, and the peer deserves a look at what it sent meanwhile first."""
    return due is not None and clock.seconds() - due >= STALL_AFTER
