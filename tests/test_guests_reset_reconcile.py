"""A system reset under way when its Cell's inventory is reconciled (the Cell linked again).

A Cell's inventory cannot say a guest is being reset: it shows it created and stopped. Core
used to take that word over its own *resetting* record, so ``GET /guests/:id`` said created
while the Cell was still writing the disk, a start reached the Cell (which refused it), and the
reset's end was dropped ("was not being reset"), a failure never told. Here the record stays
resetting until the Cell's ``SystemResetEvent``; a reset the Cell no longer holds or never
tells the end of is ended as failed (docs/architecture.md, "reconciling guests").
"""

from __future__ import annotations

from twisted.internet.defer import succeed

from nanocore import model as m
from nanocore.cluster.message import MessageID
from nanocore.operations.guests.events import RESET_UNHEARD
from nanocore.operations.guests.reconcile import LOST_WHILE_RESETTING
from nanocore.store import Put, UnitOfWork
from nanocore.testing.fakecell import FakeCell
from nanocore.testing.guests import GuestState
from tests.guestfixtures import TIMEOUT, GiB, GuestClusterCase

#: Seconds a reset (and a creation) takes the Cells: progress each second, the end at 4 s.
RESET_TIME = 4.0


class ResetAcrossRelinkTests(GuestClusterCase):
    creation_time = RESET_TIME

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        image = m.DiskImage(id="img-1", name="centos", owner="alice", group="team",
                            size=5 * GiB, version=1, created=True)  # fmt: skip
        await self.store.commit(UnitOfWork.of(Put(image)))
        # Short enough for the core clock to pass it before the links' loss detection (9 s).
        self.ops.guests.events.reset_silence = TIMEOUT

    def cell_of(self, guest: str) -> FakeCell:
        return self.cells[self.store.view.instances[guest].cell]

    async def resetting_across_relink(self) -> tuple[str, FakeCell]:
        """A guest whose reset has begun on its Cell, which then links again; its inventory
        (the guest created and stopped) is reconciled."""
        guest = await self.created()
        cell = self.cell_of(guest)
        await self.ok("PUT", f"/guests/{guest}/system/", {"from_image": "img-1"})
        await self.rejoined(cell.name, died=False)
        self.assertIs(cell.guests[guest].state, GuestState.RESETTING)
        return guest, cell

    async def shown_resetting(self, guest: str, progress: int) -> None:
        shown = await self.ok("GET", f"/guests/{guest}", status=201)
        self.assertEqual(
            (shown["created"], shown["progress"], shown["running"], shown.get("lost", False)),
            (False, progress, False, False),
        )

    async def test_shown_resetting_until_the_cells_event_then_created(self) -> None:
        guest, _ = await self.resetting_across_relink()
        await self.shown_resetting(guest, 0)
        # Progress pushes back the watch on the reset: past its first deadline, still resetting.
        self.core_clock.advance(TIMEOUT * 0.75)
        progress = self.events.until(MessageID.GuestUpdatedEvent, guest)
        self.cell_clock.advance(RESET_TIME / 4)
        await self.applied(progress, guest)
        self.core_clock.advance(TIMEOUT * 0.75)
        await self.shown_resetting(guest, 25)
        done = self.events.until(MessageID.SystemResetEvent, guest)
        self.cell_clock.advance(RESET_TIME)
        await self.applied(done, guest)
        shown = await self.ok("GET", f"/guests/{guest}")
        self.assertEqual((shown["created"], shown["running"]), (True, False))
        # The reset was heard: its watch is gone, and nothing is told later.
        self.core_clock.advance(TIMEOUT)
        await self.ok("GET", f"/guests/{guest}")
        self.assertEqual(dict(self.store.view.pending_errors), {})
        await self.started(guest)

    async def test_a_start_meanwhile_is_refused_by_core(self) -> None:
        guest, cell = await self.resetting_across_relink()
        self.assertEqual(
            await self.refused("POST", f"/instances/{guest}", {}),
            f"instance '{guest}' not created yet",
        )
        asked = [r for r in cell.received if r.id == MessageID.StartInstanceRequest]
        self.assertEqual(asked, [])

    async def test_a_failed_reset_is_told_once_by_the_next_get(self) -> None:
        guest, cell = await self.resetting_across_relink()
        cell.reset_failures.append("qemu-img: image corrupt")
        done = self.events.until(MessageID.SystemResetEvent, guest)
        self.cell_clock.advance(RESET_TIME)
        await self.applied(done, guest)
        self.assertEqual(await self.refused("GET", f"/guests/{guest}"), "qemu-img: image corrupt")
        shown = await self.ok("GET", f"/guests/{guest}")
        self.assertEqual((shown["created"], shown["running"]), (True, False))
        self.assertEqual(dict(self.store.view.pending_errors), {})

    async def test_a_reset_the_cell_forgot_ends_unheard(self) -> None:
        """The Cell restarted and holds the guest, stopped, its reset forgotten: no end comes."""
        guest = await self.created()
        cell = self.cell_of(guest)
        await self.ok("PUT", f"/guests/{guest}/system/", {"from_image": "img-1"})
        await self.rejoined(cell.name)  # died: its reset's timers are gone
        cell.guests[guest].move("reset done")  # and it came back with the guest stopped
        await self.shown_resetting(guest, 0)
        self.core_clock.advance(TIMEOUT)
        await self.ops.guests.access.serially(guest, lambda: succeed(None))  # its end applied
        self.assertEqual(
            await self.refused("GET", f"/guests/{guest}"), RESET_UNHEARD.format(cell=cell.name)
        )
        shown = await self.ok("GET", f"/guests/{guest}")
        self.assertEqual(
            (shown["created"], shown["running"], shown.get("lost", False)), (True, False, False)
        )
        await self.started(guest)

    async def test_a_reset_whose_guest_the_cell_lost_ends_failed(self) -> None:
        guest = await self.created()
        cell = self.cell_of(guest)
        await self.ok("PUT", f"/guests/{guest}/system/", {"from_image": "img-1"})
        del cell.guests[guest]  # the Cell's host lost it
        await self.rejoined(cell.name)
        self.assertEqual(
            await self.refused("GET", f"/guests/{guest}"),
            LOST_WHILE_RESETTING.format(cell=cell.name),
        )
        shown = await self.ok("GET", f"/guests/{guest}")
        self.assertEqual(
            (shown["created"], shown["running"], shown.get("lost", False)), (True, False, True)
        )
