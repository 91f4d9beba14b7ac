"""Signed API throughput and latency against a real nanocore process pinned to one core.

Prints requests/s and p50/p99 latency for ``GET /api/v1/compute_pools/`` and for a
create/delete loop on address pools (each acknowledged only after the store commit), at
concurrency 1 and 32, with the server's CPU share. Loopback only; every phase is bounded in
requests and in seconds; the server is stopped at the end.

``--source [LABEL=]DIR`` serves the API from another source tree (the child's PYTHONPATH and
working directory); given more than once, with ``--rounds 2``, the builds run in turn (ABBA
order) and a table compares them with the noise between two runs of the same build.

The server is ``twistd -n nanocore`` with temporary config, data, cert and log folders, an
``api.cfg`` holding a known credential and a free 127.0.0.1 port, pinned with ``taskset -c 0``
(``--server standin`` runs ``benchmarks/api_server.py`` instead: the same store, operations and
API site, without the cluster services). The load generator is a small HTTP/1.1 keep-alive
client (selectors, raw sockets) pinned to the other core; every request is signed before it is
sent (GETs may repeat a signature, writes may not).

    python benchmarks/api_bench.py [--server twistd|standin] [--seconds 5] [--max-requests N]
                                   [--server-cpu 0] [--client-cpu 1] [--profile server.prof]
                                   [--source [LABEL=]DIR ...] [--rounds N]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pstats
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nanocore.api.client import Signer  # noqa: E402

CREDENTIAL = ("bench", "benchmark-key-0123456789")


def request_bytes(signer: Signer, method: str, path: str, body: bytes, port: int) -> bytes:
    url = f"http://127.0.0.1:{port}/api/v1{path}"
    headers = signer.headers(method, url, body, now=time.time())
    lines = [f"{method} /api/v1{path} HTTP/1.1".encode()]
    lines += [name + b": " + value for name, value in headers.items()]
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class Connection:
    """One keep-alive connection working through a sequence of requests per item."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.buffer = b""
        self.sequence: list[bytes] = []
        self.step = 0
        self.started = 0.0

    def begin(self, sequence: list[bytes]) -> None:
        self.sequence, self.step, self.started = sequence, 0, time.perf_counter()
        self.sock.send(sequence[0])

    def received(self) -> bool:
        """Read what arrived; True once the whole item (every response) is done."""
        data = self.sock.recv(65536)
        if not data:
            raise RuntimeError("the server closed the connection")
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return False
            at = self.buffer.find(b"Content-Length: ", 0, end)
            length = int(self.buffer[at + 16 : self.buffer.index(b"\r\n", at)]) if at >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return False
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            if b'"error_code": 0' not in body:
                raise RuntimeError(body.decode(errors="replace") or "empty answer")
            self.step += 1
            if self.step == len(self.sequence):
                return True
            self.sock.send(self.sequence[self.step])


def run(
    port: int, make: Iterator[list[bytes]], concurrency: int, seconds: float, items: int
) -> tuple[int, float, list[float]]:
    """Closed-loop load: each connection starts its next item when the previous one is done,
    until ``seconds`` have passed or ``items`` items were started."""
    latencies: list[float] = []
    selector = selectors.DefaultSelector()
    connections = [Connection(port) for _ in range(concurrency)]
    started = time.perf_counter()
    deadline = started + seconds
    left = items
    for connection in connections:
        selector.register(connection.sock, selectors.EVENT_READ, connection)
        connection.begin(next(make))
        left -= 1
    active = len(connections)
    while active:
        for key, _ in selector.select():
            connection = key.data
            if connection.received():
                now = time.perf_counter()
                latencies.append(now - connection.started)
                if now < deadline and left > 0:
                    connection.begin(next(make))
                    left -= 1
                else:
                    selector.unregister(connection.sock)
                    connection.sock.close()
                    active -= 1
    selector.close()
    return len(latencies), time.perf_counter() - started, latencies


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Line:
    """The figures of one scenario in one run."""

    scenario: str
    rate: float
    p50: float
    p99: float
    cpu_share: float
    per_cpu_second: float


def report(
    name: str,
    concurrency: int,
    requests_per_item: int,
    result: tuple[int, float, list[float]],
    server_cpu: float,
) -> Line:
    count, elapsed, latencies = result
    latencies.sort()
    line = Line(
        scenario=f"{name} c={concurrency}",
        rate=count * requests_per_item / elapsed,
        p50=statistics.median(latencies) * 1000,
        p99=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        cpu_share=server_cpu / elapsed,
        per_cpu_second=count * requests_per_item / max(server_cpu, 1e-9),
    )
    print(
        f"{name:<38} c={concurrency:<3} {line.rate:9.0f} req/s   "
        f"p50 {line.p50:6.2f} ms   p99 {line.p99:6.2f} ms   "
        f"server cpu {line.cpu_share:4.0%}   {line.per_cpu_second:6.0f} req per server cpu-s",
        flush=True,
    )
    return line


def gets(signer: Signer, port: int) -> Iterator[list[bytes]]:
    raw = request_bytes(signer, "GET", "/compute_pools/", b"", port)
    while True:
        yield [raw]


def writes(signer: Signer, port: int, prefix: str) -> Iterator[list[bytes]]:
    body = json.dumps({"gateway": "192.0.2.1", "provider": "dhcp"}).encode()
    number = 0
    while True:
        number += 1
        path = f"/address_pools/{prefix}{number}"
        yield [
            request_bytes(signer, "POST", path, body, port),
            request_bytes(signer, "DELETE", path, b"", port),
        ]


# -- the server process -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def prepare_folders(root: Path, port: int) -> dict[str, Path]:
    """The four runtime folders, with domain.cfg and api.cfg naming loopback and our key."""
    folders = {name: root / name for name in ("config", "data", "cert", "log")}
    for folder in folders.values():
        folder.mkdir(mode=0o700)
    domain = {
        "domain": "nano-bench",
        "group_address": "224.0.0.226",
        "group_port": 5599,
        "listen_address": "127.0.0.1",
        "timeout": 10,
    }
    api = {"port": port, "credentials": [{"id": CREDENTIAL[0], "key": CREDENTIAL[1]}]}
    for name, document in (("domain.cfg", domain), ("api.cfg", api)):
        path = folders["config"] / name
        path.write_text(json.dumps(document, indent=1) + "\n")
        path.chmod(0o600)
    return folders


def start_twistd(
    root: Path, source: Path, pin: list[str], profile: str | None
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    folders = prepare_folders(root, port)
    twistd = str(Path(sys.executable).with_name("twistd"))
    command = [*pin, sys.executable, twistd, "-n", "--pidfile=", "--reactor=epoll"]
    command += [f"--logfile={root / 'twistd.log'}"]
    if profile:
        command += [f"--profile={profile}", "--profiler=cprofile", "--savestats"]
    command.append("nanocore")
    for name, folder in folders.items():
        command += [f"--{name}-dir", str(folder)]
    environment = dict(os.environ, PYTHONPATH=str(source))
    server = subprocess.Popen(command, cwd=source, env=environment, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log = (root / "twistd.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"twistd exited with {server.returncode}:\n{log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server, port
        except OSError:
            time.sleep(0.05)
    stop(server)
    raise SystemExit("twistd nanocore did not listen within 30 s")


def start_standin(
    root: Path, source: Path, pin: list[str], profile: str | None
) -> tuple[subprocess.Popen[bytes], int]:
    data_dir = root / "data"
    data_dir.mkdir()
    command = [*pin, sys.executable, str(source / "benchmarks" / "api_server.py")]
    command += ["--data-dir", str(data_dir), "--credential", ":".join(CREDENTIAL)]
    if profile:
        command += ["--profile", profile]
    environment = dict(os.environ, PYTHONPATH=str(source))
    server = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=source, env=environment)
    assert server.stdout is not None
    line = server.stdout.readline().split()
    if not line or line[0] != b"READY":
        stop(server)
        raise SystemExit(f"server did not start: {line!r}")
    return server, int(line[1])


def wait_until_serving(signer: Signer, port: int, limit: float = 30.0) -> None:
    """Until the Core has opened its store, the API answers 503 "nanocore is starting"."""
    deadline = time.monotonic() + limit
    while True:
        try:
            run(port, gets(signer, port), 1, 1.0, 1)
            return
        except RuntimeError as error:
            if "is starting" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


#: Where each function's own time is counted, first match wins (see benchmarks/README.md).
AREAS = (
    ("signature (nanocore/api/auth)", ("nanocore/api/auth",)),
    ("our dispatch, envelope, decoding", ("nanocore/api/",)),
    ("operations and store", ("nanocore/",)),
    ("Klein + werkzeug routing", ("klein/", "werkzeug/")),
    ("Twisted HTTP (twisted/web)", ("twisted/web/",)),
    ("Deferreds", ("twisted/internet/defer",)),
    ("reactor, sockets, epoll", ("twisted/internet/", "select.epoll", "_socket", "socket")),
)


def print_profile(path: str) -> None:
    """Self time grouped by area (shares of the profiled run), then the top functions."""
    stats = pstats.Stats(path)
    raw: Any = stats.stats  # type: ignore[attr-defined]
    totals: dict[str, float] = {}
    for (filename, _, name), (_, _, tottime, _, _) in raw.items():
        where = f"{filename}:{name}"
        area = next(
            (label for label, marks in AREAS if any(mark in where for mark in marks)), "other"
        )
        totals[area] = totals.get(area, 0.0) + tottime
    whole = sum(totals.values())
    print("server self time by area (profiler overhead included):")
    for area, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {seconds / whole:6.1%}  {area}")
    stats.sort_stats("tottime").print_stats(20)


def measure(
    args: argparse.Namespace, source: Path, pin: list[str], profile: str | None
) -> list[Line]:
    """Every line against one server started from ``source``; the server is stopped after."""
    signer = Signer(*CREDENTIAL)
    lines: list[Line] = []
    with tempfile.TemporaryDirectory(prefix="nanocore-bench-") as temporary:
        root = Path(temporary)
        start = start_twistd if args.server == "twistd" else start_standin
        server, port = start(root, source, pin, profile)
        try:
            print(f"{args.server} server pid {server.pid} on cpu {args.server_cpu}, port {port}")
            try:  # warm-up, and a check that the server answers the API
                wait_until_serving(signer, port)
                run(port, gets(signer, port), 4, 1.0, 2000)
            except RuntimeError as error:
                raise SystemExit(
                    f"{args.server} does not answer a signed GET /api/v1/compute_pools/ "
                    f"(is the API wired into nanocore.tap? try --server standin):\n{error}"
                ) from None
            for concurrency in (1, 32) if args.only != "writes" else ():
                before = cpu_seconds(server.pid)
                result = run(
                    port, gets(signer, port), concurrency, args.seconds, args.max_requests
                )
                used = cpu_seconds(server.pid) - before
                lines.append(report("GET /compute_pools/ (signed)", concurrency, 1, result, used))
            for concurrency in (1, 32) if args.only != "gets" else ():
                before = cpu_seconds(server.pid)
                items = writes(signer, port, f"c{concurrency}x")
                result = run(port, items, concurrency, args.seconds, args.max_requests // 2)
                used = cpu_seconds(server.pid) - before
                name = "POST+DELETE /address_pools/:p (durable)"
                lines.append(report(name, concurrency, 2, result, used))
        finally:
            stop(server)
    return lines


def spread(values: list[float]) -> float:
    """How far the runs of one build lie apart, as a share of their median."""
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0


def compare(runs: dict[str, list[list[Line]]], figure: str, unit: str) -> None:
    """Each build's median per scenario, its runs and noise, and each build against the first.

    The noise of a build is the spread between its own runs; a difference between builds
    counts only where it is larger than the noise of either."""
    labels = list(runs)
    first = labels[0]
    print(f"\n{unit}: median of the runs (runs in order; noise = spread between runs of a build)")
    for index, scenario in enumerate(line.scenario for line in runs[first][0]):
        print(f"  {scenario}")
        medians, noises = {}, {}
        for label in labels:
            values = [getattr(lines[index], figure) for lines in runs[label]]
            medians[label], noises[label] = statistics.median(values), spread(values)
            listed = " ".join(f"{value:.0f}" for value in values)
            print(
                f"    {label:<10} {medians[label]:8.0f}   runs {listed:<32} "
                f"noise {noises[label]:4.0%}"
            )
        for label in labels[1:]:
            change = medians[label] / medians[first] - 1
            noise = max(noises[label], noises[first])
            verdict = "within noise"
            if change < -noise:
                verdict = "SLOWER beyond noise"
            elif change > noise:
                verdict = "faster beyond noise"
            print(f"    {label} vs {first}: {change:+.1%}, {verdict} ({noise:.0%})")


def source_of(text: str) -> tuple[str, Path]:
    label, equals, folder = text.rpartition("=")
    path = Path(folder).resolve()
    if not (path / "nanocore").is_dir():
        raise SystemExit(f"--source {text}: no nanocore package in {path}")
    return (label if equals else path.name), path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", choices=("twistd", "standin"), default="twistd")
    parser.add_argument("--seconds", type=float, default=5.0, help="time cap per line")
    parser.add_argument("--max-requests", type=int, default=100_000, help="cap per line")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--profile", help="cProfile output file for the server")
    parser.add_argument("--only", choices=("gets", "writes"), help="run one kind of line")
    parser.add_argument(
        "--source",
        action="append",
        metavar="[LABEL=]DIR",
        help="serve from this source tree (default: the tree holding this script); repeat "
        "to compare builds",
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs of each build, in turn")
    args = parser.parse_args()

    sources = dict(source_of(text) for text in args.source or [f"this={ROOT}"])
    if args.profile and (len(sources) > 1 or args.rounds > 1):
        raise SystemExit("--profile takes one build and one round")
    pin = ["taskset", "-c", str(args.server_cpu)] if shutil.which("taskset") else []
    profile = str(Path(args.profile).resolve()) if args.profile else None
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {args.client_cpu})
    runs: dict[str, list[list[Line]]] = {label: [] for label in sources}
    order = list(sources)
    for round_number in range(args.rounds):
        # ABBA: a load that drifts over the session weighs on every build alike.
        for label in order if round_number % 2 == 0 else order[::-1]:
            load = os.getloadavg()[0]
            print(f"\n-- {label} ({sources[label]}), round {round_number + 1}, load {load:.2f}")
            runs[label].append(measure(args, sources[label], pin, profile))
    if len(sources) > 1 or args.rounds > 1:
        compare(runs, "rate", "requests/s")
        compare(runs, "per_cpu_second", "requests per server CPU-second")
    if profile and Path(profile).exists():
        print_profile(profile)


if __name__ == "__main__":
    main()
