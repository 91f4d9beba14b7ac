"""Zone, pool and cell status (§3.4, §4.4)."""

from __future__ import annotations

from collections.abc import Hashable
from functools import lru_cache
from typing import Any

from nanocore.api import envelope
from nanocore.api.route import Call, Family, Raw
from nanocore.api.schema import BOOL, NUMBER, STRING, UINT, array, nullable, obj
from nanocore.operations.core import Operations
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


status: Family[Operations] = Family("status")


def _kept_while(ops: Operations) -> Hashable:
    """Status answers are kept until a commit or a Cell's liveness, address or report moves."""
    return ops.status.revision()


@status.route(
    "GET",
    "/compute_zone_status/",
    "Zone totals",
    response=ZONE,
    cacheable=True,
    kept_while=_kept_while,
)
def zone(ops: Operations, call: Call) -> object:
    state = ops.status.zone()
    return {
        "name": state.name,
        "pools": [state.disabled_pools, state.enabled_pools],
        "cells": [state.offline, state.online],
        "instances": state.instances.as_list(),
        **usage(state.usage, truncate=False),
        "start_time": state.start_time,
    }


@status.route(
    "GET",
    "/compute_pool_status/",
    "Status of every pool (null when there are none)",
    response=nullable(array(POOL)),
    cacheable=True,
    kept_while=_kept_while,
)
def pools(ops: Operations, call: Call) -> object:
    return [pool(state, truncate=True) for state in ops.status.pools()] or None


@status.route(
    "GET",
    "/compute_pool_status/:pool",
    "Status of one pool",
    response=POOL,
    cacheable=True,
    kept_while=_kept_while,
)
def one_pool(ops: Operations, call: Call) -> object:
    return pool(ops.status.pool(call.params["pool"]), truncate=False)


@status.route(
    "GET",
    "/compute_cell_status/:pool",
    "Status of the cells of a pool (null when there are none)",
    response=nullable(array(CELL)),
    cacheable=True,
    kept_while=_kept_while,
)
def cells(ops: Operations, call: Call) -> object:
    states = ops.status.cells(call.params["pool"])
    if not states:
        return None
    # After a burst of reports most Cells' states are the ones encoded last time.
    body = envelope.success_of_items([_encoded_entry(state) for state in states])
    return Raw(body, envelope.CONTENT_TYPE)


#: Entries kept: every Cell of a 2,000-Cell pool, ~1 KiB each (docs/architecture.md, bounds).
KEPT_CELL_ENTRIES = 2048


@lru_cache(maxsize=KEPT_CELL_ENTRIES)
def _encoded_entry(state: CellState) -> bytes:
    """A Cell's entry of the status list, encoded (a frozen value: the same bytes always)."""
    return envelope.list_item(cell(state, truncate=True))


@status.route(
    "GET",
    "/compute_cell_status/:pool/:cell",
    "Status of one cell",
    response=CELL,
    cacheable=True,
    kept_while=_kept_while,
)
def one_cell(ops: Operations, call: Call) -> object:
    p = call.params
    return cell(ops.status.cell(p["pool"], p["cell"]), truncate=False)
