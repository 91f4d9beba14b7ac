"""Cell membership routes and cell storage paths (api-reference §3.2 #6-11, §3.4 #22-23)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from nanocore.api.decode import Body, Field, Kind
from nanocore.api.route import Call, Family, empty
from nanocore.api.schema import BOOL, STRING, Schema, array, enum, obj
from nanocore.operations.cells import CellStoragePaths, CellView, StorageAttachment
from nanocore.operations.core import Operations

CELL_ITEM: Schema = obj(name=STRING, address=STRING, enabled=BOOL, alive=BOOL, PurgeAppending=BOOL)
ATTACHMENT: Schema = obj(("name", "attached"), name=STRING, attached=BOOL, error=STRING)
CELL: Schema = obj(
    ("name", "address", "enabled", "alive"),
    name=STRING,
    address=STRING,
    enabled=BOOL,
    alive=BOOL,
    storage=array(ATTACHMENT),
)
STORAGE_PATHS: Schema = obj(mode=enum("local", "nfs"), system=array(STRING), data=array(STRING))

MODIFY_CELL = Body(
    (
        Field("enable", Kind.BOOL, description="false disables the cell"),
        Field(
            "purge",
            Kind.BOOL,
            description="with enable=false: drop every instance on the cell when it next "
            "connects (failover clean-up); the original dropped this flag",
        ),
    ),
)
CHANGE_STORAGE = Body(
    (Field("default", required=True, missing="target path required"),),
)


def cell_item(view: CellView) -> dict[str, Any]:
    """A cell in a list; ``PurgeAppending`` is the original's untagged Go field, kept."""
    return {
        "name": view.name,
        "address": view.address,
        "enabled": view.enabled,
        "alive": view.alive,
        "PurgeAppending": view.purge_pending,
    }


def cell_detail(view: CellView, storage: tuple[StorageAttachment, ...]) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": view.name,
        "address": view.address,
        "enabled": view.enabled,
        "alive": view.alive,
    }
    if storage:
        document["storage"] = [attachment(item) for item in storage]
    return document


def attachment(item: StorageAttachment) -> dict[str, Any]:
    """``error`` only on an unattached device, as the original's omitempty field."""
    document: dict[str, Any] = {"name": item.name, "attached": item.attached}
    if item.error and not item.attached:
        document["error"] = item.error
    return document


def storage_paths(paths: CellStoragePaths) -> dict[str, Any]:
    return {"mode": paths.mode, "system": list(paths.system), "data": list(paths.data)}


cells: Family[Operations] = Family("cells")

MEMBER = "/compute_pool_cells/:pool/:cell"
STORAGES = "/compute_cell_status/:pool/:cell/storages/"


@cells.route(
    "GET",
    "/compute_pool_cells/",
    "Connected cells that belong to no pool",
    response=array(CELL_ITEM),
)
def unallocated(ops: Operations, call: Call) -> object:
    return [cell_item(view) for view in ops.cells.unallocated()]


@cells.route(
    "GET",
    "/compute_pool_cells/:pool",
    "Cells of a pool, sorted by name",
    response=array(CELL_ITEM),
)
def in_pool(ops: Operations, call: Call) -> object:
    return [cell_item(view) for view in ops.cells.in_pool(call.params["pool"])]


@cells.route(
    "POST",
    MEMBER,
    "Add an unallocated cell to a pool once the cell has applied the pool's storage and network",
)
def add(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.cells.add(call.params["pool"], call.params["cell"]))


@cells.route("DELETE", MEMBER, "Remove a cell that holds no instances from its pool")
def remove(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.cells.remove(call.params["pool"], call.params["cell"]))


@cells.route(
    "PUT", MEMBER, "Enable or disable a cell (optionally purging its instances)", body=MODIFY_CELL
)
def modify(ops: Operations, call: Call) -> Deferred[str]:
    p, b = call.params, call.body
    return empty(ops.cells.modify(p["pool"], p["cell"], b.flag("enable"), b.flag("purge")))


@cells.route(
    "GET",
    MEMBER,
    "A cell, with its storage attach state asked live when alive and enabled",
    response=CELL,
)
def get(ops: Operations, call: Call) -> Deferred[object]:
    found = ops.cells.get(call.params["pool"], call.params["cell"])
    return found.addCallback(lambda result: cell_detail(*result))


@cells.route(
    "GET", STORAGES, "Where the cell keeps system and data volumes", response=STORAGE_PATHS
)
def query_storage(ops: Operations, call: Call) -> Deferred[object]:
    asking = ops.cells.storage_paths(call.params["pool"], call.params["cell"])
    return asking.addCallback(storage_paths)


@cells.route("PUT", STORAGES, "Change the cell's default storage path", body=CHANGE_STORAGE)
def change_storage(ops: Operations, call: Call) -> Deferred[str]:
    p = call.params
    return empty(ops.cells.change_storage_path(p["pool"], p["cell"], call.body.text("default")))
