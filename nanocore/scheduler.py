"""Choosing the Cell of a new guest: filters, then weighers, and why every other Cell lost.

The original (core-internals §3.1) skipped dead and disabled Cells, refused a Cell over 80 % CPU
or short of disk or memory, and scored the rest by a headroom formula. Here the same steps are
objects handed in as a tuple, so their order is configuration; every Cell a filter refuses is
named with the reason, and the score is computed in signed floating point: an over-committed
Cell scores low instead of wrapping round to the top, and no requirement divides by zero.

A decision depends only on its inputs (ties go to the smaller name), so it can be replayed in a
test. This room imports nothing of nanocore but plain values; the operations gather each
Cell's :class:`CellCapacity` (its latest report less what is claimed on it) and claim the
chosen Cell's share before anything else can be decided.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from attrs import frozen

#: Core's scores assume guests may over-commit a Cell's cores, memory and disk threefold.
OVERCOMMIT = 3
#: A Cell busier than this (host CPU, percent) takes no new guest.
CPU_LIMIT = 80.0

_UNITS = ((1 << 40, "TB"), (1 << 30, "GB"), (1 << 20, "MB"), (1 << 10, "KB"))


def format_size(size: int) -> str:
    """A byte size as Core words it in messages: whole units, no decimals (``256 GB``)."""
    for unit, name in _UNITS:
        if size >= unit:
            return f"{size // unit} {name}"
    return f"{size} B"


@frozen
class Demand:
    """What one guest needs: cores, memory and the sum of its disks (all at least 1)."""

    cores: int
    memory: int
    disk: int


@frozen
class CellCapacity:
    """One Cell of the pool at decision time.

    ``memory_free``/``disk_free``: its latest report less what creations still claim on it
    (may be negative); ``placed_*``: what Core's records and those claims put on it.
    """

    name: str
    alive: bool
    enabled: bool
    reported: bool
    cores: int = 0
    cpu_usage: float = 0.0
    memory_free: int = 0
    disk_free: int = 0
    memory_total: int = 0
    disk_total: int = 0
    placed_cores: int = 0
    placed_memory: int = 0
    placed_disk: int = 0


@frozen
class Rejection:
    """Why one Cell was not chosen: the filter's name and a sentence with the figures."""

    cell: str
    filter: str
    reason: str

    def __str__(self) -> str:
        return f"{self.cell}: {self.reason}"


class Filter(Protocol):
    """Keeps the Cells that can take the guest; says, for each other one, why not.

    A filter judges each Cell on its own (never against the others), so a Cell's verdict can
    be kept while its capacity and the demand stay the same (:meth:`Scheduler.verdict`).
    """

    name: str

    def split(
        self, demand: Demand, cells: list[CellCapacity]
    ) -> tuple[list[CellCapacity], list[Rejection]]: ...

    def headline(self, demand: Demand) -> str:
        """Nano's message when this filter is where the best Cells stopped."""
        ...


class Weigher(Protocol):
    """Scores the Cells that passed every filter; the highest total wins. Each Cell's score
    depends on that Cell and the demand only, as a filter's verdict does."""

    def scores(self, demand: Demand, cells: list[CellCapacity]) -> list[float]: ...


class NoCellFits(Exception):
    """Nothing passed; ``headline`` is Nano's message, ``rejections`` name every Cell."""

    def __init__(self, headline: str, rejections: Sequence[Rejection]) -> None:
        super().__init__(headline)
        self.headline = headline
        self.rejections = tuple(rejections)


# -- filters ------------------------------------------------------------------------------------


class Available:
    """Alive, enabled, and reported at least once (a silent Cell's capacity is unknown)."""

    name = "available"

    def split(
        self, demand: Demand, cells: list[CellCapacity]
    ) -> tuple[list[CellCapacity], list[Rejection]]:
        passed = [c for c in cells if c.alive and c.enabled and c.reported]
        if len(passed) == len(cells):
            return passed, []
        rejected = [
            Rejection(
                c.name,
                self.name,
                "offline" if not c.alive else "disabled" if not c.enabled else "no recent report",
            )
            for c in cells
            if not (c.alive and c.enabled and c.reported)
        ]
        return passed, rejected

    def headline(self, demand: Demand) -> str:
        return "no cell is alive and enabled"


class CpuLoad:
    """Host CPU at most ``limit`` percent (the original's 80 %)."""

    name = "cpu"

    def __init__(self, limit: float = CPU_LIMIT) -> None:
        self.limit = limit

    def split(
        self, demand: Demand, cells: list[CellCapacity]
    ) -> tuple[list[CellCapacity], list[Rejection]]:
        limit = self.limit
        passed = [c for c in cells if c.cpu_usage <= limit]
        if len(passed) == len(cells):
            return passed, []
        return passed, [
            Rejection(c.name, self.name, f"cpu load {c.cpu_usage:.2f}% over {limit:.2f}%")
            for c in cells
            if c.cpu_usage > limit
        ]

    def headline(self, demand: Demand) -> str:
        return f"all cell cores are busy (load over {self.limit:.2f}%)"


class Disk:
    """Free disk (latest report less claims) at least the guest's disks."""

    name = "disk"

    def split(
        self, demand: Demand, cells: list[CellCapacity]
    ) -> tuple[list[CellCapacity], list[Rejection]]:
        need = demand.disk
        passed = [c for c in cells if c.disk_free >= need]
        if len(passed) == len(cells):
            return passed, []
        wanted = format_size(need)
        return passed, [
            Rejection(
                c.name, self.name, f"disk {format_size(max(c.disk_free, 0))} free < {wanted}"
            )
            for c in cells
            if c.disk_free < need
        ]

    def headline(self, demand: Demand) -> str:
        return f"no cell has enough disk: {format_size(demand.disk)}"


class Memory:
    """Free memory (latest report less claims) at least the guest's memory."""

    name = "memory"

    def split(
        self, demand: Demand, cells: list[CellCapacity]
    ) -> tuple[list[CellCapacity], list[Rejection]]:
        need = demand.memory
        passed = [c for c in cells if c.memory_free >= need]
        if len(passed) == len(cells):
            return passed, []
        wanted = format_size(need)
        return passed, [
            Rejection(
                c.name,
                self.name,
                f"memory {format_size(max(c.memory_free, 0))} free < {wanted}",
            )
            for c in cells
            if c.memory_free < need
        ]

    def headline(self, demand: Demand) -> str:
        return f"no cell has enough memory: {format_size(demand.memory)}"


class Cores:
    """Cores placed on the Cell, with this guest's, within ``overcommit`` times its cores."""

    name = "cores"

    def __init__(self, overcommit: int = OVERCOMMIT) -> None:
        self.overcommit = overcommit

    def split(
        self, demand: Demand, cells: list[CellCapacity]
    ) -> tuple[list[CellCapacity], list[Rejection]]:
        need, factor = demand.cores, self.overcommit
        passed = [c for c in cells if c.placed_cores + need <= factor * c.cores]
        if len(passed) == len(cells):
            return passed, []
        return passed, [
            Rejection(
                c.name,
                self.name,
                f"cores {c.placed_cores} placed + {need} > {factor} x {c.cores}",
            )
            for c in cells
            if c.placed_cores + need > factor * c.cores
        ]

    def headline(self, demand: Demand) -> str:
        return f"no cell has enough cores: {demand.cores}"


# -- weighers -----------------------------------------------------------------------------------


class Headroom:
    """The original's score: the mean of a real-time and a configured headroom (§3.1).

    Real-time: 2 x free cores / C + 1.5 x free memory / M + 0.5 x floor(free disk / D), free
    cores being the idle share of the Cell's cores. Configured: what is left of ``overcommit``
    times the Cell's cores, memory and disk after what Core placed there, in whole guests of
    this size, weighted 2, 1.5 and 0.5. Negative figures count as nothing.
    """

    def __init__(self, overcommit: int = OVERCOMMIT) -> None:
        self.overcommit = overcommit

    def scores(self, demand: Demand, cells: list[CellCapacity]) -> list[float]:
        cores, memory, disk = max(demand.cores, 1), max(demand.memory, 1), max(demand.disk, 1)
        idle_weight, memory_weight = 2.0 / cores / 100.0, 1.5 / memory
        k = self.overcommit
        result: list[float] = []
        append = result.append
        for c in cells:  # one pass, no calls: a decision over 1,000 Cells runs this 1,000 times
            usage, memory_free, disk_free = c.cpu_usage, c.memory_free, c.disk_free
            real = (
                (c.cores * (100.0 - usage) * idle_weight if usage < 100.0 else 0.0)
                + (memory_free * memory_weight if memory_free > 0 else 0.0)
                + (0.5 * (disk_free // disk) if disk_free > 0 else 0.0)
            )
            cores_left = k * c.cores - c.placed_cores
            memory_left = k * c.memory_total - c.placed_memory
            disk_left = k * c.disk_total - c.placed_disk
            configured = (
                (2.0 * (cores_left // cores) if cores_left > 0 else 0.0)
                + (1.5 * (memory_left // memory) if memory_left > 0 else 0.0)
                + (0.5 * (disk_left // disk) if disk_left > 0 else 0.0)
            )
            append((real + configured) / 2.0)
        return result


#: The original's order: liveness, CPU load, disk, memory; then the cores bound it lacked.
DEFAULT_FILTERS: tuple[Filter, ...] = (Available(), CpuLoad(), Disk(), Memory(), Cores())
DEFAULT_WEIGHERS: tuple[Weigher, ...] = (Headroom(),)


class Scheduler:
    """Filters in their order, then the sum of the weighers' scores; deterministic."""

    def __init__(
        self,
        filters: tuple[Filter, ...] = DEFAULT_FILTERS,
        weighers: tuple[Weigher, ...] = DEFAULT_WEIGHERS,
    ) -> None:
        if not filters and not weighers:
            raise ValueError("a scheduler needs at least one filter or weigher")
        self.filters = filters
        self.weighers = weighers

    def choose(self, demand: Demand, cells: Sequence[CellCapacity]) -> CellCapacity:
        """The Cell with the highest score (ties: the smaller name), or :class:`NoCellFits`."""
        candidates = list(cells)
        rejections: list[Rejection] = []
        stopped: Filter | None = None
        for step in self.filters:
            if not candidates:
                break
            candidates, refused = step.split(demand, candidates)
            if refused:
                rejections.extend(refused)
                stopped = step
        if not candidates:
            headline = (
                stopped.headline(demand)
                if stopped is not None
                else f"no cell has enough disk: {format_size(demand.disk)}"
            )
            raise NoCellFits(headline, sorted(rejections, key=lambda r: r.cell))
        if len(candidates) == 1 or not self.weighers:
            return min(candidates, key=lambda c: c.name)
        totals = self.weighers[0].scores(demand, candidates)
        for weigher in self.weighers[1:]:
            totals = [
                a + b for a, b in zip(totals, weigher.scores(demand, candidates), strict=True)
            ]
        best, best_score = candidates[0], totals[0]
        for cell, score in zip(candidates, totals, strict=True):
            if score > best_score or (score == best_score and cell.name < best.name):
                best, best_score = cell, score
        return best

    def verdict(self, demand: Demand, cell: CellCapacity) -> float | None:
        """One Cell alone: None if a filter refuses it, else its total score (what
        :meth:`choose` weighs it by among the Cells that pass)."""
        alone = [cell]
        for step in self.filters:
            if not step.split(demand, alone)[0]:
                return None
        total = 0.0
        for index, weigher in enumerate(self.weighers):
            score = weigher.scores(demand, alone)[0]
            total = score if index == 0 else total + score
        return total
