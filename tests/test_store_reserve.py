"""The data disk's reserve: what Core must keep is recorded even when the disk is full.

A full disk is modelled at the writer's connection, as in test_api_store_errors: ``COMMIT``
fails as SQLite's does while the disk has no room, here while the reserve holds more than a
limit the test sets (giving a piece of it back is what makes room).
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

KiB = 1 << 10


class FullWhileReserved(FullDisk):
    """The disk is full while the reserve holds more than ``limit`` bytes (by default: while
    it holds anything)."""

    def __init__(self, connection: Any, reserve: Path, limit: int = 0) -> None:
        super().__init__(connection)
        self.reserve = reserve
        self.limit = limit

    @property  # type: ignore[override]
    def full(self) -> bool:
        return self.reserve.exists() and self.reserve.stat().st_size > self.limit

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

    def test_it_is_made_whole_and_given_back_piece_by_piece(self) -> None:
        reserve = DiskReserve(self.path, size=256 * KiB, piece=64 * KiB)
        self.assertTrue(reserve.make())
        self.assertEqual(self.path.stat().st_size, 256 * KiB)
        self.assertEqual(reserve.held(), 256 * KiB)  # not sparse
        self.assertEqual([reserve.release() for _ in range(5)], [64 * KiB] * 4 + [0])
        self.assertFalse(self.path.exists())

    def test_a_sparse_copy_holds_nothing_and_is_made_whole(self) -> None:
        """QA pass 26: moved with `cp --sparse=always`, it was taken as kept and gave back
        nothing on a full disk."""
        with self.path.open("wb") as sparse:
            sparse.truncate(256 * KiB)
        reserve = DiskReserve(self.path, size=256 * KiB)
        self.assertEqual((reserve.held(), reserve.kept()), (0, False))
        self.assertTrue(reserve.make())
        self.assertEqual(reserve.held(), 256 * KiB)

    def test_no_room_keeps_what_it_held_and_nothing_more(self) -> None:
        reserve = DiskReserve(self.path, size=256 * KiB, piece=64 * KiB)
        reserve.make()
        reserve.release()

        def no_room(fd: int, offset: int, length: int) -> None:
            os.ftruncate(fd, length)  # as a fallback that wrote part of it would
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(reserve_module.os, "posix_fallocate", no_room)
        self.assertFalse(reserve.make())
        self.assertEqual(self.path.stat().st_size, 192 * KiB)
        reserve.release(), reserve.release(), reserve.release()
        self.assertFalse(reserve.make())
        self.assertFalse(self.path.exists())

    def test_its_size_is_the_environments_and_zero_is_none(self) -> None:
        self.patch(reserve_module.os, "environ", {RESERVE_VARIABLE: "0"})
        self.assertEqual(reserve_size(), 0)
        reserve = DiskReserve(self.path)
        self.assertFalse(reserve.make())
        self.assertFalse(self.path.exists())
        self.assertEqual(reserve.release(), 0)
        self.patch(reserve_module.os, "environ", {})
        self.assertEqual(reserve_size(), RESERVE_BYTES)

    def test_it_is_made_again_at_most_once_an_interval(self) -> None:
        reserve = DiskReserve(self.path, size=4 * KiB)
        reserve.make()
        reserve.release()
        self.assertFalse(reserve.make_again())  # just given back: the disk is full
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
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def said(self, level: LogLevel) -> list[str]:
        return [formatEvent(e) for e in self.events if e["log_level"] == level
                and e["log_namespace"] == "nanocore.store.store"]  # fmt: skip

    def full_disk(self, size: int, piece: int) -> FullWhileReserved:
        """A reserve of ``size`` in pieces of ``piece``, the last of the disk's room."""
        reserve = DiskReserve(self.reserve, size=size, piece=piece)
        self.reserve.unlink()
        reserve.make()
        self.store._reserve = reserve  # type: ignore[attr-defined]
        writer = self.store._writer  # type: ignore[attr-defined]
        disk = FullWhileReserved(writer._connection, self.reserve, limit=size - piece)
        writer._connection = disk
        return disk

    async def test_a_batch_that_needs_more_room_is_given_more_pieces(self) -> None:
        disk = self.full_disk(256 * KiB, 64 * KiB)
        disk.limit = 128 * KiB  # two pieces of room are needed
        goodbye = m.DepartedCell("Cell_000000000001")
        await self.store.commit(UnitOfWork.of(Put(goodbye), essential=True))
        self.assertIn(goodbye.name, self.store.view.departed_cells)
        self.assertIn("131072 bytes of", self.said(LogLevel.warn)[-1])
        self.assertEqual(self.reserve.stat().st_size, 128 * KiB)
        writer = self.store._writer  # type: ignore[attr-defined]
        writer._connection = FullDisk(disk.connection)  # no room the whole reserve could make
        with self.assertRaises(CommitFailed):
            await self.store.commit(UnitOfWork.of(Put(m.DepartedCell("Cell_000000000002")),
                                                  essential=True))  # fmt: skip
        self.assertFalse(self.reserve.exists())

    def test_the_store_opens_with_its_reserve(self) -> None:
        self.assertEqual(self.reserve.stat().st_size, reserve_size())
        self.assertEqual(reserve_size(), 64 << 10)  # the suite's (tests/__init__.py)

    async def test_essential_units_are_kept_in_the_room_of_a_piece_each_time(self) -> None:
        """QA pass 26: given back whole, the reserve's room was taken by the other writes,
        and a second Cell's goodbye was lost again."""
        disk = self.full_disk(256 * KiB, 64 * KiB)
        pool = m.ComputePool(name="p1")
        with self.assertRaises(CommitFailed) as refused:
            await self.store.commit(UnitOfWork.of(Put(pool)))
        self.assertEqual(refused.exception.message, f"state could not be saved: {FULL}")
        self.assertEqual(self.reserve.stat().st_size, 256 * KiB, "kept for what must be")

        for number, left in ((1, 192), (2, 128)):
            goodbye = m.DepartedCell(f"Cell_00000000000{number}")
            await self.store.commit(UnitOfWork.of(Put(goodbye), essential=True))
            self.assertIn(goodbye.name, self.store.view.departed_cells)
            self.assertEqual(self.said(LogLevel.warn)[-1], (
                f"the data disk is full: 65536 bytes of {self.reserve} were given back to it to"
                " record 1 unit(s) Core must keep (what a Cell did or said); 0 other unit(s)"
                f" not saved; {left * KiB} bytes of the reserve left. Free room on the disk:"
                " the reserve is made whole again then"
            ))  # fmt: skip
            disk.limit -= 64 * KiB  # the other writes took that room: full again

        # Room again: writes are saved, and a minute on the reserve is made whole again.
        disk.limit = 1 << 30
        await self.store.commit(UnitOfWork.of(Put(pool)))
        self.time.now += RESTORE_INTERVAL
        await self.store.commit(UnitOfWork.of(Put(m.ComputePool(name="p2"))))
        self.assertEqual(self.reserve.stat().st_size, 256 * KiB)
        self.assertEqual(self.said(LogLevel.info)[-1],
                         f"room on the data disk again: {self.reserve} is kept again")  # fmt: skip

        await self.store.close()
        reopened = await Store.open(self.data_dir, reactor, clock=Clock())
        self.addCleanup(reopened.close)
        self.assertEqual(sorted(reopened.view.departed_cells),
                         ["Cell_000000000001", "Cell_000000000002"])  # fmt: skip
        self.assertEqual(sorted(reopened.view.compute_pools), ["default", "p1", "p2"])
