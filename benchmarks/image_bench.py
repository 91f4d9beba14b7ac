"""Image transfers: upload and download a large file through the signed API (plain HTTP) and
over the TLS image site (a Cell's certificate), beside openssl moving the same bytes on the
same machine in the same run.

    python benchmarks/image_bench.py [--size-mib 1024] [--rounds 3] [--legs api-up,...]
        [--profile FILE] [--write-behind MIB] [--buffered] [--read-kib KIB] [--no-gets]

A Core (store, operations, API with its stream routes, TLS image site) runs in a child process
on loopback; curl moves the bytes (it streams ``-F image=@file`` and ``-o /dev/null``), and
every leg checks what was moved (curl's byte counts, the upload's envelope). Each download runs
twice: just after its upload (the upload left little of the file in the page cache) and again
(from the cache). The openssl legs: ``s_server -WWW`` to ``s_client`` and to curl (the TLS
site legs' client), and ``s_client`` to ``s_server`` for uploads; the port is read from
s_server's ``ACCEPT`` line. Prints the median MB/s of each leg with its range over the rounds,
the Core's CPU seconds per leg (reactor thread, other threads: steadier than MB/s on a shared
machine), its RSS before and its peak (VmHWM), the p99 of signed API GETs made every 10 ms
while the API legs run, and each TLS leg against its openssl leg. ``--profile`` records the
Core with py-spy; ``--buffered``, ``--read-kib`` and ``--no-gets`` take one change at a time
out of a run (page-cache writes, the upload's read size, the GETs' share of the Core's CPU).
Files live in a temporary folder, deleted after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

CREDENTIAL = ("bench", "a-benchmark-key-of-reasonable-length")


def serve(folder: Path, write_behind: int | None, direct: bool, read_size: int | None) -> None:
    """The child: a Core's image rooms on loopback; prints ``READY <api> <image>``."""
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    from nanocore.api import envelope
    from nanocore.api.app import api_site_for, build_api_resource
    from nanocore.api.auth import Verifier
    from nanocore.api.streams import StreamFront, stream_signature
    from nanocore.images import transfers as transfers_module
    from nanocore.images.files import ImageFolders, thread_offload
    from nanocore.images.site import ImageSite, ImageSiteResource
    from nanocore.images.transfers import Transfers
    from nanocore.operations.core import Operations
    from nanocore.pki import (
        IssuedCertificate,  # noqa: F401
        load_or_create_ca,
        requesting_tls_options,
    )
    from nanocore.store import Store

    credentials = dict([CREDENTIAL])
    ca = load_or_create_ca(folder / "cert")
    from nanocore.pki import issue_server_certificate

    server = issue_server_certificate(ca, "127.0.0.1")

    def started(store: Store) -> None:
        reactor.addSystemEventTrigger("before", "shutdown", store.close)
        folders = ImageFolders(
            folder / "data", thread_offload(reactor), write_behind=write_behind, direct=direct
        )
        if read_size is not None:
            transfers_module.UPLOAD_READ_SIZE = read_size
        folders.prepare()
        operations = Operations(store, reactor, image_files=folders)
        verifier = Verifier(credentials, reactor)
        transfers = Transfers(operations.images, folders, envelope)
        api = build_api_resource(operations, credentials, reactor, verifier=verifier)
        front = StreamFront(api, transfers, verifier)
        api_site = api_site_for(front, upload_routes=lambda: front)
        api_port = reactor.listenTCP(0, api_site, interface="127.0.0.1")
        site = ImageSite(ImageSiteResource(transfers, stream_signature(verifier)))
        tls = requesting_tls_options(ca, server)
        image_port = reactor.listenSSL(0, site, tls, interface="127.0.0.1")
        print(f"READY {api_port.getHost().port} {image_port.getHost().port}", flush=True)

    Store.open(folder / "data", reactor).addCallback(started)
    reactor.run()


def certificates(folder: Path) -> dict[str, Path]:
    """A Cell's certificate and the server pair for openssl, from the child's CA."""
    from nanocore.pki import (
        issue_cell_certificate,
        issue_server_certificate,
        load_or_create_ca,
        write_pair,
    )

    ca = load_or_create_ca(folder / "cert")
    paths = {
        "ca": folder / "cert" / "nano_ca.crt.pem",
        "cell": folder / "cell.crt.pem",
        "cell_key": folder / "cell.key.pem",
        "server": folder / "server.crt.pem",
        "server_key": folder / "server.key.pem",
    }
    write_pair(issue_cell_certificate(ca, "Cell_bench"), paths["cell"], paths["cell_key"])
    write_pair(issue_server_certificate(ca, "127.0.0.1"), paths["server"], paths["server_key"])
    return paths


def signed(method: str, url: str, body: bytes = b"", stream: bool = False) -> dict[str, str]:
    from nanocore.api.auth import Variant
    from nanocore.api.client import Signer

    variant = Variant.STREAM if stream else Variant.REQUEST
    headers = Signer(*CREDENTIAL).headers(method, url, body, now=time.time(), variant=variant)
    return {name.decode(): value.decode() for name, value in headers.items()}


def call(method: str, url: str, document: object = None) -> object:
    body = b"" if document is None else json.dumps(document).encode()
    request = urllib.request.Request(url, data=body or None, method=method)
    for name, value in signed(method, url, body).items():
        request.add_header(name, value)
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())["data"]


def curl(arguments: list[str], upload: bool) -> tuple[float, int]:
    """Seconds and the bytes curl moved; an upload's envelope must say it was recorded."""
    started = time.perf_counter()
    done = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "-w", "\n%{size_upload} %{size_download}",
         *([] if upload else ["-o", "/dev/null"]), *arguments],
        check=True, capture_output=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    body, _, counts = done.stdout.rpartition(b"\n")
    sent, received = (int(count) for count in counts.split())
    if upload and json.loads(body).get("error_code", 0) != 0:
        raise RuntimeError(f"the upload was refused: {body.decode()}")
    return seconds, sent if upload else received


def rss(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User + system CPU time so far of a process's main (reactor) thread and of its other
    threads (the steadier figures on a shared machine)."""
    reactor = others = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # a thread that has just ended
            continue
        seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        if task.name == str(pid):
            reactor += seconds
        else:
            others += seconds
    return reactor, others


def openssl_server(paths: dict[str, Path], folder: Path, *extra: str) -> tuple[Any, int]:
    """An ``openssl s_server`` for one connection, and the port it announced.

    The port is read from its ``ACCEPT host:port`` line: probing it with a connection would
    use up its one accept (part 1's bug: the client then got nothing).
    """
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", "127.0.0.1:0", "-naccept", "1",
         "-cert", str(paths["server"]), "-key", str(paths["server_key"]), *extra],
        cwd=folder, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert server.stdout is not None
    while line := server.stdout.readline():
        if line.startswith(b"ACCEPT"):
            return server, int(line.rsplit(b":", 1)[1])
    raise RuntimeError("openssl s_server did not start")


def count_until_eof(stream: Any) -> int:
    """Bytes read from a pipe until its end, in large reads (the count proves the transfer)."""
    total = 0
    while chunk := stream.read1(1 << 20):
        total += len(chunk)
    return total


def openssl_download(paths: dict[str, Path], folder: Path, source: Path) -> tuple[float, int]:
    """s_server -WWW sends the file to s_client: the TLS ceiling for downloads here."""
    server, port = openssl_server(paths, folder, "-WWW")
    try:
        started = time.perf_counter()
        client = subprocess.Popen(
            ["openssl", "s_client", "-quiet", "-connect", f"127.0.0.1:{port}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert client.stdin is not None
        client.stdin.write(f"GET /{source.name} HTTP/1.0\r\n\r\n".encode())
        client.stdin.flush()
        moved = count_until_eof(client.stdout)
        seconds = time.perf_counter() - started
        client.stdin.close()
        client.wait()
        return seconds, moved
    finally:
        server.kill()
        server.wait()


def openssl_to_curl(paths: dict[str, Path], folder: Path, source: Path) -> tuple[float, int]:
    """s_server -WWW sends the file to curl, the client of the TLS site legs: s_client's
    small reads make the leg above slower than the server, so this is the stricter ceiling."""
    server, port = openssl_server(paths, folder, "-WWW")
    try:
        url = f"https://127.0.0.1:{port}/{source.name}"
        return curl(["--cacert", str(paths["ca"]), url], upload=False)
    finally:
        server.kill()
        server.wait()


def openssl_upload(paths: dict[str, Path], folder: Path, source: Path) -> tuple[float, int]:
    """s_client sends the file to s_server, which writes what it receives to its stdout:
    the TLS ceiling for uploads here (timed until the server has read it all)."""
    server, port = openssl_server(paths, folder)
    try:
        started = time.perf_counter()
        with source.open("rb") as data:
            client = subprocess.Popen(
                ["openssl", "s_client", "-nocommands", "-connect", f"127.0.0.1:{port}"],
                stdin=data, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            moved = count_until_eof(server.stdout)
        seconds = time.perf_counter() - started
        client.wait()
        return seconds, moved
    finally:
        server.kill()
        server.wait()


#: Seconds between the starts of two signed GETs made while a transfer runs: a busy portal
#: polling progress, not a second load competing with the transfer for the two cores.
GET_INTERVAL = 0.01


def p99_while(url: str, running: threading.Event, latencies: list[float]) -> None:
    while running.is_set():
        started = time.perf_counter()
        call("GET", url)
        latencies.append(time.perf_counter() - started)
        time.sleep(max(0.0, started + GET_INTERVAL - time.perf_counter()))


#: The legs a run may be limited to (to profile one of them).
LEGS = ("api-up", "api-down", "tls-up", "tls-down", "openssl")
#: Each of our legs beside the openssl leg it is held to (>= 70 %).
CEILINGS = (
    ("TLS site download, cached", "openssl s_server -> s_client"),
    ("TLS site download, cached", "openssl s_server -> curl"),
    ("TLS site upload (Cell cert, PUT)", "openssl s_client -> s_server"),
)


@dataclass
class Leg:
    """One leg's rounds: MB/s, and the Core's CPU seconds (reactor thread, other threads)."""

    label: str
    rates: list[float] = field(default_factory=list)
    reactor_cpu: list[float] = field(default_factory=list)
    threads_cpu: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def line(self) -> str:
        rate = statistics.median(self.rates)
        text = f"{self.label:<34} {rate:6.0f} MB/s"
        if len(self.rates) > 1:
            text += f" ({min(self.rates):.0f}-{max(self.rates):.0f})"
        if self.reactor_cpu:
            text += (
                f"   Core CPU s: reactor {statistics.median(self.reactor_cpu):.2f}"
                f" threads {statistics.median(self.threads_cpu):.2f}"
            )
        if self.latencies:
            p99 = statistics.quantiles(self.latencies, n=100)[98] * 1000
            text += f"   signed GETs meanwhile: {len(self.latencies)}, p99 {p99:.1f} ms"
        return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=1, help="runs of each leg (median shown)")
    parser.add_argument(
        "--legs",
        default=",".join(LEGS),
        help=f"which legs, comma-separated, of {','.join(LEGS)} (default: all)",
    )
    parser.add_argument(
        "--profile", metavar="FILE", help="record the Core with py-spy (collapsed stacks)"
    )
    parser.add_argument(
        "--write-behind",
        type=int,
        metavar="MIB",
        help="page cache an upload keeps behind its writer (default: the Core's; 0: all)",
    )
    parser.add_argument(
        "--buffered",
        action="store_true",
        help="uploads written through the page cache (default: direct I/O where it works)",
    )
    parser.add_argument(
        "--read-kib",
        type=int,
        metavar="KIB",
        help="socket read size of an API upload (default: the Core's)",
    )
    parser.add_argument(
        "--no-gets",
        action="store_true",
        help="no signed GETs during the API legs (the Core's CPU is then the transfer's alone)",
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        from nanocore.images.files import WRITE_BEHIND

        behind = WRITE_BEHIND if args.write_behind is None else (args.write_behind << 20 or None)
        read_size = None if args.read_kib is None else args.read_kib << 10
        serve(Path(args.serve), behind, not args.buffered, read_size)
        return
    legs = set(args.legs.split(","))
    if not legs <= set(LEGS):
        parser.error(f"unknown legs: {', '.join(sorted(legs - set(LEGS)))}")
    folder = Path(tempfile.mkdtemp(prefix="image-bench-", dir=ROOT))
    child = profiler = None
    try:
        size = args.size_mib << 20
        source = folder / "source.img"
        with source.open("wb") as handle:
            block = os.urandom(16 << 20)
            for _ in range(size // len(block)):
                handle.write(block)
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(folder),
             *([] if args.write_behind is None else ["--write-behind", str(args.write_behind)]),
             *(["--buffered"] if args.buffered else []),
             *([] if args.read_kib is None else ["--read-kib", str(args.read_kib)])],
            stdout=subprocess.PIPE, cwd=ROOT, text=True,
        )  # fmt: skip
        assert child.stdout is not None
        ready = child.stdout.readline().split()
        api_port, image_port = int(ready[1]), int(ready[2])
        core = child.pid
        paths = certificates(folder)
        if args.profile:
            profiler = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw",
                 "--rate", "200", "--nonblocking", "-o", args.profile, "--pid", str(core)],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
        base = f"http://127.0.0.1:{api_port}/api/v1"
        rss_before = rss(core, "VmRSS")
        print(f"load average before: {os.getloadavg()}")
        print(f"file: {args.size_mib} MiB, {args.rounds} round(s) per leg")
        mb = size / 1e6
        results: dict[str, Leg] = {}

        def timed(
            label: str, arguments: list[str], *, upload: bool = False, measure_gets: bool = False
        ) -> None:
            leg = results.setdefault(label, Leg(label))
            running = threading.Event()
            watcher = None
            if measure_gets and not args.no_gets:
                running.set()
                watcher = threading.Thread(
                    target=p99_while, args=(f"{base}/media_images/", running, leg.latencies)
                )
                watcher.start()
            reactor_before, threads_before = cpu_seconds(core)
            seconds, moved = curl(arguments, upload=upload)
            reactor_after, threads_after = cpu_seconds(core)
            running.clear()
            if watcher is not None:
                watcher.join()
            if moved < size:
                raise RuntimeError(f"{label}: moved {moved:,} of {size:,} bytes")
            leg.rates.append(mb / seconds)
            leg.reactor_cpu.append(reactor_after - reactor_before)
            leg.threads_cpu.append(threads_after - threads_before)

        def openssl(label: str, measured: tuple[float, int]) -> None:
            seconds, moved = measured
            if moved < size:
                raise RuntimeError(f"{label}: moved {moved:,} of {size:,} bytes")
            results.setdefault(label, Leg(label)).rates.append(mb / seconds)

        kind = "disk_images"
        image = call("POST", f"{base}/{kind}/", {"name": "bench", "owner": "a", "group": "b"})
        image_id = image["id"]  # type: ignore[index]
        url = f"{base}/{kind}/{image_id}/file/"
        site = f"https://127.0.0.1:{image_port}/api/v1/{kind}/{image_id}/file/"
        tls = ["--cacert", str(paths["ca"]), "--cert", str(paths["cell"]),
               "--key", str(paths["cell_key"])]  # fmt: skip

        def stream(method: str) -> list[str]:
            return [f"-H{k}: {v}" for k, v in signed(method, url, stream=True).items()]

        for _ in range(args.rounds):
            if "api-up" in legs:
                timed("API upload (signed, HTTP)", [*stream("POST"), "-F", f"image=@{source}",
                      url], upload=True, measure_gets=True)  # fmt: skip
            elif legs & {"api-down", "tls-down"}:
                curl([*stream("POST"), "-F", f"image=@{source}", url], upload=True)
            if "api-down" in legs:  # first from the disk, then from the page cache
                timed("API download, just uploaded", [*stream("GET"), url], measure_gets=True)
                timed("API download, cached", [*stream("GET"), url], measure_gets=True)
            if "tls-up" in legs:
                timed("TLS site upload (Cell cert, PUT)", [*tls, "-X", "PUT", "-F",
                      f"image=@{source}", site], upload=True)  # fmt: skip
            if "tls-down" in legs:
                timed("TLS site download, just uploaded", [*tls, site])
                timed("TLS site download, cached", [*tls, site])
            if "openssl" in legs:
                openssl("openssl s_server -> s_client", openssl_download(paths, folder, source))
                openssl("openssl s_server -> curl", openssl_to_curl(paths, folder, source))
                openssl("openssl s_client -> s_server", openssl_upload(paths, folder, source))
        for leg in results.values():
            print(leg.line())
        peak = rss(core, "VmHWM")
        print(f"Core RSS: {rss_before / 2**20:.1f} MiB before, peak {peak / 2**20:.1f} MiB"
              f" (+{(peak - rss_before) / 2**20:.1f} MiB)")  # fmt: skip
        for ours, theirs in CEILINGS:
            if ours in results and theirs in results:
                ratio = statistics.median(results[ours].rates) / statistics.median(
                    results[theirs].rates
                )
                print(f"{ours} / {theirs}: {ratio:.0%} (target >= 70%)")
        print(f"load average after: {os.getloadavg()}")
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait()
        if child is not None:
            child.terminate()
            child.wait()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
