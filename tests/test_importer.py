"""Tests for nanocore.store.importer: Nano 1.4 data dirs into the store, all or nothing."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from nanocore import gojson
from nanocore import model as m
from nanocore.store import Put, Store, UnitOfWork, importer
from nanocore.store.errors import Conflict
from nanocore.store.importer import ImportRefused, run_import
from nanocore.store.schema import DB_NAME

FIXTURE = Path(__file__).parent / "fixtures" / "nano14"
GUEST_A = "4b0f6e0e-2a7c-4f7e-9d0c-1a2b3c4d5e6f"
MEDIA = "media_images/5c1a7e2b-3d4f-4a6b-8c9d-0e1f2a3b4c5d_v1.iso"
DISK = "disk_images/7a8b9c0d-1e2f-4a3b-9c4d-5e6f7a8b9c0d_v3.qcow2"


class ImporterTestCase(TestCase):
    def setUp(self) -> None:
        self.source = Path(self.mktemp())
        shutil.copytree(FIXTURE, self.source)
        self.data_dir = Path(self.mktemp())

    def edit(self, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        """Change one fixture file in this test's copy."""
        path = self.source / "data" / name
        document = json.loads(path.read_text())
        change(document)
        path.write_text(json.dumps(document, indent=1))

    def dump(self) -> list[str]:
        connection = sqlite3.connect(self.data_dir / DB_NAME)
        try:
            return list(connection.iterdump())
        finally:
            connection.close()

    @defer.inlineCallbacks
    def open(self) -> Any:
        store = yield Store.open(self.data_dir, reactor)
        self.addCleanup(store.close)
        return store

    def assertRefused(self, *words: str) -> str:
        """run_import refuses with every word in its message and writes nothing."""
        before = self.dump() if (self.data_dir / DB_NAME).exists() else None
        with self.assertRaises(ImportRefused) as caught:
            run_import(self.source, self.data_dir)
        for word in words:
            self.assertIn(word, caught.exception.message)
        after = self.dump() if (self.data_dir / DB_NAME).exists() else None
        self.assertEqual(before, after)
        return caught.exception.message


class ImportTests(ImporterTestCase):
    @defer.inlineCallbacks
    def test_full_import(self) -> Any:
        run_import(self.source, self.data_dir)
        store = yield self.open()
        view = store.view
        self.assertEqual(view.zone, m.Zone("lab"))
        self.assertEqual(
            view.compute_pools["web"],
            m.ComputePool("web", network="internal net", storage="nfs1", failover=True),
        )
        self.assertEqual(
            dict(view.cells),
            {
                "Cell_525400aabb01": m.ComputeCell("Cell_525400aabb01", "web"),
                "Cell_525400aabb02": m.ComputeCell(
                    "Cell_525400aabb02", "web", enabled=False, purge_pending=True
                ),
            },
        )
        self.assertEqual(view.storage_pools["nfs1"].target, "/export/nano")
        net = view.address_pools["internal net"]
        self.assertEqual((net.dns, net.provider), (("10.10.0.2", "10.10.0.3"), "cloudinit"))
        self.assertEqual(
            [r.key for r in view.address_ranges.values()],
            [("internal net", "10.10.0.100"), ("internal net", "10.10.1.10")],
        )
        self.assertEqual(view.allocations[("internal net", "10.10.0.100")].instance, GUEST_A)
        self.assertEqual(len(view.allocations), 2)
        # Imported templates replace the generated defaults, in file order.
        self.assertEqual([t.name for t in view.templates.values()], ["CentOS 7", "Legacy"])
        self.assertEqual(view.templates["bq3v2kc9k6j2s0f3r0ag"].options(), (0, 2, 2, 1, 0, 0, 0))
        web = view.policy_groups["e2f1d0c9-b8a7-4655-9443-322110ffeedd"]
        self.assertTrue(web.is_global)
        self.assertEqual([r.target_port for r in web.rules], [80, 22, 0])
        self.assertEqual(web.rules[1].source_address, "198.51.100.7")
        self.assertFalse(web.rules[2].accept)
        self.assertEqual(len(view.policy_groups), 2)
        media = next(iter(view.media_images.values()))
        self.assertEqual((media.tags, media.size), (("linux", "installer"), 56))
        disks = {d.name: d for d in view.disk_images.values()}
        self.assertTrue(disks["centos7-base"].created)
        self.assertEqual(disks["centos7-base"].check_sum[:6], "2fd4e1")
        self.assertFalse(disks["half-uploaded"].created)

    def test_second_run_changes_nothing(self) -> None:
        run_import(self.source, self.data_dir)
        first = self.dump()
        run_import(self.source, self.data_dir)
        self.assertEqual(self.dump(), first)

    def test_accepts_the_data_folder_itself(self) -> None:
        run_import(self.source / "data", self.data_dir)
        self.assertTrue(any("'web'" in line for line in self.dump()))

    @defer.inlineCallbacks
    def test_without_templates_or_images_keeps_defaults(self) -> Any:
        self.edit("resource.data", lambda d: d.pop("system_templates"))
        (self.source / "data" / "image.data").unlink()
        run_import(self.source, self.data_dir)
        store = yield self.open()
        self.assertEqual(len(store.view.templates), 5)
        self.assertEqual(len(store.view.disk_images), 0)


class ImageFileTests(ImporterTestCase):
    """The image files come with their records (QA2 finding 7), checked, all or nothing."""

    def test_files_are_placed_where_core_serves_them(self) -> None:
        report = run_import(self.source, self.data_dir)
        self.assertEqual(set(report.placed), {self.data_dir / MEDIA, self.data_dir / DISK})
        for name in (MEDIA, DISK):
            self.assertEqual(
                (self.data_dir / name).read_bytes(), (self.source / "data" / name).read_bytes()
            )
        self.assertEqual(report.warnings, ())
        # Nothing but the two files: no temporary name is left behind.
        self.assertEqual(
            sorted(p.name for p in (self.data_dir / "disk_images").iterdir()), [Path(DISK).name]
        )

    def test_a_second_run_places_nothing_and_an_older_import_gains_its_files(self) -> None:
        run_import(self.source, self.data_dir)
        self.assertEqual(run_import(self.source, self.data_dir).placed, ())
        (self.data_dir / DISK).unlink()  # as an import by an earlier nanocore left it
        self.assertEqual(run_import(self.source, self.data_dir).placed, (self.data_dir / DISK,))

    def test_missing_files_are_named_and_nothing_is_imported(self) -> None:
        (self.source / "data" / DISK).unlink()
        (self.source / "data" / MEDIA).unlink()
        message = self.assertRefused("2 image file(s)", "are missing", DISK, MEDIA)
        self.assertIn("nothing was imported", message)
        self.assertFalse((self.data_dir / DB_NAME).exists())

    def test_a_file_of_another_size_is_refused(self) -> None:
        (self.source / "data" / MEDIA).write_bytes(b"short")
        self.assertRefused(MEDIA, "holds 5 bytes", "records 56")
        self.assertFalse((self.data_dir / DISK).exists())
        self.assertFalse((self.data_dir / MEDIA).exists())

    def test_a_file_of_another_checksum_is_refused(self) -> None:
        (self.source / "data" / DISK).write_bytes(b"The quick brown fox jumps over the lazy cat")
        self.assertRefused(DISK, "SHA-1", "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12")
        self.assertFalse((self.data_dir / MEDIA).exists())
        self.assertFalse((self.data_dir / DB_NAME).exists())

    def test_a_refused_commit_takes_the_placed_files_back(self) -> None:
        self.patch(importer.Writer, "apply_batch", lambda writer, units: [Conflict("no room")])
        self.assertRefused("the store refused the import: no room")
        self.assertFalse((self.data_dir / DISK).exists())
        self.assertFalse((self.data_dir / MEDIA).exists())

    def test_copied_when_a_link_is_not_possible(self) -> None:
        def cross_device(source: Any, target: Any) -> None:
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        self.patch(importer.os, "link", cross_device)
        run_import(self.source, self.data_dir)
        placed = self.data_dir / DISK
        self.assertEqual(placed.read_bytes(), (self.source / "data" / DISK).read_bytes())
        self.assertFalse(os.path.samefile(placed, self.source / "data" / DISK))

    @defer.inlineCallbacks
    def test_no_image_data_is_a_warning(self) -> Any:
        (self.source / "data" / "image.data").unlink()
        report = run_import(self.source, self.data_dir)
        (warning,) = report.warnings
        self.assertIn(f"no image.data in {self.source / 'data'}", warning)
        self.assertIn("no disk or media image was imported", warning)
        self.assertIn(f"delete {self.data_dir / DB_NAME}", warning)
        store = yield self.open()
        self.assertEqual(len(store.view.disk_images), 0)


class RefusalTests(ImporterTestCase):
    def test_no_data(self) -> None:
        shutil.rmtree(self.source / "data")
        self.assertRefused("no resource.data")
        self.assertFalse(self.data_dir.exists())

    def test_torn_file(self) -> None:
        path = self.source / "data" / "resource.data"
        path.write_bytes(path.read_bytes()[:200])
        self.assertRefused("resource.data", "not valid JSON")
        self.assertFalse((self.data_dir / DB_NAME).exists())

    def test_over_deep_file(self) -> None:
        """A clear refusal, not a RecursionError (issue 14 point 4), and nothing written."""
        depth = 1_000
        self.edit("resource.data", lambda d: d.update(x=[]))
        path = self.source / "data" / "resource.data"
        nested = b"[" * depth + b"]" * depth
        path.write_bytes(path.read_bytes().replace(b'"x": []', b'"x": ' + nested))
        self.assertRefused("resource.data", f"nested deeper than {gojson.MAX_DEPTH} levels")
        self.assertFalse((self.data_dir / DB_NAME).exists())

    def test_nan_is_not_json(self) -> None:
        self.edit("resource.data", lambda d: d.update(x=[]))
        path = self.source / "data" / "resource.data"
        path.write_bytes(path.read_bytes().replace(b'"x": []', b'"x": NaN'))
        self.assertRefused("resource.data", "NaN is not valid JSON")

    def test_bad_field(self) -> None:
        def change(d: dict[str, Any]) -> None:
            d["address_pools"][0]["gateway"] = "10.10.0.300"

        self.edit("resource.data", change)
        self.assertRefused("resource.data", "address_pools[0]", "'internal net'", "'gateway'")

    def test_unknown_storage_pool(self) -> None:
        self.edit("resource.data", lambda d: d.pop("storage_pools"))
        self.assertRefused("pools[1]", "storage pool 'nfs1', which does not exist")

    def test_allocation_outside_range(self) -> None:
        def change(d: dict[str, Any]) -> None:
            d["address_pools"][0]["ranges"][0]["allocated"][1]["address"] = "10.10.0.250"

        self.edit("resource.data", change)
        self.assertRefused("ranges[0].allocated[1]", "10.10.0.250", "outside")

    def test_wrong_capacity(self) -> None:
        def change(d: dict[str, Any]) -> None:
            d["address_pools"][0]["ranges"][1]["capacity"] = 12

        self.edit("resource.data", change)
        self.assertRefused("ranges[1]", "'capacity'")

    def test_cell_in_two_pools(self) -> None:
        def change(d: dict[str, Any]) -> None:
            d["pools"][0]["cells"] = {"Cell_525400aabb01": {"enabled": True}}

        self.edit("resource.data", change)
        self.assertRefused("Cell_525400aabb01", "also a member")

    def test_duplicate_template_name(self) -> None:
        def change(d: dict[str, Any]) -> None:
            d["system_templates"][1]["name"] = "CentOS 7"

        self.edit("resource.data", change)
        self.assertRefused("system_templates[1]", "'CentOS 7' is already used")

    def test_bad_rule(self) -> None:
        def change(d: dict[str, Any]) -> None:
            d["security_policy_group"][0]["rules"][2]["protocol"] = "gre"

        self.edit("resource.data", change)
        self.assertRefused("security_policy_group[0].rules[2]", "'protocol'")

    def test_bad_image(self) -> None:
        def change(d: dict[str, Any]) -> None:
            d["disk_images"][0]["check_sum"] = "not-a-sha1"

        self.edit("image.data", change)
        self.assertRefused("image.data", "disk_images[0]", "'check_sum'")

    def test_bad_data_leaves_existing_store_untouched(self) -> None:
        run_import(self.source, self.data_dir)

        def change(d: dict[str, Any]) -> None:
            d["pools"][1]["name"] = "web server"

        self.edit("resource.data", change)
        self.assertRefused("pools[1]", "'name'")

    def test_refused_by_the_store_leaves_no_new_store(self) -> None:
        self.patch(importer.Writer, "apply_batch", lambda writer, units: [Conflict("no room")])
        self.assertRefused("the store refused the import: no room")
        self.assertFalse((self.data_dir / DB_NAME).exists())

    @defer.inlineCallbacks
    def test_conflicting_store(self) -> Any:
        store = yield self.open()
        yield store.commit(UnitOfWork.of(Put(m.ComputePool(name="mine"))))
        yield store.close()
        message = self.assertRefused("already holds cluster state", "store is unchanged")
        self.assertIn("zone", message)

    @defer.inlineCallbacks
    def test_changed_since_import(self) -> Any:
        run_import(self.source, self.data_dir)
        store = yield self.open()
        pool = store.view.compute_pools["web"]
        yield store.commit(UnitOfWork.of(Put(m.ComputePool("web", storage=pool.storage))))
        yield store.close()
        self.assertRefused("compute pool 'web' differs from the store")

    @defer.inlineCallbacks
    def test_store_in_use(self) -> Any:
        yield self.open()
        with self.assertRaises(ImportRefused) as caught:
            run_import(self.source, self.data_dir)
        self.assertIn("in use", caught.exception.message)
