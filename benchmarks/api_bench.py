"""Signed API throughput and latency against a real server process pinned to one core.

Prints requests/s and p50/p99 latency for ``GET /api/v1/compute_pools/`` and for a
create/delete loop on address pools (each acknowledged only after the store commit), at
concurrency 1 and 32. The load generator is a small HTTP/1.1 keep-alive client on the
other core (selectors, raw sockets); requests are signed before they are sent (GETs may repeat
a signature, writes may not).

    python benchmarks/api_bench.py [--seconds 5] [--server-cpu 0] [--client-cpu 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

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
        self.buffer += self.sock.recv(65536)
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return False
            at = self.buffer.find(b"Content-Length: ", 0, end)
            length = int(self.buffer[at + 16 : self.buffer.index(b"\r\n", at)])
            if len(self.buffer) < end + 4 + length:
                return False
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            if b'"error_code": 0' not in body:
                raise RuntimeError(body.decode())
            self.step += 1
            if self.step == len(self.sequence):
                return True
            self.sock.send(self.sequence[self.step])


def run(
    port: int, make: Iterator[list[bytes]], concurrency: int, seconds: float
) -> tuple[int, float, list[float]]:
    """Closed-loop load: each connection starts its next item when the previous one is done."""
    latencies: list[float] = []
    selector = selectors.DefaultSelector()
    connections = [Connection(port) for _ in range(concurrency)]
    started = time.perf_counter()
    deadline = started + seconds
    for connection in connections:
        selector.register(connection.sock, selectors.EVENT_READ, connection)
        connection.begin(next(make))
    active = len(connections)
    while active:
        for key, _ in selector.select():
            connection = key.data
            if connection.received():
                now = time.perf_counter()
                latencies.append(now - connection.started)
                if now < deadline:
                    connection.begin(next(make))
                else:
                    selector.unregister(connection.sock)
                    connection.sock.close()
                    active -= 1
    return len(latencies), time.perf_counter() - started, latencies


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(
    name: str,
    concurrency: int,
    requests_per_item: int,
    result: tuple[int, float, list[float]],
    server_cpu: float,
) -> None:
    count, elapsed, latencies = result
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    rate = count * requests_per_item / elapsed
    print(
        f"{name:<38} c={concurrency:<3} {rate:9.0f} req/s   "
        f"p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   server cpu {server_cpu / elapsed:4.0%}   "
        f"{count * requests_per_item / max(server_cpu, 1e-9):6.0f} req per server cpu-s",
        flush=True,
    )


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--profile", help="cProfile output file for the server")
    args = parser.parse_args()

    signer = Signer(*CREDENTIAL)
    with tempfile.TemporaryDirectory() as data_dir:
        command = [
            "taskset", "-c", str(args.server_cpu), sys.executable,
            str(ROOT / "benchmarks" / "api_server.py"),
            "--data-dir", data_dir, "--credential", ":".join(CREDENTIAL),
        ]  # fmt: skip
        if args.profile:
            command += ["--profile", args.profile]
        server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert server.stdout is not None
            line = server.stdout.readline().split()
            if not line or line[0] != "READY":
                raise SystemExit(f"server did not start: {line}")
            port = int(line[1])
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, {args.client_cpu})
            print(f"server pid {server.pid} on cpu {args.server_cpu}, port {port}")
            for concurrency in (1, 32):
                before = cpu_seconds(server.pid)
                result = run(port, gets(signer, port), concurrency, args.seconds)
                used = cpu_seconds(server.pid) - before
                report("GET /compute_pools/ (signed)", concurrency, 1, result, used)
            for concurrency in (1, 32):
                before = cpu_seconds(server.pid)
                result = run(
                    port, writes(signer, port, f"c{concurrency}x"), concurrency, args.seconds
                )
                used = cpu_seconds(server.pid) - before
                report("POST+DELETE /address_pools/:p (durable)", concurrency, 2, result, used)
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
