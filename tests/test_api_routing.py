"""The Klein dispatcher where werkzeug alone would answer differently from httprouter (§1.2)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyChannel
from werkzeug.exceptions import BadHost
from werkzeug.routing import Map

from nanocore.api import envelope
from nanocore.api.app import APIResource, api_site_for
from nanocore.api.auth import Verifier
from nanocore.api.client import Signer
from nanocore.api.request import LimitedRequest
from nanocore.api.route import Call, Route
from nanocore.api.routing import clean_path, fold_static, respell, werkzeug_rule
from nanocore.api.testing import TEST_CREDENTIALS, APIClient
from nanocore.operations.errors import InvalidRequest
from tests.test_api_app import NOW, AppTestsMixin, Handlers, result_of


def echo(ops: object, call: Call) -> Any:
    return dict(call.params)


class RuleTranslationTests(SynchronousTestCase):
    def test_parameters_and_catch_all(self) -> None:
        self.assertEqual(
            werkzeug_rule("/api/v1/pools/:pool/cells/:cell"),
            "/api/v1/pools/<pool>/cells/<cell>",
        )
        self.assertEqual(
            werkzeug_rule("/api/v1/search/*filepath"), "/api/v1/search/<rest:filepath>"
        )

    def test_clean_path_is_gos(self) -> None:
        self.assertEqual(clean_path("//a/./b/../c/"), "/a/c/")
        self.assertEqual(clean_path("/a//b"), "/a/b")
        self.assertEqual(clean_path("/.."), "/")

    def test_fold_and_respell_keep_parameters(self) -> None:
        template = "/api/v1/Pools/:pool/*rest"
        self.assertEqual(fold_static(template), "/api/v1/pools/:pool/*rest")
        self.assertEqual(respell(template, "/API/v1/POOLS/MyPool/X/y"), "/api/v1/Pools/MyPool/X/y")

    def test_every_route_is_a_rule_of_its_own_klein_app(self) -> None:
        clock = Clock()
        first = APIResource(Handlers().routes(), None, Verifier(TEST_CREDENTIALS, clock))
        second = APIResource(
            [Route("GET", "/other/", echo, "other", "t")], None, Verifier(TEST_CREDENTIALS, clock)
        )
        self.assertIsNot(first.app, second.app)
        rules = {
            (str(rule), *sorted(rule.methods or ())) for rule in first.app.url_map.iter_rules()
        }
        self.assertIn(("/api/v1/things/<id>", "DELETE"), rules)
        self.assertIn(("/api/v1/search/things/<rest:filepath>", "GET"), rules)
        self.assertEqual(len(rules), len(Handlers().routes()))
        self.assertEqual(
            [str(rule) for rule in second.app.url_map.iter_rules()], ["/api/v1/other/"]
        )

    def test_a_route_declared_twice_is_refused(self) -> None:
        route = Route("GET", "/twice/:id", echo, "twice", "t")
        with self.assertRaises(ValueError):
            APIResource([route, route], None, Verifier(TEST_CREDENTIALS, Clock()))


class HttprouterParityTests(AppTestsMixin, SynchronousTestCase):
    def test_head_is_not_routed_to_get(self) -> None:
        answer = result_of(self.client.request("HEAD", "/things/"))
        self.assertEqual(answer.status, 405)
        self.assertEqual(answer.header(b"allow"), b"GET, OPTIONS")

    def test_catch_all_matches_an_empty_rest(self) -> None:
        answer = result_of(self.client.get("/search/things/"))
        self.assertEqual(answer.data["params"], {"filepath": "/"})

    def test_catch_all_without_its_slash_redirects(self) -> None:
        answer = result_of(self.client.get("/search/things"))
        self.assertEqual(answer.status, 301)
        self.assertEqual(answer.header(b"location"), b"/api/v1/search/things/")

    def test_double_slash_inside_the_path_redirects_to_the_clean_path(self) -> None:
        answer = result_of(self.client.get("//things/?a=b"))
        self.assertEqual(answer.status, 301)
        self.assertEqual(answer.header(b"location"), b"/api/v1/things/?a=b")

    def test_leading_double_slash_redirects_to_the_clean_path(self) -> None:
        answer = self.successResultOf(
            self.client.treq.get("http://x//api/v1/things/", allow_redirects=False)
        )
        self.assertEqual(answer.code, 301)
        self.assertEqual(answer.headers.getRawHeaders(b"location"), [b"/api/v1/things/"])

    def test_leading_double_slash_with_a_missing_trailing_slash(self) -> None:
        answer = self.successResultOf(
            self.client.treq.get("http://x//api/v1/things", allow_redirects=False)
        )
        self.assertEqual(answer.code, 301)
        self.assertEqual(answer.headers.getRawHeaders(b"location"), [b"/api/v1/things/"])

    def test_leading_double_slash_with_an_extra_trailing_slash(self) -> None:
        answer = self.successResultOf(
            self.client.treq.put("http://x//api/v1/things/a/qos/cpu/", allow_redirects=False)
        )
        self.assertEqual(answer.code, 307)
        self.assertEqual(answer.headers.getRawHeaders(b"location"), [b"/api/v1/things/a/qos/cpu"])

    def test_case_fix_keeps_the_parameter_spelling(self) -> None:
        answer = result_of(self.client.put("/THINGS/AbC/Qos/CPU", {}))
        self.assertEqual(answer.status, 307)
        self.assertEqual(answer.header(b"location"), b"/api/v1/things/AbC/qos/cpu")

    def test_case_fix_with_the_trailing_slash_toggled(self) -> None:
        answer = result_of(self.client.delete("/Things/x%20y/"))
        self.assertEqual(answer.status, 307)
        self.assertEqual(answer.header(b"location"), b"/api/v1/things/x%20y")

    def test_post_trailing_slash_redirect_is_temporary_and_keeps_the_query(self) -> None:
        answer = result_of(self.client.post("/accepted?x=1", {}))
        self.assertEqual(answer.status, 307)
        self.assertEqual(answer.header(b"location"), b"/api/v1/accepted/?x=1")
        self.assertEqual(answer.body, b"")

    def test_percent_encoded_fixed_segment_is_matched_decoded(self) -> None:
        answer = result_of(self.client.get("/th%69ngs/"))
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.data[0]["name"], "a")

    def test_encoded_slash_splits_the_path_as_in_go(self) -> None:
        self.assertEqual(result_of(self.client.get("/things/a%2Fb")).status, 404)

    def test_parameters_are_decoded_once(self) -> None:
        answer = result_of(self.client.get("/things/a%2520b"))
        self.assertEqual(answer.data["params"], {"id": "a%20b"})

    def test_segment_that_is_not_utf8_is_refused(self) -> None:
        answer = result_of(self.client.get("/things/%ff"))
        self.assertEqual(answer.status, 400)
        self.assertEqual(len(self.flushLoggedErrors(UnicodeDecodeError)), 1)

    def test_options_on_an_unknown_path_is_404(self) -> None:
        answer = result_of(self.client.request("OPTIONS", "/nothing/"))
        self.assertEqual(answer.status, 404)

    def test_method_without_any_route_is_not_redirected(self) -> None:
        answer = result_of(self.client.request("PATCH", "/things/a/"))
        self.assertEqual(answer.status, 404)


class RedirectBefore405Tests(SynchronousTestCase):
    """httprouter tries the redirect for the request's own method before answering 405."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        routes = [
            Route("GET", "/x", echo, "x", "t"),
            Route("POST", "/x/", echo, "x", "t"),
        ]
        self.client = APIClient(
            APIResource(routes, None, Verifier(TEST_CREDENTIALS, self.clock)), self.clock
        )

    def test_redirect_wins_over_405(self) -> None:
        answer = result_of(self.client.get("/x/"))
        self.assertEqual(answer.status, 301)
        self.assertEqual(answer.header(b"location"), b"/api/v1/x")

    def test_405_when_no_redirect_fits(self) -> None:
        answer = result_of(self.client.put("/x/", {}))
        self.assertEqual(answer.status, 405)
        self.assertEqual(answer.header(b"allow"), b"OPTIONS, POST")


class WireTests(SynchronousTestCase):
    """Through a real ``Site`` and channel: framing and a client that goes away."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.handlers = Handlers()
        resource = APIResource(
            self.handlers.routes(), None, Verifier(TEST_CREDENTIALS, self.clock)
        )
        self.transport = StringTransport()
        self.channel = Site(resource).buildProtocol(None)
        self.channel.makeConnection(self.transport)
        self.signer = Signer(*next(iter(TEST_CREDENTIALS.items())))

    def tearDown(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone()))

    def send(self, method: str, path: str) -> None:
        headers = self.signer.headers(method, "http://x" + path, now=self.clock.seconds())
        lines = [f"{method} {path} HTTP/1.1".encode()]
        lines += [name + b": " + value for name, value in headers.items()]
        self.channel.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n")

    def test_answers_declare_their_length_instead_of_chunking(self) -> None:
        for path in ("/api/v1/things/", "/api/v1/things", "/api/v1/nothing"):
            self.transport.clear()
            self.send("GET", path)
            head, _, body = self.transport.value().partition(b"\r\n\r\n")
            self.assertIn(b"\r\nContent-Length: %d" % len(body), head)
            self.assertNotIn(b"chunked", head)

    def leave_before_the_answer(self) -> Deferred[Any]:
        """Send a request whose handler waits, and drop the connection; the handler's
        Deferred is returned for the test to fire."""
        self.send("GET", "/api/v1/later/")
        pending = self.handlers.pending
        assert pending is not None
        self.channel.connectionLost(Failure(ConnectionDone()))
        return pending

    def test_client_gone_before_an_asynchronous_answer(self) -> None:
        pending = self.leave_before_the_answer()
        outcome: list[Any] = []
        pending.addBoth(outcome.append)
        pending.callback(["done"])
        # The operation was not cancelled with the request, and nothing was written or logged.
        self.assertEqual(len(outcome), 1)
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_unexpected_failure_after_the_client_left_is_logged_once(self) -> None:
        self.leave_before_the_answer().errback(RuntimeError("commit failed"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.transport.value(), b"")

    def test_refusal_after_the_client_left_is_not_logged(self) -> None:
        self.leave_before_the_answer().errback(InvalidRequest("cell timeout"))
        self.assertEqual(self.flushLoggedErrors(), [])


class RouteForTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.routes = Handlers().routes()
        self.resource = APIResource(self.routes, None, Verifier(TEST_CREDENTIALS, Clock()))

    def test_every_route_is_found_by_a_concrete_path(self) -> None:
        for route in self.routes:
            concrete = route.full_path.replace(":", "X").replace("*", "/X")
            self.assertIs(self.resource.route_for(route.method, concrete), route)

    def test_misses_and_redirects_find_nothing(self) -> None:
        self.assertIsNone(self.resource.route_for("GET", "/api/v1/things"))
        self.assertIsNone(self.resource.route_for("PATCH", "/api/v1/things/a"))
        self.assertIsNone(self.resource.route_for("GET", "/nothing"))


class FormBodyTests(SynchronousTestCase):
    """Bodies are JSON whatever the Content-Type says; Twisted never parses them as forms."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.handlers = Handlers()
        resource = APIResource(
            self.handlers.routes(), None, Verifier(TEST_CREDENTIALS, self.clock)
        )
        self.transport = StringTransport()
        self.channel = api_site_for(resource).buildProtocol(None)
        self.channel.makeConnection(self.transport)

    def tearDown(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone()))

    def test_json_body_labelled_multipart_reaches_the_api(self) -> None:
        # Twisted's form parsing would answer 400 and drop the connection here.
        body = b'{"name": "x"}'
        self.channel.dataReceived(
            b"POST /api/v1/things/a HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 200 "))
        self.assertIn(b"authorization required", self.transport.value())
        self.assertFalse(self.transport.disconnecting)


class EnvelopeConstantTests(SynchronousTestCase):
    def test_empty_success_is_the_encoded_document(self) -> None:
        self.assertEqual(
            envelope.success(""), b'{\n  "error_code": 0,\n  "message": "",\n  "data": ""\n}\n'
        )
        self.assertEqual(envelope.success(), envelope.success(""))


class MethodCaseAndEncodingTests(AppTestsMixin, SynchronousTestCase):
    def test_bytes_that_are_not_utf8_are_refused_quietly_on_the_wire(self) -> None:
        """In a path as Klein says; in a Host as Go's server says (it takes ASCII only)."""
        for request, said in (
            (b"GET /api/v1/things/%ff HTTP/1.1\r\nHost: x\r\n\r\n", b"Non-UTF-8 encoding in URL."),
            (b"GET /api/v1/things/ HTTP/1.1\r\nHost: \xff\r\n\r\n",
             b"400 Bad Request: malformed Host header"),
        ):  # fmt: skip
            transport = StringTransport()
            channel = api_site_for(self.resource).buildProtocol(None)
            channel.makeConnection(transport)
            channel.dataReceived(request)
            channel.connectionLost(Failure(ConnectionDone()))
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), transport.value())
            self.assertTrue(transport.value().endswith(b"\r\n\r\n" + said), transport.value())
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_a_host_go_would_refuse_is_refused_in_gos_words(self) -> None:
        """Spaces, control characters and ``<`` in a Host were served (QA pass 21)."""
        for host in (b"a b", b"a\x01b", b"a<b>", b"r\xc3\xa9seau"):
            transport = StringTransport()
            channel = api_site_for(self.resource).buildProtocol(None)
            channel.makeConnection(transport)
            channel.dataReceived(b"GET /api/v1/things/ HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            channel.connectionLost(Failure(ConnectionDone()))
            answer = transport.value()
            self.assertTrue(
                answer.startswith(b"HTTP/1.1 400 Bad Request: malformed Host header\r\n"), answer
            )
            self.assertTrue(answer.endswith(b"\r\n\r\n400 Bad Request: malformed Host header"))

    @given(st.binary(max_size=24).filter(lambda raw: b"\r" not in raw and b"\n" not in raw))
    def test_a_host_header_is_utf8_exactly_when_its_host_is(self, raw: bytes) -> None:
        """The request checks the Host header whole; Klein decodes the host Twisted parses
        out of it: one is refused exactly when the other would fail."""

        def decodes(data: bytes) -> bool:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                return False
            return True

        request = LimitedRequest(DummyChannel())
        request.requestHeaders.setRawHeaders(b"host", [raw])
        self.assertEqual(decodes(raw), decodes(request.getRequestHostname()))

    def test_a_host_no_route_can_be_bound_to_is_refused_plainly(self) -> None:
        """werkzeug will not bind a map to a name IDNA refuses, and Klein let its error
        out as a 500 with a logged traceback; such a request is now refused on the wire."""
        for host in (b"a..b", b".", b"x" * 64, b"a..b:5850"):
            for path in (b"/api/v1/things/", b"/api/v1/nothing"):
                transport = StringTransport()
                channel = api_site_for(self.resource).buildProtocol(None)
                channel.makeConnection(transport)
                channel.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
                channel.connectionLost(Failure(ConnectionDone()))
                answer = transport.value()
                self.assertTrue(answer.startswith(b"HTTP/1.1 400 Bad Request"), answer)
                self.assertTrue(
                    answer.endswith(b"\r\n\r\n400 Bad Request: malformed Host header"), answer
                )
        self.assertEqual(self.flushLoggedErrors(), [])

    @given(st.text(alphabet="ab.-:[]1\u00e9", max_size=70))
    def test_a_host_is_refused_exactly_when_klein_could_not_bind_to_it(self, host: str) -> None:
        request = LimitedRequest(DummyChannel())
        request.requestHeaders.setRawHeaders(b"host", [host.encode("utf-8")])
        try:
            Map().bind(request.getRequestHostname().decode("utf-8"))
        except BadHost:
            bindable = False
        else:
            bindable = True
        go_takes = host.isascii()  # of this alphabet, Go's server refuses only the é
        self.assertEqual(request._names_a_host(host.encode("utf-8")), bindable and go_takes)

    def test_lower_case_method_is_not_the_upper_case_one(self) -> None:
        for request, status in (
            (b"get /api/v1/things/a HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
            (b"get /api/v1/nothing HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
        ):
            transport = StringTransport()
            channel = api_site_for(self.resource).buildProtocol(None)
            channel.makeConnection(transport)
            channel.dataReceived(request)
            channel.connectionLost(Failure(ConnectionDone()))
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 " + status), request)
            if status == b"405":
                self.assertIn(b"\r\nAllow: DELETE, GET, OPTIONS, POST, PUT\r\n", transport.value())
        self.assertEqual(self.handlers.calls, [])

    def test_a_result_that_cannot_be_encoded_is_an_internal_error(self) -> None:
        resource = APIResource(
            [Route("GET", "/odd/", lambda ops, call: object(), "odd", "t")],
            None,
            Verifier(TEST_CREDENTIALS, self.clock),
        )
        answer = result_of(APIClient(resource, self.clock).get("/odd/"))
        self.assertEqual(answer.error, "internal error")
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
