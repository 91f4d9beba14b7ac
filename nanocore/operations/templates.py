"""System templates (§4.15): the hardware profile a guest is created from."""

from __future__ import annotations

import os
import secrets

from attrs import evolve, frozen
from twisted.internet.defer import Deferred

from nanocore.clocks import wall_seconds
from nanocore.model import SystemTemplate
from nanocore.operations.base import Context, build, check_label
from nanocore.operations.claims import ClaimKind
from nanocore.operations.errors import AlreadyExists, InvalidRequest, UnknownEntity
from nanocore.store import Delete, Insert, Put

#: Each option with its required message and accepted values, in Core's order.
OPTIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("operating_system", "operating system required", ("linux", "windows")),
    ("disk", "disk driver required", ("scsi", "sata", "ide")),
    ("network", "network driver required", ("virtio", "e1000", "rtl8139")),
    ("display", "display model required", ("vga", "cirrus", "qxl", "virtio", "none")),
    ("control", "control protocol required", ("vnc", "spice")),
    ("usb", "", ("", "nec-xhci")),
    ("tablet", "", ("", "usb", "virtio")),
)

#: A template name from its uniqueness check to the commit that makes it visible.
TEMPLATE_NAME: ClaimKind[None] = ClaimKind(
    "template name", lambda held: AlreadyExists(f"system template '{held.key}' already exists")
)

_XID_ALPHABET = "0123456789abcdefghijklmnopqrstuv"
_MACHINE = secrets.token_bytes(3)
_counter = [int.from_bytes(secrets.token_bytes(3), "big")]


def new_xid(now: float) -> str:
    """A 20-character xid (time, machine, pid, counter in base32hex), like Core's ids."""
    _counter[0] = (_counter[0] + 1) & 0xFFFFFF
    raw = (
        int(now).to_bytes(4, "big")
        + _MACHINE
        + (os.getpid() & 0xFFFF).to_bytes(2, "big")
        + _counter[0].to_bytes(3, "big")
    )
    number = int.from_bytes(raw, "big") << 4
    return "".join(_XID_ALPHABET[(number >> (5 * i)) & 31] for i in reversed(range(20)))


@frozen
class TemplateSpec:
    """The client's fields of a template, as decoded from the body."""

    name: str
    admin: str
    operating_system: str
    disk: str
    network: str
    display: str
    control: str
    usb: str = ""
    tablet: str = ""


class Templates:
    def __init__(self, context: Context) -> None:
        self._context = context

    def list(self) -> list[SystemTemplate]:
        return list(self._context.view.templates.values())

    def get(self, template_id: str) -> SystemTemplate:
        template = self._context.view.templates.get(template_id)
        if template is None:
            raise UnknownEntity(f"invalid template '{template_id}'")
        return template

    def _check(self, spec: TemplateSpec, template_id: str) -> None:
        if not spec.name:
            raise InvalidRequest("name required")
        if not spec.admin:
            raise InvalidRequest("admin required")
        for field_name, missing, accepted in OPTIONS:
            value = getattr(spec, field_name)
            if missing and not value:
                raise InvalidRequest(missing)
            if value not in accepted:
                label = field_name.replace("_", " ")
                raise InvalidRequest(f"invalid template config: invalid {label} option '{value}'")
        # After Core's checks, which had no rule for either.
        check_label("template", spec.name)
        check_label("admin", spec.admin)
        for other in self._context.view.templates.values():
            if other.name == spec.name and other.id != template_id:
                raise AlreadyExists(f"system template '{spec.name}' already exists")

    def create(self, spec: TemplateSpec) -> Deferred[str]:
        template_id = new_xid(wall_seconds(self._context.clock))
        self._check(spec, template_id)
        now = self._context.now_text()
        template = build(
            SystemTemplate,
            id=template_id,
            created_time=now,
            modified_time=now,
            **_fields(spec),
        )
        claim = self._context.claims.take(TEMPLATE_NAME, spec.name, None)
        d = self._context.commit(Insert(template), holding=(claim,))
        return d.addCallback(lambda _: template_id)

    def modify(self, template_id: str, spec: TemplateSpec) -> Deferred[None]:
        current = self.get(template_id)
        self._check(spec, template_id)
        fields = _fields(spec)
        template = build(
            SystemTemplate,
            id=template_id,
            created_time=current.created_time,
            modified_time=self._context.now_text(),
            **fields,
        )
        if evolve(template, modified_time=current.modified_time) == current:
            raise InvalidRequest("no need to change")
        claim = self._context.claims.take(TEMPLATE_NAME, spec.name, None)
        return self._context.commit(Put(template), holding=(claim,))

    def delete(self, template_id: str) -> Deferred[None]:
        self.get(template_id)
        return self._context.commit(Delete(SystemTemplate, template_id))


def _fields(spec: TemplateSpec) -> dict[str, str]:
    return {
        "name": spec.name,
        "admin": spec.admin,
        "operating_system": spec.operating_system,
        "disk": spec.disk,
        "network": spec.network,
        "display": spec.display,
        "control": spec.control,
        "usb": spec.usb,
        "tablet": spec.tablet,
    }
