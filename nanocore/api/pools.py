"""Compute pools and storage pools (§3.1, §3.3, §4.1, §4.3)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from nanocore.api.decode import Body, Field, Kind
from nanocore.api.route import Call, Family, empty
from nanocore.api.schema import BOOL, STRING, UINT, array, obj
from nanocore.model import StoragePool
from nanocore.operations.core import Operations
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


def _compute_arguments(call: Call) -> tuple[str, str, str, bool]:
    """Name, storage, network and failover, as creating and modifying a pool take them."""
    b = call.body
    return call.params["pool"], b.text("storage"), b.text("network"), b.flag("failover")


def _storage_arguments(call: Call) -> tuple[str, str, str, str]:
    """Name, type, host and target, as creating and modifying a storage pool take them."""
    b = call.body
    return call.params["pool"], b.text("type"), b.text("host"), b.text("target")


compute: Family[Operations] = Family("compute pools")
storage: Family[Operations] = Family("storage pools")


@compute.route(
    "GET",
    "/compute_pools/",
    "List compute pools, sorted by name",
    response=array(COMPUTE_POOL),
    cacheable=True,
)
def list_pools(ops: Operations, call: Call) -> object:
    return [compute_pool(item) for item in ops.compute_pools.list()]


@compute.route("GET", "/compute_pools/:pool", "Get one compute pool", response=COMPUTE_POOL)
def get_pool(ops: Operations, call: Call) -> object:
    return compute_pool(ops.compute_pools.get(call.params["pool"]))


@compute.route("POST", "/compute_pools/:pool", "Create a compute pool", body=CREATE_POOL)
def create_pool(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.compute_pools.create(*_compute_arguments(call)))


@compute.route(
    "PUT",
    "/compute_pools/:pool",
    "Replace storage, network and failover of a compute pool",
    body=MODIFY_POOL,
)
def modify_pool(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.compute_pools.modify(*_compute_arguments(call)))


@compute.route("DELETE", "/compute_pools/:pool", "Delete a compute pool without cells")
def delete_pool(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.compute_pools.delete(call.params["pool"]))


@storage.route(
    "GET",
    "/storage_pools/",
    "List storage pools, sorted by name",
    response=array(STORAGE_POOL_ITEM),
    cacheable=True,
)
def list_storage(ops: Operations, call: Call) -> object:
    return [{"name": pool.name, **storage_pool(pool)} for pool in ops.storage_pools.list()]


@storage.route("GET", "/storage_pools/:pool", "Get one storage pool", response=STORAGE_POOL)
def get_storage(ops: Operations, call: Call) -> object:
    return storage_pool(ops.storage_pools.get(call.params["pool"]))


@storage.route("POST", "/storage_pools/:pool", "Create an NFS storage pool", body=STORAGE_BODY)
def create_storage(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.storage_pools.create(*_storage_arguments(call)))


@storage.route(
    "PUT", "/storage_pools/:pool", "Replace a storage pool no compute pool uses", body=STORAGE_BODY
)
def modify_storage(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.storage_pools.modify(*_storage_arguments(call)))


@storage.route("DELETE", "/storage_pools/:pool", "Delete a storage pool no compute pool uses")
def delete_storage(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.storage_pools.delete(call.params["pool"]))
