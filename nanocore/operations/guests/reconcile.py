"""Reconciling Core's records with a Cell's inventory when it (re)joins its pool.

The rule (docs/architecture.md, "reconciling guests"), for the guests the Cell reports in its
``ComputeCellReadyEvent`` and the records Core holds for that Cell:

- a guest Core holds is taken as the Cell reports it (running, created, progress, address),
  keeping what only Core knows (template, media, ``address/prefix``); it is no longer lost.
  A creation in flight across a Core restart is confirmed this way. A reset is not: a Cell's
  inventory cannot say one is under way (it shows the guest created and stopped), so a guest
  Core records resetting stays resetting, with its progress, unless the Cell reports it
  running; its ``SystemResetEvent`` ends it as usual, and one not heard of within
  :data:`~nanocore.operations.guests.events.RESET_SILENCE` is ended as failed
  (:meth:`GuestEvents.watch_reset`);
- a guest Core does not hold is adopted, with its address allocated if that address is free
  in the pool's address pool; one whose name is already taken in the pool is not adopted and
  the refusal is logged (nothing is dropped silently);
- a guest whose creation Core gave up (a pending error naming this Cell) is an orphan: it is
  not adopted, and Core asks the Cell to delete it;
- a record the Cell does not report is kept and shown as lost, never deleted, unless the Cell
  was asked to delete it and Core has not recorded that (no answer came, or the store could
  not save it): it is deleted now, as the client asked; or unless it was
  still being created and no creation request is in flight: that creation failed, and its
  record and address go, leaving a pending error the next ``GET`` tells. A lost guest recorded
  running is recorded stopped: no Cell runs it, and a record left running would refuse the
  delete that is the only thing left to do with it. One recorded resetting is recorded stopped
  too, with a pending error: no Cell is left to end its reset. The guests the Cell lacked are
  told to :meth:`GuestEvents.inventory_lacks`, so that deleting one asks no Cell;
- pending errors naming this Cell for guests it does not report are settled;
- a guest whose record is being changed right now (an event, a deletion) is left to that
  change: one unit deciding on what was committed before it would undo it. If the Cell
  reports it, it is found again once that change is done (lost no more, the rest as that
  change left it): the change may be the lost mark of the link before, which then landed after
  the inventory and left a guest lost on a Cell that runs it (QA pass 16).

Everything changes in one commit; claims and orphan deletions follow it.

An inventory that came *late* (the Cell answered its pool push after Core stopped waiting) is
older than what Core did since it asked: a creation given up meanwhile is missing from it, a
guest deleted meanwhile still in it. It only finds the guests Core shows lost on that Cell
(taken as reported); everything else above waits for the next inventory taken in time, or a
given-up creation's guest would be adopted by the one after (QA pass 13, N2).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from attrs import evolve
from twisted.logger import Logger
from twisted.python.failure import Failure

from nanocore.addresses import plain_address
from nanocore.cluster.cells import CellLiveness
from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.model import AddressAllocation, Instance, InstanceStatus, PendingError, StaleCopy
from nanocore.operations.base import named
from nanocore.operations.guests.common import GuestAccess
from nanocore.operations.guests.events import GuestEvents, settle
from nanocore.operations.guests.placement import ADDRESS, GUEST_NAME, Placement
from nanocore.operations.inventory import Reconciliation, read_inventory
from nanocore.store import Change, Delete, Insert, Put

log = Logger()

#: The pending error of a creation the Cell no longer holds after it came back.
LOST_WHILE_CREATING = "cell '{cell}' lost the guest while creating it"
#: The pending error of a reset whose guest the Cell no longer holds after it came back.
LOST_WHILE_RESETTING = "cell '{cell}' lost the guest while resetting its system"


def _copies_let_go(
    copies: Collection[StaleCopy],
    instances: Mapping[str, Instance],
    cell: str,
    reported: Collection[str],
) -> list[Change]:
    """The stale copies ``cell`` no longer holds, or holds as its own again (a guest moved
    back to it): nothing is left to tell it of them."""

    def its_own(guest: str) -> bool:
        instance = instances.get(guest)
        return instance is not None and instance.cell == cell

    return [
        # Two inventories of one Cell (its rejoin, the one after a failover to it) may both
        # let go of a copy: the second must not spoil its whole reconciliation (QA pass 19).
        Delete(StaleCopy, copy.key, missing_ok=True)
        for copy in copies
        if copy.cell == cell and (copy.guest not in reported or its_own(copy.guest))
    ]


def lacked(instance: Instance) -> Instance:
    """``instance`` as its Cell's inventory left it: lost, and neither running nor being
    reset anywhere."""
    ended = instance.running or _reset(instance)
    status = InstanceStatus.STOPPED if ended else instance.status
    return evolve(instance, lost=True, status=status)


def _reset(instance: Instance) -> bool:
    return instance.status is InstanceStatus.RESETTING


def _resetting(known: Instance, reported: Instance, cell: str) -> bool:
    """Whether ``cell`` reports ``known``'s reset as possibly still under way: a Cell's
    inventory shows a guest being reset as created and stopped, and never shows it running."""
    return known.cell == cell and _reset(known) and not known.migrating and not reported.running


class Reconciler:
    def __init__(
        self,
        access: GuestAccess,
        placement: Placement,
        events: GuestEvents,
        in_flight: Collection[str],
    ) -> None:
        self._access = access
        self._context = access.context
        self._placement = placement
        self._events = events
        self._in_flight = in_flight

    def reconcile(
        self, cell: str, pool: str, reply: Message, address: str, *, late: bool = False
    ) -> Reconciliation:
        """Raises :class:`~nanocore.operations.inventory.InventoryError` for an unusable report."""
        view = self._context.view
        inventory = read_inventory(
            reply, pool=pool, cell=cell, cell_address=address, known=view.instances
        )
        for reason in inventory.skipped:
            log.warn("{cell}: skipped {reason}", cell=cell, reason=reason)
        if late:
            return self._found(cell, inventory.instances)
        changes: list[Change] = []
        confirmed: list[str] = []
        released: list[str] = []
        # The released guests whose records this inventory changes (said in the log).
        missing: list[str] = []
        orphans: list[str] = []
        stale: list[str] = []
        resetting: list[str] = []
        # Reported guests being changed now: found again once that change is done.
        found_after: list[str] = []
        reported = {instance.id for instance in inventory.instances}
        busy = self._access.busy
        for instance in inventory.instances:
            known = view.instances.get(instance.id)
            if known is not None and _resetting(known, instance, cell):
                resetting.append(instance.id)
                instance = evolve(instance, status=known.status, progress=known.progress)
            if busy(instance.id):
                if known is not None and known.cell == cell:
                    found_after.append(instance.id)
                continue
            pending = view.pending_errors.get(instance.id)
            if known is not None and known.migrating:
                continue  # left to its migration
            if known is not None and self._elsewhere(known, cell):
                stale.append(instance.id)
            elif known is None and (cell, instance.id) in view.stale_copies:
                stale.append(instance.id)  # failed over away from this Cell, deleted since
            elif known is None and pending is not None and pending.cell == cell:
                orphans.append(instance.id)
            elif known is None:
                changes.extend(self._adopted(instance))
            else:
                changes.append(Put(instance))
                if known.status is InstanceStatus.CREATING and instance.created:
                    confirmed.append(instance.id)
                elif known.status is InstanceStatus.RESETTING and instance.running:
                    log.warn("{cell} runs {guest}, whose reset Core recorded: its end was not "
                             "heard", cell=cell, guest=instance.id)  # fmt: skip
        unfinished = self._access.unfinished_deletes
        deleted: list[Instance] = []
        for instance in view.instances_on_cell(cell).values():
            if instance.id in reported or busy(instance.id) or instance.migrating:
                continue
            if unfinished.get(instance.id) == cell:
                # Deleted as asked, unheard or unrecorded: finished, not shown lost.
                changes.extend(self._access.forgetting(instance))
                deleted.append(instance)
                continue
            released.append(instance.id)
            if instance.status is InstanceStatus.CREATING:
                if instance.id in self._in_flight:
                    released.pop()
                    continue
                message = LOST_WHILE_CREATING.format(cell=cell)
                changes.extend(self._access.forgetting(instance))
                changes.append(Put(PendingError(instance.id, message)))
                missing.append(instance.id)
            elif not instance.lost or instance.running or _reset(instance):
                changes.append(Put(lacked(instance)))
                missing.append(instance.id)
                if _reset(instance):
                    message = LOST_WHILE_RESETTING.format(cell=cell)
                    changes.append(Put(PendingError(instance.id, message)))
        for pending in view.pending_errors.values():
            if pending.cell == cell and pending.id not in reported and not busy(pending.id):
                changes.extend(settle(pending))
        changes.extend(_copies_let_go(view.stale_copies.values(), view.instances, cell, reported))

        def after() -> None:
            # What the inventory settled of the deletions not recorded: done (deleted with
            # it), or not done (the Cell holds the guest); a guest being changed waits.
            for guest, asked in list(unfinished.items()):
                instance = self._context.view.instances.get(guest)
                if asked == cell and (guest in reported or instance is None
                                      or instance.cell != cell):  # fmt: skip
                    del unfinished[guest]
            for instance in deleted:
                log.warn("{cell} deleted {guest} ({name}) as asked, which Core could not record "
                         "then: its record and addresses are deleted now", cell=cell,
                         guest=instance.id, name=instance.full_name)  # fmt: skip
                self._placement.release(instance.id)
            if missing:
                log.warn("{cell} came back: its inventory lacks {count} instance(s) of Core's "
                         "({guests}): kept and shown lost, or their creation failed",
                         cell=cell, count=len(missing), guests=named(missing))  # fmt: skip
            self._events.inventory_lacks(cell, released, said=missing)
            for guest in resetting:
                self._events.watch_reset(cell, guest)
            for guest in confirmed:
                self._placement.confirmed(guest)
            for guest in released:
                self._placement.release(guest)
            for guest in orphans:
                self._events.delete_orphan(cell, guest)
            if stale:
                self._detach_stale(cell, stale)
            for guest in found_after:
                self._find_again(cell, guest)

        return Reconciliation(tuple(changes), after)

    def _find_again(self, cell: str, guest: str) -> None:
        """``cell`` reported ``guest`` while it was being changed: once that change is done,
        it is lost no more if it is still ``cell``'s. (A disconnect since then marks it lost
        again after this: its mark takes its turn behind this one.)"""

        def found(instance: Instance | None) -> list[Change]:
            if instance is None or instance.cell != cell or not instance.lost:
                return []
            return [] if instance.migrating else [Put(evolve(instance, lost=False))]

        def failed(failure: Failure) -> None:
            log.warn("{cell}: {guest} not found again after its change: {reason}", cell=cell,
                     guest=guest, reason=failure.getErrorMessage())  # fmt: skip

        self._access.change(guest, found).addErrback(failed)

    def _found(self, cell: str, reported: Collection[Instance]) -> Reconciliation:
        """A late inventory's changes: the guests Core shows lost on ``cell`` that it reports,
        as reported (see the module's docstring)."""
        view, busy = self._context.view, self._access.busy
        changes: list[Change] = []
        found_after: list[str] = []
        for instance in reported:
            known = view.instances.get(instance.id)
            if known is None or known.cell != cell or known.migrating:
                continue
            if busy(instance.id):
                found_after.append(instance.id)
            elif known.lost and not _resetting(known, instance, cell):
                changes.append(Put(instance))

        def after() -> None:
            for guest in found_after:
                self._find_again(cell, guest)

        return Reconciliation(tuple(changes), after)

    def _elsewhere(self, known: Instance, cell: str) -> bool:
        """Core places the guest on another Cell that is linked and holds it (not lost): the
        reporting Cell's copy is stale, as a Cell back after its guests failed over has."""
        if known.cell == cell or known.lost:
            return False
        return self._access.cells.state(known.cell) in (
            CellLiveness.ALIVE, CellLiveness.CONNECTED, CellLiveness.LOST,
        )  # fmt: skip

    def _detach_stale(self, cell: str, guests: list[str]) -> None:
        """Ask ``cell`` to let go of its copies of guests now served by other Cells."""
        log.warn("{cell} holds {count} instance(s) now on other cells or deleted since they "
                 "left it ({guests}); detaching them there", cell=cell, count=len(guests),
                 guests=", ".join(guests))  # fmt: skip
        request = Message(
            id=MessageID.DetachInstanceRequest, string_array_params={ParamKey.Instance: guests}
        )

        def failed(failure: Failure) -> None:
            log.warn("{cell}: stale instances not detached: {reason}", cell=cell,
                     reason=failure.getErrorMessage())  # fmt: skip

        self._access.forward(cell, request).addErrback(failed)

    def _adopted(self, instance: Instance) -> list[Change]:
        view = self._context.view
        holder = view.instance_named(instance.pool, instance.group, instance.name)
        name = (instance.pool, instance.group, instance.name)
        if holder is None and self._context.claims.held(GUEST_NAME, name) is not None:
            holder = instance  # a creation in flight has the name
        if holder is not None:
            log.warn(
                "{cell} holds guest {guest} named {name}, a name {holder} has in pool {pool};"
                " not adopted",
                cell=instance.cell,
                guest=instance.id,
                name=instance.full_name,
                holder=holder.id,
                pool=instance.pool,
            )
            return []
        log.info("{cell}: adopting guest {guest} ({name}), unknown to Core",
                 cell=instance.cell, guest=instance.id, name=instance.full_name)  # fmt: skip
        changes: list[Change] = [Put(instance)]
        allocation = self._allocation(instance)
        if allocation is not None:
            changes.append(Insert(allocation))
        return changes

    def _allocation(self, instance: Instance) -> AddressAllocation | None:
        """The adopted guest's address, if it lies in the pool's ranges and nobody holds it."""
        assigned = instance.internal.assigned_address
        pool = self._context.view.compute_pools.get(instance.pool)
        if not assigned or pool is None or not pool.network:
            return None
        address = plain_address(assigned)
        view = self._context.view
        holder = view.allocations.get((pool.network, address))
        claim = self._context.claims.held(ADDRESS, (pool.network, address))
        if holder is None and claim is not None:
            holder = AddressAllocation(pool.network, address, address, claim.value)
        if holder is not None:
            if holder.instance != instance.id:
                log.warn(
                    "adopted guest {guest} reports address {address}, allocated to {holder};"
                    " left unallocated",
                    guest=instance.id,
                    address=address,
                    holder=holder.instance,
                )
            return None
        for item in view.address_ranges.values():
            if item.pool == pool.network and address in item:
                return AddressAllocation(pool.network, item.start, address, instance.id)
        return None
