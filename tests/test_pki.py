"""The cluster CA, the image-server certificate and Cell client certificates."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path
from typing import Any

from cryptography import x509
from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_ip_address
from twisted.internet import defer, protocol, reactor
from twisted.internet.interfaces import IReactorSSL
from twisted.trial import unittest

from nanocore import config, pki

ssl_reactor: IReactorSSL = reactor  # type: ignore[assignment]


class CertificateAuthorityTests(unittest.TestCase):
    def setUp(self) -> None:
        self.cert_dir = Path(self.mktemp())

    def test_created_once_with_a_private_key(self) -> None:
        ca = pki.load_or_create_ca(self.cert_dir)
        key_mode = stat.S_IMODE((self.cert_dir / pki.CA_KEY_FILE).stat().st_mode)
        self.assertEqual(key_mode, 0o600)
        self.assertEqual(stat.S_IMODE(self.cert_dir.stat().st_mode), 0o700)
        again = pki.load_or_create_ca(self.cert_dir)
        self.assertEqual(again.certificate, ca.certificate)
        constraints = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(constraints.value.ca)

    def test_half_a_pair_is_refused(self) -> None:
        pki.load_or_create_ca(self.cert_dir)
        (self.cert_dir / pki.CA_KEY_FILE).unlink()
        with self.assertRaises(pki.PKIError) as caught:
            pki.load_or_create_ca(self.cert_dir)
        self.assertIn(pki.CA_CERT_FILE, str(caught.exception))
        self.assertIn(pki.CA_KEY_FILE, str(caught.exception))

    def test_mismatched_key_is_refused(self) -> None:
        pki.load_or_create_ca(self.cert_dir)
        other = pki.create_ca()
        (self.cert_dir / pki.CA_KEY_FILE).write_bytes(other.private_key_pem)
        with self.assertRaises(pki.PKIError) as caught:
            pki.load_or_create_ca(self.cert_dir)
        self.assertIn("does not belong", str(caught.exception))

    def test_issues_only_its_own(self) -> None:
        ca, other = pki.create_ca(), pki.create_ca()
        mine = pki.issue_server_certificate(ca, "127.0.0.1")
        self.assertTrue(ca.issues(mine.certificate))
        self.assertFalse(other.issues(mine.certificate))


class ServerCertificateTests(unittest.TestCase):
    def setUp(self) -> None:
        cert_dir = Path(self.mktemp())
        self.ca = pki.load_or_create_ca(cert_dir)
        self.cert_path = cert_dir / config.IMAGE_CERT_NAME
        self.key_path = cert_dir / config.IMAGE_KEY_NAME

    def test_verifies_for_the_listen_address_only(self) -> None:
        issued = pki.ensure_server_certificate(self.ca, "127.0.0.1", self.cert_path, self.key_path)
        certificate = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        self.assertEqual(certificate, issued.certificate)
        verify_certificate_ip_address(certificate, "127.0.0.1")
        self.assertRaises(
            VerificationError, verify_certificate_ip_address, certificate, "127.0.0.2"
        )
        self.assertEqual(stat.S_IMODE(self.key_path.stat().st_mode), 0o600)

    def test_kept_while_it_still_fits(self) -> None:
        first = pki.ensure_server_certificate(self.ca, "127.0.0.1", self.cert_path, self.key_path)
        second = pki.ensure_server_certificate(self.ca, "127.0.0.1", self.cert_path, self.key_path)
        self.assertEqual(first.certificate, second.certificate)

    def test_reissued_when_the_address_changes(self) -> None:
        first = pki.ensure_server_certificate(self.ca, "127.0.0.1", self.cert_path, self.key_path)
        second = pki.ensure_server_certificate(self.ca, "127.0.0.9", self.cert_path, self.key_path)
        self.assertNotEqual(first.certificate, second.certificate)
        self.assertEqual(pki.first_ip_address(second.certificate), "127.0.0.9")

    def test_reissued_when_from_another_ca(self) -> None:
        foreign = pki.issue_server_certificate(pki.create_ca(), "127.0.0.1")
        pki.write_pair(foreign, self.cert_path, self.key_path)
        issued = pki.ensure_server_certificate(self.ca, "127.0.0.1", self.cert_path, self.key_path)
        self.assertTrue(self.ca.issues(issued.certificate))

    def test_reissued_when_about_to_expire(self) -> None:
        first = pki.ensure_server_certificate(self.ca, "127.0.0.1", self.cert_path, self.key_path)

        def later() -> datetime.datetime:
            return first.certificate.not_valid_after_utc - datetime.timedelta(days=1)

        second = pki.ensure_server_certificate(
            self.ca, "127.0.0.1", self.cert_path, self.key_path, now=later
        )
        self.assertNotEqual(first.certificate, second.certificate)

    def test_unreadable_pair_is_reissued(self) -> None:
        self.cert_path.parent.mkdir(exist_ok=True)
        self.cert_path.write_bytes(b"not a certificate")
        self.key_path.write_bytes(b"not a key")
        issued = pki.ensure_server_certificate(self.ca, "127.0.0.1", self.cert_path, self.key_path)
        self.assertEqual(pki.first_ip_address(issued.certificate), "127.0.0.1")


class CellCertificateTests(unittest.TestCase):
    def test_names_the_cell(self) -> None:
        ca = pki.create_ca()
        issued = pki.issue_cell_certificate(ca, "Cell_5254001a2b3c")
        self.assertEqual(pki.cell_name_of(issued.certificate), "Cell_5254001a2b3c")
        self.assertTrue(ca.issues(issued.certificate))

    def test_a_server_certificate_is_not_a_cell(self) -> None:
        issued = pki.issue_server_certificate(pki.create_ca(), "127.0.0.1")
        self.assertIsNone(pki.cell_name_of(issued.certificate))

    def test_invalid_names_are_refused(self) -> None:
        ca = pki.create_ca()
        for name in ("", "a b", "cell/1", "x\n"):
            self.assertRaises(pki.PKIError, pki.issue_cell_certificate, ca, name)


class _Recorder(protocol.Protocol):
    """Records the Cell name once the TLS handshake has completed (on the first byte)."""

    def __init__(self, names: defer.Deferred[Any]) -> None:
        self.names = names

    def dataReceived(self, data: bytes) -> None:
        if not self.names.called:
            self.names.callback(pki.peer_cell_name(self.transport))
        self.transport.loseConnection()  # type: ignore[union-attr]


class _Greeter(protocol.Protocol):
    def __init__(self, lost: defer.Deferred[None]) -> None:
        self.lost = lost

    def connectionMade(self) -> None:
        self.transport.write(b"hello")  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class MutualTLSTests(unittest.TestCase):
    """Real handshakes over loopback sockets."""

    def setUp(self) -> None:
        self.ca = pki.create_ca()
        self.server_cert = pki.issue_server_certificate(self.ca, "127.0.0.1")
        self.names: defer.Deferred[Any] = defer.Deferred()
        names = self.names
        factory = protocol.Factory.forProtocol(lambda: _Recorder(names))
        options = pki.server_tls_options(
            self.ca, self.server_cert, require_client_certificate=True
        )
        self.port = ssl_reactor.listenSSL(0, factory, options, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    def connect(self, hostname: str, issued: pki.IssuedCertificate | None) -> defer.Deferred[None]:
        lost: defer.Deferred[None] = defer.Deferred()
        factory = protocol.ClientFactory.forProtocol(lambda: _Greeter(lost))
        options = pki.client_tls_options(self.ca, hostname, issued)
        connector = ssl_reactor.connectSSL(
            "127.0.0.1",
            self.port.getHost().port,  # type: ignore[attr-defined]
            factory,
            options,  # type: ignore[arg-type]
        )
        self.addCleanup(connector.disconnect)
        return lost

    async def test_cell_name_comes_from_the_certificate(self) -> None:
        cell = pki.issue_cell_certificate(self.ca, "Cell_0a0b0c0d0e0f")
        lost = self.connect("127.0.0.1", cell)
        name = await self.names
        self.assertEqual(name, "Cell_0a0b0c0d0e0f")
        await lost

    async def test_client_without_certificate_is_refused(self) -> None:
        await self.connect("127.0.0.1", None)
        self.assertFalse(self.names.called)

    async def test_client_from_another_ca_is_refused(self) -> None:
        stranger = pki.issue_cell_certificate(pki.create_ca(), "Cell_0a0b0c0d0e0f")
        await self.connect("127.0.0.1", stranger)
        self.assertFalse(self.names.called)

    async def test_server_is_verified_by_address(self) -> None:
        cell = pki.issue_cell_certificate(self.ca, "Cell_0a0b0c0d0e0f")
        await self.connect("127.0.0.2", cell)
        self.assertFalse(self.names.called)
