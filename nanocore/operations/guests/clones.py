"""Which disk images guests' system disks are being written from, so none is deleted under them.

A creation or a system reset from a disk image is answered once its Cell has started: the
Cell then fetches the image from the image site. Deleted meanwhile, each creation, answered
202, failed with the Cell's raw answer of the image site (QA pass 25). :class:`Clones`
remembers each guest sent to be written from an image and forgets it once its record is no
longer being created or reset (looked at when asked, and before the memory grows past
:data:`CLONES_LOOKED_AT`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from nanocore.model import Instance, InstanceStatus

#: Clones remembered before those that ended are looked for (memory stays bounded).
CLONES_LOOKED_AT = 1024
#: The states of a guest whose system disk its Cell writes from an image.
_WRITING_SYSTEM = (InstanceStatus.CREATING, InstanceStatus.RESETTING)


class Clones:
    """Guest -> the disk image its system disk is being written from."""

    def __init__(self, instances: Callable[[], Mapping[str, Instance]]) -> None:
        """``instances``: Core's records now (the read model's)."""
        self._instances = instances
        self._writing: dict[str, str] = {}

    def add(self, instance_id: str, image_id: str) -> None:
        """The guest's Cell was asked to write its system disk from ``image_id``."""
        if len(self._writing) >= CLONES_LOOKED_AT:
            self._forget_ended()
        self._writing[instance_id] = image_id

    def of(self, image_id: str) -> list[str]:
        """The guests whose system disk is still being written from ``image_id``."""
        self._forget_ended()
        return sorted(guest for guest, image in self._writing.items() if image == image_id)

    def _forget_ended(self) -> None:
        instances = self._instances()
        for guest in list(self._writing):
            instance = instances.get(guest)
            if instance is None or instance.status not in _WRITING_SYSTEM:
                del self._writing[guest]
