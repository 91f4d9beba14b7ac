"""Cell fabric benchmark: prints figures, asserts nothing.

1. Request/reply round trips per second over one Cell link (TLS on 127.0.0.1): Core's real
   ``CellRegistry.request`` -> ``LinkSession`` -> framing -> a Cell -> reply -> ``Transactions``,
   with a window of requests in flight (each reply issues the next request). The Cell runs in a
   child process, so each end has a core of its own. Two Cells are measured:

   - ``lean``: a minimal responder built from the real link code (``cell_link_protocol``,
     ``LinkSession``, the codec and ``reply_to``) that answers each ``QueryCellStorageRequest``
     with the same reply FakeCell gives. It shows what the link itself carries.
   - ``fakecell``: the full FakeCell (fault table, received-message log, handler table).

   Target: 10,000 round trips/s on a 2-core machine. Each line also prints the CPU each end
   spends per round trip, which moves much less with the machine's load than the wall rate.
2. The CPU share of Core (this process) ingesting the status reports and keepalives of 1,000
   FakeCells reporting every 2 s. Target: under 25% of one core.

Everything stays on 127.0.0.1.

    python benchmarks/fabric_bench.py [--round-trips 50000] [--window 200] [--cells 1000]
        [--seconds 20] [--cell lean,fakecell] [--pin] [--skip-ingest]
        [--profile-core core.prof] [--profile-cell cell.prof]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from nanocore.cluster.cells import CellStatus
from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.cluster.transactions import reply_to
from nanocore.cluster.transport import LinkHandler, LinkSession, cell_link_protocol
from nanocore.pki import (
    client_tls_options,
    issue_cell_certificate,
    load_or_create_ca,
)
from nanocore.testing.cluster import InProcessCluster
from nanocore.testing.fakecell import FakeCell

STORAGE_PATHS = ("/var/lib/libvirt/images",)
LEAN_STATUS = CellStatus(
    cores=8,
    usage=5.0,
    memory_available=16 << 30,
    memory_total=16 << 30,
    disk_free=500 << 30,
    disk_total=500 << 30,
)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of another process (Linux ``/proc``), 0.0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def cell_names(count: int) -> list[str]:
    return [f"Cell_bench{i:06d}" for i in range(count)]


def spawn_cells(
    kind: str, ca_dir: str, port: int, count: int, cpu: int | None, profile: str | None
) -> subprocess.Popen[bytes]:
    command = [sys.executable, __file__, "--child", kind, ca_dir, str(port), str(count)]
    if cpu is not None:
        command += ["--cpu", str(cpu)]
    if profile:
        command += ["--profile", profile]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL)


async def wait_for(cluster: InProcessCluster, names: list[str], timeout: float) -> None:
    d = cluster.waiter.until_reported(set(names))
    d.addTimeout(timeout, cluster.reactor)
    await d


def pipelined(issue: Callable[[], Deferred[Message]], count: int, window: int) -> Deferred[None]:
    """Run ``count`` requests with at most ``window`` in flight; each reply issues the next."""
    done: Deferred[None] = Deferred()
    issued = completed = 0

    def start() -> None:
        nonlocal issued
        issued += 1
        issue().addCallbacks(finished, failed)

    def finished(_: Message) -> None:
        nonlocal completed
        completed += 1
        if issued < count:
            start()
        elif completed == count:
            done.callback(None)

    def failed(failure: Failure) -> None:
        if not done.called:
            done.errback(failure)

    for _ in range(min(window, count)):
        start()
    return done


async def round_trips(
    reactor: Any, ca_dir: Path, kind: str, count: int, window: int, options: argparse.Namespace
) -> None:
    ca = load_or_create_ca(ca_dir)
    cluster = InProcessCluster(reactor, ca, timeout=30.0)
    await cluster.listen()
    cell_cpu = 1 if options.pin else None
    child = spawn_cells(
        kind, str(ca_dir), cluster.address[1], 1, cell_cpu, options.profile_cell or None
    )
    try:
        [name] = cell_names(1)
        await wait_for(cluster, [name], 30.0)
        request = Message(
            id=MessageID.QueryCellStorageRequest, string_params={ParamKey.Cell: name}
        )

        def issue() -> Deferred[Message]:
            return cluster.registry.request(name, request)

        await pipelined(issue, min(5000, count), window)  # warm up
        profile = cProfile.Profile() if options.profile_core else None
        core_cpu, cell_cpu_start = cpu_seconds(), process_cpu_seconds(child.pid)
        start = time.perf_counter()
        if profile is not None:
            profile.enable()
        await pipelined(issue, count, window)
        if profile is not None:
            profile.disable()
        elapsed = time.perf_counter() - start
        core_used = cpu_seconds() - core_cpu
        cell_used = process_cpu_seconds(child.pid) - cell_cpu_start
        if profile is not None:
            profile.dump_stats(options.profile_core)
        label = "lean responder on the real link code" if kind == "lean" else "FakeCell"
        print(
            f"round trips over one TLS link, Cell = {label}: {count / elapsed:,.0f}/s "
            f"({count} requests, window {window}, {elapsed:.2f} s, {load_average()})"
        )
        print(
            f"  Core CPU {core_used / elapsed:.0%} of a core, {core_used / count * 1e6:.1f} us "
            f"per round trip (Core alone: ~{count / core_used:,.0f}/s per core); "
            f"Cell CPU {cell_used / elapsed:.0%}, {cell_used / count * 1e6:.1f} us per round trip"
        )
    finally:
        child.terminate()
        child.wait()
        await cluster.stop()


async def ingest(reactor: Any, ca_dir: Path, cells: int, seconds: float) -> None:
    ca = load_or_create_ca(ca_dir)
    cluster = InProcessCluster(reactor, ca, timeout=30.0)
    await cluster.listen()
    child = spawn_cells("fakecell", str(ca_dir), cluster.address[1], cells, None, None)
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
            f"over {elapsed:.0f} s (target < 25%; {load_average()})"
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


@implementer(LinkHandler)
class LeanResponder:
    """A Cell that only answers ``QueryCellStorageRequest``, over the real link and codec."""

    def link_connected(self, link: LinkSession) -> None:
        link.send(LEAN_STATUS.to_message())  # one report, so Core sees the Cell as alive

    def message_received(self, link: LinkSession, message: Message) -> None:
        if message.id == MessageID.QueryCellStorageRequest:
            link.send(
                reply_to(
                    message,
                    uint_params={ParamKey.Mode: 0},
                    string_array_params={
                        ParamKey.System: STORAGE_PATHS,
                        ParamKey.Data: STORAGE_PATHS,
                    },
                )
            )

    def link_lost(self, link: LinkSession) -> None:
        pass

    def link_recovered(self, link: LinkSession) -> None:
        pass

    def link_closed(self, link: LinkSession, gracefully: bool) -> None:
        pass


async def child(reactor: Any, kind: str, ca_dir: str, port: int, count: int) -> None:
    """Run ``count`` Cells of ``kind`` against 127.0.0.1:port until terminated."""
    ca = load_or_create_ca(Path(ca_dir))
    for index, name in enumerate(cell_names(count)):
        tls = client_tls_options(ca, "127.0.0.1", issue_cell_certificate(ca, name))
        endpoint = wrapClientTLS(tls, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        if kind == "lean":
            responder = LeanResponder()

            def protocol(responder: LeanResponder = responder, name: str = name) -> Any:
                return cell_link_protocol(responder, reactor, name)

            await endpoint.connect(Factory.forProtocol(protocol))
        else:
            FakeCell(name, reactor).service(endpoint).startService()
        if index % 50 == 49:  # connect in waves rather than one SYN flood
            await task.deferLater(reactor, 0.05, lambda: None)
    await Deferred()  # until terminated


def child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("lean", "fakecell"))
    parser.add_argument("ca_dir")
    parser.add_argument("port", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("--cpu", type=int)
    parser.add_argument("--profile")
    options = parser.parse_args(argv)
    if options.cpu is not None:
        os.sched_setaffinity(0, {options.cpu})
    profile = cProfile.Profile() if options.profile else None
    if profile is not None:
        profile.enable()
    try:
        task.react(
            lambda reactor: Deferred.fromCoroutine(
                child(reactor, options.kind, options.ca_dir, options.port, options.count)
            )
        )
    finally:
        if profile is not None:
            profile.disable()
            profile.dump_stats(options.profile)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=50000)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--cell", default="lean,fakecell", help="which Cells answer round trips (comma list)"
    )
    parser.add_argument("--pin", action="store_true", help="Core on CPU 0, the Cell on CPU 1")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--profile-core", default="", help="cProfile Core's measured window")
    parser.add_argument("--profile-cell", default="", help="cProfile the Cell process")
    options = parser.parse_args()
    kinds = [kind for kind in options.cell.split(",") if kind]
    if not set(kinds) <= {"lean", "fakecell"}:
        parser.error("--cell takes lean and/or fakecell")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * options.cells)), hard))
    if options.pin:
        os.sched_setaffinity(0, {0})
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {load_average()}")

    async def run(reactor: Any) -> None:
        with tempfile.TemporaryDirectory() as ca_dir:
            load_or_create_ca(Path(ca_dir))
            for kind in kinds:
                await round_trips(
                    reactor, Path(ca_dir), kind, options.round_trips, options.window, options
                )
            if not options.skip_ingest:
                if options.pin:
                    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
                await ingest(reactor, Path(ca_dir), options.cells, options.seconds)

    task.react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
