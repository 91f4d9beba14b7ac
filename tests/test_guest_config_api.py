"""Changing a guest end to end: the signed API, the real store, FakeCells over loopback TLS.

Rename, cores, memory, auto start, QoS, disk resize and shrink, the guest OS password, each
with its validation errors and Nano's messages (api-reference §4.6, observed-with-cells);
growth checked against the Cell's capacity through the claims; two renames to one name.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, DeferredList, gatherResults

from nanocore.cluster.message import MessageID, ParamKey
from nanocore.operations.guests.placement import GUEST_NAME
from nanocore.testing.fakecell import Capacity, Fault
from tests.guestfixtures import GiB, GuestClusterCase


class RenameTests(GuestClusterCase):
    creation_time = 0.0

    async def test_rename_keeps_the_group(self) -> None:
        guest = await self.created()
        cell = self.cells[self.store.view.instances[guest].cell]
        self.assertEqual(await self.ok("PUT", f"/guests/{guest}/name/", {"name": "web"}), "")
        request = [r for r in cell.received if r.id == MessageID.ModifyGuestNameRequest][-1]
        self.assertEqual(request.string_params, {ParamKey.Guest: guest, ParamKey.Name: "team.web"})
        self.assertEqual((await self.ok("GET", f"/guests/{guest}"))["name"], "team.web")
        self.assertEqual(cell.guests[guest].name, "team.web")
        # The full name a client read back is taken as the name in the guest's group.
        await self.ok("PUT", f"/guests/{guest}/name/", {"name": "team.db"})
        self.assertEqual(self.store.view.instances[guest].name, "db")
        self.assertIsNone(self.store.view.instance_named("default", "team", "vm1"))
        self.assertEqual(self.ops.context.claims.live(GUEST_NAME), [])

    async def test_refusals(self) -> None:
        guest = await self.created()
        await self.created(name="vm2")
        path = f"/guests/{guest}/name/"
        for body, message in (
            (None, "EOF"),
            ({}, "guest name required"),
            ({"name": "a b"}, "invalid guest name 'a b': illegal char ' '"),
            ({"name": "other.web"}, "invalid guest name 'other.web': illegal char '.'"),
            ({"name": "vm1"}, "no need to change"),
            ({"name": "vm2"}, "instance 'team.vm2' already exists in pool 'default'"),
        ):
            self.assertEqual(await self.refused("PUT", path, body), message, body)
        self.assertEqual(
            await self.refused("PUT", "/guests/nope/name/", {"name": "x"}),
            "invalid instance 'nope'",
        )
        await self.started(guest)
        self.assertEqual(
            await self.refused("PUT", path, {"name": "web"}), "guest 'team.vm1' is still running"
        )
        self.assertEqual(self.store.view.instances[guest].name, "vm1")

    async def test_a_cell_refusal_changes_nothing(self) -> None:
        guest = await self.created()
        cell = self.cells[self.store.view.instances[guest].cell]
        cell.inject(MessageID.ModifyGuestNameRequest, Fault(error="rename failed"))
        message = await self.refused("PUT", f"/guests/{guest}/name/", {"name": "web"})
        self.assertEqual(message, "rename failed")
        self.assertEqual(self.store.view.instances[guest].name, "vm1")
        # The name was not kept claimed: it can be taken now.
        await self.ok("PUT", f"/guests/{guest}/name/", {"name": "web"})

    async def test_two_renames_to_one_name_exactly_one_wins(self) -> None:
        first = await self.created()
        second = await self.created(name="vm2")
        for guest in (first, second):  # both Cells answer late, so both asks overlap
            cell = self.cells[self.store.view.instances[guest].cell]
            cell.inject(MessageID.ModifyGuestNameRequest, Fault(delay=0.5))
        arrived = DeferredList(
            [c.until_received(MessageID.ModifyGuestNameRequest) for c in self.cells.values()],
            fireOnOneCallback=True,
        )
        racing = [
            Deferred.fromCoroutine(self.call("PUT", f"/guests/{g}/name/", {"name": "web"}))
            for g in (first, second)
        ]
        await arrived
        self.cell_clock.advance(0.5)
        answers = [a.envelope() for a in await gatherResults(racing)]
        self.assertEqual(sorted(a["error_code"] for a in answers), [0, 500])
        loser = next(a for a in answers if a["error_code"])
        self.assertEqual(loser["message"], "instance 'team.web' already exists in pool 'default'")
        names = sorted(self.store.view.instances[g].name for g in (first, second))
        self.assertEqual(names, ["vm1", "web"] if names[0] == "vm1" else ["vm2", "web"])
        asked = sum(
            1
            for cell in self.cells.values()
            for r in cell.received
            if r.id == MessageID.ModifyGuestNameRequest
        )
        self.assertEqual(asked, 1)  # the loser never reached a Cell


class ModifyTests(GuestClusterCase):
    creation_time = 0.0

    async def test_cores_memory_auto_start_priority(self) -> None:
        guest = await self.created()
        cell = self.cells[self.store.view.instances[guest].cell]
        base = f"/guests/{guest}"
        await self.ok("PUT", base + "/cores", {"cores": 4, "immediate": True})
        await self.ok("PUT", base + "/memory", {"memory": 4 * GiB})
        await self.ok("PUT", base + "/auto_start", {"enable": True})
        await self.ok("PUT", base + "/qos/cpu", {"priority": "medium"})
        await self.ok("PUT", base + "/qos/network", {"receive_speed": 100, "send_speed": 50})
        await self.ok(
            "PUT",
            base + "/qos/disk",
            {"read_speed": 1, "read_iops": 2, "write_speed": 3, "write_iops": 4},
        )
        shown = await self.ok("GET", base)
        self.assertEqual(
            (shown["cores"], shown["memory"], shown["auto_start"], shown["qos"]),
            (4, 4 * GiB, True, {"cpu_priority": "medium", "write_speed": 3, "write_iops": 4,
                                "read_speed": 1, "read_iops": 2, "receive_speed": 100,
                                "send_speed": 50}),
        )  # fmt: skip
        simulated = cell.guests[guest]
        self.assertEqual(
            (simulated.cores, simulated.memory, simulated.auto_start, simulated.priority),
            (4, 4 * GiB, True, 1),
        )
        # Limit:u[4] is read B/s, write B/s, read IOPS, write IOPS; then receive, send.
        self.assertEqual(simulated.limits, [1, 3, 2, 4, 100, 50])

    async def test_refusals_in_nanos_words(self) -> None:
        guest = await self.created()
        base = f"/guests/{guest}"
        for method_path, body, message in (
            ("/cores", {"cores": 2}, "no need to modify"),
            ("/cores", {}, "cores required"),
            ("/cores", {"cores": -1}, "json: cannot unmarshal number -1 into Go struct field "
                                      "request.cores of type uint64"),
            ("/memory", {"memory": 2 * GiB}, "no need to modify"),
            ("/memory", {"memory": 0}, "memory required"),
            ("/auto_start", {"enable": False}, "auto start of guest 'team.vm1' already disabled"),
            ("/qos/cpu", {"priority": "high"}, "no need to change"),
            ("/qos/network", {}, "no need to change"),
            ("/qos/network", {"send_speed": 2**63}, f"invalid send speed {2**63}"),
            ("/qos/disk", {}, "no need to change"),
        ):  # fmt: skip
            self.assertEqual(await self.refused("PUT", base + method_path, body), message)
        # A bad priority is refused before the guest is looked up (observed-with-cells).
        self.assertEqual(await self.refused("PUT", "/guests/nope/qos/cpu", {}),
                         "invalid CPU priority ")  # fmt: skip
        self.assertEqual(await self.refused("PUT", "/guests/nope/cores", {"cores": 3}),
                         "invalid instance 'nope'")  # fmt: skip
        await self.ok("PUT", base + "/auto_start", {"enable": True})
        self.assertEqual(await self.refused("PUT", base + "/auto_start", {"enable": True}),
                         "auto start of guest 'team.vm1' already enabled")  # fmt: skip
        await self.started(guest)
        self.assertEqual(
            await self.refused("PUT", base + "/qos/disk", {"read_iops": 5}),
            f"instance team.vm1 ('{guest}') is still running",
        )

    async def test_only_the_changed_field_is_written_after_the_cell_answers(self) -> None:
        """The original wrote back the record it read before asking; here a change made by
        a Cell event meanwhile (the guest started) survives the cores change."""
        guest = await self.created()
        cell = self.cells[self.store.view.instances[guest].cell]
        cell.inject(MessageID.ModifyCoreRequest, Fault(delay=1.0))
        arrived = cell.until_received(MessageID.ModifyCoreRequest)
        changing = Deferred.fromCoroutine(self.ok("PUT", f"/guests/{guest}/cores", {"cores": 6}))
        self.assertEqual(self.store.view.instances[guest].cores, 2)  # not before the Cell says
        self.assertEqual(
            await self.refused("PUT", f"/guests/{guest}/cores", {"cores": 3}),
            f"cores of instance '{guest}' is being changed, retry",
        )
        await self.started(guest)
        await arrived
        self.cell_clock.advance(1.0)
        await changing
        record = self.store.view.instances[guest]
        self.assertEqual((record.cores, record.running), (6, True))

    async def test_a_cell_refusal_or_timeout_changes_nothing(self) -> None:
        guest = await self.created()
        cell = self.cells[self.store.view.instances[guest].cell]
        cell.inject(MessageID.ModifyMemoryRequest, Fault(error="out of memory"))
        self.assertEqual(
            await self.refused("PUT", f"/guests/{guest}/memory", {"memory": 3 * GiB}),
            "out of memory",
        )
        cell.inject(MessageID.ModifyMemoryRequest, Fault(drop=True))
        asking = Deferred.fromCoroutine(
            self.refused("PUT", f"/guests/{guest}/memory", {"memory": 3 * GiB})
        )
        self.core_clock.advance(2.0)
        self.assertEqual(await asking, "cell timeout")
        self.assertEqual(self.store.view.instances[guest].memory, 2 * GiB)
        await self.reported()  # ends the creation's claim
        self.assertEqual(self.claims(), [])


class GrowthTests(GuestClusterCase):
    """One Cell of 16 cores (48 with Core's threefold over-commit), 32 GiB, 100 GiB of disk."""

    CELLS = ("Cell_0000000000a1",)
    capacity = Capacity(cores=16, memory=32 * GiB, disk=100 * GiB)
    creation_time = 0.0

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        self.guest = await self.created()
        await self.reported()  # the report counts the new guest; its creation claim ends
        self.cell = self.cells[self.CELLS[0]]

    def asked(self, message_id: int) -> int:
        return sum(1 for r in self.cell.received if r.id == message_id)

    async def test_growth_that_does_not_fit_is_refused_with_the_reason(self) -> None:
        base = f"/guests/{self.guest}"
        for path, body, message in (
            ("/memory", {"memory": 40 * GiB},
             "cell 'Cell_0000000000a1' has no room for 38 GB more memory of guest 'team.vm1': "
             "memory 30 GB free < 38 GB"),
            ("/cores", {"cores": 60},
             "cell 'Cell_0000000000a1' has no room for 58 more cores of guest 'team.vm1': "
             "cores 2 placed + 58 > 3 x 16"),
            ("/disks/resize/0", {"size": 200 * GiB},
             "cell 'Cell_0000000000a1' has no room for 180 GB more disk of guest 'team.vm1': "
             "disk 80 GB free < 180 GB"),
        ):  # fmt: skip
            answer = (await self.call("PUT", base + path, body)).envelope()
            self.assertEqual((answer["error_code"], answer["message"]), (500, message))
            self.assertEqual(answer["data"]["cells"][0]["name"], "Cell_0000000000a1")
        record = self.store.view.instances[self.guest]
        self.assertEqual((record.cores, record.memory, record.disks), (2, 2 * GiB, (20 * GiB,)))
        for message_id in (
            MessageID.ModifyMemoryRequest,
            MessageID.ModifyCoreRequest,
            MessageID.ResizeDiskRequest,
        ):
            self.assertEqual(self.asked(message_id), 0)
        self.assertEqual(self.claims(), [])

    async def test_a_growth_in_flight_is_claimed_until_the_next_report(self) -> None:
        self.cell.inject(MessageID.ModifyMemoryRequest, Fault(delay=1.0))
        arrived = self.cell.until_received(MessageID.ModifyMemoryRequest)
        growing = Deferred.fromCoroutine(
            self.ok("PUT", f"/guests/{self.guest}/memory", {"memory": 20 * GiB})
        )
        self.assertEqual(self.claims(), [str(("growth", self.guest, "memory"))])
        # 30 GB free less the 18 GB claimed: a 16 GB guest does not fit meanwhile.
        message = await self.refused("POST", "/guests/", self.guest_body("big", memory=16 * GiB))
        self.assertTrue(message.startswith("no cell has enough memory: 16 GB"), message)
        await arrived
        self.cell_clock.advance(1.0)
        await growing
        self.assertEqual(self.store.view.instances[self.guest].memory, 20 * GiB)
        self.assertEqual(len(self.claims()), 1)  # until the Cell's report counts it
        await self.reported()
        self.assertEqual(self.claims(), [])
        message = await self.refused("POST", "/guests/", self.guest_body("big", memory=16 * GiB))
        self.assertTrue(message.startswith("no cell has enough memory: 16 GB"), message)

    async def test_a_refused_growth_releases_its_claim(self) -> None:
        await self.started(self.guest)
        message = await self.refused(
            "PUT", f"/guests/{self.guest}/disks/resize/0", {"size": 30 * GiB}
        )
        self.assertEqual(message, f"instance '{self.guest}' not stopped")  # the Cell's words
        self.assertEqual(self.claims(), [])
        self.assertEqual(self.store.view.instances[self.guest].disks, (20 * GiB,))

    async def test_no_growth_on_a_cell_that_is_gone(self) -> None:
        gone = self.cluster.waiter.until_disconnected(self.CELLS[0])
        self.cell.kill()
        await gone
        self.assertEqual(
            await self.refused("PUT", f"/guests/{self.guest}/memory", {"memory": 3 * GiB}),
            "cell 'Cell_0000000000a1' is not connected",
        )
        self.assertEqual(self.claims(), [])

    async def test_shrinking_needs_no_room(self) -> None:
        await self.ok("PUT", f"/guests/{self.guest}/memory", {"memory": GiB})
        await self.ok("PUT", f"/guests/{self.guest}/cores", {"cores": 1})
        self.assertEqual(self.claims(), [])
        record = self.store.view.instances[self.guest]
        self.assertEqual((record.cores, record.memory), (1, GiB))


class DiskTests(GuestClusterCase):
    creation_time = 0.0

    async def test_resize_and_its_refusals(self) -> None:
        guest = await self.created(disks=[20 * GiB, 30 * GiB])
        base = f"/guests/{guest}/disks/resize/"
        for index, body, message in (
            ("x", {"size": GiB}, 'strconv.Atoi: parsing "x": invalid syntax'),
            ("2", {"size": 50 * GiB}, "invalid disk index 2"),
            ("-1", {"size": 50 * GiB}, "invalid disk index -1"),
            ("1", {"size": 30 * GiB}, "target size must larger than 30 GiB"),
            ("1", {}, "target size must larger than 30 GiB"),
            ("1", None, "EOF"),
        ):
            self.assertEqual(await self.refused("PUT", base + index, body), message)
        await self.ok("PUT", base + "1", {"size": 40 * GiB, "immediate": True})
        shown = await self.ok("GET", f"/guests/{guest}")
        self.assertEqual((shown["disks"], shown["total_disk"]), ([20 * GiB, 40 * GiB], 60 * GiB))
        cell = self.cells[self.store.view.instances[guest].cell]
        self.assertEqual(cell.guests[guest].disks, [20 * GiB, 40 * GiB])

    async def test_shrink_accepts_either_answer(self) -> None:
        guest = await self.created()
        cell = self.cells[self.store.view.instances[guest].cell]
        path = f"/guests/{guest}/disks/shrink/0"
        self.assertEqual(await self.refused("PUT", path), "EOF")
        self.assertEqual(await self.refused("PUT", f"/guests/{guest}/disks/shrink/1", {}),
                         "invalid disk index 1")  # fmt: skip
        await self.ok("PUT", path, {})  # answered with ResizeDiskResponse, as stock Cells do
        cell.shrink_answer = MessageID.ShrinkDiskResponse
        await self.ok("PUT", path, {"immediate": True})
        self.assertEqual(self.store.view.instances[guest].disks, (20 * GiB,))
        await self.started(guest)
        self.assertEqual(await self.refused("PUT", path, {}), f"instance '{guest}' not stopped")


class PasswordTests(GuestClusterCase):
    creation_time = 0.0

    async def test_set_and_get(self) -> None:
        guest = await self.created()
        path = f"/guests/{guest}/auth"
        template = self.store.view.templates[self.guest_body()["template"]]
        # Readable while stopped (observed-with-cells); setting needs the guest running.
        self.assertEqual(await self.ok("GET", path), {
            "password": self.cells[self.store.view.instances[guest].cell].guests[guest]
            .admin_secret,
            "user": template.admin,
        })  # fmt: skip
        self.assertEqual(await self.refused("PUT", path, {}), f"guest '{guest}' is not running")
        await self.started(guest)
        generated = await self.ok("PUT", path, {})
        self.assertEqual(generated["user"], template.admin)
        self.assertTrue(generated["password"])
        self.assertEqual(
            await self.ok("PUT", path, {"password": "s3cret", "user": "ops"}),
            {"password": "s3cret", "user": "ops"},
        )
        self.assertEqual(await self.ok("GET", path), {"password": "s3cret", "user": "ops"})
        self.assertEqual(await self.refused("GET", "/guests/nope/auth"), "invalid instance 'nope'")


class OverKCPTests(GuestClusterCase):
    """The same changes over the link stock Cells use."""

    wire = "kcp"
    creation_time = 0.0

    async def test_rename_grow_and_password(self) -> None:
        guest = await self.created()
        await self.ok("PUT", f"/guests/{guest}/name/", {"name": "web"})
        await self.ok("PUT", f"/guests/{guest}/cores", {"cores": 4})
        await self.ok("PUT", f"/guests/{guest}/disks/shrink/0", {})
        record = self.store.view.instances[guest]
        self.assertEqual((record.full_name, record.cores), ("team.web", 4))
        self.assertEqual((await self.ok("GET", f"/guests/{guest}/auth"))["user"], "root")
