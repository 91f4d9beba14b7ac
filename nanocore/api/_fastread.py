"""A fast path for cached reads, in front of the Klein app (issue #15).

A cacheable list is read far more often than it changes, and once its answer is kept in the
:class:`~nanocore.api.cache.ResponseCache` the only work left for a signed read is the
signature: Klein's request adapter, werkzeug's ``bind`` + ``match``, the ``maybeDeferred``
chain and our endpoint steps cost about as much again as Twisted's own HTTP handling
(benchmarks/README.md, "Where the time goes"). :class:`CachedReads` answers such a read
directly, after the same signature check, and hands every other request to the app.

It is not a second router: it only ever answers a path the app itself routed to a cacheable
route (the cache holds nothing else), keyed on that exact path, and only in the plain case:
``GET`` spelled so, no query, no percent-escape (the API's request class has refused a path
or host that is not UTF-8 before any resource sees it, as Klein would). For
anything else (a miss, a refused signature, a stale revision) it falls through, and the app
answers, refusals included. ``tests/test_fastread.py`` checks, for generated requests, that
the bytes on the wire are exactly the app's.
"""

from __future__ import annotations

from typing import Any

from twisted.web.http import Request
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from nanocore.api import envelope
from nanocore.api.auth import AuthError, RequestParts, Verifier
from nanocore.api.cache import ResponseCache
from nanocore.httpparts import first_headers


class CachedReads(Resource):
    """``app``, with reads it has answered before (and would answer alike) answered here."""

    isLeaf = True

    def __init__(self, app: Resource, cache: ResponseCache, verifier: Verifier) -> None:
        super().__init__()
        self.app = app
        self._cache = cache
        self._verifier = verifier

    def render(self, request: IRequest) -> Any:
        answer = self._answer(request)  # type: ignore[arg-type]  # the site's Request
        if answer is None:
            return self.app.render(request)
        request.setHeader(b"Content-Type", envelope.CONTENT_TYPE)
        request.setHeader(b"Content-Length", b"%d" % len(answer))
        return answer

    def _answer(self, request: Request) -> bytes | None:
        raw = request.path
        if (
            request.method != b"GET"
            or b"%" in raw
            or request.uri != raw  # a query (or an absolute URI)
        ):
            return None
        path = raw.decode("latin-1")
        kept = self._cache.kept(path)
        if kept is None:
            return None
        answer, guard = kept
        if guard.variant is not None:
            parts = RequestParts("GET", path, "", first_headers(request))
            try:
                self._verifier.verify(parts, guard.variant, writable=guard.writable)
            except AuthError:
                return None  # the app refuses it, in its words
        return answer
