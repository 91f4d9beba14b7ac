"""A planned stop of a real nanocore is not its Cells failing.

``nanocore stop`` closes every Cell link with a goodbye. Core used to report those closes to its
rooms as Cells lost without one: every guest was stored as lost, and in a pool with failover on
shared storage each Cell was failed over and disabled, leaving the pool with no Cell to place on
after the restart. Here two FakeCells (in this process, sharing their NFS exports) hold guests
in such a pool; Core is stopped with SIGTERM and started again on the same folders, the Cells
link again, and Core's records must be as they were: Cells enabled, guests neither lost nor
moved, their power state kept, no migration recorded.
"""

from __future__ import annotations

from typing import Any

from nanocore.testing.fakecell import Capacity
from nanocore.testing.sharedstorage import SharedStorage
from tests.coreprocess import CoreProcessCase

GiB = 1 << 30
CELLS = ("Cell_stay01", "Cell_stay02")


class PlannedRestartTests(CoreProcessCase):
    timeout = 120

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        document = await self.call(method, path, body)
        self.assertEqual(document["error_code"], 0, document)
        return document["data"]

    async def cells_linked(self) -> dict[str, Any] | None:
        listed = {
            cell["name"]: cell for cell in await self.ok("GET", "/compute_pool_cells/shared")
        }
        linked = set(CELLS) <= listed.keys() and all(listed[n]["alive"] for n in CELLS)
        return listed if linked else None

    async def test_a_stop_and_start_leaves_cells_and_guests_as_they_were(self) -> None:
        core = self.spawn()
        await self.serving(core)
        cells = self.start_fake_cells(
            CELLS,
            capacity=Capacity(cores=8, memory=8 * GiB, disk=100 * GiB),
            creation_time=0.0,
            stop_time=0.0,
            reconnect_delay=0.2,
            shared=SharedStorage(),  # one NFS export for both: the pool's shared storage
        )
        for cell in cells.values():
            await cell.connected()
        template = (await self.ok("GET", "/templates/"))[0]["id"]
        await self.ok("POST", "/storage_pools/nfs",
                      {"type": "nfs", "host": "192.0.2.9", "target": "/export"})  # fmt: skip
        await self.ok("POST", "/compute_pools/shared", {"storage": "nfs", "failover": True})
        for name in CELLS:
            await self.ok("POST", f"/compute_pool_cells/shared/{name}")
        guests = []
        for index in range(4):
            created = await self.ok("POST", "/guests/", {
                "name": f"vm{index}", "owner": "demo", "group": "demo", "pool": "shared",
                "template": template, "cores": 1, "memory": GiB, "disks": [10 * GiB],
            })  # fmt: skip
            guests.append(created["id"])

        async def all_created() -> bool:
            shown = [await self.ok("GET", f"/guests/{guest}") for guest in guests]
            return all(guest["created"] for guest in shown)

        await self.eventually(all_created, "every guest created")
        await self.ok("POST", f"/instances/{guests[0]}", {})

        async def first_running() -> bool:
            return bool((await self.ok("GET", f"/guests/{guests[0]}"))["running"])

        await self.eventually(first_running, "the first guest running")
        before = {guest: await self.ok("GET", f"/guests/{guest}") for guest in guests}
        self.assertEqual({shown["cell"] for shown in before.values()}, set(CELLS))

        await self.stopped(core)
        log = self.log_file().read_text()
        self.assertNotIn("lost without goodbye", log)
        self.assertNotIn("failover of", log)

        core = self.spawn()
        await self.serving(core)
        listed = await self.eventually(self.cells_linked, "both Cells linked again")
        self.assertTrue(all(listed[name]["enabled"] for name in CELLS), listed)
        for guest, was in before.items():
            shown = await self.ok("GET", f"/guests/{guest}")
            self.assertEqual(
                (shown["cell"], shown["running"], shown.get("lost", False)),
                (was["cell"], was["running"], False),
                shown,
            )
        self.assertEqual(await self.ok("GET", "/migrations/"), [])
        # The pool still places: its Cells are enabled.
        placed = await self.ok("POST", "/guests/", {
            "name": "after", "owner": "demo", "group": "demo", "pool": "shared",
            "template": template, "cores": 1, "memory": GiB, "disks": [10 * GiB],
        })  # fmt: skip
        self.assertTrue(placed["id"])
        await self.stopped(core)
