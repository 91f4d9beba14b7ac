"""A refusal behind TLS stays a refusal (``tls_server_factory``): over real loopback TLS, the
image site's connection cap closes a connection beyond it at once, says so in one log line,
and logs no traceback (``listenSSL`` kept such a connection open and logged one per event)."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from nanocore.images.site import ImageSite
from nanocore.pki import create_ca, issue_server_certificate, requesting_tls_options
from nanocore.tlsserver import tls_server_factory
from tests.loopbackapi import LOOPBACK, Collect, Response, exchange, reactor


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
            " the image site serves at once",
            [formatEvent(e) for e in events],
        )
        self.assertEqual([e for e in events if "log_failure" in e], [])

        held.transport.loseConnection()  # type: ignore[union-attr]
        await held.closed
