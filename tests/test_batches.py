"""Batch create, delete and stop, and their polls (api-reference §4.14, §6 point 3).

End to end through the signed API on FakeCells over loopback TLS (and KCP): polls answer 202
then 200, members are named as Nano names them, the request is checked up front and each
member's state is its own. 200 creates in one batch into a pool that fits 150 create exactly
150, on Cells that had room. Batches are stored: clock-driven cases over a scripted Cell
directory show stalls, expiry and what a restart keeps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attrs import evolve
from twisted.internet.defer import Deferred
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher

from nanocore import model as m
from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.cluster.transactions import reply_to
from nanocore.operations.batches import EXPIRE_AFTER, MAX_MEMBERS, STALL_AFTER
from nanocore.store import Delete, Put, Store, UnitOfWork
from nanocore.testing.fakecell import Capacity
from tests.cellfixtures import GiB, Harness, HarnessTestCase, open_store, status_report
from tests.guestfixtures import GuestClusterCase, reactor


class BatchCase(GuestClusterCase):
    async def poll(self, kind: str, batch: str, status: int) -> list[dict[str, Any]]:
        members: list[dict[str, Any]] = await self.ok(
            "GET", f"/batch/{kind}_guest/{batch}", status=status
        )
        return members

    async def start(self, kind: str, body: Any) -> str:
        answer = await self.ok("POST", f"/batch/{kind}_guest/", body, status=202)
        batch: str = answer["id"]
        return batch

    def batch_body(self, count: int, **fields: Any) -> dict[str, Any]:
        body = self.guest_body(**fields)
        del body["name"]
        body.update(name_rule="order", name_prefix="vm", count=count)
        return body

    async def all_applied(
        self,
        message_id: int,
        guests: list[str],
        advance: float,
        waiting: list[Deferred[Message]] | None = None,
    ) -> None:
        """Once the Cells hold every request the batch sent, move their clock; return once
        each guest's event is applied by Core. ``waiting``: the waits, when the events may
        come before this is called (a delete's come with the Cell's answer)."""
        if waiting is None:
            waiting = self.expect(message_id, guests)
        # A batch answers before its Cells are asked to; a later request to each Cell is
        # answered only after they have read the batch's requests ahead of it on the link.
        for name in self.CELLS:
            await self.ops.cells.storage_paths("default", name)
        self.cell_clock.advance(advance)
        for guest, event in zip(guests, waiting, strict=True):
            await self.applied(event, guest)

    def expect(self, message_id: int, guests: list[str]) -> list[Deferred[Message]]:
        return [self.events.until(message_id, guest) for guest in guests]


class BatchLifecycleTests(BatchCase):
    """Over TLS; the subclass below runs it over KCP."""

    async def test_create_stop_delete_with_polls(self) -> None:
        batch = await self.start("create", self.batch_body(3, auto_start=True))
        members = await self.poll("create", batch, 202)
        self.assertEqual(
            [(m["name"], m["status"], m["progress"]) for m in members],
            [("vm_0", "creating", 0), ("vm_1", "creating", 0), ("vm_2", "creating", 0)],
        )
        guests = [member["id"] for member in members]
        self.assertEqual(sorted(guests), sorted(i.id for i in self.store.view.instances.values()))
        await self.all_applied(MessageID.GuestStartedEvent, guests, 1.0)
        members = await self.poll("create", batch, 200)
        self.assertEqual(
            [(m["name"], m["id"], m["status"], m["progress"]) for m in members],
            [(f"vm_{i}", guests[i], "created", 100) for i in range(3)],
        )
        self.assertTrue(all("error" not in m for m in members))

        stop = await self.start("stop", {"guest": guests})
        members = await self.poll("stop", stop, 202)
        # The stop and delete polls show the stored name (observed-with-cells point 1).
        self.assertEqual(
            [(m["name"], m["status"]) for m in members],
            [(f"team.vm_{i}", "stopping") for i in range(3)],
        )
        await self.all_applied(MessageID.GuestStoppedEvent, guests, 1.0)
        for guest in guests:
            cell = self.cells[self.store.view.instances[guest].cell]
            asked = [r for r in cell.received if r.id == MessageID.StopInstanceRequest]
            self.assertEqual(asked[-1].uint_array_params[ParamKey.Option], (0, 0))
        members = await self.poll("stop", stop, 200)
        self.assertEqual({m["status"] for m in members}, {"stopped"})

        deleted = self.expect(MessageID.GuestDeletedEvent, guests)
        delete = await self.start("delete", {"guest": guests, "force": True})
        await self.all_applied(MessageID.GuestDeletedEvent, guests, 0.0, deleted)
        members = await self.poll("delete", delete, 200)
        self.assertEqual(
            [(m["name"], m["id"], m["status"]) for m in members],
            [(f"team.vm_{i}", guests[i], "deleted") for i in range(3)],
        )
        self.assertEqual(dict(self.store.view.instances), {})
        self.assertEqual(self.claims(), [])
        # Each batch is a stored record; finished ones stay until they expire.
        self.assertEqual(
            {t.kind for t in self.store.view.batch_tasks.values()},
            {m.BatchKind.CREATE, m.BatchKind.STOP, m.BatchKind.DELETE},
        )


class BatchLifecycleOverKCPTests(BatchLifecycleTests):
    wire = "kcp"


class BatchCheckTests(BatchCase):
    async def test_create_is_checked_up_front_in_nanos_order(self) -> None:
        full = self.batch_body(2)
        order = ("name_prefix", "owner", "group", "pool", "template", "cores", "memory")
        messages = ("prefix required", "owner required", "group required",
                    "target pool required", "system template required", "cores required",
                    "memory required")  # fmt: skip
        for index, message in enumerate(messages):
            lacking = {k: v for k, v in full.items() if k not in order[index:]}
            self.assertEqual(await self.refused("POST", "/batch/create_guest/", lacking), message)
        cases: list[tuple[dict[str, Any], str]] = [
            ({"name_rule": ""}, "invalid name rule ''"),
            ({"name_rule": "random"}, "invalid name rule 'random'"),
            ({"name_prefix": "v.m"}, "only '0~9a~Z_-' allowed in prefix"),
            ({"count": 0}, "guest count required"),
            ({"count": MAX_MEMBERS + 1}, f"guest count {MAX_MEMBERS + 1} over the limit of "
             f"{MAX_MEMBERS}"),
            ({"pool": "nope"}, "invalid compute pool 'nope'"),
            ({"name_rule": "MAC"}, "unsupport name rule 1"),
            ({"name_rule": "address"}, "unsupport name rule 2"),
            ({"template": "nope"}, "invalid template 'nope'"),
            ({"disks": []}, "must specify disk size"),
            ({"qos": {"cpu_priority": "max"}}, "invalid CPU priority max"),
            ({"from_image": "nope"}, "invalid disk image 'nope'"),
        ]  # fmt: skip
        for changes, message in cases:
            body = {**full, **changes}
            self.assertEqual(await self.refused("POST", "/batch/create_guest/", body), message)
        self.assertEqual(await self.refused("POST", "/batch/create_guest/"), "EOF")
        # Nothing was created, claimed, sent or recorded.
        self.assertEqual(dict(self.store.view.instances), {})
        self.assertEqual(dict(self.store.view.batch_tasks), {})
        self.assertEqual(self.claims(), [])
        self.assertFalse(any(cell.guests for cell in self.cells.values()))

    async def test_delete_and_stop_are_checked_up_front(self) -> None:
        batch = await self.start("create", self.batch_body(1))
        guest = (await self.poll("create", batch, 202))[0]["id"]
        for kind in ("delete", "stop"):
            path = f"/batch/{kind}_guest/"
            for body, message in (
                ({}, "guest id required"),
                ({"guest": [guest, "nope"]}, "invalid guest 'nope'"),
                ({"guest": [guest, guest]}, f"guest '{guest}' listed twice"),
                ({"guest": "x"}, "json: cannot unmarshal string into Go struct field "
                 "UserRequest.guest of type []string"),
            ):  # fmt: skip
                self.assertEqual(await self.refused("POST", path, body), message)
        self.assertEqual(list(self.store.view.batch_tasks), [batch])

    async def test_polls_of_unknown_or_other_batches(self) -> None:
        batch = await self.start("create", self.batch_body(1))
        for path in ("/batch/create_guest/nope", f"/batch/delete_guest/{batch}",
                     f"/batch/stop_guest/{batch}"):  # fmt: skip
            self.assertEqual(
                await self.refused("GET", path), f"invalid batch task '{path.rsplit('/')[-1]}'"
            )

    async def test_members_fail_on_their_own(self) -> None:
        """The same batch again: every member fails, the batch is accepted (observed point 2)."""
        first = await self.start("create", self.batch_body(2))
        guests = [m["id"] for m in await self.poll("create", first, 202)]
        again = await self.start("create", self.batch_body(2))
        members = await self.poll("create", again, 200)
        self.assertEqual(
            [(m["name"], m["id"], m["status"], m.get("error")) for m in members],
            [(f"vm_{i}", "", "fail", f"instance 'team.vm_{i}' already exists in pool 'default'")
             for i in range(2)],
        )  # fmt: skip
        # A stop of guests that are not running: accepted, its members fail.
        await self.all_applied(MessageID.GuestCreatedEvent, guests, 1.0)
        stop = await self.start("stop", {"guest": guests})
        members = await self.poll("stop", stop, 200)
        self.assertEqual(
            [(m["status"], m["error"]) for m in members],
            [("fail", f"instance '{guest}' already stopped") for guest in guests],
        )

    async def test_a_pool_without_cells(self) -> None:
        """Observed without Cells (point 5): 202, then every member fails with the reason."""
        await self.ok("POST", "/compute_pools/empty")
        batch = await self.start("create", self.batch_body(2, pool="empty"))
        members = await self.poll("create", batch, 200)
        self.assertEqual(
            [(m["id"], m["status"], m["error"]) for m in members],
            [("", "fail", "no cell has enough disk: 20 GB; pool 'empty' has no cells")] * 2,
        )


class BatchCapacityTests(BatchCase):
    """Three Cells of 50 GiB each: a pool that fits 150 guests of 1 GiB."""

    CELLS = ("Cell_00000000c001", "Cell_00000000c002", "Cell_00000000c003")
    capacity = Capacity(cores=64, memory=50 * GiB, disk=1000 * GiB)

    async def test_200_into_a_pool_that_fits_150(self) -> None:
        body = self.batch_body(200, cores=1, memory=GiB, disks=[10 * GiB], auto_start=True)
        batch = await self.start("create", body)
        members = await self.poll("create", batch, 202)
        placed = [m for m in members if m["status"] == "creating"]
        refused = [m for m in members if m["status"] == "fail"]
        self.assertEqual((len(placed), len(refused)), (150, 50))
        for member in refused:
            self.assertEqual(member["id"], "")
            self.assertTrue(
                member["error"].startswith("no cell has enough memory: 1 GB; "), member
            )
            for cell in self.CELLS:
                self.assertIn(f"{cell}: memory 0 B free < 1 GB", member["error"])
        guests = [m["id"] for m in placed]
        self.assertEqual(len(set(guests)), 150)
        await self.all_applied(MessageID.GuestStartedEvent, guests, 1.0)
        members = await self.poll("create", batch, 200)
        self.assertEqual(sorted(m["status"] for m in members), ["created"] * 150 + ["fail"] * 50)
        # Every guest is on a Cell that had room for it, none over.
        held = {name: len(cell.guests) for name, cell in self.cells.items()}
        self.assertEqual(held, dict.fromkeys(self.CELLS, 50))
        self.assertEqual({i.cell for i in self.store.view.instances.values()}, set(self.CELLS))

        stop = await self.start("stop", {"guest": guests, "force": True})
        self.assertEqual({m["status"] for m in await self.poll("stop", stop, 202)}, {"stopping"})
        await self.all_applied(MessageID.GuestStoppedEvent, guests, 1.0)
        self.assertEqual({m["status"] for m in await self.poll("stop", stop, 200)}, {"stopped"})

        deleted = self.expect(MessageID.GuestDeletedEvent, guests)
        delete = await self.start("delete", {"guest": guests})
        await self.all_applied(MessageID.GuestDeletedEvent, guests, 0.0, deleted)
        self.assertEqual(
            {m["status"] for m in await self.poll("delete", delete, 200)}, {"deleted"}
        )
        self.assertEqual(dict(self.store.view.instances), {})
        self.assertFalse(any(cell.guests for cell in self.cells.values()))
        await self.reported()
        self.assertEqual(self.claims(), [])


# -- clock-driven: stall, expiry, restart --------------------------------------------------------


def answering(request: Message) -> Message | None:
    """A Cell that accepts every create (not created yet), stop and delete at once."""
    if request.id == MessageID.CreateGuestRequest:
        return reply_to(
            request,
            string_params={ParamKey.Instance: request.string_params[ParamKey.Instance]},
            bool_params={ParamKey.Enable: False},
        )
    if request.id in (MessageID.StopInstanceRequest, MessageID.DeleteGuestRequest):
        return reply_to(request)
    return None


class BatchRecordTests(HarnessTestCase):
    CELL = "Cell_record01"

    async def _open_harness(self) -> None:
        self.path = Path(self.mktemp())
        store = await open_store(str(self.path))
        self.addCleanup(store.close)
        self.h = Harness(store)
        await self.h.member(self.CELL, "local")
        self.h.connect(self.CELL, status_report())
        self.h.directory.responders[self.CELL] = answering

    def body(self, count: int) -> dict[str, Any]:
        return {
            "name_rule": "order", "name_prefix": "vm", "count": count, "owner": "alice",
            "group": "team", "pool": "local", "template": next(iter(self.h.store.view.templates)),
            "cores": 1, "memory": GiB, "disks": [10 * GiB],
        }  # fmt: skip

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        answer = await self.h.api.request(method, path, body)
        document = answer.envelope()
        if document["error_code"]:
            return answer.status, document["message"]
        return answer.status, document["data"]

    async def created(self, store: Store, guest: str) -> None:
        """The guest's record becomes created, as a Cell's event or inventory makes it."""
        record = store.view.instances[guest]
        await store.commit(UnitOfWork.of(Put(evolve(record, status=m.InstanceStatus.STOPPED))))

    async def test_a_stalled_batch_finishes_then_expires(self) -> None:
        _, answer = await self.call("POST", "/batch/create_guest/", self.body(2))
        batch = answer["id"]
        path = f"/batch/create_guest/{batch}"
        self.assertEqual((await self.call("GET", path))[0], 202)
        self.h.clock.advance(STALL_AFTER - 1)
        self.assertEqual((await self.call("GET", path))[0], 202)
        self.h.clock.advance(1)
        status, members = await self.call("GET", path)
        # Finished without progress: 200, members keep the state they were last seen in.
        self.assertEqual((status, {m["status"] for m in members}), (200, {"creating"}))
        await self.h.store.commit(UnitOfWork.of())  # the finished batch is recorded
        self.h.clock.advance(EXPIRE_AFTER - 1)
        self.assertEqual((await self.call("GET", path))[0], 200)
        self.h.clock.advance(1)
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        for _ in range(3):  # each read sweeps; the removal is committed once
            self.assertEqual(await self.call("GET", path), (200, f"invalid batch task '{batch}'"))
        await self.h.store.commit(UnitOfWork.of())  # after the removal, in commit order
        self.assertNotIn(batch, self.h.store.view.batch_tasks)
        self.assertEqual([e for e in observer if e["log_level"] > LogLevel.info], [])

    async def test_progress_keeps_a_batch_alive(self) -> None:
        _, answer = await self.call("POST", "/batch/create_guest/", self.body(2))
        path = f"/batch/create_guest/{answer['id']}"
        guests = [m["id"] for m in (await self.call("GET", path))[1]]
        self.h.clock.advance(STALL_AFTER - 1)
        await self.created(self.h.store, guests[0])
        self.assertEqual((await self.call("GET", path))[0], 202)
        self.h.clock.advance(STALL_AFTER - 1)
        status, members = await self.call("GET", path)
        self.assertEqual((status, [m["status"] for m in members]), (202, ["created", "creating"]))

    async def test_a_restart_keeps_batches_and_follows_them_from_the_records(self) -> None:
        _, answer = await self.call("POST", "/batch/create_guest/", self.body(2))
        batch = answer["id"]
        guests = [m["id"] for m in (await self.call("GET", f"/batch/create_guest/{batch}"))[1]]
        await self.h.store.close()

        store = await Store.open(self.path, reactor)
        self.addCleanup(store.close)
        task = store.view.batch_tasks[batch]
        self.assertEqual(
            [(g.name, g.id, g.status) for g in task.guests],
            [(f"vm_{i}", guests[i], m.BatchStatus.PROCESSING) for i in range(2)],
        )
        await self.created(store, guests[0])
        await store.commit(UnitOfWork.of(Delete(m.Instance, guests[1])))
        after = Harness(store)
        answer = await after.api.request("GET", f"/batch/create_guest/{batch}")
        members = answer.envelope()["data"]
        self.assertEqual(
            (answer.status, [(m["status"], m.get("error")) for m in members]),
            (200, [("created", None), ("fail", f"invalid instance '{guests[1]}'")]),
        )
        for _ in range(2):  # the record written after each change, in commit order
            await store.commit(UnitOfWork.of())
        self.assertTrue(store.view.batch_tasks[batch].finished)
