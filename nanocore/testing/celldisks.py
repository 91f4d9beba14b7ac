"""A simulated Cell's guest disks, moved to and from the image site as a Cell moves them.

A Cell creates a guest from a disk image by downloading it from Core's image site with its
certificate and checking its SHA-1 against ``Signature`` (cell-protocol.md §5.3), writes a
guest's system disk again from one the same way on a system reset (§5.4), and captures a
guest's system disk into a new image by uploading it there (``PUT``, parts ``checksum`` then
``image``, §5.12). A :class:`~nanocore.testing.fakecell.FakeCell` given :class:`CellDisks` does
all three for real, over :class:`~nanocore.testing.imageclient.CellImageClient`, and keeps each
guest's system disk as a file of its folder: the image it was cloned from, or else a small
blank disk of its own. Writes are synchronous: this is a simulator, its disks are small.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from nanocore.testing.imageclient import CellImageClient, Fetched, ImageFetchError

#: Size of the system disk of a guest not cloned from an image (what a capture of it sends).
BLANK_DISK = 1 << 20
#: Progress is told at each of these steps of a transfer (a Cell reports a few, not every read).
STEP = 25

_GUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ImageUploadRefused(ImageFetchError):
    """The image site answered an upload with an error envelope."""


def percent_steps(total: int, tell: Callable[[int], object]) -> Callable[[int], None]:
    """A counter of bytes moved out of ``total`` that tells ``tell`` each :data:`STEP` percent
    crossed, below 100 (the end is told by whoever ends the transfer)."""
    told = 0

    def moved(done: int) -> None:
        nonlocal told
        if total <= 0:
            return
        reached = min(99, done * 100 // total) // STEP * STEP
        if reached > told:
            told = reached
            tell(reached)

    return moved


class CellDisks:
    """The system disks of one Cell's guests, in ``folder``, and its client of the image site."""

    def __init__(self, client: CellImageClient, folder: Path) -> None:
        self.client = client
        self.folder = folder

    @staticmethod
    def holds(guest_id: str) -> bool:
        """Whether ``guest_id`` can name a disk file (ids from Core always can)."""
        return _GUEST_ID.fullmatch(guest_id) is not None

    def path(self, guest_id: str) -> Path:
        if not self.holds(guest_id):
            raise ValueError(f"not a guest id: {guest_id!r}")
        return self.folder / f"{guest_id}.qcow2"

    def fetch(
        self,
        guest_id: str,
        site: tuple[str, int],
        image_id: str,
        size: int,
        progress: Callable[[int], object],
    ) -> Deferred[Fetched]:
        """Download ``image_id`` from the site at ``(host, port)`` as the guest's system disk
        (a creation's clone, a system reset): written beside it, verified against the site's
        signature, and put in its place only once whole, so a failure leaves the disk as it
        was, or absent (a stock Cell writes into the volume and may leave it half-written)."""
        path = self.path(guest_id)
        incoming = path.with_suffix(".incoming")
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = incoming.open("wb")
        fetching = self.client.fetch(*site, image_id, handle.write, percent_steps(size, progress))

        def closed(outcome: Fetched | Failure) -> Fetched | Failure:
            handle.close()
            if isinstance(outcome, Failure):
                incoming.unlink(missing_ok=True)
            else:
                incoming.replace(path)
            return outcome

        return fetching.addBoth(closed)

    def capture(
        self,
        guest_id: str,
        site: tuple[str, int],
        image_id: str,
        progress: Callable[[int], object],
    ) -> Deferred[int]:
        """Upload the guest's system disk as the content of ``image_id``; fires with its size,
        or fails with :class:`ImageUploadRefused` (the site's message)."""
        path = self.path(guest_id)
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blank_disk(guest_id))
        size = path.stat().st_size

        def answered(envelope: dict[str, Any]) -> int:
            if envelope.get("error_code") != 0:
                raise ImageUploadRefused(str(envelope.get("message", "upload refused")))
            return size

        uploading = self.client.upload(*site, image_id, path, percent_steps(size, progress))
        return uploading.addCallback(answered)

    def forget(self, guest_id: str) -> None:
        """The guest is gone: so is its disk."""
        self.path(guest_id).unlink(missing_ok=True)


def blank_disk(guest_id: str) -> bytes:
    """A guest's own blank system disk: :data:`BLANK_DISK` bytes that differ per guest."""
    seed = hashlib.sha256(guest_id.encode()).digest()
    return (seed * (BLANK_DISK // len(seed) + 1))[:BLANK_DISK]
