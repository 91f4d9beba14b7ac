"""Cells of compute pools (§3.2, §4.2)."""

from __future__ import annotations

from typing import Any

from nanocore.api.decode import Body, Field, Kind
from nanocore.api.pools import empty
from nanocore.api.route import Call, Route
from nanocore.api.schema import BOOL, STRING, array, enum, obj
from nanocore.operations.cells import CellDetail, CellInfo

CELL = obj(
    ("name", "address", "enabled", "alive"),
    name=STRING,
    address=STRING,
    enabled=BOOL,
    alive=BOOL,
    storage=array(obj(("name", "attached"), name=STRING, attached=BOOL, error=STRING)),
)
STORAGE_PATHS = obj(mode=enum("local", "nfs"), system=array(STRING), data=array(STRING))
PATH_BODY = Body((Field("default", required=True, missing="target path required"),))
CELL_ITEM = obj(name=STRING, address=STRING, enabled=BOOL, alive=BOOL, PurgeAppending=BOOL)
MODIFY_BODY = Body((Field("enable", Kind.BOOL, description="false disables the cell"),))


def cell(info: CellInfo) -> dict[str, Any]:
    return {"name": info.name, "address": info.address, "enabled": info.enabled,
            "alive": info.alive}  # fmt: skip


def cell_detail(detail: CellDetail) -> dict[str, Any]:
    """``storage`` is present only when the live Cell reported attachments."""
    data = cell(detail.info)
    if detail.storage:
        data["storage"] = [
            {"name": s.name, "attached": s.attached, **({} if s.attached else {"error": s.error})}
            for s in detail.storage
        ]
    return data


def cell_item(info: CellInfo) -> dict[str, Any]:
    """List entries keep Core's stray ``PurgeAppending`` key (always false here)."""
    return {**cell(info), "PurgeAppending": False}


def routes(ops: Any) -> list[Route]:
    def unallocated(call: Call) -> Any:
        return [cell_item(info) for info in ops.cells.unallocated()]

    def in_pool(call: Call) -> Any:
        return [cell_item(info) for info in ops.cells.in_pool(call.params["pool"])]

    def get_cell(call: Call) -> Any:
        p = call.params
        return ops.cells.get(p["pool"], p["cell"]).addCallback(cell_detail)

    def storage_paths(call: Call) -> Any:
        p = call.params
        d = ops.cells.storage_paths(p["pool"], p["cell"])
        return d.addCallback(
            lambda paths: {
                "mode": paths.mode,
                "system": list(paths.system),
                "data": list(paths.data),
            }
        )

    def change_storage_path(call: Call) -> Any:
        p = call.params
        return empty(ops.cells.change_storage_path(p["pool"], p["cell"], call.body["default"]))

    def add_cell(call: Call) -> Any:
        p = call.params
        return empty(ops.cells.add(p["pool"], p["cell"]))

    def remove_cell(call: Call) -> Any:
        p = call.params
        return empty(ops.cells.remove(p["pool"], p["cell"]))

    def modify_cell(call: Call) -> Any:
        p = call.params
        return empty(ops.cells.modify(p["pool"], p["cell"], call.body["enable"]))

    c = "cells"
    one = "/compute_pool_cells/:pool/:cell"
    return [
        Route("GET", "/compute_pool_cells/", unallocated, "List connected cells in no pool", c,
              response=array(CELL_ITEM)),
        Route("GET", "/compute_pool_cells/:pool", in_pool, "List the cells of a pool", c,
              response=array(CELL_ITEM)),
        Route("GET", one, get_cell, "Get a cell of a pool", c, response=CELL),
        Route("POST", one, add_cell,
              "Add a connected cell to a pool: push storage and network, wait until ready", c),
        Route("DELETE", one, remove_cell, "Remove a cell without instances from its pool", c),
        Route("PUT", one, modify_cell, "Enable or disable a cell", c, body=MODIFY_BODY),
        Route("GET", "/compute_cell_status/:pool/:cell/storages/", storage_paths,
              "Storage paths of a cell (asked live)", c, response=STORAGE_PATHS),
        Route("PUT", "/compute_cell_status/:pool/:cell/storages/", change_storage_path,
              "Change the default storage path of a cell", c, body=PATH_BODY),
    ]  # fmt: skip
