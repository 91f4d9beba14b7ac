"""The TLS image site (api-reference §5.1): what Cells, hypervisors and tools fetch and upload.

Same routes as the original's image server, with authentication on every request, which the
original had none of: a client certificate issued by the cluster CA to a Cell (the TLS context
requests one but cannot require it, since API clients and the portal hold none), or else a
valid stream signature (``Nano-Authorization``, the API's credentials). An upload is
authorized from its headers, before its body is read.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import unquote

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    ISSLTransport,
    ITCPTransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from nanocore.clocks import STALL_GRACE, overdue_from_own_stall
from nanocore.cluster.admission import FairShare, admit
from nanocore.httpparts import RequestInTime, UnbrandedRequest, first_headers
from nanocore.images.transfers import (
    SignatureCheck,
    StreamingChannel,
    StreamingMixin,
    StreamRefused,
    Transfers,
    target_of,
)
from nanocore.images.upload import Transfer
from nanocore.openfiles import Descriptors
from nanocore.operations.images import ImageKind
from nanocore.pki import peer_cell_name
from nanocore.ratelog import RateLimitedLog

log = Logger()

#: The original's port range on `listen_address`: the first free one is taken.
IMAGE_PORTS = range(5801, 5901)
#: A connection idle this long is closed (an upload in progress is never idle that long).
IDLE_TIMEOUT = 300
#: Seconds a connection has to complete its TLS handshake (as a Cell link's).
HANDSHAKE_TIMEOUT = 10.0
#: Connections open at once, at most (lower when the open-file limit is low: ``tap``).
DEFAULT_MAX_CONNECTIONS = 1024
#: Largest body of a request that is not an upload (none of them takes one).
MAX_OTHER_BODY = 64 << 10

METHODS: dict[ImageKind, tuple[str, ...]] = {
    ImageKind.DISK: ("GET", "HEAD", "POST", "PUT"),
    ImageKind.MEDIA: ("GET", "HEAD", "POST"),
}
UPLOADS = frozenset({"POST", "PUT"})

_NOT_FOUND = b"404 page not found\n"
_DONE = Failure(ConnectionDone())


def peer_cell(request: object) -> str | None:
    """The Cell named by the verified client certificate of the request's TLS connection."""
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None)
    if transport is None or not ISSLTransport.providedBy(transport):
        return None
    try:
        return peer_cell_name(transport)
    except Exception:  # no handshake done, a certificate that is not a Cell's
        return None


class ImageSiteResource(Resource):
    """The routes of the image site over one :class:`Transfers`; also its upload routes."""

    isLeaf = True

    def __init__(self, transfers: Transfers, signature: SignatureCheck) -> None:
        super().__init__()
        self.transfers = transfers
        self.envelope = transfers.envelope
        self._signature = signature

    def authorize(self, request: Request, method: str, path: str, query: str) -> str | None:
        """The Cell the request comes from, or None for a client with a valid signature;
        else StreamRefused."""
        cell = peer_cell(request)
        if cell is None:
            self._signature(method, path, query, first_headers(request))
        return cell

    def begin(self, request: Request, method: str, path: str, query: str) -> Transfer | None:
        target = target_of(path)
        if target is None or method not in UPLOADS or method not in METHODS[target.kind]:
            return None
        cell = self.authorize(request, method, path, query)
        return self.transfers.begin(request, target, cell=cell)

    def render(self, request: IRequest) -> bytes | int:
        req = cast(Request, request)
        path = unquote(req.path.decode("latin-1"), encoding="utf-8", errors="replace")
        target = target_of(path)
        if target is None:
            req.setResponseCode(404)
            req.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return _NOT_FOUND
        method = req.method.decode("latin-1")
        allowed = METHODS[target.kind]
        if method not in allowed:
            req.setResponseCode(405)
            req.setHeader(b"Allow", ", ".join((*sorted(allowed), "OPTIONS")).encode())
            return b"Method Not Allowed\n"
        transfer = getattr(req, "transfer", None)
        if transfer is not None:
            return self.transfers.answer_upload(req, transfer)
        query = req.uri.partition(b"?")[2].decode("latin-1")
        try:
            cell = self.authorize(req, method, path, query)
        except StreamRefused as refused:
            if method == "HEAD":
                req.setResponseCode(401)
                return b""
            return self.transfers.refuse(req, refused)
        if method in UPLOADS:
            return self.transfers.upload_buffered(req, target, cell=cell)
        return self.transfers.download(req, target)


@implementer(IHandshakeListener)
class ImageChannel(StreamingChannel, RequestInTime):
    """A connection of the image site, holding a place of it until it is gone (aborted at
    stop, or for a newcomer from a source holding fewer); its TLS handshake within
    :data:`HANDSHAKE_TIMEOUT` (a connection that never starts TLS held its place for the whole
    idle timeout: QA pass 20, F15) and its requests in time
    (:class:`~nanocore.httpparts.RequestInTime`)."""

    site: ImageSite
    _handshake: IDelayedCall | None = None
    _looked_for_handshake = False

    def connectionMade(self) -> None:
        super().connectionMade()
        if ISSLTransport.providedBy(self.transport):
            self._handshake = self.callLater(HANDSHAKE_TIMEOUT, self._no_handshake)

    def handshakeCompleted(self) -> None:
        if self._handshake is not None and self._handshake.active():
            self._handshake.cancel()
        self._handshake = None

    def _no_handshake(self) -> None:
        due = self._handshake.getTime() if self._handshake is not None else None
        self._handshake = None
        if not self._looked_for_handshake and overdue_from_own_stall(self.site.reactor, due):
            # Core itself did not run: the handshake may be waiting, unread (QA pass 22).
            self._looked_for_handshake = True
            self._handshake = self.callLater(STALL_GRACE, self._no_handshake)
            return
        self.site.no_handshake(self)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        self.handshakeCompleted()  # no longer waited for
        self.site.places.remove(self)
        super().connectionLost(reason)


class ImageRequest(StreamingMixin, UnbrandedRequest):
    """Uploads stream; any other body above :data:`MAX_OTHER_BODY` is refused unread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(*args, **kwargs)

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        if self.transfer is None and not self.stream_refused and (length or 0) > MAX_OTHER_BODY:
            self._refuse_stream(StreamRefused(f"request body larger than {MAX_OTHER_BODY}", 413))

    def handleContentChunk(self, data: bytes) -> None:
        if self.transfer is None and not self.stream_refused:
            content = self.content
            if content is not None and content.tell() + len(data) > MAX_OTHER_BODY:
                self._refuse_stream(
                    StreamRefused(f"request body larger than {MAX_OTHER_BODY}", 413)
                )
                return
        super().handleContentChunk(data)


class ImageSite(Site):
    """The image site: streaming requests, no access log, every connection holding a place.

    At most ``max_connections`` at once, shared fairly among sources as the API's
    (:class:`~nanocore.cluster.admission.FairShare`): one refused is refused as it arrives
    (the port closes it; listen with :func:`nanocore.tlsserver.tls_server_factory` so that TLS
    keeps the refusal), one closed for a newcomer from a source holding fewer is aborted; one
    log line per source per minute.
    """

    protocol = ImageChannel  # type: ignore[assignment]

    def __init__(
        self,
        resource: ImageSiteResource,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        descriptors: Descriptors | None = None,
        **kwargs: Any,
    ) -> None:
        """``descriptors``: every port's connections against the open-file limit."""
        super().__init__(resource, timeout=IDLE_TIMEOUT, **kwargs)
        self.max_connections = max_connections
        self._descriptors = descriptors
        self._noise = RateLimitedLog(log, self.reactor)
        #: Every connection's place, by source.
        self.places: FairShare[ImageChannel] = FairShare(
            max_connections, busy=lambda channel: channel.serving
        )
        self.displayTracebacks = False
        routes = {"upload_routes": staticmethod(lambda: resource)}
        self.requestFactory = cast(
            type[ImageRequest], type("ImageRequest", (ImageRequest,), routes)
        )

    def buildProtocol(self, addr: IAddress) -> ImageChannel | None:  # type: ignore[override]
        source = str(getattr(addr, "host", "?"))
        if not admit(
            self.places,
            source,
            noise=self._noise,
            site="image site",
            descriptors=self._descriptors,
        ):
            return None
        channel = cast(ImageChannel, super().buildProtocol(addr))
        self.places.add(source, channel)
        return channel

    def no_handshake(self, channel: ImageChannel) -> None:
        """``channel`` did not complete its TLS handshake in time: aborted."""
        peer = channel.transport.getPeer() if channel.transport is not None else None
        self._noise.info(
            "image site connections without a handshake",
            str(getattr(peer, "host", "?")),
            "closed an image site connection from {source}: no TLS handshake within {seconds:g} s",
            seconds=HANDSHAKE_TIMEOUT,
        )
        if channel.transport is not None:
            cast(ITCPTransport, channel.transport).abortConnection()

    def stopFactory(self) -> None:
        self._noise.flush()
        super().stopFactory()

    def log(self, request: Request) -> None:
        pass

    def close_connections(self) -> None:
        """Abort every connection: an upload in progress is abandoned and cleaned up."""
        for channel in list(self.places):
            transport = ITCPTransport(channel.transport, None)
            if transport is not None:
                transport.abortConnection()
