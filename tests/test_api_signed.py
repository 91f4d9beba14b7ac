"""The signature wrapper on its own: it feeds the verifier the request and the body read once,
and the route runs only for a request the verifier accepts."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from nanocore.api.app import APIResource
from nanocore.api.auth import AuthError, Variant, Verifier
from nanocore.api.client import Signer
from nanocore.api.endpoint import Incoming
from nanocore.api.families import all_routes
from nanocore.api.signed import may_share_a_path, signed, signed_parts
from nanocore.api.testing import TEST_CREDENTIALS, APIClient

NOW = 1_714_529_472.0
URL = "http://127.0.0.1:5850/api/v1/things/a"


class SignedTests(SynchronousTestCase):
    def setUp(self) -> None:
        clock = Clock()
        clock.advance(NOW)
        self.signer = Signer(*next(iter(TEST_CREDENTIALS.items())))
        self.seen: list[Incoming] = []
        self.endpoint = signed(Verifier(TEST_CREDENTIALS, clock), Variant.REQUEST, self.route)

    def route(self, request: Any, incoming: Incoming) -> bytes:
        self.seen.append(incoming)
        return b"ran"

    def request(self, signed_body: bytes, sent_body: bytes) -> tuple[Request, Incoming]:
        request = Request(DummyChannel())
        for name, value in self.signer.headers("PUT", URL, signed_body, now=NOW).items():
            request.requestHeaders.addRawHeader(name, value)
        return request, Incoming("PUT", "/api/v1/things/a", "", {"id": "a"}, sent_body)

    def test_a_valid_signature_reaches_the_route_with_the_same_request(self) -> None:
        request, incoming = self.request(b'{"a": 1}', b'{"a": 1}')
        self.assertEqual(self.endpoint(request, incoming), b"ran")
        self.assertEqual(self.seen, [incoming])

    def test_the_signature_covers_the_body_the_route_receives(self) -> None:
        request, incoming = self.request(b'{"a": 1}', b'{"a": 2}')
        with self.assertRaises(AuthError) as raised:
            self.endpoint(request, incoming)
        self.assertEqual(raised.exception.message, "signature corrupted")
        self.assertEqual(self.seen, [])

    def test_no_signature_never_reaches_the_route(self) -> None:
        incoming = Incoming("GET", "/api/v1/things/", "", {}, b"")
        with self.assertRaises(AuthError):
            self.endpoint(Request(DummyChannel()), incoming)
        self.assertEqual(self.seen, [])

    def test_parts_take_the_first_value_of_each_header_lower_cased(self) -> None:
        request = Request(DummyChannel())
        request.requestHeaders.setRawHeaders(b"Nano-Date", [b"first", b"second"])
        incoming = Incoming("GET", "/api/v1/a b", "x=1", {}, b"body")
        parts = signed_parts(request, incoming)
        self.assertEqual(parts.headers["nano-date"], "first")
        self.assertEqual(
            (parts.method, parts.path, parts.query, parts.body),
            ("GET", "/api/v1/a b", "x=1", b"body"),
        )


class SharedPathTests(SynchronousTestCase):
    """Which reads must have their signatures remembered: those a write may share a path with."""

    def test_same_shape_shares(self) -> None:
        self.assertTrue(may_share_a_path("/api/v1/pools/:pool", "/api/v1/pools/:name"))
        self.assertTrue(may_share_a_path("/api/v1/pools/:pool", "/api/v1/pools/default"))
        self.assertTrue(may_share_a_path("/api/v1/templates/", "/api/v1/templates/"))

    def test_a_catch_all_shares_with_anything_below_it(self) -> None:
        self.assertTrue(may_share_a_path("/api/v1/search/*path", "/api/v1/search/a/b/c"))
        self.assertTrue(may_share_a_path("/api/v1/search/a/b", "/api/v1/search/*path"))

    def test_different_static_segments_or_lengths_do_not(self) -> None:
        self.assertFalse(may_share_a_path("/api/v1/pool_status/:p", "/api/v1/pools/:p"))
        self.assertFalse(may_share_a_path("/api/v1/pools/:p", "/api/v1/pools/:p/cells"))

    def test_a_parameter_never_matches_the_empty_segment_of_a_trailing_slash(self) -> None:
        self.assertFalse(may_share_a_path("/api/v1/pools/", "/api/v1/pools/:pool"))

    def test_the_route_table_remembers_reads_only_where_writes_go(self) -> None:
        told: dict[str, bool] = {}

        class Spy(Verifier):
            def verify(self, parts: Any, variant: Any = Variant.REQUEST, **kw: Any) -> str:
                told[parts.path] = kw["writable"]
                raise AuthError("stop here")

        clock = Clock()
        clock.advance(NOW)
        client = APIClient(APIResource(all_routes(), None, Spy(TEST_CREDENTIALS, clock)), clock)
        for path in ("/compute_pool_status/", "/compute_pools/default", "/templates/"):
            self.successResultOf(client.get(path))
        self.assertEqual(
            told,
            {
                "/api/v1/compute_pool_status/": False,
                "/api/v1/compute_pools/default": True,  # DELETE goes there too
                "/api/v1/templates/": True,  # and POST here
            },
        )
