"""The Cell lifecycle on Core: connect, rejoin with inventory, purge, disconnects; add claims."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import fail

from nanocore import model as m
from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.cluster.transactions import reply_to
from nanocore.operations.cells import CELL_JOINING
from nanocore.operations.errors import InvalidRequest, OperationTimeout
from nanocore.store import StoreError, UnitOfWork
from tests.cellfixtures import TIMEOUT, HarnessTestCase, instance, ready, status_report

CELL = "Cell_0000000000a1"


def inventory_of(*guests: m.Instance) -> dict[str, Any]:
    """The ready-event fields a Cell sends for ``guests``."""
    return {
        "uint_params": {ParamKey.Count: len(guests)},
        "string_array_params": {
            ParamKey.Name: tuple(f"{g.group}.{g.name}" for g in guests),
            ParamKey.Instance: tuple(g.id for g in guests),
            ParamKey.User: tuple(g.owner for g in guests),
            ParamKey.Group: tuple(g.group for g in guests),
            ParamKey.Secret: tuple("" for _ in guests),
            ParamKey.Address: tuple("" for _ in guests),
            ParamKey.System: tuple("linux" for _ in guests),
            ParamKey.Create: tuple("12345" for _ in guests),  # not Core's format: kept as known
            ParamKey.Internal: tuple("" for _ in guests),
            ParamKey.External: tuple("" for _ in guests),
            ParamKey.Hardware: tuple("" for _ in guests),
        },
        "uint_array_params": {
            ParamKey.Core: tuple(g.cores for g in guests),
            ParamKey.Option: tuple(0 for _ in guests),
            ParamKey.Enable: tuple(1 for _ in guests),
            ParamKey.Progress: tuple(0 for _ in guests),
            ParamKey.Status: tuple(int(g.running) for g in guests),
            ParamKey.Monitor: tuple(5901 for _ in guests),
            ParamKey.Memory: tuple(g.memory for g in guests),
            ParamKey.Count: tuple(len(g.disks) for g in guests),
            ParamKey.Disk: tuple(size for g in guests for size in g.disks),
            ParamKey.Priority: tuple(0 for _ in guests),
            ParamKey.Limit: tuple(0 for _ in guests for _ in range(6)),
        },
    }


class CellLifecycleTests(HarnessTestCase):
    async def settle(self) -> None:
        """Let commits started by an observer callback finish (one round through the store)."""
        await self.h.store.commit(UnitOfWork(()))

    async def test_unknown_cell_becomes_unallocated_without_messages(self) -> None:
        self.h.connect(CELL)
        self.assertEqual([v.name for v in self.h.cells.unallocated()], [CELL])
        self.assertEqual(self.h.directory.requests, [])
        self.assertNotIn(CELL, self.h.store.view.cells)

    async def test_member_reconnect_rejoins_and_reconciles_its_inventory(self) -> None:
        await self.h.member(CELL, "shared")
        kept = instance("kept", CELL, lost=True, create_time="2024-01-02 03:04:05")
        gone = instance("gone", CELL)
        await self.h.put(kept, gone)
        fresh = instance("fresh", CELL, status=m.InstanceStatus.RUNNING)
        self.h.directory.responders[CELL] = lambda request: ready(
            request, **inventory_of(kept, fresh)
        )
        self.h.connect(CELL)
        push = self.h.directory.last_request(CELL)
        self.assertEqual(push.id, MessageID.ComputePoolReadyEvent)
        self.assertEqual(push.string_params[ParamKey.Mode], "cloudinit")
        await self.settle()
        instances = self.h.store.view.instances
        # Adopted, updated, and the one the Cell lacks kept as lost (never deleted).
        self.assertEqual(sorted(instances), ["fresh", "gone", "kept"])
        self.assertTrue(instances["gone"].lost)
        self.assertFalse(instances["kept"].lost)
        self.assertEqual(instances["kept"].create_time, "2024-01-02 03:04:05")
        self.assertTrue(instances["fresh"].running)
        self.assertEqual(instances["fresh"].internal.monitor_address, "127.0.0.1")

    async def test_rejoin_timeout_changes_nothing(self) -> None:
        await self.h.member(CELL, "shared")
        await self.h.put(instance("kept", CELL))
        self.h.connect(CELL)
        self.h.clock.advance(TIMEOUT)
        await self.settle()
        self.assertEqual(list(self.h.store.view.instances), ["kept"])
        self.assertEqual(self.h.store.view.cells[CELL].pool, "shared")

    async def test_malformed_inventory_is_refused_whole(self) -> None:
        await self.h.member(CELL, "shared")
        await self.h.put(instance("kept", CELL))
        self.h.directory.responders[CELL] = lambda request: ready(
            request, uint_params={ParamKey.Count: 2}
        )
        self.h.connect(CELL)
        await self.settle()
        self.assertEqual(list(self.h.store.view.instances), ["kept"])

    async def test_purge_pending_cell_is_purged_on_connect(self) -> None:
        await self.h.member(CELL, "shared", enabled=False, purge_pending=True)
        await self.h.put(instance("a", CELL), instance("b", CELL))
        self.h.directory.responders[CELL] = lambda request: reply_to(request)
        self.h.connect(CELL)
        detach = self.h.directory.last_request(CELL)
        self.assertEqual(detach.id, MessageID.DetachInstanceRequest)
        self.assertEqual(detach.string_array_params.get(ParamKey.Instance, ()), ())
        self.assertEqual(len(self.h.directory.requests), 1)  # no pool push
        await self.settle()
        self.assertEqual(dict(self.h.store.view.instances), {})
        self.assertEqual(
            self.h.store.view.cells[CELL],
            m.ComputeCell(name=CELL, pool="shared", enabled=False, purge_pending=False),
        )

    async def test_failed_purge_keeps_the_flag_and_instances(self) -> None:
        await self.h.member(CELL, "shared", enabled=False, purge_pending=True)
        await self.h.put(instance("a", CELL))
        self.h.directory.responders[CELL] = lambda request: reply_to(
            request, success=False, error="busy"
        )
        self.h.connect(CELL)
        await self.settle()
        self.assertEqual(list(self.h.store.view.instances), ["a"])
        self.assertTrue(self.h.store.view.cells[CELL].purge_pending)

    async def test_graceful_disconnect_marks_instances_lost(self) -> None:
        await self.h.member(CELL, "shared")
        await self.h.put(instance("a", CELL), instance("b", CELL, lost=True))
        self.h.connect(CELL)
        self.h.directory.disconnect(CELL, gracefully=True)
        await self.settle()
        self.assertEqual({i.lost for i in self.h.store.view.instances.values()}, {True})
        self.assertFalse(self.h.cells.alive(CELL))

    async def test_ungraceful_disconnect_in_failover_pool_marks_lost(self) -> None:
        await self.h.member(CELL, "shared")
        await self.h.put(instance("a", CELL))
        self.h.connect(CELL)
        self.h.directory.disconnect(CELL, gracefully=False)
        await self.settle()
        self.assertTrue(self.h.store.view.instances["a"].lost)

    async def test_disconnect_of_an_unallocated_cell_changes_nothing(self) -> None:
        self.h.connect(CELL)
        self.h.directory.disconnect(CELL)
        self.assertEqual([(v.name, v.alive) for v in self.h.cells.unallocated()], [(CELL, False)])

    async def test_other_events_are_left_for_later_issues(self) -> None:
        await self.h.member(CELL, "shared")
        self.h.cells.cell_event(CELL, Message(id=MessageID.GuestStartedEvent))
        self.h.cells.cell_status(CELL, status_report())
        self.assertEqual(self.h.directory.requests, [])


class AddClaimTests(HarnessTestCase):
    """The add holds its Cell's claim across the wait, and never leaks it."""

    async def _open_harness(self) -> None:
        await super()._open_harness()
        self.h.connect(CELL)

    def joining(self) -> list[tuple[object, str]]:
        return [(c.key, c.value) for c in self.h.operations.context.claims.live(CELL_JOINING)]

    async def test_claim_held_across_the_wait_and_released_on_success(self) -> None:
        adding = self.h.cells.add("shared", CELL)
        self.assertEqual(self.joining(), [(CELL, "shared")])
        self.failureResultOf(self.h.cells.add("local", CELL), InvalidRequest)
        self.h.directory.answer(ready(self.h.directory.last_request(CELL)), CELL)
        await adding
        self.assertEqual(self.joining(), [])
        self.assertEqual(self.h.store.view.cells[CELL].pool, "shared")

    async def test_timed_out_cell_releases_the_claim(self) -> None:
        adding = self.h.cells.add("shared", CELL)
        self.h.clock.advance(TIMEOUT)
        self.failureResultOf(adding, OperationTimeout)
        self.assertEqual(self.joining(), [])
        self.assertEqual([v.name for v in self.h.cells.unallocated()], [CELL])

    async def test_failing_commit_releases_the_claim(self) -> None:
        self.patch(self.h.store, "commit", lambda unit: fail(StoreError("disk full")))
        self.h.directory.responders[CELL] = ready
        failure = self.failureResultOf(self.h.cells.add("shared", CELL), StoreError)
        self.assertEqual(str(failure.value), "disk full")
        self.assertEqual(self.joining(), [])
        # The Cell applied the pool, Core did not record it: the Cell is told to drop it.
        self.assertEqual(
            [(name, message.id) for name, message in self.h.directory.sent],
            [(CELL, MessageID.ComputeCellRemovedEvent)],
        )
        self.assertNotIn(CELL, self.h.store.view.cells)

    async def test_cancelled_add_releases_the_claim(self) -> None:
        adding = self.h.cells.add("shared", CELL)
        adding.cancel()
        self.failureResultOf(adding)
        self.assertEqual(self.joining(), [])
