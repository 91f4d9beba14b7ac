"""A whole Core (the tree of `tap.build_service`) on 127.0.0.1 with real sockets, for tests:
config files, start as twistd does, the signed API, and Cells linked over either wire."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import treq
from twisted.application.service import IService, MultiService
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.web.client import HTTPConnectionPool

from nanocore import config, pki
from nanocore.api.client import Signer
from nanocore.layout import Layout
from nanocore.services.link import CellLinkService
from nanocore.services.listen import port_of, read_port
from nanocore.services.store import StoreService
from nanocore.tap import Certificates, build_service, load_checked_config, prepare_certificates
from nanocore.testing.fakecell import Capacity, FakeCell, LocatedCoreEndpoint

reactor: Any = global_reactor

CREDENTIAL = ("tester", "a-key-for-the-service-tests")
LOOPBACK = "127.0.0.1"


def write_config(layout: Layout, api_port: int = 0, **domain: object) -> None:
    """Config files for a Core on 127.0.0.1; API port 0 lets the OS choose a free port."""
    layout.create_folders()
    documents = {
        config.DOMAIN_FILE: {"listen_address": LOOPBACK, "timeout": 5, **domain},
        config.API_FILE: {
            "port": api_port,
            "credentials": [{"id": CREDENTIAL[0], "key": CREDENTIAL[1]}],
        },
        config.IMAGE_FILE: {
            "cert_file": str(layout.cert_dir / config.IMAGE_CERT_NAME),
            "key_file": str(layout.cert_dir / config.IMAGE_KEY_NAME),
        },
    }
    for name, document in documents.items():
        (layout.config_dir / name).write_text(json.dumps(document), encoding="utf-8")


class RunningCore:
    """Mixed into a trial ``TestCase``: a Core's tree on loopback, and what tests do with it."""

    def setUp(self) -> None:
        root = Path(self.mktemp()).absolute()  # type: ignore[attr-defined]
        self.layout = Layout(root / "config", root / "data", root / "cert", root / "log")
        self.configure()
        self.signer = Signer(*CREDENTIAL)
        self.pool = HTTPConnectionPool(reactor)
        self.addCleanup(self.pool.closeCachedConnections)  # type: ignore[attr-defined]

    def configure(self, **domain: object) -> None:
        """Write the config files (``domain``: extra domain.cfg keys) and load them."""
        write_config(self.layout, **domain)
        self.config = load_checked_config(self.layout)
        self.certificates: Certificates = prepare_certificates(self.layout, self.config)

    def tree(self, open_files: int | None = None) -> MultiService:
        """The daemon's tree (``open_files``: the open-file limit it budgets for, as
        ``makeService`` passes the process's)."""
        tree = build_service(
            self.layout, self.config, self.certificates, reactor, open_files=open_files
        )
        self.addCleanup(lambda: tree.stopService() if tree.running else None)  # type: ignore[attr-defined]
        return tree

    async def start(self, open_files: int | None = None) -> MultiService:
        """Start the tree as twistd does; return once the state is loaded and it all serves."""
        tree = self.tree(open_files)
        tree.privilegedStartService()
        tree.startService()
        store = tree.getServiceNamed("store")
        assert isinstance(store, StoreService)
        await store.opened.wait()
        link = tree.getServiceNamed("cell-link")
        assert isinstance(link, CellLinkService)
        assert link.port is not None, "the link listens once the state is loaded"
        return tree

    def api_port(self, tree: MultiService) -> int:
        number = read_port(self.layout.api_port_file)
        assert number is not None, "no API port reported"
        return number

    async def api(self, tree: MultiService, method: str, path: str, body: Any = None) -> Any:
        """A signed API call that must succeed; its ``data``."""
        url = f"http://{LOOPBACK}:{self.api_port(tree)}/api/v1{path}"
        data = b"" if body is None else json.dumps(body).encode()
        headers = self.signer.headers(method, url, data, now=reactor.seconds())
        response = await treq.request(
            method, url, data=data or None, headers=headers, pool=self.pool
        )
        document = json.loads(await treq.content(response))
        assert document["error_code"] == 0, document
        return document["data"]

    def link_port(self, tree: MultiService, name: str = "cell-link") -> int:
        link = tree.getServiceNamed(name)
        assert isinstance(link, CellLinkService) and link.port is not None
        return port_of(link.port)

    def link_cell(self, tree: MultiService, name: str, *, wire: str = "tls") -> FakeCell:
        """A FakeCell reporting every 0.2 s, linked to the tree over ``wire`` until cleanup."""
        cell = FakeCell(name, reactor, capacity=Capacity(cores=4), report_interval=0.2)
        client: IService
        if wire == "kcp":
            address = (LOOPBACK, self.link_port(tree, "kcp-link"))
            client = cell.kcp_service(reactor, lambda: succeed(address), interface=LOOPBACK)
        else:
            address = (LOOPBACK, self.link_port(tree))
            issued = pki.issue_cell_certificate(self.certificates.ca, name)
            endpoint = LocatedCoreEndpoint(
                reactor,
                lambda: succeed(address),
                lambda host: pki.client_tls_options(self.certificates.ca, host, issued),
            )
            client = cell.service(endpoint)
        client.startService()

        def unlink() -> Deferred[None]:
            cell.close()
            return maybeDeferred(client.stopService)

        self.addCleanup(unlink)  # type: ignore[attr-defined]
        return cell
