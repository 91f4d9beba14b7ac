"""A refusal behind TLS stays a refusal (``tls_server_factory``): over real loopback TLS, the
image site's connection cap closes a connection beyond it at once, says so in one log line,
and logs no traceback (``listenSSL`` kept such a connection open and logged one per event).
Slow clients and one source's many connections cannot hold the site's places."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource

from nanocore.clocks import STALL_GRACE
from nanocore.images.site import HANDSHAKE_TIMEOUT, IDLE_TIMEOUT, ImageSite
from nanocore.openfiles import RESERVED_FILES, Descriptors
from nanocore.pki import create_ca, issue_server_certificate, requesting_tls_options
from nanocore.tlsserver import tls_server_factory
from tests.loopbackapi import LOOPBACK, Collect, Response, connect_in_memory, exchange, reactor


class RefusalBehindTLSTests(TestCase):
    async def test_the_image_site_cap_closes_the_connection_beyond_it(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        ca = create_ca()
        options = requesting_tls_options(ca, issue_server_certificate(ca, LOOPBACK))
        site = ImageSite(cast(Any, Resource()), max_connections=1)
        port = reactor.listenTCP(0, tls_server_factory(options, site), interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        number = port.getHost().port

        endpoint = TCP4ClientEndpoint(reactor, LOOPBACK, number)
        held = await connectProtocol(endpoint, Collect(b""))  # the one place, never using it
        refused = await exchange(number, b"\x16\x03\x01")  # the start of a ClientHello
        self.assertEqual(refused, Response(0, {}, b""))
        self.assertIn(
            "refused an image site connection from 127.0.0.1: 1 connections are open, the most"
            " the image site serves at once, 1 of them from 127.0.0.1",
            [formatEvent(e) for e in events],
        )
        self.assertEqual([e for e in events if "log_failure" in e], [])

        held.transport.loseConnection()  # type: ignore[union-attr]
        await held.closed


class _NoUploads(Resource):
    """An image site's routes with no upload: a body is read whole, as the API's."""

    def begin(self, *request: object) -> None:
        return None


class SlowAndManyClientsTests(SynchronousTestCase):
    """The image site's connections as the API's (QA pass 20, F1): a request's headers in time
    from their first byte, and its places shared fairly among sources."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.site = ImageSite(cast(Any, _NoUploads()), reactor=self.clock, max_connections=2)
        self.port = 1024

    def connect(self, host: str) -> tuple[Any, StringTransport] | None:
        self.port += 1
        return connect_in_memory(self, self.site, host, self.port)

    def test_headers_trickling_are_timed_out_from_their_first_byte(self) -> None:
        connected = self.connect("192.0.2.7")
        assert connected is not None
        channel, transport = connected
        channel.dataReceived(b"GET /x HTTP/1.1\r\nX-Slow: ")
        for _ in range(IDLE_TIMEOUT - 1):
            self.clock.advance(1)
            channel.dataReceived(b"a")
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_a_source_holding_every_place_gives_its_oldest_to_another(self) -> None:
        flood = [self.connect("192.0.2.66") for _ in range(2)]
        self.assertIsNone(self.connect("192.0.2.66"))
        self.assertIsNotNone(self.connect("192.0.2.7"))
        self.assertEqual([c is not None and c[1].disconnected for c in flood], [True, False])
        self.assertIsNone(self.connect("192.0.2.7"))  # one each: no better than swapping

    def test_a_request_under_way_keeps_its_place_while_its_source_has_an_idle_one(self) -> None:
        busy, idle = self.connect("192.0.2.66"), self.connect("192.0.2.66")
        assert busy is not None and idle is not None
        busy[0].dataReceived(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nabc")
        self.assertIsNotNone(self.connect("192.0.2.7"))
        self.assertEqual((busy[1].disconnected, idle[1].disconnected), (False, True))

    def test_every_ports_connections_together_stay_within_the_open_file_limit(self) -> None:
        cells = [1]
        descriptors = Descriptors(RESERVED_FILES + 2)
        self.site = ImageSite(
            cast(Any, _NoUploads()), reactor=self.clock, max_connections=2, descriptors=descriptors
        )
        descriptors.count(lambda: cells[0])
        descriptors.count(lambda: len(self.site.places))
        self.assertIsNotNone(self.connect("192.0.2.7"))
        self.assertIsNone(self.connect("192.0.2.8"))
        cells[0] = 0
        self.assertIsNotNone(self.connect("192.0.2.8"))

    def test_a_connection_that_never_completes_tls_is_closed_after_the_handshake_timeout(
        self,
    ) -> None:
        """1,024 connections that never started TLS held every place for the whole idle
        timeout (300 s), and every Cell's image fetch was reset meanwhile (QA pass 20, F15)."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        silent, shook = self.tls("192.0.2.66"), self.tls("192.0.2.7")
        shook[0].handshakeCompleted()
        self.clock.advance(HANDSHAKE_TIMEOUT)
        self.assertEqual((silent[1].disconnected, shook[1].disconnected), (True, False))
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["closed an image site connection from 192.0.2.66: no TLS handshake within 10 s"],
        )

    def test_a_handshake_waiting_through_a_stall_of_core_is_read_first(self) -> None:
        """A 15 s stop of Core reset the image site's handshakes (QA pass 22)."""
        waiting, silent = self.tls("192.0.2.7"), self.tls("192.0.2.8")
        self.clock.advance(HANDSHAKE_TIMEOUT + 5)  # stopped: due at 10 s, run at 15 s
        self.assertEqual((waiting[1].disconnected, silent[1].disconnected), (False, False))
        waiting[0].handshakeCompleted()  # what waited in the socket
        self.clock.advance(STALL_GRACE)
        self.assertEqual((waiting[1].disconnected, silent[1].disconnected), (False, True))

    def tls(self, host: str) -> tuple[Any, StringTransport]:
        self.port += 1
        connected = connect_in_memory(self, self.site, host, self.port, tls=True)
        assert connected is not None
        return connected
