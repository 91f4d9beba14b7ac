"""The ``nanocell-sim`` twistd plugin: start N FakeCells against a Core, for demos and load.

Over the TLS link (``--link tls``, the default) the simulator signs its Cells' certificates
itself with the cluster CA from ``--cert-dir`` (the directory Core uses), so it is meant to run
beside Core, on 127.0.0.1 by default; with the same certificates its Cells download disk images
from Core's image site to create guests from them, and upload guest disks to capture images,
keeping each guest's disk under ``--disks``. Its Cells share one simulated NFS backend per
storage pool (:mod:`nanocore.testing.sharedstorage`), so guests migrate and fail over between
them as on a real pool with shared storage; with ``--shared-storage DIR`` that backend is a
folder, shared with every ``nanocell-sim`` given the same one, so that one simulator can be
killed while the Cells of another take its guests over. Stopping the simulator says goodbye
for each of its Cells: Core sees them stop, not crash (no failover). Over the KCP link
(``--link kcp``) its Cells link as stock Nano Cells do: plaintext, named by what they claim,
no certificate (their image transfers are simulated).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.defer import succeed
from twisted.python import usage

from nanocore.cluster.discovery import DEFAULT_DOMAIN, DEFAULT_GROUP_ADDRESS, DEFAULT_GROUP_PORT
from nanocore.options import NanocoreOptions
from nanocore.pki import (
    CA_CERT_FILE,
    CertificateAuthority,
    client_tls_options,
    issue_cell_certificate,
    load_or_create_ca,
)
from nanocore.testing.celldisks import CellDisks
from nanocore.testing.fakecell import Capacity, FakeCell, LocatedCoreEndpoint, discover_core
from nanocore.testing.imageclient import CellImageClient
from nanocore.testing.sharedstorage import SharedStorage

GiB = 1 << 30


def _positive(kind: type) -> Any:
    def check(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise ValueError(f"must be positive, got {text}")
        return value

    check.coerceDoc = "Must be positive."  # type: ignore[attr-defined]
    return check


#: Core's Cell link wires, by the protocol discovery names them with.
LINKS = ("tls", "kcp")


def _link(text: str) -> str:
    if text not in LINKS:
        raise ValueError(f"must be one of {', '.join(LINKS)}, got {text!r}")
    return text


_link.coerceDoc = "tls (our Cells, certificates from --cert-dir) or kcp (as stock Cells)."  # type: ignore[attr-defined]


class Options(NanocoreOptions):
    synopsis = "[--link tls|kcp] --core HOST:PORT [--cert-dir DIR] [--count N] [options]"
    longdesc = (
        "Start N simulated Cells that link to Core over TLS (or over KCP, as stock Nano Cells"
        " do), report their status every 2 s and answer every Cell request with simulated"
        " guests."
    )
    optParameters = [
        ["link", None, "tls", "The Cell link to use", _link],
        ["core", None, "127.0.0.1:5600", "Core's Cell link endpoint, HOST:PORT"],
        ["cert-dir", None, "cert", "Directory with the cluster CA, for --link tls"],
        ["disks", None, "data/sim-disks", "Directory for the guests' disks (a folder per Cell)"],
        [
            "shared-storage",
            None,
            None,
            "Directory for the simulated NFS exports, shared with other simulators given it"
            " (default: shared by this simulator's Cells only, in memory)",
        ],
        ["count", "n", 10, "How many Cells to simulate", _positive(int)],
        ["prefix", None, "Cell_sim", "Cell names are PREFIX followed by a 6-digit number"],
        ["cores", None, 8, "Logical CPUs per Cell", _positive(int)],
        ["memory", None, 16, "Memory per Cell, GiB", _positive(int)],
        ["disk", None, 500, "Disk per Cell, GiB", _positive(int)],
        ["usage", None, 5.0, "Host CPU usage each Cell reports, percent", float],
        ["creation-time", None, 1.0, "Seconds a Cell takes to create a guest (0: at once)", float],
        ["stop-time", None, 1.0, "Seconds from a stop to the guest's stopped event", float],
        ["domain", None, DEFAULT_DOMAIN, "Discovery domain (with --discover)"],
        ["group-address", None, DEFAULT_GROUP_ADDRESS, "Discovery multicast group"],
        ["group-port", None, DEFAULT_GROUP_PORT, "Discovery group port", _positive(int)],
        ["interface", None, "127.0.0.1", "Interface to ping (--discover) and dial from"],
    ]
    optFlags = [
        ["discover", None, "Find Core by multicast discovery instead of --core"],
    ]

    def postOptions(self) -> None:
        host, _, port = str(self["core"]).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise usage.UsageError(f"--core must be HOST:PORT, got {self['core']!r}")
        self["host"], self["port"] = host, int(port)
        ca_cert = Path(self["cert-dir"]) / CA_CERT_FILE
        if self["link"] == "tls" and not ca_cert.exists():
            raise usage.UsageError(f"no cluster CA at {ca_cert}: point --cert-dir at Core's")
        if not 0.0 <= self["usage"] <= 100.0:
            raise usage.UsageError(f"--usage must be within 0-100, got {self['usage']}")
        for option in ("creation-time", "stop-time"):
            if self[option] < 0:
                raise usage.UsageError(f"--{option} must not be negative, got {self[option]}")

    def cell_names(self) -> list[str]:
        return [f"{self['prefix']}{index:06d}" for index in range(self["count"])]


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor  # the composition edge
    link = options["link"]
    capacity = Capacity(
        cores=options["cores"], memory=options["memory"] * GiB, disk=options["disk"] * GiB
    )
    parent = MultiService()
    if options["discover"]:
        locate = discover_core(
            reactor,
            reactor,
            domain=options["domain"],
            group_address=options["group-address"],
            group_port=options["group-port"],
            interface=options["interface"],
            protocol=link,
        )
    else:
        address = (options["host"], options["port"])
        locate = lambda: succeed(address)  # noqa: E731
    ca = load_or_create_ca(Path(options["cert-dir"])) if link == "tls" else None
    # One NFS backend for every Cell here (and, on a folder, of other simulators too): a
    # pool's guests can move between them.
    folder = options["shared-storage"]
    shared = SharedStorage(None if folder is None else Path(folder).absolute())
    for name in options.cell_names():
        cell = FakeCell(
            name,
            reactor,
            capacity=capacity,
            usage=options["usage"],
            creation_time=options["creation-time"],
            stop_time=options["stop-time"],
            shared=shared,
        )
        service: IService
        if ca is None:
            service = cell.kcp_service(reactor, locate, interface=options["interface"])
        else:
            tls_for = _tls_for(ca, name)
            folder = Path(options["disks"]) / name
            cell.disks = CellDisks(CellImageClient(reactor, tls_for), folder)
            service = cell.service(LocatedCoreEndpoint(reactor, locate, tls_for))
        service.setName(name)
        service.setServiceParent(parent)
    return parent


def _tls_for(ca: CertificateAuthority, name: str) -> Callable[[str], Any]:
    issued = issue_cell_certificate(ca, name)
    return lambda host: client_tls_options(ca, host, issued)
