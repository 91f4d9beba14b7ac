"""The Cell link: handshake, keepalive/lost/disconnect on a Clock, bad frames, graceful close."""

from __future__ import annotations

import struct

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITransport
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from nanocore import gojson
from nanocore.clocks import STALL_AFTER, STALL_GRACE
from nanocore.cluster.cells import CellRegistry
from nanocore.cluster.message import Message, MessageID, ParamKey, decode, encode
from nanocore.cluster.transactions import Transactions
from nanocore.cluster.transport import (
    DISCONNECT_AFTER,
    FRAMES_PER_TURN,
    HANDSHAKE_TIMEOUT,
    KEEPALIVE_INTERVAL,
    LOST_AFTER,
    MAX_FRAME_SIZE,
    CellLink,
    CellLinkFactory,
    FramedLinkProtocol,
    FrameTooLarge,
    FrameWire,
    LinkClosed,
    LinkHandler,
    LinkSession,
    LinkState,
    ServiceType,
    cell_link_protocol,
    opened_event,
)
from nanocore.openfiles import RESERVED_FILES, Descriptors
from nanocore.testing.fakecell import FakeCell

CELL = "Cell_5254001a2b3c"
CORE = "Core_5254000a0b0c"


@implementer(LinkHandler)
class RecordingHandler:
    """A LinkHandler that writes down what happened, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, object]] = []
        self.messages: list[Message] = []

    def link_connected(self, link: LinkSession) -> None:
        self.events.append(("connected", link.name, link.address))

    def message_received(self, link: LinkSession, message: Message) -> None:
        self.messages.append(message)

    def link_lost(self, link: LinkSession) -> None:
        self.events.append(("lost", link.name, None))

    def link_recovered(self, link: LinkSession) -> None:
        self.events.append(("recovered", link.name, None))

    def link_closed(self, link: LinkSession, gracefully: bool) -> None:
        self.events.append(("closed", link.name, gracefully))


def frame(message: Message) -> bytes:
    data = encode(message)
    return struct.pack(">I", len(data)) + data


def frames(data: bytes) -> list[Message]:
    """Split what a protocol wrote into messages."""
    out = []
    while data:
        (length,) = struct.unpack(">I", data[:4])
        out.append(decode(data[4 : 4 + length]))
        data = data[4 + length :]
    return out


class CoreSideTests(SynchronousTestCase):
    """Core's accepting side, driven byte by byte over a StringTransport."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.handler = RecordingHandler()
        self.certificate_name: str | None = CELL
        factory = CellLinkFactory(self.handler, self.clock, CORE, self.identify)
        self.protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.5", 4000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.5", 4000))
        self.protocol.makeConnection(self.transport)

    def identify(self, transport: ITransport) -> str | None:
        return self.certificate_name

    @property
    def link(self) -> LinkSession:
        assert self.protocol.session is not None
        return self.protocol.session

    def written(self) -> list[Message]:
        out = frames(self.transport.value())
        self.transport.clear()
        return out

    def handshake(self, name: str = CELL, service_type: ServiceType = ServiceType.CELL) -> None:
        self.protocol.dataReceived(frame(opened_event(name, service_type)))

    def test_interfaces(self) -> None:
        """The seams hold: the wire, the link above it, and what sits above links."""
        self.assertTrue(verifyObject(FrameWire, self.protocol))
        self.assertTrue(verifyObject(CellLink, self.link))
        self.assertTrue(verifyObject(LinkHandler, self.handler))
        registry = CellRegistry(self.clock, Transactions(self.clock, timeout=10))
        self.assertTrue(verifyObject(LinkHandler, registry))
        self.assertTrue(verifyObject(LinkHandler, FakeCell(CELL, self.clock)))

    def test_handshake(self) -> None:
        """The Cell announces itself; Core answers with its own name and type 0."""
        self.assertEqual(self.written(), [])
        self.handshake()
        [reply] = self.written()
        self.assertEqual(reply.id, MessageID.ConnectionOpenedEvent)
        self.assertEqual(reply.string_params[ParamKey.Name], CORE)
        self.assertEqual(reply.uint_params[ParamKey.Type], ServiceType.CORE)
        self.assertEqual(self.handler.events, [("connected", CELL, "127.0.0.5")])
        self.assertIs(self.link.state, LinkState.CONNECTED)
        self.assertEqual((self.link.name, self.link.verified), (CELL, True))

    def test_name_must_match_certificate(self) -> None:
        """A Cell claiming another name than its certificate's is refused."""
        self.handshake(name="Cell_000000000001")
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.written(), [])
        self.assertEqual(self.handler.events, [])

    def test_no_certificate_refused(self) -> None:
        """Without a verified certificate there is no name, so no link."""
        self.certificate_name = None
        self.handshake()
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.handler.events, [])

    def test_wrong_service_type_refused(self) -> None:
        self.handshake(service_type=ServiceType.CORE)
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.handler.events, [])

    def test_first_message_must_be_handshake(self) -> None:
        self.protocol.dataReceived(frame(Message(id=MessageID.ConnectionKeepAliveEvent)))
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.handler.events, [])

    def test_handshake_timeout(self) -> None:
        """A connection that never announces itself is dropped."""
        self.clock.advance(HANDSHAKE_TIMEOUT - 0.1)
        self.assertFalse(self.transport.disconnected)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.handler.events, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_messages_carry_sender(self) -> None:
        """Application messages reach the handler stamped with the certified name."""
        self.handshake()
        report = Message(id=MessageID.CellStatusReportEvent, uint_params={ParamKey.Core: 4})
        self.protocol.dataReceived(frame(report))
        self.assertEqual(self.handler.messages, [report])
        self.assertEqual(self.handler.messages[0].sender, CELL)

    def test_keepalive_every_three_seconds(self) -> None:
        self.handshake()
        self.written()
        self.clock.advance(KEEPALIVE_INTERVAL - 0.1)
        self.assertEqual(self.written(), [])
        self.clock.advance(0.1)
        self.assertEqual([m.id for m in self.written()], [MessageID.ConnectionKeepAliveEvent])
        self.clock.advance(KEEPALIVE_INTERVAL)
        self.assertEqual([m.id for m in self.written()], [MessageID.ConnectionKeepAliveEvent])

    def test_lost_then_disconnected(self) -> None:
        """Silence: lost at 9 s, disconnected (not gracefully) at 15 s, with a goodbye."""
        self.handshake()
        self.clock.advance(LOST_AFTER - 0.5)
        self.assertIs(self.link.state, LinkState.CONNECTED)
        self.clock.advance(0.5)
        self.assertIs(self.link.state, LinkState.LOST)
        self.assertEqual(self.handler.events[-1], ("lost", CELL, None))
        self.transport.clear()
        self.clock.advance(DISCONNECT_AFTER - LOST_AFTER - 0.5)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.5)
        self.assertEqual(self.handler.events[-1], ("closed", CELL, False))
        self.assertEqual(self.written()[-1].id, MessageID.ConnectionClosedEvent)
        self.assertTrue(self.transport.disconnecting)

    def test_a_stall_of_core_itself_is_not_the_peers_silence(self) -> None:
        """Core stopped for 20 s (SIGSTOP, a paused VM): its timers ran before what the
        Cells had sent meanwhile was read, and every link was judged silent and dropped
        (QA pass 16). The late check looks again once that has been read."""
        self.handshake()
        keepalive = frame(Message(id=MessageID.ConnectionKeepAliveEvent))
        self.clock.advance(KEEPALIVE_INTERVAL)
        self.protocol.dataReceived(keepalive)
        self.clock.advance(20)  # stopped: the check due at 9 s runs at 22 s
        self.assertIs(self.link.state, LinkState.CONNECTED)
        self.protocol.dataReceived(keepalive)  # what waited in the socket
        self.clock.advance(STALL_GRACE)
        self.assertIs(self.link.state, LinkState.CONNECTED)
        self.assertEqual(self.handler.events, [("connected", CELL, "127.0.0.5")])
        self.clock.advance(LOST_AFTER)  # and silence is judged as before
        self.assertIs(self.link.state, LinkState.LOST)

    def test_a_peer_silent_through_a_stall_is_judged_at_the_second_look(self) -> None:
        self.handshake()
        self.clock.advance(20)
        self.assertIs(self.link.state, LinkState.CONNECTED)
        self.clock.advance(STALL_GRACE)
        self.assertEqual([e[0] for e in self.handler.events], ["connected", "lost", "closed"])

    def test_a_handshake_waiting_through_a_stall_is_read_first(self) -> None:
        """A 15 s stop of Core reset every Cell link still handshaking (QA pass 22): the
        watchdog due at 10 s ran before the handshake waiting in the socket was read."""
        self.clock.advance(15)  # stopped: the watchdog due at 10 s runs at 15 s
        self.assertFalse(self.transport.disconnecting)
        self.handshake()  # what waited in the socket
        self.clock.advance(STALL_GRACE)
        self.assertIs(self.link.state, LinkState.CONNECTED)

    def test_no_handshake_through_a_stall_is_dropped_at_the_second_look(self) -> None:
        self.clock.advance(15)
        self.clock.advance(STALL_GRACE)
        self.assertTrue(self.transport.disconnecting)

    def test_a_check_late_twice_in_a_row_judges(self) -> None:
        """Looking again is once per stall: a reactor late at every turn still judges."""
        self.handshake()
        self.clock.advance(20)
        self.clock.advance(STALL_AFTER + STALL_GRACE)  # the second look is late too
        self.assertEqual([e[0] for e in self.handler.events], ["connected", "lost", "closed"])

    def test_keepalives_keep_it_connected(self) -> None:
        self.handshake()
        keepalive = frame(Message(id=MessageID.ConnectionKeepAliveEvent))
        for _ in range(20):
            self.clock.advance(KEEPALIVE_INTERVAL)
            self.protocol.dataReceived(keepalive)
        self.assertEqual(self.handler.events, [("connected", CELL, "127.0.0.5")])
        self.assertIs(self.link.state, LinkState.CONNECTED)

    def test_lost_peer_recovers(self) -> None:
        self.handshake()
        self.clock.advance(LOST_AFTER + 1)
        self.protocol.dataReceived(frame(Message(id=MessageID.ConnectionKeepAliveEvent)))
        self.assertIs(self.link.state, LinkState.CONNECTED)
        self.assertEqual([e[0] for e in self.handler.events], ["connected", "lost", "recovered"])
        # Counting starts again from the last keepalive (the clock moving at a reactor's pace:
        # one leap is a stall, see below).
        self.clock.pump([0.5] * 17)
        self.assertIs(self.link.state, LinkState.CONNECTED)
        self.clock.advance(0.5)
        self.assertIs(self.link.state, LinkState.LOST)

    def test_graceful_close_by_peer(self) -> None:
        self.handshake()
        self.protocol.dataReceived(frame(Message(id=MessageID.ConnectionClosedEvent)))
        self.assertEqual(self.handler.events[-1], ("closed", CELL, True))
        self.assertTrue(self.transport.disconnecting)
        self.protocol.connectionLost(None)
        self.assertEqual(len(self.handler.events), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_local_close_says_goodbye(self) -> None:
        self.handshake()
        self.transport.clear()
        self.link.close()
        self.assertEqual([m.id for m in self.written()], [MessageID.ConnectionClosedEvent])
        self.assertEqual(self.handler.events[-1], ("closed", CELL, False))
        self.assertRaises(LinkClosed, self.link.send, Message(id=MessageID.CreateGuestRequest))

    def test_close_aborts_if_flush_hangs(self) -> None:
        self.handshake()
        self.link.close()
        self.assertFalse(self.transport.disconnected)
        self.clock.advance(3.0)
        self.assertTrue(self.transport.disconnected)

    def test_connection_drop_is_not_graceful(self) -> None:
        self.handshake()
        self.protocol.connectionLost(None)
        self.assertEqual(self.handler.events[-1], ("closed", CELL, False))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_connection_dropped_without_a_goodbye_is_logged(self) -> None:
        """An operator learns a Cell dropped whatever its pool (only failover pools said so)."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.handshake()
        self.protocol.connectionLost(None)
        lines = [formatEvent(event) for event in events if event.get("log_level") is LogLevel.warn]
        self.assertEqual(
            lines,
            [f"link {CELL} (127.0.0.5) dropped: the connection ended without a goodbye"],
        )

    def test_a_goodbye_or_cores_own_close_logs_no_drop(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.handshake()
        self.link.close()
        self.protocol.connectionLost(None)
        self.assertFalse([e for e in events if "dropped" in formatEvent(e)])

    def test_malformed_frame_closes_link(self) -> None:
        self.handshake()
        self.protocol.dataReceived(struct.pack(">I", 5) + b"{nope")
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.handler.events[-1], ("closed", CELL, False))
        self.assertEqual(self.handler.messages, [])

    def test_over_deep_frame_closes_link(self) -> None:
        """A document nested past gojson's limit is a malformed message, not a crash."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.handshake()
        depth = 1_000
        data = b'{"id":1,"x":' + b"[" * depth + b"]" * depth + b"}"
        self.protocol.dataReceived(struct.pack(">I", len(data)) + data)
        self.assertIn(f"nested deeper than {gojson.MAX_DEPTH}", formatEvent(events[-1]))
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.handler.events[-1], ("closed", CELL, False))
        self.assertEqual(self.handler.messages, [])

    def test_malformed_frame_before_handshake(self) -> None:
        self.protocol.dataReceived(struct.pack(">I", 2) + b"[]")
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.handler.events, [])

    def test_oversized_frame_refused_before_buffering(self) -> None:
        """The length prefix alone is enough to refuse; later frames are not parsed."""
        self.handshake()
        after = frame(Message(id=MessageID.CellStatusReportEvent))
        self.protocol.dataReceived(struct.pack(">I", MAX_FRAME_SIZE + 1) + b"x" * 10 + after)
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.handler.events[-1], ("closed", CELL, False))
        self.assertEqual(self.handler.messages, [])

    def test_oversized_prefix_split_across_reads(self) -> None:
        self.handshake()
        prefix = struct.pack(">I", MAX_FRAME_SIZE + 1)
        self.protocol.dataReceived(prefix[:3])
        self.assertFalse(self.transport.disconnected)
        self.protocol.dataReceived(prefix[3:] + frame(Message(id=MessageID.GuestCreatedEvent)))
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.handler.messages, [])

    def test_largest_frame_accepted(self) -> None:
        self.handshake()
        base = len(encode(Message(id=MessageID.GuestUpdatedEvent, string_params={0: ""})))
        big = Message(
            id=MessageID.GuestUpdatedEvent, string_params={0: "x" * (MAX_FRAME_SIZE - base)}
        )
        data = frame(big)
        self.assertEqual(len(data), 4 + MAX_FRAME_SIZE)
        for start in range(0, len(data), 16384):  # as TLS records deliver it
            self.protocol.dataReceived(data[start : start + 16384])
        self.assertEqual(self.handler.messages, [big])
        self.assertFalse(self.transport.disconnected)

    def test_frames_split_at_every_byte_and_batched(self) -> None:
        """However reads cut the stream, the same messages arrive, in order, once each."""
        self.handshake()
        sent = [
            Message(id=MessageID.GuestStartedEvent, string_params={ParamKey.Instance: f"g{i}"})
            for i in range(3)
        ]
        stream = b"".join(frame(message) for message in sent)
        for cut in range(1, len(stream)):
            self.protocol.dataReceived(stream[:cut])
            self.protocol.dataReceived(stream[cut:])
        for byte in range(len(stream)):
            self.protocol.dataReceived(stream[byte : byte + 1])
        self.assertEqual(self.handler.messages, sent * len(stream))
        self.assertEqual(
            [m.string_params[ParamKey.Instance] for m in self.handler.messages[:3]],
            ["g0", "g1", "g2"],
        )

    def test_nothing_is_parsed_after_the_peer_says_goodbye(self) -> None:
        self.handshake()
        after = frame(Message(id=MessageID.GuestStartedEvent))
        self.protocol.dataReceived(frame(Message(id=MessageID.ConnectionClosedEvent)) + after)
        self.protocol.dataReceived(after)
        self.assertEqual(self.handler.events[-1], ("closed", CELL, True))
        self.assertEqual(self.handler.messages, [])

    def test_send(self) -> None:
        self.handshake()
        self.transport.clear()
        request = Message(id=MessageID.CreateGuestRequest, from_session=7)
        self.link.send(request)
        self.assertEqual(self.written(), [request])

    def test_send_too_large(self) -> None:
        self.handshake()
        huge = Message(id=MessageID.CreateGuestRequest, string_params={0: "x" * MAX_FRAME_SIZE})
        self.assertRaises(FrameTooLarge, self.link.send, huge)
        self.assertIs(self.link.state, LinkState.CONNECTED)

    def test_send_before_handshake(self) -> None:
        self.assertRaises(LinkClosed, self.link.send, Message(id=MessageID.CreateGuestRequest))


class ReactorStringTransport(StringTransport):
    """A StringTransport that, like a real TCP transport, names the reactor feeding it."""

    def __init__(self, reactor: Clock) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.5", 4000))
        self.reactor = reactor


class HandshakeCapTests(SynchronousTestCase):
    """Connections that have not said who they are are bounded; known Cells are not."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.handler = RecordingHandler()
        self.factory = CellLinkFactory(
            self.handler, self.clock, CORE, lambda transport: CELL, max_handshaking=2
        )

    def accept(self, host: str = "127.0.0.5") -> FramedLinkProtocol | None:
        address = IPv4Address("TCP", host, 4000)
        protocol = self.factory.buildProtocol(address)
        if protocol is not None:
            protocol.makeConnection(StringTransport(peerAddress=address))
        return protocol

    def test_a_newcomer_from_elsewhere_takes_the_oldest_place_of_the_largest_source(self) -> None:
        first, second = self.accept(), self.accept()
        assert first is not None and second is not None
        newcomer = self.accept("127.0.0.9")
        self.assertIsNotNone(newcomer)
        transport = first.transport
        assert isinstance(transport, StringTransport)
        self.assertTrue(transport.disconnecting)  # aborted: its place is the newcomer's
        self.assertEqual((self.factory.handshaking(), self.factory.evicted), (2, 1))
        # Now each source holds one place: nobody takes another's.
        self.assertIsNone(self.accept("127.0.0.9"))
        self.assertIsNone(self.accept("127.0.0.5"))
        self.assertEqual(self.factory.refused, 2)

    def test_linked_cells_count_against_the_open_file_limit(self) -> None:
        """Every open link holds a descriptor, linked or not: once every port holds what
        the limit leaves, a newcomer is refused (else Core's accept met EMFILE, and every
        client was reset: QA pass 22, D1)."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        descriptors = Descriptors(RESERVED_FILES + 1)
        descriptors.count(lambda: len(self.factory.connections))
        self.factory = CellLinkFactory(
            self.handler, self.clock, CORE, lambda transport: CELL, descriptors=descriptors
        )
        self.assertIsNotNone(self.accept())
        self.assertIsNone(self.accept("127.0.0.9"))
        self.assertEqual(self.factory.refused, 1)
        self.assertEqual(
            [formatEvent(e) for e in events],
            [
                "refused a Cell link connection from 127.0.0.9: 1 connections are open on all"
                " ports, as many as the open-file limit leaves for them (1)"
            ],
        )

    def test_handshakes_failing_by_the_thousand_log_one_line_and_the_count(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.factory = CellLinkFactory(self.handler, self.clock, CORE, lambda transport: CELL)
        for _ in range(1_000):
            protocol = self.accept()
            assert protocol is not None
            protocol.dataReceived(struct.pack(">I", 5) + b"nope!")  # not a message
            protocol.connectionLost(Failure(ConnectionDone()))
        self.clock.advance(60)
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(
            lines[0].startswith("dropping link (unnamed) (127.0.0.5): malformed frame")
        )
        self.assertEqual(
            lines[1],
            "999 more dropped handshakes from 127.0.0.5 in the last 60 s"
            " (one line per source every 60 s)",
        )

    def test_refusals_and_evictions_are_logged_once_per_source_with_a_count(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.accept()
        self.accept()
        for _ in range(50):
            self.assertIsNone(self.accept())
        self.factory.stopFactory()
        texts = [formatEvent(e) for e in events]
        self.assertEqual(
            texts,
            [
                "refused a Cell link from 127.0.0.5: 2 of the 2 connections still handshaking"
                " are from there",
                "49 more refused Cell links from 127.0.0.5 in the last 0 s"
                " (one line per source every 60 s)",
            ],
        )

    def test_connections_beyond_the_cap_are_refused(self) -> None:
        first, second = self.accept(), self.accept()
        self.assertIsNotNone(first)
        self.assertIsNotNone(second)
        self.assertIsNone(self.accept())
        self.assertEqual((self.factory.handshaking(), self.factory.refused), (2, 1))

    def test_a_completed_handshake_frees_its_place(self) -> None:
        first = self.accept()
        assert first is not None
        self.accept()
        first.dataReceived(frame(opened_event(CELL, ServiceType.CELL)))
        self.assertTrue(first.session is not None and first.session.connected)
        self.assertIsNotNone(self.accept())
        self.assertEqual(self.factory.handshaking(), 2)

    def test_an_expired_handshake_frees_its_place(self) -> None:
        self.accept()
        self.accept()
        self.clock.advance(HANDSHAKE_TIMEOUT)
        self.assertEqual(self.factory.handshaking(), 0)
        self.assertIsNotNone(self.accept())


class TurnTests(SynchronousTestCase):
    """A large read is parsed FRAMES_PER_TURN frames at a time, reading paused in between."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.turns = Clock()  # the transport's reactor, apart from the link's timers
        self.handler = RecordingHandler()
        factory = CellLinkFactory(self.handler, self.clock, CORE, lambda transport: CELL)
        self.protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.5", 4000))
        self.transport = ReactorStringTransport(self.turns)
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(frame(opened_event(CELL, ServiceType.CELL)))
        self.sent = [
            Message(id=MessageID.GuestStartedEvent, string_params={ParamKey.Instance: f"g{i}"})
            for i in range(2 * FRAMES_PER_TURN + 5)
        ]

    def received(self) -> list[str]:
        return [m.string_params[ParamKey.Instance] for m in self.handler.messages]

    def test_a_large_read_is_parsed_over_several_turns_in_order(self) -> None:
        stream = b"".join(frame(m) for m in self.sent)
        self.protocol.dataReceived(stream[:-3])  # the last frame arrives in two reads
        self.assertEqual(len(self.handler.messages), FRAMES_PER_TURN)
        self.assertEqual(self.transport.producerState, "paused")
        self.protocol.dataReceived(stream[-3:])  # queued behind the pending turn
        self.assertEqual(len(self.handler.messages), FRAMES_PER_TURN)
        self.assertEqual(len(self.turns.getDelayedCalls()), 1)
        self.turns.advance(0)  # Clock runs the turns this one schedules too
        self.assertEqual(self.handler.messages, self.sent)
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(self.turns.getDelayedCalls(), [])

    def test_exactly_one_turn_of_frames_needs_no_second_turn(self) -> None:
        self.protocol.dataReceived(b"".join(frame(m) for m in self.sent[:FRAMES_PER_TURN]))
        self.assertEqual(self.handler.messages, self.sent[:FRAMES_PER_TURN])
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(self.turns.getDelayedCalls(), [])

    def test_connection_lost_between_turns_delivers_nothing_more(self) -> None:
        self.protocol.dataReceived(b"".join(frame(m) for m in self.sent))
        self.protocol.connectionLost(None)
        self.assertEqual(self.turns.getDelayedCalls(), [])
        self.assertEqual(len(self.handler.messages), FRAMES_PER_TURN)
        self.assertEqual(self.handler.events[-1], ("closed", CELL, False))

    def test_goodbye_in_a_later_turn_ends_parsing(self) -> None:
        goodbye = Message(id=MessageID.ConnectionClosedEvent)
        stream = b"".join(frame(m) for m in [*self.sent[: FRAMES_PER_TURN + 1], goodbye])
        self.protocol.dataReceived(stream + frame(self.sent[-1]))
        self.turns.advance(0)
        self.assertEqual(self.handler.messages, self.sent[: FRAMES_PER_TURN + 1])
        self.assertEqual(self.handler.events[-1], ("closed", CELL, True))
        self.protocol.dataReceived(frame(self.sent[-1]))
        self.assertEqual(len(self.handler.messages), FRAMES_PER_TURN + 1)

    def test_in_memory_transports_parse_everything_at_once(self) -> None:
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.5", 4000))
        handler = RecordingHandler()
        factory = CellLinkFactory(handler, self.clock, CORE, lambda transport: CELL)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.5", 4000))
        protocol.makeConnection(transport)
        protocol.dataReceived(frame(opened_event(CELL, ServiceType.CELL)))
        stream = b"".join(frame(m) for m in self.sent)
        protocol.dataReceived(stream[:-3])  # the last frame arrives in two reads
        self.assertEqual(handler.messages, self.sent[:-1])
        protocol.dataReceived(stream[-3:])
        self.assertEqual(handler.messages, self.sent)
        self.assertEqual(transport.producerState, "producing")


class PairTests(SynchronousTestCase):
    """Both ends of a link, Core and Cell, connected in memory and driven by one Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.core = RecordingHandler()
        self.cell = RecordingHandler()
        factory = CellLinkFactory(self.core, self.clock, CORE, lambda transport: CELL)
        self.client, self.server, self.pump = connectedServerAndClient(
            lambda: factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 0)),
            lambda: cell_link_protocol(self.cell, self.clock, CELL),
            serverTransportFactory=lambda p: FakeTransport(
                p, isServer=True, peerAddress=IPv4Address("TCP", "127.0.0.1", 40000)
            ),
            greet=False,
        )
        self.pump.flush()

    def run_for(self, seconds: float, pump: IOPump | None) -> None:
        for _ in range(int(seconds * 10)):
            self.clock.advance(0.1)
            if pump is not None:
                pump.flush()

    def session(self, protocol: FramedLinkProtocol) -> LinkSession:
        assert protocol.session is not None
        return protocol.session

    def test_both_sides_connect(self) -> None:
        self.assertEqual(self.core.events, [("connected", CELL, "127.0.0.1")])
        self.assertEqual([e[:2] for e in self.cell.events], [("connected", CORE)])

    def test_a_minute_of_keepalives(self) -> None:
        self.run_for(60, self.pump)
        self.assertEqual(len(self.core.events), 1)
        self.assertEqual(len(self.cell.events), 1)
        self.assertEqual(self.core.messages, [])

    def test_silent_network_disconnects_both(self) -> None:
        """Nothing crosses: both ends lose and then disconnect each other by the clock."""
        self.run_for(DISCONNECT_AFTER + 0.1, None)
        self.assertEqual([e[0] for e in self.core.events], ["connected", "lost", "closed"])
        self.assertEqual([e[0] for e in self.cell.events], ["connected", "lost", "closed"])
        self.assertIs(self.core.events[-1][2], False)

    def test_cell_stops_gracefully(self) -> None:
        self.session(self.client).close()
        self.pump.flush()
        self.assertEqual(self.core.events[-1], ("closed", CELL, True))
        self.assertEqual(self.cell.events[-1][::2], ("closed", False))

    def test_request_and_reply(self) -> None:
        request = Message(id=MessageID.CreateGuestRequest, from_session=11)
        self.session(self.server).send(request)
        self.pump.flush()
        self.assertEqual(self.cell.messages, [request])
        self.assertEqual(self.cell.messages[0].sender, CORE)


class IdentifyFailureTests(SynchronousTestCase):
    def test_identify_error_refuses_link(self) -> None:
        """A transport whose certificate cannot be read is refused, not crashed on."""
        handler = RecordingHandler()

        def broken(transport: ITransport) -> str | None:
            raise AttributeError("no getPeerCertificate on a plain TCP transport")

        protocol = CellLinkFactory(handler, Clock(), CORE, broken).buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(frame(opened_event(CELL, ServiceType.CELL)))
        self.assertTrue(transport.disconnected)
        self.assertEqual(handler.events, [])
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)
