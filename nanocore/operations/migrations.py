"""Migrations: stopped guests moved between the Cells of a pool on shared (NFS) storage, by hand
(``POST /migrations/``) or by failover when a Cell of a failover pool is lost (§4.12, §5.7).

**By hand.** The request is checked in Nano's order and words, then by what Nano forgot (the
guest on another Cell than the source, listed twice, not created, lost). The target must have
room for the guests' cores and memory (their disks stay where they are, on the shared storage):
that room is claimed through the placement at once, as a capacity claim per guest, so creations
decided meanwhile see it; each guest is claimed (:data:`MIGRATING`) so no second migration takes
it. The record and the guests' ``migrating`` flags are committed before the id is answered;
then the two-phase move of cell-protocol §5.7 runs: attach (prepare) on the target, detach on
the source, migrate (activate) on the target, and the target's ``InstanceMigratedEvent`` moves
the guests' records to the target (cell, monitor port and address) in one commit with the
record's end. Their claims then count in the records' load and end with the target's next
status report; the source's load drops with the same commit.

**When it fails.** Each step waits one domain timeout. The record says why (Nano's words:
``attach instance fail: <the Cell's error>``, ``attach instance timeout``, ``detach instance
...``, ``migrate instance timeout``), the guests stay on the source with ``migrating`` cleared,
the claims end, and nothing stays half-attached: a target that was asked to attach is told to
detach what it prepared. Once the source has let go of the guests (the last step failed) they
are shown lost until the source takes them back: it is asked to attach them again at once.
When the source's detach goes unanswered it may still let go of them late: they are shown
lost, the source's inventory is taken at once (``refresh``), and those it no longer holds are
asked back the same way.

**Failover.** When a Cell of a pool with failover on shared storage disconnects without a
goodbye, each of its guests is placed on another Cell of the pool by the scheduler (cores and
memory, claimed as a creation's share) and the plan is one record per target Cell (kind
``failover``), each with the guests sent there; the target is asked to attach them at once
(``AttachInstanceRequest`` with Immediate) and its ``InstanceMigratedEvent`` moves them. The
guests that no Cell can take stay lost on the lost Cell and are one more record, with no target
and the scheduler's reason for each guest in its error (and a log line each). A target that
refuses or does not answer within the domain timeout fails its record: its guests are shown
lost (never migrating forever) and its claims end. Each attach carries a token (Nano's
carried none), which a Cell's refusal names, so a refusal fails the record it answers; a stock
Cell attaches a batch whole or not at all, so a batch refused by a linked target is planned
again one guest per record (one guest whose volumes are gone fails only itself). The lost Cell
is disabled; when it comes back, its copies of guests now on other Cells are detached from it
(reconciliation), and the guests no Cell could take are its own again; if it comes back while
its failover is in flight (its rejoin leaves those guests alone), it is reconciled again once
the failover ended. A
target lost itself during the failover (Cells failing together) leaves its guests to be planned
again among the others (at once, :data:`FAILOVER_REPLANS` times). Guests no Cell could take
(stranded) wait, lost, and are planned again whenever a Cell of the pool reports (at most every
:data:`STRANDED_RETRY` seconds, quietly: what still finds no Cell was said and recorded the
first time) until a Cell has room, their own Cell reports them, or they are deleted: the
pool's other Cells may be dialing again (after a stall of Core longer than their own timeout),
full, or disabled. Their own Cell, back without them (its host lost them), is one more place
for them once enabled; an inventory of a Cell of a failover pool that lacks lost guests strands
them the same way (also after a restart of Core). A Cell that died while Core was down is
presumed lost by the registry after a start (``RejoinWatch``) and takes the same path.

**Records** are stored. They are kept :data:`RETENTION` seconds after they end (the original
deleted them the first time a client read them), judged by the clock when they are read. A
migration under way when Core stopped is failed at the next start (:data:`RESTARTED`) and its
guests' flags cleared; those that had left their source are shown lost until a Cell reports
them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from typing import Any

from attrs import define, evolve, frozen
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nanocore.cluster.cells import (
    CellDirectory,
    CellLiveness,
    CellObserver,
    CellStatus,
    CoreStopping,
)
from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.cluster.transactions import CellError, TransactionTimeout
from nanocore.cluster.transport import LinkError
from nanocore.model import (
    ComputePool,
    Instance,
    InstanceStatus,
    Migration,
    MigrationKind,
    StaleCopy,
    StorageType,
    clipped,
)
from nanocore.operations.base import Context, Sweep, named
from nanocore.operations.cells import CELL_LEAVING, CellLeaving
from nanocore.operations.claims import Claim, ClaimHeld, ClaimKind
from nanocore.operations.errors import (
    InvalidRequest,
    OperationError,
    OperationTimeout,
    UnknownEntity,
)
from nanocore.operations.guests.common import GuestAccess
from nanocore.operations.guests.placement import NoCellAvailable, Placement, Share, move_key
from nanocore.scheduler import Cores, Demand, Memory, Rejection
from nanocore.store import Change, Delete, Insert, Put, StoreClosed

#: Seconds a migration record is kept after it finished or failed (then it is gone).
RETENTION = 600.0
#: The wait for a Cell when Core runs without a configured timeout (the domain default).
DEFAULT_TIMEOUT = 10.0
#: The error of a migration that was under way when Core stopped.
RESTARTED = "nanocore stopped during the migration"
#: The progress a manual migration shows after each step (Nano's stayed at 0).
ATTACHED, DETACHED, DONE = 30, 60, 100
#: How many times the guests of one lost Cell are planned again at once after a target was
#: lost too (Cells failing together), until that Cell links again; then they wait as stranded.
FAILOVER_REPLANS = 3
#: Guests no Cell could take (stranded) are planned again when a Cell of their pool reports,
#: at most once in this many seconds per lost Cell, for as long as they are lost.
STRANDED_RETRY = 5.0


def _in_migration(held: Claim[str]) -> OperationError:
    return InvalidRequest(f"instance '{held.key}'('{held.value}') already in migrating")


#: A guest in a migration (value: its stored name), from the check to the record's end.
MIGRATING: ClaimKind[str] = ClaimKind("migration of instance", _in_migration)


@frozen
class MigrationSpec:
    """``POST /migrations/``: the pool and Cells, and the guests (none: all of the source's)."""

    source_pool: str
    source_cell: str
    target_cell: str
    target_pool: str = ""
    instances: tuple[str, ...] = ()


class NoRoomOnTarget(InvalidRequest):
    """The target cannot take the guests; ``data`` names the Cell, filter and reason."""

    def __init__(self, cell: str, count: int, rejection: Rejection) -> None:
        super().__init__(
            f"cell '{cell}' has no room for the {count} instance(s) to migrate: {rejection.reason}"
        )
        self.data = {
            "cells": [
                {"name": rejection.cell, "filter": rejection.filter, "reason": rejection.reason}
            ]
        }


class _Failed(Exception):
    """A step of a migration failed; ``reason`` is what its record says."""

    def __init__(self, reason: str, *, released: bool = False, uncertain: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        #: The source let go of the guests already.
        self.released = released
        #: The source may have let go of them (its detach went unanswered): only it can tell.
        self.uncertain = uncertain


@define
class _Transit:
    """A migration under way: its record, what it holds, and the wait for the target."""

    record: Migration
    guests: list[Claim[str]]
    capacity: list[Claim[Share]]
    arrived: Deferred[Message] | None = None
    #: A failover's attach, until the target's event names the guests or it fails.
    attaching: Deferred[Message] | None = None


def _detach(instances: Sequence[str]) -> Message:
    return Message(
        id=MessageID.DetachInstanceRequest, string_array_params={ParamKey.Instance: instances}
    )


def _attach_at_once(source: str, instances: Sequence[str]) -> Message:
    """The failover attach: take the guests and start serving them (no Migrate follows)."""
    return Message(
        id=MessageID.AttachInstanceRequest,
        bool_params={ParamKey.Immediate: True},
        string_params={ParamKey.Cell: source},
        string_array_params={ParamKey.Instance: instances},
    )


def _refused_attach(message: Message) -> bool:
    """What ends the wait for an attach at once: only its refusal (a stock Cell answers a
    success with the guests' ``InstanceMigratedEvent``, which names no token)."""
    return message.id == MessageID.AttachInstanceResponse and not message.success


@implementer(CellObserver)
class Migrations:
    """The migration routes, failover, and the registry's observer for their events."""

    log = Logger()

    def __init__(
        self,
        access: GuestAccess,
        placement: Placement,
        timeout: float | None = None,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        refresh: Callable[[str], Deferred[None]] = lambda cell: succeed(None),
    ) -> None:
        """``refresh(cell)`` takes a linked Cell's inventory now and reconciles Core's records
        with it (``CellOperations.refresh``)."""
        self._access = access
        self._context: Context = access.context
        self._cells: CellDirectory = access.cells
        self._placement = placement
        self._timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        self._new_id = new_id
        self._running: dict[str, _Transit] = {}
        self._expired_records = Sweep(self._context, "migrations")
        #: Guests a source was asked to take back after a failed move: guest -> the source
        #: and its attach (until the source's event names them, or it refuses).
        self._returning: dict[str, tuple[str, Deferred[Message]]] = {}
        self._ending: dict[str, list[Deferred[Migration]]] = {}
        self._planning: dict[str, list[Deferred[list[str]]]] = {}
        self._refresh = refresh
        #: Failover records under way, by the lost Cell they take guests from.
        self._failing_over: dict[str, set[str]] = {}
        #: Plans made again for a lost Cell's guests since it was lost (``FAILOVER_REPLANS``).
        self._replans: dict[str, int] = {}
        #: Guests of a lost Cell its failover could not re-place (no Cell could take them
        #: then): planned again when a Cell of its pool reports (at most every
        #: ``STRANDED_RETRY`` seconds), until placed, deleted, or reported by their Cell.
        self._stranded: dict[str, set[str]] = {}
        #: When the stranded guests of each lost Cell may next be planned again.
        self._stranded_retry: dict[str, float] = {}
        #: Guests a linked target refused (or left unanswered) in a failover: not stranded
        #: again while they stay lost.
        self._refused: set[str] = set()
        self._reconciling: dict[str, list[Deferred[None]]] = {}
        #: Fires once the records of migrations cut short by a stop are failed.
        self.recovered: Deferred[None] = self._recover()
        self._strand_recorded()

    # -- reading ------------------------------------------------------------------------------

    def get(self, migration_id: str) -> Migration:
        """The record, kept until :data:`RETENTION` seconds after it ended."""
        self._sweep()
        found = self._context.view.migrations.get(migration_id)
        if found is None or self._expired(found):
            raise UnknownEntity(f"invalid migration '{migration_id}'")
        return found

    def kept(self) -> list[Migration]:
        """Every record still kept, oldest first."""
        self._sweep()
        kept = [m for m in self._context.view.migrations.values() if not self._expired(m)]
        return sorted(kept, key=lambda m: (m.start_time, m.id))

    def ended(self, migration_id: str) -> Deferred[Migration]:
        """Fires with the record once the migration has ended and that is committed."""
        record = self._context.view.migrations.get(migration_id)
        if migration_id not in self._running:
            if record is None:
                return fail(UnknownEntity(f"invalid migration '{migration_id}'"))
            if not record.running:
                return succeed(record)
        waiting: Deferred[Migration] = Deferred()
        self._ending.setdefault(migration_id, []).append(waiting)
        return waiting

    def planned(self, cell: str) -> Deferred[list[str]]:
        """Fires with the ids of the records of the next failover of ``cell`` once its plan is
        committed and its attach requests are sent (none: nothing to re-place)."""
        waiting: Deferred[list[str]] = Deferred()
        self._planning.setdefault(cell, []).append(waiting)
        return waiting

    def reconciled(self, cell: str) -> Deferred[None]:
        """Fires once the next reconciliation of ``cell`` these migrations ask for is done
        (after a detach that went unanswered, after the failover of a Cell that came back)."""
        waiting: Deferred[None] = Deferred()
        self._reconciling.setdefault(cell, []).append(waiting)
        return waiting

    def _told(self, record: Migration) -> None:
        if record.kind is MigrationKind.FAILOVER:
            self._failover_ended(record)
        for waiting in self._ending.pop(record.id, []):
            waiting.callback(record)

    def _expired(self, record: Migration) -> bool:
        now = self._context.clock.seconds()
        return not record.running and now - record.end_time >= RETENTION

    def _sweep(self) -> None:
        self._expired_records.delete(
            Delete(Migration, m.id)
            for m in self._context.view.migrations.values()
            if self._expired(m) and m.id not in self._running
        )

    # -- a migration by hand ------------------------------------------------------------------

    def create(self, spec: MigrationSpec) -> Deferred[str]:
        """Check, claim and record the migration; its id once recorded. The move goes on."""
        try:
            pool, instances = self._checked(spec)
            transit = self._claimed(spec, pool, instances)
        except OperationError as error:
            return fail(error)
        ids = transit.record.instances
        begun = self._in_turn(ids, lambda: self._begin(transit))

        def started(_: None) -> str:
            self._running[transit.record.id] = transit
            moving = Deferred.fromCoroutine(self._move(transit))
            moving.addErrback(self._logged, f"migration {transit.record.id}")
            return transit.record.id

        def refused(failure: Failure) -> Failure:
            self._release(transit, capacity=True)
            return failure

        return begun.addCallbacks(started, refused)

    def _checked(self, spec: MigrationSpec) -> tuple[ComputePool, list[Instance]]:
        """Nano's checks in its order and words, then those it lacked."""
        view = self._context.view
        if spec.target_pool:
            raise InvalidRequest("migration between pools not support")
        if spec.target_cell == spec.source_cell:
            raise InvalidRequest("migrate in same cell")
        pool = view.compute_pools.get(spec.source_pool)
        if pool is None:
            raise UnknownEntity(f"invalid pool '{spec.source_pool}'")
        if not pool.storage:
            raise InvalidRequest("migrate only work on shared storage")
        storage = view.storage_pools.get(pool.storage)
        if storage is None:
            raise InvalidRequest(
                f"invalid storage '{pool.storage}' attached to pool '{pool.name}'"
            )
        if storage.type is not StorageType.NFS:
            raise InvalidRequest(
                f"migrate not work on storage type '{storage.type}'(storage "
                f"'{pool.storage}' attached to pool '{pool.name}')"
            )
        source, target = view.cells.get(spec.source_cell), view.cells.get(spec.target_cell)
        if source is None or source.pool != pool.name:
            raise InvalidRequest(f"source cell '{spec.source_cell}' not in pool '{pool.name}'")
        if target is None or target.pool != pool.name:
            raise InvalidRequest(f"target cell '{spec.target_cell}' not in pool '{pool.name}'")
        if not self._linked(target.name):
            raise InvalidRequest(f"target cell '{target.name}' already lost")
        if not target.enabled:
            raise InvalidRequest(f"target cell '{target.name}' already disabled")
        if not self._linked(source.name):
            raise InvalidRequest(f"source cell '{source.name}' already lost")
        ids = spec.instances
        if not ids:
            on_source = view.instances_on_cell(source.name).values()
            everything = [i for i in on_source if i.status is not InstanceStatus.CREATING]
            if not everything:
                where = f"{pool.name}.{source.name}"
                raise InvalidRequest(f"no instance need migrate in cell '{where}'")
            ids = tuple(i.id for i in sorted(everything, key=lambda i: i.full_name))
        found: list[Instance] = []
        seen: set[str] = set()
        for guest in ids:
            instance = view.instances.get(guest)
            if instance is None:
                raise UnknownEntity(f"invalid instance '{guest}'")
            named = f"instance '{guest}'('{instance.full_name}')"
            if instance.running:
                raise InvalidRequest(f"{named} is still running")
            if instance.migrating:
                raise InvalidRequest(f"{named} already in migrating")
            if instance.cell == target.name:
                raise InvalidRequest(f"{named} already in cell '{target.name}'")
            if guest in seen:
                raise InvalidRequest(f"{named} listed twice")
            if instance.cell != source.name:
                raise InvalidRequest(f"{named} not in cell '{source.name}'")
            if not instance.created:
                raise InvalidRequest(f"{named} not created yet")
            if instance.lost:
                if self._access.came_back_without(instance):
                    cell = f"cell '{instance.cell}'"
                    raise InvalidRequest(f"{named} is lost: {cell} came back without it")
                raise InvalidRequest(f"{named} is lost")
            image = self._access.capture_of(guest)
            if image is not None:
                raise InvalidRequest(f"{named} is being captured to disk image '{image}'")
            seen.add(guest)
            found.append(instance)
        return pool, found

    def _linked(self, cell: str) -> bool:
        return self._cells.state(cell) in (CellLiveness.ALIVE, CellLiveness.CONNECTED)

    def _claimed(
        self, spec: MigrationSpec, pool: ComputePool, instances: list[Instance]
    ) -> _Transit:
        """The guests claimed, and their cores and memory on the target if it has room."""
        target = spec.target_cell
        if self._context.claims.held(CELL_LEAVING, target) is not None:
            raise CellLeaving(target, pool.name)  # its removal commits now
        cores = sum(i.cores for i in instances)
        memory = sum(i.memory for i in instances)
        capacities = self._placement.capacities(pool.name)
        capacity = next((c for c in capacities if c.name == target), None)
        if capacity is None or not capacity.reported:
            raise NoRoomOnTarget(
                target, len(instances), Rejection(target, "available", "no recent report")
            )
        for check in (Cores(), Memory()):
            _, rejected = check.split(Demand(cores, memory, 0), [capacity])
            if rejected:
                raise NoRoomOnTarget(target, len(instances), rejected[0])
        now = self._context.clock.seconds()
        record = Migration(
            id=self._new_id(),
            source_pool=pool.name,
            source_cell=spec.source_cell,
            target_pool=pool.name,
            target_cell=target,
            instances=tuple(i.id for i in instances),
            start_time=now,
        )
        transit = _Transit(record, [], [])
        try:
            for instance in instances:
                transit.guests.append(
                    self._context.claims.take(MIGRATING, instance.id, instance.full_name)
                )
            for instance in instances:
                share = Share(target, instance.cores, instance.memory, 0)
                transit.capacity.append(self._placement.claim_move(move_key(instance.id), share))
        except ClaimHeld:
            self._release(transit, capacity=True)
            raise
        return transit

    def _begin(self, transit: _Transit) -> Deferred[None]:
        """The record and the guests' flags, re-checked on what is committed now."""
        record = transit.record
        changes: list[Change] = [Insert(record)]
        view = self._context.view
        for guest in record.instances:
            instance = view.instances.get(guest)
            if instance is None:
                return fail(UnknownEntity(f"invalid instance '{guest}'"))
            if instance.cell != record.source_cell or instance.running or instance.lost:
                return fail(
                    InvalidRequest(f"instance '{guest}'('{instance.full_name}') changed, retry")
                )
            changes.append(Put(evolve(instance, migrating=True)))
        return self._context.commit(*changes)

    async def _move(self, transit: _Transit) -> None:
        record = transit.record
        ids, source, target = record.instances, record.source_cell, record.target_cell
        try:
            session = await self._step(
                target,
                Message(
                    id=MessageID.AttachInstanceRequest,
                    bool_params={ParamKey.Immediate: False},
                    string_array_params={ParamKey.Instance: ids},
                ),
                "attach",
                undo=target,
                ids=ids,
            )
            await self._progress(transit, ATTACHED)
            await self._step(source, _detach(ids), "detach", undo=target, ids=ids)
            await self._progress(transit, DETACHED)
            arrived = transit.arrived = Deferred()
            arrived.addTimeout(self._timeout, self._context.clock)
            try:
                self._cells.send(
                    target,
                    Message(
                        id=MessageID.MigrateInstanceRequest,
                        to_session=session.from_session,
                        string_params={ParamKey.Migration: record.id},
                        string_array_params={ParamKey.Instance: ids},
                    ),
                )
                event = await arrived
            except (TimeoutError, CancelledError, LinkError):
                self._undo(target, ids)
                self._take_back(source, ids)
                raise _Failed("migrate instance timeout", released=True) from None
        except _Failed as failed:
            await self._cancel(transit, failed.reason, lost=failed.released or failed.uncertain)
            if failed.uncertain:
                self._recheck(source, ids)
            return
        await self._arrived(transit, target, event)

    async def _step(
        self, cell: str, message: Message, what: str, *, undo: str, ids: Sequence[str]
    ) -> Message:
        """One request of the move; its failure, in Nano's words, undoes the target's part."""
        try:
            return await self._access.forward(cell, message)
        except OperationTimeout:
            self._undo(undo, ids)
            # A source may still let go of the guests after its detach timed out.
            raise _Failed(f"{what} instance timeout", uncertain=what == "detach") from None
        except OperationError as error:
            if what != "attach":  # a target that refused its attach undid it itself
                self._undo(undo, ids)
            raise _Failed(f"{what} instance fail: {error.message}") from None

    def _undo(self, cell: str, ids: Sequence[str]) -> None:
        """Best effort: the Cell lets go of what it prepared or took (its own timeout too)."""
        asking = self._access.forward(cell, _detach(ids))
        asking.addErrback(self._logged, f"{cell}: detaching {len(ids)} instance(s) left over")

    def _recheck(self, source: str, ids: Sequence[str]) -> None:
        """The source's detach went unanswered, so the guests are shown lost: its inventory
        now says which it still holds (no longer lost), and it is asked to take back the
        others, which it let go of late."""

        def take_back(_: None) -> None:
            view = self._context.view
            left = [
                guest
                for guest in ids
                if (instance := view.instances.get(guest)) is not None
                and instance.cell == source
                and instance.lost
                and not instance.migrating
            ]
            if left and self._linked(source):  # else its rejoin tells, when it is back
                self._take_back(source, left)

        checking = self._refresh(source)
        checking.addCallback(take_back)
        checking.addErrback(self._logged, f"{source}: instances after a detach timeout")
        checking.addBoth(self._told_reconciled, source)

    def _told_reconciled(self, _: object, cell: str) -> None:
        for waiting in self._reconciling.pop(cell, []):
            waiting.callback(None)

    def _take_back(self, source: str, ids: Sequence[str]) -> None:
        """The source let go of guests no target took: it is asked to attach them again."""
        asking = self._cells.request(
            source, _attach_at_once(source, ids), timeout=self._timeout, is_reply=_refused_attach
        )
        if not asking.called:
            for guest in ids:
                self._returning[guest] = (source, asking)
        asking.addErrback(self._not_taken_back, source, ids, asking)
        asking.addErrback(self._logged, f"{source}: taking back {len(ids)} instance(s)")

    def _not_taken_back(
        self, failure: Failure, source: str, ids: Sequence[str], asking: Deferred[Message]
    ) -> Failure | None:
        """A refusal or a lost link ends the wait; after a timeout a late event still counts.
        The guests stay lost until a Cell reports them."""
        if failure.check(CancelledError, CoreStopping):
            return None  # taken back (its event ended the wait), or Core stops
        if failure.check(TransactionTimeout):
            self.log.warn("{cell} did not answer in time taking back {count} instance(s)",
                          cell=source, count=len(ids))  # fmt: skip
            return None
        if not failure.check(CellError, LinkError):
            return failure
        for guest in ids:
            if self._returning.get(guest, (None, None))[1] is asking:
                del self._returning[guest]
        doing = "refused to take" if failure.check(CellError) else "not asked to take"
        self.log.warn("{cell} {doing} back {count} instance(s): {error}", cell=source,
                      doing=doing, count=len(ids), error=str(failure.value))  # fmt: skip
        return None

    async def _progress(self, transit: _Transit, percent: int) -> None:
        transit.record = evolve(transit.record, progress=percent)
        try:
            await self._context.commit(Put(transit.record))
        except StoreClosed:
            raise
        except Exception:
            self.log.failure("migration {id}: progress not recorded", id=transit.record.id)

    # -- the end of a move --------------------------------------------------------------------

    async def _arrived(self, transit: _Transit, cell: str, event: Message) -> None:
        """The target serves the guests: their records follow, the record ends."""
        record = transit.record
        reported = event.string_array_params.get(ParamKey.Instance, ())
        ports = event.uint_array_params.get(ParamKey.Monitor, ())
        port_of = dict(zip(reported, ports, strict=False))
        address = self._cells.address(cell) or ""
        missing = [guest for guest in record.instances if guest not in port_of]
        now = self._context.clock.seconds()
        error = ""
        if missing:
            error = f"{len(missing)} instance(s) not taken by cell '{cell}': {', '.join(missing)}"
        ended = evolve(
            record, finished=not missing, progress=DONE, error=clipped(error), end_time=now
        )

        def decide() -> list[Change]:
            view = self._context.view
            changes: list[Change] = [Put(ended)]
            for guest in record.instances:
                instance = view.instances.get(guest)
                if instance is None:
                    continue
                if guest in port_of:
                    internal = instance.internal
                    port = port_of[guest]
                    if 0 < port <= 65535:
                        internal = evolve(internal, monitor_port=port)
                    if address:
                        internal = evolve(internal, monitor_address=address)
                    moved = evolve(
                        instance, cell=cell, migrating=False, lost=False, internal=internal
                    )
                    if record.kind is MigrationKind.FAILOVER and record.source_cell != cell:
                        # Its lost Cell may hold a copy (not when it took the guest back).
                        changes.append(Put(StaleCopy(record.source_cell, guest)))
                else:
                    moved = evolve(instance, migrating=False, lost=True)
                changes.append(Put(moved))
            return changes

        try:
            await self._in_turn(record.instances, lambda: self._context.commit(*decide()))
        except Exception:
            self._release(transit, capacity=True)
            raise
        moved = {move_key(guest) for guest in port_of}
        for claim in transit.capacity:
            if claim.key in moved:
                self._placement.recorded(claim.key)
                self._placement.until_report(claim)
            else:
                self._placement.abandon(claim)
        self._release(transit)
        self._told(ended)
        if record.kind is MigrationKind.FAILOVER:
            # The target's word on the guests it took (running or not) is only in its
            # inventory: the event says where they are, not how.
            reading = self._refresh(cell)
            reading.addErrback(self._logged, f"{cell}: inventory after failover {record.id}")
            reading.addBoth(self._told_reconciled, cell)
        if missing:
            self.log.warn("migration {id}: {error}", id=record.id, error=error)
        else:
            self.log.info("migration {id}: {count} instance(s) moved from {source} to {target}",
                          id=record.id, count=len(record.instances), source=record.source_cell,
                          target=cell)  # fmt: skip

    async def _cancel(self, transit: _Transit, reason: str, *, lost: bool = False) -> None:
        """The guests stay where their records say, not migrating; ``lost`` when their Cell
        let go of them. The record keeps the reason."""
        record = transit.record
        ended = evolve(record, error=clipped(reason), end_time=self._context.clock.seconds())

        def decide() -> list[Change]:
            view = self._context.view
            changes: list[Change] = [Put(ended)]
            for guest in record.instances:
                instance = view.instances.get(guest)
                if instance is not None and (instance.migrating or lost):
                    left = evolve(instance, migrating=False, lost=instance.lost or lost)
                    changes.append(Put(left))
            return changes

        try:
            await self._in_turn(record.instances, lambda: self._context.commit(*decide()))
        finally:
            self._release(transit, capacity=True)
        self._told(ended)
        self.log.warn("migration {id} ({kind}) of {count} instance(s) from {source} to {target}"
                      " failed: {reason}", id=record.id, kind=record.kind.value,
                      count=len(record.instances), source=record.source_cell,
                      target=record.target_cell, reason=reason)  # fmt: skip

    def _release(self, transit: _Transit, *, capacity: bool = False) -> None:
        """The guests' claims end (and the capacity claims, when nothing moved)."""
        for claim in transit.guests:
            self._context.claims.release(claim)
        if capacity:
            for share in transit.capacity:
                self._placement.abandon(share)
        self._stop_waiting(transit)
        if self._running.get(transit.record.id) is transit:
            del self._running[transit.record.id]

    # -- failover -----------------------------------------------------------------------------

    def _plan(
        self,
        lost: str,
        pool: ComputePool,
        only: Collection[str] | None = None,
        *,
        stranded: bool = False,
        singly: bool = False,
    ) -> None:
        """Fail ``lost`` over (``only`` those guests, when given; ``stranded``: guests no
        Cell could take before; ``singly``: one record and attach per guest); who waits for
        its plan (:meth:`planned`) hears of it once it is committed and sent."""
        failing = Deferred.fromCoroutine(
            self._failover(lost, pool, only, stranded=stranded, singly=singly)
        )
        failing.addErrback(self._logged, f"failover of {lost}")

        def planned(records: list[str] | None) -> None:
            for waiting in self._planning.pop(lost, []):
                waiting.callback(records or [])

        failing.addCallback(planned)

    async def _failover(
        self,
        lost: str,
        pool: ComputePool,
        only: Collection[str] | None = None,
        *,
        stranded: bool = False,
        singly: bool = False,
    ) -> list[str]:
        """Re-place every guest of ``lost`` (or ``only`` those) on the other Cells of its pool
        (see the module). Stranded guests planned again are quiet: what still finds no Cell
        was recorded and said the first time, and the Cell was disabled then."""
        view = self._context.view
        now = self._context.clock.seconds()
        guests = sorted(
            (i for i in view.instances_on_cell(lost).values() if only is None or i.id in only),
            key=lambda i: i.full_name,
        )
        plan: dict[str, _Transit] = {}
        unplaced: list[tuple[Instance, str]] = []
        for instance in guests:
            if instance.status is InstanceStatus.CREATING or instance.migrating:
                continue  # its creation fails with the Cell; a migration fails on its own
            try:
                held = self._context.claims.take(MIGRATING, instance.id, instance.full_name)
            except ClaimHeld:
                continue
            demand = Demand(instance.cores, instance.memory, 0)
            try:
                claim = self._placement.place(move_key(instance.id), pool.name, demand)
            except (NoCellAvailable, CellLeaving) as refusal:
                self._context.claims.release(held)
                unplaced.append((instance, refusal.message))
                continue
            target = claim.value.cell
            key = instance.id if singly else target
            transit = plan.get(key)
            if transit is None:
                record = Migration(
                    id=self._new_id(), source_pool=pool.name, source_cell=lost,
                    target_pool=pool.name, target_cell=target, kind=MigrationKind.FAILOVER,
                    start_time=now,
                )  # fmt: skip
                transit = plan[key] = _Transit(record, [], [])
            transit.record = evolve(
                transit.record, instances=(*transit.record.instances, instance.id)
            )
            transit.guests.append(held)
            transit.capacity.append(claim)
        if stranded and not plan:
            return []
        changes: list[Change] = []
        for transit in plan.values():
            changes.append(Insert(transit.record))
        unplaced_ids: list[str] = []
        if unplaced:
            self._stranded.setdefault(lost, set()).update(i.id for i, _ in unplaced)
        if unplaced and not stranded:
            reasons = "; ".join(
                f"instance '{i.id}'('{i.full_name}'): {reason}" for i, reason in unplaced
            )
            unplaced_ids.append(self._new_id())
            changes.append(
                Insert(
                    Migration(
                        id=unplaced_ids[0], source_pool=pool.name, source_cell=lost,
                        target_pool=pool.name, target_cell="", kind=MigrationKind.FAILOVER,
                        instances=tuple(i.id for i, _ in unplaced), error=clipped(reasons),
                        start_time=now, end_time=now,
                    )
                )
            )  # fmt: skip
            # One line per reason, not per guest: a pool's reason names each of its Cells, and
            # a failover of many guests said it once for each (QA pass 18: 29 % of the log).
            by_reason: dict[str, list[Instance]] = {}
            for instance, reason in unplaced:
                by_reason.setdefault(reason, []).append(instance)
            for reason, instances in by_reason.items():
                listed = named([f"{i.id} ({i.full_name})" for i in instances])
                self.log.warn("failover of {cell}: {count} instance(s) not re-placed, shown "
                              "lost until a cell of the pool can take them ({guests}): "
                              "{reason}", cell=lost, count=len(instances), guests=listed,
                              reason=reason)  # fmt: skip
        cell = view.cells.get(lost)
        disabling = False
        if cell is not None and cell.enabled and not stranded:
            changes.append(Put(evolve(cell, enabled=False)))
            disabling = True
        moving = [guest for transit in plan.values() for guest in transit.record.instances]

        def decide() -> list[Change]:
            current = self._context.view.instances
            flagged = list(changes)
            for guest in moving:
                instance = current.get(guest)
                if instance is not None and instance.cell == lost:
                    flagged.append(Put(evolve(instance, migrating=True, lost=False)))
            return flagged

        try:
            await self._in_turn(moving, lambda: self._context.commit(*decide()))
        except Exception:
            for transit in plan.values():
                self._release(transit, capacity=True)
            raise
        if plan:
            under_way = self._failing_over.setdefault(lost, set())
            under_way.update(transit.record.id for transit in plan.values())
        for transit in plan.values():
            self._running[transit.record.id] = transit
            self._attach(transit)
        self.log.info("failover of {cell}: {moving} {which}instance(s) sent to {targets} "
                      "cell(s), {unplaced} {still}not re-placed", cell=lost, moving=len(moving),
                      which="stranded " if stranded else "",
                      targets=len({transit.record.target_cell for transit in plan.values()}),
                      unplaced=len(unplaced), still="still " if stranded else "")  # fmt: skip
        if disabling:
            # As Nano: a Cell that failed gets no new guest until someone looked at it; the
            # only trace was its flag in the API (QA pass 16).
            self.log.warn("{cell} disabled by its failover: no guest is placed on it until it is "
                          "enabled again (PUT /compute_pool_cells/{pool}/{cell} "
                          '{{"enable": true}})', cell=lost, pool=pool.name)  # fmt: skip
        return [transit.record.id for transit in plan.values()] + unplaced_ids

    def _failover_ended(self, record: Migration) -> None:
        """Once the last record of a failover ended, a lost Cell that came back meanwhile is
        reconciled: its rejoin left the guests in flight alone, so its copies of those now on
        other Cells are detached from it, and those that stayed are its own again."""
        under_way = self._failing_over.get(record.source_cell)
        if under_way is None or record.id not in under_way:
            return
        under_way.discard(record.id)
        if under_way:
            return
        del self._failing_over[record.source_cell]
        if self._linked(record.source_cell):
            reconciling = self._refresh(record.source_cell)
            reconciling.addErrback(self._logged, f"{record.source_cell}: back after failover")
            reconciling.addBoth(self._told_reconciled, record.source_cell)

    def _attach(self, transit: _Transit) -> None:
        """Ask the target to take the guests at once. The request carries a token (Nano's
        carried none), which a stock Cell's refusal names, so a refusal fails this plan
        alone; the target's ``InstanceMigratedEvent`` (no token) ends the wait instead."""
        record = transit.record
        if not self._linked(record.target_cell):
            reason = f"attach instance fail: cell '{record.target_cell}' is not connected"
            self._failover_failed(transit, reason)
            return
        attaching = transit.attaching = self._cells.request(
            record.target_cell,
            _attach_at_once(record.source_cell, record.instances),
            timeout=self._timeout,
            is_reply=_refused_attach,
        )
        attaching.addErrback(self._attach_failed, transit)
        attaching.addErrback(self._logged, f"failover {record.id}")

    def _attach_failed(self, failure: Failure, transit: _Transit) -> Failure | None:
        target = transit.record.target_cell
        if failure.check(CancelledError, LinkError):
            # Taken (its event ended the wait); or the link is gone, which the target's
            # disconnect handles once every observer (the placement too) has heard of it.
            return None
        if failure.check(TransactionTimeout):
            self._undo(target, transit.record.instances)
            self._failover_failed(transit, f"attach instance timeout on cell '{target}'")
        elif failure.check(CellError):
            self._failover_failed(transit, f"attach instance fail: {failure.value}", refused=True)
        else:
            return failure
        return None

    def _stop_waiting(self, transit: _Transit) -> None:
        attaching, transit.attaching = transit.attaching, None
        if attaching is not None and not attaching.called:
            attaching.cancel()

    def _failover_failed(self, transit: _Transit, reason: str, *, refused: bool = False) -> None:
        if self._running.get(transit.record.id) is not transit:
            return
        del self._running[transit.record.id]
        cancelling = Deferred.fromCoroutine(self._cancel(transit, reason, lost=True))
        refusal = reason if refused else ""
        cancelling.addCallback(lambda _: self._plan_again(transit.record, refusal))
        cancelling.addErrback(self._logged, f"failover {transit.record.id}")

    def _plan_again(self, failed: Migration, refusal: str = "") -> None:
        """A target that is itself gone leaves its guests to the pool's other Cells: planned
        again while their own Cell is still away, at most :data:`FAILOVER_REPLANS` times
        until it links again. A linked target that refused several guests at once (its
        ``refusal``) is asked for each alone; what it refuses alone, or leaves unanswered, is
        final."""
        source, target = failed.source_cell, failed.target_cell
        pool = None if self._linked(source) else self._failover_pool(source)
        if self._linked(target):
            if refusal and len(failed.instances) > 1 and pool is not None:
                # A stock Cell attaches a batch whole or not at all: one guest it cannot
                # attach (its volumes removed behind Core's back) failed the batch's healthy
                # guests with it (QA pass 18, F-FAILOVER-POISON).
                self.log.info("failover of {cell}: {target} refused {count} instance(s) "
                              "together ({reason}); asking for each alone", cell=source,
                              target=target, count=len(failed.instances),
                              reason=refusal)  # fmt: skip
                self._plan(source, pool, failed.instances, singly=True)
                return
            # Final for these guests, also for those waiting as stranded, which would meet
            # the same refusal every few seconds.
            self._refused.update(failed.instances)
            return
        if pool is None:
            return
        done = self._replans.get(source, 0)
        if done >= FAILOVER_REPLANS:
            self.log.warn("failover of {cell}: target {target} lost too; planned again "
                          "{done} time(s) already, its guests wait, lost, for a Cell of the "
                          "pool that can take them", cell=source, target=target,
                          done=done)  # fmt: skip
            self._stranded.setdefault(source, set()).update(failed.instances)
            return
        self._replans[source] = done + 1
        self.log.info("failover of {cell}: target {target} lost too, planning its "
                      "{count} instance(s) again", cell=source, target=target,
                      count=len(failed.instances))  # fmt: skip
        self._plan(source, pool, failed.instances)

    # -- CellObserver -------------------------------------------------------------------------

    def cell_available(self, name: str, address: str) -> None:
        self._replans.pop(name, None)

    def cell_status(self, name: str, status: CellStatus) -> None:
        """A Cell of a pool with stranded guests reports: plan them again once the report
        is everyone's (the placement hears of it too). A Cell of a failover pool whose
        inventory lacked lost guests of Core's strands them too: they are on no Cell (so also
        after a restart of Core, which forgot what its failovers could not place)."""
        lacked = self._access.lacking.get(name)
        if lacked and self._failover_pool(name) is not None:
            self._stranded.setdefault(name, set()).update(lacked)
        if self._stranded:
            self._context.clock.callLater(0, self._plan_stranded, name)

    def _plan_stranded(self, reporting: str) -> None:
        """Plan again the stranded guests of the reporting Cell's pool, that still wait. A
        guest waits while it is lost on its Cell: the Cell is away, or came back without it
        (a Cell back that has not told its inventory yet may still hold it)."""
        record = self._context.view.cells.get(reporting)
        if record is None or not record.enabled or not self._linked(reporting):
            return
        now = self._context.clock.seconds()
        for lost in list(self._stranded):
            pool = self._failover_pool(lost)
            if pool is not None and (
                pool.name != record.pool or now < self._stranded_retry.get(lost, now)
            ):
                continue
            waiting = self._still_stranded(lost) if pool is not None else []
            if pool is None or not waiting:
                self._stranded.pop(lost, None)
                self._stranded_retry.pop(lost, None)
                continue
            if self._linked(lost):
                waiting = [g for g in waiting if self._access.came_back_without(g)]
                if not waiting:
                    continue
            self._stranded_retry[lost] = now + STRANDED_RETRY
            self._plan(lost, pool, [g.id for g in waiting], stranded=True)

    def _still_stranded(self, lost: str) -> list[Instance]:
        """The stranded guests of ``lost`` still lost on it (not deleted, moved or reported),
        but those a linked target refused."""
        instances = self._context.view.instances
        waiting = []
        for guest in self._stranded.get(lost, ()):
            instance = instances.get(guest)
            if instance is None or instance.cell != lost or not instance.lost:
                self._refused.discard(guest)
            elif guest not in self._refused:
                waiting.append(instance)
        self._stranded[lost] = {instance.id for instance in waiting}
        return waiting

    def cell_disconnected(self, name: str, gracefully: bool) -> None:
        """A Cell of a failover pool on shared storage lost without a goodbye: failover. A
        failover waiting for it as its target fails now (its guests are planned again)."""
        for transit in list(self._running.values()):
            sent = transit.record
            if sent.kind is MigrationKind.FAILOVER and sent.target_cell == name:
                self._failover_failed(transit, f"attach instance fail: cell '{name}' disconnected")
        if gracefully:
            return
        pool = self._failover_pool(name)
        if pool is not None:
            self._plan(name, pool)

    def _failover_pool(self, cell: str) -> ComputePool | None:
        """The Cell's pool when it fails over (failover on, shared storage), else None."""
        record = self._context.view.cells.get(cell)
        pool = self._context.view.compute_pools.get(record.pool) if record else None
        return pool if pool is not None and pool.failover and pool.storage else None

    def cell_answered_late(self, name: str, request: Message, reply: Message) -> None:
        """The Cell's inventory, taken again by the cell operations, tells what it did."""

    def cell_event(self, name: str, message: Message) -> None:
        if message.id == MessageID.InstanceMigratedEvent:
            self._migrated(name, message)

    def _migrated(self, cell: str, message: Message) -> None:
        if not message.bool_params.get(ParamKey.Immediate, False):
            migration = message.string_params.get(ParamKey.Migration, "")
            transit = self._running.get(migration)
            if transit is None or transit.record.target_cell != cell or transit.arrived is None:
                self.log.warn("{cell}: migrated event for migration {id!r}, not waiting; "
                              "ignored", cell=cell, id=migration)  # fmt: skip
                return
            if not transit.arrived.called:
                transit.arrived.callback(message)
            return
        source = message.string_params.get(ParamKey.Cell, "")
        reported = set(message.string_array_params.get(ParamKey.Instance, ()))
        candidates = [
            transit
            for transit in self._running.values()
            if (transit.record.kind, transit.record.source_cell, transit.record.target_cell)
            == (MigrationKind.FAILOVER, source, cell)
        ]
        if candidates:
            # Two plans may send guests of one Cell to the same target (a stranded guest
            # placed while an earlier one is in flight): the event names its guests.
            transit = max(candidates, key=lambda t: len(reported.intersection(t.record.instances)))
            self._running.pop(transit.record.id)
            self._stop_waiting(transit)
            arriving = Deferred.fromCoroutine(self._arrived(transit, cell, message))
            arriving.addErrback(self._logged, f"failover {transit.record.id}")
            return
        returned = [
            guest
            for guest in message.string_array_params.get(ParamKey.Instance, ())
            if self._returning.get(guest, ("", None))[0] == cell == source
        ]
        if not returned:
            self.log.warn("{cell}: migrated event from {source} expected by no failover; "
                          "ignored", cell=cell, source=source)  # fmt: skip
            return
        for guest in returned:
            _, asking = self._returning.pop(guest)
            if not asking.called:
                asking.cancel()
        taking = self._in_turn(returned, lambda: self._taken_back(cell, returned, message))
        taking.addErrback(self._logged, f"{cell}: instances taken back")

    def _taken_back(self, cell: str, guests: list[str], message: Message) -> Deferred[None]:
        ports = dict(
            zip(
                message.string_array_params.get(ParamKey.Instance, ()),
                message.uint_array_params.get(ParamKey.Monitor, ()),
                strict=False,
            )
        )
        changes: list[Change] = []
        for guest in guests:
            instance = self._context.view.instances.get(guest)
            if instance is None or instance.cell != cell:
                continue
            internal = instance.internal
            if 0 < ports.get(guest, 0) <= 65535:
                internal = evolve(internal, monitor_port=ports[guest])
            changes.append(Put(evolve(instance, lost=False, internal=internal)))
        return self._context.commit(*changes) if changes else succeed(None)

    # -- start --------------------------------------------------------------------------------

    def _recover(self) -> Deferred[None]:
        """Migrations under way when Core stopped failed; no guest stays flagged migrating."""
        view = self._context.view
        now = self._context.clock.seconds()
        changes: dict[Hashable, Change] = {}
        for record in view.migrations.values():
            if not record.running:
                continue
            changes[record.id] = Put(evolve(record, error=RESTARTED, end_time=now))
            left = record.kind is MigrationKind.FAILOVER or record.progress >= DETACHED
            for guest in record.instances:
                instance = view.instances.get(guest)
                if instance is not None and instance.migrating:
                    # Where it is now only a Cell can tell: shown lost until one reports it.
                    changed = evolve(instance, migrating=False, lost=instance.lost or left)
                    changes[guest] = Put(changed)
        for instance in view.instances.values():
            if instance.migrating and instance.id not in changes:
                changes[instance.id] = Put(evolve(instance, migrating=False))
        if not changes:
            return succeed(None)
        self.log.warn("{count} change(s) to end migrations cut short by a stop",
                      count=len(changes))  # fmt: skip
        return self._context.commit(*changes.values())

    def _strand_recorded(self) -> None:
        """Guests a kept failover record could not place, still lost on their Cell, wait as
        stranded from the start: their failover was decided before Core stopped, which
        forgot them (QA pass 19: they waited a minute for their Cell to be presumed lost
        again, while room came and went)."""
        view = self._context.view
        for record in view.migrations.values():
            if record.kind is not MigrationKind.FAILOVER or record.target_cell:
                continue
            lost = record.source_cell
            for guest in record.instances:
                instance = view.instances.get(guest)
                if instance is not None and instance.cell == lost and instance.lost:
                    self._stranded.setdefault(lost, set()).add(guest)

    # -- helpers ------------------------------------------------------------------------------

    def _in_turn(self, guests: Iterable[str], work: Callable[[], Deferred[Any]]) -> Deferred[Any]:
        """``work`` in the turn of every guest at once (their turns taken in id order, so two
        such waits never hold each other's)."""
        ordered = sorted(set(guests))

        def step(index: int) -> Deferred[Any]:
            if index == len(ordered):
                return maybeDeferred(work)
            return self._access.serially(ordered[index], lambda: step(index + 1))

        return step(0)

    def _logged(self, failure: Failure, doing: str) -> None:
        if failure.check(StoreClosed):
            self.log.info("{doing}: the store is closed", doing=doing)
        elif failure.check(OperationError):
            self.log.warn("{doing}: {reason}", doing=doing,
                          reason=failure.value.message)  # type: ignore[union-attr]  # fmt: skip
        else:
            self.log.failure("{doing} failed", failure, doing=doing)
