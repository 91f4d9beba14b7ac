"""The route table: every family's routes and the documents about them, in one list.

To add a family, declare its routes in a module of its own (see :mod:`nanocore.api.route`)
and list its :class:`~nanocore.api.route.Family` here.
"""

from __future__ import annotations

from nanocore.api import (
    addresses,
    backups,
    batches,
    cells,
    guest_config,
    guest_security,
    guestlists,
    guests,
    images,
    media,
    meta,
    migrations,
    pools,
    security,
    snapshots,
    status,
    templates,
)
from nanocore.api.route import Family, Route
from nanocore.operations.core import Operations

FAMILIES: tuple[Family[Operations], ...] = (
    meta.about,
    pools.compute,
    pools.storage,
    cells.cells,
    status.status,
    addresses.addresses,
    templates.templates,
    security.groups,
    images.media,
    images.disks,
    guests.guests,
    guest_config.guest_config,
    media.media,
    snapshots.snapshots,
    guest_security.guest_security,
    guestlists.lists,
    batches.batches,
    migrations.migrations,
    backups.backups,
)


def all_routes() -> list[Route[Operations]]:
    """Every route, the OpenAPI document's own included; no operations needed to build it."""
    table: list[Route[Operations]] = [route for family in FAMILIES for route in family.routes]
    table.insert(1, meta.document_route(lambda: table))
    return table
