"""A real Core with ``--cells`` simulated Cells linked over TLS: the four scale figures of #15.

Starts ``twistd -n nanocore`` (temporary folders, 127.0.0.1, pinned to ``--server-cpu``), waits
until it serves, then ``twistd -n nanocell-sim --count N`` against its Cell link (on the other
core). Prints:

1. **time to all linked**: from starting the simulator until Core lists all N Cells (the
   unallocated list, polled every 0.2 s), with how many were linked at each second;
2. **memory per idle link**: Core's RSS after the links settled (``--settle`` seconds of
   reports every 2 s and keep-alives, nothing else) minus its RSS before the simulator
   started, divided by N; and the same for a bare Twisted TLS server holding as many
   connections from a bare client with the same certificates (``--floor``);
3. **zone status** and 4. **the cell status list** of the pool holding all N Cells: p50 / p99
   of ``--requests`` signed GETs, one at a time, while the Cells report.

    python benchmarks/scale_bench.py [--cells 1000] [--settle 10] [--requests 200]
                                     [--server-cpu 0] [--client-cpu 1] [--no-floor]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from api_bench import (  # noqa: E402
    CREDENTIAL,
    cpu_seconds,
    fetch,
    request_bytes,
    rss_mib,
    start_twistd,
    stop,
    wait_until_serving,
)
from guest_bench import call, link_port  # noqa: E402

from nanocore.api.client import Signer  # noqa: E402


def latencies(port: int, signer: Signer, path: str, count: int) -> tuple[float, float]:
    """p50 and p99 in ms of ``count`` signed GETs of ``path``, one at a time, each signed anew
    (the answer is recomputed whenever a Cell reported since the last one)."""
    times = []
    for _ in range(count):
        raw = request_bytes(signer, "GET", path, b"", port)
        began = time.perf_counter()
        fetch(port, raw)
        times.append((time.perf_counter() - began) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def start_simulator(root: Path, link: int, cells: int, pin: list[str]) -> subprocess.Popen[bytes]:
    twistd = str(Path(sys.executable).with_name("twistd"))
    return subprocess.Popen(
        [*pin, sys.executable, twistd, "-n", "--pidfile=", f"--logfile={root / 'sim.log'}",
         "--reactor=epoll", "nanocell-sim", "--core", f"127.0.0.1:{link}",
         "--cert-dir", str(root / "cert"), "--disks", str(root / "sim-disks"),
         "--count", str(cells)],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
    )  # fmt: skip


def profile(pid: int, path: str) -> subprocess.Popen[bytes]:
    """py-spy sampling Core's threads (GIL holders only) until interrupted."""
    spy = str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--rate", "500", "--format", "raw",
         "--output", path, "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def floor_per_link(
    root: Path, cells: int, settle: float, pins: tuple[list[str], list[str]]
) -> float:
    """KiB per idle connection of a bare Twisted TLS server (``tls_floor.py``)."""
    script = ROOT / "benchmarks" / "tls_floor.py"
    server = subprocess.Popen(
        [*pins[0], sys.executable, str(script), "serve", str(root / "cert")],
        stdout=subprocess.PIPE, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert server.stdout is not None
    port = int(server.stdout.readline().split()[1])
    try:
        time.sleep(1.0)
        before = rss_mib(server.pid)
        client = subprocess.Popen(
            [*pins[1], sys.executable, str(script), "dial", str(root / "cert"), str(port),
             str(cells)],
            stdout=subprocess.PIPE, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )  # fmt: skip
        assert client.stdout is not None
        client.stdout.readline()  # "LINKED n"
        time.sleep(settle)
        after = rss_mib(server.pid)
        stop(client)
        print(
            f"  floor: bare Twisted TLS server, RSS {before:.1f} -> {after:.1f} MiB with "
            f"{cells} idle connections: {(after - before) * 1024 / cells:.1f} KiB each"
        )
        return (after - before) * 1024 / cells
    finally:
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--no-floor", action="store_true", help="skip the bare TLS server")
    parser.add_argument(
        "--profile", metavar="FILE", help="py-spy Core (collapsed stacks) during lines 3 and 4"
    )
    args = parser.parse_args()
    has_taskset = shutil.which("taskset") is not None
    pins = (
        ["taskset", "-c", str(args.server_cpu)] if has_taskset else [],
        ["taskset", "-c", str(args.client_cpu)] if has_taskset else [],
    )
    signer = Signer(*CREDENTIAL)
    root = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    core: subprocess.Popen[bytes] | None = None
    sim: subprocess.Popen[bytes] | None = None
    print(f"load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    try:
        core, port = start_twistd(root, ROOT, pins[0], None)
        wait_until_serving(signer, port)
        link = link_port(root / "twistd.log", time.monotonic() + 30)
        time.sleep(2.0)
        idle = rss_mib(core.pid)
        print(f"Core pid {core.pid}: RSS {idle:.1f} MiB idle, before any Cell")

        began = time.monotonic()
        cpu_before = cpu_seconds(core.pid)
        sim = start_simulator(root, link, args.cells, pins[1])
        linked, waves, next_mark = 0, [], began + 1.0
        while linked < args.cells:
            if time.monotonic() - began > 120 or sim.poll() is not None:
                raise SystemExit(f"only {linked} of {args.cells} Cells linked within 120 s")
            linked = len(call(port, signer, "GET", "/compute_pool_cells/") or [])
            if time.monotonic() >= next_mark:
                waves.append(linked)
                next_mark += 1.0
            time.sleep(0.2)
        took = time.monotonic() - began
        print(
            f"1. all {args.cells} Cells linked {took:.1f} s after the simulator started "
            f"(Core CPU {cpu_seconds(core.pid) - cpu_before:.1f} s); linked at each second: "
            f"{waves}"
        )

        time.sleep(args.settle)
        settled = rss_mib(core.pid)
        per_link = (settled - idle) * 1024 / args.cells
        print(
            f"2. Core RSS {idle:.1f} -> {settled:.1f} MiB with {args.cells} idle links: "
            f"{per_link:.1f} KiB per link"
        )
        if not args.no_floor:
            floor_per_link(root, args.cells, args.settle, pins)

        for index in range(args.cells):
            call(port, signer, "POST", f"/compute_pool_cells/default/Cell_sim{index:06d}")
        time.sleep(2.5)  # every Cell reports at least once in its pool
        zone = call(port, signer, "GET", "/compute_zone_status/")
        print(f"   zone: cells [offline, online] = {zone['cells']}")
        spy = None if args.profile is None else profile(core.pid, args.profile)
        cpu_before, wall_before = cpu_seconds(core.pid), time.monotonic()
        p50, p99 = latencies(port, signer, "/compute_zone_status/", args.requests)
        print(f"3. GET /compute_zone_status/         p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
        p50, p99 = latencies(port, signer, "/compute_cell_status/default", args.requests)
        print(f"4. GET /compute_cell_status/default  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
        share = (cpu_seconds(core.pid) - cpu_before) / (time.monotonic() - wall_before)
        print(f"   Core CPU share meanwhile (the Cells' reports included): {share:.0%}")
        print(f"   Core RSS now {rss_mib(core.pid):.1f} MiB")
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait()
    finally:
        if sim is not None:
            stop(sim)
        if core is not None:
            stop(core)
        shutil.rmtree(root, ignore_errors=True)
    print(f"load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
