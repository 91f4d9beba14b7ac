"""Cell membership and the Cell lifecycle on Core (api-reference §4.2, cell-protocol.md §6).

Membership is persisted (``ComputeCell`` in the store) only once the Cell has confirmed it: an
add pushes the pool's storage and network to the Cell and commits after ``ComputeCellReadyEvent``
arrives, holding a claim (:data:`CELL_JOINING`) meanwhile so that a second add of the same Cell
is refused.
A Cell that never answers leaves nothing behind.

The same object is the registry's :class:`~nanocore.cluster.cells.CellObserver`: connects,
reconnects and disconnects of Cells change state here, through the store, like an API call.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterator, Mapping
from typing import Any

from attrs import define, evolve, frozen
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nanocore.cluster.cells import (
    REJOIN_GRACE,
    STATUS_STALE_AFTER,
    CellDirectory,
    CellLiveness,
    CellObserver,
    CellStatus,
    CellUnavailable,
    CoreStopping,
    Deadlines,
)
from nanocore.cluster.message import Message, MessageID, ParamKey, message_name
from nanocore.cluster.transactions import CellError, TransactionTimeout
from nanocore.cluster.transport import LinkError
from nanocore.model import ComputeCell, ComputePool, DepartedCell, Instance, StaleCopy
from nanocore.operations.base import Context
from nanocore.operations.claims import ClaimKind, Turns
from nanocore.operations.errors import (
    UNSAVED_RETRY,
    InvalidRequest,
    OperationError,
    OperationTimeout,
    UnknownEntity,
)
from nanocore.operations.inventory import InventoryError, Reconcile, Reconciliation
from nanocore.operations.status import CellMonitor, Usage
from nanocore.ratelog import RateLimitedLog
from nanocore.store import Change, CommitFailed, Delete, Put, StoreClosed

#: What the add-cell wait says on timeout (api-reference §1.6).
ADD_TIMEOUT_MESSAGE = "wait cell ready timeout"
#: What a forwarded cell request says on timeout.
CELL_TIMEOUT_MESSAGE = "cell timeout"
#: What a Cell's ``success: false`` becomes (``{cell}``, ``{reason}`` = the Cell's error text).
REFUSED = "cell '{cell}': {reason}"
NOT_READY = "cell '{cell}' not ready: {reason}"


class CellRefused(OperationError):
    """The Cell answered ``success: false`` (its error text is in the message) or nonsense."""


#: A Cell (key) being added to a pool (value) until it is ready or the add fails.
CELL_JOINING: ClaimKind[str] = ClaimKind(
    "cell",
    lambda held: InvalidRequest(
        f"cell '{held.key}' already allocated (being added to pool '{held.value}')"
    ),
)
#: A Cell (key) leaving its pool (value) while its removal commits: no guest is placed on it.
CELL_LEAVING: ClaimKind[str] = ClaimKind("leaving cell")


class CellLeaving(InvalidRequest):
    """A guest was placed on (or is to move to) a Cell that is leaving, or left, its pool;
    the next try sees the pool without it."""

    def __init__(self, cell: str, pool: str) -> None:
        super().__init__(f"cell '{cell}' left pool '{pool}', retry")


@implementer(CellDirectory)
class NoLinks:
    """No fabric in this process: no Cell is ever connected."""

    def names(self) -> Iterator[str]:
        return iter(())

    def subscribe(self, observer: CellObserver) -> None:
        pass

    def state(self, name: str) -> CellLiveness | None:
        return None

    def address(self, name: str) -> str | None:
        return None

    def status(self, name: str) -> CellStatus | None:
        return None

    def generation(self) -> int:
        return 0

    def request(self, name: str, message: Message, **kw: Any) -> Deferred[Message]:
        return fail(CellUnavailable(f"cell {name!r} is not connected"))

    def send(self, name: str, message: Message) -> None:
        raise CellUnavailable(f"cell {name!r} is not connected")

    def expect_back(
        self,
        groups: Mapping[str, Collection[str]],
        within: float = REJOIN_GRACE,
        departed: Collection[str] = (),
    ) -> None:
        """No Cell links here, so none is ever presumed lost: a pool none of whose Cells is
        back waits (``RejoinWatch``)."""


@frozen
class CellView:
    """A Cell as the API shows it: persisted flags merged with what the link says now."""

    name: str
    address: str
    enabled: bool
    alive: bool
    pool: str = ""
    purge_pending: bool = False


@frozen
class StorageAttachment:
    """One storage device a Cell reports for its pool (``GetComputePoolCellRequest``)."""

    name: str
    attached: bool
    error: str = ""


@frozen
class CellStoragePaths:
    """Where a Cell keeps volumes (``QueryCellStorageRequest``)."""

    mode: str  #: "local" or "nfs"
    system: tuple[str, ...]
    data: tuple[str, ...]


CellDetail = tuple[CellView, tuple[StorageAttachment, ...]]


@define
class _Presence:
    """What Core has seen of a Cell's link since it started (never persisted)."""

    address: str
    connected_at: float


def _usage_of(report: CellStatus) -> Usage:
    read, write, receive, send = report.speed
    return Usage(
        cores=report.cores,
        cpu_usage=report.usage,
        memory=report.memory_total,
        memory_available=report.memory_available,
        disk=report.disk_total,
        disk_available=report.disk_free,
        read_speed=read,
        write_speed=write,
        receive_speed=receive,
        send_speed=send,
    )


def _reads_only(message_id: int) -> bool:
    """A request that changes nothing on the Cell: a late answer to it asks for nothing."""
    return message_name(message_id).startswith(("Get", "Query"))


@implementer(CellObserver, CellMonitor)
class CellOperations:
    """Pool membership, enable/disable/purge, live cell queries, and the Cell lifecycle."""

    log = Logger()

    def __init__(
        self,
        context: Context,
        cells: CellDirectory,
        timeout: float | None = None,
        *,
        reconcile: Reconcile,
        bound_for: Callable[[str], Collection[str]] = lambda cell: (),
    ) -> None:
        """``reconcile`` reads a Cell's inventory into changes of Core's guest records;
        ``bound_for(cell)`` names the guests placed on the Cell or moving to it whose records
        may not say so yet (creations, migrations), which a removal counts as Nano did."""
        self._context = context
        self._bound_for = bound_for
        #: Removals of one Cell run in turn: the second sees what the first committed.
        self._removals = Turns()
        self._cells = cells
        self._clock: IReactorTime = context.clock
        self._timeout = timeout
        self._reconcile = reconcile
        self._presence: dict[str, _Presence] = {}
        #: Cells whose inventory is taken after a late reply: whether another is asked for.
        self._refreshing: dict[str, bool] = {}
        self._arrivals = 0
        #: When a Cell that linked but has not reported stops counting as alive.
        self._unreported = Deadlines(self._clock)
        #: Cells whose inventory is to be taken again, what they said being unrecorded; said
        #: once a minute per Cell however long the disk stays full.
        self._resyncs: dict[str, IDelayedCall] = {}
        self._unrecorded = RateLimitedLog(self.log, self._clock)
        #: Each Cell's latest report and the figures read from it.
        self._usages: dict[str, tuple[CellStatus, Usage]] = {}

    # -- what a Cell looks like now -----------------------------------------------------------

    def alive(self, name: str) -> bool:
        """Linked and either reporting or just connected (the original sets Alive on connect)."""
        state = self._cells.state(name)
        if state is CellLiveness.ALIVE:
            return True
        if state is CellLiveness.CONNECTED:
            presence = self._presence.get(name)
            return (
                presence is not None
                and self._clock.seconds() - presence.connected_at < STATUS_STALE_AFTER
            )
        return False

    def generation(self) -> Hashable:
        """Changes whenever ``alive``, ``address`` or ``usage`` of any Cell may have."""
        return (self._cells.generation(), self._arrivals + self._unreported.passed())

    def usage(self, name: str) -> Usage | None:
        """The Cell's latest report, kept after it went silent or away (None before any);
        the same object while no new report came (status keeps what it derived from it)."""
        report = self._cells.status(name)
        if report is None:
            self._usages.pop(name, None)
            return None
        kept = self._usages.get(name)
        if kept is not None and kept[0] is report:
            return kept[1]
        usage = self._usages[name] = (report, _usage_of(report))
        return usage[1]

    def connected(self, name: str) -> bool:
        return self._cells.state(name) not in (None, CellLiveness.DISCONNECTED)

    def address(self, name: str) -> str:
        presence = self._presence.get(name)
        if presence is not None:
            return presence.address
        return self._cells.address(name) or ""

    def view(self, cell: ComputeCell) -> CellView:
        return CellView(
            name=cell.name,
            address=self.address(cell.name),
            enabled=cell.enabled,
            alive=self.alive(cell.name),
            pool=cell.pool,
            purge_pending=cell.purge_pending,
        )

    def expect_members_back(self) -> None:
        """Every Cell of a pool is to link again after Core started (``RejoinWatch``), but
        those that left with their goodbye: a Cell stopped on purpose may keep its guests
        running, and failing them over would run them twice."""
        view = self._context.view
        groups: dict[str, list[str]] = {}
        for cell in view.cells.values():
            if cell.pool:
                groups.setdefault(cell.pool, []).append(cell.name)
        self._cells.expect_back(groups, departed=view.departed_cells.keys())

    def members(self, pool: str) -> list[ComputeCell]:
        """The persisted cells of ``pool``, sorted by name."""
        return sorted(
            (cell for cell in self._context.view.cells.values() if cell.pool == pool),
            key=lambda cell: cell.name,
        )

    # -- queries ------------------------------------------------------------------------------

    def unallocated(self) -> list[CellView]:
        """Cells seen since start that belong to no pool (and are not being added to one)."""
        stored = self._context.view.cells
        names = {name for name, record in stored.items() if not record.pool}
        names.update(name for name in self._presence if name not in stored)
        names.update(name for name in self._cells.names() if name not in stored)
        names.difference_update(claim.key for claim in self._context.claims.live(CELL_JOINING))
        return [self.view(stored.get(name) or ComputeCell(name=name)) for name in sorted(names)]

    def notify(self, name: str, message: Message) -> None:
        """Fire-and-forget to a Cell if it is connected; one that is not re-syncs on rejoin."""
        try:
            self._cells.send(name, message)
        except LinkError as error:
            self.log.info(
                "{name} not told {id:#08x}: {error}", name=name, id=message.id, error=str(error)
            )

    def in_pool(self, pool: str) -> list[CellView]:
        self._pool(pool)
        return [self.view(cell) for cell in self.members(pool)]

    def get(self, pool: str, cell: str) -> Deferred[CellDetail]:
        """The cell, with its storage attach state asked live when it is alive and enabled."""
        try:
            record = self._member(pool, cell)
        except OperationError as error:
            return fail(error)
        view = self.view(record)
        if not (view.alive and view.enabled):
            return succeed((view, ()))
        asking = self._ask(
            cell,
            Message(id=MessageID.GetComputePoolCellRequest, string_params={ParamKey.Cell: cell}),
            CELL_TIMEOUT_MESSAGE,
        )

        def attachments(reply: Message) -> CellDetail:
            names = reply.string_array_params.get(ParamKey.Storage, ())
            errors = reply.string_array_params.get(ParamKey.Error, ())
            attached = reply.uint_array_params.get(ParamKey.Attach, ())
            if not (len(names) == len(errors) == len(attached)):
                raise CellRefused(f"cell '{cell}' sent a malformed storage report")
            return view, tuple(
                StorageAttachment(name, bool(flag), "" if flag else error)
                for name, error, flag in zip(names, errors, attached, strict=True)
            )

        return asking.addCallback(attachments)

    def storage_paths(self, pool: str, cell: str) -> Deferred[CellStoragePaths]:
        try:
            self._member(pool, cell)
            self._require_connected(cell)
        except OperationError as error:
            return fail(error)
        asking = self._ask(
            cell,
            Message(id=MessageID.QueryCellStorageRequest, string_params={ParamKey.Cell: cell}),
            CELL_TIMEOUT_MESSAGE,
        )

        def paths(reply: Message) -> CellStoragePaths:
            mode = reply.uint_params.get(ParamKey.Mode, 0)
            return CellStoragePaths(
                mode="nfs" if mode == 1 else "local",
                system=tuple(reply.string_array_params.get(ParamKey.System, ())),
                data=tuple(reply.string_array_params.get(ParamKey.Data, ())),
            )

        return asking.addCallback(paths)

    def change_storage_path(self, pool: str, cell: str, path: str) -> Deferred[None]:
        try:
            if not path:
                raise InvalidRequest("target path required")
            self._member(pool, cell)
            self._require_connected(cell)
        except OperationError as error:
            return fail(error)
        message = Message(
            id=MessageID.ModifyCellStorageRequest,
            string_params={ParamKey.Cell: cell, ParamKey.Path: path},
        )
        return self._ask(cell, message, CELL_TIMEOUT_MESSAGE).addCallback(lambda _: None)

    # -- membership ---------------------------------------------------------------------------

    def add(self, pool: str, cell: str) -> Deferred[None]:
        """Push the pool to the Cell, and record the membership only once the Cell is ready."""
        return Deferred.fromCoroutine(self._add(pool, cell))

    async def _add(self, pool: str, cell: str) -> None:
        target = self._pool(pool)
        record = self._context.view.cells.get(cell)
        if record is not None and record.pool == pool:
            raise InvalidRequest(f"cell '{cell}' already in pool '{pool}'")
        if record is not None and record.pool:
            raise InvalidRequest(f"cell '{cell}' already allocated")
        if record is None and not self._seen(cell):
            raise UnknownEntity(f"invalid cell '{cell}'")
        self._require_connected(cell)
        message = self.pool_ready_message(target)
        with self._context.claims.holding(CELL_JOINING, cell, pool):
            try:
                reply = await self._ask(cell, message, ADD_TIMEOUT_MESSAGE, NOT_READY)
            except OperationTimeout:
                self._tell_removed(cell)  # in case the Cell applies the push late
                raise
            try:
                reconciled = self._joining(pool, cell, message, reply)
                await self._context.commit(*reconciled.changes)
            except Exception:
                # The Cell applied the pool but Core will not record it: undo on the Cell.
                self._tell_removed(cell)
                raise
        reconciled.after()
        self.log.info("{cell} added to pool {pool}", cell=cell, pool=pool)

    def _joining(self, pool: str, cell: str, pushed: Message, reply: Message) -> Reconciliation:
        """The membership of ``cell`` in ``pool`` after its ready reply, re-validated, with
        what its inventory changes of Core's guest records."""
        if self.pool_ready_message(self._pool(pool)) != pushed:
            # Storage or network changed while the Cell applied the old ones.
            raise InvalidRequest(f"pool '{pool}' changed while adding cell '{cell}', retry")
        record = self._context.view.cells.get(cell) or ComputeCell(name=cell)
        if record.pool:
            raise InvalidRequest(f"cell '{cell}' already in pool '{record.pool}'")
        inventory = self._inventory(cell, pool, reply)
        return Reconciliation(
            (Put(evolve(record, pool=pool)), *inventory.changes), inventory.after
        )

    def _inventory(
        self, cell: str, pool: str, reply: Message, *, late: bool = False
    ) -> Reconciliation:
        try:
            return self._reconcile(cell, pool, reply, late=late)
        except InventoryError as error:
            raise CellRefused(f"cell '{cell}' sent an unusable inventory: {error}") from None

    def _tell_removed(self, cell: str) -> None:
        """Best effort: a Cell that is gone has nothing to undo."""
        self.notify(cell, Message(id=MessageID.ComputeCellRemovedEvent))

    def remove(self, pool: str, cell: str) -> Deferred[None]:
        """Refused while the cell still holds instances; the Cell is told after the commit."""
        return self._removals.run(cell, lambda: Deferred.fromCoroutine(self._remove(pool, cell)))

    async def _remove(self, pool: str, cell: str) -> None:
        self._member(pool, cell, changing=True)
        self._refuse_occupied(cell)
        # From the check to the commit no creation is placed on the Cell (placement asks).
        with self._context.claims.holding(CELL_LEAVING, cell, pool):
            try:
                view = self._context.view
                gone: list[Change] = [Delete(ComputeCell, cell)]
                if cell in view.departed_cells:
                    gone.append(Delete(DepartedCell, cell))
                gone.extend(Delete(StaleCopy, key) for key in view.stale_copies if key[0] == cell)
                await self._context.commit(*gone)
            except OperationError:
                # Guests committed on the Cell meanwhile (its inventory at a rejoin): Nano's
                # answer on what is committed now, not the store's.
                self._member(pool, cell, changing=True)
                self._refuse_occupied(cell)
                raise
        self._tell_removed(cell)

    def _refuse_occupied(self, cell: str) -> None:
        """Nano counted the Cell's instances and its pending creations (``Instances`` +
        ``Pending``); guests moving to it count too, as they will be there."""
        guests = set(self._context.view.instances_on_cell(cell))
        guests.update(self._bound_for(cell))
        if guests:
            raise InvalidRequest(
                f"{len(guests)} instance(s) left in cell '{cell}', "
                "migrate or delete all instance(s) before remove cell"
            )

    def modify(self, pool: str, cell: str, enable: bool, purge: bool = False) -> Deferred[None]:
        """Enable (cancelling a pending purge) or disable, optionally asking for a purge.

        A purge drops every instance of the Cell; it is sent the next time the Cell connects.
        """
        try:
            record = self._member(pool, cell, changing=True)
            if enable:
                if purge:
                    raise InvalidRequest("purge applies only when disabling a cell")
                if record.enabled and not record.purge_pending:
                    raise InvalidRequest(f"cell '{cell}' already enabled")
                changed = evolve(record, enabled=True, purge_pending=False)
            else:
                if not record.enabled and (record.purge_pending or not purge):
                    raise InvalidRequest(f"cell '{cell}' already disabled")
                purging = record.purge_pending or purge
                changed = evolve(record, enabled=False, purge_pending=purging)
        except OperationError as error:
            return fail(error)
        return self._context.commit(Put(changed))

    # -- the pool push ------------------------------------------------------------------------

    def pool_ready_message(self, pool: ComputePool) -> Message:
        """``ComputePoolReadyEvent`` with the pool's storage and network, ``Mode`` always set."""
        view = self._context.view
        strings: dict[int, str] = {
            ParamKey.Pool: pool.name,
            ParamKey.Storage: pool.storage,
            ParamKey.Network: pool.network,
            ParamKey.Mode: "",
        }
        arrays: dict[int, tuple[str, ...]] = {}
        if pool.storage:
            storage = view.storage_pools.get(pool.storage)
            if storage is None:
                raise InvalidRequest(f"invalid storage pool '{pool.storage}'")
            strings.update(
                {
                    ParamKey.Type: storage.type.value,
                    ParamKey.Host: storage.host,
                    ParamKey.Target: storage.target,
                }
            )
        if pool.network:
            network = view.address_pools.get(pool.network)
            if network is None:
                raise InvalidRequest(f"invalid address pool '{pool.network}'")
            strings[ParamKey.Gateway] = network.gateway
            strings[ParamKey.Mode] = network.provider.value
            arrays[ParamKey.Server] = network.dns
        return Message(
            id=MessageID.ComputePoolReadyEvent,
            string_params=strings,
            string_array_params=arrays,
        )

    # -- CellObserver -------------------------------------------------------------------------

    def cell_available(self, name: str, address: str) -> None:
        self._presence[name] = _Presence(address, self._clock.seconds())
        self._arrivals += 1
        self._unreported.add(self._clock.seconds() + STATUS_STALE_AFTER)
        if name in self._context.view.departed_cells:
            returning = self._context.commit(Delete(DepartedCell, name))
            returning.addErrback(self._logged, "forgetting its goodbye", name)
        record = self._context.view.cells.get(name)
        if record is None or not record.pool:
            self.log.info(
                "{name} connected from {address}, unallocated", name=name, address=address
            )
            return
        if record.purge_pending:
            Deferred.fromCoroutine(self._purge(record)).addErrback(self._logged, "purging", name)
        else:
            rejoining = Deferred.fromCoroutine(self._rejoin(record))
            rejoining.addErrback(self._logged, "rejoining its pool", name)

    def cell_status(self, name: str, status: CellStatus) -> None:
        """Usage stays in the registry; the aggregates read it from there."""

    def cell_event(self, name: str, message: Message) -> None:
        """Guest events belong to the guest operations (their own observer)."""

    def cell_answered_late(self, name: str, request: Message, reply: Message) -> None:
        """The Cell did what Core had stopped waiting for (a change of a guest's cores, name,
        secret...): its inventory is taken again, as at a rejoin, so Core's records follow
        what the Cell holds."""
        if not reply.success or _reads_only(request.id):
            return
        if request.id == MessageID.ComputePoolReadyEvent:
            self._late_inventory(name, request, reply)
            return
        if name not in self._refreshing:
            self.log.info("{name} answered {request} late: taking its inventory again",
                          name=name, request=message_name(request.id))  # fmt: skip
        self._inventory_again(name, "taking its inventory after a late reply")

    def resync(self, name: str, reason: str) -> None:
        """What the Cell said (an event, an inventory) could not be recorded: the store could
        not save, for ``reason``. Nothing would say it again while the Cell stays linked (QA
        pass 22: a guest started while data/ was full stayed stopped in Core's records, and
        could be neither stopped nor started), so its inventory is taken again in
        :data:`UNSAVED_RETRY` s, and after each such delay while the store still cannot save."""
        if name in self._resyncs or not self.connected(name):
            return  # a Cell that links again has its inventory taken then
        self._unrecorded.warn(
            "inventories taken again",
            name,
            "{source}: what it said could not be recorded ({reason}): its inventory is taken"
            " again in {after:g} s",
            reason=reason,
            after=UNSAVED_RETRY,
        )
        self._resyncs[name] = self._clock.callLater(UNSAVED_RETRY, self._resynced, name)

    def _resynced(self, name: str) -> None:
        del self._resyncs[name]
        self._inventory_again(name, "taking its inventory again")

    def _inventory_again(self, name: str, doing: str) -> None:
        """:meth:`refresh`, one at a time per Cell: asked meanwhile, once more after it."""
        if name in self._refreshing:
            self._refreshing[name] = True
            return
        self._refreshing[name] = False

        def done(_: object) -> None:
            if self._refreshing.pop(name, False):
                self._inventory_again(name, doing)

        refreshing = self.refresh(name)
        refreshing.addErrback(self._logged, doing, name)
        refreshing.addBoth(done)

    def _late_inventory(self, name: str, request: Message, reply: Message) -> None:
        """A pool push answered late carries the inventory a rejoin or a refresh waited for,
        while the Cell is in that pool (an add that timed out left it out). It is older than
        what Core did since it asked (creations given up, deletions), so it only finds the
        guests Core shows lost (else a linked Cell's guests stayed lost until its next link);
        the rest waits for the next inventory taken in time. It asks for nothing more, or a
        slow Cell would be asked again for as long as it is slow."""
        record = self._context.view.cells.get(name)
        pool = request.string_params.get(ParamKey.Pool, "")
        if record is None or not pool or record.pool != pool or record.purge_pending:
            return
        self.log.info("{name} answered its pool push late: taking that inventory", name=name)
        taking = self.take_inventory(name, pool, reply, late=True)
        taking.addErrback(self._logged, "taking its inventory from a late reply", name)

    def cell_disconnected(self, name: str, gracefully: bool) -> None:
        """Its guests are marked lost by the guest operations (each in its turn). A goodbye
        is kept: a Cell stopped on purpose is not expected back after Core's next start."""
        record = self._context.view.cells.get(name)
        if record is None or not record.pool:
            return
        if gracefully:
            self._keep_goodbye(name)
        pool = self._context.view.compute_pools.get(record.pool)
        count = len(self._context.view.instances_on_cell(name))
        if not gracefully and pool is not None and pool.failover:
            self.log.warn(
                "{name} lost without goodbye: its {count} instance(s) are marked lost, and "
                "failed over to other cells if its pool's storage is shared",
                name=name,
                count=count,
            )
        elif count:
            # Said wherever the pool, so that the log tells what the API shows.
            self.log.warn(
                "{name} {how}: its {count} instance(s) are shown lost until it is back",
                name=name,
                how="said goodbye" if gracefully else "lost without goodbye",
                count=count,
            )

    def _keep_goodbye(self, name: str) -> None:
        """Keep the Cell's goodbye in the store, so that the next start does not presume it
        lost; while the store cannot save, again every :data:`UNSAVED_RETRY` s as long as the
        Cell stays away (QA pass 22: a goodbye lost to a full disk became a failover at the
        next start, of guests a Cell stopped on purpose may keep running: twice on one disk)."""
        departing = self._context.commit(Put(DepartedCell(name)), essential=True)
        departing.addErrback(
            self._context.retry_unsaved,
            lambda: self._goodbye_again(name),
            "goodbyes kept again",
            name,
            "{source} said goodbye, which could not be recorded ({reason}): tried again in"
            " {after:g} s",
        )
        departing.addErrback(self._logged, "keeping its goodbye", name)

    def _goodbye_again(self, name: str) -> None:
        record = self._context.view.cells.get(name)
        if record is None or not record.pool or self.connected(name):
            return  # gone from Core's records, or back (which forgets a goodbye anyway)
        if name not in self._context.view.departed_cells:
            self._keep_goodbye(name)

    # -- lifecycle internals ------------------------------------------------------------------

    def refresh(self, name: str) -> Deferred[None]:
        """Take a linked Cell's inventory now, as when it rejoins (its pool pushed again):
        what another room left uncertain (a migration, a failover) ends as the Cell says.
        Nothing for a Cell that is not linked, in no pool, or about to be purged."""
        record = self._context.view.cells.get(name)
        linked = self._cells.state(name) in (CellLiveness.ALIVE, CellLiveness.CONNECTED)
        if record is None or not record.pool or record.purge_pending or not linked:
            return succeed(None)
        return Deferred.fromCoroutine(self._rejoin(record))

    async def _rejoin(self, record: ComputeCell) -> None:
        pool = self._context.view.compute_pools.get(record.pool)
        if pool is None:
            return
        reply = await self._ask(record.name, self.pool_ready_message(pool), ADD_TIMEOUT_MESSAGE)
        await self.take_inventory(record.name, record.pool, reply)

    def take_inventory(
        self, cell: str, pool: str, reply: Message, *, late: bool = False
    ) -> Deferred[None]:
        """Reconcile Core's guests on ``cell`` with what the Cell reported (``late``: in a
        reply that came after Core stopped waiting, so older than what Core did meanwhile)."""
        try:
            reconciled = self._inventory(cell, pool, reply, late=late)
        except OperationError as error:
            return fail(error)
        if not reconciled.changes:
            reconciled.after()
            return succeed(None)
        committing = self._context.commit(*reconciled.changes)
        return committing.addCallback(lambda _: reconciled.after())

    async def _purge(self, record: ComputeCell) -> None:
        message = Message(
            id=MessageID.DetachInstanceRequest,
            string_array_params={ParamKey.Instance: ()},
        )
        await self._ask(record.name, message, CELL_TIMEOUT_MESSAGE)
        view = self._context.view
        current = view.cells.get(record.name) or record
        changes: list[Change] = [
            Delete(Instance, key) for key in view.instances_on_cell(record.name)
        ]
        changes.append(Put(evolve(current, purge_pending=False)))
        await self._context.commit(*changes)
        self.log.info("{name} purged", name=record.name)

    # -- helpers ------------------------------------------------------------------------------

    def _pool(self, pool: str) -> ComputePool:
        found = self._context.view.compute_pools.get(pool)
        if found is None:
            raise UnknownEntity(f"invalid pool '{pool}'")
        return found

    def _member(self, pool: str, cell: str, *, changing: bool = False) -> ComputeCell:
        """``cell``'s record, refused in Core's words unless it is in ``pool``: the routes
        that change a membership (``changing``) look the pool up first and call a Cell never
        seen ``invalid compute cell``; the reads never look the pool up."""
        if changing:
            self._pool(pool)
        record = self._context.view.cells.get(cell)
        if record is None and not self._seen(cell):
            raise UnknownEntity(f"invalid {'compute cell' if changing else 'cell'} '{cell}'")
        if record is None or record.pool != pool:
            raise InvalidRequest(f"cell '{cell}' not in pool '{pool}'")
        return record

    def _seen(self, cell: str) -> bool:
        """Linked now, or being watched for: a Cell Core knows without a record."""
        return cell in self._presence or self._cells.state(cell) is not None

    def _require_connected(self, cell: str) -> None:
        if not self.connected(cell):
            raise InvalidRequest(f"cell '{cell}' is not connected")

    def _ask(
        self, cell: str, message: Message, timeout_message: str, refusal: str = REFUSED
    ) -> Deferred[Message]:
        """A request to the Cell; its failures become messages the client can read."""
        limit = {} if self._timeout is None else {"timeout": self._timeout}
        asking = self._cells.request(cell, message, **limit)

        def translate(failure: Failure) -> Failure:
            if failure.check(TransactionTimeout):
                return Failure(OperationTimeout(timeout_message))
            if failure.check(CellError):
                reason = str(failure.value) or "failed"
                return Failure(CellRefused(refusal.format(cell=cell, reason=reason)))
            if failure.check(LinkError):
                return Failure(InvalidRequest(f"cell '{cell}' is not connected"))
            return failure

        return asking.addErrback(translate)

    def _logged(self, failure: Failure, doing: str, name: str) -> None:
        if failure.check(CommitFailed) and self.connected(name):
            self.resync(name, failure.getErrorMessage())
        elif failure.check(StoreClosed, CoreStopping):  # Core stops: the next start asks again
            self.log.info("{name}: {doing} not done: nanocore is stopping", name=name, doing=doing)
        elif failure.check(OperationError):
            self.log.warn(
                "{name}: {doing} failed: {reason}",
                name=name,
                doing=doing,
                reason=failure.value.message,  # type: ignore[union-attr]
            )
        else:
            self.log.failure("{name}: {doing} failed", failure, name=name, doing=doing)


__all__ = [
    "ADD_TIMEOUT_MESSAGE",
    "CELL_LEAVING",
    "CELL_TIMEOUT_MESSAGE",
    "CellLeaving",
    "CellOperations",
    "CellRefused",
    "CellStoragePaths",
    "CellView",
    "StorageAttachment",
]
