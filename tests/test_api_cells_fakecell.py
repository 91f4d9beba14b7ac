"""Cell membership through the API with FakeCells over real loopback TLS and the real store.

Operations are built after the Cells connected: what the registry knows is enough.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import ensureDeferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from nanocore.api.app import build_api_resource
from nanocore.api.testing import TEST_CREDENTIALS, APIClient
from nanocore.cluster.message import MessageID
from nanocore.model import ComputeCell, Instance
from nanocore.operations.core import Operations
from nanocore.pki import CertificateAuthority, create_ca
from nanocore.store import Insert, Store, UnitOfWork
from nanocore.testing.cluster import InProcessCluster
from nanocore.testing.fakecell import Capacity, Fault

reactor: Any = _reactor
GiB = 1 << 30
CELL = "Cell_0000000000a1"
OTHER = "Cell_0000000000b2"


@functools.cache
def cluster_ca() -> CertificateAuthority:
    return create_ca()


class CellTestCase(TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        data_dir = Path(self.mktemp())
        data_dir.mkdir(parents=True)
        self.store = yield Store.open(data_dir, reactor)
        self.addCleanup(self.store.close)
        # Core's fabric timers run on a Clock, so the ready timeout is reached by advancing it.
        self.core_clock = Clock()
        self.core_clock.advance(1_714_529_472)
        self.cluster = InProcessCluster(reactor, cluster_ca(), clock=self.core_clock)
        yield ensureDeferred(self.cluster.listen())
        self.addCleanup(lambda: ensureDeferred(self.cluster.stop()))
        self.cells = {
            name: self.cluster.add_cell(name, capacity=Capacity(cores=8, memory=16 * GiB),
                                        usage=25.0)
            for name in (CELL, OTHER)
        }  # fmt: skip
        yield self.cluster.waiter.until_reported({CELL, OTHER})
        self.ops = Operations(self.store, self.core_clock, cells=self.cluster.registry)
        resource = build_api_resource(self.ops, TEST_CREDENTIALS, self.core_clock)
        self.client = APIClient(resource, self.core_clock)

    @inlineCallbacks
    def ok(self, method: str, path: str, body: Any = None) -> Any:
        answer = yield self.client.request(method, path, body)
        document = answer.envelope()
        self.assertEqual(document["error_code"], 0, document)
        return document["data"]

    @inlineCallbacks
    def refused(self, method: str, path: str, body: Any = None) -> Any:
        answer = yield self.client.request(method, path, body)
        document = answer.envelope()
        self.assertEqual((document["error_code"], document["data"]), (500, {}), document)
        return document["message"]

    @inlineCallbacks
    def shared_pool(self) -> Any:
        yield self.ok("POST", "/storage_pools/nfs", {"type": "nfs", "host": "nas", "target": "/x"})
        yield self.ok(
            "POST",
            "/address_pools/net",
            {"gateway": "192.0.2.1", "dns": ["192.0.2.53"], "provider": "cloudinit"},
        )
        yield self.ok("POST", "/compute_pools/shared", {"storage": "nfs", "network": "net"})


class CellRoutesTests(CellTestCase):
    @inlineCallbacks
    def test_connected_cells_are_unallocated(self) -> Any:
        listed = yield self.ok("GET", "/compute_pool_cells/")
        self.assertEqual(
            listed,
            [{"name": name, "address": "127.0.0.1", "enabled": True, "alive": True,
              "PurgeAppending": False} for name in (CELL, OTHER)],
        )  # fmt: skip

    @inlineCallbacks
    def test_add_pushes_pool_configuration_and_capacity_shows_in_status(self) -> Any:
        yield self.shared_pool()
        self.assertEqual((yield self.ok("POST", f"/compute_pool_cells/shared/{CELL}")), "")
        cell = self.cells[CELL]
        self.assertEqual(cell.pool, "shared")
        self.assertEqual(
            cell.storage, {"name": "nfs", "type": "nfs", "host": "nas", "target": "/x"}
        )
        self.assertEqual(
            cell.network,
            {"name": "net", "gateway": "192.0.2.1", "mode": "cloudinit", "dns": ("192.0.2.53",)},
        )
        members = yield self.ok("GET", "/compute_pool_cells/shared")
        self.assertEqual([m["name"] for m in members], [CELL])
        self.assertEqual([c["name"] for c in (yield self.ok("GET", "/compute_pool_cells/"))],
                         [OTHER])  # fmt: skip
        self.assertEqual(
            (yield self.ok("GET", f"/compute_pool_cells/shared/{CELL}")),
            {"name": CELL, "address": "127.0.0.1", "enabled": True, "alive": True,
             "storage": [{"name": "nfs", "attached": True}]},
        )  # fmt: skip
        pool = yield self.ok("GET", "/compute_pool_status/shared")
        self.assertEqual(
            (pool["cells"], pool["max_cpu"], pool["max_memory"]), ([0, 1], 8, 16 * GiB)
        )
        self.assertEqual(pool["cpu_usage"], 25)
        zone = yield self.ok("GET", "/compute_zone_status/")
        self.assertEqual((zone["cells"], zone["max_cpu"]), ([0, 1], 8))
        self.assertEqual((yield self.ok("GET", "/compute_pools/shared"))["cells"], 1)

    @inlineCallbacks
    def test_cell_that_times_out_is_not_added(self) -> Any:
        self.cells[CELL].inject(MessageID.ComputePoolReadyEvent, Fault(drop=True))
        # The request reaches the operation synchronously, so its timer is already running.
        answer = self.client.post(f"/compute_pool_cells/default/{CELL}")
        self.core_clock.advance(9.9)
        self.assertNoResult(answer)
        self.core_clock.advance(0.1)
        answer = yield answer
        self.assertEqual(answer.error, "wait cell ready timeout")
        self.assertEqual((yield self.ok("GET", "/compute_pool_cells/default")), [])
        self.assertIn(CELL, [c["name"] for c in (yield self.ok("GET", "/compute_pool_cells/"))])
        self.assertNotIn(CELL, self.store.view.cells)
        # It can be added again once it answers.
        yield self.ok("POST", f"/compute_pool_cells/default/{CELL}")
        self.assertEqual(self.store.view.cells[CELL].pool, "default")

    @inlineCallbacks
    def test_cell_that_fails_is_not_added(self) -> Any:
        self.cells[CELL].inject(MessageID.ComputePoolReadyEvent, Fault(error="mount failed"))
        message = yield self.refused("POST", f"/compute_pool_cells/default/{CELL}")
        self.assertEqual(message, f"cell '{CELL}' not ready: mount failed")
        self.assertNotIn(CELL, self.store.view.cells)

    @inlineCallbacks
    def test_add_errors(self) -> Any:
        yield self.ok("POST", "/compute_pools/second")
        self.assertEqual((yield self.refused("POST", f"/compute_pool_cells/nope/{CELL}")),
                         "invalid pool 'nope'")  # fmt: skip
        self.assertEqual((yield self.refused("POST", "/compute_pool_cells/default/Cell_gone")),
                         "invalid cell 'Cell_gone'")  # fmt: skip
        yield self.ok("POST", f"/compute_pool_cells/default/{CELL}")
        self.assertEqual((yield self.refused("POST", f"/compute_pool_cells/default/{CELL}")),
                         f"cell '{CELL}' already in pool 'default'")  # fmt: skip
        self.assertEqual((yield self.refused("POST", f"/compute_pool_cells/second/{CELL}")),
                         f"cell '{CELL}' already allocated")  # fmt: skip

    @inlineCallbacks
    def test_enable_disable_and_remove(self) -> Any:
        yield self.ok("POST", f"/compute_pool_cells/default/{CELL}")
        path = f"/compute_pool_cells/default/{CELL}"
        self.assertEqual((yield self.refused("PUT", path, {"enable": True})),
                         f"cell '{CELL}' already enabled")  # fmt: skip
        yield self.ok("PUT", path, {"enable": False})
        self.assertFalse((yield self.ok("GET", path))["enabled"])
        self.assertEqual((yield self.refused("PUT", path, {"enable": False})),
                         f"cell '{CELL}' already disabled")  # fmt: skip
        self.assertIn("request.enable", (yield self.refused("PUT", path, {"enable": "no"})))
        self.assertEqual((yield self.refused("DELETE", f"/compute_pool_cells/default/{OTHER}")),
                         f"cell '{OTHER}' not in pool 'default'")  # fmt: skip
        yield self.ok("DELETE", path)
        self.assertEqual((yield self.ok("GET", "/compute_pool_cells/default")), [])
        self.assertNotIn(CELL, self.store.view.cells)

    @inlineCallbacks
    def test_cell_with_instances_cannot_be_removed(self) -> Any:
        yield self.store.commit(
            UnitOfWork.of(
                Insert(ComputeCell(CELL, pool="default")),
                Insert(Instance(id="i1", name="vm1", owner="a", group="g", pool="default",
                                cell=CELL, cores=1, memory=GiB, disks=(GiB,))),
            )
        )  # fmt: skip
        self.assertEqual(
            (yield self.refused("DELETE", f"/compute_pool_cells/default/{CELL}")),
            f"1 instance(s) left in cell '{CELL}', "
            "migrate or delete all instance(s) before remove cell",
        )


class CellLiveQueryTests(CellTestCase):
    """Routes that ask the Cell itself: storage attachment, storage paths, address changes."""

    @inlineCallbacks
    def test_get_cell_reports_attached_storage(self) -> Any:
        yield self.shared_pool()
        yield self.ok("POST", f"/compute_pool_cells/shared/{CELL}")
        self.assertEqual(
            (yield self.ok("GET", f"/compute_pool_cells/shared/{CELL}")),
            {"name": CELL, "address": "127.0.0.1", "enabled": True, "alive": True,
             "storage": [{"name": "nfs", "attached": True}]},
        )  # fmt: skip

    @inlineCallbacks
    def test_storage_paths(self) -> Any:
        yield self.ok("POST", f"/compute_pool_cells/default/{CELL}")
        path = f"/compute_cell_status/default/{CELL}/storages/"
        self.assertEqual(
            (yield self.ok("GET", path)),
            {"mode": "local", "system": ["/var/lib/libvirt/images"],
             "data": ["/var/lib/libvirt/images"]},
        )  # fmt: skip
        self.assertEqual((yield self.refused("PUT", path, {})), "target path required")
        yield self.ok("PUT", path, {"default": "/data"})
        self.assertEqual(self.cells[CELL].storage_paths, ["/data"])
        self.assertEqual(
            (yield self.refused("GET", f"/compute_cell_status/default/{OTHER}/storages/")),
            f"cell '{OTHER}' not in pool 'default'",
        )

    @inlineCallbacks
    def test_storage_path_of_an_nfs_cell_is_refused_by_the_cell(self) -> Any:
        yield self.shared_pool()
        yield self.ok("POST", f"/compute_pool_cells/shared/{CELL}")
        path = f"/compute_cell_status/shared/{CELL}/storages/"
        self.assertEqual((yield self.ok("GET", path))["mode"], "nfs")
        self.assertEqual(
            (yield self.refused("PUT", path, {"default": "/data"})),
            f"cell '{CELL}': must running in local mode",
        )

    @inlineCallbacks
    def test_cell_error_is_forwarded(self) -> Any:
        yield self.ok("POST", f"/compute_pool_cells/default/{CELL}")
        self.cells[CELL].inject(MessageID.QueryCellStorageRequest, Fault(error="disk gone"))
        self.assertEqual(
            (yield self.refused("GET", f"/compute_cell_status/default/{CELL}/storages/")),
            f"cell '{CELL}': disk gone",
        )

    @inlineCallbacks
    def test_address_pool_change_reaches_member_cells(self) -> Any:
        yield self.shared_pool()
        yield self.ok("POST", f"/compute_pool_cells/shared/{CELL}")
        received = len(self.cells[CELL].received)
        yield self.ok("PUT", "/address_pools/net", {"gateway": "192.0.2.254", "provider": "dhcp"})
        yield self.ok("GET", f"/compute_cell_status/shared/{CELL}/storages/")  # a round trip
        later = list(self.cells[CELL].received)[received:]
        self.assertIn(MessageID.AddressPoolChangedEvent, [m.id for m in later])
        self.assertEqual(self.cells[CELL].network["gateway"], "192.0.2.254")
