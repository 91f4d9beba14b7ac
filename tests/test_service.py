"""The services of a Core on their own, and the whole tree on the real reactor over loopback."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import AlreadyCalledError, CancelledError, Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.testing import EventLoggingObserver, MemoryReactor, MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from nanocore import model
from nanocore.api.client import Signer
from nanocore.api.streams import StreamFront
from nanocore.cluster.cells import CellRegistry
from nanocore.cluster.transactions import Transactions
from nanocore.cluster.transport import CellLinkFactory
from nanocore.services.gate import STARTING, STOPPING, ClosingGate, StartingGate
from nanocore.services.images import ImageSiteService
from nanocore.services.link import (
    LINK_PORTS,
    CellLinkService,
    advertised_together,
    holding,
    listen_first_free,
)
from nanocore.services.listen import ListeningService, PortFile, port_of, read_port
from nanocore.services.order import InOrder, OneShot
from nanocore.services.store import StoreService
from nanocore.store import Put, Store, StoreClosed, UnitOfWork
from nanocore.store.schema import DB_NAME
from nanocore.tap import load_checked_config, site_address
from tests.corefixtures import RunningCore, write_config
from tests.loopbackapi import LOOPBACK, connect_in_memory, exchange

reactor: Any = global_reactor


def failures() -> tuple[list[Failure], Any]:
    """A list, and an `on_failure` callback that appends to it."""
    seen: list[Failure] = []
    return seen, seen.append


class OneShotTests(SynchronousTestCase):
    def test_every_wait_gets_the_result_before_and_after_it_arrives(self) -> None:
        shot: OneShot[int] = OneShot()
        early = shot.wait()
        self.assertNoResult(early)
        shot.resolve(7)
        self.assertEqual(self.successResultOf(early), 7)
        self.assertEqual(self.successResultOf(shot.wait()), 7)

    def test_a_failure_reaches_every_wait(self) -> None:
        shot: OneShot[int] = OneShot()
        early = shot.wait()
        shot.resolve(Failure(ValueError("no")))
        self.failureResultOf(early, ValueError)
        self.failureResultOf(shot.wait(), ValueError)

    def test_cancelling_a_wait_ends_only_that_wait(self) -> None:
        shot: OneShot[int] = OneShot()
        cancelled, kept = shot.wait(), shot.wait()
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        shot.resolve(1)
        self.assertEqual(self.successResultOf(kept), 1)

    def test_it_resolves_once(self) -> None:
        shot: OneShot[int] = OneShot()
        shot.resolve(1)
        self.assertRaises(AlreadyCalledError, shot.resolve, 2)

    def test_then_derives_once_and_carries_failures(self) -> None:
        shot: OneShot[int] = OneShot()
        calls: list[int] = []

        def double(value: int) -> int:
            calls.append(value)
            return value * 2

        derived = shot.then(double)
        broken = shot.then(lambda value: 1 // (value - value))
        shot.resolve(4)
        self.assertEqual(self.successResultOf(derived.wait()), 8)
        self.assertEqual(self.successResultOf(derived.wait()), 8)
        self.assertEqual(calls, [4])
        self.failureResultOf(broken.wait(), ZeroDivisionError)

    def test_peek_is_the_result_once_it_arrived_and_never_a_failure(self) -> None:
        shot: OneShot[int] = OneShot()
        broken: OneShot[int] = OneShot()
        self.assertIsNone(shot.peek())
        shot.resolve(3)
        broken.resolve(Failure(ValueError("no")))
        self.assertEqual(shot.peek(), 3)
        self.assertIsNone(broken.peek())
        self.failureResultOf(broken.wait(), ValueError)


class Recorder(Service):
    """Records its start and stop in a shared journal; stop waits for `release`."""

    def __init__(self, name: str, journal: list[str], fail: bool = False) -> None:
        self.setName(name)
        self.journal = journal
        self.fail = fail
        self.release: Deferred[None] = Deferred()

    def startService(self) -> None:
        super().startService()
        self.journal.append(f"start {self.name}")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.journal.append(f"stop {self.name}")
        if self.fail:
            raise RuntimeError(f"{self.name} cannot stop")
        return self.release.addCallback(lambda _: self.journal.append(f"stopped {self.name}"))


class InOrderTests(SynchronousTestCase):
    def test_children_start_in_order_and_stop_one_at_a_time_in_reverse(self) -> None:
        journal: list[str] = []
        parent = InOrder()
        first, second, third = (Recorder(n, journal) for n in ("first", "second", "third"))
        for child in (first, second, third):
            child.setServiceParent(parent)
        parent.startService()
        self.assertEqual(journal, ["start first", "start second", "start third"])
        del journal[:]

        stopped = parent.stopService()
        self.assertEqual(journal, ["stop third"])
        second.release.callback(None)  # released early: must still wait for third
        self.assertEqual(journal, ["stop third"])
        third.release.callback(None)
        self.assertEqual(
            journal,
            ["stop third", "stopped third", "stop second", "stopped second", "stop first"],
        )
        self.assertNoResult(stopped)
        first.release.callback(None)
        self.successResultOf(stopped)
        self.assertFalse(parent.running)

    def test_a_child_that_fails_to_stop_does_not_keep_the_others_running(self) -> None:
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        journal: list[str] = []
        parent = InOrder()
        first, broken = Recorder("first", journal), Recorder("broken", journal, fail=True)
        first.setServiceParent(parent)
        broken.setServiceParent(parent)
        first.release.callback(None)
        parent.startService()
        self.successResultOf(parent.stopService())
        self.assertIn("stopped first", journal)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(any(e.get("name") == "broken" for e in logged))


class StartingGateTests(SynchronousTestCase):
    def test_answers_503_in_the_envelope_until_the_api_is_ready(self) -> None:
        api: OneShot[IResource] = OneShot()
        gate = StartingGate(api.wait, on_failure=self.fail)
        request = DummyRequest([b""])
        body = gate.render(request)
        self.assertEqual(request.responseCode, 503)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"Retry-After"), [b"1"])
        self.assertEqual(json.loads(body)["message"], STARTING)

        class Target:
            def render(self, request: Any) -> bytes:
                return b"served"

        api.resolve(Target())  # type: ignore[arg-type]
        self.assertEqual(gate.render(DummyRequest([b""])), b"served")

    def test_once_core_stops_new_requests_are_told_so(self) -> None:
        """Not served by operations whose Cells are being let go (QA pass 16: `cell '<c>' is
        not connected` for a request on a kept-alive connection during `nanocore stop`)."""
        api: OneShot[IResource] = OneShot()
        gate = StartingGate(api.wait, on_failure=self.fail)

        class Target:
            def render(self, request: Any) -> bytes:
                return b"served"

        api.resolve(Target())  # type: ignore[arg-type]
        closing = ClosingGate(gate)
        closing.startService()
        self.assertEqual(gate.render(DummyRequest([b""])), b"served")
        closing.stopService()
        request = DummyRequest([b""])
        body = gate.render(request)
        self.assertEqual(request.responseCode, 503)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"Retry-After"), [b"1"])
        self.assertEqual(json.loads(body)["message"], STOPPING)

    def test_an_api_that_cannot_be_built_stops_the_core(self) -> None:
        api: OneShot[IResource] = OneShot()
        seen, on_failure = failures()
        StartingGate(api.wait, on_failure=on_failure)
        api.resolve(Failure(RuntimeError("broken operations")))
        self.assertEqual([f.type for f in seen], [RuntimeError])


class FakePort:
    """A listening port at `number` that records whether it stopped."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.stopped = False

    def getHost(self) -> Any:
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "127.0.0.1", self.number)

    def stopListening(self) -> None:
        self.stopped = True


def busy_until(free: int) -> tuple[list[int], Any]:
    """A `listen(port)` that refuses every port below `free`, and the ports it was asked."""
    asked: list[int] = []

    def listen(number: int) -> IListeningPort:
        asked.append(number)
        if number < free:
            raise CannotListenError("127.0.0.1", number, OSError(98, "Address already in use"))
        return FakePort(number)  # type: ignore[return-value]

    return asked, listen


class ListenFirstFreeTests(SynchronousTestCase):
    def test_takes_the_first_free_port_of_the_range(self) -> None:
        asked, listen = busy_until(5602)
        self.assertEqual(port_of(listen_first_free(LINK_PORTS, listen)), 5602)
        self.assertEqual(asked, [5600, 5601, 5602])

    def test_a_full_range_fails_naming_the_range_and_the_last_refusal(self) -> None:
        _asked, listen = busy_until(6000)
        with self.assertRaises(CannotListenError) as caught:
            listen_first_free(range(5600, 5603), listen, "127.0.0.1")
        error = caught.exception
        self.assertEqual((error.interface, error.port), ("127.0.0.1", "5600-5602"))
        self.assertEqual(error.socketError.port, 5602)
        self.assertIn("127.0.0.1:5600-5602", str(error))


class HoldingTests(SynchronousTestCase):
    """A link's number held on a second transport too (the TLS link without the KCP link)."""

    def test_a_number_taken_on_either_transport_is_skipped(self) -> None:
        tcp_asked, tcp = busy_until(5601)  # TCP 5600 taken
        udp_asked, udp = busy_until(5602)  # UDP 5601 taken too
        opened: list[FakePort] = []

        def listen(number: int) -> IListeningPort:
            port = tcp(number)
            opened.append(port)  # type: ignore[arg-type]
            return port

        both = listen_first_free(LINK_PORTS, holding(listen, udp))
        self.assertEqual(port_of(both), 5602)
        self.assertEqual((tcp_asked, udp_asked), ([5600, 5601, 5602], [5601, 5602]))
        self.assertEqual([(p.number, p.stopped) for p in opened], [(5601, True), (5602, False)])
        self.successResultOf(both.stopListening())
        self.assertTrue(opened[-1].stopped)


class CellLinkServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        registry = CellRegistry(self.reactor, Transactions(self.reactor, 5.0))
        self.links = CellLinkFactory(registry, self.reactor, "Core_test", lambda _: None)
        self.ready: OneShot[object] = OneShot()
        self.failed, on_failure = failures()
        self.asked, listen = busy_until(5601)
        self.service = CellLinkService(
            ports=LINK_PORTS,
            listen=listen,
            links=self.links,
            protocol="tls",
            address="127.0.0.1",
            after=self.ready.wait,
            on_failure=on_failure,
        )

    def test_listens_only_once_the_state_is_ready_and_advertises_that_port(self) -> None:
        self.service.startService()
        self.assertEqual((self.asked, self.service.advertised()), ([], None))
        self.ready.resolve(None)
        entry = self.service.advertised()
        assert entry is not None
        self.assertEqual((entry.type, entry.protocol, entry.address), ("core", "tls", "127.0.0.1"))
        self.assertEqual(entry.port, 5601)
        port = self.service.port
        self.successResultOf(self.service.stopService())
        self.assertTrue(port.stopped)  # type: ignore[union-attr]
        self.assertIsNone(self.service.advertised())

    def test_stopped_before_ready_it_never_listens(self) -> None:
        self.service.startService()
        self.successResultOf(self.service.stopService())
        self.ready.resolve(None)
        self.assertEqual((self.asked, self.failed), ([], []))

    def test_no_free_port_is_logged_and_stops_the_core(self) -> None:
        asked, listen = busy_until(9999)
        service = CellLinkService(
            ports=range(5600, 5602),
            listen=listen,
            links=self.links,
            protocol="tls",
            address="127.0.0.1",
            after=lambda: succeed(None),
            on_failure=self.failed.append,
        )
        service.startService()
        self.assertEqual(asked, [5600, 5601])
        self.assertEqual([f.type for f in self.failed], [CannotListenError])
        self.assertIsNone(service.port)

    def test_stop_closes_every_link_and_waits_until_they_are_gone(self) -> None:
        from twisted.internet.testing import StringTransport

        self.service.startService()
        self.ready.resolve(None)
        connection = self.links.buildProtocol(None)
        assert connection is not None
        transport = StringTransport()
        connection.makeConnection(transport)
        stopping = self.service.stopService()
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(stopping)
        connection.connectionLost(Failure(ConnectionError("closed")))
        self.successResultOf(stopping)

    def test_stopping_says_core_is_leaving_before_any_link_closes(self) -> None:
        """The registry must know the closes are Core's goodbyes before the first one."""
        told: list[str] = []
        links = self.links

        class Watched:
            def close_all(self) -> Deferred[None]:
                told.append("close_all")
                return links.close_all()

        service = CellLinkService(
            ports=LINK_PORTS,
            listen=busy_until(5601)[1],
            links=Watched(),
            protocol="tls",
            address="127.0.0.1",
            after=self.ready.wait,
            on_failure=self.failed.append,
            leaving=lambda: told.append("leaving"),
        )
        service.startService()
        self.ready.resolve(None)
        self.successResultOf(service.stopService())
        self.assertEqual(told, ["leaving", "close_all"])

    def test_links_are_advertised_together_in_order_or_not_at_all(self) -> None:
        _, listen = busy_until(5700)
        kcp = CellLinkService(
            ports=range(5700, 5701),
            listen=listen,
            links=self.links,
            protocol="kcp",
            address="127.0.0.1",
            after=self.ready.wait,
            on_failure=self.failed.append,
        )
        both = advertised_together(kcp, self.service)
        kcp.startService()
        self.service.startService()
        self.assertEqual(both(), ())
        self.ready.resolve(None)
        self.assertEqual([(e.protocol, e.port) for e in both()], [("kcp", 5700), ("tls", 5601)])
        self.successResultOf(kcp.stopService())
        self.assertEqual(both(), ())  # one link gone: a stock Cell must not dial the other
        self.successResultOf(self.service.stopService())

    def test_an_empty_range_is_refused(self) -> None:
        with self.assertRaises(ValueError):
            CellLinkService(
                ports=(),
                listen=lambda number: FakePort(number),  # type: ignore[arg-type,return-value]
                links=self.links,
                protocol="tls",
                address="127.0.0.1",
                after=lambda: succeed(None),
                on_failure=self.failed.append,
            )


class ListeningServiceTests(TestCase):
    """Real loopback ports: the bind is synchronous and its port is reported."""

    def test_binds_at_privileged_start_and_reports_the_port_it_got(self) -> None:
        path = Path(self.mktemp())
        api = ListeningService(
            lambda: reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
        )
        api.setName("api")
        report = PortFile(path, api)
        api.privilegedStartService()
        port = api.port
        assert port is not None
        api.startService()
        self.assertIs(api.port, port)  # bound once
        report.startService()
        self.assertEqual(read_port(path), port_of(port))
        report.stopService()
        self.assertFalse(path.exists())
        return api.stopService()  # type: ignore[return-value]

    def test_the_port_file_is_private_data(self) -> None:
        """Mode 0600 whatever the umask (it was 0777 less the umask: executable)."""
        self.addCleanup(os.umask, os.umask(0o022))
        path = Path(self.mktemp())
        api = ListeningService(
            lambda: reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
        )
        api.setName("api")
        api.privilegedStartService()
        self.addCleanup(api.stopService)
        PortFile(path, api).startService()
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)

    def test_a_port_in_use_fails_the_start_at_once(self) -> None:
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        taken = blocker.getsockname()[1]
        api = ListeningService(
            lambda: reactor.listenTCP(taken, Site(Resource()), interface="127.0.0.1")
        )
        with self.assertRaises(CannotListenError) as caught:
            api.privilegedStartService()
        self.assertIn(f"127.0.0.1:{taken}", str(caught.exception))
        self.assertIsNone(api.port)

    def test_a_port_file_without_a_port_reads_as_none(self) -> None:
        path = Path(self.mktemp())
        self.assertIsNone(read_port(path))
        for garbage in ("", "x", "0", "70000", "-1"):
            path.write_text(garbage)
            self.assertIsNone(read_port(path), garbage)
        path.write_text("5850\n")
        self.assertEqual(read_port(path), 5850)

    def test_reporting_a_service_that_does_not_listen_is_an_error(self) -> None:
        idle = ListeningService(lambda: FakePort(1))  # type: ignore[arg-type,return-value]
        idle.setName("idle")
        report = PortFile(Path(self.mktemp()), idle)
        self.assertRaises(RuntimeError, report.startService)


class StoreServiceTests(TestCase):
    """The store's only owner, on the real reactor and its own thread."""

    def setUp(self) -> None:
        self.data_dir = Path(self.mktemp())
        self.failed, self.on_failure = failures()

    async def test_opens_on_start_and_closes_on_stop(self) -> None:
        service = StoreService(self.data_dir, reactor, on_failure=self.on_failure)
        service.startService()
        store = await service.opened.wait()
        self.assertIs(service.store, store)
        await service.stopService()
        self.assertIsNone(service.store)
        with self.assertRaises(StoreClosed):
            await store.commit(UnitOfWork.of(Put(model.ComputePool(name="late"))))
        self.assertEqual(self.failed, [])

    async def test_a_commit_in_flight_at_stop_is_on_disk_before_stop_ends(self) -> None:
        service = StoreService(self.data_dir, reactor, on_failure=self.on_failure)
        service.startService()
        store = await service.opened.wait()
        acknowledged: list[str] = []
        commit = store.commit(UnitOfWork.of(Put(model.ComputePool(name="last-word"))))
        commit.addCallback(lambda _: acknowledged.append("committed"))
        await service.stopService()
        self.assertEqual(acknowledged, ["committed"])
        again = await Store.open(self.data_dir, reactor)
        self.addCleanup(again.close)
        self.assertIn("last-word", again.view.compute_pools)

    async def test_stop_while_opening_waits_for_the_open_then_closes(self) -> None:
        service = StoreService(self.data_dir, reactor, on_failure=self.on_failure)
        service.startService()
        opened = service.opened.wait()
        await service.stopService()
        store = await opened
        with self.assertRaises(StoreClosed):
            await store.commit(UnitOfWork.of(Put(model.ComputePool(name="late"))))

    async def test_a_damaged_store_is_logged_and_stops_the_core(self) -> None:
        self.data_dir.mkdir()
        (self.data_dir / DB_NAME).write_bytes(b"not a database" * 400)
        stopped: Deferred[None] = Deferred()

        def on_failure(failure: Failure) -> None:
            self.failed.append(failure)
            stopped.callback(None)

        service = StoreService(self.data_dir, reactor, on_failure=on_failure)
        service.startService()
        await stopped
        [failure] = self.failed
        self.assertIn("not a readable SQLite database", failure.getErrorMessage())
        self.assertNoResult(service.opened.wait())
        await service.stopService()

    def test_it_opens_once(self) -> None:
        service = StoreService(self.data_dir, MemoryReactor(), on_failure=self.on_failure)
        service.opened.resolve(Failure(RuntimeError("opened before")))
        service.opened.wait().addErrback(lambda _: None)
        self.assertRaises(RuntimeError, service.startService)


class CoreTests(RunningCore, TestCase):
    """The tree of `build_service` on 127.0.0.1 with real sockets; FakeCells link to it with
    CA-issued certificates and clients use the signed API."""

    async def test_serves_the_stored_state_over_the_signed_api(self) -> None:
        tree = await self.start()
        link = tree.getServiceNamed("cell-link")
        entry = link.advertised()  # type: ignore[attr-defined]
        self.assertIn(entry.port, LINK_PORTS)
        self.assertEqual((entry.protocol, entry.address), ("tls", "127.0.0.1"))
        pools = await self.api(tree, "GET", "/compute_pools/")
        self.assertEqual([pool["name"] for pool in pools], ["default"])

    async def test_guests_are_told_the_image_site_the_tree_listens_on(self) -> None:
        before = self.tree().getServiceNamed("images")
        assert isinstance(before, ImageSiteService)
        self.assertIsNone(site_address(before))
        images = (await self.start()).getServiceNamed("images")
        assert isinstance(images, ImageSiteService)
        address = site_address(images)
        assert address is not None and images.port is not None
        self.assertEqual((address.host, address.port), ("127.0.0.1", images.port.getHost().port))

    async def test_a_linked_cell_joins_a_pool_and_stays_there_across_a_restart(self) -> None:
        tree = await self.start()
        cell = self.link_cell(tree, "Cell_0a0000000001")
        await cell.connected()
        unallocated = await self.api(tree, "GET", "/compute_pool_cells/")
        self.assertEqual([entry["name"] for entry in unallocated], ["Cell_0a0000000001"])

        # The Cell's first report precedes its replies on the link, so once the add is
        # acknowledged Core has seen the Cell's capacity too.
        await self.api(tree, "POST", "/compute_pool_cells/default/Cell_0a0000000001")
        members = await self.api(tree, "GET", "/compute_pool_cells/default")
        self.assertEqual([(m["name"], m["alive"]) for m in members], [("Cell_0a0000000001", True)])
        status = await self.api(tree, "GET", "/compute_pool_status/default")
        self.assertEqual(status["max_cpu"], 4)

        await tree.stopService()
        self.assertIsNone(cell.link, "the Cell was told goodbye before the store closed")
        self.assertFalse(self.layout.api_port_file.exists())
        again = await self.start()
        store = again.getServiceNamed("store").store  # type: ignore[attr-defined]
        self.assertEqual(store.view.cells["Cell_0a0000000001"].pool, "default")

    async def test_a_request_its_headers_refuse_is_answered_without_its_body(self) -> None:
        """The daemon's API site refuses a stranger's write from its headers (the body it
        declares never comes) and closes; a signed one is served as ever."""
        tree = await self.start()
        port = self.api_port(tree)
        url = f"http://{LOOPBACK}:{port}/api/v1/address_pools/a1"
        headers = Signer("stranger", "secret").headers("POST", url, b"{}", now=reactor.seconds())
        head = b"POST /api/v1/address_pools/a1 HTTP/1.1\r\n" + b"".join(
            name + b": " + value + b"\r\n" for name, value in headers.items()
        )
        answer = await exchange(port, head + b"Content-Length: 100000\r\n\r\n")
        self.assertEqual(answer.envelope()["message"], "invalid API ID: stranger")
        self.assertEqual(answer.headers[b"connection"], b"close")
        await self.api(
            tree, "POST", "/address_pools/a1", {"gateway": "192.0.2.1", "provider": "dhcp"}
        )
        pools = await self.api(tree, "GET", "/address_pools/")
        self.assertEqual([pool["name"] for pool in pools], ["a1"])

    async def test_uploads_stream_and_every_ports_connections_are_counted(self) -> None:
        """What the daemon wires once its state is loaded: the API site's upload routes (a
        body is streamed to its image, not buffered whole) and the image site's connections
        in the budget of open files the API's site refuses newcomers by."""
        tree = await self.start(open_files=1024)
        site = cast(ListeningService, tree.getServiceNamed("api")).port.factory  # type: ignore[union-attr]
        self.assertIsInstance(site.requestFactory.upload_routes(), StreamFront)
        images = cast(ImageSiteService, tree.getServiceNamed("images"))
        assert images.site is not None, "the image site serves once the state is loaded"
        before = site.descriptors.in_use()
        connect_in_memory(self, images.site, "192.0.2.7", 1024, tls=True)
        self.assertEqual(site.descriptors.in_use(), before + 1)

    async def test_a_port_in_use_fails_the_start_at_once_and_opens_nothing(self) -> None:
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        taken = blocker.getsockname()[1]
        write_config(self.layout, api_port=taken)
        self.config = load_checked_config(self.layout)
        tree = self.tree()
        self.addCleanup(tree.stopService)
        with self.assertRaises(CannotListenError) as caught:
            tree.privilegedStartService()
        self.assertIn(str(taken), str(caught.exception))
        # The store was never opened: a second process could still take the data folder.
        self.assertFalse((self.layout.data_dir / DB_NAME).exists())
