"""Inserting and ejecting an ISO in a running guest (api-reference §4.10, cell-protocol §5.5).

The image comes from the media image catalogue; the Cell reads it from Core's image site, whose
host and port Core hands on (as for a start from media). The Cell announces the change with
``MediaAttachedEvent``/``MediaDetachedEvent`` before its answer, and those events change the
record (:mod:`nanocore.operations.guests.events`). The client is answered once the record
shows the change: the flag is also committed on the Cell's success, so a Cell whose event went
missing leaves no stale flag behind.
"""

from __future__ import annotations

from attrs import evolve
from twisted.internet.defer import Deferred

from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.model import Instance
from nanocore.operations.base import Context, refusals_deferred
from nanocore.operations.errors import InvalidRequest
from nanocore.operations.guests import GuestAccess
from nanocore.operations.imagesite import ImageSiteLocator, media_site
from nanocore.store import Put


class GuestMedia:
    """Insert and eject media images in running guests."""

    def __init__(self, access: GuestAccess, image_site: ImageSiteLocator) -> None:
        self._access = access
        self._context: Context = access.context
        self._image_site = image_site

    def _running(self, instance_id: str) -> Instance:
        instance = self._access.instance(instance_id)
        if not instance.running:
            raise InvalidRequest(f"instance '{instance_id}' is stopped")
        return instance

    @refusals_deferred
    def insert(self, instance_id: str, source: str) -> Deferred[None]:
        """Insert media image ``source`` into the running guest's drive."""
        instance = self._running(instance_id)
        site = media_site(source, self._context.view.media_images, self._image_site)
        message = Message(
            id=MessageID.InsertMediaRequest,
            string_params={
                ParamKey.Instance: instance.id,
                ParamKey.Media: source,
                ParamKey.Host: site.host,
            },
            uint_params={ParamKey.Port: site.port},
        )
        return self._asked(instance, message, attached=True, source=source)

    @refusals_deferred
    def eject(self, instance_id: str) -> Deferred[None]:
        """Eject whatever media the running guest holds."""
        instance = self._running(instance_id)
        message = Message(
            id=MessageID.EjectMediaRequest, string_params={ParamKey.Instance: instance.id}
        )
        return self._asked(instance, message, attached=False, source="")

    def _asked(
        self, instance: Instance, message: Message, *, attached: bool, source: str
    ) -> Deferred[None]:
        cell = instance.cell

        def decide(current: Instance | None) -> list[Put]:
            if current is None or current.cell != cell:
                return []
            changed = evolve(current, media_attached=attached, media_source=source)
            return [] if changed == current else [Put(changed)]

        asking = self._access.forward_for(instance, message)
        return asking.addCallback(lambda _: self._access.change(instance.id, decide))
