"""Which guests a list or a search shows, in which order (§4.5, §4.7, §4.18, §6 points 5-7).

Three kinds of route list guests, all sorted by stored name (``<group>.<name>``), then by pool
(equal names in two pools are both shown: the original keyed results by name and merged them):

- the instance status lists show every guest of a pool, or of one Cell of it, creations
  included;
- the legacy search (``GET /guest_search/*``) shows the confirmed guests (not creations) of a
  pool or of a Cell that the caller may see, filtered by running and created;
- the paged search (``POST /search/guests/``) shows, a page at a time, the guests of a Cell, of
  a pool, or of the zone that the caller may see, matching a keyword if one is given.

**Visibility** (§6 point 5) is :func:`visible`, one rule for both searches: a guest is visible
to ``owner`` and ``group`` when it belongs to that owner, or to that group when one is given
(the portal names the user's group only when the group's guests are visible to its members).
Two deliberate changes (docs/compatibility.md, "the owner/group fix"): a search that names
neither an owner nor a group is refused (``must specify owner or group``) instead of answering
nothing (legacy) or refusing a group-only search (paged); and the paged search's ``total``
counts the visible guests it matched, never the guests of the scope the caller cannot see (the
original counted every guest of the pool or Cell when no keyword was given).
"""

from __future__ import annotations

from collections.abc import Iterable

from attrs import frozen

from nanocore.cluster.cells import CellDirectory
from nanocore.model import Instance, InstanceStatus
from nanocore.operations.base import Context, visible_to
from nanocore.operations.errors import InvalidRequest, UnknownEntity

#: ``limit`` of a paged search that gives none (or one of 0 or less).
DEFAULT_LIMIT = 20
#: Refusal of a search that names neither an owner nor a group.
NOBODY = "must specify owner or group"


@frozen
class Listed:
    """A guest as lists show it: its record and its Cell's address (``host``)."""

    instance: Instance
    host: str


@frozen
class LegacyQuery:
    """``GET /guest_search/*``'s query: ``running`` and ``created`` filter when not None."""

    pool: str
    cell: str = ""
    owner: str = ""
    group: str = ""
    running: bool | None = None
    created: bool | None = None


@frozen
class SearchQuery:
    """``POST /search/guests/``'s body."""

    owner: str = ""
    group: str = ""
    pool: str = ""
    cell: str = ""
    keyword: str = ""
    limit: int = 0
    offset: int = 0


@frozen
class Page:
    """One page of a paged search; ``limit`` and ``offset`` are the effective ones."""

    result: tuple[Listed, ...]
    total: int
    limit: int
    offset: int


def visible(instance: Instance, owner: str, group: str) -> bool:
    """Owned by ``owner``, or in ``group`` when a group is named."""
    return visible_to(owner, group, instance.owner, instance.group)


def sort_key(instance: Instance) -> tuple[str, str, str]:
    return (instance.full_name, instance.pool, instance.id)


class GuestListing:
    """The instance status lists and both guest searches, over the committed records."""

    def __init__(self, context: Context, cells: CellDirectory) -> None:
        self._context = context
        self._cells = cells

    def _listed(self, instances: Iterable[Instance]) -> list[Listed]:
        address = self._cells.address
        return [
            Listed(i, address(i.cell) or i.internal.monitor_address)
            for i in sorted(instances, key=sort_key)
        ]

    # -- instance status lists (§4.5) ---------------------------------------------------------

    def in_pool(self, pool: str) -> list[Listed]:
        """Every guest of ``pool``, creations included."""
        view = self._context.view
        if pool not in view.compute_pools:
            raise UnknownEntity(f"invalid pool '{pool}'")
        return self._listed(view.instances_in_pool(pool).values())

    def on_cell(self, pool: str, cell: str) -> list[Listed]:
        """Every guest Core places on ``cell``, a Cell of ``pool``, creations included."""
        view = self._context.view
        if pool not in view.compute_pools:
            raise UnknownEntity(f"invalid pool '{pool}'")
        record = view.cells.get(cell)
        if record is None or record.pool != pool:
            raise InvalidRequest(f"cell '{cell}' not in pool '{pool}'")
        return self._listed(view.instances_on_cell(cell).values())

    # -- searches -----------------------------------------------------------------------------

    def _scope(self, pool: str, cell: str) -> Iterable[Instance]:
        """A Cell's guests if ``cell`` is given (it replaces the pool), else the pool's."""
        view = self._context.view
        if cell:
            if cell not in view.cells:
                raise UnknownEntity(f"invalid cell '{cell}'")
            return view.instances_on_cell(cell).values()
        if pool not in view.compute_pools:
            raise UnknownEntity(f"invalid pool '{pool}'")
        return view.instances_in_pool(pool).values()

    def legacy(self, query: LegacyQuery) -> list[Listed]:
        """``GET /guest_search/*``: confirmed guests the caller may see, filtered."""
        if not query.pool:
            raise InvalidRequest("must specify target pool")
        if not (query.owner or query.group):
            raise InvalidRequest(NOBODY)
        found = [
            i
            for i in self._scope(query.pool, query.cell)
            if i.status is not InstanceStatus.CREATING
            and visible(i, query.owner, query.group)
            and (query.running is None or i.running == query.running)
            and (query.created is None or i.created == query.created)
        ]
        return self._listed(found)

    def search(self, query: SearchQuery) -> Page:
        """``POST /search/guests/``: visible guests of the scope matching the keyword, paged."""
        if " " in query.keyword:
            raise InvalidRequest("only allow one keyword")
        if not (query.owner or query.group):
            raise InvalidRequest(NOBODY)
        if query.offset < 0:
            raise InvalidRequest(f"invalid offset {query.offset}")
        limit = query.limit if query.limit > 0 else DEFAULT_LIMIT
        if query.cell or query.pool:
            scope = self._scope(query.pool, query.cell)
        else:
            scope = self._context.view.instances.values()
        address = self._cells.address
        matched: list[Listed] = []
        for instance in scope:
            if not visible(instance, query.owner, query.group):
                continue
            host = address(instance.cell) or instance.internal.monitor_address
            keyword = query.keyword
            if keyword and not (
                keyword in instance.full_name
                or keyword in instance.internal.instance_address
                or keyword in host
            ):
                continue
            matched.append(Listed(instance, host))
        total = len(matched)
        if total and query.offset >= total:
            raise InvalidRequest(f"unexpected offset {query.offset} / {total}")
        matched.sort(key=lambda listed: sort_key(listed.instance))
        page = tuple(matched[query.offset : query.offset + limit])
        return Page(page, total, limit, query.offset)
