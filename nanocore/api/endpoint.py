"""The shape every step of an API endpoint shares: the request read once, the answer sized.

An endpoint is a chain of small wrappers (signature, response cache) around the route's own
answer. Each step takes the Twisted request and the :class:`Incoming` read from it once, so
the body the signature covers is the body that is decoded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from urllib.parse import unquote

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.web.http import Request


@frozen
class Incoming:
    """What the API reads from a matched request, once."""

    method: str
    #: Percent-decoded, as Go's ``URL.Path``.
    path: str
    #: The raw query string (without ``?``).
    query: str
    #: Path parameters of the route, percent-decoded.
    params: Mapping[str, str]
    #: The whole body (its size is bounded on the wire, see :mod:`nanocore.api.request`).
    body: bytes

    @classmethod
    def read(cls, request: Request, method: str, params: Mapping[str, str]) -> Incoming:
        content = request.content
        return cls(
            method,
            decoded_path(request),
            request.uri.partition(b"?")[2].decode("latin-1"),
            params,
            content.read() if content is not None else b"",
        )


#: One step of an endpoint: bytes to answer, or a Deferred of them.
Endpoint = Callable[[Request, Incoming], "bytes | Deferred[bytes]"]


def decoded_path(request: Request) -> str:
    """The request path percent-decoded (UTF-8 is checked on the wire, before routing)."""
    return unquote(request.path.decode("latin-1"), encoding="utf-8", errors="replace")


def sized(request: Request, data: bytes) -> bytes:
    """Declare the length, so Twisted sends the body in one piece instead of chunked."""
    request.setHeader(b"Content-Length", b"%d" % len(data))
    return data
