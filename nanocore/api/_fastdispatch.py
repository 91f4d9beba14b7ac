"""Klein's dispatch of a matched route, without what this app never uses (issue #15).

``KleinResource.render`` serves every kind of Klein app: it binds werkzeug's map to the
request's host and scheme for views that build URLs, adapts the request to hold that binding,
rewrites ``prepath`` for branch routes, accepts resources, renderables and ``Response``
objects as answers, and cancels an answer whose client went away, all through two
``maybeDeferred`` chains. The API's endpoints read none of it, answer bytes or a Deferred of
bytes, and map errors with a fixed list of handlers; for them that machinery was a fifth of a
durable write's instructions (benchmarks/README.md, "Session of 7 Dec 2026").

:class:`MatchedRoutes` answers a request that the app's own map (Klein's ``url_map``, the rules
``app.route`` made) matches, when its method is spelt as a route spells it: it calls the
endpoint Klein would call and, if that fails, the handler Klein would choose. Every other
request, every miss and redirect included, is left to Klein (:meth:`render` answers ``None``).
It never routes by itself: the rules, their order and the matching are werkzeug's, over
Klein's map (a match is remembered for the next request of the same method and path: the map
never changes once the app is built). ``tests/test_fastdispatch.py`` holds the bytes on the
wire to Klein's for generated requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, cast

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET, Request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Rule

log = Logger()

#: Matches remembered (a path and method, its rule and values): forgotten when full, and only
#: for paths this long at most, so that the memo stays under ~1 MiB whatever clients send.
MATCHES_KEPT = 1024
MATCH_PATH_KEPT = 256


class ErrorAnswer(Protocol):
    """What ``Klein.handle_errors`` registers."""

    def __call__(self, request: IRequest, failure: Failure) -> bytes: ...


#: The errors a handler takes, and the handler.
ErrorHandler = tuple[tuple[type[Exception], ...], ErrorAnswer]


class MatchedRoutes:
    """``app``'s routes, answered by its own endpoints, and the handlers it registered."""

    def __init__(self, app: Klein, handlers: Sequence[ErrorHandler]) -> None:
        # Without host matching or subdomains (configure_map) the host never picks a rule, so
        # one binding serves every request; Klein binds anew for each, to build URLs.
        self._adapter = app.url_map.bind("localhost")
        self._execute = app.execute_endpoint
        self._handlers = tuple(handlers)
        self._methods = _methods_of(app.url_map.iter_rules())
        # werkzeug's match walks its state machine in ~15 Python calls, a twentieth of a
        # write's; a portal or script asks the same few paths again and again.
        self._matches: dict[tuple[bytes, bytes], tuple[str, Mapping[str, Any]]] = {}

    def render(self, request: Request) -> bytes | int | None:
        """The answer (bytes, or ``NOT_DONE_YET``), or ``None``: Klein's to answer."""
        method = request.method
        if method not in self._methods:
            return None
        # Klein's PATH_INFO: the percent-decoded segments Twisted split the path into.
        joined = b"/".join(request.postpath or ())
        matched = self._matches.get((joined, method))
        if matched is None:
            matched = self._match(joined, method)
            if matched is None:
                return None
        endpoint, params = matched
        try:
            answer = self._execute(endpoint, request, **params)
        except Exception:
            refusal = self._failed(Failure(), request)
            return NOT_DONE_YET if refusal is None else refusal
        if not isinstance(answer, Deferred):
            return cast(bytes, answer)  # the API's endpoints answer bytes, or a Deferred of them
        gone: list[object] = []
        request.notifyFinish().addBoth(gone.append)
        answer.addErrback(self._failed, request).addCallback(_write, request, gone)
        answer.addErrback(lambda failure: log.failure("writing an answer", failure))
        return NOT_DONE_YET

    def _match(self, joined: bytes, method: bytes) -> tuple[str, Mapping[str, Any]] | None:
        """werkzeug's match of the path, remembered; None for a miss or a redirect."""
        try:
            path = (joined if joined[:1] == b"/" else b"/" + joined).decode("utf-8")
            rule, params = self._adapter.match(path, method.decode(), return_rule=True)
        except (HTTPException, UnicodeDecodeError):
            return None
        matched = (cast(str, rule.endpoint), params)
        if len(joined) <= MATCH_PATH_KEPT:
            if len(self._matches) >= MATCHES_KEPT:
                self._matches.clear()
            self._matches[joined, method] = matched
        return matched

    def _failed(self, failure: Failure, request: Request) -> bytes | None:
        """The first handler that takes the error answers it; a failing handler passes on,
        and with none left Twisted answers (as Klein leaves it): ``None``, answered."""
        for errors, handler in self._handlers:
            if failure.check(*errors):
                try:
                    return handler(request, failure)
                except Exception:
                    failure = Failure()
        request.processingFailed(failure)
        return None


def _write(answer: bytes | None, request: Request, gone: list[object]) -> None:
    if answer is not None and not gone:  # nobody answers a client that went away
        request.write(answer)
        request.finish()


def _methods_of(rules: Iterable[Rule]) -> frozenset[bytes]:
    return frozenset(method.encode("ascii") for rule in rules for method in rule.methods or ())
