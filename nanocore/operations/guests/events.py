"""Cell events about guests, taken the way an API call is: into operations, into the store.

Each event changes one instance through :meth:`GuestAccess.change`, so two events about the
same guest (created, then started at once with auto-start) are applied in turn, each to what
the one before it committed. An event about a guest of another Cell is refused: a Cell speaks
only for its own guests. An event about a guest whose creation Core gave up (a pending error
still naming that Cell) finds an orphan: Core asks the Cell to delete it, since the client was
told the creation failed and its address may be someone else's by now.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any

from attrs import evolve
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nanocore.cluster.cells import CellLiveness, CellObserver, CellStatus
from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.model import ID_PATTERN, Instance, InstanceStatus, PendingError, clipped, is_ipv4
from nanocore.operations.base import named
from nanocore.operations.errors import OperationError
from nanocore.operations.guests.common import GuestAccess
from nanocore.operations.guests.placement import Placement
from nanocore.store import Change, CommitFailed, Delete, Put, StoreClosed

_MAC = re.compile(r"([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}")
_ID = re.compile(ID_PATTERN)
#: A failed creation the Cell reports without a reason.
CREATION_FAILED = "create guest fail"
#: A failed system reset the Cell reports without a reason.
RESET_FAILED = "reset guest system fail"
#: Seconds Core waits for word (progress or end) of a reset its Cell's inventory found under
#: way. A Cell gives a reset up after one operate timeout (10 s by default) without progress,
#: and its progress ticks every 2 s: a reset silent six times as long is over on the Cell (or
#: forgotten by a Cell that restarted), and its end was not heard.
RESET_SILENCE = 60.0
#: The pending error of a reset whose end Core never heard.
RESET_UNHEARD = "cell '{cell}' did not tell how the system reset ended"


def settle(pending: PendingError) -> list[Change]:
    """No Cell is left to check for ``pending``'s guest: drop it once it was told."""
    if pending.shown:
        return [Delete(PendingError, pending.id)]
    return [Put(evolve(pending, cell=""))]


@implementer(CellObserver)
class GuestEvents:
    """The registry's observer for guest events, and the capacity claims' clock."""

    log = Logger()

    def __init__(self, access: GuestAccess, placement: Placement) -> None:
        self._access = access
        self._context = access.context
        self._placement = placement
        #: Resets an inventory found under way, by guest: their Cell, and the timer that ends
        #: one unheard of for :attr:`reset_silence` (a Cell may have ended it, or forgotten it,
        #: while Core was not listening).
        self._reset_watches: dict[str, tuple[str, IDelayedCall]] = {}
        #: What each Cell's last inventory lacked (kept across its links: said once).
        self._told_lacking: dict[str, frozenset[str]] = {}
        self.reset_silence = RESET_SILENCE
        self._handlers: dict[int, Callable[[str, Message], Deferred[None]]] = {
            MessageID.GuestCreatedEvent: self.created,
            MessageID.GuestUpdatedEvent: self.updated,
            MessageID.GuestStartedEvent: lambda cell, m: self.running(cell, m, True),
            MessageID.GuestStoppedEvent: lambda cell, m: self.running(cell, m, False),
            MessageID.GuestDeletedEvent: self.deleted,
            MessageID.AddressChangedEvent: self.address_changed,
            MessageID.MediaAttachedEvent: lambda cell, m: self.media(cell, m, True),
            MessageID.MediaDetachedEvent: lambda cell, m: self.media(cell, m, False),
            MessageID.SystemResetEvent: self.system_reset,
        }

    @property
    def handled(self) -> frozenset[int]:
        return frozenset(self._handlers)

    # -- CellObserver -------------------------------------------------------------------------

    def cell_available(self, name: str, address: str) -> None:
        """Reconciling the Cell's guests waits for its inventory (cell operations ask it)."""
        self._access.lacking.pop(name, None)
        self._placement.linked(name)

    def cell_status(self, name: str, status: CellStatus) -> None:
        self._placement.reported(name, status)

    def cell_answered_late(self, name: str, request: Message, reply: Message) -> None:
        """The Cell's inventory, taken again by the cell operations, tells what it did; but
        it cannot tell a reset under way (it shows the guest created and stopped). A reset the
        Cell began after Core stopped waiting is recorded as the answer in time records it,
        and its end awaited (:meth:`watch_reset`)."""
        if request.id != MessageID.ResetSystemRequest or not reply.success:
            return
        guest = request.string_params.get(ParamKey.Guest, "")

        def resetting(instance: Instance | None) -> list[Change]:
            if instance is None or instance.cell != name:
                return []
            if instance.status is not InstanceStatus.STOPPED:
                return []
            return [Put(evolve(instance, status=InstanceStatus.RESETTING, progress=0))]

        def watch(_: object) -> None:
            current = self._context.view.instances.get(guest)
            if current is not None and current.status is InstanceStatus.RESETTING:
                self.watch_reset(name, guest)

        recording = self._access.change(guest, resetting).addCallback(watch)
        recording.addErrback(self._logged, name, reply)

    def cell_event(self, name: str, message: Message) -> None:
        handler = self._handlers.get(message.id)
        if handler is not None:
            handler(name, message).addErrback(self._logged, name, message)

    def cell_disconnected(self, name: str, gracefully: bool) -> None:
        """Its claims end; its guests are lost (a creation it failed is forgotten first)."""
        self._access.lacking.pop(name, None)
        self._placement.cell_gone(name)
        for guest, (cell, _) in list(self._reset_watches.items()):
            if cell == name:  # its next inventory watches again
                self._unwatch(guest)

        self._mark_lost(name)

    def _mark_lost(self, name: str, again: bool = False) -> None:
        """Show the guests of ``name``, gone, lost; what the store could not save is marked
        again :data:`UNSAVED_RETRY` s later while the Cell stays away (QA pass 22: a Cell
        that died while the disk was full left its guests shown running for good)."""
        retrying: list[str] = []

        def lost(instance: Instance | None) -> list[Change]:
            if instance is None or instance.cell != name or instance.lost:
                return []
            if again and instance.migrating:
                return []  # moved meanwhile (its failover), the move tells
            return [Put(evolve(instance, lost=True))]

        def unsaved(failure: Failure) -> None:
            failure.trap(CommitFailed)
            if not retrying:  # once for all its guests
                retrying.append(name)
                self._context.retry_unsaved(
                    failure,
                    lambda: self._still_lost(name),
                    "losses marked again",
                    name,
                    "{source} is gone, and its guests could not be shown lost ({reason}):"
                    " tried again in {after:g} s",
                )

        for guest in list(self._context.view.instances_on_cell(name)):
            marking = self._access.change(guest, lost, essential=True).addErrback(unsaved)
            marking.addErrback(self._logged, name, Message(id=MessageID.GuestStoppedEvent))

    def _still_lost(self, name: str) -> None:
        if self._access.cells.state(name) in (None, CellLiveness.DISCONNECTED):
            self._mark_lost(name, again=True)  # else its inventory, on linking, tells

    # -- inventories --------------------------------------------------------------------------

    def inventory_lacks(
        self, cell: str, guests: Collection[str], *, said: Collection[str] = ()
    ) -> None:
        """``cell`` has told its inventory, and it lacked ``guests`` of Core's (forgotten at
        once if its link is gone already: its next link tells a new one). Those shown lost
        while the Cell was away that it lacks now are said once (``said``: those the caller
        said already)."""
        if self._access.cells.state(cell) in (None, CellLiveness.DISCONNECTED):
            self._access.lacking.pop(cell, None)
        else:
            self._access.lacking[cell] = frozenset(guests)
        told = self._told_lacking.get(cell, frozenset())
        self._told_lacking[cell] = frozenset(guests)
        unsaid = [g for g in guests if g not in told and g not in said]
        if unsaid:
            self.log.warn("{cell} came back without {count} instance(s) of Core's shown lost "
                          "while it was away ({guests}): kept and shown lost (deleting one asks "
                          "no Cell)", cell=cell, count=len(unsaid),
                          guests=named(unsaid))  # fmt: skip

    # -- events -------------------------------------------------------------------------------

    def _guest(self, cell: str, message: Message, key: ParamKey = ParamKey.Instance) -> str | None:
        guest = message.string_params.get(key, "")
        if not _ID.fullmatch(guest):
            self.log.warn(
                "{cell}: {id:#08x} without a valid instance id ({guest!r}), ignored",
                cell=cell,
                id=message.id,
                guest=guest,
            )
            return None
        return guest

    def _ours(self, cell: str, instance: Instance | None, message: Message) -> bool:
        if instance is None:
            return False
        if instance.cell != cell:
            self.log.warn(
                "{cell} sent {id:#08x} about {guest}, a guest of {owner}; ignored",
                cell=cell,
                id=message.id,
                guest=instance.id,
                owner=instance.cell,
            )
            return False
        return True

    def created(self, cell: str, message: Message) -> Deferred[None]:
        """``GuestCreatedEvent`` (or a create answer saying it exists): the guest is ready."""
        guest = self._guest(cell, message)
        if guest is None:
            return succeed(None)
        port = message.uint_params.get(ParamKey.Monitor, 0)
        secret = message.string_params.get(ParamKey.Secret, "")
        mac = message.string_params.get(ParamKey.Hardware, "")
        address = self._access.cells.address(cell) or ""
        now = self._context.now_text()

        def decide(instance: Instance | None) -> list[Change]:
            if instance is None:
                self._orphan(cell, guest)
                return []
            if not self._ours(cell, instance, message):
                return []
            monitor: dict[str, Any] = {}
            if 0 < port <= 65535:
                monitor["monitor_port"] = port
            if is_ipv4(address):
                monitor["monitor_address"] = address
            internal = evolve(instance.internal, **monitor) if monitor else instance.internal
            running = instance.status is InstanceStatus.RUNNING
            return [
                Put(
                    evolve(
                        instance,
                        status=InstanceStatus.RUNNING if running else InstanceStatus.STOPPED,
                        progress=0,
                        lost=False,
                        internal=internal,
                        monitor_secret=secret[:255] if secret else instance.monitor_secret,
                        hardware_address=mac if _MAC.fullmatch(mac) else instance.hardware_address,
                        create_time=instance.create_time or now,
                    )
                )
            ]

        changing = self._access.change(guest, decide)
        return changing.addCallback(lambda _: self._placement.confirmed(guest))

    def updated(self, cell: str, message: Message) -> Deferred[None]:
        """``GuestUpdatedEvent``: creation progress, or its failure."""
        guest = self._guest(cell, message)
        if guest is None:
            return succeed(None)
        if not message.success:
            return self._creation_failed(cell, guest, message)
        self._heard(cell, guest)
        progress = min(message.uint_params.get(ParamKey.Progress, 0), 100)

        def decide(instance: Instance | None) -> list[Change]:
            if not self._ours(cell, instance, message):
                return []
            assert instance is not None
            if instance.created or instance.progress == progress:
                return []
            return [Put(evolve(instance, progress=progress))]

        return self._access.change(guest, decide)

    def _creation_failed(self, cell: str, guest: str, message: Message) -> Deferred[None]:
        reason = message.error or CREATION_FAILED

        def decide(instance: Instance | None) -> list[Change]:
            if not self._ours(cell, instance, message):
                return []
            assert instance is not None
            if instance.status is not InstanceStatus.CREATING:
                self.log.warn("{cell}: {guest} failed: {reason}", cell=cell, guest=guest,
                              reason=reason)  # fmt: skip
                return []
            self._placement.release(guest)
            return [*self._access.forgetting(instance), Put(PendingError(guest, clipped(reason)))]

        return self._access.change(guest, decide)

    def running(self, cell: str, message: Message, running: bool) -> Deferred[None]:
        """``GuestStartedEvent``/``GuestStoppedEvent``: Core's record follows the Cell."""
        guest = self._guest(cell, message)
        if guest is None:
            return succeed(None)
        status = InstanceStatus.RUNNING if running else InstanceStatus.STOPPED

        def decide(instance: Instance | None) -> list[Change]:
            if not self._ours(cell, instance, message):
                return []
            assert instance is not None
            if not instance.created or (instance.status is status and not instance.lost):
                return []
            return [Put(evolve(instance, status=status, lost=False))]

        recording = self._access.change(guest, decide)
        if running:
            recording.addCallback(lambda _: self._access.started(guest))
        return recording

    def deleted(self, cell: str, message: Message) -> Deferred[None]:
        """``GuestDeletedEvent``: the record and its addresses go, and any claim."""
        guest = self._guest(cell, message)
        if guest is None:
            return succeed(None)

        def decide(instance: Instance | None) -> list[Change]:
            pending = self._context.view.pending_errors.get(guest)
            changes: list[Change] = []
            if pending is not None and pending.cell == cell:
                changes.extend(settle(pending))
            if self._ours(cell, instance, message):
                assert instance is not None
                changes.extend(self._access.forgetting(instance))
                self._placement.release(guest)
            return changes

        return self._access.change(guest, decide)

    def address_changed(self, cell: str, message: Message) -> Deferred[None]:
        """``AddressChangedEvent``: the address the guest really has (§5.11)."""
        guest = self._guest(cell, message)
        if guest is None:
            return succeed(None)
        address = message.string_params.get(ParamKey.Address, "")
        if address and not is_ipv4(address):
            self.log.warn("{cell}: {guest} reported address {address!r}, not IPv4; ignored",
                          cell=cell, guest=guest, address=address)  # fmt: skip
            return succeed(None)

        def decide(instance: Instance | None) -> list[Change]:
            if not self._ours(cell, instance, message):
                return []
            assert instance is not None
            if instance.internal.instance_address == address:
                return []
            internal = evolve(instance.internal, instance_address=address)
            return [Put(evolve(instance, internal=internal))]

        return self._access.change(guest, decide)

    def media(self, cell: str, message: Message, attached: bool) -> Deferred[None]:
        """``MediaAttachedEvent``/``MediaDetachedEvent``: the media flag and its source."""
        guest = self._guest(cell, message)
        if guest is None:
            return succeed(None)
        media = message.string_params.get(ParamKey.Media, "") if attached else ""
        source = media if _ID.fullmatch(media) else ""

        def decide(instance: Instance | None) -> list[Change]:
            if not self._ours(cell, instance, message):
                return []
            assert instance is not None
            changed = evolve(instance, media_attached=attached, media_source=source)
            return [] if changed == instance else [Put(changed)]

        return self._access.change(guest, decide)

    def system_reset(self, cell: str, message: Message) -> Deferred[None]:
        """``SystemResetEvent`` (the guest as ``Guest``): a reset is over, done or failed.

        Either way the guest is created and stopped again (its Cell still holds it); a
        failure is also told once by the next ``GET /guests/:id``. The original left a guest
        whose reset failed at ``created: false`` for good.
        """
        guest = self._guest(cell, message, ParamKey.Guest)
        if guest is None:
            return succeed(None)
        reason = "" if message.success else (message.error or RESET_FAILED)
        if self._reset_watches.get(guest, ("",))[0] == cell:
            self._unwatch(guest)

        def decide(instance: Instance | None) -> list[Change]:
            if not self._ours(cell, instance, message):
                return []
            assert instance is not None
            if instance.status is not InstanceStatus.RESETTING:
                self.log.warn("{cell}: {guest} was not being reset; reset event ignored",
                              cell=cell, guest=guest)  # fmt: skip
                return []
            changes: list[Change] = [
                Put(evolve(instance, status=InstanceStatus.STOPPED, progress=0))
            ]
            if reason:
                changes.append(Put(PendingError(guest, clipped(reason))))
            return changes

        return self._access.change(guest, decide)

    # -- resets an inventory found under way ----------------------------------------------------

    def watch_reset(self, cell: str, guest: str) -> None:
        """``cell``'s inventory holds ``guest``, whose reset Core recorded: its end may come, or
        may have been sent while Core was not listening. Unheard of for :attr:`reset_silence`,
        it is ended as failed (:meth:`_unheard`)."""
        self._unwatch(guest)
        call = self._context.clock.callLater(self.reset_silence, self._unheard, cell, guest)
        self._reset_watches[guest] = (cell, call)

    def _heard(self, cell: str, guest: str) -> None:
        """Progress of a watched reset: the Cell is still at it."""
        watch = self._reset_watches.get(guest)
        if watch is not None and watch[0] == cell:
            watch[1].reset(self.reset_silence)

    def _unwatch(self, guest: str) -> None:
        watch = self._reset_watches.pop(guest, None)
        if watch is not None and watch[1].active():
            watch[1].cancel()

    def _unheard(self, cell: str, guest: str) -> None:
        """The reset's end was never heard: the guest is stopped again, and the next ``GET``
        tells that its outcome is unknown (rather than a guest left resetting for good)."""
        self._reset_watches.pop(guest, None)
        reason = RESET_UNHEARD.format(cell=cell)

        def decide(instance: Instance | None) -> list[Change]:
            if (
                instance is None
                or instance.cell != cell
                or instance.lost
                or instance.status is not InstanceStatus.RESETTING
            ):
                return []
            self.log.warn("{cell}: no word of the reset of {guest} for {seconds:g} s; ended",
                          cell=cell, guest=guest, seconds=self.reset_silence)  # fmt: skip
            return [
                Put(evolve(instance, status=InstanceStatus.STOPPED, progress=0)),
                Put(PendingError(guest, reason)),
            ]

        self._access.change(guest, decide).addErrback(
            self._logged, cell, Message(id=MessageID.SystemResetEvent)
        )

    # -- orphans ------------------------------------------------------------------------------

    def _orphan(self, cell: str, guest: str) -> None:
        """A guest Core does not hold: an orphan of a failed creation, or one to adopt."""
        pending = self._context.view.pending_errors.get(guest)
        if pending is not None and pending.cell == cell:
            self.delete_orphan(cell, guest)
        else:
            self.log.warn(
                "{cell} holds guest {guest}, unknown to Core; its next inventory adopts it",
                cell=cell,
                guest=guest,
            )

    def delete_orphan(self, cell: str, guest: str) -> None:
        """Ask ``cell`` to delete a guest whose creation Core reported as failed."""
        self.log.warn(
            "{cell} holds guest {guest}, whose creation failed; deleting it there",
            cell=cell,
            guest=guest,
        )
        request = Message(
            id=MessageID.DeleteGuestRequest, string_params={ParamKey.Instance: guest}
        )
        asking = self._access.forward(cell, request)

        def gone(_: Message) -> Deferred[None]:
            def decide(instance: Instance | None) -> list[Change]:
                pending = self._context.view.pending_errors.get(guest)
                return settle(pending) if pending is not None and pending.cell == cell else []

            return self._access.change(guest, decide)

        asking.addCallback(gone).addErrback(
            self._logged, cell, Message(id=MessageID.DeleteGuestRequest)
        )

    def _logged(self, failure: Failure, cell: str, message: Message) -> None:
        if failure.check(StoreClosed):  # Core is stopping: the Cell re-reports on rejoin
            self.log.info("{cell}: {id:#08x} not applied: the store is closed", cell=cell,
                          id=message.id)  # fmt: skip
        elif failure.check(CommitFailed):  # its inventory tells again what this said
            self._access.resync(cell, failure.getErrorMessage())
        elif failure.check(OperationError):
            self.log.warn(
                "{cell}: {id:#08x} not applied: {reason}",
                cell=cell,
                id=message.id,
                reason=failure.value.message,  # type: ignore[union-attr]
            )
        else:
            self.log.failure("{cell}: {id:#08x} not applied", failure, cell=cell, id=message.id)
