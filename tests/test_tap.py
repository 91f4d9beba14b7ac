"""`twistd nanocore`: options, the plugin, and the composition of services."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from twisted.application.internet import MulticastServer
from twisted.application.service import IServiceMaker
from twisted.internet.address import IPv4Address
from twisted.internet.error import ReactorNotRunning
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from nanocore import __version__, config, pki, tap
from nanocore.api.request import LimitedChannel
from nanocore.cluster.discovery import DiscoveryListener
from nanocore.layout import Layout
from nanocore.openfiles import RESERVED_FILES, connection_share
from nanocore.services.gate import ClosingGate
from nanocore.services.images import ImageSiteService
from nanocore.services.link import CellLinkService
from nanocore.services.listen import ListeningService, PortFile
from nanocore.services.logs import RotatedLogs
from nanocore.services.memory import MemoryTrim
from nanocore.services.order import InOrder
from nanocore.services.replay import ReplayMemory
from nanocore.services.stall import StallWatch
from nanocore.services.store import StoreService
from nanocore.services.timings import TimingReport
from nanocore.testing import simtap
from tests.loopbackapi import connect_in_memory


def write_config(
    config_dir: Path,
    *,
    listen_address: str = "127.0.0.1",
    port: int = 5850,
    **domain: object,
) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    documents = {
        config.DOMAIN_FILE: {"listen_address": listen_address, **domain},
        config.API_FILE: {"port": port, "credentials": [{"id": "a", "key": "k"}]},
        config.IMAGE_FILE: {
            "cert_file": str(config_dir.parent / "cert" / "image.crt.pem"),
            "key_file": str(config_dir.parent / "cert" / "image.key.pem"),
        },
    }
    for name, document in documents.items():
        (config_dir / name).write_text(json.dumps(document), encoding="utf-8")


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        options = tap.Options()
        options.parseOptions([])
        self.assertEqual(
            dict(options),
            {
                "config-dir": Path("config"),
                "data-dir": Path("data"),
                "cert-dir": Path("cert"),
                "log-dir": Path("log"),
            },
        )

    def test_every_folder_can_be_moved(self) -> None:
        options = tap.Options()
        options.parseOptions(
            [
                "--config-dir",
                "/etc/nano",
                "--data-dir=/var/lib/nano",
                "--cert-dir",
                "c",
                "--log-dir",
                "/var/log/nano",
            ]
        )
        self.assertEqual(
            dict(options),
            {
                "config-dir": Path("/etc/nano"),
                "data-dir": Path("/var/lib/nano"),
                "cert-dir": Path("c"),
                "log-dir": Path("/var/log/nano"),
            },
        )
        self.assertEqual(
            options.layout(),
            Layout(
                config_dir=Path("/etc/nano"),
                data_dir=Path("/var/lib/nano"),
                cert_dir=Path.cwd() / "c",
                log_dir=Path("/var/log/nano"),
            ),
        )

    def test_layout_names_pid_and_log_files(self) -> None:
        layout = Layout(Path("/c"), Path("/d"), Path("/e"), Path("/l"))
        self.assertEqual(
            (layout.pid_file, layout.log_file), (Path("/d/core.pid"), Path("/l/core.log"))
        )

    def test_empty_folder_is_a_usage_error(self) -> None:
        with self.assertRaises(usage.UsageError) as caught:
            tap.Options().parseOptions(["--data-dir", ""])
        self.assertIn("--data-dir", str(caught.exception))

    def test_unknown_option_is_a_usage_error(self) -> None:
        self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--port", "1"])

    def test_version_names_nanocore_not_twisted(self) -> None:
        """`twistd nanocore --version` and `twistd nanocell-sim --version` say what runs."""
        for options in (tap.Options(), simtap.Options()):
            printed = io.StringIO()
            self.patch(sys, "stdout", printed)
            with self.assertRaises(SystemExit) as caught:
                options.parseOptions(["--version"])
            self.assertEqual(caught.exception.code, 0)
            self.assertTrue(printed.getvalue().startswith(f"nanocore {__version__} "))
            self.assertNotIn("Twisted version", printed.getvalue())


class PluginTests(SynchronousTestCase):
    def test_twistd_finds_the_nanocore_plugin(self) -> None:
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("nanocore", makers)
        maker = makers["nanocore"]
        self.assertIsInstance(maker.options(), tap.Options)
        self.assertEqual(maker.module, "nanocore.tap")  # type: ignore[attr-defined]


class GroupPort:
    """What `listenMulticast` returns in memory: a port that can stop."""

    def __init__(self, host: IPv4Address) -> None:
        self.host = host

    def getHost(self) -> IPv4Address:
        return self.host

    def stopListening(self) -> None:
        pass


class MemoryMulticastReactor(MemoryReactorClock):
    """A memory reactor that also records multicast listeners (discovery)."""

    def __init__(self) -> None:
        super().__init__()
        self.multicastServers: list[tuple[int, object, str, bool]] = []

    def listenMulticast(
        self,
        port: int,
        protocol: object,
        interface: str = "",
        maxPacketSize: int = 8192,
        listenMultiple: bool = False,
    ) -> object:
        self.multicastServers.append((port, protocol, interface, listenMultiple))
        return GroupPort(IPv4Address("UDP", interface, port))


class MakeServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp()).absolute()
        self.options = tap.Options()
        self.options.parseOptions(
            [
                f"--config-dir={self.root / 'config'}",
                f"--data-dir={self.root / 'data'}",
                f"--cert-dir={self.root / 'cert'}",
                f"--log-dir={self.root / 'log'}",
            ]
        )
        self.reactor = MemoryMulticastReactor()
        # Fatal-error reports are the process's: recorded here, never enabled in the test runner.
        self.fault_files: list[Path] = []
        self.earlier_death: str | None = None

        def report_fatal_errors(path: Path) -> str | None:
            self.fault_files.append(path)
            return self.earlier_death

        self.patch(tap, "report_fatal_errors", report_fatal_errors)

    def test_fatal_errors_are_reported_in_the_log_folder(self) -> None:
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        tap.makeService(self.options, self.reactor)
        self.assertEqual(self.fault_files, [self.root / "log" / "core-fault.log"])
        said = [formatEvent(event) for event in logged]
        self.assertTrue(any(f"fatal errors are reported in {self.fault_files[0]}" in line
                            for line in said), said)  # fmt: skip
        self.assertFalse([line for line in said if "previous run" in line])

    def test_a_previous_death_is_told_at_start(self) -> None:
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.earlier_death = "2026-12-06T10:00:00Z"
        tap.makeService(self.options, self.reactor)
        [warning] = [
            formatEvent(event) for event in logged if "previous run" in formatEvent(event)
        ]
        self.assertIn("(started 2026-12-06T10:00:00Z) died of a fatal error or a signal", warning)
        self.assertIn(str(self.root / "log" / "core-fault.log"), warning)

    def test_fresh_machine_gets_config_ca_and_image_certificate(self) -> None:
        tap.makeService(self.options, self.reactor)
        for folder in ("config", "data", "cert", "log"):
            self.assertTrue((self.root / folder).is_dir(), folder)
        for name in (config.DOMAIN_FILE, config.API_FILE, config.IMAGE_FILE):
            self.assertTrue((self.root / "config" / name).is_file(), name)
        ca_cert = self.root / "cert" / pki.CA_CERT_FILE
        image_cert = self.root / "cert" / config.IMAGE_CERT_NAME
        ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
        image = x509.load_pem_x509_certificate(image_cert.read_bytes())
        self.assertEqual(image.issuer, ca.subject)
        self.assertEqual(pki.first_ip_address(image), "127.0.0.1")

    def test_the_service_tree_in_start_order(self) -> None:
        """Every service of a Core, named, in the order they start (and stop in reverse)."""
        tree = tap.makeService(self.options, self.reactor)
        self.assertIsInstance(tree, InOrder)
        self.assertEqual(
            [(child.name, type(child)) for child in tree],
            [
                ("store", StoreService),
                ("timings", TimingReport),
                ("replay-memory", ReplayMemory),
                ("kcp-link", CellLinkService),
                ("cell-link", CellLinkService),
                ("images", ImageSiteService),
                ("discovery", MulticastServer),
                ("api", ListeningService),
                ("api-port", PortFile),
                ("memory", MemoryTrim),
                ("logs", RotatedLogs),
                ("stalls", StallWatch),
                ("api-gate", ClosingGate),
            ],
        )

    def test_kcp_link_off_leaves_only_the_tls_link(self) -> None:
        write_config(self.root / "config", kcp_link=False)
        tree = tap.makeService(self.options, self.reactor)
        names = [child.name for child in tree]
        self.assertEqual(names[:4], ["store", "timings", "replay-memory", "cell-link"])
        self.assertNotIn("kcp-link", names)

    def test_nothing_listens_before_the_service_starts(self) -> None:
        write_config(self.root / "config", listen_address="127.0.0.9", port=15850)
        tap.makeService(self.options, self.reactor)
        self.assertEqual(
            (self.reactor.tcpServers, self.reactor.sslServers, self.reactor.multicastServers),
            ([], [], []),
        )

    def test_a_privileged_start_binds_discovery_and_the_api_and_opens_nothing(self) -> None:
        """What twistd does before it reports a start: only the synchronous binds."""
        write_config(self.root / "config", listen_address="127.0.0.9", port=15850)
        tree = tap.makeService(self.options, self.reactor)
        tree.privilegedStartService()
        [(port, _site, _backlog, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface), (15850, "127.0.0.9"))
        [(group_port, listener, group, shared)] = self.reactor.multicastServers
        self.assertEqual((group_port, group, shared), (5599, "224.0.0.226", True))
        self.assertIsInstance(listener, DiscoveryListener)
        self.assertEqual(self.reactor.sslServers, [])
        self.assertFalse((self.root / "data" / "nanocore.db").exists())

    def test_the_api_listens_with_a_large_backlog_and_a_connection_cap(self) -> None:
        write_config(self.root / "config", listen_address="127.0.0.9", port=15850)
        tree = tap.makeService(self.options, self.reactor)
        tree.privilegedStartService()
        [(_port, site, backlog, _interface)] = self.reactor.tcpServers
        self.assertEqual(backlog, tap.API_BACKLOG)
        self.assertEqual(site.max_connections, min(4096, connection_share(current_limit())))
        # Upload routes stream, and the line, header and connection limits still hold.
        self.assertTrue(issubclass(site.protocol, LimitedChannel))

    def test_a_low_open_file_limit_cuts_what_unauthenticated_peers_may_hold(self) -> None:
        write_config(self.root / "config", listen_address="127.0.0.9", port=15850)
        layout = self.options.layout()
        loaded = tap.load_checked_config(layout)
        certificates = tap.prepare_certificates(layout, loaded)
        tree = tap.build_service(layout, loaded, certificates, self.reactor, open_files=1024)
        tree.privilegedStartService()
        [(_port, site, _backlog, _interface)] = self.reactor.tcpServers
        self.assertEqual(site.max_connections, 256)
        # And every port's connections together: the API's own count among them.
        descriptors = site.descriptors
        self.assertEqual(descriptors.allowed, 1024 - RESERVED_FILES)
        self.assertEqual(descriptors.in_use(), 0)
        connect_in_memory(self, site, "192.0.2.7", 1024)
        self.assertEqual(descriptors.in_use(), 1)

    def test_image_certificate_follows_the_listen_address(self) -> None:
        write_config(self.root / "config", listen_address="127.0.0.1")
        tap.makeService(self.options, self.reactor)
        write_config(self.root / "config", listen_address="127.0.0.2")
        tap.makeService(self.options, self.reactor)
        image = x509.load_pem_x509_certificate((self.root / "cert" / "image.crt.pem").read_bytes())
        self.assertEqual(pki.first_ip_address(image), "127.0.0.2")

    def test_an_address_not_on_this_host_changes_nothing_in_the_cert_folder(self) -> None:
        """The start would fail at the first bind; the image certificate must not follow
        the wrong address first (nor a new CA be made)."""
        cert = self.root / "cert"
        # TEST-NET-1 is never a local address: the bind fails, no packet leaves the host.
        for fresh in (True, False):
            if not fresh:
                write_config(self.root / "config", listen_address="127.0.0.1")
                tap.makeService(self.options, self.reactor)
            before = {p.name: p.read_bytes() for p in cert.iterdir()} if cert.exists() else {}
            write_config(self.root / "config", listen_address="192.0.2.1", port=5850)
            with self.assertRaises(SystemExit) as caught:
                tap.makeService(self.options, self.reactor)
            self.assertEqual(
                caught.exception.code,
                "nanocore: cannot listen on 192.0.2.1:5850: 192.0.2.1 is not an address of"
                " this host (listen_address in domain.cfg)",
            )
            after = {p.name: p.read_bytes() for p in cert.iterdir()} if cert.exists() else {}
            self.assertEqual(after, before)
            self.assertEqual(self.reactor.tcpServers, [])

    def test_a_copied_config_cannot_touch_another_installations_files(self) -> None:
        """image.cfg copied with its absolute paths names the first installation's pair."""
        write_config(self.root / "config", listen_address="127.0.0.1")
        tap.makeService(self.options, self.reactor)
        first_cert = self.root / "cert"
        before = {path.name: path.read_bytes() for path in first_cert.iterdir()}
        second = Path(self.mktemp()).absolute()
        shutil.copytree(self.root / "config", second / "config")
        config_file = second / "config" / config.DOMAIN_FILE
        config_file.write_text(json.dumps({"listen_address": "127.0.0.2"}))
        for shared_ca in (False, True):
            if shared_ca:  # the same cluster CA does not make the files its own either
                (second / "cert").mkdir(exist_ok=True)
                for name in (pki.CA_CERT_FILE, pki.CA_KEY_FILE):
                    shutil.copy(first_cert / name, second / "cert" / name)
            options = tap.Options()
            options.parseOptions(
                [f"--{n}-dir={second / n}" for n in ("config", "data", "cert", "log")]
            )
            with self.assertRaises(SystemExit) as caught:
                tap.makeService(options, self.reactor)
            message = str(caught.exception.code)
            self.assertIn(
                f"certificate error: {first_cert / 'image.crt.pem'} cannot serve", message
            )
            self.assertIn(f"cert folder {second / 'cert'}", message)
            self.assertEqual({p.name: p.read_bytes() for p in first_cert.iterdir()}, before)

    def test_bad_config_ends_the_process_naming_file_and_key(self) -> None:
        write_config(self.root / "config", port=70000)
        with self.assertRaises(SystemExit) as caught:
            tap.makeService(self.options, self.reactor)
        message = str(caught.exception.code)
        self.assertIn(str(self.root / "config" / config.API_FILE), message)
        self.assertIn('"port"', message)
        self.assertIn("70000", message)
        self.assertFalse((self.root / "cert" / pki.CA_CERT_FILE).exists())
        self.assertEqual(self.reactor.tcpServers, [])

    def test_a_folder_that_cannot_be_made_ends_the_process(self) -> None:
        self.root.mkdir()
        (self.root / "data").write_text("a file where the data folder should be")
        with self.assertRaises(SystemExit) as caught:
            tap.makeService(self.options, self.reactor)
        self.assertIn(f"cannot prepare {self.root / 'data'}", str(caught.exception.code))

    def test_unusable_certificate_folder_ends_the_process(self) -> None:
        write_config(self.root / "config")
        (self.root / "cert").mkdir()
        (self.root / "cert" / pki.CA_CERT_FILE).write_text("not a certificate")
        with self.assertRaises(SystemExit) as caught:
            tap.makeService(self.options, self.reactor)
        self.assertIn("certificate error", str(caught.exception.code))
        self.assertIn(pki.CA_KEY_FILE, str(caught.exception.code))


class StopOnFailureTests(SynchronousTestCase):
    def test_the_first_failure_is_told_and_stops_the_reactor_once(self) -> None:
        class Running:
            stops = 0

            def callWhenRunning(self, f: Any) -> None:
                f()

            def stop(self) -> None:
                if self.stops:
                    raise ReactorNotRunning()
                self.stops += 1

        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        reactor = Running()
        failed = tap.stop_on_failure(reactor)
        failed(Failure(RuntimeError("the store is damaged")))
        failed(Failure(RuntimeError("so the operations over it cannot be built")))
        self.assertEqual(reactor.stops, 1)
        [said] = [formatEvent(event) for event in logged]
        self.assertEqual(said, "nanocore could not start: RuntimeError: the store is damaged")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


def current_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
