"""Reading a Cell's instance inventory (``ComputeCellReadyEvent``, cell-protocol.md §5.2).

A Cell answers the pool push with parallel arrays over its instances. Core replaces its view of
that Cell with them, so each entry is validated here, at the edge: a malformed entry is skipped
with a reason (the rest is still taken in), and fields a Cell reports in a looser shape than Core
stores (create time, assigned addresses) fall back to what Core already knew.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from attrs import evolve, frozen

from nanocore.cluster.message import Message, ParamKey
from nanocore.model import (
    CPUPriority,
    Instance,
    InstanceNetwork,
    InstanceStatus,
    OperatingSystem,
    QoS,
    validation_message,
)

_STRINGS = (
    ParamKey.Name,
    ParamKey.Instance,
    ParamKey.User,
    ParamKey.Group,
    ParamKey.Secret,
    ParamKey.Address,
    ParamKey.System,
    ParamKey.Create,
    ParamKey.Internal,
    ParamKey.External,
    ParamKey.Hardware,
)
_UINTS = (
    ParamKey.Core,
    ParamKey.Option,
    ParamKey.Enable,
    ParamKey.Progress,
    ParamKey.Status,
    ParamKey.Monitor,
    ParamKey.Memory,
    ParamKey.Priority,
)
LIMITS_PER_INSTANCE = 6


class InventoryError(ValueError):
    """The report as a whole is unusable (counts and array lengths disagree)."""


@frozen
class Reconciliation:
    """What a Cell's inventory changes: the changes to commit (with the Cell's membership,
    when it joins), and what follows that commit (claims, orphan deletions)."""

    changes: tuple[Any, ...]
    after: Callable[[], None]


class Reconcile(Protocol):
    """Reads a Cell's ready reply into a :class:`Reconciliation`; raises
    :class:`InventoryError` for a report that cannot be used at all. A ``late`` reply is an
    inventory older than what Core did since it asked: it only finds lost guests."""

    def __call__(
        self, cell: str, pool: str, reply: Message, *, late: bool = False
    ) -> Reconciliation: ...


@frozen
class Inventory:
    """What a Cell reported: the instances taken in, and why any others were skipped."""

    instances: tuple[Instance, ...]
    skipped: tuple[str, ...] = ()


def read_inventory(
    message: Message,
    *,
    pool: str,
    cell: str,
    cell_address: str,
    known: Mapping[str, Instance],
) -> Inventory:
    """Build the Cell's instances from its ready event; ``known`` is Core's current view by id."""
    count = message.uint_params.get(ParamKey.Count, 0)
    strings = message.string_array_params
    uints = message.uint_array_params
    for key in _STRINGS:
        if len(strings.get(key, ())) != count:
            raise InventoryError(f"{key.name}: expected {count} strings")
    for key in _UINTS:
        if len(uints.get(key, ())) != count:
            raise InventoryError(f"{key.name}: expected {count} unsigned integers")
    disk_counts = uints.get(ParamKey.Count, ())
    disks = uints.get(ParamKey.Disk, ())
    limits = uints.get(ParamKey.Limit, ())
    if len(disk_counts) != count:
        raise InventoryError(f"Count: expected {count} disk counts")
    if len(disks) != sum(disk_counts):
        raise InventoryError(f"Disk: expected {sum(disk_counts)} sizes")
    if len(limits) != LIMITS_PER_INSTANCE * count:
        raise InventoryError(f"Limit: expected {LIMITS_PER_INSTANCE * count} values")

    instances: list[Instance] = []
    skipped: list[str] = []
    offset = 0
    for index in range(count):
        own_disks = tuple(disks[offset : offset + disk_counts[index]])
        offset += disk_counts[index]
        row: dict[ParamKey, Any] = {key: strings[key][index] for key in _STRINGS}
        row.update({key: uints[key][index] for key in _UINTS})
        own_limits = limits[LIMITS_PER_INSTANCE * index : LIMITS_PER_INSTANCE * (index + 1)]
        try:
            instances.append(
                _instance(row, own_disks, own_limits, pool, cell, cell_address, known)
            )
        except (ValueError, TypeError) as error:
            skipped.append(f"instance {row[ParamKey.Instance]!r}: {validation_message(error)}")
    seen: set[str] = set()
    unique: list[Instance] = []
    for instance in instances:
        if instance.id in seen:
            skipped.append(f"instance {instance.id!r}: reported twice")
            continue
        seen.add(instance.id)
        unique.append(instance)
    return Inventory(tuple(unique), tuple(skipped))


def _bare_name(name: str, group: str) -> str:
    """Cells keep the stored form ``<group>.<name>``; Core's record holds the bare name."""
    prefix = f"{group}."
    return name[len(prefix) :] if group and name.startswith(prefix) else name


def _instance(
    row: Mapping[ParamKey, Any],
    disks: Sequence[int],
    limits: Sequence[int],
    pool: str,
    cell: str,
    cell_address: str,
    known: Mapping[str, Instance],
) -> Instance:
    instance_id = row[ParamKey.Instance]
    previous = known.get(instance_id)
    if row[ParamKey.Status] == 1:
        status = InstanceStatus.RUNNING
    elif row[ParamKey.Enable]:
        status = InstanceStatus.STOPPED
    else:
        status = InstanceStatus.CREATING
    try:
        system = OperatingSystem(row[ParamKey.System] or OperatingSystem.LINUX)
    except ValueError:
        system = previous.system if previous is not None else OperatingSystem.LINUX
    try:
        priority = CPUPriority(row[ParamKey.Priority])
    except ValueError:
        reported = row[ParamKey.Priority]
        raise ValueError(f"'cpu_priority' must be 0, 1 or 2, not {reported}") from None
    qos = QoS(
        cpu_priority=priority,
        read_speed=limits[0],
        write_speed=limits[1],
        read_iops=limits[2],
        write_iops=limits[3],
        receive_speed=limits[4],
        send_speed=limits[5],
    )
    internal = _network(
        row[ParamKey.Internal],
        instance_address=row[ParamKey.Address],
        monitor_address=cell_address,
        monitor_port=row[ParamKey.Monitor],
        previous=previous.internal if previous is not None else None,
    )
    external = _network(
        row[ParamKey.External],
        previous=previous.external if previous is not None else None,
    )
    fresh = Instance(
        id=instance_id,
        name=_bare_name(row[ParamKey.Name], row[ParamKey.Group]),
        owner=row[ParamKey.User],
        group=row[ParamKey.Group],
        pool=pool,
        cell=cell,
        cores=row[ParamKey.Core],
        memory=row[ParamKey.Memory],
        disks=tuple(disks),
        template=previous.template if previous is not None else "",
        system=system,
        status=status,
        progress=0 if status is not InstanceStatus.CREATING else min(row[ParamKey.Progress], 100),
        auto_start=bool(row[ParamKey.Option]),
        media_attached=previous.media_attached if previous is not None else False,
        internal=internal,
        external=external,
        hardware_address=row[ParamKey.Hardware],
        monitor_secret=row[ParamKey.Secret],
        qos=qos,
    )
    return _with_create_time(fresh, row[ParamKey.Create], previous)


def _network(
    assigned: str,
    *,
    instance_address: str = "",
    monitor_address: str = "",
    monitor_port: int = 0,
    previous: InstanceNetwork | None,
) -> InstanceNetwork:
    base = previous if previous is not None else InstanceNetwork()
    try:
        network = evolve(base, assigned_address=assigned)
    except ValueError:
        # Cells may report the bare address; keep Core's ``address/prefix`` form.
        network = base
    with contextlib.suppress(ValueError):
        network = evolve(network, instance_address=instance_address)
    if monitor_address:
        network = evolve(network, monitor_address=monitor_address, monitor_port=monitor_port)
    return network


def _with_create_time(instance: Instance, reported: str, previous: Instance | None) -> Instance:
    try:
        return evolve(instance, create_time=reported)
    except ValueError:
        return evolve(instance, create_time=previous.create_time if previous is not None else "")
