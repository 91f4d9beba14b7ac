"""What Twisted's HTTP objects hold of a request, read the same way wherever we need it.

- The request line while the headers are read: Twisted gives a request its method and path
  only once the whole body is in; until then the channel keeps them in ``_command`` and
  ``_path`` (set as the request line is parsed, removed when the body is in). The API's wire
  limits tell a header line from the request line by them, and an upload is routed (and
  refused) from them before its body.
- The headers as signatures cover them: lower-cased names with their first value.
- The answer's headers without Twisted's ``Server`` (:class:`UnbrandedRequest`).
- A request's line, headers and body in time (:class:`RequestInTime`).
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, Request
from twisted.web.server import Request as ServerRequest

from nanocore.clocks import STALL_GRACE, overdue_from_own_stall

_DONE = Failure(ConnectionDone())


def request_line(channel: HTTPChannel) -> tuple[bytes, bytes, bytes] | None:
    """The method, target and version of the request whose headers ``channel`` is reading
    (None before its request line, and once its body is in)."""
    method: bytes | None = getattr(channel, "_command", None)
    target: bytes | None = getattr(channel, "_path", None)
    if method is None or target is None:
        return None
    return method, target, getattr(channel, "_version", b"")


def first_headers(request: Request) -> dict[str, str]:
    """Lower-cased header names with their *first* value, as signatures cover them."""
    headers: dict[str, str] = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        if values:
            headers[name.decode("latin-1").lower()] = values[0].decode("latin-1")
    return headers


class UnbrandedRequest(ServerRequest):
    """A request answered without the ``Server`` header Twisted sets: Nano's Go servers sent
    none, and Twisted's names its exact version to whoever asks (a scanner's first question)."""

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            self.responseHeaders.removeHeader(b"server")
        super().write(data)


class RequestInTime(HTTPChannel):
    """A channel whose requests must arrive in time: the line and headers within the idle
    timeout from their first byte, and a body read whole within it from the end of the
    headers. Twisted restarts the timeout for every chunk, so a client sending a byte a second
    held its connection for hours (QA pass 20: 4,096 header tricklers held every place of the
    API; pass 21: a body trickling a byte every 30 s). A body streamed to storage (its
    request has a ``transfer``: an upload) still restarts it per chunk: its pace is its own.
    ``late`` tells ``timed_out`` what ran out: ``"headers"``, ``"body"``, or nothing (the
    connection was idle).

    A timeout that fires :data:`~nanocore.clocks.STALL_AFTER` or more late is Core's own stall
    (stopped, a paused VM): the reactor runs due timers before it reads, so what the client
    sent meanwhile is read first and the timeout looked at again, once (QA pass 22: after a
    60 s stop, an upload sending steadily was cut, and a request whose headers had all
    arrived got 408)."""

    late = ""
    #: When the armed timeout falls due (None: none armed, or no clock to tell).
    _due: float | None = None
    _looking_again = False
    _gone = False

    @property
    def serving(self) -> bool:
        """Whether a request whose headers arrived is being read, served or answered (an
        idle connection, or one still sending headers, is not): places are given up last."""
        return bool(self.requests) and self.late != "headers"

    def resetTimeout(self) -> None:
        if self.line_mode:  # the next request's line and headers (a body is raw mode)
            if self.late:
                return
            self.late = "headers"
        elif self.late:  # a body read whole
            return
        self._due = self._due_after(self.timeOut)
        super().resetTimeout()

    def setTimeout(self, period: float | None) -> float | None:
        self._due = self._due_after(period)
        previous: float | None = super().setTimeout(period)
        return previous

    def _clock(self) -> IReactorTime | None:
        """The clock of the site's ``callLater`` (its reactor, or a test's ``Clock``)."""
        owner = getattr(self.callLater, "__self__", None)
        return owner if owner is not self and IReactorTime.providedBy(owner) else None

    def _due_after(self, period: float | None) -> float | None:
        clock = self._clock()
        return None if period is None or clock is None else clock.seconds() + period

    def timeoutConnection(self) -> None:
        due, self._due = self._due, None
        clock = self._clock()
        if not self._looking_again and clock is not None and overdue_from_own_stall(clock, due):
            self._looking_again = True
            self.callLater(STALL_GRACE, self._look_again)
            return
        self._looking_again = False
        self.timed_out()

    def _look_again(self) -> None:
        if self._gone:
            return
        if self._due is not None:  # heard from meanwhile: its time starts again now
            self._looking_again = False
            self.setTimeout(self.timeOut)
            return
        self.timeoutConnection()

    def timed_out(self) -> None:
        """What a timeout does when it is not Core's own stall: Twisted's (closed); an upload
        under way ends first, saying why."""
        self.upload_stalled()
        super().timeoutConnection()

    def upload_stalled(self) -> bool:
        """End the upload under way, if any, whose client sent nothing for the timeout; it was
        logged as "the client went away" when its connection was then closed (QA pass 24)."""
        request = self.requests[-1] if self.requests else None
        transfer = getattr(request, "transfer", None)
        if transfer is None:
            return False
        request.transfer = None  # type: ignore[union-attr]
        transfer.abort(f"nothing received for {self.timeOut or 0:g} s")
        return True

    def connectionLost(self, reason: Failure = _DONE) -> None:
        self._gone = True
        super().connectionLost(reason)

    def allHeadersReceived(self) -> None:
        self.late = ""
        super().allHeadersReceived()  # the request learns its length (and an upload, its transfer)
        request = self.requests[-1] if self.requests else None
        if self.length != 0 and request is not None and getattr(request, "transfer", None) is None:
            self.setTimeout(self.timeOut)  # from here (still line mode: not resetTimeout)
            self.late = "body"

    def allContentReceived(self) -> None:
        self.late = ""
        super().allContentReceived()
