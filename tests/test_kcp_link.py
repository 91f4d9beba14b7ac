"""The Cell link over KCP: the same sessions and registry as over TLS, names from the handshake."""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from nanocore.cluster.cells import CellLiveness
from nanocore.cluster.kcp.conversation import CMD_ACK, CMD_PUSH, KCPConversation
from nanocore.cluster.kcp.dialer import KCPDialer
from nanocore.cluster.kcp.fec import DataShards
from nanocore.cluster.kcp.link import PROOF_TIMEOUT, NameGuard
from nanocore.cluster.message import Message, MessageError, MessageID, ParamKey, encode
from nanocore.cluster.transport import (
    DISCONNECT_AFTER,
    KEEPALIVE_INTERVAL,
    LOST_AFTER,
    LinkHandler,
    LinkState,
    ServiceType,
    opened_event,
)
from nanocore.testing.cluster import Waiter
from nanocore.testing.fakecell import Fault
from tests.kcpfixtures import CORE_ADDRESS, CORE_NAME, KCPFabric, lossy
from tests.test_transport import RecordingHandler

CELL, ADDRESS = "Cell_5254001a2b3c", ("10.0.0.20", 40001)
OTHER, OTHER_ADDRESS = "Cell_5254001a2b3d", ("10.0.0.21", 40002)
CMD_WASK = 83
SPOOFED_CONV = 0x5B00F


def segment(
    cmd: int,
    *,
    ts: int = 0,
    sn: int = 0,
    una: int = 0,
    data: bytes = b"",
    conv: int = SPOOFED_CONV,
) -> bytes:
    """One KCP segment of the spoofer's conversation."""
    header = struct.pack("<IBBHIIII", conv, cmd, 0, 32, ts & 0xFFFFFFFF, sn, una, len(data))
    return header + data


def opening(name: str, conv: int = SPOOFED_CONV) -> bytes:
    """The first segment of a conversation: a Cell's handshake claiming ``name``."""
    return segment(CMD_PUSH, data=encode(opened_event(name, ServiceType.CELL)), conv=conv)


def storage_request(name: str, payload: str = "") -> Message:
    return Message(
        id=MessageID.QueryCellStorageRequest,
        string_params={ParamKey.Cell: name, ParamKey.Data: payload},
    )


class LinkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.fabric = KCPFabric()
        self.waiter = Waiter()
        self.fabric.registry.subscribe(self.waiter)
        self.available: list[tuple[str, str]] = []
        self.waiter.cell_available = lambda name, address: self.available.append((name, address))  # type: ignore[method-assign]

    def test_handshake_both_ways_names_the_cell_by_its_claim(self) -> None:
        cell = self.fabric.dial(CELL, ADDRESS)
        self.fabric.settle()
        link = self.fabric.registry.link(CELL)
        assert link is not None and cell.link is not None
        self.assertEqual((link.name, link.address, link.verified), (CELL, ADDRESS[0], False))
        self.assertEqual(cell.link.name, CORE_NAME)
        self.assertEqual(self.available, [(CELL, ADDRESS[0])])
        self.assertEqual(self.fabric.registry.state(CELL), CellLiveness.ALIVE)  # its first report

    def test_request_and_status_go_through_the_shared_registry(self) -> None:
        self.fabric.dial(CELL, ADDRESS)
        self.fabric.settle()
        d = self.fabric.registry.request(CELL, storage_request(CELL))
        self.fabric.settle()
        reply = self.successResultOf(d)
        self.assertEqual(reply.id, MessageID.QueryCellStorageResponse)
        self.assertEqual(reply.sender, CELL)
        status = self.fabric.registry.status(CELL)
        assert status is not None
        self.assertEqual(status.cores, 8)

    def test_keepalives_flow_both_ways_and_keep_the_link_up(self) -> None:
        cell = self.fabric.dial(CELL, ADDRESS)
        self.fabric.settle()
        conversation = self.fabric.endpoint.conversations[ADDRESS]
        before = len(self.fabric.network.ports[ADDRESS].written)
        self.fabric.run(4 * KEEPALIVE_INTERVAL)
        self.assertEqual(self.fabric.registry.state(CELL), CellLiveness.ALIVE)
        assert cell.link is not None
        self.assertIs(cell.link.state, LinkState.CONNECTED)
        self.assertFalse(conversation.released)
        self.assertGreater(len(self.fabric.network.ports[ADDRESS].written), before)

    def test_silent_cell_is_lost_at_9_s_and_disconnected_at_15_s(self) -> None:
        self.fabric.dial(CELL, ADDRESS)
        self.fabric.settle()
        self.fabric.network.cut.add(ADDRESS)  # the Cell's host vanishes without a word
        self.fabric.clock.advance(LOST_AFTER - 0.01)
        self.assertEqual(self.fabric.registry.state(CELL), CellLiveness.ALIVE)
        self.fabric.clock.advance(0.02)
        self.assertEqual(self.fabric.registry.state(CELL), CellLiveness.LOST)
        self.fabric.clock.advance(DISCONNECT_AFTER - LOST_AFTER)
        self.assertEqual(self.fabric.registry.state(CELL), CellLiveness.DISCONNECTED)
        self.assertEqual(self.waiter.disconnected, {CELL: False})
        self.fabric.clock.advance(5.0)  # the goodbye nobody acknowledges is given up
        self.assertEqual(self.fabric.endpoint.conversations, {})
        self.assertEqual(self.fabric.clock.getDelayedCalls(), [])

    def test_cell_that_says_goodbye_is_disconnected_gracefully(self) -> None:
        cell = self.fabric.dial(CELL, ADDRESS)
        self.fabric.settle()
        cell.close()
        self.fabric.settle()
        self.assertEqual(self.waiter.disconnected, {CELL: True})
        self.assertEqual(self.fabric.endpoint.conversations, {})

    def test_large_messages_both_ways_through_10_percent_loss_each_way(self) -> None:
        fabric = KCPFabric(lose=lossy(0.10))
        fabric.dial(CELL, ADDRESS)
        fabric.run(3.0)
        self.assertEqual(fabric.registry.state(CELL), CellLiveness.ALIVE)
        payload = "p" * 200_000
        cell = fabric.cells[CELL]
        cell._handlers[MessageID.QueryCellStorageRequest] = lambda request: [  # type: ignore[attr-defined]
            cell._success(request, string_array_params={ParamKey.Data: (payload,)})  # type: ignore[attr-defined]
        ]
        d = fabric.registry.request(CELL, storage_request(CELL, payload))
        fabric.run(9.0)
        reply = self.successResultOf(d)
        self.assertEqual(reply.string_array_params[ParamKey.Data], (payload,))
        self.assertEqual(cell.received[-1].string_params[ParamKey.Data], payload)
        self.assertGreater(fabric.network.lost, 10)
        self.assertEqual(fabric.registry.state(CELL), CellLiveness.ALIVE)

    def test_handshake_of_the_wrong_service_type_is_refused(self) -> None:
        def claim_to_be_a_core(conversation: KCPConversation) -> None:
            conversation.write_frame(encode(opened_event(CELL, ServiceType.CORE)))

        self.fabric.network.bind(
            KCPDialer(CORE_ADDRESS, self.fabric.clock, claim_to_be_a_core), ADDRESS
        )
        self.fabric.settle()
        self.assertIsNone(self.fabric.registry.state(CELL))
        self.assertEqual(self.fabric.endpoint.conversations, {})
        self.assertEqual(self.available, [])


class NameTakeoverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.fabric = KCPFabric()
        self.observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.waiter = Waiter()
        self.fabric.registry.subscribe(self.waiter)
        self.available: list[str] = []
        self.waiter.cell_available = lambda name, address: self.available.append(name)  # type: ignore[method-assign]
        self.fabric.dial(CELL, ADDRESS)
        self.fabric.settle()

    def test_name_held_from_another_address_is_not_taken_over(self) -> None:
        impostor = self.fabric.dial(CELL, OTHER_ADDRESS)
        self.fabric.settle()
        self.assertEqual(self.fabric.registry.address(CELL), ADDRESS[0])
        self.assertEqual(self.fabric.registry.state(CELL), CellLiveness.ALIVE)
        self.assertNotIn(OTHER_ADDRESS, self.fabric.endpoint.conversations)
        self.assertIsNot(self.fabric.registry.link(CELL), impostor.link)
        self.assertTrue(any("is linked from" in str(e.get("reason", "")) for e in self.observer))
        d = self.fabric.registry.request(CELL, storage_request(CELL))
        self.fabric.settle()
        self.assertEqual(self.successResultOf(d).sender, CELL)

    def test_refused_claims_are_logged_once_per_source_and_never_as_connected(self) -> None:
        """A Cell whose name another host holds dials again and again: each refusal was two
        lines ("connected", then "dropping"), for as long as it kept trying."""
        for port in range(5):
            self.fabric.dial(CELL, (OTHER_ADDRESS[0], 41000 + port))
            self.fabric.settle()
        lines = [formatEvent(e) for e in self.observer]
        refusals = [line for line in lines if "is linked from" in line]
        self.assertEqual(len(refusals), 1)
        claims = [line for line in lines if f"({OTHER_ADDRESS[0]}) connected" in line]
        self.assertEqual(claims, [])
        self.assertEqual(self.fabric.registry.address(CELL), ADDRESS[0])

    def test_the_name_is_free_again_once_its_link_is_gone(self) -> None:
        self.fabric.cells[CELL].close()
        self.fabric.settle()
        self.fabric.dial(CELL, OTHER_ADDRESS)
        self.fabric.settle()
        self.assertEqual(self.fabric.registry.address(CELL), OTHER_ADDRESS[0])
        self.assertEqual(self.fabric.registry.state(CELL), CellLiveness.ALIVE)

    def test_same_host_new_port_is_the_cell_reconnecting(self) -> None:
        self.fabric.network.ports.pop(ADDRESS)  # restarted: the old port is gone
        self.fabric.dial(CELL, (ADDRESS[0], 40999))
        self.fabric.settle()
        link = self.fabric.registry.link(CELL)
        assert link is not None
        self.assertEqual(self.fabric.endpoint.conversations[(ADDRESS[0], 40999)].session, link)
        self.assertEqual(self.fabric.registry.state(CELL), CellLiveness.ALIVE)

    def spoof(self, source: tuple[str, int], *segments: bytes) -> None:
        """One datagram with ``source`` as its source address, from someone who never sees
        what Core sends there."""
        self.fabric.network.inject(source, CORE_ADDRESS, DataShards().wrap(b"".join(segments)))

    def test_a_spoofed_claim_from_the_cells_own_address_takes_nothing(self) -> None:
        """One datagram with the Cell's address as its source and a handshake in its name:
        Core's answer goes to the real address, whose owner never acknowledges it, so the
        claim is never handed on (it took the name at once: QA pass 9, finding 4)."""
        live = self.fabric.registry.link(CELL)
        before = len(self.observer)
        self.spoof((ADDRESS[0], 40999), opening(CELL))
        self.fabric.run(PROOF_TIMEOUT - 0.1)
        self.assertIs(self.fabric.registry.link(CELL), live)
        # Nor is it logged as the Cell connecting (one line per spoofed datagram: QA 13, N3).
        lines = [formatEvent(e) for e in list(self.observer)[before:]]
        self.assertEqual([line for line in lines if "connected" in line], [])
        d = self.fabric.registry.request(CELL, storage_request(CELL))
        self.fabric.settle()
        self.assertEqual(self.successResultOf(d).sender, CELL)
        self.fabric.run(0.2)  # refused at the deadline
        self.assertNotIn((ADDRESS[0], 40999), self.fabric.endpoint.conversations)
        self.assertTrue(any("in 5 s" in str(e.get("reason", "")) for e in self.observer))

    def test_a_blind_acknowledgement_proves_nothing(self) -> None:
        """The spoofer follows its claim with what an acknowledgement of Core's answer must
        look like, but for its timestamp: ``una`` alone (it took the name: the first fix of
        finding 4 waited for nothing more), then an ACK stamped with Core's clock."""
        live = self.fabric.registry.link(CELL)
        source, now = (ADDRESS[0], 40999), int(self.fabric.clock.seconds() * 1000)
        self.spoof(source, opening(CELL))
        self.fabric.settle()  # Core answers at ``now`` by its clock: the spoofer's best guess
        self.spoof(source, segment(CMD_WASK, ts=now, sn=0, una=100))
        self.fabric.settle()
        self.assertIs(self.fabric.registry.link(CELL), live)
        self.assertIn(source, self.fabric.endpoint.conversations)  # still to prove itself
        self.spoof(source, segment(CMD_ACK, ts=now, sn=0, una=1))
        self.fabric.settle()
        self.assertNotIn(source, self.fabric.endpoint.conversations)  # forged: dropped
        self.assertIs(self.fabric.registry.link(CELL), live)
        self.assertTrue(any("never sent" in str(e.get("reason", "")) for e in self.observer))

    def test_spoofed_claims_that_end_unproven_are_logged_per_source(self) -> None:
        """Openings from the live Cell's own address and port, each superseding the last
        unproven one, and claims ended by a forged acknowledgement: each was logged "link
        <Cell> dropped: the connection ended without a goodbye", one line per datagram, while
        the live link was untouched (QA pass 15, F1)."""
        live = self.fabric.registry.link(CELL)
        before = len(self.observer)
        for conv in range(1, 41):
            self.spoof(ADDRESS, opening(CELL, conv))
            self.fabric.settle()
        for conv in range(100, 110):
            self.spoof(("10.0.0.77", 40000 + conv), opening(OTHER, conv))
            self.fabric.settle()
            self.spoof(("10.0.0.77", 40000 + conv), segment(CMD_ACK, sn=0, ts=1, conv=conv))
            self.fabric.settle()
        lines = [formatEvent(e) for e in list(self.observer)[before:]]
        self.assertEqual([line for line in lines if "dropped" in line], [])
        ended = [line for line in lines if "ended before it proved its address" in line]
        forged = [line for line in lines if "a timestamp Core never sent" in line]
        self.assertEqual((len(ended), len(forged)), (1, 1), lines)  # per source a minute
        self.assertEqual(len(lines), 2, lines)
        self.assertIs(self.fabric.registry.link(CELL), live)
        self.assertEqual(self.fabric.registry.state(CELL), CellLiveness.ALIVE)

    def test_a_proven_cells_link_ending_is_still_logged_each_time(self) -> None:
        """The per-source log is for claims never handed on: a Cell's own link that ends
        without a goodbye is said, every time, however many share its address."""
        ports = (40100, 40101, 40102)
        for index, port in enumerate(ports):
            self.fabric.dial(f"Cell_5254001a2c{index:02d}", (ADDRESS[0], port))
            self.fabric.settle()
        before = len(self.observer)
        for port in ports:
            self.fabric.endpoint.conversations[(ADDRESS[0], port)].abort()  # the wire is gone
        lines = [formatEvent(e) for e in list(self.observer)[before:]]
        dropped = [line for line in lines if "ended without a goodbye" in line]
        self.assertEqual(len(dropped), 3, lines)

    def test_a_spoofed_new_cell_is_never_added(self) -> None:
        """A name nobody holds is no less a claim: from a source that never answers, no Cell
        appears (it did, unallocated, until its silence disconnected it)."""
        self.spoof(("10.0.0.99", 40000), opening(OTHER))
        self.fabric.run(PROOF_TIMEOUT + 0.1)
        self.assertIsNone(self.fabric.registry.state(OTHER))
        self.assertEqual((self.available, self.waiter.disconnected), ([CELL], {}))
        self.assertEqual(list(self.fabric.endpoint.conversations), [ADDRESS])

    def test_what_a_new_cell_sends_before_it_is_proven_waits_for_the_proof(self) -> None:
        """A Cell may send right behind its handshake, before it could acknowledge Core's
        answer: that is held, not lost, and handed on once the Cell is proven."""
        events: list[tuple[str, int]] = []
        self.waiter.cell_event = lambda name, message: events.append((name, message.id))  # type: ignore[method-assign]
        self.fabric.network.cut.add(CORE_ADDRESS)  # Core's answer does not get through yet
        self.fabric.dial(OTHER, OTHER_ADDRESS)
        self.fabric.settle()
        conversation = self.fabric.dialers[OTHER].conversation
        assert conversation is not None
        early = Message(id=MessageID.GuestStartedEvent, string_params={ParamKey.Instance: "g1"})
        conversation.write_frame(encode(early))
        self.fabric.run(0.5)
        self.assertIsNone(self.fabric.registry.state(OTHER))
        self.fabric.network.cut.clear()
        self.fabric.run(2.0)  # Core resends its answer, acknowledged this time
        self.assertEqual(self.fabric.registry.state(OTHER), CellLiveness.ALIVE)
        self.assertEqual(events, [(OTHER, MessageID.GuestStartedEvent)])


class NameGuardTests(SynchronousTestCase):
    """The guard alone, over recorded links."""

    class Link:
        def __init__(self, name: str, address: str, *, verified: bool = False) -> None:
            self.name, self.address, self.verified = name, address, verified
            self.connected = True
            self.errors: list[str] = []
            self.wire = self  # its own KCP conversation, for the guard
            self.proof: Deferred[None] = succeed(None)

        def when_proven(self) -> Deferred[None]:
            return self.proof

        def refuse(self, reason: str) -> None:
            self.errors.append(reason)

    def setUp(self) -> None:
        self.clock = Clock()
        self.handler = RecordingHandler()
        self.holders: dict[str, Any] = {}
        self.guard = NameGuard(self.handler, self.holders.get, self.clock)

    def test_the_guard_is_a_link_handler(self) -> None:
        self.assertTrue(verifyObject(LinkHandler, self.guard))

    def test_only_refused_links_are_hidden_from_the_handler(self) -> None:
        guard, handler = self.guard, self.handler
        first, second = self.Link(CELL, "10.0.0.1"), self.Link(CELL, "10.0.0.2")
        guard.link_connected(first)  # type: ignore[arg-type]
        self.holders[CELL] = first
        guard.link_connected(second)  # type: ignore[arg-type]
        for event in ("link_lost", "link_recovered"):
            getattr(guard, event)(second)
            getattr(guard, event)(first)
        guard.message_received(second, Message(id=1))  # type: ignore[arg-type]
        guard.link_closed(second, False)  # type: ignore[arg-type]
        self.assertEqual(
            handler.events,
            [("connected", CELL, "10.0.0.1"), ("lost", CELL, None), ("recovered", CELL, None)],
        )
        self.assertEqual(handler.messages, [])
        self.assertEqual((guard.refused, len(second.errors)), (1, 1))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_every_claim_is_heard_of_once_its_claimant_is_proven(self) -> None:
        guard, handler = self.guard, self.handler
        self.holders[CELL] = self.Link(CELL, "10.0.0.1")
        for claim in (self.Link(CELL, "10.0.0.1"), self.Link(OTHER, "10.0.0.2")):
            # The Cell's own address (a restart), and a name nobody holds (a new Cell).
            claim.proof = Deferred()
            guard.link_connected(claim)  # type: ignore[arg-type]
            guard.message_received(claim, Message(id=1))  # type: ignore[arg-type]
            guard.link_lost(claim)  # type: ignore[arg-type]
            self.assertEqual((handler.events, handler.messages), ([], []))
            claim.proof.callback(None)
            self.assertEqual(handler.events, [("connected", claim.name, claim.address)])
            self.assertEqual(self.clock.getDelayedCalls(), [])
            handler.events.clear()

    def test_a_claim_gone_before_it_was_proven_is_never_heard_of(self) -> None:
        gone = self.Link(OTHER, "10.0.0.2")
        gone.proof = Deferred()
        self.guard.link_connected(gone)  # type: ignore[arg-type]
        gone.connected = False
        self.guard.link_closed(gone, False)  # type: ignore[arg-type]
        gone.proof.callback(None)
        self.assertEqual(self.handler.events, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_claim_not_proven_in_time_is_refused(self) -> None:
        silent = self.Link(OTHER, "10.0.0.2")
        silent.proof = Deferred()
        self.guard.link_connected(silent)  # type: ignore[arg-type]
        self.clock.advance(PROOF_TIMEOUT - 0.01)
        self.assertEqual(silent.errors, [])
        self.clock.advance(0.01)
        self.assertEqual(len(silent.errors), 1)
        self.assertIn("nothing shows that it receives", silent.errors[0])
        silent.proof.callback(None)  # too late
        self.guard.link_closed(silent, False)  # type: ignore[arg-type]
        self.assertEqual((self.handler.events, self.guard.refused), ([], 1))

    def test_a_claim_never_takes_a_name_a_certificate_holds(self) -> None:
        """From the same address too: any process on a TLS Cell's host could claim its name
        over KCP, and each claim would knock the real Cell off (its guests shown lost)."""
        guard, handler = self.guard, self.handler
        self.holders[CELL] = self.Link(CELL, "10.0.0.1", verified=True)
        claim = self.Link(CELL, "10.0.0.1")
        guard.link_connected(claim)  # type: ignore[arg-type]
        self.assertEqual(handler.events, [])
        self.assertEqual(claim.errors, [f"name {CELL!r} is held by its certificate's TLS link"])
        # A Cell that restarted over KCP from its address takes over its own KCP link.
        self.holders[CELL] = self.Link(CELL, "10.0.0.1")
        again = self.Link(CELL, "10.0.0.1")
        guard.link_connected(again)  # type: ignore[arg-type]
        self.assertEqual((handler.events, again.errors), ([("connected", CELL, "10.0.0.1")], []))


class StrictTypingTests(SynchronousTestCase):
    """cell-protocol §3.3 both ways over KCP: nothing a Go peer could not decode is sent, and
    what real Cells send is read."""

    def setUp(self) -> None:
        self.fabric = KCPFabric()
        self.cell = self.fabric.dial(CELL, ADDRESS)
        self.fabric.settle()

    def core_sent(self) -> bytes:
        return b"".join(datagram for datagram, _ in self.fabric.core_port.written)

    def test_cores_handshake_carries_its_zero_service_type(self) -> None:
        self.assertIn(b'"uint_params":{"1":0}', self.core_sent())

    def test_what_a_go_peer_could_not_decode_is_never_sent(self) -> None:
        before = len(self.fabric.core_port.written)
        for bad in ({1: -1}, {1: 1 << 64}, {1: True}, {1: 1.0}):
            with self.assertRaises(MessageError):
                self.fabric.registry.send(
                    CELL, Message(id=MessageID.ModifyCoreRequest, uint_params=bad)
                )
        self.fabric.settle()
        self.assertEqual(len(self.fabric.core_port.written), before)

    def test_null_values_and_arrays_left_out_are_read_as_go_reads_them(self) -> None:
        self.cell.inject(MessageID.QueryCellStorageRequest, Fault(drop=True))
        d = self.fabric.registry.request(CELL, storage_request(CELL))
        self.fabric.settle()
        token = self.cell.received[-1].from_session
        conversation = self.fabric.dialers[CELL].conversation
        assert conversation is not None
        conversation.write_frame(
            b'{"id":%d,"success":true,"to":%d,"string_params":{"28":null},'
            b'"uint_params":{"2":null},"uint_array_params":null,"string_array_params":{"30":null}}'
            % (MessageID.QueryCellStorageResponse, token)
        )
        self.fabric.settle()
        reply = self.successResultOf(d)
        self.assertEqual(reply.string_params, {ParamKey.Mode: ""})
        self.assertEqual(reply.uint_params, {ParamKey.Core: 0})
        self.assertEqual(reply.string_array_params, {ParamKey.Path: ()})
        self.assertEqual(self.fabric.registry.state(CELL), CellLiveness.ALIVE)
