"""The API as an ordinary Klein app over the route table and the operations, and its site.

Each route becomes a rule of the app's own ``Klein()``, whose endpoint is a short chain of
wrappers around the route's answer (decode → handler → encode)::

    Misses.exact → read the request once → signed → ResponseCache.wrap → answer
                                           (signed routes)  (cacheable routes)

Errors are mapped in one place, with ``handle_errors``: werkzeug's misses to httprouter's
answers (:mod:`nanocore.api.misses`); a refused signature, a bad body and an operation's
refusal to the envelope with their message; anything else to "internal error", logged once.
The body limit is the request class's, on the wire (:mod:`nanocore.api.request`).

:func:`build_api_resource` puts :class:`~nanocore.api._fastread.CachedReads` in front of the
app: a signed read whose answer the cache keeps is answered there, after the same signature
check, without Klein's routing (a fast path behind a wall, with a property test).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Generic, cast
from urllib.parse import unquote

from klein import Klein
from klein.resource import KleinResource
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http import Request
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Site
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from nanocore.api import envelope
from nanocore.api._fastdispatch import ErrorHandler, MatchedRoutes
from nanocore.api._fastread import CachedReads
from nanocore.api.auth import (
    DEFAULT_SKEW,
    MUTATING_METHODS,
    AuthError,
    Verifier,
    parse_query,
)
from nanocore.api.cache import Guard, ResponseCache
from nanocore.api.decode import DecodeError
from nanocore.api.endpoint import Endpoint, Incoming, decoded_path, sized
from nanocore.api.families import all_routes
from nanocore.api.misses import KleinEndpoint, Misses, without_head
from nanocore.api.request import (
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_CONNECTIONS,
    LimitedSite,
    limited_request_factory,
)
from nanocore.api.route import Call, Fields, Ops, Raw, Reply, Route
from nanocore.api.routing import configure_map, werkzeug_rule
from nanocore.api.signed import may_share_a_path, signed
from nanocore.api.streams import StreamingAPIChannel, streaming_request_factory
from nanocore.httpparts import first_headers
from nanocore.images.transfers import UploadRoutes
from nanocore.openfiles import Descriptors
from nanocore.operations.core import Operations
from nanocore.operations.errors import (
    OUT_OF_MEMORY,
    UNAVAILABLE,
    OperationError,
    unavailable_message,
)
from nanocore.ratelog import RateLimitedLog


class APIResource(KleinResource, Generic[Ops]):
    """The whole API as the resource of its own ``Klein()`` app; mount it at the site root."""

    log = Logger()

    def __init__(
        self,
        routes: Iterable[Route[Ops]],
        operations: Ops,
        verifier: Verifier,
        cache: ResponseCache | None = None,
        noise: RateLimitedLog | None = None,
        *,
        direct: bool = True,
    ) -> None:
        """``noise`` rate-limits the log lines of refused signatures (anyone can send those);
        ``direct`` answers a matched route without Klein's resource (:mod:`._fastdispatch`)."""
        self._routes = tuple(routes)
        self._operations = operations
        self._verifier = verifier
        self._noise = noise if noise is not None else RateLimitedLog(self.log, verifier.clock)
        misses = Misses((route.method, route.full_path) for route in self._routes)
        writes = [r.full_path for r in self._routes if r.method in MUTATING_METHODS]
        app = Klein()
        configure_map(app.url_map)
        seen: set[tuple[str, str]] = set()
        for index, route in enumerate(self._routes):
            rule = werkzeug_rule(route.full_path)
            if (route.method, rule) in seen:
                raise ValueError(f"route declared twice: {route.method} {route.full_path}")
            seen.add((route.method, rule))
            writable = route.method in MUTATING_METHODS or any(
                may_share_a_path(route.full_path, write) for write in writes
            )
            endpoint = self._answer(route)
            if route.cacheable and cache is not None:
                endpoint = cache.wrap(
                    endpoint, Guard(route.auth, writable), self._kept_while(route)
                )
            if route.auth is not None:
                endpoint = signed(verifier, route.auth, endpoint, writable=writable)
            klein_endpoint = misses.exact(route.method, _reading(route.method, endpoint))
            app.route(rule, methods=[route.method], endpoint=str(index))(klein_endpoint)
        without_head(app.url_map)
        handlers: list[ErrorHandler] = [
            ((RequestRedirect, NotFound, MethodNotAllowed), misses.missed),
            ((AuthError,), self._refused),
            ((DecodeError, OperationError), _refusal),
            (UNAVAILABLE, _unavailable),
            ((MemoryError,), self._out_of_memory),
            ((Exception,), self._unexpected),
        ]
        for errors, handler in handlers:
            app.handle_errors(*errors)(handler)
        self.app = app
        self._direct = MatchedRoutes(app, handlers) if direct else None
        super().__init__(app)

    def render(self, request: IRequest) -> Any:
        if self._direct is not None:
            answer = self._direct.render(cast(server.Request, request))
            if answer is not None:
                return answer
        return super().render(request)

    @property
    def routes(self) -> tuple[Route[Ops], ...]:
        return self._routes

    def route_for(self, method: str, path: str) -> Route[Ops] | None:
        """The route a request for the decoded ``path`` is dispatched to, if any (no redirects)."""
        try:
            rule, _ = self.app.url_map.bind("localhost").match(path, method, return_rule=True)
        except HTTPException:
            return None
        return self._routes[int(rule.endpoint)]

    def refusal_before_body(self, request: Request, method: bytes, path: bytes) -> str | None:
        """The refusal the headers of a request for ``method path`` already earn, before its
        body is read: a signed route's checks that come before the signature's (which covers
        the body), answered as the whole request would be. Without it anyone could make Core
        read and hold a body of up to ``max_body`` per connection while it trickled in."""
        try:
            self._verifier.check_headers(first_headers(request))
        except AuthError as error:
            verb = method.decode("latin-1")
            decoded = unquote(path.decode("latin-1"), encoding="utf-8", errors="replace")
            route = self.route_for(verb, decoded)
            if route is None or route.auth is None:
                return None  # a miss, or a route nobody signs: answered once the body is in
            source = getattr(request.channel.getPeer(), "host", "?")
            self._say_refused(verb, decoded, source, error.message)
            return error.message
        return None

    def _kept_while(self, route: Route[Ops]) -> Callable[[], Hashable] | None:
        kept_while, operations = route.kept_while, self._operations
        if kept_while is None:
            return None
        return lambda: kept_while(operations)

    def _answer(self, route: Route[Ops]) -> Endpoint:
        """The route's own step: decode the body, call the handler, encode its result."""
        handler, body, operations = route.handler, route.body, self._operations

        def answer(request: Request, incoming: Incoming) -> bytes | Deferred[bytes]:
            decoded = Fields(body.decode(incoming.body) if body is not None else {})
            call = Call(incoming.params, parse_query(incoming.query), decoded, incoming.query)
            result = handler(operations, call)
            if isinstance(result, Deferred):
                # Most reads have their answer at once: encode it now, without a chain.
                now: list[object] = []
                result.addBoth(_noted, now)
                if now and not isinstance(now[0], Failure):
                    return _encoded(now[0], request)
                return self._outliving(result).addCallback(_encoded, request)
            return _encoded(result, request)

        return answer

    def _outliving(self, operation: Deferred[object]) -> Deferred[object]:
        """Klein cancels what an endpoint returns when its client goes away; the operation
        must still run to its end (and commit), so the answer waits on a Deferred of its own."""
        answer: Deferred[object] = Deferred()

        def settle(outcome: object) -> None:
            if not answer.called:
                if isinstance(outcome, Failure):
                    answer.errback(outcome)
                else:
                    answer.callback(outcome)
            elif isinstance(outcome, Failure) and not outcome.check(OperationError, *UNAVAILABLE):
                self.log.failure("unexpected error after the client went away", outcome)

        operation.addBoth(settle)
        return answer

    def _refused(self, request: IRequest, failure: Failure) -> bytes:
        req = cast(Request, request)
        reason = cast(AuthError, failure.value).message
        self._say_refused(req.method.decode("ascii"), decoded_path(req), _client(req), reason)
        return _failure(req, reason)

    def _say_refused(self, method: str, path: str, source: str, reason: str) -> None:
        self._noise.warn(
            "refused signatures",
            source,
            "refused {method} {path} from {source}: {reason}",
            method=method,
            path=path,
            reason=reason,
        )

    def _out_of_memory(self, request: IRequest, failure: Failure) -> bytes:
        """Memory ran out while answering (an address-space limit, a full host): 503, as
        when the store cannot save, and one line a minute with a count, not a traceback
        per request (QA pass 22: 44 in 25 s); answers resume once memory is back."""
        req = cast(Request, request)
        self._noise.warn(
            "requests out of memory",
            "nanocore",
            "out of memory answering {method} {path}: answered 503",
            method=req.method.decode("ascii", errors="replace"),
            path=decoded_path(req),
        )
        req.setResponseCode(503)
        req.setHeader(b"Retry-After", b"1")
        return _failure(req, OUT_OF_MEMORY)

    def _unexpected(self, request: IRequest, failure: Failure) -> bytes:
        req = cast(Request, request)
        self.log.failure(
            "unexpected error in {method} {path}",
            failure,
            method=req.method.decode("ascii", errors="replace"),
            path=decoded_path(req),
        )
        return _failure(req, "internal error")


def _reading(method: str, endpoint: Endpoint) -> KleinEndpoint:
    """The Klein endpoint: read the request once, answer the envelope with its length."""

    def read(request: IRequest, **params: str) -> bytes | Deferred[bytes]:
        req = cast(Request, request)
        req.setHeader(b"Content-Type", envelope.CONTENT_TYPE)
        answer = endpoint(req, Incoming.read(req, method, params))
        if isinstance(answer, Deferred):
            return answer.addCallback(lambda data: sized(req, data))
        return sized(req, answer)

    return read


def _noted(outcome: object, into: list[object]) -> object:
    into.append(outcome)
    return outcome


def _client(request: Request) -> str:
    host = getattr(request.getClientAddress(), "host", None)
    return host if isinstance(host, str) else "?"


def _encoded(result: object, request: Request) -> bytes:
    if isinstance(result, Reply):
        request.setResponseCode(result.status)
        return envelope.success(result.data)
    if isinstance(result, Raw):
        request.setHeader(b"Content-Type", result.content_type)
        return result.body
    return envelope.success(result)


def _refusal(request: IRequest, failure: Failure) -> bytes:
    """A bad body or an operation's refusal: the envelope with the message the client reads."""
    error = cast(DecodeError | OperationError, failure.value)
    return _failure(cast(Request, request), error.message, getattr(error, "data", None))


def _unavailable(request: IRequest, failure: Failure) -> bytes:
    """The store could not save the change, and kept nothing of it: 503 with the reason and
    ``Retry-After``, as while the state loads (``services/gate``); logged by the store."""
    req = cast(Request, request)
    req.setResponseCode(503)
    req.setHeader(b"Retry-After", b"1")
    return _failure(req, unavailable_message(cast(Exception, failure.value)))


def _failure(request: Request, message: str, data: object = None) -> bytes:
    request.setHeader(b"Content-Type", envelope.CONTENT_TYPE)
    return sized(request, envelope.failure(message, data))


def build_api_resource(
    operations: Operations,
    credentials: Mapping[str, str],
    clock: IReactorTime,
    *,
    skew: float = DEFAULT_SKEW,
    verifier: Verifier | None = None,
    noise: RateLimitedLog | None = None,
) -> CachedReads:
    """The API as one resource over injected ``operations`` (mount it at the site root).

    ``verifier`` is shared with whatever else checks signatures (the image site); ``noise``
    is the rate-limited log it shares with its site.
    """
    if verifier is None:
        verifier = Verifier(credentials, clock, skew)
    cache = ResponseCache(operations.revision)
    app = APIResource(all_routes(), operations, verifier, cache, noise)
    return CachedReads(app, cache, verifier)


def build_api_site(
    operations: Operations,
    credentials: Mapping[str, str],
    clock: IReactorTime,
    *,
    skew: float = DEFAULT_SKEW,
    max_body: int = DEFAULT_MAX_BODY,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    access_log: bool = False,
) -> Site:
    """A ``Site`` serving :func:`build_api_resource`, with the wire limits enforced."""
    noise = RateLimitedLog(Logger(namespace="nanocore.api"), clock)
    resource = build_api_resource(operations, credentials, clock, skew=skew, noise=noise)
    return api_site_for(
        resource,
        max_body=max_body,
        max_connections=max_connections,
        access_log=access_log,
        noise=noise,
        before_body=cast(APIResource[Operations], resource.app).refusal_before_body,
    )


def api_site_for(
    resource: IResource,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    access_log: bool = False,
    noise: RateLimitedLog | None = None,
    upload_routes: Callable[[], UploadRoutes | None] | None = None,
    before_body: Callable[[Request, bytes, bytes], str | None] | None = None,
    descriptors: Descriptors | None = None,
) -> Site:
    """A ``Site`` for an API resource with the wire limits of :mod:`nanocore.api.request`:
    bodies above ``max_body``, lines and headers above Twisted's, connections beyond
    ``max_connections``; ``noise``, the rate-limited log it shares with the resource.

    With ``upload_routes`` (the :class:`~nanocore.api.streams.StreamFront` once there is one),
    an upload route's body streams to storage instead (:mod:`nanocore.api.streams`); with
    ``before_body`` (:meth:`APIResource.refusal_before_body`), a request its headers already
    refuse is answered before its body is read, and closed; with ``descriptors``, a
    connection is refused while every port's hold what the open-file limit leaves.
    """
    site = LimitedSite(
        resource, max_connections=max_connections, access_log=access_log, noise=noise
    )
    site.before_body = before_body
    site.descriptors = descriptors
    if upload_routes is None:
        site.requestFactory = limited_request_factory(max_body)
    else:
        site.requestFactory = streaming_request_factory(max_body, upload_routes)
        site.protocol = StreamingAPIChannel
    site.displayTracebacks = False
    return site
