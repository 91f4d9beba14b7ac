"""What one create costs on Core's reactor thread, in one process and without sockets.

Signed ``POST /guests/`` requests go through the daemon's API site (``api_site_for`` over
``build_api_resource``) into a ``StringTransport``, over the real operations, with 100
FakeCells answering at once through the scripted directory (``tests/cellfixtures``) and each
commit mirrored into the read model without the writer (which runs on its own thread in a
real Core). What is left is what the reactor thread does per create, less the Cell link's TLS
and codec: HTTP, the signature, Klein, the body, the decision, the request message, the
records, the Cell's answer and ``GuestCreatedEvent``, and the FakeCells' own work.

    python benchmarks/create_path_bench.py [--creates 1000] [--instructions]

It prints microseconds and Python calls per create; ``--instructions`` counts instructions
per create under valgrind (two runs, ``--creates`` and four times as many, the difference
divided): the figure that does not move with a shared machine's speed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import attrs  # noqa: E402
from twisted.internet.defer import Deferred, succeed  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from valgrind import instructions_per  # noqa: E402  (beside this script)

import tests.test_guests_properties as world_module  # noqa: E402
from nanocore.api.app import api_site_for, build_api_resource  # noqa: E402
from nanocore.api.client import Signer  # noqa: E402
from nanocore.store import Put, UnitOfWork  # noqa: E402
from nanocore.testing.fakecell import Capacity  # noqa: E402

GiB = 1 << 30
CREDENTIALS = {"bench": "benchmark-key-0123456789"}
CELLS = tuple(f"Cell_p{i:03d}" for i in range(100))


def mirrored_only(self: Any, unit: UnitOfWork) -> Deferred[None]:
    """A commit as the reactor thread sees it: the read model follows, the writer is away."""
    self.view.mirror(unit)
    self.units_committed += 1
    return succeed(None)


def creates(count: int) -> tuple[Any, list[bytes], Any]:
    """A world of 100 roomy Cells answering at once, its API channel, and ``count`` requests."""
    world_module.CELLS = CELLS
    world_module.SyncStore.commit = mirrored_only  # type: ignore[method-assign]
    world = world_module.World(Path(tempfile.mkdtemp()))
    for name, cell in world.cells.items():
        cell.capacity = Capacity(cores=10**6, memory=10**6 * GiB, disk=10**9 * GiB)
        cell._creation_time = 0.0
        world.report(name)
    pool = world.store.view.compute_pools["p"]
    world.store.commit(UnitOfWork.of(Put(attrs.evolve(pool, network=""))))
    site = api_site_for(build_api_resource(world.ops, CREDENTIALS, world.clock))
    signer = Signer("bench", CREDENTIALS["bench"])
    template = next(iter(world.store.view.templates))
    requests = []
    for index in range(count):
        body = json.dumps(
            {"name": f"g{index}", "owner": "bench", "group": "bench", "pool": "p",
             "template": template, "cores": 1, "memory": GiB, "disks": [10 * GiB]}
        ).encode()  # fmt: skip
        headers = signer.headers(
            "POST", "http://127.0.0.1:5850/api/v1/guests/", body, now=world.clock.seconds()
        )
        headers[b"Content-Length"] = b"%d" % len(body)
        head = b"".join(name + b": " + value + b"\r\n" for name, value in headers.items())
        requests.append(b"POST /api/v1/guests/ HTTP/1.1\r\n" + head + b"\r\n" + body)
    return world, requests, site


def session(count: int) -> tuple[Any, list[bytes], Callable[[list[bytes]], None]]:
    """The world, ``count`` requests, and what sends some of them, one after another."""
    world, requests, site = creates(count)
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)

    def run(batch: list[bytes]) -> None:
        for request in batch:
            transport.clear()
            channel.dataReceived(request)
            world.settle()
            if b'"error_code": 0' not in transport.value():
                raise SystemExit(transport.value().decode(errors="replace"))

    return world, requests, run


def finish(world: Any, count: int) -> None:
    view = world.store.view
    if len(view.instances) != count or not all(i.created for i in view.instances.values()):
        raise SystemExit("not every guest was created")
    world.store.close()
    shutil.rmtree(world.folder)


def drive(count: int) -> tuple[float, float]:
    """Seconds per create, and Python calls per create (a second pass, profiled)."""
    world, requests, run = session(2 * count)
    began = time.perf_counter()
    run(requests[:count])
    seconds = (time.perf_counter() - began) / count
    calls = 0

    def counting(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(counting)
    run(requests[count:])
    sys.setprofile(None)
    finish(world, 2 * count)
    return seconds, calls / count


def instructions(count: int) -> float:
    """Instructions per create: valgrind runs of ``count`` and ``4 * count`` creates."""
    return instructions_per(lambda each: [__file__, "--creates", str(each), "--quiet"], count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--creates", type=int, default=1000)
    parser.add_argument("--instructions", action="store_true", help="count them under valgrind")
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.quiet:  # a valgrind child: the creates, nothing else
        world, requests, run = session(arguments.creates)
        run(requests)
        finish(world, arguments.creates)
        return
    seconds, calls = drive(arguments.creates)
    print(f"one create in process: {seconds * 1e6:.0f} us, {calls:.0f} Python calls")
    if arguments.instructions:
        per_create = instructions(max(100, arguments.creates // 4))
        print(f"one create in process: {per_create / 1e6:.3f} M instructions")


if __name__ == "__main__":
    main()
