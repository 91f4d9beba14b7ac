"""The running Core: state first, then the Cell fabric and the API.

Nothing is served from an empty model: the store is opened (checked, migrated, loaded) before
the Cell link listens, discovery answers or the API binds. The original's startup order
(core-internals §1.3) is kept in spirit: the message endpoint first, then discovery publishing
it, then the API. Stopping goes the other way and ends with the store, so every acknowledged
change is on disk before the process exits.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from nanocore import start_report
from nanocore.api import envelope
from nanocore.api.app import api_site_for
from nanocore.cluster.cells import CellRegistry
from nanocore.cluster.discovery import DiscoveryService, ServiceEntry
from nanocore.cluster.transactions import Transactions
from nanocore.cluster.transport import CellLinkFactory
from nanocore.config import CoreConfig
from nanocore.layout import Layout
from nanocore.operations.core import Operations
from nanocore.pki import (
    CertificateAuthority,
    IssuedCertificate,
    peer_cell_name,
    server_tls_options,
)
from nanocore.store import Store

log = Logger()

#: The original's KCP port range on `listen_address`; the TLS link takes the first free one.
LINK_PORTS = range(5600, 5800)
#: The protocol named in discovery echoes for this transport.
LINK_PROTOCOL = "tls"

CORE_SERVICE_NAME = "core"
API_SERVICE_NAME = "api"
LINK_SERVICE_NAME = "cell-link"
DISCOVERY_SERVICE_NAME = "discovery"

#: Builds the API's resource once the state is loaded.
APIFactory = Callable[["RunningCore"], IResource]


def core_name() -> str:
    """`Core_<MAC hex>`, as the original names itself (§2.6); the host's primary MAC."""
    return f"Core_{uuid.getnode():012x}"


class RunningCore:
    """What the services of a started Core share: the store, the Cell registry with its
    transactions, and the one `Operations` through which every change goes."""

    def __init__(self, store: Store, reactor: Any, config: CoreConfig) -> None:
        self.store = store
        self.config = config
        self.transactions = Transactions(reactor, float(config.domain.timeout))
        self.registry = CellRegistry(reactor, self.transactions)
        self.operations = Operations(store, reactor, cells=self.registry)


class _ListenFirstFree(Service):
    """Listens on the first port of a range that is free, like the original's port scan."""

    def __init__(self, ports: Iterable[int], listen: Callable[[int], Deferred[Any]]) -> None:
        self._ports = tuple(ports)
        self._listen = listen
        self.port: IListeningPort | None = None

    async def start(self) -> IListeningPort:
        """Bind and start; fails with the last error when every port of the range is taken."""
        error: Exception | None = None
        for number in self._ports:
            try:
                self.port = await self._listen(number)
            except CannotListenError as e:
                error = e
                continue
            Service.startService(self)
            return self.port
        raise CannotListenError("", self._ports[-1], error or "no port in range")

    def startService(self) -> None:
        # CoreService._start calls start() and waits on the binding; a parent's start does not.
        pass

    def stopService(self) -> Deferred[None] | None:
        Service.stopService(self)
        port, self.port = self.port, None
        if port is None:
            return None
        stopped = port.stopListening()
        return stopped if isinstance(stopped, Deferred) else None


class StartingGate(Resource):
    """The API's root until the Core is ready: answers 503 in the envelope, then delegates.

    The API port is bound as the service starts, so that a port in use fails the start at once
    (and `nanocore start` reports it); requests that arrive while the store is still opening are
    told so instead of being served from an empty model.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.target: IResource | None = None

    def render(self, request: IRequest) -> bytes | int:
        if self.target is not None:
            result: bytes | int = self.target.render(request)
            return result
        request.setResponseCode(503)
        request.setHeader(b"Content-Type", envelope.CONTENT_TYPE)
        request.setHeader(b"Retry-After", b"1")
        return envelope.failure("nanocore is starting")


class CoreService(MultiService):
    """Binds the API, opens the store, then starts the Cell link and discovery and opens the
    API to requests.

    `ready` fires with the :class:`RunningCore` once everything serves; if any step fails the
    failure is logged and `on_failure` is called (twistd's composition stops the reactor).
    """

    def __init__(
        self,
        layout: Layout,
        config: CoreConfig,
        ca: CertificateAuthority,
        certificate: IssuedCertificate,
        reactor: Any,
        api: APIFactory,
        on_failure: Callable[[Failure], None] | None = None,
    ) -> None:
        super().__init__()
        self.setName(CORE_SERVICE_NAME)
        self._layout = layout
        self._config = config
        self._ca = ca
        self._certificate = certificate
        self._reactor = reactor
        self._api = api
        self._on_failure = on_failure
        self._gate = StartingGate()
        self.core: RunningCore | None = None
        self.link_port: int | None = None
        self.ready: Deferred[RunningCore] = Deferred()

    def startService(self) -> None:
        # The fabric joins once the store is open; the API port is bound now, synchronously,
        # so that a port in use fails the start where twistd can report it.
        Service.startService(self)
        domain = self._config.domain
        api = api_service(
            self._reactor, domain.listen_address, self._config.api.port, api_site_for(self._gate)
        )
        try:
            api.setServiceParent(self)
        except Exception:
            start_report.log_failure(log, Failure())
            raise
        started = Deferred.fromCoroutine(self._start())
        started.addCallbacks(self.ready.callback, self._failed)

    async def _start(self) -> RunningCore:
        domain = self._config.domain
        store = await Store.open(self._layout.data_dir, self._reactor)
        core = self.core = RunningCore(store, self._reactor, self._config)

        options = server_tls_options(self._ca, self._certificate, require_client_certificate=True)
        factory = CellLinkFactory(core.registry, self._reactor, core_name(), peer_cell_name)

        def listen_link(number: int) -> Deferred[IListeningPort]:
            endpoint = SSL4ServerEndpoint(
                self._reactor, number, options, backlog=1024, interface=domain.listen_address
            )
            return endpoint.listen(factory)

        link = _ListenFirstFree(LINK_PORTS, listen_link)
        link.setName(LINK_SERVICE_NAME)
        link.setServiceParent(self)
        listening = await link.start()
        host = listening.getHost()
        assert isinstance(host, IPv4Address)
        self.link_port = port = host.port
        log.info("Cell link (TLS) on {address}:{port}", address=domain.listen_address, port=port)

        advertised = ServiceEntry(
            type="core", protocol=LINK_PROTOCOL, address=domain.listen_address, port=port
        )
        discovery = DiscoveryService(
            self._reactor,
            self._reactor,
            domain=domain.domain,
            group_address=domain.group_address,
            group_port=domain.group_port,
            listen_address=domain.listen_address,
            service=advertised,
        )
        discovery.setName(DISCOVERY_SERVICE_NAME)
        discovery.setServiceParent(self)
        log.info(
            "discovery: domain {domain!r} on {group}:{port} via {address}",
            domain=domain.domain,
            group=domain.group_address,
            port=domain.group_port,
            address=domain.listen_address,
        )

        self._gate.target = self._api(core)
        log.info(
            "API on http://{address}:{port}/api/v1/",
            address=domain.listen_address,
            port=self._config.api.port,
        )
        return core

    def _failed(self, failure: Failure) -> None:
        start_report.log_failure(log, failure)
        self.ready.errback(failure)
        if self._on_failure is not None:
            self._on_failure(failure)

    async def _stop(self) -> None:
        await MultiService.stopService(self)
        core = self.core
        if core is not None:
            core.registry.close_all()
            await core.store.close()

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())


def api_service(reactor: Any, address: str, port: int, site: Site) -> IService:
    """Serve the API site over plain HTTP on `address:port` (the original: every interface)."""
    endpoint = TCP4ServerEndpoint(reactor, port, interface=address)
    service = StreamServerEndpointService(endpoint, site)
    # A port that cannot be bound fails the start instead of leaving a Core without an API.
    service._raiseSynchronously = True
    service.setName(API_SERVICE_NAME)
    return service
