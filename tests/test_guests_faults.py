"""Faults around the guest lifecycle: a dropped or late reply, an error reply, a Cell that
disconnects mid-create, and a Cell whose inventory disagrees with Core's records.

After each: no leaked capacity claim, no leaked or duplicated address, and the API tells the
truth about every instance (docs/architecture.md, "claims" and "reconciling guests").
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from nanocore import model as m
from nanocore.cluster.message import MessageID, ParamKey
from nanocore.operations.errors import UNSAVED_RETRY
from nanocore.store import Delete, UnitOfWork
from nanocore.testing.fakecell import Fault
from tests.guestfixtures import TIMEOUT, GuestClusterCase
from tests.test_store_reserve import FullWhileReserved

CELL_A, CELL_B = GuestClusterCase.CELLS


class CreateFaultTests(GuestClusterCase):
    def everywhere(self, fault: Fault) -> None:
        for cell in self.cells.values():
            cell.inject(MessageID.CreateGuestRequest, fault)

    def heal(self) -> None:
        """The Cell that was not chosen still holds its fault: no more faults."""
        for cell in self.cells.values():
            cell.faults.clear()

    def assertNothingLeft(self) -> None:
        self.assertEqual(dict(self.store.view.instances), {})
        self.assertEqual(dict(self.store.view.allocations), {})
        self.assertEqual(self.claims(), [])

    async def test_dropped_reply_times_out_and_leaves_nothing(self) -> None:
        self.everywhere(Fault(drop=True))
        answer = self.client.post("/guests/", self.guest_body())
        await self.store.commit(UnitOfWork(()))  # the record is in: the request went out
        self.core_clock.advance(TIMEOUT)
        document = (await answer).envelope()
        self.assertEqual(document["message"], "cell timeout")
        self.assertNothingLeft()
        # The Cell may still make it: Core remembers which Cell to check.
        (pending,) = self.store.view.pending_errors.values()
        self.assertEqual((pending.error, pending.shown), ("cell timeout", True))
        # Its inventory (here: without the guest) settles that.
        await self.rejoined(pending.cell)
        self.assertEqual(dict(self.store.view.pending_errors), {})
        # The name is free, and a retry works.
        self.heal()
        await self.ok("POST", "/guests/", self.guest_body(), status=202)

    async def test_a_late_guest_is_deleted_on_its_cell(self) -> None:
        """The original left a guest created after its timeout running, invisible to Core."""
        self.everywhere(Fault(delay=10 * TIMEOUT))  # on the Cell's clock: it does create
        received = [c.until_received(MessageID.CreateGuestRequest) for c in self.cells.values()]
        answer = self.client.post("/guests/", self.guest_body())
        await self.store.commit(UnitOfWork(()))  # the record is in: the request went out
        # The Cell has it (its creation timer is set) before either clock moves.
        await DeferredList(received, fireOnOneCallback=True)
        self.core_clock.advance(TIMEOUT)
        self.assertEqual((await answer).envelope()["message"], "cell timeout")
        (pending,) = self.store.view.pending_errors.values()
        cell = self.cells[pending.cell]
        deleted = self.events.until(MessageID.GuestDeletedEvent, pending.id)
        self.cell_clock.advance(1.0)  # GuestCreatedEvent: an orphan, deleted there
        await self.applied(deleted, pending.id)
        asked = [m for m in cell.received if m.id == MessageID.DeleteGuestRequest]
        self.assertEqual([m.string_params[ParamKey.Instance] for m in asked], [pending.id])
        self.assertEqual(cell.guests, {})
        self.assertEqual(dict(self.store.view.pending_errors), {})
        self.assertNothingLeft()
        self.cell_clock.advance(10 * TIMEOUT)  # the late reply is dropped by Core

    async def test_error_reply_is_relayed_and_leaves_nothing(self) -> None:
        self.everywhere(Fault(error="no space left for guest"))
        self.assertEqual(
            await self.refused("POST", "/guests/", self.guest_body()), "no space left for guest"
        )
        self.assertNothingLeft()
        self.assertEqual(dict(self.store.view.pending_errors), {})

    async def test_disconnect_mid_create_fails_cleanly(self) -> None:
        self.everywhere(Fault(disconnect=True))
        message = await self.refused("POST", "/guests/", self.guest_body())
        (pending,) = self.store.view.pending_errors.values()
        self.assertEqual(message, f"cell '{pending.cell}' is not connected")
        self.assertNothingLeft()
        await self.rejoined(pending.cell)
        self.assertEqual(dict(self.store.view.pending_errors), {})
        self.heal()
        await self.ok("POST", "/guests/", self.guest_body(), status=202)


class StoppingTests(GuestClusterCase):
    creation_time = 0.0

    async def test_a_request_cut_short_by_cores_stop_says_so(self) -> None:
        """Not the Cell's doing: 503 ``nanocore is stopping``, as for the store's close."""
        guest = await self.created()
        cell = self.cells[self.store.view.instances[guest].cell]
        cell.inject(MessageID.StartInstanceRequest, Fault(drop=True))
        arrived = cell.until_received(MessageID.StartInstanceRequest)
        asking = Deferred.fromCoroutine(self.call("POST", f"/instances/{guest}", {}))
        await arrived
        self.cluster.registry.leaving()  # what the link services do as Core stops
        cell.drop_link()
        answer = await asking
        self.assertEqual((answer.status, answer.error), (503, "nanocore is stopping"))
        self.assertEqual(self.flushLoggedErrors(), [])


class ReconcileTests(GuestClusterCase):
    creation_time = 0.0

    async def created(self, name: str = "vm1") -> m.Instance:
        guest = (await self.ok("POST", "/guests/", self.guest_body(name), status=202))["id"]
        created = self.events.until(MessageID.GuestCreatedEvent, guest)
        self.cell_clock.advance(0)
        await self.applied(created, guest)
        return self.store.view.instances[guest]

    async def test_a_guest_the_cell_lacks_is_shown_lost_not_deleted(self) -> None:
        instance = await self.created()
        del self.cells[instance.cell].guests[instance.id]
        await self.rejoined(instance.cell)
        shown = await self.ok("GET", f"/guests/{instance.id}")
        self.assertTrue(shown["lost"])
        # Deleting it asks nobody: its Cell came back without it.
        await self.ok("DELETE", f"/guests/{instance.id}", {})
        self.assertEqual(dict(self.store.view.instances), {})

    async def test_a_guest_core_lost_is_adopted(self) -> None:
        instance = await self.created()
        await self.store.commit(UnitOfWork.of(Delete(m.Instance, instance.id)))
        await self.rejoined(instance.cell)
        shown = await self.ok("GET", f"/guests/{instance.id}")
        self.assertEqual((shown["name"], shown["created"], shown.get("lost")),
                         ("team.vm1", True, None))  # fmt: skip

    async def test_a_cell_that_disconnects_marks_its_guests_lost_and_back(self) -> None:
        instance = await self.created()
        cell = self.cells[instance.cell]
        cell._reconnect_delay = 3600.0  # it stays away until the test lets it back
        gone = self.events.until_disconnected(instance.cell)
        cell.kill()
        await gone
        await self.store.commit(UnitOfWork(()))
        self.assertTrue((await self.ok("GET", f"/guests/{instance.id}"))["lost"])
        self.assertEqual(
            await self.refused("DELETE", f"/guests/{instance.id}", {}),
            f"cell '{instance.cell}' is not connected",
        )
        linked = self.events.until_available(instance.cell)
        cell._reconnect_delay = 0.01
        await self.cluster.services[instance.cell].stopService()
        self.cluster.services[instance.cell].startService()
        await linked
        await self.ops.cells.storage_paths("default", instance.cell)
        await self.store.commit(UnitOfWork(()))
        self.assertNotIn("lost", await self.ok("GET", f"/guests/{instance.id}"))


class UnrecordedEventTests(GuestClusterCase):
    """A Cell's event that arrives while the store cannot save (a full disk) is not lost for
    good: the Cell's inventory is taken again once it can (QA pass 22, B1: a guest started
    while data/ was full stayed stopped in Core's records; it could be neither stopped, as
    Core thought it stopped, nor started, as the Cell had it running)."""

    async def settled(self, cell: str) -> None:
        """The inventory asked for by now was answered and its changes committed."""
        await self.ops.cells.storage_paths(self.store.view.cells[cell].pool, cell)
        await self.commit(UnitOfWork(()))  # behind the inventory's, which may have failed

    async def test_a_start_heard_while_full_is_recorded_once_the_store_can_save(self) -> None:
        log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        guest = await self.created()
        cell = self.store.view.instances[guest].cell
        full = self.store_cannot_save()
        started = self.events.until(MessageID.GuestStartedEvent, guest)
        self.assertEqual(await self.ok("POST", f"/instances/{guest}", {}), "")
        await started
        self.assertIs(self.store.view.instances[guest].status, m.InstanceStatus.STOPPED)

        self.core_clock.advance(UNSAVED_RETRY)  # still full: tried, and tried again later
        await self.settled(cell)
        self.assertIs(self.store.view.instances[guest].status, m.InstanceStatus.STOPPED)

        full[0] = False
        self.core_clock.advance(UNSAVED_RETRY)
        await self.settled(cell)
        self.assertIs(self.store.view.instances[guest].status, m.InstanceStatus.RUNNING)
        said = [formatEvent(e) for e in log if e.get("log_level") is LogLevel.warn]
        self.assertEqual(  # twice in 5 s: once a minute per Cell
            [line for line in said if "could not be recorded" in line],
            [
                f"{cell}: what it said could not be recorded (state could not be saved:"
                f" database or disk is full): its inventory is taken again in 5 s"
            ],
        )
        self.assertEqual([e for e in log if e.get("log_level") is LogLevel.critical], [])
        # And the guest can be stopped, as its Cell runs it (its event about 1 s later).
        stopped = self.events.until(MessageID.GuestStoppedEvent, guest)
        await self.ok("DELETE", f"/instances/{guest}", {})
        self.cell_clock.advance(1.0)
        await self.applied(stopped, guest)
        self.assertIs(self.store.view.instances[guest].status, m.InstanceStatus.STOPPED)

    async def test_a_creation_heard_while_full_is_recorded_once_the_store_can_save(self) -> None:
        answer = await self.ok("POST", "/guests/", self.guest_body(), status=202)
        guest = answer["id"]
        cell = self.store.view.instances[guest].cell
        full = self.store_cannot_save()
        created = self.events.until(MessageID.GuestCreatedEvent, guest)
        self.cell_clock.advance(self.creation_time)
        await self.applied(created, guest)
        creating = await self.call("GET", f"/guests/{guest}")
        self.assertEqual((creating.status, creating.envelope()["data"]["created"]), (201, False))
        full[0] = False
        self.core_clock.advance(UNSAVED_RETRY)
        await self.settled(cell)
        document = await self.ok("GET", f"/guests/{guest}")
        self.assertEqual((document["created"], document["running"]), (True, False))
        await self.reported(cell)
        self.assertEqual(self.claims(), [])  # its placement's hold ends as after any creation
        await self.started(guest)

    async def test_a_cell_gone_while_full_has_its_guests_shown_lost_once_it_can(self) -> None:
        guest = await self.created()
        cell = self.store.view.instances[guest].cell
        full = self.store_cannot_save()
        gone = self.events.until_disconnected(cell)
        self.cells[cell]._reconnect_delay = 3600.0  # it stays away
        self.cells[cell].kill()
        await gone
        await self.commit(UnitOfWork(()))
        self.assertFalse(self.store.view.instances[guest].lost)
        full[0] = False
        self.core_clock.advance(UNSAVED_RETRY)
        await self.commit(UnitOfWork(()))
        self.assertTrue(self.store.view.instances[guest].lost)

    async def test_a_goodbye_heard_while_full_is_kept_once_the_store_can_save(self) -> None:
        """A goodbye lost to a full disk became, at the next start, the presumed loss of a
        Cell stopped on purpose, and a failover of guests it may keep running (QA pass 22)."""
        guest = await self.created()
        cell = self.store.view.instances[guest].cell
        full = self.store_cannot_save()
        gone = self.events.until_disconnected(cell)
        self.cells[cell]._reconnect_delay = 3600.0  # stopped on purpose: it stays away
        await self.cluster.services[cell].stopService()
        await gone
        await self.commit(UnitOfWork(()))
        self.assertNotIn(cell, self.store.view.departed_cells)
        full[0] = False
        self.core_clock.advance(UNSAVED_RETRY)
        await self.commit(UnitOfWork(()))
        self.assertIn(cell, self.store.view.departed_cells)
        self.assertTrue(self.store.view.instances[guest].lost)

    async def test_a_goodbye_on_a_full_disk_is_kept_in_the_reserves_room(self) -> None:
        """QA pass 24: a goodbye the full disk refused was tried again only while Core ran;
        stopped before there was room, Core presumed the Cell lost at its next start and failed
        over guests it may keep running. The store's reserve takes it (and its guests' loss)
        at once; what can wait is refused as before."""
        guest = await self.created()
        cell = self.store.view.instances[guest].cell
        reserve = self.store._reserve.path  # type: ignore[union-attr]
        writer = self.store._writer  # type: ignore[attr-defined]
        writer._connection = FullWhileReserved(writer._connection, reserve)
        refused = await self.call("POST", "/compute_pools/later", {})
        self.assertEqual(refused.status, 503)
        gone = self.events.until_disconnected(cell)
        self.cells[cell]._reconnect_delay = 3600.0  # stopped on purpose: it stays away
        await self.cluster.services[cell].stopService()
        await gone
        await self.store.commit(UnitOfWork(()))  # behind the goodbye and the loss
        self.assertIn(cell, self.store.view.departed_cells)
        self.assertTrue(self.store.view.instances[guest].lost)
        self.assertFalse(reserve.exists())

    async def test_a_loss_on_a_full_disk_is_kept_in_the_reserves_room(self) -> None:
        guest = await self.created()
        cell = self.store.view.instances[guest].cell
        reserve = self.store._reserve.path  # type: ignore[union-attr]
        writer = self.store._writer  # type: ignore[attr-defined]
        writer._connection = FullWhileReserved(writer._connection, reserve)
        gone = self.events.until_disconnected(cell)
        self.cells[cell]._reconnect_delay = 3600.0
        self.cells[cell].kill()
        await gone
        await self.store.commit(UnitOfWork(()))  # behind the loss
        self.assertTrue(self.store.view.instances[guest].lost)
        self.assertFalse(reserve.exists())

    async def test_a_deletion_the_cell_did_on_a_full_disk_is_kept_in_the_reserves_room(
        self,
    ) -> None:
        """Kept only in memory, it was lost when Core stopped before the disk had room, and
        the next start showed the guest lost and failed it over (QA pass 26)."""
        guest = await self.created()
        reserve = self.store._reserve.path  # type: ignore[union-attr]
        writer = self.store._writer  # type: ignore[attr-defined]
        writer._connection = FullWhileReserved(writer._connection, reserve)
        self.assertEqual(await self.ok("DELETE", f"/guests/{guest}", {}), "")
        self.assertNotIn(guest, self.store.view.instances)
        self.assertFalse(reserve.exists())
        self.assertEqual(self.ops.guests.access.unfinished_deletes, {})

    async def test_a_deletion_the_store_could_not_save_is_finished_once_it_can(self) -> None:
        """The Cell deleted the guest, the store could not record it (503): the guest stayed
        listed, and could be neither deleted (the Cell no longer knew it) nor started (QA
        pass 22); then its inventory, taken again, showed it lost, and a failover moved it
        from its Cell to the same Cell (QA pass 24). The inventory finishes the deletion."""
        log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        await self.use_network()
        guest = await self.created(pool="netted")
        cell = self.store.view.instances[guest].cell
        full = self.store_cannot_save()
        deleted = self.events.until(MessageID.GuestDeletedEvent, guest)
        # Done on the Cell: the client is told so (QA pass 24: told 503, its retry was refused).
        self.assertEqual(await self.ok("DELETE", f"/guests/{guest}", {}), "")
        await self.applied(deleted, guest)  # the Cell did delete it; not recorded either
        self.assertIn(guest, self.store.view.instances)
        full[0] = False
        self.core_clock.advance(UNSAVED_RETRY)
        await self.settled(cell)
        self.assertNotIn(guest, self.store.view.instances)
        self.assertEqual(dict(self.store.view.allocations), {})
        self.assertEqual(self.ops.guests.access.unfinished_deletes, {})
        said = [formatEvent(e) for e in log if e.get("log_level") is LogLevel.warn]
        self.assertIn(f"{cell} deleted {guest} (team.vm1) as asked, which Core could not record "
                      "then: its record and addresses are deleted now", said)  # fmt: skip
        self.assertFalse([line for line in said if "lacks" in line or "lost" in line], said)

    async def test_a_change_the_cell_made_while_full_is_recorded_once_the_store_can_save(
        self,
    ) -> None:
        """The Cell resized the guest, the store could not record it (503): Core's record
        and the Cell disagreed until a relink, and the client's retry was refused by the
        Cell, `no need to change` (QA pass 23, B4)."""
        guest = await self.created()
        cell = self.store.view.instances[guest].cell
        full = self.store_cannot_save()
        # Done on the Cell: the client is told so (QA pass 24: told 503, it retried, and the
        # Cell refused the retry, `no need to change`).
        self.assertEqual(await self.ok("PUT", f"/guests/{guest}/cores", {"cores": 3}), "")
        self.assertEqual(self.store.view.instances[guest].cores, 2)
        full[0] = False
        self.core_clock.advance(UNSAVED_RETRY)
        await self.settled(cell)
        self.assertEqual(self.store.view.instances[guest].cores, 3)


class CreateFaultOverKCPTests(CreateFaultTests):
    """Timeouts, error replies and late guests on the KCP wire."""

    wire = "kcp"

    async def test_disconnect_mid_create_fails_cleanly(self) -> None:
        """KCP has no connection to drop: a Cell that vanishes without its goodbye is silent,
        which is the dropped-reply case above, until keepalives declare it disconnected
        (tests/test_cluster_inprocess.py, KCPFrozenCellTests)."""

    test_disconnect_mid_create_fails_cleanly.skip = (  # type: ignore[attr-defined]
        "on KCP a vanished Cell is a silent one: covered by the dropped-reply case"
    )
