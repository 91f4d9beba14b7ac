"""Resetting a guest: its system disk from a disk image, and its monitor secret (§4.6).

**System** (``PUT /guests/:id/system/``). A created, stopped guest's system disk is written
again from a disk image of the image site. The Cell's answer means "started": Core then marks
the guest *resetting* (``created: false``, ``progress: 0``, so ``GET /guests/:id`` answers 201),
takes its progress events as it does a creation's, and ``SystemResetEvent`` ends it
(:meth:`~nanocore.operations.guests.events.GuestEvents.system_reset`). The original crashed on a
running guest (core-internals §8.3 #2); here it is refused (``guest '<name>' still running``),
and so is a reset while a disk image is captured from the guest (the copy would be torn).

The request runs in the guest's turn (:meth:`GuestAccess.serially`): it is checked against the
record as it is then, nothing else changes the guest while its Cell is asked, and the Cell's
events about the reset are applied after *resetting* is recorded.

**Monitor secret** (``PUT /guests/:id/monitor/secret``). The Cell makes a new secret and Core
stores it; the client reads it with ``GET /guests/:id`` (the route itself answers ``""``).
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import evolve
from twisted.internet.defer import Deferred

from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.model import Instance, InstanceStatus
from nanocore.operations.cells import CellRefused
from nanocore.operations.errors import InvalidRequest, OperationTimeout
from nanocore.operations.guests.common import GuestAccess
from nanocore.operations.guests.create import image_source
from nanocore.operations.imagesite import ImageSiteLocator
from nanocore.store import Change, Put

#: The longest monitor secret Core keeps (``Instance.monitor_secret``).
MAX_SECRET = 255


class Resets:
    """System reset and monitor secret reset of one guest at a time."""

    def __init__(
        self,
        access: GuestAccess,
        image_site: ImageSiteLocator,
        watch: Callable[[str, str], None] = lambda cell, guest: None,
    ) -> None:
        """``watch(cell, guest)``: a reset whose end may come or not (``GuestEvents``)."""
        self._access = access
        self._context = access.context
        self._image_site = image_site
        self._watch = watch

    def system(self, instance_id: str, image_id: str) -> Deferred[None]:
        """Ask the guest's Cell to write its system disk from ``image_id``; resetting once
        the Cell has started."""

        async def reset() -> None:
            instance = self._access.instance(instance_id)
            if instance.running:
                raise InvalidRequest(f"guest '{instance.full_name}' still running")
            if not instance.created:
                raise InvalidRequest(f"guest '{instance_id}' not created yet")
            # Nor moving or booting (QA pass 25: a reset sent with a migration left the guest
            # half reset on the target, "not created yet" for good).
            self._access.refuse_migrating(instance)
            self._access.refuse_starting(instance_id, f"guest '{instance_id}' is being started")
            self._access.refuse_capturing(instance_id)
            if not image_id:
                raise InvalidRequest("disk image required")
            source = image_source(
                self._context.view, image_id, instance.disks[0], self._image_site
            )
            try:
                await self._access.forward_for(
                    instance,
                    Message(
                        id=MessageID.ResetSystemRequest,
                        string_params={
                            ParamKey.Guest: instance_id,
                            ParamKey.Image: source.image,
                            ParamKey.Host: source.host,
                        },
                        uint_params={ParamKey.Port: source.port, ParamKey.Size: source.size},
                    ),
                )
            except OperationTimeout:
                # The Cell may do it all the same, its answer too late: resetting until its
                # end is heard, or unheard long enough (QA pass 26: recorded stopped, the
                # guest was migrated in the middle of the reset its Cell did late).
                await self._resetting(instance_id, source.image)
                self._watch(instance.cell, instance_id)
                raise
            await self._resetting(instance_id, source.image)

        return self._access.serially(instance_id, lambda: Deferred.fromCoroutine(reset()))

    async def _resetting(self, instance_id: str, image_id: str) -> None:
        """The guest's record says resetting (until the Cell's ``SystemResetEvent``)."""
        current = self._context.view.instances.get(instance_id)
        if current is not None and current.status is InstanceStatus.STOPPED:
            resetting = evolve(current, status=InstanceStatus.RESETTING, progress=0)
            await self._context.commit(Put(resetting))
            self._access.clones.add(instance_id, image_id)

    def monitor_secret(self, instance_id: str) -> Deferred[None]:
        """Ask the guest's Cell for a new monitor secret and keep it."""
        asking = self._access.ask(
            instance_id,
            lambda instance: Message(
                id=MessageID.ResetSecretRequest, string_params={ParamKey.Guest: instance.id}
            ),
        )

        def keep(answer: tuple[Instance, Message]) -> Deferred[None]:
            instance, reply = answer
            secret = reply.string_params.get(ParamKey.Secret, "")
            if not secret or len(secret) > MAX_SECRET:
                raise CellRefused(f"cell '{instance.cell}' sent no usable monitor secret")

            def decide(current: Instance | None) -> list[Change]:
                if current is None or current.monitor_secret == secret:
                    return []
                return [Put(evolve(current, monitor_secret=secret))]

            return self._access.change(instance_id, decide)

        return asking.addCallback(keep)
