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

import math
import time
from collections.abc import Callable, Hashable, Mapping

from attrs import Factory, define, frozen

from nanocore._fastscheduler import RecentDemands
from nanocore.addresses import ChosenAddress, choose_address
from nanocore.cluster.cells import STATUS_STALE_AFTER, CellDirectory, CellLiveness, CellStatus
from nanocore.durations import Durations
from nanocore.model import ComputeCell, ComputePool, Instance, InstanceStatus
from nanocore.operations.base import Context
from nanocore.operations.cells import CELL_LEAVING, CellLeaving
from nanocore.operations.claims import Claim, ClaimHeld, ClaimKind
from nanocore.operations.errors import AlreadyExists, InvalidRequest
from nanocore.scheduler import CellCapacity, Demand, NoCellFits, Scheduler
from nanocore.store.indexes import NO_LOAD, CellLoad

#: How many refused Cells the message names before pointing at ``data.cells``.
LISTED_IN_MESSAGE = 10


@frozen
class Share:
    """What one guest takes of its Cell (the value of a capacity claim)."""

    cell: str
    cores: int
    memory: int
    disk: int


#: The first part of :func:`move_key`'s keys.
_MOVE = "migration"


def _capacity_busy(held: Claim[Share]) -> ClaimHeld:
    """The refusal of a second capacity claim, naming the guest (its key is a tuple but for
    a creation: the API printed ``'('migration', '<id>')'``, QA pass 16)."""
    key = held.key
    if isinstance(key, tuple) and len(key) == 2 and key[0] == _MOVE:
        return ClaimHeld(
            held,
            f"instance '{key[1]}' has just moved to cell '{held.value.cell}': its place there "
            "is counted until that Cell's next report, retry",
        )
    if isinstance(key, tuple) and len(key) == 3:
        return ClaimHeld(held, f"{key[2]} of instance '{key[1]}' is still being added, retry")
    return ClaimHeld(held)


#: Capacity of one guest on its Cell, from decision to the rule above. Key: the instance id
#: for a creation, :func:`move_key` for a guest moving there, ``("growth", id, aspect)`` for
#: what a change adds to a guest already there.
CAPACITY: ClaimKind[Share] = ClaimKind(
    "capacity of instance", _capacity_busy, group=lambda share: share.cell
)


def move_key(guest: str) -> tuple[str, str]:
    """The key of a guest's capacity claim on the Cell it moves to (migration, failover)."""
    return (_MOVE, guest)


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


@define
class _PoolView:
    """What the scheduler was shown of one pool at its last decision, and what changed since:
    Cells named by placement's own events (``dirty``), load changes after ``load_mark``; a
    change to any Cell record, or a report going stale, shows the pool anew."""

    cells: dict[str, CellCapacity]
    choices: RecentDemands
    load_mark: int
    cells_revision: int
    #: No Cell's report goes stale before this moment.
    stale_check_at: float
    #: When it was shown (a clock that went back shows it anew).
    shown_at: float
    dirty: set[str] = Factory(set)


@define
class _Cell:
    """What placement keeps of one Cell between decisions (changed by events, not polled)."""

    linked: bool = False
    report: CellStatus | None = None
    reported_at: float = -math.inf
    #: Claimed on the Cell: all claims, and those whose record is not committed yet.
    memory: int = 0
    disk: int = 0
    unrecorded_cores: int = 0
    unrecorded_memory: int = 0
    unrecorded_disk: int = 0
    #: Moves with every change above; ``capacity`` was built from ``built_*``.
    version: int = 0
    capacity: CellCapacity | None = None
    built_version: int = -1
    built_load: CellLoad | None = None
    built_record: ComputeCell | None = None
    built_fresh: bool = False


class Placement:
    """Capacity claims per Cell, what the scheduler is shown, and name and address claims.

    What the scheduler is shown of a Cell is kept between decisions and rebuilt only when
    something it depends on changed: the Cell's link or report (its events), the capacity
    claimed on it, its record, or what Core's records place on it. The scheduler's verdict on
    each Cell is kept the same way (:mod:`nanocore._fastscheduler`): a decision over a pool
    then costs a few comparisons per Cell, and filters and scores only the Cells that changed.
    """

    def __init__(
        self,
        context: Context,
        cells: CellDirectory,
        scheduler: Scheduler,
        randbelow: Callable[[int], int],
        *,
        decision_times: Durations | None = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``decision_times`` records how long each :meth:`place` took by ``timer``."""
        self._context = context
        self._scheduler = scheduler
        self._decision_times = decision_times if decision_times is not None else Durations()
        self._timer = timer
        #: What each pool's last decision was shown, kept up to date by what changes.
        self._pools: dict[str, _PoolView] = {}
        self._randbelow = randbelow
        self._cells: dict[str, _Cell] = {}
        #: Instances whose claim is counted in their committed record's load as well.
        self._recorded: set[Hashable] = set()
        #: Claims of confirmed guests, by Cell, that end with that Cell's next status report.
        self._until_report: dict[str, list[Claim[Share]]] = {}
        for name in cells.names():  # Cells linked before these operations were built
            state = cells.state(name)
            if state in (CellLiveness.ALIVE, CellLiveness.CONNECTED):
                cell = self._cell(name)
                cell.linked, cell.report = True, cells.status(name)
                if state is CellLiveness.ALIVE:
                    cell.reported_at = context.clock.seconds()

    def _cell(self, name: str) -> _Cell:
        cell = self._cells.get(name)
        if cell is None:
            cell = self._cells[name] = _Cell()
        return cell

    # -- what the scheduler sees --------------------------------------------------------------

    def capacities(self, pool: str) -> list[CellCapacity]:
        """Every Cell of ``pool`` now: its latest report less the capacity claimed on it."""
        view = self._context.view
        loads = view.cell_loads
        now = self._context.clock.seconds()
        return [
            self._capacity_of(record, now, loads)
            for record in view.cells.values()
            if record.pool == pool
        ]

    def _capacity_of(
        self, record: ComputeCell, now: float, loads: Mapping[str, CellLoad]
    ) -> CellCapacity:
        """The Cell's capacity now: the object shown last time while nothing it depends on
        changed (the kept verdicts rely on that)."""
        name = record.name
        cell = self._cells.get(name)
        if cell is None:
            cell = self._cell(name)
        fresh = cell.report is not None and now - cell.reported_at < STATUS_STALE_AFTER
        load = loads.get(name, NO_LOAD)
        capacity = cell.capacity
        if (
            capacity is None
            or cell.built_version != cell.version
            or cell.built_load is not load
            or cell.built_record is not record
            or cell.built_fresh is not fresh
        ):
            capacity = cell.capacity = _capacity(name, record.enabled, fresh, cell, load)
            cell.built_version, cell.built_load = cell.version, load
            cell.built_record, cell.built_fresh = record, fresh
        return capacity

    def _choose(self, pool: str, demand: Demand) -> CellCapacity:
        """The scheduler's choice over :meth:`capacities`, judging only the Cells that changed
        since the pool's last decision (``tests/test_guests_properties.py`` holds the two to
        each other over random cluster histories)."""
        view = self._context.view
        now = self._context.clock.seconds()
        loads = view.cell_loads
        shown = self._pools.get(pool)
        revision = view.revision_of(ComputeCell)
        if (
            shown is not None
            and revision == shown.cells_revision
            and shown.shown_at <= now < shown.stale_check_at
        ):
            mark, loads_changed = view.loads_changed_since(shown.load_mark)
            if loads_changed is not None:
                changed = shown.dirty
                # From the few that changed (``set.intersection`` would walk the whole pool).
                changed.update(name for name in loads_changed if name in shown.cells)
                shown.dirty, shown.load_mark, shown.shown_at = set(), mark, now
                for name in changed:
                    capacity = self._capacity_of(view.cells[name], now, loads)
                    shown.cells[name] = capacity
                    shown.stale_check_at = min(shown.stale_check_at, self._stale_at(name, now))
                shown.choices.changed(changed)
                return shown.choices.choose(demand, shown.cells)
        cells = {c.name: c for c in self.capacities(pool)}
        for gone in self._pools.keys() - view.compute_pools.keys():
            del self._pools[gone]  # a deleted pool's view goes with the next full showing
        choices = shown.choices if shown is not None else RecentDemands(self._scheduler)
        choices.changed(None)
        self._pools[pool] = _PoolView(
            cells,
            choices,
            view.load_changes,
            revision,
            min((self._stale_at(name, now) for name in cells), default=math.inf),
            now,
        )
        return choices.choose(demand, cells)

    def _stale_at(self, name: str, now: float) -> float:
        """When the Cell's latest report goes stale; never if it has none or went stale
        already (only a new report, an event, changes it then)."""
        cell = self._cells[name]
        stale_at = cell.reported_at + STATUS_STALE_AFTER
        return stale_at if cell.report is not None and stale_at > now else math.inf

    def _changed(self, name: str, cell: _Cell) -> None:
        """Something the Cell's capacity depends on changed: show it anew."""
        cell.version += 1
        record = self._context.view.cells.get(name)
        shown = self._pools.get(record.pool) if record is not None else None
        if shown is not None:
            shown.dirty.add(name)

    # -- what Cells tell ----------------------------------------------------------------------

    def linked(self, name: str) -> None:
        cell = self._cell(name)
        cell.linked = True
        self._changed(name, cell)

    def reported(self, name: str, report: CellStatus) -> None:
        """A status report counts every guest its Cell confirmed before it: their claims end."""
        cell = self._cell(name)
        cell.report, cell.reported_at = report, self._context.clock.seconds()
        self._changed(name, cell)
        for claim in self._until_report.pop(name, ()):
            self._release(claim)

    def cell_gone(self, name: str) -> None:
        """A Cell that disconnected frees every claim on it."""
        cell = self._cell(name)
        cell.linked = False
        self._changed(name, cell)
        self._until_report.pop(name, None)
        for claim in self._context.claims.live_in(CAPACITY, name):
            self._release(claim)

    # -- claims -------------------------------------------------------------------------------

    def place(self, key: Hashable, pool: str, demand: Demand) -> Claim[Share]:
        """Choose a Cell of ``pool`` and claim the guest's share of it, counted in full: a new
        guest has no record there yet, and one that fails over is still recorded on its old
        Cell. Its time, a refusal's included, goes to the decision times."""
        began = self._timer()
        try:
            chosen = self._choose(pool, demand)
        except NoCellFits as refusal:
            raise NoCellAvailable(refusal, pool) from None
        else:
            if self._context.claims.held(CELL_LEAVING, chosen.name) is not None:
                # Its removal commits now: a record placed there could not be committed.
                raise CellLeaving(chosen.name, pool)
            share = Share(chosen.name, demand.cores, demand.memory, demand.disk)
            return self._take(key, share, recorded=False)
        finally:
            self._decision_times.add(self._timer() - began)

    def claim_growth(self, key: Hashable, share: Share) -> Claim[Share]:
        """Claim what a change adds to a guest in place, counted on its Cell like a creation's
        share (released by :meth:`until_report` or :meth:`abandon`)."""
        return self._take(key, share, recorded=False)

    def claim_move(self, key: Hashable, share: Share) -> Claim[Share]:
        """Claim what a guest moving to ``share.cell`` takes there, until its record follows
        (:meth:`recorded`, then :meth:`until_report`) or the move fails (:meth:`abandon`)."""
        return self._take(key, share, recorded=False)

    def abandon(self, claim: Claim[Share]) -> None:
        """A claim whose change did not happen: it ends now."""
        self._release(claim)

    def _take(self, instance_id: Hashable, share: Share, recorded: bool) -> Claim[Share]:
        claim = self._context.claims.take(CAPACITY, instance_id, share)
        self._count(share, 1, recorded)
        if recorded:
            self._recorded.add(instance_id)
        return claim

    def _release(self, claim: Claim[Share]) -> None:
        if self._context.claims.held(CAPACITY, claim.key) is not claim:
            return  # already released
        self._context.claims.release(claim)
        recorded = claim.key in self._recorded
        self._recorded.discard(claim.key)
        self._count(claim.value, -1, recorded)

    def _count(self, share: Share, sign: int, recorded: bool) -> None:
        cell = self._cell(share.cell)
        cell.memory += sign * share.memory
        cell.disk += sign * share.disk
        if not recorded:
            cell.unrecorded_cores += sign * share.cores
            cell.unrecorded_memory += sign * share.memory
            cell.unrecorded_disk += sign * share.disk
        self._changed(share.cell, cell)

    def recorded(self, instance_id: Hashable) -> None:
        """The guest's record is committed (or moved to the claim's Cell): its load counts
        it, its claim's cores no more."""
        claim = self._context.claims.held(CAPACITY, instance_id)
        if claim is not None and instance_id not in self._recorded:
            self._count(claim.value, -1, False)
            self._count(claim.value, 1, True)
            self._recorded.add(instance_id)

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
            self._release(claim)

    def bound_for(self, cell: str) -> set[str]:
        """The guests being created on ``cell`` or moving to it, as claimed (their records
        may not say so yet); a change of a guest already there is not one more guest."""
        guests = set()
        for claim in self._context.claims.live_in(CAPACITY, cell):
            key = claim.key
            if isinstance(key, str):
                guests.add(key)
            elif isinstance(key, tuple) and key[0] == _MOVE:
                guests.add(key[1])
        return guests

    def holds(self, instance_id: str) -> bool:
        return self._context.claims.held(CAPACITY, instance_id) is not None

    def rebuild(self) -> None:
        """After a start, claim again for every guest a Cell was still creating."""
        for instance in self._context.view.instances.values():
            if instance.status is InstanceStatus.CREATING and not self.holds(instance.id):
                self._take(instance.id, share_of(instance), recorded=True)


def _capacity(name: str, enabled: bool, fresh: bool, cell: _Cell, load: CellLoad) -> CellCapacity:
    report = cell.report
    if report is None:
        return CellCapacity(name=name, alive=cell.linked, enabled=enabled, reported=False)
    return CellCapacity(
        name=name,
        alive=cell.linked,
        enabled=enabled,
        reported=fresh,
        cores=report.cores,
        cpu_usage=report.usage,
        memory_free=report.memory_available - cell.memory,
        disk_free=report.disk_free - cell.disk,
        memory_total=report.memory_total,
        disk_total=report.disk_total,
        placed_cores=load.cores + cell.unrecorded_cores,
        placed_memory=load.memory + cell.unrecorded_memory,
        placed_disk=load.disk + cell.unrecorded_disk,
    )


def share_of(instance: Instance) -> Share:
    return Share(instance.cell, instance.cores, instance.memory, instance.total_disk)
