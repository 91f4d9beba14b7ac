"""Every route of pools, storage, addresses, templates, security groups and status, through
StubTreq against the real app and the real store in a temporary data directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import fail, gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from nanocore.api.app import build_api_resource
from nanocore.api.testing import TEST_CREDENTIALS, APIClient
from nanocore.cluster.cells import CellStatus
from nanocore.model import AddressAllocation, ComputeCell, Instance, InstanceStatus
from nanocore.operations.core import Operations
from nanocore.store import Insert, Store, StoreError, UnitOfWork
from tests.cellfixtures import FakeDirectory

NOW = 1_714_529_472.0


class StoreTestCase(TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        data_dir = Path(self.mktemp())
        data_dir.mkdir(parents=True)
        self.store = yield Store.open(data_dir, reactor)
        self.addCleanup(self.store.close)
        self.clock = Clock()
        self.clock.advance(NOW)
        self.directory = FakeDirectory(self.clock)
        self.ops = Operations(self.store, self.clock, self.directory)
        resource = build_api_resource(self.ops, TEST_CREDENTIALS, self.clock)
        self.client = APIClient(resource, self.clock)

    @inlineCallbacks
    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        answer = yield self.client.request(method, path, body)
        document = answer.envelope()
        self.assertEqual(document["error_code"], 0, document)
        self.assertEqual(document["message"], "")
        self.assertEqual(answer.status, status)
        return document["data"]

    @inlineCallbacks
    def refused(self, method: str, path: str, body: Any = None) -> Any:
        answer = yield self.client.request(method, path, body)
        self.assertEqual(answer.status, 200)
        document = answer.envelope()
        self.assertEqual(list(document), ["error_code", "message", "data"])
        self.assertEqual((document["error_code"], document["data"]), (500, {}), document)
        return document["message"]


class ComputePoolTests(StoreTestCase):
    @inlineCallbacks
    def test_default_pool_on_a_fresh_store(self) -> Any:
        data = yield self.ok("GET", "/compute_pools/")
        self.assertEqual(
            data,
            [{"name": "default", "enabled": True, "cells": 0, "network": "", "storage": "",
              "failover": False}],
        )  # fmt: skip

    @inlineCallbacks
    def test_create_get_modify_delete(self) -> Any:
        yield self.ok("POST", "/storage_pools/nfs1", {"type": "nfs", "host": "h", "target": "/t"})
        yield self.ok("POST", "/address_pools/net1", {"gateway": "192.0.2.1", "provider": "dhcp"})
        created = yield self.ok("POST", "/compute_pools/p1")
        self.assertEqual(created, "")
        yield self.ok("PUT", "/compute_pools/p1",
                      {"storage": "nfs1", "network": "net1", "failover": True})  # fmt: skip
        data = yield self.ok("GET", "/compute_pools/p1")
        self.assertEqual(
            data,
            {"name": "p1", "enabled": True, "cells": 0, "network": "net1", "storage": "nfs1",
             "failover": True},
        )  # fmt: skip
        listed = yield self.ok("GET", "/compute_pools/")
        self.assertEqual([p["name"] for p in listed], ["default", "p1"])
        yield self.ok("DELETE", "/compute_pools/p1")
        message = yield self.refused("GET", "/compute_pools/p1")
        self.assertEqual(message, "invalid pool 'p1'")

    @inlineCallbacks
    def test_validation(self) -> Any:
        self.assertEqual(
            (yield self.refused("POST", "/compute_pools/bad.name")),
            "invalid pool name 'bad.name': illegal char '.'",
        )
        self.assertEqual(
            (yield self.refused("POST", "/compute_pools/default")),
            "compute pool 'default' already exists",
        )
        self.assertEqual(
            (yield self.refused("POST", "/compute_pools/p", {"storage": "none"})),
            "invalid storage pool 'none'",
        )
        self.assertEqual(
            (yield self.refused("POST", "/compute_pools/p", {"network": "none"})),
            "invalid address pool 'none'",
        )
        self.assertEqual(
            (yield self.refused("POST", "/compute_pools/p", {"failover": True})),
            "using shared storage to enable Failover feature",
        )
        self.assertIn(
            "request.failover",
            (yield self.refused("POST", "/compute_pools/p", {"failover": "yes"})),
        )
        self.assertEqual((yield self.refused("PUT", "/compute_pools/default", {})),
                         "no need to change")  # fmt: skip
        self.assertEqual((yield self.refused("PUT", "/compute_pools/default")), "EOF")
        self.assertEqual((yield self.refused("DELETE", "/compute_pools/x")), "invalid pool 'x'")
        listed = yield self.ok("GET", "/compute_pools/")
        self.assertEqual(len(listed), 1)

    @inlineCallbacks
    def test_pool_with_cells_cannot_be_deleted_or_change_storage(self) -> Any:
        yield self.store.commit(UnitOfWork.of(Insert(ComputeCell("cell1", pool="default"))))
        yield self.ok("POST", "/storage_pools/nfs1", {"type": "nfs", "host": "h", "target": "/t"})
        self.assertEqual((yield self.refused("DELETE", "/compute_pools/default")),
                         "must remove all cells before delete")  # fmt: skip
        self.assertEqual(
            (yield self.refused("PUT", "/compute_pools/default", {"storage": "nfs1"})),
            "must remove all cells before change storage",
        )
        data = yield self.ok("GET", "/compute_pools/default")
        self.assertEqual(data["cells"], 1)


class StoragePoolTests(StoreTestCase):
    @inlineCallbacks
    def test_lifecycle_and_exact_shapes(self) -> Any:
        self.assertEqual((yield self.ok("GET", "/storage_pools/")), [])
        yield self.ok("POST", "/storage_pools/b", {"type": "nfs", "host": "h2", "target": "/b"})
        yield self.ok("POST", "/storage_pools/a", {"type": "nfs", "host": "h1", "target": "/a"})
        self.assertEqual(
            (yield self.ok("GET", "/storage_pools/")),
            [{"name": "a", "type": "nfs", "host": "h1", "target": "/a"},
             {"name": "b", "type": "nfs", "host": "h2", "target": "/b"}],
        )  # fmt: skip
        self.assertEqual(
            (yield self.ok("GET", "/storage_pools/a")),
            {"type": "nfs", "host": "h1", "target": "/a"},
        )
        yield self.ok("PUT", "/storage_pools/a", {"type": "nfs", "host": "h3", "target": "/a"})
        self.assertEqual((yield self.ok("GET", "/storage_pools/a"))["host"], "h3")
        yield self.ok("DELETE", "/storage_pools/a")
        self.assertEqual((yield self.refused("GET", "/storage_pools/a")),
                         "invalid storage pool 'a'")  # fmt: skip

    @inlineCallbacks
    def test_validation(self) -> Any:
        body = {"type": "nfs", "host": "h", "target": "/t"}
        self.assertEqual(
            (yield self.refused("POST", "/storage_pools/s", {**body, "type": "ceph"})),
            "invalid storage type 'ceph'",
        )
        self.assertEqual(
            (yield self.refused("POST", "/storage_pools/s", {"type": "nfs", "target": "/t"})),
            "host required",
        )
        self.assertEqual(
            (yield self.refused("POST", "/storage_pools/s!", body)),
            "invalid storage pool name 's!': illegal char '!'",
        )
        yield self.ok("POST", "/storage_pools/s", body)
        self.assertEqual((yield self.refused("POST", "/storage_pools/s", body)),
                         "storage pool 's' already exists")  # fmt: skip
        self.assertEqual(
            (yield self.refused("PUT", "/storage_pools/s", body)), "no need to change"
        )
        yield self.ok("POST", "/compute_pools/p", {"storage": "s"})
        self.assertEqual(
            (yield self.refused("PUT", "/storage_pools/s", {**body, "host": "x"})),
            "compute pool 'p' still attached to storage 's'",
        )
        self.assertEqual(
            (yield self.refused("DELETE", "/storage_pools/s")),
            "compute pool 'p' still attached to storage 's'",
        )
        self.assertEqual((yield self.refused("DELETE", "/storage_pools/x")),
                         "invalid storage pool 'x'")  # fmt: skip


class AddressPoolTests(StoreTestCase):
    body = {"gateway": "192.0.2.1", "dns": ["192.0.2.53"], "provider": "dhcp"}

    @inlineCallbacks
    def test_pool_and_range_lifecycle(self) -> Any:
        yield self.ok("POST", "/address_pools/net", self.body)
        yield self.ok("POST", "/address_pools/net/internal/ranges/192.0.2.10",
                      {"end": "192.0.2.20", "netmask": "255.255.255.0"})  # fmt: skip
        self.assertEqual(
            (yield self.ok("GET", "/address_pools/")),
            [{"name": "net", "gateway": "192.0.2.1", "dns": ["192.0.2.53"], "provider": "dhcp",
              "addresses": 11, "allocated": 0}],
        )  # fmt: skip
        self.assertEqual(
            (yield self.ok("GET", "/address_pools/net")),
            {"name": "net", "gateway": "192.0.2.1", "dns": ["192.0.2.53"], "provider": "dhcp",
             "ranges": [{"start": "192.0.2.10", "end": "192.0.2.20", "netmask": "255.255.255.0",
                         "capacity": 11}]},
        )  # fmt: skip
        self.assertEqual(
            (yield self.ok("GET", "/address_pools/net/internal/ranges/")),
            [{"start": "192.0.2.10", "end": "192.0.2.20", "netmask": "255.255.255.0"}],
        )
        self.assertEqual(
            (yield self.ok("GET", "/address_pools/net/internal/ranges/192.0.2.10")),
            {"start": "192.0.2.10", "end": "192.0.2.20", "netmask": "255.255.255.0",
             "capacity": 11},
        )  # fmt: skip
        yield self.ok(
            "PUT", "/address_pools/net", {"gateway": "192.0.2.254", "provider": "cloudinit"}
        )
        detail = yield self.ok("GET", "/address_pools/net")
        self.assertEqual((detail["gateway"], detail["provider"]), ("192.0.2.254", "cloudinit"))
        self.assertNotIn("dns", detail)
        yield self.ok("DELETE", "/address_pools/net/internal/ranges/192.0.2.10")
        yield self.ok("DELETE", "/address_pools/net")
        self.assertEqual((yield self.ok("GET", "/address_pools/")), [])

    @inlineCallbacks
    def test_pool_validation(self) -> Any:
        cases = [
            ({**self.body, "gateway": "nope"}, "invalid gateway 'nope'"),
            ({**self.body, "gateway": ""}, "invalid gateway ''"),
            ({**self.body, "dns": ["8.8.8"]}, "invalid DNS '8.8.8'"),
            ({**self.body, "provider": "static"}, "invalid provider 'static'"),
            ({"gateway": "192.0.2.1"}, "invalid provider ''"),
            ({**self.body, "mode": "odd"}, "invalid allocation mode"),
        ]
        for body, message in cases:
            self.assertEqual((yield self.refused("POST", "/address_pools/n", body)), message)
        yield self.ok("POST", "/address_pools/n", {**self.body, "mode": "internal"})
        self.assertEqual((yield self.refused("POST", "/address_pools/n", self.body)),
                         "address pool 'n' already exists")  # fmt: skip
        self.assertEqual((yield self.refused("GET", "/address_pools/x")),
                         "invalid address pool 'x'")  # fmt: skip
        yield self.ok("POST", "/compute_pools/p", {"network": "n"})
        self.assertEqual((yield self.refused("DELETE", "/address_pools/n")),
                         "address pool 'n' still used by compute pool 'p'")  # fmt: skip

    @inlineCallbacks
    def test_range_validation(self) -> Any:
        yield self.ok("POST", "/address_pools/n", self.body)
        base = "/address_pools/n/internal/ranges/"
        mask = "255.255.255.0"
        cases = [
            ("/address_pools/n/external/ranges/192.0.2.10", {"end": "192.0.2.20", "netmask": mask},
             "unsupported range type 'external'"),
            (base + "192.0.2.x", {"end": "192.0.2.20", "netmask": mask},
             "invalid start address '192.0.2.x'"),
            (base + "192.0.2.10", {"end": "nope", "netmask": mask}, "invalid end address 'nope'"),
            (base + "192.0.2.10", {"end": "192.0.2.20", "netmask": "255.0.255.0"},
             "invalid netmask '255.0.255.0'"),
            (base + "192.0.2.10", {"end": "192.0.2.5", "netmask": mask},
             "end address 192.0.2.5 is before start address 192.0.2.10"),
            (base + "192.0.2.10", {"end": "192.0.3.5", "netmask": mask},
             "end address 192.0.3.5 is outside the network 192.0.2.0/24"),
            (base + "192.0.2.1", {"end": "192.0.2.5", "netmask": mask},
             "gateway 192.0.2.1 inside range 192.0.2.1-192.0.2.5"),
            (base + "192.0.2.10", {"netmask": mask}, "end required"),
            ("/address_pools/x/internal/ranges/192.0.2.10", {"end": "192.0.2.20", "netmask": mask},
             "invalid address pool 'x'"),
        ]  # fmt: skip
        for path, body, message in cases:
            self.assertEqual((yield self.refused("POST", path, body)), message)
        yield self.ok("POST", base + "192.0.2.10", {"end": "192.0.2.20", "netmask": mask})
        self.assertEqual(
            (
                yield self.refused(
                    "POST", base + "192.0.2.10", {"end": "192.0.2.12", "netmask": mask}
                )
            ),
            "range '192.0.2.10' already exists in address pool 'n'",
        )
        self.assertEqual(
            (
                yield self.refused(
                    "POST", base + "192.0.2.15", {"end": "192.0.2.30", "netmask": mask}
                )
            ),
            "range 192.0.2.15-192.0.2.30 overlaps range 192.0.2.10-192.0.2.20",
        )
        self.assertEqual(
            (
                yield self.refused(
                    "PUT", "/address_pools/n", {**self.body, "gateway": "192.0.2.11"}
                )
            ),
            "gateway 192.0.2.11 inside range 192.0.2.10-192.0.2.20 of 'n'",
        )
        self.assertEqual(
            (yield self.refused("GET", base + "192.0.2.99")),
            "invalid range '192.0.2.99' in address pool 'n'",
        )
        self.assertEqual(len((yield self.ok("GET", base))), 1)


TEMPLATE = {
    "name": "Mine", "admin": "root", "operating_system": "linux", "disk": "scsi",
    "network": "virtio", "display": "vga", "control": "vnc", "usb": "nec-xhci", "tablet": "usb",
}  # fmt: skip


class TemplateTests(StoreTestCase):
    @inlineCallbacks
    def test_five_defaults(self) -> Any:
        listed = yield self.ok("GET", "/templates/")
        self.assertEqual(
            [t["name"] for t in listed],
            ["CentOS 7", "CentOS 6", "Windows Server 2012", "General", "Legacy"],
        )
        self.assertEqual(sorted(listed[0]), ["created_time", "id", "modified_time", "name",
                                             "operating_system"])  # fmt: skip
        legacy = yield self.ok("GET", "/templates/" + listed[4]["id"])
        self.assertNotIn("usb", legacy)
        self.assertNotIn("tablet", legacy)

    @inlineCallbacks
    def test_lifecycle(self) -> Any:
        created = yield self.ok("POST", "/templates/", TEMPLATE)
        self.assertEqual(list(created), ["id"])
        self.assertEqual(len(created["id"]), 20)
        path = "/templates/" + created["id"]
        data = yield self.ok("GET", path)
        self.assertEqual(
            list(data),
            ["id", "name", "admin", "operating_system", "disk", "network", "display", "control",
             "usb", "tablet", "created_time", "modified_time"],
        )  # fmt: skip
        self.assertEqual({k: data[k] for k in TEMPLATE}, TEMPLATE)
        self.clock.advance(5)
        yield self.ok("PUT", path, {**TEMPLATE, "display": "qxl", "usb": ""})
        data = yield self.ok("GET", path)
        self.assertEqual(data["display"], "qxl")
        self.assertNotIn("usb", data)
        self.assertNotEqual(data["created_time"], data["modified_time"])
        yield self.ok("DELETE", path)
        self.assertEqual((yield self.refused("GET", path)), f"invalid template '{created['id']}'")

    @inlineCallbacks
    def test_validation(self) -> Any:
        cases = [
            ("name", "name required"),
            ("admin", "admin required"),
            ("operating_system", "operating system required"),
            ("disk", "disk driver required"),
            ("network", "network driver required"),
            ("display", "display model required"),
            ("control", "control protocol required"),
        ]
        for field, message in cases:
            body = {k: v for k, v in TEMPLATE.items() if k != field}
            self.assertEqual((yield self.refused("POST", "/templates/", body)), message)
        self.assertEqual(
            (yield self.refused("POST", "/templates/", {**TEMPLATE, "disk": "nvme"})),
            "invalid template config: invalid disk option 'nvme'",
        )
        self.assertEqual(
            (yield self.refused("POST", "/templates/", {**TEMPLATE, "name": "Legacy"})),
            "system template 'Legacy' already exists",
        )
        self.assertEqual((yield self.refused("PUT", "/templates/nope", TEMPLATE)),
                         "invalid template 'nope'")  # fmt: skip
        refused = yield self.refused(
            "POST", "/templates/", {**TEMPLATE, "name": "gpu\u202eexe.txt"}
        )
        self.assertEqual(
            refused, "invalid template name 'gpu\\u202eexe.txt': illegal char '\\u202e'"
        )
        self.assertEqual(len((yield self.ok("GET", "/templates/"))), 5)


GROUP = {
    "name": "web", "description": "web servers", "user": "admin", "group": "ops",
    "enabled": True, "global": False, "default_action": "reject",
}  # fmt: skip


class SecurityGroupTests(StoreTestCase):
    @inlineCallbacks
    def create(self, **changes: Any) -> Any:
        created = yield self.ok("POST", "/security_policy_groups/", {**GROUP, **changes})
        return created["id"]

    @inlineCallbacks
    def test_group_lifecycle_and_search(self) -> Any:
        first = yield self.create()
        second = yield self.create(name="db", user="other", enabled=False, **{"global": True})
        data = yield self.ok("GET", f"/security_policy_groups/{first}")
        self.assertEqual(
            data,
            {"id": first, "name": "web", "description": "web servers", "user": "admin",
             "group": "ops", "enabled": True, "global": False, "default_action": "reject"},
        )  # fmt: skip
        search = "/search/security_policy_groups/"
        self.assertEqual([g["id"] for g in (yield self.ok("GET", search))], [first, second])
        self.assertEqual([g["id"] for g in (yield self.ok("GET", search + "?owner=admin"))],
                         [first])  # fmt: skip
        self.assertEqual([g["id"] for g in (yield self.ok("GET", search + "?enabled_only=true"))],
                         [first])  # fmt: skip
        self.assertEqual([g["id"] for g in (yield self.ok("GET", search + "?global_only=true"))],
                         [second])  # fmt: skip
        self.assertEqual(len((yield self.ok("GET", search + "x?global_only=yes"))), 2)
        yield self.ok("PUT", f"/security_policy_groups/{first}",
                      {**GROUP, "default_action": "accept", "description": ""})  # fmt: skip
        data = yield self.ok("GET", f"/security_policy_groups/{first}")
        self.assertEqual(data["default_action"], "accept")
        self.assertNotIn("description", data)
        yield self.ok("DELETE", f"/security_policy_groups/{second}")
        self.assertEqual(
            (yield self.refused("GET", f"/security_policy_groups/{second}")),
            f"invalid security policy group '{second}'",
        )

    @inlineCallbacks
    def test_group_validation(self) -> Any:
        yield self.create()
        self.assertEqual((yield self.refused("POST", "/security_policy_groups/", GROUP)),
                         "security policy group 'web' already exists")  # fmt: skip
        self.assertEqual(
            (yield self.refused("POST", "/security_policy_groups/", {**GROUP, "name": ""})),
            "name required",
        )
        self.assertEqual(
            (yield self.refused("POST", "/security_policy_groups/",
                                {**GROUP, "name": "x", "user": "a b"})),
            "invalid user name 'a b': illegal char ' '",
        )  # fmt: skip
        self.assertIn(
            "request.enabled",
            (yield self.refused("POST", "/security_policy_groups/", {**GROUP, "enabled": 1})),
        )

    @inlineCallbacks
    def test_rules(self) -> Any:
        group_id = yield self.create()
        rules = f"/security_policy_groups/{group_id}/rules/"
        ssh = {"action": "accept", "protocol": "tcp", "to_port": 22}
        web = {"action": "accept", "protocol": "tcp", "from_address": "192.0.2.7",
               "to_address": "192.0.2.8", "to_port": 80}  # fmt: skip
        ping = {"action": "drop", "protocol": "icmp"}
        for rule in (ssh, web, ping):
            yield self.ok("POST", rules, rule)
        self.assertEqual(
            (yield self.ok("GET", rules)),
            [{"action": "accept", "protocol": "tcp", "to_port": 22},
             {"action": "accept", "protocol": "tcp", "from_address": "192.0.2.7",
              "to_address": "192.0.2.8", "to_port": 80},
             {"action": "reject", "protocol": "icmp", "to_port": 0}],
        )  # fmt: skip
        self.assertEqual((yield self.refused("POST", rules, ssh)),
                         "rule tcp::22 already defined in policy group 'web'")  # fmt: skip
        self.assertEqual((yield self.refused("PUT", rules + "0", ssh)), "no need to change")
        self.assertEqual((yield self.refused("PUT", rules + "1", ssh)),
                         "rule tcp::22 already defined in policy group 'web'")  # fmt: skip
        yield self.ok("PUT", rules + "0", {**ssh, "to_port": 2222})
        yield self.ok("PUT", rules + "2/order", {"direction": "up"})
        self.assertEqual([r["protocol"] for r in (yield self.ok("GET", rules))],
                         ["tcp", "icmp", "tcp"])  # fmt: skip
        self.assertEqual((yield self.refused("PUT", rules + "0/order", {"direction": "up"})),
                         "already on top")  # fmt: skip
        self.assertEqual((yield self.refused("PUT", rules + "2/order", {"direction": "down"})),
                         "already on bottom")  # fmt: skip
        yield self.ok("DELETE", rules + "1")
        self.assertEqual([r["to_port"] for r in (yield self.ok("GET", rules))], [2222, 80])

    @inlineCallbacks
    def answers(self, *calls: tuple[str, str, Any]) -> Any:
        """Fire ``calls`` at once (none waits for another's answer): the envelopes' messages,
        "" for a success, in the order the calls were made."""
        answers = yield gatherResults(
            [self.client.request(method, path, body) for method, path, body in calls]
        )
        return [answer.envelope()["message"] for answer in answers]

    @inlineCallbacks
    def test_concurrent_rule_changes_run_in_turn(self) -> Any:
        """Nano ran them one after another; each decides on the rules the one before left."""
        group_id = yield self.create()
        rules = f"/security_policy_groups/{group_id}/rules/"
        ssh = {"action": "accept", "protocol": "tcp", "to_port": 22}
        web = {"action": "accept", "protocol": "tcp", "to_port": 80}
        added = yield self.answers(("POST", rules, ssh), ("POST", rules, web),
                                   ("POST", rules, ssh))  # fmt: skip
        self.assertEqual(added, ["", "", "rule tcp::22 already defined in policy group 'web'"])
        self.assertEqual([r["to_port"] for r in (yield self.ok("GET", rules))], [22, 80])
        changed = yield self.answers(
            ("PUT", rules + "0", {**ssh, "to_port": 2222}),
            ("PUT", rules + "1/order", {"direction": "up"}),
            ("DELETE", rules + "0", None),
            ("DELETE", rules + "1", None),  # one rule is left by now
            ("PUT", rules + "0/order", {"direction": "down"}),  # ... and it is at the bottom
        )
        self.assertEqual(changed, ["", "", "", "invalid index 1", "already on bottom"])
        self.assertEqual([r["to_port"] for r in (yield self.ok("GET", rules))], [2222])

    @inlineCallbacks
    def test_group_changes_run_in_turn_with_its_rule_changes(self) -> Any:
        """A full replacement decided while a rule is being added keeps the rule (it used to
        put back the rules it read before), and a deleted group takes no more rules."""
        group_id = yield self.create()
        path = f"/security_policy_groups/{group_id}"
        ssh = {"action": "accept", "protocol": "tcp", "to_port": 22}
        answers = yield self.answers(
            ("POST", path + "/rules/", ssh),
            ("PUT", path, {**GROUP, "default_action": "accept"}),
            ("PUT", path, {**GROUP, "default_action": "accept"}),
        )
        self.assertEqual(answers, ["", "", "no need to change"])
        self.assertEqual(len((yield self.ok("GET", path + "/rules/"))), 1)
        self.assertEqual((yield self.ok("GET", path))["default_action"], "accept")
        answers = yield self.answers(("DELETE", path, None), ("POST", path + "/rules/", ssh))
        self.assertEqual(answers, ["", f"invalid security policy group '{group_id}'"])

    @inlineCallbacks
    def test_failed_commit_ends_its_turn(self) -> Any:
        """A change whose commit fails answers its failure; the next one still runs."""
        group_id = yield self.create()
        rules = f"/security_policy_groups/{group_id}/rules/"
        commit = self.store.commit
        failing = [True]

        def first_fails(unit: UnitOfWork) -> Any:
            if failing.pop() if failing else False:  # after a round through the store
                return commit(UnitOfWork(())).addCallback(lambda _: fail(StoreError("disk full")))
            return commit(unit)

        self.patch(self.store, "commit", first_fails)
        ssh = {"action": "accept", "protocol": "tcp", "to_port": 22}
        web = {"action": "accept", "protocol": "tcp", "to_port": 80}
        answers = yield gatherResults([self.client.post(rules, ssh), self.client.post(rules, web)])
        self.assertEqual([a.envelope()["error_code"] for a in answers], [500, 0])
        self.assertEqual(len(self.flushLoggedErrors(StoreError)), 1)  # an internal error
        self.assertEqual([r["to_port"] for r in (yield self.ok("GET", rules))], [80])

    @inlineCallbacks
    def test_rule_validation(self) -> Any:
        group_id = yield self.create()
        rules = f"/security_policy_groups/{group_id}/rules/"
        cases = [
            ({"protocol": "gre"}, "invalid protocol: gre"),
            ({"protocol": "tcp", "from_address": "x"}, "invalid source address 'x'"),
            ({"protocol": "tcp", "to_address": "::1"}, "invalid target address '::1'"),
            ({"protocol": "tcp", "to_port": 70000}, "invalid target port 70000"),
            ({"protocol": "tcp", "to_port": -1}, None),
        ]
        for body, message in cases:
            refused = yield self.refused("POST", rules, body)
            if message is None:
                self.assertIn("request.to_port", refused)
            else:
                self.assertEqual(refused, message)
        self.assertEqual((yield self.refused("DELETE", rules + "-1")), "invalid index -1")
        self.assertEqual((yield self.refused("DELETE", rules + "0")), "invalid index 0")
        self.assertEqual((yield self.refused("GET", "/security_policy_groups/x/rules/")),
                         "invalid security policy group 'x'")  # fmt: skip
        self.assertEqual((yield self.ok("GET", rules)), [])


class StatusTests(StoreTestCase):
    @inlineCallbacks
    def add_cells(self) -> Any:
        # Linked before it is a member, so that Core pushes no pool to it.
        self.directory.connect(
            "cell-a", "127.0.0.2",
            CellStatus(cores=4, usage=12.5, memory_available=6, memory_total=8, disk_free=40,
                       disk_total=100, speed=(1, 2, 3, 4)),
        )  # fmt: skip
        yield self.store.commit(
            UnitOfWork.of(
                Insert(ComputeCell("cell-a", pool="default")),
                Insert(ComputeCell("cell-b", pool="default")),
                Insert(
                    Instance(id="i1", name="vm1", owner="admin", group="ops", pool="default",
                             cell="cell-a", cores=1, memory=1 << 30, disks=(1 << 30,),
                             status=InstanceStatus.RUNNING)
                ),
            )
        )  # fmt: skip

    @inlineCallbacks
    def test_zone_counts_dead_cells_offline_and_speeds_are_not_swapped(self) -> Any:
        yield self.add_cells()
        zone = yield self.ok("GET", "/compute_zone_status/")
        start_time = zone.pop("start_time")
        self.assertRegex(start_time, r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
        self.assertEqual(
            zone,
            {"name": "default", "pools": [0, 1], "cells": [1, 1], "instances": [0, 1, 0, 0],
             "cpu_usage": 12.5, "max_cpu": 4, "available_memory": 6, "max_memory": 8,
             "available_disk": 40, "max_disk": 100, "read_speed": 1, "write_speed": 2,
             "receive_speed": 3, "send_speed": 4},
        )  # fmt: skip

    @inlineCallbacks
    def test_pool_and_cell_status(self) -> Any:
        self.assertEqual((yield self.ok("GET", "/compute_cell_status/default")), None)
        yield self.add_cells()
        pools = yield self.ok("GET", "/compute_pool_status/")
        self.assertEqual(pools[0]["cpu_usage"], 12)
        self.assertEqual(pools[0]["cells"], [1, 1])
        one = yield self.ok("GET", "/compute_pool_status/default")
        self.assertEqual(one["cpu_usage"], 12.5)
        cells = yield self.ok("GET", "/compute_cell_status/default")
        self.assertEqual([(c["name"], c["alive"], c["max_cpu"]) for c in cells],
                         [("cell-a", True, 4), ("cell-b", False, 0)])  # fmt: skip
        cell = yield self.ok("GET", "/compute_cell_status/default/cell-a")
        self.assertEqual(
            list(cell),
            ["name", "address", "enabled", "alive", "instances", "cpu_usage", "max_cpu",
             "available_memory", "max_memory", "available_disk", "max_disk", "read_speed",
             "write_speed", "receive_speed", "send_speed"],
        )  # fmt: skip
        self.assertEqual(cell["instances"], [0, 1, 0, 0])
        self.assertEqual((yield self.refused("GET", "/compute_cell_status/default/cell-x")),
                         "cell 'cell-x' not in pool 'default'")  # fmt: skip
        self.assertEqual((yield self.refused("GET", "/compute_pool_status/x")), "invalid pool 'x'")

    @inlineCallbacks
    def test_no_pools_is_null(self) -> Any:
        yield self.ok("DELETE", "/compute_pools/default")
        self.assertEqual((yield self.ok("GET", "/compute_pool_status/")), None)


class CacheFollowsCommitsTests(StoreTestCase):
    @inlineCallbacks
    def test_list_reflects_each_commit(self) -> Any:
        self.assertEqual(len((yield self.ok("GET", "/storage_pools/"))), 0)
        yield self.ok("POST", "/storage_pools/s", {"type": "nfs", "host": "h", "target": "/t"})
        self.assertEqual(len((yield self.ok("GET", "/storage_pools/"))), 1)
        yield self.ok("DELETE", "/storage_pools/s")
        self.assertEqual(len((yield self.ok("GET", "/storage_pools/"))), 0)


class CacheFollowsOtherCommitsTests(StoreTestCase):
    @inlineCallbacks
    def test_commit_that_bypasses_operations_still_refreshes_lists(self) -> Any:
        self.assertEqual(len((yield self.ok("GET", "/compute_pools/"))), 1)
        yield self.store.commit(UnitOfWork.of(Insert(ComputeCell("cell-z", pool="default"))))
        self.assertEqual((yield self.ok("GET", "/compute_pools/"))[0]["cells"], 1)


class RaceTests(StoreTestCase):
    """Two requests validated against the same view: the store or a claim refuses the second."""

    @inlineCallbacks
    def test_racing_creations_of_one_name(self) -> Any:
        body = {"type": "nfs", "host": "h", "target": "/t"}
        first = self.client.post("/storage_pools/s", body)
        second = self.client.post("/storage_pools/s", body)
        answers = [(yield first), (yield second)]
        self.assertEqual([a.envelope()["error_code"] for a in answers], [0, 500])
        self.assertIn("already", answers[1].error)
        self.assertEqual(len(self.store.view.storage_pools), 1)

    @inlineCallbacks
    def test_racing_templates_of_one_name(self) -> Any:
        first = self.client.post("/templates/", TEMPLATE)
        second = self.client.post("/templates/", TEMPLATE)
        answers = [(yield first), (yield second)]
        self.assertEqual(answers[1].error, "system template 'Mine' already exists")
        self.assertEqual([t.name for t in self.store.view.templates.values()].count("Mine"), 1)

    @inlineCallbacks
    def test_a_range_removal_racing_an_allocation_answers_nanos_words(self) -> Any:
        """The allocation commits between the removal's check and its commit: the removal is
        refused as Nano refused a range in use, not with the store's sentence."""
        yield self.ok("POST", "/address_pools/n", {"gateway": "192.0.2.1", "provider": "dhcp"})
        base = "/address_pools/n/internal/ranges/"
        yield self.ok(
            "POST", base + "192.0.2.10", {"end": "192.0.2.20", "netmask": "255.255.255.0"}
        )
        allocating = self.store.commit(
            UnitOfWork.of(
                Insert(AddressAllocation(pool="n", range_start="192.0.2.10",
                                           address="192.0.2.11", instance="g1"))
            )
        )  # fmt: skip
        removal = self.client.request("DELETE", base + "192.0.2.10")
        yield allocating
        answer = yield removal
        self.assertEqual(answer.error, "1 address(es) of range '192.0.2.10' still allocated")
        self.assertEqual(len(self.store.view.address_ranges), 1)

    @inlineCallbacks
    def test_racing_range_additions(self) -> Any:
        yield self.ok("POST", "/address_pools/n", {"gateway": "192.0.2.1", "provider": "dhcp"})
        base = "/address_pools/n/internal/ranges/"
        first = self.client.post(
            base + "192.0.2.10", {"end": "192.0.2.20", "netmask": "255.255.255.0"}
        )
        second = self.client.post(
            base + "192.0.2.15", {"end": "192.0.2.30", "netmask": "255.255.255.0"}
        )
        answers = [(yield first), (yield second)]
        self.assertEqual(answers[0].envelope()["error_code"], 0)
        self.assertEqual(answers[1].error, "address pool 'n' is being changed, retry")
        self.assertEqual(len(self.store.view.address_ranges), 1)

    @inlineCallbacks
    def test_a_gateway_change_racing_a_range_addition(self) -> Any:
        """Each checked against the other's committed values, both passed, and the gateway
        ended inside the range (QA pass 25)."""
        yield self.ok("POST", "/address_pools/n", {"gateway": "192.0.2.1", "provider": "dhcp"})
        adding = self.client.post("/address_pools/n/internal/ranges/192.0.2.10",
                                  {"end": "192.0.2.20", "netmask": "255.255.255.0"})  # fmt: skip
        moving = self.client.put("/address_pools/n", {"gateway": "192.0.2.15", "provider": "dhcp"})
        answers = [(yield adding), (yield moving)]
        self.assertEqual(answers[0].envelope()["error_code"], 0)
        self.assertEqual(answers[1].error, "address pool 'n' is being changed, retry")
        self.assertEqual(self.store.view.address_pools["n"].gateway, "192.0.2.1")
        again = yield self.client.put(
            "/address_pools/n", {"gateway": "192.0.2.15", "provider": "dhcp"}
        )
        self.assertEqual(
            again.error, "gateway 192.0.2.15 inside range 192.0.2.10-192.0.2.20 of 'n'"
        )
