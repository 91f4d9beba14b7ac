"""Freed memory is given back: every interval, and shortly after a wave of Cell handshakes."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from nanocore.cluster.cells import CellRegistry
from nanocore.cluster.transactions import Transactions
from nanocore.cluster.transport import CellLinkFactory, ServiceType, opened_event
from nanocore.services.memory import MemoryTrim
from tests.cellfixtures import frame

CORE = "Core_000000000001"


class MemoryTrimTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.released = 0
        self.trim = MemoryTrim(self.clock, interval=60, delay=2, release=self.release)

    def release(self) -> None:
        self.released += 1

    def test_trims_at_start_and_every_interval(self) -> None:
        self.trim.startService()
        self.assertEqual(self.released, 1)
        self.clock.advance(60)
        self.assertEqual(self.released, 2)
        self.trim.stopService()
        self.clock.advance(600)
        self.assertEqual(self.released, 2)

    def test_soon_trims_once_after_the_delay(self) -> None:
        self.trim.startService()
        self.trim.soon()
        self.trim.soon()
        self.clock.advance(1.9)
        self.assertEqual(self.released, 1)
        self.clock.advance(0.1)
        self.assertEqual(self.released, 2)
        self.clock.advance(10)
        self.assertEqual(self.released, 2)
        self.trim.stopService()

    def test_nothing_is_left_scheduled_after_stop(self) -> None:
        self.trim.startService()
        self.trim.soon()
        self.trim.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_soon_before_start_does_nothing(self) -> None:
        self.trim.soon()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class QuietAfterHandshakesTests(SynchronousTestCase):
    def test_the_link_says_when_its_last_handshake_is_over(self) -> None:
        clock = Clock()
        registry = CellRegistry(clock, Transactions(clock, timeout=10.0))
        quiet: list[None] = []
        names: dict[int, str] = {}
        factory = CellLinkFactory(
            registry, clock, CORE, lambda t: names[id(t)], quiet=lambda: quiet.append(None)
        )
        wires = []
        for name in ("Cell_a", "Cell_b"):
            address = IPv4Address("TCP", "127.0.0.2", 5000)
            protocol = factory.buildProtocol(address)
            transport = StringTransport(peerAddress=address)
            names[id(transport)] = name
            protocol.makeConnection(transport)
            wires.append((protocol, name))
        self.assertEqual(factory.handshaking(), 2)
        first, second = wires
        first[0].dataReceived(frame(opened_event(first[1], ServiceType.CELL)))
        self.assertEqual(quiet, [])
        second[0].dataReceived(frame(opened_event(second[1], ServiceType.CELL)))
        self.assertEqual(factory.handshaking(), 0)
        self.assertEqual(len(quiet), 1)


class StopWithoutStartTests(SynchronousTestCase):
    def test_a_trim_never_started_stops_quietly(self) -> None:
        trim = MemoryTrim(Clock(), release=lambda: None)
        self.assertIsNone(trim.stopService())
