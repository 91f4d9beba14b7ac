"""The floor of an idle TLS link for scale_bench.py: a bare Twisted TLS server and its clients.

``serve CERT_DIR``: a do-nothing protocol behind Twisted's TLS with the options Core's Cell
link uses (the cluster CA in CERT_DIR, a client certificate required), on 127.0.0.1; prints
``READY <port>``. ``dial CERT_DIR PORT N``: N connections with one Cell certificate, each
completing its handshake; prints ``LINKED <N>`` and holds them until killed. Nothing is sent
after the handshake: what each connection costs the server is Twisted's and OpenSSL's own.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def main() -> None:
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor
    from twisted.internet.defer import gatherResults
    from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
    from twisted.internet.protocol import Factory, Protocol

    from nanocore.pki import (
        client_tls_options,
        issue_cell_certificate,
        issue_server_certificate,
        load_or_create_ca,
        server_tls_options,
    )
    from nanocore.tlsserver import tls_server_factory

    mode, cert_dir = sys.argv[1], Path(sys.argv[2])
    ca = load_or_create_ca(cert_dir)
    if mode == "serve":
        issued = issue_server_certificate(ca, "127.0.0.1")
        options = server_tls_options(ca, issued, require_client_certificate=True)
        factory = tls_server_factory(options, Factory.forProtocol(Protocol))
        port = reactor.listenTCP(0, factory, backlog=1024, interface="127.0.0.1")  # type: ignore[attr-defined]
        print(f"READY {port.getHost().port}", flush=True)
    else:
        port_number, count = int(sys.argv[3]), int(sys.argv[4])
        client = client_tls_options(ca, "127.0.0.1", issue_cell_certificate(ca, "Cell_floor"))
        held: list[Any] = []

        class Handshaken(Protocol):
            def connectionMade(self) -> None:
                held.append(self)

        def one(_: object = None) -> Any:
            endpoint = wrapClientTLS(client, TCP4ClientEndpoint(reactor, "127.0.0.1", port_number))
            connecting = endpoint.connect(Factory.forProtocol(Handshaken))
            # The handshake is done once the peer's certificate is known.
            return connecting.addCallback(lambda protocol: protocol.transport.getPeerCertificate())

        def in_batches(done: int = 0) -> Any:
            if done >= count:
                print(f"LINKED {len(held)}", flush=True)
                return None
            batch = min(100, count - done)
            waiting = gatherResults([one() for _ in range(batch)])
            return waiting.addCallback(lambda _: in_batches(done + batch))

        reactor.callWhenRunning(in_batches)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
