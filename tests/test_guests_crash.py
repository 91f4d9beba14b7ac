"""SIGKILL of a real nanocore between creating guests and their Cells' reports.

Guests are created through the API (each answered 202 once its record was committed and its
Cell asked); Core is killed before any Cell said the guest exists; the Cells finish meanwhile.
After the restart on the same folders the Cells reconnect and rejoin with their inventories,
and the API must tell the truth: every guest created, each with its own address, no address
leaked or given twice, and no capacity claim left over (the Cells' room is exactly what their
guests leave: two more fit, a third does not).
"""

from __future__ import annotations

from typing import Any

from nanocore.testing.fakecell import Capacity
from tests.coreprocess import CoreProcessCase

GiB = 1 << 30
CELLS = ("Cell_crash01", "Cell_crash02")
GUESTS = 6


class GuestCrashTests(CoreProcessCase):
    timeout = 120

    def guest(self, index: int) -> dict[str, Any]:
        return {
            "name": f"vm{index}", "owner": "alice", "group": "team", "pool": "netted",
            "template": self.template, "cores": 1, "memory": GiB, "disks": [10 * GiB],
        }  # fmt: skip

    async def test_guests_created_across_a_sigkill_are_told_truthfully(self) -> None:
        process = self.spawn()
        await self.serving(process)
        # Each takes 1.5 s to create a guest: Core is killed before any says one exists.
        cells = self.start_fake_cells(
            CELLS,
            capacity=Capacity(cores=8, memory=4 * GiB, disk=100 * GiB),
            creation_time=1.5,
            reconnect_delay=0.2,
        )
        for cell in cells.values():
            await cell.connected()
        self.template = (await self.data("GET", "/templates/"))[0]["id"]
        for method, path, body in (
            ("POST", "/address_pools/net", {"gateway": "172.16.0.1", "provider": "dhcp"}),
            ("POST", "/address_pools/net/internal/ranges/172.16.0.10",
             {"end": "172.16.0.40", "netmask": "255.255.255.0"}),
            ("POST", "/compute_pools/netted", {"network": "net"}),
            *(("POST", f"/compute_pool_cells/netted/{name}", None) for name in CELLS),
        ):  # fmt: skip
            document = await self.call(method, path, body)
            self.assertEqual(document["error_code"], 0, document)
        ids = []
        for index in range(GUESTS):
            document = await self.call("POST", "/guests/", self.guest(index))
            self.assertEqual((document["http_status"], document["error_code"]), (202, 0),
                             document)  # fmt: skip
            ids.append(document["data"]["id"])
        # Killed before any Cell said a guest exists (they take 1.5 s); they finish meanwhile.
        await self.killed(process)
        held = {g for cell in cells.values() for g in cell.guests}
        self.assertEqual(held, set(ids))

        process = self.spawn()
        await self.serving(process)

        async def all_created() -> bool:
            for guest in ids:
                document = await self.call("GET", f"/guests/{guest}")
                if document["http_status"] != 200 or document["error_code"]:
                    return False
            return True

        await self.eventually(all_created, "every guest created")
        shown = [(await self.data("GET", f"/guests/{guest}")) for guest in ids]
        self.assertTrue(all(g["created"] and not g.get("lost") for g in shown), shown)
        addresses = [g["internal"]["allocated_address"] for g in shown]
        self.assertEqual(len(set(addresses)), GUESTS)
        pool = await self.data("GET", "/address_pools/net")
        self.assertEqual(
            sorted((a["address"], a["instance"]) for a in pool["allocated"]),
            sorted(
                (address.partition("/")[0], guest)
                for address, guest in zip(addresses, ids, strict=True)
            ),
        )
        # No claim left over, nothing counted twice: 8 GiB of room, 6 taken, 2 more fit.
        extra = []

        async def placed(index: int) -> bool:
            document = await self.call("POST", "/guests/", self.guest(index))
            if document["error_code"] == 0:
                extra.append(document["data"]["id"])
            return document["error_code"] == 0

        await self.eventually(lambda: placed(100), "a seventh guest placed")
        await self.eventually(lambda: placed(101), "an eighth guest placed")
        document = await self.call("POST", "/guests/", self.guest(102))
        self.assertTrue(document["message"].startswith("no cell has enough memory: 1 GB"),
                        document)  # fmt: skip
        await self.stopped(process)
