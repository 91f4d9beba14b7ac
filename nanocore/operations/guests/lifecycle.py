"""The guest family of operations: create, get, delete, start and stop (§4.6-4.7), and the
rooms of the other guest routes (lists and searches, runtime status, resets).

Start, stop and delete are checked against Core's record and forwarded to the guest's Cell.
Core's record of running changes only on the Cell's ``GuestStartedEvent`` and
``GuestStoppedEvent`` (observed-with-cells, "two views of running"). Deleting is the one
change made on the Cell's answer: once the Cell says the guest is deleted, its record and
addresses go in one commit before the client is answered, so a deleted guest is never listed
again (the original waited for ``GuestDeletedEvent``, which then finds nothing to do).

A guest its Cell came back without (lost, and missing from the inventory the Cell told since it
linked again) is on no Cell: deleting it forgets it, asking no Cell, whatever its record says,
and starting or stopping it is refused with that reason rather than relayed to the Cell.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from attrs import evolve
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from nanocore.cluster.cells import CellDirectory
from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.durations import Durations
from nanocore.model import Instance, InstanceStatus, PendingError
from nanocore.operations.base import Context
from nanocore.operations.cells import CellRefused
from nanocore.operations.errors import InvalidRequest, OperationError, UnknownEntity
from nanocore.operations.guests.common import GuestAccess, not_connected
from nanocore.operations.guests.create import Created, Creations, GuestSpec
from nanocore.operations.guests.events import GuestEvents
from nanocore.operations.guests.listing import GuestListing
from nanocore.operations.guests.placement import Placement
from nanocore.operations.guests.reconcile import Reconciler
from nanocore.operations.guests.reset import Resets
from nanocore.operations.guests.runtime import Runtime
from nanocore.operations.imagesite import ImageSiteLocator, media_site, no_image_site
from nanocore.operations.inventory import Reconciliation
from nanocore.scheduler import Scheduler
from nanocore.store import Change, Delete, Put

log = Logger()

#: ``Option`` of ``StartInstanceRequest``: boot as configured, or from a media image.
BOOT_DISK, BOOT_MEDIA = 0, 1


class GuestOperations:
    """Every guest route of this issue; ``events`` is the registry's observer for guests."""

    def __init__(
        self,
        context: Context,
        cells: CellDirectory,
        timeout: float | None = None,
        *,
        scheduler: Scheduler | None = None,
        image_site: ImageSiteLocator = no_image_site,
        randbelow: Callable[[int], int] | None = None,
        decision_times: Durations | None = None,
        resync: Callable[[str, str], None] = lambda cell, reason: None,
    ) -> None:
        """``resync(cell, reason)``: what a Cell said could not be recorded (the store could
        not save, for ``reason``): its inventory is to be taken again (``CellOperations``)."""
        self.access = GuestAccess(context, cells, timeout, resync)
        self._context = context
        self._cells = cells
        self._image_site = image_site
        self.placement = Placement(
            context,
            cells,
            scheduler if scheduler is not None else Scheduler(),
            randbelow if randbelow is not None else random.SystemRandom().randrange,
            decision_times=decision_times,
        )
        self.events = GuestEvents(self.access, self.placement)
        self.creations = Creations(
            self.access,
            self.placement,
            image_site,
            on_created=self.events.created,
            on_progress=self._progress,
        )
        self._reconciler = Reconciler(
            self.access, self.placement, self.events, self.creations.in_flight
        )
        #: The instance status lists and the guest searches.
        self.listing = GuestListing(context, cells)
        #: ``GET /instances/:id``, asked of the guest's Cell.
        self.runtime = Runtime(self.access)
        #: System and monitor secret resets.
        self.resets = Resets(self.access, image_site, watch=self.events.watch_reset)
        self.placement.rebuild()

    def _progress(self, cell: str, message: Message) -> None:
        """An event addressed to a creation still waiting for its answer."""
        self.events.cell_event(cell, message)

    # -- create / get / delete ----------------------------------------------------------------

    def create(self, spec: GuestSpec) -> Deferred[Created]:
        return self.creations.create(spec)

    def get(self, instance_id: str) -> Deferred[Instance]:
        """The record; a failure not yet told is told now, once.

        After a failed creation the next ``GET`` tells the failure, later ones answer
        ``invalid instance``; after a failed reset the guest is shown again after it.
        """
        view = self._context.view
        found = view.instances.get(instance_id)
        pending = view.pending_errors.get(instance_id)
        if pending is None or pending.shown:
            if found is not None:
                return succeed(found)
            return fail(UnknownEntity(f"invalid instance '{instance_id}'"))

        def decide(_: Instance | None) -> list[Change]:
            current = self._context.view.pending_errors.get(instance_id)
            if current is None or current.shown:
                return []
            if current.cell:
                return [Put(evolve(current, shown=True))]
            return [Delete(PendingError, instance_id)]

        telling = self.access.change(instance_id, decide)

        def told(_: None) -> Failure:
            return Failure(InvalidRequest(pending.error))

        return telling.addCallback(told)

    def delete(self, instance_id: str) -> Deferred[None]:
        try:
            instance = self.access.instance(instance_id)
            if self.access.came_back_without(instance) and not instance.migrating:
                # Nothing is left to ask a Cell, whatever the record says of running.
                forgetting = self._forget(instance_id, lost=True)
                return forgetting.addCallback(lambda _: self._volumes_left(instance))
            linked = self.access.linked(instance.cell)
            if instance.status is InstanceStatus.CREATING and not linked:
                return self._forget_creation(instance)
            if instance.running:
                raise InvalidRequest(f"instance '{instance_id}' is still running")
            self.access.refuse_migrating(instance)
            self.access.refuse_capturing(instance_id)
            if not linked:
                # Refused here, so that nothing waits for the Cell's word on it: a delete that
                # never reached the Cell must not be finished when it comes back (QA pass 25).
                raise not_connected(instance.cell)
        except OperationError as error:
            return fail(error)
        request = Message(
            id=MessageID.DeleteGuestRequest, string_params={ParamKey.Instance: instance_id}
        )
        asking = self.access.forward(instance.cell, request)

        def unfinished(failure: Failure) -> Failure:
            self.access.unfinished_deletes[instance_id] = instance.cell
            return failure

        def unanswered(failure: Failure) -> Failure:
            if failure.check(CellRefused):
                return failure
            return unfinished(failure)  # the Cell may have deleted it all the same

        def deleted(_: Message) -> Deferred[None]:
            # Done, and not recorded if the store cannot save: the Cell's inventory, taken
            # again once it can, finishes it (QA pass 24: it showed the guest lost, then
            # failed it over from its Cell to the same Cell).
            forgetting = self._forget(instance_id, essential=True).addErrback(unfinished)
            return self.access.recorded_after_cell(instance.cell, forgetting)

        return asking.addCallbacks(deleted, unanswered)

    def _forget_creation(self, instance: Instance) -> Deferred[None]:
        """A guest being created on a Cell that is away: deleted without asking it, its name
        and addresses free again (QA pass 25: a Cell that died mid-creation left it neither
        created nor failed, undeletable, for as long as it stayed away). If the Cell comes
        back holding it, that copy is an orphan deleted there (the pending error names it)."""
        cell = instance.cell

        def decide(current: Instance | None) -> list[Change]:
            if current is None:
                return []
            if current.status is not InstanceStatus.CREATING or self.access.linked(cell):
                raise InvalidRequest(f"instance '{instance.id}' changed, retry")
            self.placement.release(instance.id)
            gone = PendingError(instance.id, f"deleted while cell '{cell}' was away", cell=cell,
                                shown=True)  # fmt: skip
            return [*self.access.forgetting(current), Put(gone)]

        return self.access.change(instance.id, decide)

    def _forget(
        self, instance_id: str, *, lost: bool = False, essential: bool = False
    ) -> Deferred[None]:
        """Remove the record and its addresses; ``lost``: only while it is still a guest its
        Cell came back without (it was decided on without asking the Cell); ``essential``:
        the Cell deleted it, which no inventory can tell after a stop (QA pass 26: stopped
        while the disk was full, Core showed it lost at the next start and failed it over)."""

        def decide(instance: Instance | None) -> list[Change]:
            if lost and instance is not None and not self.access.came_back_without(instance):
                raise InvalidRequest(f"instance '{instance_id}' changed while deleted, retry")
            self.placement.release(instance_id)
            self.access.unfinished_deletes.pop(instance_id, None)
            return self.access.forgetting(instance) if instance is not None else []

        return self.access.change(instance_id, decide, essential=essential)

    def _volumes_left(self, instance: Instance) -> None:
        """A guest deleted asking no Cell leaves its volumes wherever they are: on a pool's
        shared storage, which every Cell of it mounts, say so, for the operator to remove."""
        pool = self._context.view.compute_pools.get(instance.pool)
        if pool is not None and pool.storage:
            log.warn(
                "deleted {guest} ({name}), which cell '{cell}' came back without, asking no "
                "cell: its volumes, if any are left on storage pool '{storage}', stay there",
                guest=instance.id, name=instance.full_name, cell=instance.cell,
                storage=pool.storage,
            )  # fmt: skip

    # -- start / stop -------------------------------------------------------------------------

    def start(
        self, instance_id: str, *, from_media: bool = False, from_network: bool = False,
        source: str = "",
    ) -> Deferred[None]:  # fmt: skip
        """Boot the guest, from a media image of the image site when asked."""
        try:
            instance = self.access.instance(instance_id)
            self.access.refuse_lost(instance)
            if instance.running:
                raise InvalidRequest(f"instance '{instance_id}' already started")
            if not instance.created:
                raise InvalidRequest(f"instance '{instance_id}' not created yet")
            if from_network:
                raise InvalidRequest("start from network is not supported")
            self.access.refuse_migrating(instance)
            self.access.refuse_starting(instance_id)
            self.access.refuse_capturing(instance_id)
            message = self._start_message(instance_id, from_media, source)
        except OperationError as error:
            return fail(error)
        return self.access.forward_start(instance, message)

    def _start_message(self, instance_id: str, from_media: bool, source: str) -> Message:
        strings: dict[int, str] = {ParamKey.Instance: instance_id}
        uints: dict[int, int] = {ParamKey.Option: BOOT_DISK}
        if from_media:
            site = media_site(source, self._context.view.media_images, self._image_site)
            strings.update({ParamKey.Source: source, ParamKey.Host: site.host})
            uints.update({ParamKey.Option: BOOT_MEDIA, ParamKey.Port: site.port})
        return Message(id=MessageID.StartInstanceRequest, string_params=strings, uint_params=uints)

    def stop(
        self, instance_id: str, *, reboot: bool = False, force: bool = False
    ) -> Deferred[None]:
        """Shut the guest down (or off, with ``force``), or reboot it."""
        try:
            instance = self.access.instance(instance_id)
            self.access.refuse_lost(instance)
            if not instance.running:
                raise InvalidRequest(f"instance '{instance_id}' already stopped")
        except OperationError as error:
            return fail(error)
        message = Message(
            id=MessageID.StopInstanceRequest,
            string_params={ParamKey.Instance: instance_id},
            uint_array_params={ParamKey.Option: (int(reboot), int(force))},
        )
        return self.access.forward_for(instance, message).addCallback(lambda _: None)

    # -- the Cell's inventory -----------------------------------------------------------------

    def reconcile(
        self, cell: str, pool: str, reply: Message, *, late: bool = False
    ) -> Reconciliation:
        """What a Cell's inventory changes (see :mod:`nanocore.operations.guests.reconcile`)."""
        address = self._cells.address(cell) or ""
        return self._reconciler.reconcile(cell, pool, reply, address, late=late)
