"""Property: random creations, deletions, Cell events, reconnects and Core restarts never
give an address twice, leak an allocation or a claim, or overcommit a Cell.

Core runs over the real store's writer and schema in a data folder, committing synchronously
(:class:`SyncStore`), with FakeCells answering through a scripted directory on one Clock, so a
whole script runs in one call. A restart abandons the operations mid-wait (as a killed process
would), reopens the store from the same folder and builds the operations again.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nanocore import model as m
from nanocore.cluster.message import MessageID
from nanocore.operations.core import Operations
from nanocore.operations.guests import CAPACITY, GuestSpec
from nanocore.operations.guests.placement import NoCellAvailable
from nanocore.scheduler import CellCapacity, Demand, NoCellFits
from nanocore.store import Delete, Put, UnitOfWork
from nanocore.testing.fakecell import Capacity, FakeCell, Fault
from tests.cellfixtures import FakeDirectory, SyncStore, wired

GiB = 1 << 30
CELLS = ("Cell_p1", "Cell_p2")
TIMEOUT = 5.0


class World:
    """Core (store + operations) and two FakeCells, with what a script can do to them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.clock = Clock()
        self.clock.advance(1_714_529_472)
        self.cells = {
            name: FakeCell(name, self.clock, capacity=Capacity(cores=16, memory=4 * GiB,
                                                                disk=400 * GiB),
                           creation_time=1.0, stop_time=0.0)
            for name in CELLS
        }  # fmt: skip
        self.responders = wired(self.cells, lambda: self.directory)
        self.waiting: list[Deferred[Any]] = []
        self.store = SyncStore(folder)
        self._seed()
        self.start()

    def _seed(self) -> None:
        view = self.store.view
        if "net" in view.address_pools:
            return
        self.store.commit(
            UnitOfWork.of(
                *_puts(
                    m.AddressPool(name="net", gateway="10.0.0.1"),
                    m.AddressRange(pool="net", start="10.0.0.2", end="10.0.0.9",
                                   netmask="255.255.255.0"),
                    m.ComputePool(name="p", network="net"),
                    *(m.ComputeCell(name=name, pool="p") for name in CELLS),
                )
            )
        )  # fmt: skip

    def start(self) -> None:
        self.directory = FakeDirectory(self.clock)
        self.directory.responders.update(self.responders)
        self.ops = self.operations()
        for name in CELLS:
            self.connect(name)

    def operations(self, **options: Any) -> Operations:
        return Operations(self.store, self.clock, cells=self.directory, timeout=TIMEOUT,
                          randbelow=lambda n: n // 2, **options)  # fmt: skip

    def connect(self, name: str) -> None:
        self.directory.connect(name, status=self.cells[name].status())
        self.settle()

    def settle(self) -> None:
        self.clock.advance(0)

    # -- what a script does ---------------------------------------------------------------

    def create(self, index: int, outcome: str, size: int = 1) -> None:
        """A guest of ``size`` cores and GiB (sizes differ: each is its own demand)."""
        fault = {
            "refuse": Fault(error="refused"),
            "drop": Fault(drop=True),
            "late": Fault(delay=2 * TIMEOUT),
        }.get(outcome)
        for cell in self.cells.values():
            cell.faults.pop(MessageID.CreateGuestRequest, None)
            if fault is not None:
                cell.inject(MessageID.CreateGuestRequest, fault)
        spec = GuestSpec(name=f"vm{index}", owner="o", group="g", pool="p",
                         template=next(iter(self.store.view.templates)), cores=size,
                         memory=size * GiB, disks=(10 * GiB,))  # fmt: skip
        try:
            creating = self.ops.guests.create(spec)
        except Exception:
            return  # refused at once (no room, name taken)
        creating.addErrback(lambda _: None)
        self.waiting.append(creating)
        self.settle()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def report(self, name: str) -> None:
        self.directory.report(name, self.cells[name].status())
        self.settle()

    def delete(self, pick: int) -> None:
        guests = sorted(self.store.view.instances)
        if guests:
            self.ops.guests.delete(guests[pick % len(guests)]).addErrback(lambda _: None)
            self.settle()

    def reconnect(self, name: str) -> None:
        self.directory.disconnect(name)
        self.connect(name)

    def restart(self) -> None:
        """Core dies mid-wait: nothing of it runs on; the store reopens from its folder."""
        for waiting in self.waiting:
            waiting.cancel()
        self.waiting.clear()
        for name in CELLS:
            self.directory.linked[name] = False
        self.directory.observers.clear()
        self.store.close()
        self.store = SyncStore(self.folder)
        self.start()

    # -- what must hold -----------------------------------------------------------------

    def check(self, case: SynchronousTestCase) -> None:
        view = self.store.view
        assigned = [i.internal.assigned_address for i in view.instances.values()
                    if i.internal.assigned_address]  # fmt: skip
        case.assertEqual(len(assigned), len(set(assigned)), "an address given twice")
        for allocation in view.allocations.values():
            holder = view.instances.get(allocation.instance)
            case.assertIsNotNone(holder, f"leaked allocation {allocation}")
            assert holder is not None
            case.assertEqual(holder.internal.assigned_address.partition("/")[0],
                             allocation.address)  # fmt: skip
        case.assertEqual(len(assigned), len(view.allocations))
        for claim in self.ops.context.claims.live(CAPACITY):
            case.assertIn(claim.key, view.instances, "a claim outlived its guest")
        for name, cell in self.cells.items():
            used = sum(g.memory for g in cell.guests.values())
            case.assertLessEqual(used, cell.capacity.memory, f"{name} overcommitted")


def _end(world: World | None, folder: Path) -> None:
    """Abandon what is still waiting, close the store, remove the data folder."""
    if world is not None:
        for waiting in world.waiting:
            waiting.cancel()
        world.store.close()
    shutil.rmtree(folder)


def _puts(*entities: Any) -> list[Any]:
    return [Put(e) for e in entities]


steps = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.integers(0, 9),
                  st.sampled_from(("ok", "ok", "ok", "refuse", "drop", "late")),
                  st.sampled_from((1, 1, 2))),
        st.tuples(st.just("advance"), st.sampled_from((0.5, 1.0, TIMEOUT))),
        st.tuples(st.just("report"), st.sampled_from(CELLS)),
        st.tuples(st.just("delete"), st.integers(0, 20)),
        st.tuples(st.just("reconnect"), st.sampled_from(CELLS)),
        st.tuples(st.just("restart"),),
    ),
    max_size=40,
)  # fmt: skip


class GuestProperties(SynchronousTestCase):
    @given(steps)
    def test_no_address_twice_no_leak_no_overcommit(self, script: list[tuple[Any, ...]]) -> None:
        folder = Path(tempfile.mkdtemp())
        world: World | None = None
        try:
            world = World(folder)
            for name, *arguments in script:
                getattr(world, name)(*arguments)
                world.check(self)
            # In the end every Cell reports: nothing Core remembers is wrong.
            world.advance(2 * TIMEOUT)
            for name in CELLS:
                world.reconnect(name)
            world.check(self)
            for instance in world.store.view.instances.values():
                cell = world.cells[instance.cell]
                self.assertIn(instance.id, cell.guests)
                self.assertEqual(instance.created, cell.guests[instance.id].created_ok)
        finally:
            _end(world, folder)


class WatchedWorld(World):
    """A World whose placement is held to the plain scheduler at every decision: what differs
    is kept in ``mismatches`` (a create swallows what its decision raises)."""

    def __init__(self, folder: Path) -> None:
        self.decisions = 0
        self.mismatches: list[tuple[object, object]] = []
        super().__init__(folder)

    def start(self) -> None:
        super().start()
        placement = self.ops.guests.placement
        kept = placement._choose

        def choose(pool: str, demand: Demand) -> CellCapacity:
            scheduler = placement._scheduler
            plain = _choice(lambda: scheduler.choose(demand, placement.capacities(pool)))
            fast = _choice(lambda: kept(pool, demand))
            self.decisions += 1
            if fast != plain:
                self.mismatches.append((fast, plain))
            # What it judged is every Cell's capacity now, not only where the choice shows it.
            shown = placement._pools[pool].cells
            current = {cell.name: cell for cell in placement.capacities(pool)}
            if shown != current:
                self.mismatches.append((shown, current))
            if isinstance(fast, CellCapacity):
                return fast
            return scheduler.choose(demand, list(current.values()))  # raises the refusal

        placement._choose = choose  # type: ignore[method-assign]


def _choice(choose: Any) -> object:
    try:
        return choose()
    except NoCellFits as refusal:
        return ("refused", refusal.headline, refusal.rejections)


#: Two guests created and reported on both Cells, then a third decided.
_SETTLED = [
    ("create", 0, "ok"), ("advance", 1.0), ("advance", 1.0),
    ("report", "Cell_p1"), ("report", "Cell_p2"),
    ("create", 1, "ok"), ("advance", 1.0), ("advance", 1.0),
    ("report", "Cell_p1"), ("report", "Cell_p2"), ("create", 2, "ok"),
]  # fmt: skip


class PlacementProperties(SynchronousTestCase):
    @given(steps)
    def test_each_decision_is_the_plain_schedulers(self, script: list[tuple[Any, ...]]) -> None:
        """Placement judges only the Cells that changed since a pool's last decision: over
        random histories (creations, deletions, reports, time, reconnects, restarts) it
        chooses as the plain scheduler over every Cell's capacity now."""
        folder = Path(tempfile.mkdtemp())
        world: WatchedWorld | None = None
        try:
            world = WatchedWorld(folder)
            for name, *arguments in script:
                getattr(world, name)(*arguments)
                self.assertEqual(world.mismatches, [])
        finally:
            _end(world, folder)


class OneChangeTests(SynchronousTestCase):
    """A decision after one kind of change alone, on a Cell nothing else touched since the
    pool's last decision: each is seen (the watched placement asserts it)."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp())
        self.world = WatchedWorld(self.folder)
        for step in _SETTLED:
            getattr(self.world, step[0])(*step[1:])
        self.quiet = next(name for name in CELLS if not self._placed_last(name))

    def tearDown(self) -> None:
        _end(self.world, self.folder)

    def _placed_last(self, cell: str) -> bool:
        return any(
            i.name == "vm2" and i.cell == cell for i in self.world.store.view.instances.values()
        )

    def decide(self) -> None:
        before = self.world.decisions
        self.world.create(3, "ok")
        self.assertEqual(self.world.decisions, before + 1)
        self.assertEqual(self.world.mismatches, [])

    def test_load_alone(self) -> None:
        """A record grows (a commit, no claim, no report)."""
        view = self.world.store.view
        guest = next(i for i in view.instances.values() if i.cell == self.quiet)
        self.world.store.commit(UnitOfWork.of(Put(attrs.evolve(guest, cores=guest.cores + 3))))
        self.decide()

    def test_report_alone(self) -> None:
        cell = self.world.cells[self.quiet]
        cell.capacity = attrs.evolve(cell.capacity, memory=cell.capacity.memory + GiB)
        self.world.report(self.quiet)
        self.decide()

    def test_a_deleted_pools_view_goes(self) -> None:
        """What placement kept of a pool goes once the pool is gone (at the next full
        showing of another pool)."""
        store, placement = self.world.store, self.world.ops.guests.placement
        store.commit(UnitOfWork.of(Put(m.ComputePool(name="q"))))
        with self.assertRaises(NoCellAvailable):
            placement.place("x", "q", Demand(cores=1, memory=GiB, disk=GiB))
        self.assertIn("q", placement._pools)
        store.commit(UnitOfWork.of(Delete(m.ComputePool, "q")))
        self.world.advance(TIMEOUT)
        self.world.advance(TIMEOUT)
        self.decide()
        self.assertNotIn("q", placement._pools)

    def test_time_alone(self) -> None:
        """Every report goes stale: the pool is shown anew, every Cell unreported."""
        self.world.advance(TIMEOUT)
        self.world.advance(TIMEOUT)
        self.decide()
        self.assertFalse(any(c.reported for c in self.world.ops.guests.placement.capacities("p")))
