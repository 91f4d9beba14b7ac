"""The signature check as a wrapper around an endpoint, in the shape of tahoe-lafs'
``_authorized_route``: the route's own code runs only for a request the verifier accepts.

The signature covers the raw body, so the wrapper verifies the bytes :class:`Incoming` read
once, and hands the same bytes on. What is checked (and what counts as a replay) is the
:class:`~nanocore.api.auth.Verifier`'s business; this module only feeds it the request. A
refusal raises :class:`~nanocore.api.auth.AuthError`, which the app maps to the envelope.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.web.http import Request

from nanocore.api.auth import RequestParts, Variant, Verifier
from nanocore.api.endpoint import Endpoint, Incoming


def signed(verifier: Verifier, variant: Variant, endpoint: Endpoint) -> Endpoint:
    """``endpoint``, reached only through a valid signature of ``variant``."""

    def verified(request: Request, incoming: Incoming) -> bytes | Deferred[bytes]:
        verifier.verify(signed_parts(request, incoming), variant)
        return endpoint(request, incoming)

    return verified


def signed_parts(request: Request, incoming: Incoming) -> RequestParts:
    """What a signature covers: the headers Core signs (their *first* values) and the body."""
    headers: dict[str, str] = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        if values:
            headers[name.decode("latin-1").lower()] = values[0].decode("latin-1")
    return RequestParts(incoming.method, incoming.path, incoming.query, headers, incoming.body)
