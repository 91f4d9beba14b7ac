"""Tests for nanocore.store: durability contract, schema rules, group commit, threads, checks."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer, reactor
from twisted.python.threadable import isInIOThread
from twisted.trial.unittest import TestCase

from nanocore import model as m
from nanocore.durations import Durations
from nanocore.store import (
    CommitFailed,
    Conflict,
    DamagedStore,
    Delete,
    Insert,
    NotFound,
    Put,
    StillReferenced,
    Store,
    StoreClosed,
    StoreError,
    UnitOfWork,
)
from nanocore.store.schema import DB_NAME, SchemaScript, bundled_scripts, migrate

NOW = "2024-05-01 12:00:00"
GUEST_ID = "6f1c2b9e-0d7a-4f55-9b0e-3c1d2e3f4a5b"


def samples() -> list[Any]:
    """One of every entity, referencing each other the way a real cluster does."""
    rules = (
        m.SecurityPolicyRule(protocol="tcp", target_port=22, source_address="10.0.0.0"),
        m.SecurityPolicyRule(protocol="icmp", accept=False),
    )
    return [
        m.Zone(name="lab"),
        m.StoragePool(name="nfs1", host="192.0.2.10", target="/export/nano"),
        m.AddressPool(name="lab net", gateway="10.0.0.1", dns=("10.0.0.2",), provider="cloudinit"),
        m.AddressRange(
            pool="lab net", start="10.0.0.10", end="10.0.0.50", netmask="255.255.255.0"
        ),
        m.ComputePool(name="web", network="lab net", storage="nfs1", failover=True),
        m.ComputeCell(name="Cell_525400aabbcc", pool="web", enabled=False, purge_pending=True),
        m.SystemTemplate(
            id="cq1x2y3z4a5b6c7d8e9f",
            name="Debian 12",
            admin="debian",
            operating_system="linux",
            disk="scsi",
            network="virtio",
            display="qxl",
            control="spice",
            usb="nec-xhci",
            tablet="virtio",
            created_time=NOW,
            modified_time=NOW,
        ),
        m.SecurityPolicyGroup(
            id="0b4c3d2e-1f00-4a6b-8c7d-9e8f7a6b5c4d",
            name="ssh only",
            user="admin",
            group="ops",
            description="lets ssh in",
            is_global=True,
            rules=rules,
        ),
        m.Instance(
            id=GUEST_ID,
            name="web1",
            owner="admin",
            group="ops",
            pool="web",
            cell="Cell_525400aabbcc",
            cores=4,
            memory=4 << 30,
            disks=(20 << 30, 100 << 30),
            template="cq1x2y3z4a5b6c7d8e9f",
            system="windows",
            status="running",
            lost=True,
            auto_start=True,
            media_attached=True,
            internal=m.InstanceNetwork("10.0.0.10/24", "10.0.0.10", "192.0.2.20", 5901),
            hardware_address="52:54:00:12:34:56",
            monitor_secret="s3cret",
            qos=m.QoS(cpu_priority=m.CPUPriority.MEDIUM, read_speed=1, write_iops=7, send_speed=9),
            create_time=NOW,
            media_source="m-1",
        ),
        m.AddressAllocation(
            pool="lab net", range_start="10.0.0.10", address="10.0.0.10", instance=GUEST_ID
        ),
        m.MediaImage(
            id="m-1", name="Ubuntu ISO", owner="admin", group="ops", tags=("os", "lts"), size=9
        ),
        m.DiskImage(
            id="d-1",
            name="centos7.qcow2",
            owner="admin",
            group="ops",
            size=1 << 30,
            version=2,
            check_sum="a" * 40,
            created=True,
        ),
        m.Migration(
            id="mig-1",
            source_pool="web",
            source_cell="Cell_525400aabbcc",
            target_pool="web",
            target_cell="Cell_525400ddeeff",
            instances=(GUEST_ID,),
            error="target lost",
            kind="failover",
            start_time=1714564800.5,
            end_time=1714564811.0,
        ),
        m.BatchTask(
            id="batch-1",
            kind="create",
            start_time=1714564800.5,
            latest_update=1714564802.0,
            guests=(m.BatchGuest("web_0", GUEST_ID, 1, 100), m.BatchGuest("web_1", error="x")),
        ),
        m.PendingError(id="i-failed", error="cell timeout", cell="Cell_525400aabbcc"),
        m.DepartedCell(name="Cell_525400aabbcc"),
        m.StaleCopy(cell="Cell_525400aabbcc", guest=GUEST_ID),
    ]


def put_all(*entities: Any) -> UnitOfWork:
    return UnitOfWork([Put(e) for e in entities])


class StoreTestCase(TestCase):
    """Opens stores in a fresh data dir and closes them when the test ends."""

    def setUp(self) -> None:
        self.data_dir = Path(self.mktemp())

    @defer.inlineCallbacks
    def open(self, **kwargs: Any) -> Any:
        store = yield Store.open(self.data_dir, reactor, **kwargs)
        self.addCleanup(store.close)
        return store

    @defer.inlineCallbacks
    def reopen(self, store: Store) -> Any:
        yield store.close()
        reopened = yield self.open()
        return reopened

    @defer.inlineCallbacks
    def assertRefused(self, store: Store, unit: UnitOfWork, error: type, *words: str) -> Any:
        """The unit fails with ``error`` naming ``words`` and the view does not change."""
        before = {kind: dict(store.view.all(kind)) for kind in m.ENTITY_TYPES}
        try:
            yield store.commit(unit)
        except StoreError as refusal:
            self.assertIsInstance(refusal, error)
            for word in words:
                self.assertIn(word, str(refusal))
            after = {kind: dict(store.view.all(kind)) for kind in m.ENTITY_TYPES}
            self.assertEqual(before, after)
            return refusal
        self.fail(f"{unit} was not refused")


class NewStoreTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_defaults(self) -> Any:
        store = yield self.open()
        self.assertEqual(store.view.zone, m.Zone("default"))
        self.assertEqual(dict(store.view.compute_pools), {"default": m.ComputePool("default")})
        templates = list(store.view.templates.values())
        self.assertEqual(
            [t.name for t in templates],
            [name for name, _, _ in m.DEFAULT_TEMPLATES],
        )
        self.assertEqual(len({t.id for t in templates}), 5)
        self.assertEqual(templates[4].options(), (0, 2, 2, 1, 0, 0, 0))
        for kind in (m.ComputeCell, m.Instance, m.AddressAllocation, m.DiskImage):
            self.assertEqual(len(store.view.all(kind)), 0)

    @defer.inlineCallbacks
    def test_defaults_written_once(self) -> Any:
        store = yield self.open()
        first = dict(store.view.templates)
        yield store.commit(UnitOfWork([Delete(m.SystemTemplate, key) for key in first]))
        store = yield self.reopen(store)
        self.assertEqual(dict(store.view.templates), {})

    @defer.inlineCallbacks
    def test_database_settings(self) -> Any:
        store = yield self.open()
        yield store.close()
        path = self.data_dir / DB_NAME
        self.assertEqual(path.stat().st_mode & 0o777, 0o600)
        connection = sqlite3.connect(path)
        try:
            self.assertEqual(connection.execute("PRAGMA journal_mode").fetchone()[0], "wal")
            version = connection.execute("SELECT version FROM schema_version").fetchone()[0]
            self.assertEqual(version, bundled_scripts()[-1].version)
        finally:
            connection.close()


class RoundTripTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_every_entity_survives_reopen(self) -> Any:
        store = yield self.open()
        entities = samples()
        self.assertEqual({type(e) for e in entities}, set(m.ENTITY_TYPES))
        yield store.commit(put_all(*entities))
        for entity in entities:
            self.assertEqual(store.view.get(type(entity), entity.key), entity)
        store = yield self.reopen(store)
        for entity in entities:
            self.assertEqual(store.view.get(type(entity), entity.key), entity)
        self.assertEqual(store.view.zone, m.Zone("lab"))

    @defer.inlineCallbacks
    def test_put_replaces_and_keeps_order(self) -> Any:
        store = yield self.open()
        order = list(store.view.templates)
        second = store.view.templates[order[1]]
        yield store.commit(put_all(attrs.evolve(second, admin="centos")))
        self.assertEqual(list(store.view.templates), order)
        store = yield self.reopen(store)
        self.assertEqual(list(store.view.templates), order)
        self.assertEqual(store.view.templates[order[1]].admin, "centos")

    @defer.inlineCallbacks
    def test_rules_replaced_with_their_group(self) -> Any:
        store = yield self.open()
        group = next(e for e in samples() if isinstance(e, m.SecurityPolicyGroup))
        yield store.commit(put_all(group))
        reordered = attrs.evolve(group, rules=(group.rules[1], group.rules[0]))
        yield store.commit(put_all(reordered))
        store = yield self.reopen(store)
        self.assertEqual(store.view.policy_groups[group.id].rules, reordered.rules)
        yield store.commit(UnitOfWork.of(Delete(m.SecurityPolicyGroup, group.id)))
        store = yield self.reopen(store)
        self.assertEqual(dict(store.view.policy_groups), {})

    @defer.inlineCallbacks
    def test_delete(self) -> Any:
        store = yield self.open()
        yield store.commit(put_all(*samples()))
        yield store.commit(
            UnitOfWork.of(
                Delete(m.AddressAllocation, ("lab net", "10.0.0.10")),
                Delete(m.Instance, GUEST_ID),
                Delete(m.ComputeCell, "Cell_525400aabbcc"),
                Delete(m.ComputePool, "web"),
                Delete(m.AddressRange, ("lab net", "10.0.0.10")),
                Delete(m.AddressPool, "lab net"),
                Delete(m.StoragePool, "nfs1"),
            )
        )
        store = yield self.reopen(store)
        self.assertEqual(list(store.view.compute_pools), ["default"])
        self.assertEqual(len(store.view.address_pools), 0)
        self.assertEqual(len(store.view.instances), 0)


class ConstraintTests(StoreTestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        super().setUp()
        self.store = yield self.open()
        yield self.store.commit(put_all(*samples()))

    def test_missing_reference(self) -> Any:
        return self.assertRefused(
            self.store,
            put_all(m.ComputePool(name="p", storage="nfs9")),
            NotFound,
            "compute pool 'p'",
            "storage pool 'nfs9'",
        )

    def test_instance_on_unknown_cell(self) -> Any:
        guest = next(e for e in samples() if isinstance(e, m.Instance))
        return self.assertRefused(
            self.store,
            put_all(attrs.evolve(guest, id="other", name="web2", cell="Cell_nowhere")),
            NotFound,
            "compute cell 'Cell_nowhere'",
        )

    def test_pool_with_cells_not_deleted(self) -> Any:
        return self.assertRefused(
            self.store,
            UnitOfWork.of(Delete(m.ComputePool, "web")),
            StillReferenced,
            "compute pool 'web'",
            "compute cell 'Cell_525400aabbcc'",
        )

    @defer.inlineCallbacks
    def test_pool_with_instances_not_deleted(self) -> Any:
        yield self.store.commit(put_all(m.ComputeCell(name="Cell_525400aabbcc", pool="")))
        yield self.assertRefused(
            self.store,
            UnitOfWork.of(Delete(m.ComputePool, "web")),
            StillReferenced,
            f"instance '{GUEST_ID}'",
        )

    def test_storage_pool_in_use(self) -> Any:
        return self.assertRefused(
            self.store,
            UnitOfWork.of(Delete(m.StoragePool, "nfs1")),
            StillReferenced,
            "storage pool 'nfs1'",
            "compute pool 'web'",
        )

    def test_range_with_allocations(self) -> Any:
        return self.assertRefused(
            self.store,
            UnitOfWork.of(Delete(m.AddressRange, ("lab net", "10.0.0.10"))),
            StillReferenced,
            "address range '10.0.0.10' of address pool 'lab net'",
            "address '10.0.0.10'",
        )

    def test_address_allocated_twice(self) -> Any:
        return self.assertRefused(
            self.store,
            put_all(m.AddressAllocation("lab net", "10.0.0.10", "10.0.0.10", "someone-else")),
            Conflict,
            "already allocated",
            GUEST_ID,
        )

    def test_insert_of_existing_allocation(self) -> Any:
        allocation = m.AddressAllocation("lab net", "10.0.0.10", "10.0.0.10", GUEST_ID)
        return self.assertRefused(
            self.store, UnitOfWork.of(Insert(allocation)), Conflict, "already exists"
        )

    def test_allocation_outside_range(self) -> Any:
        return self.assertRefused(
            self.store,
            put_all(m.AddressAllocation("lab net", "10.0.0.10", "10.0.0.99", "i")),
            Conflict,
            "outside address range 10.0.0.10-10.0.0.50",
        )

    def test_allocation_in_unknown_range(self) -> Any:
        return self.assertRefused(
            self.store,
            put_all(m.AddressAllocation("lab net", "10.0.0.60", "10.0.0.61", "i")),
            NotFound,
            "address range '10.0.0.60'",
        )

    def test_overlapping_range(self) -> Any:
        return self.assertRefused(
            self.store,
            put_all(m.AddressRange("lab net", "10.0.0.40", "10.0.0.60", "255.255.255.0")),
            Conflict,
            "overlaps range 10.0.0.10-10.0.0.50",
        )

    def test_range_shrunk_under_allocation(self) -> Any:
        return self.assertRefused(
            self.store,
            UnitOfWork.of(
                Delete(m.AddressAllocation, ("lab net", "10.0.0.10")),
                Put(m.AddressAllocation("lab net", "10.0.0.10", "10.0.0.20", GUEST_ID)),
                Put(m.AddressRange("lab net", "10.0.0.10", "10.0.0.15", "255.255.255.0")),
            ),
            Conflict,
            "10.0.0.20 outside",
        )

    def test_duplicate_names(self) -> Any:
        template = next(iter(self.store.view.templates.values()))
        return self.assertRefused(
            self.store,
            put_all(attrs.evolve(template, id="another")),
            Conflict,
            f"system template already has name '{template.name}'",
        )

    def test_duplicate_guest_name_in_pool(self) -> Any:
        guest = self.store.view.instances[GUEST_ID]
        return self.assertRefused(
            self.store,
            put_all(attrs.evolve(guest, id="second-guest")),
            Conflict,
            "instance already has pool 'web' and group 'ops' and name 'web1'",
        )

    def test_insert_existing(self) -> Any:
        return self.assertRefused(
            self.store,
            UnitOfWork.of(Insert(m.ComputePool(name="default"))),
            Conflict,
            "compute pool 'default' already exists",
        )

    def test_delete_missing(self) -> Any:
        return self.assertRefused(
            self.store,
            UnitOfWork.of(Delete(m.MediaImage, "nope")),
            NotFound,
            "media image 'nope' does not exist",
        )

    @defer.inlineCallbacks
    def test_delete_missing_is_nothing_when_missing_ok(self) -> Any:
        """Two decisions may both drop the same note (a stale copy): the second is no
        refusal of the rest of its unit."""
        unit = UnitOfWork.of(
            Delete(m.MediaImage, "nope", missing_ok=True), Put(m.ComputePool(name="kept"))
        )
        yield self.store.commit(unit)
        self.assertIn("kept", self.store.view.compute_pools)

    def test_malformed_key(self) -> Any:
        return self.assertRefused(
            self.store, UnitOfWork.of(Delete(m.AddressRange, "10.0.0.10")), NotFound, "malformed"
        )

    @defer.inlineCallbacks
    def test_unit_is_all_or_nothing(self) -> Any:
        unit = UnitOfWork.of(
            Put(m.ComputePool(name="half")),
            Put(m.ComputeCell(name="Cell_1", pool="nowhere")),
        )
        yield self.assertRefused(self.store, unit, NotFound, "compute pool 'nowhere'")
        store = yield self.reopen(self.store)
        self.assertNotIn("half", store.view.compute_pools)

    def test_not_a_unit(self) -> Any:
        return self.assertFailure(self.store.commit([Put(m.Zone())]), TypeError)  # type: ignore[arg-type]

    def test_bad_changes_rejected_when_built(self) -> None:
        self.assertRaises(TypeError, Put, "pool")
        self.assertRaises(TypeError, Delete, m.Zone, "zone")
        self.assertRaises(TypeError, UnitOfWork, ["x"])


class CommitTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_every_commit_is_timed_refusals_too(self) -> Any:
        times = Durations()
        store = yield self.open(commit_times=times)
        units = [put_all(m.ComputePool(name=f"t{n}")) for n in range(3)]
        units[1] = put_all(m.ComputePool(name="bad", storage="missing"))
        yield defer.DeferredList([store.commit(unit) for unit in units], consumeErrors=True)
        summary = times.take()
        assert summary is not None
        self.assertEqual(summary.count, 3)
        self.assertGreater(summary.longest, 0.0)

    @defer.inlineCallbacks
    def test_view_changes_only_when_durable(self) -> Any:
        store = yield self.open()
        seen: list[bool] = []
        committing = store.commit(put_all(m.ComputePool(name="later")))
        self.assertNotIn("later", store.view.compute_pools)
        committing.addCallback(lambda _: seen.append("later" in store.view.compute_pools))
        yield committing
        self.assertEqual(seen, [True])

    @defer.inlineCallbacks
    def test_group_commit_and_isolated_failure(self) -> Any:
        store = yield self.open()
        units = [put_all(m.ComputePool(name=f"p{n}")) for n in range(60)]
        units[30] = put_all(m.ComputePool(name="bad", storage="missing"))
        results = yield defer.DeferredList(
            [store.commit(unit) for unit in units], consumeErrors=True
        )
        failed = [n for n, (ok, _) in enumerate(results) if not ok]
        self.assertEqual(failed, [30])
        results[30][1].trap(NotFound)
        self.assertLess(store.batches_committed, 10)
        self.assertEqual(store.units_committed, 59)
        store = yield self.reopen(store)
        self.assertEqual(len(store.view.compute_pools), 60)  # 59 + default
        self.assertNotIn("bad", store.view.compute_pools)

    @defer.inlineCallbacks
    def test_sql_never_on_reactor_thread(self) -> Any:
        store = yield self.open()
        fired_in_io_thread: list[bool] = []
        yield store.commit(put_all(m.ComputePool(name="x"))).addCallback(
            lambda _: fired_in_io_thread.append(isInIOThread())
        )
        self.assertEqual(fired_in_io_thread, [True])
        self.assertTrue(store.writer_threads)
        self.assertNotIn(threading.current_thread().name, store.writer_threads)
        self.assertRaises(RuntimeError, store._writer.apply_batch, [put_all(m.Zone())])

    @defer.inlineCallbacks
    def test_failed_transaction_fails_its_batch_only(self) -> Any:
        store = yield self.open()
        real = store._writer.apply_batch

        def disk_full(units: Any) -> Any:
            store._writer.apply_batch = real  # type: ignore[method-assign]
            raise sqlite3.OperationalError("database or disk is full")

        store._writer.apply_batch = disk_full  # type: ignore[method-assign]
        error = yield self.assertFailure(
            store.commit(put_all(m.ComputePool(name="lost"))), CommitFailed
        )
        self.assertEqual(str(error), "state could not be saved: database or disk is full")
        self.assertNotIn("lost", store.view.compute_pools)
        # The database's refusal is a logged line (rate-limited), not a traceback.
        self.assertEqual(self.flushLoggedErrors(), [])
        yield store.commit(put_all(m.ComputePool(name="kept")))
        self.assertIn("kept", store.view.compute_pools)

    @defer.inlineCallbacks
    def test_a_fault_of_ours_in_a_commit_is_logged_with_its_traceback(self) -> Any:
        """Not the database's refusal: a bug, logged once per batch, its words kept from
        the client."""
        store = yield self.open()
        real = store._writer.apply_batch

        def broken(units: Any) -> Any:
            store._writer.apply_batch = real  # type: ignore[method-assign]
            raise KeyError("secret detail")

        store._writer.apply_batch = broken  # type: ignore[method-assign]
        error = yield self.assertFailure(
            store.commit(put_all(m.ComputePool(name="lost"))), CommitFailed
        )
        self.assertEqual(str(error), "state could not be saved: internal error")
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    @defer.inlineCallbacks
    def test_close_drains_then_refuses(self) -> Any:
        store = yield self.open()
        pending = [store.commit(put_all(m.ComputePool(name=f"q{n}"))) for n in range(5)]
        closing = store.close()
        yield self.assertFailure(store.commit(put_all(m.Zone())), StoreClosed)
        yield defer.gatherResults(pending)
        yield closing
        yield store.close()
        store = yield self.open()
        self.assertIn("q4", store.view.compute_pools)


class OpenCheckTests(StoreTestCase):
    def write_raw(self, sql: str) -> None:
        connection = sqlite3.connect(self.data_dir / DB_NAME, isolation_level=None)
        try:
            connection.executescript(sql)
        finally:
            connection.close()

    @defer.inlineCallbacks
    def test_not_a_database(self) -> Any:
        self.data_dir.mkdir()
        (self.data_dir / DB_NAME).write_bytes(b"{ this is resource.data, not sqlite }" * 200)
        error = yield self.assertFailure(Store.open(self.data_dir, reactor), DamagedStore)
        self.assertIn("not a readable SQLite database", str(error))

    @defer.inlineCallbacks
    def test_a_folder_in_the_stores_place_is_named(self) -> Any:
        """SQLite said only "unable to open database file" (QA pass 20, F16)."""
        (self.data_dir / DB_NAME).mkdir(parents=True)
        error = yield self.assertFailure(Store.open(self.data_dir, reactor), StoreError)
        self.assertIn(f"{self.data_dir / DB_NAME} is not a file", str(error))

    @defer.inlineCallbacks
    def test_empty_file_is_not_a_new_store(self) -> Any:
        """SQLite reads a 0-byte file as a new database; the state it held must not be
        replaced by defaults without a word (QA2 finding 12)."""
        self.data_dir.mkdir()
        path = self.data_dir / DB_NAME
        path.write_bytes(b"")
        opening = Store.open(self.data_dir, reactor)
        opening.addCallback(lambda store: store.close().addCallback(lambda _: store))
        error = yield self.assertFailure(opening, DamagedStore)
        self.assertIn(f"{path} is empty (0 bytes)", str(error))
        self.assertIn("restore it from a backup, or delete it", str(error))
        self.assertEqual(path.stat().st_size, 0)
        path.unlink()
        store = yield self.open()
        self.assertIn("default", store.view.compute_pools)

    @defer.inlineCallbacks
    def test_another_programs_database(self) -> Any:
        self.data_dir.mkdir()
        self.write_raw("CREATE TABLE notes (text TEXT);")
        error = yield self.assertFailure(Store.open(self.data_dir, reactor), DamagedStore)
        self.assertIn("is not a nanocore store", str(error))
        self.assertIn("move the file away", str(error))

    @defer.inlineCallbacks
    def test_dangling_reference(self) -> Any:
        store = yield self.open()
        yield store.close()
        self.write_raw(
            "PRAGMA foreign_keys=OFF; INSERT INTO compute_cell VALUES ('c9', 'ghost', 1, 0);"
        )
        error = yield self.assertFailure(Store.open(self.data_dir, reactor), DamagedStore)
        self.assertIn("foreign key check", str(error))
        self.assertIn("compute_cell", str(error))

    @defer.inlineCallbacks
    def test_corrupted_pages(self) -> Any:
        store = yield self.open()
        yield store.commit(put_all(*[m.ComputePool(name=f"pool{n}") for n in range(2000)]))
        yield store.close()
        path = self.data_dir / DB_NAME
        data = bytearray(path.read_bytes())
        self.assertGreater(len(data), 4 * 4096)
        for offset in range(2 * 4096, len(data) - 4096, 4096):
            data[offset + 8 : offset + 200] = b"\xa5" * 192
        path.write_bytes(bytes(data))
        error = yield self.assertFailure(Store.open(self.data_dir, reactor), DamagedStore)
        self.assertIn(str(path), str(error))

    @defer.inlineCallbacks
    def test_invalid_row(self) -> Any:
        store = yield self.open()
        yield store.close()
        self.write_raw("UPDATE compute_pool SET name = 'bad name!' WHERE name = 'default';")
        error = yield self.assertFailure(Store.open(self.data_dir, reactor), DamagedStore)
        self.assertIn("compute pool", str(error))

    @defer.inlineCallbacks
    def test_one_owner(self) -> Any:
        yield self.open()
        error = yield self.assertFailure(Store.open(self.data_dir, reactor), StoreError)
        self.assertIn("in use", str(error))


LATEST = bundled_scripts()[-1].version


class MigrationTests(StoreTestCase):
    def scripts(self, extra_sql: str) -> tuple[SchemaScript, ...]:
        return (
            *bundled_scripts(),
            SchemaScript(LATEST + 1, f"{LATEST + 1:04d}-test.sql", extra_sql),
        )

    @defer.inlineCallbacks
    def test_upgrade_backs_up_first(self) -> Any:
        store = yield self.open(scripts=bundled_scripts())
        yield store.commit(put_all(m.ComputePool(name="kept")))
        yield store.close()
        store = yield self.open(scripts=self.scripts("CREATE TABLE extra (x INTEGER);"))
        self.assertIn("kept", store.view.compute_pools)
        yield store.close()
        backup = self.data_dir / f"{DB_NAME}.v{LATEST}.bak"
        connection = sqlite3.connect(backup)
        try:
            self.assertEqual(
                connection.execute("SELECT version FROM schema_version").fetchone(), (LATEST,)
            )
            names = {r[0] for r in connection.execute("SELECT name FROM compute_pool")}
            self.assertEqual(names, {"default", "kept"})
        finally:
            connection.close()
        connection = sqlite3.connect(self.data_dir / DB_NAME)
        try:
            self.assertEqual(
                connection.execute("SELECT version FROM schema_version").fetchone(),
                (LATEST + 1,),
            )
        finally:
            connection.close()

    @defer.inlineCallbacks
    def test_failed_upgrade_changes_nothing(self) -> Any:
        store = yield self.open(scripts=bundled_scripts())
        yield store.close()
        broken = self.scripts("CREATE TABLE extra (x INTEGER); THIS IS NOT SQL;")
        error = yield self.assertFailure(
            Store.open(self.data_dir, reactor, scripts=broken), StoreError
        )
        self.assertIn(f"{LATEST + 1:04d}-test.sql failed", str(error))
        self.assertIn(f"unchanged at version {LATEST}", str(error))
        store = yield self.open(scripts=bundled_scripts())
        self.assertIn("default", store.view.compute_pools)

    @defer.inlineCallbacks
    def test_newer_schema_refused(self) -> Any:
        store = yield self.open(scripts=self.scripts("SELECT 1;"))
        yield store.close()
        error = yield self.assertFailure(
            Store.open(self.data_dir, reactor, scripts=bundled_scripts()), StoreError
        )
        self.assertIn(f"schema version {LATEST + 1}, newer", str(error))

    @defer.inlineCallbacks
    def test_version_1_store_gains_the_guest_tables_and_keeps_its_instances(self) -> Any:
        self.data_dir.mkdir(parents=True)
        path = self.data_dir / DB_NAME
        connection = sqlite3.connect(path, isolation_level=None)
        try:
            migrate(connection, bundled_scripts()[:1], path)
            connection.executescript(
                "INSERT INTO zone VALUES (1, 'default');"
                "INSERT INTO compute_pool VALUES ('p', 1, NULL, NULL, 0);"
                "INSERT INTO compute_cell VALUES ('c', 'p', 1, 0);"
                "INSERT INTO instance VALUES ('i1', 'vm', 'o', 'g', 'p', 'c', 1, 1, '[1]', '',"
                " 'linux', 'stopped', 0, 0, 0, 0, 0, '', '', '', 0, '', '', '', 0, '', '', 0,"
                " 0, 0, 0, 0, 0, 0, '');"
            )
        finally:
            connection.close()
        store = yield self.open()
        self.assertEqual(store.view.instances["i1"].media_source, "")
        self.assertEqual(dict(store.view.pending_errors), {})
        self.assertEqual(list(store.view.instances_in_pool("p")), ["i1"])
        self.assertTrue((self.data_dir / f"{DB_NAME}.v1.bak").exists())

    @defer.inlineCallbacks
    def test_version_3_migrations_gain_kind_and_times(self) -> Any:
        self.data_dir.mkdir(parents=True)
        path = self.data_dir / DB_NAME
        connection = sqlite3.connect(path, isolation_level=None)
        try:
            migrate(connection, bundled_scripts()[:3], path)
            connection.executescript(
                "INSERT INTO migration VALUES ('m1', 'p', 'a', 'p', 'b', '[]', 1, 0, '');"
            )
        finally:
            connection.close()
        store = yield self.open()
        record = store.view.migrations["m1"]
        self.assertEqual(
            (record.kind, record.start_time, record.end_time, record.finished),
            (m.MigrationKind.MANUAL, 0.0, 0.0, True),
        )
