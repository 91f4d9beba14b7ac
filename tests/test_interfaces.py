"""Every real class and every fake declares the zope interface it stands for, and keeps it."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyClass, verifyObject

from nanocore.cluster.cells import CellDirectory, CellObserver, CellRegistry
from nanocore.cluster.transactions import Transactions
from nanocore.operations.cells import CellOperations, NoLinks
from nanocore.operations.core import Operations
from nanocore.operations.status import CellMonitor
from nanocore.store import CommitStore, Store
from tests.cellfixtures import FakeDirectory


class CellInterfaceTests(SynchronousTestCase):
    def test_directories(self) -> None:
        clock = Clock()
        for directory in (
            CellRegistry(clock, Transactions(clock, 10.0)),
            FakeDirectory(clock),
            NoLinks(),
        ):
            self.assertTrue(verifyObject(CellDirectory, directory), directory)

    def test_cell_operations_observe_and_monitor(self) -> None:
        self.assertTrue(verifyClass(CellObserver, CellOperations))
        self.assertTrue(verifyClass(CellMonitor, CellOperations))


class StoreInterfaceTests(TestCase):
    async def test_store(self) -> None:
        data_dir = Path(self.mktemp())
        data_dir.mkdir(parents=True)
        store = await Store.open(data_dir, reactor)
        self.addCleanup(store.close)
        self.assertTrue(verifyObject(CommitStore, store))
        operations = Operations(store, Clock())
        self.assertTrue(verifyObject(CellObserver, operations.cells))
        self.assertTrue(verifyObject(CellMonitor, operations.cells))
