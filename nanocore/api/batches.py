"""Batch create, delete and stop of guests, and their polls (§3.14, §4.14, §6 point 3).

Starting a batch answers 202 with its id; its poll answers 202 while it is in progress and 200
once it is finished (:mod:`nanocore.operations.batches` says when). A create poll names members
``<prefix>_<i>`` and shows their progress; delete and stop polls name them ``<group>.<name>``.
"""

from __future__ import annotations

from typing import Any

from nanocore.api.decode import Body, Field, Kind
from nanocore.api.guests import SPEC_OPTIONS, SPEC_REQUIRED, guest_spec
from nanocore.api.route import Call, Family, Reply
from nanocore.api.schema import ID_REPLY, STRING, UINT, Schema, array, enum, obj
from nanocore.model import BatchKind, BatchStatus, BatchTask
from nanocore.operations.batches import NAME_RULES, BatchCreateSpec
from nanocore.operations.core import Operations

#: What a member's status is called in each kind of poll.
STATUS_NAMES: dict[BatchKind, dict[BatchStatus, str]] = {
    BatchKind.CREATE: {
        BatchStatus.PROCESSING: "creating", BatchStatus.SUCCESS: "created",
        BatchStatus.FAIL: "fail",
    },
    BatchKind.DELETE: {
        BatchStatus.PROCESSING: "deleting", BatchStatus.SUCCESS: "deleted",
        BatchStatus.FAIL: "fail",
    },
    BatchKind.STOP: {
        BatchStatus.PROCESSING: "stopping", BatchStatus.SUCCESS: "stopped",
        BatchStatus.FAIL: "fail",
    },
}  # fmt: skip

BATCH_CREATE = Body(
    (
        Field("name_prefix", required=True, missing="prefix required",
              description="members are named <prefix>_<i>, i from 0"),
        *SPEC_REQUIRED,
        Field("name_rule", choices=tuple(NAME_RULES), description="only order is supported"),
        Field("count", Kind.UINT, description="how many guests, 1 to 1000"),
        Field("disks", Kind.UINT_LIST, description="bytes; the system disk first"),
        *SPEC_OPTIONS,
    ),
    name="userRequest",
)  # fmt: skip
BATCH_GUESTS = Body(
    (
        Field("guest", Kind.STRING_LIST, description="guest ids"),
        Field("force", Kind.BOOL, description="delete: ignored, as by Core"),
    ),
    name="UserRequest",
)
BATCH_STOP = Body(
    (
        Field("guest", Kind.STRING_LIST, description="guest ids"),
        Field("force", Kind.BOOL, description="power off instead of shutting down"),
    ),
    name="UserRequest",
)
CREATE_MEMBER = obj(
    ("name", "id", "status", "progress"),
    name=STRING,
    id=STRING,
    status=enum("creating", "created", "fail"),
    error=STRING,
    progress=UINT,
)


def _member(statuses: tuple[str, ...]) -> dict[str, Any]:
    return obj(
        ("name", "id", "status"), name=STRING, id=STRING, status=enum(*statuses), error=STRING
    )


def poll(task: BatchTask) -> Reply:
    """The members in order; 202 while the batch is in progress, 200 once it is finished."""
    names = STATUS_NAMES[task.kind]
    members = []
    for guest in task.guests:
        member: dict[str, Any] = {
            "name": guest.name,
            "id": guest.id,
            "status": names[guest.status],
        }
        if guest.error:
            member["error"] = guest.error
        if task.kind is BatchKind.CREATE:
            member["progress"] = guest.progress
        members.append(member)
    return Reply(members, 200 if task.finished else 202)


def _started(batch_id: str) -> Reply:
    return Reply({"id": batch_id}, 202)


batches: Family[Operations] = Family("batches")


def _poll_route(kind: BatchKind, member: Schema) -> None:
    """``GET /batch/<kind>_guest/:id``: the same poll for every kind of batch."""

    @batches.route(
        "GET",
        f"/batch/{kind.value}_guest/:id",
        f"Poll a batch {kind.value}",
        response=array(member),
    )
    def get_batch(ops: Operations, call: Call) -> Reply:
        return poll(ops.batches.get(kind, call.params["id"]))


_poll_route(BatchKind.CREATE, CREATE_MEMBER)


@batches.route(
    "POST",
    "/batch/create_guest/",
    "Create <count> guests named <prefix>_<i>; 202 with the batch id",
    body=BATCH_CREATE,
    response=ID_REPLY,
)
def start_batch_create(ops: Operations, call: Call) -> object:
    body = call.body
    spec = BatchCreateSpec(
        name_rule=body.text("name_rule"),
        prefix=body.text("name_prefix"),
        count=body.integer("count"),
        guest=guest_spec(body),
    )
    return ops.batches.create(spec).addCallback(_started)


_poll_route(BatchKind.DELETE, _member(("deleting", "deleted", "fail")))


@batches.route(
    "POST",
    "/batch/delete_guest/",
    "Delete stopped guests; 202 with the batch id",
    body=BATCH_GUESTS,
    response=ID_REPLY,
)
def start_batch_delete(ops: Operations, call: Call) -> object:
    return ops.batches.delete(call.body.texts("guest")).addCallback(_started)


_poll_route(BatchKind.STOP, _member(("stopping", "stopped", "fail")))


@batches.route(
    "POST",
    "/batch/stop_guest/",
    "Stop running guests (force: power off); 202 with the batch id",
    body=BATCH_STOP,
    response=ID_REPLY,
)
def start_batch_stop(ops: Operations, call: Call) -> object:
    body = call.body
    return ops.batches.stop(body.texts("guest"), force=body.flag("force")).addCallback(_started)
