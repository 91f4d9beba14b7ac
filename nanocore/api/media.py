"""Inserting and ejecting an ISO in a running guest (§3.10, §4.10)."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from nanocore.api.decode import Body, Field, Kind
from nanocore.api.route import Call, Family, empty
from nanocore.operations.core import Operations

INSERT_BODY = Body(
    (
        Field("source", description="media image id"),
        Field("type", Kind.UINT, description="ignored, as by Core"),
    )
)

media: Family[Operations] = Family("instance media")


@media.route(
    "POST", "/instances/:id/media", "Insert a media image into a running guest", body=INSERT_BODY
)
def insert_media(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.media.insert(call.params["id"], call.body.text("source")))


@media.route("DELETE", "/instances/:id/media", "Eject the media of a running guest")
def eject_media(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.media.eject(call.params["id"]))
