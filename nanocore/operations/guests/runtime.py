"""A guest's runtime status, asked of its Cell at every call (§4.7, cell-protocol.md §5.3).

Core's record says what Core knows: names, pool, Cell, sizes, addresses (the display and
network addresses are Core's, as the original overwrote the Cell's before relaying), QoS, the
monitor secret. The Cell's answer to ``GetInstanceStatusRequest`` says what only it knows now:
whether the guest runs, whether media is attached, its CPU usage, free memory and disk, and its
I/O counters. So this route shows the Cell's view of running, and ``GET /guests/:id`` Core's
record until the Cell's event arrives (observed-with-cells, "two views of running").

The Cell's answer is checked where it enters: a malformed one is refused with a message naming
the Cell and the parameter, never half shown.
"""

from __future__ import annotations

import math

from attrs import evolve, frozen
from twisted.internet.defer import Deferred

from nanocore.cluster.message import Message, MessageID, ParamKey
from nanocore.model import Instance, InstanceStatus
from nanocore.operations.cells import CellRefused
from nanocore.operations.guests.common import GuestAccess

#: ``Status`` of the reply: the low two bits say running (1); bit 2 is "lost" (§4.0).
_RUNNING_MASK, _RUNNING = 0b11, 1


@frozen
class RuntimeStatus:
    """Core's record (running as the Cell says) and the live figures of its Cell."""

    instance: Instance
    media_attached: bool
    cpu_usage: float
    memory_available: int
    disk_available: int
    #: Bytes read, written, received and sent, as the Cell counts them.
    io: tuple[int, int, int, int]


class Runtime:
    """``GET /instances/:id``: one request to the guest's Cell per call."""

    def __init__(self, access: GuestAccess) -> None:
        self._access = access

    def status(self, instance_id: str) -> Deferred[RuntimeStatus]:
        asking = self._access.ask(
            instance_id,
            lambda instance: Message(
                id=MessageID.GetInstanceStatusRequest,
                string_params={ParamKey.Instance: instance.id},
            ),
        )
        return asking.addCallback(lambda answer: self._read(*answer))

    def _read(self, instance: Instance, reply: Message) -> RuntimeStatus:
        def refuse(detail: str) -> CellRefused:
            return CellRefused(f"cell '{instance.cell}' sent an invalid instance status: {detail}")

        usage = reply.float_params.get(ParamKey.Usage, 0.0)
        if not (math.isfinite(usage) and usage >= 0.0):
            raise refuse(f"Usage {usage!r}")
        available = reply.uint_array_params.get(ParamKey.Available, (0, 0))
        if len(available) != 2:
            raise refuse(f"Available has {len(available)} values, not 2")
        io = reply.uint_array_params.get(ParamKey.IO, (0, 0, 0, 0))
        if len(io) != 4:
            raise refuse(f"IO has {len(io)} values, not 4")
        live = instance
        if instance.created:
            running = reply.uint_params.get(ParamKey.Status, 0) & _RUNNING_MASK == _RUNNING
            status = InstanceStatus.RUNNING if running else InstanceStatus.STOPPED
            live = evolve(instance, status=status)
        return RuntimeStatus(
            instance=live,
            media_attached=bool(reply.bool_params.get(ParamKey.Media, False)),
            cpu_usage=usage,
            memory_available=available[0],
            disk_available=available[1],
            io=(io[0], io[1], io[2], io[3]),
        )
