"""Image transfers: upload and download a large file through the signed API (plain HTTP) and
over the TLS image site (a Cell's certificate), beside openssl s_server/s_client moving the same
bytes on the same machine in the same run.

    python benchmarks/image_bench.py [--size-mib 1024]

A Core (store, operations, API with its stream routes, TLS image site) runs in a child process
on loopback; curl moves the bytes (it streams ``-F image=@file`` and ``-o /dev/null``). Prints
MB/s per leg, the child's RSS before and its peak (VmHWM), and the p99 of signed API GETs made
one after another while the API transfers run. Files live in a temporary folder, deleted after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

CREDENTIAL = ("bench", "a-benchmark-key-of-reasonable-length")


def serve(folder: Path) -> None:
    """The child: a Core's image rooms on loopback; prints ``READY <api> <image>``."""
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    from nanocore.api import envelope
    from nanocore.api.app import api_site_for, build_api_resource
    from nanocore.api.auth import Verifier
    from nanocore.api.streams import StreamFront, stream_signature
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
        folders = ImageFolders(folder / "data", thread_offload(reactor))
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


def curl(arguments: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(["curl", "-sS", "--fail-with-body", "-o", "/dev/null", *arguments], check=True)
    return time.perf_counter() - started


def rss(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def openssl_download(paths: dict[str, Path], folder: Path, name: str) -> float:
    """s_server -WWW sends the file, s_client reads it to /dev/null: the TLS ceiling here."""
    port = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-quiet", "-WWW", "-accept", str(port), "-naccept", "1",
         "-cert", str(paths["server"]), "-key", str(paths["server_key"])],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        started = time.perf_counter()
        counted = subprocess.run(
            f"printf 'GET /{name} HTTP/1.0\\r\\n\\r\\n' | openssl s_client -quiet -ign_eof"
            f" -connect 127.0.0.1:{port} 2>/dev/null | wc -c",
            shell=True, capture_output=True, text=True, check=False,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        print(f"openssl moved {counted.stdout.strip()} bytes", flush=True)
        return seconds
    finally:
        server.kill()
        server.wait()


def p99_while(url: str, running: threading.Event, latencies: list[float]) -> None:
    while running.is_set():
        started = time.perf_counter()
        call("GET", url)
        latencies.append(time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve))
        return
    folder = Path(tempfile.mkdtemp(prefix="image-bench-", dir=ROOT))
    child = None
    try:
        size = args.size_mib << 20
        source = folder / "source.img"
        with source.open("wb") as handle:
            block = os.urandom(16 << 20)
            for _ in range(size // len(block)):
                handle.write(block)
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(folder)],
            stdout=subprocess.PIPE, cwd=ROOT, text=True,
        )  # fmt: skip
        assert child.stdout is not None
        ready = child.stdout.readline().split()
        api_port, image_port = int(ready[1]), int(ready[2])
        paths = certificates(folder)
        base = f"http://127.0.0.1:{api_port}/api/v1"
        rss_before = rss(child.pid, "VmRSS")
        print(f"load average before: {os.getloadavg()}")
        print(f"file: {args.size_mib} MiB; Core RSS before: {rss_before / 2**20:.1f} MiB")
        mb = size / 1e6
        results: dict[str, float] = {}

        def timed(label: str, arguments: list[str], measure_gets: bool = False) -> None:
            latencies: list[float] = []
            running = threading.Event()
            watcher = None
            if measure_gets:
                running.set()
                watcher = threading.Thread(
                    target=p99_while, args=(f"{base}/media_images/", running, latencies)
                )
                watcher.start()
            seconds = curl(arguments)
            running.clear()
            if watcher is not None:
                watcher.join()
            results[label] = mb / seconds
            line = f"{label:<34} {mb / seconds:8.0f} MB/s"
            if latencies:
                p99 = statistics.quantiles(latencies, n=100)[98] * 1000
                line += f"   signed GETs meanwhile: {len(latencies)}, p99 {p99:.1f} ms"
            print(line, flush=True)

        for kind, ext in (("disk_images", "qcow2"),):
            image = call("POST", f"{base}/{kind}/", {"name": "bench", "owner": "a", "group": "b"})
            image_id = image["id"]  # type: ignore[index]
            url = f"{base}/{kind}/{image_id}/file/"
            headers = [f"-H{k}: {v}" for k, v in signed("POST", url, stream=True).items()]
            timed("API upload (signed, HTTP)", [*headers, "-F", f"image=@{source}", url], True)
            headers = [f"-H{k}: {v}" for k, v in signed("GET", url, stream=True).items()]
            timed("API download (signed, HTTP)", [*headers, url], True)
            site = f"https://127.0.0.1:{image_port}/api/v1/{kind}/{image_id}/file/"
            tls = ["--cacert", str(paths["ca"]), "--cert", str(paths["cell"]),
                   "--key", str(paths["cell_key"])]  # fmt: skip
            timed("TLS site upload (Cell cert, PUT)", [*tls, "-X", "PUT", "-F",
                  f"image=@{source}", site])  # fmt: skip
            timed("TLS site download (Cell cert)", [*tls, site])
            (folder / "data" / kind / f"{image_id}_v2.{ext}").unlink(missing_ok=True)
        seconds = openssl_download(paths, folder, "source.img")
        results["openssl"] = mb / seconds
        print(f"{'openssl s_server -> s_client':<34} {mb / seconds:8.0f} MB/s")
        peak = rss(child.pid, "VmHWM")
        print(f"Core peak RSS: {peak / 2**20:.1f} MiB (+{(peak - rss_before) / 2**20:.1f} MiB)")
        ratio = results["TLS site download (Cell cert)"] / results["openssl"]
        print(f"TLS site download / openssl: {ratio:.0%}")
        print(f"load average after: {os.getloadavg()}")
    finally:
        if child is not None:
            child.terminate()
            child.wait()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
