"""Placing a guest: the capacity claimed on its Cell, its name, its address.

**Capacity claims** (docs/architecture.md, "claims"). The scheduler's decision claims the
chosen Cell's share (cores, memory, disk) at once, so creations decided meanwhile see it. A
Cell's status report already counts a guest once the Cell holds it, so the claim must not
outlive the first report that does: it is held from the decision until the first status
report the Cell sends after it confirmed the guest (``GuestCreatedEvent``, or a created guest
in its inventory), or until the creation fails or times out, the Cell disconnects, or the
guest is deleted, whichever comes first. Between a report that already counts a guest still
being created and its confirmation both count: a short, safe double count (a creation may be
refused that would have fitted), never an overcommit. Cores are not in the report: the cores
bound counts Core's records, plus the claims of guests not yet recorded.

Names (``<group>.<name>`` per pool) and addresses are claimed from the decision to the commit
of the record that holds them; the store's unique keys are the backstop.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import frozen

from nanocore.addresses import ChosenAddress, choose_address
from nanocore.cluster.cells import CellDirectory, CellLiveness
from nanocore.model import ComputePool, Instance, InstanceStatus
from nanocore.operations.base import Context
from nanocore.operations.claims import Claim, ClaimKind
from nanocore.operations.errors import AlreadyExists, InvalidRequest
from nanocore.scheduler import CellCapacity, Demand, NoCellFits, Scheduler

#: How many refused Cells the message names before pointing at ``data.cells``.
LISTED_IN_MESSAGE = 10


@frozen
class Share:
    """What one guest takes of its Cell (the value of a capacity claim)."""

    cell: str
    cores: int
    memory: int
    disk: int


#: Capacity of one guest (key: instance id) on its Cell, from decision to the rule above.
CAPACITY: ClaimKind[Share] = ClaimKind("capacity of instance", group=lambda share: share.cell)
#: ``(pool, group, name)`` from the uniqueness check to the commit of the record.
GUEST_NAME: ClaimKind[None] = ClaimKind(
    "guest name",
    lambda held: AlreadyExists(
        f"instance '{held.key[1]}.{held.key[2]}' already exists in pool '{held.key[0]}'"  # type: ignore[index]
    ),
)
#: ``(address pool, address)`` (value: instance id) from the choice to the commit.
ADDRESS: ClaimKind[str] = ClaimKind("address")


class NoCellAvailable(InvalidRequest):
    """Nano's message, then the Cells it names; ``data`` lists every Cell of the pool."""

    def __init__(self, refusal: NoCellFits, pool: str) -> None:
        reasons = [str(rejection) for rejection in refusal.rejections]
        detail = "; ".join(reasons[:LISTED_IN_MESSAGE])
        if len(reasons) > LISTED_IN_MESSAGE:
            detail += f"; and {len(reasons) - LISTED_IN_MESSAGE} more cells (see data.cells)"
        if not reasons:
            detail = f"pool '{pool}' has no cells"
        super().__init__(f"{refusal.headline}; {detail}")
        self.data = {
            "cells": [
                {"name": r.cell, "filter": r.filter, "reason": r.reason}
                for r in refusal.rejections
            ]
        }


class Placement:
    """Capacity claims per Cell, what the scheduler is shown, and name and address claims."""

    def __init__(
        self,
        context: Context,
        cells: CellDirectory,
        scheduler: Scheduler,
        randbelow: Callable[[int], int],
    ) -> None:
        self._context = context
        self._cells = cells
        self._scheduler = scheduler
        self._randbelow = randbelow
        #: Claims of confirmed guests, by Cell, that end with that Cell's next status report.
        self._until_report: dict[str, list[Claim[Share]]] = {}

    # -- what the scheduler sees --------------------------------------------------------------

    def capacities(self, pool: str) -> list[CellCapacity]:
        """Every Cell of ``pool`` now: its latest report less the capacity claimed on it."""
        view = self._context.view
        claims = self._context.claims
        instances = view.instances
        result = []
        for record in view.cells.values():
            if record.pool != pool:
                continue
            name = record.name
            state = self._cells.state(name)
            report = self._cells.status(name)
            held = claims.live_in(CAPACITY, name)
            memory = disk = cores = unrecorded_memory = unrecorded_disk = 0
            for claim in held:
                share = claim.value
                memory += share.memory
                disk += share.disk
                if claim.key not in instances:
                    cores += share.cores
                    unrecorded_memory += share.memory
                    unrecorded_disk += share.disk
            load = view.load_on_cell(name)
            result.append(
                CellCapacity(
                    name=name,
                    alive=state in (CellLiveness.ALIVE, CellLiveness.CONNECTED),
                    enabled=record.enabled,
                    reported=state is CellLiveness.ALIVE and report is not None,
                    cores=report.cores if report else 0,
                    cpu_usage=report.usage if report else 0.0,
                    memory_free=(report.memory_available if report else 0) - memory,
                    disk_free=(report.disk_free if report else 0) - disk,
                    memory_total=report.memory_total if report else 0,
                    disk_total=report.disk_total if report else 0,
                    placed_cores=load.cores + cores,
                    placed_memory=load.memory + unrecorded_memory,
                    placed_disk=load.disk + unrecorded_disk,
                )
            )
        return result

    # -- claims -------------------------------------------------------------------------------

    def place(self, instance_id: str, pool: str, demand: Demand) -> Claim[Share]:
        """Choose a Cell of ``pool`` and claim the guest's share of it."""
        try:
            chosen = self._scheduler.choose(demand, self.capacities(pool))
        except NoCellFits as refusal:
            raise NoCellAvailable(refusal, pool) from None
        share = Share(chosen.name, demand.cores, demand.memory, demand.disk)
        return self._context.claims.take(CAPACITY, instance_id, share)

    def claim_name(self, pool: str, group: str, name: str) -> Claim[None]:
        if self._context.view.instance_named(pool, group, name) is not None:
            raise AlreadyExists(f"instance '{group}.{name}' already exists in pool '{pool}'")
        return self._context.claims.take(GUEST_NAME, (pool, group, name), None)

    def claim_address(
        self, pool: ComputePool, instance_id: str
    ) -> tuple[ChosenAddress, Claim[str]] | None:
        """An internal address for the guest when its pool has an address pool."""
        if not pool.network:
            return None
        view = self._context.view
        network = view.address_pools.get(pool.network)
        if network is None:
            raise InvalidRequest(f"invalid address pool '{pool.network}'")
        claims = self._context.claims
        allocated = view.allocations

        def taken(address: str) -> bool:
            key = (network.name, address)
            return key in allocated or claims.held(ADDRESS, key) is not None

        ranges = [r for r in view.address_ranges.values() if r.pool == network.name]
        chosen = choose_address(ranges, taken, network.gateway, self._randbelow)
        if chosen is None:
            raise InvalidRequest(f"no free address in address pool '{network.name}'")
        return chosen, claims.take(ADDRESS, (network.name, chosen.address), instance_id)

    def confirmed(self, instance_id: str) -> None:
        """The Cell holds the guest now: its claim ends with that Cell's next report."""
        claim = self._context.claims.held(CAPACITY, instance_id)
        if claim is not None:
            self.until_report(claim)

    def until_report(self, claim: Claim[Share]) -> None:
        """``claim``'s Cell holds what it claims now: it ends with that Cell's next report."""
        waiting = self._until_report.setdefault(claim.value.cell, [])
        if claim not in waiting:
            waiting.append(claim)

    def release(self, instance_id: str) -> None:
        """The creation failed or the guest is gone: its claim ends now."""
        claim = self._context.claims.held(CAPACITY, instance_id)
        if claim is not None:
            self._context.claims.release(claim)

    def reported(self, cell: str) -> None:
        """A status report of ``cell`` counts every guest it confirmed before it."""
        for claim in self._until_report.pop(cell, ()):
            self._context.claims.release(claim)

    def cell_gone(self, cell: str) -> None:
        """A Cell that disconnected frees every claim on it."""
        self._until_report.pop(cell, None)
        for claim in self._context.claims.live_in(CAPACITY, cell):
            self._context.claims.release(claim)

    def holds(self, instance_id: str) -> bool:
        return self._context.claims.held(CAPACITY, instance_id) is not None

    def rebuild(self) -> None:
        """After a start, claim again for every guest a Cell was still creating."""
        for instance in self._context.view.instances.values():
            if instance.status is InstanceStatus.CREATING and not self.holds(instance.id):
                self._context.claims.take(CAPACITY, instance.id, share_of(instance))


def share_of(instance: Instance) -> Share:
    return Share(instance.cell, instance.cores, instance.memory, instance.total_disk)
