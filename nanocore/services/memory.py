"""Giving memory back after bursts, so a Core that sits for months sits in little memory.

glibc's ``malloc`` keeps what a burst freed (a wave of TLS handshakes, a load of the store,
a busy minute of the API) for the process to reuse, spread over its heaps; only memory at a
heap's very top is returned by itself. ``malloc_trim(0)`` returns every free page. Measured
(benchmarks/README.md, #15): a bare Twisted TLS server holding idle connections drops from ~62
to ~49 KiB per connection with it, because each TLS 1.3 handshake leaves ~13 KiB of freed, but
not returned, memory.

:class:`MemoryTrim` trims every ``interval`` seconds and shortly after whoever knows a burst
ended asks for it (:meth:`MemoryTrim.soon`): the Cell link when its last handshake is over.
Where there is no glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from nanocore.services.periodic import Periodic

#: Seconds between two trims, at least; and from a burst's end to its trim.
TRIM_INTERVAL = 60.0
TRIM_DELAY = 2.0


def _glibc_trim() -> Callable[[], object] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class MemoryTrim(Periodic):
    """Returns freed memory to the system every ``interval`` s and ``delay`` s after
    :meth:`soon`; ``release`` does it (glibc's ``malloc_trim``, or nothing)."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        interval: float = TRIM_INTERVAL,
        delay: float = TRIM_DELAY,
        release: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(interval, self.trim)
        self.clock = clock
        self._clock = clock
        self._delay = delay
        self._release = release if release is not None else _glibc_trim()
        self._pending: IDelayedCall | None = None
        #: Trims done so far (for tests and benchmarks).
        self.trims = 0

    def soon(self) -> None:
        """A burst just ended: trim in a moment (once, however often this is called)."""
        if self.running and (self._pending is None or not self._pending.active()):
            self._pending = self._clock.callLater(self._delay, self.trim)

    def trim(self) -> None:
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        if self._release is None:
            return
        self._release()
        self.trims += 1

    def stopService(self) -> object:
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        return super().stopService()
