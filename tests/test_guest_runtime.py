"""Runtime status, system reset and monitor secret reset, end to end on both Cell wires.

The signed API, the real store, FakeCells over loopback TLS and over KCP as stock Cells link
(api-reference §4.6-4.7, observed-with-cells points 4, 7, 10 and "two views of running").
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import ensureDeferred

from nanocore import model as m
from nanocore.cluster.message import MessageID, ParamKey
from nanocore.store import Put, UnitOfWork
from nanocore.testing.fakecell import GUEST_USAGE, Fault
from tests.guestfixtures import SITE, GiB, GuestClusterCase


class GuestCases(GuestClusterCase):
    """Helpers shared by the cases below; the Cells create a guest at their next turn."""

    creation_time = 0.0

    async def started(self, guest: str) -> None:
        started = self.events.until(MessageID.GuestStartedEvent, guest)
        await self.ok("POST", f"/instances/{guest}", {})
        await self.applied(started, guest)

    def cell_of(self, guest: str) -> Any:
        return self.cells[self.store.view.instances[guest].cell]

    async def images(self) -> None:
        await self.store.commit(
            UnitOfWork.of(
                Put(m.DiskImage(id="img-1", name="centos", owner="alice", group="team",
                                size=5 * GiB, version=1, created=True)),
                Put(m.DiskImage(id="big", name="b", owner="a", group="g", size=50 * GiB,
                                version=1, created=True)),
                Put(m.DiskImage(id="raw", name="r", owner="a", group="g")),
            )
        )  # fmt: skip


class RuntimeTests(GuestCases):
    """Over TLS; the subclass below runs them over KCP."""

    async def test_runtime_status_is_asked_of_the_cell(self) -> None:
        guest = await self.created()
        cell = self.cell_of(guest)
        simulated = cell.guests[guest]
        status = await self.ok("GET", f"/instances/{guest}")
        record = self.store.view.instances[guest]
        self.assertEqual(
            list(status),
            ["name", "id", "created", "progress", "running", "owner", "group", "pool", "cell",
             "cores", "memory", "total_disk", "disks", "auto_start", "system", "monitor_secret",
             "ethernet_address", "internal", "external", "create_time", "qos", "media_attached",
             "media_source", "cpu_usage", "memory_available", "disk_available", "bytes_read",
             "bytes_written", "bytes_received", "bytes_sent"],
        )  # fmt: skip
        self.assertEqual(
            {k: status[k] for k in ("name", "running", "created", "cell", "monitor_secret")},
            {"name": "team.vm1", "running": False, "created": True, "cell": record.cell,
             "monitor_secret": simulated.monitor_secret},
        )  # fmt: skip
        # Core's addresses, not the Cell's (the original overwrote them too).
        self.assertEqual(
            status["internal"], {"display_address": f"127.0.0.1:{simulated.monitor_port}"}
        )
        self.assertEqual(
            (status["media_attached"], status["media_source"], status["cpu_usage"],
             status["bytes_read"], status["memory_available"]),
            (False, "", 0, 0, 2 * GiB),
        )  # fmt: skip
        asked = [r for r in cell.received if r.id == MessageID.GetInstanceStatusRequest]
        self.assertEqual(asked[-1].string_params, {ParamKey.Instance: guest})

        await self.started(guest)
        self.cell_clock.advance(10.0)
        running = await self.ok("GET", f"/instances/{guest}")
        self.assertTrue(running["running"])
        self.assertEqual(running["cpu_usage"], GUEST_USAGE)
        self.assertEqual(
            [running[k] for k in ("bytes_read", "bytes_written", "bytes_received", "bytes_sent")],
            [40960, 20480, 10240, 5120],
        )
        self.assertLess(running["memory_available"], 2 * GiB)

    async def test_two_views_of_running(self) -> None:
        """After a stop the Cell says stopped at once; Core's record waits for the event."""
        guest = await self.created()
        await self.started(guest)
        await self.ok("DELETE", f"/instances/{guest}", {})
        self.assertFalse((await self.ok("GET", f"/instances/{guest}"))["running"])
        self.assertTrue((await self.ok("GET", f"/guests/{guest}"))["running"])
        stopped = self.events.until(MessageID.GuestStoppedEvent, guest)
        self.cell_clock.advance(1.0)
        await self.applied(stopped, guest)
        self.assertFalse((await self.ok("GET", f"/guests/{guest}"))["running"])

    async def test_runtime_status_refusals(self) -> None:
        self.assertEqual(await self.refused("GET", "/instances/nope"), "invalid instance 'nope'")
        guest = await self.created()
        cell = self.cell_of(guest)
        cell.inject(MessageID.GetInstanceStatusRequest, Fault(error="domain not found"))
        self.assertEqual(await self.refused("GET", f"/instances/{guest}"), "domain not found")
        cell.inject(MessageID.GetInstanceStatusRequest, Fault(drop=True))
        asking = ensureDeferred(self.call("GET", f"/instances/{guest}"))
        self.core_clock.advance(2.0)
        self.assertEqual((await asking).error, "cell timeout")


class ResetTests(GuestCases):
    """Over TLS; the subclass below runs them over KCP."""

    async def test_reset_system_with_progress(self) -> None:
        await self.images()
        guest = await self.created()
        cell = self.cell_of(guest)
        self.assertEqual(
            await self.ok("PUT", f"/guests/{guest}/system/", {"from_image": "img-1"}), ""
        )
        request = [r for r in cell.received if r.id == MessageID.ResetSystemRequest][-1]
        self.assertEqual(
            (request.string_params, request.uint_params),
            ({ParamKey.Guest: guest, ParamKey.Image: "img-1", ParamKey.Host: SITE.host},
             {ParamKey.Port: SITE.port, ParamKey.Size: 5 * GiB}),
        )  # fmt: skip
        # Right after the reset: 201, not created, progress 0 (observed-with-cells point 10).
        shown = await self.ok("GET", f"/guests/{guest}", status=201)
        self.assertEqual((shown["created"], shown["progress"]), (False, 0))
        self.assertEqual(
            await self.refused("POST", f"/instances/{guest}", {}),
            f"instance '{guest}' not created yet",
        )
        progress = self.events.until(MessageID.GuestUpdatedEvent, guest)
        done = self.events.until(MessageID.SystemResetEvent, guest)
        self.cell_clock.advance(0)  # the simulated reset takes no time: all its events at once
        await self.applied(progress, guest)
        await self.applied(done, guest)
        shown = await self.ok("GET", f"/guests/{guest}")
        self.assertEqual((shown["created"], shown["progress"], shown["running"]), (True, 0, False))
        await self.started(guest)  # a reset guest starts as before

    async def test_a_failed_reset_is_told_once_and_the_guest_stays(self) -> None:
        await self.images()
        guest = await self.created()
        self.cell_of(guest).reset_failures.append("qemu-img: image corrupt")
        await self.ok("PUT", f"/guests/{guest}/system/", {"from_image": "img-1"})
        done = self.events.until(MessageID.SystemResetEvent, guest)
        self.cell_clock.advance(0)
        await self.applied(done, guest)
        self.assertEqual(await self.refused("GET", f"/guests/{guest}"), "qemu-img: image corrupt")
        shown = await self.ok("GET", f"/guests/{guest}")
        self.assertEqual((shown["created"], shown["running"]), (True, False))
        self.assertEqual(dict(self.store.view.pending_errors), {})

    async def test_reset_refusals(self) -> None:
        await self.images()
        guest = await self.created()
        path = f"/guests/{guest}/system/"
        cases: list[tuple[str, Any, str]] = [
            ("/guests/nope/system/", {"from_image": "img-1"}, "invalid instance 'nope'"),
            (path, None, "EOF"),
            (path, {}, "disk image required"),
            (path, {"from_image": "nope"}, "invalid disk image 'nope'"),
            (path, {"from_image": "raw"}, "disk image 'raw' not created"),
            (path, {"from_image": "big"},
             "source image (50 GB) larger than system disk (20 GB)"),
        ]  # fmt: skip
        for target, body, message in cases:
            self.assertEqual(await self.refused("PUT", target, body), message)
        await self.started(guest)
        # The original crashed here (core-internals §8.3 #2).
        self.assertEqual(
            await self.refused("PUT", path, {"from_image": "img-1"}),
            "guest 'team.vm1' still running",
        )
        creating = (await self.ok("POST", "/guests/", self.guest_body(name="vm2"), status=202))[
            "id"
        ]
        self.assertEqual(
            await self.refused("PUT", f"/guests/{creating}/system/", {"from_image": "img-1"}),
            f"guest '{creating}' not created yet",
        )
        cell = self.cell_of(guest)
        self.assertEqual([r for r in cell.received if r.id == MessageID.ResetSystemRequest], [])

    async def test_the_cells_refusal_changes_nothing(self) -> None:
        await self.images()
        guest = await self.created()
        self.cell_of(guest).inject(MessageID.ResetSystemRequest, Fault(error="disk busy"))
        self.assertEqual(
            await self.refused("PUT", f"/guests/{guest}/system/", {"from_image": "img-1"}),
            "disk busy",
        )
        self.assertTrue((await self.ok("GET", f"/guests/{guest}"))["created"])

    async def test_monitor_secret(self) -> None:
        guest = await self.created()
        before = (await self.ok("GET", f"/guests/{guest}"))["monitor_secret"]
        self.assertEqual(await self.ok("PUT", f"/guests/{guest}/monitor/secret"), "")
        after = (await self.ok("GET", f"/guests/{guest}"))["monitor_secret"]
        self.assertNotEqual(after, before)
        self.assertEqual(after, self.cell_of(guest).guests[guest].monitor_secret)
        request = [
            r for r in self.cell_of(guest).received if r.id == MessageID.ResetSecretRequest
        ][-1]
        self.assertEqual(request.string_params, {ParamKey.Guest: guest})
        self.assertEqual(
            await self.refused("PUT", "/guests/nope/monitor/secret"), "invalid instance 'nope'"
        )
        self.cell_of(guest).inject(MessageID.ResetSecretRequest, Fault(error="no display"))
        self.assertEqual(
            await self.refused("PUT", f"/guests/{guest}/monitor/secret"), "no display"
        )
        self.assertEqual((await self.ok("GET", f"/guests/{guest}"))["monitor_secret"], after)


class ResetProgressTests(GuestCases):
    """A reset that takes the Cells a second, as a clone does: progress as it goes."""

    creation_time = 1.0

    async def test_progress_while_resetting(self) -> None:
        await self.images()
        guest = await self.created()
        await self.ok("PUT", f"/guests/{guest}/system/", {"from_image": "img-1"})
        # Nothing else touches the disks meanwhile: the Cell is writing the system disk again.
        refusal = f"guest '{guest}' is resetting its system, retry after it"
        for method, path, body in (
            ("PUT", f"/guests/{guest}/disks/resize/0", {"size": 20 * GiB}),
            ("PUT", f"/guests/{guest}/disks/shrink/0", {}),
            ("POST", f"/instances/{guest}/snapshots/", {"name": "s1"}),
            ("PUT", f"/instances/{guest}/snapshots/", {"target": "s1"}),
            ("DELETE", f"/instances/{guest}/snapshots/s1", None),
        ):
            self.assertEqual(await self.refused(method, path, body), refusal, path)
        for percent in (25, 50, 75):
            progress = self.events.until(MessageID.GuestUpdatedEvent, guest)
            self.cell_clock.advance(0.25)
            await self.applied(progress, guest)
            shown = await self.ok("GET", f"/guests/{guest}", status=201)
            self.assertEqual((shown["created"], shown["progress"]), (False, percent))
        done = self.events.until(MessageID.SystemResetEvent, guest)
        self.cell_clock.advance(0.25)
        await self.applied(done, guest)
        self.assertTrue((await self.ok("GET", f"/guests/{guest}"))["created"])


class RuntimeOverKCPTests(RuntimeTests):
    wire = "kcp"


class ResetOverKCPTests(ResetTests):
    wire = "kcp"
