"""Run inside a throw-away network namespace by tests/test_kcp_interop.py, with the path of the
built Go Cell as its argument.

Core's KCP endpoint on 127.0.0.1 behind a relay that loses 10% of the datagrams each way, and
Core's discovery listener, as ``tap`` serves it, advertising that address as the KCP link first
and a TLS link second. The Go Cell is started without an address: it finds Core by real
multicast on ``lo``, takes the first "core" entry, dials it with FEC 10/3, handshakes, reports,
and answers a 200 KB request with 200 KB; then it is killed, and Core's clock moves on until
the Cell is disconnected. Prints one JSON line of what was seen; exits non-zero on a failure.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import defer, task

from nanocore.cluster.discovery import DiscoveryListener, ServiceEntry
from nanocore.config import DomainConfig
from nanocore.tap import discovery_server
from tests.gocell import CELL, LOOPBACK, CoreSide, GoCell, Relay

LOSS = 0.10


async def probe(reactor: Any, binary: str) -> dict[str, Any]:
    core = CoreSide()
    relay = Relay(core.address, LOSS)
    entries = (
        ServiceEntry(type="core", protocol="kcp", address=LOOPBACK, port=relay.port),
        ServiceEntry(type="core", protocol="tls", address=LOOPBACK, port=9),
    )
    discovery = discovery_server(reactor, DomainConfig(listen_address=LOOPBACK), lambda: entries)
    listener: DiscoveryListener = discovery.args[1]
    discovery.startService()
    cell = GoCell.spawn(binary, "-name", CELL, "-report", "500ms", "-interface", "lo")
    try:
        discovered = await cell.until("discovered")
        exchange = await core.exchange(cell)
        disconnected_after = await core.disconnect_after_kill(cell)
    except BaseException:
        sys.stderr.write(cell.stderr.decode(errors="replace"))
        sys.stderr.write(json.dumps(cell.events) + "\n")
        raise
    finally:
        await cell.kill()
        await defer.maybeDeferred(discovery.stopService)
        await relay.stop()
        await core.stop()
    return {
        "discovered": discovered,
        "kcp_port": entries[0].port,
        "echoes_sent": listener.echoes_sent,
        "exchange": exchange,
        "fec": relay.fec(),
        "lost": relay.lost,
        "disconnected_after": disconnected_after,
        "disconnected": core.waiter.disconnected,
    }


def main(reactor: Any, binary: str) -> defer.Deferred[None]:
    async def run() -> None:
        print(json.dumps(await probe(reactor, binary)), flush=True)

    return defer.Deferred.fromCoroutine(run())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m tests.netns_kcp_probe GO_CELL_BINARY")
    task.react(main, sys.argv[1:])
