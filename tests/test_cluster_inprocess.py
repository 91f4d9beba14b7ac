"""A hundred FakeCells over real loopback links: connect, report, get noticed when one dies.

Every fabric test runs on both of Core's wires (TLS, and KCP as stock Cells link): the cases
are written once, in a mixin, and each wire is a subclass. Also the TLS edge: a client without
a certificate from the cluster CA never becomes a Cell.
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from nanocore.cluster.cells import CellLiveness, CellObserver
from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.cluster.transport import DISCONNECT_AFTER, FRAMES_PER_TURN, LOST_AFTER
from nanocore.pki import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    CertificateAuthority,
    client_tls_options,
    create_ca,
    issue_cell_certificate,
    issue_server_certificate,
    write_pair,
)
from nanocore.testing import simtap
from nanocore.testing.cluster import InProcessCluster, Wire
from nanocore.testing.fakecell import FakeCell, create_guest_request
from nanocore.testing.guests import GuestState
from tests import test_discovery_netns

reactor: Any = _reactor
CELLS = 100


@functools.cache
def cluster_ca() -> CertificateAuthority:
    """One CA for the whole module: issuing from it is cheap, creating it less so."""
    return create_ca()


class ClusterCase(TestCase):
    """A test case on an in-process cluster of ``wire``; subclasses pick the wire."""

    wire: Wire = "tls"

    def cluster_of(self, **options: Any) -> InProcessCluster:
        return InProcessCluster(reactor, cluster_ca(), wire=self.wire, **options)


class FabricCases:
    """What every wire must do; a subclass per wire (with ``ClusterCase``) runs them."""

    def setUp(self) -> Deferred[None]:
        self.ca = cluster_ca()
        self.cluster = self.cluster_of(timeout=5.0)
        self.addCleanup(lambda: ensureDeferred(self.cluster.stop()))
        return ensureDeferred(self.cluster.listen())

    async def test_hundred_cells(self) -> None:
        names = {f"Cell_{i:012x}" for i in range(CELLS)}
        for name in sorted(names):
            self.cluster.add_cell(name)
        await self.cluster.waiter.until_reported(names)
        registry = self.cluster.registry
        self.assertEqual(set(registry.names()), names)
        self.assertEqual({registry.state(n) for n in names}, {CellLiveness.ALIVE})
        self.assertEqual({registry.address(n) for n in names}, {"127.0.0.1"})

        # A request/reply round trip to one of them over its link.
        leaving = sorted(names)[7]
        reply = await registry.request(
            leaving,
            Message(id=MessageID.QueryCellStorageRequest, string_params={ParamKey.Cell: leaving}),
        )
        self.assertTrue(reply.success)
        self.assertEqual(reply.sender, leaving)

        # One leaves: Core notices, gracefully, and the others stay.
        noticed = self.cluster.waiter.until_disconnected(leaving)
        await self.cluster.remove_cell(leaving)
        self.assertIs(await noticed.addTimeout(DISCONNECT_AFTER, reactor), True)
        self.assertIs(registry.state(leaving), CellLiveness.DISCONNECTED)
        self.assertEqual(sum(registry.state(n) is CellLiveness.ALIVE for n in names), CELLS - 1)

    async def test_graceful_stop_is_seen_as_graceful(self) -> None:
        cell = self.cluster.add_cell("Cell_graceful")
        await cell.connected()
        noticed = self.cluster.waiter.until_disconnected("Cell_graceful")
        cell.close()
        self.assertIs(await noticed, True)

    async def test_status_report_carries_capacity(self) -> None:
        cell = self.cluster.add_cell("Cell_big", usage=80.0)
        await self.cluster.waiter.until_reported({"Cell_big"})
        status = self.cluster.registry.status("Cell_big")
        assert status is not None
        self.assertEqual((status.cores, status.usage), (cell.capacity.cores, 80.0))

    async def test_a_window_of_requests_over_one_link(self) -> None:
        """Hundreds in flight at once: both ends parse their reads over several reactor turns."""
        cell = self.cluster.add_cell("Cell_busy")
        await self.cluster.waiter.until_reported({"Cell_busy"})
        requests = [
            Message(id=MessageID.GetAuthRequest, string_params={ParamKey.Guest: f"g{i}"})
            for i in range(20 * FRAMES_PER_TURN)
        ]
        results = await DeferredList(
            [self.cluster.registry.request("Cell_busy", r) for r in requests], consumeErrors=True
        )
        errors = [r for ok, r in results if not ok]
        self.assertEqual(len(errors), len(requests))  # no such guests: each answered, in error
        self.assertEqual({type(e.value).__name__ for e in errors}, {"CellError"})
        self.assertEqual(
            [m.string_params[ParamKey.Guest] for m in cell.received if m.id == requests[0].id],
            [r.string_params[ParamKey.Guest] for r in requests],
        )
        self.assertEqual(self.cluster.registry.state("Cell_busy"), CellLiveness.ALIVE)

    async def test_simulator_service(self) -> None:
        """``twistd nanocell-sim`` composes Cells that link to Core and report."""
        cert_dir = Path(self.mktemp())
        write_pair(self.ca, cert_dir / CA_CERT_FILE, cert_dir / CA_KEY_FILE)
        host, port = self.cluster.address
        options = simtap.Options()
        core = f"{host}:{port}"
        options.parseOptions(
            ["--link", self.wire, "--cert-dir", str(cert_dir), "--core", core, "--count", "5"]
        )
        service = simtap.makeService(options, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        await self.cluster.waiter.until_reported(set(options.cell_names()))
        status = self.cluster.registry.status("Cell_sim000004")
        assert status is not None
        self.assertEqual(status.cores, 8)

    async def test_a_stopped_simulator_says_goodbye_for_each_cell(self) -> None:
        """Stopping ``nanocell-sim`` is no crash: Core hears a goodbye from every Cell (else
        it would fail their guests over)."""
        cert_dir = Path(self.mktemp())
        write_pair(self.ca, cert_dir / CA_CERT_FILE, cert_dir / CA_KEY_FILE)
        host, port = self.cluster.address
        options = simtap.Options()
        options.parseOptions(["--link", self.wire, "--cert-dir", str(cert_dir),
                              "--core", f"{host}:{port}", "--count", "2"])  # fmt: skip
        service = simtap.makeService(options, reactor)
        service.startService()
        names = options.cell_names()
        await self.cluster.waiter.until_reported(set(names))
        gone = [self.cluster.waiter.until_disconnected(name) for name in names]
        await service.stopService()
        self.assertEqual([await d for d in gone], [True, True])

    async def test_cell_reconnects_after_core_drops_it(self) -> None:
        """Like a real Cell (§2.9) it dials again; Core sees it available once more."""
        lookups: list[int] = []

        def locate() -> Deferred[tuple[str, int]]:
            lookups.append(1)
            return succeed(self.cluster.address)

        cell = self.cluster.add_cell("Cell_back", locate=locate, reconnect_delay=0.05)
        first = await cell.connected()
        await self.cluster.waiter.until_reported({"Cell_back"})  # Core has it too by then
        core_side = self.cluster.registry.link("Cell_back")
        assert core_side is not None
        dropped = self.cluster.waiter.until_disconnected("Cell_back")
        core_side.close()
        self.assertIs(await dropped, False)
        self.cluster.waiter.reported.discard("Cell_back")
        await self.cluster.waiter.until_reported({"Cell_back"})
        second = self.cluster.registry.link("Cell_back")
        self.assertIsNotNone(second)
        self.assertIsNot(second, core_side)
        self.assertIsNot(cell.link, first)
        self.assertIs(self.cluster.registry.state("Cell_back"), CellLiveness.ALIVE)
        self.assertEqual(len(lookups), 2)  # Core is looked up again for the new connection


class TLSFabricTests(FabricCases, ClusterCase):
    wire = "tls"

    async def test_a_killed_cell_is_noticed_at_once(self) -> None:
        """Its TCP connection drops with no goodbye: not graceful, and known at once. (Over
        KCP there is no connection: only silence tells, see the frozen Cell tests.)"""
        for name in ("Cell_victim", "Cell_witness"):
            self.cluster.add_cell(name)
        await self.cluster.waiter.until_reported({"Cell_victim", "Cell_witness"})
        noticed = self.cluster.waiter.until_disconnected("Cell_victim")
        noticed.addTimeout(DISCONNECT_AFTER, reactor)
        self.cluster.cells.pop("Cell_victim").kill()
        await self.cluster.services.pop("Cell_victim").stopService()
        self.assertIs(await noticed, False)
        registry = self.cluster.registry
        self.assertIs(registry.state("Cell_victim"), CellLiveness.DISCONNECTED)
        self.assertIs(registry.state("Cell_witness"), CellLiveness.ALIVE)

    async def refused(self, tls: Any, name: str) -> None:
        """Connect with ``tls``; the connection must close and no Cell must appear."""
        cell = FakeCell(name, reactor)
        host, port = self.cluster.address
        endpoint = wrapClientTLS(tls, TCP4ClientEndpoint(reactor, host, port))
        protocol = await connectProtocol(endpoint, cell.protocol())
        await protocol.when_closed().addTimeout(10, reactor)
        self.assertIsNone(cell.link)
        self.assertEqual(list(self.cluster.registry.names()), [])

    async def test_client_without_certificate_refused(self) -> None:
        await self.refused(client_tls_options(self.ca, "127.0.0.1"), "Cell_anonymous")

    async def test_certificate_from_another_ca_refused(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        stranger = create_ca()
        tls = client_tls_options(
            self.ca, "127.0.0.1", issue_cell_certificate(stranger, "Cell_stranger")
        )
        await self.refused(tls, "Cell_stranger")
        # Said, once a minute per source: a Cell refused by TLS was dropped without a word.
        said = [formatEvent(e) for e in events if "TLS handshake" in formatEvent(e)]
        self.assertEqual(len(said), 1, said)
        self.assertTrue(
            said[0].startswith("a Cell link from 127.0.0.1 failed its TLS handshake: "), said
        )
        self.assertIn("by Core's clock", said[0])

    async def test_server_certificate_is_not_a_cell(self) -> None:
        """A CA-issued certificate that is not a Cell's (no cell unit) carries no name."""
        tls = client_tls_options(
            self.ca, "127.0.0.1", issue_server_certificate(self.ca, "127.0.0.1")
        )
        await self.refused(tls, "Cell_impostor")

    async def test_name_comes_from_certificate(self) -> None:
        """A valid certificate for one Cell cannot be used to claim another name."""
        tls = client_tls_options(self.ca, "127.0.0.1", issue_cell_certificate(self.ca, "Cell_a"))
        await self.refused(tls, "Cell_b")

    async def test_bad_frames_close_only_that_link(self) -> None:
        """An oversized and a malformed frame each drop their own link; Core serves the rest."""
        healthy = self.cluster.add_cell("Cell_healthy")
        await healthy.connected()
        for name, garbage in (
            ("Cell_oversized", b"\xff\xff\xff\xff"),
            ("Cell_malformed", b"\x00\x00\x00\x05{nope"),
        ):
            bad = FakeCell(name, reactor)
            host, port = self.cluster.address
            tls = client_tls_options(self.ca, host, issue_cell_certificate(self.ca, name))
            endpoint = wrapClientTLS(tls, TCP4ClientEndpoint(reactor, host, port))
            protocol = await connectProtocol(endpoint, bad.protocol())
            await bad.connected()
            noticed = self.cluster.waiter.until_disconnected(name)
            assert protocol.transport is not None
            protocol.transport.write(garbage)
            self.assertIs(await noticed, False)
            await protocol.when_closed()
        reply = await self.cluster.registry.request(
            "Cell_healthy",
            Message(id=MessageID.QueryCellStorageRequest, string_params={ParamKey.Cell: "x"}),
        )
        self.assertTrue(reply.success)
        self.assertIs(self.cluster.registry.state("Cell_healthy"), CellLiveness.ALIVE)


class KCPFabricTests(FabricCases, ClusterCase):
    wire = "kcp"


class FrozenCellCases:
    """A Cell that stops talking but keeps its link open (a hung host), over each real wire.

    Core's timers run on a Clock so the 9 s and 15 s thresholds are checked exactly and quickly;
    the frozen Cell's own timers run on a Clock that never moves, so it sends nothing more.
    """

    async def test_silent_cell_lost_then_disconnected(self) -> None:
        core_clock = Clock()
        cluster = self.cluster_of(clock=core_clock)
        await cluster.listen()
        self.addCleanup(lambda: ensureDeferred(cluster.stop()))
        cell = cluster.add_cell("Cell_frozen", clock=Clock())
        await cluster.waiter.until_reported({"Cell_frozen"})
        registry = cluster.registry
        core_clock.advance(LOST_AFTER - 0.1)
        self.assertIs(registry.state("Cell_frozen"), CellLiveness.ALIVE)
        core_clock.advance(0.1)
        self.assertIs(registry.state("Cell_frozen"), CellLiveness.LOST)
        noticed = cluster.waiter.until_disconnected("Cell_frozen")
        core_clock.advance(DISCONNECT_AFTER - LOST_AFTER - 0.1)
        self.assertNoResult(noticed)
        core_clock.advance(0.1)
        self.assertIs(self.successResultOf(noticed), False)
        self.assertIs(registry.state("Cell_frozen"), CellLiveness.DISCONNECTED)
        # Core said goodbye on the still-open connection; the Cell heard it.
        owner = cluster.factory or cluster.endpoint
        assert owner is not None
        await owner.close_all()
        await cluster.remove_cell("Cell_frozen")
        self.assertIsNone(cell.link)


class TLSFrozenCellTests(FrozenCellCases, ClusterCase):
    wire = "tls"


class KCPFrozenCellTests(FrozenCellCases, ClusterCase):
    wire = "kcp"


class DiscoveredFabricCases:
    """FakeCells find Core by real multicast discovery, pick their wire's entry and link: all
    inside a network namespace the test creates (only ``lo``), skipped with the reason where
    impossible."""

    timeout = 60

    async def test_cells_discover_core_and_link(self) -> None:
        namespace = await test_discovery_netns.RealMulticastTests._namespace(self)  # type: ignore[arg-type]
        ip = shutil.which("ip")
        assert ip is not None
        out, err, code = await test_discovery_netns._run(
            ip, "netns", "exec", namespace, sys.executable, "-m", "tests.netns_fabric_probe",
            self.wire,
        )  # fmt: skip
        self.assertEqual(code, 0, err.decode(errors="replace"))
        result = json.loads(out.decode().strip().splitlines()[-1])
        self.assertEqual(set(result["states"].values()), {"alive"})
        self.assertEqual(len(result["states"]), 3)
        self.assertEqual(result["addresses"], ["127.0.0.1"])
        self.assertGreaterEqual(result["echoes"], 1)


class TLSDiscoveredFabricTests(DiscoveredFabricCases, ClusterCase):
    wire = "tls"


class KCPDiscoveredFabricTests(DiscoveredFabricCases, ClusterCase):
    wire = "kcp"


@implementer(CellObserver)
class EventWaiter:
    """Fires a Deferred when a Cell sends an event with a given id."""

    def __init__(self) -> None:
        self.waiting: dict[int, Deferred[Message]] = {}

    def until(self, message_id: int) -> Deferred[Message]:
        d: Deferred[Message] = Deferred()
        self.waiting[message_id] = d
        return d

    def cell_event(self, name: str, message: Message) -> None:
        d = self.waiting.pop(message.id, None)
        if d is not None:
            d.callback(message)

    def cell_available(self, name: str, address: str) -> None:
        pass

    def cell_status(self, name: str, status: object) -> None:
        pass

    def cell_disconnected(self, name: str, gracefully: bool) -> None:
        pass

    def cell_answered_late(self, name: str, request: Message, reply: Message) -> None:
        pass


class GuestCases:
    async def test_create_guest_and_stop_with_work_pending(self) -> None:
        """A guest is created over the real link; stopping mid-creation leaves no timer behind."""
        cluster = self.cluster_of()
        await cluster.listen()
        self.addCleanup(lambda: ensureDeferred(cluster.stop()))
        events = EventWaiter()
        cluster.registry.subscribe(events)
        cell = cluster.add_cell("Cell_guests", creation_time=0.05)
        await cluster.waiter.until_reported({"Cell_guests"})

        def create(guest: str) -> Deferred[Message]:
            return cluster.registry.request("Cell_guests", create_guest_request(guest))

        created = events.until(MessageID.GuestCreatedEvent)
        reply = await create("guest-1")
        self.assertEqual(reply.string_params[ParamKey.Instance], "guest-1")
        self.assertEqual((await created).string_params[ParamKey.Instance], "guest-1")
        cell._creation_time = 3600.0  # the next creation is still running when the test ends
        await create("guest-2")
        self.assertIs(cell.guests["guest-2"].state, GuestState.CREATING)


class GuestOverTLSTests(GuestCases, ClusterCase):
    wire = "tls"


class GuestOverKCPTests(GuestCases, ClusterCase):
    wire = "kcp"
