"""Pool membership with FakeCells over real loopback TLS, driven through the signed API.

Core's timers run on a ``Clock`` (so the add-cell timeout is exact and instant); the sockets,
TLS, framing and the Cell's answers are real.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from nanocore.api import envelope
from nanocore.api.app import build_api_resource
from nanocore.api.testing import TEST_CREDENTIALS, APIClient
from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.model import ComputeCell
from nanocore.operations.core import Operations
from nanocore.pki import CertificateAuthority, create_ca
from nanocore.store import Put, Store, UnitOfWork
from nanocore.testing.cluster import InProcessCluster
from nanocore.testing.fakecell import Capacity, FakeCell, Fault
from nanocore.testing.guests import GuestState, SimulatedGuest
from tests.cellfixtures import NOW, SEED, TIMEOUT, GiB, instance

reactor: Any = _reactor
CELL = "Cell_00163e0000a1"


@functools.cache
def cluster_ca() -> CertificateAuthority:
    return create_ca()


class FakeCellMembershipTests(TestCase):
    def setUp(self) -> Any:  # a Deferred: trial waits for it
        return Deferred.fromCoroutine(self._set_up())

    async def _set_up(self) -> None:
        self.store = await Store.open(Path(self.mktemp()), reactor)
        self.addCleanup(self.store.close)
        await self.store.commit(UnitOfWork(tuple(Put(entity) for entity in SEED)))
        self.clock = Clock()
        self.clock.advance(NOW)
        self.cluster = InProcessCluster(reactor, cluster_ca(), clock=self.clock, timeout=TIMEOUT)
        self.addCleanup(lambda: Deferred.fromCoroutine(self.cluster.stop()))
        await self.cluster.listen()
        self.operations = Operations(
            self.store, self.clock, cells=self.cluster.registry, timeout=TIMEOUT
        )
        resource = build_api_resource(self.operations, TEST_CREDENTIALS, self.clock)
        self.api = APIClient(resource, self.clock)

    async def start_cell(self) -> FakeCell:
        cell = self.cluster.add_cell(
            CELL, clock=Clock(), capacity=Capacity(cores=16, memory=64 * GiB, disk=2000 * GiB)
        )
        await self.cluster.waiter.until_reported({CELL})
        return cell

    async def test_added_cell_receives_the_pool_and_its_capacity_shows(self) -> None:
        cell = await self.start_cell()
        unallocated = (await self.api.get("/compute_pool_cells/")).data
        self.assertEqual(
            unallocated,
            [
                {
                    "name": CELL,
                    "address": "127.0.0.1",
                    "enabled": True,
                    "alive": True,
                    "PurgeAppending": False,
                }
            ],
        )
        answer = await self.api.post(f"/compute_pool_cells/shared/{CELL}")
        self.assertEqual(answer.body, envelope.success(""))
        self.assertEqual(cell.pool, "shared")
        self.assertEqual(
            cell.storage,
            {"name": "nfs1", "type": "nfs", "host": "127.0.0.1", "target": "/exports/nano"},
        )
        self.assertEqual(
            cell.network,
            {"name": "net1", "gateway": "192.0.2.1", "mode": "cloudinit", "dns": ("192.0.2.53",)},
        )
        self.assertEqual(self.store.view.cells[CELL].pool, "shared")

        pool = (await self.api.get("/compute_pool_status/shared")).data
        self.assertEqual(pool["cells"], [0, 1])
        self.assertEqual(
            (pool["max_cpu"], pool["max_memory"], pool["max_disk"]),
            (16, 64 * GiB, 2000 * GiB),
        )
        self.assertEqual(pool["cpu_usage"], 5)
        zone = (await self.api.get("/compute_zone_status/")).data
        self.assertEqual((zone["cells"], zone["max_cpu"]), ([0, 1], 16))

        # The live storage attach state comes from the Cell itself.
        detail = (await self.api.get(f"/compute_pool_cells/shared/{CELL}")).data
        self.assertEqual(detail["storage"], [{"name": "nfs1", "attached": True}])

    async def test_cell_that_drops_the_push_leaves_no_membership(self) -> None:
        cell = await self.start_cell()
        cell.inject(MessageID.ComputePoolReadyEvent, Fault(drop=True, times=None))
        adding = self.api.post(f"/compute_pool_cells/shared/{CELL}")
        self.assertNoResult(adding)
        self.clock.advance(TIMEOUT)
        answer = await adding
        self.assertEqual(answer.body, envelope.failure("wait cell ready timeout"))
        self.assertNotIn(CELL, self.store.view.cells)
        self.assertEqual(cell.pool, "")
        unallocated = (await self.api.get("/compute_pool_cells/")).data
        self.assertEqual([c["name"] for c in unallocated], [CELL])
        zone = (await self.api.get("/compute_zone_status/")).data
        self.assertEqual((zone["cells"], zone["max_cpu"]), ([0, 0], 0))

    async def test_remove_tells_the_cell(self) -> None:
        cell = await self.start_cell()
        await self.api.post(f"/compute_pool_cells/local/{CELL}")
        self.assertEqual(cell.pool, "local")
        answer = await self.api.delete(f"/compute_pool_cells/local/{CELL}")
        self.assertEqual(answer.body, envelope.success(""))
        # Fire-and-forget: wait for the storage query round trip, which follows it on the link.
        paths = await self.cluster.registry.request(
            CELL,
            Message(id=MessageID.QueryCellStorageRequest, string_params={ParamKey.Cell: CELL}),
        )
        self.assertTrue(paths.success)
        self.assertEqual(cell.pool, "")
        self.assertNotIn(CELL, self.store.view.cells)

    async def test_inventory_taken_in_on_add_and_marked_lost_on_goodbye(self) -> None:
        cell = await self.start_cell()
        cell.guests["guest-1"] = SimulatedGuest(
            id="guest-1",
            name="admin.web",
            user="admin",
            group="admin",
            cores=2,
            memory=2 * GiB,
            created="1714529472",  # not Core's time format: taken in as unknown
            state=GuestState.RUNNING,
        )
        answer = await self.api.post(f"/compute_pool_cells/shared/{CELL}")
        self.assertEqual(answer.body, envelope.success(""))
        guest = self.store.view.instances["guest-1"]
        self.assertEqual(
            (guest.name, guest.cell, guest.running, guest.lost), ("web", CELL, True, False)
        )
        self.assertEqual(guest.create_time, "")
        zone = (await self.api.get("/compute_zone_status/")).data
        self.assertEqual(zone["instances"], [0, 1, 0, 0])

        gone = self.cluster.waiter.until_disconnected(CELL)
        await self.cluster.remove_cell(CELL)
        self.assertIs(await gone, True)
        await self.store.commit(UnitOfWork(()))  # the observer's commit is queued before this
        self.assertTrue(self.store.view.instances["guest-1"].lost)
        status = (await self.api.get(f"/compute_cell_status/shared/{CELL}")).data
        self.assertEqual(  # its last report still shown, as Nano does; its pool's is not
            (status["alive"], status["instances"], status["max_cpu"]), (False, [0, 0, 1, 0], 16)
        )
        self.assertEqual((await self.api.get("/compute_zone_status/")).data["max_cpu"], 0)

    async def round_trip(self) -> None:
        """Everything Core sent the Cell before this has been answered and handled."""
        reply = await self.cluster.registry.request(
            CELL,
            Message(id=MessageID.QueryCellStorageRequest, string_params={ParamKey.Cell: CELL}),
        )
        self.assertTrue(reply.success)
        await self.store.commit(UnitOfWork(()))

    async def test_purge_pending_cell_is_purged_when_it_connects(self) -> None:
        await self.store.commit(
            UnitOfWork.of(
                Put(ComputeCell(name=CELL, pool="shared", enabled=False, purge_pending=True))
            )
        )
        await self.store.commit(UnitOfWork.of(Put(instance("stale", CELL))))
        cell = self.cluster.add_cell(CELL, clock=Clock())
        cell.guests["stale"] = SimulatedGuest(id="stale", name="admin.vm-stale")
        await self.cluster.waiter.until_reported({CELL})
        await self.round_trip()
        self.assertEqual(cell.guests, {})
        self.assertNotIn(MessageID.ComputePoolReadyEvent, [m.id for m in cell.received])
        self.assertEqual(dict(self.store.view.instances), {})
        self.assertEqual(
            self.store.view.cells[CELL],
            ComputeCell(name=CELL, pool="shared", enabled=False, purge_pending=False),
        )

    async def test_member_reconnecting_is_sent_its_pool(self) -> None:
        await self.store.commit(UnitOfWork.of(Put(ComputeCell(name=CELL, pool="shared"))))
        cell = self.cluster.add_cell(CELL, clock=Clock())
        await self.cluster.waiter.until_reported({CELL})
        await self.round_trip()
        self.assertEqual((cell.pool, cell.network["mode"]), ("shared", "cloudinit"))
