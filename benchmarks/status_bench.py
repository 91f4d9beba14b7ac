"""Status aggregates benchmark: prints how long each status route's computation takes.

The aggregates are derived per request from the read model (its instance tallies per Cell)
and the Cells' liveness, so their cost grows with the number of Cells. This builds a read
model of ``--pools`` pools, ``--cells`` cells and ``--instances`` instances in memory (no
SQLite, no HTTP), every Cell alive with a report, and times the zone, pool-list, one-pool and
cell-list computations (the cell list also with its answer encoded, as the route does), each
after ``--reports`` Cells sent a new report (a request comes after a few reports of 1,000
Cells reporting every 2 s; ``--reports`` = ``--cells`` is every Cell's report new each time).

    python benchmarks/status_bench.py [--pools 10] [--cells 1000] [--instances 20000]
                                      [--reports 50]
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.task import Clock
from zope.interface import implementer

from nanocore import model as m
from nanocore.api import envelope
from nanocore.api.status import _encoded_entry
from nanocore.operations.base import Context
from nanocore.operations.status import CellMonitor, Status, Usage
from nanocore.store import ReadModel
from nanocore.store.tables import TABLES


@implementer(CellMonitor)
class AllAlive:
    """Every Cell alive; ``report(n)`` gives the next ``n`` Cells a new report, as the real
    monitor gives a new ``Usage`` only when a Cell's report came."""

    def __init__(self, names: list[str]) -> None:
        self._names = names
        self._usages = {name: self._figures(0) for name in names}
        self._next = 0

    @staticmethod
    def _figures(seq: int) -> Usage:
        return Usage(
            cores=16, cpu_usage=12.5 + seq % 7, memory=64 << 30, memory_available=32 << 30
        )

    def report(self, count: int) -> None:
        for _ in range(count):
            name = self._names[self._next % len(self._names)]
            self._usages[name] = self._figures(self._next)
            self._next += 1

    def alive(self, name: str) -> bool:
        return True

    def address(self, name: str) -> str:
        return "127.0.0.1"

    def usage(self, name: str) -> Usage | None:
        return self._usages[name]

    def generation(self) -> int:
        return self._next


def build(pools: int, cells: int, instances: int) -> Status:
    state: dict[type, dict[Any, Any]] = {table.kind: {} for table in TABLES}
    state[m.Zone] = {m.Zone().key: m.Zone()}
    for i in range(pools):
        state[m.ComputePool][f"pool{i}"] = m.ComputePool(name=f"pool{i}")
    names = [f"Cell_{i:012x}" for i in range(cells)]
    for i, name in enumerate(names):
        state[m.ComputeCell][name] = m.ComputeCell(name=name, pool=f"pool{i % pools}")
    for i in range(instances):
        cell = state[m.ComputeCell][names[i % cells]]
        state[m.Instance][f"i{i}"] = m.Instance(
            id=f"i{i}",
            name=f"vm{i}",
            owner="admin",
            group="admin",
            pool=cell.pool,
            cell=cell.name,
            cores=1,
            memory=1 << 30,
            disks=(10 << 30,),
            status=m.InstanceStatus.RUNNING if i % 2 else m.InstanceStatus.STOPPED,
        )
    context = Context(SimpleNamespace(view=ReadModel(state), units_committed=0), Clock())  # type: ignore[arg-type]
    return Status(context, AllAlive(names), "2024-05-01 00:00:00")


def timed(label: str, work: Any, repeat: int, between: Any = lambda: None) -> None:
    elapsed = 0.0
    for _ in range(repeat):
        between()
        started = time.perf_counter()
        work()
        elapsed += (time.perf_counter() - started) / repeat
    print(f"{label:<28} {elapsed * 1000:9.2f} ms per request")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pools", type=int, default=10)
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=20000)
    parser.add_argument("--reports", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    status = build(args.pools, args.cells, args.instances)
    monitor = status._monitor
    assert isinstance(monitor, AllAlive)
    print(
        f"{args.pools} pools, {args.cells} cells, {args.instances} instances, "
        f"{args.reports} new reports before each request"
    )
    reported = partial(monitor.report, args.reports)
    status.zone()  # the first request of a started Core, not timed
    timed("GET /compute_zone_status/", status.zone, args.repeat, reported)
    timed("GET /compute_pool_status/", status.pools, args.repeat, reported)
    timed("GET /compute_pool_status/:p", lambda: status.pool("pool0"), args.repeat, reported)
    timed("GET /compute_cell_status/:p", lambda: status.cells("pool0"), args.repeat, reported)
    timed("  same, encoded", lambda: encoded_cells(status, "pool0"), args.repeat, reported)


def encoded_cells(status: Status, pool: str) -> bytes:
    """The cell list's answer as the route prints it."""
    return envelope.success_of_items([_encoded_entry(state) for state in status.cells(pool)])


if __name__ == "__main__":
    main()
