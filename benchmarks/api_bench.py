"""Load benchmark of the signed REST API against a real nanocore process, on loopback only.

Starts the server pinned to CPU 0 (``taskset -c 0``) with temporary config, data, cert and log
folders and a known credential, drives it from this process (pinned to CPU 1) over keep-alive
connections on 127.0.0.1, and prints requests per second and p50/p99 latency for signed
``GET /api/v1/compute_pools/`` and for a create/delete loop on address pools, at concurrency
1 and 32. Every phase is bounded in requests and in seconds; the server is stopped at the end.

    python benchmarks/api_bench.py                      # twistd -n nanocore (the real process)
    python benchmarks/api_bench.py --server standin     # the API site alone, same store
    python benchmarks/api_bench.py --profile out.prof   # cProfile of the server, top printed

The stand-in (``api_bench.py serve``) runs the same Store, Operations and API site that
``nanocore.tap`` composes, without the cluster services: for comparison, and for use before
the tap serves the API.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from attrs import frozen

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted.internet.defer import Deferred, gatherResults  # noqa: E402
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from nanocore.api.client import Signer  # noqa: E402

CREDENTIAL_ID = "bench"
CREDENTIAL_KEY = "bench-key-known-only-to-this-benchmark"
LIST_PATH = "/api/v1/compute_pools/"
POOL_BODY = json.dumps({"gateway": "192.0.2.1", "provider": "dhcp"}).encode()
SUCCESS_PREFIX = b'{\n  "error_code": 0,'


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
    api = {"port": port, "credentials": [{"id": CREDENTIAL_ID, "key": CREDENTIAL_KEY}]}
    for name, document in (("domain.cfg", domain), ("api.cfg", api)):
        path = folders["config"] / name
        path.write_text(json.dumps(document, indent=1) + "\n")
        path.chmod(0o600)
    return folders


def server_command(
    kind: str, folders: dict[str, Path], port: int, profile: Path | None
) -> list[str]:
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") and os.cpu_count() != 1 else []
    if kind == "twistd":
        twistd = str(Path(sys.executable).with_name("twistd"))
        command = [*pin, sys.executable, twistd, "-n", "--pidfile=", "--logfile=-"]
        if profile is not None:
            command += [f"--profile={profile}", "--profiler=cprofile", "--savestats"]
        command.append("nanocore")
        for name, folder in folders.items():
            command += [f"--{name}-dir", str(folder)]
        return command
    command = [*pin, sys.executable, str(Path(__file__).resolve()), "serve"]
    command += ["--data-dir", str(folders["data"]), "--port", str(port)]
    if profile is not None:
        command += ["--profile", str(profile)]
    return command


def wait_for_port(port: int, process: subprocess.Popen[bytes], limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server did not listen on 127.0.0.1:{port} within {limit:g} s")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve(arguments: argparse.Namespace) -> None:
    """The stand-in server: Store + Operations + the API site, and nothing else."""
    import cProfile

    from twisted.internet import reactor as default_reactor

    from nanocore.api.app import build_api_site
    from nanocore.operations.core import Operations
    from nanocore.store import Store

    reactor: Any = default_reactor
    profiler = cProfile.Profile() if arguments.profile else None

    def opened(store: Any) -> None:
        site = build_api_site(Operations(store, reactor), {CREDENTIAL_ID: CREDENTIAL_KEY}, reactor)
        reactor.listenTCP(arguments.port, site, interface="127.0.0.1")
        reactor.addSystemEventTrigger("before", "shutdown", store.close)

    def failed(failure: Failure) -> None:
        failure.printTraceback()
        reactor.stop()

    Store.open(Path(arguments.data_dir), reactor).addCallbacks(opened, failed)
    if profiler is not None:
        profiler.enable()
    reactor.run()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(arguments.profile)


# -- the load generator -------------------------------------------------------------------


@frozen
class Outcome:
    """One phase, as printed."""

    name: str
    concurrency: int
    latencies: list[float]
    seconds: float
    errors: int
    first_error: bytes

    def line(self) -> str:
        count = len(self.latencies)
        ordered = sorted(self.latencies)

        def at(fraction: float) -> float:
            return ordered[min(count - 1, int(fraction * count))] * 1000 if count else 0.0

        return (
            f"{self.name:34s} c={self.concurrency:<3d} n={count:<6d} "
            f"{count / self.seconds:8.0f} req/s   p50 {at(0.50):6.2f} ms   "
            f"p99 {at(0.99):6.2f} ms   errors {self.errors}"
        )


class Budget:
    """The requests one phase may still send and what came back, shared by its connections."""

    def __init__(self, limit: int, seconds: float) -> None:
        self._left = limit
        self._deadline = time.perf_counter() + seconds
        self.latencies: list[float] = []
        self.errors = 0
        self.first_error = b""

    def take(self) -> bool:
        if self._left <= 0 or time.perf_counter() > self._deadline:
            return False
        self._left -= 1
        return True

    def record(self, latency: float, head: bytes, body: bytes) -> None:
        self.latencies.append(latency)
        if not (head.startswith(b"HTTP/1.1 200 ") and body.startswith(SUCCESS_PREFIX)):
            self.errors += 1
            self.first_error = self.first_error or head.split(b"\r\n", 1)[0] + b" " + body


class Connection(Protocol):
    """One keep-alive connection sending its stream one request at a time.

    A create is always followed by its delete, even past the budget, so every phase leaves
    the store as it found it.
    """

    def __init__(self, budget: Budget, stream: Iterator[bytes], done: Deferred[None]) -> None:
        self._budget = budget
        self._stream = stream
        self._done = done
        self._buffer = b""
        self._sent_at = 0.0
        self._owes_delete = False

    def connectionMade(self) -> None:
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if not self._budget.take() and not self._owes_delete:
            self.transport.loseConnection()
            return
        request = next(self._stream)
        self._owes_delete = request.startswith(b"POST ")
        self._sent_at = time.perf_counter()
        self.transport.write(request)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self._buffer[:end]
        marker = head.lower().find(b"\r\ncontent-length:")
        length = int(head[marker + 17 :].split(b"\r\n", 1)[0]) if marker >= 0 else 0
        if len(self._buffer) < end + 4 + length:
            return
        body = self._buffer[end + 4 : end + 4 + length]
        self._buffer = self._buffer[end + 4 + length :]
        self._budget.record(time.perf_counter() - self._sent_at, head, body)
        self._send()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self._done.called:
            self._done.callback(None)


class Connector(ClientFactory):
    def __init__(self, budget: Budget, stream: Iterator[bytes], done: Deferred[None]) -> None:
        self._budget = budget
        self._stream = stream
        self._done = done

    def buildProtocol(self, addr: Any) -> Connection:
        return Connection(self._budget, self._stream, self._done)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self._done.called:
            self._done.errback(reason)


def http_request(signer: Signer, port: int, method: str, path: str, body: bytes = b"") -> bytes:
    """The bytes of one request, signed now."""
    url = f"http://127.0.0.1:{port}{path}"
    headers = signer.headers(method, url, body, now=time.time())
    lines = [f"{method} {path} HTTP/1.1".encode()]
    lines += [name + b": " + value for name, value in headers.items()]
    if body or method in ("POST", "PUT"):
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def list_requests(signer: Signer, port: int) -> Iterator[bytes]:
    while True:
        yield http_request(signer, port, "GET", LIST_PATH)


def write_requests(signer: Signer, port: int, tag: str) -> Iterator[bytes]:
    """Create then delete one address pool after another (each a durable commit)."""
    serial = 0
    while True:
        serial += 1
        path = f"/api/v1/address_pools/bench-{tag}-{serial}"
        yield http_request(signer, port, "POST", path, POOL_BODY)
        yield http_request(signer, port, "DELETE", path)


def run_phase(
    reactor: Any,
    port: int,
    name: str,
    concurrency: int,
    make_stream: Callable[[int], Iterator[bytes]],
    limit: int,
    seconds: float,
) -> Deferred[Outcome]:
    """``concurrency`` connections, each with its own request stream, sharing one budget."""
    budget = Budget(limit, seconds)
    started = time.perf_counter()
    finished: list[Deferred[None]] = []
    for index in range(concurrency):
        done: Deferred[None] = Deferred()
        finished.append(done)
        reactor.connectTCP("127.0.0.1", port, Connector(budget, make_stream(index), done))

    def outcome(_: object) -> Outcome:
        elapsed = time.perf_counter() - started
        return Outcome(
            name, concurrency, budget.latencies, elapsed, budget.errors, budget.first_error
        )

    return gatherResults(finished, consumeErrors=True).addCallback(outcome)


def drive(arguments: argparse.Namespace, port: int) -> list[Outcome]:
    """Run every phase in this process's reactor and return what was measured."""
    from twisted.internet import reactor as default_reactor
    from twisted.internet.defer import inlineCallbacks

    reactor: Any = default_reactor

    signer = Signer(CREDENTIAL_ID, CREDENTIAL_KEY)
    outcomes: list[Outcome] = []
    failure: list[Failure] = []

    def reader_stream(index: int) -> Iterator[bytes]:
        return list_requests(signer, port)

    def writer_stream(concurrency: int, index: int) -> Iterator[bytes]:
        return write_requests(signer, port, f"{concurrency}-{index}")

    @inlineCallbacks
    def phases() -> Any:
        warm = yield run_phase(reactor, port, "warm-up", 4, reader_stream, 2000, 10)
        if warm.errors:
            raise SystemExit(f"the server does not answer the API: {warm.first_error!r}")
        for concurrency in arguments.concurrency:
            outcomes.append(
                (
                    yield run_phase(
                        reactor,
                        port,
                        f"GET {LIST_PATH}",
                        concurrency,
                        reader_stream,
                        arguments.reads,
                        arguments.seconds,
                    )
                )
            )
            print(outcomes[-1].line(), flush=True)
        for concurrency in arguments.concurrency:
            outcomes.append(
                (
                    yield run_phase(
                        reactor,
                        port,
                        "POST+DELETE /api/v1/address_pools/",
                        concurrency,
                        functools.partial(writer_stream, concurrency),
                        arguments.writes,
                        arguments.seconds,
                    )
                )
            )
            print(outcomes[-1].line(), flush=True)

    def stop(result: object) -> None:
        if isinstance(result, Failure):
            failure.append(result)
        reactor.stop()

    reactor.callWhenRunning(lambda: phases().addBoth(stop))
    reactor.run()
    if failure:
        failure[0].raiseException()
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    serve_parser = sub.add_parser("serve", help="the stand-in server (used by the benchmark)")
    serve_parser.add_argument("--data-dir", required=True)
    serve_parser.add_argument("--port", type=int, required=True)
    serve_parser.add_argument("--profile")
    parser.add_argument("--server", choices=("twistd", "standin"), default="twistd")
    parser.add_argument("--reads", type=int, default=30000, help="GETs per phase (at most)")
    parser.add_argument("--writes", type=int, default=10000, help="writes per phase (at most)")
    parser.add_argument("--seconds", type=float, default=20.0, help="time cap per phase")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--profile", type=Path, help="write the server's cProfile stats here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    arguments = parser.parse_args()
    if arguments.command == "serve":
        serve(arguments)
        return

    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    root = Path(tempfile.mkdtemp(prefix="nanocore-bench-"))
    port = free_port()
    folders = prepare_folders(root, port)
    profile = arguments.profile.resolve() if arguments.profile else None
    command = server_command(arguments.server, folders, port, profile)
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    log = (root / "server.out").open("wb")
    process = subprocess.Popen(command, cwd=root, env=environment, stdout=log, stderr=log)
    try:
        wait_for_port(port, process)
        print(f"server: {' '.join(command[:6])} ... pid {process.pid}, 127.0.0.1:{port}")
        print(f"client: pid {os.getpid()} on CPU 1; python {sys.version.split()[0]}")
        drive(arguments, port)
    finally:
        stop_server(process)
        log.close()
        if not arguments.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"folders kept in {root}")
    if profile is not None and profile.exists():
        stats = pstats.Stats(str(profile))
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()
