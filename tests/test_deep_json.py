"""JSON nested far past any real document, through real sockets (issue #14 point 4).

A signed API body nested 1,000 deep once answered HTTP 500 with Twisted's HTML page and logged
a critical ``RecursionError``. Every JSON input now goes through ``gojson``, which refuses a
document nested deeper than 64 levels however deep it is; here each entry point gets one over
a real socket: the API (the envelope, HTTP 200), a Cell link over TLS (that link dropped with a
reason), a discovery datagram (dropped with a reason). Nothing is logged as a traceback. (Deep
config and Nano data files: ``test_config``, ``test_importer``.)
"""

from __future__ import annotations

import functools
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from nanocore.cluster.discovery import DiscoveryListener, ServiceEntry
from nanocore.cluster.transport import FramedLinkProtocol, LinkSession, cell_link_protocol
from nanocore.gojson import MAX_DEPTH
from nanocore.pki import (
    CertificateAuthority,
    client_tls_options,
    create_ca,
    issue_cell_certificate,
)
from nanocore.testing.cluster import InProcessCluster
from tests.loopbackapi import LOOPBACK, LoopbackAPI, reactor

NESTED_DEEPER = f"nested deeper than {MAX_DEPTH} levels"


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@functools.cache
def cluster_ca() -> CertificateAuthority:
    return create_ca()


class NoTracebacks:
    def capture(self: Any) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def assertNoTracebacks(self: Any) -> None:
        self.assertEqual([e for e in self.events if "log_failure" in e], [])

    def logged(self: Any) -> list[str]:
        return [formatEvent(e) for e in self.events]


class DeepAPIBodyTests(NoTracebacks, TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.capture()
        self.api = await LoopbackAPI.start(self)

    async def test_every_deep_body_gets_the_envelope(self) -> None:
        for depth in (MAX_DEPTH + 1, 1_000, 400_000):  # the last fills most of the 1 MiB
            body = b'{"network": ' + nested(depth) + b"}"
            answer = await self.api.send(
                "POST",
                "/compute_pools/p1",
                body,
                self.api.signed("POST", "/compute_pools/p1", body),
            )
            self.assertEqual(answer.status, 200)
            self.assertEqual(answer.envelope()["message"], f"invalid JSON body: {NESTED_DEEPER}")
        pools = await self.api.call("GET", "/compute_pools/")
        self.assertEqual([p["name"] for p in pools["data"]], ["default"])
        self.assertNoTracebacks()


class Waiting:
    """The Cell side's link handler: tells when the link is up, and when it is gone."""

    def __init__(self) -> None:
        self.connected: Deferred[LinkSession] = Deferred()
        self.closed: Deferred[bool] = Deferred()

    def link_connected(self, link: LinkSession) -> None:
        self.connected.callback(link)

    def message_received(self, link: LinkSession, message: object) -> None:
        pass

    def link_lost(self, link: LinkSession) -> None:
        pass

    def link_recovered(self, link: LinkSession) -> None:
        pass

    def link_closed(self, link: LinkSession, gracefully: bool) -> None:
        self.closed.callback(gracefully)


class DeepCellMessageTests(NoTracebacks, TestCase):
    timeout = 30

    async def setUp(self) -> None:  # type: ignore[override]
        self.capture()
        self.cluster = InProcessCluster(reactor, cluster_ca(), timeout=5.0)
        self.addCleanup(lambda: ensureDeferred(self.cluster.stop()))
        await self.cluster.listen()

    async def dial(self, name: str, handler: Waiting) -> FramedLinkProtocol:
        issued = issue_cell_certificate(self.cluster.ca, name)
        endpoint = wrapClientTLS(
            client_tls_options(self.cluster.ca, LOOPBACK, issued),
            TCP4ClientEndpoint(reactor, *self.cluster.address),
        )
        return await connectProtocol(endpoint, cell_link_protocol(handler, reactor, name))

    async def test_a_deep_message_drops_that_link_with_a_reason(self) -> None:
        handler = Waiting()
        wire = await self.dial("Cell_deep", handler)
        await handler.connected
        wire.write_frame(b'{"id":1,"extra":' + nested(100_000) + b"}")
        self.assertFalse(await handler.closed)
        await wire.when_closed()
        self.assertTrue(
            any(
                "dropping link Cell_deep (127.0.0.1): malformed frame" in line
                and NESTED_DEEPER in line
                for line in self.logged()
            ),
            self.logged(),
        )
        self.assertNoTracebacks()

    async def test_a_deep_handshake_drops_the_connection_with_a_reason(self) -> None:
        handler = Waiting()
        wire = await self.dial("Cell_deep2", handler)
        wire.write_frame(nested(2_000))  # before the Cell has said who it is
        await wire.when_closed()
        self.assertFalse(handler.connected.called)
        self.assertTrue(any(NESTED_DEEPER in line for line in self.logged()), self.logged())
        self.assertNoTracebacks()


class QuietListener(DiscoveryListener):
    """The Core's listener on a plain loopback socket: no group to join (and no echo is sent
    in this test, so nothing leaves through any other interface)."""

    def startProtocol(self) -> None:
        pass


class Sender(DatagramProtocol):
    pass


class DeepDiscoveryPacketTests(NoTracebacks, TestCase):
    async def test_a_deep_packet_is_dropped_with_a_reason(self) -> None:
        self.capture()
        listener = QuietListener(
            clock=reactor,
            domain="nano",
            group_address="224.0.0.226",
            group_port=5599,
            listen_address=LOOPBACK,
            services=lambda: (ServiceEntry("core", "tls", LOOPBACK, 5600),),
        )
        port = reactor.listenUDP(0, listener, interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        sender = reactor.listenUDP(0, Sender(), interface=LOOPBACK)
        self.addCleanup(sender.stopListening)
        where = (LOOPBACK, port.getHost().port)
        dropped: Deferred[None] = Deferred()

        def watch(event: dict[str, Any]) -> None:
            if "Discovery dropped" in formatEvent(event) and not dropped.called:
                dropped.callback(None)

        globalLogPublisher.addObserver(watch)
        self.addCleanup(globalLogPublisher.removeObserver, watch)
        sender.write(b'{"type":0,"id":1,"domain":"nano","x":' + nested(3_000) + b"}", where)
        await dropped
        self.assertEqual(listener.dropped, 1)
        self.assertEqual(listener.echoes_sent, 0)
        self.assertTrue(any(NESTED_DEEPER in line for line in self.logged()), self.logged())
        self.assertNoTracebacks()
