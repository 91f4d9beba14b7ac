"""Moving image bytes over HTTP, for the TLS image site and the API's stream routes alike.

Twisted's ``Request`` buffers a whole body before any resource sees it. An upload here is
taken over as soon as its headers are in: on a :class:`StreamingChannel`, the request line
is read from the channel then, and :class:`StreamingMixin`'s ``gotLength`` asks the site's
:class:`UploadRoutes` whether the request is an upload. If it is, the client is authorized, the
image locked and a part file opened before a byte of the body is read, and every body chunk
then goes to the :class:`~nanocore.images.upload.Transfer` as it arrives; a refusal is
answered at once and the connection closed, so a refused body is never read. The resource
that renders the request only waits for the transfer's end and answers the envelope.

Downloads are :class:`twisted.web.static.File` (``Range``/206, ``If-Modified-Since``/304,
``Last-Modified``, ``HEAD``), sent by :mod:`nanocore.images.download`'s producer, over the
file of the image's recorded version, with Nano's headers and, for disk images,
``Signature: <sha1>``. The file is opened when the request is rendered; a later upload renames
a new version beside it, so a download in progress always sends one whole version.

Nothing here imports the API: the envelope and the signature check are handed in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from io import BytesIO
from typing import Any, Protocol, cast
from urllib.parse import unquote

from attrs import frozen
from twisted.internet.interfaces import IPushProducer, ISSLTransport, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import static
from twisted.web.http import HTTPChannel, Request
from twisted.web.server import NOT_DONE_YET

from nanocore.httpparts import request_line
from nanocore.images.download import TLS_PIECE, FileStream
from nanocore.images.files import ImageFolders, Offload
from nanocore.images.upload import Transfer, UploadTooLarge, boundary_of
from nanocore.operations.errors import (
    OUT_OF_MEMORY,
    UNAVAILABLE,
    OperationError,
    unavailable_message,
)
from nanocore.operations.images import KINDS, Image, ImageKind, Images

log = Logger()

#: An upload larger than this is refused before it is read (1 TiB: any disk image of a VM).
DEFAULT_MAX_UPLOAD = 1 << 40
#: Largest read from the socket of a plain-TCP upload (Twisted reads 64 KiB): sixteen times
#: fewer trips through the HTTP channel and the multipart parser per GiB, ~0.5 CPU-s less on
#: the reactor (``benchmarks/README.md``). Reset to the transport's own once the body is in.
UPLOAD_READ_SIZE = 1 << 20

_TARGET = re.compile(r"/api/v1/(disk_images|media_images)/([^/]*)/file/")

#: The status lines of the answers a stream is refused with before its body is read.
_REASONS = {200: b"OK", 413: b"Request Entity Too Large", 503: b"Service Unavailable"}

DOWNLOAD_HEADERS = {
    b"Content-Transfer-Encoding": b"binary",
    b"Expires": b"0",
    b"Cache-Control": b"no-cache, no-store, must-revalidate",
}


class Envelope(Protocol):
    """The API's envelope (``nanocore.api.envelope`` provides it)."""

    CONTENT_TYPE: bytes

    def success(self, data: Any = "") -> bytes: ...

    def failure(self, message: str) -> bytes: ...


class StreamRefused(Exception):
    """A stream request is refused: ``message`` for the envelope, with HTTP ``status``."""

    def __init__(self, message: str, status: int = 200) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


#: Checks a stream signature: ``(method, path, query, headers)``; raises StreamRefused.
SignatureCheck = Callable[[str, str, str, Mapping[str, str]], object]


@frozen
class Target:
    """The image a stream path names."""

    kind: ImageKind
    image_id: str


def target_of(path: str) -> Target | None:
    """The image of a ``/api/v1/<kind>/<id>/file/`` path (percent-decoded), if it is one."""
    match = _TARGET.fullmatch(path)
    if match is None:
        return None
    return Target(KINDS[match[1]], match[2])


class UploadRoutes(Protocol):
    """What a site answers when a request's headers are in: is it an upload it takes?"""

    #: How refusals are written.
    envelope: Envelope

    def begin(self, request: Request, method: str, path: str, query: str) -> Transfer | None:
        """The transfer of an upload request, None for any other request; raises
        :class:`StreamRefused` for an upload it refuses."""


class Transfers:
    """Uploads and downloads of images over one catalogue and its folders."""

    def __init__(
        self,
        images: Images,
        folders: ImageFolders,
        envelope: Envelope,
        *,
        max_upload: int = DEFAULT_MAX_UPLOAD,
    ) -> None:
        self.images = images
        self.folders = folders
        self.envelope = envelope
        self.max_upload = max_upload

    # --- uploads -----------------------------------------------------------------------------

    def begin(self, request: Request, target: Target, *, cell: str | None = None) -> Transfer:
        """Lock the image and open its part file; raises :class:`StreamRefused`.

        ``cell``: the Cell uploading, named by its certificate (None: a signed client).
        """
        length = request.requestHeaders.getRawHeaders(b"content-length")
        expected = int(length[0]) if length and length[0].isdigit() else 0
        if expected > self.max_upload:
            raise StreamRefused(f"upload larger than {self.max_upload} bytes", 413)
        try:
            boundary = boundary_of(_header(request, b"content-type"))
            upload = self.images.begin_upload(target.kind, target.image_id, expected, cell=cell)
        except OperationError as error:
            raise StreamRefused(error.message) from None
        try:
            transport = request.channel.transport if request.channel is not None else None
            producer = IPushProducer(transport, None)
            transfer = Transfer(
                self.images, self.folders, upload, boundary, producer, limit=self.max_upload
            )
        except BaseException:
            self.images.abort_upload(upload)
            raise
        read_size(transport, UPLOAD_READ_SIZE)
        return transfer

    def answer_upload(self, request: Request, transfer: Transfer) -> int:
        """Answer the envelope once the transfer is recorded (or refused)."""
        if request.channel is not None:
            read_size(request.channel.transport, None)
        transfer.finish().addCallbacks(
            lambda _: self._answer(request, self.envelope.success()),
            lambda failure: self._failed(request, failure),
        )
        return NOT_DONE_YET

    def upload_buffered(
        self, request: Request, target: Target, *, cell: str | None = None
    ) -> bytes | int:
        """An upload whose body a plain ``Request`` already holds (in-memory test clients)."""
        try:
            transfer = self.begin(request, target, cell=cell)
        except StreamRefused as refused:
            return self.refuse(request, refused)
        content = request.content
        if content is not None:
            content.seek(0)
            while chunk := content.read(1 << 20):
                try:
                    transfer.write(chunk)
                except UploadTooLarge as error:
                    return self.refuse(request, StreamRefused(error.message, 413))
        return self.answer_upload(request, transfer)

    # --- downloads ---------------------------------------------------------------------------

    def download(self, request: Request, target: Target) -> bytes | int:
        """The recorded version of an image, as ``static.File`` serves a file."""
        head = request.method == b"HEAD"
        try:
            image = self.images.get(target.kind, target.image_id)
        except OperationError as error:
            return self._not_found(request) if head else self.refuse(request, error)
        if image.version == 0:
            if head:
                return self._not_found(request)
            message = f"no content available for {target.kind.label} '{image.id}'"
            return self.refuse(request, StreamRefused(message))
        path = self.folders.path(target.kind, image.id, image.version)
        try:
            size = path.stat().st_size
        except OSError:
            size = None
        if size != image.size:
            # Removed or cut behind Core's back: say so, rather than serve a page or a part.
            found = "missing" if size is None else f"{size} bytes, not {image.size}"
            log.error("{kind} '{id}' version {version}: its file {path} is {found}",
                      kind=target.kind.label, id=image.id, version=image.version,
                      path=str(path), found=found)  # fmt: skip
            if head:
                return self._not_found(request)
            request.setResponseCode(404)
            message = f"the file of {target.kind.label} '{image.id}' is damaged or missing"
            return self._envelope_bytes(request, self.envelope.failure(message))
        resource = ImageFile(path, image, self.folders.offload)
        return cast(bytes | int, resource.render(request))

    # --- answers -----------------------------------------------------------------------------

    def refuse(self, request: Request, error: StreamRefused | OperationError) -> bytes:
        request.setResponseCode(getattr(error, "status", 200))
        return self._envelope_bytes(request, self.envelope.failure(error.message))

    def _not_found(self, request: Request) -> bytes:
        request.setResponseCode(404)
        return b""

    def _envelope_bytes(self, request: Request, body: bytes) -> bytes:
        request.setHeader(b"Content-Type", self.envelope.CONTENT_TYPE)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body

    def _answer(self, request: Request, body: bytes) -> None:
        if request.finished or request.channel is None:
            return
        request.write(self._envelope_bytes(request, body))
        request.finish()

    def _failed(self, request: Request, failure: Failure) -> None:
        error = failure.value
        if isinstance(error, OperationError | StreamRefused):
            message = error.message
        elif isinstance(error, UNAVAILABLE):
            # The store could not record the new version (it logged why); nothing is kept.
            if not request.finished and request.channel is not None:
                request.setResponseCode(503)
                request.setHeader(b"Retry-After", b"1")
            message = unavailable_message(error)
        else:
            log.failure("upload failed", failure)
            message = "internal error"
        self._answer(request, self.envelope.failure(message))


def read_size(transport: object, size: int | None) -> None:
    """Reads of up to ``size`` bytes on a plain TCP transport (None: its class's own size).

    Twisted's TCP transports read ``bufferSize`` bytes at a time; a TLS transport reads
    through its TCP transport and is left as it is.
    """
    if not ITCPTransport.providedBy(transport) or ISSLTransport.providedBy(transport):
        return
    default = getattr(type(transport), "bufferSize", None)
    if isinstance(default, int):
        transport.bufferSize = default if size is None else size  # type: ignore[attr-defined]


def _header(request: Request, name: bytes) -> str:
    values = request.requestHeaders.getRawHeaders(name)
    return values[0].decode("latin-1") if values else ""


class ImageFile(static.File):
    """One version's file with Nano's download headers (and ``Signature`` for disks), sent
    by a :class:`~nanocore.images.download.FileStream` (``static.File``'s own producer for a
    request of several ranges)."""

    def __init__(self, path: Any, image: Image, offload: Offload) -> None:
        super().__init__(str(path), defaultType="application/octet-stream")
        self._offload = offload
        self.contentTypes = {}
        self._headers = dict(DOWNLOAD_HEADERS)
        check_sum = getattr(image, "check_sum", "")
        if check_sum:
            self._headers[b"Signature"] = check_sum.encode("ascii")

    def render_GET(self, request: Any) -> Any:
        for name, value in self._headers.items():
            request.setHeader(name, value)
        return super().render_GET(request)

    render_HEAD = render_GET

    def makeProducer(self, request: Any, fileForReading: Any) -> Any:
        """``static.File`` answers the headers and picks the range; a whole file or one range
        is then sent in large chunks read off the reactor (handed to a TLS transport in
        pieces, see :data:`~nanocore.images.download.TLS_PIECE`)."""
        producer = super().makeProducer(request, fileForReading)
        channel = getattr(request, "channel", None)
        tls = ISSLTransport.providedBy(getattr(channel, "transport", None))
        piece = TLS_PIECE if tls else None
        if isinstance(producer, static.NoRangeStaticProducer):
            size = self.getFileSize()
            return FileStream(request, fileForReading, 0, size, self._offload, piece=piece)
        if isinstance(producer, static.SingleRangeStaticProducer):
            return FileStream(
                request, fileForReading, producer.offset, producer.size, self._offload, piece=piece
            )
        return producer


# --- the request side ----------------------------------------------------------------------


class StreamingChannel(HTTPChannel):
    """An ``HTTPChannel`` whose requests may be routed from their request line and headers
    (:func:`nanocore.httpparts.request_line`): an upload before its body is read."""


#: Methods that never upload: their requests are not offered to the upload routes.
_READS = frozenset({b"GET", b"HEAD"})


class StreamingMixin(Request):
    """Streams the body of an upload route to its transfer; any other request is left to the
    next class of the request's bases (the API's body limit, the image site's)."""

    #: The site's upload routes; None while there are none (the Core is starting).
    upload_routes: Callable[[], UploadRoutes | None] = staticmethod(lambda: None)
    transfer: Transfer | None = None
    stream_refused = False

    def gotLength(self, length: int | None) -> None:
        channel = self.channel
        line = request_line(channel) if isinstance(channel, StreamingChannel) else None
        routes = self.upload_routes() if line is not None and line[0] not in _READS else None
        if routes is not None and line is not None:
            method, uri, _version = line
            raw_path, _, query = uri.partition(b"?")
            path = unquote(raw_path.decode("latin-1"), encoding="utf-8", errors="replace")
            try:
                self.transfer = routes.begin(
                    self, method.decode("latin-1"), path, query.decode("latin-1")
                )
            except StreamRefused as refused:
                self._refuse_stream(refused)
                return
            if self.transfer is not None:
                self.content = BytesIO()  # stays empty: the body goes to the transfer
                return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.stream_refused:
            return
        if self.transfer is not None:
            try:
                self.transfer.write(data)
            except UploadTooLarge as error:
                self.transfer = None  # ended by its write
                self._refuse_stream(StreamRefused(error.message, 413))
            except MemoryError:
                # Not the client's doing, as "went away" would say: Core's memory ran out
                # (an address-space limit, a full host; QA pass 23). Nothing is kept, the
                # client is told to retry, and the connection ends without a traceback.
                transfer, self.transfer = self.transfer, None
                transfer.abort("nanocore ran out of memory")
                self._refuse_stream(StreamRefused(OUT_OF_MEMORY, 503))
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.stream_refused:
            return
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Failure) -> None:
        if self.transfer is not None:
            self.transfer.abort()
        super().connectionLost(reason)

    def _refuse_stream(self, refused: StreamRefused) -> None:
        """Answer now and close: the body of a refused upload is never read."""
        self.stream_refused = True
        routes = self.upload_routes()
        body = routes.envelope.failure(refused.message) if routes is not None else b""
        channel = self.channel
        if channel is None or channel.transport is None:
            return
        reason = _REASONS.get(refused.status, b"Refused")
        retry = b"Retry-After: 1\r\n" if refused.status == 503 else b""
        channel.transport.write(
            b"HTTP/1.1 %d %s\r\n" % (refused.status, reason)
            + retry
            + b"Content-Type: text/plain; charset=utf-8\r\n"
            + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
            + body
        )
        channel.loseConnection()
