"""Core's KCP port: one conversation per address, kcp-go's demultiplexing, garbage and floods."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from nanocore.cluster.cells import CellLiveness
from nanocore.cluster.kcp.conversation import CMD_PUSH, KCPConversation
from nanocore.cluster.kcp.endpoint import KCPEndpoint
from nanocore.cluster.kcp.fec import TYPE_PARITY, DataShards
from nanocore.cluster.kcp.link import PROOF_TIMEOUT
from nanocore.cluster.message import Message, MessageID, ParamKey, encode
from nanocore.cluster.transport import ServiceType, opened_event
from tests.kcpfixtures import CORE_ADDRESS, KCPFabric

CMD_ACK = 82
CELL_A, ADDRESS_A = "Cell_00000000000a", ("10.0.0.10", 40001)
CELL_B, ADDRESS_B = "Cell_00000000000b", ("10.0.0.11", 40002)


def segment(
    conv: int, cmd: int = CMD_PUSH, sn: int = 0, data: bytes = b"", length: Any = None
) -> bytes:
    declared = len(data) if length is None else length
    return struct.pack("<IBBHIIII", conv, cmd, 0, 32, 0, sn, 0, declared) + data


def shard(payload: bytes) -> bytes:
    return DataShards().wrap(payload)


def storage_request(name: str) -> Message:
    return Message(id=MessageID.QueryCellStorageRequest, string_params={ParamKey.Cell: name})


class DemultiplexTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.fabric = KCPFabric()

    def answers(self, name: str) -> bool:
        """A request from Core to ``name`` comes back answered."""
        d = self.fabric.registry.request(name, storage_request(name))
        self.fabric.settle()
        return self.successResultOf(d).id == MessageID.QueryCellStorageResponse

    def test_one_conversation_per_address_with_the_dialers_conv(self) -> None:
        self.fabric.dial(CELL_A, ADDRESS_A, conv=0xA1)
        self.fabric.dial(CELL_B, ADDRESS_B, conv=0xB2)
        self.fabric.settle()
        conversations = self.fabric.endpoint.conversations
        self.assertEqual(
            {a: c.conv for a, c in conversations.items()}, {ADDRESS_A: 0xA1, ADDRESS_B: 0xB2}
        )
        self.assertEqual(self.fabric.registry.address(CELL_A), ADDRESS_A[0])
        self.assertTrue(self.answers(CELL_A))
        self.assertTrue(self.answers(CELL_B))

    def test_only_an_opening_data_shard_creates_a_conversation(self) -> None:
        inject = self.fabric.network.inject
        parity = struct.pack("<IH", 10, TYPE_PARITY) + segment(5)
        for datagram in (
            parity,
            shard(segment(5, sn=3, data=b"{}")),  # mid-stream: a conversation we do not know
            shard(segment(5, cmd=CMD_ACK)),
        ):
            inject(ADDRESS_A, CORE_ADDRESS, datagram)
        self.assertEqual(self.fabric.endpoint.conversations, {})
        inject(ADDRESS_A, CORE_ADDRESS, shard(segment(5, data=b"{")))
        self.assertEqual(list(self.fabric.endpoint.conversations), [ADDRESS_A])

    def test_new_conv_with_sn_0_replaces_the_conversation_of_that_address(self) -> None:
        self.fabric.dial(CELL_A, ADDRESS_A, conv=0xA1)
        self.fabric.settle()
        old = self.fabric.endpoint.conversations[ADDRESS_A]
        self.fabric.network.ports.pop(ADDRESS_A)  # the Cell restarts on the same port
        self.fabric.dial(CELL_A, ADDRESS_A, conv=0xA2)
        self.fabric.settle()
        self.assertTrue(old.released)
        self.assertEqual(self.fabric.endpoint.conversations[ADDRESS_A].conv, 0xA2)
        self.assertEqual(self.fabric.registry.state(CELL_A), CellLiveness.ALIVE)
        self.assertTrue(self.answers(CELL_A))

    def test_a_spoofed_new_conv_from_a_live_cells_port_ends_nothing(self) -> None:
        """One datagram with a Cell's exact address and port as its source, opening a new
        conv: kcp-go's rule replaced the Cell's conversation at once, so its link dropped
        without a goodbye and, in a pool with failover, its guests were started on another
        Cell while it still ran them (QA pass 13, N1). The newcomer runs beside it until it
        proves it receives there, which a spoofer never does."""
        fabric = self.fabric
        fabric.dial(CELL_A, ADDRESS_A, conv=0xA1)
        fabric.settle()
        live, link = fabric.endpoint.conversations[ADDRESS_A], fabric.registry.link(CELL_A)
        handshake = encode(opened_event("Cell_0000000000ff", ServiceType.CELL))
        fabric.network.inject(ADDRESS_A, CORE_ADDRESS, shard(segment(0xBAD, data=handshake)))
        fabric.settle()
        self.assertIs(fabric.endpoint.conversations[ADDRESS_A], live)
        self.assertEqual(fabric.endpoint.challengers[ADDRESS_A].conv, 0xBAD)
        fabric.run(PROOF_TIMEOUT + 0.1)
        self.assertEqual(fabric.endpoint.challengers, {})
        self.assertIs(fabric.registry.link(CELL_A), link)
        self.assertFalse(live.released)
        self.assertEqual(fabric.registry.state(CELL_A), CellLiveness.ALIVE)
        self.assertTrue(self.answers(CELL_A))

    def test_a_proven_newcomer_refused_its_name_replaces_nothing(self) -> None:
        fabric = self.fabric
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        fabric.dial(CELL_A, ADDRESS_A, conv=0xA1)
        fabric.dial(CELL_B, ADDRESS_B, conv=0xB2)
        fabric.settle()
        live = fabric.endpoint.conversations[ADDRESS_A]
        fabric.network.ports.pop(ADDRESS_A)
        fabric.dial(CELL_B, ADDRESS_A, conv=0xA2)  # B's name, held from B's address
        fabric.settle()
        self.assertEqual(fabric.endpoint.challengers, {})
        self.assertIs(fabric.endpoint.conversations[ADDRESS_A], live)
        self.assertEqual([e for e in observer if "failed" in e.get("log_format", "")], [])
        self.assertEqual(fabric.registry.address(CELL_B), ADDRESS_B[0])

    def test_other_conv_mid_stream_from_a_known_address_is_ignored(self) -> None:
        self.fabric.dial(CELL_A, ADDRESS_A, conv=0xA1)
        self.fabric.settle()
        before = self.fabric.endpoint.dropped
        self.fabric.network.inject(ADDRESS_A, CORE_ADDRESS, shard(segment(0xBAD, sn=9, data=b"{")))
        self.assertEqual(self.fabric.endpoint.conversations[ADDRESS_A].conv, 0xA1)
        self.assertEqual(self.fabric.endpoint.dropped, before + 1)
        self.assertTrue(self.answers(CELL_A))


class GarbageTests(SynchronousTestCase):
    """Malformed datagrams are dropped and counted; the conversations they hit keep working."""

    def setUp(self) -> None:
        self.fabric = KCPFabric()
        self.fabric.dial(CELL_A, ADDRESS_A, conv=0xA1)
        self.fabric.dial(CELL_B, ADDRESS_B, conv=0xB2)
        self.fabric.settle()
        self.observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def still_working(self) -> None:
        for name in (CELL_A, CELL_B):
            d = self.fabric.registry.request(name, storage_request(name))
            self.fabric.settle()
            self.assertEqual(self.successResultOf(d).id, MessageID.QueryCellStorageResponse)
            self.assertEqual(self.fabric.registry.state(name), CellLiveness.ALIVE)

    def test_malformed_fec_headers_and_segments(self) -> None:
        fec_ok = shard(segment(0xA1, data=b"x"))
        cases = {
            "empty": b"",
            "short": b"\xf1",
            "unknown flag": fec_ok[:4] + b"\xf3\x00" + fec_ok[6:],
            "size lies": fec_ok[:6] + b"\xff\x00" + fec_ok[8:],
            "no segment": shard(b"\x01\x02"),
            "oversized": shard(segment(0xA1, data=b"x" * 1600)),
            "segment longer than datagram": shard(segment(0xA1, sn=1, data=b"ab", length=500)),
            "negative length": shard(segment(0xA1, sn=1, length=0xFFFFFFFF)),
            "unknown command": shard(segment(0xA1, cmd=99, sn=1)),
            "second segment of another conv": shard(
                segment(0xA1, cmd=CMD_ACK) + segment(0xBEEF, cmd=CMD_ACK)
            ),
        }
        for name, datagram in cases.items():
            with self.subTest(name):
                before = self.fabric.endpoint.dropped
                self.fabric.network.inject(ADDRESS_A, CORE_ADDRESS, datagram)
                self.assertEqual(self.fabric.endpoint.dropped, before + 1)
        self.still_working()
        self.assertEqual(self.fabric.endpoint.conversations[ADDRESS_A].refused, 4)

    @settings(max_examples=300)
    @given(st.binary(max_size=1600), st.sampled_from([ADDRESS_A, ("10.9.9.9", 9)]))
    def test_random_bytes_never_raise(self, datagram: bytes, source: tuple[str, int]) -> None:
        self.fabric.network.inject(source, CORE_ADDRESS, datagram)
        self.fabric.network.inject(source, CORE_ADDRESS, shard(datagram))

    def test_ill_typed_json_drops_that_cell_only(self) -> None:
        cell = self.fabric.cells[CELL_A]
        assert cell.link is not None
        cell.link._wire.write_frame(b'{"id":328450,"uint_params":{"2":-1}}')  # type: ignore[attr-defined]
        self.fabric.settle()
        self.assertEqual(self.fabric.registry.state(CELL_A), CellLiveness.DISCONNECTED)
        self.assertNotIn(ADDRESS_A, self.fabric.endpoint.conversations)
        d = self.fabric.registry.request(CELL_B, storage_request(CELL_B))
        self.fabric.settle()
        self.successResultOf(d)

    def test_a_fault_of_ours_is_logged_and_drops_only_that_conversation(self) -> None:
        conversation = self.fabric.endpoint.conversations[ADDRESS_A]

        def broken(payload: bytes) -> bool:
            raise RuntimeError("bug")

        conversation.accepts = broken  # type: ignore[method-assign]
        self.fabric.network.inject(ADDRESS_A, CORE_ADDRESS, shard(segment(0xA1, cmd=CMD_ACK)))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(conversation.released)
        d = self.fabric.registry.request(CELL_B, storage_request(CELL_B))
        self.fabric.settle()
        self.successResultOf(d)


class FloodTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def test_flood_from_one_address_is_cut_to_its_budget(self) -> None:
        fabric = KCPFabric(datagrams_per_second=1000, datagram_burst=100)
        fabric.dial(CELL_A, ADDRESS_A, conv=0xA1)
        fabric.dial(CELL_B, ADDRESS_B, conv=0xB2)
        fabric.settle()
        flooded = fabric.endpoint.conversations[ADDRESS_A]
        ack = shard(segment(0xA1, cmd=CMD_ACK))
        for _ in range(20_000):
            fabric.network.inject(ADDRESS_A, CORE_ADDRESS, ack)
        self.assertGreater(flooded.over_budget, 19_800)
        d = fabric.registry.request(CELL_B, storage_request(CELL_B))
        fabric.settle()
        self.successResultOf(d)
        fabric.clock.advance(1.0)  # the flooder's own link recovers once the flood stops
        d = fabric.registry.request(CELL_A, storage_request(CELL_A))
        fabric.run(1.0)
        self.successResultOf(d)

    def test_handshaking_conversations_are_bounded(self) -> None:
        fabric = KCPFabric(handshaking=8)
        fabric.dial(CELL_A, ADDRESS_A)
        fabric.settle()
        for port in range(100):
            opening = shard(segment(port + 1, data=b'{"id":'))  # never completes
            fabric.network.inject(("10.6.6.6", 1000 + port), CORE_ADDRESS, opening)
        self.assertEqual(len(fabric.endpoint.conversations), 1 + 8)
        self.assertIn("too many peers", self.observer[-1]["log_format"])
        fabric.dial(CELL_B, ADDRESS_B)
        fabric.settle()
        self.assertIsNone(fabric.registry.state(CELL_B))
        fabric.run(10.5)  # the handshake timeout frees their places (and gives up Cell B's)
        self.assertEqual(set(fabric.endpoint.conversations), {ADDRESS_A})
        fabric.dial(CELL_B, ("10.0.0.11", 40003))
        fabric.settle()
        self.assertEqual(fabric.registry.state(CELL_B), CellLiveness.ALIVE)
        self.assertEqual(fabric.registry.state(CELL_A), CellLiveness.ALIVE)

    def test_one_source_holds_a_share_of_the_handshaking_places(self) -> None:
        """Well-formed claims from one address that never prove themselves hold a place each
        for 5 s: from one source they filled every place, and no Cell could link while they
        kept coming (QA pass 13, N5)."""
        fabric = KCPFabric(handshaking=8, handshaking_per_source=2)
        for port in range(100):
            handshake = encode(opened_event(f"Cell_{port:012x}", ServiceType.CELL))
            opening = shard(segment(port + 1, data=handshake))
            fabric.network.inject(("10.6.6.6", 1000 + port), CORE_ADDRESS, opening)
        fabric.settle()
        self.assertEqual(len(fabric.endpoint.conversations), 2)
        fabric.dial(CELL_B, ADDRESS_B)
        fabric.settle()
        self.assertEqual(fabric.registry.state(CELL_B), CellLiveness.ALIVE)

    def test_openings_are_rate_limited(self) -> None:
        fabric = KCPFabric(openings_per_second=10, opening_burst=20)
        fabric.dial(CELL_A, ADDRESS_A)
        fabric.settle()
        for port in range(100):  # one address dialing again and again, and many addresses
            fabric.network.inject(ADDRESS_A, CORE_ADDRESS, shard(segment(port + 1, data=b"{")))
            fabric.network.inject(("10.6.6.6", port), CORE_ADDRESS, shard(segment(1, data=b"{")))
        # Cell A took one of the 20 openings of hosts never proven, 19 new addresses the rest;
        # A's address, proven, has a budget of its own (its 20 replaced each other).
        self.assertEqual(len(fabric.endpoint.conversations), 1 + 19)
        self.assertEqual(len(fabric.endpoint.challengers), 1)
        self.assertIn("too many openings", self.observer[-1]["log_format"])
        fabric.run(10.5)  # the junk times out, the budget refills
        fabric.dial(CELL_B, ADDRESS_B)
        fabric.settle()
        self.assertEqual(fabric.registry.state(CELL_B), CellLiveness.ALIVE)

    def flood_of_strangers(self, fabric: KCPFabric, count: int) -> None:
        """Well-formed claims from ``count`` addresses never proven, which never prove."""
        for index in range(count):
            handshake = encode(opened_event(f"Cell_f{index:011x}", ServiceType.CELL))
            source = (f"10.7.{index // 250}.{index % 250 + 1}", 5000 + index)
            fabric.network.inject(source, CORE_ADDRESS, shard(segment(index + 1, data=handshake)))
        fabric.settle()

    def test_a_restarted_cell_takes_a_place_from_spoofed_openings_of_many_addresses(self) -> None:
        """Openings from many spoofed addresses hold every handshaking place, 5 s each: a
        Cell restarted meanwhile waited 15-55 s for one, past the disconnect, and its guests
        were failed over while it ran them (QA pass 15, F2). Its host was proven before, so
        it takes the oldest stranger's place and its budget is not the flood's."""
        fabric = KCPFabric(handshaking=8, handshaking_per_source=4, opening_burst=40)
        fabric.dial(CELL_A, ADDRESS_A)
        fabric.settle()
        self.flood_of_strangers(fabric, 60)  # spends the strangers' budget too
        self.assertEqual(len(fabric.endpoint.conversations), 1 + 8)
        fabric.network.ports.pop(ADDRESS_A)  # Cell A restarts: a new port on its host
        restarted = (ADDRESS_A[0], 40999)
        fabric.dial(CELL_A, restarted)
        fabric.settle()
        self.assertEqual(fabric.registry.state(CELL_A), CellLiveness.ALIVE)
        link = fabric.registry.link(CELL_A)
        assert link is not None
        self.assertEqual(link.wire.peer, restarted)  # type: ignore[attr-defined]
        strangers = [a for a in fabric.endpoint.conversations if a[0].startswith("10.7.")]
        self.assertEqual(len(strangers), 7)  # the oldest gave way
        self.assertNotIn(("10.7.0.1", 5000), strangers)
        formats = [event.get("log_format", "") for event in self.observer]
        self.assertEqual(sum("went to a returning host" in f for f in formats), 1)
        # A Cell never seen before waits for the flood's places to free up, as before.
        fabric.dial(CELL_B, ADDRESS_B)
        fabric.settle()
        self.assertIsNone(fabric.registry.state(CELL_B))

    def test_a_returning_host_holds_its_share_of_places_and_no_more(self) -> None:
        """A spoofer using a proven host's address gets that host's share of the places,
        taken from strangers, and no more; it never takes a proven host's place."""
        fabric = KCPFabric(handshaking=8, handshaking_per_source=3, opening_burst=100)
        cell_c, address_c = "Cell_00000000000c", ("10.0.0.12", 40003)
        for name, address in ((CELL_A, ADDRESS_A), (CELL_B, ADDRESS_B), (cell_c, address_c)):
            fabric.dial(name, address)
        fabric.settle()
        self.flood_of_strangers(fabric, 8)

        def unproven_claims(host: str, conv: int) -> None:
            for port in range(20):  # claims from a proven host that never prove themselves
                handshake = encode(opened_event(f"Cell_e{conv + port:011x}", ServiceType.CELL))
                opening = shard(segment(conv + port, data=handshake))
                fabric.network.inject((host, 6000 + port), CORE_ADDRESS, opening)
            fabric.settle()

        unproven_claims(ADDRESS_A[0], 0x100)
        hosts = [address[0] for address in fabric.endpoint.conversations]
        self.assertEqual(hosts.count(ADDRESS_A[0]), 1 + 3)  # its share, from 3 strangers
        self.assertEqual(len(hosts), 3 + 8)
        unproven_claims(ADDRESS_B[0], 0x200)  # B's share: 3 more strangers give way
        unproven_claims(address_c[0], 0x300)  # the last 2 strangers, then no place
        hosts = [address[0] for address in fabric.endpoint.conversations]
        counts = [hosts.count(host[0]) for host in (ADDRESS_A, ADDRESS_B, address_c)]
        self.assertEqual((counts, len(hosts)), ([1 + 3, 1 + 3, 1 + 2], 3 + 8))

    def test_malformed_openings_take_no_share_of_the_budget(self) -> None:
        """One sender's junk openings (a length that lies) are refused before they cost an
        opening: a Cell dialing meanwhile links at once (QA pass 9, finding 3)."""
        fabric = KCPFabric(openings_per_second=10, opening_burst=20)
        junk = shard(segment(7, data=b"{", length=900))
        for _ in range(1_000):
            fabric.network.inject(("10.6.6.6", 6000), CORE_ADDRESS, junk)
        self.assertEqual(fabric.endpoint.conversations, {})
        self.assertIn("malformed opening", self.observer[-1]["log_format"])
        fabric.dial(CELL_B, ADDRESS_B)
        fabric.settle()
        self.assertEqual(fabric.registry.state(CELL_B), CellLiveness.ALIVE)

    def test_a_malformed_opening_does_not_end_the_conversation_of_its_address(self) -> None:
        fabric = KCPFabric()
        fabric.dial(CELL_A, ADDRESS_A, conv=0xA1)
        fabric.settle()
        live = fabric.endpoint.conversations[ADDRESS_A]
        junk = shard(segment(0xBAD, data=b"{", length=900))
        fabric.network.inject(ADDRESS_A, CORE_ADDRESS, junk)
        self.assertIs(fabric.endpoint.conversations[ADDRESS_A], live)
        self.assertFalse(live.released)
        d = fabric.registry.request(CELL_A, storage_request(CELL_A))
        fabric.settle()
        self.assertEqual(self.successResultOf(d).id, MessageID.QueryCellStorageResponse)

    def test_conversations_are_bounded(self) -> None:
        fabric = KCPFabric(conversations=2)
        fabric.dial(CELL_A, ADDRESS_A)
        fabric.dial(CELL_B, ADDRESS_B)
        fabric.settle()
        fabric.network.inject(("10.6.6.6", 1), CORE_ADDRESS, shard(segment(1, data=b"{")))
        self.assertEqual(set(fabric.endpoint.conversations), {ADDRESS_A, ADDRESS_B})


class LifecycleTests(SynchronousTestCase):
    def test_close_all_says_goodbye_and_releases_every_conversation(self) -> None:
        fabric = KCPFabric()
        fabric.dial(CELL_A, ADDRESS_A)
        fabric.dial(CELL_B, ADDRESS_B)
        fabric.settle()
        gone: list[tuple[str, bool]] = []
        for name in (CELL_A, CELL_B):
            fabric.cells[name].link_closed = lambda link, gracefully, n=name: gone.append(  # type: ignore[method-assign]
                (n, gracefully)
            )
        closing = fabric.endpoint.close_all()
        fabric.settle()
        self.successResultOf(closing)
        self.assertEqual(sorted(gone), [(CELL_A, True), (CELL_B, True)])
        self.assertEqual(fabric.endpoint.conversations, {})

    def test_stopping_the_port_aborts_every_conversation(self) -> None:
        fabric = KCPFabric()
        fabric.dial(CELL_A, ADDRESS_A)
        fabric.settle()
        fabric.core_port.stopListening()
        self.assertEqual(fabric.endpoint.conversations, {})
        self.assertEqual(fabric.registry.state(CELL_A), CellLiveness.DISCONNECTED)

    def test_attach_is_called_once_per_conversation(self) -> None:
        attached: list[KCPConversation] = []
        fabric = KCPFabric()
        endpoint = KCPEndpoint(fabric.clock, attached.append)
        fabric.network.ports.pop(CORE_ADDRESS)
        fabric.network.bind(endpoint, CORE_ADDRESS)
        fabric.dial(CELL_A, ADDRESS_A, conv=0xA1)
        fabric.settle()
        fabric.clock.advance(1.0)
        self.assertEqual([c.conv for c in attached], [0xA1])
        endpoint.stopProtocol()
