"""Address pools and ranges (§3.13, §4.13)."""

from __future__ import annotations

from typing import Any

from nanocore.api.decode import Body, Field, Kind
from nanocore.api.pools import empty
from nanocore.api.route import Call, Route
from nanocore.api.schema import STRING, UINT, array, obj
from nanocore.model import AddressAllocation, AddressPool, AddressRange

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


def routes(ops: Any) -> list[Route]:
    def list_pools(call: Call) -> Any:
        return [
            {**_pool_head(s.pool), "addresses": s.capacity, "allocated": s.allocated}
            for s in ops.address_pools.list()
        ]

    def get_pool(call: Call) -> Any:
        detail = ops.address_pools.get(call.params["pool"])
        data = _pool_head(detail.pool)
        if detail.ranges:
            data["ranges"] = [{**_range(r), "capacity": r.capacity} for r in detail.ranges]
        if detail.allocations:
            data["allocated"] = _allocations(detail.allocations)
        return data

    def create_pool(call: Call) -> Any:
        b = call.body
        return empty(
            ops.address_pools.create(
                call.params["pool"], b["gateway"], b["dns"], b["provider"], b["mode"]
            )
        )

    def modify_pool(call: Call) -> Any:
        b = call.body
        return empty(
            ops.address_pools.modify(
                call.params["pool"], b["gateway"], b["dns"], b["provider"], b["mode"]
            )
        )

    def delete_pool(call: Call) -> Any:
        return empty(ops.address_pools.delete(call.params["pool"]))

    def list_ranges(call: Call) -> Any:
        p = call.params
        return [_range(r) for r in ops.address_pools.ranges(p["pool"], p["type"])]

    def get_range(call: Call) -> Any:
        p = call.params
        detail = ops.address_pools.get_range(p["pool"], p["type"], p["start"])
        data = {**_range(detail.range), "capacity": detail.range.capacity}
        if detail.allocations:
            data["allocated"] = _allocations(detail.allocations)
        return data

    def add_range(call: Call) -> Any:
        p, b = call.params, call.body
        return empty(
            ops.address_pools.add_range(p["pool"], p["type"], p["start"], b["end"], b["netmask"])
        )

    def remove_range(call: Call) -> Any:
        p = call.params
        return empty(ops.address_pools.remove_range(p["pool"], p["type"], p["start"]))

    ap = "address pools"
    ranges = "/address_pools/:pool/:type/ranges/"
    return [
        Route("GET", "/address_pools/", list_pools, "List address pools", ap,
              response=array(POOL_ITEM), cacheable=True),
        Route("GET", "/address_pools/:pool", get_pool,
              "Get an address pool with its ranges and allocations", ap, response=POOL),
        Route("POST", "/address_pools/:pool", create_pool, "Create an address pool", ap,
              body=POOL_BODY),
        Route("PUT", "/address_pools/:pool", modify_pool,
              "Replace gateway, DNS and provider of an address pool", ap, body=POOL_BODY),
        Route("DELETE", "/address_pools/:pool", delete_pool,
              "Delete an unused address pool with no allocations", ap),
        Route("GET", ranges, list_ranges, "List the ranges of an address pool", ap,
              response=array(RANGE_ITEM)),
        Route("GET", ranges + ":start", get_range, "Get one range with its allocations", ap,
              response=RANGE),
        Route("POST", ranges + ":start", add_range,
              "Add a range (inside its mask, gateway outside, no overlap)", ap, body=RANGE_BODY),
        Route("DELETE", ranges + ":start", remove_range, "Remove a range with no allocations", ap),
    ]  # fmt: skip
