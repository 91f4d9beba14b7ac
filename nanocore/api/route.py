"""What a route module declares: path, method, body, signature variant, handler, documentation."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred

from nanocore.api.auth import Variant
from nanocore.api.decode import Body

#: Every API path starts with this prefix (``APIRoot`` + ``APIVersion`` in Core).
PREFIX = "/api/v1"


@frozen
class Call:
    """One decoded request as a handler sees it: no HTTP objects past this point."""

    params: Mapping[str, str]
    query: Mapping[str, str]
    body: Mapping[str, Any]
    credential: str = ""


@frozen
class Reply:
    """A success payload with a status other than 200 (Core uses 201 and 202 for polling)."""

    data: Any
    status: int = 200


Result = Any
Handler = Callable[[Call], "Result | Deferred[Result]"]


@frozen
class Route:
    """One registration of the route table; the OpenAPI document is generated from these."""

    method: str
    #: httprouter template relative to :data:`PREFIX` (``:name`` one segment, ``*name`` the rest).
    path: str
    handler: Handler
    summary: str
    tag: str
    #: ``None`` means the route reads no body.
    body: Body | None = None
    #: ``None`` means unsigned (only the version document).
    auth: Variant | None = Variant.REQUEST
    #: JSON schema of ``data`` on success, for the OpenAPI document.
    response: Mapping[str, Any] = {"type": "string", "const": ""}
    #: Reads whose encoded answer may be cached until the store changes.
    cacheable: bool = False
    #: Query parameters the handler reads, for the OpenAPI document.
    query: tuple[str, ...] = ()

    @property
    def full_path(self) -> str:
        return PREFIX + self.path


@frozen
class Raw:
    """A success answered with its own bytes and type instead of the envelope."""

    body: bytes
    content_type: bytes = b"application/json"
