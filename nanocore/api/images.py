"""Media and disk images (§3.8-3.9, §4.8-4.9): the catalogue routes and the stream routes.

The three stream routes (an upload of either kind, a disk image download) are in the table so
that they are documented and routed like every other; their bytes never pass through the
decode → handler → encode chain: :mod:`nanocore.api.streams` serves them in front of it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from twisted.internet.defer import Deferred

from nanocore.api.auth import Variant
from nanocore.api.decode import Body, Field, Kind
from nanocore.api.route import Call, Family, Fields, Reply, empty
from nanocore.api.schema import BOOL, ID_REPLY, STRING, UINT, array, nullable, obj
from nanocore.model import DiskImage
from nanocore.operations.core import Operations
from nanocore.operations.errors import InvalidRequest
from nanocore.operations.images import Image, ImageKind, ImageSpec

TAGS = array(STRING)
IMAGE_ITEM = obj(
    ("name", "id", "size"),
    name=STRING,
    id=STRING,
    description=STRING,
    size=UINT,
    tags=TAGS,
    create_time=STRING,
    modify_time=STRING,
)
MEDIA_IMAGE = obj(
    ("name", "description", "size", "tags"),
    name=STRING,
    description=STRING,
    size=UINT,
    tags=nullable(TAGS),
    progress=UINT,
)
DISK_IMAGE = obj(
    name=STRING,
    description=STRING,
    size=UINT,
    created=BOOL,
    progress=UINT,
    tags=nullable(TAGS),
)
IMAGE_FIELDS = (
    Field("name"),
    Field("owner"),
    Field("group"),
    Field("description"),
    Field("tags", Kind.STRING_LIST),
)
IMAGE_BODY = Body(IMAGE_FIELDS)
DISK_IMAGE_BODY = Body((*IMAGE_FIELDS, Field("guest")))
SYNC_BODY = Body((Field("owner", required=True), Field("group", required=True)))
MULTIPART = "multipart/form-data"


def image_item(image: Image) -> dict[str, Any]:
    """Core's ``respImage``: the list form of either kind."""
    data: dict[str, Any] = {"name": image.name, "id": image.id}
    if image.description:
        data["description"] = image.description
    data["size"] = image.size
    if image.tags:
        data["tags"] = list(image.tags)
    if image.create_time:
        data["create_time"] = image.create_time
    if image.modify_time:
        data["modify_time"] = image.modify_time
    return data


def _tags(image: Image) -> list[str] | None:
    return list(image.tags) if image.tags else None


def _spec(body: Fields) -> ImageSpec:
    return ImageSpec(
        name=body.text("name"),
        owner=body.text("owner"),
        group=body.text("group"),
        description=body.text("description"),
        tags=body.texts("tags"),
    )


def _repeated(raw_query: str, key: str) -> list[str]:
    """Every value of a repeated query key (``tags=a&tags=b``), decoded as Go decodes."""
    return [value for name, value in parse_qsl(raw_query, keep_blank_values=True) if name == key]


def streamed(ops: Operations, call: Call) -> object:
    """Stream routes are served in front of the app (:mod:`nanocore.api.streams`)."""
    raise InvalidRequest("this route streams its body and is not served here")


media: Family[Operations] = Family("media images")
disks: Family[Operations] = Family("disk images")


@media.route(
    "GET",
    "/media_image_search/*filepath",
    "Media images whose owner, or group, is the one asked (signed, unlike in Core)",
    response=array(IMAGE_ITEM),
    query=("owner", "group"),
)
def search_media(ops: Operations, call: Call) -> object:
    owner, group = call.query.get("owner", ""), call.query.get("group", "")
    return [image_item(i) for i in ops.images.search(ImageKind.MEDIA, owner, group)]


@media.route(
    "GET",
    "/media_images/",
    "Every media image, by group and name (Core always answered [])",
    response=array(IMAGE_ITEM),
    cacheable=True,
)
def list_media(ops: Operations, call: Call) -> object:
    return [image_item(i) for i in ops.images.all(ImageKind.MEDIA)]


@media.route("GET", "/media_images/:id", "Get a media image", response=MEDIA_IMAGE)
def get_media(ops: Operations, call: Call) -> object:
    image = ops.images.get(ImageKind.MEDIA, call.params["id"])
    data: dict[str, Any] = {
        "name": image.name,
        "description": image.description,
        "size": image.size,
        "tags": _tags(image),
    }
    progress = ops.images.upload_progress(ImageKind.MEDIA, image.id)
    if progress is not None:
        data["progress"] = progress.percent()
    return data


@media.route(
    "POST", "/media_images/", "Create a media image record", body=IMAGE_BODY, response=ID_REPLY
)
def create_media(ops: Operations, call: Call) -> Deferred[object]:
    created = ops.images.create(ImageKind.MEDIA, _spec(call.body))
    return created.addCallback(lambda image_id: {"id": image_id})


@media.route("PUT", "/media_images/:id", "Change a media image (empty keeps)", body=IMAGE_BODY)
def modify_media(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.images.modify(ImageKind.MEDIA, call.params["id"], _spec(call.body)))


@media.route("DELETE", "/media_images/:id", "Delete a media image and its file")
def delete_media(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.images.delete(ImageKind.MEDIA, call.params["id"]))


@media.route("PATCH", "/media_images/", "Sync media images with their folder", body=SYNC_BODY)
def sync_media(ops: Operations, call: Call) -> Deferred[str]:
    owner, group = call.body.text("owner"), call.body.text("group")
    return empty(ops.images.sync(ImageKind.MEDIA, owner, group))


@media.route(
    "POST",
    "/media_images/:id/file/",
    "Upload an ISO: multipart part 'image' (checksum and size optional, before it)",
    auth=Variant.STREAM,
    upload=MULTIPART,
)
def upload_media(ops: Operations, call: Call) -> object:
    return streamed(ops, call)


@disks.route(
    "GET",
    "/disk_image_search/*filepath",
    "Disk images whose owner, or group, is the one asked; with tags, one must match",
    response=array(IMAGE_ITEM),
    query=("owner", "group", "tags"),
)
def search_disks(ops: Operations, call: Call) -> object:
    owner, group = call.query.get("owner", ""), call.query.get("group", "")
    tags = _repeated(call.raw_query, "tags")
    return [image_item(i) for i in ops.images.search(ImageKind.DISK, owner, group, tags)]


@disks.route("GET", "/disk_images/:id", "Get a disk image, with progress", response=DISK_IMAGE)
def get_disk(ops: Operations, call: Call) -> object:
    image = ops.images.get(ImageKind.DISK, call.params["id"])
    assert isinstance(image, DiskImage)
    progress = ops.images.progress(ImageKind.DISK, image.id)
    return {
        "name": image.name,
        "description": image.description,
        "size": image.size,
        "created": image.created,
        "progress": progress or 0,
        "tags": _tags(image),
    }


@disks.route(
    "POST",
    "/disk_images/",
    "Create a disk image record (with guest: capture the guest's system disk)",
    body=DISK_IMAGE_BODY,
    response=ID_REPLY,
)
def create_disk(ops: Operations, call: Call) -> Deferred[object]:
    guest = call.body.text("guest")
    if guest:
        capturing = ops.captures.capture(_spec(call.body), guest)
        return capturing.addCallback(lambda image_id: Reply({"id": image_id}, 202))
    created = ops.images.create(ImageKind.DISK, _spec(call.body))
    return created.addCallback(lambda image_id: {"id": image_id})


@disks.route("PUT", "/disk_images/:id", "Change a disk image (empty keeps)", body=IMAGE_BODY)
def modify_disk(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.images.modify(ImageKind.DISK, call.params["id"], _spec(call.body)))


@disks.route("DELETE", "/disk_images/:id", "Delete a disk image and its file")
def delete_disk(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.images.delete(ImageKind.DISK, call.params["id"]))


@disks.route("PATCH", "/disk_images/", "Sync disk images with their folder", body=SYNC_BODY)
def sync_disks(ops: Operations, call: Call) -> Deferred[str]:
    owner, group = call.body.text("owner"), call.body.text("group")
    return empty(ops.images.sync(ImageKind.DISK, owner, group))


@disks.route(
    "GET",
    "/disk_images/:id/file/",
    "Download a disk image (Range, If-Modified-Since; Signature: its SHA-1)",
    auth=Variant.STREAM,
    raw="application/octet-stream",
    response={"type": "string", "format": "binary"},
)
def download_disk(ops: Operations, call: Call) -> object:
    return streamed(ops, call)


@disks.route(
    "POST",
    "/disk_images/:id/file/",
    "Upload a qcow2: multipart part 'image' (checksum and size optional, before it)",
    auth=Variant.STREAM,
    upload=MULTIPART,
)
def upload_disk(ops: Operations, call: Call) -> object:
    return streamed(ops, call)
