"""The floor of the HTTP stack for api_bench.py: a bare ``twisted.web`` leaf resource.

It answers each path with bytes set beforehand (``POST /__answer<path>`` with the bytes as the
body), whatever the request's headers say: no signature, no routing, no envelope work. The same
process setup as the daemon: epoll reactor, the same interpreter, pinned by the caller, no
access log (Core keeps none either). Prints ``READY <port>`` once listening on 127.0.0.1.
"""

from __future__ import annotations

import sys
from typing import Any


def main() -> None:
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    answers: dict[bytes, bytes] = {}

    class Answers(Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            path = request.path
            if request.method == b"POST" and path.startswith(b"/__answer"):
                answers[path[len(b"/__answer") :]] = request.content.read()
                return b""
            answer = answers.get(path, b"")
            request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
            request.setHeader(b"Content-Length", b"%d" % len(answer))
            return answer

    class QuietSite(Site):
        def log(self, request: Any) -> None:
            pass

    site = QuietSite(Answers())
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"READY {port.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
