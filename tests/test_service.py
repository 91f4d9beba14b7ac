"""The composed Core on the real reactor: store, Cell link, discovery and API on loopback."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.test.requesthelper import DummyRequest

from nanocore import config, pki
from nanocore.api.client import Signer
from nanocore.layout import Layout
from nanocore.service import LINK_PORTS, CoreService, RunningCore, StartingGate
from nanocore.tap import api_resource, load_checked_config, prepare_certificates
from nanocore.testing.fakecell import Capacity, FakeCell, LocatedCoreEndpoint

CREDENTIAL = ("tester", "a-key-for-the-service-tests")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def write_config(layout: Layout, api_port: int) -> None:
    layout.create_folders()
    documents = {
        config.DOMAIN_FILE: {"listen_address": "127.0.0.1", "timeout": 5},
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


class StartingGateTests(SynchronousTestCase):
    def test_answers_503_until_opened(self) -> None:
        gate = StartingGate()
        request = DummyRequest([b""])
        body = gate.render(request)
        self.assertEqual(request.responseCode, 503)
        self.assertEqual(json.loads(body)["message"], "nanocore is starting")

    def test_delegates_once_opened(self) -> None:
        gate = StartingGate()

        class Target:
            def render(self, request: Any) -> bytes:
                return b"served"

        gate.target = Target()  # type: ignore[assignment]
        self.assertEqual(gate.render(DummyRequest([b""])), b"served")


class CoreServiceTests(TestCase):
    """A Core on 127.0.0.1 with real sockets; FakeCells link to it with CA-issued certificates."""

    def setUp(self) -> None:
        root = Path(self.mktemp()).absolute()
        self.layout = Layout(root / "config", root / "data", root / "cert", root / "log")
        self.api_port = free_port()
        write_config(self.layout, self.api_port)
        self.config = load_checked_config(self.layout)
        self.certificates = prepare_certificates(self.layout, self.config)
        self.signer = Signer(*CREDENTIAL)
        self.pool = HTTPConnectionPool(reactor)
        self.addCleanup(self.pool.closeCachedConnections)

    async def start(self) -> tuple[CoreService, RunningCore]:
        failures: list[Any] = []
        service = CoreService(
            self.layout,
            self.config,
            self.certificates.ca,
            self.certificates.image,
            reactor,
            api=lambda core: api_resource(core, self.config, reactor),
            on_failure=failures.append,
        )
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        core = await service.ready
        self.assertEqual(failures, [])
        return service, core

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        url = f"http://127.0.0.1:{self.api_port}/api/v1{path}"
        data = b"" if body is None else json.dumps(body).encode()
        headers = self.signer.headers(method, url, data, now=reactor.seconds())
        response = await treq.request(
            method, url, data=data or None, headers=headers, pool=self.pool
        )
        document = json.loads(await treq.content(response))
        self.assertEqual(document["error_code"], 0, document)
        return document["data"]

    def link_cell(self, service: CoreService, name: str) -> FakeCell:
        cell = FakeCell(name, reactor, capacity=Capacity(cores=4), report_interval=0.2)
        issued = pki.issue_cell_certificate(self.certificates.ca, name)
        assert service.link_port is not None
        address = ("127.0.0.1", service.link_port)
        endpoint = LocatedCoreEndpoint(
            reactor,
            lambda: succeed(address),
            lambda host: pki.client_tls_options(self.certificates.ca, host, issued),
        )
        client = cell.service(endpoint)
        client.startService()

        def unlink() -> Deferred[None]:
            cell.close()
            return client.stopService()  # type: ignore[return-value]

        self.addCleanup(unlink)
        return cell

    async def until(self, predicate: Any, what: str) -> None:
        """Polls the real reactor in 20 ms steps, for at most 5 s."""
        for _ in range(250):
            if predicate():
                return
            await deferLater(reactor, 0.02, lambda: None)
        self.fail(f"timed out waiting for {what}")

    async def test_serves_the_stored_state_over_the_signed_api(self) -> None:
        service, _core = await self.start()
        self.assertIn(service.link_port, LINK_PORTS)
        pools = await self.api("GET", "/compute_pools/")
        self.assertEqual([pool["name"] for pool in pools], ["default"])

    async def test_a_linked_cell_joins_a_pool_and_stays_there_across_a_restart(self) -> None:
        service, core = await self.start()
        cell = self.link_cell(service, "Cell_0a0000000001")
        await cell.connected()
        await self.until(lambda: core.registry.status("Cell_0a0000000001") is not None, "report")
        unallocated = await self.api("GET", "/compute_pool_cells/")
        self.assertEqual([entry["name"] for entry in unallocated], ["Cell_0a0000000001"])

        await self.api("POST", "/compute_pool_cells/default/Cell_0a0000000001")
        members = await self.api("GET", "/compute_pool_cells/default")
        self.assertEqual([(m["name"], m["alive"]) for m in members], [("Cell_0a0000000001", True)])
        status = await self.api("GET", "/compute_pool_status/default")
        self.assertEqual(status["max_cpu"], 4)

        await service.stopService()
        _again, core = await self.start()
        self.assertEqual(core.store.view.cells["Cell_0a0000000001"].pool, "default")

    async def test_a_port_in_use_fails_the_start_at_once(self) -> None:
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", self.api_port))
        blocker.listen(1)
        service = CoreService(
            self.layout,
            self.config,
            self.certificates.ca,
            self.certificates.image,
            reactor,
            api=lambda core: api_resource(core, self.config, reactor),
        )
        with self.assertRaises(Exception) as caught:
            service.startService()
        self.assertIn(str(self.api_port), str(caught.exception))
        # The store was never opened: a second process could still take the data folder.
        self.assertFalse((self.layout.data_dir / "nanocore.db").exists())
