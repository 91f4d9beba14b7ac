"""Failover: the guests of a Cell of a failover pool on shared (NFS) storage, lost without a
goodbye, re-placed on the pool's other Cells (§4.12, §5.7). This module decides where the
guests go and when to try again; the moves themselves (records, claims, the target's event, a
failed move's undoing) are those of :class:`~nanocore.operations.migrations.Migrations`.

When a Cell of such a pool disconnects without a goodbye, each of its guests is placed on
another Cell of the pool by the scheduler (cores and memory, claimed as a creation's share) and
the plan is one record per target Cell (kind ``failover``), each with the guests sent there;
the target is asked to attach them at once (``AttachInstanceRequest`` with Immediate) and its
``InstanceMigratedEvent`` moves them. The guests that no Cell can take stay lost on the lost
Cell and are one more record, with no target and the scheduler's reason for each guest in its
error (and a log line per reason). A target that refuses or does not answer within the domain
timeout fails its record: its guests are shown lost (never migrating forever) and its claims
end. Each attach carries a token (Nano's carried none), which a Cell's refusal names, so a
refusal fails the record it answers; a stock Cell attaches a batch whole or not at all, so a
batch refused by a linked target is planned again one guest per record (one guest whose
volumes are gone fails only itself). The lost Cell is disabled; when it comes back, its copies
of guests now on other Cells are detached from it (reconciliation), and the guests no Cell
could take are its own again; if it comes back while its failover is in flight (its rejoin
leaves those guests alone), it is reconciled again once the failover ended. A target lost
itself during the failover (Cells failing together) leaves its guests to be planned again
among the others (at once, :data:`FAILOVER_REPLANS` times). Guests no Cell could take
(stranded) wait, lost, and are planned again whenever a Cell of the pool reports (at most every
:data:`STRANDED_RETRY` seconds, quietly: what still finds no Cell was said and recorded the
first time) until a Cell has room, their own Cell reports them, or they are deleted: the
pool's other Cells may be dialing again (after a stall of Core longer than their own timeout),
full, or disabled. Their own Cell, back without them (its host lost them), is one more place
for them once enabled; an inventory of a Cell of a failover pool that lacks lost guests strands
them the same way (also after a restart of Core). A Cell that died while Core was down is
presumed lost by the registry after a start (``RejoinWatch``) and takes the same path.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from attrs import evolve
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from nanocore.cluster.cells import CellDirectory, CellStatus
from nanocore.cluster.message import Message, ParamKey
from nanocore.cluster.transactions import CellError, TransactionTimeout
from nanocore.cluster.transport import LinkError
from nanocore.model import ComputePool, Instance, InstanceStatus, Migration, MigrationKind, clipped
from nanocore.operations.base import Context, named
from nanocore.operations.cells import CellLeaving
from nanocore.operations.claims import ClaimHeld
from nanocore.operations.guests.common import MIGRATING, GuestAccess
from nanocore.operations.guests.placement import NoCellAvailable, Placement, move_key
from nanocore.operations.moves import Transit, attach_at_once, refused_attach
from nanocore.scheduler import Demand
from nanocore.store import Change, Insert, Put

if TYPE_CHECKING:
    from nanocore.operations.migrations import Migrations

#: How many times the guests of one lost Cell are planned again at once after a target was
#: lost too (Cells failing together), until that Cell links again; then they wait as stranded.
FAILOVER_REPLANS = 3
#: Guests no Cell could take (stranded) are planned again when a Cell of their pool reports,
#: at most once in this many seconds per lost Cell, for as long as they are lost.
STRANDED_RETRY = 5.0


class Failover:
    """Plans and sends the failovers of lost Cells; ``moves`` carries them out and hears the
    registry for both (it calls the ``cell_*`` methods here, and :meth:`ended`)."""

    log = Logger()

    def __init__(
        self,
        moves: Migrations,
        access: GuestAccess,
        placement: Placement,
        timeout: float,
        new_id: Callable[[], str],
    ) -> None:
        self._moves = moves
        self._access = access
        self._context: Context = access.context
        self._cells: CellDirectory = access.cells
        self._placement = placement
        self._timeout = timeout
        self._new_id = new_id
        self._planning: dict[str, list[Deferred[list[str]]]] = {}
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
        #: Cells lost without a goodbye, until they link again.
        self._lost: set[str] = set()
        self._strand_recorded()

    def planned(self, cell: str) -> Deferred[list[str]]:
        """Fires with the ids of the records of the next failover of ``cell`` once its plan is
        committed and its attach requests are sent (none: nothing to re-place)."""
        waiting: Deferred[list[str]] = Deferred()
        self._planning.setdefault(cell, []).append(waiting)
        return waiting

    # -- planning -----------------------------------------------------------------------------

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

        # A plan the store could not record was not sent: planned again while the Cell is away.
        failing.addErrback(
            self._context.retry_unsaved,
            lambda: self._plan_unsaved(lost, only, stranded, singly),
            "failovers planned again",
            lost,
            "failover of {source} not recorded ({reason}): planned again in {after:g} s",
        )
        failing.addErrback(self._moves.logged, f"failover of {lost}")

        def planned(records: list[str] | None) -> None:
            for waiting in self._planning.pop(lost, []):
                waiting.callback(records or [])

        failing.addCallback(planned)

    def _plan_unsaved(
        self, lost: str, only: Collection[str] | None, stranded: bool, singly: bool
    ) -> None:
        """:meth:`_plan` once more, if ``lost`` is still away and its pool still fails over."""
        pool = self._failover_pool(lost)
        if pool is not None and not self._moves.linked(lost):
            self._plan(lost, pool, only, stranded=stranded, singly=singly)

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
        plan: dict[str, Transit] = {}
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
                transit = plan[key] = Transit(record, [], [])
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
            await self._moves.in_turn(moving, lambda: self._context.commit(*decide()))
        except Exception:
            for transit in plan.values():
                self._moves.release(transit, capacity=True)
            raise
        if plan:
            under_way = self._failing_over.setdefault(lost, set())
            under_way.update(transit.record.id for transit in plan.values())
        for transit in plan.values():
            self._moves.running[transit.record.id] = transit
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

    def ended(self, record: Migration) -> None:
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
        if self._moves.linked(record.source_cell):
            self._moves.reconcile(record.source_cell, "back after failover")

    def moved_by_hand_failed(self, record: Migration) -> None:
        """A migration by hand failed while its source was lost without a goodbye: its
        guests, left out of the source's failover (a migration fails on its own), fail over
        now (QA pass 25: they stayed lost on a dead Cell until it came back)."""
        source = record.source_cell
        pool = self._failover_pool(source)
        if pool is None or source not in self._lost or self._moves.linked(source):
            return
        instances = self._context.view.instances
        left = [
            guest
            for guest in record.instances
            if (instance := instances.get(guest)) is not None
            and instance.cell == source
            and not instance.migrating
        ]
        if left:
            self.log.info("failover of {cell}: migration {id} failed, failing its {count} "
                          "instance(s) over too", cell=source, id=record.id,
                          count=len(left))  # fmt: skip
            self._plan(source, pool, left)

    def _attach(self, transit: Transit) -> None:
        """Ask the target to take the guests at once. The request carries a token (Nano's
        carried none), which a stock Cell's refusal names, so a refusal fails this plan
        alone; the target's ``InstanceMigratedEvent`` (no token) ends the wait instead."""
        record = transit.record
        if not self._moves.linked(record.target_cell):
            reason = f"attach instance fail: cell '{record.target_cell}' is not connected"
            self._failover_failed(transit, reason)
            return
        attaching = transit.attaching = self._cells.request(
            record.target_cell,
            attach_at_once(record.source_cell, record.instances),
            timeout=self._timeout,
            is_reply=refused_attach,
        )
        attaching.addErrback(self._attach_failed, transit)
        attaching.addErrback(self._moves.logged, f"failover {record.id}")

    def _attach_failed(self, failure: Failure, transit: Transit) -> Failure | None:
        target = transit.record.target_cell
        if failure.check(CancelledError, LinkError):
            # Taken (its event ended the wait); or the link is gone, which the target's
            # disconnect handles once every observer (the placement too) has heard of it.
            return None
        if failure.check(TransactionTimeout):
            self._moves.undo(target, transit.record.instances)
            self._failover_failed(transit, f"attach instance timeout on cell '{target}'")
        elif failure.check(CellError):
            self._failover_failed(transit, f"attach instance fail: {failure.value}", refused=True)
        else:
            return failure
        return None

    def _failover_failed(self, transit: Transit, reason: str, *, refused: bool = False) -> None:
        if self._moves.running.get(transit.record.id) is not transit:
            return
        del self._moves.running[transit.record.id]
        cancelling = Deferred.fromCoroutine(self._moves.cancel(transit, reason, lost=True))
        refusal = reason if refused else ""
        cancelling.addCallback(lambda _: self._plan_again(transit.record, refusal))
        cancelling.addErrback(self._moves.logged, f"failover {transit.record.id}")

    def _plan_again(self, failed: Migration, refusal: str = "") -> None:
        """A target that is itself gone leaves its guests to the pool's other Cells: planned
        again while their own Cell is still away, at most :data:`FAILOVER_REPLANS` times
        until it links again. A linked target that refused several guests at once (its
        ``refusal``) is asked for each alone; what it refuses alone, or leaves unanswered, is
        final."""
        source, target = failed.source_cell, failed.target_cell
        pool = None if self._moves.linked(source) else self._failover_pool(source)
        if self._moves.linked(target):
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

    # -- from the registry, through the moves ------------------------------------------------

    def cell_available(self, name: str, address: str) -> None:
        self._replans.pop(name, None)
        self._lost.discard(name)

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
        if record is None or not record.enabled or not self._moves.linked(reporting):
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
            if self._moves.linked(lost):
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
        for transit in list(self._moves.running.values()):
            sent = transit.record
            if sent.kind is MigrationKind.FAILOVER and sent.target_cell == name:
                self._failover_failed(transit, f"attach instance fail: cell '{name}' disconnected")
        if gracefully:
            return
        self._lost.add(name)
        pool = self._failover_pool(name)
        if pool is not None:
            self._plan(name, pool)

    def _failover_pool(self, cell: str) -> ComputePool | None:
        """The Cell's pool when it fails over (failover on, shared storage), else None."""
        record = self._context.view.cells.get(cell)
        pool = self._context.view.compute_pools.get(record.pool) if record else None
        return pool if pool is not None and pool.failover and pool.storage else None

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

    def migrated(self, cell: str, message: Message) -> bool:
        """A target's ``InstanceMigratedEvent`` for a failover: whether one waited for it."""
        source = message.string_params.get(ParamKey.Cell, "")
        reported = set(message.string_array_params.get(ParamKey.Instance, ()))
        candidates = [
            transit
            for transit in self._moves.running.values()
            if (transit.record.kind, transit.record.source_cell, transit.record.target_cell)
            == (MigrationKind.FAILOVER, source, cell)
        ]
        if not candidates:
            return False
        # Two plans may send guests of one Cell to the same target (a stranded guest placed
        # while an earlier one is in flight): the event names its guests.
        transit = max(candidates, key=lambda t: len(reported.intersection(t.record.instances)))
        self._moves.running.pop(transit.record.id)
        transit.stop_waiting()
        arriving = Deferred.fromCoroutine(self._moves.arrive(transit, cell, message))
        arriving.addErrback(self._moves.logged, f"failover {transit.record.id}")
        return True
