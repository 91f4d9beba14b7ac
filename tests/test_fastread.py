"""The cached-read fast path answers every request with exactly the app's bytes.

The same generated requests (methods in any case, paths with queries, escapes, leading
slashes and other spellings, good, stale, corrupted, foreign and replayed signatures, the
revision moving in between) go through two sites: one serving the Klein app alone, one serving
it behind :class:`~nanocore.api._fastread.CachedReads`. Each keeps its own cache and verifier,
fed the same sequence; every answer must match byte for byte (bar the Date header).
"""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from nanocore.api._fastread import CachedReads
from nanocore.api.app import APIResource, api_site_for
from nanocore.api.auth import Verifier
from nanocore.api.cache import ResponseCache
from nanocore.api.client import Signer
from nanocore.api.route import Call, Route
from nanocore.api.testing import TEST_CREDENTIALS

NOW = 1_714_529_472.0
SIGNER = Signer(*next(iter(TEST_CREDENTIALS.items())))
STRANGER = Signer("tester", "not-the-key")


class Things:
    """Routes whose answers name the revision, so a stale answer would show."""

    def __init__(self) -> None:
        self.revision = 1

    def listing(self, ops: object, call: Call) -> Any:
        return [{"revision": self.revision, "params": dict(call.params)}]

    def routes(self) -> list[Route[Any]]:
        return [
            Route("GET", "/things/", self.listing, "list", "t", cacheable=True),
            # Shares its paths with writes: the verifier remembers its signatures.
            Route("GET", "/things/:id", self.listing, "get", "t", cacheable=True),
            Route("POST", "/things/:id", self.listing, "create", "t"),
            Route("DELETE", "/things/:id", self.listing, "delete", "t"),
            Route("GET", "/open/", self.listing, "open", "t", cacheable=True, auth=None),
            Route("GET", "/open/:id", self.listing, "open one", "t", cacheable=True, auth=None),
            Route("GET", "/plain/", self.listing, "plain", "t"),
        ]


PATHS = [
    "/api/v1/things/",
    "/api/v1/things/a",
    "/api/v1/things/b",
    "/api/v1/open/",
    "/api/v1/open/%61",
    "/api/v1/open/%2561",
    "/api/v1/plain/",
    "/api/v1/things",
    "/api/v1/THINGS/",
    "//api/v1/things/",
    "/api/v1/things/%61",
    "/api/v1/things/%2561",
    "/api/v1/things/?x=1",
    "/api/v1/things/?",
    "/api/v1/open/?x",
    "/api/v1/nothing/",
]
SIGNATURES = ["good", "none", "stale", "stranger", "other path", "earlier", "corrupted"]

requests = st.lists(
    st.tuples(
        st.sampled_from(["GET", "GET", "GET", "get", "POST", "DELETE", "OPTIONS", "HEAD"]),
        st.sampled_from(PATHS),
        st.sampled_from(SIGNATURES),
        st.sampled_from([0.0, 0.0, 0.4, 1.5, 400.0]),
        st.booleans(),
        st.sampled_from(["127.0.0.1:5850", "other", "\xff"]),
    ),
    min_size=1,
    max_size=25,
)


class Pair:
    """The app alone and the app behind the fast path, over the same routes and clock."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.things = Things()
        self.plain = self._site(fast=False)
        self.fast = self._site(fast=True)
        self.sent: list[dict[bytes, bytes]] = []

    def _site(self, *, fast: bool) -> Any:
        verifier = Verifier(TEST_CREDENTIALS, self.clock)
        cache = ResponseCache(lambda: self.things.revision)
        app = APIResource(self.things.routes(), None, verifier, cache)
        resource: Resource = CachedReads(app, cache, verifier) if fast else app
        return api_site_for(resource)

    def headers(self, method: str, target: str, signature: str, host: str) -> dict[bytes, bytes]:
        url = f"http://{host}{target}"
        now = self.clock.seconds()
        if signature == "none":
            return {b"Host": host.encode("latin-1")}
        if signature == "earlier" and self.sent:
            return self.sent[0]
        signer = STRANGER if signature == "stranger" else SIGNER
        if signature == "stale":
            now -= 1000
        if signature == "other path":
            url = f"http://{host}/api/v1/things/b"
        headers = signer.headers(method, url, now=now)
        headers[b"Host"] = host.encode("latin-1")
        if signature == "corrupted":
            headers[b"Nano-Authorization"] = headers[b"Nano-Authorization"][:-4] + b"0000"
        self.sent.append(headers)
        return headers

    def exchange(self, method: str, target: str, headers: dict[bytes, bytes]) -> list[bytes]:
        raw = f"{method} {target} HTTP/1.1\r\n".encode("latin-1")
        raw += b"".join(name + b": " + value + b"\r\n" for name, value in headers.items())
        raw += b"\r\n"
        return [_answer(site, raw) for site in (self.plain, self.fast)]


def _answer(site: Any, raw: bytes) -> bytes:
    transport = StringTransport()
    channel = site.buildProtocol(None)
    channel.makeConnection(transport)
    channel.dataReceived(raw)
    channel.connectionLost(Failure(ConnectionDone()))
    lines = transport.value().split(b"\r\n")
    return b"\r\n".join(line for line in lines if not line.startswith(b"Date: "))


class CachedReadsTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(requests)
    @example(  # a path that decodes to another one's raw spelling
        [
            ("GET", "/api/v1/open/%2561", "none", 0.0, False, "x"),
            ("GET", "/api/v1/open/%61", "none", 0.0, False, "x"),
        ]
    )
    def test_the_fast_path_answers_what_the_app_answers(self, sequence: list[Any]) -> None:
        pair = Pair()
        for method, target, signature, wait, new_revision, host in sequence:
            pair.clock.advance(wait)
            if new_revision:
                pair.things.revision += 1
            headers = pair.headers(method, target, signature, host)
            plain, fast = pair.exchange(method, target, headers)
            self.assertEqual(fast, plain, (method, target, signature, host))

    def test_a_repeated_signed_read_is_answered_by_the_fast_path(self) -> None:
        """The property above holds trivially if the fast path never answers: it does."""
        pair = Pair()
        headers = pair.headers("GET", "/api/v1/things/", "good", "127.0.0.1:5850")
        calls = []
        app = pair.fast.resource.app
        original = app.render
        app.render = lambda request: calls.append(request) or original(request)
        first = _answer(pair.fast, b"GET /api/v1/things/ HTTP/1.1\r\n" + _lines(headers))
        second = _answer(pair.fast, b"GET /api/v1/things/ HTTP/1.1\r\n" + _lines(headers))
        self.assertEqual(first, second)
        self.assertIn(b'"error_code": 0', second)
        self.assertEqual(len(calls), 1)

    def test_a_refused_signature_goes_to_the_app(self) -> None:
        pair = Pair()
        good = pair.headers("GET", "/api/v1/things/", "good", "127.0.0.1:5850")
        _answer(pair.fast, b"GET /api/v1/things/ HTTP/1.1\r\n" + _lines(good))
        bad = pair.headers("GET", "/api/v1/things/", "corrupted", "127.0.0.1:5850")
        answer = _answer(pair.fast, b"GET /api/v1/things/ HTTP/1.1\r\n" + _lines(bad))
        self.assertIn(b"signature corrupted", answer)


def _lines(headers: dict[bytes, bytes]) -> bytes:
    return b"".join(name + b": " + value + b"\r\n" for name, value in headers.items()) + b"\r\n"
