"""The kept verdicts choose the Cell the plain scheduler chooses, decision after decision."""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nanocore._fastscheduler import PoolChoice, VerdictCache
from nanocore.scheduler import (
    Available,
    CellCapacity,
    Cores,
    CpuLoad,
    Demand,
    Disk,
    Headroom,
    Memory,
    NoCellFits,
    Scheduler,
)

from .test_scheduler import GiB, capacities, cell, demands

schedulers = st.sampled_from(
    [
        Scheduler(),
        Scheduler(filters=(Memory(), Disk(), Available())),
        Scheduler(filters=(Cores(overcommit=1), CpuLoad(limit=50.0)), weighers=()),
        Scheduler(filters=(), weighers=(Headroom(overcommit=1),)),
        Scheduler(weighers=(Headroom(), Headroom(overcommit=1))),
    ]
)


def outcome(choose: Any, demand: Demand, cells: list[CellCapacity]) -> object:
    """The chosen Cell itself (by identity), or the refusal's headline and reasons."""
    try:
        return ("chose", id(choose(demand, cells)))
    except NoCellFits as refusal:
        return ("refused", refusal.headline, refusal.rejections)


class VerdictCacheProperties(SynchronousTestCase):
    @given(
        schedulers,
        st.lists(capacities, max_size=10, unique_by=lambda c: c.name),
        st.lists(demands, min_size=1, max_size=3),
        st.data(),
    )
    def test_every_decision_is_the_plain_one(
        self,
        scheduler: Scheduler,
        cells: list[CellCapacity],
        some_demands: list[Demand],
        data: st.DataObject,
    ) -> None:
        """Between decisions some Cells change (a new capacity, equal or not), the demand
        comes back or changes: the cache's answer is the plain one every time."""
        cache = VerdictCache(scheduler)
        for _ in range(data.draw(st.integers(1, 8))):
            demand = data.draw(st.sampled_from(some_demands))
            self.assertEqual(
                outcome(cache.choose, demand, cells), outcome(scheduler.choose, demand, cells)
            )
            for index in data.draw(st.sets(st.integers(0, max(len(cells) - 1, 0)))):
                if index < len(cells):
                    changed = data.draw(capacities)
                    copy = data.draw(st.booleans())
                    cells[index] = (
                        attrs.evolve(cells[index])
                        if copy
                        else attrs.evolve(changed, name=cells[index].name)
                    )
            if cells and data.draw(st.booleans()):
                cells = cells[1:] + cells[:1]  # the pool in another order


class PoolChoiceProperties(SynchronousTestCase):
    @given(
        schedulers,
        st.lists(capacities, max_size=12, unique_by=lambda c: c.name),
        st.lists(demands, min_size=1, max_size=3),
        st.data(),
    )
    def test_every_decision_is_the_plain_one(
        self,
        scheduler: Scheduler,
        cells: list[CellCapacity],
        some_demands: list[Demand],
        data: st.DataObject,
    ) -> None:
        """Told which Cells changed (new capacities, equal or not, Cells gone and added),
        the pool's choice is the plain one every time, over many decisions (the heap's stale
        entries compacted on the way)."""
        choice = PoolChoice(scheduler)
        pool = {cell.name: cell for cell in cells}
        changed: set[str] | None = None
        for _ in range(data.draw(st.integers(1, 40))):
            demand = data.draw(st.sampled_from(some_demands))
            self.assertEqual(
                outcome(lambda d, _, told=changed: choice.choose(d, pool, told), demand, []),
                outcome(scheduler.choose, demand, list(pool.values())),
            )
            changed = set()
            for name in data.draw(st.sets(st.sampled_from(sorted(pool) or ["none"]))):
                if name in pool:
                    changed.add(name)
                    if data.draw(st.booleans()):
                        pool[name] = attrs.evolve(data.draw(capacities), name=name)
                    elif data.draw(st.booleans()):
                        del pool[name]
                    else:
                        pool[name] = attrs.evolve(pool[name])  # equal, not the same object
            if data.draw(st.booleans()):
                added = data.draw(capacities)
                pool[added.name] = added
                changed.add(added.name)


class VerdictCacheTests(SynchronousTestCase):
    def test_a_changed_cell_is_judged_again(self) -> None:
        """The same name with a new capacity object is a new verdict, not the kept one."""
        cache = VerdictCache(Scheduler())
        demand = Demand(cores=1, memory=GiB, disk=10 * GiB)
        roomy, small = cell("a", memory_free=32 * GiB), cell("b", memory_free=2 * GiB)
        self.assertIs(cache.choose(demand, [roomy, small]), roomy)
        full = attrs.evolve(roomy, memory_free=0)
        self.assertIs(cache.choose(demand, [full, small]), small)

    def test_no_cell_fits_gives_the_plain_refusal(self) -> None:
        cache = VerdictCache(Scheduler())
        demand = Demand(cores=1, memory=64 * GiB, disk=10 * GiB)
        with self.assertRaises(NoCellFits) as raised:
            cache.choose(demand, [cell("a"), cell("b", alive=False)])
        self.assertEqual(raised.exception.headline, "no cell has enough memory: 64 GB")
        self.assertEqual([r.cell for r in raised.exception.rejections], ["a", "b"])
