"""The response cache on its own: what it keeps, for how long, and what it lets through."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from nanocore.api.cache import ResponseCache
from nanocore.api.endpoint import Incoming


def incoming(path: str = "/api/v1/things/", query: str = "") -> Incoming:
    return Incoming("GET", path, query, {}, b"")


class Counting:
    """An endpoint step that answers a numbered body, or what the test sets."""

    def __init__(self) -> None:
        self.calls = 0
        self.answer: Any = None
        self.code = 200

    def __call__(self, request: Any, received: Incoming) -> Any:
        self.calls += 1
        request.setResponseCode(self.code)
        return self.answer if self.answer is not None else b"answer %d" % self.calls


class ResponseCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.revision = 1
        self.cache = ResponseCache(lambda: self.revision, limit=3)
        self.inner = Counting()
        self.endpoint = self.cache.wrap(self.inner)

    def get(self, path: str = "/api/v1/things/", query: str = "") -> Any:
        return self.endpoint(Request(DummyChannel()), incoming(path, query))

    def test_an_answer_is_kept_while_the_revision_stands(self) -> None:
        self.assertEqual(self.get(), b"answer 1")
        self.assertEqual(self.get(), b"answer 1")
        self.assertEqual(self.inner.calls, 1)
        self.assertEqual(self.cache.lookup("/api/v1/things/"), b"answer 1")

    def test_a_new_revision_rebuilds_the_answer(self) -> None:
        self.get()
        self.revision = 2
        self.assertIsNone(self.cache.lookup("/api/v1/things/"))
        self.assertEqual(self.get(), b"answer 2")
        self.assertEqual(self.get(), b"answer 2")

    def test_paths_are_kept_apart(self) -> None:
        self.assertEqual(self.get("/api/v1/a/"), b"answer 1")
        self.assertEqual(self.get("/api/v1/b/"), b"answer 2")
        self.assertEqual(self.get("/api/v1/a/"), b"answer 1")

    def test_a_request_with_a_query_always_goes_through(self) -> None:
        self.get()
        self.assertEqual(self.get(query="x=1"), b"answer 2")
        self.assertEqual(self.get(query="x=1"), b"answer 3")
        self.assertEqual(self.get(), b"answer 1")

    def test_an_asynchronous_answer_is_not_kept(self) -> None:
        self.inner.answer = succeed(b"later")
        first = self.get()
        self.assertIsInstance(first, Deferred)
        self.assertEqual(self.successResultOf(first), b"later")
        self.assertIsNone(self.cache.lookup("/api/v1/things/"))

    def test_an_answer_with_another_status_is_not_kept(self) -> None:
        self.inner.code = 202
        self.get()
        self.assertIsNone(self.cache.lookup("/api/v1/things/"))

    def test_an_exception_keeps_nothing(self) -> None:
        def failing(request: Any, received: Incoming) -> bytes:
            raise ValueError("no")

        endpoint = self.cache.wrap(failing)
        self.assertRaises(ValueError, endpoint, Request(DummyChannel()), incoming())
        self.assertIsNone(self.cache.lookup("/api/v1/things/"))

    def test_the_cache_is_bounded(self) -> None:
        for name in "abcd":
            self.cache.keep(f"/{name}", name.encode())
        kept = [self.cache.lookup(f"/{name}") for name in "abcd"]
        self.assertEqual(kept, [None, None, None, b"d"])
