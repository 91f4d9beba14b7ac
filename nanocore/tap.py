"""`twistd nanocore`: the options, and the service tree of a Core, built in one place.

`makeService` reads the config (writing missing files first), prepares the certificates and
returns the tree of `build_service`; docs/architecture.md ("service tree") draws it. This
module composes; every behaviour lives in the services it composes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, cast

from attrs import frozen
from twisted.application.internet import MulticastServer
from twisted.application.service import IService, MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource

from nanocore import COMPATIBLE_CORE_VERSION, __version__, start_report
from nanocore.api import envelope
from nanocore.api.app import APIResource, api_site_for, build_api_resource
from nanocore.api.auth import Verifier
from nanocore.api.request import DEFAULT_MAX_CONNECTIONS, LimitedSite
from nanocore.api.streams import StreamFront, stream_signature
from nanocore.clocks import steady_timers
from nanocore.cluster.cells import CellRegistry
from nanocore.cluster.discovery import DiscoveryListener, ServiceEntry
from nanocore.cluster.kcp.link import cell_link_endpoint
from nanocore.cluster.transactions import Transactions
from nanocore.cluster.transport import MAX_TLS_HANDSHAKING, CellLinkFactory
from nanocore.config import ConfigError, CoreConfig, DomainConfig, ensure_config, load_config
from nanocore.durations import Durations
from nanocore.faults import outlive_hangups, report_fatal_errors
from nanocore.images.files import ImageFolders, thread_offload
from nanocore.images.site import DEFAULT_MAX_CONNECTIONS as IMAGE_CONNECTIONS
from nanocore.images.site import IMAGE_PORTS, ImageSite, ImageSiteResource
from nanocore.images.transfers import Transfers
from nanocore.layout import Layout, LayoutOptions
from nanocore.openfiles import Descriptors, connection_share, raise_open_file_limit
from nanocore.operations.backups import Backups
from nanocore.operations.core import Operations
from nanocore.operations.imagesite import ImageSiteAddress
from nanocore.pki import (
    CertificateAuthority,
    IssuedCertificate,
    PKIError,
    ensure_server_certificate,
    load_or_create_ca,
    peer_cell_name,
    requesting_tls_options,
    server_tls_options,
)
from nanocore.ratelog import RateLimitedLog
from nanocore.services.gate import ClosingGate, StartingGate
from nanocore.services.images import ImageSiteService
from nanocore.services.link import (
    LINK_PORTS,
    CellLinkService,
    advertised_together,
    core_name,
    holding,
)
from nanocore.services.listen import ListeningService, PortFile, check_local_address
from nanocore.services.logs import RotatedLogs
from nanocore.services.memory import MemoryTrim
from nanocore.services.order import InOrder
from nanocore.services.replay import REPLAY_MEMORY_FILE, ReplayMemory
from nanocore.services.stall import StallWatch
from nanocore.services.store import StoreService
from nanocore.services.timings import TimingReport
from nanocore.store.backup import BACKUP_FOLDER
from nanocore.tlsserver import tls_server_factory

log = Logger()

#: The protocols discovery echoes for the Cell links this Core serves.
#: Said of a SIGHUP, which no longer ends the daemon (logrotate's usual signal).
HANGUP_SAID = (
    "SIGHUP received and ignored: nanocore keeps running (it rotates its log itself at 1 MB;"
    " SIGUSR1 rotates it now; `nanocore stop` stops it)"
)
LINK_PROTOCOL = "tls"
KCP_PROTOCOL = "kcp"
#: What the KCP link's start says it exposes, and how to switch it off.
KCP_WARNING = (
    "plaintext, as in Nano: nothing on this link is encrypted and a Cell's name is the one it"
    " claims, so anyone who can reach this port can read Cell traffic and join as a Cell"
    ' (under any name not linked now); set "kcp_link": false in domain.cfg to switch it off'
    " (stock Nano Cells then cannot link; nanocore's own Cells use the TLS link)"
)
#: Pending Cell link connections the kernel may queue (a cluster restarting reconnects at once).
LINK_BACKLOG = 1024
#: Pending API (and image site) connections the kernel may queue (Twisted's 50 stalled bursts of
#: connects for 1 s).
API_BACKLOG = 1024


class Options(LayoutOptions):
    """Options of `twistd nanocore`: the four runtime folders."""

    longdesc = (
        "Nano Core control node. Reads domain.cfg, api.cfg and image.cfg from the config"
        " folder, writing safe defaults for any that are missing."
    )


@frozen
class Certificates:
    """The cluster CA and the certificate the image site and the Cell link serve."""

    ca: CertificateAuthority
    image: IssuedCertificate


@frozen
class _API:
    """The API once the state is loaded: the resource served, with its stream routes taken
    first, and the app that checks a request's headers before its body is read."""

    front: StreamFront
    app: APIResource[Operations]


def prepare_certificates(layout: Layout, config: CoreConfig) -> Certificates:
    """Create the cluster CA if the cert folder has none; (re)issue the image certificate.

    The image certificate must name `listen_address`, as in the original; relative paths in
    image.cfg are taken from the working directory.
    """
    ca = load_or_create_ca(layout.cert_dir)
    image = ensure_server_certificate(
        ca,
        config.domain.listen_address,
        Path(config.image.cert_file).absolute(),
        Path(config.image.key_file).absolute(),
        cert_dir=layout.cert_dir,
    )
    return Certificates(ca=ca, image=image)


def load_checked_config(layout: Layout) -> CoreConfig:
    """Create the folders, write missing config files, and load and validate all three."""
    layout.create_folders()
    ensure_config(layout.config_dir, cert_dir=layout.cert_dir)
    return load_config(layout.config_dir)


def stop_on_failure(reactor: Any) -> Callable[[Failure], None]:
    """What a service that cannot start calls: the one place that says why a Core did not
    start; it then stops rather than idle half-started. Only the first failure is told (the
    services waiting on a failed one fail with it)."""
    failures: list[Failure] = []

    def stop() -> None:
        with suppress(ReactorNotRunning):  # stopped by other means meanwhile
            reactor.stop()

    def failed(failure: Failure) -> None:
        failures.append(failure)
        if len(failures) > 1:
            return
        start_report.log_failure(log, failure)
        reactor.callWhenRunning(stop)

    return failed


def discovery_server(
    reactor: Any, domain: DomainConfig, services: Callable[[], Sequence[ServiceEntry]]
) -> MulticastServer:
    """Core's discovery listener on `domain`'s group, echoing `services` (its `args[1]`).

    Bound to the group address, so only datagrams for the group arrive; the listener joins the
    group on the `listen_address` interface and echoes on it only.
    """
    listener = DiscoveryListener(
        clock=reactor,
        domain=domain.domain,
        group_address=domain.group_address,
        group_port=domain.group_port,
        listen_address=domain.listen_address,
        services=services,
    )
    return MulticastServer(
        domain.group_port,
        listener,
        interface=domain.group_address,
        listenMultiple=True,
        reactor=reactor,
    )


def site_address(images: ImageSiteService) -> ImageSiteAddress | None:
    """Where Cells fetch images: the site's address once it listens, else None."""
    if images.port is None:
        return None
    host = images.port.getHost()
    assert isinstance(host, IPv4Address)
    return ImageSiteAddress(host.host, host.port)


def build_service(
    layout: Layout,
    config: CoreConfig,
    certificates: Certificates,
    reactor: Any,
    *,
    open_files: int | None = None,
) -> MultiService:
    """The service tree of a Core; its children start in order and stop in reverse.

    The store opens first (in its thread); the operations over it are built once it is open,
    and the Cell links (KCP for stock Cells, unless `kcp_link` is off, and TLS) listen and the
    API serves from then on. The API port is bound at start, answering 503 until then.
    Stopping silences the API and discovery, closes every Cell link on both wires, and closes
    the store last, once the commits already queued are on disk. ``open_files`` (the
    process's limit) cuts what unauthenticated peers may hold to a share of it.
    """
    domain = config.domain
    share = connection_share(open_files) if open_files is not None else None
    api_connections = min(DEFAULT_MAX_CONNECTIONS, share or DEFAULT_MAX_CONNECTIONS)
    link_handshaking = min(MAX_TLS_HANDSHAKING, share or MAX_TLS_HANDSHAKING)
    image_connections = min(IMAGE_CONNECTIONS, share or IMAGE_CONNECTIONS)
    # Linked Cells hold descriptors too: every port refuses newcomers once all of them hold
    # what the limit leaves beside the reserve.
    descriptors = Descriptors(open_files) if open_files is not None else None
    stop = stop_on_failure(reactor)

    # The shared objects of a running Core.
    transactions = Transactions(reactor, float(domain.timeout))
    registry = CellRegistry(reactor, transactions)
    commit_times, decision_times = Durations(), Durations()
    store = StoreService(layout.data_dir, reactor, on_failure=stop, commit_times=commit_times)
    folders = ImageFolders(layout.data_dir, thread_offload(reactor))
    # One verifier for the API and the image site: a signature used on one is a replay on both.
    verifier = Verifier(config.api.credential_keys(), reactor)

    # What anyone can make the API log (refused signatures and connections, idle clients),
    # rate-limited in one place, and flushed when the API stops listening.
    api_noise = RateLimitedLog(Logger(namespace="nanocore.api"), reactor)

    def open_operations(opened: Any) -> Operations:
        folders.prepare()
        ops = Operations(
            opened,
            reactor,
            cells=registry,
            image_files=folders,
            image_site=lambda: site_address(images),
            decision_times=decision_times,
            backups=Backups(opened.backup, layout.data_dir / BACKUP_FOLDER, reactor),
        )
        tidying = ops.images.tidy()
        tidying.addErrback(lambda failure: log.failure("tidying the image folders", failure))
        return ops

    operations = store.opened.then(open_operations)

    def api_resource(ops: Operations) -> _API:
        transfers = Transfers(ops.images, folders, envelope, max_upload=config.image.max_upload)
        resource = build_api_resource(
            ops, config.api.credential_keys(), reactor, verifier=verifier, noise=api_noise
        )
        return _API(
            StreamFront(resource, transfers, verifier),
            cast(APIResource[Operations], resource.app),
        )

    built = operations.then(api_resource)
    api = built.then(lambda each: each.front)
    image_site = api.then(
        lambda front: ImageSite(
            ImageSiteResource(front.transfers, stream_signature(verifier)),
            max_connections=image_connections,
            descriptors=descriptors,
        )
    )
    image_tls = requesting_tls_options(certificates.ca, certificates.image)
    images = ImageSiteService(
        ports=IMAGE_PORTS,
        listen=lambda number, served: reactor.listenTCP(
            number,
            tls_server_factory(image_tls, served),
            backlog=API_BACKLOG,
            interface=domain.listen_address,
        ),
        address=domain.listen_address,
        after=image_site.wait,
        on_failure=stop,
    )

    name = core_name()
    memory = MemoryTrim(reactor)
    links = CellLinkFactory(
        registry,
        reactor,
        name,
        peer_cell_name,
        max_handshaking=link_handshaking,
        quiet=memory.soon,
        descriptors=descriptors,
    )
    tls = server_tls_options(certificates.ca, certificates.image, require_client_certificate=True)
    link_factory = tls_server_factory(tls, links)

    def listen_tls(number: int) -> IListeningPort:
        return reactor.listenTCP(
            number, link_factory, backlog=LINK_BACKLOG, interface=domain.listen_address
        )

    def listen_udp(protocol: DatagramProtocol) -> Callable[[int], IListeningPort]:
        return lambda number: reactor.listenUDP(number, protocol, interface=domain.listen_address)

    # Stock Cells over KCP, into the same registry: one Cell is one Cell on either wire.
    kcp_links: list[tuple[str, CellLinkService]] = []
    if domain.kcp_link:
        endpoint = cell_link_endpoint(registry, reactor, name, registry.link)
        kcp = CellLinkService(
            ports=LINK_PORTS,
            listen=listen_udp(endpoint),
            links=endpoint,
            protocol=KCP_PROTOCOL,
            address=domain.listen_address,
            after=operations.wait,
            on_failure=stop,
            warning=KCP_WARNING,
            leaving=registry.leaving,
        )
        kcp_links.append(("kcp-link", kcp))
    link = CellLinkService(
        ports=LINK_PORTS,
        # Without the KCP link, the TLS link's number is held on UDP too: stock Cells dial
        # whatever port discovery names over UDP, and must not reach another Cell there.
        listen=listen_tls if kcp_links else holding(listen_tls, listen_udp(DatagramProtocol())),
        links=links,
        protocol=LINK_PROTOCOL,
        address=domain.listen_address,
        after=operations.wait,
        on_failure=stop,
        leaving=registry.leaving,
    )
    # The KCP link first: a stock Cell dials the first entry.
    discovery = discovery_server(
        reactor, domain, advertised_together(*(each for _, each in kcp_links), link)
    )
    gate = StartingGate(cast(Callable[[], Deferred[IResource]], api.wait), on_failure=stop)
    site = api_site_for(
        gate,
        max_connections=api_connections,
        noise=api_noise,
        upload_routes=api.peek,
        # While Core starts the gate answers every request: nothing is refused before it.
        before_body=lambda *request: (
            each.app.refusal_before_body(*request) if (each := built.peek()) else None
        ),
        descriptors=descriptors,
    )
    if descriptors is not None:
        descriptors.count(lambda: cast(LimitedSite, site).open_connections)
        descriptors.count(lambda: len(links.connections))
        descriptors.count(lambda: len(each.places) if (each := image_site.peek()) else 0)
    api_server = ListeningService(
        lambda: reactor.listenTCP(
            config.api.port, site, backlog=API_BACKLOG, interface=domain.listen_address
        )
    )

    tree = InOrder()
    children: list[tuple[str, IService]] = [
        ("store", store),
        # Stops after every other child but the store: its last line counts every decision.
        (
            "timings",
            TimingReport(
                reactor, {"store commit": commit_times, "placement decision": decision_times}
            ),
        ),
        # Before the API and the image site listen, so stopped after they closed.
        (
            "replay-memory",
            ReplayMemory(verifier, layout.data_dir / REPLAY_MEMORY_FILE, reactor),
        ),
        *kcp_links,
        ("cell-link", link),
        ("images", images),
        ("discovery", discovery),
        ("api", api_server),
        ("api-port", PortFile(layout.api_port_file, api_server)),
        ("memory", memory),
        ("logs", RotatedLogs(reactor, layout.log_file)),
        ("stalls", StallWatch(reactor)),
        # Last, so the first to stop: requests from then on are told Core stops.
        ("api-gate", ClosingGate(gate)),
    ]
    for name, child in children:
        child.setName(name)
        child.setServiceParent(tree)
    return tree


def makeService(options: Options, reactor: Any = None) -> MultiService:
    """The twistd entry point; a config or certificate fault ends the process, naming it.

    From here on, a crash in C code or a death by signal leaves the tracebacks of every thread
    in the log folder (`nanocore.faults`); a daemon's fork keeps the file and the handlers."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
        steady_timers(reactor)  # before any timer of Core's is armed
        outlive_hangups(lambda: reactor.callFromThread(log.warn, HANGUP_SAID))
    layout = options.layout()
    try:
        config = load_checked_config(layout)
    except ConfigError as error:
        raise SystemExit(f"nanocore: config error: {error}") from None
    except OSError as error:
        raise SystemExit(f"nanocore: cannot prepare {error.filename}: {error.strerror}") from None
    try:
        earlier = report_fatal_errors(layout.fault_file)
    except OSError as error:
        raise SystemExit(f"nanocore: cannot prepare {error.filename}: {error.strerror}") from None
    if earlier is not None:
        log.warn(
            "the previous run of nanocore (started {started}) died of a fatal error or a signal:"
            " the tracebacks of its threads are in {path}",
            started=earlier,
            path=str(layout.fault_file),
        )
    elif layout.api_port_file.exists():
        # Removed by every stop that runs the services' stops; SIGKILL (`nanocore halt`), a
        # lost power supply or the OOM killer leave it.
        log.warn(
            "the previous run of nanocore did not stop cleanly (killed, or the host went"
            " down): it left {path} behind; the store keeps every committed change",
            path=str(layout.api_port_file),
        )
    try:
        # The image certificate names listen_address: an address the listeners cannot bind
        # would fail the start only after a re-issue had replaced the pair in cert/.
        check_local_address(config.domain.listen_address, config.api.port)
    except CannotListenError as error:
        raise SystemExit(f"nanocore: {start_report.explain(error)}") from None
    try:
        certificates = prepare_certificates(layout, config)
    except (PKIError, OSError) as error:
        raise SystemExit(f"nanocore: certificate error: {error}") from None
    open_files = raise_open_file_limit()
    domain = config.domain
    log.info(
        "nanocore {version} (compatible with Nano Core {compatible}): API on {address}:{port},"
        " discovery of domain {domain!r} on {group}:{group_port}; open-file limit {open_files};"
        " fatal errors are reported in {fault_file}",
        version=__version__,
        compatible=COMPATIBLE_CORE_VERSION,
        address=domain.listen_address,
        port=config.api.port,
        domain=domain.domain,
        group=domain.group_address,
        group_port=domain.group_port,
        open_files=open_files,
        fault_file=str(layout.fault_file),
    )
    return build_service(layout, config, certificates, reactor, open_files=open_files)
