"""The guest lifecycle end to end: the signed API, the real store, FakeCells over loopback TLS.

Create (with progress), get, start (also from media), stop, delete, each with its validation
errors and Nano's messages (api-reference §4.6-4.7, observed-with-cells).
"""

from __future__ import annotations

from typing import Any

from nanocore import model as m
from nanocore.cluster.message import MessageID, ParamKey
from nanocore.store import Put, UnitOfWork
from nanocore.testing.fakecell import Fault
from tests.guestfixtures import SITE, GiB, GuestClusterCase

CELL_A, CELL_B = GuestClusterCase.CELLS


class CreateTests(GuestClusterCase):
    async def test_create_from_an_image_with_progress_then_created(self) -> None:
        await self.use_network()
        await self.store.commit(
            UnitOfWork.of(
                Put(m.DiskImage(id="img-1", name="centos", owner="alice", group="team",
                                size=5 * GiB, version=1, created=True))
            )
        )  # fmt: skip
        policy = await self.ok(
            "POST",
            "/security_policy_groups/",
            {"name": "web", "user": "alice", "group": "team", "default_action": "reject"},
        )
        await self.ok(
            "POST",
            f"/security_policy_groups/{policy['id']}/rules/",
            {"action": "accept", "protocol": "tcp", "to_port": 22},
        )
        body = self.guest_body(
            pool="netted",
            from_image="img-1",
            auto_start=False,
            modules=["qemu", "cloud-init"],
            qos={"cpu_priority": "low", "read_speed": 1000, "send_speed": 5},
            cloud_init={"admin_name": "ops", "admin_secret": "pw", "data_path": "/srv"},
            security_policy_group=policy["id"],
        )
        answer = await self.ok("POST", "/guests/", body, status=202)
        guest = answer["id"]
        record = self.store.view.instances[guest]
        cell = self.cells[record.cell]
        # What the Cell was asked (cell-protocol.md §5.3).
        request = [r for r in cell.received if r.id == MessageID.CreateGuestRequest][-1]
        template = self.store.view.templates[body["template"]]
        self.assertEqual(
            {k: request.string_params[k] for k in (ParamKey.Name, ParamKey.User, ParamKey.Group,
             ParamKey.Pool, ParamKey.Admin, ParamKey.Secret, ParamKey.Path, ParamKey.Image,
             ParamKey.Host, ParamKey.Policy)},
            {ParamKey.Name: "team.vm1", ParamKey.User: "alice", ParamKey.Group: "team",
             ParamKey.Pool: "netted", ParamKey.Admin: "ops", ParamKey.Secret: "pw",
             ParamKey.Path: "/srv", ParamKey.Image: "img-1", ParamKey.Host: SITE.host,
             ParamKey.Policy: policy["id"]},
        )  # fmt: skip
        self.assertEqual(request.uint_array_params[ParamKey.Template], template.options())
        self.assertEqual(request.uint_array_params[ParamKey.Policy], (0, 0, 0, 0, 22))
        self.assertEqual(request.bool_params[ParamKey.Action], False)
        self.assertEqual(request.uint_array_params[ParamKey.Limit], (1000, 0, 0, 0, 0, 5))
        self.assertEqual(request.uint_array_params[ParamKey.Flag], (0,))
        self.assertEqual(request.uint_array_params[ParamKey.Mode], (1, 0))
        self.assertEqual(request.uint_params[ParamKey.Priority], 2)
        self.assertEqual((request.uint_params[ParamKey.Port], request.uint_params[ParamKey.Size]),
                         (SITE.port, 5 * GiB))  # fmt: skip
        self.assertEqual(request.string_array_params[ParamKey.Address], ("172.16.0.10/24", ""))
        self.assertEqual(request.string_array_params[ParamKey.Module], ("qemu", "cloud-init"))

        shown = await self.ok("GET", f"/guests/{guest}", status=201)
        self.assertEqual(
            (shown["created"], shown["progress"], shown["running"]), (False, 0, False)
        )
        for percent in (25, 50, 75):
            progress = self.events.until(MessageID.GuestUpdatedEvent, guest)
            self.cell_clock.advance(0.25)
            await self.applied(progress, guest)
            shown = await self.ok("GET", f"/guests/{guest}", status=201)
            self.assertEqual(shown["progress"], percent)
        created = self.events.until(MessageID.GuestCreatedEvent, guest)
        self.cell_clock.advance(0.25)
        await self.applied(created, guest)
        shown = await self.ok("GET", f"/guests/{guest}")
        simulated = cell.guests[guest]
        self.assertEqual(
            shown,
            {
                "name": "team.vm1", "id": guest, "created": True, "progress": 0,
                "running": False, "owner": "alice", "group": "team", "pool": "netted",
                "cell": record.cell, "cores": 2, "memory": 2 * GiB, "total_disk": 20 * GiB,
                "disks": [20 * GiB], "auto_start": False, "system": "linux",
                "monitor_secret": simulated.monitor_secret,
                "ethernet_address": simulated.hardware,
                "internal": {"display_address": f"127.0.0.1:{simulated.monitor_port}",
                             "allocated_address": "172.16.0.10/24"},
                "external": {"display_address": ":0"},
                "create_time": self.store.view.instances[guest].create_time,
                "qos": {"cpu_priority": "low", "read_speed": 1000, "send_speed": 5},
            },
        )  # fmt: skip
        pools = await self.ok("GET", "/address_pools/net")
        # Plain in the address pool, CIDR in the guest (observed-with-cells).
        self.assertEqual(pools["allocated"], [{"address": "172.16.0.10", "instance": guest}])

    async def test_a_plain_create_answers_202_and_the_guest_becomes_created(self) -> None:
        guest = (await self.ok("POST", "/guests/", self.guest_body(auto_start=True),
                               status=202))["id"]  # fmt: skip
        started = self.events.until(MessageID.GuestStartedEvent, guest)
        self.cell_clock.advance(1.0)
        await self.applied(started, guest)
        shown = await self.ok("GET", f"/guests/{guest}")
        self.assertEqual((shown["created"], shown["running"]), (True, True))
        self.assertEqual(shown["internal"], {
            "display_address": f"127.0.0.1:{shown['internal']['display_address'].split(':')[1]}"
        })  # fmt: skip
        self.assertNotIn("allocated_address", shown["internal"])

    async def test_validation_in_nanos_order_and_messages(self) -> None:
        self.assertEqual(await self.refused("POST", "/guests/"), "EOF")
        order = ("name", "owner", "group", "pool", "template", "cores", "memory", "disks")
        messages = ("name required", "owner required", "group required", "target pool required",
                    "system template required", "cores required", "memory required",
                    "must specify disk size")  # fmt: skip
        for index, message in enumerate(messages):
            lacking = {k: v for k, v in self.guest_body().items() if k not in order[index:]}
            self.assertEqual(await self.refused("POST", "/guests/", lacking), message)
        self.assertIn(
            "cores of type uint64",
            await self.refused("POST", "/guests/", self.guest_body(cores=-1)),
        )
        cases: list[tuple[dict[str, Any], str]] = [
            ({"name": "vm 1"}, "invalid guest name 'vm 1': illegal char ' '"),
            ({"owner": "al.ice"}, "invalid owner name 'al.ice': illegal char '.'"),
            ({"disks": [0]}, "invalid disk size 0"),
            ({"qos": {"cpu_priority": "urgent"}}, "invalid CPU priority urgent"),
            ({"qos": {}}, "invalid CPU priority "),
            ({"modules": ["vmware"]}, "invalid module 'vmware'"),
            ({"pool": "nowhere"}, "invalid pool 'nowhere'"),
            ({"pool": "x\ud800"}, "invalid pool 'x\ufffd'"),  # read as Go reads it
            ({"template": "nope"}, "invalid template 'nope'"),
            ({"security_policy_group": "nope"}, "invalid security policy group 'nope'"),
            ({"from_image": "nope"}, "invalid disk image 'nope'"),
        ]
        for changes, message in cases:
            self.assertEqual(
                await self.refused("POST", "/guests/", self.guest_body(**changes)), message
            )
        await self.store.commit(
            UnitOfWork.of(
                Put(m.DiskImage(id="big", name="b", owner="a", group="g", size=50 * GiB,
                                created=True)),
                Put(m.DiskImage(id="raw", name="r", owner="a", group="g")),
            )
        )  # fmt: skip
        self.assertEqual(
            await self.refused("POST", "/guests/", self.guest_body(from_image="big")),
            "source image (50 GB) larger than system disk (20 GB)",
        )
        self.assertEqual(
            await self.refused("POST", "/guests/", self.guest_body(from_image="raw")),
            "disk image 'raw' not created",
        )
        # Nothing was created, claimed or sent by any of these.
        self.assertEqual(dict(self.store.view.instances), {})
        self.assertEqual(self.claims(), [])
        self.assertFalse(any(c.guests for c in self.cells.values()))

    async def test_names_are_unique_per_pool(self) -> None:
        await self.ok("POST", "/guests/", self.guest_body(), status=202)
        self.assertEqual(
            await self.refused("POST", "/guests/", self.guest_body(owner="bob")),
            "instance 'team.vm1' already exists in pool 'default'",
        )
        # Another group, or another pool, may use the name.
        await self.ok("POST", "/guests/", self.guest_body(group="other"), status=202)

    async def test_no_cell_fits_names_every_cell(self) -> None:
        answer = await self.call("POST", "/guests/", self.guest_body(memory=256 * GiB))
        document = answer.envelope()
        self.assertEqual(
            document["message"],
            "no cell has enough memory: 256 GB; "
            f"{CELL_A}: memory 32 GB free < 256 GB; {CELL_B}: memory 32 GB free < 256 GB",
        )
        self.assertEqual(
            document["data"],
            {"cells": [{"name": name, "filter": "memory", "reason": "memory 32 GB free < 256 GB"}
                       for name in self.CELLS]},
        )  # fmt: skip
        await self.ok("PUT", f"/compute_pool_cells/default/{CELL_A}", {"enable": False})
        self.assertEqual(
            await self.refused("POST", "/guests/", self.guest_body(disks=[8 << 40])),
            f"no cell has enough disk: 8 TB; {CELL_A}: disabled; "
            f"{CELL_B}: disk 1000 GB free < 8 TB",
        )
        self.assertEqual(self.claims(), [])

    async def test_a_failed_creation_is_told_once(self) -> None:
        self.cells[CELL_A].creation_failures.append("no space left on device")
        self.cells[CELL_B].creation_failures.append("no space left on device")
        guest = (await self.ok("POST", "/guests/", self.guest_body(), status=202))["id"]
        failed = self.events.until(MessageID.GuestUpdatedEvent, guest)
        self.cell_clock.advance(1.0)
        await self.applied(failed, guest)
        self.assertEqual(await self.refused("GET", f"/guests/{guest}"), "no space left on device")
        self.assertEqual(await self.refused("GET", f"/guests/{guest}"),
                         f"invalid instance '{guest}'")  # fmt: skip
        self.assertEqual(dict(self.store.view.pending_errors), {})
        self.assertEqual(self.claims(), [])
        # The name is free again.
        await self.ok("POST", "/guests/", self.guest_body(), status=202)


class LifecycleTests(GuestClusterCase):
    creation_time = 0.0

    async def test_get_of_an_unknown_guest(self) -> None:
        self.assertEqual(await self.refused("GET", "/guests/nope"), "invalid instance 'nope'")

    async def test_start_stop_and_the_two_views_of_running(self) -> None:
        guest = await self.created()
        cell = self.cells[self.store.view.instances[guest].cell]
        self.assertEqual(await self.refused("POST", f"/instances/{guest}"), "EOF")
        self.assertEqual(await self.refused("DELETE", f"/instances/{guest}", {}),
                         f"instance '{guest}' already stopped")  # fmt: skip
        await self.started(guest)
        self.assertTrue((await self.ok("GET", f"/guests/{guest}"))["running"])
        start = [r for r in cell.received if r.id == MessageID.StartInstanceRequest][-1]
        self.assertEqual((start.string_params, start.uint_params),
                         ({ParamKey.Instance: guest}, {ParamKey.Option: 0}))  # fmt: skip
        self.assertEqual(await self.refused("POST", f"/instances/{guest}", {}),
                         f"instance '{guest}' already started")  # fmt: skip
        self.assertEqual(await self.refused("DELETE", f"/guests/{guest}", {}),
                         f"instance '{guest}' is still running")  # fmt: skip
        # Stopping: the Cell answers at once, its GuestStoppedEvent comes about 1 s later;
        # Core's record follows the event only (observed-with-cells, "two views of running").
        self.assertEqual(await self.ok("DELETE", f"/instances/{guest}", {"force": True}), "")
        stop = [r for r in cell.received if r.id == MessageID.StopInstanceRequest][-1]
        self.assertEqual(stop.uint_array_params[ParamKey.Option], (0, 1))
        self.assertTrue((await self.ok("GET", f"/guests/{guest}"))["running"])
        stopped = self.events.until(MessageID.GuestStoppedEvent, guest)
        self.cell_clock.advance(1.0)
        await self.applied(stopped, guest)
        self.assertFalse((await self.ok("GET", f"/guests/{guest}"))["running"])

    async def test_reboot_keeps_it_running(self) -> None:
        guest = await self.created()
        await self.started(guest)
        await self.ok("DELETE", f"/instances/{guest}", {"reboot": True})
        self.cell_clock.advance(2.0)
        await self.reported()
        self.assertTrue((await self.ok("GET", f"/guests/{guest}"))["running"])
        cell = self.cells[self.store.view.instances[guest].cell]
        self.assertTrue(cell.guests[guest].running)

    async def test_start_from_media(self) -> None:
        guest = await self.created()
        await self.store.commit(
            UnitOfWork.of(Put(m.MediaImage(id="iso-1", name="install", owner="alice",
                                           group="team", size=GiB, version=1)))
        )  # fmt: skip
        for body, message in (
            ({"from_media": True}, "media image required"),
            ({"from_media": True, "source": "nope"}, "invalid media image 'nope'"),
            ({"from_network": True}, "start from network is not supported"),
        ):
            self.assertEqual(await self.refused("POST", f"/instances/{guest}", body), message)
        attached = self.events.until(MessageID.MediaAttachedEvent, guest)
        await self.started(guest, {"from_media": True, "source": "iso-1"})
        await self.applied(attached, guest)
        cell = self.cells[self.store.view.instances[guest].cell]
        start = [r for r in cell.received if r.id == MessageID.StartInstanceRequest][-1]
        self.assertEqual(
            (start.string_params, start.uint_params),
            ({ParamKey.Instance: guest, ParamKey.Source: "iso-1", ParamKey.Host: SITE.host},
             {ParamKey.Option: 1, ParamKey.Port: SITE.port}),
        )  # fmt: skip
        shown = await self.ok("GET", f"/guests/{guest}")
        self.assertTrue(shown["media_attached"])
        self.assertEqual(self.store.view.instances[guest].media_source, "iso-1")

    async def test_delete(self) -> None:
        guest = await self.created()
        cell = self.cells[self.store.view.instances[guest].cell]
        self.assertEqual(await self.refused("DELETE", f"/guests/{guest}"), "EOF")
        self.assertEqual(await self.refused("DELETE", "/guests/nope", {}),
                         "invalid instance 'nope'")  # fmt: skip
        self.assertEqual(await self.ok("DELETE", f"/guests/{guest}", {"force": True}), "")
        # Gone as soon as the Cell said so, before its GuestDeletedEvent.
        self.assertEqual(await self.refused("GET", f"/guests/{guest}"),
                         f"invalid instance '{guest}'")  # fmt: skip
        self.assertNotIn(guest, cell.guests)
        self.assertEqual(self.claims(), [])

    async def test_a_guest_still_being_created_can_be_deleted(self) -> None:
        guest = (await self.ok("POST", "/guests/", self.guest_body(), status=202))["id"]
        self.assertEqual(await self.ok("DELETE", f"/guests/{guest}", {}), "")
        self.assertNotIn(guest, self.store.view.instances)
        self.assertEqual(self.claims(), [])
        self.cell_clock.advance(1.0)  # its creation timer finds nothing

    async def test_cell_errors_are_relayed_verbatim(self) -> None:
        guest = await self.created()
        cell = self.cells[self.store.view.instances[guest].cell]
        cell.inject(MessageID.StartInstanceRequest, Fault(error="domain not found"))
        self.assertEqual(await self.refused("POST", f"/instances/{guest}", {}),
                         "domain not found")  # fmt: skip
        self.assertFalse(self.store.view.instances[guest].running)


class CreateOverKCPTests(CreateTests):
    """The same create cases with the Cells linked over the KCP wire stock Go Cells use."""

    wire = "kcp"


class LifecycleOverKCPTests(LifecycleTests):
    """Start, stop, reset and delete with the Cells linked over KCP."""

    wire = "kcp"
