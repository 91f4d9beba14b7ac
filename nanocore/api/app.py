"""The API site: routing, signature, body limits, envelope and error mapping in one place.

Route modules only declare :class:`~nanocore.api.route.Route`s; everything they have in common
happens here, once. The dispatcher is a plain ``twisted.web`` leaf resource over an
httprouter-compatible :class:`~nanocore.api.router.Router` rather than Klein: Core's clients
depend on httprouter's redirects and ``Allow`` lists, which werkzeug does not reproduce, and the
per-request cost of Klein's layers is a large share of the throughput budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast
from urllib.parse import quote, unquote

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.server import Request as ServerRequest

from nanocore.api import envelope
from nanocore.api.auth import DEFAULT_SKEW, AuthError, RequestParts, Verifier, parse_query
from nanocore.api.decode import DecodeError
from nanocore.api.route import Call, Raw, Reply, Route
from nanocore.api.router import Allowed, Found, NotFound, Redirect, Router
from nanocore.operations.errors import OperationError

#: Largest request body read; larger ones are refused from their Content-Length or while
#: streaming, before they are buffered whole.
DEFAULT_MAX_BODY = 1 << 20

_CACHE_LIMIT = 4096


def body_too_large(limit: int) -> str:
    return f"request body larger than {limit} bytes"


class APIResource(Resource):
    """The whole ``/api/v1`` tree as one leaf resource; mount it at the site root."""

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        routes: Iterable[Route],
        verifier: Verifier,
        revision: Callable[[], object] = lambda: None,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        super().__init__()
        self._routes = tuple(routes)
        self._router: Router[Route] = Router()
        for route in self._routes:
            self._router.add(route.method, route.full_path, route)
        self._verifier = verifier
        self._revision = revision
        self._max_body = max_body
        self._cache: dict[str, tuple[object, bytes]] = {}

    @property
    def routes(self) -> tuple[Route, ...]:
        return self._routes

    @property
    def router(self) -> Router[Route]:
        return self._router

    def render(self, request: IRequest) -> bytes | int:
        req = cast(Request, request)
        method = req.method.decode("ascii", errors="replace")
        raw_path = req.path.decode("latin-1")
        path = unquote(raw_path, encoding="utf-8", errors="replace")
        outcome = self._router.match(method, path)
        if isinstance(outcome, Found):
            return self._dispatch(req, method, path, outcome.endpoint, outcome.params)
        if isinstance(outcome, Redirect):
            return _redirect(req, method, outcome)
        if isinstance(outcome, Allowed):
            req.setHeader(b"Allow", outcome.allow.encode("ascii"))
            if outcome.status == 200:
                return b""
            return _plain(req, 405, b"Method Not Allowed\n")
        assert isinstance(outcome, NotFound)
        return _plain(req, 404, b"404 page not found\n")

    def _dispatch(
        self, req: Request, method: str, path: str, route: Route, params: Mapping[str, str]
    ) -> bytes | int:
        req.setHeader(b"Content-Type", envelope.CONTENT_TYPE)
        raw_query = req.uri.partition(b"?")[2].decode("latin-1")
        body = b""
        if method not in ("GET", "HEAD", "OPTIONS") or route.body is not None:
            declared = req.getHeader(b"content-length")
            if getattr(req, "refused", False) or (
                declared is not None and declared.isdigit() and int(declared) > self._max_body
            ):
                return envelope.failure(body_too_large(self._max_body))
            body = req.content.read(self._max_body + 1) if req.content is not None else b""
            if len(body) > self._max_body:
                return envelope.failure(body_too_large(self._max_body))
        credential = ""
        if route.auth is not None:
            parts = RequestParts(method, path, raw_query, _first_headers(req), body)
            try:
                credential = self._verifier.verify(parts, route.auth)
            except AuthError as error:
                self.log.warn(
                    "refused {method} {path}: {reason}",
                    method=method,
                    path=path,
                    reason=error.message,
                )
                return envelope.failure(error.message)
        cache_key = ""
        if route.cacheable and not raw_query:
            cache_key = path
            cached = self._cache.get(cache_key)
            revision = self._revision()
            if cached is not None and cached[0] == revision and revision is not None:
                return cached[1]
        try:
            decoded = route.body.decode(body) if route.body is not None else {}
        except DecodeError as error:
            return envelope.failure(error.message)
        call = Call(
            params=params, query=parse_query(raw_query), body=decoded, credential=credential
        )
        try:
            result = route.handler(call)
        except Exception:
            return self._failed(req, route, Failure())
        if isinstance(result, Deferred):
            finished = [False]
            req.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))
            result.addCallbacks(
                lambda value: self._encode(req, route, value, ""),
                lambda failure: self._failed(req, route, failure),
            )
            result.addCallback(lambda data: _finish(req, data, finished[0]))
            result.addErrback(lambda failure: self.log.failure("writing a reply", failure))
            return NOT_DONE_YET
        return self._encode(req, route, result, cache_key)

    def _encode(self, req: Request, route: Route, result: Any, cache_key: str) -> bytes:
        if isinstance(result, Reply):
            req.setResponseCode(result.status)
            return envelope.success(result.data)
        if isinstance(result, Raw):
            req.setHeader(b"Content-Type", result.content_type)
            return result.body
        data = envelope.success(result)
        if cache_key:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[cache_key] = (self._revision(), data)
        return data

    def _failed(self, req: Request, route: Route, failure: Failure) -> bytes:
        if failure.check(OperationError):
            return envelope.failure(cast(OperationError, failure.value).message)
        if failure.check(DecodeError):
            return envelope.failure(cast(DecodeError, failure.value).message)
        self.log.failure(
            "unexpected error in {method} {path}", failure, method=route.method, path=route.path
        )
        return envelope.failure("internal error")


def _finish(req: Request, data: bytes, finished: bool) -> None:
    if finished:
        return
    req.setHeader(b"Content-Length", b"%d" % len(data))
    if req.method != b"HEAD":
        req.write(data)
    req.finish()


def _first_headers(req: Request) -> dict[str, str]:
    """Lower-cased header names to their *first* value, as Core signs them."""
    headers: dict[str, str] = {}
    for name, values in req.requestHeaders.getAllRawHeaders():
        if values:
            headers[name.decode("latin-1").lower()] = values[0].decode("latin-1")
    return headers


def _plain(req: Request, status: int, text: bytes) -> bytes:
    req.setResponseCode(status)
    req.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    req.setHeader(b"X-Content-Type-Options", b"nosniff")
    return text


def _redirect(req: Request, method: str, outcome: Redirect) -> bytes:
    location = quote(outcome.path, safe="/:@!$&'()*+,;=-._~")
    query = req.uri.partition(b"?")[2]
    target = location.encode("ascii") + (b"?" + query if query else b"")
    req.setResponseCode(outcome.status)
    req.setHeader(b"Location", target)
    if method in ("GET", "HEAD"):
        req.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        text = "Moved Permanently" if outcome.status == 301 else "Temporary Redirect"
        return b'<a href="' + target + b'">' + text.encode("ascii") + b"</a>.\n\n"
    return b""


class LimitedRequest(ServerRequest):
    """A request that refuses a body above ``max_body`` before buffering it.

    A declared ``Content-Length`` above the limit is answered at once and the connection closed;
    a chunked body is counted as it arrives and dropped once it passes the limit.
    """

    max_body = DEFAULT_MAX_BODY
    refused = False
    _received = 0

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


def limited_request_factory(max_body: int) -> type[LimitedRequest]:
    return cast(
        type[LimitedRequest], type("LimitedRequest", (LimitedRequest,), {"max_body": max_body})
    )


def build_api_resource(
    operations: Any,
    credentials: Mapping[str, str],
    clock: IReactorTime,
    *,
    skew: float = DEFAULT_SKEW,
    max_body: int = DEFAULT_MAX_BODY,
) -> IResource:
    """The API as one resource over injected ``operations`` (mount it at the site root)."""
    from nanocore.api.families import all_routes

    verifier = Verifier(credentials, clock, skew)
    revision = getattr(operations, "revision", lambda: None)
    return APIResource(all_routes(operations), verifier, revision, max_body)


class QuietSite(Site):
    """A site without the per-request access log line (Core kept none; it costs ~8 % per GET)."""

    def log(self, request: Request) -> None:
        pass


def build_api_site(
    operations: Any,
    credentials: Mapping[str, str],
    clock: IReactorTime,
    *,
    skew: float = DEFAULT_SKEW,
    max_body: int = DEFAULT_MAX_BODY,
    access_log: bool = False,
) -> Site:
    """A ``Site`` serving :func:`build_api_resource`, with the body limit enforced on the wire."""
    resource = build_api_resource(operations, credentials, clock, skew=skew, max_body=max_body)
    return api_site_for(resource, max_body=max_body, access_log=access_log)


def api_site_for(
    resource: IResource, *, max_body: int = DEFAULT_MAX_BODY, access_log: bool = False
) -> Site:
    """A ``Site`` for an API resource that refuses bodies above ``max_body`` on the wire."""
    site = Site(resource) if access_log else QuietSite(resource)
    site.requestFactory = limited_request_factory(max_body)
    site.displayTracebacks = False
    return site
