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

**Failover** (:mod:`nanocore.operations.failover`) plans where the guests of a lost Cell go
and sends them; its moves are these (one record per target, kind ``failover``).

**Records** are stored. They are kept :data:`RETENTION` seconds after they end (the original
deleted them the first time a client read them), judged by the clock when they are read. A
migration under way when Core stopped is failed at the next start (:data:`RESTARTED`) and its
guests' flags cleared; those that had left their source are shown lost until a Cell reports
them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

from attrs import evolve, frozen
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
    CellObserver,
    CellStatus,
    CellUnavailable,
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
from nanocore.operations.base import Context, Sweep
from nanocore.operations.cells import CELL_LEAVING, CellLeaving
from nanocore.operations.claims import ClaimHeld
from nanocore.operations.errors import (
    InvalidRequest,
    OperationError,
    OperationTimeout,
    UnknownEntity,
)
from nanocore.operations.failover import Failover
from nanocore.operations.guests.common import MIGRATING, GuestAccess
from nanocore.operations.guests.placement import Placement, Share, move_key
from nanocore.operations.moves import Transit, attach_at_once, detach, refused_attach
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
        self.running: dict[str, Transit] = {}
        self._expired_records = Sweep(self._context, "migrations")
        #: Guests a source was asked to take back after a failed move: guest -> the source
        #: and its attach (until the source's event names them, or it refuses).
        self._returning: dict[str, tuple[str, Deferred[Message]]] = {}
        self._ending: dict[str, list[Deferred[Migration]]] = {}
        self._refresh = refresh
        self._reconciling: dict[str, list[Deferred[None]]] = {}
        #: Fires once the records of migrations cut short by a stop are failed.
        self.recovered: Deferred[None] = self._recover()
        self.failover = Failover(self, access, placement, self._timeout, new_id)

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
        if migration_id not in self.running:
            if record is None:
                return fail(UnknownEntity(f"invalid migration '{migration_id}'"))
            if not record.running:
                return succeed(record)
        waiting: Deferred[Migration] = Deferred()
        self._ending.setdefault(migration_id, []).append(waiting)
        return waiting

    def reconciled(self, cell: str) -> Deferred[None]:
        """Fires once the next reconciliation of ``cell`` these migrations ask for is done
        (after a detach that went unanswered, after the failover of a Cell that came back)."""
        waiting: Deferred[None] = Deferred()
        self._reconciling.setdefault(cell, []).append(waiting)
        return waiting

    def _told(self, record: Migration) -> None:
        if record.kind is MigrationKind.FAILOVER:
            self.failover.ended(record)
        elif record.error:
            self.failover.moved_by_hand_failed(record)
        for waiting in self._ending.pop(record.id, []):
            waiting.callback(record)

    def _expired(self, record: Migration) -> bool:
        now = self._context.clock.seconds()
        return not record.running and now - record.end_time >= RETENTION

    def _sweep(self) -> None:
        self._expired_records.delete(
            Delete(Migration, m.id)
            for m in self._context.view.migrations.values()
            if self._expired(m) and m.id not in self.running
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
        begun = self.in_turn(ids, lambda: self._begin(transit))

        def started(_: None) -> str:
            self.running[transit.record.id] = transit
            moving = Deferred.fromCoroutine(self._move(transit))
            moving.addErrback(self.logged, f"migration {transit.record.id}")
            return transit.record.id

        def refused(failure: Failure) -> Failure:
            self.release(transit, capacity=True)
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
        if not self.linked(target.name):
            raise InvalidRequest(f"target cell '{target.name}' already lost")
        if not target.enabled:
            raise InvalidRequest(f"target cell '{target.name}' already disabled")
        if not self.linked(source.name):
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
            self._access.refuse_starting(guest, f"{named} is being started")
            seen.add(guest)
            found.append(instance)
        return pool, found

    def linked(self, cell: str) -> bool:
        return self._access.linked(cell)

    def _claimed(
        self, spec: MigrationSpec, pool: ComputePool, instances: list[Instance]
    ) -> Transit:
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
        transit = Transit(record, [], [])
        try:
            for instance in instances:
                transit.guests.append(
                    self._context.claims.take(MIGRATING, instance.id, instance.full_name)
                )
            for instance in instances:
                share = Share(target, instance.cores, instance.memory, 0)
                transit.capacity.append(self._placement.claim_move(move_key(instance.id), share))
        except ClaimHeld:
            self.release(transit, capacity=True)
            raise
        return transit

    def _begin(self, transit: Transit) -> Deferred[None]:
        """The record and the guests' flags, re-checked on what is committed now."""
        record = transit.record
        changes: list[Change] = [Insert(record)]
        view = self._context.view
        for guest in record.instances:
            instance = view.instances.get(guest)
            if instance is None:
                return fail(UnknownEntity(f"invalid instance '{guest}'"))
            # Running, or reset (decided before it, in the guest's turn): not stopped now.
            stopped = instance.status is InstanceStatus.STOPPED
            if instance.cell != record.source_cell or not stopped or instance.lost:
                return fail(
                    InvalidRequest(f"instance '{guest}'('{instance.full_name}') changed, retry")
                )
            changes.append(Put(evolve(instance, migrating=True)))
        return self._context.commit(*changes)

    async def _move(self, transit: Transit) -> None:
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
            await self._step(source, detach(ids), "detach", undo=target, ids=ids)
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
            except (TimeoutError, CancelledError, LinkError) as error:
                self.undo(target, ids)
                self._take_back(source, ids)
                reason = (
                    f"migrate instance fail: cell '{target}' disconnected"
                    if isinstance(error, LinkError)
                    else "migrate instance timeout"
                )
                raise _Failed(reason, released=True) from None
        except _Failed as failed:
            await self.cancel(transit, failed.reason, lost=failed.released or failed.uncertain)
            if failed.uncertain:
                self._recheck(source, ids)
            return
        await self.arrive(transit, target, event)

    async def _step(
        self, cell: str, message: Message, what: str, *, undo: str, ids: Sequence[str]
    ) -> Message:
        """One request of the move; its failure, in Nano's words, undoes the target's part."""
        try:
            return await self._access.forward(cell, message)
        except OperationTimeout:
            self.undo(undo, ids)
            # A source may still let go of the guests after its detach timed out.
            raise _Failed(f"{what} instance timeout", uncertain=what == "detach") from None
        except OperationError as error:
            if what != "attach":  # a target that refused its attach undid it itself
                self.undo(undo, ids)
            raise _Failed(f"{what} instance fail: {error.message}") from None

    def undo(self, cell: str, ids: Sequence[str]) -> None:
        """Best effort: the Cell lets go of what it prepared or took (its own timeout too)."""
        asking = self._access.forward(cell, detach(ids))
        asking.addErrback(self.logged, f"{cell}: detaching {len(ids)} instance(s) left over")

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
            if left and self.linked(source):  # else its rejoin tells, when it is back
                self._take_back(source, left)

        checking = self._refresh(source)
        checking.addCallback(take_back)
        checking.addErrback(self.logged, f"{source}: instances after a detach timeout")
        checking.addBoth(self._told_reconciled, source)

    def reconcile(self, cell: str, why: str) -> None:
        """Take ``cell``'s inventory now and reconcile Core's records with it (those waiting
        on :meth:`reconciled` hear of it)."""
        reconciling = self._refresh(cell)
        reconciling.addErrback(self.logged, f"{cell}: {why}")
        reconciling.addBoth(self._told_reconciled, cell)

    def _told_reconciled(self, _: object, cell: str) -> None:
        for waiting in self._reconciling.pop(cell, []):
            waiting.callback(None)

    def _take_back(self, source: str, ids: Sequence[str]) -> None:
        """The source let go of guests no target took: it is asked to attach them again."""
        asking = self._cells.request(
            source, attach_at_once(source, ids), timeout=self._timeout, is_reply=refused_attach
        )
        if not asking.called:
            for guest in ids:
                self._returning[guest] = (source, asking)
        asking.addErrback(self._not_taken_back, source, ids, asking)
        asking.addErrback(self.logged, f"{source}: taking back {len(ids)} instance(s)")

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

    async def _progress(self, transit: Transit, percent: int) -> None:
        transit.record = evolve(transit.record, progress=percent)
        try:
            await self._context.commit(Put(transit.record))
        except StoreClosed:
            raise
        except Exception:
            self.log.failure("migration {id}: progress not recorded", id=transit.record.id)

    # -- the end of a move --------------------------------------------------------------------

    async def arrive(self, transit: Transit, cell: str, event: Message) -> None:
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
            await self.in_turn(record.instances, lambda: self._context.commit(*decide()))
        except Exception:
            self.release(transit, capacity=True)
            raise
        moved = {move_key(guest) for guest in port_of}
        for claim in transit.capacity:
            if claim.key in moved:
                self._placement.recorded(claim.key)
                self._placement.until_report(claim)
            else:
                self._placement.abandon(claim)
        self.release(transit)
        self._told(ended)
        if record.kind is MigrationKind.FAILOVER:
            # The target's word on the guests it took (running or not) is only in its
            # inventory: the event says where they are, not how.
            self.reconcile(cell, f"inventory after failover {record.id}")
        if missing:
            self.log.warn("migration {id}: {error}", id=record.id, error=error)
        else:
            self.log.info("migration {id}: {count} instance(s) moved from {source} to {target}",
                          id=record.id, count=len(record.instances), source=record.source_cell,
                          target=cell)  # fmt: skip

    async def cancel(self, transit: Transit, reason: str, *, lost: bool = False) -> None:
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
            await self.in_turn(record.instances, lambda: self._context.commit(*decide()))
        finally:
            self.release(transit, capacity=True)
        self._told(ended)
        self.log.warn("migration {id} ({kind}) of {count} instance(s) from {source} to {target}"
                      " failed: {reason}", id=record.id, kind=record.kind.value,
                      count=len(record.instances), source=record.source_cell,
                      target=record.target_cell, reason=reason)  # fmt: skip

    def release(self, transit: Transit, *, capacity: bool = False) -> None:
        """The guests' claims end (and the capacity claims, when nothing moved)."""
        for claim in transit.guests:
            self._context.claims.release(claim)
        if capacity:
            for share in transit.capacity:
                self._placement.abandon(share)
        transit.stop_waiting()
        if self.running.get(transit.record.id) is transit:
            del self.running[transit.record.id]

    # -- CellObserver (what concerns failover is the failover's) -----------------------------

    def planned(self, cell: str) -> Deferred[list[str]]:
        """Fires with the ids of the records of the next failover of ``cell`` once its plan is
        committed and its attach requests are sent (none: nothing to re-place)."""
        return self.failover.planned(cell)

    def cell_available(self, name: str, address: str) -> None:
        self.failover.cell_available(name, address)

    def cell_status(self, name: str, status: CellStatus) -> None:
        self.failover.cell_status(name, status)

    def cell_disconnected(self, name: str, gracefully: bool) -> None:
        """A target gone before its event: the move fails now, not a domain timeout later,
        while no Cell holds the guests (QA pass 25); then the failover's part."""
        for transit in list(self.running.values()):
            arrived = transit.arrived
            if transit.record.target_cell == name and arrived is not None and not arrived.called:
                arrived.errback(CellUnavailable(f"cell {name!r} disconnected"))
        self.failover.cell_disconnected(name, gracefully)

    def cell_answered_late(self, name: str, request: Message, reply: Message) -> None:
        """The Cell's inventory, taken again by the cell operations, tells what it did."""

    def cell_event(self, name: str, message: Message) -> None:
        if message.id == MessageID.InstanceMigratedEvent:
            self._migrated(name, message)

    def _migrated(self, cell: str, message: Message) -> None:
        if not message.bool_params.get(ParamKey.Immediate, False):
            migration = message.string_params.get(ParamKey.Migration, "")
            transit = self.running.get(migration)
            if transit is None or transit.record.target_cell != cell or transit.arrived is None:
                self.log.warn("{cell}: migrated event for migration {id!r}, not waiting; "
                              "ignored", cell=cell, id=migration)  # fmt: skip
                return
            if not transit.arrived.called:
                transit.arrived.callback(message)
            return
        if self.failover.migrated(cell, message):
            return
        source = message.string_params.get(ParamKey.Cell, "")
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
        taking = self.in_turn(returned, lambda: self._taken_back(cell, returned, message))
        taking.addErrback(self.logged, f"{cell}: instances taken back")

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

    # -- helpers ------------------------------------------------------------------------------

    def in_turn(self, guests: Iterable[str], work: Callable[[], Deferred[Any]]) -> Deferred[Any]:
        """``work`` in the turn of every guest at once (their turns taken in id order, so two
        such waits never hold each other's)."""
        ordered = sorted(set(guests))

        def step(index: int) -> Deferred[Any]:
            if index == len(ordered):
                return maybeDeferred(work)
            return self._access.serially(ordered[index], lambda: step(index + 1))

        return step(0)

    def logged(self, failure: Failure, doing: str) -> None:
        if failure.check(StoreClosed):
            self.log.info("{doing}: the store is closed", doing=doing)
        elif failure.check(OperationError):
            self.log.warn("{doing}: {reason}", doing=doing,
                          reason=failure.value.message)  # type: ignore[union-attr]  # fmt: skip
        else:
            self.log.failure("{doing} failed", failure, doing=doing)
