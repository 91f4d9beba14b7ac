"""Zone, pool and cell status routes (api-reference §3.4 #17-21, §4.4)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nanocore.api.route import Call, Route
from nanocore.api.schema import BOOL, NUMBER, STRING, UINT, Schema, array, nullable, obj
from nanocore.operations.status import (
    CellFigures,
    PoolFigures,
    StatusOperations,
    Usage,
    ZoneFigures,
)

TAG = "status"

PAIR: Schema = {**array(UINT), "minItems": 2, "maxItems": 2}
QUAD: Schema = {**array(UINT), "minItems": 4, "maxItems": 4}
_USAGE: dict[str, Schema] = {
    "cpu_usage": NUMBER,
    "max_cpu": UINT,
    "available_memory": UINT,
    "max_memory": UINT,
    "available_disk": UINT,
    "max_disk": UINT,
    "read_speed": UINT,
    "write_speed": UINT,
    "receive_speed": UINT,
    "send_speed": UINT,
}
ZONE: Schema = obj(
    name=STRING, pools=PAIR, cells=PAIR, instances=QUAD, **_USAGE, start_time=STRING
)
POOL: Schema = obj(name=STRING, enabled=BOOL, cells=PAIR, instances=QUAD, **_USAGE)
CELL: Schema = obj(name=STRING, address=STRING, enabled=BOOL, alive=BOOL, instances=QUAD, **_USAGE)


def usage(figures: Usage, *, truncate_cpu: bool = False) -> dict[str, Any]:
    """Speeds in their own places: the original's zone route swapped the pairs (fixed)."""
    return {
        "cpu_usage": float(int(figures.cpu_usage)) if truncate_cpu else figures.cpu_usage,
        "max_cpu": figures.cores,
        "available_memory": figures.memory_available,
        "max_memory": figures.memory_total,
        "available_disk": figures.disk_available,
        "max_disk": figures.disk_total,
        "read_speed": figures.read_speed,
        "write_speed": figures.write_speed,
        "receive_speed": figures.receive_speed,
        "send_speed": figures.send_speed,
    }


def zone_document(zone: ZoneFigures) -> dict[str, Any]:
    return {
        "name": zone.name,
        "pools": [zone.pools_disabled, zone.pools_enabled],
        "cells": [zone.offline, zone.online],
        "instances": zone.instances.as_list(),
        **usage(zone.usage),
        "start_time": zone.start_time,
    }


def pool_document(pool: PoolFigures, *, in_list: bool = False) -> dict[str, Any]:
    return {
        "name": pool.name,
        "enabled": pool.enabled,
        "cells": [pool.offline, pool.online],
        "instances": pool.instances.as_list(),
        **usage(pool.usage, truncate_cpu=in_list),
    }


def cell_document(cell: CellFigures, *, in_list: bool = False) -> dict[str, Any]:
    return {
        "name": cell.name,
        "address": cell.address,
        "enabled": cell.enabled,
        "alive": cell.alive,
        "instances": cell.instances.as_list(),
        **usage(cell.usage, truncate_cpu=in_list),
    }


def routes(status: Callable[[], StatusOperations]) -> list[Route]:
    """``status`` is called per request, so the table can be built before the operations."""

    def zone(call: Call) -> object:
        return zone_document(status().zone())

    def pools(call: Call) -> object:
        # ``null`` rather than ``[]`` when there is no pool, as the original answers.
        return [pool_document(p, in_list=True) for p in status().pools()] or None

    def pool(call: Call) -> object:
        return pool_document(status().pool(call.params["pool"]))

    def cells(call: Call) -> object:
        found = status().cells(call.params["pool"])
        return [cell_document(c, in_list=True) for c in found] or None

    def cell(call: Call) -> object:
        return cell_document(status().cell(call.params["pool"], call.params["cell"]))

    return [
        Route("GET", "/compute_zone_status/", zone, "Zone totals", TAG, response=ZONE),
        Route(
            "GET",
            "/compute_pool_status/",
            pools,
            "Status of every pool (null when there is none; CPU truncated to an integer)",
            TAG,
            response=nullable(array(POOL)),
        ),
        Route("GET", "/compute_pool_status/:pool", pool, "Status of one pool", TAG, response=POOL),
        Route(
            "GET",
            "/compute_cell_status/:pool",
            cells,
            "Status of the cells of a pool (null when it has none; CPU truncated)",
            TAG,
            response=nullable(array(CELL)),
        ),
        Route(
            "GET",
            "/compute_cell_status/:pool/:cell",
            cell,
            "Status of one cell of a pool",
            TAG,
            response=CELL,
        ),
    ]
