"""The real signed API over a real store, on a real loopback port, for tests about the wire.

Requests are written as raw bytes on their own connection (``Connection: close``) and the
answer read until the server closes it, so a test sees exactly what a client would: a status
line, or nothing at all. Signatures are checked against a ``Clock`` the test drives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from attrs import frozen
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.server import Site
from zope.interface import directlyProvides

from nanocore.api.app import build_api_site
from nanocore.api.client import Signer
from nanocore.api.testing import TEST_CREDENTIALS
from nanocore.operations.core import Operations
from nanocore.store import Store

reactor: Any = global_reactor

#: A whole second, as the portal's `Nano-Date` names one.
NOW = 1_714_529_472.0
LOOPBACK = "127.0.0.1"


@frozen
class Response:
    """What came back on one connection: nothing (``status`` 0), or one HTTP answer."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes

    @classmethod
    def parse(cls, data: bytes) -> Response:
        if not data:
            return cls(0, {}, b"")
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return cls(int(status_line.split()[1]), headers, body)

    def envelope(self) -> Any:
        return json.loads(self.body)


class Collect(Protocol):
    """Writes one request and collects everything until the server closes the connection."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received: list[bytes] = []
        self.closed: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed.callback(b"".join(self.received))


async def exchange(port: int, request: bytes, host: str = LOOPBACK) -> Response:
    """``request`` on a connection of its own; the answer once the server has closed it."""
    endpoint = TCP4ClientEndpoint(reactor, LOOPBACK, port, bindAddress=(host, 0))
    collect = await connectProtocol(endpoint, Collect(request))
    return Response.parse(await collect.closed)


class LoopbackAPI:
    """The API of a new store on 127.0.0.1, port 0; stopped at the test's cleanup."""

    def __init__(self, site: Site, port: Any, clock: Clock) -> None:
        self.site = site
        self.port = port
        self.number: int = port.getHost().port
        self.clock = clock
        self.signer = Signer(*next(iter(TEST_CREDENTIALS.items())))

    @classmethod
    async def start(cls, test: TestCase, **site_options: Any) -> LoopbackAPI:
        data = Path(test.mktemp()).absolute()
        data.mkdir(parents=True)
        store = await Store.open(data, reactor)
        test.addCleanup(store.close)
        clock = Clock()
        clock.advance(NOW)
        site = build_api_site(Operations(store, clock), TEST_CREDENTIALS, clock, **site_options)
        port = reactor.listenTCP(0, site, interface=LOOPBACK)
        test.addCleanup(port.stopListening)
        api = cls(site, port, clock)
        test.addCleanup(api.all_closed)
        return api

    def all_closed(self) -> Deferred[None]:
        """Fires once the server has seen every connection go: it may learn later than the
        client did, and a channel it still holds keeps its timers in the reactor."""
        site: Any = self.site
        done: Deferred[None] = Deferred()
        if site.open_connections == 0:
            done.callback(None)
            return done
        seen = site.connection_closed

        def closed(channel: object) -> None:
            seen(channel)
            if site.open_connections == 0 and not done.called:
                reactor.callLater(0, done.callback, None)  # after the channel's own cleanup

        site.connection_closed = closed
        return done

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.number}"

    def signed(self, method: str, path: str, body: bytes = b"") -> dict[bytes, bytes]:
        """Headers signing ``method path body`` at the clock's current time."""
        url = f"http://{self.host}/api/v1{path}"
        return self.signer.headers(method, url, body, now=self.clock.seconds())

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[bytes, bytes] | None = None
    ) -> bytes:
        """The bytes of one request (``Host`` from ``headers`` if they sign one)."""
        lines = [f"{method} /api/v1{path} HTTP/1.1".encode()]
        fields = {b"Host": self.host.encode(), **(headers or {})}
        fields[b"Connection"] = b"close"
        fields[b"Content-Length"] = b"%d" % len(body)
        lines += [name + b": " + value for name, value in fields.items()]
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    async def send(
        self, method: str, path: str, body: bytes = b"", headers: dict[bytes, bytes] | None = None
    ) -> Response:
        return await exchange(self.number, self.request(method, path, body, headers))

    async def call(self, method: str, path: str, document: Any = None) -> Any:
        """A request signed now; its envelope."""
        body = b"" if document is None else json.dumps(document).encode()
        answer = await self.send(method, path, body, self.signed(method, path, body))
        return answer.envelope()


def connect_in_memory(
    test: TestCase | Any, site: Any, host: str, port: int, *, tls: bool = False
) -> tuple[Any, StringTransport] | None:
    """A connection to ``site`` from ``host:port`` over a ``StringTransport`` (one that says
    it is TLS, with ``tls``), lost at the test's end; None when the site refuses it."""
    address = IPv4Address("TCP", host, port)
    channel = site.buildProtocol(address)
    if channel is None:
        return None
    transport = StringTransport(peerAddress=address)
    if tls:
        directlyProvides(transport, ISSLTransport)
        transport.setTcpNoDelay = lambda enabled: None  # type: ignore[attr-defined]
    channel.makeConnection(transport)
    test.addCleanup(lambda: channel.connectionLost(Failure(ConnectionDone())))
    return channel, transport
