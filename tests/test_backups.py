"""Backups of the store: what a copy holds, how requests share copies, and what `restore`
refuses (the commands against a real daemon are in tests/test_cli.py)."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nanocore import model as m
from nanocore.api.app import build_api_resource
from nanocore.api.testing import TEST_CREDENTIALS, APIClient
from nanocore.backup import Refused, backup_stopped, restore_stopped
from nanocore.operations.backups import Backups
from nanocore.operations.core import Operations
from nanocore.operations.errors import InvalidRequest
from nanocore.store import CommitFailed, Put, Store, StoreClosed, UnitOfWork
from nanocore.store.backup import Backup, new_backup_path, prune_backups
from nanocore.store.reserve import RESERVE_NAME
from nanocore.store.schema import DB_NAME

#: 2026-11-30 00:53:20 UTC.
NOW = 1_796_000_000.0


def pool(name: str) -> UnitOfWork:
    return UnitOfWork.of(Put(m.ComputePool(name=name)))


async def pools_in(case: TestCase, database: Path) -> list[str]:
    """The compute pools of a store file, opened as Core opens it."""
    data_dir = Path(case.mktemp())
    data_dir.mkdir()
    (data_dir / DB_NAME).write_bytes(database.read_bytes())
    store = await Store.open(data_dir, reactor)
    names = sorted(store.view.compute_pools)
    await store.close()
    return names


class AsyncSetUp(TestCase):
    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.asyncSetUp())

    async def asyncSetUp(self) -> None:
        pass


class StoreBackupTests(AsyncSetUp):
    async def asyncSetUp(self) -> None:
        self.data_dir = Path(self.mktemp())
        self.store = await Store.open(self.data_dir, reactor)
        self.addCleanup(self.store.close)

    async def test_a_copy_holds_what_was_acknowledged_before_it_and_nothing_after(self) -> None:
        await self.store.commit(pool("before"))
        copying = self.store.backup(self.data_dir / "backups", NOW)
        after = self.store.commit(pool("after"))  # queued behind the copy
        backup = await copying
        await after
        target = self.data_dir / "backups" / "nanocore-20261130T005320Z.db"
        self.assertEqual(backup, Backup(target, target.stat().st_size, backup.schema))
        self.assertGreater(backup.schema, 0)
        self.assertEqual(await pools_in(self, target), ["before", "default"])
        self.assertIn("after", self.store.view.compute_pools)

    async def test_the_copy_is_one_private_file_and_nothing_partial_is_left(self) -> None:
        target = (await self.store.backup(self.data_dir / "backups", NOW)).path
        self.assertEqual(os.listdir(target.parent), [target.name])
        self.assertEqual(stat.S_IMODE(target.stat().st_mode), 0o600)
        with sqlite3.connect(target) as copy:
            (mode,) = copy.execute("PRAGMA journal_mode").fetchone()
        self.assertEqual(mode, "delete")  # no WAL: the file alone is the whole store

    async def test_a_closed_store_is_not_copied(self) -> None:
        await self.store.close()
        await self.assertFailure(self.store.backup(self.data_dir / "backups", NOW), StoreClosed)


class Writes:
    """A stand-in for ``Store.backup``: each copy waits until the test lets it finish, then
    is named and pruned as the store does."""

    def __init__(self) -> None:
        self.asked: list[tuple[Path, float, int, Deferred[Backup]]] = []
        #: The files written, in order.
        self.made: list[Path] = []

    def __call__(self, folder: Path, seconds: float, keep: int) -> Deferred[Backup]:
        writing: Deferred[Backup] = Deferred()
        self.asked.append((folder, seconds, keep, writing))
        return writing

    def finish(self, index: int) -> Backup:
        folder, seconds, keep, writing = self.asked[index]
        target = new_backup_path(folder, seconds)
        target.write_bytes(b"copy")
        self.made.append(target)
        backup = Backup(target, 4, 7, tuple(prune_backups(folder, keep)))
        writing.callback(backup)
        return backup


class CoalescingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = Path(self.mktemp())
        self.folder.mkdir()
        self.writes = Writes()
        self.backups = Backups(self.writes, self.folder, Clock(), keep=2)

    def test_requests_during_a_copy_share_the_next_one(self) -> None:
        """Each still holds what was acknowledged before it: not the copy already under way."""
        first = self.backups.make()
        waiting = [self.backups.make(), self.backups.make()]
        self.assertEqual(len(self.writes.asked), 1)
        made = self.writes.finish(0)
        self.assertIs(self.successResultOf(first), made)
        self.assertEqual(len(self.writes.asked), 2)
        again = self.writes.finish(1)
        self.assertEqual([self.successResultOf(w) for w in waiting], [again, again])
        self.assertNotEqual(made.path, again.path)

    def test_the_newest_are_kept(self) -> None:
        for index in range(3):
            self.backups.make()
            self.writes.finish(index)
        kept = sorted(p.name for p in self.folder.iterdir())
        self.assertEqual(kept, sorted(t.name for t in self.writes.made[1:]))

    def test_a_copy_that_could_not_be_written_is_said_and_the_next_is_made(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        backups = Backups(
            lambda *_: fail(OSError(28, "No space left on device")), self.folder, Clock()
        )
        error = self.failureResultOf(backups.make(), CommitFailed).value
        self.assertEqual(
            str(error), "backup could not be written: [Errno 28] No space left on device"
        )
        (line,) = [formatEvent(e) for e in events]
        self.assertIn("No space left on device", line)
        self.failureResultOf(backups.make(), CommitFailed)  # not stuck

    def test_without_a_store_nothing_is_copied(self) -> None:
        with self.assertRaises(InvalidRequest):
            Backups(None, self.folder, Clock()).make()

    def test_names_follow_the_time_and_never_collide(self) -> None:
        first = new_backup_path(self.folder, NOW)
        self.assertEqual(first.name, "nanocore-20261130T005320Z.db")
        first.write_bytes(b"")
        self.assertEqual(new_backup_path(self.folder, NOW).name,
                         "nanocore-20261130T005320Z-2.db")  # fmt: skip

    def test_a_second_with_more_backups_than_are_kept_keeps_the_newest(self) -> None:
        """The 12th backup of one second took the bare name again, freed by pruning, and was
        pruned at once as the oldest: acknowledged, and gone (QA pass 19)."""
        backups = Backups(self.writes, self.folder, Clock(), keep=10)
        for index in range(14):
            made = backups.make()
            self.writes.finish(index)
            self.assertTrue(self.successResultOf(made).path.exists(), index)
        kept = sorted(os.listdir(self.folder), key=lambda name: int(name[26:-3] or 1))
        self.assertEqual(kept[-1], "nanocore-19700101T000000Z-14.db")
        self.assertEqual(len(kept), 10)

    def test_the_backup_just_made_is_kept_whatever_its_name(self) -> None:
        """Made while Core's clock was behind the one that named the others, it sorted
        oldest and was removed as it was made, its path answered (QA pass 22)."""
        later = [f"nanocore-20261207T23410{i}Z.db" for i in range(3)]
        for name in later:
            (self.folder / name).write_bytes(b"")
        made = self.folder / "nanocore-20261207T224129Z.db"
        made.write_bytes(b"")
        removed = prune_backups(self.folder, keep=3, made=made)
        self.assertEqual([p.name for p in removed], [later[0]])
        self.assertTrue(made.exists())

    def test_backups_made_while_the_clock_is_behind_are_named_after_the_newest(self) -> None:
        """Each backup made while Core's clock was behind the newest name removed the one
        made before it, 2 s older, its path answered (QA pass 24)."""
        later = self.folder / "nanocore-20261130T015320Z.db"  # far ahead of the clock (1970)
        later.write_bytes(b"")
        backups = Backups(self.writes, self.folder, Clock(), keep=2)
        made = []
        for index in range(3):
            making = backups.make()
            self.writes.finish(index)
            made.append(self.successResultOf(making).path)
        self.assertEqual([path.name for path in made], [
            "nanocore-20261130T015320Z-2.db",
            "nanocore-20261130T015320Z-3.db",
            "nanocore-20261130T015320Z-4.db",
        ])  # fmt: skip
        self.assertEqual(sorted(os.listdir(self.folder)), [made[1].name, made[2].name])

    def test_pruning_leaves_other_files_alone(self) -> None:
        names = ["nanocore-20261130T005320Z.db", "nanocore-20261130T005320Z-2.db",
                 "nanocore-20261130T010321Z.db", "notes.txt"]  # fmt: skip
        for name in names:
            (self.folder / name).write_bytes(b"")
        (self.folder / ".nanocore-20261130T010300Z.db.partial").write_bytes(b"cut by a crash")
        removed = prune_backups(self.folder, keep=1)
        self.assertEqual([p.name for p in removed], names[:2])
        self.assertEqual(sorted(os.listdir(self.folder)), sorted(names[2:]))


class RestoreTests(AsyncSetUp):
    async def asyncSetUp(self) -> None:
        self.root = Path(self.mktemp())
        self.data_dir = self.root / "data"
        store = await Store.open(self.data_dir, reactor)
        await store.commit(pool("saved"))
        await store.close()

    def test_garbage_and_missing_files_are_refused_and_nothing_changes(self) -> None:
        before = (self.data_dir / DB_NAME).read_bytes()
        garbage = self.root / "garbage.db"
        garbage.write_bytes(b"not a database" * 100)
        empty = self.root / "empty.db"
        sqlite3.connect(empty).execute("CREATE TABLE t (x)").connection.close()
        for source, words in [
            (garbage, "is not a readable SQLite database"),
            (empty, "is not a nanocore store"),
            (self.root / "missing.db", "is not a file"),
        ]:
            with self.assertRaises(Refused) as refused:
                restore_stopped(source, self.data_dir)
            self.assertIn(words, str(refused.exception))
        self.assertEqual((self.data_dir / DB_NAME).read_bytes(), before)
        self.assertEqual(sorted(os.listdir(self.data_dir)), [DB_NAME, RESERVE_NAME])

    def test_a_newer_schema_is_refused(self) -> None:
        newer = backup_stopped(self.data_dir)
        with sqlite3.connect(newer) as copy:
            copy.execute("UPDATE schema_version SET version = 999")
        with self.assertRaises(Refused) as refused:
            restore_stopped(newer, self.data_dir)
        self.assertIn(
            "schema version 999, newer than this nanocore supports", str(refused.exception)
        )

    async def test_the_replaced_store_keeps_its_wal_and_the_restored_one_gets_none(self) -> None:
        """A WAL left beside the restored file would be replayed into it."""
        saved = backup_stopped(self.data_dir)
        store = await Store.open(self.data_dir, reactor)
        await store.commit(pool("later"))
        await store.close()
        wal = self.data_dir / f"{DB_NAME}-wal"
        wal.write_bytes(b"stands for what a crash left")
        aside = restore_stopped(saved, self.data_dir)
        assert aside is not None
        self.assertFalse(wal.exists())
        self.assertEqual(Path(f"{aside}-wal").read_bytes(), b"stands for what a crash left")
        self.assertEqual(stat.S_IMODE((self.data_dir / DB_NAME).stat().st_mode), 0o600)
        reopened = await Store.open(self.data_dir, reactor)
        self.assertEqual(sorted(reopened.view.compute_pools), ["default", "saved"])
        await reopened.close()
        os.unlink(f"{aside}-wal")
        self.assertEqual(await pools_in(self, aside), ["default", "later", "saved"])

    def test_a_wal_without_its_store_is_moved_aside_too(self) -> None:
        saved = backup_stopped(self.data_dir)
        (self.data_dir / DB_NAME).unlink()
        wal = self.data_dir / f"{DB_NAME}-wal"
        wal.write_bytes(b"left by a crash")
        aside = restore_stopped(saved, self.data_dir)
        again = restore_stopped(saved, self.data_dir)  # the same second: its own name
        assert aside is not None and again is not None
        self.assertFalse(wal.exists())
        self.assertEqual(Path(f"{aside}-wal").read_bytes(), b"left by a crash")
        self.assertNotEqual(again, aside)
        self.assertTrue(again.exists())

    def test_a_stopped_store_is_copied_as_core_would(self) -> None:
        made = backup_stopped(self.data_dir)
        self.assertEqual(made.parent, self.data_dir / "backups")
        with self.assertRaises(Refused) as refused:
            backup_stopped(self.root / "elsewhere")
        self.assertIn("no store to back up", str(refused.exception))


class BackupRouteTests(AsyncSetUp):
    """``POST /backups/``, signed, through the API as the portal would call it."""

    async def asyncSetUp(self) -> None:
        self.data_dir = Path(self.mktemp())
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = await Store.open(self.data_dir, reactor, clock=self.clock)
        self.addCleanup(self.store.close)
        folder = self.data_dir / "backups"
        backups = Backups(self.store.backup, folder, self.clock)
        ops = Operations(self.store, self.clock, backups=backups)
        resource = build_api_resource(ops, TEST_CREDENTIALS, self.clock)
        self.client = APIClient(resource, self.clock)

    async def test_the_answer_names_the_file_that_holds_the_store(self) -> None:
        await self.client.post("/compute_pools/saved")
        answer = await self.client.post("/backups/")
        path = self.data_dir.absolute() / "backups" / "nanocore-20261130T005320Z.db"
        size, schema = path.stat().st_size, answer.data["schema"]
        expected = {"name": path.name, "path": str(path), "size": size, "schema": schema}
        self.assertEqual(answer.data, expected)
        self.assertGreater(schema, 0)
        self.assertEqual(await pools_in(self, path), ["default", "saved"])

    async def test_it_is_signed_like_every_route(self) -> None:
        answer = await self.client.post("/backups/", signed=False)
        self.assertIn("authorization required", answer.error)
        self.assertFalse((self.data_dir / "backups").exists())
