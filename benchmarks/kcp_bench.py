"""KCP link benchmark: prints figures, asserts nothing.

Request/reply round trips per second over one Cell link on KCP/UDP (127.0.0.1), Core's real
``CellRegistry.request`` -> ``LinkSession`` -> KCP conversation (siokcp, FEC shim, framing) ->
a Cell -> reply -> ``Transactions``, with a window of requests in flight, and the CPU Core
spends per round trip. The Cell is fabric_bench's lean responder (the real link code and codec,
answering ``QueryCellStorageRequest``) on our KCP dialer, in a child process so that each end
has a core of its own. The same line over the TLS link (fabric_bench's measure) is printed
beside it unless ``--skip-tls``.

    python benchmarks/kcp_bench.py [--round-trips 20000] [--window 200] [--skip-tls] [--pin]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fabric_bench import (
    LeanResponder,
    cpu_seconds,
    load_average,
    pipelined,
    process_cpu_seconds,
    round_trips,
)
from twisted.internet import task
from twisted.internet.defer import Deferred

from nanocore.cluster.cells import CellRegistry
from nanocore.cluster.kcp.dialer import KCPDialer
from nanocore.cluster.kcp.link import cell_link_endpoint, cell_sessions
from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.cluster.transactions import Transactions
from nanocore.pki import load_or_create_ca
from nanocore.testing.cluster import Waiter

CELL = "Cell_bench000000"
LOOPBACK = "127.0.0.1"


async def kcp_round_trips(reactor: Any, count: int, window: int, pin: bool) -> None:
    registry = CellRegistry(reactor, Transactions(reactor, 30.0))
    waiter = Waiter()
    registry.subscribe(waiter)
    endpoint = cell_link_endpoint(registry, reactor, "Core_bench000000", registry.link)
    port = reactor.listenUDP(0, endpoint, interface=LOOPBACK)
    command = [sys.executable, __file__, "--child", str(port.getHost().port)]
    if pin:
        command += ["--cpu", "1"]
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    try:
        reported = waiter.until_reported({CELL})
        reported.addTimeout(30.0, reactor)
        await reported
        request = Message(
            id=MessageID.QueryCellStorageRequest, string_params={ParamKey.Cell: CELL}
        )

        def issue() -> Deferred[Message]:
            return registry.request(CELL, request)

        await pipelined(issue, min(5000, count), window)  # warm up
        core_cpu, cell_cpu = cpu_seconds(), process_cpu_seconds(child.pid)
        start = time.perf_counter()
        await pipelined(issue, count, window)
        elapsed = time.perf_counter() - start
        core_used = cpu_seconds() - core_cpu
        cell_used = process_cpu_seconds(child.pid) - cell_cpu
        conversation = next(iter(endpoint.conversations.values()))
        print(
            f"round trips over one KCP link, Cell = lean responder: {count / elapsed:,.0f}/s "
            f"({count} requests, window {window}, {elapsed:.2f} s, {load_average()})"
        )
        print(
            f"  Core CPU {core_used / elapsed:.0%} of a core, {core_used / count * 1e6:.1f} us "
            f"per round trip (Core alone: ~{count / core_used:,.0f}/s per core); "
            f"Cell CPU {cell_used / elapsed:.0%}, {cell_used / count * 1e6:.1f} us per round "
            f"trip; datagrams over the peer budget: {conversation.over_budget}"
        )
    finally:
        child.terminate()
        child.wait()
        await endpoint.close_all()
        await port.stopListening()


async def child(reactor: Any, port: int) -> None:
    """The lean responder dialing Core over KCP, until terminated."""
    attach = cell_sessions(LeanResponder(), reactor, CELL)
    reactor.listenUDP(0, KCPDialer((LOOPBACK, port), reactor, attach), interface=LOOPBACK)
    await Deferred()


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        parser = argparse.ArgumentParser()
        parser.add_argument("port", type=int)
        parser.add_argument("--cpu", type=int)
        options = parser.parse_args(sys.argv[2:])
        if options.cpu is not None:
            os.sched_setaffinity(0, {options.cpu})
        task.react(lambda reactor: Deferred.fromCoroutine(child(reactor, options.port)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=20000)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--skip-tls", action="store_true", help="do not measure the TLS link")
    parser.add_argument("--pin", action="store_true", help="Core on CPU 0, the Cell on CPU 1")
    options = parser.parse_args()
    if options.pin:
        os.sched_setaffinity(0, {0})
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {load_average()}")

    async def run(reactor: Any) -> None:
        await kcp_round_trips(reactor, options.round_trips, options.window, options.pin)
        if options.skip_tls:
            return
        tls = argparse.Namespace(pin=options.pin, profile_cell="", profile_core="")
        with tempfile.TemporaryDirectory() as ca_dir:
            load_or_create_ca(Path(ca_dir))
            await round_trips(
                reactor, Path(ca_dir), "lean", options.round_trips, options.window, tls
            )

    task.react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
