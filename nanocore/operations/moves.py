"""What a move of guests between Cells holds while it runs, for migrations by hand and failover
alike: the guests' claims, their capacity on the target, and the waits for the target."""

from __future__ import annotations

from collections.abc import Sequence

from attrs import define
from twisted.internet.defer import Deferred

from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.model import Migration
from nanocore.operations.claims import Claim
from nanocore.operations.guests.placement import Share


@define
class Transit:
    """A migration under way: its record, what it holds, and the wait for the target."""

    record: Migration
    guests: list[Claim[str]]
    capacity: list[Claim[Share]]
    arrived: Deferred[Message] | None = None
    #: A failover's attach, until the target's event names the guests or it fails.
    attaching: Deferred[Message] | None = None

    def stop_waiting(self) -> None:
        """The attach is no longer waited for (its event came, or the move ended)."""
        attaching, self.attaching = self.attaching, None
        if attaching is not None and not attaching.called:
            attaching.cancel()


def detach(instances: Sequence[str]) -> Message:
    return Message(
        id=MessageID.DetachInstanceRequest, string_array_params={ParamKey.Instance: instances}
    )


def attach_at_once(source: str, instances: Sequence[str]) -> Message:
    """The failover attach: take the guests and start serving them (no Migrate follows)."""
    return Message(
        id=MessageID.AttachInstanceRequest,
        bool_params={ParamKey.Immediate: True},
        string_params={ParamKey.Cell: source},
        string_array_params={ParamKey.Instance: instances},
    )


def refused_attach(message: Message) -> bool:
    """What ends the wait for an attach at once: only its refusal (a stock Cell answers a
    success with the guests' ``InstanceMigratedEvent``, which names no token)."""
    return message.id == MessageID.AttachInstanceResponse and not message.success
