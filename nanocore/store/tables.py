"""How each entity maps to its table: columns, keys, and row conversion both ways.

Rows are plain tuples in ``columns`` order so that loading is one SELECT per table and a
list comprehension, which keeps a 50,000-instance start fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from typing import Any

from attrs import frozen

from nanocore import model as m

Row = tuple[Any, ...]


@frozen
class Table:
    """The mapping of one entity kind to one table."""

    kind: type
    name: str
    description: str
    key_columns: tuple[str, ...]
    columns: tuple[str, ...]
    to_row: Callable[[Any], Row]
    from_row: Callable[[Row], Any]
    describe_key: Callable[[Any], str]
    order_by: str = "rowid"

    def key_values(self, key: Hashable) -> Row:
        """The key as a tuple of column values (single keys are given bare)."""
        if len(self.key_columns) == 1:
            return (key,)
        if not (isinstance(key, tuple) and len(key) == len(self.key_columns)):
            raise ValueError(f"{self.description} keys are ({', '.join(self.key_columns)})")
        return key

    def describe(self, key: Hashable) -> str:
        return f"{self.description} {self.describe_key(key)}"


def _quoted(key: Any) -> str:
    return f"'{key}'"


def _none_if_empty(value: str) -> str | None:
    return value or None


def _empty_if_none(value: str | None) -> str:
    return value or ""


def _json(values: tuple[Any, ...]) -> str:
    return json.dumps(list(values), separators=(",", ":"))


# --- zone -------------------------------------------------------------------------------------

ZONE = Table(
    kind=m.Zone,
    name="zone",
    description="zone",
    key_columns=("id",),
    columns=("id", "name"),
    to_row=lambda z: (1, z.name),
    from_row=lambda r: m.Zone(name=r[1]),
    describe_key=_quoted,
)

STORAGE_POOL = Table(
    kind=m.StoragePool,
    name="storage_pool",
    description="storage pool",
    key_columns=("name",),
    columns=("name", "type", "host", "target"),
    to_row=lambda p: (p.name, p.type.value, p.host, p.target),
    from_row=lambda r: m.StoragePool(name=r[0], type=r[1], host=r[2], target=r[3]),
    describe_key=_quoted,
)

ADDRESS_POOL = Table(
    kind=m.AddressPool,
    name="address_pool",
    description="address pool",
    key_columns=("name",),
    columns=("name", "gateway", "dns", "provider", "mode"),
    to_row=lambda p: (p.name, p.gateway, _json(p.dns), p.provider.value, p.mode.value),
    from_row=lambda r: m.AddressPool(
        name=r[0], gateway=r[1], dns=json.loads(r[2]), provider=r[3], mode=r[4]
    ),
    describe_key=_quoted,
)

ADDRESS_RANGE = Table(
    kind=m.AddressRange,
    name="address_range",
    description="address range",
    key_columns=("pool", "start"),
    columns=("pool", "start", "end", "netmask", "kind"),
    to_row=lambda r: (r.pool, r.start, r.end, r.netmask, r.kind.value),
    from_row=lambda r: m.AddressRange(pool=r[0], start=r[1], end=r[2], netmask=r[3], kind=r[4]),
    describe_key=lambda k: f"'{k[1]}' of address pool '{k[0]}'",
    order_by="seq",
)

COMPUTE_POOL = Table(
    kind=m.ComputePool,
    name="compute_pool",
    description="compute pool",
    key_columns=("name",),
    columns=("name", "enabled", "network", "storage", "failover"),
    to_row=lambda p: (
        p.name,
        p.enabled,
        _none_if_empty(p.network),
        _none_if_empty(p.storage),
        p.failover,
    ),
    from_row=lambda r: m.ComputePool(
        name=r[0],
        enabled=bool(r[1]),
        network=_empty_if_none(r[2]),
        storage=_empty_if_none(r[3]),
        failover=bool(r[4]),
    ),
    describe_key=_quoted,
)

COMPUTE_CELL = Table(
    kind=m.ComputeCell,
    name="compute_cell",
    description="compute cell",
    key_columns=("name",),
    columns=("name", "pool", "enabled", "purge_pending"),
    to_row=lambda c: (c.name, _none_if_empty(c.pool), c.enabled, c.purge_pending),
    from_row=lambda r: m.ComputeCell(
        name=r[0], pool=_empty_if_none(r[1]), enabled=bool(r[2]), purge_pending=bool(r[3])
    ),
    describe_key=_quoted,
)

SYSTEM_TEMPLATE = Table(
    kind=m.SystemTemplate,
    name="system_template",
    description="system template",
    key_columns=("id",),
    columns=(
        "id",
        "name",
        "admin",
        "operating_system",
        "disk",
        "network",
        "display",
        "control",
        "usb",
        "tablet",
        "created_time",
        "modified_time",
    ),
    to_row=lambda t: (
        t.id,
        t.name,
        t.admin,
        t.operating_system.value,
        t.disk.value,
        t.network.value,
        t.display.value,
        t.control.value,
        t.usb.value,
        t.tablet.value,
        t.created_time,
        t.modified_time,
    ),
    from_row=lambda r: m.SystemTemplate(*r),
    describe_key=_quoted,
    order_by="seq",
)

# Rules are written and loaded by the writer/loader together with their group.
SECURITY_POLICY_GROUP = Table(
    kind=m.SecurityPolicyGroup,
    name="security_policy_group",
    description="security policy group",
    key_columns=("id",),
    columns=("id", "name", "user", "group", "description", "enabled", "is_global", "accept"),
    to_row=lambda g: (
        g.id,
        g.name,
        g.user,
        g.group,
        g.description,
        g.enabled,
        g.is_global,
        g.accept,
    ),
    from_row=lambda r: m.SecurityPolicyGroup(
        id=r[0],
        name=r[1],
        user=r[2],
        group=r[3],
        description=r[4],
        enabled=bool(r[5]),
        is_global=bool(r[6]),
        accept=bool(r[7]),
    ),
    describe_key=_quoted,
    order_by="seq",
)

RULE_COLUMNS = (
    "group_id",
    "position",
    "protocol",
    "source_address",
    "target_address",
    "target_port",
    "accept",
)


def rule_rows(group: m.SecurityPolicyGroup) -> list[Row]:
    return [
        (
            group.id,
            position,
            rule.protocol.value,
            rule.source_address,
            rule.target_address,
            rule.target_port,
            rule.accept,
        )
        for position, rule in enumerate(group.rules)
    ]


def rule_from_row(r: Row) -> m.SecurityPolicyRule:
    """Build a rule from ``RULE_COLUMNS[2:]``."""
    return m.SecurityPolicyRule(
        protocol=r[0],
        source_address=r[1],
        target_address=r[2],
        target_port=r[3],
        accept=bool(r[4]),
    )


def _instance_row(i: m.Instance) -> Row:
    inside, outside, qos = i.internal, i.external, i.qos
    return (
        i.id,
        i.name,
        i.owner,
        i.group,
        i.pool,
        i.cell,
        i.cores,
        i.memory,
        _json(i.disks),
        i.template,
        i.system.value,
        i.status.value,
        i.progress,
        i.lost,
        i.migrating,
        i.auto_start,
        i.media_attached,
        inside.assigned_address,
        inside.instance_address,
        inside.monitor_address,
        inside.monitor_port,
        outside.assigned_address,
        outside.instance_address,
        outside.monitor_address,
        outside.monitor_port,
        i.hardware_address,
        i.monitor_secret,
        int(qos.cpu_priority),
        qos.read_speed,
        qos.write_speed,
        qos.read_iops,
        qos.write_iops,
        qos.receive_speed,
        qos.send_speed,
        i.create_time,
        i.media_source,
    )


_NO_NETWORK = m.InstanceNetwork()
_NO_QOS = m.QoS()


def _network(assigned: str, actual: str, monitor: str, port: int) -> m.InstanceNetwork:
    if not (assigned or actual or monitor or port):
        return _NO_NETWORK  # shared: most instances have no external network
    return m.InstanceNetwork(assigned, actual, monitor, port)


def _instance_from_row(r: Row) -> m.Instance:
    qos_values = r[27:34]
    qos = _NO_QOS if not any(qos_values) else m.QoS(*qos_values)
    return m.Instance(
        id=r[0],
        name=r[1],
        owner=r[2],
        group=r[3],
        pool=r[4],
        cell=r[5],
        cores=r[6],
        memory=r[7],
        disks=json.loads(r[8]),
        template=r[9],
        system=r[10],
        status=r[11],
        progress=r[12],
        lost=bool(r[13]),
        migrating=bool(r[14]),
        auto_start=bool(r[15]),
        media_attached=bool(r[16]),
        internal=_network(r[17], r[18], r[19], r[20]),
        external=_network(r[21], r[22], r[23], r[24]),
        hardware_address=r[25],
        monitor_secret=r[26],
        qos=qos,
        create_time=r[34],
        media_source=r[35],
    )


INSTANCE = Table(
    kind=m.Instance,
    name="instance",
    description="instance",
    key_columns=("id",),
    columns=(
        "id",
        "name",
        "owner",
        "group",
        "pool",
        "cell",
        "cores",
        "memory",
        "disks",
        "template",
        "system",
        "status",
        "progress",
        "lost",
        "migrating",
        "auto_start",
        "media_attached",
        "internal_assigned_address",
        "internal_instance_address",
        "internal_monitor_address",
        "internal_monitor_port",
        "external_assigned_address",
        "external_instance_address",
        "external_monitor_address",
        "external_monitor_port",
        "hardware_address",
        "monitor_secret",
        "cpu_priority",
        "read_speed",
        "write_speed",
        "read_iops",
        "write_iops",
        "receive_speed",
        "send_speed",
        "create_time",
        "media_source",
    ),
    to_row=_instance_row,
    from_row=_instance_from_row,
    describe_key=_quoted,
)

ADDRESS_ALLOCATION = Table(
    kind=m.AddressAllocation,
    name="address_allocation",
    description="address",
    key_columns=("pool", "address"),
    columns=("pool", "range_start", "address", "instance"),
    to_row=lambda a: (a.pool, a.range_start, a.address, a.instance),
    from_row=lambda r: m.AddressAllocation(*r),
    describe_key=lambda k: f"'{k[1]}' of address pool '{k[0]}'",
)

_IMAGE_COLUMNS = (
    "id",
    "name",
    "owner",
    "group",
    "description",
    "tags",
    "format",
    "path",
    "size",
    "version",
    "create_time",
    "modify_time",
)


def _image_row(i: m.MediaImage | m.DiskImage) -> Row:
    return (
        i.id,
        i.name,
        i.owner,
        i.group,
        i.description,
        _json(i.tags),
        i.format.value,
        i.path,
        i.size,
        i.version,
        i.create_time,
        i.modify_time,
    )


def _image_fields(r: Row) -> dict[str, Any]:
    return dict(zip(_IMAGE_COLUMNS, r[:12], strict=True)) | {"tags": json.loads(r[5])}


MEDIA_IMAGE = Table(
    kind=m.MediaImage,
    name="media_image",
    description="media image",
    key_columns=("id",),
    columns=(*_IMAGE_COLUMNS, "sha256"),
    to_row=lambda i: (*_image_row(i), i.sha256),
    from_row=lambda r: m.MediaImage(**_image_fields(r), sha256=r[12]),
    describe_key=_quoted,
)

DISK_IMAGE = Table(
    kind=m.DiskImage,
    name="disk_image",
    description="disk image",
    key_columns=("id",),
    columns=(*_IMAGE_COLUMNS, "check_sum", "created", "sha256"),
    to_row=lambda i: (*_image_row(i), i.check_sum, i.created, i.sha256),
    from_row=lambda r: m.DiskImage(
        **_image_fields(r), check_sum=r[12], created=bool(r[13]), sha256=r[14]
    ),
    describe_key=_quoted,
)

MIGRATION = Table(
    kind=m.Migration,
    name="migration",
    description="migration",
    key_columns=("id",),
    columns=(
        "id",
        "source_pool",
        "source_cell",
        "target_pool",
        "target_cell",
        "instances",
        "finished",
        "progress",
        "error",
        "kind",
        "start_time",
        "end_time",
    ),
    to_row=lambda g: (
        g.id,
        g.source_pool,
        g.source_cell,
        g.target_pool,
        g.target_cell,
        _json(g.instances),
        g.finished,
        g.progress,
        g.error,
        g.kind.value,
        g.start_time,
        g.end_time,
    ),
    from_row=lambda r: m.Migration(
        id=r[0],
        source_pool=r[1],
        source_cell=r[2],
        target_pool=r[3],
        target_cell=r[4],
        instances=json.loads(r[5]),
        finished=bool(r[6]),
        progress=r[7],
        error=r[8],
        kind=r[9],
        start_time=r[10],
        end_time=r[11],
    ),
    describe_key=_quoted,
)


def _guests_json(guests: tuple[m.BatchGuest, ...]) -> str:
    return json.dumps(
        [[g.name, g.id, int(g.status), g.progress, g.error] for g in guests],
        separators=(",", ":"),
    )


def _guests(text: str) -> tuple[m.BatchGuest, ...]:
    return tuple(m.BatchGuest(*fields) for fields in json.loads(text))


BATCH_TASK = Table(
    kind=m.BatchTask,
    name="batch_task",
    description="batch task",
    key_columns=("id",),
    columns=("id", "kind", "start_time", "latest_update", "finished", "guests"),
    to_row=lambda t: (
        t.id,
        t.kind.value,
        t.start_time,
        t.latest_update,
        t.finished,
        _guests_json(t.guests),
    ),
    from_row=lambda r: m.BatchTask(
        id=r[0],
        kind=r[1],
        start_time=r[2],
        latest_update=r[3],
        finished=bool(r[4]),
        guests=_guests(r[5]),
    ),
    describe_key=_quoted,
)

PENDING_ERROR = Table(
    kind=m.PendingError,
    name="pending_error",
    description="pending error of instance",
    key_columns=("id",),
    columns=("id", "error", "cell", "shown"),
    to_row=lambda e: (e.id, e.error, e.cell, e.shown),
    from_row=lambda r: m.PendingError(id=r[0], error=r[1], cell=r[2], shown=bool(r[3])),
    describe_key=_quoted,
)

DEPARTED_CELL = Table(
    kind=m.DepartedCell,
    name="departed_cell",
    description="departed cell",
    key_columns=("name",),
    columns=("name",),
    to_row=lambda c: (c.name,),
    from_row=lambda r: m.DepartedCell(name=r[0]),
    describe_key=_quoted,
)

STALE_COPY = Table(
    kind=m.StaleCopy,
    name="stale_copy",
    description="stale copy",
    key_columns=("cell", "guest"),
    columns=("cell", "guest"),
    to_row=lambda c: (c.cell, c.guest),
    from_row=lambda r: m.StaleCopy(*r),
    describe_key=lambda k: f"of guest '{k[1]}' on cell '{k[0]}'",
)

#: Every table, in an order where referenced tables come before referencing ones.
TABLES: tuple[Table, ...] = (
    ZONE,
    STORAGE_POOL,
    ADDRESS_POOL,
    ADDRESS_RANGE,
    COMPUTE_POOL,
    COMPUTE_CELL,
    SYSTEM_TEMPLATE,
    SECURITY_POLICY_GROUP,
    INSTANCE,
    ADDRESS_ALLOCATION,
    MEDIA_IMAGE,
    DISK_IMAGE,
    MIGRATION,
    BATCH_TASK,
    PENDING_ERROR,
    DEPARTED_CELL,
    STALE_COPY,
)

BY_KIND: dict[type, Table] = {table.kind: table for table in TABLES}
BY_NAME: dict[str, Table] = {table.name: table for table in TABLES}
