"""Compute pools and storage pools (§3.1, §3.3, §4.1, §4.3)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from nanocore.api.decode import Body, Field, Kind
from nanocore.api.route import Call, Route
from nanocore.api.schema import BOOL, STRING, UINT, array, obj
from nanocore.model import StoragePool
from nanocore.operations.pools import PoolSummary

COMPUTE_POOL = obj(
    name=STRING, enabled=BOOL, cells=UINT, network=STRING, storage=STRING, failover=BOOL
)
STORAGE_POOL = obj(type=STRING, host=STRING, target=STRING)
STORAGE_POOL_ITEM = obj(name=STRING, type=STRING, host=STRING, target=STRING)

_POOL_FIELDS = (
    Field("storage", description="storage pool name; empty for local storage"),
    Field("network", description="address pool name; empty for none"),
    Field("failover", Kind.BOOL, description="requires shared storage"),
)
CREATE_POOL = Body(_POOL_FIELDS, optional=True)
MODIFY_POOL = Body(_POOL_FIELDS)
STORAGE_BODY = Body(
    (
        Field("type", required=True, missing="invalid storage type ''", choices=("nfs",)),
        Field("host", required=True),
        Field("target", required=True),
    )
)


def compute_pool(summary: PoolSummary) -> dict[str, Any]:
    pool = summary.pool
    return {
        "name": pool.name,
        "enabled": pool.enabled,
        "cells": summary.cells,
        "network": pool.network,
        "storage": pool.storage,
        "failover": pool.failover,
    }


def storage_pool(pool: StoragePool) -> dict[str, Any]:
    return {"type": pool.type.value, "host": pool.host, "target": pool.target}


def empty(d: Deferred[Any]) -> Deferred[Any]:
    """Core's "nothing to return" once the change is committed."""
    return d.addCallback(lambda _: "")


def routes(ops: Any) -> list[Route]:
    def list_pools(call: Call) -> Any:
        return [compute_pool(item) for item in ops.compute_pools.list()]

    def get_pool(call: Call) -> Any:
        return compute_pool(ops.compute_pools.get(call.params["pool"]))

    def create_pool(call: Call) -> Any:
        b = call.body
        return empty(
            ops.compute_pools.create(
                call.params["pool"], b["storage"], b["network"], b["failover"]
            )
        )

    def modify_pool(call: Call) -> Any:
        b = call.body
        return empty(
            ops.compute_pools.modify(
                call.params["pool"], b["storage"], b["network"], b["failover"]
            )
        )

    def delete_pool(call: Call) -> Any:
        return empty(ops.compute_pools.delete(call.params["pool"]))

    def list_storage(call: Call) -> Any:
        return [{"name": pool.name, **storage_pool(pool)} for pool in ops.storage_pools.list()]

    def get_storage(call: Call) -> Any:
        return storage_pool(ops.storage_pools.get(call.params["pool"]))

    def create_storage(call: Call) -> Any:
        b = call.body
        return empty(
            ops.storage_pools.create(call.params["pool"], b["type"], b["host"], b["target"])
        )

    def modify_storage(call: Call) -> Any:
        b = call.body
        return empty(
            ops.storage_pools.modify(call.params["pool"], b["type"], b["host"], b["target"])
        )

    def delete_storage(call: Call) -> Any:
        return empty(ops.storage_pools.delete(call.params["pool"]))

    cp, sp = "compute pools", "storage pools"
    return [
        Route("GET", "/compute_pools/", list_pools, "List compute pools, sorted by name", cp,
              response=array(COMPUTE_POOL), cacheable=True),
        Route("GET", "/compute_pools/:pool", get_pool, "Get one compute pool", cp,
              response=COMPUTE_POOL),
        Route("POST", "/compute_pools/:pool", create_pool, "Create a compute pool", cp,
              body=CREATE_POOL),
        Route("PUT", "/compute_pools/:pool", modify_pool,
              "Replace storage, network and failover of a compute pool", cp, body=MODIFY_POOL),
        Route("DELETE", "/compute_pools/:pool", delete_pool, "Delete a compute pool without cells",
              cp),
        Route("GET", "/storage_pools/", list_storage, "List storage pools, sorted by name", sp,
              response=array(STORAGE_POOL_ITEM), cacheable=True),
        Route("GET", "/storage_pools/:pool", get_storage, "Get one storage pool", sp,
              response=STORAGE_POOL),
        Route("POST", "/storage_pools/:pool", create_storage, "Create an NFS storage pool", sp,
              body=STORAGE_BODY),
        Route("PUT", "/storage_pools/:pool", modify_storage,
              "Replace a storage pool no compute pool uses", sp, body=STORAGE_BODY),
        Route("DELETE", "/storage_pools/:pool", delete_storage,
              "Delete a storage pool no compute pool uses", sp),
    ]  # fmt: skip
