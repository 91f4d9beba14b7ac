"""Zone, pool and cell status routes through StubTreq, over the real app and store."""

from __future__ import annotations

from nanocore import model as m
from nanocore.api import envelope
from nanocore.store import Delete, UnitOfWork
from tests.cellfixtures import GiB, HarnessTestCase, instance, status_report

ALIVE = "Cell_0000000000a1"
DEAD = "Cell_0000000000b2"
SECOND = "Cell_0000000000c3"

USAGE_ZERO = {
    "cpu_usage": 0,
    "max_cpu": 0,
    "available_memory": 0,
    "max_memory": 0,
    "available_disk": 0,
    "max_disk": 0,
    "read_speed": 0,
    "write_speed": 0,
    "receive_speed": 0,
    "send_speed": 0,
}


class StatusRouteTests(HarnessTestCase):
    async def populate(self) -> None:
        """Two cells in ``shared``: one alive (cores 8, 25 %), one that reported and then died."""
        await self.h.member(ALIVE, "shared")
        await self.h.member(DEAD, "shared")
        self.h.connect(ALIVE, status_report(cores=8, usage=25.0, speed=10))
        self.h.connect(DEAD, status_report(cores=4, usage=90.0, speed=100))
        self.h.directory.disconnect(DEAD, gracefully=True)
        await self.h.put(
            instance("i1", ALIVE, status=m.InstanceStatus.RUNNING),
            instance("i2", ALIVE),
            instance("i3", ALIVE, status=m.InstanceStatus.CREATING),
            instance("i4", ALIVE, migrating=True, lost=True),
            instance("i5", DEAD, lost=True),
        )

    async def test_zone_counts_dead_cells_offline_and_keeps_speeds_in_place(self) -> None:
        await self.populate()
        answer = await self.h.api.get("/compute_zone_status/")
        self.assertEqual(
            answer.envelope(),
            {
                "error_code": 0,
                "message": "",
                "data": {
                    "name": "default",
                    "pools": [0, 3],
                    "cells": [1, 1],
                    "instances": [1, 1, 1, 1],
                    "cpu_usage": 25,
                    "max_cpu": 8,
                    "available_memory": 12 * GiB,
                    "max_memory": 16 * GiB,
                    "available_disk": 400 * GiB,
                    "max_disk": 500 * GiB,
                    "read_speed": 11,
                    "write_speed": 12,
                    "receive_speed": 13,
                    "send_speed": 14,
                    "start_time": self.h.operations.context.now_text(),
                },
            },
        )

    async def test_zone_cpu_is_core_weighted_over_online_cells(self) -> None:
        await self.h.member(ALIVE, "shared")
        await self.h.member(SECOND, "local")
        self.h.connect(ALIVE, status_report(cores=8, usage=10.0))
        self.h.connect(SECOND, status_report(cores=2, usage=60.0))
        data = (await self.h.api.get("/compute_zone_status/")).data
        self.assertEqual(data["cpu_usage"], 20)
        self.assertEqual(data["max_cpu"], 10)
        self.assertEqual(data["cells"], [0, 2])

    async def test_a_silent_cell_stops_counting(self) -> None:
        await self.h.member(ALIVE, "shared")
        self.h.connect(ALIVE, status_report())
        self.h.clock.advance(60)  # its reports stopped long ago
        data = (await self.h.api.get("/compute_zone_status/")).data
        self.assertEqual(data["cells"], [1, 0])
        self.assertEqual(data["max_cpu"], 0)

    async def test_pool_list_truncates_cpu_and_single_pool_does_not(self) -> None:
        await self.h.member(ALIVE, "shared")
        self.h.connect(ALIVE, status_report(cores=8, usage=25.7))
        listed = (await self.h.api.get("/compute_pool_status/")).data
        self.assertEqual([p["name"] for p in listed], ["default", "local", "shared"])
        shared = listed[2]
        self.assertEqual(shared["cpu_usage"], 25)
        self.assertEqual(
            shared,
            {
                "name": "shared",
                "enabled": True,
                "cells": [0, 1],
                "instances": [0, 0, 0, 0],
                "cpu_usage": 25,
                "max_cpu": 8,
                "available_memory": 12 * GiB,
                "max_memory": 16 * GiB,
                "available_disk": 400 * GiB,
                "max_disk": 500 * GiB,
                "read_speed": 1,
                "write_speed": 2,
                "receive_speed": 3,
                "send_speed": 4,
            },
        )
        self.assertEqual(
            listed[1],
            {
                "name": "local",
                "enabled": True,
                "cells": [0, 0],
                "instances": [0, 0, 0, 0],
                **USAGE_ZERO,
            },
        )
        one = (await self.h.api.get("/compute_pool_status/shared")).data
        self.assertEqual(one["cpu_usage"], 25.7)
        self.assertEqual(
            (await self.h.api.get("/compute_pool_status/nope")).body,
            envelope.failure("invalid pool 'nope'"),
        )

    async def test_pool_list_is_null_without_pools(self) -> None:
        await self.h.store.commit(
            UnitOfWork(tuple(Delete(m.ComputePool, p) for p in ("default", "local", "shared")))
        )
        answer = await self.h.api.get("/compute_pool_status/")
        self.assertEqual(answer.body, envelope.success(None))

    async def test_cell_status_list_and_one(self) -> None:
        await self.populate()
        listed = (await self.h.api.get("/compute_cell_status/shared")).data
        self.assertEqual(
            listed,
            [
                {
                    "name": ALIVE,
                    "address": "127.0.0.1",
                    "enabled": True,
                    "alive": True,
                    "instances": [1, 1, 0, 1],
                    "cpu_usage": 25,
                    "max_cpu": 8,
                    "available_memory": 12 * GiB,
                    "max_memory": 16 * GiB,
                    "available_disk": 400 * GiB,
                    "max_disk": 500 * GiB,
                    "read_speed": 11,
                    "write_speed": 12,
                    "receive_speed": 13,
                    "send_speed": 14,
                },
                {  # its last report, as Nano showed it (left out of the pool's figures)
                    "name": DEAD,
                    "address": "127.0.0.1",
                    "enabled": True,
                    "alive": False,
                    "instances": [0, 0, 1, 0],
                    "cpu_usage": 90,
                    "max_cpu": 4,
                    "available_memory": 12 * GiB,
                    "max_memory": 16 * GiB,
                    "available_disk": 400 * GiB,
                    "max_disk": 500 * GiB,
                    "read_speed": 101,
                    "write_speed": 102,
                    "receive_speed": 103,
                    "send_speed": 104,
                },
            ],
        )
        one = (await self.h.api.get(f"/compute_cell_status/shared/{ALIVE}")).data
        self.assertEqual(one, listed[0])
        # Its entries are encoded one by one and kept: the bytes are the plain envelope's.
        for _ in range(2):
            answer = await self.h.api.get("/compute_cell_status/shared")
            self.assertEqual(answer.body, envelope.success(listed))
            self.h.connect(ALIVE, status_report(cores=8, usage=50.0, speed=10))
            listed[0]["cpu_usage"] = 50

    async def test_cell_status_null_and_errors(self) -> None:
        self.assertEqual(
            (await self.h.api.get("/compute_cell_status/local")).body, envelope.success(None)
        )
        self.assertEqual(
            (await self.h.api.get("/compute_cell_status/nope")).body,
            envelope.failure("invalid pool 'nope'"),
        )
        await self.h.member(ALIVE, "shared")
        self.assertEqual(
            (await self.h.api.get(f"/compute_cell_status/local/{ALIVE}")).body,
            envelope.failure(f"cell '{ALIVE}' not in pool 'local'"),
        )
        self.assertEqual(
            (await self.h.api.get(f"/compute_cell_status/nope/{ALIVE}")).body,
            envelope.failure("invalid pool 'nope'"),
        )
