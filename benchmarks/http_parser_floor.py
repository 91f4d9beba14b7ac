"""What a faster HTTP parser could take off a request: issue #15's design decision, measured.

The same request bytes go, in one process and without sockets, into:

1. Twisted's floor: a plain leaf resource on a plain ``twisted.web.server.Site`` without form
   parsing, as nanocore's requests run (what every request pays before any of our code runs;
   ``api_layers_bench.py`` line 0);
2. httptools (the C parser of uvicorn, llhttp) under a minimal Twisted ``Protocol`` that
   collects the request line, headers and body and writes the same answer (status line,
   ``Date``, ``Content-Type``, ``Content-Length``, the bytes): the floor of an HTTP edge on an
   accelerated parser, before any routing or signature;
3. for reference, a signed cached ``GET`` as the daemon serves it (``api_layers_bench.py``'s
   last line).

Two requests: the signed ``GET /api/v1/compute_pools/`` a portal polls, and a ``POST`` with a
guest-create body (the bytes of a durable write before its decode). httptools is not a
dependency of nanocore; install it beside to run this (``pip install httptools``).

    python benchmarks/http_parser_floor.py [--requests 20000] [--instructions]

``--instructions`` counts instructions per request under valgrind (runs of N and 4N requests,
the difference), the figure to compare by on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from api_layers_bench import CREDENTIALS, ENCODED, Plain, daemon_site, per_request
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.server import Site
from valgrind import instructions_per

from nanocore.api import envelope
from nanocore.api.client import Signer

CREATE_BODY = json.dumps(
    {
        "name": "web-01",
        "owner": "admin",
        "group": "ops",
        "pool": "default",
        "template": "4e3c8b1e-5a7f-4a5e-9f1e-0c3b2a1d0e9f",
        "cores": 1,
        "memory": 1073741824,
        "disks": [10737418240],
        "auto_start": True,
    }
).encode()


class Edge(Protocol):
    """An HTTP/1.1 server reduced to httptools' callbacks and one write per request."""

    def connectionMade(self) -> None:
        import httptools  # type: ignore[import-not-found]

        self._parser = httptools.HttpRequestParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        head = b"HTTP/1.1 200 OK\r\nDate: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
        date = formatdate(usegmt=True).encode()
        self.transport.write(head % (date, envelope.CONTENT_TYPE, len(ENCODED)) + ENCODED)  # type: ignore[union-attr]
        self._headers, self._body = [], []

    def dataReceived(self, data: bytes) -> None:
        self._parser.feed_data(data)


class EdgeFactory(Factory):
    protocol = Edge


def requests() -> dict[str, bytes]:
    now = time.time()
    signer = Signer(*next(iter(CREDENTIALS.items())))
    url = "http://127.0.0.1:5850/api/v1/compute_pools/"
    signed = signer.headers("GET", url, now=now)  # Host included
    get = b"GET /api/v1/compute_pools/ HTTP/1.1\r\n"
    get += b"".join(n + b": " + v + b"\r\n" for n, v in signed.items())
    url = "http://127.0.0.1:5850/api/v1/guests/"
    signed = signer.headers("POST", url, CREATE_BODY, now=now)  # Content-Type too
    post = b"POST /api/v1/guests/ HTTP/1.1\r\nContent-Length: %d\r\n" % len(CREATE_BODY)
    post += b"".join(n + b": " + v + b"\r\n" for n, v in signed.items())
    return {"GET": get + b"\r\n", "POST": post + b"\r\n" + CREATE_BODY}


def servers() -> dict[str, Callable[[], Any]]:
    def twisted_site() -> Site:
        site = Site(Plain(), parsePOSTFormSubmission=False)
        site.log = lambda request: None  # type: ignore[method-assign]
        return site

    def daemon() -> Site:
        clock = Clock()
        clock.advance(time.time())
        return daemon_site(clock)

    return {"twisted": twisted_site, "httptools": EdgeFactory, "daemon": daemon}


def instructions(server: str, method: str, count: int) -> float:
    return instructions_per(lambda each: [__file__, "--child", server, method, str(each)], count)


def child(server: str, method: str, count: int) -> None:
    """A valgrind child: ``count`` requests and nothing else."""
    request = requests()[method]
    channel = servers()[server]().buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    for _ in range(count):
        transport.clear()
        channel.dataReceived(request)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--instructions", action="store_true", help="count them under valgrind")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        server, method, count = arguments.child
        child(server, method, int(count))
        return
    try:
        import httptools  # noqa: F401
    except ImportError:
        raise SystemExit("httptools is not installed: pip install httptools") from None
    lines = [("twisted", "GET"), ("httptools", "GET"), ("daemon", "GET")]
    lines += [("twisted", "POST"), ("httptools", "POST")]
    for server, method in lines:
        answering = servers()[server]()
        seconds, calls = per_request(answering, requests()[method], arguments.requests)
        line = f"{server:9s} {method:4s} {seconds * 1e6:6.1f} us/request  {calls:4.0f} calls"
        if arguments.instructions:
            count = max(500, arguments.requests // 20)
            line += f"  {instructions(server, method, count) / 1e3:7.1f} K instructions"
        print(line, flush=True)


if __name__ == "__main__":
    main()
