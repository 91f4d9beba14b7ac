"""Guest lists and searches: instance status lists, the legacy and the paged search
(§3.5, §3.7 #45, §3.18 #108, §4.5, §4.7, §4.18, §6 points 5-7).

Every item is a GuestConfig with ``host`` (its Cell's address), which only lists show; which
guests and in which order is :mod:`nanocore.operations.guests.listing`'s.
"""

from __future__ import annotations

from typing import Any

from nanocore.api.decode import Body, Field, Kind
from nanocore.api.guests import GUEST_CONFIG, guest_config
from nanocore.api.route import Call, Family
from nanocore.api.schema import INT, array, obj
from nanocore.api.strconv import atoi, parse_bool
from nanocore.operations.core import Operations
from nanocore.operations.guests import LegacyQuery, Listed, SearchQuery

#: ``status`` of the legacy search: 1 is running, any other number stopped.
RUNNING = 1

SEARCH_GUESTS = Body(
    (
        Field("limit", Kind.INT, description="page size; 0 or less: 20"),
        Field("offset", Kind.INT, description="guests to skip, in name order"),
        Field("pool", description="scope: the pool's guests (creations included)"),
        Field("cell", description="scope: the Cell's guests; replaces pool"),
        Field("keyword", description="one word found in the name, guest IP or Cell IP"),
        Field("owner", description="the owner or the group is required"),
        Field("group", description="its guests are visible too"),
    ),
    name="userRequest",
    error_prefix="invalid request payload: ",
)
SEARCH_PAGE = obj(result=array(GUEST_CONFIG), total=INT, limit=INT, offset=INT)


def _items(listed: list[Listed] | tuple[Listed, ...]) -> list[dict[str, Any]]:
    return [guest_config(item.instance, host=item.host) for item in listed]


lists: Family[Operations] = Family("guest lists")


@lists.route(
    "GET",
    "/instance_status/:pool",
    "Every guest of a pool, creations included, by name",
    response=array(GUEST_CONFIG),
)
def pool_instances(ops: Operations, call: Call) -> object:
    return _items(ops.guests.listing.in_pool(call.params["pool"]))


@lists.route(
    "GET",
    "/instance_status/:pool/:cell",
    "Every guest of a Cell of the pool, creations included, by name",
    response=array(GUEST_CONFIG),
)
def cell_instances(ops: Operations, call: Call) -> object:
    return _items(ops.guests.listing.on_cell(call.params["pool"], call.params["cell"]))


@lists.route(
    "GET",
    "/guest_search/*filepath",
    "Confirmed guests of a pool (or Cell) an owner or group may see, filtered",
    response=array(GUEST_CONFIG),
    query=("pool", "cell", "owner", "group", "status", "created"),
)
def legacy_search(ops: Operations, call: Call) -> object:
    q = call.query
    status, created = q.get("status", ""), q.get("created", "")
    query = LegacyQuery(
        pool=q.get("pool", ""),
        cell=q.get("cell", ""),
        owner=q.get("owner", ""),
        group=q.get("group", ""),
        running=(atoi(status) == RUNNING) if status else None,
        created=parse_bool(created) if created else None,
    )
    return _items(ops.guests.listing.legacy(query))


@lists.route(
    "POST",
    "/search/guests/",
    "Guests an owner or group may see, of a Cell, a pool or the zone, a page at a time",
    body=SEARCH_GUESTS,
    response=SEARCH_PAGE,
)
def search_guests(ops: Operations, call: Call) -> object:
    body = call.body
    page = ops.guests.listing.search(
        SearchQuery(
            owner=body.text("owner"),
            group=body.text("group"),
            pool=body.text("pool"),
            cell=body.text("cell"),
            keyword=body.text("keyword"),
            limit=body.integer("limit"),
            offset=body.integer("offset"),
        )
    )
    return {
        "result": _items(page.result),
        "total": page.total,
        "limit": page.limit,
        "offset": page.offset,
    }
