"""Backups of the store (new in nanocore: Core kept JSON files anyone could copy; nanocore's
database can only be copied consistently by the running Core itself)."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from nanocore.api.route import Call, Family
from nanocore.api.schema import STRING, UINT, obj
from nanocore.operations.core import Operations
from nanocore.store.backup import Backup

BACKUP = obj(name=STRING, path=STRING, size=UINT, schema=UINT)

backups: Family[Operations] = Family("backups")


def backup_document(backup: Backup) -> dict[str, object]:
    return {
        "name": backup.path.name,
        "path": str(backup.path),
        "size": backup.size,
        "schema": backup.schema,
    }


@backups.route(
    "POST",
    "/backups/",
    "Back up the store to data/backups/ (every change acknowledged before; the newest 10 kept)",
    response=BACKUP,
)
def make_backup(ops: Operations, call: Call) -> Deferred[object]:
    return ops.backups.make().addCallback(backup_document)
