"""What Twisted's HTTP objects hold of a request, read the same way wherever we need it.

- The request line while the headers are read: Twisted gives a request its method and path
  only once the whole body is in; until then the channel keeps them in ``_command`` and
  ``_path`` (set as the request line is parsed, removed when the body is in). The API's wire
  limits tell a header line from the request line by them, and an upload is routed (and
  refused) from them before its body.
- The headers as signatures cover them: lower-cased names with their first value.
- The answer's headers without Twisted's ``Server`` (:class:`UnbrandedRequest`).
- A request's line and headers in time (:class:`HeadersInTime`).
"""

from __future__ import annotations

from twisted.web.http import HTTPChannel, Request
from twisted.web.server import Request as ServerRequest


def request_line(channel: HTTPChannel) -> tuple[bytes, bytes] | None:
    """The method and target of the request whose headers ``channel`` is reading (None
    before its request line, and once its body is in)."""
    method: bytes | None = getattr(channel, "_command", None)
    target: bytes | None = getattr(channel, "_path", None)
    if method is None or target is None:
        return None
    return method, target


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


class HeadersInTime(HTTPChannel):
    """A channel whose requests' line and headers must arrive within the idle timeout from
    their first byte. Twisted restarts the timeout for every chunk, so a client sending a
    header byte a second held its connection for hours (QA pass 20: 4,096 of them held every
    place of the API). A body still restarts it per chunk: an upload's pace is its own.
    ``headers_late`` tells ``timeoutConnection`` which of the two ran out."""

    #: The line and headers of a request are arriving (their time runs from the first byte).
    headers_late = False

    def resetTimeout(self) -> None:
        if self.line_mode:  # the next request's line and headers (a body is raw mode)
            if self.headers_late:
                return
            self.headers_late = True
        super().resetTimeout()

    def allHeadersReceived(self) -> None:
        self.headers_late = False
        super().allHeadersReceived()
