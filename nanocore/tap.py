"""`twistd nanocore`: the options and the composition of every nanocore service.

`makeService` reads the config (writing missing files first), prepares the certificates, and
returns one `MultiService` with a named child per service. Each child is built by its own
function below, so the cluster services, the store and the image site can join without
touching the others. This module composes; it holds no behaviour of its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from attrs import frozen
from klein import Klein
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IReactorTCP
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.server import Site

from nanocore import COMPATIBLE_CORE_VERSION, __version__
from nanocore.config import ConfigError, CoreConfig, ensure_config, load_config
from nanocore.layout import Layout, LayoutOptions
from nanocore.pki import (
    CertificateAuthority,
    IssuedCertificate,
    PKIError,
    ensure_server_certificate,
    load_or_create_ca,
)

log = Logger()

#: Names of the children of the top `MultiService`, so callers can `getServiceNamed` them.
API_SERVICE_NAME = "api"


class Options(LayoutOptions):
    """Options of `twistd nanocore`: the four runtime folders."""

    longdesc = (
        "Nano Core control node. Reads domain.cfg, api.cfg and image.cfg from the config"
        " folder, writing safe defaults for any that are missing."
    )


def version_document() -> dict[str, Any]:
    """The signed-out answer of `GET /api/v1/`: who is serving, and what it is compatible with."""
    return {
        "error_code": 0,
        "message": "",
        "data": {
            "name": "nanocore",
            "version": __version__,
            "compatible": COMPATIBLE_CORE_VERSION,
        },
    }


def api_site(config: CoreConfig) -> Site:
    """The HTTP site of the REST API.

    For now it only answers the version document; the API room's Klein app replaces the
    body of this function.
    """
    app = Klein()

    @app.route("/api/v1/", methods=["GET"])
    def version(request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        return (json.dumps(version_document(), indent=2) + "\n").encode("utf-8")

    return Site(app.resource())


def api_service(config: CoreConfig, reactor: IReactorTCP) -> IService:
    """Serve the API site on `listen_address`:`port` (the original binds every interface)."""
    endpoint = TCP4ServerEndpoint(reactor, config.api.port, interface=config.domain.listen_address)
    service = StreamServerEndpointService(endpoint, api_site(config))
    # As `strports.service` does: a port that cannot be bound fails startService, so twistd
    # reports it to `nanocore start` instead of logging it from a daemon that serves nothing.
    service._raiseSynchronously = True
    service.setName(API_SERVICE_NAME)
    return service


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
    )
    return Certificates(ca=ca, image=image)


def load_checked_config(layout: Layout) -> CoreConfig:
    """Create the folders, write missing config files, and load and validate all three."""
    layout.create_folders()
    ensure_config(layout.config_dir, cert_dir=layout.cert_dir)
    return load_config(layout.config_dir)


def build_service(
    layout: Layout,
    config: CoreConfig,
    certificates: Certificates,
    reactor: IReactorTCP,
) -> MultiService:
    """Compose the running core from validated config; one child service per concern.

    The store, the cluster services (discovery, Cell link listener) and the image site join
    here, each from its own function like `api_service`.
    """
    top = MultiService()
    api_service(config, reactor).setServiceParent(top)
    return top


def makeService(options: Options, reactor: IReactorTCP | None = None) -> MultiService:
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
