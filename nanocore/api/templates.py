"""System templates (§3.15, §4.15)."""

from __future__ import annotations

from typing import Any

from nanocore.api.decode import Body, Field
from nanocore.api.pools import empty
from nanocore.api.route import Call, Route
from nanocore.api.schema import ID_REPLY, STRING, array, obj
from nanocore.model import SystemTemplate
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


def _spec(body: Any) -> TemplateSpec:
    return TemplateSpec(
        name=body["name"],
        admin=body["admin"],
        operating_system=body["operating_system"],
        disk=body["disk"],
        network=body["network"],
        display=body["display"],
        control=body["control"],
        usb=body["usb"],
        tablet=body["tablet"],
    )


def routes(ops: Any) -> list[Route]:
    def list_templates(call: Call) -> Any:
        return [_item(item) for item in ops.templates.list()]

    def get_template(call: Call) -> Any:
        return template(ops.templates.get(call.params["id"]))

    def create_template(call: Call) -> Any:
        d = ops.templates.create(_spec(call.body))
        return d.addCallback(lambda template_id: {"id": template_id})

    def modify_template(call: Call) -> Any:
        return empty(ops.templates.modify(call.params["id"], _spec(call.body)))

    def delete_template(call: Call) -> Any:
        return empty(ops.templates.delete(call.params["id"]))

    t = "system templates"
    return [
        Route("GET", "/templates/", list_templates, "List system templates in creation order", t,
              response=array(TEMPLATE_ITEM), cacheable=True),
        Route("GET", "/templates/:id", get_template, "Get a system template", t,
              response=TEMPLATE),
        Route("POST", "/templates/", create_template, "Create a system template", t,
              body=TEMPLATE_BODY, response=ID_REPLY),
        Route("PUT", "/templates/:id", modify_template, "Replace a system template", t,
              body=TEMPLATE_BODY),
        Route("DELETE", "/templates/:id", delete_template, "Delete a system template", t),
    ]  # fmt: skip
