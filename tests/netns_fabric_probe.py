"""Run inside a throw-away network namespace by tests/test_cluster_inprocess.py.

The whole fabric over real sockets: Core's link listener (TLS on 127.0.0.1) advertised by the
real DiscoveryService, and FakeCells that find it by real multicast on ``lo`` and link to it.
Prints one JSON line; exits non-zero on any failure.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, task

from nanocore.cluster.discovery import DiscoveryService, ServiceEntry
from nanocore.pki import create_ca
from nanocore.testing.cluster import LOOPBACK, InProcessCluster
from nanocore.testing.fakecell import discover_core

GROUP = "224.0.0.226"
PORT = 5599
CELLS = ["Cell_netns000", "Cell_netns001", "Cell_netns002"]


async def probe(reactor: Any) -> dict[str, Any]:
    cluster = InProcessCluster(reactor, create_ca())
    await cluster.listen()
    host, port = cluster.address
    discovery = DiscoveryService(
        reactor,
        reactor,
        domain="nano",
        group_address=GROUP,
        group_port=PORT,
        listen_address=LOOPBACK,
        service=ServiceEntry(type="core", protocol="tls", address=host, port=port),
    )
    discovery.startService()
    try:
        locate = discover_core(
            reactor, reactor, domain="nano", group_address=GROUP, group_port=PORT,
            interface=LOOPBACK, timeout=5,
        )  # fmt: skip
        for name in CELLS:
            cluster.add_cell(name, locate=locate)
        reported = cluster.waiter.until_reported(set(CELLS))
        reported.addTimeout(20, reactor)
        await reported
        states = {name: str(cluster.registry.state(name).value) for name in CELLS}  # type: ignore[union-attr]
        addresses = sorted({cluster.registry.address(name) for name in CELLS})
    finally:
        await defer.maybeDeferred(discovery.stopService)
        await cluster.stop()
    return {"states": states, "addresses": addresses, "echoes": discovery.protocol.echoes_sent}


def main(reactor: Any) -> defer.Deferred[None]:
    async def run() -> None:
        print(json.dumps(await probe(reactor)), flush=True)

    return defer.Deferred.fromCoroutine(run())


if __name__ == "__main__":
    task.react(main)
