"""`twistd nanocore`: the options and the composition of every nanocore service.

`makeService` reads the config (writing missing files first), prepares the certificates, and
returns one `MultiService` holding the `CoreService` of `nanocore.service`, which opens the
store and starts the Cell link, discovery and the API in order. This module composes; it holds
no behaviour of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attrs import frozen
from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.web.resource import IResource

from nanocore import COMPATIBLE_CORE_VERSION, __version__
from nanocore.api.app import build_api_resource
from nanocore.config import ConfigError, CoreConfig, ensure_config, load_config
from nanocore.layout import Layout, LayoutOptions
from nanocore.pki import (
    CertificateAuthority,
    IssuedCertificate,
    PKIError,
    ensure_server_certificate,
    load_or_create_ca,
)
from nanocore.service import CoreService, RunningCore

log = Logger()


class Options(LayoutOptions):
    """Options of `twistd nanocore`: the four runtime folders."""

    longdesc = (
        "Nano Core control node. Reads domain.cfg, api.cfg and image.cfg from the config"
        " folder, writing safe defaults for any that are missing."
    )


@frozen
class Certificates:
    """The cluster CA and the certificate the image site (and later the Cell link) serves."""

    ca: CertificateAuthority
    image: IssuedCertificate


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


def api_resource(core: RunningCore, config: CoreConfig, reactor: Any) -> IResource:
    """The signed REST API over the operations of a started Core."""
    return build_api_resource(core.operations, config.api.credential_keys(), reactor)


def build_service(
    layout: Layout,
    config: CoreConfig,
    certificates: Certificates,
    reactor: Any,
) -> MultiService:
    """Compose the running core from validated config.

    The store opens first; the Cell link, discovery and the API start once it is loaded (see
    `nanocore.service`). A Core that cannot start stops the reactor rather than idling.
    """
    top = MultiService()
    core = CoreService(
        layout,
        config,
        certificates.ca,
        certificates.image,
        reactor,
        api=lambda running: api_resource(running, config, reactor),
        on_failure=lambda _: reactor.callWhenRunning(reactor.stop),
    )
    core.setServiceParent(top)
    return top


def makeService(options: Options, reactor: Any = None) -> MultiService:
    """The twistd entry point; a config or certificate fault ends the process, naming it."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    layout = options.layout()
    try:
        config = load_checked_config(layout)
    except ConfigError as error:
        raise SystemExit(f"nanocore: config error: {error}") from None
    except OSError as error:
        raise SystemExit(f"nanocore: cannot prepare {error.filename}: {error.strerror}") from None
    try:
        certificates = prepare_certificates(layout, config)
    except (PKIError, OSError) as error:
        raise SystemExit(f"nanocore: certificate error: {error}") from None
    log.info(
        "nanocore {version} (compatible with Nano Core {compatible}): API on {address}:{port}",
        version=__version__,
        compatible=COMPATIBLE_CORE_VERSION,
        address=config.domain.listen_address,
        port=config.api.port,
    )
    return build_service(layout, config, certificates, reactor)
