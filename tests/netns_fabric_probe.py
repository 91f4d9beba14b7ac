"""Run inside a throw-away network namespace by tests/test_cluster_inprocess.py.

The whole fabric over real sockets: Core's link listener on 127.0.0.1 (the wire named by the
first argument, "tls" or "kcp") advertised by Core's discovery listener as ``tap`` serves it
(the KCP entry first, then TLS), and FakeCells that find it by real multicast on ``lo``, pick
the entry of their wire and link to it. Prints one JSON line; exits non-zero on any failure.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import defer, task

from nanocore.cluster.discovery import DiscoveryListener, ServiceEntry
from nanocore.config import DomainConfig
from nanocore.pki import create_ca
from nanocore.tap import discovery_server
from nanocore.testing.cluster import LOOPBACK, WIRES, InProcessCluster, Wire
from nanocore.testing.fakecell import discover_core

GROUP = "224.0.0.226"
PORT = 5599
CELLS = ["Cell_netns000", "Cell_netns001", "Cell_netns002"]


async def probe(reactor: Any, wire: Wire) -> dict[str, Any]:
    cluster = InProcessCluster(reactor, create_ca(), wire=wire)
    await cluster.listen()
    host, port = cluster.address
    # Only the cluster's wire listens; the other entry names a port nothing serves.
    entries = tuple(
        ServiceEntry(type="core", protocol=each, address=host, port=port if each == wire else 9)
        for each in ("kcp", "tls")
    )
    discovery = discovery_server(reactor, DomainConfig(listen_address=LOOPBACK), lambda: entries)
    listener: DiscoveryListener = discovery.args[1]
    discovery.startService()
    try:
        locate = discover_core(
            reactor, reactor, domain="nano", group_address=GROUP, group_port=PORT,
            interface=LOOPBACK, timeout=5, protocol=wire,
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
    return {"states": states, "addresses": addresses, "echoes": listener.echoes_sent}


def main(reactor: Any, wire: str) -> defer.Deferred[None]:
    if wire not in WIRES:
        raise SystemExit(f"usage: netns_fabric_probe {'|'.join(WIRES)}")

    async def run() -> None:
        print(json.dumps(await probe(reactor, wire)), flush=True)  # type: ignore[arg-type]

    return defer.Deferred.fromCoroutine(run())


if __name__ == "__main__":
    task.react(main, sys.argv[1:2] or ["tls"])
