"""The cluster CA in the cert dir and the certificates it issues.

The original Core needed a root CA made by the Installer and never verified anything: every TLS
client skipped verification. nanocore makes its own CA on first start (or uses the one the
Installer left in the cert dir), and everything it issues is verified against that CA only:
the image-server certificate by IP address, and the Cells' client certificates, which are the
only source of a Cell's name on the link.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger

from nanocore.atomicfile import write_file
from nanocore.config import IMAGE_CERT_NAME, IMAGE_KEY_NAME

log = Logger()

CA_CERT_FILE = "nano_ca.crt.pem"
CA_KEY_FILE = "nano_ca.key.pem"

#: The subject CN of the image-server certificate, as the original Core names it.
SERVER_COMMON_NAME = "nano ImageServer"
#: Marks a certificate issued to a Cell; a server certificate from the same CA is not a Cell.
CELL_UNIT = "cell"
ORGANIZATION = "nano"

CA_LIFETIME = datetime.timedelta(days=20 * 365)
LEAF_LIFETIME = datetime.timedelta(days=5 * 365)
#: A server certificate this close to expiry is re-issued at start; a CA this close, warned of.
RENEW_BEFORE = datetime.timedelta(days=30)
#: What to do with a cluster CA that cannot be used, after the reason.
CA_REMEDY = (
    "put a valid CA pair in its place (the Installer's, to keep one CA for the cluster), or move"
    " both files away and nanocore creates a new CA (Cell certificates must then come from it)"
)

Now = Callable[[], datetime.datetime]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class PKIError(Exception):
    """The cert dir holds something nanocore cannot use; the message says what and where."""


@attrs.frozen
class IssuedCertificate:
    """A certificate with its private key."""

    certificate: x509.Certificate
    private_key: CertificateIssuerPrivateKeyTypes

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def private_key_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def to_twisted(self) -> ssl.PrivateCertificate:
        return ssl.PrivateCertificate.loadPEM(self.certificate_pem + self.private_key_pem)


@attrs.frozen
class CertificateAuthority(IssuedCertificate):
    """The cluster CA: it signs the image server's, Core's and every Cell's certificate."""

    def issues(self, certificate: x509.Certificate) -> bool:
        """Whether C{certificate} carries a valid signature of this CA."""
        try:
            certificate.verify_directly_issued_by(self.certificate)
        except (InvalidSignature, TypeError, ValueError):
            return False
        return True

    def trust_root(self) -> ssl.Certificate:
        return ssl.Certificate.loadPEM(self.certificate_pem)


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: as strong as RSA-3072 and a thousand times faster to generate, which matters for
    # tests and simulators that issue hundreds of Cell certificates.
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, unit: str | None = None) -> x509.Name:
    attributes = [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ]
    if unit is not None:
        attributes.insert(1, x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    return x509.Name(attributes)


def create_ca(now: Now = _utcnow) -> CertificateAuthority:
    """A new self-signed cluster CA."""
    key = _new_key()
    subject = _name("nano cluster CA")
    start = now() - datetime.timedelta(minutes=5)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(certificate, key)


def _issue(
    ca: CertificateAuthority,
    subject: x509.Name,
    alternative_name: x509.GeneralName,
    usage: x509.ObjectIdentifier,
    now: Now,
) -> IssuedCertificate:
    start = now() - datetime.timedelta(minutes=5)
    # Nothing verifies past the CA's end, so a certificate never claims to outlive it.
    end = min(start + LEAF_LIFETIME, ca.certificate.not_valid_after_utc)
    if end <= start:
        raise PKIError(
            f"the cluster CA expired on {ca.certificate.not_valid_after_utc:%Y-%m-%d}:"
            f" it cannot issue certificates any more; {CA_REMEDY}"
        )
    key = _new_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([alternative_name]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.certificate.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca.private_key, hashes.SHA256())
    )
    return IssuedCertificate(certificate, key)


def issue_server_certificate(
    ca: CertificateAuthority,
    address: str,
    *,
    common_name: str = SERVER_COMMON_NAME,
    now: Now = _utcnow,
) -> IssuedCertificate:
    """A server certificate whose only subjectAltName is the IP C{address}."""
    ip = ipaddress.ip_address(address)
    return _issue(ca, _name(common_name), x509.IPAddress(ip), ExtendedKeyUsageOID.SERVER_AUTH, now)


def issue_cell_certificate(
    ca: CertificateAuthority, cell_name: str, *, now: Now = _utcnow
) -> IssuedCertificate:
    """A client certificate that names a Cell; the link takes the Cell's name from it."""
    if not cell_name or not all(c.isalnum() or c in "_-." for c in cell_name):
        raise PKIError(f"invalid cell name {cell_name!r}: expected letters, digits, '_-.'")
    return _issue(
        ca,
        _name(cell_name, unit=CELL_UNIT),
        x509.DNSName(cell_name),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        now,
    )


def write_pair(issued: IssuedCertificate, cert_path: Path, key_path: Path) -> None:
    """Store a certificate (0644) and its key (0600), the key first."""
    cert_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_file(key_path, issued.private_key_pem, mode=0o600)
    write_file(cert_path, issued.certificate_pem, mode=0o644)


def _load_pair(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, Any]:
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as e:
        raise PKIError(f"{cert_path}: not a readable PEM certificate ({e})") from e
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise PKIError(f"{key_path}: not a readable unencrypted PEM private key ({e})") from e
    if key.public_key().public_numbers() != certificate.public_key().public_numbers():  # type: ignore[union-attr]
        raise PKIError(f"{key_path}: this key does not belong to {cert_path}")
    return certificate, key


def load_or_create_ca(cert_dir: Path, *, now: Now = _utcnow) -> CertificateAuthority:
    """The cluster CA of C{cert_dir}, created there (key 0600) if it has none.

    One that is no CA, expired or not yet valid is refused (L{PKIError}): everything it signs
    would fail verification. One that expires within 30 days is used, with a warning.
    """
    cert_path, key_path = cert_dir / CA_CERT_FILE, cert_dir / CA_KEY_FILE
    if cert_path.exists() != key_path.exists():
        present, missing = (cert_path, key_path) if cert_path.exists() else (key_path, cert_path)
        raise PKIError(f"{present} exists but {missing} does not: restore it or remove both")
    if cert_path.exists():
        certificate, key = _load_pair(cert_path, key_path)
        unfit = _unfit_ca(certificate, now)
        if unfit is not None:
            raise PKIError(f"{cert_path} cannot be the cluster CA: {unfit}; {CA_REMEDY}")
        if certificate.not_valid_after_utc - RENEW_BEFORE < now():
            log.warn(
                "{path}: the cluster CA expires on {date}; from then on no Cell link or image"
                " download can be verified: {remedy}",
                path=str(cert_path),
                date=f"{certificate.not_valid_after_utc:%Y-%m-%d}",
                remedy=CA_REMEDY,
            )
        return CertificateAuthority(certificate, key)
    ca = create_ca(now)
    write_pair(ca, cert_path, key_path)
    log.info("created the cluster CA in {path}", path=str(cert_path))
    return ca


def _unfit_ca(certificate: x509.Certificate, now: Now) -> str | None:
    """Why C{certificate} cannot sign what Cells and clients verify (None when it can)."""
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return "it is not a CA certificate (it has no basicConstraints extension)"
    if not constraints.value.ca:
        return "it is not a CA certificate (basicConstraints CA:FALSE)"
    return _outside_validity(certificate, now)


def _outside_validity(certificate: x509.Certificate, now: Now) -> str | None:
    """Why C{certificate} does not verify now (not yet, or no more valid), or None."""
    moment = now()
    if certificate.not_valid_before_utc > moment:
        return (
            f"it is not valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
            " (or this host's clock is wrong)"
        )
    if certificate.not_valid_after_utc <= moment:
        return f"it expired on {certificate.not_valid_after_utc:%Y-%m-%d}"
    return None


def first_ip_address(certificate: x509.Certificate) -> str | None:
    """The first IP subjectAltName, the one the original compares with the listen address."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    addresses = names.value.get_values_for_type(x509.IPAddress)
    return str(addresses[0]) if addresses else None


def has_core_shape(certificate: x509.Certificate) -> bool:
    """Whether C{certificate} looks as Core issues its image certificate, nanocore and the
    original alike: subject O=nano, CN=nano ImageServer, and one subjectAltName, an IP."""
    if certificate.subject != _name(SERVER_COMMON_NAME):
        return False
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return False
    return len(names.value) == 1 and bool(names.value.get_values_for_type(x509.IPAddress))


def _inside(folder: Path, *paths: Path) -> bool:
    return all(path.resolve().is_relative_to(folder.resolve()) for path in paths)


def _readable_certificate(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _unfit(
    ca: CertificateAuthority, certificate: x509.Certificate, address: str, now: Now
) -> str | None:
    """Why C{certificate} cannot serve C{address} (None when it can)."""
    found = first_ip_address(certificate)
    if found != address:
        return f"it names {found or 'no IP address'}, the listen address is {address}"
    if not ca.issues(certificate):
        return "it was not issued by the cluster CA"
    return _outside_validity(certificate, now)


def back_up(path: Path, now: Now = _utcnow) -> Path:
    """Copy C{path} to C{<name>.<UTC time>.bak} (0600), never over an earlier backup."""
    data = path.read_bytes()
    stamp = f"{now():%Y%m%dT%H%M%SZ}"
    for attempt in itertools.count():
        suffix = f".{stamp}.bak" if attempt == 0 else f".{stamp}-{attempt}.bak"
        backup = path.with_name(path.name + suffix)
        try:
            descriptor = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return backup
    raise AssertionError("unreachable")


def ensure_server_certificate(
    ca: CertificateAuthority,
    address: str,
    cert_path: Path,
    key_path: Path,
    *,
    cert_dir: Path,
    now: Now = _utcnow,
) -> IssuedCertificate:
    """The server certificate at C{cert_path} for C{address}; nothing nanocore did not issue
    is ever overwritten.

    A missing pair is issued, but only inside C{cert_dir}. A pair that does not fit (another
    address, another CA, not yet valid, expired or expiring within 30 days while the CA lasts
    longer, unreadable, key missing or not its own) is re-issued only when it is this
    installation's own issue, and the old files are kept as backups. Own issue means: both
    files inside C{cert_dir} (the CA may be shared by other installations, so its signature
    does not say whose file it is) and the shape Core issues (L{has_core_shape}). Anything else
    that does not fit raises L{PKIError} saying what to do; an operator's certificate that fits
    but expires soon is used, with a warning.
    """
    address = str(ipaddress.ip_address(address))
    _refuse_ca_files(cert_dir, cert_path, key_path)
    own_place = _inside(cert_dir, cert_path, key_path)
    if not cert_path.exists() and not key_path.exists():
        if not own_place:
            raise PKIError(
                f"{cert_path} does not exist and is outside the cert folder {cert_dir};"
                " nanocore issues certificates only there: set cert_file and key_file in"
                f" image.cfg to {cert_dir / IMAGE_CERT_NAME} and {cert_dir / IMAGE_KEY_NAME}"
            )
        try:
            return _issue_and_write(ca, address, cert_path, key_path, now)
        except OSError as error:
            raise PKIError(
                f"cannot issue {cert_path} for {address}: {_os_reason(error)}"
            ) from None
    certificate: x509.Certificate | None
    usable: IssuedCertificate | None = None
    try:
        certificate, key = _load_pair(cert_path, key_path)
    except PKIError as problem:
        certificate, reason = _readable_certificate(cert_path), str(problem)
    else:
        unfit = _unfit(ca, certificate, address, now)
        # One that already lasts as long as the CA would come back with the same end.
        lasts = certificate.not_valid_after_utc - RENEW_BEFORE >= now() or (
            certificate.not_valid_after_utc >= ca.certificate.not_valid_after_utc
        )
        if unfit is None and lasts:
            return IssuedCertificate(certificate, key)
        if unfit is None:
            usable = IssuedCertificate(certificate, key)
        reason = unfit or f"it expires on {certificate.not_valid_after_utc:%Y-%m-%d}"
    if not (own_place and certificate is not None and has_core_shape(certificate)):
        if usable is not None:
            log.warn(
                "{path}: {reason}; nanocore did not issue it and will not renew it",
                path=str(cert_path),
                reason=reason,
            )
            return usable
        remedy = (
            "replace the pair with one that fits, or move both files away and nanocore"
            " issues a new pair"
            if own_place
            else f"set cert_file and key_file in image.cfg to files in the cert folder {cert_dir}"
        )
        raise PKIError(
            f"{cert_path} cannot serve {address}: {reason}. nanocore did not issue it in its"
            f" cert folder {cert_dir}, so it will not replace it: {remedy}"
        )
    try:
        backups = [str(back_up(path, now)) for path in (cert_path, key_path) if path.exists()]
        log.warn(
            "re-issuing {path}: {reason}; the old files are kept as {backups}",
            path=str(cert_path),
            reason=reason,
            backups=", ".join(backups),
        )
        return _issue_and_write(ca, address, cert_path, key_path, now)
    except OSError as error:
        raise PKIError(
            f"{cert_path} must be re-issued ({reason}), but {_os_reason(error)}"
        ) from None


def _refuse_ca_files(cert_dir: Path, cert_path: Path, key_path: Path) -> None:
    """The image pair must not be the cluster CA's files: a key_file naming the CA's key was
    taken for a key of this installation's own image pair, and the CA's key was written over
    with a new image key (QA pass 20: every later start failed, and what was issued meanwhile
    was signed by a key that was not the CA's)."""
    for path, setting in ((cert_path, "cert_file"), (key_path, "key_file")):
        for ca_file in (cert_dir / CA_CERT_FILE, cert_dir / CA_KEY_FILE):
            if path.resolve() == ca_file.resolve() or (
                path.exists() and ca_file.exists() and os.path.samefile(path, ca_file)
            ):
                raise PKIError(
                    f"image.cfg {setting} {path} is the cluster CA's {ca_file.name}: cert_file"
                    " and key_file must name the image server's own pair (by default"
                    f" {cert_dir / IMAGE_CERT_NAME} and {cert_dir / IMAGE_KEY_NAME})"
                )


def _os_reason(error: OSError) -> str:
    """Which file nanocore could not use, and why: a bare errno says neither."""
    if error.filename is None:
        return error.strerror or str(error)
    return f"cannot use {error.filename}: {error.strerror}"


def _issue_and_write(
    ca: CertificateAuthority, address: str, cert_path: Path, key_path: Path, now: Now
) -> IssuedCertificate:
    issued = issue_server_certificate(ca, address, now=now)
    write_pair(issued, cert_path, key_path)
    log.info("issued {path} for {address}", path=str(cert_path), address=address)
    return issued


def server_tls_options(
    ca: CertificateAuthority, issued: IssuedCertificate, *, require_client_certificate: bool
) -> ssl.CertificateOptions:
    """TLS options for a server; with C{require_client_certificate}, only clients holding a
    certificate from C{ca} complete the handshake."""
    own = issued.to_twisted()
    if require_client_certificate:
        return _tolerating_clock_behind(own.options(ca.trust_root()))
    return own.options()


def requesting_tls_options(
    ca: CertificateAuthority, issued: IssuedCertificate
) -> ssl.CertificateOptions:
    """TLS 1.2+ options for a server that asks for a client certificate without requiring
    one (the image site: Cells present theirs, API clients sign instead). A certificate that
    is presented must verify against C{ca}, or the handshake fails."""
    own = issued.to_twisted()
    options = ssl.CertificateOptions(
        privateKey=own.privateKey.original,
        certificate=own.original,
        verify=True,
        caCerts=[ca.trust_root().original],
        requireCertificate=False,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
    return _tolerating_clock_behind(options)


#: How far ahead of Core's clock a peer certificate's start may lie and the certificate still
#: be taken (verified otherwise in full): Core's clock behind the host that issued it.
NOT_YET_VALID_TOLERANCE = datetime.timedelta(days=1)
#: OpenSSL's X509_V_ERR_CERT_NOT_YET_VALID.
_NOT_YET_VALID = 9
#: When a certificate taken early was last said, by its subject.
_said_early: dict[str, float] = {}


def _tolerating_clock_behind(
    options: ssl.CertificateOptions, now: Now = _utcnow
) -> ssl.CertificateOptions:
    """``options`` whose peer certificates, verified against the CA in full, may start up to
    :data:`NOT_YET_VALID_TOLERANCE` after Core's clock: a Cell restarted with a fresh
    certificate while Core's clock was 10 min behind could not link, was presumed lost after
    a minute and failed over while it still ran its guests, on two Cells at once (QA pass 22,
    C3). Each such certificate is said at most once an hour."""
    context = options.getContext()

    def verify(connection: object, certificate: Any, error: int, depth: int, ok: int) -> bool:
        if ok:
            return True
        if error != _NOT_YET_VALID:
            return False
        starts = certificate.to_cryptography().not_valid_before_utc
        if starts - now() > NOT_YET_VALID_TOLERANCE:
            return False
        subject = certificate.get_subject().CN or "?"
        moment = time.monotonic()
        if moment - _said_early.get(subject, -math.inf) >= 3600:
            _said_early[subject] = moment
            log.warn(
                "took the certificate of {subject}, valid only from {starts:%Y-%m-%d %H:%M:%S}"
                " UTC, at {now:%Y-%m-%d %H:%M:%S} UTC by Core's clock: Core's clock may be"
                " behind (set it right: NTP)",
                subject=subject,
                starts=starts,
                now=now(),
            )
        return True

    context.set_verify(context.get_verify_mode(), verify)
    return options


def client_tls_options(
    ca: CertificateAuthority,
    hostname_or_ip: str,
    issued: IssuedCertificate | None = None,
) -> IOpenSSLClientConnectionCreator:
    """TLS options for a client that trusts only C{ca} and checks the server's identity
    (an IP address or a host name) with service_identity."""
    return ssl.optionsForClientTLS(
        hostname_or_ip,
        trustRoot=ca.trust_root(),
        clientCertificate=issued.to_twisted() if issued is not None else None,
    )


def cell_name_of(certificate: x509.Certificate) -> str | None:
    """The Cell name a verified client certificate carries, or None if it is not a Cell's."""
    subject = certificate.subject
    units = subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if [unit.value for unit in units] != [CELL_UNIT]:
        return None
    try:
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usage.value:
        return None
    dns_names = names.value.get_values_for_type(x509.DNSName)
    return dns_names[0] if len(dns_names) == 1 else None


def peer_cell_name(transport: Any) -> str | None:
    """The Cell name from the client certificate of a TLS C{transport} whose handshake is done
    (the certificate was verified against the CA by then); None if it presented no Cell's."""
    peer = transport.getPeerCertificate()
    if peer is None:
        return None
    return cell_name_of(peer.to_cryptography())
