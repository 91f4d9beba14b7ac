"""Guests end to end: a real nanocore, 100 simulated Cells, creates then deletes through the API.

Starts ``twistd -n nanocore`` (temporary folders, a known credential, loopback only) and
``twistd -n nanocell-sim`` with 100 Cells that answer at once (``--creation-time 0``), adds the
Cells to pool ``default``, then per run:

- **creates**: N guests through signed ``POST /guests/`` at concurrency C, each followed by
  ``GET /guests/:id`` until it answers 200 (created); "time to created" runs from sending the
  POST to that 200;
- **deletes**: the same guests through ``DELETE /guests/:id``.

Each run checks the zone's instance counters (N stopped after the creates, none after the
deletes) and that Core is still running. It prints creates/s, p50/p99 time to created,
deletes/s, Core's peak RSS (``VmHWM``), the load average, Core's CPU per create (user, system,
the store's writer thread; from the first POST until the zone counts every guest created), the
host's pace just before the run (a fixed pure-Python loop timed on Core's CPU while Core is
idle: lower is faster; it tells a slow moment of a shared host from a slower build), and
an in-process micro-bench of the scheduler's decision (100 and 1,000 Cells, judged anew and
with placement's kept verdicts), and, after Core stopped, the time each decision and each
store commit took in the live Core as Core logs them (``--cells 1000`` for the live figure at
1,000 Cells; ``--sizes 1,2,4`` for guests of mixed sizes, each decision another demand).

    python benchmarks/guest_bench.py [--guests 2000] [--concurrency 16] [--cells 100]
                                     [--runs 1] [--decisions 2000] [--poll 0.005] [--reads 0]
                                     [--server-cpu 0] [--client-cpu 1] [--no-pin]
                                     [--sizes 1,2,4] [--core-source DIR] [--callgrind OUT]
                                     [--profile OUT]

Like ``api_bench.py``, Core runs pinned to one CPU (``--server-cpu``, default 0) and the
load, the simulated Cells and the client, on the other (``--client-cpu``, default 1): a Core
serves its clients and Cells from other machines, and sharing both CPUs with them cost it
~25 % per create here (cores swapped under it; ``--no-pin`` for that figure).

``--core-source`` runs Core from another tree (a worktree of ``main``) for before/after in one
session; ``--callgrind`` counts Core's instructions during the creates (less the same span
idle), the figure that stays put on a shared machine.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import re
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import attrs  # noqa: E402
from api_bench import (  # noqa: E402
    CREDENTIAL,
    cpu_seconds,
    free_port,
    prepare_folders,
    start_twistd,
    stop,
    wait_until_serving,
)

from nanocore._fastscheduler import PoolChoice  # noqa: E402
from nanocore.api.client import Signer  # noqa: E402
from nanocore.scheduler import CellCapacity, Demand, Scheduler  # noqa: E402

GiB = 1 << 30
_LINK = re.compile(rb"Cell link \(TLS\) on 127\.0\.0\.1:(\d+)")


class Exchange:
    """One keep-alive connection doing one step at a time: send a request, read the answer."""

    def __init__(self, port: int, signer: Signer) -> None:
        self.port = port
        self.signer = signer
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.buffer = b""
        self.on_answer: Callable[[int, Any], None] = lambda status, document: None

    def send(self, method: str, path: str, body: Any = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        url = f"http://127.0.0.1:{self.port}/api/v1{path}"
        headers = self.signer.headers(method, url, data, now=time.time())
        lines = [f"{method} /api/v1{path} HTTP/1.1".encode()]
        lines += [name + b": " + value for name, value in headers.items()]
        lines.append(b"Content-Length: %d" % len(data))
        self.sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + data)

    def readable(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise RuntimeError("Core closed the connection")
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        at = self.buffer.find(b"Content-Length: ", 0, end)
        length = int(self.buffer[at + 16 : self.buffer.index(b"\r\n", at)])
        if len(self.buffer) < end + 4 + length:
            return
        status = int(self.buffer[9:12])
        document = json.loads(self.buffer[end + 4 : end + 4 + length])
        self.buffer = self.buffer[end + 4 + length :]
        self.on_answer(status, document)


def call(port: int, signer: Signer, method: str, path: str, body: Any = None) -> Any:
    """One request on its own connection; the envelope's data, or RuntimeError."""
    exchange = Exchange(port, signer)
    answers: list[tuple[int, Any]] = []
    exchange.on_answer = lambda status, document: answers.append((status, document))
    exchange.send(method, path, body)
    exchange.sock.setblocking(True)
    while not answers:
        exchange.readable()
    exchange.sock.close()
    document = answers[0][1]
    if document["error_code"]:
        raise RuntimeError(f"{method} {path}: {document['message']}")
    return document["data"]


class Timers:
    """Sends due later (a polling client's back-off), run from the selector loop."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._count = 0

    def later(self, delay: float, action: Callable[[], None]) -> None:
        self._count += 1
        heapq.heappush(self._due, (time.perf_counter() + delay, self._count, action))

    def wait(self) -> float | None:
        return max(0.0, self._due[0][0] - time.perf_counter()) if self._due else None

    def run_due(self) -> None:
        now = time.perf_counter()
        while self._due and self._due[0][0] <= now:
            heapq.heappop(self._due)[2]()


TIMERS = Timers()
POLLS = [0]
POST_TIMES: list[float] = []


def drive(
    port: int, signer: Signer, concurrency: int, items: list[Any],
    start: Callable[[Exchange, Any, Callable[[], None]], None],
) -> tuple[float, list[float]]:  # fmt: skip
    """Each connection takes the next item when its last one is done; seconds, latencies."""
    selector = selectors.DefaultSelector()
    pending = list(reversed(items))
    latencies: list[float] = []
    active = 0

    def next_item(exchange: Exchange) -> bool:
        if not pending:
            return False
        item, began = pending.pop(), time.perf_counter()

        def done() -> None:
            latencies.append(time.perf_counter() - began)
            if not next_item(exchange):
                selector.unregister(exchange.sock)
                exchange.sock.close()
                nonlocal active
                active -= 1

        start(exchange, item, done)
        return True

    started = time.perf_counter()
    for _ in range(min(concurrency, len(items))):
        exchange = Exchange(port, signer)
        selector.register(exchange.sock, selectors.EVENT_READ, exchange)
        active += 1
        next_item(exchange)
    while active:
        for key, _ in selector.select(TIMERS.wait()):
            key.data.readable()
        TIMERS.run_due()
    selector.close()
    return time.perf_counter() - started, latencies


def create_until_created(created: list[str], body: Callable[[int], Any], poll: float) -> Any:
    """POST, then GET until 200, every ``poll`` seconds (Core commits the Cell's
    ``GuestCreatedEvent`` after it answered the POST, so an immediate GET mostly finds 201)."""

    def start(exchange: Exchange, index: int, done: Callable[[], None]) -> None:
        sent = time.perf_counter()

        def answered_post(status: int, document: Any) -> None:
            POST_TIMES.append(time.perf_counter() - sent)
            if status not in (200, 202) or document["error_code"]:
                raise RuntimeError(f"create {index}: {document['message']}")
            guest = document["data"]["id"]
            if not poll:  # acknowledged is enough: the guest is checked after the phase
                created.append(guest)
                done()
                return

            def answered_get(status: int, document: Any) -> None:
                POLLS[0] += 1
                if document["error_code"]:
                    raise RuntimeError(f"guest {guest}: {document['message']}")
                if status == 200:
                    created.append(guest)
                    done()
                else:
                    TIMERS.later(poll, lambda: exchange.send("GET", f"/guests/{guest}"))

            exchange.on_answer = answered_get
            TIMERS.later(poll, lambda: exchange.send("GET", f"/guests/{guest}"))

        exchange.on_answer = answered_post
        exchange.send("POST", "/guests/", body(index))

    return start


def read(exchange: Exchange, guest: str, done: Callable[[], None]) -> None:
    """One signed ``GET /guests/:id`` of a created guest: what a poll costs once it is done."""

    def answered(status: int, document: Any) -> None:
        if status != 200 or document["error_code"]:
            raise RuntimeError(f"read {guest}: {status} {document['message']}")
        done()

    exchange.on_answer = answered
    exchange.send("GET", f"/guests/{guest}")


def delete(exchange: Exchange, guest: str, done: Callable[[], None]) -> None:
    def answered(status: int, document: Any) -> None:
        if document["error_code"]:
            raise RuntimeError(f"delete {guest}: {document['message']}")
        done()

    exchange.on_answer = answered
    exchange.send("DELETE", f"/guests/{guest}", {})


#: A fixed pure-Python workload (dicts, strings, calls: Core's kind of work), timed alone.
_PACE_LOOP = """
import time
def step(i, d):
    d[i % 512] = str(i) + "x"
    return len(d)
best = float("inf")
for _ in range(5):
    began, d = time.perf_counter(), {}
    for i in range(100_000):
        step(i, d)
    best = min(best, time.perf_counter() - began)
print(best)
"""


def host_pace(pin: list[str]) -> float:
    """Milliseconds the fixed loop takes on Core's CPU now, while Core is idle: the host's
    pace at the moment (a shared host runs the same instructions 10-30 % slower at times)."""
    output = subprocess.run(
        [*pin, sys.executable, "-c", _PACE_LOOP], capture_output=True, check=True, text=True
    ).stdout
    return float(output) * 1000


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_split(pid: int) -> tuple[float, float, float]:
    """Core's CPU seconds so far: user, system, and the part of both spent off its main
    thread (the store's writer), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = others = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a thread that ended
        spent_user, spent_system = int(fields[11]) / tick, int(fields[12]) / tick
        user, system = user + spent_user, system + spent_system
        if task.name != str(pid):
            others += spent_user + spent_system
    return user, system, others


def start_under_callgrind(
    root: Path, source: Path, out: str, pin: list[str]
) -> tuple[subprocess.Popen[bytes], int]:
    """Core under callgrind, counting nothing until :func:`callgrind` turns it on (start-up
    alone takes about a minute there)."""
    port = free_port()
    folders = prepare_folders(root, port)
    twistd = str(Path(sys.executable).with_name("twistd"))
    command = [
        *pin, "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
        sys.executable, twistd, "-n", "--pidfile=", "--reactor=epoll",
        f"--logfile={root / 'twistd.log'}", "nanocore",
    ]  # fmt: skip
    for name, folder in folders.items():
        command += [f"--{name}-dir", str(folder)]
    core = subprocess.Popen(
        command, cwd=source, env=dict(os.environ, PYTHONPATH=str(source)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and core.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return core, port
        except OSError:
            time.sleep(0.5)
    stop(core)
    raise SystemExit("Core under callgrind did not listen within 300 s")


def callgrind(core: subprocess.Popen[bytes], on: bool) -> None:
    """Count Core's instructions from now (on) or stop counting (off)."""
    steps = [["-i", "on"]] if on else [["-i", "off"], ["--dump"]]  # dumped before the SIGTERM
    for step in steps:
        subprocess.run(
            ["callgrind_control", *step, str(core.pid)], check=True, stdout=subprocess.DEVNULL
        )


def callgrind_totals(out: str) -> list[int]:
    """The instruction count of each dump callgrind wrote to ``out.N``, in order."""
    totals = []
    for part in sorted(
        Path(out).parent.glob(Path(out).name + ".*"), key=lambda p: int(p.suffix[1:])
    ):
        found = re.search(r"^totals: (\d+)", part.read_text(), re.MULTILINE)
        totals.append(int(found.group(1)) if found else 0)
    return totals


def busy_and_idle(core: subprocess.Popen[bytes], out: str, seconds: float) -> tuple[int, int]:
    """Core's instructions in the span just counted, and in as long a span with nothing
    asked (the Cells' reports and keep-alives, which a Core slowed down by callgrind gets
    many more of per request)."""
    callgrind(core, on=True)
    time.sleep(seconds)
    callgrind(core, on=False)
    busy, idle = callgrind_totals(out)[-2:]
    return busy, idle


def link_port(log: Path, deadline: float) -> int:
    while time.monotonic() < deadline:
        found = _LINK.findall(log.read_bytes()) if log.exists() else []
        if found:
            return int(found[-1])
        time.sleep(0.1)
    raise SystemExit("Core named no Cell link port in its log")


def logged_times(root: Path, step: str) -> str:
    """What Core's last timings line says of ``step`` (nanocore.services.timings: one on stop,
    with every record since the previous line, written every 600 s)."""
    line = re.compile(re.escape(step) + r" times since the last line: (.*)$", re.MULTILINE)
    found = line.findall((root / "twistd.log").read_text())
    return found[-1] if found else f"Core logged no {step} times"


def scheduling(cells: int, decisions: int, kept: bool = False) -> tuple[float, float]:
    """p50 and p99 of one decision over ``cells`` prepared capacities, in ms (in process).

    ``kept``: through placement's :class:`PoolChoice`, told of the one Cell changed before
    each decision (the chosen one's claim, as in a burst of creates); else every Cell judged
    anew.
    """
    rng = random.Random(cells)
    capacities = [
        CellCapacity(
            name=f"Cell_{i:06d}", alive=True, enabled=True, reported=True, cores=32,
            cpu_usage=rng.uniform(0, 90), memory_free=rng.randrange(64 * GiB),
            disk_free=rng.randrange(4 << 40), memory_total=64 * GiB, disk_total=4 << 40,
            placed_cores=rng.randrange(60), placed_memory=rng.randrange(128 * GiB),
            placed_disk=rng.randrange(8 << 40),
        )
        for i in range(cells)
    ]  # fmt: skip
    scheduler, choice = Scheduler(), PoolChoice(Scheduler())
    pool = {capacity.name: capacity for capacity in capacities}
    demand = Demand(cores=2, memory=4 * GiB, disk=50 * GiB)
    changed: set[str] | None = None
    times = []
    for _ in range(decisions):
        if kept:
            name = capacities[rng.randrange(cells)].name
            pool[name] = attrs.evolve(pool[name])
            changed = {name} if changed is not None else None
        began = time.perf_counter()
        if kept:
            choice.choose(demand, pool, changed)
            changed = set()
        else:
            scheduler.choose(demand, capacities)
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), percentile(times, 0.99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--guests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--cells", type=int, default=100)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument(
        "--reads",
        type=int,
        default=0,
        help="after the creates, this many GET /guests/:id of created guests (a poll's cost)",
    )
    parser.add_argument("--profile", help="write Core's cProfile data to this file")
    parser.add_argument(
        "--callgrind",
        metavar="OUT",
        help="run Core under valgrind's callgrind, counting its instructions during the"
        " creates only (a stable figure on a shared machine); writes OUT",
    )
    parser.add_argument(
        "--core-source",
        type=Path,
        default=ROOT,
        help="run Core from this source tree (a worktree of another branch, to compare"
        " before and after in one session; the Cells and the client stay this tree's)",
    )
    parser.add_argument(
        "--poll",
        type=float,
        default=0.005,
        help="seconds between polls of a guest until it is created; 0: count a create as"
        " done when Core acknowledges it (202), as Nano's figure does, and check afterwards",
    )
    parser.add_argument("--server-cpu", type=int, default=0, help="the CPU Core runs on")
    parser.add_argument(
        "--client-cpu", type=int, default=1, help="the CPU of the simulated Cells and the client"
    )
    parser.add_argument("--no-pin", action="store_true", help="let every process run anywhere")
    parser.add_argument(
        "--sizes",
        default="1",
        help="guest sizes in turn, each N cores and N GiB (e.g. 1,2,4: every decision then"
        " has another demand than the one before)",
    )
    arguments = parser.parse_args()
    sizes = [int(size) for size in arguments.sizes.split(",")]
    pin: list[str] = []
    if not arguments.no_pin and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        pin = ["taskset", "-c", str(arguments.server_cpu)]
        os.sched_setaffinity(0, {arguments.client_cpu})  # the simulated Cells inherit it

    for kept in (False, True):
        for cells in (100, 1000):
            p50, p99 = scheduling(cells, arguments.decisions, kept)
            print(
                f"scheduling, {cells:5d} cells{', verdicts kept' if kept else ''}: p50 "
                f"{p50:.3f} ms  p99 {p99:.3f} ms per decision"
            )

    root = Path(tempfile.mkdtemp(prefix="guest-bench-"))
    signer = Signer(*CREDENTIAL)
    core: subprocess.Popen[bytes] | None = None
    sim: subprocess.Popen[bytes] | None = None
    try:
        patience = 300 if arguments.callgrind else 30
        if arguments.callgrind:
            core, port = start_under_callgrind(
                root, arguments.core_source, arguments.callgrind, pin
            )
        else:
            core, port = start_twistd(root, arguments.core_source, pin, arguments.profile)
        wait_until_serving(signer, port, patience)
        link = link_port(root / "twistd.log", time.monotonic() + patience)
        twistd = str(Path(sys.executable).with_name("twistd"))
        # Room for two runs: a Cell's report counts the previous run's deleted guests until its
        # next one (every 2 s), and Core places by the reports (as the original did).
        per_cell = (2 * -(-arguments.guests // arguments.cells) + 1) * max(sizes)
        sim = subprocess.Popen(
            [sys.executable, twistd, "-n", "--pidfile=", f"--logfile={root / 'sim.log'}",
             "--reactor=epoll", "nanocell-sim", "--core", f"127.0.0.1:{link}",
             "--cert-dir", str(root / "cert"), "--count", str(arguments.cells),
             "--creation-time", "0", "--stop-time", "0", "--cores", str(per_cell),
             "--memory", str(per_cell), "--disk", str(10 * per_cell)],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
        )  # fmt: skip
        names = [f"Cell_sim{i:06d}" for i in range(arguments.cells)]
        deadline = time.monotonic() + 2 * patience
        while len(call(port, signer, "GET", "/compute_pool_cells/")) < arguments.cells:
            if time.monotonic() > deadline or sim.poll() is not None:
                raise SystemExit(f"the simulated Cells did not all link within {2 * patience} s")
            time.sleep(0.2)
        for name in names:
            call(port, signer, "POST", f"/compute_pool_cells/default/{name}")
        template = call(port, signer, "GET", "/templates/")[0]["id"]
        placed = (
            f"Core on CPU {arguments.server_cpu}, Cells and client on CPU {arguments.client_cpu}"
            if pin
            else "no process pinned"
        )
        print(
            f"{arguments.cells} Cells in pool default; {arguments.guests} guests per run at "
            f"concurrency {arguments.concurrency}; {placed}; load average "
            f"{os.getloadavg()[0]:.2f}"
        )

        for run in range(1, arguments.runs + 1):

            def body(index: int, run: int = run) -> Any:
                return {
                    "name": f"r{run}g{index}", "owner": "bench", "group": "bench",
                    "pool": "default", "template": template,
                    "cores": sizes[index % len(sizes)], "memory": sizes[index % len(sizes)] * GiB,
                    "disks": [10 * GiB],
                }  # fmt: skip

            pace = host_pace(pin)
            created: list[str] = []
            POLLS[0] = 0
            POST_TIMES.clear()
            cpu = cpu_seconds(core.pid), cpu_seconds(sim.pid)
            core_before = cpu_split(core.pid)
            client_before = time.process_time()
            if arguments.callgrind:
                callgrind(core, on=True)
            began = time.perf_counter()
            seconds, latencies = drive(
                port, signer, arguments.concurrency, list(range(arguments.guests)),
                create_until_created(created, body, arguments.poll),
            )  # fmt: skip
            core_share = (cpu_seconds(core.pid) - cpu[0]) / seconds
            sim_share = (cpu_seconds(sim.pid) - cpu[1]) / seconds
            client_share = (time.process_time() - client_before) / seconds
            # Core's CPU per create counts every create's whole work, to its GuestCreatedEvent
            # committed: wait until the zone counts them all (a cheap call every 10 ms).
            deadline = time.monotonic() + 2 * patience
            while call(port, signer, "GET", "/compute_zone_status/")["instances"] != [
                arguments.guests, 0, 0, 0,
            ]:  # fmt: skip
                if time.monotonic() > deadline:
                    raise SystemExit(f"run {run}: the creates were not all done in time")
                time.sleep(0.5 if arguments.callgrind else 0.01)
            settled = time.perf_counter() - began
            if arguments.callgrind:
                callgrind(core, on=False)
            user, system, writer = (
                (after - before) * 1000 / arguments.guests
                for after, before in zip(cpu_split(core.pid), core_before, strict=True)
            )
            if arguments.callgrind:
                busy, idle = busy_and_idle(core, arguments.callgrind, settled)
                print(
                    f"       callgrind: {busy / arguments.guests / 1e6:.2f} M instructions per "
                    f"create, {idle / arguments.guests / 1e6:.2f} M of them the same span idle: "
                    f"{(busy - idle) / arguments.guests / 1e6:.2f} M per create"
                )
            for guest in created if not arguments.poll else ():
                if call(port, signer, "GET", f"/guests/{guest}")["created"] is not True:
                    raise SystemExit(f"run {run}: guest {guest} is not created")
            if arguments.reads:
                reads = [created[i % len(created)] for i in range(arguments.reads)]
                before = cpu_split(core.pid)
                if arguments.callgrind:
                    callgrind(core, on=True)
                read_seconds, read_latencies = drive(
                    port, signer, arguments.concurrency, reads, read
                )
                if arguments.callgrind:
                    callgrind(core, on=False)
                spent = sum(cpu_split(core.pid)[:2]) - sum(before[:2])
                print(
                    f"       {arguments.reads / read_seconds:7.0f} reads/s (GET /guests/:id, "
                    f"created)  p50 {statistics.median(read_latencies) * 1000:.2f} ms  Core "
                    f"CPU per read {spent * 1e6 / arguments.reads:.0f} us"
                )
                if arguments.callgrind:
                    busy, idle = busy_and_idle(core, arguments.callgrind, read_seconds)
                    print(
                        f"       callgrind: {(busy - idle) / arguments.reads / 1e6:.3f} M "
                        f"instructions per read (less the same span idle)"
                    )
            delete_seconds, _ = drive(port, signer, arguments.concurrency, created, delete)
            zone = call(port, signer, "GET", "/compute_zone_status/")
            if zone["instances"] != [0, 0, 0, 0] or core.poll() is not None:
                raise SystemExit(f"run {run}: zone shows {zone['instances']} after the deletes")
            p50, p99 = statistics.median(latencies) * 1000, percentile(latencies, 0.99) * 1000
            acknowledged = statistics.median(POST_TIMES) * 1000
            print(
                f"run {run}: {len(created) / seconds:7.0f} creates/s  time to created p50 "
                f"{p50:6.2f} ms  p99 {p99:6.2f} ms  {len(created) / delete_seconds:7.0f} "
                f"deletes/s  Core peak RSS {peak_rss_mb(core.pid):.0f} MB  CPU while creating:"
                f" Core {core_share:.0%}, Cells {sim_share:.0%}, client {client_share:.0%}  "
                f"polls per create {POLLS[0] / len(created):.1f}  202 p50 {acknowledged:.1f} ms  "
                f"load {os.getloadavg()[0]:.2f}"
            )
            print(
                f"       Core CPU per create {user + system:.2f} ms (user {user:.2f}, system "
                f"{system:.2f}; store thread {writer:.2f})  all created after {settled:.2f} s"
                f" ({arguments.guests / settled:.0f}/s)  host pace {pace:.1f} ms"
            )
        stop(sim)
        stop(core)
        print(
            f"scheduling in Core, {arguments.cells:5d} cells, live: "
            f"{logged_times(root, 'placement decision')}"
        )
        print(f"store commits in Core, live: {logged_times(root, 'store commit')}")
    finally:
        for process in (sim, core):
            if process is not None:
                stop(process)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
