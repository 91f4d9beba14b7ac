"""Zone, pool and cell status (§3.4, §4.4)."""

from __future__ import annotations

from typing import Any

from nanocore.api.route import Call, Route
from nanocore.api.schema import BOOL, NUMBER, STRING, UINT, array, nullable, obj
from nanocore.operations.status import CellState, PoolState, Usage

_COUNTS = {"type": "array", "items": UINT, "minItems": 2, "maxItems": 2}
_INSTANCES = {"type": "array", "items": UINT, "minItems": 4, "maxItems": 4}
_USAGE = {
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
ZONE = obj(name=STRING, pools=_COUNTS, cells=_COUNTS, instances=_INSTANCES, **_USAGE,
           start_time=STRING)  # fmt: skip
POOL = obj(name=STRING, enabled=BOOL, cells=_COUNTS, instances=_INSTANCES, **_USAGE)
CELL = obj(name=STRING, address=STRING, enabled=BOOL, alive=BOOL, instances=_INSTANCES, **_USAGE)


def usage(value: Usage, truncate: bool) -> dict[str, Any]:
    """The usage fields; lists carry an integral ``cpu_usage`` as Core's did."""
    return {
        "cpu_usage": float(int(value.cpu_usage)) if truncate else value.cpu_usage,
        "max_cpu": value.cores,
        "available_memory": value.memory_available,
        "max_memory": value.memory,
        "available_disk": value.disk_available,
        "max_disk": value.disk,
        "read_speed": value.read_speed,
        "write_speed": value.write_speed,
        "receive_speed": value.receive_speed,
        "send_speed": value.send_speed,
    }


def pool(state: PoolState, truncate: bool) -> dict[str, Any]:
    return {
        "name": state.name,
        "enabled": state.enabled,
        "cells": [state.offline, state.online],
        "instances": state.instances.as_list(),
        **usage(state.usage, truncate),
    }


def cell(state: CellState, truncate: bool) -> dict[str, Any]:
    return {
        "name": state.name,
        "address": state.address,
        "enabled": state.enabled,
        "alive": state.alive,
        "instances": state.instances.as_list(),
        **usage(state.usage, truncate),
    }


def routes(ops: Any) -> list[Route]:
    def zone(call: Call) -> Any:
        state = ops.status.zone()
        return {
            "name": state.name,
            "pools": [state.disabled_pools, state.enabled_pools],
            "cells": [state.offline, state.online],
            "instances": state.instances.as_list(),
            **usage(state.usage, truncate=False),
            "start_time": state.start_time,
        }

    def pools(call: Call) -> Any:
        return [pool(state, truncate=True) for state in ops.status.pools()] or None

    def one_pool(call: Call) -> Any:
        return pool(ops.status.pool(call.params["pool"]), truncate=False)

    def cells(call: Call) -> Any:
        states = ops.status.cells(call.params["pool"])
        return [cell(state, truncate=True) for state in states] or None

    def one_cell(call: Call) -> Any:
        p = call.params
        return cell(ops.status.cell(p["pool"], p["cell"]), truncate=False)

    s = "status"
    return [
        Route("GET", "/compute_zone_status/", zone, "Zone totals", s, response=ZONE),
        Route("GET", "/compute_pool_status/", pools,
              "Status of every pool (null when there are none)", s,
              response=nullable(array(POOL))),
        Route("GET", "/compute_pool_status/:pool", one_pool, "Status of one pool", s,
              response=POOL),
        Route("GET", "/compute_cell_status/:pool", cells,
              "Status of the cells of a pool (null when there are none)", s,
              response=nullable(array(CELL))),
        Route("GET", "/compute_cell_status/:pool/:cell", one_cell, "Status of one cell", s,
              response=CELL),
    ]  # fmt: skip
