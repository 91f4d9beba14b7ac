"""Migrations: start one, follow one, list them (§3.12, §4.12).

The shapes are Nano's: ``POST`` answers 200 with ``{id}``, a record is
``{finished, progress?, error?}`` (``id`` first in the list). Records are kept for a while
after they end (:data:`nanocore.operations.migrations.RETENTION`) instead of being deleted when
first read.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from nanocore.api.decode import Body, Field, Kind
from nanocore.api.route import Call, Family
from nanocore.api.schema import BOOL, ID_REPLY, STRING, UINT, array, obj
from nanocore.model import Migration
from nanocore.operations.core import Operations
from nanocore.operations.migrations import MigrationSpec

CREATE_BODY = Body(
    (
        Field("source_pool", description="the pool of both Cells"),
        Field("source_cell"),
        Field("target_pool", description="must be empty: migration stays in its pool"),
        Field("target_cell"),
        Field("instances", Kind.STRING_LIST, description="guest ids; none: every guest of "
              "the source Cell"),
    ),
    name="UserRequest",
)  # fmt: skip
STATUS = obj(("finished",), finished=BOOL, progress=UINT, error=STRING)
LISTED = obj(("id", "finished"), id=STRING, finished=BOOL, progress=UINT, error=STRING)


def status(record: Migration, *, with_id: bool = False) -> dict[str, Any]:
    """Go's struct with ``omitempty`` on progress and error."""
    data: dict[str, Any] = {"id": record.id} if with_id else {}
    data["finished"] = record.finished
    if record.progress:
        data["progress"] = record.progress
    if record.error:
        data["error"] = record.error
    return data


migrations: Family[Operations] = Family("migrations")


@migrations.route(
    "GET", "/migrations/", "Migrations and failovers kept now", response=array(LISTED)
)
def list_migrations(ops: Operations, call: Call) -> list[dict[str, Any]]:
    return [status(record, with_id=True) for record in ops.migrations.kept()]


@migrations.route("GET", "/migrations/:id", "A migration's state", response=STATUS)
def get_migration(ops: Operations, call: Call) -> dict[str, Any]:
    return status(ops.migrations.get(call.params["id"]))


@migrations.route(
    "POST",
    "/migrations/",
    "Move stopped guests to another Cell of their pool on shared storage",
    body=CREATE_BODY,
    response=ID_REPLY,
)
def create_migration(ops: Operations, call: Call) -> Deferred[dict[str, str]]:
    body = call.body
    spec = MigrationSpec(
        source_pool=body.text("source_pool"),
        source_cell=body.text("source_cell"),
        target_pool=body.text("target_pool"),
        target_cell=body.text("target_cell"),
        instances=tuple(body.texts("instances")),
    )
    return ops.migrations.create(spec).addCallback(lambda migration: {"id": migration})
