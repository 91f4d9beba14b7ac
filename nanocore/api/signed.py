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
from nanocore.httpparts import first_headers


def signed(
    verifier: Verifier, variant: Variant, endpoint: Endpoint, *, writable: bool = True
) -> Endpoint:
    """``endpoint``, reached only through a valid signature of ``variant``.

    ``writable``: whether a write route may share a path with this one (see
    :func:`may_share_a_path`); the verifier then remembers a read's signature too.
    """

    def verified(request: Request, incoming: Incoming) -> bytes | Deferred[bytes]:
        verifier.verify(signed_parts(request, incoming), variant, writable=writable)
        return endpoint(request, incoming)

    return verified


def may_share_a_path(route: str, other: str) -> bool:
    """Whether some request path matches both routes (httprouter syntax: ``:name`` is one
    non-empty segment, ``*name`` the rest of the path).

    A read's signature is the signature of a write with an empty body to the same path, so a
    read needs its signature remembered only where a write route may match its paths too.
    """
    segments, others = route.split("/"), other.split("/")
    for mine, theirs in zip(segments, others, strict=False):
        if mine.startswith("*") or theirs.startswith("*"):
            return True
        if mine.startswith(":") or theirs.startswith(":"):
            if not (mine and theirs):  # a parameter never matches an empty segment
                return False
            continue
        if mine != theirs:
            return False
    return len(segments) == len(others)


def signed_parts(request: Request, incoming: Incoming) -> RequestParts:
    """What a signature covers: the headers Core signs (their *first* values) and the body."""
    return RequestParts(
        incoming.method, incoming.path, incoming.query, first_headers(request), incoming.body
    )
