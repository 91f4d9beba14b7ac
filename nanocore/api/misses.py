"""How the API answers a request no route takes as it stands: httprouter v1.3's answers.

Core's clients depend on httprouter's redirect codes, ``Allow`` lists and plain-text bodies
(api-reference §1.2), not on werkzeug's. :meth:`Misses.missed` is the app's ``handle_errors``
handler for werkzeug's ``RequestRedirect``, ``NotFound`` and ``MethodNotAllowed``;
:meth:`Misses.exact` wraps each route for the two cases werkzeug matches and httprouter does
not (a method in another case, a path with leading slashes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import cast
from urllib.parse import quote

from klein.interfaces import IKleinRequest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Map, MapAdapter, RequestRedirect, Rule

from nanocore.api.endpoint import decoded_path, sized
from nanocore.api.routing import (
    clean_path,
    configure_map,
    fold_static,
    matches,
    respell,
    toggle_slash,
    werkzeug_rule,
)

#: A Klein endpoint: the request and the route's path parameters.
KleinEndpoint = Callable[..., "bytes | Deferred[bytes]"]


class Misses:
    """httprouter's answers over the templates of a route table (``(method, full path)``)."""

    def __init__(self, templates: Iterable[tuple[str, str]]) -> None:
        self._templates = tuple(templates)
        self._methods = frozenset(method for method, _ in self._templates)
        # The rules with their fixed segments lower-cased, for httprouter's case-insensitive
        # "fixed path" redirect, which werkzeug does not have.
        folded = configure_map(Map())
        for index, (method, template) in enumerate(self._templates):
            rule = werkzeug_rule(fold_static(template))
            folded.add(Rule(rule, methods=[method], endpoint=str(index)))
        without_head(folded)
        self._folded = folded.bind("localhost")

    def exact(self, method: str, endpoint: KleinEndpoint) -> KleinEndpoint:
        """``endpoint`` for a request werkzeug matched and httprouter would match too."""
        expected = method.encode("ascii")

        def checked(request: IRequest, **params: str) -> bytes | Deferred[bytes]:
            req = cast(Request, request)
            if req.method != expected:
                # werkzeug upper-cases the method; Go's methods are case-sensitive tokens.
                return self.missed(request, Failure(_other_methods(request)))
            if req.path.startswith(b"//"):
                # werkzeug ignores leading slashes; httprouter redirects to the cleaned path.
                return redirect(req, method, clean_path(decoded_path(req)))
            return endpoint(request, **params)

        return checked

    def missed(self, request: IRequest, failure: Failure) -> bytes:
        """Answer a path no rule of its method matched, in httprouter's order of checks."""
        req = cast(Request, request)
        method = req.method.decode("ascii", errors="replace")
        path = decoded_path(req)
        error = failure.value
        routed = method in self._methods and method != "CONNECT"
        if isinstance(error, RequestRedirect) and routed and not path.startswith("//"):
            # The only redirect this map makes: a rule of this method has the slash path lacks.
            # (werkzeug ignores leading slashes; httprouter finds such paths only cleaned.)
            return redirect(req, method, toggle_slash(path))
        if routed and path != "/":
            adapter = cast(MapAdapter, IKleinRequest(request).mapper)
            target = self._fixed_path(adapter, method, path)
            if target is not None:
                return redirect(req, method, target)
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            allow = sorted(({*error.valid_methods} - {method}) | {"OPTIONS"})
            req.setHeader(b"Allow", ", ".join(allow).encode("ascii"))
            if method == "OPTIONS":
                return sized(req, b"")
            return plain(req, 405, b"Method Not Allowed\n")
        return plain(req, 404, b"404 page not found\n")

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
            return respell(self._templates[int(rule.endpoint)][1], candidate)
        return None


def without_head(url_map: Map) -> None:
    """werkzeug adds HEAD to every GET rule; httprouter (and so Core) never did."""
    for rule in url_map.iter_rules():
        if rule.methods is not None and "GET" in rule.methods:
            rule.methods.discard("HEAD")


def _other_methods(request: IRequest) -> HTTPException:
    """What werkzeug raises for this path with a method no rule has."""
    adapter = cast(MapAdapter, IKleinRequest(request).mapper)
    try:
        adapter.match(method="\x00")
    except HTTPException as error:
        return error
    raise AssertionError("no rule has the method NUL")  # pragma: no cover


def plain(req: Request, status: int, text: bytes) -> bytes:
    req.setResponseCode(status)
    req.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    req.setHeader(b"X-Content-Type-Options", b"nosniff")
    return sized(req, text)


def redirect(req: Request, method: str, path: str) -> bytes:
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
        return sized(req, b'<a href="' + target + b'">' + text.encode("ascii") + b"</a>.\n\n")
    return sized(req, b"")
