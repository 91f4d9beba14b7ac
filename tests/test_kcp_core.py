"""The KCP link as part of Core: in the service tree beside the TLS link, advertised first by
discovery, switched off by ``kcp_link``, robust to garbage through the composed Core, and a
silent pool Cell shown offline before its link times out."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from twisted.application.internet import MulticastServer
from twisted.application.service import MultiService
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from nanocore import model as m
from nanocore.api.app import build_api_resource
from nanocore.api.testing import TEST_CREDENTIALS, APIClient
from nanocore.cluster.cells import STATUS_STALE_AFTER, CellLiveness
from nanocore.cluster.discovery import DiscoveryListener
from nanocore.cluster.kcp.conversation import CMD_PUSH, MAX_DATAGRAM_SIZE
from nanocore.cluster.kcp.fec import TYPE_DATA, DataShards
from nanocore.cluster.transport import DISCONNECT_AFTER, LOST_AFTER
from nanocore.operations.core import Operations
from nanocore.store import Put, Store, UnitOfWork
from tests.corefixtures import LOOPBACK, RunningCore, reactor
from tests.kcpfixtures import KCPFabric

STOCK = "Cell_5254001a2b3c"
OTHER = "Cell_5254001a2b3d"
OURS = "Cell_0a0000000001"


def discovery_of(tree: MultiService) -> DiscoveryListener:
    service = tree.getServiceNamed("discovery")
    assert isinstance(service, MulticastServer)
    listener = service.args[1]
    assert isinstance(listener, DiscoveryListener)
    return listener


def opening(conv: int, data: bytes) -> bytes:
    """The first datagram of a conversation: an FEC data shard holding PUSH sn 0 with ``data``."""
    head = struct.pack("<IBBHIIII", conv, CMD_PUSH, 0, 32, 0, 0, 0, len(data))
    return DataShards().wrap(head + data)


class LinksInTheTreeTests(RunningCore, TestCase):
    def setUp(self) -> None:
        super().setUp()
        self.observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def warnings(self) -> list[str]:
        return [formatEvent(e) for e in self.observer if e["log_level"] is LogLevel.warn]

    async def test_a_stock_cell_and_ours_link_join_pools_and_are_told_goodbye(self) -> None:
        tree = await self.start()
        kcp_port, tls_port = self.link_port(tree, "kcp-link"), self.link_port(tree)
        advertised = discovery_of(tree).advertised()
        self.assertEqual(
            [(e.type, e.protocol, e.address, e.port) for e in advertised],
            [("core", "kcp", LOOPBACK, kcp_port), ("core", "tls", LOOPBACK, tls_port)],
        )
        [warning] = [w for w in self.warnings() if "(KCP)" in w]
        self.assertIn(f"{LOOPBACK}:{kcp_port}", warning)
        self.assertIn('"kcp_link": false', warning)

        stock = self.link_cell(tree, STOCK, wire="kcp")
        ours = self.link_cell(tree, OURS)
        await stock.connected()
        await ours.connected()
        unallocated = await self.api(tree, "GET", "/compute_pool_cells/")
        self.assertEqual(
            sorted((entry["name"], entry["address"]) for entry in unallocated),
            [(OURS, LOOPBACK), (STOCK, LOOPBACK)],
        )
        for name in (STOCK, OURS):
            await self.api(tree, "POST", f"/compute_pool_cells/default/{name}")
        members = await self.api(tree, "GET", "/compute_pool_cells/default")
        self.assertEqual(
            sorted((m["name"], m["alive"]) for m in members), [(OURS, True), (STOCK, True)]
        )
        status = await self.api(tree, "GET", "/compute_pool_status/default")
        self.assertEqual(status["max_cpu"], 8)

        await tree.stopService()
        self.assertIsNone(stock.link, "the KCP Cell was told goodbye before the store closed")
        self.assertIsNone(ours.link)

    async def test_kcp_link_off_serves_tls_only_and_holds_its_udp_port(self) -> None:
        self.configure(kcp_link=False)
        tree = await self.start()
        self.assertNotIn("kcp-link", [child.name for child in tree])
        tls_port = self.link_port(tree)
        [entry] = discovery_of(tree).advertised()
        self.assertEqual((entry.protocol, entry.port), ("tls", tls_port))
        # A stock Cell would dial that number over UDP: nobody else may take it.
        with self.assertRaises(CannotListenError):
            reactor.listenUDP(tls_port, DatagramProtocol(), interface=LOOPBACK)
        self.assertEqual([w for w in self.warnings() if "KCP" in w], [])
        await tree.stopService()
        again = reactor.listenUDP(tls_port, DatagramProtocol(), interface=LOOPBACK)
        await again.stopListening()

    async def test_garbage_and_a_flood_drop_only_what_they_hit(self) -> None:
        """Malformed FEC headers and KCP segments, ill-typed and non-object documents, and a
        flood from one address, all at Core's KCP port: Core keeps running, and every Cell
        that behaves keeps working, on both wires."""
        tree = await self.start()
        stock = self.link_cell(tree, STOCK, wire="kcp")
        ours = self.link_cell(tree, OURS)
        await stock.connected()
        await ours.connected()

        core = (LOOPBACK, self.link_port(tree, "kcp-link"))
        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(attacker.close)
        attacker.bind((LOOPBACK, 0))
        ill_typed = b'{"id":196866,"string_params":{"0":"Cell_x"},"uint_params":{"1":-1}}'
        for datagram in (
            b"\x00\x01",  # shorter than an FEC header
            struct.pack("<IHH", 0, 0xF3, 2),  # unknown FEC flag
            struct.pack("<IHH", 0, TYPE_DATA, 999) + b"x" * 30,  # size that does not match
            DataShards().wrap(b"\x07" * 40),  # a KCP segment ikcp refuses
            b"\x00" * (MAX_DATAGRAM_SIZE + 1),  # larger than kcp-go ever sends
            opening(0xBAD1, ill_typed),  # a handshake a Go peer could not decode
            opening(0xBAD2, b"[1,2,3]"),  # a document that is not an object
        ):
            attacker.sendto(datagram, core)
        flooder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(flooder.close)
        flooder.bind((LOOPBACK, 0))
        flooder.setblocking(False)
        junk = opening(0xF10D, b"{" * 200)
        sent = 0
        for _ in range(20_000):
            try:
                flooder.sendto(junk, core)
                sent += 1
            except BlockingIOError:
                continue
        self.assertGreater(sent, 1000)

        # Everything that behaves still works: a request through the API to each Cell.
        for name in (STOCK, OURS):
            await self.api(tree, "POST", f"/compute_pool_cells/default/{name}")
        members = await self.api(tree, "GET", "/compute_pool_cells/default")
        self.assertEqual(
            sorted((m["name"], m["alive"]) for m in members), [(OURS, True), (STOCK, True)]
        )
        self.assertTrue(tree.running)
        # What anyone can cause is said once per kind and source, then counted (at stop here).
        await tree.stopService()
        warnings = "\n".join(self.warnings())
        self.assertIn("KCP dropped datagram from", warnings)
        self.assertIn("3 more malformed KCP datagrams from 127.0.0.1", warnings)
        self.assertIn("dropping link (unnamed) (127.0.0.1): malformed frame", warnings)
        self.assertIn("1 more dropped handshakes from 127.0.0.1", warnings)


class SilentPoolCellTests(TestCase):
    """A pool Cell whose host vanishes without a goodbye: offline at its status report timeout
    (as Nano shows it, 10-15 s), before the keepalive disconnect at 15 s. On a Clock, over the
    in-memory KCP network, through the real registry, operations, store and API."""

    async def test_a_silent_pool_cell_is_offline_before_it_is_disconnected(self) -> None:
        fabric = KCPFabric()
        fabric.clock.advance(1_714_529_472.0)  # signed API dates need a real-looking clock
        store = await Store.open(Path(self.mktemp()), reactor)
        self.addCleanup(store.close)
        await store.commit(UnitOfWork.of(Put(m.ComputeCell(name=STOCK, pool="default"))))
        operations = Operations(store, fabric.clock, cells=fabric.registry)
        api = APIClient(
            build_api_resource(operations, TEST_CREDENTIALS, fabric.clock), fabric.clock
        )

        async def online() -> list[int]:
            data = (await api.get("/compute_pool_status/default")).data
            cells: list[int] = data["cells"]
            return cells

        address = ("10.0.0.7", 40007)
        fabric.dial(STOCK, address)
        fabric.dial(OTHER, ("10.0.0.8", 40008))
        fabric.run(4.0)  # handshakes, and reports every 2 s
        self.assertEqual(await online(), [0, 1])

        fabric.network.cut.add(address)  # silent from now: no goodbye, no report, no keepalive
        silent_since = fabric.clock.seconds()
        offline_after: float | None = None
        while fabric.registry.state(STOCK) is not CellLiveness.DISCONNECTED:
            fabric.run(0.5)
            if offline_after is None and await online() == [1, 0]:
                offline_after = fabric.clock.seconds() - silent_since
                self.assertIsNot(fabric.registry.state(STOCK), CellLiveness.DISCONNECTED)
            self.assertLess(fabric.clock.seconds() - silent_since, 20.0)
        disconnected_after = fabric.clock.seconds() - silent_since
        assert offline_after is not None
        # Its last frame came at most 2 s before the silence (a report every 2 s): its link is
        # lost 9 s after that frame, its report stale 10 s after it; either shows it offline,
        # seconds before the disconnect 15 s after that frame.
        self.assertLessEqual(offline_after, min(LOST_AFTER, STATUS_STALE_AFTER) + 0.5)
        self.assertGreaterEqual(disconnected_after - offline_after, 4.0)
        self.assertLessEqual(disconnected_after, DISCONNECT_AFTER + 0.5)
        self.assertEqual(fabric.registry.state(OTHER), CellLiveness.ALIVE)
