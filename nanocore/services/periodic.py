"""A ``TimerService`` that may be stopped without having started.

A Core's services stop in reverse order even when a sibling's start failed before theirs
(``order.InOrder``); Twisted's ``TimerService`` cannot stop before it started.
"""

from __future__ import annotations

from twisted.application.internet import TimerService


class Periodic(TimerService):
    """Calls its function at start and every ``step`` seconds of ``clock``."""

    def stopService(self) -> object:
        if not self.running:
            return None  # never started (a sibling's start failed first)
        return super().stopService()
