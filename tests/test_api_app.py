"""The API machinery through StubTreq: router behaviour, envelope, decoding, limits, errors."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from nanocore import __version__
from nanocore.api import envelope
from nanocore.api.app import OUT_OF_MEMORY, APIResource, api_site_for
from nanocore.api.auth import Verifier
from nanocore.api.cache import ResponseCache
from nanocore.api.client import Signer
from nanocore.api.decode import Body, Field, Kind
from nanocore.api.families import all_routes
from nanocore.api.route import Call, Reply, Route
from nanocore.api.testing import TEST_CREDENTIALS, Answer, APIClient
from nanocore.operations.errors import InvalidRequest

NOW = 1_714_529_472.0


def result_of(d: Deferred[Answer]) -> Answer:
    return SynchronousTestCase().successResultOf(d)


class Handlers:
    """Synthetic routes that record what they were called with."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.revision = 1
        self.list_builds = 0
        self.pending: Deferred[Any] | None = None

    def record(self, ops: object, call: Call) -> Any:
        self.calls.append(call)
        return {"params": dict(call.params), "body": dict(call.body), "query": dict(call.query)}

    def listing(self, ops: object, call: Call) -> Any:
        self.list_builds += 1
        return [{"name": "a", "usage": 12.0, "ratio": 0.5}]

    def fail(self, ops: object, call: Call) -> Any:
        raise InvalidRequest("invalid pool 'x'")

    def crash(self, ops: object, call: Call) -> Any:
        raise RuntimeError("boom")

    def exhausted(self, ops: object, call: Call) -> Any:
        raise MemoryError()

    def later(self, ops: object, call: Call) -> Deferred[Any]:
        self.pending = Deferred()
        return self.pending

    def accepted(self, ops: object, call: Call) -> Reply:
        return Reply({"id": "abc"}, 202)

    def routes(self) -> list[Route]:
        body = Body(
            (
                Field("name", required=True),
                Field("cores", Kind.UINT),
                Field("failover", Kind.BOOL),
                Field("dns", Kind.STRING_LIST),
                Field("qos", Kind.OBJECT, body=Body((Field("cpu_priority"),), name="qos")),
            )
        )
        return [
            Route("GET", "/things/", self.listing, "list", "t", cacheable=True),
            Route("GET", "/things/:id", self.record, "get", "t"),
            Route("POST", "/things/:id", self.record, "create", "t", body=body),
            Route("PUT", "/things/:id", self.record, "modify", "t", body=body),
            Route("DELETE", "/things/:id", self.record, "delete", "t"),
            Route("PUT", "/things/:id/qos/cpu", self.record, "qos", "t"),
            Route("GET", "/fail/", self.fail, "fail", "t"),
            Route("GET", "/crash/", self.crash, "crash", "t"),
            Route("GET", "/exhausted/", self.exhausted, "exhausted", "t"),
            Route("GET", "/later/", self.later, "later", "t"),
            Route("POST", "/accepted/", self.accepted, "accepted", "t", body=Body()),
            Route("GET", "/search/things/*filepath", self.record, "search", "t"),
        ]


class AppTestsMixin:
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.handlers = Handlers()
        verifier = Verifier(TEST_CREDENTIALS, self.clock)
        cache = ResponseCache(lambda: self.handlers.revision)
        self.resource = APIResource(self.handlers.routes(), None, verifier, cache)
        self.client = APIClient(self.resource, self.clock)


class RouterBehaviourTests(AppTestsMixin, SynchronousTestCase):
    def test_get_without_trailing_slash_redirects_permanently(self) -> None:
        answer = result_of(self.client.get("/things?x=1"))
        self.assertEqual(answer.status, 301)
        self.assertEqual(answer.header(b"location"), b"/api/v1/things/?x=1")

    def test_put_with_extra_trailing_slash_redirects_temporarily(self) -> None:
        answer = result_of(self.client.put("/things/a/qos/cpu/", {}))
        self.assertEqual(answer.status, 307)
        self.assertEqual(answer.header(b"location"), b"/api/v1/things/a/qos/cpu")

    def test_wrong_case_and_dots_redirect_to_the_route(self) -> None:
        answer = result_of(self.client.get("/THINGS/../Things/"))
        self.assertEqual(answer.status, 301)
        self.assertEqual(answer.header(b"location"), b"/api/v1/things/")

    def test_other_method_is_405_with_sorted_allow(self) -> None:
        answer = result_of(self.client.request("PATCH", "/things/a"))
        self.assertEqual(answer.status, 405)
        self.assertEqual(answer.header(b"allow"), b"DELETE, GET, OPTIONS, POST, PUT")
        self.assertEqual(answer.body, b"Method Not Allowed\n")

    def test_options_is_answered_with_allow(self) -> None:
        answer = result_of(self.client.request("OPTIONS", "/things/"))
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.header(b"allow"), b"GET, OPTIONS")
        self.assertEqual(answer.body, b"")

    def test_unknown_path_is_plain_404(self) -> None:
        answer = result_of(self.client.get("/nothing/here"))
        self.assertEqual(answer.status, 404)
        self.assertEqual(answer.body, b"404 page not found\n")
        self.assertEqual(answer.header(b"content-type"), b"text/plain; charset=utf-8")

    def test_path_outside_the_prefix_is_404(self) -> None:
        answer = result_of(self.client.treq.get("http://127.0.0.1/things/"))
        self.assertEqual(answer.code, 404)

    def test_catch_all_takes_the_rest_of_the_path(self) -> None:
        answer = result_of(self.client.get("/search/things/a/b?owner=x"))
        self.assertEqual(answer.data["params"], {"filepath": "/a/b"})
        self.assertEqual(answer.data["query"], {"owner": "x"})

    def test_path_segments_are_percent_decoded(self) -> None:
        answer = result_of(self.client.get("/things/a%20b"))
        self.assertEqual(answer.data["params"], {"id": "a b"})


class EnvelopeTests(AppTestsMixin, SynchronousTestCase):
    def test_success_bytes_match_go(self) -> None:
        answer = result_of(self.client.get("/things/"))
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.header(b"content-type"), b"text/plain; charset=utf-8")
        self.assertEqual(
            answer.body,
            b'{\n  "error_code": 0,\n  "message": "",\n  "data": [\n    {\n'
            b'      "name": "a",\n      "usage": 12,\n      "ratio": 0.5\n    }\n  ]\n}\n',
        )

    def test_operation_error_is_a_200_envelope_with_the_message(self) -> None:
        answer = result_of(self.client.get("/fail/"))
        self.assertEqual(answer.status, 200)
        self.assertEqual(
            answer.body,
            b'{\n  "error_code": 500,\n  "message": "invalid pool \'x\'",\n  "data": {}\n}\n',
        )

    def test_unexpected_error_is_logged_and_answered(self) -> None:
        answer = result_of(self.client.get("/crash/"))
        self.assertEqual(answer.error, "internal error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_memory_running_out_is_a_503_said_once_a_minute(self) -> None:
        """Not "internal error" with a traceback per request (QA pass 22, E1)."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        for _ in range(3):
            answer = result_of(self.client.get("/exhausted/"))
            self.assertEqual((answer.status, answer.error), (503, OUT_OF_MEMORY))
            self.assertEqual(answer.header(b"retry-after"), b"1")
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["out of memory answering GET /api/v1/exhausted/: answered 503"],
        )
        self.assertEqual(self.flushLoggedErrors(MemoryError), [])

    def test_asynchronous_handler(self) -> None:
        d = self.client.get("/later/")
        self.assertNoResult(d)
        assert self.handlers.pending is not None
        self.handlers.pending.callback(["done"])
        self.assertEqual(result_of(d).data, ["done"])

    def test_asynchronous_unexpected_error_is_logged_once_and_answered(self) -> None:
        d = self.client.get("/later/")
        assert self.handlers.pending is not None
        self.handlers.pending.errback(RuntimeError("boom"))
        self.assertEqual(result_of(d).error, "internal error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_refusals_are_answered_without_logging_an_error(self) -> None:
        self.assertEqual(result_of(self.client.get("/fail/")).error, "invalid pool 'x'")
        self.assertEqual(
            result_of(self.client.post("/things/a", {"cores": 1})).error, "name required"
        )
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_asynchronous_operation_error(self) -> None:
        d = self.client.get("/later/")
        assert self.handlers.pending is not None
        self.handlers.pending.errback(InvalidRequest("cell timeout"))
        self.assertEqual(result_of(d).error, "cell timeout")

    def test_reply_sets_status(self) -> None:
        answer = result_of(self.client.post("/accepted/", {}))
        self.assertEqual(answer.status, 202)
        self.assertEqual(answer.data, {"id": "abc"})

    def test_go_escapes(self) -> None:
        self.assertEqual(
            envelope.success("<a&b>\u2028é"),
            b'{\n  "error_code": 0,\n  "message": "",\n  "data": '
            b'"\\u003ca\\u0026b\\u003e\\u2028\xc3\xa9"\n}\n',
        )

    def test_empty_containers(self) -> None:
        self.assertEqual(
            envelope.success({"a": [], "b": {}, "c": 1e21, "d": -3.0}),
            b'{\n  "error_code": 0,\n  "message": "",\n  "data": {\n    "a": [],\n'
            b'    "b": {},\n    "c": 1e+21,\n    "d": -3\n  }\n}\n',
        )


class CacheTests(AppTestsMixin, SynchronousTestCase):
    def test_list_is_cached_until_the_revision_changes(self) -> None:
        first = result_of(self.client.get("/things/"))
        second = result_of(self.client.get("/things/"))
        self.assertEqual(first.body, second.body)
        self.assertEqual(self.handlers.list_builds, 1)
        self.handlers.revision += 1
        result_of(self.client.get("/things/"))
        self.assertEqual(self.handlers.list_builds, 2)

    def test_cached_answer_still_requires_a_signature(self) -> None:
        result_of(self.client.get("/things/"))
        answer = result_of(self.client.get("/things/", signed=False))
        self.assertEqual(answer.error, "authorization required")


class BodyTests(AppTestsMixin, SynchronousTestCase):
    def test_decoded_fields_with_zero_values_and_unknown_keys_ignored(self) -> None:
        answer = result_of(self.client.post("/things/a", {"NAME": "x", "extra": [1]}))
        self.assertEqual(
            answer.data["body"],
            {"name": "x", "cores": 0, "failover": False, "dns": [], "qos": None},
        )

    def test_exact_case_wins(self) -> None:
        answer = result_of(self.client.post("/things/a", {"NAME": "upper", "name": "exact"}))
        self.assertEqual(answer.data["body"]["name"], "exact")

    def test_nested_object(self) -> None:
        answer = result_of(
            self.client.post("/things/a", {"name": "x", "qos": {"cpu_priority": "low"}})
        )
        self.assertEqual(answer.data["body"]["qos"], {"cpu_priority": "low"})

    def test_empty_body_is_eof(self) -> None:
        self.assertEqual(result_of(self.client.post("/things/a")).error, "EOF")

    def test_missing_required_field_is_named(self) -> None:
        self.assertEqual(
            result_of(self.client.post("/things/a", {"cores": 1})).error, "name required"
        )

    def test_wrong_type_names_the_field(self) -> None:
        answer = result_of(self.client.post("/things/a", {"name": "x", "cores": "2"}))
        self.assertEqual(
            answer.error,
            "json: cannot unmarshal string into Go struct field request.cores of type uint64",
        )

    def test_negative_unsigned_names_the_field(self) -> None:
        answer = result_of(self.client.post("/things/a", {"name": "x", "cores": -1}))
        self.assertIn("request.cores", answer.error)
        self.assertIn("number -1", answer.error)

    def test_fraction_for_unsigned_is_refused(self) -> None:
        answer = result_of(self.client.post("/things/a", raw=b'{"name": "x", "cores": 1.0}'))
        self.assertIn("request.cores", answer.error)

    def test_wrong_list_element(self) -> None:
        answer = result_of(self.client.post("/things/a", {"name": "x", "dns": ["a", 1]}))
        self.assertIn("request.dns", answer.error)

    def test_not_an_object(self) -> None:
        answer = result_of(self.client.post("/things/a", [1]))
        self.assertEqual(
            answer.error, "json: cannot unmarshal array into Go value of type request"
        )

    def test_invalid_json(self) -> None:
        answer = result_of(self.client.post("/things/a", raw=b"{nope"))
        self.assertTrue(answer.error.startswith("invalid JSON body"), answer.error)

    def test_trailing_bytes_after_the_first_value_are_ignored(self) -> None:
        answer = result_of(self.client.post("/things/a", raw=b'{"name": "x"} trailing'))
        self.assertEqual(answer.data["body"]["name"], "x")

    def test_bad_body_changes_nothing(self) -> None:
        result_of(self.client.post("/things/a", {"cores": -1}))
        self.assertEqual(self.handlers.calls, [])


class WireLimitTests(SynchronousTestCase):
    """The site's request class is the one place a body is limited: it refuses a body over
    the limit before buffering it, and passes one at the limit to the app whole."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.handlers = Handlers()
        resource = APIResource(
            self.handlers.routes(), None, Verifier(TEST_CREDENTIALS, self.clock)
        )
        self.transport = StringTransport()
        self.channel = api_site_for(resource, max_body=100).buildProtocol(None)
        self.channel.makeConnection(self.transport)

    def tearDown(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone()))

    def send_signed(self, body: bytes) -> None:
        signer = Signer(*next(iter(TEST_CREDENTIALS.items())))
        headers = signer.headers("POST", "http://x/api/v1/things/a", body, now=NOW)
        head = b"".join(name + b": " + value + b"\r\n" for name, value in headers.items())
        self.channel.dataReceived(
            b"POST /api/v1/things/a HTTP/1.1\r\n"
            + head
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )

    def test_declared_length_over_the_limit(self) -> None:
        self.channel.dataReceived(
            b"POST /api/v1/things/a HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
            + b"x" * 50
        )
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertIn(b"request body larger than 100 bytes", self.transport.value())
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.handlers.calls, [])

    def test_chunked_body_over_the_limit(self) -> None:
        self.channel.dataReceived(
            b"POST /api/v1/things/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"80\r\n"
            + b"x" * 128
            + b"\r\n"
        )
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertTrue(self.transport.disconnecting)

    def test_small_body_passes(self) -> None:
        self.channel.dataReceived(
            b"POST /api/v1/things/a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        )
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 200 "))
        self.assertIn(b"authorization required", self.transport.value())

    def test_signed_body_at_the_limit_reaches_the_route_whole(self) -> None:
        body = b'{"name": "' + b"x" * 88 + b'"}'
        self.assertEqual(len(body), 100)
        self.send_signed(body)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 200 "))
        self.assertEqual([call.body["name"] for call in self.handlers.calls], ["x" * 88])

    def test_signed_body_one_byte_over_the_limit_is_refused(self) -> None:
        self.send_signed(b'{"name": "' + b"x" * 89 + b'"}')
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertEqual(self.handlers.calls, [])


def documentation_resource(clock: Clock) -> APIResource[Any]:
    """The whole route table without operations: enough for every answer no handler but the
    documents' reaches (the documents take none)."""
    return APIResource(all_routes(), None, Verifier(TEST_CREDENTIALS, clock))


class DocumentsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.client = APIClient(documentation_resource(self.clock), self.clock)

    def test_version_document_is_open(self) -> None:
        answer = result_of(self.client.get("/", signed=False))
        self.assertEqual(
            answer.envelope(),
            {
                "error_code": 0,
                "message": "",
                "data": {"name": "nanocore", "version": __version__, "compatible": "1.4.0"},
            },
        )

    def test_prefix_without_slash_redirects(self) -> None:
        answer = result_of(self.client.treq.get("http://127.0.0.1/api/v1", allow_redirects=False))
        self.assertEqual(answer.code, 301)

    def test_openapi_is_open_raw_json(self) -> None:
        answer = result_of(self.client.get("/openapi.json", signed=False))
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.header(b"content-type"), b"application/json")
        document = json.loads(answer.body)
        self.assertEqual(document["openapi"], "3.1.0")
        self.assertNotIn("error_code", document)

    def test_a_signed_request_for_openapi_gets_the_same_bytes(self) -> None:
        unsigned = result_of(self.client.get("/openapi.json", signed=False))
        signed = result_of(self.client.get("/openapi.json"))
        self.assertEqual(signed.body, unsigned.body)


class SignatureThroughTheAppTests(AppTestsMixin, SynchronousTestCase):
    def test_refusal_names_the_check_and_logs_without_the_key(self) -> None:
        from twisted.internet.testing import EventLoggingObserver
        from twisted.logger import formatEvent, globalLogPublisher

        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        wrong = APIClient(self.resource, self.clock, {"tester": "not-the-right-key"})
        answer = result_of(wrong.post("/things/a", {"name": "x"}))
        self.assertEqual(answer.error, "signature corrupted")
        self.assertEqual(self.handlers.calls, [])
        texts = [formatEvent(event) for event in events]
        self.assertIn("refused POST /api/v1/things/a from 127.0.0.1: signature corrupted", texts)
        for key in (TEST_CREDENTIALS["tester"], "not-the-right-key"):
            logged = [t + repr(e) for t, e in zip(texts, events, strict=True)]
            self.assertFalse(any(key in text for text in logged))

    def test_a_flood_of_refusals_from_one_source_logs_one_line_and_the_count(self) -> None:
        from twisted.internet.testing import EventLoggingObserver
        from twisted.logger import formatEvent, globalLogPublisher

        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        wrong = APIClient(self.resource, self.clock, {"tester": "not-the-right-key"})
        for _ in range(1_000):
            self.assertEqual(result_of(wrong.get("/things/")).error, "signature corrupted")
        self.clock.advance(60)
        self.assertEqual(
            [formatEvent(event) for event in events],
            [
                "refused GET /api/v1/things/ from 127.0.0.1: signature corrupted",
                "999 more refused signatures from 127.0.0.1 in the last 60 s"
                " (one line per source every 60 s)",
            ],
        )

    def test_a_write_repeated_later_is_refused_and_changes_nothing(self) -> None:
        signer = Signer(*next(iter(TEST_CREDENTIALS.items())))
        url = "http://127.0.0.1:5850/api/v1/things/a"
        body = b'{"name": "x"}'
        headers = signer.headers("POST", url, body, now=self.clock.seconds())
        send = lambda: result_of(  # noqa: E731
            self.client._send("POST", url, body, headers)
        )
        self.assertEqual(send().data["body"]["name"], "x")
        self.assertEqual(send().data["body"]["name"], "x")  # the client's own repeat
        self.clock.advance(3)
        self.assertEqual(send().error, "replayed request: this signature was already used")
        self.assertEqual(len(self.handlers.calls), 2)

    def test_stale_date_is_refused(self) -> None:
        signer = Signer(*next(iter(TEST_CREDENTIALS.items())))
        url = "http://127.0.0.1:5850/api/v1/things/"
        headers = signer.headers("GET", url, now=self.clock.seconds() - 301)
        answer = result_of(self.client._send("GET", url, b"", headers))
        self.assertIn("expired request with date", answer.error)
