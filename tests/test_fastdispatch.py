"""A matched route answered without Klein's resource answers with exactly Klein's bytes.

The same generated requests (methods in any case, paths with escapes, encoded slashes, leading
and trailing slashes, misses; bodies good and bad; answers at once, later, refused at once or
later, failing unexpectedly; good, missing and corrupted signatures; odd hosts; clients that go
away before a late answer) go through two sites over the same routes: one whose app renders
every request through ``KleinResource.render`` (``direct=False``) and one that answers the
plain case itself (:mod:`nanocore.api._fastdispatch`). Every answer must match byte for byte
(bar the Date header).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from klein import Klein
from klein.resource import KleinResource
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from nanocore.api import _fastdispatch
from nanocore.api._fastdispatch import MatchedRoutes
from nanocore.api.app import APIResource, api_site_for
from nanocore.api.auth import Verifier
from nanocore.api.client import Signer
from nanocore.api.decode import Body, Field, Kind
from nanocore.api.route import Call, Reply, Route
from nanocore.api.testing import TEST_CREDENTIALS
from nanocore.operations.errors import OperationError

NOW = 1_714_529_472.0
SIGNER = Signer(*next(iter(TEST_CREDENTIALS.items())))
SIZE = Body((Field("size", Kind.INT, required=True),))


class Things:
    """Handlers whose answers depend only on the request, in every shape an endpoint has."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def show(self, ops: object, call: Call) -> Any:
        return {"params": dict(call.params), "query": dict(call.query)}

    def act(self, ops: object, call: Call) -> Any:
        """The id says how: at once, later, refused (at once or later), or broken."""
        name = call.params.get("id", "")
        if name == "refused":
            raise OperationError(f"no such thing {name}")
        if name == "broken":
            raise RuntimeError("a bug")
        if name.startswith("late"):
            return deferLater(self.clock, 1, self._late, name, call)
        return Reply({"done": name, "size": call.body.get("size")}, 202)

    def _late(self, name: str, call: Call) -> Any:
        if name == "late-refused":
            raise OperationError("refused later")
        if name == "late-broken":
            raise RuntimeError("a later bug")
        return {"done": name, "size": call.body.get("size")}

    def routes(self) -> list[Route[Any]]:
        return [
            Route("GET", "/things/", self.show, "list", "t", auth=None),
            Route("GET", "/things/:id", self.show, "get", "t", auth=None),
            Route("POST", "/things/:id", self.act, "create", "t", body=SIZE, auth=None),
            Route("DELETE", "/things/:id", self.act, "delete", "t"),
            Route("PUT", "/things/:id/size", self.act, "resize", "t", body=SIZE),
            Route("GET", "/files/*rest", self.show, "files", "t", auth=None),
        ]


PATHS = [
    "/api/v1/things/",
    "/api/v1/things",
    "/api/v1/THINGS/",
    "//api/v1/things/",
    "/",
    "/api/v1/things/a",
    "/api/v1/things/a/",
    "/api/v1/things/%61",
    "/api/v1/things/a%2Fb",
    "/%2Fapi/v1/things/a",
    "/api/v1/things/%C3%A9",
    "/api/v1/things/%ff",
    "/api/v1/things/late",
    "/api/v1/things/late-refused",
    "/api/v1/things/late-broken",
    "/api/v1/things/refused",
    "/api/v1/things/broken",
    "/api/v1/things/late/size",
    "/api/v1/things/a/size",
    "/api/v1/things/broken/size",
    "/api/v1/files/",
    "/api/v1/files/x/y%2Fz",
    "/api/v1/things/a?x=1&y",
    "/api/v1/nothing/",
]
BODIES = [b"", b'{"size": 3}', b'{"size": "3"}', b"{", b'{"size": 1.5}', b"[]"]

requests = st.lists(
    st.tuples(
        st.sampled_from(["GET", "GET", "POST", "PUT", "DELETE", "get", "Post", "OPTIONS", "HEAD"]),
        st.sampled_from(PATHS),
        st.sampled_from(BODIES),
        st.sampled_from(["good", "none", "corrupted"]),
        st.sampled_from(["127.0.0.1:5850", "other", "a..b", "[::1]"]),
        st.booleans(),  # the client goes away before a late answer
    ),
    min_size=1,
    max_size=12,
)


class Pair:
    """Klein's render and the direct one, over the same routes and clock."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.things = Things(self.clock)
        self.plain = self._site(direct=False)
        self.direct = self._site(direct=True)

    def _site(self, *, direct: bool) -> Any:
        verifier = Verifier(TEST_CREDENTIALS, self.clock)
        app = APIResource(self.things.routes(), None, verifier, direct=direct)
        return api_site_for(app)

    def request(self, method: str, target: str, body: bytes, signature: str, host: str) -> bytes:
        headers = {b"Host": host.encode("latin-1")}
        if signature != "none":
            signed = SIGNER.headers(
                method, f"http://{host}{target}", body, now=self.clock.seconds()
            )
            headers.update(signed)
            if signature == "corrupted":
                value = headers[b"Nano-Authorization"]
                headers[b"Nano-Authorization"] = value[:-4] + b"0000"
        if body:
            headers[b"Content-Length"] = b"%d" % len(body)
        raw = f"{method} {target} HTTP/1.1\r\n".encode("latin-1")
        raw += b"".join(name + b": " + value + b"\r\n" for name, value in headers.items())
        return raw + b"\r\n" + body

    def answer(self, site: Any, raw: bytes, leave: bool) -> bytes:
        transport = StringTransport()
        channel = site.buildProtocol(None)
        channel.makeConnection(transport)
        channel.dataReceived(raw)
        if leave:
            channel.connectionLost(Failure(ConnectionDone()))
        self.clock.advance(1)  # late answers
        if not leave:
            channel.connectionLost(Failure(ConnectionDone()))
        lines = transport.value().split(b"\r\n")
        return b"\r\n".join(line for line in lines if not line.startswith(b"Date: "))


class MatchedRoutesTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(requests)
    def test_the_direct_answer_is_kleins(self, sequence: list[Any]) -> None:
        pair = Pair()
        for method, target, body, signature, host, leave in sequence:
            raw = pair.request(method, target, body, signature, host)
            plain = pair.answer(pair.plain, raw, leave)
            direct = pair.answer(pair.direct, raw, leave)
            self.assertEqual(direct, plain, (method, target, body, signature, host, leave))
        # Unexpected errors are logged once each, by the same handler, on both sites.
        self.flushLoggedErrors(RuntimeError)

    def test_a_matched_route_is_answered_without_kleins_resource(self) -> None:
        """The property holds trivially if the direct path never answers: it does, and
        what it leaves (a miss) still reaches Klein."""
        pair = Pair()
        rendered: list[object] = []
        original = KleinResource.render
        self.patch(
            KleinResource,
            "render",
            lambda resource, request: rendered.append(request) or original(resource, request),
        )
        raw = pair.request("POST", "/api/v1/things/late", b'{"size": 3}', "none", "x")
        answer = pair.answer(pair.direct, raw, leave=False)
        self.assertIn(b'"done": "late"', answer)
        self.assertEqual(rendered, [])
        miss = pair.answer(
            pair.direct, pair.request("GET", "/api/v1/nope", b"", "none", "x"), False
        )
        self.assertIn(b"404 page not found", miss)
        self.assertEqual(len(rendered), 1)

    def test_a_client_gone_before_a_late_answer_gets_nothing_written(self) -> None:
        pair = Pair()
        raw = pair.request("POST", "/api/v1/things/late", b'{"size": 3}', "none", "x")
        self.assertEqual(pair.answer(pair.direct, raw, leave=True), b"")


class FailingHandlerTests(SynchronousTestCase):
    def test_a_handler_that_fails_passes_the_error_on_as_klein_does(self) -> None:
        """Klein gives a handler's own failure to the handlers after it."""
        seen: list[str] = []

        def endpoint(request: object) -> bytes:
            raise KeyError("first")

        def failing(request: object, failure: Failure) -> bytes:
            seen.append(repr(failure.value))
            raise ValueError("second")

        def answering(request: object, failure: Failure) -> bytes:
            seen.append(repr(failure.value))
            return b"answered"

        app = Klein()
        app.route("/x", methods=["GET"], endpoint="0")(endpoint)
        routes = MatchedRoutes(app, [((KeyError,), failing), ((Exception,), answering)])
        request = Request(DummyChannel())
        request.method, request.prepath, request.postpath = b"GET", [], [b"x"]
        self.assertEqual(routes.render(request), b"answered")
        self.assertEqual(seen, ["KeyError('first')", "ValueError('second')"])


class MemoTests(SynchronousTestCase):
    """Matches are remembered within bounds, whatever paths clients send."""

    def routes(self) -> MatchedRoutes:
        app = Klein()
        app.route("/x/<name>", methods=["GET"], endpoint="0")(lambda request, name: name.encode())
        return MatchedRoutes(app, [])

    def render(self, routes: MatchedRoutes, *segments: bytes) -> object:
        request = Request(DummyChannel())
        request.method, request.prepath, request.postpath = b"GET", [], [b"x", *segments]
        return routes.render(request)

    def test_a_remembered_match_answers_as_werkzeugs(self) -> None:
        routes = self.routes()
        self.assertEqual(self.render(routes, b"a"), b"a")
        self.assertEqual(self.render(routes, b"a"), b"a")
        self.assertEqual(self.render(routes, b"b"), b"b")
        self.assertIsNone(self.render(routes, b"a", b"b"))  # a miss stays Klein's

    def test_the_memo_is_bounded(self) -> None:
        routes = self.routes()
        for index in range(_fastdispatch.MATCHES_KEPT + 10):
            self.assertEqual(self.render(routes, b"%d" % index), b"%d" % index)
        self.assertLessEqual(len(routes._matches), _fastdispatch.MATCHES_KEPT)
        long = b"n" * _fastdispatch.MATCH_PATH_KEPT
        self.assertEqual(self.render(routes, long), long)  # answered, not kept
        self.assertNotIn((b"x/" + long, b"GET"), routes._matches)
