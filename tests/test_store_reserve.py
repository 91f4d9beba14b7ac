"""The data disk's reserve: what Core must keep is recorded even when the disk is full.

A full disk is modelled at the writer's connection, as in test_api_store_errors: ``COMMIT``
fails as SQLite's does while the disk has no room, here while the reserve file holds the last
of it (giving it up is what makes room).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nanocore import model as m
from nanocore.store import CommitFailed, Put, Store, UnitOfWork
from nanocore.store import reserve as reserve_module
from nanocore.store.reserve import (
    RESERVE_BYTES,
    RESERVE_NAME,
    RESERVE_VARIABLE,
    RESTORE_INTERVAL,
    DiskReserve,
    reserve_size,
)
from tests.test_api_store_errors import FULL, FullDisk


class FullWhileReserved(FullDisk):
    """The disk is full while the reserve holds its last room."""

    def __init__(self, connection: Any, reserve: Path) -> None:
        super().__init__(connection)
        self.reserve = reserve

    @property  # type: ignore[override]
    def full(self) -> bool:
        return self.reserve.exists()

    @full.setter
    def full(self, value: bool) -> None:
        pass


class Monotonic:
    """``time.monotonic`` as the reserve reads it, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class DiskReserveTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.time = Monotonic()
        self.patch(reserve_module.time, "monotonic", self.time)

    def test_it_is_made_whole_and_given_up(self) -> None:
        reserve = DiskReserve(self.path, size=1 << 20)
        self.assertTrue(reserve.make())
        self.assertEqual(self.path.stat().st_size, 1 << 20)
        self.assertGreaterEqual(self.path.stat().st_blocks * 512, 1 << 20)  # not sparse
        self.assertTrue(reserve.release())
        self.assertFalse(self.path.exists())
        self.assertFalse(reserve.release())

    def test_no_room_leaves_no_part_of_it(self) -> None:
        def no_room(fd: int, offset: int, length: int) -> None:
            os.write(fd, b"x" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(reserve_module.os, "posix_fallocate", no_room)
        self.assertFalse(DiskReserve(self.path, size=1 << 20).make())
        self.assertFalse(self.path.exists())

    def test_its_size_is_the_environments_and_zero_is_none(self) -> None:
        self.patch(reserve_module.os, "environ", {RESERVE_VARIABLE: "0"})
        self.assertEqual(reserve_size(), 0)
        reserve = DiskReserve(self.path)
        self.assertFalse(reserve.make())
        self.assertFalse(self.path.exists())
        self.assertFalse(reserve.release())
        self.patch(reserve_module.os, "environ", {})
        self.assertEqual(reserve_size(), RESERVE_BYTES)

    def test_it_is_made_again_at_most_once_an_interval(self) -> None:
        reserve = DiskReserve(self.path, size=4096)
        reserve.make()
        reserve.release()
        self.assertFalse(reserve.make_again())  # just given up: the disk is full
        self.time.now += RESTORE_INTERVAL
        self.assertTrue(reserve.make_again())
        self.assertTrue(self.path.exists())
        self.assertFalse(reserve.make_again())  # kept: nothing to do


class FullDiskReserveTests(TestCase):
    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.opened())

    async def opened(self) -> None:
        self.time = Monotonic()
        self.patch(reserve_module.time, "monotonic", self.time)
        self.data_dir = Path(self.mktemp())
        self.data_dir.mkdir(parents=True)
        self.store = await Store.open(self.data_dir, reactor, clock=Clock())
        self.addCleanup(self.store.close)
        self.reserve = self.data_dir / RESERVE_NAME
        writer = self.store._writer  # type: ignore[attr-defined]
        writer._connection = FullWhileReserved(writer._connection, self.reserve)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def said(self, level: LogLevel) -> list[str]:
        return [formatEvent(e) for e in self.events if e["log_level"] == level
                and e["log_namespace"] == "nanocore.store.store"]  # fmt: skip

    def test_the_store_opens_with_its_reserve(self) -> None:
        self.assertEqual(self.reserve.stat().st_size, reserve_size())
        self.assertEqual(reserve_size(), 64 << 10)  # the suite's (tests/__init__.py)

    async def test_an_essential_unit_is_kept_in_the_reserves_room(self) -> None:
        pool, goodbye = m.ComputePool(name="p1"), m.DepartedCell("Cell_0000000000a1")
        with self.assertRaises(CommitFailed) as refused:
            await self.store.commit(UnitOfWork.of(Put(pool)))
        self.assertEqual(refused.exception.message, f"state could not be saved: {FULL}")
        self.assertTrue(self.reserve.exists(), "given up only for what Core must keep")

        await self.store.commit(UnitOfWork.of(Put(goodbye), essential=True))
        self.assertIn(goodbye.name, self.store.view.departed_cells)
        self.assertFalse(self.reserve.exists())
        self.assertEqual(self.said(LogLevel.warn)[-1], (
            f"the data disk is full: {self.reserve} ({reserve_size()} bytes) was given up to "
            "record 1 unit(s) Core must keep (a Cell's goodbye, its guests' loss); 0 other "
            "unit(s) not saved. Free room on the disk: the reserve is made again then"
        ))  # fmt: skip

        # Room (the reserve's) again: writes are saved, and a minute on it is kept again.
        await self.store.commit(UnitOfWork.of(Put(pool)))
        self.assertFalse(self.reserve.exists())
        self.time.now += RESTORE_INTERVAL
        await self.store.commit(UnitOfWork.of(Put(m.ComputePool(name="p2"))))
        self.assertEqual(self.reserve.stat().st_size, reserve_size())
        self.assertEqual(self.said(LogLevel.info)[-1],
                         f"room on the data disk again: {self.reserve} is kept again")  # fmt: skip

        await self.store.close()
        reopened = await Store.open(self.data_dir, reactor, clock=Clock())
        self.addCleanup(reopened.close)
        self.assertIn(goodbye.name, reopened.view.departed_cells)
        self.assertEqual(sorted(reopened.view.compute_pools), ["default", "p1", "p2"])
