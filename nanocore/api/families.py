"""The route table: every resource family's routes, in one list."""

from __future__ import annotations

from typing import Any

from nanocore.api import cells, meta, status
from nanocore.api.route import Route


def all_routes(operations: Any) -> list[Route]:
    """Every route over ``operations`` (``None`` is enough to document them)."""
    table: list[Route] = []
    table.extend(meta.routes(lambda: table))
    table.extend(cells.routes(lambda: operations.cells))
    table.extend(status.routes(lambda: operations.status))
    return table
