"""Zone, pool and cell status aggregates (core-internals §6), computed on demand from what
each Cell's state is made of (kept while that stands: most Cells did not report since the last
answer).

Core recomputed these every 5 s and counted a cell that was already dead as online with its
stale usage; here a cell counts as online only while the monitor says it is alive, and only
online cells contribute usage to their pool and the zone (a dead Cell's own row still shows its
last report, as Core's did). Instance counters come from the store, so they cannot drift.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping

from attrs import frozen
from zope.interface import Interface

from nanocore.model import ComputeCell, Instance, InstanceStatus
from nanocore.operations.base import Context
from nanocore.operations.errors import InvalidRequest, UnknownEntity
from nanocore.store import Condition, condition


@frozen(cache_hash=True)
class Usage:
    """Resource figures of one Cell's latest report, or the sum of several (bytes, bytes/s);
    ``cpu_usage`` is a percentage, core-weighted when summed."""

    cores: int = 0
    cpu_usage: float = 0.0
    memory: int = 0
    memory_available: int = 0
    disk: int = 0
    disk_available: int = 0
    read_speed: int = 0
    write_speed: int = 0
    receive_speed: int = 0
    send_speed: int = 0


class CellMonitor(Interface):
    """What status needs to know of each Cell now (the cell operations answer it)."""

    def alive(name: str) -> bool:
        """Whether the Cell counts as online."""

    def address(name: str) -> str:
        """The Cell's address, or "" when it was never seen."""

    def usage(name: str) -> Usage | None:
        """The Cell's latest figures, alive or not; None before its first report."""

    def generation() -> Hashable:
        """Changes whenever what the three above answer for any Cell may have changed (by
        an event or by time passing): status answers are kept while it stands."""


@frozen(cache_hash=True)
class Counters:
    """``[stopped, running, lost, migrating]`` instances."""

    stopped: int = 0
    running: int = 0
    lost: int = 0
    migrating: int = 0

    def as_list(self) -> list[int]:
        return [self.stopped, self.running, self.lost, self.migrating]

    def __add__(self, other: Counters) -> Counters:
        return Counters(
            self.stopped + other.stopped,
            self.running + other.running,
            self.lost + other.lost,
            self.migrating + other.migrating,
        )


def count_instances(instances: Iterable[Instance]) -> Counters:
    """The counters of ``instances`` (the plain definition; status reads the tallies)."""
    tally: dict[Condition, int] = {}
    for instance in instances:
        key = condition(instance)
        tally[key] = tally.get(key, 0) + 1
    return count_conditions(tally)


def count_conditions(tally: Mapping[Condition, int]) -> Counters:
    """The counters of instances tallied by condition (the read model keeps the tallies)."""
    stopped = running = lost = migrating = 0
    for (status, is_migrating, is_lost), count in tally.items():
        if status is InstanceStatus.CREATING:
            continue  # pending creations are not counted, as in the original
        if is_migrating:
            migrating += count
        elif is_lost:
            lost += count
        elif status is InstanceStatus.RUNNING:
            running += count
        else:
            stopped += count
    return Counters(stopped, running, lost, migrating)


def sum_usage(usages: Iterable[Usage]) -> Usage:
    items = list(usages)
    cores = memory = memory_available = disk = disk_available = 0
    read_speed = write_speed = receive_speed = send_speed = 0
    for u in items:
        cores += u.cores
        memory += u.memory
        memory_available += u.memory_available
        disk += u.disk
        disk_available += u.disk_available
        read_speed += u.read_speed
        write_speed += u.write_speed
        receive_speed += u.receive_speed
        send_speed += u.send_speed
    # sum() for the float, so its rounding is the builtin's whatever the Python version.
    weighted = sum(u.cpu_usage * u.cores for u in items)
    return Usage(
        cores=cores,
        cpu_usage=weighted / cores if cores else 0.0,
        memory=memory,
        memory_available=memory_available,
        disk=disk,
        disk_available=disk_available,
        read_speed=read_speed,
        write_speed=write_speed,
        receive_speed=receive_speed,
        send_speed=send_speed,
    )


@frozen(cache_hash=True)
class CellState:
    name: str
    address: str
    enabled: bool
    alive: bool
    instances: Counters
    usage: Usage


@frozen(cache_hash=True)
class PoolState:
    name: str
    enabled: bool
    offline: int
    online: int
    instances: Counters
    usage: Usage


@frozen
class ZoneState:
    name: str
    disabled_pools: int
    enabled_pools: int
    offline: int
    online: int
    instances: Counters
    usage: Usage
    start_time: str


class _Index:
    """What status reads of the store, kept while its revision stands: cells by pool, and
    each Cell's instance counters (from the read model's tallies; scanning all instances for
    every cell and pool took 0.5 s per zone request at 1,000 cells and 20,000 instances, on the
    reactor thread, and counting each Cell's instances still ~10 ms: status_bench.py).
    """

    def __init__(self, context: Context) -> None:
        self.revision = context.revision()
        view = self.view = context.view
        self.cells_of: dict[str, list[ComputeCell]] = {}
        for name in sorted(view.cells):
            cell = view.cells[name]
            self.cells_of.setdefault(cell.pool, []).append(cell)
        self._counters: dict[str, Counters] = {}

    def counters(self, cell: str) -> Counters:
        found = self._counters.get(cell)
        if found is None:
            found = self._counters[cell] = count_conditions(self.view.instance_conditions(cell))
        return found


class Status:
    def __init__(self, context: Context, monitor: CellMonitor, start_time: str) -> None:
        self._context = context
        self._monitor = monitor
        self._start_time = start_time
        self._index: _Index | None = None
        #: Each Cell's state with what it was made of: with 1,000 Cells reporting every 2 s
        #: an answer is asked for again after a few reports, so most states are as they were.
        self._kept: dict[str, tuple[tuple[object, ...], CellState]] = {}

    def revision(self) -> Hashable:
        """Changes whenever any status answer may have: a commit, or a Cell's liveness,
        address or report (the API keeps encoded answers while it stands)."""
        return (self._context.revision(), self._monitor.generation())

    def _current(self) -> _Index:
        index = self._index
        if index is None or index.revision != self._context.revision():
            index = self._index = _Index(self._context)
            if len(self._kept) > len(index.view.cells):
                self._kept = {n: kept for n, kept in self._kept.items() if n in index.view.cells}
        return index

    def _cell(self, cell: ComputeCell, index: _Index) -> CellState:
        name = cell.name
        monitor = self._monitor
        usage = monitor.usage(name)
        address, alive, counters = monitor.address(name), monitor.alive(name), index.counters(name)
        made_of = (cell, address, alive, usage, counters)
        kept = self._kept.get(name)
        if kept is not None and kept[0] == made_of:
            return kept[1]
        state = CellState(
            name=name,
            address=address,
            enabled=cell.enabled,
            alive=alive,
            instances=counters,
            usage=sum_usage([usage] if usage is not None else []),
        )
        self._kept[name] = (made_of, state)
        return state

    def _pool_cells(self, pool: str, index: _Index) -> list[ComputeCell]:
        if pool not in self._context.view.compute_pools:
            raise UnknownEntity(f"invalid pool '{pool}'")
        return index.cells_of.get(pool, [])

    def cells(self, pool: str) -> list[CellState]:
        index = self._current()
        return [self._cell(cell, index) for cell in self._pool_cells(pool, index)]

    def cell(self, pool: str, name: str) -> CellState:
        index = self._current()
        for cell in self._pool_cells(pool, index):
            if cell.name == name:
                return self._cell(cell, index)
        raise InvalidRequest(f"cell '{name}' not in pool '{pool}'")

    def _pool(self, name: str, index: _Index) -> PoolState:
        states = [self._cell(cell, index) for cell in self._pool_cells(name, index)]
        pool = self._context.view.compute_pools[name]
        online = [state for state in states if state.alive]
        return PoolState(
            name=name,
            enabled=pool.enabled,
            offline=len(states) - len(online),
            online=len(online),
            instances=sum((state.instances for state in states), Counters()),
            usage=sum_usage(state.usage for state in online),
        )

    def pool(self, name: str) -> PoolState:
        return self._pool(name, self._current())

    def pools(self) -> list[PoolState]:
        index = self._current()
        return [self._pool(name, index) for name in sorted(self._context.view.compute_pools)]

    def zone(self) -> ZoneState:
        pools = self.pools()
        enabled = sum(1 for pool in pools if pool.enabled)
        return ZoneState(
            name=self._context.view.zone.name,
            disabled_pools=len(pools) - enabled,
            enabled_pools=enabled,
            offline=sum(pool.offline for pool in pools),
            online=sum(pool.online for pool in pools),
            instances=sum((pool.instances for pool in pools), Counters()),
            usage=sum_usage(pool.usage for pool in pools),
            start_time=self._start_time,
        )
