"""A Cell that answers after Core stopped waiting: what it did is taken from its inventory.

Core answers ``cell timeout`` after the domain timeout, but a Cell slower than that (a busy
host, a frozen process) still does what was asked and answers late, over a link that stayed
up. The registry hears the late reply (``Transactions.late``), the observers are told
(``cell_answered_late``), and the cell operations take the Cell's inventory again, as at a
rejoin, so that the guest's cores, name and monitor secret are the ones the Cell holds.
End to end: the signed API, the real store, FakeCells over loopback TLS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import evolve
from twisted.internet.defer import Deferred, succeed

from nanocore import model as m
from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.store import Put, UnitOfWork
from nanocore.testing.fakecell import Fault
from nanocore.testing.guests import SimulatedGuest
from tests.guestfixtures import TIMEOUT, GiB, GuestClusterCase


class LateReplyTests(GuestClusterCase):
    creation_time = 0.0

    async def late(
        self, guest: str, message_id: int, method: str, path: str, body: object
    ) -> None:
        """``method path`` times out, then the Cell does it and answers late; Core has taken
        its inventory again by the end."""
        cell_name = self.store.view.instances[guest].cell
        cell = self.cells[cell_name]
        cell.inject(message_id, Fault(delay=TIMEOUT + 1))
        arrived = cell.until_received(message_id)
        asking = Deferred.fromCoroutine(self.refused(method, path, body))
        await arrived
        self.core_clock.advance(TIMEOUT)
        self.assertEqual(await asking, "cell timeout")
        pushes = self.pool_pushes(cell_name)
        self.cell_clock.advance(TIMEOUT + 1)
        # Two round trips: the late reply, then the pool push it caused, have been answered.
        for _ in range(2):
            await self.ops.cells.storage_paths(self.store.view.cells[cell_name].pool, cell_name)
        await self.store.commit(UnitOfWork(()))
        self.assertEqual(self.pool_pushes(cell_name), pushes + 1)

    def pool_pushes(self, cell: str) -> int:
        return sum(m.id == MessageID.ComputePoolReadyEvent for m in self.cells[cell].received)

    async def test_changes_the_cell_made_after_the_timeout_are_shown(self) -> None:
        guest = await self.created()
        base = f"/guests/{guest}"
        simulated = self.cells[self.store.view.instances[guest].cell].guests[guest]
        await self.late(guest, MessageID.ModifyCoreRequest, "PUT", base + "/cores", {"cores": 6})
        self.assertEqual((simulated.cores, self.store.view.instances[guest].cores), (6, 6))
        await self.late(guest, MessageID.ModifyGuestNameRequest, "PUT", base + "/name/",
                        {"name": "renamed"})  # fmt: skip
        self.assertEqual(self.store.view.instances[guest].name, "renamed")
        self.assertEqual((await self.ok("GET", base))["name"], "team.renamed")
        before = self.store.view.instances[guest].monitor_secret
        await self.late(guest, MessageID.ResetSecretRequest, "PUT", base + "/monitor/secret", {})
        secret = self.store.view.instances[guest].monitor_secret
        self.assertNotEqual(secret, before)
        self.assertEqual(secret, simulated.monitor_secret)
        self.assertEqual((await self.ok("GET", base))["monitor_secret"], secret)

    async def test_a_delete_the_cell_did_unheard_deletes_the_record(self) -> None:
        """The client was told `cell timeout`; the Cell, frozen, did the delete when it ran
        again, after it had dropped its silent link to Core (no answer, no event). The guest
        then showed lost, `came back without it`, although deleted as asked (QA pass 18)."""
        guest = await self.unanswered_delete()
        cell = self.store.view.instances[guest].cell
        del self.cells[cell].guests[guest]  # done, unheard
        await self.rejoined(cell, died=False)
        await self.store.commit(UnitOfWork(()))  # the deletion queued behind the inventory
        self.assertNotIn(guest, self.store.view.instances)
        self.assertEqual(
            await self.refused("GET", f"/guests/{guest}"), f"invalid instance '{guest}'"
        )
        self.assertEqual(self.ops.guests.access.unfinished_deletes, {})

    async def unanswered_delete(self) -> str:
        """A guest whose delete its Cell did not answer (Core answered `cell timeout`)."""
        guest = await self.created()
        cell = self.store.view.instances[guest].cell
        self.cells[cell].inject(MessageID.DeleteGuestRequest, Fault(drop=True))
        asking = Deferred.fromCoroutine(self.refused("DELETE", f"/guests/{guest}", {}))
        await self.cells[cell].until_received(MessageID.DeleteGuestRequest)
        self.core_clock.advance(TIMEOUT)
        self.assertEqual(await asking, "cell timeout")
        self.assertEqual(self.ops.guests.access.unfinished_deletes, {guest: cell})
        return guest

    async def test_a_delete_refused_while_the_cell_is_away_is_not_done_later(self) -> None:
        """Refused `not connected` (nothing was sent), it was still finished when the Cell
        came back without the guest (QA pass 25)."""
        guest = await self.created()
        cell = self.store.view.instances[guest].cell
        gone = self.events.until_disconnected(cell)
        self.cells[cell]._reconnect_delay = 3600.0
        self.cells[cell].drop_link()
        await gone
        self.assertEqual(
            await self.refused("DELETE", f"/guests/{guest}", {}), f"cell '{cell}' is not connected"
        )
        self.assertEqual(self.ops.guests.access.unfinished_deletes, {})
        self.assertEqual(self.asked_to_delete(cell), 0)

    def asked_to_delete(self, cell: str) -> int:
        return sum(1 for m in self.cells[cell].received if m.id == MessageID.DeleteGuestRequest)

    async def test_a_delete_the_cell_did_not_do_leaves_the_guest(self) -> None:
        guest = await self.unanswered_delete()
        cell = self.store.view.instances[guest].cell
        await self.rejoined(cell, died=False)
        record = self.store.view.instances[guest]
        self.assertEqual((record.cell, record.lost), (cell, False))
        self.assertEqual(self.ops.guests.access.unfinished_deletes, {})

    async def test_a_late_answer_to_a_query_or_an_inventory_asks_for_nothing(self) -> None:
        """Nothing changed on the Cell; and a slow Cell's inventory answered late would
        otherwise ask for the next one, for as long as the Cell stays slow."""
        guest = await self.created()
        cell = self.cells[self.store.view.instances[guest].cell]
        pool = self.store.view.instances[guest].pool
        status = f"/instances/{guest}"
        asks: list[tuple[int, Callable[[], Deferred[Any]]]] = [
            (MessageID.GetInstanceStatusRequest,
             lambda: Deferred.fromCoroutine(self.refused("GET", status))),
            (MessageID.ComputePoolReadyEvent, lambda: self.ops.cells.refresh(cell.name)),
        ]  # fmt: skip
        for message_id, asking in asks:
            cell.inject(message_id, Fault(delay=TIMEOUT + 1))
            arrived = cell.until_received(message_id)
            waiting = asking()
            waiting.addErrback(lambda _: None)
            await arrived
            self.core_clock.advance(TIMEOUT)
            await waiting
            self.cell_clock.advance(TIMEOUT + 1)
            await self.ops.cells.storage_paths(pool, cell.name)
        self.assertEqual(self.pool_pushes(cell.name), 2)  # its joining, and the refresh asked

    async def rejoined_slowly(self) -> tuple[str, str, str]:
        """A guest whose Cell's link drops and comes back on a slow link: its pool push is
        answered after the timeout, the guest shown lost meanwhile (the guest, its Cell and
        pool; the late answer comes once the Cell's clock moves on)."""
        guest = await self.created()
        name = self.store.view.instances[guest].cell
        cell, pool = self.cells[name], self.store.view.instances[guest].pool
        cell.inject(MessageID.ComputePoolReadyEvent, Fault(delay=TIMEOUT + 1))
        pushed = cell.until_received(MessageID.ComputePoolReadyEvent)
        linked = self.events.until_available(name)
        cell.drop_link()
        await linked
        await pushed
        self.core_clock.advance(TIMEOUT)  # the rejoin gives up
        await self.store.commit(UnitOfWork(()))
        self.assertTrue(self.store.view.instances[guest].lost)
        return guest, name, pool

    async def test_a_rejoin_answered_late_takes_that_inventory(self) -> None:
        """A Cell back on a slow link answers its pool push after the timeout: that answer
        is its inventory, and its guests are no longer lost (they stayed lost, the Cell
        linked and reporting, until its next link)."""
        guest, name, pool = await self.rejoined_slowly()
        pushes = self.pool_pushes(name)
        self.cell_clock.advance(TIMEOUT + 1)
        await self.ops.cells.storage_paths(pool, name)  # the late answer has been read
        await self.store.commit(UnitOfWork(()))
        self.assertFalse(self.store.view.instances[guest].lost)
        self.assertEqual(self.pool_pushes(name), pushes)  # and nothing asked again

    async def test_a_guest_being_changed_when_a_late_inventory_came_is_found_after(self) -> None:
        guest, name, pool = await self.rejoined_slowly()
        held: Deferred[None] = Deferred()
        self.ops.guests.access.serially(guest, lambda: held)  # a change under way
        self.cell_clock.advance(TIMEOUT + 1)
        await self.ops.cells.storage_paths(pool, name)
        await self.store.commit(UnitOfWork(()))
        self.assertTrue(self.store.view.instances[guest].lost)  # left to that change
        held.callback(None)
        await self.ops.guests.access.serially(guest, lambda: succeed(None))
        self.assertFalse(self.store.view.instances[guest].lost)

    async def test_a_late_answer_to_an_add_that_timed_out_adopts_nothing(self) -> None:
        """The add left the Cell out of the pool: the guests its late answer names stay
        unknown to Core."""
        name = sorted(self.cells)[0]
        pool = self.store.view.cells[name].pool
        await self.ok("DELETE", f"/compute_pool_cells/{pool}/{name}")
        cell = self.cells[name]
        cell.guests["stray"] = SimulatedGuest(id="stray", name="team.stray")
        cell.inject(MessageID.ComputePoolReadyEvent, Fault(delay=TIMEOUT + 1))
        pushed = cell.until_received(MessageID.ComputePoolReadyEvent)
        adding = Deferred.fromCoroutine(self.refused("POST", f"/compute_pool_cells/{pool}/{name}"))
        await pushed
        self.core_clock.advance(TIMEOUT)
        self.assertEqual(await adding, "wait cell ready timeout")
        self.cell_clock.advance(TIMEOUT + 1)
        query = Message(id=MessageID.QueryCellStorageRequest, string_params={ParamKey.Cell: name})
        await self.cluster.registry.request(name, query)  # the late answer is read by then
        await self.store.commit(UnitOfWork(()))
        self.assertNotIn("stray", self.store.view.instances)
        self.assertNotIn(name, self.store.view.cells)

    async def test_a_late_refusal_asks_for_nothing(self) -> None:
        guest = await self.created()
        cell = self.cells[self.store.view.instances[guest].cell]
        cell.inject(MessageID.ModifyCoreRequest, Fault(delay=TIMEOUT + 1, error="no"))
        arrived = cell.until_received(MessageID.ModifyCoreRequest)
        asking = Deferred.fromCoroutine(
            self.refused("PUT", f"/guests/{guest}/cores", {"cores": 6})
        )
        await arrived
        self.core_clock.advance(TIMEOUT)
        self.assertEqual(await asking, "cell timeout")
        self.cell_clock.advance(TIMEOUT + 1)
        # A round trip after the late refusal: it has been read by then.
        await self.ops.cells.storage_paths(self.store.view.instances[guest].pool, cell.name)
        self.assertEqual(self.pool_pushes(cell.name), 1)  # the one of its joining the pool
        self.assertEqual(self.store.view.instances[guest].cores, 2)


class StaleInventoryTests(GuestClusterCase):
    """A late pool push answer is an inventory older than what Core did since it asked."""

    CELLS = ("Cell_0000000000a1",)  # every guest on it
    creation_time = 1.0

    async def test_a_late_inventory_finds_lost_guests_and_judges_nothing_else(self) -> None:
        """QA pass 13, N2: a creation given up after the push was answered is missing from
        it; taking it as current settled that creation's pending error, and the next
        inventory adopted the guest the client was told had failed. A guest created in time
        meanwhile was shown lost by it."""
        found = await self.created(name="found")
        name, pool = self.store.view.instances[found].cell, self.store.view.instances[found].pool
        cell = self.cells[name]
        await self.store.commit(
            UnitOfWork.of(Put(evolve(self.store.view.instances[found], lost=True)))
        )
        push = self.ops.cells.pool_ready_message(self.store.view.compute_pools[pool])
        stale = await self.cluster.registry.request(name, push)  # its inventory, now
        kept = await self.created(name="kept")
        cell.inject(MessageID.CreateGuestRequest, Fault(delay=TIMEOUT + 1))
        arrived = cell.until_received(MessageID.CreateGuestRequest)
        given_up = Deferred.fromCoroutine(
            self.refused("POST", "/guests/", self.guest_body(name="failed"))
        )
        await arrived
        self.core_clock.advance(TIMEOUT)
        self.assertEqual(await given_up, "cell timeout")
        (pending,) = self.store.view.pending_errors.values()
        self.ops.cells.cell_answered_late(name, push, stale)
        await self.store.commit(UnitOfWork(()))
        view = self.store.view
        self.assertFalse(view.instances[found].lost)  # found, as the inventory shows it
        self.assertFalse(view.instances[kept].lost)  # created after it: not judged by it
        self.assertIn(pending.id, view.pending_errors)  # given up after it: still pending
        # The Cell makes the guest anyway: an orphan, deleted there, never adopted.
        deleted = self.events.until(MessageID.GuestDeletedEvent, pending.id)
        self.cell_clock.advance(self.creation_time)
        await self.applied(deleted, pending.id)
        await self.ops.cells.refresh(name)
        await self.ops.cells.refresh(name)
        self.assertNotIn(pending.id, self.store.view.instances)
        self.assertNotIn(pending.id, cell.guests)


class LateResetTests(GuestClusterCase):
    """A reset takes the Cells 4 s; its answer comes a second after Core stopped waiting."""

    creation_time = 4.0

    async def test_a_reset_begun_after_the_timeout_is_shown_until_it_ends(self) -> None:
        await self.store.commit(UnitOfWork.of(Put(m.DiskImage(
            id="img-1", name="centos", owner="alice", group="team", size=5 * GiB, version=1,
            created=True))))  # fmt: skip
        guest = await self.created()
        cell = self.cells[self.store.view.instances[guest].cell]
        cell.inject(MessageID.ResetSystemRequest, Fault(delay=TIMEOUT + 1))
        arrived = cell.until_received(MessageID.ResetSystemRequest)
        asking = Deferred.fromCoroutine(
            self.refused("PUT", f"/guests/{guest}/system/", {"from_image": "img-1"})
        )
        await arrived
        self.core_clock.advance(TIMEOUT)
        self.assertEqual(await asking, "cell timeout")
        self.cell_clock.advance(TIMEOUT + 1)
        # A round trip after the late answer: it has been read, and the reset recorded.
        await self.ops.cells.storage_paths(self.store.view.instances[guest].pool, cell.name)
        await self.ops.guests.access.serially(guest, lambda: succeed(None))
        shown = await self.ok("GET", f"/guests/{guest}", status=201)
        self.assertEqual((shown["created"], shown["running"]), (False, False))
        self.assertEqual(
            await self.refused("PUT", f"/guests/{guest}/disks/resize/0", {"size": 20 * GiB}),
            f"guest '{guest}' is resetting its system, retry after it",
        )
        done = self.events.until(MessageID.SystemResetEvent, guest)
        self.cell_clock.advance(self.creation_time)
        await self.applied(done, guest)
        shown = await self.ok("GET", f"/guests/{guest}")
        self.assertEqual((shown["created"], shown["running"]), (True, False))
