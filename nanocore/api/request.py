"""The API on the wire: the one place where what a client sends, and how many clients at once,
is limited.

- **Body** (:class:`LimitedRequest`): a declared ``Content-Length`` above the limit is answered
  413 at once; a chunked body is counted as it arrives and refused once it passes the limit.
  Either way the body is refused before it is buffered whole, and nothing behind the site ever
  sees it, so the app reads bodies without checking their size again. A request whose headers
  alone earn a refusal (``LimitedSite.before_body``: the API's signature checks that need no
  body) is answered and closed before its body is read.
- **Request line and headers** (:class:`LimitedChannel`): Twisted's limits (16 KiB per line,
  16 KiB and 500 headers in all), answered 414 or 431 where Twisted closed the connection
  without a word (or said only ``400 Bad Request``).
- **Time** (:class:`LimitedChannel`): a request's line and headers must arrive within the
  idle timeout from their first byte (Twisted restarted it for every byte, so a client sending
  a byte a second held its connection for hours), and a body read whole within it from the end
  of the headers (an upload streamed to storage keeps its own pace), else 408.
- **Connections** (:class:`LimitedSite`): at most ``max_connections`` at once, shared fairly
  among source addresses (:class:`~nanocore.cluster.admission.FairShare`, as the Cell link's
  handshakes): while there is room everyone gets in; once full, a newcomer from a source
  holding at least two fewer than the source holding the most takes the oldest connection of
  that one (which is closed), and any other is closed as it arrives, with a log line per
  source per minute. So idle clients cannot take the daemon to its open-file limit, and one
  source cannot hold every place (QA pass 20: 4,096 slow connections from one address locked
  every client out).

Every refusal is the envelope, and the client reads it whole: the connection is half-closed
after the answer and what the client still sends is discarded for a moment (closing a socket
with unread input resets it, and the answer with it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IAddress, IDelayedCall, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.server import Site

from nanocore.api import envelope
from nanocore.cluster.admission import FairShare, admit
from nanocore.httpparts import RequestInTime, UnbrandedRequest, request_line
from nanocore.openfiles import Descriptors
from nanocore.ratelog import RateLimitedLog

#: Largest request body read.
DEFAULT_MAX_BODY = 1 << 20
#: API connections open at once, at most (lower when the open-file limit is low: ``tap``).
DEFAULT_MAX_CONNECTIONS = 4096
#: Seconds a refused client may go on sending (discarded) before its connection is aborted.
REFUSAL_LINGER = 5.0

log = Logger()

_NOT_UTF8 = b"Non-UTF-8 encoding in URL."
_MALFORMED_HOST = b"malformed Host header"
_MISSING_HOST = b"missing required Host header"
#: The bytes Go's server takes in a Host header (httpguts.ValidHostHeader).
_GO_HOST = re.compile(rb"[0-9A-Za-z!$%&'()*+,\-.:;=\[\]_~]*")
_HOSTS = b"too many Host headers"

#: Host headers seen naming a host (most clients send one or two); forgotten when full.
NAMED_HOSTS_KEPT = 256
_NAMED_HOSTS: set[bytes] = set()


def body_too_large(limit: int) -> str:
    return f"request body larger than {limit} bytes"


class LimitedRequest(UnbrandedRequest):
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
        refusal = self._wire_refusal(self.path, self.clientproto)
        if refusal is not None:
            reason, as_go = refusal
            if as_go:
                self._refuse_as_go(reason)
            else:
                self._refuse_plainly(reason)
            return
        super().process()

    def _wire_refusal(self, path: bytes, version: bytes) -> tuple[bytes, bool] | None:
        """Why the request for ``path`` is refused before any resource sees it, and whether
        in Go's server's words; None when it is not."""
        hosts = self.requestHeaders.getRawHeaders(b"host")
        if version == b"HTTP/1.1" and (hosts is None or len(hosts) != 1):
            # RFC 9112 §3.2, and Go's answer (QA pass 20 found both served).
            return (_MISSING_HOST if hosts is None else _HOSTS), True
        host = hosts[-1] if hosts else b""
        if host not in _NAMED_HOSTS and not self._names_a_host(host):
            return _MALFORMED_HOST, True
        if b"%" in path:
            path = unquote_to_bytes(path)
        try:
            path.decode("utf-8")
        except UnicodeDecodeError:
            # Klein refuses these too, but logs a traceback for each: a cheap log flood.
            return _NOT_UTF8, False
        return None

    def _names_a_host(self, host: bytes) -> bool:
        """Whether ``host`` has only the bytes Go's server takes in a Host (QA pass 21: spaces,
        control characters and ``<`` were served), and werkzeug can bind routes to the host it
        names, as Klein does (an IDNA-invalid name such as ``a..b`` escaped Klein as a 500 with
        a traceback)."""
        if _GO_HOST.fullmatch(host) is None:
            return False
        name = self.getRequestHostname().decode("ascii").lower().partition(":")[0]
        try:
            name.encode("idna")
        except UnicodeError:
            return False
        if len(_NAMED_HOSTS) >= NAMED_HOSTS_KEPT:
            _NAMED_HOSTS.clear()
        _NAMED_HOSTS.add(host)
        return True

    def _refuse_as_go(self, reason: bytes) -> None:
        """Go's server's answer to a request it cannot read (``400 Bad Request: <reason>`` as
        the status and the body, then the connection closed)."""
        channel = self.channel  # gone once the request is finished
        self.setHeader(b"Connection", b"close")
        self._refuse_plainly(b"400 Bad Request: " + reason, phrase=b"Bad Request: " + reason)
        if channel is not None:
            channel.loseConnection()  # Twisted keeps it open whatever the header says

    def _refuse_plainly(self, reason: bytes, phrase: bytes | None = None) -> None:
        self.setResponseCode(400, phrase)
        self.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        self.setHeader(b"Content-Length", b"%d" % len(reason))
        self.write(reason)
        self.finish()

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self._refuse()
            return
        if length != 0 and self._refused_by_headers():
            return
        super().gotLength(length)

    def _refused_by_headers(self) -> bool:
        """Refuse now, and close, a request whose headers alone earn a refusal from what the
        site serves (``LimitedSite.before_body``), rather than read its body first."""
        channel = self.channel
        check = getattr(getattr(channel, "site", None), "before_body", None)
        line = request_line(channel) if channel is not None else None
        if check is None or line is None:
            return False
        method, target, version = line
        path = target.partition(b"?")[0]
        if self._wire_refusal(path, version) is not None:
            return False  # what the wire refuses is answered as ever, once the body is in
        message = check(self, method, path)
        if message is None:
            return False
        self.refused = True
        cast(LimitedChannel, channel).refuse(200, b"OK", message)
        return True

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
        channel = self.channel
        if channel is None or channel.transport is None:
            return
        cast(LimitedChannel, channel).refuse(
            413, b"Request Entity Too Large", body_too_large(self.max_body)
        )


class LimitedChannel(RequestInTime):
    """HTTP/1.1 with Twisted's limits on the request line and the headers, answered.

    Twisted closes the connection on a line over ``MAX_LENGTH`` without an answer, and answers
    a header block over ``totalHeadersSize`` or ``maxHeaders`` with a bare 400. Here the request
    line gets 414 and the headers 431, in the envelope. Twisted counts and checks the headers
    itself; its bad-request answer looks at those counts to tell the limits from a malformed
    request (still its bare 400), so a request within the limits pays nothing for this (a
    check per header line cost ~6 % of a cached GET).
    An idle client that times out costs one log line per source per minute
    (``LimitedSite.noise``), not one each.
    """

    site: LimitedSite
    _refused = False
    _linger: IDelayedCall | None = None
    _local: IAddress | None = None
    _remote: IAddress | None = None

    # Twisted's Request asks its channel for both addresses, each request anew (one a
    # getsockname call): a connection's addresses never change, so they are asked once.

    def getHost(self) -> IAddress:
        if self._local is None:
            self._local = super().getHost()
        return self._local

    def getPeer(self) -> IAddress:
        if self._remote is None:
            self._remote = super().getPeer()
        return self._remote

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        self.site.connection_closed(self)
        super().connectionLost(reason)

    def _respondToBadRequestAndDisconnect(self) -> None:
        """Twisted's answer to a request it cannot take: 431 when a header limit was passed
        (Twisted's own counts, checked just before it calls this), else its bare 400."""
        if self._receivedHeaderSize > self.totalHeadersSize:
            message = f"request headers longer than {self.totalHeadersSize} bytes"
        elif self._receivedHeaderCount > self.maxHeaders:
            message = f"more than {self.maxHeaders} request headers"
        else:
            super()._respondToBadRequestAndDisconnect()
            return
        self.refuse(431, b"Request Header Fields Too Large", message)

    def lineLengthExceeded(self, line: bytes) -> None:
        if request_line(self) is not None:  # this is a header line
            self.refuse(
                431,
                b"Request Header Fields Too Large",
                f"request header line longer than {self.MAX_LENGTH} bytes",
            )
        else:
            self.refuse(414, b"URI Too Long", f"request line longer than {self.MAX_LENGTH} bytes")

    def timed_out(self) -> None:
        peer = self.transport.getPeer() if self.transport is not None else None
        late = self.late
        if not late and self.upload_stalled():
            self.refuse(
                408,
                b"Request Timeout",
                f"upload stalled: nothing received for {self.timeOut or 0:g} s",
            )
            return
        if late:
            self.site.noise.info(
                "slow API clients timed out",
                _host(peer),
                "timing out API client {source}: request {late} not received within {seconds:g} s",
                late=late,
                seconds=self.timeOut or 0,
            )
            self.refuse(
                408,
                b"Request Timeout",
                f"request {late} not received within {self.timeOut or 0:g} s",
            )
            return
        self.site.noise.info(
            "idle API clients timed out",
            _host(peer),
            "timing out idle API client {source} (after {seconds:g} s)",
            seconds=self.timeOut or 0,
        )
        self._close_within(self.abortTimeout)
        self.loseConnection()

    def refuse(self, status: int, phrase: bytes, message: str) -> None:
        """Answer ``status`` with ``message`` in the envelope and close, once."""
        if self._refused or self.transport is None:
            return
        self._refused = True
        self.dataReceived = _discard  # type: ignore[method-assign]  # the client reads our refusal
        self.setTimeout(None)
        body = envelope.failure(message)
        self.transport.write(
            b"HTTP/1.1 %d %s\r\n" % (status, phrase)
            + b"Content-Type: " + envelope.CONTENT_TYPE + b"\r\n"
            + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
            + body
        )  # fmt: skip
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is None:  # an in-memory transport: no unread input to reset anything
            self.loseConnection()
            return
        half_close()
        self._close_within(REFUSAL_LINGER)

    def _close_within(self, seconds: float | None) -> None:
        if seconds is not None and self._linger is None and self.transport is not None:
            transport = cast(ITCPTransport, self.transport)
            self._linger = self.callLater(seconds, transport.abortConnection)


class LimitedSite(Site):
    """A site whose channels are :class:`LimitedChannel` s, at most ``max_connections`` at once,
    shared fairly among sources (see the module).

    A connection refused is refused as it arrives (``buildProtocol`` returns None: the port
    closes it at once); one closed for a newcomer is aborted. Each is one log line per source
    per minute; one that leaves makes room for the next. ``access_log`` restores Twisted's line
    per request (Core kept none, and it costs ~8 % per GET).
    """

    protocol = LimitedChannel  # type: ignore[assignment]

    def __init__(
        self,
        resource: Any,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        access_log: bool = False,
        noise: RateLimitedLog | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(resource, **kwargs)
        self.max_connections = max_connections
        self.access_log = access_log
        self._connections: FairShare[LimitedChannel] = FairShare(
            max_connections, busy=lambda channel: channel.serving
        )
        #: Log lines anyone can cause at will (idle clients, refused connections), rate-limited;
        #: shared with the API behind the site (refused signatures), and flushed when it stops.
        self.noise = noise if noise is not None else RateLimitedLog(log, self.reactor)
        #: Every port's connections against the open-file limit (set by whoever mounts it).
        self.descriptors: Descriptors | None = None
        #: The refusal a request's headers earn before its body is read (the API's signature
        #: checks that need no body), or None: given the request (its headers), its method and
        #: its raw path (the request itself learns them once its body is in); set by whoever
        #: mounts the API.
        self.before_body: Callable[[http.Request, bytes, bytes], str | None] | None = None

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def buildProtocol(self, addr: IAddress) -> LimitedChannel | None:  # type: ignore[override]
        source = _host(addr)
        if not admit(
            self._connections, source, noise=self.noise, site="API", descriptors=self.descriptors
        ):
            return None
        channel = cast(LimitedChannel, super().buildProtocol(addr))
        self._connections.add(source, channel)
        return channel

    def connection_closed(self, channel: LimitedChannel) -> None:
        self._connections.remove(channel)

    def stopFactory(self) -> None:
        self.noise.flush()
        super().stopFactory()

    def log(self, request: http.Request) -> None:
        if self.access_log:
            super().log(request)


def _host(address: IAddress | None) -> str:
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else "?"


def _discard(data: bytes) -> None:
    """What a refused connection does with what its client still sends."""


def limited_request_factory(max_body: int) -> type[LimitedRequest]:
    return cast(
        type[LimitedRequest], type("LimitedRequest", (LimitedRequest,), {"max_body": max_body})
    )
