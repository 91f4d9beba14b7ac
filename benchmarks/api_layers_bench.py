"""What each layer of a signed, cached GET costs, in one process and without sockets.

The same request bytes go through a real ``HTTPChannel`` into a ``StringTransport`` over and
over, answered by four resources that each add one layer to the one before:

1. a plain ``twisted.web`` leaf resource returning the encoded list (Twisted's HTTP floor);
2. a one-route ``Klein()`` app returning the same bytes (adds Klein's request handling and
   werkzeug's matching);
3. the API's ``APIResource`` with the route unsigned (adds our endpoint chain: reading the
   request, the response cache, the handler call);
4. the same route signed (adds the Nano-HMAC-SHA256 verification);
5. that signed app behind the cached-read fast path (``nanocore.api._fastread``): Klein and
   our chain skipped for a kept answer, the signature still checked;
6. the same, composed as the daemon serves it: the starting gate and the stream routes in
   front, on the site with upload routes (``StreamingAPIChannel``, ``StreamingAPIRequest``).

Line 0 is the true floor: the plain resource on a plain ``twisted.web.server.Site`` (lines 1-5
use the API's site, ``api_site_for``, with its wire limits).

    python benchmarks/api_layers_bench.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from klein import Klein
from twisted.internet.defer import succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from nanocore.api import envelope
from nanocore.api._fastread import CachedReads
from nanocore.api.app import APIResource, api_site_for
from nanocore.api.auth import Variant, Verifier
from nanocore.api.cache import ResponseCache
from nanocore.api.client import Signer
from nanocore.api.route import Call, Route
from nanocore.api.streams import StreamFront
from nanocore.images.transfers import Transfers
from nanocore.services.gate import StartingGate

CREDENTIALS = {"bench": "benchmark-key-0123456789"}
POOLS = [
    {
        "name": "default",
        "enabled": True,
        "cells": 0,
        "network": "",
        "storage": "",
        "failover": False,
    }
]
ENCODED = envelope.success(POOLS)


class Plain(Resource):
    isLeaf = True

    def render(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", envelope.CONTENT_TYPE)
        request.setHeader(b"Content-Length", b"%d" % len(ENCODED))
        return ENCODED


def trivial_klein() -> IResource:
    app = Klein()

    @app.route("/api/v1/compute_pools/", methods=["GET"])
    def pools(request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", envelope.CONTENT_TYPE)
        request.setHeader(b"Content-Length", b"%d" % len(ENCODED))
        return ENCODED

    resource: IResource = app.resource()
    return resource


def api(clock: Clock, signed: bool, fast: bool = False) -> IResource:
    def pools(ops: object, call: Call) -> Any:
        return POOLS

    route = Route(
        "GET",
        "/compute_pools/",
        pools,
        "list",
        "pools",
        auth=Variant.REQUEST if signed else None,
        cacheable=True,
    )
    verifier, cache = Verifier(CREDENTIALS, clock), ResponseCache(lambda: 1)
    app = APIResource([route], None, verifier, cache)
    return CachedReads(app, cache, verifier) if fast else app


def daemon_site(clock: Clock) -> Site:
    """The signed fast-path app as ``tap`` composes it: gate, stream routes, streaming site."""
    resource = api(clock, signed=True, fast=True)
    verifier = Verifier(CREDENTIALS, clock)
    front = StreamFront(resource, Transfers.__new__(Transfers), verifier)
    gate = StartingGate(lambda: succeed(front), lambda failure: None)
    return api_site_for(gate, upload_routes=lambda: front)  # every request asks it


def per_request(
    resource: IResource | Factory[Any], request: bytes, count: int
) -> tuple[float, float]:
    """Best of three runs in seconds per request, and Python function calls per request.

    The call count does not move with the machine's load: it tells two builds apart where the
    timings, on a shared machine, cannot. ``resource`` is served on the API's site unless it
    is a protocol factory (a ``Site`` or another server) already."""
    site = resource if isinstance(resource, Factory) else api_site_for(resource)
    channel = site.buildProtocol(None)
    assert channel is not None
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(request)
    assert b'"error_code": 0' in transport.value(), transport.value()
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(count):
            transport.clear()
            channel.dataReceived(request)
        best = min(best, (time.perf_counter() - started) / count)
    calls = 0

    def counting(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        calls += event == "call"

    sys.setprofile(counting)
    for _ in range(100):
        transport.clear()
        channel.dataReceived(request)
    sys.setprofile(None)
    channel.connectionLost(None)
    return best, calls / 100


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    clock = Clock()
    clock.advance(time.time())
    signer = Signer(*next(iter(CREDENTIALS.items())))
    headers = signer.headers(
        "GET", "http://127.0.0.1:5850/api/v1/compute_pools/", now=clock.seconds()
    )
    request = b"GET /api/v1/compute_pools/ HTTP/1.1\r\n"
    request += b"".join(name + b": " + value + b"\r\n" for name, value in headers.items())
    request += b"\r\n"
    bare = Site(Plain())
    bare.log = lambda request: None  # type: ignore[method-assign]
    layers: list[tuple[str, IResource | Factory[Any]]] = [
        ("plain resource, plain Site", bare),
        ("plain twisted.web resource", Plain()),
        ("+ Klein and werkzeug", trivial_klein()),
        ("+ our dispatch (unsigned route)", api(clock, signed=False)),
        ("+ signature (the real GET)", api(clock, signed=True)),
        ("signed, behind the fast path", api(clock, signed=True, fast=True)),
        ("the same as the daemon composes it", daemon_site(clock)),
    ]
    previous = 0.0
    for name, resource in layers:
        seconds, calls = per_request(resource, request, args.requests)
        print(
            f"{name:34s} {seconds * 1e6:6.1f} us/request  {1 / seconds:7.0f} req/s  "
            f"(+{(seconds - previous) * 1e6:5.1f} us)  {calls:5.0f} Python calls/request"
        )
        previous = seconds


if __name__ == "__main__":
    main()
