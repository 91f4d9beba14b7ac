"""Tests for nanocore.model: every entity validates its fields and derives what Cells need."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase

from nanocore import model as m

NOW = "2024-05-01 12:00:00"


def instance(**changes: Any) -> m.Instance:
    fields: dict[str, Any] = {
        "id": "6f1c2b9e-0d7a-4f55-9b0e-3c1d2e3f4a5b",
        "name": "web1",
        "owner": "admin",
        "group": "ops",
        "pool": "default",
        "cell": "Cell_525400aabbcc",
        "cores": 2,
        "memory": 2 << 30,
        "disks": [10 << 30, 5 << 30],
    }
    fields.update(changes)
    return m.Instance(**fields)


class ValidationErrorMixin:
    def assertRejected(self, build: Any, field_name: str) -> str:
        """``build()`` raises a ValueError/TypeError whose message names ``field_name``."""
        try:
            build()
        except (ValueError, TypeError) as error:
            message = m.validation_message(error)
            self.assertIn(f"'{field_name}", message)  # type: ignore[attr-defined]
            return message
        self.fail(f"{field_name}: no error")  # type: ignore[attr-defined]
        raise AssertionError  # pragma: no cover


class NameTests(ValidationErrorMixin, SynchronousTestCase):
    def test_qualified_names(self) -> None:
        self.assertEqual(m.ComputePool(name="pool-1_A").name, "pool-1_A")
        for bad in ("", "a b", "a.b", "é", "x" * 256, "a/b"):
            self.assertRejected(lambda bad=bad: m.ComputePool(name=bad), "name")

    def test_name_must_be_str(self) -> None:
        self.assertRejected(lambda: m.ComputePool(name=1), "name")  # type: ignore[arg-type]

    def test_image_names_allow_dots(self) -> None:
        image = m.DiskImage(id="i1", name="centos-7.9", owner="admin", group="ops")
        self.assertEqual(image.name, "centos-7.9")
        self.assertRejected(lambda: m.DiskImage(id="i1", name="a b", owner="a", group="g"), "name")

    def test_labels_allow_spaces_not_control_characters(self) -> None:
        self.assertEqual(m.AddressPool(name="lab net", gateway="10.0.0.1").name, "lab net")
        self.assertRejected(lambda: m.AddressPool(name="a\nb", gateway="10.0.0.1"), "name")
        self.assertRejected(lambda: m.AddressPool(name="", gateway="10.0.0.1"), "name")

    def test_a_description_with_nul_says_so(self) -> None:
        """It said only "text of at most 4096 characters" of a 3-character value (QA pass 20)."""
        with self.assertRaises(ValueError) as caught:
            m.DiskImage(id="i1", name="n", owner="a", group="g", description="a\x00b")
        self.assertIn("text of at most 4096 characters, without NUL", str(caught.exception))

    def test_labels_refuse_bidi_and_other_format_characters(self) -> None:
        """A right-to-left override makes 'exe.txt' display as 'txt.exe'; none gets in."""
        self.assertEqual(m.AddressPool(name="réseau שלום", gateway="10.0.0.1").name, "réseau שלום")
        invisible = ["\u202e", "\u2066", "\u200f", "\u200b", "\ufeff", "\x85", "\u2028", "\ud800"]
        for character in invisible:
            self.assertRejected(
                lambda c=character: m.AddressPool(name=f"a{c}b", gateway="10.0.0.1"), "name"
            )
            self.assertRejected(lambda c=character: m.ComputePool(name="p", network=c), "network")

    def test_a_refusal_quotes_a_cut_of_the_value_with_invisible_characters_escaped(self) -> None:
        """The API shows these messages: a megabyte sent is not a megabyte echoed, and an
        override quoted raw would turn the message around (or, a lone surrogate, make it
        impossible to encode)."""
        meaning = "1-255 characters of A-Z a-z 0-9 _ -"
        self.assertEqual(
            self.assertRejected(lambda: m.ComputePool(name="p" * 1_000_000), "name"),
            f"'name' must be {meaning}, not '{'p' * 64}…'",
        )
        self.assertEqual(
            self.assertRejected(lambda: m.ComputePool(name="p" * 63 + " "), "name"),
            f"'name' must be {meaning}, not '{'p' * 63} '",  # 64 characters: no cut
        )
        for name, shown in (("a\u202eb", "a\\u202eb"), ("\ud800", "\\ud800"), ("\t", "\\t")):
            self.assertEqual(
                self.assertRejected(lambda n=name: m.ComputePool(name=n), "name"),
                f"'name' must be {meaning}, not '{shown}'",
            )
        many = ("x",) * 100  # not a string: its repr, cut as well
        self.assertEqual(
            self.assertRejected(lambda: m.ComputePool(name=many), "name"),  # type: ignore[arg-type]
            f"'name' must be {meaning}, not {repr(many)[:64]}…",
        )


class PoolTests(ValidationErrorMixin, SynchronousTestCase):
    def test_defaults(self) -> None:
        pool = m.ComputePool(name="default")
        self.assertEqual(
            (pool.enabled, pool.network, pool.storage, pool.failover), (True, "", "", False)
        )
        self.assertEqual(pool.key, "default")

    def test_failover_requires_storage(self) -> None:
        self.assertRejected(lambda: m.ComputePool(name="p", failover=True), "failover")
        self.assertTrue(m.ComputePool(name="p", storage="nfs1", failover=True).failover)

    def test_evolve_validates(self) -> None:
        pool = m.ComputePool(name="p")
        self.assertEqual(attrs.evolve(pool, storage="nfs").storage, "nfs")
        self.assertRejected(lambda: attrs.evolve(pool, storage="bad name"), "storage")

    def test_frozen(self) -> None:
        pool = m.ComputePool(name="p")
        with self.assertRaises(attrs.exceptions.FrozenInstanceError):
            pool.name = "q"  # type: ignore[misc]

    def test_cell_membership(self) -> None:
        cell = m.ComputeCell(name="Cell_525400aabbcc")
        self.assertEqual((cell.pool, cell.enabled, cell.purge_pending), ("", True, False))
        self.assertRejected(lambda: m.ComputeCell(name="c", enabled="yes"), "enabled")  # type: ignore[arg-type]

    def test_storage_pool_type(self) -> None:
        pool = m.StoragePool(name="nfs1", host="192.0.2.5", target="/export/nano", type="nfs")
        self.assertIs(pool.type, m.StorageType.NFS)
        message = self.assertRejected(
            lambda: m.StoragePool(name="s", host="h", target="/t", type="ceph"), "type"
        )
        self.assertIn("'nfs'", message)


class AddressTests(ValidationErrorMixin, SynchronousTestCase):
    def test_address_pool(self) -> None:
        pool = m.AddressPool(
            name="net", gateway="10.0.0.1", dns=["8.8.8.8", "1.1.1.1"], provider="cloudinit"
        )
        self.assertEqual(pool.dns, ("8.8.8.8", "1.1.1.1"))
        self.assertIs(pool.provider, m.AddressProvider.CLOUDINIT)
        self.assertIs(pool.mode, m.AddressMode.UNSET)
        self.assertRejected(lambda: m.AddressPool(name="n", gateway="10.0.0.256"), "gateway")
        self.assertRejected(lambda: m.AddressPool(name="n", gateway="10.0.0.1", dns=["x"]), "dns")
        self.assertRejected(
            lambda: m.AddressPool(name="n", gateway="10.0.0.1", provider="static"), "provider"
        )

    def test_range_capacity_and_membership(self) -> None:
        r = m.AddressRange(pool="net", start="10.0.0.10", end="10.0.0.19", netmask="255.255.255.0")
        self.assertEqual(r.capacity, 10)
        self.assertIn("10.0.0.10", r)
        self.assertIn("10.0.0.19", r)
        self.assertNotIn("10.0.0.20", r)
        self.assertNotIn("garbage", r)
        self.assertEqual(r.key, ("net", "10.0.0.10"))
        self.assertEqual(str(r.network), "10.0.0.0/24")

    def test_range_rules(self) -> None:
        def build(start: str, end: str, mask: str) -> m.AddressRange:
            return m.AddressRange(pool="net", start=start, end=end, netmask=mask)

        self.assertIn(
            "before",
            self.assertRejected(lambda: build("10.0.0.9", "10.0.0.1", "255.255.255.0"), "end"),
        )
        self.assertIn(
            "outside",
            self.assertRejected(lambda: build("10.0.0.9", "10.0.1.1", "255.255.255.0"), "end"),
        )
        for mask in ("255.0.255.0", "0.0.0.255", "0.0.0.0", "255.255.255", "24"):
            self.assertRejected(lambda mask=mask: build("10.0.0.1", "10.0.0.2", mask), "netmask")
        self.assertEqual(build("10.0.0.1", "10.0.0.1", "255.255.255.255").capacity, 1)

    def test_overlap(self) -> None:
        a = m.AddressRange(pool="n", start="10.0.0.1", end="10.0.0.10", netmask="255.255.255.0")
        b = m.AddressRange(pool="n", start="10.0.0.10", end="10.0.0.20", netmask="255.255.255.0")
        c = m.AddressRange(pool="n", start="10.0.0.11", end="10.0.0.20", netmask="255.255.255.0")
        self.assertTrue(a.overlaps(b))
        self.assertFalse(a.overlaps(c))

    def test_allocation(self) -> None:
        allocation = m.AddressAllocation(
            pool="net", range_start="10.0.0.1", address="10.0.0.5", instance="abc-123"
        )
        self.assertEqual(allocation.key, ("net", "10.0.0.5"))
        self.assertRejected(
            lambda: m.AddressAllocation(
                pool="n", range_start="10.0.0.1", address="10.0.0.5/24", instance="i"
            ),
            "address",
        )


class TemplateTests(ValidationErrorMixin, SynchronousTestCase):
    def test_five_defaults(self) -> None:
        templates = m.default_templates([f"t{i}" for i in range(5)], NOW)
        self.assertEqual(
            [t.name for t in templates],
            ["CentOS 7", "CentOS 6", "Windows Server 2012", "General", "Legacy"],
        )
        self.assertEqual(templates[0].options(), (0, 0, 0, 0, 0, 1, 1))
        self.assertEqual(templates[2].options(), (1, 1, 1, 0, 0, 1, 1))
        self.assertEqual(templates[3].options(), (0, 1, 2, 0, 0, 0, 1))
        self.assertEqual(templates[4].options(), (0, 2, 2, 1, 0, 0, 0))
        self.assertEqual(templates[2].admin, "Administrator")
        self.assertEqual(templates[0].created_time, NOW)

    def test_options_validated(self) -> None:
        base = {
            "id": "t",
            "name": "n",
            "admin": "root",
            "operating_system": "linux",
            "disk": "sata",
            "network": "virtio",
            "display": "none",
            "control": "spice",
        }
        template = m.SystemTemplate(**base)
        self.assertEqual(template.options(), (0, 1, 0, 4, 1, 0, 0))
        # The Cells' display indexes (Nano's TemplateDisplayDriver): virtio 2, qxl 3.
        displays = {
            d: m.SystemTemplate(**{**base, "display": d}).options()[3] for d in ("virtio", "qxl")
        }
        self.assertEqual(displays, {"virtio": 2, "qxl": 3})
        for key, bad in (
            ("operating_system", "dos"),
            ("disk", "nvme"),
            ("network", "vmxnet"),
            ("display", "svga"),
            ("control", "rdp"),
            ("usb", "ehci"),
            ("tablet", "pen"),
        ):
            self.assertRejected(
                lambda key=key, bad=bad: m.SystemTemplate(**{**base, key: bad}), key
            )
        self.assertRejected(
            lambda: m.SystemTemplate(**{**base, "created_time": "yesterday"}), "created_time"
        )


class SecurityPolicyTests(ValidationErrorMixin, SynchronousTestCase):
    def test_rule_flatten(self) -> None:
        rule = m.SecurityPolicyRule(
            protocol="udp",
            target_port=53,
            accept=False,
            source_address="10.0.0.1",
            target_address="",
        )
        self.assertEqual(rule.flatten(), (1, 1, 0x0A000001, 0, 53))
        self.assertRejected(lambda: m.SecurityPolicyRule(protocol="gre"), "protocol")
        self.assertRejected(
            lambda: m.SecurityPolicyRule(protocol="tcp", target_port=70000), "target_port"
        )
        self.assertRejected(
            lambda: m.SecurityPolicyRule(protocol="tcp", source_address="host"), "source_address"
        )

    def test_group_rules_unique(self) -> None:
        ssh = m.SecurityPolicyRule(protocol="tcp", target_port=22)
        web = m.SecurityPolicyRule(protocol="tcp", target_port=80)
        group = m.SecurityPolicyGroup(
            id="g1", name="web", user="admin", group="ops", rules=[ssh, web]
        )
        self.assertEqual(group.rules, (ssh, web))
        message = self.assertRejected(
            lambda: m.SecurityPolicyGroup(
                id="g1",
                name="web",
                user="admin",
                group="ops",
                rules=[ssh, attrs.evolve(ssh, accept=False)],
            ),
            "rules[1]",
        )
        self.assertIn("duplicates", message)


class InstanceTests(ValidationErrorMixin, SynchronousTestCase):
    def test_record(self) -> None:
        guest = instance()
        self.assertEqual(guest.full_name, "ops.web1")
        self.assertEqual(guest.disks, (10 << 30, 5 << 30))
        self.assertEqual(guest.total_disk, 15 << 30)
        self.assertFalse(guest.created)
        running = attrs.evolve(guest, status="running")
        self.assertTrue(running.running and running.created)
        self.assertIs(guest.qos.cpu_priority, m.CPUPriority.HIGH)

    def test_rejects(self) -> None:
        self.assertRejected(lambda: instance(cores=0), "cores")
        self.assertRejected(lambda: instance(memory=-1), "memory")
        self.assertRejected(lambda: instance(cores=True), "cores")
        self.assertRejected(lambda: instance(disks=[]), "disks")
        self.assertRejected(lambda: instance(disks=[0]), "disks")
        self.assertRejected(lambda: instance(progress=101), "progress")
        self.assertRejected(lambda: instance(hardware_address="00:11:22"), "hardware_address")
        self.assertRejected(lambda: instance(status="zombie"), "status")
        self.assertRejected(lambda: instance(name="a.b"), "name")
        self.assertRejected(
            lambda: m.InstanceNetwork(assigned_address="10.0.0.5"), "assigned_address"
        )
        self.assertRejected(lambda: m.QoS(read_iops=-1), "read_iops")
        self.assertRejected(lambda: m.QoS(cpu_priority=7), "cpu_priority")

    def test_network_and_qos(self) -> None:
        guest = instance(
            internal=m.InstanceNetwork(assigned_address="10.0.0.5/24", monitor_port=5901),
            qos=m.QoS(cpu_priority=2, write_iops=100),
            hardware_address="52:54:00:AA:bb:01",
        )
        self.assertEqual(guest.internal.assigned_address, "10.0.0.5/24")
        self.assertIs(guest.qos.cpu_priority, m.CPUPriority.LOW)


class ImageAndTaskTests(ValidationErrorMixin, SynchronousTestCase):
    def test_images(self) -> None:
        media = m.MediaImage(
            id="m1", name="Ubuntu 22.04 ISO", owner="a", group="g", tags=["os"], size=10
        )
        self.assertIs(media.format, m.ImageFormat.ISO)
        disk = m.DiskImage(id="d1", name="c7", owner="a", group="g", check_sum="a" * 40)
        self.assertFalse(disk.created)
        self.assertRejected(
            lambda: m.DiskImage(id="d", name="c", owner="a", group="g", check_sum="xyz"),
            "check_sum",
        )
        self.assertRejected(
            lambda: m.MediaImage(id="m", name="n", owner="a", group="g", size=-5), "size"
        )
        self.assertRejected(
            lambda: m.MediaImage(id="bad id", name="n", owner="a", group="g"), "id"
        )

    def test_tasks(self) -> None:
        task = m.BatchTask(
            id="b1",
            kind="create",
            start_time=1.5,
            latest_update=2,
            guests=[m.BatchGuest(name="web_0"), m.BatchGuest(name="web_1", status=1)],
        )
        self.assertIs(task.kind, m.BatchKind.CREATE)
        self.assertIs(task.guests[1].status, m.BatchStatus.SUCCESS)
        self.assertRejected(
            lambda: m.BatchTask(id="b", kind="reboot", start_time=0, latest_update=0), "kind"
        )
        self.assertRejected(
            lambda: m.BatchTask(id="b", kind="stop", start_time=-1, latest_update=0), "start_time"
        )
        migration = m.Migration(
            id="x",
            source_pool="p",
            source_cell="a",
            target_pool="p",
            target_cell="b",
            instances=["i1", "i2"],
        )
        self.assertEqual(migration.instances, ("i1", "i2"))
        self.assertRejected(
            lambda: m.Migration(
                id="x",
                source_pool="p",
                source_cell="a",
                target_pool="p",
                target_cell="b",
                progress=200,
            ),
            "progress",
        )

    def test_every_entity_has_a_key(self) -> None:
        self.assertEqual(len(m.ENTITY_TYPES), 17)
        for kind in m.ENTITY_TYPES:
            self.assertTrue(isinstance(getattr(kind, "key", None), property), kind)
