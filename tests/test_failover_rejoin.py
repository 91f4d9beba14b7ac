"""Cells lost while Core was down, and failover targets lost in the middle of a failover.

A link lost while Core runs fails a Cell over; a Cell that died while Core was down left no
link to lose. After a start, a Cell of a pool that has not linked again within
``REJOIN_GRACE`` while another Cell of its pool has is presumed lost without goodbye
(``RejoinWatch``): its guests are shown lost, and a failover pool fails them over. A target
that is itself lost during a failover leaves its guests to the other Cells.

Core runs over the real store's writer in a data folder, committing synchronously, with
FakeCells on one simulated NFS export answering through a scripted directory on one Clock; a
restart abandons the operations, reopens the store and builds them again over a new directory,
as a new process would (``tests/test_guests_properties.py`` works the same way).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attrs import evolve
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from nanocore import model as m
from nanocore.cluster.cells import REJOIN_GRACE, CellStatus
from nanocore.cluster.message import Message, MessageID
from nanocore.model import StaleCopy
from nanocore.operations import failover
from nanocore.operations.core import Operations
from nanocore.operations.failover import FAILOVER_REPLANS, STRANDED_RETRY
from nanocore.operations.guests import GuestSpec
from nanocore.operations.guests.reconcile import _copies_let_go
from nanocore.store import Put, UnitOfWork
from nanocore.testing.fakecell import Capacity, FakeCell, Fault
from nanocore.testing.sharedstorage import SharedStorage
from tests.cellfixtures import FakeDirectory, SyncStore, wired

GiB = 1 << 30
A, B, C = "Cell_r1", "Cell_r2", "Cell_r3"
TIMEOUT = 5.0


class DeliveringDirectory(FakeDirectory):
    """Fire-and-forget messages reach the Cell too (a failover's attach is one), and every
    observer hears of a link before a reply to what one of them asked arrives (it comes over
    the network, in a later turn)."""

    held: list[Callable[[], object]] | None = None

    def connect(
        self, name: str, address: str = "127.0.0.1", status: CellStatus | None = None
    ) -> None:
        self.held = []
        try:
            super().connect(name, address, status)
        finally:
            held, self.held = self.held, None
            for request in held:
                request()

    def request(self, name: str, message: Message, **kw: Any) -> Deferred[Message]:
        if self.held is None:
            return super().request(name, message, **kw)
        answered: Deferred[Message] = Deferred()
        asking = super().request
        self.held.append(lambda: asking(name, message, **kw).chainDeferred(answered))
        return answered

    def send(self, name: str, message: Message) -> None:
        super().send(name, message)
        responder = self.responders.get(name)
        if responder is not None:
            responder(message)


class World:
    """Core and FakeCells (``A``, ``B``, ``C`` unless named) of pool ``p`` on the NFS storage
    ``nfs``."""

    def __init__(
        self, folder: Path, *, failover: bool, names: tuple[str, ...] = (A, B, C)
    ) -> None:
        self.folder = folder
        self.clock = Clock()
        self.clock.advance(1_714_529_472)
        shared = SharedStorage()
        self.cells = {
            name: FakeCell(name, self.clock, capacity=Capacity(cores=16, memory=16 * GiB,
                                                                disk=400 * GiB),
                           creation_time=0.0, stop_time=0.0, shared=shared)
            for name in names
        }  # fmt: skip
        self.responders = wired(self.cells, lambda: self.directory)
        self.store = SyncStore(folder)
        self.store.commit(
            UnitOfWork.of(
                Put(m.StoragePool(name="nfs", host="192.0.2.9", target="/export")),
                Put(m.ComputePool(name="p", storage="nfs", failover=failover)),
                *(Put(m.ComputeCell(name=name, pool="p")) for name in self.cells),
            )
        )
        self.start(*names)

    def start(self, *linked: str) -> None:
        """Core starts; the ``linked`` Cells link at once (the others are dead)."""
        self.directory = DeliveringDirectory(self.clock)
        self.directory.responders.update(self.responders)
        self.ops = Operations(self.store, self.clock, cells=self.directory, timeout=TIMEOUT)
        for name in linked:
            self.connect(name)

    def connect(self, name: str) -> None:
        self.directory.connect(name, status=self.cells[name].status())
        self.clock.advance(0)

    def wait(self, seconds: float) -> None:
        """Time passes; the linked Cells report every 2 s, as Cells do."""
        for _ in range(int(seconds // 2)):
            self.clock.advance(2)
            for name, linked in self.directory.linked.items():
                if linked:
                    self.directory.report(name, self.cells[name].status())
        self.clock.advance(seconds % 2)

    def restart(self, *linked: str) -> None:
        """Core stops (its goodbyes are no Cell lost) and starts again with ``linked``."""
        for name in self.cells:
            self.directory.linked[name] = False
        self.directory.observers.clear()
        self.store.close()
        self.store = SyncStore(self.folder)
        self.start(*linked)

    def guest_on(self, cell: str, index: int) -> str:
        """A new guest, created on ``cell`` (the only Cell its placement may choose)."""
        for other in self.cells:
            if other != cell:
                self.enable(other, False)
        spec = GuestSpec(name=f"vm{index}", owner="o", group="g", pool="p",
                         template=next(iter(self.store.view.templates)), cores=1,
                         memory=GiB, disks=(10 * GiB,))  # fmt: skip
        created = self.ops.guests.create(spec)
        self.clock.advance(0)
        guest: str = created.result.id  # type: ignore[attr-defined]
        for other in self.cells:
            if other != cell:
                self.enable(other, True)
        return guest

    def enable(self, cell: str, enabled: bool) -> None:
        self.store.commit(UnitOfWork.of(Put(evolve(self.store.view.cells[cell], enabled=enabled))))

    def instance(self, guest: str) -> m.Instance:
        return self.store.view.instances[guest]

    def failovers(self) -> list[m.Migration]:
        return sorted(self.store.view.migrations.values(), key=lambda r: (r.start_time, r.id))


class RejoinCase(SynchronousTestCase):
    failover = True
    names = (A, B, C)

    def setUp(self) -> None:
        folder = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, folder)
        self.world = World(folder, failover=self.failover, names=self.names)
        self.observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.addCleanup(lambda: self.world.store.close())
        self.guests = [self.world.guest_on(A, i) for i in range(2)]
        for guest in self.guests:
            self.assertEqual(self.world.instance(guest).cell, A)


class LostWhileCoreWasDownTests(RejoinCase):
    def test_a_cell_not_back_is_failed_over_once_the_grace_is_over(self) -> None:
        world = self.world
        world.cells[A].guests.clear()  # A died with Core: it will not come back
        world.restart(B, C)
        world.wait(REJOIN_GRACE - 1)
        for guest in self.guests:
            self.assertEqual((world.instance(guest).cell, world.instance(guest).lost), (A, False))
        self.assertEqual(world.failovers(), [])
        world.wait(1)
        records = world.failovers()
        self.assertTrue(records)
        self.assertTrue(all(r.kind is m.MigrationKind.FAILOVER and r.source_cell == A
                            and r.finished and not r.error for r in records), records)  # fmt: skip
        for guest in self.guests:
            moved = world.instance(guest)
            self.assertIn(moved.cell, (B, C))
            self.assertEqual((moved.lost, moved.migrating), (False, False))
            self.assertIn(guest, world.cells[moved.cell].guests)
        self.assertFalse(world.store.view.cells[A].enabled)

    def test_a_pool_none_of_whose_cells_is_back_waits(self) -> None:
        world = self.world
        world.restart()
        world.wait(3 * REJOIN_GRACE)
        self.assertEqual(world.failovers(), [])
        self.assertTrue(all(not world.instance(g).lost for g in self.guests))
        self.assertTrue(world.store.view.cells[A].enabled)
        # One of its Cells is back: the next round judges the others (C had no guest to
        # fail over: it is only disabled, as a Cell lost without goodbye is).
        world.connect(B)
        world.wait(REJOIN_GRACE)
        self.assertEqual({r.source_cell for r in world.failovers()}, {A})
        self.assertEqual({world.instance(g).cell for g in self.guests}, {B})
        cells = world.store.view.cells
        self.assertEqual((cells[A].enabled, cells[B].enabled, cells[C].enabled),
                         (False, True, False))  # fmt: skip
        disabled = [formatEvent(e) for e in self.observer if "disabled by its" in formatEvent(e)]
        self.assertEqual(sorted(disabled), [
            f'{cell} disabled by its failover: no guest is placed on it until it is enabled '
            f'again (PUT /compute_pool_cells/p/{cell} {{"enable": true}})'
            for cell in (A, C)
        ])  # fmt: skip

    def test_a_cell_back_in_time_keeps_its_guests(self) -> None:
        world = self.world
        world.restart(B, C)
        world.wait(REJOIN_GRACE / 2)
        world.connect(A)
        world.wait(REJOIN_GRACE)
        self.assertEqual(world.failovers(), [])
        for guest in self.guests:
            self.assertEqual((world.instance(guest).cell, world.instance(guest).lost), (A, False))
        self.assertTrue(world.store.view.cells[A].enabled)

    def test_a_cell_that_said_goodbye_is_not_expected_back(self) -> None:
        """A Cell stopped on purpose may leave its guests running: a restart of Core does
        not fail them over, however long the Cell stays away."""
        world = self.world
        world.directory.disconnect(A, gracefully=True)
        world.clock.advance(0)
        self.assertEqual(set(world.store.view.departed_cells), {A})
        world.restart(B, C)
        world.wait(3 * REJOIN_GRACE)
        self.assertEqual(world.failovers(), [])
        for guest in self.guests:
            self.assertEqual((world.instance(guest).cell, world.instance(guest).lost), (A, True))
        self.assertTrue(world.store.view.cells[A].enabled)
        # Back, it is expected again after the next start: dead by then, it is failed over.
        world.connect(A)
        self.assertEqual(set(world.store.view.departed_cells), set())
        world.cells[A].guests.clear()
        world.restart(B, C)
        world.wait(REJOIN_GRACE)
        self.assertEqual({world.instance(g).cell for g in self.guests} - {B, C}, set())

    def test_a_cell_back_after_its_goodbye_shows_its_pool_is_back(self) -> None:
        """The Cells of a pool: one stopped on purpose, another died while Core was down.
        The first back is a sign its pool is, as any other Cell's return: the dead one is
        judged and its guests failed over to it."""
        world = self.world
        world.directory.disconnect(B, gracefully=True)
        world.directory.disconnect(C, gracefully=True)
        world.clock.advance(0)
        world.cells[A].guests.clear()  # A died with Core
        world.restart()
        world.wait(REJOIN_GRACE)
        world.connect(B)
        world.wait(2 * REJOIN_GRACE)
        self.assertEqual({r.source_cell for r in world.failovers()}, {A})
        self.assertEqual({world.instance(g).cell for g in self.guests}, {B})
        self.assertTrue(world.store.view.cells[C].enabled)  # said goodbye: not presumed lost


class CopiesLeftOnALostCellTests(RejoinCase):
    """A Cell lost without goodbye (a hung host, a partition) may still hold the guests
    failed over away from it when it links again."""

    def test_a_guest_deleted_after_its_failover_is_not_adopted_back(self) -> None:
        world = self.world
        world.directory.disconnect(A, gracefully=False)  # hung: it keeps its guests
        world.wait(2)
        deleted, kept = self.guests
        self.assertTrue(all(world.instance(g).cell != A for g in self.guests))
        self.assertEqual(set(world.store.view.stale_copies), {(A, deleted), (A, kept)})
        world.ops.guests.delete(deleted)
        world.clock.advance(0)
        self.assertNotIn(deleted, world.store.view.instances)
        self.assertEqual(set(world.cells[A].guests), {deleted, kept})
        world.connect(A)
        world.wait(2)
        # Told to let go of both, the deleted one too (it was adopted back, undeleted).
        self.assertNotIn(deleted, world.store.view.instances)
        self.assertEqual(set(world.cells[A].guests), set())
        self.assertNotEqual(world.instance(kept).cell, A)
        # Its next inventory lists neither: nothing is left to tell it.
        world.ops.cells.refresh(A)
        world.clock.advance(0)
        self.assertEqual(dict(world.store.view.stale_copies), {})

    def test_a_cell_removed_from_its_pool_takes_its_copies_along(self) -> None:
        """A dead host taken out of the pool: nothing is left to tell it."""
        world = self.world
        world.directory.disconnect(A, gracefully=False)
        world.wait(2)
        self.assertEqual(len(world.store.view.stale_copies), 2)
        removing = world.ops.cells.remove("p", A)
        world.clock.advance(0)
        self.successResultOf(removing)
        self.assertEqual(dict(world.store.view.stale_copies), {})

    def test_two_inventories_may_both_let_go_of_a_copy(self) -> None:
        """A Cell's rejoin and the inventory after a failover to it, decided on the same
        state: the second spoiled its whole reconciliation (QA pass 19)."""
        world = self.world
        world.store.commit(UnitOfWork.of(Put(m.StaleCopy(A, self.guests[0]))))
        view = world.store.view
        decided = [
            _copies_let_go(view.stale_copies.values(), view.instances, A, reported=())
            for _ in range(2)
        ]
        for changes in decided:
            self.successResultOf(world.store.commit(UnitOfWork(changes)))
        self.assertEqual(dict(view.stale_copies), {})

    def test_a_copy_is_forgotten_once_gone_or_the_cells_own_again(self) -> None:
        copies = [m.StaleCopy(A, "g1"), m.StaleCopy(A, "g2"), m.StaleCopy(A, "g3"),
                  m.StaleCopy(B, "g1")]  # fmt: skip
        here = m.Instance(id="g2", name="vm", owner="o", group="g", pool="p", cell=A,
                          cores=1, memory=GiB, disks=(GiB,))  # fmt: skip
        gone = _copies_let_go(copies, {"g2": here}, A, reported={"g2", "g3"})
        self.assertEqual([change.key for change in gone], [(A, "g1"), (A, "g2")])


class LostWithoutFailoverTests(RejoinCase):
    failover = False

    def test_the_guests_of_a_cell_not_back_are_shown_lost(self) -> None:
        world = self.world
        world.restart(B, C)
        world.wait(REJOIN_GRACE)
        for guest in self.guests:
            self.assertEqual((world.instance(guest).cell, world.instance(guest).lost), (A, True))
        self.assertEqual(world.failovers(), [])
        self.assertTrue(world.store.view.cells[A].enabled)
        # Back later, with its guests: they are its own again.
        world.connect(A)
        for guest in self.guests:
            self.assertEqual((world.instance(guest).cell, world.instance(guest).lost), (A, False))


class NoCellAtThatMomentTests(RejoinCase):
    def pool_away_when_a_dies(self) -> None:
        """B and C said goodbye (dialing again, as after Core's stall), then A's link ends."""
        for cell in (B, C):
            self.world.directory.disconnect(cell, gracefully=True)
        self.world.directory.disconnect(A)

    def test_guests_no_cell_could_take_are_planned_again_when_one_reports(self) -> None:
        """A Cell dies while the pool's other Cells are away for a moment (after a stall of
        Core longer than their own 15 s they had said goodbye and were dialing again): its
        failover found no Cell, and its guests stayed lost for good although the pool's Cells
        were back a second later (QA pass 17)."""
        world = self.world
        self.pool_away_when_a_dies()
        (stranded,) = world.failovers()
        self.assertEqual(
            (stranded.target_cell, sorted(stranded.instances)), ("", sorted(self.guests))
        )
        for guest in self.guests:
            self.assertEqual((world.instance(guest).cell, world.instance(guest).lost), (A, True))
        world.connect(B)
        world.wait(2)  # B reports
        again = [r for r in world.failovers() if r.id != stranded.id]
        self.assertEqual([(r.target_cell, r.finished, r.error) for r in again], [(B, True, "")])
        for guest in self.guests:
            moved = world.instance(guest)
            self.assertEqual((moved.cell, moved.lost, moved.migrating), (B, False, False))

    def test_they_wait_quietly_until_a_cell_can_take_them(self) -> None:
        """The first Cell back had no room: the three plans allowed were spent in the first
        second of reports, and the guests stayed lost for good although the pool's other
        Cells were back with room a moment later (QA pass 18, 17 guests)."""
        world = self.world
        self.pool_away_when_a_dies()
        world.cells[B].capacity = Capacity(cores=16, memory=GiB // 2, disk=400 * GiB)
        tries: list[object] = []
        plan = world.ops.migrations.failover._plan

        def counted(*args: Any, **kwargs: Any) -> None:
            tries.append(args)
            plan(*args, **kwargs)

        self.patch(world.ops.migrations.failover, "_plan", counted)
        world.connect(B)
        world.wait(20)  # ten reports of a Cell without room
        self.assertEqual(len(world.failovers()), 1)  # the first, that found no Cell
        self.assertEqual(len(tries), 4)  # at 0, 6, 12 and 18 s: once in STRANDED_RETRY
        self.assertTrue(all(world.instance(g).lost for g in self.guests))
        world.cells[B].capacity = Capacity(cores=16, memory=3 * GiB // 2, disk=400 * GiB)
        world.wait(STRANDED_RETRY + 2)  # room for one of the two
        moved = [g for g in self.guests if world.instance(g).cell == B]
        self.assertEqual(len(moved), 1)
        self.assertEqual(len(world.failovers()), 2)  # its record; none for the one left
        world.connect(C)
        world.wait(STRANDED_RETRY + 2)
        for guest in self.guests:
            moved_now = world.instance(guest)
            self.assertEqual((moved_now.cell, moved_now.lost), (B if guest in moved else C, False))
        said = [formatEvent(e) for e in self.observer if "not re-placed, shown" in e["log_format"]]
        self.assertEqual(len(said), 1)  # said at first, once for all (one reason)
        for guest in self.guests:
            self.assertIn(guest, said[0])

    def test_after_a_restart_of_core_they_still_go_where_there_is_room(self) -> None:
        """Core forgets what its failovers could not place when it stops; the inventory of
        the Cell that came back without them tells it again."""
        world = self.world
        for cell in (B, C):
            world.cells[cell].capacity = Capacity(cores=16, memory=GiB // 2, disk=400 * GiB)
            world.directory.report(cell, world.cells[cell].status())
        world.directory.disconnect(A)
        for guest in self.guests:
            del world.cells[A].guests[guest]
        world.restart(A, B, C)
        world.wait(STRANDED_RETRY + 2)
        self.assertTrue(all(world.instance(g).lost for g in self.guests))  # A is disabled
        world.enable(A, True)
        world.wait(STRANDED_RETRY + 2)
        for guest in self.guests:
            self.assertEqual((world.instance(guest).cell, world.instance(guest).lost), (A, False))

    def test_a_target_that_refuses_them_is_not_asked_again_every_few_seconds(self) -> None:
        """As for any failover, a refusal by a linked target of a guest asked for alone is final
        for it (a batch refused together is asked for guest by guest first)."""
        world = self.world
        self.pool_away_when_a_dies()
        world.cells[B].inject(
            MessageID.AttachInstanceRequest, Fault(error="no bridge", times=None)
        )
        world.connect(B)
        world.wait(30)
        records = world.failovers()
        self.assertEqual(len(records), 4)  # none could be placed; the batch; each alone
        refused = [r for r in records if r.target_cell == B]
        self.assertEqual(sorted(len(r.instances) for r in refused), [1, 1, 2])
        self.assertEqual({r.error for r in refused}, {"attach instance fail: no bridge"})
        for guest in self.guests:
            self.assertEqual((world.instance(guest).cell, world.instance(guest).lost), (A, True))

    def test_two_plans_to_one_target_each_get_their_own_guests(self) -> None:
        """A guest placed while an earlier one of the same Cell is still on its way to the same
        target: the target's events name their guests, whichever comes first."""
        world = self.world
        self.patch(failover, "STRANDED_RETRY", 2.0)  # sooner than the domain timeout
        self.pool_away_when_a_dies()
        world.cells[B].capacity = Capacity(cores=16, memory=3 * GiB // 2, disk=400 * GiB)
        world.cells[B].inject(MessageID.AttachInstanceRequest, Fault(delay=TIMEOUT - 1))
        world.connect(B)
        world.clock.advance(0)
        self.assertEqual(len([r for r in world.failovers() if r.target_cell == B]), 1)
        world.cells[B].capacity = Capacity(cores=16, memory=16 * GiB, disk=400 * GiB)
        world.wait(TIMEOUT)  # the second, answered at once, before the first
        records = [world.store.view.migrations[r.id] for r in world.failovers() if r.target_cell]
        self.assertEqual([(r.finished, r.error) for r in records], [(True, ""), (True, "")])
        for guest in self.guests:
            moved = world.instance(guest)
            self.assertEqual((moved.cell, moved.lost, moved.migrating), (B, False, False))

    def test_a_refusal_fails_only_the_plan_it_answers(self) -> None:
        """Nano's failover attach carried no token, so a stock Cell's refusal named neither
        the attach nor its guests; nanocore failed the oldest plan waiting on that Cell, here
        one it was about to take. The attach now carries a token, which the refusal names."""
        world = self.world
        self.patch(failover, "STRANDED_RETRY", 2.0)  # sooner than the domain timeout
        self.pool_away_when_a_dies()
        world.cells[B].capacity = Capacity(cores=16, memory=3 * GiB // 2, disk=400 * GiB)
        world.cells[B].inject(MessageID.AttachInstanceRequest, Fault(delay=TIMEOUT - 0.5))
        world.connect(B)
        world.clock.advance(0)
        (first,) = [r for r in world.failovers() if r.target_cell == B]
        world.cells[B].capacity = Capacity(cores=16, memory=16 * GiB, disk=400 * GiB)
        # The second guest's attach is refused, and said so before the first is taken.
        world.cells[B].inject(MessageID.AttachInstanceRequest, Fault(error="no bridge", delay=0.2))
        world.wait(2 * TIMEOUT)
        records = {r.id: r for r in world.failovers() if r.target_cell == B}
        taken = records.pop(first.id)
        self.assertEqual((taken.finished, taken.error), (True, ""))
        self.assertEqual(
            [(r.finished, r.error) for r in records.values()],
            [(False, "attach instance fail: no bridge")],
        )
        self.assertEqual(
            sorted((world.instance(g).cell, world.instance(g).lost) for g in self.guests),
            [(A, True), (B, False)],
        )

    def test_after_a_restart_of_core_they_go_as_soon_as_there_is_room(self) -> None:
        """Core forgot them when it stopped; their Cell, still away, was presumed lost again
        only after REJOIN_GRACE, while room came and went (QA pass 19)."""
        world = self.world
        self.pool_away_when_a_dies()
        world.restart(B)
        world.wait(4)  # far less than REJOIN_GRACE
        for guest in self.guests:
            moved = world.instance(guest)
            self.assertEqual((moved.cell, moved.lost), (B, False))

    def test_a_cell_back_that_has_not_told_its_inventory_may_hold_them(self) -> None:
        world = self.world
        self.pool_away_when_a_dies()
        world.cells[A].inject(MessageID.ComputePoolReadyEvent, Fault(drop=True))
        world.connect(A)
        world.connect(B)
        world.wait(STRANDED_RETRY + 2)
        self.assertEqual(len(world.failovers()), 1)
        for guest in self.guests:
            self.assertEqual((world.instance(guest).cell, world.instance(guest).lost), (A, True))

    def test_guests_their_cell_came_back_without_go_where_there_is_room(self) -> None:
        """A died while B and C were full, and came back without its guests (its host lost
        them with the crash): enabled again, it had room, and they stayed lost for good,
        every request of them refused (QA pass 18, 11 guests)."""
        world = self.world
        for cell in (B, C):
            world.cells[cell].capacity = Capacity(cores=16, memory=GiB // 2, disk=400 * GiB)
            world.directory.report(cell, world.cells[cell].status())
        world.directory.disconnect(A)
        self.assertEqual([r.target_cell for r in world.failovers()], [""])
        for guest in self.guests:
            del world.cells[A].guests[guest]
        world.connect(A)
        world.wait(STRANDED_RETRY + 2)
        self.assertTrue(all(world.instance(g).lost for g in self.guests))  # A is disabled
        world.enable(A, True)
        committed: list[object] = []
        commit = world.store.commit

        def recording(unit: UnitOfWork) -> Deferred[None]:
            committed.extend(unit.changes)
            return commit(unit)

        world.store.commit = recording  # type: ignore[method-assign]
        world.wait(STRANDED_RETRY + 2)
        for guest in self.guests:
            back = world.instance(guest)
            self.assertEqual((back.cell, back.lost, back.migrating), (A, False, False))
            self.assertIn(guest, world.cells[A].guests)
        # Taken back, not failed over away: A holds no stale copy of them to detach (the
        # two inventories that followed both tried to forget one, and one failed).
        copies = [c for c in committed if isinstance(c, Put) and isinstance(c.entity, StaleCopy)]
        self.assertEqual(copies, [])

    def test_they_are_left_to_their_cell_if_it_is_back_first(self) -> None:
        world = self.world
        self.pool_away_when_a_dies()
        world.connect(A)
        world.connect(B)
        world.wait(4)
        self.assertEqual(len(world.failovers()), 1)  # only the one that found no Cell
        for guest in self.guests:
            self.assertEqual((world.instance(guest).cell, world.instance(guest).lost), (A, False))


class LongErrorsTests(RejoinCase):
    names = (A, B, C, *(f"Cell_r{i}" for i in range(4, 13)))

    def setUp(self) -> None:
        super().setUp()
        self.guests += [self.world.guest_on(A, i) for i in range(2, 14)]

    def test_a_failover_whose_reasons_are_long_is_recorded_and_disables_its_cell(self) -> None:
        """14 guests no Cell of a 12-Cell pool could take: the reasons ran past what a record
        keeps, the record was refused and the failover failed with a critical line, its Cell
        left enabled (QA pass 17)."""
        world = self.world
        for cell in self.names[1:]:
            world.directory.disconnect(cell, gracefully=True)
        world.directory.disconnect(A)
        (record,) = world.failovers()
        self.assertEqual(sorted(record.instances), sorted(self.guests))
        self.assertEqual((len(record.error), record.error[-1]), (m.TEXT_LIMIT, "…"))
        self.assertFalse(world.store.view.cells[A].enabled)

    def test_a_targets_long_refusal_is_kept_clipped(self) -> None:
        world = self.world
        for cell in self.names[1:]:
            world.cells[cell].inject(
                MessageID.AttachInstanceRequest,
                Fault(error="no bridge \x00" + "x" * 5000, times=None),
            )
        world.directory.disconnect(A)
        world.clock.advance(TIMEOUT)
        errors = [r.error for r in world.failovers()]
        self.assertTrue(errors)
        for error in errors:
            self.assertTrue(error.startswith("attach instance fail: no bridge x"), error[:60])
            self.assertEqual(len(error), m.TEXT_LIMIT)


class TargetLostDuringFailoverTests(RejoinCase):
    def test_the_guests_sent_to_a_target_lost_meanwhile_are_planned_again(self) -> None:
        """A and B fail together: the failover of A sends its guests to B, which dies before
        it takes them; C, the pool's last Cell, gets them."""
        world = self.world
        world.enable(C, False)
        world.cells[B].inject(MessageID.AttachInstanceRequest, Fault(drop=True))
        world.directory.disconnect(A)
        (first,) = world.failovers()
        self.assertEqual((first.target_cell, first.running), (B, True))
        world.enable(C, True)
        # No need to wait for B's answer any longer: its link is gone.
        world.directory.disconnect(B)
        failed = world.store.view.migrations[first.id]
        self.assertEqual(failed.error, f"attach instance fail: cell '{B}' disconnected")
        again = [r for r in world.failovers() if r.source_cell == A and r.id != first.id]
        self.assertEqual([(r.target_cell, r.finished, r.error) for r in again], [(C, True, "")])
        self.assertEqual(sorted(again[0].instances), sorted(self.guests))
        for guest in self.guests:
            moved = world.instance(guest)
            self.assertEqual((moved.cell, moved.lost, moved.migrating), (C, False, False))

    def test_a_target_that_refuses_while_linked_is_not_planned_again(self) -> None:
        world = self.world
        for cell in (B, C):
            world.cells[cell].inject(MessageID.AttachInstanceRequest, Fault(error="no bridge"))
        world.directory.disconnect(A)
        world.clock.advance(TIMEOUT)
        records = world.failovers()
        self.assertTrue(records)
        self.assertEqual({r.error for r in records}, {"attach instance fail: no bridge"})
        for guest in self.guests:
            self.assertEqual((world.instance(guest).cell, world.instance(guest).lost), (A, True))


class OneGuestTheTargetCannotAttachTests(RejoinCase):
    names = (A, B)

    def setUp(self) -> None:
        super().setUp()
        self.guests.append(self.world.guest_on(A, 2))
        self.gone = self.guests[0]
        del self.world.cells[B].volumes[self.gone]  # removed from the export behind Core's back

    def test_the_others_of_its_batch_are_taken(self) -> None:
        """A stock Cell attaches a failover's batch whole or not at all: one guest whose
        volumes were gone failed the batch, and its healthy guests stayed lost for good
        (QA pass 18, F-FAILOVER-POISON). Each is then asked for alone; only its refusal is
        final."""
        world = self.world
        world.directory.disconnect(A)
        world.wait(30)
        records = world.failovers()
        batch = max(records, key=lambda r: len(r.instances))
        self.assertEqual(
            (sorted(batch.instances), batch.error),
            (sorted(self.guests), f"attach instance fail: invalid instance '{self.gone}'"),
        )
        alone = sorted((r.instances, r.finished, r.error) for r in records if r is not batch)
        self.assertEqual(
            alone,
            sorted(
                ((guest,), guest != self.gone, "" if guest != self.gone else batch.error)
                for guest in self.guests
            ),
        )
        for guest in self.guests:
            where = world.instance(guest)
            expected = (A, True) if guest == self.gone else (B, False)
            self.assertEqual((where.cell, where.lost, where.migrating), (*expected, False))
        said = [formatEvent(e) for e in self.observer if "alone" in formatEvent(e)]
        self.assertEqual(
            said,
            [f"failover of {A}: {B} refused 3 instance(s) together ({batch.error}); asking for "
             "each alone"],
        )  # fmt: skip
        sent = [formatEvent(e) for e in self.observer if "sent to" in formatEvent(e)]
        self.assertEqual(
            sent[-1], f"failover of {A}: 3 instance(s) sent to 1 cell(s), 0 not re-placed"
        )


class TargetsLostOneAfterAnotherTests(RejoinCase):
    names = (A, B, C, "Cell_r4", "Cell_r5")

    def test_the_guests_are_planned_again_three_times_at_most(self) -> None:
        """Each target dies before it takes the guests: they are planned again onto the
        next, until FAILOVER_REPLANS plans have failed; then they stay lost on A."""
        world = self.world
        targets = self.names[1:]
        for cell in targets:
            world.cells[cell].inject(MessageID.AttachInstanceRequest, Fault(drop=True))
        for cell in targets[1:]:
            world.enable(cell, False)
        world.directory.disconnect(A)
        for index, target in enumerate(targets):
            (planned,) = [r for r in world.failovers() if r.running]
            self.assertEqual(planned.target_cell, target)
            if index + 1 < len(targets):
                world.enable(targets[index + 1], True)
            world.directory.disconnect(target)
        self.assertEqual([r for r in world.failovers() if r.running], [])
        self.assertEqual(len(world.failovers()), FAILOVER_REPLANS + 1)
        for guest in self.guests:
            self.assertEqual((world.instance(guest).cell, world.instance(guest).lost), (A, True))
