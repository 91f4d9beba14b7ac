"""Consistent copies of the store, made while Core runs (and by the CLI while it does not).

Core holds the database in SQLite's exclusive locking mode, so no other process can read it
while Core runs, and copying ``nanocore.db`` and its WAL by hand can catch the two at different
moments. A backup is therefore made by the connection that owns the store, on its writer
thread between two batches, through SQLite's online backup API: it holds every acknowledged
change and nothing half-applied. The copy is a single self-contained file (rollback journal,
not WAL), checked, fsynced and only then given its name, so a file under its final name is
always whole.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
from pathlib import Path

from attrs import evolve, frozen

from nanocore.atomicfile import sync_directory
from nanocore.store.errors import StoreError

#: Where backups go, inside the data folder.
BACKUP_FOLDER = "backups"
#: How many backups Core keeps in that folder; the oldest beyond go (copy them away).
KEEP_BACKUPS = 10
#: ``nanocore-20261207T171500Z.db``, with ``-2``... for a second backup in one second.
BACKUP_NAME = re.compile(r"nanocore-\d{8}T\d{6}Z(?:-\d+)?\.db")


@frozen
class Backup:
    """A backup file as written: where, how large, the schema version it holds, and the
    older backups removed to keep the newest."""

    path: Path
    size: int
    schema: int
    removed: tuple[Path, ...] = ()


def make_backup(
    connection: sqlite3.Connection, folder: Path, seconds: float, keep: int = KEEP_BACKUPS
) -> Backup:
    """A new backup in ``folder``, named for ``seconds``, and the newest ``keep`` kept: all of
    it file work, done where the copy is made (the writer thread, or the CLI's)."""
    made = write_backup(connection, new_backup_path(folder, seconds))
    return evolve(made, removed=tuple(prune_backups(folder, keep, made=made.path)))


def new_backup_path(folder: Path, seconds: float) -> Path:
    """A name in ``folder`` for a backup made at ``seconds`` (UTC), after every backup there:
    after those of its second (one pruned since must not be taken again: it would sort as the
    oldest), and after any named for a later second, which a clock behind the one that named
    them makes (the newest ``keep`` by name must be the newest made: each backup made during a
    step back removed the one made before it; QA pass 24). Such a backup takes the newest
    name's second with the next number."""
    ours = f"nanocore-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(seconds))}"
    taken = [_order(p) for p in folder.glob("nanocore-*.db") if BACKUP_NAME.fullmatch(p.name)]
    newest = max(taken, default=None)
    if newest is None or newest[0] < ours:
        return folder / f"{ours}.db"
    second, number = newest
    return folder / f"{second}-{number + 1}.db"


def _order(path: Path) -> tuple[str, int]:
    """A backup's second and its number in that second (1 for the bare name)."""
    return path.name[:25], int(path.stem[26:] or 1)


def write_backup(connection: sqlite3.Connection, target: Path) -> Backup:
    """Copy the database of ``connection`` to ``target``, whole or not at all.

    Run it on the thread that owns ``connection``, between transactions."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    os.close(os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        copy = sqlite3.connect(partial, isolation_level=None)
        try:
            connection.backup(copy)
            copy.execute("PRAGMA journal_mode = DELETE")  # one file, readable anywhere
            schema = checked_copy(copy, target)
        finally:
            copy.close()
        with open(partial, "rb") as written:
            os.fsync(written.fileno())
        os.replace(partial, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    sync_directory(target.parent)
    return Backup(target, target.stat().st_size, schema)


def checked_copy(copy: sqlite3.Connection, path: Path) -> int:
    """The schema version of a copy that passes SQLite's integrity check, else refuse it."""
    problems = [row[0] for row in copy.execute("PRAGMA integrity_check").fetchall()]
    if problems != ["ok"]:
        raise StoreError(f"{path} failed its integrity check: {'; '.join(problems[:5])}")
    try:
        row = copy.execute("SELECT version FROM schema_version").fetchone()
    except sqlite3.DatabaseError:
        row = None
    if row is None:
        raise StoreError(f"{path} is not a nanocore store (no schema version)")
    return int(row[0])


def prune_backups(folder: Path, keep: int = KEEP_BACKUPS, made: Path | None = None) -> list[Path]:
    """Remove all but the newest ``keep`` backups in ``folder``, and what a copy cut short by
    a crash left; return the backups removed. (Copies are made one at a time: none is under
    way when this runs.) The backup just ``made`` is kept whatever its name: named for a
    clock behind the one that named the others, it sorted oldest and was removed as it was
    made, while its path was answered (QA pass 22)."""
    names = sorted((p for p in folder.iterdir() if BACKUP_NAME.fullmatch(p.name)), key=_order)
    others = [path for path in names if path != made]
    removed = others[: max(0, len(names) - keep)]
    for path in removed:
        path.unlink(missing_ok=True)
    for partial in folder.glob(".nanocore-*.db.partial"):
        partial.unlink(missing_ok=True)
    return removed
