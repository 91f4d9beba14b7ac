"""Zone, pool and cell status aggregates (core-internals §6), computed when asked.

The original kept counters that a 5 s pass recomputed and that drifted in between; here every
figure is derived from the store (membership, instances) and the Cells' latest reports at the
moment of the request, so there is nothing to drift. A Cell that is not alive counts offline and
its last report is not added to anything.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable

from attrs import frozen
from twisted.internet.interfaces import IReactorTime

from nanocore.model import TIME_FORMAT, ComputeCell, ComputePool, Instance, InstanceStatus
from nanocore.operations.cells import CellOperations
from nanocore.operations.errors import InvalidRequest, UnknownEntity
from nanocore.store import Store


@frozen
class InstanceCounts:
    """Confirmed instances by state; pending creations are not counted (as in the original)."""

    stopped: int = 0
    running: int = 0
    lost: int = 0
    migrating: int = 0

    def as_list(self) -> list[int]:
        return [self.stopped, self.running, self.lost, self.migrating]

    def __add__(self, other: InstanceCounts) -> InstanceCounts:
        return InstanceCounts(
            self.stopped + other.stopped,
            self.running + other.running,
            self.lost + other.lost,
            self.migrating + other.migrating,
        )

    @classmethod
    def of(cls, instances: Iterable[Instance]) -> InstanceCounts:
        counts: Counter[str] = Counter()
        for instance in instances:
            if instance.status is InstanceStatus.CREATING:
                continue
            if instance.migrating:
                counts["migrating"] += 1
            elif instance.lost:
                counts["lost"] += 1
            elif instance.running:
                counts["running"] += 1
            else:
                counts["stopped"] += 1
        return cls(**counts)


@frozen
class Usage:
    """Resources of online cells: cores summed, CPU the core-weighted mean, the rest summed."""

    cores: int = 0
    cpu_usage: float = 0.0
    memory_available: int = 0
    memory_total: int = 0
    disk_available: int = 0
    disk_total: int = 0
    read_speed: int = 0
    write_speed: int = 0
    receive_speed: int = 0
    send_speed: int = 0

    @classmethod
    def total(cls, parts: Iterable[Usage]) -> Usage:
        items = list(parts)
        cores = sum(u.cores for u in items)
        weighted = sum(u.cpu_usage * u.cores for u in items)
        return cls(
            cores=cores,
            cpu_usage=weighted / cores if cores else 0.0,
            memory_available=sum(u.memory_available for u in items),
            memory_total=sum(u.memory_total for u in items),
            disk_available=sum(u.disk_available for u in items),
            disk_total=sum(u.disk_total for u in items),
            read_speed=sum(u.read_speed for u in items),
            write_speed=sum(u.write_speed for u in items),
            receive_speed=sum(u.receive_speed for u in items),
            send_speed=sum(u.send_speed for u in items),
        )


@frozen
class CellFigures:
    name: str
    address: str
    enabled: bool
    alive: bool
    instances: InstanceCounts
    usage: Usage


@frozen
class PoolFigures:
    name: str
    enabled: bool
    offline: int
    online: int
    instances: InstanceCounts
    usage: Usage


@frozen
class ZoneFigures:
    name: str
    pools_disabled: int
    pools_enabled: int
    offline: int
    online: int
    instances: InstanceCounts
    usage: Usage
    start_time: str


class StatusOperations:
    """Answers the five status routes from the store and the live view of the Cells."""

    def __init__(self, store: Store, cells: CellOperations, clock: IReactorTime) -> None:
        self._store = store
        self._cells = cells
        self.start_time = time.strftime(TIME_FORMAT, time.localtime(clock.seconds()))

    def _instances_by_cell(self) -> dict[str, list[Instance]]:
        grouped: dict[str, list[Instance]] = {}
        for instance in self._store.view.instances.values():
            grouped.setdefault(instance.cell, []).append(instance)
        return grouped

    def _cell(self, cell: ComputeCell, instances: list[Instance]) -> CellFigures:
        view = self._cells.view(cell)
        report = self._cells.usage(cell.name)
        usage = Usage()
        if report is not None:
            usage = Usage(
                cores=report.cores,
                cpu_usage=report.usage,
                memory_available=report.memory_available,
                memory_total=report.memory_total,
                disk_available=report.disk_free,
                disk_total=report.disk_total,
                read_speed=report.speed[0],
                write_speed=report.speed[1],
                receive_speed=report.speed[2],
                send_speed=report.speed[3],
            )
        return CellFigures(
            name=cell.name,
            address=view.address,
            enabled=cell.enabled,
            alive=view.alive,
            instances=InstanceCounts.of(instances),
            usage=usage,
        )

    def _pool(self, pool: ComputePool, by_cell: dict[str, list[Instance]]) -> PoolFigures:
        cells = [self._cell(c, by_cell.get(c.name, [])) for c in self._cells.members(pool.name)]
        online = [c for c in cells if c.alive]
        return PoolFigures(
            name=pool.name,
            enabled=pool.enabled,
            offline=len(cells) - len(online),
            online=len(online),
            instances=sum((c.instances for c in cells), InstanceCounts()),
            usage=Usage.total(c.usage for c in online),
        )

    def _require_pool(self, name: str) -> ComputePool:
        pool = self._store.view.compute_pools.get(name)
        if pool is None:
            raise UnknownEntity(f"invalid pool '{name}'")
        return pool

    # -- the routes ---------------------------------------------------------------------------

    def zone(self) -> ZoneFigures:
        by_cell = self._instances_by_cell()
        pools = [self._pool(p, by_cell) for p in self._store.view.compute_pools.values()]
        return ZoneFigures(
            name=self._store.view.zone.name,
            pools_disabled=sum(1 for p in pools if not p.enabled),
            pools_enabled=sum(1 for p in pools if p.enabled),
            offline=sum(p.offline for p in pools),
            online=sum(p.online for p in pools),
            instances=sum((p.instances for p in pools), InstanceCounts()),
            usage=Usage.total(p.usage for p in pools),
            start_time=self.start_time,
        )

    def pools(self) -> list[PoolFigures]:
        by_cell = self._instances_by_cell()
        pools = sorted(self._store.view.compute_pools.values(), key=lambda p: p.name)
        return [self._pool(p, by_cell) for p in pools]

    def pool(self, name: str) -> PoolFigures:
        return self._pool(self._require_pool(name), self._instances_by_cell())

    def cells(self, pool: str) -> list[CellFigures]:
        self._require_pool(pool)
        by_cell = self._instances_by_cell()
        return [self._cell(c, by_cell.get(c.name, [])) for c in self._cells.members(pool)]

    def cell(self, pool: str, name: str) -> CellFigures:
        self._require_pool(pool)
        record = self._store.view.cells.get(name)
        if record is None or record.pool != pool:
            raise InvalidRequest(f"cell '{name}' not in pool '{pool}'")
        return self._cell(record, self._instances_by_cell().get(name, []))
