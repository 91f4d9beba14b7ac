"""Address pools and ranges (§3.13, §4.13)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from nanocore.api.decode import Body, Field, Kind
from nanocore.api.route import Call, Family, empty
from nanocore.api.schema import STRING, UINT, array, obj
from nanocore.model import AddressAllocation, AddressPool, AddressRange
from nanocore.operations.core import Operations

ALLOCATION = obj(address=STRING, instance=STRING)
POOL_ITEM = obj(
    ("name", "gateway", "addresses", "allocated"),
    name=STRING,
    gateway=STRING,
    dns=array(STRING),
    provider=STRING,
    addresses=UINT,
    allocated=UINT,
)
POOL = obj(
    ("name", "gateway"),
    name=STRING,
    gateway=STRING,
    dns=array(STRING),
    provider=STRING,
    ranges=array(obj(start=STRING, end=STRING, netmask=STRING, capacity=UINT)),
    allocated=array(ALLOCATION),
)
RANGE_ITEM = obj(start=STRING, end=STRING, netmask=STRING)
RANGE = obj(
    ("start", "end", "netmask", "capacity"),
    start=STRING,
    end=STRING,
    netmask=STRING,
    capacity=UINT,
    allocated=array(ALLOCATION),
)

POOL_BODY = Body(
    (
        Field("gateway", required=True, missing="invalid gateway ''"),
        Field("dns", Kind.STRING_LIST),
        Field("provider", required=True, missing="invalid provider ''",
              choices=("dhcp", "cloudinit")),
        Field("mode", description="validated, not stored",
              choices=("", "internal", "external", "both")),
    )
)  # fmt: skip
RANGE_BODY = Body((Field("end", required=True), Field("netmask", required=True)))


def _pool_head(pool: AddressPool) -> dict[str, Any]:
    head: dict[str, Any] = {"name": pool.name, "gateway": pool.gateway}
    if pool.dns:
        head["dns"] = list(pool.dns)
    if pool.provider.value:
        head["provider"] = pool.provider.value
    return head


def _allocations(allocations: tuple[AddressAllocation, ...]) -> list[dict[str, str]]:
    return [{"address": a.address, "instance": a.instance} for a in allocations]


def _range(item: AddressRange) -> dict[str, Any]:
    return {"start": item.start, "end": item.end, "netmask": item.netmask}


def _pool_arguments(call: Call) -> tuple[str, str, tuple[str, ...], str, str]:
    """Name, gateway, DNS, provider and mode, as creating and modifying a pool take them."""
    b = call.body
    return (
        call.params["pool"],
        b.text("gateway"),
        b.texts("dns"),
        b.text("provider"),
        b.text("mode"),
    )


addresses: Family[Operations] = Family("address pools")

RANGES = "/address_pools/:pool/:type/ranges/"


@addresses.route(
    "GET", "/address_pools/", "List address pools", response=array(POOL_ITEM), cacheable=True
)
def list_pools(ops: Operations, call: Call) -> object:
    return [
        {**_pool_head(s.pool), "addresses": s.capacity, "allocated": s.allocated}
        for s in ops.address_pools.list()
    ]


@addresses.route(
    "GET",
    "/address_pools/:pool",
    "Get an address pool with its ranges and allocations",
    response=POOL,
)
def get_pool(ops: Operations, call: Call) -> object:
    detail = ops.address_pools.get(call.params["pool"])
    data = _pool_head(detail.pool)
    if detail.ranges:
        data["ranges"] = [{**_range(r), "capacity": r.capacity} for r in detail.ranges]
    if detail.allocations:
        data["allocated"] = _allocations(detail.allocations)
    return data


@addresses.route("POST", "/address_pools/:pool", "Create an address pool", body=POOL_BODY)
def create_pool(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.address_pools.create(*_pool_arguments(call)))


@addresses.route(
    "PUT",
    "/address_pools/:pool",
    "Replace gateway, DNS and provider of an address pool",
    body=POOL_BODY,
)
def modify_pool(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.address_pools.modify(*_pool_arguments(call)))


@addresses.route(
    "DELETE", "/address_pools/:pool", "Delete an unused address pool with no allocations"
)
def delete_pool(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.address_pools.delete(call.params["pool"]))


@addresses.route("GET", RANGES, "List the ranges of an address pool", response=array(RANGE_ITEM))
def list_ranges(ops: Operations, call: Call) -> object:
    p = call.params
    return [_range(r) for r in ops.address_pools.ranges(p["pool"], p["type"])]


@addresses.route("GET", RANGES + ":start", "Get one range with its allocations", response=RANGE)
def get_range(ops: Operations, call: Call) -> object:
    p = call.params
    detail = ops.address_pools.get_range(p["pool"], p["type"], p["start"])
    data = {**_range(detail.range), "capacity": detail.range.capacity}
    if detail.allocations:
        data["allocated"] = _allocations(detail.allocations)
    return data


@addresses.route(
    "POST",
    RANGES + ":start",
    "Add a range (inside its mask, gateway outside, no overlap)",
    body=RANGE_BODY,
)
def add_range(ops: Operations, call: Call) -> Deferred[str]:
    p, b = call.params, call.body
    return empty(
        ops.address_pools.add_range(
            p["pool"], p["type"], p["start"], b.text("end"), b.text("netmask")
        )
    )


@addresses.route("DELETE", RANGES + ":start", "Remove a range with no allocations")
def remove_range(ops: Operations, call: Call) -> Deferred[str]:
    p = call.params
    return empty(ops.address_pools.remove_range(p["pool"], p["type"], p["start"]))
