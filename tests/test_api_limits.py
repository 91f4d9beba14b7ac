"""The API's wire limits through a real socket (issue #14 point 3): an oversized request line
gets 414 and oversized headers 431, in the envelope, instead of a silent close; a body over the
limit gets 413 that the client reads even while it is still sending; connections beyond the cap
are closed as they arrive, with a log line, and the API answers a new client once others leave.
Idle clients that time out cost one log line per source per minute.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from nanocore.api.app import api_site_for
from nanocore.api.request import DEFAULT_MAX_BODY, LimitedChannel, LimitedRequest, LimitedSite
from nanocore.clocks import STALL_GRACE
from nanocore.httpparts import RequestInTime
from nanocore.openfiles import RESERVED_FILES, Descriptors
from tests.loopbackapi import (
    LOOPBACK,
    Collect,
    LoopbackAPI,
    Response,
    connect_in_memory,
    exchange,
    reactor,
)

VERSION = b"GET /api/v1/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def refusal(answer: Response) -> tuple[int, str]:
    return answer.status, answer.envelope()["message"]


class OversizedRequestTests(TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.api = await LoopbackAPI.start(self)

    async def test_a_100_kb_request_line_gets_414(self) -> None:
        request = b"GET /api/v1/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        answer = await exchange(self.api.number, request)
        self.assertEqual(refusal(answer), (414, "request line longer than 16384 bytes"))
        self.assertEqual(answer.headers[b"content-type"], b"text/plain; charset=utf-8")

    async def test_a_1_mb_header_gets_431(self) -> None:
        request = b"GET /api/v1/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (1 << 20) + b"\r\n\r\n"
        answer = await exchange(self.api.number, request)
        self.assertEqual(refusal(answer), (431, "request header line longer than 16384 bytes"))

    async def test_headers_over_16_kb_in_all_get_431(self) -> None:
        headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 90) for i in range(200))
        answer = await exchange(
            self.api.number, b"GET /api/v1/ HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
        )
        self.assertEqual(refusal(answer), (431, "request headers longer than 16384 bytes"))

    async def test_more_than_500_headers_get_431(self) -> None:
        headers = b"".join(b"X%d: v\r\n" % i for i in range(501))
        answer = await exchange(
            self.api.number, b"GET /api/v1/ HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
        )
        self.assertEqual(refusal(answer), (431, "more than 500 request headers"))

    async def test_a_malformed_header_keeps_twisteds_bare_400(self) -> None:
        """Only the header limits are told apart from Twisted's other bad requests."""
        answer = await exchange(
            self.api.number, b"GET /api/v1/ HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n"
        )
        self.assertEqual((answer.status, answer.body), (400, b""))

    async def test_a_client_still_sending_a_large_body_reads_the_413(self) -> None:
        body = b"x" * (4 * DEFAULT_MAX_BODY)
        answer = await self.api.send("POST", "/compute_pools/p1", body)
        self.assertEqual(refusal(answer), (413, "request body larger than 1048576 bytes"))
        pools = await self.api.call("GET", "/compute_pools/")
        self.assertEqual([p["name"] for p in pools["data"]], ["default"])

    async def test_a_request_within_the_limits_is_served(self) -> None:
        headers = b"".join(b"X%d: v\r\n" % i for i in range(400))
        answer = await exchange(
            self.api.number, b"GET /api/v1/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + headers + b"\r\n"
        )  # fmt: skip
        self.assertEqual(answer.status, 200)

    async def test_answers_name_no_server(self) -> None:
        """Go's server sent no ``Server`` header; Twisted's names its version to anyone."""
        answers = [
            await exchange(self.api.number, VERSION),
            await self.api.send("GET", "/compute_pools/"),
            await self.api.send("GET", "/no_such_route/"),
            await self.api.send("POST", "/compute_pools/p1", b"x" * (2 * DEFAULT_MAX_BODY)),
        ]
        self.assertEqual([a.status for a in answers], [200, 200, 404, 413])
        self.assertEqual([b"server" in a.headers for a in answers], [False] * 4)
        self.assertIn(b"date", answers[0].headers)  # Twisted's other headers stay


class ConnectionCapTests(TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.api = await LoopbackAPI.start(self, max_connections=3)

    async def hold(self) -> Collect:
        """A connection that says nothing until told to."""
        endpoint = TCP4ClientEndpoint(reactor, LOOPBACK, self.api.number)
        return await connectProtocol(endpoint, Collect(b""))

    async def test_the_cap_holds_and_a_new_client_is_served_once_another_leaves(self) -> None:
        held = [await self.hold() for _ in range(3)]
        refused = await exchange(self.api.number, VERSION)
        self.assertEqual(refused, Response(0, {}, b""))  # closed as it arrived, unread
        texts = [formatEvent(e) for e in self.events]
        self.assertIn(
            "refused an API connection from 127.0.0.1: 3 connections are open, the most the"
            " API serves at once, 3 of them from 127.0.0.1",
            texts,
        )
        self.assertEqual(self.api.site.open_connections, 3)  # type: ignore[attr-defined]

        # One of them asks and leaves: the next client is served.
        held[0].transport.write(VERSION)  # type: ignore[union-attr]
        self.assertEqual(Response.parse(await held[0].closed).status, 200)
        served = await exchange(self.api.number, VERSION)
        self.assertEqual(served.envelope()["data"]["name"], "nanocore")

        for connection in held[1:]:
            connection.transport.loseConnection()  # type: ignore[union-attr]
            await connection.closed


class IdleTimeoutLogTests(SynchronousTestCase):
    """Idle clients timing out: one line per source per minute, and the count."""

    def test_a_thousand_idle_clients_of_one_source_give_two_lines(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        clock = Clock()
        site = LimitedSite(Resource(), reactor=clock, max_connections=20_000)
        channels: list[Any] = []
        for port in range(1_000):
            address = IPv4Address("TCP", "192.0.2.7", 1024 + port)
            channel = site.buildProtocol(address)
            assert isinstance(channel, LimitedChannel)
            channel.makeConnection(StringTransport(peerAddress=address))
            channels.append(channel)
        clock.advance(site.timeOut)  # every one of them idle for the whole timeout
        clock.advance(60)
        lines = [
            formatEvent(e) for e in events if e.get("log_namespace") == "nanocore.api.request"
        ]
        self.assertEqual(
            lines,
            [
                "timing out idle API client 192.0.2.7 (after 60 s)",
                "999 more idle API clients timed out from 192.0.2.7 in the last 60 s"
                " (one line per source every 60 s)",
            ],
        )
        self.assertTrue(all(c.transport.disconnecting for c in channels))
        self.assertFalse(any("Timing out client" in formatEvent(e) for e in events))


class AddressTests(SynchronousTestCase):
    """A connection's addresses are asked of its transport once, not once per request."""

    def test_every_request_of_a_connection_has_its_addresses(self) -> None:
        class Addresses(Resource):
            isLeaf = True
            seen: list[tuple[object, object]] = []

            def render_GET(self, request: Any) -> bytes:
                self.seen.append((request.getHost(), request.getClientAddress()))
                return b"ok"

        asked: list[str] = []
        local = IPv4Address("TCP", "127.0.0.1", 5850)
        remote = IPv4Address("TCP", "127.0.0.1", 40000)
        transport = StringTransport(hostAddress=local, peerAddress=remote)
        for name, address in (("getHost", local), ("getPeer", remote)):
            setattr(
                transport, name, lambda name=name, address=address: asked.append(name) or address
            )
        resource = Addresses()
        channel = LimitedSite(resource, reactor=Clock()).buildProtocol(remote)
        assert channel is not None
        channel.makeConnection(transport)
        for _ in range(3):
            channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(resource.seen, [(local, remote)] * 3)
        self.assertEqual(sorted(asked), ["getHost", "getPeer"])


class StreamingSiteTests(TestCase):
    """Core's API site has upload routes (its channel streams them): the limits still hold."""

    async def test_an_oversized_line_gets_414(self) -> None:
        site = api_site_for(Resource(), upload_routes=lambda: None)
        port = reactor.listenTCP(0, site, interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        request = b"GET /api/v1/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        answer = await exchange(port.getHost().port, request)
        self.assertEqual(refusal(answer), (414, "request line longer than 16384 bytes"))

    def test_its_connections_are_counted_until_they_are_gone(self) -> None:
        site = api_site_for(Resource(), max_connections=1, upload_routes=lambda: None)
        address = IPv4Address("TCP", "192.0.2.7", 1024)
        channel = site.buildProtocol(address)
        assert channel is not None
        channel.makeConnection(StringTransport(peerAddress=address))
        self.assertIsNone(site.buildProtocol(address))
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(site.buildProtocol(address))


class _Echo(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"ok"

    def render_POST(self, request: Any) -> bytes:
        return b"got " + request.content.read()


class _Streamed(LimitedRequest):
    """A request whose body streams to storage, as ``StreamingMixin`` marks an upload."""

    def gotLength(self, length: int | None) -> None:
        self.transfer = "an upload"
        super().gotLength(length)


class _ClientInMemory(SynchronousTestCase):
    """One client of a site on a ``Clock``, over an in-memory transport."""

    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.clock = Clock()
        self.site = LimitedSite(_Echo(), reactor=self.clock, max_connections=4)

    def connect(self) -> tuple[Any, StringTransport]:
        connected = connect_in_memory(self, self.site, "192.0.2.7", 1024)
        assert connected is not None
        return connected


class SlowClientTests(_ClientInMemory):
    """A client trickling a request: Twisted restarted the idle timeout for every byte, so one
    header byte a second held a connection for hours, and 4,096 of them from one address held
    every place of the API (QA pass 20, F1)."""

    def test_headers_trickling_a_byte_a_second_get_408_within_the_timeout(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        for _ in range(int(self.site.timeOut) - 1):
            self.clock.advance(1)
            channel.dataReceived(b"a")
        self.assertEqual(transport.value(), b"")
        self.clock.advance(1)
        answer = Response.parse(transport.value())
        self.assertEqual(
            refusal(answer), (408, f"request headers not received within {self.site.timeOut:g} s")
        )
        self.assertTrue(transport.disconnecting)
        lines = [formatEvent(e) for e in self.events if "timing out" in formatEvent(e)]
        self.assertEqual(
            lines,
            ["timing out API client 192.0.2.7: request headers not received within 60 s"],
        )

    def test_an_idle_connection_still_has_the_whole_timeout_for_each_request(self) -> None:
        channel, transport = self.connect()
        for _ in range(3):
            self.clock.advance(self.site.timeOut - 1)
            channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n")
            self.clock.advance(0.5)
            channel.dataReceived(b"\r\n")
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 3)
        self.assertFalse(transport.disconnecting)

    def test_a_body_read_whole_has_the_timeout_from_the_end_of_the_headers(self) -> None:
        """A body trickling a byte every 30 s held its connection for as long as it trickled
        (QA pass 21, N2); one in time is served."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n")
        self.clock.advance(30)
        channel.dataReceived(b"a")
        self.clock.advance(29)
        channel.dataReceived(b"b")
        self.assertIn(b"got ab", transport.value())
        transport.clear()
        channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
        for _ in range(2):
            self.clock.advance(30)
            channel.dataReceived(b"a")
        answer = Response.parse(transport.value())
        self.assertEqual(refusal(answer), (408, "request body not received within 60 s"))

    def test_an_upload_keeps_its_pace_chunk_by_chunk(self) -> None:
        """A body streamed to storage (an image upload) restarts the timeout with each chunk:
        its pace is its own."""

        self.site.requestFactory = _Streamed
        channel, transport = self.connect()
        channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
        for byte in b"abc":
            self.clock.advance(self.site.timeOut - 1)
            channel.dataReceived(bytes([byte]))
        self.assertIn(b"got abc", transport.value())
        self.assertFalse(transport.disconnecting)


class _Transfer:
    """What an upload's transfer is told when it ends early."""

    def __init__(self) -> None:
        self.aborted: list[str] = []

    def abort(self, why: str) -> None:
        self.aborted.append(why)


class StalledUploadTests(SynchronousTestCase):
    def test_on_any_site_an_upload_that_stops_sending_ends_saying_why(self) -> None:
        """The image site (Twisted's close at the timeout) as the API (408): the upload's
        end said "the client went away", which it had not (QA pass 24)."""
        transfer = _Transfer()

        class Streamed(Request):
            def gotLength(self, length: int | None) -> None:
                self.transfer = transfer
                super().gotLength(length)

        site = Site(_Echo(), reactor=Clock())
        site.protocol, site.requestFactory = RequestInTime, Streamed
        connected = connect_in_memory(self, site, "192.0.2.7", 1024)
        assert connected is not None
        channel, transport = connected
        channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\na")
        site.reactor.advance(channel.timeOut)
        self.assertEqual(transfer.aborted, ["nothing received for 60 s"])
        self.assertTrue(transport.disconnecting)


class CoresOwnStallTests(_ClientInMemory):
    """A timeout that fires late because Core itself did not run (a 60 s stop: the reactor
    runs due timers before it reads) looks at what the client sent meanwhile first: an
    upload sending steadily was cut, and a request whose headers had all arrived got 408
    (QA pass 22, A2)."""

    def test_headers_that_arrived_during_the_stall_are_served(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n")
        self.clock.advance(self.site.timeOut + 5)  # stopped: due at 60 s, run at 65 s
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(b"\r\n")  # what waited in the socket
        self.clock.advance(STALL_GRACE)
        self.assertIn(b"HTTP/1.1 200 OK", transport.value())
        self.assertFalse(transport.disconnecting)

    def test_an_upload_that_went_on_during_the_stall_goes_on(self) -> None:
        self.site.requestFactory = _Streamed
        channel, transport = self.connect()
        channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n")
        self.clock.advance(self.site.timeOut + 5)
        channel.dataReceived(b"a")  # read after the stall: its time starts again
        self.clock.advance(STALL_GRACE)
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(b"b")
        self.assertIn(b"got ab", transport.value())

    def test_a_body_that_arrived_during_the_stall_is_served(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n")
        self.clock.advance(self.site.timeOut + 5)
        channel.dataReceived(b"ab")
        self.assertIn(b"got ab", transport.value())
        self.clock.advance(STALL_GRACE)
        self.assertFalse(transport.disconnecting)

    def test_a_client_silent_through_the_stall_times_out_at_the_second_look(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n")
        self.clock.advance(self.site.timeOut + 5)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(STALL_GRACE)
        answer = Response.parse(transport.value())
        self.assertEqual(refusal(answer), (408, "request headers not received within 60 s"))


class FairConnectionsTests(SynchronousTestCase):
    """Once every place is taken, one source cannot keep the others out."""

    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.site = LimitedSite(_Echo(), reactor=Clock(), max_connections=4)
        self.port = 1024

    def connect(self, host: str) -> tuple[Any, StringTransport] | None:
        self.port += 1
        return connect_in_memory(self, self.site, host, self.port)

    def test_a_newcomer_takes_the_oldest_place_of_the_source_holding_the_most(self) -> None:
        flood = [self.connect("192.0.2.66") for _ in range(4)]
        self.assertIsNone(self.connect("192.0.2.66"))  # it holds the most: refused
        served = self.connect("192.0.2.7")
        self.assertIsNotNone(served)
        aborted = [c is not None and c[1].disconnected for c in flood]
        self.assertEqual(aborted, [True, False, False, False])
        self.assertEqual(self.site.open_connections, 4)
        assert served is not None
        served[0].dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertIn(b"200 OK", served[1].value())
        # Two sources holding two places each: a third source still gets one.
        self.assertIsNotNone(self.connect("192.0.2.7"))
        self.assertIsNotNone(self.connect("192.0.2.8"))
        self.assertIsNone(self.connect("192.0.2.7"))  # 2 against 2: no better than swapping
        lines = [formatEvent(e) for e in self.events if "API connection" in formatEvent(e)]
        self.assertEqual(
            lines[:2],
            [
                "refused an API connection from 192.0.2.66: 4 connections are open, the most"
                " the API serves at once, 4 of them from 192.0.2.66",
                "closed an API connection of 192.0.2.66 for one from 192.0.2.7: 4"
                " connections are open, the most the API serves at once, and 192.0.2.66"
                " holds the most",
            ],
        )

    def test_every_ports_connections_together_stay_within_the_open_file_limit(self) -> None:
        """Linked Cells hold descriptors too: with 60 linked and a limit of 256, idle
        connections to the three ports took the last one (QA pass 22, D1)."""
        cells = [3]
        self.site.descriptors = descriptors = Descriptors(RESERVED_FILES + 4)
        descriptors.count(lambda: cells[0])
        descriptors.count(lambda: self.site.open_connections)
        self.assertIsNotNone(self.connect("192.0.2.7"))
        self.assertIsNone(self.connect("192.0.2.8"))  # 3 Cells + 1: none left
        self.assertIn(
            "refused an API connection from 192.0.2.8: 4 connections are open on all ports,"
            " as many as the open-file limit leaves for them (4)",
            [formatEvent(e) for e in self.events],
        )
        cells[0] = 2  # a Cell left
        self.assertIsNotNone(self.connect("192.0.2.8"))

    def test_at_the_open_file_limit_a_newcomer_still_takes_the_largest_sources_place(
        self,
    ) -> None:
        """Refused before its fair share was looked at, a newcomer could not take a place
        from the source holding every one: one source re-opening idle connections locked
        every client out while the limit was reached (QA pass 23, D1r)."""
        self.site.descriptors = descriptors = Descriptors(RESERVED_FILES + 3)
        descriptors.count(lambda: self.site.open_connections)
        flood = [self.connect("192.0.2.66") for _ in range(3)]  # the limit, not the places
        served = self.connect("192.0.2.7")
        self.assertIsNotNone(served)
        self.assertEqual(
            [c is not None and c[1].disconnected for c in flood], [True, False, False]
        )
        self.assertIsNone(self.connect("192.0.2.66"))  # it holds the most: no place of another
        self.assertIn(
            "refused an API connection from 192.0.2.66: 3 connections are open on all ports,"
            " as many as the open-file limit leaves for them (3)",
            [formatEvent(e) for e in self.events],
        )

    def test_a_request_under_way_keeps_its_place_while_its_source_has_an_idle_one(self) -> None:
        """The source holding the most gives up its oldest idle connection: a client's
        request whose body is arriving (an upload from the portal's host) is not cut."""
        uploading = self.connect("192.0.2.66")
        assert uploading is not None
        uploading[0].dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nabc")
        trickling = self.connect("192.0.2.66")
        assert trickling is not None
        trickling[0].dataReceived(b"GET /x HTTP/1.1\r\nHo")  # headers not in yet: idle
        rest = [self.connect("192.0.2.66") for _ in range(2)]
        self.assertIsNotNone(self.connect("192.0.2.7"))
        self.assertFalse(uploading[1].disconnected)
        self.assertTrue(trickling[1].disconnected)
        self.assertIsNotNone(self.connect("192.0.2.8"))
        self.assertEqual([c is not None and c[1].disconnected for c in rest], [True, False])
        uploading[0].dataReceived(b"defghi")
        self.assertIn(b"200 OK", uploading[1].value())


class HostHeaderTests(SynchronousTestCase):
    """RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host (Go answers 400 otherwise; QA
    pass 20 found both served)."""

    def answer(self, request: bytes) -> bytes:
        """The answer to ``request``; a refusal closes the connection, as Go's does."""
        connected = connect_in_memory(self, api_site_for(_Echo()), "192.0.2.7", 1024)
        assert connected is not None
        channel, transport = connected
        channel.dataReceived(request)
        answer = transport.value()
        if answer.startswith(b"HTTP/1.1 400"):
            self.assertTrue(transport.disconnecting, answer)
        return answer

    def test_none_or_two_are_refused_and_http_1_0_needs_none(self) -> None:
        missing = self.answer(b"GET /x HTTP/1.1\r\n\r\n")
        # Go's words, in the status line and the body.
        said = b"400 Bad Request: missing required Host header"
        self.assertTrue(missing.startswith(b"HTTP/1.1 " + said + b"\r\n"), missing)
        self.assertTrue(missing.endswith(b"\r\n\r\n" + said), missing)
        two = self.answer(b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        self.assertTrue(two.endswith(b"\r\n\r\n400 Bad Request: too many Host headers"), two)
        self.assertTrue(self.answer(b"GET /x HTTP/1.0\r\n\r\n").endswith(b"ok"))
        self.assertTrue(self.answer(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").endswith(b"ok"))


class RefusedBeforeTheBodyTests(TestCase):
    """A signed route's checks that need no body (the header, the credential, the date, the
    scope) refuse a request as soon as its headers are in, and close it: nobody without a
    credential can make Core read and hold a body. The answer is the one the whole request
    gets; what needs the body (the signature itself) is still checked once it is in."""

    async def setUp(self) -> None:  # type: ignore[override]
        self.api = await LoopbackAPI.start(self)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.port = 2000

    def headers_of(self, method: str, path: str, body: bytes, signer: Any = None) -> bytes:
        """The request's line and headers (no ``Connection: close``), without its body."""
        signer = self.api.signer if signer is None else signer
        url = f"http://{self.api.host}/api/v1{path}"
        signed = signer.headers(method, url, body, now=self.api.clock.seconds())
        whole = self.api.request(method, path, body, signed)
        return whole[: whole.index(b"\r\n\r\n") + 4].replace(b"Connection: close\r\n", b"")

    def sent(self, head: bytes, body: bytes = b"") -> tuple[bytes, StringTransport]:
        self.port += 1
        connected = connect_in_memory(self, self.api.site, "192.0.2.9", self.port)
        assert connected is not None
        channel, transport = connected
        channel.dataReceived(head)
        if body:
            channel.dataReceived(body)
        return transport.value(), transport

    def late(self, head: bytes, body: bytes) -> bytes:
        """The answer with the early check off: what the whole request gets."""
        site: Any = self.api.site
        check, site.before_body = site.before_body, None
        try:
            return Response.parse(self.sent(head, body)[0]).body
        finally:
            site.before_body = check

    def test_an_unknown_credential_is_answered_before_any_body_byte(self) -> None:
        body = b'{"name": "a1", "gateway": "10.0.0.1"}'
        stranger = type(self.api.signer)("nobody", "secret")
        head = self.headers_of("POST", "/address_pools/a1", body, stranger)
        answer, transport = self.sent(head)
        parsed = Response.parse(answer)
        self.assertEqual(refusal(parsed), (200, "invalid API ID: nobody"))
        self.assertEqual(parsed.body, self.late(head, body))
        self.assertEqual(parsed.headers[b"connection"], b"close")
        self.assertTrue(transport.disconnecting)
        self.assertIn(
            "refused POST /api/v1/address_pools/a1 from 192.0.2.9: invalid API ID: nobody",
            [formatEvent(e) for e in self.events],
        )

    def test_a_stale_date_is_answered_before_the_body(self) -> None:
        body = b'{"name": "a1"}'
        self.api.clock.advance(-600)
        head = self.headers_of("PUT", "/address_pools/a1", body)
        self.api.clock.advance(600)
        answer, _ = self.sent(head)
        expected = "expired request with date "
        self.assertTrue(refusal(Response.parse(answer))[1].startswith(expected), answer)
        self.assertEqual(Response.parse(answer).body, self.late(head, body))

    def test_a_wrong_signature_waits_for_the_body_it_covers(self) -> None:
        head = self.headers_of("POST", "/address_pools/a1", b'{"gateway": "10.0.0.1"}')
        answer, transport = self.sent(head)
        self.assertEqual(answer, b"")  # the headers are fine: the body is awaited
        other = b'{"gateway": "10.0.0.2"}'  # as long as the signed one: another body
        answer, transport = self.sent(head, other)
        self.assertEqual(refusal(Response.parse(answer)), (200, "signature corrupted"))
        self.assertFalse(transport.disconnecting)  # an ordinary answer: the connection stays

    def test_what_is_refused_before_the_route_is_answered_as_before(self) -> None:
        """A miss, a route nobody signs, or a request the wire refuses: the same answer as
        ever, once the body is in."""
        stranger = type(self.api.signer)("nobody", "secret")
        for head in (
            self.headers_of("POST", "/no_such_route/", b"{}", stranger),
            self.headers_of("POST", "/address_pools/a1", b"{}", stranger).replace(
                b"Host: ", b"X-Host: "
            ),
        ):
            answer, _ = self.sent(head)
            self.assertEqual(answer, b"", head)
            answer, _ = self.sent(head, b"{}")
            self.assertEqual(Response.parse(answer).body, self.late(head, b"{}"))
