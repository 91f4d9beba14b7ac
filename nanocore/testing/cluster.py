"""A whole Cell fabric in one process: Core's link listener and registry, and FakeCells.

Everything runs over real sockets on 127.0.0.1, exactly as in production, on either of Core's
wires: TLS with certificates from one cluster CA (our Cells), or KCP/UDP as stock Go Cells link
(``wire="kcp"``); only the Cells are simulated. Used by the in-process cluster tests and the
fabric benchmark; other rooms can use it to test Core against Cells, over both wires.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from twisted.application.service import IService
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLClientConnectionCreator,
    IReactorTime,
)
from twisted.logger import Logger
from zope.interface import implementer

from nanocore.cluster.cells import CellObserver, CellRegistry, CellStatus
from nanocore.cluster.kcp.endpoint import KCPEndpoint
from nanocore.cluster.kcp.link import core_sessions
from nanocore.cluster.message import Message
from nanocore.cluster.transactions import Transactions
from nanocore.cluster.transport import MAX_TLS_HANDSHAKING, CellLinkFactory
from nanocore.pki import (
    CertificateAuthority,
    client_tls_options,
    issue_cell_certificate,
    issue_server_certificate,
    peer_cell_name,
    server_tls_options,
)
from nanocore.testing.celldisks import CellDisks
from nanocore.testing.fakecell import FakeCell, Locate, LocatedCoreEndpoint
from nanocore.testing.imageclient import CellImageClient
from nanocore.testing.sharedstorage import SharedStorage
from nanocore.tlsserver import tls_server_factory

LOOPBACK = "127.0.0.1"
#: Core's two Cell link wires, by the protocol discovery names them with.
Wire = Literal["tls", "kcp"]
WIRES: tuple[Wire, ...] = ("tls", "kcp")


@implementer(CellObserver)
class Waiter:
    """Fires Deferreds when the registry has seen what a test waits for."""

    def __init__(self) -> None:
        self.reported: set[str] = set()
        self.disconnected: dict[str, bool] = {}
        self._report_waiters: list[tuple[set[str], Deferred[None]]] = []
        self._disconnect_waiters: dict[str, list[Deferred[bool]]] = {}

    def until_reported(self, names: set[str]) -> Deferred[None]:
        """Fires once every one of ``names`` has sent a status report."""
        d: Deferred[None] = Deferred()
        self._report_waiters.append((set(names), d))
        self._check_reports()
        return d

    def until_disconnected(self, name: str) -> Deferred[bool]:
        """Fires with ``gracefully`` when ``name``'s link next goes down."""
        d: Deferred[bool] = Deferred()
        self._disconnect_waiters.setdefault(name, []).append(d)
        return d

    def cell_available(self, name: str, address: str) -> None:
        pass

    def cell_status(self, name: str, status: CellStatus) -> None:
        if name not in self.reported:
            self.reported.add(name)
            self._check_reports()

    def cell_event(self, name: str, message: Message) -> None:
        pass

    def cell_disconnected(self, name: str, gracefully: bool) -> None:
        self.disconnected[name] = gracefully
        for d in self._disconnect_waiters.pop(name, []):
            d.callback(gracefully)

    def cell_answered_late(self, name: str, request: Message, reply: Message) -> None:
        pass

    def _check_reports(self) -> None:
        waiting = []
        for names, d in self._report_waiters:
            if names <= self.reported:
                d.callback(None)
            else:
                waiting.append((names, d))
        self._report_waiters = waiting


class InProcessCluster:
    """Core's side of the fabric listening on 127.0.0.1, plus any number of FakeCells.

    ``wire`` is the link they use: "tls" (the default; ``ca`` issues every certificate) or
    "kcp" (stock Cells' plaintext link; ``ca`` is not used).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        ca: CertificateAuthority | None = None,
        *,
        wire: Wire = "tls",
        timeout: float = 10.0,
        core_name: str = "Core_000000000000",
        clock: IReactorTime | None = None,
    ) -> None:
        if wire == "tls" and ca is None:
            raise ValueError("the TLS wire needs the cluster CA")
        self.reactor = reactor
        #: Core's timers (keepalive, loss, transactions); a ``Clock`` lets a test drive them
        #: while the sockets stay real (and KCP's own timers with them).
        self.clock: IReactorTime = reactor if clock is None else clock
        self.ca = ca
        self.wire: Wire = wire
        self.core_name = core_name
        self.transactions = Transactions(self.clock, timeout)
        self.registry = CellRegistry(self.clock, self.transactions)
        self.waiter = Waiter()
        self.registry.subscribe(self.waiter)
        #: The NFS exports every Cell of this fabric mounts (a pool's shared storage).
        self.shared = SharedStorage()
        self.cells: dict[str, FakeCell] = {}
        self.services: dict[str, IService] = {}
        self.port: IListeningPort | None = None
        #: Who owns Core's links: the TLS factory or the KCP endpoint.
        self.factory: CellLinkFactory | None = None
        self.endpoint: KCPEndpoint | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self.port is not None
        return LOOPBACK, self.port.getHost().port  # type: ignore[attr-defined]

    async def listen(self, port: int = 0, *, max_handshaking: int | None = None) -> None:
        """Listen as Core does; ``max_handshaking`` overrides the places for TLS connections
        still handshaking."""
        if self.wire == "kcp":
            # Sessions on Core's clock, KCP's retransmissions on the reactor's (see above).
            attach = core_sessions(self.registry, self.clock, self.core_name, self.registry.link)
            self.endpoint = KCPEndpoint(self.reactor, attach)
            self.port = self.reactor.listenUDP(port, self.endpoint, interface=LOOPBACK)
            return
        assert self.ca is not None
        issued = issue_server_certificate(self.ca, LOOPBACK)
        options = server_tls_options(self.ca, issued, require_client_certificate=True)
        factory = self.factory = CellLinkFactory(
            self.registry,
            self.clock,
            self.core_name,
            peer_cell_name,
            max_handshaking=MAX_TLS_HANDSHAKING if max_handshaking is None else max_handshaking,
        )
        endpoint = TCP4ServerEndpoint(self.reactor, port, backlog=1024, interface=LOOPBACK)
        self.port = await endpoint.listen(tls_server_factory(options, factory))

    def add_cell(
        self,
        name: str,
        *,
        locate: Locate | None = None,
        clock: IReactorTime | None = None,
        disks: Path | None = None,
        **options: Any,
    ) -> FakeCell:
        """Start a FakeCell (over TLS with a fresh certificate); it keeps reconnecting until
        removed.

        ``locate`` finds Core for each connection attempt (e.g. by discovery); by default the
        cell dials this cluster's listening address. ``clock`` drives the Cell's own timers
        (reports, keepalives); a ``Clock`` that is never advanced freezes them. ``disks``
        (TLS only): the folder under which the Cell keeps its guests' disks, moving them to
        and from the image site with its certificate (a folder of its name inside it).
        """
        options.setdefault("shared", self.shared)
        cell = FakeCell(name, self.reactor if clock is None else clock, **options)
        where = locate or (lambda: succeed(self.address))
        service: IService
        if self.wire == "kcp":
            if disks is not None:
                raise ValueError("a Cell on the KCP link holds no certificate for the image site")
            service = cell.kcp_service(self.reactor, where, interface=LOOPBACK)
        else:
            ca = self.ca
            assert ca is not None
            issued = issue_cell_certificate(ca, name)

            def tls_for(host: str) -> IOpenSSLClientConnectionCreator:
                return client_tls_options(ca, host, issued)

            if disks is not None:
                cell.disks = CellDisks(CellImageClient(self.reactor, tls_for), disks / name)
            service = cell.service(LocatedCoreEndpoint(self.reactor, where, tls_for))
        service.startService()
        self.cells[name], self.services[name] = cell, service
        return cell

    async def remove_cell(self, name: str) -> None:
        """Stop a FakeCell's reconnecting and drop its connection, if any."""
        cell = self.cells.pop(name)
        cell.close()
        await maybeDeferred(self.services.pop(name).stopService)

    async def stop(self) -> None:
        """Close every link gracefully, stop listening, and wait until all of it is done."""
        await gatherResults(
            [Deferred.fromCoroutine(self.remove_cell(n)) for n in list(self.cells)]
        )
        owner = self.endpoint if self.endpoint is not None else self.factory
        if owner is not None:
            await owner.close_all()
        if self.port is not None:
            await maybeDeferred(self.port.stopListening)
