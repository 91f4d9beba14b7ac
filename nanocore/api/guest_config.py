"""Changing a guest: name, cores, memory, auto start, QoS, disks, OS password (§3.6, §4.6)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from nanocore.api.decode import Body, Field, Kind
from nanocore.api.route import Call, Family, empty
from nanocore.api.schema import STRING, obj
from nanocore.operations.core import Operations
from nanocore.operations.guest_config import Credentials

IGNORED = "ignored, as by Core"
CREDENTIALS = obj((), password=STRING, user=STRING)
NAME_BODY = Body(
    (Field("name", description="the new name in the guest's group (<group>. may lead)"),)
)
CORES_BODY = Body((Field("cores", Kind.UINT), Field("immediate", Kind.BOOL, description=IGNORED)))
MEMORY_BODY = Body(
    (
        Field("memory", Kind.UINT, description="bytes"),
        Field("immediate", Kind.BOOL, description=IGNORED),
    )
)
AUTO_START_BODY = Body((Field("enable", Kind.BOOL),))
PRIORITY_BODY = Body((Field("priority", choices=("high", "medium", "low")),))
DISK_QOS_BODY = Body(
    tuple(
        Field(name, Kind.UINT, description="0: unlimited")
        for name in ("read_speed", "read_iops", "write_speed", "write_iops")
    )
)
NETWORK_QOS_BODY = Body(
    tuple(
        Field(name, Kind.UINT, description="bytes/s, 0: unlimited")
        for name in ("receive_speed", "send_speed")
    )
)
PASSWORD_BODY = Body(
    (
        Field("password", description="empty: the Cell generates one"),
        Field("user", description="empty: the guest's admin"),
    )
)
RESIZE_BODY = Body(
    (
        Field("size", Kind.UINT, description="bytes, more than now"),
        Field("immediate", Kind.BOOL, description=IGNORED),
    )
)
SHRINK_BODY = Body((Field("immediate", Kind.BOOL, description=IGNORED),))


def credentials(login: Credentials) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if login.password:
        data["password"] = login.password
    if login.user:
        data["user"] = login.user
    return data


guest_config: Family[Operations] = Family("guests")

GUEST = "/guests/:id"


@guest_config.route(
    "PUT", GUEST + "/name/", "Rename a stopped guest within its group", body=NAME_BODY
)
def rename(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.guest_config.rename(call.params["id"], call.body.text("name")))


@guest_config.route("PUT", GUEST + "/cores", "Set a guest's cores", body=CORES_BODY)
def set_cores(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.guest_config.set_cores(call.params["id"], call.body.integer("cores")))


@guest_config.route("PUT", GUEST + "/memory", "Set a guest's memory", body=MEMORY_BODY)
def set_memory(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.guest_config.set_memory(call.params["id"], call.body.integer("memory")))


@guest_config.route(
    "PUT", GUEST + "/auto_start", "Start a guest with its Cell, or not", body=AUTO_START_BODY
)
def set_auto_start(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.guest_config.set_auto_start(call.params["id"], call.body.flag("enable")))


@guest_config.route("PUT", GUEST + "/qos/cpu", "Set a guest's CPU priority", body=PRIORITY_BODY)
def set_priority(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.guest_config.set_priority(call.params["id"], call.body.text("priority")))


@guest_config.route(
    "PUT", GUEST + "/qos/disk", "Set a stopped guest's disk limits", body=DISK_QOS_BODY
)
def set_disk_limits(ops: Operations, call: Call) -> Deferred[str]:
    b = call.body
    return empty(
        ops.guest_config.set_disk_limits(
            call.params["id"],
            read_speed=b.integer("read_speed"),
            read_iops=b.integer("read_iops"),
            write_speed=b.integer("write_speed"),
            write_iops=b.integer("write_iops"),
        )
    )


@guest_config.route(
    "PUT", GUEST + "/qos/network", "Set a guest's network limits", body=NETWORK_QOS_BODY
)
def set_network_limits(ops: Operations, call: Call) -> Deferred[str]:
    b = call.body
    return empty(
        ops.guest_config.set_network_limits(
            call.params["id"],
            receive_speed=b.integer("receive_speed"),
            send_speed=b.integer("send_speed"),
        )
    )


@guest_config.route(
    "PUT",
    GUEST + "/auth",
    "Set a running guest's OS password",
    body=PASSWORD_BODY,
    response=CREDENTIALS,
)
def set_password(ops: Operations, call: Call) -> Deferred[dict[str, Any]]:
    b = call.body
    setting = ops.guest_config.set_password(call.params["id"], b.text("user"), b.text("password"))
    return setting.addCallback(credentials)


@guest_config.route("GET", GUEST + "/auth", "Get a guest's OS login", response=CREDENTIALS)
def get_password(ops: Operations, call: Call) -> Deferred[dict[str, Any]]:
    return ops.guest_config.password(call.params["id"]).addCallback(credentials)


@guest_config.route("PUT", GUEST + "/disks/resize/:index", "Grow a guest's disk", body=RESIZE_BODY)
def resize_disk(ops: Operations, call: Call) -> Deferred[str]:
    p = call.params
    return empty(ops.guest_config.resize_disk(p["id"], p["index"], call.body.integer("size")))


@guest_config.route(
    "PUT", GUEST + "/disks/shrink/:index", "Compact a stopped guest's disk", body=SHRINK_BODY
)
def shrink_disk(ops: Operations, call: Call) -> Deferred[str]:
    p = call.params
    return empty(ops.guest_config.shrink_disk(p["id"], p["index"]))
