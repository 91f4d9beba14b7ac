"""Cell fabric benchmark: prints figures, asserts nothing.

1. Request/reply round trips per second through one Cell link (TLS on 127.0.0.1), with a
   window of requests in flight. Target: 10,000/s on a 2-core machine.
2. The CPU share of Core (this process) ingesting the status reports and keepalives of 1,000
   FakeCells reporting every 2 s. Target: under 25% of one core.

The Cells run in a child process (this script with ``--child``) so that their CPU is not
counted as Core's. Everything stays on 127.0.0.1.

    python benchmarks/fabric_bench.py [--round-trips 20000] [--window 200] [--cells 1000]
        [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS

from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.pki import (
    client_tls_options,
    issue_cell_certificate,
    load_or_create_ca,
)
from nanocore.testing.cluster import InProcessCluster
from nanocore.testing.fakecell import FakeCell


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cell_names(count: int) -> list[str]:
    return [f"Cell_bench{i:06d}" for i in range(count)]


def spawn_cells(ca_dir: str, port: int, count: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, "--child", ca_dir, str(port), str(count)],
        stdin=subprocess.DEVNULL,
    )


async def wait_for(cluster: InProcessCluster, names: list[str], timeout: float) -> None:
    d = cluster.waiter.until_reported(set(names))
    d.addTimeout(timeout, cluster.reactor)
    await d


async def round_trips(reactor: Any, ca_dir: Path, count: int, window: int) -> None:
    ca = load_or_create_ca(ca_dir)
    cluster = InProcessCluster(reactor, ca, timeout=30.0)
    await cluster.listen()
    child = spawn_cells(str(ca_dir), cluster.address[1], 1)
    try:
        [name] = cell_names(1)
        await wait_for(cluster, [name], 30.0)
        request = Message(
            id=MessageID.QueryCellStorageRequest, string_params={ParamKey.Cell: name}
        )
        gate = DeferredSemaphore(window)

        def one() -> Deferred[Message]:
            return gate.run(cluster.registry.request, name, request)

        await gatherResults([one() for _ in range(min(1000, count))])  # warm up
        cpu, start = cpu_seconds(), time.perf_counter()
        await gatherResults([one() for _ in range(count)])
        elapsed = time.perf_counter() - start
        core_cpu = cpu_seconds() - cpu
        print(
            f"round trips over one TLS link: {count / elapsed:,.0f}/s "
            f"({count} requests, window {window}, {elapsed:.2f} s; "
            f"{2 * count / elapsed:,.0f} messages/s; Core CPU {core_cpu / elapsed:.0%} of a core)"
        )
        per_trip = core_cpu / count
        print(
            f"Core CPU per round trip: {per_trip * 1e6:.0f} us, so Core alone could carry "
            f"~{1 / per_trip:,.0f}/s on one core (the Python FakeCell peer is the usual limit)"
        )
    finally:
        child.terminate()
        child.wait()
        await cluster.stop()


async def ingest(reactor: Any, ca_dir: Path, cells: int, seconds: float) -> None:
    ca = load_or_create_ca(ca_dir)
    cluster = InProcessCluster(reactor, ca, timeout=30.0)
    await cluster.listen()
    child = spawn_cells(str(ca_dir), cluster.address[1], cells)
    try:
        names = cell_names(cells)
        start = time.perf_counter()
        await wait_for(cluster, names, 120.0)
        print(f"{cells} cells connected and reported in {time.perf_counter() - start:.1f} s")
        await task.deferLater(reactor, 2.0, lambda: None)  # let the connection burst settle
        reports: list[int] = []
        cluster.registry.subscribe(_Counter(reports))
        cpu, start = cpu_seconds(), time.perf_counter()
        await task.deferLater(reactor, seconds, lambda: None)
        elapsed = time.perf_counter() - start
        used = cpu_seconds() - cpu
        print(
            f"ingesting {cells} cells (report every 2 s, keepalive every 3 s): "
            f"{len(reports) / elapsed:,.0f} reports/s, Core CPU {used / elapsed:.1%} of one core "
            f"over {elapsed:.0f} s (target < 25%)"
        )
    finally:
        child.terminate()
        child.wait()
        await cluster.stop()


class _Counter:
    def __init__(self, into: list[int]) -> None:
        self._into = into

    def cell_available(self, name: str, address: str) -> None:
        pass

    def cell_status(self, name: str, status: object) -> None:
        self._into.append(1)

    def cell_event(self, name: str, message: Message) -> None:
        pass

    def cell_disconnected(self, name: str, gracefully: bool) -> None:
        pass


async def child(reactor: Any, ca_dir: str, port: int, count: int) -> None:
    """Run ``count`` FakeCells against 127.0.0.1:port until terminated."""
    ca = load_or_create_ca(Path(ca_dir))
    cells = []
    for index, name in enumerate(cell_names(count)):
        cell = FakeCell(name, reactor)
        tls = client_tls_options(ca, "127.0.0.1", issue_cell_certificate(ca, name))
        service = cell.service(wrapClientTLS(tls, TCP4ClientEndpoint(reactor, "127.0.0.1", port)))
        service.startService()
        cells.append(cell)
        if index % 50 == 49:  # connect in waves rather than one SYN flood
            await task.deferLater(reactor, 0.05, lambda: None)
    await Deferred()  # until terminated


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        ca_dir, port, count = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        task.react(lambda reactor: Deferred.fromCoroutine(child(reactor, ca_dir, port, count)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=20000)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    options = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * options.cells)), hard))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")

    async def run(reactor: Any) -> None:
        with tempfile.TemporaryDirectory() as ca_dir:
            load_or_create_ca(Path(ca_dir))
            await round_trips(reactor, Path(ca_dir), options.round_trips, options.window)
            await ingest(reactor, Path(ca_dir), options.cells, options.seconds)

    task.react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
