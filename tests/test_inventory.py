"""Reading a Cell's instance inventory from its ready event: validated entry by entry."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from nanocore import model as m
from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.operations.inventory import InventoryError, read_inventory

GiB = 1 << 30


def ready_event(*rows: dict[str, Any]) -> Message:
    """A ComputeCellReadyEvent over ``rows`` (each row overrides a default guest)."""
    guests = [
        {
            "name": "admin.web",
            "id": f"guest-{index}",
            "status": 0,
            "created": 1,
            "priority": 0,
            "disks": (10 * GiB,),
            "create": "2024-05-01 10:00:00",
            "internal": "",
            **row,
        }
        for index, row in enumerate(rows)
    ]
    strings = {
        ParamKey.Name: tuple(g["name"] for g in guests),
        ParamKey.Instance: tuple(g["id"] for g in guests),
        ParamKey.User: tuple("admin" for _ in guests),
        ParamKey.Group: tuple("admin" for _ in guests),
        ParamKey.Secret: tuple("" for _ in guests),
        ParamKey.Address: tuple("" for _ in guests),
        ParamKey.System: tuple("windows" for _ in guests),
        ParamKey.Create: tuple(g["create"] for g in guests),
        ParamKey.Internal: tuple(g["internal"] for g in guests),
        ParamKey.External: tuple("" for _ in guests),
        ParamKey.Hardware: tuple("" for _ in guests),
    }
    uints = {
        ParamKey.Core: tuple(1 for _ in guests),
        ParamKey.Option: tuple(0 for _ in guests),
        ParamKey.Enable: tuple(g["created"] for g in guests),
        ParamKey.Progress: tuple(40 for _ in guests),
        ParamKey.Status: tuple(g["status"] for g in guests),
        ParamKey.Monitor: tuple(5901 for _ in guests),
        ParamKey.Memory: tuple(GiB for _ in guests),
        ParamKey.Count: tuple(len(g["disks"]) for g in guests),
        ParamKey.Disk: tuple(size for g in guests for size in g["disks"]),
        ParamKey.Priority: tuple(g["priority"] for g in guests),
        ParamKey.Limit: tuple(0 for _ in guests for _ in range(6)),
    }
    return Message(
        id=MessageID.ComputeCellReadyEvent,
        success=True,
        uint_params={ParamKey.Count: len(guests)},
        string_array_params=strings,
        uint_array_params=uints,
    )


def read(message: Message, known: dict[str, m.Instance] | None = None) -> Any:
    return read_inventory(
        message, pool="p", cell="Cell_1", cell_address="127.0.0.1", known=known or {}
    )


class InventoryTests(SynchronousTestCase):
    def test_fields_are_mapped(self) -> None:
        inventory = read(ready_event({}, {"status": 1}, {"created": 0}))
        first, running, creating = inventory.instances
        self.assertEqual(inventory.skipped, ())
        self.assertEqual(
            (first.name, first.group, first.pool, first.cell), ("web", "admin", "p", "Cell_1")
        )
        self.assertEqual(first.status, m.InstanceStatus.STOPPED)
        self.assertEqual(first.system, m.OperatingSystem.WINDOWS)
        self.assertEqual(first.internal.monitor_address, "127.0.0.1")
        self.assertEqual(first.progress, 0)
        self.assertEqual(running.status, m.InstanceStatus.RUNNING)
        self.assertEqual((creating.status, creating.progress), (m.InstanceStatus.CREATING, 40))

    def test_empty_event_is_an_empty_inventory(self) -> None:
        message = Message(id=MessageID.ComputeCellReadyEvent, success=True)
        self.assertEqual(read(message).instances, ())

    def test_disagreeing_lengths_refuse_the_whole_report(self) -> None:
        message = ready_event({}, {})
        broken = Message(
            id=message.id,
            uint_params={ParamKey.Count: 3},
            string_array_params=message.string_array_params,
            uint_array_params=message.uint_array_params,
        )
        with self.assertRaises(InventoryError):
            read(broken)
        arrays = dict(message.uint_array_params)
        arrays[ParamKey.Disk] = arrays[ParamKey.Disk][:1]
        with self.assertRaises(InventoryError):
            read(Message(id=message.id, uint_params=message.uint_params,
                         string_array_params=message.string_array_params,
                         uint_array_params=arrays))  # fmt: skip

    def test_malformed_entries_are_skipped_with_a_reason(self) -> None:
        inventory = read(
            ready_event(
                {"id": "good"}, {"id": "bad", "priority": 7}, {"id": "x y"}, {"id": "good"}
            )
        )
        self.assertEqual([i.id for i in inventory.instances], ["good"])
        self.assertEqual(len(inventory.skipped), 3)
        self.assertIn("'cpu_priority' must be 0, 1 or 2, not 7", inventory.skipped[0])
        self.assertIn("reported twice", inventory.skipped[2])

    def test_loose_fields_fall_back_to_what_core_knew(self) -> None:
        known = m.Instance(
            id="guest-0",
            name="web",
            owner="admin",
            group="admin",
            pool="p",
            cell="Cell_1",
            cores=1,
            memory=GiB,
            disks=(GiB,),
            template="tmpl-1",
            create_time="2023-01-01 00:00:00",
            internal=m.InstanceNetwork(assigned_address="192.0.2.5/24"),
        )
        inventory = read(
            ready_event({"create": "1714529472", "internal": "192.0.2.5"}), {"guest-0": known}
        )
        (guest,) = inventory.instances
        self.assertEqual(guest.create_time, "2023-01-01 00:00:00")
        self.assertEqual(guest.internal.assigned_address, "192.0.2.5/24")
        self.assertEqual(guest.template, "tmpl-1")
