"""Guests and instances: create, get, delete, start, stop, runtime status, system and monitor
secret resets (§3.6-3.7, §4.0, §4.6-4.7).

The encoders of api-reference §4.0 live here so that every later guest route (lists, search,
runtime status, batches) shows a guest the same way: :func:`guest_config` and
:func:`instance_status`.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from nanocore.api.decode import Body, Field, Kind
from nanocore.api.route import Call, Family, Fields, Reply, empty
from nanocore.api.schema import BOOL, ID_REPLY, NUMBER, STRING, UINT, array, enum, obj
from nanocore.model import CPUPriority, Instance, InstanceNetwork, QoS
from nanocore.operations.core import Operations
from nanocore.operations.guests import CloudInit, Created, GuestSpec, QoSSpec, RuntimeStatus

PRIORITY_NAMES = {CPUPriority.HIGH: "high", CPUPriority.MEDIUM: "medium", CPUPriority.LOW: "low"}

NETWORK = obj(
    ("display_address",),
    network_address=STRING,
    display_address=STRING,
    allocated_address=STRING,
)
QOS = obj(
    ("cpu_priority",),
    cpu_priority=enum("high", "medium", "low"),
    write_speed=UINT,
    write_iops=UINT,
    read_speed=UINT,
    read_iops=UINT,
    receive_speed=UINT,
    send_speed=UINT,
)
_CONFIG_FIELDS: dict[str, Any] = dict(
    name=STRING, id=STRING, created=BOOL, progress=UINT, running=BOOL, lost=BOOL, owner=STRING,
    group=STRING, pool=STRING, cell=STRING, host=STRING, cores=UINT, memory=UINT,
    total_disk=UINT, disks=array(UINT), auto_start=BOOL, system=STRING, monitor_secret=STRING,
    ethernet_address=STRING, internal=NETWORK, external=NETWORK, create_time=STRING,
    media_attached=BOOL, qos=QOS,
)  # fmt: skip
_ALWAYS = (
    "name", "created", "progress", "running", "owner", "group", "cores", "memory",
    "total_disk", "disks", "auto_start", "internal", "external", "qos",
)  # fmt: skip
GUEST_CONFIG = obj(_ALWAYS, **_CONFIG_FIELDS)
INSTANCE_STATUS = obj(
    (*_ALWAYS, "media_attached", "media_source", "cpu_usage", "memory_available",
     "disk_available", "bytes_read", "bytes_written", "bytes_received", "bytes_sent"),
    **{k: v for k, v in _CONFIG_FIELDS.items() if k != "media_attached"},
    media_attached=BOOL, media_source=STRING, cpu_usage=NUMBER, memory_available=UINT,
    disk_available=UINT, bytes_read=UINT, bytes_written=UINT, bytes_received=UINT,
    bytes_sent=UINT,
)  # fmt: skip

CLOUD_INIT_BODY = Body(
    (
        Field("root_enabled", Kind.BOOL, description="false when the object is given"),
        Field("admin_name", description="default: the template's admin"),
        Field("admin_secret"),
        Field("data_path"),
    ),
    name="CloudInit",
)
QOS_BODY = Body(
    (
        Field("cpu_priority", choices=tuple(PRIORITY_NAMES.values())),
        *(
            Field(name, Kind.UINT, description="0: unlimited")
            for name in (
                "read_speed", "write_speed", "read_iops", "write_iops", "receive_speed",
                "send_speed",
            )
        ),
    ),
    name="QoS",
)  # fmt: skip
#: What a create request and a batch create both require, in Core's order of checks.
SPEC_REQUIRED = (
    Field("owner", required=True),
    Field("group", required=True),
    Field("pool", required=True, missing="target pool required"),
    Field("template", required=True, missing="system template required"),
    Field("cores", Kind.UINT, required=True),
    Field("memory", Kind.UINT, required=True, description="bytes"),
)
#: Their options.
SPEC_OPTIONS = (
    Field("auto_start", Kind.BOOL),
    Field("from_image", description="a created disk image to clone the system disk from"),
    Field("modules", Kind.STRING_LIST, choices=("qemu", "cloud-init")),
    Field("cloud_init", Kind.OBJECT, body=CLOUD_INIT_BODY),
    Field("qos", Kind.OBJECT, body=QOS_BODY),
)
CREATE_GUEST = Body(
    (
        Field("name", required=True),
        *SPEC_REQUIRED,
        Field("disks", Kind.UINT_LIST, required=True, missing="must specify disk size",
              description="bytes; the system disk first"),
        *SPEC_OPTIONS,
        Field("security_policy_group", description="policy group id whose rules are copied"),
    )
)  # fmt: skip
DELETE_GUEST = Body((Field("force", Kind.BOOL, description="ignored, as by Core"),))
START_INSTANCE = Body(
    (
        Field("from_media", Kind.BOOL),
        Field("from_network", Kind.BOOL, description="not supported"),
        Field("source", description="media image id, with from_media"),
    )
)
STOP_INSTANCE = Body((Field("reboot", Kind.BOOL), Field("force", Kind.BOOL)))
RESET_SYSTEM = Body((Field("from_image", description="a created disk image id"),))


# -- encoders (api-reference §4.0) --------------------------------------------------------------


def _network(network: InstanceNetwork) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if network.instance_address:
        data["network_address"] = network.instance_address
    data["display_address"] = f"{network.monitor_address}:{network.monitor_port}"
    if network.assigned_address:
        data["allocated_address"] = network.assigned_address
    return data


def _qos(qos: QoS) -> dict[str, Any]:
    data: dict[str, Any] = {"cpu_priority": PRIORITY_NAMES[qos.cpu_priority]}
    for name in (
        "write_speed", "write_iops", "read_speed", "read_iops", "receive_speed", "send_speed",
    ):  # fmt: skip
        value = getattr(qos, name)
        if value:
            data[name] = value
    return data


def guest_config(
    instance: Instance, *, host: str = "", secret: bool = False, media: bool = True
) -> dict[str, Any]:
    """A guest as Core shows it: ``host`` only in lists, ``secret`` only for one guest.

    ``media=False`` leaves out ``media_attached``, which :func:`instance_status` places later.
    """
    data: dict[str, Any] = {
        "name": instance.full_name,
        "id": instance.id,
        "created": instance.created,
        "progress": 0 if instance.created else instance.progress,
        "running": instance.running,
    }
    if instance.lost:
        data["lost"] = True
    data["owner"] = instance.owner
    data["group"] = instance.group
    data["pool"] = instance.pool
    data["cell"] = instance.cell
    if host:
        data["host"] = host
    data["cores"] = instance.cores
    data["memory"] = instance.memory
    data["total_disk"] = instance.total_disk
    data["disks"] = list(instance.disks)
    data["auto_start"] = instance.auto_start
    data["system"] = instance.system.value
    if secret and instance.monitor_secret:
        data["monitor_secret"] = instance.monitor_secret
    if instance.hardware_address:
        data["ethernet_address"] = instance.hardware_address
    data["internal"] = _network(instance.internal)
    data["external"] = _network(instance.external)
    if instance.create_time:
        data["create_time"] = instance.create_time
    if media and instance.media_attached:
        data["media_attached"] = True
    data["qos"] = _qos(instance.qos)
    return data


def instance_status(
    instance: Instance,
    *,
    media_attached: bool,
    cpu_usage: float = 0.0,
    memory_available: int = 0,
    disk_available: int = 0,
    io: tuple[int, int, int, int] = (0, 0, 0, 0),
) -> dict[str, Any]:
    """A guest's runtime status (``GET /instances/:id``): its config, then live figures.

    ``io``: bytes read, written, received and sent, as the Cell counts them.
    """
    data = guest_config(instance, secret=True, media=False)
    data["media_attached"] = media_attached
    data["media_source"] = instance.media_source
    data["cpu_usage"] = cpu_usage
    data["memory_available"] = memory_available
    data["disk_available"] = disk_available
    data["bytes_read"], data["bytes_written"], data["bytes_received"], data["bytes_sent"] = io
    return data


# -- decoding -----------------------------------------------------------------------------------


def _cloud_init(body: Fields | None) -> CloudInit | None:
    if body is None:
        return None
    return CloudInit(
        root_enabled=body.flag("root_enabled"),
        admin_name=body.text("admin_name"),
        admin_secret=body.text("admin_secret"),
        data_path=body.text("data_path"),
    )


def _qos_spec(body: Fields | None) -> QoSSpec | None:
    if body is None:
        return None
    return QoSSpec(
        cpu_priority=body.text("cpu_priority"),
        read_speed=body.integer("read_speed"),
        write_speed=body.integer("write_speed"),
        read_iops=body.integer("read_iops"),
        write_iops=body.integer("write_iops"),
        receive_speed=body.integer("receive_speed"),
        send_speed=body.integer("send_speed"),
    )


def guest_spec(body: Fields) -> GuestSpec:
    """A create request's body as the operation takes it; a batch create's has no ``name``
    and no ``security_policy_group``."""
    return GuestSpec(
        name=body.text("name") if "name" in body else "",
        owner=body.text("owner"),
        group=body.text("group"),
        pool=body.text("pool"),
        template=body.text("template"),
        cores=body.integer("cores"),
        memory=body.integer("memory"),
        disks=body.integers("disks"),
        auto_start=body.flag("auto_start"),
        from_image=body.text("from_image"),
        modules=body.texts("modules"),
        cloud_init=_cloud_init(body.fields("cloud_init")),
        qos=_qos_spec(body.fields("qos")),
        security_policy_group=(
            body.text("security_policy_group") if "security_policy_group" in body else ""
        ),
    )


def _created(created: Created) -> Reply:
    return Reply({"id": created.id}, 200 if created.created else 202)


def _config_reply(instance: Instance) -> Reply:
    return Reply(guest_config(instance, secret=True), 200 if instance.created else 201)


guests: Family[Operations] = Family("guests")


@guests.route(
    "GET",
    "/guests/:id",
    "Get a guest's configuration; 201 with progress while it is being created",
    response=GUEST_CONFIG,
)
def get_guest(ops: Operations, call: Call) -> Deferred[Reply]:
    return ops.guests.get(call.params["id"]).addCallback(_config_reply)


@guests.route(
    "POST",
    "/guests/",
    "Create a guest; 202 with its id while the Cell creates it",
    body=CREATE_GUEST,
    response=ID_REPLY,
)
def create_guest(ops: Operations, call: Call) -> Deferred[Reply]:
    return ops.guests.create(guest_spec(call.body)).addCallback(_created)


@guests.route("DELETE", "/guests/:id", "Delete a stopped guest", body=DELETE_GUEST)
def delete_guest(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.guests.delete(call.params["id"]))


@guests.route(
    "POST", "/instances/:id", "Start a guest, from a media image if asked", body=START_INSTANCE
)
def start_instance(ops: Operations, call: Call) -> Deferred[str]:
    body = call.body
    return empty(
        ops.guests.start(
            call.params["id"],
            from_media=body.flag("from_media"),
            from_network=body.flag("from_network"),
            source=body.text("source"),
        )
    )


@guests.route("DELETE", "/instances/:id", "Stop or reboot a running guest", body=STOP_INSTANCE)
def stop_instance(ops: Operations, call: Call) -> Deferred[str]:
    body = call.body
    return empty(
        ops.guests.stop(call.params["id"], reboot=body.flag("reboot"), force=body.flag("force"))
    )


@guests.route(
    "GET",
    "/instances/:id",
    "A guest's runtime status, asked of its Cell: running, media, usage, I/O",
    response=INSTANCE_STATUS,
)
def get_instance_status(ops: Operations, call: Call) -> Deferred[dict[str, Any]]:
    return ops.guests.runtime.status(call.params["id"]).addCallback(_runtime)


def _runtime(status: RuntimeStatus) -> dict[str, Any]:
    return instance_status(
        status.instance,
        media_attached=status.media_attached,
        cpu_usage=status.cpu_usage,
        memory_available=status.memory_available,
        disk_available=status.disk_available,
        io=status.io,
    )


@guests.route(
    "PUT",
    "/guests/:id/system/",
    "Write a stopped guest's system disk from a disk image; poll GET /guests/:id (201, 200)",
    body=RESET_SYSTEM,
)
def reset_system(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.guests.resets.system(call.params["id"], call.body.text("from_image")))


@guests.route(
    "PUT",
    "/guests/:id/monitor/secret",
    "Have the guest's Cell make a new monitor secret; GET /guests/:id shows it",
)
def reset_monitor_secret(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.guests.resets.monitor_secret(call.params["id"]))
