"""Cell membership routes and cell storage paths (api-reference §3.2 #6-11, §3.4 #22-23)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from nanocore.api.decode import Body, Field, Kind
from nanocore.api.route import Call, Route
from nanocore.api.schema import BOOL, EMPTY, STRING, Schema, array, enum, obj
from nanocore.operations.cells import (
    CellOperations,
    CellStoragePaths,
    CellView,
    StorageAttachment,
)

TAG = "cells"


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


def routes(ops: Any) -> list[Route]:
    """``ops.cells`` is looked up per request, so the table can be built without operations."""

    def cells() -> CellOperations:
        family: CellOperations = ops.cells
        return family

    def unallocated(call: Call) -> object:
        return [cell_item(view) for view in cells().unallocated()]

    def in_pool(call: Call) -> object:
        return [cell_item(view) for view in cells().in_pool(call.params["pool"])]

    def get(call: Call) -> Deferred[object]:
        found = cells().get(call.params["pool"], call.params["cell"])
        return found.addCallback(lambda result: cell_detail(*result))

    def add(call: Call) -> Deferred[object]:
        adding = cells().add(call.params["pool"], call.params["cell"])
        return adding.addCallback(lambda _: "")

    def remove(call: Call) -> Deferred[object]:
        removing = cells().remove(call.params["pool"], call.params["cell"])
        return removing.addCallback(lambda _: "")

    def modify(call: Call) -> Deferred[object]:
        body = call.body
        changing = cells().modify(
            call.params["pool"], call.params["cell"], body["enable"], body["purge"]
        )
        return changing.addCallback(lambda _: "")

    def query_storage(call: Call) -> Deferred[object]:
        asking = cells().storage_paths(call.params["pool"], call.params["cell"])
        return asking.addCallback(storage_paths)

    def change_storage(call: Call) -> Deferred[object]:
        changing = cells().change_storage_path(
            call.params["pool"], call.params["cell"], call.body["default"]
        )
        return changing.addCallback(lambda _: "")

    member = "/compute_pool_cells/:pool/:cell"
    storages = "/compute_cell_status/:pool/:cell/storages/"
    return [
        Route(
            "GET",
            "/compute_pool_cells/",
            unallocated,
            "Connected cells that belong to no pool",
            TAG,
            response=array(CELL_ITEM),
        ),
        Route(
            "GET",
            "/compute_pool_cells/:pool",
            in_pool,
            "Cells of a pool, sorted by name",
            TAG,
            response=array(CELL_ITEM),
        ),
        Route(
            "POST",
            member,
            add,
            "Add an unallocated cell to a pool once the cell has applied the pool's "
            "storage and network",
            TAG,
            response=EMPTY,
        ),
        Route(
            "DELETE",
            member,
            remove,
            "Remove a cell that holds no instances from its pool",
            TAG,
            response=EMPTY,
        ),
        Route(
            "PUT",
            member,
            modify,
            "Enable or disable a cell (optionally purging its instances)",
            TAG,
            body=MODIFY_CELL,
            response=EMPTY,
        ),
        Route(
            "GET",
            member,
            get,
            "A cell, with its storage attach state asked live when alive and enabled",
            TAG,
            response=CELL,
        ),
        Route(
            "GET",
            storages,
            query_storage,
            "Where the cell keeps system and data volumes",
            TAG,
            response=STORAGE_PATHS,
        ),
        Route(
            "PUT",
            storages,
            change_storage,
            "Change the cell's default storage path",
            TAG,
            body=CHANGE_STORAGE,
            response=EMPTY,
        ),
    ]
