"""The same cases against the FakeDirectory the operations tests use and the real CellRegistry.

The real registry is driven through real ``LinkSession``s (``FramedLinkProtocol`` over a
``StringTransport``), the Cell side played by frames fed to the protocol; the fake through its
scripting methods. If the fake drifts from the registry, one of the two runs fails.
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from nanocore.cluster.cells import (
    STATUS_STALE_AFTER,
    CellDirectory,
    CellLiveness,
    CellRegistry,
    CellStatus,
    CellUnavailable,
)
from nanocore.cluster.message import Message, MessageID, decode
from nanocore.cluster.transactions import CellError, Transactions, TransactionTimeout, reply_to
from nanocore.cluster.transport import (
    KEEPALIVE_INTERVAL,
    CellLinkFactory,
    FramedLinkProtocol,
    ServiceType,
    opened_event,
)
from tests.cellfixtures import TIMEOUT, FakeDirectory, RecordingObserver, frame

CORE = "Core_000000000001"
CELL = "Cell_contract"
REPORT = CellStatus(
    cores=8, usage=3.5, memory_available=6, memory_total=16, disk_free=100, disk_total=200
)
CONTROL = {
    MessageID.ConnectionOpenedEvent,
    MessageID.ConnectionKeepAliveEvent,
    MessageID.ConnectionClosedEvent,
}


class FakeDriver:
    """Plays the Cells of a :class:`FakeDirectory`."""

    def __init__(self, clock: Clock) -> None:
        self.fake = FakeDirectory(clock)
        self.directory: Any = self.fake

    def connect(self, name: str, address: str) -> None:
        self.fake.connect(name, address)

    def report(self, name: str, status: CellStatus) -> None:
        self.fake.report(name, status)

    def disconnect(self, name: str, gracefully: bool) -> None:
        self.fake.disconnect(name, gracefully)

    def keep_alive(self) -> None:
        """Fake links are never lost."""

    def requests_seen(self, name: str) -> list[Message]:
        return [message for cell, message in self.fake.requests if cell == name]

    def events_seen(self, name: str) -> list[Message]:
        return [message for cell, message in self.fake.sent if cell == name]

    def answer(self, name: str, reply: Message) -> None:
        self.fake.answer(reply, name)


class RegistryDriver:
    """Plays the Cells of a real :class:`CellRegistry` over link sessions on StringTransports."""

    def __init__(self, clock: Clock) -> None:
        self.directory: Any = CellRegistry(clock, Transactions(clock, TIMEOUT))
        self.factory = CellLinkFactory(self.directory, clock, CORE, self.identify)
        self.links: dict[str, tuple[FramedLinkProtocol, StringTransport]] = {}
        self.seen: dict[str, list[Message]] = {}
        self._names: dict[int, str] = {}

    def identify(self, transport: object) -> str:
        return self._names[id(transport)]

    def connect(self, name: str, address: str) -> None:
        peer = IPv4Address("TCP", address, 5000)
        protocol = self.factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        self._names[id(transport)] = name
        protocol.makeConnection(transport)
        self.links[name] = (protocol, transport)
        self.feed(name, opened_event(name, ServiceType.CELL))

    def feed(self, name: str, message: Message) -> None:
        self.links[name][0].dataReceived(frame(message))

    def report(self, name: str, status: CellStatus) -> None:
        self.feed(name, status.to_message())

    def disconnect(self, name: str, gracefully: bool) -> None:
        if gracefully:
            self.feed(name, Message(id=MessageID.ConnectionClosedEvent))
        else:
            self.links[name][0].connectionLost(Failure(ConnectionLost()))
        del self.links[name]

    def keep_alive(self) -> None:
        for name in list(self.links):
            self.feed(name, Message(id=MessageID.ConnectionKeepAliveEvent))

    def received(self, name: str) -> list[Message]:
        """What Core sent the Cell so far, control frames left out."""
        _, transport = self.links[name]
        data, messages = transport.value(), self.seen.setdefault(name, [])
        transport.clear()
        while data:
            (length,) = struct.unpack(">I", data[:4])
            message = decode(data[4 : 4 + length])
            if message.id not in CONTROL:
                messages.append(message)
            data = data[4 + length :]
        return messages

    def requests_seen(self, name: str) -> list[Message]:
        return [message for message in self.received(name) if message.from_session]

    def events_seen(self, name: str) -> list[Message]:
        return [message for message in self.received(name) if not message.from_session]

    def answer(self, name: str, reply: Message) -> None:
        self.feed(name, reply)


class DirectoryContract:
    """The cases; a subclass names the driver."""

    driver_type: ClassVar[type[FakeDriver] | type[RegistryDriver]]

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_714_529_472.0)
        self.driver = self.driver_type(self.clock)
        self.directory = self.driver.directory
        self.heard = RecordingObserver()
        self.directory.subscribe(self.heard)

    def advance(self, seconds: float) -> None:
        """Time passes; linked Cells keep sending keepalives, as a live Cell does."""
        step = KEEPALIVE_INTERVAL
        while seconds > 0:
            self.clock.advance(min(step, seconds))
            seconds -= step
            self.driver.keep_alive()

    def watching(self) -> bool:
        """Whether a rejoin watch still waits on the clock (the links' timers left out)."""
        return any("RejoinWatch" in repr(call) for call in self.clock.getDelayedCalls())

    def test_interface(self: Any) -> None:
        self.assertTrue(verifyObject(CellDirectory, self.directory))

    def test_unknown_cell(self: Any) -> None:
        self.assertEqual(list(self.directory.names()), [])
        self.assertEqual(
            (
                self.directory.state(CELL),
                self.directory.address(CELL),
                self.directory.status(CELL),
            ),
            (None, None, None),
        )
        request = Message(id=MessageID.GetComputePoolCellRequest)
        self.failureResultOf(self.directory.request(CELL, request), CellUnavailable)
        self.assertRaises(CellUnavailable, self.directory.send, CELL, request)
        self.assertEqual(self.heard.seen, [])

    def test_connect_then_report_then_go_quiet(self: Any) -> None:
        self.driver.connect(CELL, "127.0.0.5")
        self.assertEqual(self.heard.seen, [("available", CELL, "127.0.0.5")])
        self.assertEqual(list(self.directory.names()), [CELL])
        self.assertIs(self.directory.state(CELL), CellLiveness.CONNECTED)
        self.assertEqual(self.directory.address(CELL), "127.0.0.5")
        self.assertIsNone(self.directory.status(CELL))
        self.driver.report(CELL, REPORT)
        self.assertEqual(self.heard.seen[-1], ("status", CELL, REPORT))
        self.assertIs(self.directory.state(CELL), CellLiveness.ALIVE)
        self.assertEqual(self.directory.status(CELL), REPORT)
        self.advance(STATUS_STALE_AFTER)
        self.assertIs(self.directory.state(CELL), CellLiveness.CONNECTED)
        self.assertEqual(self.directory.status(CELL), REPORT)

    def test_the_generation_moves_with_every_change(self: Any) -> None:
        seen = [self.directory.generation()]

        def moved() -> None:
            now = self.directory.generation()
            self.assertNotIn(now, seen)
            seen.append(now)

        self.driver.connect(CELL, "127.0.0.5")
        moved()
        self.driver.report(CELL, REPORT)
        moved()
        self.advance(STATUS_STALE_AFTER)  # the report goes stale: alive, then connected
        moved()
        self.driver.disconnect(CELL, True)
        moved()

    def test_request_and_reply(self: Any) -> None:
        self.driver.connect(CELL, "127.0.0.5")
        asking = self.directory.request(CELL, Message(id=MessageID.QueryCellStorageRequest))
        (sent,) = self.driver.requests_seen(CELL)
        self.assertEqual(sent.id, MessageID.QueryCellStorageRequest)
        self.assertNotEqual(sent.from_session, 0)
        self.assertNoResult(asking)
        self.driver.answer(CELL, reply_to(sent))
        self.assertEqual(self.successResultOf(asking).to_session, sent.from_session)

    def test_refusal_fails_the_request(self: Any) -> None:
        self.driver.connect(CELL, "127.0.0.5")
        asking = self.directory.request(CELL, Message(id=MessageID.QueryCellStorageRequest))
        (sent,) = self.driver.requests_seen(CELL)
        self.driver.answer(CELL, reply_to(sent, success=False, error="no disk"))
        self.assertEqual(str(self.failureResultOf(asking, CellError).value), "no disk")

    def test_unanswered_request_times_out(self: Any) -> None:
        self.driver.connect(CELL, "127.0.0.5")
        asking = self.directory.request(CELL, Message(id=MessageID.QueryCellStorageRequest))
        self.advance(TIMEOUT - 1)
        self.assertNoResult(asking)
        self.advance(1)
        self.failureResultOf(asking, TransactionTimeout)

    def test_a_late_reply_is_told_to_the_observers(self: Any) -> None:
        self.driver.connect(CELL, "127.0.0.5")
        asking = self.directory.request(CELL, Message(id=MessageID.QueryCellStorageRequest))
        self.advance(TIMEOUT)
        self.failureResultOf(asking, TransactionTimeout)
        (request,) = self.driver.requests_seen(CELL)
        self.driver.answer(CELL, reply_to(request))
        self.assertEqual(self.heard.seen[-1], ("late", CELL, MessageID.QueryCellStorageRequest))

    def test_send(self: Any) -> None:
        self.driver.connect(CELL, "127.0.0.5")
        self.directory.send(CELL, Message(id=MessageID.ComputeCellRemovedEvent))
        self.assertEqual(
            [message.id for message in self.driver.events_seen(CELL)],
            [MessageID.ComputeCellRemovedEvent],
        )

    def test_disconnect_fails_waiting_requests_and_keeps_the_last_report(self: Any) -> None:
        for gracefully in (True, False):
            name = f"{CELL}_{gracefully}"
            self.driver.connect(name, "127.0.0.5")
            self.driver.report(name, REPORT)
            asking = self.directory.request(name, Message(id=MessageID.QueryCellStorageRequest))
            self.driver.disconnect(name, gracefully)
            self.failureResultOf(asking, CellUnavailable)
            self.assertEqual(self.heard.seen[-1], ("disconnected", name, gracefully))
            self.assertIs(self.directory.state(name), CellLiveness.DISCONNECTED)
            self.assertEqual(self.directory.status(name), REPORT)
            self.assertEqual(self.directory.address(name), "127.0.0.5")
            self.assertIn(name, list(self.directory.names()))
            message = Message(id=MessageID.QueryCellStorageRequest)
            self.failureResultOf(self.directory.request(name, message), CellUnavailable)
            self.assertRaises(CellUnavailable, self.directory.send, name, message)

    def test_reconnect_is_available_again(self: Any) -> None:
        self.driver.connect(CELL, "127.0.0.5")
        self.driver.disconnect(CELL, False)
        self.driver.connect(CELL, "127.0.0.6")
        self.assertEqual(
            self.heard.seen,
            [
                ("available", CELL, "127.0.0.5"),
                ("disconnected", CELL, False),
                ("available", CELL, "127.0.0.6"),
            ],
        )
        self.assertIs(self.directory.state(CELL), CellLiveness.CONNECTED)
        self.assertEqual(self.directory.address(CELL), "127.0.0.6")

    def test_cells_not_back_after_a_start_are_presumed_lost(self: Any) -> None:
        """Once another Cell of its pool linked, a Cell Core knew that has not linked within
        the grace is told lost without goodbye, once; a pool none of whose Cells is back
        waits, and is judged again a grace later."""
        pools = {"shared": ["Cell_a", "Cell_b", "Cell_c"], "quiet": ["Cell_q"], "empty": []}
        self.directory.expect_back(pools, 60.0)
        self.assertTrue(self.watching())
        self.driver.connect("Cell_a", "127.0.0.5")
        self.advance(59.0)
        self.assertEqual(self.heard.seen, [("available", "Cell_a", "127.0.0.5")])
        self.advance(1.0)
        self.assertEqual(
            self.heard.seen[1:],
            [("disconnected", "Cell_b", False), ("disconnected", "Cell_c", False)],
        )
        # Presumed lost is not linked: the state stays that of a Cell never seen.
        self.assertIsNone(self.directory.state("Cell_b"))
        self.driver.connect("Cell_b", "127.0.0.6")
        self.advance(120.0)
        self.assertEqual(self.heard.seen[3:], [("available", "Cell_b", "127.0.0.6")])
        # Cell_q's pool had none back; once one is, the next round judges it (it is back).
        self.driver.connect("Cell_q", "127.0.0.7")
        self.advance(60.0)
        self.assertEqual(self.heard.seen[4:], [("available", "Cell_q", "127.0.0.7")])
        self.assertFalse(self.watching())

    def test_the_grace_runs_from_the_first_cell_of_the_pool_back(self: Any) -> None:
        """A pool's Cells booting together: the first back at 55 s leaves its siblings until
        115 s, not 60 s."""
        self.directory.expect_back({"shared": ["Cell_a", "Cell_b", "Cell_c"]}, 60.0)
        self.advance(55.0)
        self.driver.connect("Cell_a", "127.0.0.5")
        self.advance(8.0)
        self.driver.connect("Cell_b", "127.0.0.6")
        self.advance(51.0)
        self.assertEqual([seen[0] for seen in self.heard.seen], ["available", "available"])
        self.advance(1.0)
        self.assertEqual(self.heard.seen[-1], ("disconnected", "Cell_c", False))
        self.assertEqual(len(self.heard.seen), 3)
        self.assertFalse(self.watching())

    def test_a_departed_cell_is_not_expected_but_shows_its_pool_back(self: Any) -> None:
        """Cells that said goodbye are never presumed lost; one linking again starts the
        grace of its pool's others as any Cell of the pool does."""
        self.directory.expect_back(
            {"shared": ["Cell_a", "Cell_b", "Cell_c"], "other": ["Cell_o"]},
            60.0,
            departed=["Cell_a", "Cell_c", "Cell_o"],
        )
        self.advance(120.0)
        self.assertEqual(self.heard.seen, [])
        self.driver.connect("Cell_a", "127.0.0.5")
        self.advance(60.0)
        self.assertEqual(self.heard.seen[1:], [("disconnected", "Cell_b", False)])
        self.assertFalse(self.watching())

    def test_a_cell_that_linked_and_left_is_not_presumed_again(self: Any) -> None:
        self.directory.expect_back({"shared": ["Cell_a", "Cell_b"]}, 60.0)
        self.driver.connect("Cell_a", "127.0.0.5")
        self.driver.connect("Cell_b", "127.0.0.6")
        self.driver.disconnect("Cell_b", True)
        self.advance(60.0)
        self.assertEqual(self.heard.seen[-1], ("disconnected", "Cell_b", True))
        self.assertEqual(len(self.heard.seen), 3)
        self.assertFalse(self.watching())


class FakeDirectoryContractTests(DirectoryContract, SynchronousTestCase):
    driver_type = FakeDriver


class CellRegistryContractTests(DirectoryContract, SynchronousTestCase):
    driver_type = RegistryDriver

    def test_nothing_is_presumed_once_core_is_leaving(self) -> None:
        self.directory.expect_back({"shared": ["Cell_a", "Cell_b"]}, 60.0)
        self.driver.connect("Cell_a", "127.0.0.5")
        self.directory.leaving()
        self.advance(120.0)
        self.assertEqual(self.heard.seen, [("available", "Cell_a", "127.0.0.5")])
        self.assertFalse(self.watching())
