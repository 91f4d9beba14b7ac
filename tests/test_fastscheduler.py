"""The kept verdicts choose the Cell the plain scheduler chooses, decision after decision."""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nanocore import _fastscheduler
from nanocore._fastscheduler import PoolChoice, RecentDemands
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


#: A scheduler, a pool's Cells, the demands decisions draw from, and the draws to come.
histories = (
    schedulers,
    st.lists(capacities, max_size=12, unique_by=lambda c: c.name),
    st.lists(demands, min_size=1, max_size=4),
    st.data(),
)


def change_some(data: st.DataObject, pool: dict[str, CellCapacity]) -> set[str]:
    """New capacities (equal or not) for some Cells, some gone, maybe one added: their names."""
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
    return changed


class PoolChoiceProperties(SynchronousTestCase):
    @given(*histories)
    def test_every_decision_is_the_plain_one(
        self,
        scheduler: Scheduler,
        cells: list[CellCapacity],
        some_demands: list[Demand],
        data: st.DataObject,
    ) -> None:
        """Told which Cells changed, or not told (new capacities, equal or not, Cells gone
        and added), the pool's choice is the plain one every time, over many decisions (the
        heap's stale entries compacted on the way)."""
        choice = PoolChoice(scheduler)
        pool = {cell.name: cell for cell in cells}
        changed: set[str] | None = None
        for _ in range(data.draw(st.integers(1, 40))):
            demand = data.draw(st.sampled_from(some_demands))
            told = None if data.draw(st.booleans()) else changed
            self.assertEqual(
                outcome(lambda d, _, told=told: choice.choose(d, pool, told), demand, []),
                outcome(scheduler.choose, demand, list(pool.values())),
            )
            changed = change_some(data, pool)


class RecentDemandsProperties(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(_fastscheduler, "KEPT_DEMANDS", 2)  # fewer than the demands drawn

    @given(*histories)
    def test_every_decision_is_the_plain_one(
        self,
        scheduler: Scheduler,
        cells: list[CellCapacity],
        some_demands: list[Demand],
        data: st.DataObject,
    ) -> None:
        """Demands in any order, more of them than are kept, each told what changed since
        any decision (or that anything may have): each decision is the plain one."""
        recent = RecentDemands(scheduler)
        pool = {cell.name: cell for cell in cells}
        for _ in range(data.draw(st.integers(1, 40))):
            demand = data.draw(st.sampled_from(some_demands))
            self.assertEqual(
                outcome(lambda d, _: recent.choose(d, pool), demand, []),
                outcome(scheduler.choose, demand, list(pool.values())),
            )
            changed = change_some(data, pool)
            recent.changed(None if data.draw(st.integers(0, 9)) == 0 else changed)


class PoolChoiceTests(SynchronousTestCase):
    def test_a_changed_cell_is_judged_again(self) -> None:
        """The same name with a new capacity object is a new verdict, not the kept one."""
        choice = PoolChoice(Scheduler())
        demand = Demand(cores=1, memory=GiB, disk=10 * GiB)
        roomy, small = cell("a", memory_free=32 * GiB), cell("b", memory_free=2 * GiB)
        self.assertIs(choice.choose(demand, {"a": roomy, "b": small}), roomy)
        full = attrs.evolve(roomy, memory_free=0)
        self.assertIs(choice.choose(demand, {"a": full, "b": small}), small)

    def test_no_cell_fits_gives_the_plain_refusal(self) -> None:
        choice = PoolChoice(Scheduler())
        demand = Demand(cores=1, memory=64 * GiB, disk=10 * GiB)
        with self.assertRaises(NoCellFits) as raised:
            choice.choose(demand, {"a": cell("a"), "b": cell("b", alive=False)})
        self.assertEqual(raised.exception.headline, "no cell has enough memory: 64 GB")
        self.assertEqual([r.cell for r in raised.exception.rejections], ["a", "b"])
