"""A disk image captured from a guest's system disk by its Cell (api-reference §4.9,
cell-protocol.md §5.12, core-internals §5.6).

The guest must be created and stopped. The image record is created (not yet ``created``), held
by :data:`~nanocore.operations.images.IMAGE_CAPTURE` from just before its creation, and the
guest's Cell is asked to upload the disk to the image site (``CreateDiskImageRequest`` with the
site's Host and Port). The client is answered once the Cell has said it started (its
``CreateDiskImageResponse``), or with its refusal. The Cell's ``DiskImageUpdatedEvent``\\ s,
addressed to the request's session, are its progress (shown by ``GET /disk_images/:id``); each
restarts the operate timeout, which is so an inactivity limit, as in the original. The last
(``Enable``) ends the capture: the Cell's upload, checked against the checksum it declared,
must have made the image ``created`` by then.

Any other end (the Cell reports a failure, stays silent longer than the timeout, loses its
link, or says "done" having uploaded nothing) deletes the image, with whatever its upload
placed; an upload still running is no longer recorded. A restart ends the wait too (claims are
in memory): the record then stays as a never-uploaded image, which its owner may delete.

While the claim is held, the guest's operations that would change its disk or power state
(start, system reset, delete, disk resize, snapshots, migration) are refused
(:meth:`~nanocore.operations.guests.GuestAccess.refuse_capturing`): the Cell would copy a disk
being written. Nano checked the guest only when the capture started.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from nanocore.cluster.cells import CoreStopping
from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.operations.base import Context
from nanocore.operations.claims import Claim
from nanocore.operations.errors import InvalidRequest, OperationError
from nanocore.operations.guests import GuestAccess
from nanocore.operations.images import (
    IMAGE_CAPTURE,
    CaptureProgress,
    ImageKind,
    Images,
    ImageSpec,
    new_image_id,
)
from nanocore.operations.imagesite import ImageSiteLocator

log = Logger()


class CaptureFailed(OperationError):
    """The Cell said the capture was done, but the image site has no image."""


def ends_capture(message: Message) -> bool:
    """A refusal or failure, or the Cell's last progress event (``Enable``)."""
    if not message.success:
        return True
    return message.id == MessageID.DiskImageUpdatedEvent and bool(
        message.bool_params.get(ParamKey.Enable, False)
    )


class Captures:
    """Disk images captured from guests, over the catalogue and the guests' Cells."""

    def __init__(
        self, context: Context, images: Images, guests: GuestAccess, image_site: ImageSiteLocator
    ) -> None:
        self._context = context
        self._images = images
        self._guests = guests
        self._image_site = image_site
        self._running: dict[str, list[Deferred[None]]] = {}

    def finished(self, image_id: str) -> Deferred[None]:
        """Fires once the capture of ``image_id`` has ended, however (at once if none runs)."""
        waiting = self._running.get(image_id)
        if waiting is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        waiting.append(done)
        return done

    def capture(self, spec: ImageSpec, guest_id: str) -> Deferred[str]:
        """The new image's id, once the guest's Cell has started uploading it."""
        return Deferred.fromCoroutine(self._capture(spec, guest_id))

    async def _capture(self, spec: ImageSpec, guest_id: str) -> str:
        self._images.check_names(ImageKind.DISK, spec)  # before the guest, as Core
        instance = self._guests.instance(guest_id)
        self._guests.refuse_lost(instance)
        if not instance.created:
            raise InvalidRequest(f"guest '{guest_id}' not created yet")
        if instance.running:
            raise InvalidRequest(f"guest '{guest_id}' still running")
        # Nor moving or booting, which its record does not show yet (QA pass 25: a capture
        # sent with a migration copied a disk its Cell was letting go of).
        self._guests.refuse_migrating(instance)
        self._guests.refuse_starting(guest_id, f"guest '{guest_id}' is being started")
        site = self._image_site()
        if site is None:
            raise InvalidRequest("no image server available")
        # Claimed before the record's commit: no start may slip in while it is written.
        image_id = new_image_id()
        claim = self._context.claims.take(
            IMAGE_CAPTURE, (ImageKind.DISK, image_id), CaptureProgress(instance.cell, guest_id)
        )
        try:
            await self._images.create(ImageKind.DISK, spec, image_id)
        except BaseException:
            self._context.claims.release(claim)
            raise
        self._running[image_id] = []
        request = Message(
            id=MessageID.CreateDiskImageRequest,
            string_params={
                ParamKey.Image: image_id,
                ParamKey.Guest: guest_id,
                ParamKey.Host: site.host,
            },
            uint_params={ParamKey.Port: site.port},
        )
        started: Deferred[None] = Deferred()

        def progress(message: Message) -> None:
            if not started.called:  # the response, or an event ahead of it: it has started
                started.callback(None)
            if message.id == MessageID.DiskImageUpdatedEvent:
                percent = message.uint_params.get(ParamKey.Progress, 0)
                claim.value.percent = max(claim.value.percent, min(99, percent))

        asking = self._guests.forward_for(
            instance,
            request,
            on_progress=progress,
            is_reply=ends_capture,
            restart_on_progress=True,
        )
        ending = asking.addCallback(lambda _: self._check_created(image_id))
        ending.addErrback(self._failed, image_id, guest_id, claim.value)
        ending.addBoth(lambda outcome: self._ended(outcome, image_id, started, claim))
        await started
        return image_id

    def _check_created(self, image_id: str) -> None:
        if not self._context.view.disk_images[image_id].created:
            raise CaptureFailed("the Cell reported the capture done, but uploaded nothing")
        log.info("disk image '{id}' captured", id=image_id)

    def _failed(
        self, failure: Failure, image_id: str, guest_id: str, state: CaptureProgress
    ) -> Deferred[Failure]:
        """Mark the capture failed (its upload may no longer be recorded), delete the image,
        then go on with the failure. Cut short by Core's own stop, the image is kept, never
        uploaded, as a restart leaves it (its owner may delete it or capture again)."""
        state.failed = True
        if failure.check(CoreStopping):
            log.info("capture of disk image '{id}' from guest '{guest}' cut short by the stop;"
                     " the image is kept, not uploaded", id=image_id, guest=guest_id)  # fmt: skip
            return succeed(failure)
        reason = failure.getErrorMessage()
        log.warn(
            "capture of disk image '{id}' from guest '{guest}' on {cell} failed: {reason};"
            " image deleted",
            id=image_id,
            guest=guest_id,
            cell=state.cell,
            reason=reason,
        )
        dropping = self._images.drop(ImageKind.DISK, image_id)
        dropping.addErrback(lambda error: log.failure("deleting a failed capture", error))
        return dropping.addCallback(lambda _: failure)

    def _ended(
        self,
        outcome: object,
        image_id: str,
        started: Deferred[None],
        claim: Claim[CaptureProgress],
    ) -> None:
        """Release the image; tell the client, if it still waits, what became of the start.
        A failure after the start was logged by :meth:`_failed` and ends here."""
        self._context.claims.release(claim)
        if not started.called:  # the Cell refused, or never answered: the client is told
            if isinstance(outcome, Failure):
                started.errback(outcome)
            else:
                started.callback(None)
        for waiting in self._running.pop(image_id, []):
            waiting.callback(None)
