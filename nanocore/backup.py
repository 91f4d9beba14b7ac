"""`nanocore backup [DEST]` and `nanocore restore FILE`: copies of the store an operator can keep.

While Core runs it holds ``data/nanocore.db`` in exclusive locking mode, so only Core can copy
it consistently: `backup` asks it to (``POST /backups/``, signed like `call`) and the copy
appears in ``data/backups/``. While Core is stopped, `backup` makes the same copy itself. With
DEST, the copy is then also put at DEST (a file, or a folder to put it in).

`restore` puts a backup in place of the store while Core is stopped. The store it replaces is
not deleted but renamed (with its WAL, which belongs to it alone: left beside the restored file
it would be replayed into it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import treq
from twisted.internet.threads import deferToThread

from nanocore import gojson
from nanocore.atomicfile import sync_directory
from nanocore.call import CallRefused, Unanswered, answer_of, signed_call
from nanocore.console import Console
from nanocore.layout import PID_FILE_NAME
from nanocore.options import AnyOrderOptions
from nanocore.pidfile import running_pid
from nanocore.store.backup import BACKUP_FOLDER, checked_copy, make_backup
from nanocore.store.errors import StoreError
from nanocore.store.schema import DB_NAME, bundled_scripts

EXIT_OK = 0
EXIT_FAILURE = 1

#: A backup of a large store takes a while; `call`'s 30 s would be short.
BACKUP_TIMEOUT = 600.0


class BackupOptions(AnyOrderOptions):
    synopsis = "[DEST] [--config-dir DIR] [--data-dir DIR]"
    longdesc = (
        "Back up the store to data/backups/ (the newest 10 are kept there), and to DEST if"
        " given (a file, or a folder to put it in). A running nanocore makes the copy itself"
        " (the request is signed with the first credential of api.cfg); a stopped one's store"
        " is copied directly. The copy holds every change acknowledged before the command."
    )
    optParameters = [
        ["config-dir", None, "config", "folder holding domain.cfg and api.cfg"],
        ["data-dir", None, "data", "folder holding the store and core.pid"],
    ]

    def parseArgs(self, dest: str | None = None) -> None:
        self["dest"] = Path(dest) if dest else None


class RestoreOptions(AnyOrderOptions):
    synopsis = "FILE [--data-dir DIR]"
    longdesc = (
        "Put the backup FILE in place of the store (nanocore must be stopped). The store it"
        " replaces is kept beside it as nanocore.db.before-restore-<time>."
    )
    optParameters = [["data-dir", None, "data", "folder holding the store and core.pid"]]

    def parseArgs(self, source: str) -> None:  # type: ignore[override]
        self["source"] = Path(source)


class Refused(Exception):
    """The command cannot do what was asked; the message says why."""


# --- backup --------------------------------------------------------------------------------


async def backup(reactor: Any, options: BackupOptions, console: Console, http: Any = treq) -> int:
    data_dir = Path(options["data-dir"]).absolute()
    try:
        if running_pid(data_dir / PID_FILE_NAME) is not None:
            made = await _made_by_core(reactor, options, http)
        else:
            made = await deferToThread(backup_stopped, data_dir)
        if options["dest"] is not None:
            made = await deferToThread(copy_file, made, options["dest"].absolute())
    except Refused as refused:
        console.complain(f"nanocore backup: {refused}")
        return EXIT_FAILURE
    console.say(f"store backed up to {made} ({made.stat().st_size} bytes)")
    return EXIT_OK


async def _made_by_core(reactor: Any, options: BackupOptions, http: Any) -> Path:
    try:
        prepared = signed_call(
            Path(options["config-dir"]), Path(options["data-dir"]), "POST", "/backups/"
        )
        answer = await answer_of(reactor, http, prepared, BACKUP_TIMEOUT)
    except (CallRefused, Unanswered) as refused:
        raise Refused(str(refused)) from None
    try:
        document = gojson.loads(answer.content)
        if document["error_code"] != 0:
            raise Refused(f"nanocore refused: {document['message']}")
        return Path(document["data"]["path"])
    except (gojson.JSONError, KeyError, TypeError):
        raise Refused(
            f"HTTP {answer.status} from {prepared.url}: not an answer of nanocore"
        ) from None


def backup_stopped(data_dir: Path) -> Path:
    """The backup a stopped Core's store gives, in ``data/backups/`` as Core makes them."""
    store = data_dir / DB_NAME
    if not store.is_file() or store.stat().st_size == 0:
        raise Refused(f"no store to back up: {store} is missing or empty")
    connection = sqlite3.connect(store, isolation_level=None, timeout=0.5)
    try:
        connection.execute("PRAGMA locking_mode = EXCLUSIVE")
        made = make_backup(connection, data_dir / BACKUP_FOLDER, time.time())
    except (sqlite3.Error, StoreError) as error:
        raise Refused(f"{store} cannot be backed up: {error}") from None
    finally:
        connection.close()
    return made.path


def copy_file(source: Path, dest: Path) -> Path:
    """Put a copy of ``source`` at ``dest`` (or in it, if a folder), whole or not at all."""
    target = dest / source.name if dest.is_dir() else dest
    partial = target.with_name(f".{target.name}.partial")
    try:
        partial.unlink(missing_ok=True)
        created = os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with open(source, "rb") as reading, os.fdopen(created, "wb") as writing:
            shutil.copyfileobj(reading, writing, 1 << 20)
            writing.flush()
            os.fsync(writing.fileno())
        os.replace(partial, target)
        sync_directory(target.parent)
    except OSError as error:
        raise Refused(f"cannot write {target}: {error.strerror or error}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return target


# --- restore -------------------------------------------------------------------------------


def restore(options: RestoreOptions, console: Console) -> int:
    data_dir = Path(options["data-dir"]).absolute()
    pid = running_pid(data_dir / PID_FILE_NAME)
    if pid is not None:
        console.complain(f"nanocore restore: core is running (pid {pid}); stop it first")
        return EXIT_FAILURE
    try:
        aside = restore_stopped(Path(options["source"]), data_dir)
    except Refused as refused:
        console.complain(f"nanocore restore: {refused}")
        return EXIT_FAILURE
    console.say(f"restored {options['source']} into {data_dir / DB_NAME}")
    if aside is not None:
        console.say(f"the store it replaced is kept as {aside}")
    return EXIT_OK


def restore_stopped(source: Path, data_dir: Path) -> Path | None:
    """Put ``source`` in place of the store; return where the replaced store went."""
    _check_backup(source)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = data_dir / DB_NAME
    staged = copy_file(source, data_dir / f".{DB_NAME}.restoring")
    aside = None
    wal = Path(f"{store}-wal")
    if store.exists() or wal.exists():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = data_dir / f"{DB_NAME}.before-restore-{stamp}"
        number = 1
        while aside.exists() or Path(f"{aside}-wal").exists():
            number += 1
            aside = data_dir / f"{DB_NAME}.before-restore-{stamp}-{number}"
        for suffix in ("-wal", ""):  # the WAL first: never left beside the restored file
            with contextlib.suppress(FileNotFoundError):
                os.rename(f"{store}{suffix}", f"{aside}{suffix}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{store}-shm")
    os.replace(staged, store)
    sync_directory(data_dir)
    return aside


def _check_backup(source: Path) -> None:
    """A readable nanocore store that passes its integrity check, of a schema we can open."""
    if not source.is_file():
        raise Refused(f"{source} is not a file")
    try:
        copy = sqlite3.connect(f"{source.absolute().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise Refused(f"{source} cannot be read: {error}") from None
    try:
        schema = checked_copy(copy, source)
    except sqlite3.DatabaseError as error:
        raise Refused(f"{source} is not a readable SQLite database ({error})") from None
    except StoreError as error:
        raise Refused(str(error)) from None
    finally:
        copy.close()
    latest = bundled_scripts()[-1].version
    if schema > latest:
        raise Refused(
            f"{source} has schema version {schema}, newer than this nanocore supports ({latest})"
        )
