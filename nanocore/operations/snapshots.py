"""A guest's snapshots, kept by its Cell (api-reference §4.11, cell-protocol.md §5.6).

Core keeps no snapshot state: it checks the snapshot name (``[A-Za-z0-9_.-]``, as Nano's
qualifier, and not empty), asks the guest's Cell, and relays what the Cell refuses verbatim
(a live snapshot, a snapshot others depend on). What the Cell answers is read strictly: a
reply whose lists do not line up is refused, not guessed at. Taking, deleting or restoring a
snapshot writes the guest's disks: refused while a disk image is captured from it.
"""

from __future__ import annotations

from attrs import frozen
from twisted.internet.defer import Deferred

from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.operations.base import check_name, refusals_deferred
from nanocore.operations.cells import CellRefused
from nanocore.operations.guests import GuestAccess

#: The requests that write the guest's disks, refused while a disk image is captured from it.
_WRITES = frozenset(
    (MessageID.CreateSnapshotRequest, MessageID.DeleteSnapshotRequest,
     MessageID.RestoreSnapshotRequest)
)  # fmt: skip


@frozen
class SnapshotNode:
    """One snapshot in a guest's tree: root, current, and the snapshot it is backed by."""

    name: str
    is_root: bool
    is_current: bool
    backing: str


@frozen
class SnapshotDetail:
    """One snapshot: taken while running, its description, when it was taken."""

    running: bool
    description: str
    create_time: str


def check_snapshot_name(name: str) -> None:
    """Nano's snapshot qualifier, not empty, at most 255 characters (as every name kept)."""
    check_name("snapshot", name, also=".")


def _tree(cell: str, reply: Message) -> list[SnapshotNode]:
    names = reply.string_array_params.get(ParamKey.Name, ())
    backings = reply.string_array_params.get(ParamKey.Previous, ())
    roots = reply.uint_array_params.get(ParamKey.Source, ())
    currents = reply.uint_array_params.get(ParamKey.Current, ())
    if not len(names) == len(backings) == len(roots) == len(currents):
        raise CellRefused(
            f"cell '{cell}' sent {len(names)} snapshot names with {len(backings)} backings, "
            f"{len(roots)} root and {len(currents)} current flags"
        )
    return [
        SnapshotNode(name, root == 1, current == 1, backing)
        for name, backing, root, current in zip(names, backings, roots, currents, strict=True)
    ]


def _detail(cell: str, reply: Message) -> SnapshotDetail:
    running = reply.bool_params.get(ParamKey.Status)
    created = reply.string_params.get(ParamKey.Create)
    if running is None or created is None:
        raise CellRefused(f"cell '{cell}' sent a snapshot without its status or creation time")
    return SnapshotDetail(running, reply.string_params.get(ParamKey.Description, ""), created)


class Snapshots:
    """List, get, create, delete and restore a guest's snapshots on its Cell."""

    def __init__(self, access: GuestAccess) -> None:
        self._access = access

    def _ask(
        self, instance_id: str, message_id: int, name: str | None = None, description: str = ""
    ) -> Deferred[Message]:
        """The name is checked before the guest is looked up, as Nano does."""
        params: dict[int, str] = {ParamKey.Instance: instance_id}
        if name is not None:
            check_snapshot_name(name)
            params[ParamKey.Name] = name
        if message_id == MessageID.CreateSnapshotRequest:
            params[ParamKey.Description] = description
        instance = self._access.instance(instance_id)
        if message_id in _WRITES:
            self._access.refuse_capturing(instance_id)
            self._access.refuse_resetting(instance)
        message = Message(id=message_id, string_params=params)
        return self._access.forward_for(instance, message)

    @refusals_deferred
    def tree(self, instance_id: str) -> Deferred[list[SnapshotNode]]:
        cell = self._access.instance(instance_id).cell
        asking = self._ask(instance_id, MessageID.QuerySnapshotRequest)
        return asking.addCallback(lambda reply: _tree(cell, reply))

    @refusals_deferred
    def get(self, instance_id: str, name: str) -> Deferred[SnapshotDetail]:
        check_snapshot_name(name)
        cell = self._access.instance(instance_id).cell
        asking = self._ask(instance_id, MessageID.GetSnapshotRequest, name)
        return asking.addCallback(lambda reply: _detail(cell, reply))

    @refusals_deferred
    def create(self, instance_id: str, name: str, description: str) -> Deferred[None]:
        asking = self._ask(instance_id, MessageID.CreateSnapshotRequest, name, description)
        return asking.addCallback(lambda _: None)

    @refusals_deferred
    def delete(self, instance_id: str, name: str) -> Deferred[None]:
        asking = self._ask(instance_id, MessageID.DeleteSnapshotRequest, name)
        return asking.addCallback(lambda _: None)

    @refusals_deferred
    def restore(self, instance_id: str, name: str) -> Deferred[None]:
        asking = self._ask(instance_id, MessageID.RestoreSnapshotRequest, name)
        return asking.addCallback(lambda _: None)
