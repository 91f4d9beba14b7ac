"""Migration and failover end to end: the signed API, the real store, FakeCells over loopback
TLS (and one case over KCP) sharing a simulated NFS export (api-reference §4.12,
cell-protocol §5.7, core-internals §3.4)."""

from __future__ import annotations

from typing import Any

from attrs import evolve
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from nanocore import model as m
from nanocore.cluster.message import MessageID, ParamKey
from nanocore.operations.core import Operations
from nanocore.operations.errors import UNSAVED_RETRY
from nanocore.operations.guests.common import STARTED_EVENT_WAIT
from nanocore.operations.guests.events import RESET_SILENCE
from nanocore.operations.migrations import RESTARTED, RETENTION
from nanocore.store import Put, UnitOfWork
from nanocore.testing.fakecell import Fault
from nanocore.testing.guests import GuestState
from tests.guestfixtures import TIMEOUT, GiB, GuestClusterCase

A, B, C = "Cell_0000000000a1", "Cell_0000000000b2", "Cell_0000000000c3"
POOL = "shared"


class MigrationCase(GuestClusterCase):
    """Three Cells in pool ``shared`` on the NFS storage pool ``nfs``."""

    CELLS = (A, B, C)
    creation_time = 0.0
    failover = False
    #: The pool's address pool (``net``, see ``address_pool``), or none.
    network = ""

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        await self.ok("POST", "/storage_pools/nfs",
                      {"type": "nfs", "host": "192.0.2.9", "target": "/export"})  # fmt: skip
        pool: dict[str, Any] = {"storage": "nfs", "failover": self.failover}
        if self.network:
            await self.address_pool()
            pool["network"] = self.network
        await self.ok("POST", f"/compute_pools/{POOL}", pool)
        for name in self.CELLS:
            await self.ok("DELETE", f"/compute_pool_cells/default/{name}")
            await self.ok("POST", f"/compute_pool_cells/{POOL}/{name}")

    async def guest_on(self, cell: str, name: str, memory: int = 2 * GiB) -> str:
        """A stopped guest created on ``cell`` (the other Cells disabled meanwhile)."""
        others = [c for c in self.CELLS if c != cell]
        for other in others:
            await self.ok("PUT", f"/compute_pool_cells/{POOL}/{other}", {"enable": False})
        guest = await self.created(name=name, pool=POOL, memory=memory)
        for other in others:
            await self.ok("PUT", f"/compute_pool_cells/{POOL}/{other}", {"enable": True})
        self.assertEqual(self.store.view.instances[guest].cell, cell)
        return guest

    def body(self, *guests: str, source: str = A, target: str = B, **more: Any) -> Any:
        return {"source_pool": POOL, "source_cell": source, "target_cell": target,
                "instances": list(guests), **more}  # fmt: skip

    async def migrated(self, body: Any) -> str:
        """Start a migration through the API and wait until it ended."""
        migration: str = (await self.ok("POST", "/migrations/", body))["id"]
        await self.ops.migrations.ended(migration)
        return migration

    def placed_cores(self, cell: str) -> int:
        return next(
            c for c in self.ops.guests.placement.capacities(POOL) if c.name == cell
        ).placed_cores

    def moving(self) -> list[str]:
        """The capacity claims of guests moving to another Cell."""
        return [claim for claim in self.claims() if claim.startswith("('migration'")]

    def record(self, guest: str) -> m.Instance:
        return self.store.view.instances[guest]

    async def relinked(self, cell: str) -> None:
        """``cell``'s link drops and comes back at once; Core sees it available again."""
        linked = self.events.until_available(cell)
        self.cells[cell]._reconnect_delay = 0.01
        await self.cluster.services[cell].stopService()
        self.cluster.services[cell].startService()
        await linked

    async def rejoined_mid_failover(self, cell: str) -> None:
        """``cell`` links again and rejoins its pool while its failover still runs."""
        pushed = self.cells[cell].until_received(MessageID.ComputePoolReadyEvent)
        await self.relinked(cell)
        await pushed
        await self.ops.cells.storage_paths(POOL, cell)
        await self.store.commit(UnitOfWork(()))


class MigrationRequestTests(MigrationCase):
    async def test_every_refusal_in_nanos_order(self) -> None:
        guest = await self.guest_on(A, "vm1")
        other = await self.guest_on(C, "vm2")
        vm1, vm2 = f"instance '{guest}'('team.vm1')", f"instance '{other}'('team.vm2')"
        shared = "migrate only work on shared storage"
        refusals = [
            (None, "EOF"),
            ({}, "migrate in same cell"),
            (self.body(guest, target_pool=POOL), "migration between pools not support"),
            (self.body(guest, target=A), "migrate in same cell"),
            ({**self.body(guest), "source_pool": "nope"}, "invalid pool 'nope'"),
            ({**self.body(guest), "source_pool": "default"}, shared),
            (self.body(guest, source="Cell_x"), f"source cell 'Cell_x' not in pool '{POOL}'"),
            (self.body(guest, target="Cell_x"), f"target cell 'Cell_x' not in pool '{POOL}'"),
            (self.body(source=B, target=C), f"no instance need migrate in cell '{POOL}.{B}'"),
            (self.body("nope"), "invalid instance 'nope'"),
            (self.body(other, source=A, target=C), f"{vm2} already in cell '{C}'"),
            (self.body(guest, guest), f"{vm1} listed twice"),
            (self.body(other), f"{vm2} not in cell '{A}'"),
        ]
        for body, message in refusals:
            self.assertEqual(await self.refused("POST", "/migrations/", body), message, body)
        await self.ok("PUT", f"/compute_pool_cells/{POOL}/{B}", {"enable": False})
        self.assertEqual(await self.refused("POST", "/migrations/", self.body(guest)),
                         f"target cell '{B}' already disabled")  # fmt: skip
        await self.ok("PUT", f"/compute_pool_cells/{POOL}/{B}", {"enable": True})
        await self.started(guest)
        self.assertEqual(await self.refused("POST", "/migrations/", self.body(guest)),
                         f"instance '{guest}'('team.vm1') is still running")  # fmt: skip
        # Nothing was recorded or claimed by any of them.
        self.assertEqual((await self.ok("GET", "/migrations/"), self.moving()), ([], []))
        self.assertFalse(self.record(guest).migrating)

    async def test_lost_cells(self) -> None:
        guest = await self.guest_on(A, "vm1")
        for cell, side in ((B, "target"), (A, "source")):
            self.cells[cell]._reconnect_delay = 3600.0  # it stays away
            gone = self.events.until_disconnected(cell)
            self.cells[cell].kill()
            await gone
            body = self.body(guest, target=B if side == "target" else C)
            self.assertEqual(await self.refused("POST", "/migrations/", body),
                             f"{side} cell '{cell}' already lost")  # fmt: skip

    async def test_a_guest_whose_disk_image_is_being_captured(self) -> None:
        """It stays where its Cell copies its disk (Nano moved it); then it may move."""
        guest = await self.guest_on(A, "vm1")
        capture = {"name": "snap", "owner": "alice", "group": "team", "guest": guest}
        image = (await self.ok("POST", "/disk_images/", capture, status=202))["id"]
        self.assertEqual(
            await self.refused("POST", "/migrations/", self.body(guest)),
            f"instance '{guest}'('team.vm1') is being captured to disk image '{image}'",
        )
        self.assertEqual((await self.ok("GET", "/migrations/"), self.moving()), ([], []))
        self.cell_clock.advance(0)  # the simulated capture ends (having uploaded nothing)
        await self.ops.captures.finished(image)
        await self.migrated(self.body(guest))
        self.assertEqual(self.record(guest).cell, B)

    async def test_a_guest_in_a_migration_and_a_target_without_room(self) -> None:
        guest = await self.guest_on(A, "vm1")
        big = await self.guest_on(A, "big", memory=20 * GiB)
        await self.guest_on(B, "filler", memory=20 * GiB)
        await self.reported()
        refused = await self.call("POST", "/migrations/", self.body(big))
        document = refused.envelope()
        self.assertEqual(document["message"],
                         f"cell '{B}' has no room for the 1 instance(s) to migrate: "
                         "memory 12 GB free < 20 GB")  # fmt: skip
        self.assertEqual(document["data"]["cells"][0]["filter"], "memory")
        self.cells[B].inject(MessageID.AttachInstanceRequest, Fault(delay=1.0))
        told = self.cells[B].until_received(MessageID.AttachInstanceRequest)
        migration = (await self.ok("POST", "/migrations/", self.body(guest)))["id"]
        self.assertTrue(self.record(guest).migrating)
        self.assertEqual(await self.refused("POST", "/migrations/", self.body(guest, target=C)),
                         f"instance '{guest}'('team.vm1') already in migrating")  # fmt: skip
        # A guest between two Cells is neither started nor deleted.
        self.assertEqual(await self.refused("POST", f"/instances/{guest}", {}),
                         f"instance '{guest}' is migrating")  # fmt: skip
        self.assertEqual(await self.refused("DELETE", f"/guests/{guest}", {}),
                         f"instance '{guest}' is migrating")  # fmt: skip
        self.assertEqual(await self.ok("GET", f"/migrations/{migration}"), {"finished": False})
        await told
        self.cell_clock.advance(1.0)
        await self.ops.migrations.ended(migration)
        self.assertEqual(self.record(guest).cell, B)


class StartAndMigrationTests(MigrationCase):
    """QA pass 25: a start and a migration of one guest at once were both acknowledged, and
    the guest was moved while it booted (a stock Cell force-stops a guest to detach it); a
    capture sent with a migration copied a disk its Cell was letting go of."""

    async def test_a_guest_being_started_is_not_migrated(self) -> None:
        guest = await self.guest_on(A, "vm1")
        self.cells[A].inject(MessageID.StartInstanceRequest, Fault(delay=1.0))
        told = self.cells[A].until_received(MessageID.StartInstanceRequest)
        starting = Deferred.fromCoroutine(self.call("POST", f"/instances/{guest}", {}))
        await told
        self.assertEqual(await self.refused("POST", "/migrations/", self.body(guest)),
                         f"instance '{guest}'('team.vm1') is being started")  # fmt: skip
        self.assertEqual(await self.refused("POST", f"/instances/{guest}", {}),
                         f"instance '{guest}' is being started, retry")  # fmt: skip
        capture = {"name": "snap", "owner": "alice", "group": "team", "guest": guest}
        self.assertEqual(await self.refused("POST", "/disk_images/", capture),
                         f"guest '{guest}' is being started")  # fmt: skip
        started = self.events.until(MessageID.GuestStartedEvent, guest)
        self.cell_clock.advance(1.0)
        self.assertEqual((await starting).envelope()["error_code"], 0)
        await self.applied(started, guest)
        self.assertTrue(self.record(guest).running)
        self.assertEqual(await self.refused("POST", "/migrations/", self.body(guest)),
                         f"instance '{guest}'('team.vm1') is still running")  # fmt: skip
        self.assertEqual((self.cells[A].guests[guest].state, self.cells[B].guests), (
            GuestState.RUNNING, {}))  # fmt: skip
        # Once recorded running, nothing of the start is awaited: stopped, it moves at once.
        stopped = self.events.until(MessageID.GuestStoppedEvent, guest)
        await self.ok("DELETE", f"/instances/{guest}", {})
        self.cell_clock.advance(1.0)
        await self.applied(stopped, guest)
        await self.migrated(self.body(guest))
        self.assertEqual(self.record(guest).cell, B)

    async def test_a_start_the_cell_refused_leaves_the_guest_free_to_move(self) -> None:
        guest = await self.guest_on(A, "vm1")
        self.cells[A].inject(MessageID.StartInstanceRequest, Fault(error="no memory"))
        self.assertEqual(await self.refused("POST", f"/instances/{guest}", {}), "no memory")
        await self.migrated(self.body(guest))
        self.assertEqual(self.record(guest).cell, B)

    async def test_a_started_guest_whose_event_never_came_may_move_after_a_while(self) -> None:
        guest = await self.guest_on(A, "vm1")
        cell = self.cells[A]
        start = cell._handlers[MessageID.StartInstanceRequest]
        # The Cell starts it and answers; its GuestStartedEvent is lost.
        answer_only = {MessageID.StartInstanceRequest: lambda request: start(request)[:1]}
        self.patch(cell, "_handlers", {**cell._handlers, **answer_only})
        await self.ok("POST", f"/instances/{guest}", {})
        # Answered, and not recorded as running: still being started, for a while.
        self.assertFalse(self.record(guest).running)
        self.assertEqual(await self.refused("POST", "/migrations/", self.body(guest)),
                         f"instance '{guest}'('team.vm1') is being started")  # fmt: skip
        self.core_clock.advance(STARTED_EVENT_WAIT - 1)
        await self.reported()
        self.assertIn("is being started", await self.refused("POST", "/migrations/",
                                                             self.body(guest)))  # fmt: skip
        self.core_clock.advance(1)
        await self.reported()  # the Cells are still there to Core's clock
        await self.migrated(self.body(guest))
        self.assertEqual(self.record(guest).cell, B)

    async def test_a_guest_a_migration_claimed_is_not_started(self) -> None:
        """The migration's record is committed in the guest's turn: until then only its
        claim says the guest is moving."""
        guest = await self.guest_on(A, "vm1")
        busy: Deferred[None] = Deferred()
        self.ops.guests.access.serially(guest, lambda: busy)
        migrating = Deferred.fromCoroutine(self.call("POST", "/migrations/", self.body(guest)))
        self.assertFalse(self.record(guest).migrating)
        self.assertEqual(await self.refused("POST", f"/instances/{guest}", {}),
                         f"instance '{guest}' is migrating")  # fmt: skip
        self.assertEqual(await self.refused("DELETE", f"/guests/{guest}", {}),
                         f"instance '{guest}' is migrating")  # fmt: skip
        capture = {"name": "snap", "owner": "alice", "group": "team", "guest": guest}
        self.assertEqual(await self.refused("POST", "/disk_images/", capture),
                         f"instance '{guest}' is migrating")  # fmt: skip
        busy.callback(None)
        migration = (await migrating).envelope()["data"]["id"]
        await self.ops.migrations.ended(migration)
        self.assertEqual((self.record(guest).cell, self.record(guest).running), (B, False))


class ResetAndMigrationTests(MigrationCase):
    """QA pass 25: a system reset and a migration of one guest at once were both accepted,
    and the guest was moved mid-reset and stayed "not created yet" on the target for good."""

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        image = m.DiskImage(id="img-1", name="centos", owner="alice", group="team",
                            size=5 * GiB, version=1, created=True)  # fmt: skip
        await self.store.commit(UnitOfWork.of(Put(image)))

    async def test_a_guest_whose_reset_was_sent_is_not_migrated(self) -> None:
        guest = await self.guest_on(A, "vm1")
        self.cells[A].inject(MessageID.ResetSystemRequest, Fault(delay=1.0))
        told = self.cells[A].until_received(MessageID.ResetSystemRequest)
        path = f"/guests/{guest}/system/"
        resetting = Deferred.fromCoroutine(self.call("PUT", path, {"from_image": "img-1"}))
        await told
        migrating = Deferred.fromCoroutine(self.call("POST", "/migrations/", self.body(guest)))
        self.cell_clock.advance(1.0)
        self.assertEqual((await resetting).envelope()["error_code"], 0)
        self.assertEqual((await migrating).envelope()["message"],
                         f"instance '{guest}'('team.vm1') changed, retry")  # fmt: skip
        self.assertEqual((self.record(guest).cell, self.record(guest).migrating), (A, False))
        self.assertEqual(self.cells[B].prepared(), set())

    async def test_a_reset_answered_too_late_is_not_taken_for_none(self) -> None:
        """Recorded stopped after its `cell timeout`, the guest was migrated in the middle of
        the reset its Cell did late (QA pass 26)."""
        guest = await self.guest_on(A, "vm1")
        self.cells[A].inject(MessageID.ResetSystemRequest, Fault(drop=True))
        told = self.cells[A].until_received(MessageID.ResetSystemRequest)
        path = f"/guests/{guest}/system/"
        resetting = Deferred.fromCoroutine(self.call("PUT", path, {"from_image": "img-1"}))
        await told
        self.core_clock.advance(TIMEOUT)
        self.assertEqual((await resetting).envelope()["message"], "cell timeout")
        self.assertIs(self.record(guest).status, m.InstanceStatus.RESETTING)
        self.assertEqual(await self.refused("POST", "/migrations/", self.body(guest)),
                         f"instance '{guest}'('team.vm1') not created yet")  # fmt: skip
        # Its end never heard: stopped again, the next read says the outcome is unknown.
        self.core_clock.advance(RESET_SILENCE)
        await self.ops.guests.access.serially(guest, lambda: succeed(None))
        self.assertIs(self.record(guest).status, m.InstanceStatus.STOPPED)

    async def test_a_guest_a_migration_claimed_is_not_reset(self) -> None:
        guest = await self.guest_on(A, "vm1")
        busy: Deferred[None] = Deferred()
        self.ops.guests.access.serially(guest, lambda: busy)
        migrating = Deferred.fromCoroutine(self.call("POST", "/migrations/", self.body(guest)))
        resetting = Deferred.fromCoroutine(
            self.call("PUT", f"/guests/{guest}/system/", {"from_image": "img-1"})
        )
        busy.callback(None)
        migration = (await migrating).envelope()["data"]["id"]
        self.assertEqual((await resetting).envelope()["message"],
                         f"instance '{guest}' is migrating")  # fmt: skip
        await self.ops.migrations.ended(migration)
        self.assertEqual((self.record(guest).cell, self.record(guest).created), (B, True))


class MigrationTests(MigrationCase):
    async def test_guests_move_with_their_claims(self) -> None:
        first, second = await self.guest_on(A, "vm1"), await self.guest_on(A, "vm2")
        await self.reported()
        self.assertEqual((self.placed_cores(A), self.placed_cores(B)), (4, 0))
        arrived = self.events.until(MessageID.InstanceMigratedEvent, "")
        migration = (await self.ok("POST", "/migrations/", self.body(first, second)))["id"]
        # From the start, the target's room is claimed for the guests in transit.
        self.assertEqual(self.moving(), sorted(str(("migration", g)) for g in (first, second)))
        self.assertEqual((self.placed_cores(A), self.placed_cores(B)), (4, 4))
        self.assertTrue(self.record(first).migrating)
        await arrived
        ended = await self.ops.migrations.ended(migration)
        self.assertEqual((ended.finished, ended.progress, ended.error), (True, 100, ""))
        for guest in (first, second):
            record = self.record(guest)
            self.assertEqual((record.cell, record.migrating, record.lost), (B, False, False))
            self.assertEqual(
                record.internal.monitor_port, self.cells[B].guests[guest].monitor_port
            )
            self.assertEqual(record.internal.monitor_address, "127.0.0.1")
        self.assertEqual(set(self.cells[B].guests), {first, second})
        self.assertEqual(self.cells[A].guests, {})
        self.assertEqual(self.cells[B].prepared(), set())
        # The records count on the target now; the claims end with its next report.
        self.assertEqual((self.placed_cores(A), self.placed_cores(B)), (0, 4))
        self.assertEqual(len(self.moving()), 2)
        await self.reported(B)
        self.assertEqual(self.moving(), [])
        shown = await self.ok("GET", f"/guests/{first}")
        self.assertEqual(shown["cell"], B)
        # Kept, however often it is read, until the retention period is over.
        for _ in range(2):
            self.assertEqual(await self.ok("GET", f"/migrations/{migration}"),
                             {"finished": True, "progress": 100})  # fmt: skip
            self.assertEqual(await self.ok("GET", "/migrations/"),
                             [{"id": migration, "finished": True, "progress": 100}])  # fmt: skip
        self.core_clock.advance(RETENTION - 1)
        await self.ok("GET", f"/migrations/{migration}")
        self.core_clock.advance(1)
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.assertEqual(await self.refused("GET", f"/migrations/{migration}"),
                         f"invalid migration '{migration}'")  # fmt: skip
        self.assertEqual(await self.ok("GET", "/migrations/"), [])  # sweeps again: skipped
        await self.store.commit(UnitOfWork(()))
        self.assertNotIn(migration, self.store.view.migrations)
        self.assertEqual([e for e in observer if e["log_level"] > LogLevel.info], [])
        # Removing a Cell that still holds guests answers Nano's message.
        self.assertEqual(await self.refused("DELETE", f"/compute_pool_cells/{POOL}/{B}"),
                         f"2 instance(s) left in cell '{B}', migrate or delete all instance(s)"
                         " before remove cell")  # fmt: skip

    async def test_every_guest_of_the_source_when_none_is_named(self) -> None:
        guest = await self.guest_on(A, "vm1")
        migration = await self.migrated(self.body())
        self.assertEqual(self.store.view.migrations[migration].instances, (guest,))
        self.assertEqual(self.record(guest).cell, B)

    async def test_a_target_that_refuses_cancels(self) -> None:
        guest = await self.guest_on(A, "vm1")
        self.cells[B].inject(MessageID.AttachInstanceRequest, Fault(error="no room for volumes"))
        migration = await self.migrated(self.body(guest))
        failed = {"finished": False, "error": "attach instance fail: no room for volumes"}
        self.assertEqual(await self.ok("GET", f"/migrations/{migration}"), failed)
        await self.stayed(guest)

    async def test_a_target_that_times_out_cancels_and_lets_go(self) -> None:
        guest = await self.guest_on(A, "vm1")
        # The target prepares the guest, but its answer comes too late.
        self.cells[B].inject(MessageID.AttachInstanceRequest, Fault(delay=TIMEOUT * 2))
        told = self.cells[B].until_received(MessageID.AttachInstanceRequest)
        migration = (await self.ok("POST", "/migrations/", self.body(guest)))["id"]
        await told
        self.assertEqual(self.cells[B].prepared(), {guest})
        undone = self.cells[B].until_received(MessageID.DetachInstanceRequest)
        self.core_clock.advance(TIMEOUT)
        ended = await self.ops.migrations.ended(migration)
        self.assertEqual(ended.error, "attach instance timeout")
        await undone
        self.assertEqual(self.cells[B].prepared(), set())
        await self.stayed(guest)

    async def test_a_source_that_refuses_cancels(self) -> None:
        guest = await self.guest_on(A, "vm1")
        self.cells[A].inject(MessageID.DetachInstanceRequest, Fault(error="volume busy"))
        undone = self.cells[B].until_received(MessageID.DetachInstanceRequest)
        migration = await self.migrated(self.body(guest))
        self.assertEqual(self.store.view.migrations[migration].error,
                         "detach instance fail: volume busy")  # fmt: skip
        await undone
        self.assertEqual(self.cells[B].prepared(), set())
        await self.stayed(guest)

    async def test_a_failed_activation_gives_the_guests_back_to_the_source(self) -> None:
        guest = await self.guest_on(A, "vm1")
        self.cells[B].inject(MessageID.MigrateInstanceRequest, Fault(drop=True))
        sent = self.cells[B].until_received(MessageID.MigrateInstanceRequest)
        migration = (await self.ok("POST", "/migrations/", self.body(guest)))["id"]
        await sent
        self.assertEqual((self.cells[A].guests, self.cells[B].guests), ({}, {}))
        back = self.events.until(MessageID.InstanceMigratedEvent, "")
        self.core_clock.advance(TIMEOUT)
        ended = await self.ops.migrations.ended(migration)
        self.assertEqual(ended.error, "migrate instance timeout")
        # Neither Cell holds it now: it is shown lost until the source takes it back.
        self.assertTrue(self.record(guest).lost)
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        await self.applied(back, guest)
        record = self.record(guest)
        self.assertEqual((record.cell, record.lost, record.migrating), (A, False, False))
        self.assertEqual(set(self.cells[A].guests), {guest})
        self.assertEqual(self.moving(), [])
        self.core_clock.advance(TIMEOUT)  # its event ended the wait for its attach
        self.assertEqual([formatEvent(e) for e in observer if "back" in formatEvent(e)], [])

    async def test_a_target_gone_before_its_activation_fails_the_move_at_once(self) -> None:
        """It waited the whole domain timeout while no Cell held the guests (QA pass 25)."""
        guest = await self.guest_on(A, "vm1")
        self.cells[B].inject(MessageID.MigrateInstanceRequest, Fault(drop=True))
        sent = self.cells[B].until_received(MessageID.MigrateInstanceRequest)
        migration = (await self.ok("POST", "/migrations/", self.body(guest)))["id"]
        await sent
        back = self.events.until(MessageID.InstanceMigratedEvent, "")
        began = self.core_clock.seconds()
        self.cells[B]._reconnect_delay = 3600.0
        self.cells[B].kill()
        ended = await self.ops.migrations.ended(migration)
        self.assertEqual(self.core_clock.seconds(), began)
        self.assertEqual(ended.error, f"migrate instance fail: cell '{B}' disconnected")
        await self.applied(back, guest)
        record = self.record(guest)
        self.assertEqual((record.cell, record.lost, record.migrating), (A, False, False))
        self.assertEqual(set(self.cells[A].guests), {guest})

    async def test_a_source_that_refuses_to_take_the_guests_back(self) -> None:
        """Said so, by the attach's token (Nano's carried none: a refusal fell to whichever
        failover waited on that Cell); the guest stays lost until a Cell reports it."""
        guest = await self.guest_on(A, "vm1")
        self.cells[B].inject(MessageID.MigrateInstanceRequest, Fault(drop=True))
        self.cells[A].inject(MessageID.AttachInstanceRequest, Fault(error="no bridge"))
        sent = self.cells[B].until_received(MessageID.MigrateInstanceRequest)
        asked_back = self.cells[A].until_received(MessageID.AttachInstanceRequest)
        migration = (await self.ok("POST", "/migrations/", self.body(guest)))["id"]
        await sent
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.core_clock.advance(TIMEOUT)
        await self.ops.migrations.ended(migration)
        await asked_back
        await self.ops.cells.storage_paths(POOL, A)  # its refusal is ahead of this on the link
        said = [formatEvent(e) for e in observer if "take back" in formatEvent(e)]
        self.assertEqual(said, [f"{A} refused to take back 1 instance(s): no bridge"])
        record = self.record(guest)
        self.assertEqual((record.cell, record.lost, record.migrating), (A, True, False))

    async def test_a_source_that_let_go_after_its_detach_timed_out_takes_the_guest_back(
        self,
    ) -> None:
        """It detached, but said so too late: the guest is shown lost, not on the source as if
        nothing happened, until the source's inventory (taken at once) tells, and the source
        takes it back."""
        guest = await self.guest_on(A, "vm1")
        # The source lets go at once; its answer would come after Core's timeout.
        self.cells[A].inject(MessageID.DetachInstanceRequest, Fault(delay=TIMEOUT * 2))
        detached = self.cells[A].until_received(MessageID.DetachInstanceRequest)
        reconciled = self.ops.migrations.reconciled(A)
        back = self.events.until(MessageID.InstanceMigratedEvent, "")
        migration = (await self.ok("POST", "/migrations/", self.body(guest)))["id"]
        await detached
        self.assertEqual(self.cells[A].guests, {})
        self.core_clock.advance(TIMEOUT)
        ended = await self.ops.migrations.ended(migration)
        self.assertEqual(ended.error, "detach instance timeout")
        shown = await self.ok("GET", f"/guests/{guest}")
        self.assertEqual((shown["cell"], shown.get("lost")), (A, True))
        await reconciled
        await self.applied(back, guest)
        await self.stayed(guest)
        self.assertEqual(self.cells[B].prepared(), set())

    async def test_a_source_that_kept_the_guest_after_its_detach_timed_out(self) -> None:
        """The detach never happened: the source's inventory shows the guest there, and it is
        not asked to take it back."""
        guest = await self.guest_on(A, "vm1")
        self.cells[A].inject(MessageID.DetachInstanceRequest, Fault(drop=True))
        detached = self.cells[A].until_received(MessageID.DetachInstanceRequest)
        reconciled = self.ops.migrations.reconciled(A)
        migration = (await self.ok("POST", "/migrations/", self.body(guest)))["id"]
        await detached
        self.core_clock.advance(TIMEOUT)
        ended = await self.ops.migrations.ended(migration)
        self.assertEqual(ended.error, "detach instance timeout")
        self.assertTrue(self.record(guest).lost)
        await reconciled
        # A round trip to the source: anything sent to it before has arrived.
        await self.ops.cells.storage_paths(POOL, A)
        await self.stayed(guest)
        attached = [m for m in self.cells[A].received if m.id == MessageID.AttachInstanceRequest]
        self.assertEqual(attached, [])

    async def stayed(self, guest: str) -> None:
        """The guest is on the source as before, and nothing of the move is left."""
        record = self.record(guest)
        self.assertEqual((record.cell, record.migrating, record.lost), (A, False, False))
        self.assertEqual(set(self.cells[A].guests), {guest})
        self.assertEqual(self.cells[B].guests, {})
        self.assertEqual(self.moving(), [])
        self.assertEqual(self.placed_cores(B), 0)

    async def test_a_migration_cut_short_by_a_stop(self) -> None:
        guest = await self.guest_on(A, "vm1")
        running = m.Migration(
            id="0b3c2e1e-3c3c-4c1a-9d55-0123456789ab", source_pool=POOL, source_cell=A,
            target_pool=POOL, target_cell=B, instances=(guest,), progress=60,
        )  # fmt: skip
        await self.store.commit(
            UnitOfWork.of(Put(running), Put(evolve(self.record(guest), migrating=True)))
        )
        restarted = Operations(self.store, self.core_clock)
        await restarted.migrations.recovered
        record = self.store.view.migrations[running.id]
        self.assertEqual((record.error, record.end_time), (RESTARTED, self.core_clock.seconds()))
        # It had left the source: where it is now, only a Cell's report can tell.
        self.assertEqual((self.record(guest).migrating, self.record(guest).lost), (False, True))
        self.assertEqual(restarted.migrations.get(running.id).error, RESTARTED)


class KCPMigrationTests(MigrationCase):
    """The same move with the Cells on KCP, as stock Cells link."""

    wire = "kcp"
    test_guests_move = MigrationTests.test_guests_move_with_their_claims


class FailoverTests(MigrationCase):
    failover = True

    def lose(self, cell: str) -> Deferred[list[str]]:
        """Kill ``cell`` (no goodbye; it stays away); the failover's record ids."""
        planned = self.ops.migrations.planned(cell)
        self.cells[cell]._reconnect_delay = 3600.0
        self.cells[cell].kill()
        return planned

    async def test_the_guests_of_a_lost_cell_are_re_placed(self) -> None:
        guests = [await self.guest_on(A, f"vm{i}") for i in range(3)]
        await self.reported()
        lost_at = self.core_clock.seconds()
        records = await self.lose(A)
        ended = [await self.ops.migrations.ended(r) for r in records]
        # No time had to pass: re-placed at the disconnect, in one scheduling round.
        self.assertEqual(self.core_clock.seconds(), lost_at)
        self.assertEqual({r.kind for r in ended}, {m.MigrationKind.FAILOVER})
        self.assertTrue(all(r.finished and not r.error for r in ended), ended)
        self.assertEqual(sorted(g for r in ended for g in r.instances), sorted(guests))
        for guest in guests:
            record = self.record(guest)
            self.assertIn(record.cell, (B, C))
            self.assertEqual((record.lost, record.migrating), (False, False))
            self.assertIn(guest, self.cells[record.cell].guests)
        # The scheduler spread them by headroom: both Cells took some.
        self.assertEqual({self.record(g).cell for g in guests}, {B, C})
        self.assertFalse(self.store.view.cells[A].enabled)
        listed = await self.ok("GET", "/migrations/")
        self.assertEqual(sorted(e["id"] for e in listed), sorted(records))
        await self.reported(B, C)
        self.assertEqual(self.moving(), [])
        # Back, the lost Cell lets go of its copies: the guests stay where they are now.
        detached = self.cells[A].until_received(MessageID.DetachInstanceRequest)
        await self.relinked(A)
        message = await detached
        self.assertEqual(set(message.string_array_params[ParamKey.Instance]), set(guests))
        self.assertEqual(self.cells[A].guests, {})
        self.assertEqual({self.record(g).cell for g in guests}, {B, C})

    async def test_guests_of_a_migration_cut_short_by_their_lost_cell_fail_over(self) -> None:
        """QA pass 25: left out of their Cell's failover (a migration fails on its own), they
        stayed lost on the dead Cell once the migration failed, Cells with room beside."""
        guests = [await self.guest_on(A, f"vm{i}") for i in range(2)]
        await self.reported()
        self.cells[A].inject(MessageID.DetachInstanceRequest, Fault(drop=True))
        told = self.cells[A].until_received(MessageID.DetachInstanceRequest)
        migration = (await self.ok("POST", "/migrations/", self.body(*guests, target=B)))["id"]
        await told  # attached on B, the detach on A unanswered
        planned = self.ops.migrations.planned(A)
        self.lose(A)
        ended = await self.ops.migrations.ended(migration)
        self.assertEqual(ended.error, f"detach instance fail: cell '{A}' is not connected")
        self.assertEqual(await planned, [])  # its failover at the loss: nothing but these
        records = await self.ops.migrations.planned(A)
        failed_over = [await self.ops.migrations.ended(r) for r in records]
        self.assertEqual(sorted(g for r in failed_over for g in r.instances), sorted(guests))
        for guest in guests:
            record = self.record(guest)
            self.assertIn(record.cell, (B, C))
            self.assertEqual((record.lost, record.migrating), (False, False))
            self.assertIn(guest, self.cells[record.cell].guests)

    async def test_a_cell_lost_while_the_store_cannot_save_fails_over_once_it_can(self) -> None:
        """Neither its guests' loss nor its failover could be recorded, and nothing tried
        again while the Cell stayed away: its guests stayed down, shown running, for good
        (QA pass 22, B2)."""
        guests = [await self.guest_on(A, f"vm{i}") for i in range(2)]
        await self.reported()
        full = self.store_cannot_save()
        self.assertEqual(await self.lose(A), [])  # the plan could not be recorded
        await self.commit(UnitOfWork(()))
        self.assertEqual([self.record(g).cell for g in guests], [A, A])
        self.assertFalse(any(self.record(g).lost for g in guests))
        # Still full at the next try: tried again later.
        planned = self.ops.migrations.planned(A)
        self.core_clock.advance(UNSAVED_RETRY)
        self.assertEqual(await planned, [])
        full[0] = False
        await self.reported(B, C)  # the Cells that take them report, as every 2 s
        planned = self.ops.migrations.planned(A)
        self.core_clock.advance(UNSAVED_RETRY)
        records = await planned
        ended = [await self.ops.migrations.ended(r) for r in records]
        self.assertEqual(sorted(g for r in ended for g in r.instances), sorted(guests))
        for guest in guests:
            record = self.record(guest)
            self.assertIn(record.cell, (B, C))
            self.assertEqual((record.lost, record.migrating), (False, False))

    async def test_the_targets_word_on_the_guests_it_took_is_read(self) -> None:
        """``InstanceMigratedEvent`` says where the guests are, not whether they run: once the
        failover ended, the target's inventory is taken, and the record says what it holds."""
        guest = await self.guest_on(A, "vm1")
        await self.reported()
        # What the lost Cell left on the export says running, Core's record stopped.
        self.cells[A].guests[guest].state = GuestState.RUNNING
        self.assertFalse(self.record(guest).running)
        (record,) = await self.lose(A)
        target = self.store.view.migrations[record].target_cell
        await self.ops.migrations.ended(record)
        # Two round trips: the pool push that takes the inventory, then its answer, are read.
        for _ in range(2):
            await self.ops.cells.storage_paths(POOL, target)
        await self.store.commit(UnitOfWork(()))
        self.assertEqual((self.record(guest).cell, self.record(guest).running), (target, True))
        self.assertTrue((await self.ok("GET", f"/guests/{guest}"))["running"])

    async def test_guests_without_room_are_reported_lost_with_reasons(self) -> None:
        await self.guest_on(B, "fillb", memory=24 * GiB)
        await self.guest_on(C, "fillc", memory=12 * GiB)
        guests = [await self.guest_on(A, f"vm{i}", memory=10 * GiB) for i in range(3)]
        await self.reported()
        lines: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(lines.append)
        self.addCleanup(globalLogPublisher.removeObserver, lines.append)
        records = await self.lose(A)
        ended = [await self.ops.migrations.ended(r) for r in records]
        unplaced = [r for r in ended if not r.target_cell]
        self.assertEqual(len(unplaced), 1)
        (left,) = unplaced[0].instances
        self.assertIn(f"instance '{left}'('team.{self.record(left).name}'): no cell has enough "
                      "memory: 10 GB", unplaced[0].error)  # fmt: skip
        placed = [g for g in guests if g != left]
        self.assertEqual({self.record(g).cell for g in placed}, {C})
        shown = await self.ok("GET", f"/guests/{left}")
        self.assertEqual((shown["lost"], shown["cell"]), (True, A))
        self.assertFalse(self.record(left).migrating)
        listed = {e["id"]: e for e in await self.ok("GET", "/migrations/")}
        self.assertEqual(listed[unplaced[0].id]["error"], unplaced[0].error)
        warned = [e for e in lines if "shown lost" in e.get("log_format", "")]
        self.assertEqual([(e["count"], e["guests"]) for e in warned],
                         [(1, f"{left} (team.{self.record(left).name})")])  # fmt: skip

    async def test_a_target_that_does_not_answer_leaves_the_guests_lost(self) -> None:
        guest = await self.guest_on(A, "vm1")
        await self.reported()
        for cell in (B, C):
            self.cells[cell].inject(MessageID.AttachInstanceRequest, Fault(drop=True))
        (record,) = await self.lose(A)
        self.assertTrue(self.record(guest).migrating)
        self.core_clock.advance(TIMEOUT)
        ended = await self.ops.migrations.ended(record)
        self.assertEqual(ended.error, f"attach instance timeout on cell '{ended.target_cell}'")
        record_now = self.record(guest)
        self.assertEqual(
            (record_now.cell, record_now.lost, record_now.migrating), (A, True, False)
        )
        self.assertEqual(self.moving(), [])

    async def test_a_target_that_refuses(self) -> None:
        guest = await self.guest_on(A, "vm1")
        await self.reported()
        for cell in (B, C):
            self.cells[cell].inject(MessageID.AttachInstanceRequest, Fault(error="no bridge"))
        (record,) = await self.lose(A)
        ended = await self.ops.migrations.ended(record)
        self.assertEqual(ended.error, "attach instance fail: no bridge")
        self.assertEqual((self.record(guest).lost, self.record(guest).migrating), (True, False))

    async def test_a_cell_back_during_its_failover_lets_go_of_the_guests_after_it(
        self,
    ) -> None:
        """The lost Cell rejoins while the target is still taking its guest: its rejoin leaves
        the guest in flight alone, and once the failover ended the Cell is reconciled at
        once, so it does not keep a copy of a guest another Cell serves."""
        guest = await self.guest_on(A, "vm1")
        await self.reported()
        told = {}
        for cell in (B, C):
            # The target takes the guest at once, and tells Core a second later.
            self.cells[cell].inject(MessageID.AttachInstanceRequest, Fault(delay=1.0))
            told[cell] = self.cells[cell].until_received(MessageID.AttachInstanceRequest)
        (record,) = await self.lose(A)
        target = self.store.view.migrations[record].target_cell
        await told[target]
        # A comes back (it still holds its copy) and rejoins its pool meanwhile.
        await self.rejoined_mid_failover(A)
        self.assertEqual(set(self.cells[A].guests), {guest})
        self.assertTrue(self.record(guest).migrating)
        # The failover ends: A is asked for its inventory again, and lets go of its copy.
        reconciled = self.ops.migrations.reconciled(A)
        detached = self.cells[A].until_received(MessageID.DetachInstanceRequest)
        self.cell_clock.advance(1.0)
        ended = await self.ops.migrations.ended(record)
        self.assertEqual((ended.finished, ended.error), (True, ""))
        await reconciled
        message = await detached
        self.assertEqual(message.string_array_params[ParamKey.Instance], (guest,))
        self.assertEqual(self.cells[A].guests, {})
        self.assertEqual(set(self.cells[target].guests), {guest})
        now = self.record(guest)
        self.assertEqual((now.cell, now.lost, now.migrating), (target, False, False))

    async def test_a_cell_back_during_a_failover_that_failed_keeps_its_guests(self) -> None:
        """No target took the guest: the Cell that came back meanwhile holds it, and its
        inventory, taken once the failover failed, shows it there again (not lost)."""
        guest = await self.guest_on(A, "vm1")
        await self.reported()
        for cell in (B, C):
            self.cells[cell].inject(MessageID.AttachInstanceRequest, Fault(drop=True))
        (record,) = await self.lose(A)
        await self.rejoined_mid_failover(A)
        self.assertTrue(self.record(guest).migrating)
        reconciled = self.ops.migrations.reconciled(A)
        self.core_clock.advance(TIMEOUT)
        ended = await self.ops.migrations.ended(record)
        self.assertEqual(ended.error, f"attach instance timeout on cell '{ended.target_cell}'")
        await reconciled
        now = self.record(guest)
        self.assertEqual((now.cell, now.lost, now.migrating), (A, False, False))
        self.assertEqual(set(self.cells[A].guests), {guest})

    async def test_a_graceful_stop_is_no_failover(self) -> None:
        guest = await self.guest_on(A, "vm1")
        gone = self.events.until_disconnected(A)
        self.cells[A]._reconnect_delay = 3600.0
        self.cells[A].close()
        await gone
        await self.ops.guests.access.serially(guest, lambda: succeed(None))
        self.assertEqual((self.record(guest).cell, self.record(guest).lost), (A, True))
        self.assertEqual(await self.ok("GET", "/migrations/"), [])

    async def test_a_migration_cut_short_by_a_graceful_stop_is_no_failover(self) -> None:
        guest = await self.guest_on(A, "vm1")
        self.cells[A].inject(MessageID.DetachInstanceRequest, Fault(drop=True))
        told = self.cells[A].until_received(MessageID.DetachInstanceRequest)
        migration = (await self.ok("POST", "/migrations/", self.body(guest)))["id"]
        await told
        self.cells[A]._reconnect_delay = 3600.0
        self.cells[A].close()
        self.assertTrue((await self.ops.migrations.ended(migration)).error)
        await self.ops.guests.access.serially(guest, lambda: succeed(None))
        self.assertEqual((self.record(guest).cell, self.record(guest).lost), (A, True))
        self.assertEqual([m["id"] for m in await self.ok("GET", "/migrations/")], [migration])


class FailoverAddressTests(FailoverTests):
    """Failover in a pool with a network: addresses go with their guests."""

    network = "net"

    def addresses(self) -> dict[str, str]:
        """Allocated address -> guest, as the store holds them."""
        return {a.address: a.instance for a in self.store.view.allocations.values()}

    def address_of(self, guest: str) -> str:
        return self.record(guest).internal.assigned_address.partition("/")[0]

    async def test_failed_over_guests_keep_their_addresses(self) -> None:
        await self.guest_on(B, "fillb", memory=24 * GiB)
        await self.guest_on(C, "fillc", memory=12 * GiB)
        guests = [await self.guest_on(A, f"vm{i}", memory=10 * GiB) for i in range(3)]
        await self.reported()
        before = {guest: self.address_of(guest) for guest in guests}
        allocated = self.addresses()
        self.assertEqual(len(set(before.values())), 3)
        self.assertEqual({allocated[a] for a in before.values()}, set(guests))
        records = await self.lose(A)
        ended = [await self.ops.migrations.ended(r) for r in records]
        (left,) = next(r for r in ended if not r.target_cell).instances
        placed = [g for g in guests if g != left]
        self.assertEqual({self.record(g).cell for g in placed}, {C})
        # Every guest keeps its address: those re-placed, and the one no Cell could take.
        self.assertEqual({guest: self.address_of(guest) for guest in guests}, before)
        self.assertEqual(self.addresses(), allocated)
        shown = await self.ok("GET", f"/guests/{left}")
        self.assertEqual((shown.get("lost"), shown["cell"]), (True, A))
        self.assertEqual(shown["internal"]["allocated_address"].partition("/")[0], before[left])
        # The target serves them with those addresses; its inventory agrees.
        for guest in placed:
            self.assertEqual(self.cells[C].guests[guest].internal_address.partition("/")[0],
                             before[guest])  # fmt: skip
        await self.rejoined(C)
        self.assertEqual({guest: self.address_of(guest) for guest in guests}, before)
        # A new guest gets an address nobody holds.
        fresh = await self.created(name="fresh", pool=POOL, memory=2 * GiB)
        self.assertNotIn(self.address_of(fresh), allocated)
        self.assertEqual(self.addresses()[self.address_of(fresh)], fresh)
        self.assertEqual(len(self.addresses()), len(allocated) + 1)
