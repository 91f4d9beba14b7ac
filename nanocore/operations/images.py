"""The image catalogue (api-reference §4.8-4.9, core-internals §2.3, §5): disk and media image
records, their upload lock, and the sync of the records with the image folders.

Records live in the store; the files live in the image folders, reached only through the
:class:`ImageFiles` interface (``nanocore/images/files.py`` provides it), so this room never
builds a path. An upload holds the image's :data:`IMAGE_UPLOAD` claim from its first byte to
the commit of the new version: while it is held the image can be neither modified, deleted nor
uploaded again, and the claim's value is the progress the API shows. A disk image captured
from a guest (:mod:`nanocore.operations.capture`) is held by :data:`IMAGE_CAPTURE` from just
before its creation to the Cell's last word: only that Cell may upload it meanwhile, the Cell's
progress is what the API shows, and the guest's operations find there that its disk is being
copied (the claims are grouped by guest).
"""

from __future__ import annotations

import re
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any, cast

from attrs import define, evolve, frozen
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger
from zope.interface import Interface, implementer

from nanocore.clocks import wall_seconds
from nanocore.model import (
    ID_PATTERN,
    INVISIBLE_CATEGORIES,
    TIME_FORMAT,
    DiskImage,
    MediaImage,
)
from nanocore.operations.base import Context, build, check_label, check_name, visible_to
from nanocore.operations.claims import Claim, ClaimKind
from nanocore.operations.errors import AlreadyExists, InvalidRequest, UnknownEntity
from nanocore.store import Change, Delete, Insert, Put

log = Logger()

Image = MediaImage | DiskImage


class ImageKind(Enum):
    """The two catalogues: their folder under the data folder, file extension and label."""

    DISK = ("disk_images", "qcow2", "disk image")
    MEDIA = ("media_images", "iso", "media image")

    def __init__(self, folder: str, extension: str, label: str) -> None:
        self.folder = folder
        self.extension = extension
        self.label = label

    @property
    def entity(self) -> type[Image]:
        return DiskImage if self is ImageKind.DISK else MediaImage

    def file_name(self, image_id: str, version: int) -> str:
        """Nano's name of a version's file, ``<id>_v<n>.<ext>``: made of an id only."""
        return f"{check_id(self, image_id)}_v{version}.{self.extension}"

    def parse_file_name(self, name: str) -> tuple[str, int] | None:
        """``(id, version)`` of a file named as :meth:`file_name` names one, else None."""
        match = _VERSIONED.fullmatch(name)
        if match is None or match["ext"] != self.extension:
            return None
        return match["id"], int(match["version"])


_ID = re.compile(ID_PATTERN)
_VERSIONED = re.compile(rf"(?P<id>{ID_PATTERN})_v(?P<version>[1-9][0-9]{{0,17}})\.(?P<ext>\w+)")


def check_id(kind: ImageKind, image_id: str) -> str:
    """An image id as it may appear in a file name; anything path-like is refused here."""
    if _ID.fullmatch(image_id) is None:
        raise UnknownEntity(f"invalid {kind.label} '{image_id}'")
    return image_id


@frozen
class StoredFile:
    """A file of an image folder as the scan of a sync sees it."""

    name: str
    size: int


@frozen
class Adopted:
    """A folder file taken into the catalogue: its size, SHA-1 (recorded for disk images
    only, as Nano does) and SHA-256."""

    size: int
    sha1: str
    sha256: str


class ImageFiles(Interface):
    """What the catalogue needs of the image folders (every call works off the reactor)."""

    def remove(kind: ImageKind, image_id: str, version: int) -> Deferred[None]:
        """Remove the file of one version, if it is there."""

    def scan(kind: ImageKind) -> Deferred[list[StoredFile]]:
        """The image files of a folder (not the temporary files of running uploads)."""

    def discard(kind: ImageKind, name: str) -> Deferred[None]:
        """Remove a file a scan listed."""

    def adopt(kind: ImageKind, name: str, image_id: str) -> Deferred[Adopted]:
        """Hash a file a scan listed and rename it to version 1 of ``image_id``."""


@define
class UploadProgress:
    """How far an upload is: bytes written of the bytes expected (0: not known)."""

    received: int = 0
    expected: int = 0

    def percent(self) -> int:
        if self.expected <= 0:
            return 0
        return min(99, self.received * 100 // self.expected)


@define
class CaptureProgress:
    """A capture from a guest: the Cell that uploads it, the guest whose disk it copies, how
    far it says it is, and whether the capture has failed (its upload may then no longer be
    recorded)."""

    cell: str
    guest: str
    percent: int = 0
    failed: bool = False


def _locked(held: Claim[Any]) -> InvalidRequest:
    kind, image_id = cast(tuple[ImageKind, str], held.key)
    return InvalidRequest(f"{kind.label} '{image_id}' locked")


def _captured_guest(progress: CaptureProgress) -> str:
    return progress.guest


def _name_taken(held: Claim[None]) -> AlreadyExists:
    kind, group, name = cast(tuple[ImageKind, str, str], held.key)
    return AlreadyExists(f"{kind.label} '{name}' already exists in group '{group}'")


def _syncing(held: Claim[None]) -> InvalidRequest:
    kind = cast(ImageKind, held.key)
    return InvalidRequest(f"{kind.folder} are being synchronised, retry")


#: An image from the first byte of its upload to the commit of the new version.
IMAGE_UPLOAD: ClaimKind[UploadProgress] = ClaimKind("image upload", _locked)
#: An image's ``(kind, group, name)`` from its uniqueness check to its commit.
IMAGE_NAME: ClaimKind[None] = ClaimKind("image name", _name_taken)
#: A disk image from just before its creation for a capture to the end of the capture; the
#: claims of one guest are listed by ``Claims.live_in(IMAGE_CAPTURE, guest_id)``.
IMAGE_CAPTURE: ClaimKind[CaptureProgress] = ClaimKind(
    "image capture", _locked, group=_captured_guest
)
#: A folder being synchronised: one sync per kind at a time.
IMAGE_SYNC: ClaimKind[None] = ClaimKind("image sync", _syncing)


@frozen
class ImageSpec:
    """The client's fields of an image; on modify, empty means "keep" (§6 point 8)."""

    name: str = ""
    owner: str = ""
    group: str = ""
    description: str = ""
    tags: tuple[str, ...] = ()


@frozen
class Upload:
    """An upload in progress: the image it replaces, the version it writes, its claim."""

    kind: ImageKind
    image: Image
    version: int
    claim: Claim[UploadProgress]

    @property
    def progress(self) -> UploadProgress:
        return self.claim.value

    @property
    def file_name(self) -> str:
        return self.kind.file_name(self.image.id, self.version)


@implementer(ImageFiles)
class NoImageFiles:
    """The folders of a Core built without storage (tests of other rooms): always empty."""

    def remove(self, kind: ImageKind, image_id: str, version: int) -> Deferred[None]:
        return succeed(None)

    def scan(self, kind: ImageKind) -> Deferred[list[StoredFile]]:
        return succeed([])

    def discard(self, kind: ImageKind, name: str) -> Deferred[None]:
        return succeed(None)

    def adopt(self, kind: ImageKind, name: str, image_id: str) -> Deferred[Adopted]:
        raise InvalidRequest("this Core keeps no image files")


def new_image_id() -> str:
    return str(uuid.uuid4())


class Images:
    """Both image catalogues; every method takes the kind it works on."""

    def __init__(self, context: Context, files: ImageFiles) -> None:
        self._context = context
        self._files = files
        #: The guests whose creation clones a disk image (set by whoever creates guests).
        self.clones_of: Callable[[str], list[str]] = lambda image_id: []

    # --- reading ---------------------------------------------------------------------------

    def _records(self, kind: ImageKind) -> dict[str, Image]:
        view = self._context.view
        return dict(view.disk_images if kind is ImageKind.DISK else view.media_images)

    def get(self, kind: ImageKind, image_id: str) -> Image:
        image = self._records(kind).get(image_id)
        if image is None:
            raise UnknownEntity(f"invalid {kind.label} '{image_id}'")
        return image

    def upload_progress(self, kind: ImageKind, image_id: str) -> UploadProgress | None:
        """The progress of the upload holding the image, if one does."""
        held = self._context.claims.held(IMAGE_UPLOAD, (kind, image_id))
        return held.value if held is not None else None

    def progress(self, kind: ImageKind, image_id: str) -> int | None:
        """Percent done of the capture or else the upload holding the image; None if none."""
        capture = self._context.claims.held(IMAGE_CAPTURE, (kind, image_id))
        if capture is not None:
            return capture.value.percent
        upload = self.upload_progress(kind, image_id)
        return upload.percent() if upload is not None else None

    def all(self, kind: ImageKind) -> list[Image]:
        """Every image of a kind, sorted by ``group.name`` as Core sorts image lists."""
        return sorted(self._records(kind).values(), key=_sort_key)

    def search(
        self, kind: ImageKind, owner: str, group: str, tags: Iterable[str] = ()
    ) -> list[Image]:
        """Core's visibility rule (§6 point 5): owner matches, or group is given and matches;
        with tags, at least one must match. Neither owner nor group: nothing."""
        wanted = set(tags)
        return [
            image
            for image in self.all(kind)
            if visible_to(owner, group, image.owner, image.group)
            and (not wanted or not wanted.isdisjoint(image.tags))
        ]

    # --- changing --------------------------------------------------------------------------

    def check_names(self, kind: ImageKind, spec: ImageSpec, *, keep_empty: bool = False) -> None:
        """The spec's names in the route's words, in Core's order (name, owner, group), before
        the model sees them; ``keep_empty``: a modify's empty fields keep their value. An
        owner or group may be empty, as in Core (a portal account without a group)."""
        if spec.name or not keep_empty:
            if kind is ImageKind.DISK:
                check_name("image", spec.name, also=".")  # Core's words
            else:
                check_label("media image", spec.name)
        for kind_of_name, name in (("owner", spec.owner), ("group", spec.group)):
            if name:
                check_name(kind_of_name, name)

    def create(self, kind: ImageKind, spec: ImageSpec, image_id: str = "") -> Deferred[str]:
        """A new record (no content yet); ``image_id`` is one its caller has claimed already
        (a capture), else a new one."""
        self.check_names(kind, spec)
        image_id = image_id or new_image_id()
        now = self._context.now_text()
        image = build(
            cast(Callable[..., Image], kind.entity),
            id=image_id,
            name=spec.name,
            owner=spec.owner,
            group=spec.group,
            description=spec.description,
            tags=spec.tags,
            create_time=now,
            modify_time=now,
        )
        claim = self._claim_name(kind, image)
        d = self._context.commit(Insert(image), holding=(claim,))
        return d.addCallback(lambda _: image_id)

    def modify(self, kind: ImageKind, image_id: str, spec: ImageSpec) -> Deferred[None]:
        """A partial update: empty fields keep their value (Core's rule, so none can be
        cleared); refused while an upload holds the image."""
        current = self._unlocked(kind, image_id)
        self.check_names(kind, spec, keep_empty=True)
        changed: dict[str, Any] = {
            name: value
            for name, value in (
                ("name", spec.name),
                ("owner", spec.owner),
                ("group", spec.group),
                ("description", spec.description),
                ("tags", spec.tags),
            )
            if value
        }
        image = build(
            lambda **fields: evolve(current, **fields),
            modify_time=self._context.now_text(),
            **changed,
        )
        claims: tuple[Claim[None], ...] = ()
        if (image.group, image.name) != (current.group, current.name):
            claims = (self._claim_name(kind, image),)
        return self._context.commit(Put(image), holding=claims)

    def delete(self, kind: ImageKind, image_id: str) -> Deferred[None]:
        """Delete the record, then its file; refused while an upload holds the image, or
        guests are being cloned from it."""
        image = self._unlocked(kind, image_id)
        cloning = self.clones_of(image_id) if kind is ImageKind.DISK else []
        if cloning:
            raise InvalidRequest(
                f"{kind.label} '{image_id}' is being cloned to {len(cloning)} guest(s),"
                " retry once they are created or reset"
            )
        committed = self._context.commit(Delete(kind.entity, image_id))
        if image.version == 0:
            return committed
        return committed.addCallback(lambda _: self._files.remove(kind, image_id, image.version))

    def _unlocked(self, kind: ImageKind, image_id: str) -> Image:
        image = self.get(kind, image_id)
        claims, key = self._context.claims, (kind, image_id)
        if (claims.held(IMAGE_UPLOAD, key), claims.held(IMAGE_CAPTURE, key)) != (None, None):
            raise InvalidRequest(f"{kind.label} '{image_id}' is locked for update")
        return image

    def drop(self, kind: ImageKind, image_id: str) -> Deferred[None]:
        """Delete a record whatever holds it (a failed capture), and its files: its version's,
        and the next, which an upload recorded just before this delete may have placed."""
        image = self._records(kind).get(image_id)
        if image is None:
            return succeed(None)
        committed = self._context.commit(Delete(kind.entity, image_id))

        def remove(_: object) -> Deferred[None]:
            versions = [image.version + 1] + ([image.version] if image.version else [])
            removing = [self._files.remove(kind, image_id, version) for version in versions]
            return gatherResults(removing, consumeErrors=True).addCallback(lambda _: None)

        return committed.addCallback(remove)

    def _claim_name(self, kind: ImageKind, image: Image) -> Claim[None]:
        for other in self._records(kind).values():
            if other.id != image.id and (other.group, other.name) == (image.group, image.name):
                raise AlreadyExists(
                    f"{kind.label} '{image.name}' already exists in group '{image.group}'"
                )
        return self._context.claims.take(IMAGE_NAME, (kind, image.group, image.name), None)

    # --- uploads ---------------------------------------------------------------------------

    def begin_upload(
        self, kind: ImageKind, image_id: str, expected: int = 0, *, cell: str | None = None
    ) -> Upload:
        """Lock the image for an upload of its next version (refused while locked).

        ``cell``: the Cell uploading, by its certificate. A Cell uploads only the disk image it
        is capturing (Nano's Cells upload nothing else); while an image is captured, only the
        capturing Cell may upload it.
        """
        image = self.get(kind, check_id(kind, image_id))
        if self._context.claims.held(IMAGE_SYNC, kind) is not None:
            raise InvalidRequest(f"{kind.folder} are being synchronised, retry")
        capture = self._context.claims.held(IMAGE_CAPTURE, (kind, image_id))
        if cell is not None and (capture is None or capture.value.cell != cell):
            raise InvalidRequest(f"cell '{cell}' is not capturing {kind.label} '{image_id}'")
        if capture is not None and (capture.value.failed or cell != capture.value.cell):
            raise _locked(capture)
        claim = self._context.claims.take(
            IMAGE_UPLOAD, (kind, image_id), UploadProgress(0, expected)
        )
        return Upload(kind, image, image.version + 1, claim)

    def finish_upload(
        self, upload: Upload, size: int, sha1: str, sha256: str = ""
    ) -> Deferred[Image]:
        """Record the new version (its file is in place) and unlock the image.

        The previous version's file is removed once the record no longer names it.
        """
        kind, current = upload.kind, self.get(upload.kind, upload.image.id)
        capture = self._context.claims.held(IMAGE_CAPTURE, (kind, current.id))
        if capture is not None and capture.value.failed:
            raise InvalidRequest(f"the capture of {kind.label} '{current.id}' has failed")
        fields: dict[str, Any] = {
            "version": upload.version,
            "size": size,
            "path": upload.file_name,
            "modify_time": self._context.now_text(),
            "sha256": sha256,
        }
        if kind is ImageKind.DISK:
            fields |= {"check_sum": sha1, "created": True}
        image = evolve(current, **fields)
        committed = self._context.commit(Put(image), holding=(upload.claim,))

        def unlink_previous(_: object) -> Deferred[Image]:
            if current.version == 0:
                return succeed(image)
            removing = self._files.remove(kind, current.id, current.version)
            return removing.addCallback(lambda _: image)

        return committed.addCallback(unlink_previous)

    def abort_upload(self, upload: Upload) -> None:
        """Unlock the image; its record is unchanged."""
        self._context.claims.release(upload.claim)

    # --- sync ------------------------------------------------------------------------------

    def sync(self, kind: ImageKind, owner: str, group: str) -> Deferred[None]:
        """Adopt the folder's unknown files as new images; drop records without a file.

        Hashing and renaming run off the reactor; images with an upload running are left
        alone, and so is every record created while the sync runs.
        """
        if not owner:
            raise InvalidRequest("owner required")
        if not group:
            raise InvalidRequest("group required")
        check_name("owner", owner)
        check_name("group", group)
        claim = self._context.claims.take(IMAGE_SYNC, kind, None)
        return self._context.claims.until(
            Deferred.fromCoroutine(self._sync(kind, owner, group)), claim
        )

    def tidy(self) -> Deferred[None]:
        """At start: remove the version files of known images that no record names (a crash
        between an upload's rename and its commit, or before an old version was removed),
        as a sync does; uploads wait meanwhile (``being synchronised, retry``)."""
        claims = [self._context.claims.take(IMAGE_SYNC, kind, None) for kind in ImageKind]
        return self._context.claims.until(Deferred.fromCoroutine(self._tidy()), *claims)

    async def _tidy(self) -> None:
        for kind in ImageKind:
            records = self._records(kind)
            for stored in await self._files.scan(kind):
                parsed = kind.parse_file_name(stored.name)
                if parsed is None or parsed[0] not in records:
                    continue  # no image of ours: left to a sync, which adopts it
                if parsed[1] != records[parsed[0]].version:
                    await self._discard_unrecorded(kind, stored.name)

    async def _discard_unrecorded(self, kind: ImageKind, name: str) -> None:
        log.info("removing {name}: not the recorded version of its image", name=name)
        await self._files.discard(kind, name)

    async def _sync(self, kind: ImageKind, owner: str, group: str) -> None:
        before = self._records(kind)
        found: set[str] = set()
        adopted: list[Image] = []
        names = {(image.group, image.name) for image in before.values()}
        stamp = int(wall_seconds(self._context.clock))
        when = time.strftime(TIME_FORMAT, time.localtime(stamp))
        for stored in await self._files.scan(kind):
            parsed = kind.parse_file_name(stored.name)
            if parsed is not None and parsed[0] in before:
                image_id, version = parsed
                if self.upload_progress(kind, image_id) is not None:
                    continue
                if version == before[image_id].version:
                    found.add(image_id)
                else:
                    await self._discard_unrecorded(kind, stored.name)
                continue
            name = _adopted_name(kind, stored.name, stamp, names)
            names.add((group, name))
            image_id = str(uuid.uuid4())
            result = await self._files.adopt(kind, stored.name, image_id)
            fields: dict[str, Any] = {
                "id": image_id,
                "name": name,
                "owner": owner,
                "group": group,
                "description": f"generated by synchronize {kind.folder.replace('_', ' ')} on"
                f" {when}",
                "size": result.size,
                "version": 1,
                "path": kind.file_name(image_id, 1),
                "create_time": when,
                "modify_time": when,
                "sha256": result.sha256,
            }
            if kind is ImageKind.DISK:
                fields |= {"check_sum": result.sha1, "created": True}
            adopted.append(kind.entity(**fields))
        now = self._records(kind)
        changes: list[Change] = [Insert(image) for image in adopted]
        changes += [
            Delete(kind.entity, image_id)
            for image_id, image in before.items()
            if image_id not in found
            and now.get(image_id) == image
            and self.upload_progress(kind, image_id) is None
        ]
        if changes:
            await self._context.commit(*changes)


def _sort_key(image: Image) -> str:
    return f"{image.group}.{image.name}"


_DISK_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _adopted_name(kind: ImageKind, file_name: str, stamp: int, taken: set[tuple[str, str]]) -> str:
    """Core's ``<file base name>_<unix time>``, made a valid name of its kind."""
    base = file_name.rsplit(".", 1)[0] if "." in file_name else file_name
    if kind is ImageKind.DISK:
        base = _DISK_NAME_UNSAFE.sub("_", base)
    else:
        base = "".join(
            c if unicodedata.category(c) not in INVISIBLE_CATEGORIES else "_" for c in base
        )
    base = base[:200] or "image"
    name, counter = f"{base}_{stamp}", 1
    while any(taken_name == name for _, taken_name in taken):
        counter += 1
        name = f"{base}_{stamp}_{counter}"
    return name


#: The kinds by their folder name, which is also their path segment in the API.
KINDS: dict[str, ImageKind] = {kind.folder: kind for kind in ImageKind}
