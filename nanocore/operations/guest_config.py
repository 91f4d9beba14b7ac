"""Changing a guest's configuration (api-reference §4.6, cell-protocol.md §5.4).

Every change is: look the guest up, check what Core can check, ask the guest's Cell, and only
when the Cell says it is done commit **the one field that changed** onto the record as it is
then (the original wrote back the whole record it had read before asking, losing what Cell
events changed meanwhile). While a change is asked, the ``(guest, aspect)`` is claimed, so two
changes of the same field of one guest never race each other to the Cell and the store.

Changes that grow a guest (cores, memory, a disk) are checked against its Cell's capacity and
claimed through :mod:`nanocore.operations.growth` first. A rename claims the new name in the
pool from the uniqueness check to its commit, as a creation does, so two renames to one name
cannot both win; the name is stored under the guest's group (``<group>.<name>``), never raw.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from attrs import evolve, frozen
from twisted.internet.defer import Deferred

from nanocore.cluster.message import INT64_MAX, INT64_MIN, Message, MessageID, ParamKey
from nanocore.model import Instance
from nanocore.operations.base import Context, build, check_name, refusals_deferred
from nanocore.operations.claims import Claim, ClaimKind
from nanocore.operations.errors import InvalidRequest
from nanocore.operations.growth import Growth, Increase
from nanocore.operations.guests import GuestAccess
from nanocore.operations.guests.create import PRIORITIES
from nanocore.operations.guests.placement import Placement
from nanocore.store import Put

#: One change of one aspect of a guest (key: ``(instance id, aspect)``) while it is asked.
CHANGING: ClaimKind[None] = ClaimKind(
    "guest change",
    lambda held: InvalidRequest(
        f"{held.key[1]} of instance '{held.key[0]}' is being changed, retry"  # type: ignore[index]
    ),
)

_ATOI = re.compile(r"[+-]?[0-9]+")
NO_GROWTH = Increase()


@frozen
class Credentials:
    """The guest OS login a Cell reports: ``user`` and ``password`` (either may be empty)."""

    user: str
    password: str


def disk_index(text: str, instance: Instance) -> int:
    """A disk index from the path, read as Go's ``strconv.Atoi``, within the guest's disks."""
    if not text.isascii() or not _ATOI.fullmatch(text):
        raise InvalidRequest(f'strconv.Atoi: parsing "{text}": invalid syntax')
    index = int(text)
    if not INT64_MIN <= index <= INT64_MAX:
        raise InvalidRequest(f'strconv.Atoi: parsing "{text}": value out of range')
    if not 0 <= index < len(instance.disks):
        raise InvalidRequest(f"invalid disk index {index}")
    return index


def limit(name: str, value: int) -> int:
    """A QoS limit the store can hold (a signed 64-bit integer; 0 is unlimited)."""
    if value > INT64_MAX:
        raise InvalidRequest(f"invalid {name} {value}")
    return value


class GuestConfig:
    """Rename, cores, memory, auto start, QoS, disks and the guest OS password."""

    def __init__(self, access: GuestAccess, placement: Placement, growth: Growth) -> None:
        self._access = access
        self._context: Context = access.context
        self._placement = placement
        self._growth = growth

    # -- the one way a change is made ---------------------------------------------------------

    def _change(
        self,
        instance: Instance,
        aspect: str,
        message: Message,
        update: Callable[[Instance], Instance],
        *,
        increase: Increase = NO_GROWTH,
        also: Callable[[], list[Claim[Any]]] = list,
    ) -> Deferred[Message]:
        """Claim the aspect (and what ``also`` claims), grow if asked, ask, then commit."""
        self._access.refuse_lost(instance)
        claims = self._context.claims
        held = [claims.take(CHANGING, (instance.id, aspect), None)]
        try:
            held.extend(also())
            growth = self._growth.claim(instance, aspect, increase)
        except BaseException:
            for claim in held:
                claims.release(claim)
            raise
        return Deferred.fromCoroutine(self._asked(instance, message, update, growth, held))

    async def _asked(
        self,
        instance: Instance,
        message: Message,
        update: Callable[[Instance], Instance],
        growth: Claim[Any] | None,
        held: list[Claim[Any]],
    ) -> Message:
        claims = self._context.claims
        try:
            try:
                reply = await self._access.forward_for(instance, message)
            except BaseException:
                self._growth.abandoned(growth)
                raise
            self._growth.applied(growth)

            def decide(current: Instance | None) -> list[Put]:
                if current is None:  # deleted meanwhile: nothing left to change
                    return []
                changed = update(current)
                return [] if changed == current else [Put(changed)]

            changing = self._access.change(instance.id, decide)
            await self._access.recorded_after_cell(instance.cell, changing)
            return reply
        finally:
            for claim in held:
                claims.release(claim)

    @staticmethod
    def _request(message_id: int, instance: Instance, **params: Any) -> Message:
        strings = {ParamKey.Guest: instance.id, **params.pop("string_params", {})}
        return Message(id=message_id, string_params=strings, **params)

    # -- name ---------------------------------------------------------------------------------

    @refusals_deferred
    def rename(self, instance_id: str, name: str) -> Deferred[None]:
        """Rename within the guest's group; ``<group>.<name>`` of its own group is accepted."""
        instance = self._access.instance(instance_id)
        bare = name.removeprefix(f"{instance.group}.")
        check_name("guest", bare)
        renamed = build(functools.partial(evolve, instance), name=bare)
        if instance.running:
            raise InvalidRequest(f"guest '{instance.full_name}' is still running")
        if bare == instance.name:
            raise InvalidRequest("no need to change")
        message = self._request(
            MessageID.ModifyGuestNameRequest,
            instance,
            string_params={ParamKey.Name: renamed.full_name},
        )
        changing = self._change(
            instance,
            "name",
            message,
            lambda current: evolve(current, name=bare),
            also=lambda: [self._placement.claim_name(instance.pool, instance.group, bare)],
        )
        return changing.addCallback(lambda _: None)

    # -- cores and memory ---------------------------------------------------------------------

    @refusals_deferred
    def set_cores(self, instance_id: str, cores: int) -> Deferred[None]:
        return self._set_size(
            instance_id, "cores", cores, MessageID.ModifyCoreRequest, ParamKey.Core
        )

    @refusals_deferred
    def set_memory(self, instance_id: str, memory: int) -> Deferred[None]:
        """Memory in bytes."""
        return self._set_size(
            instance_id, "memory", memory, MessageID.ModifyMemoryRequest, ParamKey.Memory
        )

    def _set_size(
        self, instance_id: str, field: str, value: int, message_id: int, key: ParamKey
    ) -> Deferred[None]:
        """Cores or memory: more of it must fit on the guest's Cell."""
        if value < 1:
            raise InvalidRequest(f"{field} required")
        instance = self._access.instance(instance_id)
        now: int = getattr(instance, field)
        if value == now:
            raise InvalidRequest("no need to modify")
        message = self._request(message_id, instance, uint_params={key: value})
        changed: dict[str, Any] = {field: value}
        changing = self._change(
            instance,
            field,
            message,
            lambda current: evolve(current, **changed),
            increase=Increase(**{field: value - now}),
        )
        return changing.addCallback(lambda _: None)

    # -- auto start and QoS -------------------------------------------------------------------

    @refusals_deferred
    def set_auto_start(self, instance_id: str, enable: bool) -> Deferred[None]:
        instance = self._access.instance(instance_id)
        if instance.auto_start == enable:
            state = "enabled" if enable else "disabled"
            raise InvalidRequest(f"auto start of guest '{instance.full_name}' already {state}")
        message = self._request(
            MessageID.ModifyAutoStartRequest, instance, bool_params={ParamKey.Enable: enable}
        )
        changing = self._change(
            instance, "auto start", message, lambda current: evolve(current, auto_start=enable)
        )
        return changing.addCallback(lambda _: None)

    @refusals_deferred
    def set_priority(self, instance_id: str, priority: str) -> Deferred[None]:
        """CPU priority ``high``, ``medium`` or ``low`` (checked before the guest is looked up)."""
        level = PRIORITIES.get(priority)
        if level is None:
            raise InvalidRequest(f"invalid CPU priority {priority}")
        instance = self._access.instance(instance_id)
        if instance.qos.cpu_priority is level:
            raise InvalidRequest("no need to change")
        message = self._request(
            MessageID.ModifyPriorityRequest, instance, uint_params={ParamKey.Priority: int(level)}
        )
        changing = self._change(
            instance,
            "CPU priority",
            message,
            lambda current: evolve(current, qos=evolve(current.qos, cpu_priority=level)),
        )
        return changing.addCallback(lambda _: None)

    @refusals_deferred
    def set_disk_limits(
        self, instance_id: str, *, read_speed: int, read_iops: int, write_speed: int,
        write_iops: int,
    ) -> Deferred[None]:  # fmt: skip
        """Disk bytes/s and IOPS limits (0: unlimited); the guest must be stopped."""
        limits = {
            "read_speed": limit("read speed", read_speed),
            "write_speed": limit("write speed", write_speed),
            "read_iops": limit("read IOPS", read_iops),
            "write_iops": limit("write IOPS", write_iops),
        }
        instance = self._access.instance(instance_id)
        if instance.running:
            raise InvalidRequest(
                f"instance {instance.full_name} ('{instance.id}') is still running"
            )
        return self._set_limits(
            instance, "disk limits", limits, MessageID.ModifyDiskThresholdRequest
        )

    @refusals_deferred
    def set_network_limits(
        self, instance_id: str, *, receive_speed: int, send_speed: int
    ) -> Deferred[None]:
        """Network receive and send bytes/s limits (0: unlimited)."""
        limits = {
            "receive_speed": limit("receive speed", receive_speed),
            "send_speed": limit("send speed", send_speed),
        }
        instance = self._access.instance(instance_id)
        return self._set_limits(
            instance, "network limits", limits, MessageID.ModifyNetworkThresholdRequest
        )

    def _set_limits(
        self, instance: Instance, aspect: str, limits: dict[str, int], message_id: int
    ) -> Deferred[None]:
        """``Limit:u[]`` carries the values in the order ``limits`` lists them."""
        if evolve(instance.qos, **limits) == instance.qos:
            raise InvalidRequest("no need to change")
        message = self._request(
            message_id, instance, uint_array_params={ParamKey.Limit: tuple(limits.values())}
        )
        changing = self._change(
            instance,
            aspect,
            message,
            lambda current: evolve(current, qos=evolve(current.qos, **limits)),
        )
        return changing.addCallback(lambda _: None)

    # -- disks --------------------------------------------------------------------------------

    @refusals_deferred
    def resize_disk(self, instance_id: str, index_text: str, size: int) -> Deferred[None]:
        """Grow disk ``index`` to ``size`` bytes (the Cell wants the guest stopped)."""
        instance = self._access.instance(instance_id)
        self._access.refuse_capturing(instance_id)
        self._access.refuse_resetting(instance)
        index = disk_index(index_text, instance)
        current = instance.disks[index]
        if size <= current:
            raise InvalidRequest(f"target size must larger than {current >> 30} GiB")
        limit("disk size", size)
        message = self._request(
            MessageID.ResizeDiskRequest,
            instance,
            uint_params={ParamKey.Disk: index, ParamKey.Size: size},
        )

        def resized(record: Instance) -> Instance:
            disks = list(record.disks)
            if index < len(disks):
                disks[index] = size
            return evolve(record, disks=tuple(disks))

        changing = self._change(
            instance, f"disk {index}", message, resized, increase=Increase(disk=size - current)
        )
        return changing.addCallback(lambda _: None)

    @refusals_deferred
    def shrink_disk(self, instance_id: str, index_text: str) -> Deferred[None]:
        """Compact disk ``index`` (its size stays; the Cell answers as for a resize)."""
        instance = self._access.instance(instance_id)
        self._access.refuse_capturing(instance_id)
        self._access.refuse_resetting(instance)
        index = disk_index(index_text, instance)
        message = self._request(
            MessageID.ShrinkDiskRequest, instance, uint_params={ParamKey.Disk: index}
        )
        changing = self._change(instance, f"disk {index}", message, lambda current: current)
        return changing.addCallback(lambda _: None)

    # -- the guest OS password ----------------------------------------------------------------

    @refusals_deferred
    def set_password(self, instance_id: str, user: str, password: str) -> Deferred[Credentials]:
        """Set (or, with none given, have the Cell generate) the guest OS password."""
        instance = self._access.instance(instance_id)
        if not instance.running:
            raise InvalidRequest(f"guest '{instance_id}' is not running")
        message = self._request(
            MessageID.ModifyAuthRequest,
            instance,
            string_params={ParamKey.User: user, ParamKey.Secret: password},
        )
        changing = self._change(instance, "password", message, lambda current: current)
        return changing.addCallback(_credentials)

    @refusals_deferred
    def password(self, instance_id: str) -> Deferred[Credentials]:
        """The guest OS login as its Cell keeps it (also while the guest is stopped)."""
        instance = self._access.instance(instance_id)
        asking = self._access.forward_for(
            instance, self._request(MessageID.GetAuthRequest, instance)
        )
        return asking.addCallback(_credentials)


def _credentials(reply: Message) -> Credentials:
    strings = reply.string_params
    return Credentials(strings.get(ParamKey.User, ""), strings.get(ParamKey.Secret, ""))
