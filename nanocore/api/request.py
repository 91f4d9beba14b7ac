"""The API's request class: the one place where a request body is limited.

A declared ``Content-Length`` above the limit is answered at once and the connection closed;
a chunked body is counted as it arrives and dropped once it passes the limit. Either way the
body is refused before it is buffered whole, and nothing behind the site ever sees it, so the
app reads bodies without checking their size again.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import unquote_to_bytes

from twisted.web.server import Request

from nanocore.api import envelope

#: Largest request body read.
DEFAULT_MAX_BODY = 1 << 20

_NOT_UTF8 = b"Non-UTF-8 encoding in URL."


def body_too_large(limit: int) -> str:
    return f"request body larger than {limit} bytes"


class LimitedRequest(Request):
    """A request that refuses a body above ``max_body`` before buffering it.

    Bodies are JSON whatever their ``Content-Type`` says (as in Core), so Twisted's form parsing
    is off: it never runs on API input, and its MIME parse of the header cost ~60 µs per POST.
    """

    max_body = DEFAULT_MAX_BODY
    refused = False
    _received = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(*args, **kwargs)

    def process(self) -> None:
        if not _utf8(unquote_to_bytes(self.path)) or not _utf8(self.getRequestHostname()):
            # Klein refuses these too, but logs a traceback for each: a cheap log flood.
            self.setResponseCode(400)
            self.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            self.setHeader(b"Content-Length", b"%d" % len(_NOT_UTF8))
            self.write(_NOT_UTF8)
            self.finish()
            return
        super().process()

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self._refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.refused:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.refused:
            return
        super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        if self.refused:
            return
        self.refused = True
        body = envelope.failure(body_too_large(self.max_body))
        channel = self.channel
        if channel is None or channel.transport is None:
            return
        channel.transport.write(
            b"HTTP/1.1 413 Request Entity Too Large\r\n"
            b"Content-Type: " + envelope.CONTENT_TYPE + b"\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
        )
        channel.loseConnection()


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def limited_request_factory(max_body: int) -> type[LimitedRequest]:
    return cast(
        type[LimitedRequest], type("LimitedRequest", (LimitedRequest,), {"max_body": max_body})
    )
