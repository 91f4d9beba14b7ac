"""A guest that was running when its Cell died without a goodbye, and that the Cell came back
without.

Reconciliation keeps such a record and marks it lost (docs/compatibility.md, "a guest Core has
but the Cell lacks is kept and marked lost, not deleted (deleting it then asks no Cell)"). These
tests hold Core to the rest of that promise, through the API: the record no longer says the
guest runs, deleting it (alone or in a batch) asks no Cell and frees its name and address, and
starting or stopping it is refused with the reason rather than relayed to a Cell that lacks it.
"""

from __future__ import annotations

from attrs import evolve
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from nanocore import model as m
from nanocore.cluster.message import MessageID
from nanocore.store import Put, UnitOfWork
from nanocore.testing.fakecell import FakeCell, Fault
from tests.guestfixtures import GuestClusterCase


class LostRunningGuestTests(GuestClusterCase):
    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        await self.use_network()

    def cell_of(self, guest: str) -> FakeCell:
        return self.cells[self.store.view.instances[guest].cell]

    async def lost_while_running(self, name: str = "vm1") -> str:
        """A guest started on a Cell that is then killed and relinks without it."""
        guest = await self.created(name=name, pool="netted")
        await self.started(guest)
        cell = self.cell_of(guest)
        del cell.guests[guest]  # the Cell's host lost it with the crash
        await self.rejoined(cell.name)
        return guest

    async def on_shared_storage(self) -> None:
        """Pool ``netted`` keeps its volumes on the NFS storage pool ``nfs``."""
        await self.store.commit(UnitOfWork.of(
            Put(m.StoragePool(name="nfs", host="192.0.2.9", target="/export")),
            Put(evolve(self.store.view.compute_pools["netted"], storage="nfs")),
        ))  # fmt: skip

    def asked(self, cell: FakeCell, message_id: int) -> int:
        return sum(1 for message in cell.received if message.id == message_id)

    async def test_the_log_says_what_the_api_shows(self) -> None:
        """A Cell back without its guests in a pool without failover: the API showed them
        lost and the log said nothing but link lines (QA pass 14)."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        guest = await self.lost_while_running()
        cell = self.store.view.instances[guest].cell
        lines = [formatEvent(e) for e in observer if e["log_level"] >= LogLevel.warn]
        gone = [line for line in lines if "lost without goodbye: its 1 instance(s)" in line]
        back = [line for line in lines if f"{cell} came back: its inventory lacks 1" in line]
        self.assertEqual((len(gone), len(back)), (1, 1))
        self.assertIn(guest, back[0])
        await self.rejoined(cell)  # told once: it is lost already
        again = [formatEvent(e) for e in observer if "inventory lacks" in formatEvent(e)]
        self.assertEqual(len(again), 1)

    async def test_a_guest_shown_lost_while_its_cell_was_away_is_said_once(self) -> None:
        """A stopped guest, lost with its Cell's link, that the Cell came back without: the
        inventory changed nothing of its record, and nothing was said (QA pass 18)."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        guest = await self.created(pool="netted")
        cell = self.cell_of(guest)
        del cell.guests[guest]  # the Cell's host lost it with the crash
        await self.rejoined(cell.name)
        await self.rejoined(cell.name)

        def said() -> list[str]:
            return [formatEvent(e) for e in observer if "came back without" in e["log_format"]]

        self.assertEqual(len(said()), 1)
        self.assertIn(f"came back without 1 instance(s) of Core's shown lost while it was away "
                      f"({guest})", said()[0])  # fmt: skip
        self.assertTrue(self.store.view.instances[guest].lost)

    async def test_a_guest_being_changed_while_its_cell_came_back_is_not_left_lost(self) -> None:
        """The link drops and comes back while the guest is being changed: its lost mark
        waited for that change, the new link's inventory left the busy guest to it, and the
        mark landed after: the guest stayed lost on a Cell that runs it (QA pass 16: 19 guests
        of the first Cells back after Core was stopped for 20 s)."""
        guest = await self.created(name="vm1", pool="netted")
        await self.started(guest)
        cell = self.cell_of(guest)
        held: Deferred[None] = Deferred()
        self.ops.guests.access.serially(guest, lambda: held)
        await self.rejoined(cell.name, died=False)
        self.assertFalse(self.store.view.instances[guest].lost)  # the mark is still waiting
        held.callback(None)
        await self.ops.guests.access.serially(guest, lambda: succeed(None))
        shown = await self.ok("GET", f"/guests/{guest}")
        self.assertEqual((shown.get("lost", False), shown["running"]), (False, True))

    async def test_a_guest_found_again_stays_lost_if_its_cell_is_gone_meanwhile(self) -> None:
        guest = await self.created(name="vm1", pool="netted")
        cell = self.cell_of(guest)
        held: Deferred[None] = Deferred()
        self.ops.guests.access.serially(guest, lambda: held)
        await self.rejoined(cell.name, died=False)
        gone = self.events.until_disconnected(cell.name)
        cell.drop_link()
        await gone
        held.callback(None)
        await self.ops.guests.access.serially(guest, lambda: succeed(None))
        self.assertTrue(self.store.view.instances[guest].lost)

    async def test_the_record_says_lost_and_not_running(self) -> None:
        guest = await self.lost_while_running()
        shown = await self.ok("GET", f"/guests/{guest}")
        self.assertEqual((shown["lost"], shown["running"], shown["created"]), (True, False, True))
        listed = await self.ok("GET", "/instance_status/netted")
        self.assertEqual([(g["id"], g["running"]) for g in listed], [(guest, False)])

    async def test_deleting_it_asks_no_cell_and_frees_its_name_and_address(self) -> None:
        guest = await self.lost_while_running()
        cell = self.cell_of(guest)
        ranges = await self.ok("GET", "/address_pools/net/internal/ranges/172.16.0.10")
        self.assertEqual([a["address"] for a in ranges["allocated"]], ["172.16.0.10"])
        await self.ok("DELETE", f"/guests/{guest}", {})
        self.assertEqual(self.asked(cell, MessageID.DeleteGuestRequest), 0)
        self.assertEqual(
            await self.refused("GET", f"/guests/{guest}"), f"invalid instance '{guest}'"
        )
        self.assertEqual(dict(self.store.view.allocations), {})
        ranges = await self.ok("GET", "/address_pools/net/internal/ranges/172.16.0.10")
        self.assertNotIn("allocated", ranges)
        # Name and address are free again: a new guest of that name gets that address.
        again = await self.created(name="vm1", pool="netted")
        self.assertNotEqual(again, guest)
        self.assertEqual(
            self.store.view.instances[again].internal.assigned_address, "172.16.0.10/24"
        )

    async def test_on_shared_storage_the_volumes_left_behind_are_said(self) -> None:
        """Deleting asks no Cell, so nothing removes the guest's volumes from a pool's shared
        storage: the operator is told which guest's were left there."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        await self.on_shared_storage()
        guest = await self.lost_while_running()
        await self.ok("DELETE", f"/guests/{guest}", {})
        said = [formatEvent(e) for e in events if "came back without" in e["log_format"]]
        self.assertEqual(len(said), 1)
        self.assertIn(guest, said[0])
        self.assertIn("storage pool 'nfs'", said[0])

    async def test_a_batch_deletes_it(self) -> None:
        lost = await self.lost_while_running()
        kept = await self.created(name="vm2", pool="netted")
        deleted = self.events.until(MessageID.GuestDeletedEvent, kept)
        batch = (await self.ok("POST", "/batch/delete_guest/", {"guest": [lost, kept]}, 202))["id"]
        await self.applied(deleted, kept)
        members = await self.ok("GET", f"/batch/delete_guest/{batch}")
        self.assertEqual(
            [(member["id"], member["status"]) for member in members],
            [(lost, "deleted"), (kept, "deleted")],
        )
        self.assertEqual(dict(self.store.view.instances), {})
        self.assertEqual(dict(self.store.view.allocations), {})

    async def test_starting_or_stopping_it_is_refused_with_the_reason(self) -> None:
        guest = await self.lost_while_running()
        cell = self.cell_of(guest)
        reason = f"instance '{guest}' is lost: cell '{cell.name}' came back without it"
        self.assertEqual(await self.refused("POST", f"/instances/{guest}", {}), reason)
        self.assertEqual(await self.refused("DELETE", f"/instances/{guest}", {}), reason)
        # Its live status too: the Cell would say "invalid instance" of a guest the lists show.
        self.assertEqual(await self.refused("GET", f"/instances/{guest}"), reason)
        self.assertEqual(self.asked(cell, MessageID.GetInstanceStatusRequest), 0)
        batch = (await self.ok("POST", "/batch/stop_guest/", {"guest": [guest]}, 202))["id"]
        (member,) = await self.ok("GET", f"/batch/stop_guest/{batch}")
        self.assertEqual((member["status"], member["error"]), ("fail", reason))
        self.assertEqual(self.asked(cell, MessageID.StartInstanceRequest), 1)  # the first start
        self.assertEqual(self.asked(cell, MessageID.StopInstanceRequest), 0)

    async def test_what_would_ask_its_cell_is_refused_with_the_reason(self) -> None:
        """Its configuration, snapshots, firewall and login were relayed to the Cell, which
        answered `invalid guest` or `invalid instance` of a guest the lists show (QA pass 16)."""
        guest = await self.lost_while_running()
        cell = self.cell_of(guest)
        received = len(cell.received)
        reason = f"instance '{guest}' is lost: cell '{cell.name}' came back without it"
        base = f"/guests/{guest}"
        before = await self.ok("GET", base)
        asks = [
            ("PUT", base + "/memory", {"memory": 4 * 1024**3}),
            ("PUT", base + "/name/", {"name": "renamed"}),
            ("GET", f"/instances/{guest}/snapshots/", None),
            ("POST", f"/instances/{guest}/snapshots/", {"name": "s1"}),
            ("GET", base + "/security_policy/", None),
            ("GET", base + "/auth", None),
            ("PUT", base + "/monitor/secret", {}),
            ("POST", "/disk_images/", {"name": "cap", "owner": "o", "group": "g", "guest": guest}),
        ]
        for method, path, body in asks:
            self.assertEqual(await self.refused(method, path, body), reason, path)
        self.assertEqual(len(cell.received), received)  # nothing was asked of it
        self.assertEqual(await self.ok("GET", base), before)

    async def test_migrating_it_is_refused_with_the_reason(self) -> None:
        """Nano's own check refused it with `is lost` alone (QA pass 17)."""
        await self.on_shared_storage()
        guest = await self.lost_while_running()
        record = self.store.view.instances[guest]
        (target,) = (name for name in self.CELLS if name != record.cell)
        body = {"source_pool": "netted", "source_cell": record.cell, "target_cell": target,
                "instances": [guest]}  # fmt: skip
        self.assertEqual(
            await self.refused("POST", "/migrations/", body),
            f"instance '{guest}'('{record.full_name}') is lost: cell '{record.cell}' came "
            "back without it",
        )
        self.assertEqual(await self.ok("GET", "/migrations/"), [])

    async def test_a_record_an_older_core_left_running_is_deleted_and_corrected(self) -> None:
        """Records kept lost *and* running before this fix: the next inventory stops them, and
        deleting one whose Cell came back without it needs no Cell, whatever its status."""
        first, second = await self.lost_while_running(), await self.lost_while_running("vm2")
        for guest in (first, second):
            record = self.store.view.instances[guest]
            running = evolve(record, status=m.InstanceStatus.RUNNING)
            await self.store.commit(UnitOfWork.of(Put(running)))
        await self.ok("DELETE", f"/guests/{first}", {})
        self.assertNotIn(first, self.store.view.instances)
        await self.rejoined(self.store.view.instances[second].cell)
        record = self.store.view.instances[second]
        self.assertEqual((record.lost, record.status), (True, m.InstanceStatus.STOPPED))

    async def test_before_its_inventory_is_read_a_relinked_cell_is_asked(self) -> None:
        """A lost guest of a Cell that has linked again but not yet told its inventory may be
        on that Cell: deleting it asks the Cell instead of forgetting a guest it still holds."""
        guest = await self.created(pool="netted")
        cell = self.cell_of(guest)
        cell._reconnect_delay = 3600.0  # it stays away until the test lets it back
        gone = self.events.until_disconnected(cell.name)
        cell.kill()
        await gone
        await self.store.commit(UnitOfWork(()))
        self.assertTrue(self.store.view.instances[guest].lost)
        cell.inject(MessageID.ComputePoolReadyEvent, Fault(drop=True))  # no inventory yet
        linked = self.events.until_available(cell.name)
        cell._reconnect_delay = 0.01
        await self.cluster.services[cell.name].stopService()
        self.cluster.services[cell.name].startService()
        await linked
        await self.ok("DELETE", f"/guests/{guest}", {})
        self.assertEqual(self.asked(cell, MessageID.DeleteGuestRequest), 1)
        self.assertNotIn(guest, cell.guests)
        self.assertNotIn(guest, self.store.view.instances)
        await self.rejoined(cell.name)  # its inventory now: nothing to adopt back
        self.assertEqual(dict(self.store.view.instances), {})


class CreationOnACellAwayTests(GuestClusterCase):
    """QA pass 25: a Cell gone mid-creation left the guest neither created nor failed, its
    name and address taken, and `DELETE` answered `cell '<c>' is not connected` for as long as
    the Cell stayed away."""

    CELLS = ("Cell_0000000000a1",)

    async def test_it_is_deleted_without_asking_and_its_copy_goes_when_the_cell_is_back(
        self,
    ) -> None:
        await self.use_network()
        guest = (await self.ok("POST", "/guests/", self.guest_body(pool="netted"),
                               status=202))["id"]  # fmt: skip
        cell = self.cells["Cell_0000000000a1"]
        gone = self.events.until_disconnected(cell.name)
        cell._reconnect_delay = 3600.0
        cell.drop_link()  # it lives on, and makes the guest meanwhile
        await gone
        await self.ok("DELETE", f"/guests/{guest}", {})
        self.assertEqual(
            await self.refused("GET", f"/guests/{guest}"), f"invalid instance '{guest}'"
        )
        self.assertEqual(dict(self.store.view.allocations), {})
        self.cell_clock.advance(self.creation_time)
        self.assertIn(guest, cell.guests)
        # Back, the Cell holds it: an orphan, deleted there; the name is free meanwhile.
        deleted = cell.until_received(MessageID.DeleteGuestRequest)
        linked = self.events.until_available(cell.name)
        cell._reconnect_delay = 0.01
        await self.cluster.services[cell.name].stopService()
        self.cluster.services[cell.name].startService()
        await linked
        await deleted
        self.assertNotIn(guest, cell.guests)
        again = (await self.ok("POST", "/guests/", self.guest_body(pool="netted"),
                               status=202))["id"]  # fmt: skip
        self.assertNotEqual(again, guest)
