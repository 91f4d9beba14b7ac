"""The API's stream routes, served in front of the Klein app, in this process.

``POST /media_images/:id/file/`` and ``GET``/``POST /disk_images/:id/file/`` carry image bytes:
the original verified their stream signature and proxied them to its own image site over
loopback TLS. Here they go straight to the image folders (:mod:`nanocore.images.transfers`): an
upload is signed-checked from its headers and streamed to its part file as it arrives, outside
the API's 1 MiB body limit but under the configured upload cap; a download is the image
site's producer. Every other request goes on to the app.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import cast

from twisted.web.http import Request
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from nanocore.api import envelope
from nanocore.api.auth import AuthError, RequestParts, Variant, Verifier
from nanocore.api.endpoint import decoded_path
from nanocore.api.request import LimitedChannel, LimitedRequest
from nanocore.httpparts import first_headers
from nanocore.images.transfers import (
    Envelope,
    StreamingChannel,
    StreamingMixin,
    StreamRefused,
    Transfers,
    UploadRoutes,
    target_of,
)
from nanocore.images.upload import Transfer
from nanocore.operations.images import ImageKind

#: The stream routes of the API port: (method, kind).
STREAMS = frozenset({("POST", ImageKind.MEDIA), ("GET", ImageKind.DISK), ("POST", ImageKind.DISK)})

#: Core's answer to a refused stream signature; nanocore adds the reason after it.
UNAUTHORIZED = "unauthorized stream"


def stream_signature(verifier: Verifier) -> Callable[[str, str, str, Mapping[str, str]], None]:
    """A stream-signature check for the image site and the stream routes: one verifier, so a
    signature used on one port is a replay on the other."""

    def check(method: str, path: str, query: str, headers: Mapping[str, str]) -> None:
        try:
            verifier.verify(RequestParts(method, path, query, headers), Variant.STREAM)
        except AuthError as error:
            raise StreamRefused(f"{UNAUTHORIZED}: {error.message}") from None

    return check


class StreamFront(Resource):
    """The API resource, with its stream routes taken before it (and its upload routes)."""

    isLeaf = True
    envelope: Envelope = envelope

    def __init__(self, api: IResource, transfers: Transfers, verifier: Verifier) -> None:
        super().__init__()
        self._api = api
        self.transfers = transfers
        self._check = stream_signature(verifier)

    def begin(self, request: Request, method: str, path: str, query: str) -> Transfer | None:
        target = target_of(path)
        if target is None or (method, target.kind) not in STREAMS or method != "POST":
            return None
        self._check(method, path, query, first_headers(request))
        return self.transfers.begin(request, target)

    def render(self, request: IRequest) -> bytes | int:
        raw = request.path
        if not raw.endswith(b"/file/") and b"%" not in raw:
            # Not a stream route, and no escape could make it one: the API's, undecoded.
            return self._api.render(request)
        req = cast(Request, request)
        method = req.method.decode("latin-1")
        path = decoded_path(req)
        target = target_of(path) if path.endswith("/file/") else None
        if target is None or (method, target.kind) not in STREAMS:
            return cast(bytes | int, self._api.render(request))
        transfer = getattr(req, "transfer", None)
        if transfer is not None:
            return self.transfers.answer_upload(req, transfer)
        try:
            self._check(
                method, path, req.uri.partition(b"?")[2].decode("latin-1"), first_headers(req)
            )
        except StreamRefused as refused:
            return self.transfers.refuse(req, refused)
        if method == "GET":
            return self.transfers.download(req, target)
        return self.transfers.upload_buffered(req, target)


class StreamingAPIRequest(StreamingMixin, LimitedRequest):
    """The API's request: an upload route streams, anything else has the API's body limit."""


class StreamingAPIChannel(StreamingChannel, LimitedChannel):
    """The API's channel with upload routes: requests learn their request line early, and
    the line, header and connection limits of :class:`LimitedChannel` hold."""


def streaming_request_factory(
    max_body: int, routes: Callable[[], UploadRoutes | None]
) -> type[StreamingAPIRequest]:
    attributes = {"max_body": max_body, "upload_routes": staticmethod(routes)}
    return cast(
        type[StreamingAPIRequest], type("StreamingAPIRequest", (StreamingAPIRequest,), attributes)
    )
