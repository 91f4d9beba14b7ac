"""Run inside a throw-away network namespace by tests/test_discovery_netns.py.

Starts Core's discovery listener on 127.0.0.1 as ``tap`` serves it, queries it with the real
pinger over real multicast on ``lo``, and prints one JSON line: the echo it got, and whether a
ping for another domain went unanswered. Exits non-zero on any failure.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, task

from nanocore.cluster.discovery import (
    DiscoveryListener,
    DiscoveryTimeout,
    ServiceEntry,
    core_service,
    find_core,
)
from nanocore.config import DomainConfig
from nanocore.tap import discovery_server

GROUP = "224.0.0.226"
PORT = 5599
LOOPBACK = "127.0.0.1"


async def probe(reactor: Any) -> dict[str, Any]:
    entry = ServiceEntry(type="core", protocol="tls", address=LOOPBACK, port=5600)
    service = discovery_server(reactor, DomainConfig(listen_address=LOOPBACK), lambda: (entry,))
    listener: DiscoveryListener = service.args[1]
    service.startService()
    try:
        echo = await find_core(
            reactor, reactor, domain="nano", group_address=GROUP, group_port=PORT,
            interface=LOOPBACK, timeout=5,
        )  # fmt: skip
        try:
            await find_core(
                reactor, reactor, domain="other", group_address=GROUP, group_port=PORT,
                interface=LOOPBACK, timeout=0.5,
            )  # fmt: skip
            other_domain = "answered"
        except DiscoveryTimeout:
            other_domain = "unanswered"
    finally:
        await defer.maybeDeferred(service.stopService)
    core = core_service(echo)
    return {
        "id": echo.id,
        "requestor": echo.requestor,
        "core": None if core is None else [core.type, core.protocol, core.address, core.port],
        "echoes_sent": listener.echoes_sent,
        "other_domain": other_domain,
    }


def main(reactor: Any) -> defer.Deferred[None]:
    async def run() -> None:
        print(json.dumps(await probe(reactor)), flush=True)

    return defer.Deferred.fromCoroutine(run())


if __name__ == "__main__":
    task.react(main)
