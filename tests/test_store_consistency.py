"""Property test: the in-memory read model always equals what SQLite holds.

Random batches of units (many of them refused by the schema's rules) go through the writer;
the committed ones are mirrored with the same method the store uses. After every batch the
mirror must equal a fresh load of the database, and its instance indexes (by pool, by Cell, by
name, the per-Cell totals) must equal those of a read model built from that load, so what Core
reads is what would survive a restart.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nanocore import model as m
from nanocore.store import Delete, Insert, Put, StoreError, UnitOfWork, condition
from nanocore.store.readmodel import ReadModel
from nanocore.store.schema import bundled_scripts, open_database
from nanocore.store.writer import Writer

POOLS = ("p0", "default")
STORAGE = ("s0", "s1")
CELLS = ("c0", "c1")
ADDRESSES = ("10.0.0.1", "10.0.0.2", "10.0.0.9")

storage_pools = st.builds(
    m.StoragePool,
    name=st.sampled_from(STORAGE),
    host=st.just("h"),
    target=st.sampled_from(("/a", "/b")),
)
compute_pools = st.builds(
    m.ComputePool, name=st.sampled_from(POOLS), storage=st.sampled_from(("", *STORAGE))
)
cells = st.builds(
    m.ComputeCell,
    name=st.sampled_from(CELLS),
    pool=st.sampled_from(("", *POOLS)),
    enabled=st.booleans(),
)
address_pools = st.builds(m.AddressPool, name=st.just("net"), gateway=st.just("10.0.0.254"))
ranges = st.builds(
    m.AddressRange,
    pool=st.just("net"),
    start=st.just("10.0.0.1"),
    end=st.sampled_from(("10.0.0.1", "10.0.0.5")),
    netmask=st.just("255.255.255.0"),
)
allocations = st.builds(
    m.AddressAllocation,
    pool=st.just("net"),
    range_start=st.just("10.0.0.1"),
    address=st.sampled_from(ADDRESSES),
    instance=st.sampled_from(("i1", "i2")),
)
instances = st.builds(
    m.Instance,
    id=st.sampled_from(("i1", "i2")),
    name=st.sampled_from(("g1", "g2")),
    owner=st.just("o"),
    group=st.just("g"),
    pool=st.sampled_from(POOLS),
    cell=st.sampled_from(CELLS),
    cores=st.just(1),
    memory=st.just(1),
    disks=st.just((1,)),
    status=st.sampled_from(m.InstanceStatus),
    lost=st.booleans(),
    migrating=st.booleans(),
)
entities = st.one_of(
    storage_pools, compute_pools, cells, address_pools, ranges, allocations, instances
)
keys: dict[type, st.SearchStrategy[Hashable]] = {
    m.StoragePool: st.sampled_from(STORAGE),
    m.ComputePool: st.sampled_from(POOLS),
    m.ComputeCell: st.sampled_from(CELLS),
    m.AddressPool: st.just("net"),
    m.AddressRange: st.just(("net", "10.0.0.1")),
    m.AddressAllocation: st.tuples(st.just("net"), st.sampled_from(ADDRESSES)),
    m.Instance: st.sampled_from(("i1", "i2")),
}
deletes = st.sampled_from(sorted(keys, key=lambda k: k.__name__)).flatmap(
    lambda kind: keys[kind].map(lambda key: Delete(kind, key))
)
changes = st.one_of(entities.map(Put), entities.map(Put), entities.map(Insert), deletes, deletes)
units = st.lists(changes, min_size=1, max_size=2).map(UnitOfWork)
batches = st.lists(st.lists(units, min_size=1, max_size=8), min_size=1, max_size=10)


class ReadModelMatchesDatabase(SynchronousTestCase):
    @given(batches)
    def test_mirror_equals_reload(self, script: list[list[UnitOfWork]]) -> None:
        folder = Path(tempfile.mkdtemp())
        connection: sqlite3.Connection | None = None
        try:
            ids = iter(range(100))
            connection = open_database(folder, bundled_scripts(), "", lambda: f"tpl{next(ids)}")
            writer = Writer(connection, guard_io_thread=False)
            mirror: Any = writer.load()
            view = ReadModel(mirror)
            for batch in script:
                outcomes = writer.apply_batch(batch)
                for unit, outcome in zip(batch, outcomes, strict=True):
                    self.assertTrue(outcome is None or isinstance(outcome, StoreError))
                    if outcome is None:
                        view.mirror(unit)
                loaded = writer.load()
                self.assertEqual(loaded, mirror)
                self.assertSameIndexes(view, ReadModel(loaded))
        finally:
            if connection is not None:
                connection.close()
            shutil.rmtree(folder)

    def assertSameIndexes(self, view: ReadModel, fresh: ReadModel) -> None:
        for pool in POOLS:
            self.assertEqual(
                dict(view.instances_in_pool(pool)), dict(fresh.instances_in_pool(pool))
            )
        for cell in CELLS:
            self.assertEqual(
                dict(view.instances_on_cell(cell)), dict(fresh.instances_on_cell(cell))
            )
            self.assertEqual(view.load_on_cell(cell), fresh.load_on_cell(cell))
            tallied: dict[Any, int] = {}
            for instance in fresh.instances_on_cell(cell).values():
                tallied[condition(instance)] = tallied.get(condition(instance), 0) + 1
            self.assertEqual(dict(view.instance_conditions(cell)), tallied)
        for pool in POOLS:
            for name in ("g1", "g2"):
                self.assertEqual(
                    view.instance_named(pool, "g", name), fresh.instance_named(pool, "g", name)
                )
