"""Core's KCP port as a link service, and a Cell's reconnecting dialer, over real UDP on
127.0.0.1."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from nanocore.cluster.cells import CellLiveness, CellRegistry
from nanocore.cluster.kcp.dialer import KCPClientService
from nanocore.cluster.kcp.link import cell_link_endpoint, cell_sessions
from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.cluster.transactions import Transactions
from nanocore.services.link import CellLinkService
from nanocore.services.listen import port_of
from nanocore.tap import KCP_PROTOCOL, KCP_WARNING
from nanocore.testing.cluster import Waiter
from nanocore.testing.fakecell import FakeCell

reactor: Any = _reactor
LOOPBACK = "127.0.0.1"
CELL = "Cell_5254001a2b3c"
CORE_NAME = "Core_5254000a0b0c"
WAIT = 10.0


class Core:
    """Core's side: the registry behind a KCP link service on 127.0.0.1, as `tap` builds it."""

    def __init__(self, ports: Any = (0,)) -> None:
        self.registry = CellRegistry(reactor, Transactions(reactor, WAIT))
        self.waiter = Waiter()
        self.registry.subscribe(self.waiter)
        self.endpoint = cell_link_endpoint(self.registry, reactor, CORE_NAME, self.registry.link)
        self.failures: list[Failure] = []
        self.service = CellLinkService(
            ports=ports,
            listen=lambda number: reactor.listenUDP(number, self.endpoint, interface=LOOPBACK),
            links=self.endpoint,
            protocol=KCP_PROTOCOL,
            address=LOOPBACK,
            after=lambda: succeed(None),
            on_failure=self.failures.append,
            warning=KCP_WARNING,
        )

    @property
    def port_number(self) -> int:
        assert self.service.port is not None
        return port_of(self.service.port)


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
        self.assertNotEqual(core.port_number, number)
        entry = core.service.advertised()
        assert entry is not None
        self.assertEqual((entry.protocol, entry.port), ("kcp", core.port_number))
        warnings = [e for e in self.observer if e["log_level"] is LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["port"], core.port_number)
        text = formatEvent(warnings[0])
        for exposed in ("KCP", "plaintext", "name is the one it claims", '"kcp_link": false'):
            self.assertIn(exposed, text)

    def test_no_free_port_fails_the_start(self) -> None:
        taken = reactor.listenUDP(0, DatagramProtocol(), interface=LOOPBACK)
        self.addCleanup(taken.stopListening)
        core = Core(ports=(taken.getHost().port,))
        core.service.startService()
        self.addCleanup(core.service.stopService)
        self.assertEqual([f.type for f in core.failures], [CannotListenError])
        self.assertIsNone(core.service.advertised())


class LinkOverUDPTests(TestCase):
    async def test_cell_links_gets_answers_and_leaves_gracefully(self) -> None:
        core = Core()
        core.service.startService()
        self.addCleanup(core.service.stopService)
        cell, service = cell_service(lambda: core.port_number)
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
        number = core.port_number
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
