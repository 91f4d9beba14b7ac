"""The route table: every resource family's routes, in one list."""

from __future__ import annotations

from typing import Any

from nanocore.api import addresses, cells, meta, pools, security, status, templates
from nanocore.api.route import Route


def all_routes(operations: Any) -> list[Route]:
    """Every route over ``operations`` (``None`` is enough to document them)."""
    table: list[Route] = []
    table.extend(meta.routes(lambda: table))
    for family in (pools, cells, status, addresses, templates, security):
        table.extend(family.routes(operations))
    return table
