"""Growing a guest in place: more cores, memory or disk on the Cell it already has.

A change that grows a guest is checked the way a new guest is placed: against its Cell's latest
report less every capacity claim on it, by the scheduler's own filters for what grows (cores
within the over-commit bound, free memory, free disk). What fits is claimed at once, as a
:data:`~nanocore.operations.guests.CAPACITY` claim of the growth alone, so that creations and
other growths decided while the Cell is asked see it. The claim follows the placement rule: it
ends with the Cell's first status report after the Cell applied the change (that report counts
it), or at once if the Cell refuses or does not answer. A change that does not fit is refused
with the reason and nothing is asked or changed.
"""

from __future__ import annotations

from attrs import frozen

from nanocore.model import Instance
from nanocore.operations.base import Context
from nanocore.operations.claims import Claim
from nanocore.operations.errors import InvalidRequest
from nanocore.operations.guests import Share
from nanocore.operations.guests.common import not_connected
from nanocore.operations.guests.placement import Placement
from nanocore.scheduler import Cores, Demand, Disk, Filter, Memory, Rejection, format_size


@frozen
class Increase:
    """What a change adds to a guest (0: that dimension does not grow)."""

    cores: int = 0
    memory: int = 0
    disk: int = 0

    def __bool__(self) -> bool:
        return self.cores > 0 or self.memory > 0 or self.disk > 0

    def words(self) -> str:
        parts = []
        if self.cores > 0:
            parts.append(f"{self.cores} more cores")
        if self.memory > 0:
            parts.append(f"{format_size(self.memory)} more memory")
        if self.disk > 0:
            parts.append(f"{format_size(self.disk)} more disk")
        return ", ".join(parts)


class NoRoomToGrow(InvalidRequest):
    """The guest's Cell cannot take the growth; ``data`` names the Cell, filter and reason."""

    def __init__(self, instance: Instance, increase: Increase, rejection: Rejection) -> None:
        super().__init__(
            f"cell '{instance.cell}' has no room for {increase.words()} of guest "
            f"'{instance.full_name}': {rejection.reason}"
        )
        self.data = {
            "cells": [
                {"name": rejection.cell, "filter": rejection.filter, "reason": rejection.reason}
            ]
        }


class Growth:
    """Checks and claims what a change adds to a guest on its Cell."""

    def __init__(self, context: Context, placement: Placement) -> None:
        self._context = context
        self._placement = placement

    def claim(self, instance: Instance, aspect: str, increase: Increase) -> Claim[Share] | None:
        """Claim ``increase`` on the guest's Cell, or raise why it does not fit (None: no growth).

        ``aspect`` names the change (one growth per guest and aspect is ever in flight).
        """
        if not increase:
            return None
        cell = instance.cell
        capacity = next(
            (c for c in self._placement.capacities(instance.pool) if c.name == cell), None
        )
        if capacity is None or not capacity.alive:
            raise not_connected(cell)
        if not capacity.reported:
            raise NoRoomToGrow(
                instance, increase, Rejection(cell, "available", "no recent report")
            )
        demand = Demand(increase.cores, increase.memory, increase.disk)
        checks: list[Filter] = []
        if increase.cores > 0:
            checks.append(Cores())
        if increase.memory > 0:
            checks.append(Memory())
        if increase.disk > 0:
            checks.append(Disk())
        for check in checks:
            _, rejected = check.split(demand, [capacity])
            if rejected:
                raise NoRoomToGrow(instance, increase, rejected[0])
        share = Share(cell, increase.cores, increase.memory, increase.disk)
        return self._placement.claim_growth(("growth", instance.id, aspect), share)

    def applied(self, claim: Claim[Share] | None) -> None:
        """The Cell made the change: the claim ends with the Cell's next report."""
        if claim is not None:
            self._placement.until_report(claim)

    def abandoned(self, claim: Claim[Share] | None) -> None:
        """The Cell refused or did not answer: the claim ends now."""
        if claim is not None:
            self._placement.abandon(claim)
