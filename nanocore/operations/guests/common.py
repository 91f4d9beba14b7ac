"""What every guest operation shares: finding the instance, asking its Cell, changing its record.

The routes of this issue and those that build on them (instance lists, modify, media,
snapshots, firewall, migration) use the same three steps:

- :meth:`GuestAccess.instance`: Core's record, or ``invalid instance '<id>'``;
- :meth:`GuestAccess.forward` (and :meth:`GuestAccess.ask`, which finds the guest first): a
  request to a Cell, its failures turned into what the client
  reads (the Cell's own error text verbatim, as Core relayed it; ``cell timeout``; the Cell
  not connected);
- :meth:`GuestAccess.change`: read one instance, decide, commit, serialised per instance, so
  that a Cell event and an API call that change the same guest never overwrite each other's
  change with what they read before it.

And the refusals they share: :meth:`GuestAccess.refuse_capturing`, for what would change the
disk or power state of a guest whose system disk its Cell is copying into a disk image;
:meth:`GuestAccess.refuse_migrating` and :meth:`GuestAccess.refuse_starting`, for a start, a
deletion or a migration of a guest that another of them has been decided on and not yet
recorded (each is checked on the record, which changes only once the Cell has acted).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from nanocore.cluster.cells import CellDirectory, CellLiveness, CoreStopping
from nanocore.cluster.message import Message
from nanocore.cluster.transactions import CellError, TransactionTimeout
from nanocore.cluster.transport import LinkError
from nanocore.model import AddressAllocation, Instance, InstanceStatus
from nanocore.operations.base import Context
from nanocore.operations.cells import CELL_TIMEOUT_MESSAGE, CellRefused
from nanocore.operations.claims import Claim, ClaimKind, Turns
from nanocore.operations.errors import (
    InvalidRequest,
    OperationError,
    OperationTimeout,
    UnknownEntity,
)
from nanocore.operations.guests.clones import Clones
from nanocore.operations.images import IMAGE_CAPTURE
from nanocore.store import Change, CommitFailed, Delete

T = TypeVar("T")

#: What a guest's decision returns: the changes to commit (none: nothing to do).
Decide = Callable[[Instance | None], Sequence[Change]]


def _in_migration(held: Claim[str]) -> OperationError:
    return InvalidRequest(f"instance '{held.key}'('{held.value}') already in migrating")


#: A guest in a migration (value: its stored name), from the check to the record's end.
MIGRATING: ClaimKind[str] = ClaimKind("migration of instance", _in_migration)


def _being_started(held: Claim[float | None]) -> OperationError:
    return InvalidRequest(f"instance '{held.key}' is being started, retry")


#: A guest whose start Core sent, until its record shows it running. Value: None until the
#: Cell answers, then the time until which its ``GuestStartedEvent`` is awaited. A migration
#: decided in that window read "stopped" and moved a guest that was booting (a stock Cell
#: force-stops a running guest to detach it; QA pass 25).
STARTING: ClaimKind[float | None] = ClaimKind("start of instance", _being_started)
#: Seconds a started guest's ``GuestStartedEvent`` is awaited after its Cell's answer (the
#: Cell sends it right after; a lost one leaves the guest "being started" no longer).
STARTED_EVENT_WAIT = 10.0


def not_connected(cell: str) -> InvalidRequest:
    return InvalidRequest(f"cell '{cell}' is not connected")


class GuestAccess:
    """The instance lookup, the Cell request and the serialised change of one guest."""

    def __init__(
        self,
        context: Context,
        cells: CellDirectory,
        timeout: float | None,
        resync: Callable[[str, str], None] = lambda cell, reason: None,
    ) -> None:
        """``resync(cell, reason)``: what ``cell`` did or said could not be recorded (the
        store could not save, for ``reason``): its inventory is to be taken again."""
        self.context = context
        self.cells = cells
        self.resync = resync
        self._timeout = timeout
        self._turns = Turns()
        #: For each Cell linked now whose inventory Core has read since it linked: the guests
        #: of Core's records that inventory lacked (kept by ``GuestEvents``). A lost guest of a
        #: Cell not in here may still be on it (the Cell is away, or has not told it yet).
        self.lacking: dict[str, frozenset[str]] = {}
        #: Guests whose Cell was asked to delete them and whose deletion Core has not
        #: recorded: the Cell gave no answer (timeout, link lost), or it did and the store
        #: could not save (a full disk). Guest -> that Cell. Its next inventory says whether
        #: it did, and a guest it lacks is then deleted, not shown lost (``Reconciler``).
        self.unfinished_deletes: dict[str, str] = {}
        #: The disk images guests' system disks are being written from (not to be deleted).
        self.clones = Clones(lambda: context.view.instances)

    def linked(self, cell: str) -> bool:
        """Whether ``cell`` has a link now (a request to it can be sent)."""
        return self.cells.state(cell) in (CellLiveness.ALIVE, CellLiveness.CONNECTED)

    def recorded_after_cell(self, cell: str, committing: Deferred[None]) -> Deferred[None]:
        """The record of a change ``cell`` has made already. If the store cannot save it, the
        change is done all the same: the Cell's inventory, taken again once the store can,
        makes what the Cell holds Core's record (QA pass 23: a guest resized, renamed or
        deleted while the disk was full stayed as it was in Core's records), and the client
        is told it is done (QA pass 24: told 503, it retried, and the Cell refused the retry,
        `no need to change`)."""

        def unsaved(failure: Failure) -> None:
            failure.trap(CommitFailed)
            self.resync(cell, failure.getErrorMessage())

        return committing.addErrback(unsaved)

    def instance(self, instance_id: str) -> Instance:
        found = self.context.view.instances.get(instance_id)
        if found is None:
            raise UnknownEntity(f"invalid instance '{instance_id}'")
        return found

    def came_back_without(self, instance: Instance) -> bool:
        """Whether ``instance`` is lost because its Cell came back and does not hold it (not
        merely because the Cell is away): nothing is left on any Cell to ask about it."""
        return instance.lost and instance.id in self.lacking.get(instance.cell, ())

    def refuse_lost(self, instance: Instance) -> None:
        """Refuse what would ask the Cell of a guest it came back without: it would only
        answer ``invalid instance`` (or ``invalid guest``) of a guest the lists show."""
        if self.came_back_without(instance):
            raise InvalidRequest(
                f"instance '{instance.id}' is lost: cell '{instance.cell}' came back without it"
            )

    def capture_of(self, instance_id: str) -> str | None:
        """The disk image being captured from the guest's system disk now, if any."""
        for claim in self.context.claims.live_in(IMAGE_CAPTURE, instance_id):
            _, image_id = cast(tuple[object, str], claim.key)
            return image_id
        return None

    def refuse_capturing(self, instance_id: str) -> None:
        """Refuse what would change the guest's disk or power state while its Cell copies its
        system disk (the image would be torn); Nano checked only when the capture began."""
        image = self.capture_of(instance_id)
        if image is not None:
            raise InvalidRequest(
                f"guest '{instance_id}' is being captured to disk image '{image}'"
            )

    def refuse_migrating(self, instance: Instance) -> None:
        """A guest between two Cells, or that a migration has claimed before recording it, is
        neither started nor deleted (the original did both)."""
        if instance.migrating or self.context.claims.held(MIGRATING, instance.id) is not None:
            raise InvalidRequest(f"instance '{instance.id}' is migrating")

    def refuse_starting(self, instance_id: str, refusal: str | None = None) -> None:
        """Refuse what would move or start a guest whose start was sent and whose record does
        not show it running yet (``refusal``: the words, by default "is being started")."""
        claims = self.context.claims
        held = claims.held(STARTING, instance_id)
        if held is None:
            return
        if held.value is not None and self.context.clock.seconds() >= held.value:
            claims.release(held)  # its event never came: the record is all there is
            return
        raise _being_started(held) if refusal is None else InvalidRequest(refusal)

    def forward_start(self, instance: Instance, message: Message) -> Deferred[None]:
        """Ask the guest's Cell to start it, holding :data:`STARTING` until its record shows
        it running (:meth:`started`) or :data:`STARTED_EVENT_WAIT` after a successful answer;
        a refusal releases it at once."""
        claims, clock = self.context.claims, self.context.clock
        asking = claims.take(STARTING, instance.id, None)

        def answered(_: Message) -> None:
            claims.release(asking)
            recorded = self.context.view.instances.get(instance.id)
            if recorded is not None and not recorded.running:
                claims.take(STARTING, instance.id, clock.seconds() + STARTED_EVENT_WAIT)

        def refused(failure: Failure) -> Failure:
            claims.release(asking)
            return failure

        return self.forward_for(instance, message).addCallbacks(answered, refused)

    def started(self, instance_id: str) -> None:
        """The guest's record shows it running: nothing of its start is awaited any more."""
        held = self.context.claims.held(STARTING, instance_id)
        if held is not None:
            self.context.claims.release(held)

    def refuse_resetting(self, instance: Instance) -> None:
        """Refuse what would change the guest's disks while its Cell writes its system disk
        again (a resize or snapshot of a disk being rewritten); the original asked the Cell."""
        if instance.status is InstanceStatus.RESETTING:
            raise InvalidRequest(f"guest '{instance.id}' is resetting its system, retry after it")

    def forward(
        self,
        cell: str,
        message: Message,
        *,
        on_progress: Callable[[Message], None] | None = None,
        **transaction: Any,
    ) -> Deferred[Message]:
        """Ask ``cell``; a refusal carries the Cell's error text as Core relayed it.

        ``transaction``: more options of the request (``is_reply``, ``restart_on_progress``).
        """
        options: dict[str, Any] = {} if self._timeout is None else {"timeout": self._timeout}
        options.update(transaction)
        if on_progress is not None:
            options["on_progress"] = on_progress
        asking = self.cells.request(cell, message, **options)

        def translate(failure: Failure) -> Failure:
            if failure.check(TransactionTimeout):
                return Failure(OperationTimeout(CELL_TIMEOUT_MESSAGE))
            if failure.check(CellError):
                return Failure(CellRefused(str(failure.value) or f"cell '{cell}' refused"))
            if failure.check(CoreStopping):
                return failure  # not the Cell's doing (see operations.errors.UNAVAILABLE)
            if failure.check(LinkError):
                return Failure(not_connected(cell))
            return failure

        return asking.addErrback(translate)

    def forward_for(
        self, instance: Instance, message: Message, **options: Any
    ) -> Deferred[Message]:
        """Ask the Cell of ``instance`` (as :meth:`forward`), unless it came back without
        it: every request about one guest goes through here, so none can reach a Cell that
        would only answer ``invalid guest`` (QA passes 16 and 18 found those that did)."""
        try:
            self.refuse_lost(instance)
        except OperationError as error:
            return fail(error)
        return self.forward(instance.cell, message, **options)

    def ask(
        self, instance_id: str, message: Callable[[Instance], Message]
    ) -> Deferred[tuple[Instance, Message]]:
        """Find the guest and send its Cell ``message(record)``: the record and the reply."""
        try:
            instance = self.instance(instance_id)
        except OperationError as error:
            return fail(error)
        asking = self.forward_for(instance, message(instance))
        return asking.addCallback(lambda reply: (instance, reply))

    def serially(self, instance_id: str, work: Callable[[], Deferred[T]]) -> Deferred[T]:
        """Run ``work`` after every earlier piece of work on the same instance has ended."""
        return self._turns.run(instance_id, work)

    def busy(self, instance_id: str) -> bool:
        """Whether a change of the instance is under way (a unit deciding on the committed
        view now would overwrite what it commits)."""
        return self._turns.busy(instance_id)

    def change(
        self, instance_id: str, decide: Decide, *, essential: bool = False
    ) -> Deferred[None]:
        """Read the instance (None if gone), decide the changes, commit them, in turn
        (``essential``: as :meth:`~nanocore.operations.base.Context.commit` says)."""
        return self.serially(
            instance_id, lambda: _committed(self.context, decide, instance_id, essential)
        )

    def allocations(self, instance: Instance) -> list[AddressAllocation]:
        """The addresses allocated to ``instance`` (imported ones included)."""
        view = self.context.view
        pool = view.compute_pools.get(instance.pool)
        found = []
        for network in (instance.internal, instance.external):
            if network.assigned_address and pool is not None and pool.network:
                key = (pool.network, network.assigned_address.partition("/")[0])
                allocation = view.allocations.get(key)
                if allocation is not None and allocation.instance == instance.id:
                    found.append(allocation)
        return found

    def forgetting(self, instance: Instance) -> list[Change]:
        """The changes that remove ``instance`` and release its addresses, in one unit."""
        changes: list[Change] = [
            Delete(AddressAllocation, a.key) for a in self.allocations(instance)
        ]
        changes.append(Delete(Instance, instance.id))
        return changes


def _committed(
    context: Context, decide: Decide, instance_id: str, essential: bool
) -> Deferred[None]:
    changes = decide(context.view.instances.get(instance_id))
    return context.commit(*changes, essential=essential) if changes else succeed(None)
