"""SQLite persistence of cluster state: schema, migrations, group commit, Nano 1.4 import."""

from nanocore.store.changes import Change, Delete, Insert, Put, UnitOfWork
from nanocore.store.errors import (
    CommitFailed,
    Conflict,
    DamagedStore,
    NotFound,
    StillReferenced,
    StoreClosed,
    StoreError,
)
from nanocore.store.indexes import Condition, condition
from nanocore.store.interfaces import CommitStore
from nanocore.store.readmodel import ReadModel
from nanocore.store.store import Store

__all__ = [
    "Change",
    "CommitFailed",
    "CommitStore",
    "Condition",
    "Conflict",
    "DamagedStore",
    "Delete",
    "Insert",
    "NotFound",
    "Put",
    "ReadModel",
    "StillReferenced",
    "Store",
    "StoreClosed",
    "StoreError",
    "UnitOfWork",
    "condition",
]
