"""Signed API throughput, latency and memory against a real nanocore process pinned to one core.

One run prints, each load line beside **the floor** (``benchmarks/floor_server.py``: a bare
``twisted.web`` leaf resource answering the same bytes to the same request bytes, unsigned,
in the same process setup), run in turn A/B/A/B so a neighbour's load weighs on both, with the
ratio of the rates and of the server CPU per request:

- signed cached ``GET /compute_pools/`` at concurrency 1 and 32, one signature repeated (as
  a portal polling within the second its date names), and at 32 signed anew for every
  request (no two alike, as from many clients);
- durable writes (an address pool created and deleted, each answered after the store commit)
  at concurrency 1 and 32, and the **fsync floor** of this disk (a loop of SQLite commits,
  WAL, ``synchronous=FULL``) beside the c=1 line;
- the zone and pool status with the large store (``--cells`` Cells, ``--instances``
  instances, made before the server starts) at concurrency 1 and 32;
- the server's RSS at start, after the load lines, during and after ``--soak`` seconds of
  mixed load (GETs, writes, status), sampled every 10 s; the issue's soak is 600 s.

Loopback only; every line is bounded in requests and in seconds; servers are stopped at the
end, and a server found dead before its stop is said with its exit status or signal
(``NANOCORE_BENCH_KEEP=DIR`` keeps each twistd server's logs, fault file and exit in ``DIR``).
``--profile FILE`` runs the server under cProfile (self time by area) and tracemalloc
(the top allocation sites and rooms of what is live after the soak).

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
                                   [--soak 60] [--cells 1000] [--instances 20000]
                                   [--server-cpu 0] [--client-cpu 1] [--profile server.prof]
                                   [--source [LABEL=]DIR ...] [--rounds N]
                                   [--only gets|writes|status|memory]
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
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nanocore.api.client import Signer  # noqa: E402

CREDENTIAL = ("bench", "benchmark-key-0123456789")
#: Seconds a twistd server may take to listen; profiled or under tracemalloc.
LISTEN_LIMIT = 30.0
LISTEN_LIMIT_TRACED = 180.0


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
        self.last_body = b""

    def begin(self, sequence: list[bytes]) -> None:
        self.sequence, self.step, self.started = sequence, 0, time.perf_counter()
        self.sock.send(sequence[0])

    def received(self) -> bool:
        """Read what arrived; True once the whole item (every response) is done."""
        data = self.sock.recv(1 << 20)
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
            if b'"error_code": 0' not in body[:40]:
                raise RuntimeError(body.decode(errors="replace") or "empty answer")
            self.last_body = body
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


def fetch(port: int, raw: bytes) -> bytes:
    """The body of one answer (checked to be a success)."""
    connection = Connection(port)
    try:
        connection.sock.setblocking(True)
        connection.begin([raw])
        while not connection.received():
            pass
        return connection.last_body
    finally:
        connection.sock.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclasses.dataclass(frozen=True)
class Line:
    """The figures of one scenario in one run."""

    scenario: str
    rate: float
    p50: float
    p99: float
    cpu_share: float
    per_cpu_second: float

    @property
    def cpu_us(self) -> float:
        """Server CPU per request, in microseconds."""
        return 1e6 / self.per_cpu_second if self.per_cpu_second else float("inf")


def line_of(
    scenario: str,
    requests_per_item: int,
    results: list[tuple[int, float, list[float]]],
    server_cpu: float,
) -> Line:
    count = sum(result[0] for result in results)
    elapsed = sum(result[1] for result in results)
    latencies = sorted(latency for result in results for latency in result[2])
    return Line(
        scenario=scenario,
        rate=count * requests_per_item / elapsed,
        p50=statistics.median(latencies) * 1000,
        p99=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        cpu_share=server_cpu / elapsed,
        per_cpu_second=count * requests_per_item / max(server_cpu, 1e-9),
    )


def show(line: Line) -> None:
    print(
        f"  {line.scenario:<46} {line.rate:8.0f} req/s  p50 {line.p50:6.2f} ms  "
        f"p99 {line.p99:6.2f} ms  cpu {line.cpu_share:4.0%}  {line.cpu_us:6.1f} us/req",
        flush=True,
    )


def report(
    name: str,
    concurrency: int,
    requests_per_item: int,
    result: tuple[int, float, list[float]],
    server_cpu: float,
) -> Line:
    line = line_of(f"{name} c={concurrency}", requests_per_item, [result], server_cpu)
    show(line)
    return line


def gets(raw: bytes) -> Iterator[list[bytes]]:
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


def resigned(signer: Signer, port: int, path: str) -> Iterator[list[bytes]]:
    """GETs each signed anew (a date to the microsecond): no two alike, as from many clients."""
    while True:
        yield [request_bytes(signer, "GET", path, b"", port)]


def mixed(signer: Signer, port: int, prefix: str) -> Iterator[list[bytes]]:
    """The soak's load: per four items, a pool list, a zone status, a pool status (signed
    again every second, as a portal does) and a durable create + delete."""
    pair = writes(signer, port, prefix)
    signed_at = 0.0
    reads: list[bytes] = []
    while True:
        if time.time() - signed_at >= 1.0:
            signed_at = time.time()
            reads = [
                request_bytes(signer, "GET", path, b"", port)
                for path in ("/compute_pools/", "/compute_zone_status/", "/compute_pool_status/")
            ]
        for raw in reads:
            yield [raw]
        yield next(pair)


# -- the servers -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def prepare_folders(root: Path, port: int) -> dict[str, Path]:
    """The four runtime folders, with domain.cfg and api.cfg naming loopback and our key."""
    folders = {name: root / name for name in ("config", "data", "cert", "log")}
    for folder in folders.values():
        folder.mkdir(mode=0o700, exist_ok=True)
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
    root: Path, source: Path, pin: list[str], profile: str | None, trace_memory: bool = False
) -> tuple[subprocess.Popen[bytes], int]:
    """``twistd -n nanocore`` on a free port; with ``trace_memory``, under tracemalloc (a
    snapshot in ``root`` on SIGUSR2: ``benchmarks/traced_twistd.py``)."""
    port = free_port()
    folders = prepare_folders(root, port)
    environment = dict(os.environ, PYTHONPATH=str(source))
    if trace_memory:
        environment["NANOCORE_BENCH_SNAPSHOT"] = str(root / "tracemalloc.snapshot")
        command = [*pin, sys.executable, str(ROOT / "benchmarks" / "traced_twistd.py")]
    else:
        command = [*pin, sys.executable, str(Path(sys.executable).with_name("twistd"))]
    command += ["-n", "--pidfile=", "--reactor=epoll", f"--logfile={root / 'twistd.log'}"]
    if profile:
        command += [f"--profile={profile}", "--profiler=cprofile", "--savestats"]
    command.append("nanocore")
    for name, folder in folders.items():
        command += [f"--{name}-dir", str(folder)]
    server = subprocess.Popen(command, cwd=source, env=environment, stdout=subprocess.DEVNULL)
    _TWISTD_ROOTS[server.pid] = root
    # Under tracemalloc every allocation of the imports is traced: a start took 39 s (18 s of
    # CPU) beside a neighbour on the same core, and a SIGTERM before the reactor runs ends
    # twistd silently, its buffered log unwritten (benchmarks/README.md, "Stability").
    limit = LISTEN_LIMIT_TRACED if trace_memory or profile else LISTEN_LIMIT
    deadline = time.monotonic() + limit
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
    raise SystemExit(f"twistd nanocore did not listen within {limit:.0f} s")


def start_script(
    script: Path, arguments: list[str], source: Path, pin: list[str]
) -> tuple[subprocess.Popen[bytes], int]:
    """A server script that prints ``READY <port>`` once it listens."""
    command = [*pin, sys.executable, str(script), *arguments]
    environment = dict(os.environ, PYTHONPATH=str(source))
    server = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=source, env=environment)
    assert server.stdout is not None
    line = server.stdout.readline().split()
    if not line or line[0] != b"READY":
        stop(server)
        raise SystemExit(f"{script.name} did not start: {line!r}")
    return server, int(line[1])


def start_standin(
    root: Path, source: Path, pin: list[str], profile: str | None
) -> tuple[subprocess.Popen[bytes], int]:
    data_dir = root / "data"
    data_dir.mkdir(exist_ok=True)
    arguments = ["--data-dir", str(data_dir), "--credential", ":".join(CREDENTIAL)]
    if profile:
        arguments += ["--profile", profile]
    return start_script(source / "benchmarks" / "api_server.py", arguments, source, pin)


def wait_until_serving(signer: Signer, port: int, limit: float = 60.0) -> None:
    """Until the Core has opened its store, the API answers 503 "nanocore is starting"."""
    deadline = time.monotonic() + limit
    while True:
        try:
            fetch(port, request_bytes(signer, "GET", "/compute_pools/", b"", port))
            return
        except RuntimeError as error:
            if "is starting" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


#: Where each twistd server keeps its folders (pid -> root), for ``NANOCORE_BENCH_KEEP``.
_TWISTD_ROOTS: dict[int, Path] = {}
#: Servers already stopped here (a second ``stop`` of one is not a death).
_STOPPED: set[int] = set()


def exit_of(code: int | None) -> str:
    """A Popen return code in words: the exit status, or the signal that ended it."""
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by signal {-code} ({signal.Signals(-code).name})"
    return f"exit status {code}"


def stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 20 s; say so loudly when the server had died on its own,
    and keep a twistd server's folders when ``NANOCORE_BENCH_KEEP`` names a folder."""
    if server.pid in _STOPPED:
        return
    _STOPPED.add(server.pid)
    died = server.poll()
    if died is not None:
        print(f"!! server pid {server.pid} died on its own: {exit_of(died)}", flush=True)
    else:
        asked = time.monotonic()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            print(f"!! server pid {server.pid} ignored SIGTERM for 20 s: SIGKILL", flush=True)
            server.kill()
            server.wait()
        if server.pid in _TWISTD_ROOTS:
            print(f"  server pid {server.pid} stopped in {time.monotonic() - asked:.1f} s")
    root = _TWISTD_ROOTS.pop(server.pid, None)
    keep = os.environ.get("NANOCORE_BENCH_KEEP")
    if root is not None and keep:
        kept = Path(keep) / f"{time.strftime('%Y%m%dT%H%M%S')}-pid{server.pid}"
        kept.mkdir(parents=True)
        for name in ("log",):
            if (root / name).is_dir():
                shutil.copytree(root / name, kept / name)
        for path in root.glob("twistd.log*"):
            shutil.copy(path, kept / path.name)
        (kept / "exit.txt").write_text(
            f"{exit_of(server.returncode)}{' (on its own)' if died is not None else ''}\n"
        )


def build_store(data_dir: Path, pools: int, cells: int, instances: int) -> None:
    """The large store, made by this script in a child process before the server opens it."""
    subprocess.run(
        [
            sys.executable,
            __file__,
            "--build-store",
            str(data_dir),
            "--pools",
            str(pools),
            "--cells",
            str(cells),
            "--instances",
            str(instances),
        ],
        check=True,
        cwd=ROOT,
    )


def build_store_here(data_dir: str, pools: int, cells: int, instances: int) -> None:
    from twisted.internet import task
    from twisted.internet.defer import Deferred

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from store_bench import guest

    from nanocore import model as m
    from nanocore.store import Put, Store, UnitOfWork

    async def build(reactor: Any) -> None:
        store = await Store.open(Path(data_dir), reactor)
        setup: list[Any] = [m.ComputePool(name=f"pool{p}") for p in range(pools)]
        setup += [
            m.ComputeCell(name=f"cell{c:04d}", pool=f"pool{c % pools}") for c in range(cells)
        ]
        await store.commit(UnitOfWork([Put(entity) for entity in setup]))
        for first in range(0, instances, 5000):
            numbers = range(first, min(instances, first + 5000))
            await store.commit(
                UnitOfWork(
                    [
                        Put(guest(n, f"pool{n % cells % pools}", f"cell{n % cells:04d}"))
                        for n in numbers
                    ]
                )
            )
        await store.close()

    task.react(lambda reactor: Deferred.fromCoroutine(build(reactor)))


def fsync_floor(folder: Path, seconds: float) -> float:
    """Commits per second of a loop of one-row SQLite transactions, WAL and
    ``synchronous=FULL``, in ``folder`` (the disk the store is on): what c=1 writes can reach."""
    path = folder / "fsync-floor.db"
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, v TEXT)")
        count = 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("INSERT INTO t (v) VALUES ('address pool')")
            connection.execute("COMMIT")
            count += 1
        return count / (time.perf_counter() - started)
    finally:
        connection.close()
        for leftover in folder.glob("fsync-floor.db*"):
            leftover.unlink()


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


def room_of(filename: str) -> str:
    """A package, or a room of nanocore, for a source file."""
    parts = Path(filename).parts
    for anchor in ("nanocore", "site-packages"):
        if anchor in parts:
            rest = parts[parts.index(anchor) + 1 :]
            if anchor == "nanocore":
                return "nanocore/" + (rest[0] if len(rest) > 1 else rest[0].removesuffix(".py"))
            return rest[0].removesuffix(".py") if rest else anchor
    return "stdlib" if "python3" in filename else filename


def print_memory(snapshot_path: Path, rss: float) -> None:
    """What tracemalloc saw live: by room (the first frame of ours or a package's), then the
    top allocation sites."""
    import tracemalloc

    snapshot = tracemalloc.Snapshot.load(str(snapshot_path))
    snapshot = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    total = sum(stat.size for stat in snapshot.statistics("filename"))
    print(
        f"\nlive Python allocations (tracemalloc, after the soak): {total / 2**20:.1f} MiB "
        f"of {rss:.1f} MiB RSS (the rest: the interpreter, code objects and C libraries'"
        " own memory, e.g. OpenSSL's)"
    )
    rooms: dict[str, int] = {}
    for stat in snapshot.statistics("traceback"):
        frames = list(stat.traceback)
        ours = [frame for frame in frames if "/nanocore/" in frame.filename]
        frame = ours[-1] if ours else frames[-1]
        key = room_of(frame.filename)
        rooms[key] = rooms.get(key, 0) + stat.size
    print("by room (allocations made on behalf of the innermost nanocore frame, if any):")
    for room, size in sorted(rooms.items(), key=lambda item: -item[1])[:15]:
        print(f"  {size / 2**20:7.2f} MiB  {room}")
    print("top allocation sites:")
    for stat in snapshot.statistics("lineno")[:15]:
        frame = stat.traceback[0]
        print(
            f"  {stat.size / 2**20:7.2f} MiB  {stat.count:8d} blocks  "
            f"{frame.filename}:{frame.lineno}"
        )


# -- the measurement ---------------------------------------------------------------------


@dataclasses.dataclass
class Servers:
    """The floor and nanocore, both serving; each line runs against both, in turn."""

    floor: subprocess.Popen[bytes]
    floor_port: int
    nano: subprocess.Popen[bytes]
    nano_port: int
    seconds: float
    max_requests: int
    pairs: int = 2

    def answer_on_floor(self, path: str, body: bytes) -> None:
        raw = f"POST /__answer/api/v1{path} HTTP/1.1\r\nHost: x\r\n".encode()
        raw += b"Content-Length: %d\r\n\r\n" % len(body) + body
        with socket.create_connection(("127.0.0.1", self.floor_port)) as sock:
            sock.sendall(raw)
            sock.recv(65536)

    def compare(
        self,
        name: str,
        concurrency: int,
        raw: bytes,
        path: str,
        make: Callable[[], Iterator[list[bytes]]] | None = None,
    ) -> list[Line]:
        """The same request bytes to the floor and to nanocore, A/B/A/B: ``raw`` again and
        again, or what ``make`` yields."""
        self.answer_on_floor(path, fetch(self.nano_port, raw))
        make = make if make is not None else lambda: gets(raw)
        results: dict[str, list[tuple[int, float, list[float]]]] = {"floor": [], "nano": []}
        cpu = {"floor": 0.0, "nano": 0.0}
        for _ in range(self.pairs):
            for side, server, port in (
                ("floor", self.floor, self.floor_port),
                ("nano", self.nano, self.nano_port),
            ):
                before = cpu_seconds(server.pid)
                results[side].append(
                    run(
                        port,
                        make(),
                        concurrency,
                        self.seconds / self.pairs,
                        self.max_requests // self.pairs,
                    )
                )
                cpu[side] += cpu_seconds(server.pid) - before
        floor = line_of(f"floor: {name} c={concurrency}", 1, results["floor"], cpu["floor"])
        nano = line_of(f"{name} c={concurrency}", 1, results["nano"], cpu["nano"])
        show(floor)
        show(nano)
        print(
            f"  {'':<46} ratio {nano.rate / floor.rate:5.2f} of the floor's rate, "
            f"{floor.cpu_us / nano.cpu_us:5.2f} of its CPU per request",
            flush=True,
        )
        return [floor, nano]

    def durable(self, signer: Signer, concurrency: int, fsync_in: Path | None = None) -> Line:
        """Writes at ``concurrency``; with ``fsync_in``, in turn with the fsync floor of that
        folder's disk (A/B/A/B: the disk's speed moves with the neighbours' I/O too)."""
        results: list[tuple[int, float, list[float]]] = []
        used, floor_commits, floor_seconds = 0.0, 0.0, 0.0
        items = writes(signer, self.nano_port, f"c{concurrency}x{time.time_ns()}")
        for _ in range(self.pairs if fsync_in is not None else 1):
            if fsync_in is not None:
                share = self.seconds / self.pairs
                floor_commits += fsync_floor(fsync_in, share) * share
                floor_seconds += share
            before = cpu_seconds(self.nano.pid)
            results.append(
                run(self.nano_port, items, concurrency,
                    self.seconds / (self.pairs if fsync_in is not None else 1),
                    self.max_requests // 2)
            )  # fmt: skip
            used += cpu_seconds(self.nano.pid) - before
        line = line_of(
            f"POST+DELETE /address_pools/:p (durable) c={concurrency}", 2, results, used
        )
        if fsync_in is not None:
            floor = floor_commits / floor_seconds
            print(f"  fsync floor (SQLite commits, WAL, synchronous=FULL): {floor:8.0f} commits/s")
            show(line)
            print(f"  {'':<46} ratio {line.rate / floor:5.2f} of the fsync floor", flush=True)
        else:
            show(line)
        return line


def soak(
    servers: Servers, signer: Signer, seconds: float, concurrency: int = 8
) -> tuple[list[tuple[float, float]], Line | None]:
    """Mixed load for ``seconds``; the server's RSS every 10 s (elapsed, MiB)."""
    samples: list[tuple[float, float]] = []
    results: list[tuple[int, float, list[float]]] = []
    used = 0.0
    elapsed = 0.0
    items = mixed(signer, servers.nano_port, f"soak{time.time_ns()}x")
    while elapsed < seconds:
        slice_ = min(10.0, seconds - elapsed)
        before = cpu_seconds(servers.nano.pid)
        results.append(run(servers.nano_port, items, concurrency, slice_, 10**9))
        used += cpu_seconds(servers.nano.pid) - before
        elapsed += slice_
        samples.append((elapsed, rss_mib(servers.nano.pid)))
        print(f"    soak {elapsed:5.0f} s: RSS {samples[-1][1]:6.1f} MiB", flush=True)
    if not results:
        return samples, None
    line = line_of(f"soak: mixed load c={concurrency}", 1, results, used)
    show(line)
    return samples, line


def measure(
    args: argparse.Namespace, source: Path, pin: list[str], profile: str | None
) -> list[Line]:
    """Every line against servers started from ``source``; they are stopped after."""
    signer = Signer(*CREDENTIAL)
    lines: list[Line] = []
    only = args.only
    with tempfile.TemporaryDirectory(prefix="nanocore-bench-") as temporary:
        root = Path(temporary)
        floor, floor_port = start_script(ROOT / "benchmarks" / "floor_server.py", [], source, pin)
        try:
            time.sleep(1.0)
            print(f"floor server pid {floor.pid}: RSS at start {rss_mib(floor.pid):.1f} MiB")
            if only in (None, "gets", "writes", "memory"):
                lines += measure_small(
                    args, root / "small", source, pin, profile, signer, floor, floor_port
                )
            if only in (None, "status"):
                lines += measure_large(
                    args, root / "large", source, pin, signer, floor, floor_port
                )
        finally:
            stop(floor)
    return lines


def start(
    args: argparse.Namespace, root: Path, source: Path, pin: list[str], profile: str | None
) -> tuple[subprocess.Popen[bytes], int]:
    if args.server == "twistd":
        server, port = start_twistd(root, source, pin, profile, trace_memory=bool(profile))
    else:
        server, port = start_standin(root, source, pin, profile)
    try:
        wait_until_serving(Signer(*CREDENTIAL), port)
    except RuntimeError as error:
        stop(server)
        raise SystemExit(
            f"{args.server} does not answer a signed GET /api/v1/compute_pools/:\n{error}"
        ) from None
    return server, port


def measure_small(
    args: argparse.Namespace,
    root: Path,
    source: Path,
    pin: list[str],
    profile: str | None,
    signer: Signer,
    floor: subprocess.Popen[bytes],
    floor_port: int,
) -> list[Line]:
    """The empty store: RSS at start, signed GETs, writes, the fsync floor, the soak."""
    root.mkdir()
    lines: list[Line] = []
    server, port = start(args, root, source, pin, profile)
    servers = Servers(floor, floor_port, server, port, args.seconds, args.max_requests)
    try:
        time.sleep(2.0)  # idle, as after a start
        rss_start = rss_mib(server.pid)
        print(f"{args.server} server pid {server.pid} on cpu {args.server_cpu}, port {port}")
        print(f"  RSS at start (idle, empty store): {rss_start:.1f} MiB", flush=True)
        if args.only in (None, "gets"):
            raw = request_bytes(signer, "GET", "/compute_pools/", b"", port)
            run(port, gets(raw), 4, 1.0, 2000)  # warm-up
            for concurrency in (1, 32):
                lines += servers.compare(
                    "GET /compute_pools/ (signed)", concurrency, raw, "/compute_pools/"
                )
            lines += servers.compare(
                "GET /compute_pools/ (signed anew each)",
                32,
                raw,
                "/compute_pools/",
                lambda: resigned(signer, port, "/compute_pools/"),
            )
        if args.only in (None, "writes"):
            lines.append(servers.durable(signer, 1, fsync_in=root / "data"))
            lines.append(servers.durable(signer, 32))
        rss_load = rss_mib(server.pid)
        print(f"  RSS after the load lines: {rss_load:.1f} MiB", flush=True)
        if args.soak > 0 and args.only in (None, "memory"):
            samples, line = soak(servers, signer, args.soak)
            if line is not None:
                lines.append(line)
            mark = next((rss for at, rss in samples if at >= min(60.0, args.soak / 2)), None)
            print(
                f"  RSS: start {rss_start:.1f}, after load {rss_load:.1f}, after the first "
                f"{min(60.0, args.soak / 2):.0f} s of soak {mark:.1f}, after {args.soak:.0f} s "
                f"{samples[-1][1]:.1f} MiB (growth since that mark "
                f"{samples[-1][1] - (mark or 0):+.1f} MiB)",
                flush=True,
            )
        if profile:
            snapshot = root / "tracemalloc.snapshot"
            server.send_signal(signal.SIGUSR2)
            asked = time.monotonic()
            while not snapshot.exists() and time.monotonic() < asked + 60:
                time.sleep(0.2)
            print(
                f"  tracemalloc snapshot: {'written' if snapshot.exists() else '!! NOT written'}"
                f" after {time.monotonic() - asked:.1f} s",
                flush=True,
            )
            rss_end = rss_mib(server.pid)
            stop(server)
            if snapshot.exists():
                print_memory(snapshot, rss_end)
    finally:
        stop(server)
    return lines


def measure_large(
    args: argparse.Namespace,
    root: Path,
    source: Path,
    pin: list[str],
    signer: Signer,
    floor: subprocess.Popen[bytes],
    floor_port: int,
) -> list[Line]:
    """The large store: zone and pool status, against the floor answering the same bytes."""
    root.mkdir()
    (root / "data").mkdir(mode=0o700)
    print(f"\nlarge store: {args.pools} pools, {args.cells} cells, {args.instances} instances")
    build_store(root / "data", args.pools, args.cells, args.instances)
    server, port = start(args, root, source, pin, None)
    servers = Servers(floor, floor_port, server, port, args.seconds, args.max_requests)
    lines: list[Line] = []
    try:
        print(f"  RSS at start (idle, large store): {rss_mib(server.pid):.1f} MiB", flush=True)
        for path in ("/compute_zone_status/", "/compute_pool_status/"):
            raw = request_bytes(signer, "GET", path, b"", port)
            run(port, gets(raw), 4, 1.0, 500)  # warm-up
            for concurrency in (1, 32):
                lines += servers.compare(f"GET {path} (signed)", concurrency, raw, path)
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
    parser.add_argument("--soak", type=float, default=60.0, help="seconds of mixed load")
    parser.add_argument("--pools", type=int, default=10, help="pools of the large store")
    parser.add_argument("--cells", type=int, default=1000, help="cells of the large store")
    parser.add_argument("--instances", type=int, default=20000, help="of the large store")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--profile", help="cProfile output file for the server")
    parser.add_argument(
        "--only", choices=("gets", "writes", "status", "memory"), help="run one kind of line"
    )
    parser.add_argument("--build-store", help=argparse.SUPPRESS)
    parser.add_argument(
        "--source",
        action="append",
        metavar="[LABEL=]DIR",
        help="serve from this source tree (default: the tree holding this script); repeat "
        "to compare builds",
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs of each build, in turn")
    args = parser.parse_args()
    if args.build_store:
        build_store_here(args.build_store, args.pools, args.cells, args.instances)
        return

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
            load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
            print(f"\n-- {label} ({sources[label]}), round {round_number + 1}, load {load}")
            runs[label].append(measure(args, sources[label], pin, profile))
    print(f"\nload average at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if len(sources) > 1 or args.rounds > 1:
        compare(runs, "rate", "requests/s")
        compare(runs, "per_cpu_second", "requests per server CPU-second")
    if profile and Path(profile).exists():
        print_profile(profile)


if __name__ == "__main__":
    main()
