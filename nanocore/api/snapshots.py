"""A guest's snapshots, kept by its Cell (§3.11, §4.11)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from nanocore.api.decode import Body, Field
from nanocore.api.route import Call, Family, empty
from nanocore.api.schema import BOOL, STRING, obj
from nanocore.operations.core import Operations
from nanocore.operations.snapshots import SnapshotDetail, SnapshotNode

NODE = obj((), is_root=BOOL, is_current=BOOL, backing=STRING)
#: An object keyed by snapshot name (Go marshals the map with its keys sorted).
TREE: dict[str, Any] = {"type": "object", "additionalProperties": NODE}
DETAIL = obj(("running", "create_time"), running=BOOL, description=STRING, create_time=STRING)
CREATE_BODY = Body((Field("name", description="[A-Za-z0-9_.-]"), Field("description")))
RESTORE_BODY = Body((Field("target", description="the snapshot to revert to"),))


def tree(nodes: list[SnapshotNode]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for node in sorted(nodes, key=lambda n: n.name):
        shown: dict[str, Any] = {}
        if node.is_root:
            shown["is_root"] = True
        if node.is_current:
            shown["is_current"] = True
        if node.backing:
            shown["backing"] = node.backing
        data[node.name] = shown
    return data


def detail(snapshot: SnapshotDetail) -> dict[str, Any]:
    data: dict[str, Any] = {"running": snapshot.running}
    if snapshot.description:
        data["description"] = snapshot.description
    data["create_time"] = snapshot.create_time
    return data


snapshots: Family[Operations] = Family("snapshots")

SNAPSHOTS = "/instances/:id/snapshots/"


@snapshots.route("GET", SNAPSHOTS, "A guest's snapshot tree, keyed by name", response=TREE)
def get_tree(ops: Operations, call: Call) -> Deferred[dict[str, Any]]:
    return ops.snapshots.tree(call.params["id"]).addCallback(tree)


@snapshots.route("POST", SNAPSHOTS, "Take a snapshot of a stopped guest", body=CREATE_BODY)
def create_snapshot(ops: Operations, call: Call) -> Deferred[str]:
    b = call.body
    return empty(ops.snapshots.create(call.params["id"], b.text("name"), b.text("description")))


@snapshots.route("PUT", SNAPSHOTS, "Revert a stopped guest to a snapshot", body=RESTORE_BODY)
def restore_snapshot(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.snapshots.restore(call.params["id"], call.body.text("target")))


@snapshots.route("GET", SNAPSHOTS + ":name", "One snapshot of a guest", response=DETAIL)
def get_snapshot(ops: Operations, call: Call) -> Deferred[dict[str, Any]]:
    p = call.params
    return ops.snapshots.get(p["id"], p["name"]).addCallback(detail)


@snapshots.route("DELETE", SNAPSHOTS + ":name", "Delete a snapshot of a guest")
def delete_snapshot(ops: Operations, call: Call) -> Deferred[str]:
    p = call.params
    return empty(ops.snapshots.delete(p["id"], p["name"]))
