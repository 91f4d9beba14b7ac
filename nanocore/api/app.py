"""The API site: a Klein app over the route table, with signature, body limits, envelope and
error mapping in one place.

Route modules only declare :class:`~nanocore.api.route.Route`s; everything they have in common
happens here, once. Each route becomes a werkzeug rule of the API's own ``Klein()``; a path no
rule of its method matches is answered as httprouter v1.3 answers it (api-reference §1.2) from
Klein's ``handle_errors`` for werkzeug's ``RequestRedirect``, ``NotFound`` and
``MethodNotAllowed``, because Core's clients depend on httprouter's redirect codes and ``Allow``
lists, not on werkzeug's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast
from urllib.parse import quote, unquote, unquote_to_bytes

from klein import Klein
from klein.interfaces import IKleinRequest
from klein.resource import KleinResource
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request as ServerRequest
from twisted.web.server import Site
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, MapAdapter, RequestRedirect, Rule

from nanocore.api import envelope
from nanocore.api.auth import DEFAULT_SKEW, AuthError, RequestParts, Verifier, parse_query
from nanocore.api.decode import DecodeError
from nanocore.api.route import Call, Raw, Reply, Route
from nanocore.api.routing import (
    clean_path,
    configure_map,
    fold_static,
    matches,
    respell,
    toggle_slash,
    werkzeug_rule,
)
from nanocore.operations.errors import OperationError

#: Largest request body read; larger ones are refused from their Content-Length or while
#: streaming, before they are buffered whole.
DEFAULT_MAX_BODY = 1 << 20

_CACHE_LIMIT = 4096


def body_too_large(limit: int) -> str:
    return f"request body larger than {limit} bytes"


class APIResource(KleinResource):
    """The whole API as the resource of its own ``Klein()`` app; mount it at the site root."""

    log = Logger()

    def __init__(
        self,
        routes: Iterable[Route],
        verifier: Verifier,
        revision: Callable[[], object] = lambda: None,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self._routes = tuple(routes)
        self._verifier = verifier
        self._revision = revision
        self._max_body = max_body
        self._cache: dict[str, tuple[object, bytes]] = {}
        self._methods = frozenset(route.method for route in self._routes)
        app = Klein()
        configure_map(app.url_map)
        # The same rules with their fixed segments lower-cased, for httprouter's case-insensitive
        # "fixed path" redirect, which werkzeug does not have.
        folded = configure_map(Map())
        seen: set[tuple[str, str]] = set()
        for index, route in enumerate(self._routes):
            rule = werkzeug_rule(route.full_path)
            if (route.method, rule) in seen:
                raise ValueError(f"route declared twice: {route.method} {route.full_path}")
            seen.add((route.method, rule))
            app.route(rule, methods=[route.method], endpoint=str(index))(self._endpoint(route))
            folded.add(
                Rule(
                    werkzeug_rule(fold_static(route.full_path)),
                    methods=[route.method],
                    endpoint=str(index),
                )
            )
        for url_map in (app.url_map, folded):
            for each in url_map.iter_rules():
                # werkzeug adds HEAD to every GET rule; httprouter (and so Core) never did.
                if each.methods is not None and self._route_of(each).method != "HEAD":
                    each.methods.discard("HEAD")
        app.handle_errors(RequestRedirect, NotFound, MethodNotAllowed)(self._missed)
        self._folded = folded.bind("localhost")
        self.app = app
        super().__init__(app)

    @property
    def routes(self) -> tuple[Route, ...]:
        return self._routes

    def route_for(self, method: str, path: str) -> Route | None:
        """The route a request for the decoded ``path`` is dispatched to, if any (no redirects)."""
        try:
            rule, _ = self.app.url_map.bind("localhost").match(path, method, return_rule=True)
        except HTTPException:
            return None
        return self._route_of(rule)

    def _route_of(self, rule: Rule) -> Route:
        return self._routes[int(rule.endpoint)]

    def _endpoint(self, route: Route) -> Callable[..., bytes | Deferred[bytes]]:
        method = route.method.encode("ascii")

        def endpoint(request: IRequest, **params: str) -> bytes | Deferred[bytes]:
            req = cast(Request, request)
            if req.method != method:
                # werkzeug upper-cases the method; Go's methods are case-sensitive tokens.
                return self._missed(request, Failure(self._other_methods(request)))
            if req.path.startswith(b"//"):
                # werkzeug ignores leading slashes; httprouter redirects to the cleaned path.
                path = unquote(req.path.decode("latin-1"), encoding="utf-8", errors="replace")
                return _redirect(req, route.method, clean_path(path))
            # Twisted percent-decodes each segment before Klein matches, as Go does.
            return self._dispatch(req, route, params)

        return endpoint

    def _other_methods(self, request: IRequest) -> HTTPException:
        """What werkzeug raises for this path with a method no rule has."""
        adapter = cast(MapAdapter, IKleinRequest(request).mapper)
        try:
            adapter.match(method="\x00")
        except HTTPException as error:
            return error
        raise AssertionError("no rule has the method NUL")  # pragma: no cover

    def _missed(self, request: IRequest, failure: Failure) -> bytes:
        """Answer a path no rule of its method matched, in httprouter's order of checks."""
        req = cast(Request, request)
        method = req.method.decode("ascii", errors="replace")
        path = unquote(req.path.decode("latin-1"), encoding="utf-8", errors="replace")
        error = failure.value
        routed = method in self._methods and method != "CONNECT"
        if isinstance(error, RequestRedirect) and routed and not path.startswith("//"):
            # The only redirect this map makes: a rule of this method has the slash path lacks.
            # (werkzeug ignores leading slashes; httprouter finds such paths only cleaned.)
            return _redirect(req, method, toggle_slash(path))
        if routed and path != "/":
            adapter = cast(MapAdapter, IKleinRequest(request).mapper)
            target = self._fixed_path(adapter, method, path)
            if target is not None:
                return _redirect(req, method, target)
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            allow = sorted(({*error.valid_methods} - {method}) | {"OPTIONS"})
            req.setHeader(b"Allow", ", ".join(allow).encode("ascii"))
            if method == "OPTIONS":
                return _sized(req, b"")
            return _plain(req, 405, b"Method Not Allowed\n")
        return _plain(req, 404, b"404 page not found\n")

    def _fixed_path(self, adapter: MapAdapter, method: str, path: str) -> str | None:
        """Where httprouter redirects: the trailing slash toggled, else the cleaned path
        matched case-insensitively with either trailing slash."""
        toggled = toggle_slash(path)
        if not path.startswith("//") and matches(adapter, toggled, method):
            return toggled
        cleaned = clean_path(path)
        for candidate in (cleaned, toggle_slash(cleaned)):
            try:
                rule, _ = self._folded.match(candidate.lower(), method, return_rule=True)
            except HTTPException:
                continue
            return respell(self._route_of(rule).full_path, candidate)
        return None

    def _dispatch(
        self, req: Request, route: Route, params: Mapping[str, str]
    ) -> bytes | Deferred[bytes]:
        method = route.method
        path = unquote(req.path.decode("latin-1"), encoding="utf-8", errors="replace")
        req.setHeader(b"Content-Type", envelope.CONTENT_TYPE)
        raw_query = req.uri.partition(b"?")[2].decode("latin-1")
        body = b""
        if method not in ("GET", "HEAD", "OPTIONS") or route.body is not None:
            declared = req.getHeader(b"content-length")
            if getattr(req, "refused", False) or (
                declared is not None and declared.isdigit() and int(declared) > self._max_body
            ):
                return _sized(req, envelope.failure(body_too_large(self._max_body)))
            body = req.content.read(self._max_body + 1) if req.content is not None else b""
            if len(body) > self._max_body:
                return _sized(req, envelope.failure(body_too_large(self._max_body)))
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
                return _sized(req, envelope.failure(error.message))
        cache_key = ""
        if route.cacheable and not raw_query:
            cache_key = path
            cached = self._cache.get(cache_key)
            revision = self._revision()
            if cached is not None and cached[0] == revision and revision is not None:
                return _sized(req, cached[1])
        try:
            decoded = route.body.decode(body) if route.body is not None else {}
        except DecodeError as error:
            return _sized(req, envelope.failure(error.message))
        call = Call(
            params=params, query=parse_query(raw_query), body=decoded, credential=credential
        )
        try:
            result = route.handler(call)
        except Exception:
            return _sized(req, self._failed(req, route, Failure()))
        if isinstance(result, Deferred):
            # Klein cancels what we return when the client goes away; the operation must still
            # run to its end (and commit), so it is not exposed to that cancellation.
            answer: Deferred[bytes] = Deferred()
            result.addCallbacks(
                lambda value: self._encode(req, route, value, ""),
                lambda failure: self._failed(req, route, failure),
            )
            result.addErrback(lambda failure: self._failed(req, route, failure))
            result.addCallback(lambda data: _sized(req, data)).chainDeferred(answer)
            return answer
        try:
            data = self._encode(req, route, result, cache_key)
        except Exception:
            data = self._failed(req, route, Failure())
        return _sized(req, data)

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


def _sized(req: Request, data: bytes) -> bytes:
    """Declare the length, so Twisted sends the body in one piece instead of chunked."""
    req.setHeader(b"Content-Length", b"%d" % len(data))
    return data


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
    return _sized(req, text)


def _redirect(req: Request, method: str, path: str) -> bytes:
    """httprouter's redirect: 301 for GET, 307 otherwise, keeping the original query."""
    status = 301 if method == "GET" else 307
    # Never "//host/...": a client would read that as another server.
    location = "/" + quote(path, safe="/:@!$&'()*+,;=-._~").lstrip("/")
    query = req.uri.partition(b"?")[2]
    target = location.encode("ascii") + (b"?" + query if query else b"")
    req.setResponseCode(status)
    req.setHeader(b"Location", target)
    if method in ("GET", "HEAD"):
        req.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        text = "Moved Permanently" if status == 301 else "Temporary Redirect"
        return _sized(req, b'<a href="' + target + b'">' + text.encode("ascii") + b"</a>.\n\n")
    return _sized(req, b"")


class LimitedRequest(ServerRequest):
    """A request that refuses a body above ``max_body`` before buffering it.

    A declared ``Content-Length`` above the limit is answered at once and the connection closed;
    a chunked body is counted as it arrives and dropped once it passes the limit. Bodies are
    JSON whatever their ``Content-Type`` says (as in Core), so Twisted's form parsing is off:
    it never runs on API input, and its MIME parse of the header cost ~60 µs per POST.
    """

    max_body = DEFAULT_MAX_BODY
    refused = False
    _received = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(*args, **kwargs)

    def process(self) -> None:
        if not _utf8(unquote_to_bytes(self.path)) or not _utf8(self.getRequestHostname()):
            # Klein refuses these too, but logs a traceback for each: a cheap log flood.
            self.setResponseCode(400)
            self.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            self.setHeader(b"Content-Length", b"%d" % len(_NOT_UTF8))
            self.write(_NOT_UTF8)
            self.finish()
            return
        super().process()

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


_NOT_UTF8 = b"Non-UTF-8 encoding in URL."


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


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
