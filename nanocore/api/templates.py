"""System templates (§3.15, §4.15)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from nanocore.api.decode import Body, Field
from nanocore.api.route import Call, Family, Fields, empty
from nanocore.api.schema import ID_REPLY, STRING, array, obj
from nanocore.model import SystemTemplate
from nanocore.operations.core import Operations
from nanocore.operations.templates import OPTIONS, TemplateSpec

TEMPLATE = obj(
    ("id", "name", "admin", "operating_system", "disk", "network", "display", "control",
     "created_time", "modified_time"),
    id=STRING, name=STRING, admin=STRING, operating_system=STRING, disk=STRING, network=STRING,
    display=STRING, control=STRING, usb=STRING, tablet=STRING, created_time=STRING,
    modified_time=STRING,
)  # fmt: skip
TEMPLATE_ITEM = obj(
    ("id", "name", "operating_system"),
    id=STRING,
    name=STRING,
    operating_system=STRING,
    created_time=STRING,
    modified_time=STRING,
)
TEMPLATE_BODY = Body(
    (
        Field("name", required=True),
        Field("admin", required=True),
        *(
            Field(name, required=bool(missing), missing=missing, choices=choices)
            for name, missing, choices in OPTIONS
        ),
    )
)


def template(item: SystemTemplate) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": item.id,
        "name": item.name,
        "admin": item.admin,
        "operating_system": item.operating_system.value,
        "disk": item.disk.value,
        "network": item.network.value,
        "display": item.display.value,
        "control": item.control.value,
    }
    if item.usb.value:
        data["usb"] = item.usb.value
    if item.tablet.value:
        data["tablet"] = item.tablet.value
    data["created_time"] = item.created_time
    data["modified_time"] = item.modified_time
    return data


def _item(item: SystemTemplate) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": item.id,
        "name": item.name,
        "operating_system": item.operating_system.value,
    }
    if item.created_time:
        data["created_time"] = item.created_time
    if item.modified_time:
        data["modified_time"] = item.modified_time
    return data


def _spec(body: Fields) -> TemplateSpec:
    return TemplateSpec(
        name=body.text("name"),
        admin=body.text("admin"),
        operating_system=body.text("operating_system"),
        disk=body.text("disk"),
        network=body.text("network"),
        display=body.text("display"),
        control=body.text("control"),
        usb=body.text("usb"),
        tablet=body.text("tablet"),
    )


templates: Family[Operations] = Family("system templates")


@templates.route(
    "GET",
    "/templates/",
    "List system templates in creation order",
    response=array(TEMPLATE_ITEM),
    cacheable=True,
)
def list_templates(ops: Operations, call: Call) -> object:
    return [_item(item) for item in ops.templates.list()]


@templates.route("GET", "/templates/:id", "Get a system template", response=TEMPLATE)
def get_template(ops: Operations, call: Call) -> object:
    return template(ops.templates.get(call.params["id"]))


@templates.route(
    "POST", "/templates/", "Create a system template", body=TEMPLATE_BODY, response=ID_REPLY
)
def create_template(ops: Operations, call: Call) -> Deferred[object]:
    created = ops.templates.create(_spec(call.body))
    return created.addCallback(lambda template_id: {"id": template_id})


@templates.route("PUT", "/templates/:id", "Replace a system template", body=TEMPLATE_BODY)
def modify_template(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.templates.modify(call.params["id"], _spec(call.body)))


@templates.route("DELETE", "/templates/:id", "Delete a system template")
def delete_template(ops: Operations, call: Call) -> Deferred[str]:
    return empty(ops.templates.delete(call.params["id"]))
