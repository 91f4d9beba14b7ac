"""Opening the database: pragmas, integrity checks, forward migrations and first-start defaults.

Everything here runs on the writer thread (or in the importer, which has no reactor).
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path

from attrs import frozen
from twisted.logger import Logger

from nanocore import model as m
from nanocore.store.backup import write_backup
from nanocore.store.errors import DamagedStore, StoreError
from nanocore.store.tables import COMPUTE_POOL, SYSTEM_TEMPLATE, ZONE

log = Logger()

DB_NAME = "nanocore.db"
_SCRIPT_NAME = re.compile(r"(\d{4})-[a-z0-9-]+\.sql")


@frozen
class SchemaScript:
    """One forward migration: applying it moves the database to ``version``."""

    version: int
    name: str
    sql: str


def bundled_scripts() -> tuple[SchemaScript, ...]:
    """The versioned ``schema/NNNN-name.sql`` files shipped with the package, in order."""
    folder = resources.files("nanocore.store").joinpath("schema")
    scripts = []
    for entry in folder.iterdir():
        match = _SCRIPT_NAME.fullmatch(entry.name)
        if match:
            scripts.append(SchemaScript(int(match[1]), entry.name, entry.read_text("utf-8")))
    return checked_scripts(scripts)


def checked_scripts(scripts: Iterable[SchemaScript]) -> tuple[SchemaScript, ...]:
    ordered = tuple(sorted(scripts, key=lambda s: s.version))
    if [s.version for s in ordered] != list(range(1, len(ordered) + 1)):
        raise StoreError(f"schema scripts must be numbered 1..n without gaps: {ordered}")
    return ordered


def database_path(data_dir: Path) -> Path:
    return data_dir / DB_NAME


def open_database(
    data_dir: Path,
    scripts: tuple[SchemaScript, ...],
    now: str,
    new_id: Callable[[], str],
) -> sqlite3.Connection:
    """Open (creating if needed), check, migrate and seed the store; refuse a damaged one."""
    # 0700 as every folder nanocore creates: `import-nano` may be the first to make it.
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = database_path(data_dir)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    elif not path.is_file():
        # SQLite says only "unable to open database file" (QA pass 20).
        raise StoreError(
            f"{path} is not a file (a folder, or another kind of file): move it away, then"
            " restore the store from a backup or start with an empty one"
        )
    elif path.stat().st_size == 0:
        # SQLite takes an empty file for a new database: a store emptied by a full disk,
        # a bad copy or `: >` would come back as a first start and its state be lost.
        raise DamagedStore(
            f"{path} is empty (0 bytes): the database was damaged or emptied; restore it "
            "from a backup, or delete it to start with an empty store"
        )
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0.5)
    try:
        _configure(connection, path)
        check_integrity(connection, path)
        migrate(connection, scripts, path)
        seed_defaults(connection, now, new_id)
    except sqlite3.OperationalError as error:
        connection.close()
        if "locked" in str(error):
            raise StoreError(f"{path} is in use by another nanocore process") from None
        raise DamagedStore(f"{path} cannot be used: {error}") from None
    except sqlite3.IntegrityError as error:
        connection.close()
        raise StoreError(f"{path}: preparing the store failed: {error}") from None
    except sqlite3.DatabaseError as error:
        connection.close()
        raise DamagedStore(
            f"{path} is not a readable SQLite database ({error}); restore it from a backup "
            "or move it away to start with an empty store"
        ) from None
    except BaseException:
        connection.close()
        raise
    return connection


def _configure(connection: sqlite3.Connection, path: Path) -> None:
    # One process owns the store: a second Core (or an import while Core runs) is refused.
    connection.execute("PRAGMA locking_mode = EXCLUSIVE")
    (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
    if mode != "wal":
        raise StoreError(f"{path}: cannot switch to WAL journaling (got {mode!r})")
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute("PRAGMA foreign_keys = ON")


def check_integrity(connection: sqlite3.Connection, path: Path) -> None:
    """``integrity_check`` and ``foreign_key_check`` must both come back clean."""
    problems = [row[0] for row in connection.execute("PRAGMA integrity_check").fetchall()]
    if problems != ["ok"]:
        raise DamagedStore(
            f"{path} failed its integrity check: {'; '.join(problems[:5])}; "
            "restore it from a backup"
        )
    dangling = connection.execute("PRAGMA foreign_key_check").fetchall()
    if dangling:
        table, rowid, parent, _ = dangling[0]
        raise DamagedStore(
            f"{path} failed its foreign key check: {len(dangling)} row(s) refer to missing "
            f"entities, first {table} row {rowid} -> {parent}; restore it from a backup"
        )


def schema_version(connection: sqlite3.Connection, path: Path) -> int:
    tables = {
        row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if "schema_version" in tables:
        row = connection.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            raise DamagedStore(f"{path}: schema_version table is empty; restore it from a backup")
        return int(row[0])
    if tables:
        raise DamagedStore(
            f"{path} is not a nanocore store (no schema_version table); point --data-dir at"
            " nanocore's data folder, or move the file away to start with an empty store"
        )
    return 0


def backup_path(path: Path, version: int) -> Path:
    return path.with_name(f"{path.name}.v{version}.bak")


def migrate(connection: sqlite3.Connection, scripts: tuple[SchemaScript, ...], path: Path) -> None:
    """Bring the schema forward one script at a time, each in its own transaction."""
    current = schema_version(connection, path)
    latest = scripts[-1].version if scripts else 0
    if current > latest:
        raise StoreError(
            f"{path} has schema version {current}, newer than this nanocore supports "
            f"({latest}); run the newer nanocore or restore a backup"
        )
    if 0 < current < latest:
        target = backup_path(path, current)
        write_backup(connection, target)
        log.info("store backed up to {target} before upgrade", target=target)
    for script in scripts:
        if script.version <= current:
            continue
        bootstrap = ""
        if current == 0:
            bootstrap = (
                "CREATE TABLE schema_version (version INTEGER NOT NULL);\n"
                "INSERT INTO schema_version VALUES (0);\n"
            )
        try:
            connection.executescript(
                f"BEGIN IMMEDIATE;\n{bootstrap}{script.sql}\n"
                f"UPDATE schema_version SET version = {script.version};\nCOMMIT;"
            )
        except sqlite3.Error as error:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise StoreError(
                f"{path}: schema upgrade {script.name} failed ({error}); "
                f"the database is unchanged at version {current}"
            ) from None
        log.info("store schema now at version {version}", version=script.version)
        current = script.version


def seed_defaults(connection: sqlite3.Connection, now: str, new_id: Callable[[], str]) -> None:
    """A new store holds what Nano creates on first start: zone, ``default`` pool, templates."""
    if connection.execute("SELECT 1 FROM zone").fetchone() is not None:
        return
    templates = m.default_templates([new_id() for _ in m.DEFAULT_TEMPLATES], now)
    columns = ", ".join(f'"{c}"' for c in SYSTEM_TEMPLATE.columns)
    marks = ", ".join("?" for _ in SYSTEM_TEMPLATE.columns)
    pool = m.ComputePool(name=m.DEFAULT_POOL)
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute("INSERT INTO zone (id, name) VALUES (?, ?)", ZONE.to_row(m.Zone()))
        connection.execute(
            "INSERT INTO compute_pool (name, enabled, network, storage, failover) "
            "VALUES (?, ?, ?, ?, ?)",
            COMPUTE_POOL.to_row(pool),
        )
        connection.executemany(
            f"INSERT INTO system_template ({columns}) VALUES ({marks})",
            [SYSTEM_TEMPLATE.to_row(t) for t in templates],
        )
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
