"""Core's KCP port service and a Cell's reconnecting dialer, over real UDP on 127.0.0.1."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase

from nanocore.cluster.cells import CellLiveness, CellRegistry
from nanocore.cluster.kcp.dialer import KCPClientService
from nanocore.cluster.kcp.link import cell_link_endpoint, cell_sessions
from nanocore.cluster.kcp.listener import KCPLinkService
from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.cluster.transactions import Transactions
from nanocore.testing.cluster import Waiter
from nanocore.testing.fakecell import FakeCell

reactor: Any = _reactor
LOOPBACK = "127.0.0.1"
CELL = "Cell_5254001a2b3c"
CORE_NAME = "Core_5254000a0b0c"
WAIT = 10.0


class Core:
    """Core's side: the registry behind a KCP link service on 127.0.0.1."""

    def __init__(self, ports: Any = (0,)) -> None:
        self.registry = CellRegistry(reactor, Transactions(reactor, WAIT))
        self.waiter = Waiter()
        self.registry.subscribe(self.waiter)
        endpoint = cell_link_endpoint(self.registry, reactor, CORE_NAME, self.registry.link)
        self.service = KCPLinkService(reactor, endpoint, LOOPBACK, ports)


def bounded(d: Deferred[Any]) -> Deferred[Any]:
    return d.addTimeout(WAIT, reactor)


def cell_service(port: Any, retry: float = 0.2) -> tuple[FakeCell, KCPClientService]:
    cell = FakeCell(CELL, reactor)
    attach = cell_sessions(cell, reactor, CELL)
    service = KCPClientService(
        reactor,
        reactor,
        lambda: succeed((LOOPBACK, port())),
        attach,
        interface=LOOPBACK,
        retry=retry,
    )
    return cell, service


class ListenerTests(TestCase):
    def setUp(self) -> None:
        self.observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def test_first_free_port_and_a_warning_about_what_it_exposes(self) -> None:
        taken = reactor.listenUDP(0, DatagramProtocol(), interface=LOOPBACK)
        self.addCleanup(taken.stopListening)
        number = taken.getHost().port
        core = Core(ports=(number, 0))
        core.service.startService()
        self.addCleanup(core.service.stopService)
        self.assertNotEqual(core.service.port_number, number)
        warnings = [e for e in self.observer if e["log_level"] is LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertIn("plaintext", warnings[0]["log_format"])
        self.assertEqual(warnings[0]["port"], core.service.port_number)

    def test_no_free_port_fails_the_start(self) -> None:
        taken = reactor.listenUDP(0, DatagramProtocol(), interface=LOOPBACK)
        self.addCleanup(taken.stopListening)
        core = Core(ports=(taken.getHost().port,))
        self.assertRaises(CannotListenError, core.service.startService)
        self.assertFalse(core.service.running)


class LinkOverUDPTests(TestCase):
    async def test_cell_links_gets_answers_and_leaves_gracefully(self) -> None:
        core = Core()
        core.service.startService()
        self.addCleanup(core.service.stopService)
        cell, service = cell_service(lambda: core.service.port_number)
        service.startService()
        await bounded(core.waiter.until_reported({CELL}))
        self.assertEqual(core.registry.address(CELL), LOOPBACK)
        request = Message(
            id=MessageID.QueryCellStorageRequest, string_params={ParamKey.Data: "d" * 100_000}
        )
        reply = await bounded(core.registry.request(CELL, request))
        self.assertEqual(reply.id, MessageID.QueryCellStorageResponse)
        self.assertEqual(cell.received[-1].string_params[ParamKey.Data], "d" * 100_000)
        gone = core.waiter.until_disconnected(CELL)
        await service.stopService()
        self.assertTrue(await bounded(gone))

    async def test_cell_reconnects_after_core_restarts(self) -> None:
        core = Core()
        core.service.startService()
        number = core.service.port_number
        _, service = cell_service(lambda: number)
        service.startService()
        self.addCleanup(service.stopService)
        await bounded(core.waiter.until_reported({CELL}))
        self.assertEqual(service.dials, 1)
        await core.service.stopService()  # goodbye to the Cell, then the port closes

        again = Core(ports=(number,))
        again.service.startService()
        self.addCleanup(again.service.stopService)
        await bounded(again.waiter.until_reported({CELL}))
        self.assertEqual(again.registry.state(CELL), CellLiveness.ALIVE)
        self.assertGreaterEqual(service.dials, 2)
