"""The cell registry over real link sessions on StringTransports and a Clock."""

from __future__ import annotations

import struct
from typing import Any

from attrs import evolve
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from nanocore.cluster.cells import (
    STATUS_STALE_AFTER,
    CellLiveness,
    CellObserver,
    CellRegistry,
    CellStatus,
    CellUnavailable,
    Deadlines,
    StatusReportError,
)
from nanocore.cluster.message import Message, MessageID, ParamKey, decode, encode, response_id
from nanocore.cluster.transactions import Transactions
from nanocore.cluster.transport import (
    DISCONNECT_AFTER,
    LOST_AFTER,
    CellLinkFactory,
    FramedLinkProtocol,
    ServiceType,
    opened_event,
)
from tests.cellfixtures import RecordingObserver, frame

CORE = "Core_000000000001"
STATUS = CellStatus(
    cores=8,
    usage=3.5,
    memory_available=6_000_000_000,
    memory_total=16_000_000_000,
    disk_free=100,
    disk_total=200,
)


def last_sent(transport: StringTransport) -> Message:
    data = transport.value()
    messages = []
    while data:
        (length,) = struct.unpack(">I", data[:4])
        messages.append(decode(data[4 : 4 + length]))
        data = data[4 + length :]
    return messages[-1]


class DeadlinesTests(SynchronousTestCase):
    def test_passed_changes_once_moments_pass(self) -> None:
        clock = Clock()
        deadlines = Deadlines(clock)
        deadlines.add(10.0)
        deadlines.add(12.0)
        before = deadlines.passed()
        clock.advance(9.9)
        self.assertEqual(deadlines.passed(), before)
        clock.advance(0.1)
        at_ten = deadlines.passed()
        self.assertNotEqual(at_ten, before)
        self.assertEqual(deadlines.passed(), at_ten)  # nothing more passed since
        clock.advance(2.0)
        self.assertNotEqual(deadlines.passed(), at_ten)

    def test_what_is_kept_stays_bounded_when_nobody_asks(self) -> None:
        """1,000 Cells reporting every 2 s for ten minutes, each report stale 10 s later, and
        no status request meanwhile: only the moments still ahead are kept (the registry kept
        every one until a status request came: 43 million a day)."""
        clock = Clock()
        deadlines = Deadlines(clock)
        for _ in range(300):
            for _ in range(1_000):
                deadlines.add(clock.seconds() + 10.0)
            clock.advance(2.0)
        self.assertLessEqual(len(deadlines), 6 * 1_000)


class CellStatusTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        status = CellStatus(4, 12.5, 1, 2, 3, 4, io=(1, 2, 3, 4), speed=(5, 6, 7, 8))
        self.assertEqual(CellStatus.from_message(decode(encode(status.to_message()))), status)

    def test_wire_shape(self) -> None:
        """The report matches §3.1's example field for field."""
        message = STATUS.to_message()
        self.assertEqual(message.id, 328450)
        self.assertEqual(message.uint_params, {2: 8})
        self.assertEqual(message.float_params, {5: 3.5})
        self.assertEqual(
            dict(message.uint_array_params),
            {3: (6_000_000_000, 16_000_000_000), 4: (100, 200), 6: (0,) * 4, 7: (0,) * 4},
        )

    def test_missing_or_short_fields_rejected(self) -> None:
        good = STATUS.to_message()
        for params in (
            {"uint_params": {}},
            {"float_params": {}},
            {"uint_array_params": {**good.uint_array_params, ParamKey.Memory: (1,)}},
            {"uint_array_params": {**good.uint_array_params, ParamKey.Speed: (1, 2, 3)}},
            {"uint_array_params": {k: v for k, v in good.uint_array_params.items() if k != 4}},
        ):
            bad = Message(
                id=good.id,
                uint_params=params.get("uint_params", good.uint_params),  # type: ignore[arg-type]
                float_params=params.get("float_params", good.float_params),  # type: ignore[arg-type]
                uint_array_params=params.get("uint_array_params", good.uint_array_params),  # type: ignore[arg-type]
            )
            self.assertRaises(StatusReportError, CellStatus.from_message, bad)

    def test_what_no_host_can_report_is_rejected(self) -> None:
        """QA pass 20: a usage of 1e308 made every status route an internal error; free memory
        of 2**64-1 bytes of 1 drew every placement of the pool."""
        good = STATUS.to_message()
        arrays = good.uint_array_params
        usage = "Usage: expected 0 to 100 percent, got"
        cases: list[tuple[dict[str, Any], str]] = [
            ({"uint_params": {ParamKey.Core: 0}}, "Core: expected 1 to 65536, got 0"),
            (
                {"uint_params": {ParamKey.Core: 2**64 - 1}},
                f"Core: expected 1 to 65536, got {2**64 - 1}",
            ),
            (
                {"uint_array_params": {**arrays, ParamKey.Memory: (2**64 - 1, 2**64 - 1)}},
                "Memory or Disk: more than 281474976710656 bytes of memory or 4503599627370496"
                " of disk in all",
            ),
            ({"float_params": {ParamKey.Usage: 1e308}}, f"{usage} 1e+308"),
            ({"float_params": {ParamKey.Usage: -50.0}}, f"{usage} -50"),
            (
                {"uint_array_params": {**arrays, ParamKey.Memory: (2**64 - 1, 1)}},
                f"Memory: {2**64 - 1} available of 1 in all",
            ),
            (
                {"uint_array_params": {**arrays, ParamKey.Disk: (10**19, 5)}},
                f"Disk: {10**19} free of 5 in all",
            ),
        ]
        for change, reason in cases:
            with self.assertRaises(StatusReportError) as caught:
                CellStatus.from_message(evolve(good, **change))
            self.assertEqual(str(caught.exception), reason)
        rounded = CellStatus.from_message(evolve(good, float_params={ParamKey.Usage: 100.3}))
        self.assertEqual(rounded.usage, 100.0)


class RegistryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.transactions = Transactions(self.clock, timeout=10.0)
        self.registry = CellRegistry(self.clock, self.transactions)
        self.observer = RecordingObserver()
        self.registry.subscribe(self.observer)
        self.factory = CellLinkFactory(self.registry, self.clock, CORE, self.identify)
        self._names: dict[int, str] = {}

    def identify(self, transport: object) -> str:
        return self._names[id(transport)]

    def connect(
        self, name: str, host: str = "127.0.0.2"
    ) -> tuple[FramedLinkProtocol, StringTransport]:
        address = IPv4Address("TCP", host, 5000)
        protocol = self.factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        self._names[id(transport)] = name
        protocol.makeConnection(transport)
        protocol.dataReceived(frame(opened_event(name, ServiceType.CELL)))
        return protocol, transport

    def test_observer_interface(self) -> None:
        self.assertTrue(verifyObject(CellObserver, self.observer))

    def test_connect(self) -> None:
        self.connect("Cell_a")
        self.assertEqual(self.observer.seen, [("available", "Cell_a", "127.0.0.2")])
        self.assertIs(self.registry.state("Cell_a"), CellLiveness.CONNECTED)
        self.assertEqual(self.registry.address("Cell_a"), "127.0.0.2")
        self.assertIsNotNone(self.registry.link("Cell_a"))
        self.assertIsNone(self.registry.state("Cell_b"))
        self.assertEqual(list(self.registry.names()), ["Cell_a"])

    def test_status_report(self) -> None:
        protocol, _ = self.connect("Cell_a")
        protocol.dataReceived(frame(STATUS.to_message()))
        self.assertEqual(self.registry.status("Cell_a"), STATUS)
        self.assertEqual(self.observer.seen[-1], ("status", "Cell_a", STATUS))
        self.assertIs(self.registry.state("Cell_a"), CellLiveness.ALIVE)

    def test_status_goes_stale(self) -> None:
        protocol, _ = self.connect("Cell_a")
        keepalive = frame(Message(id=MessageID.ConnectionKeepAliveEvent))
        protocol.dataReceived(frame(STATUS.to_message()))
        self.clock.advance(STATUS_STALE_AFTER / 2)
        protocol.dataReceived(keepalive)
        self.clock.advance(STATUS_STALE_AFTER / 2)
        protocol.dataReceived(keepalive)
        self.assertIs(self.registry.state("Cell_a"), CellLiveness.CONNECTED)
        self.assertEqual(self.registry.status("Cell_a"), STATUS)

    def test_bad_status_report_ignored(self) -> None:
        """The whole report is rejected; the link and the previous status stay. A Cell that
        reports wrongly does so every 2 s: one line a minute says so, with the count."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        protocol, transport = self.connect("Cell_a")
        protocol.dataReceived(frame(STATUS.to_message()))
        for _ in range(30):
            protocol.dataReceived(frame(Message(id=MessageID.CellStatusReportEvent)))
            self.clock.advance(2)
        self.assertEqual(self.registry.status("Cell_a"), STATUS)
        self.assertEqual(len(self.observer.seen), 2)
        self.assertFalse(transport.disconnecting)
        lines = [formatEvent(e) for e in events if "status report" in formatEvent(e)]
        self.assertEqual(
            lines,
            [
                "ignoring status report from Cell_a: Core: missing",
                "29 more ignored status reports from Cell_a in the last 60 s (one line per"
                " source every 60 s)",
            ],
        )

    def test_unknown_ids_and_responses_naming_no_request_are_logged_and_dropped(self) -> None:
        """cell-protocol §2.7; they were dropped without a word (QA pass 20)."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        protocol, transport = self.connect("Cell_a")
        seen = len(self.observer.seen)
        for _ in range(3):
            protocol.dataReceived(frame(Message(id=0x7F7F02)))
            protocol.dataReceived(frame(Message(id=MessageID.DeleteGuestResponse)))
        self.assertEqual(len(self.observer.seen), seen)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(60)
        lines = [
            formatEvent(e)
            for e in events
            if "dropped" in formatEvent(e) or "more" in formatEvent(e)
        ]
        self.assertEqual(
            lines,
            [
                "Cell_a sent 0x7f7f02, which is no message nanocore knows; dropped",
                "5 more unexpected messages from Cell_a in the last 60 s (one line per source"
                " every 60 s)",
            ],
        )

    def test_unsolicited_event(self) -> None:
        protocol, _ = self.connect("Cell_a")
        protocol.dataReceived(frame(Message(id=MessageID.GuestCreatedEvent)))
        self.assertEqual(self.observer.seen[-1], ("event", "Cell_a", MessageID.GuestCreatedEvent))

    def test_request_and_reply(self) -> None:
        protocol, transport = self.connect("Cell_a")
        transport.clear()
        d = self.registry.request("Cell_a", Message(id=MessageID.CreateGuestRequest))
        sent = last_sent(transport)
        self.assertEqual(sent.id, MessageID.CreateGuestRequest)
        self.assertNotEqual(sent.from_session, 0)
        reply = Message(
            id=response_id(MessageID.CreateGuestRequest),
            success=True,
            to_session=sent.from_session,
        )
        protocol.dataReceived(frame(reply))
        self.assertEqual(self.successResultOf(d), reply)
        self.assertEqual(len(self.observer.seen), 1)

    def test_late_reply_dropped(self) -> None:
        protocol, transport = self.connect("Cell_a")
        late = Message(
            id=response_id(MessageID.CreateGuestRequest), success=True, to_session=987654
        )
        protocol.dataReceived(frame(late))
        self.assertEqual(len(self.observer.seen), 1)
        self.assertFalse(transport.disconnecting)

    def test_request_to_unlinked_cell(self) -> None:
        d = self.registry.request("Cell_x", Message(id=MessageID.CreateGuestRequest))
        self.failureResultOf(d, CellUnavailable)
        self.assertRaises(
            CellUnavailable, self.registry.send, "Cell_x", Message(id=MessageID.CreateGuestRequest)
        )

    def test_lost_then_disconnected(self) -> None:
        self.connect("Cell_a")
        self.clock.advance(LOST_AFTER)
        self.assertIs(self.registry.state("Cell_a"), CellLiveness.LOST)
        self.assertIsNotNone(self.registry.link("Cell_a"))
        self.clock.advance(DISCONNECT_AFTER - LOST_AFTER)
        self.assertIs(self.registry.state("Cell_a"), CellLiveness.DISCONNECTED)
        self.assertEqual(self.observer.seen[-1], ("disconnected", "Cell_a", False))
        self.assertIsNone(self.registry.link("Cell_a"))
        d = self.registry.request("Cell_a", Message(id=MessageID.CreateGuestRequest))
        self.failureResultOf(d, CellUnavailable)

    def test_graceful_disconnect(self) -> None:
        protocol, _ = self.connect("Cell_a")
        protocol.dataReceived(frame(STATUS.to_message()))
        protocol.dataReceived(frame(Message(id=MessageID.ConnectionClosedEvent)))
        self.assertEqual(self.observer.seen[-1], ("disconnected", "Cell_a", True))
        self.assertIs(self.registry.state("Cell_a"), CellLiveness.DISCONNECTED)
        self.assertEqual(self.registry.status("Cell_a"), STATUS)

    def test_links_core_closes_as_it_leaves_are_not_cells_lost(self) -> None:
        """Core stopping says goodbye to every Cell: its rooms are not told of Cells lost
        (they would mark guests lost and fail them over), but requests waiting still fail."""
        protocol, _ = self.connect("Cell_a")
        waiting = self.registry.request("Cell_a", Message(id=MessageID.CreateGuestRequest))
        self.registry.leaving()
        assert protocol.session is not None
        protocol.session.close()
        self.assertEqual(self.observer.seen, [("available", "Cell_a", "127.0.0.2")])
        self.assertIs(self.registry.state("Cell_a"), CellLiveness.DISCONNECTED)
        self.failureResultOf(waiting, CellUnavailable)

    def test_reconnect_replaces_old_link(self) -> None:
        """A restarted Cell's new link wins; the old one closes without a disconnect event."""
        old, old_transport = self.connect("Cell_a", "127.0.0.2")
        new, _ = self.connect("Cell_a", "127.0.0.3")
        self.assertTrue(old_transport.disconnecting)
        self.assertIs(self.registry.link("Cell_a"), new.session)
        self.assertEqual(self.registry.address("Cell_a"), "127.0.0.3")
        self.assertEqual(
            self.observer.seen,
            [("available", "Cell_a", "127.0.0.2"), ("available", "Cell_a", "127.0.0.3")],
        )
        old.dataReceived(frame(Message(id=MessageID.GuestCreatedEvent)))
        self.assertEqual(len(self.observer.seen), 2)

    def test_failing_observer_does_not_stop_others(self) -> None:
        @implementer(CellObserver)
        class Broken(RecordingObserver):
            def cell_available(self, name: str, address: str) -> None:
                raise RuntimeError("boom")

        registry = CellRegistry(self.clock, self.transactions)
        second = RecordingObserver()
        registry.subscribe(Broken())
        registry.subscribe(second)
        self.factory = CellLinkFactory(registry, self.clock, CORE, self.identify)
        self.connect("Cell_a")
        self.assertEqual(second.seen, [("available", "Cell_a", "127.0.0.2")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_close_all_says_goodbye_refuses_newcomers_and_waits(self) -> None:
        """What a stopping Core's TLS link does: a goodbye to every Cell, no new link while
        it closes, and done once every connection is gone."""
        first_protocol, first = self.connect("Cell_a")
        second_protocol, second = self.connect("Cell_b")
        closing = self.factory.close_all()
        self.assertTrue(first.disconnecting and second.disconnecting)
        self.assertEqual(last_sent(first).id, MessageID.ConnectionClosedEvent)
        self.assertIs(self.registry.state("Cell_b"), CellLiveness.DISCONNECTED)
        self.assertIsNone(self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.3", 5000)))
        self.assertNoResult(closing)
        first_protocol.connectionLost(None)
        second_protocol.connectionLost(None)
        self.successResultOf(closing)
        self.assertIsNotNone(self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.3", 5000)))

    def test_pending_request_fails_when_link_drops(self) -> None:
        protocol, _ = self.connect("Cell_a")
        d = self.registry.request("Cell_a", Message(id=MessageID.CreateGuestRequest))
        protocol.connectionLost(None)
        self.failureResultOf(d, CellUnavailable)
        self.assertEqual(self.transactions.pending, 0)

    def test_other_cell_cannot_answer(self) -> None:
        """A reply for Cell_a's transaction arriving from Cell_b is dropped."""
        _, transport_a = self.connect("Cell_a")
        other, _ = self.connect("Cell_b")
        d = self.registry.request("Cell_a", Message(id=MessageID.CreateGuestRequest))
        token = last_sent(transport_a).from_session
        forged = Message(
            id=response_id(MessageID.CreateGuestRequest), success=True, to_session=token
        )
        other.dataReceived(frame(forged))
        self.assertNoResult(d)
        d.cancel()
        self.failureResultOf(d)
