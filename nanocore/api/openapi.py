"""The OpenAPI 3.1 document, generated from the route table so that it cannot drift.

Each operation carries ``x-route`` (``"<METHOD> <httprouter template>"``): a test walks the
document and the router both ways through it. ``python -m nanocore.api`` prints the document
of the whole table, kept in ``docs/openapi.json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from nanocore import COMPATIBLE_CORE_VERSION, __version__
from nanocore.api.auth import Variant
from nanocore.api.decode import Body, Kind
from nanocore.api.route import AnyRoute
from nanocore.api.schema import BOOL, INT, NUMBER, STRING, UINT, Schema, array

_PARAMETER = re.compile(r"[:*]([A-Za-z_]+)")

_KIND_SCHEMAS: dict[Kind, Schema] = {
    Kind.STRING: STRING,
    Kind.BOOL: BOOL,
    Kind.UINT: UINT,
    Kind.INT: INT,
    Kind.FLOAT: NUMBER,
    Kind.STRING_LIST: array(STRING),
    Kind.UINT_LIST: array(UINT),
}


def openapi_path(route: AnyRoute) -> str:
    """``/api/v1/pools/:pool`` → ``/api/v1/pools/{pool}``; a catch-all becomes one parameter."""
    return _PARAMETER.sub(lambda m: "{" + m.group(1) + "}", route.full_path)


def operation_id(route: AnyRoute) -> str:
    """``PUT /rules/:index/order`` → ``put_rules_by_index_order``; unique per route."""
    words = [route.method.lower()]
    for segment in route.path.strip("/").split("/"):
        if segment.startswith((":", "*")):
            words.append("by_" + segment[1:])
        elif segment:
            words.append(segment)
    return "_".join(words) if len(words) > 1 else words[0] + "_root"


def body_schema(body: Body) -> Schema:
    properties: dict[str, Schema] = {}
    for field in body.fields:
        if field.kind is Kind.OBJECT:
            assert field.body is not None
            schema = body_schema(field.body)
        else:
            schema = dict(_KIND_SCHEMAS[field.kind])
        if field.choices:
            schema["enum"] = list(field.choices)
        if field.description:
            schema["description"] = field.description
        properties[field.name] = schema
    return {
        "type": "object",
        "properties": properties,
        "required": [field.name for field in body.fields if field.required],
    }


def _envelope(data: Schema) -> Schema:
    return {
        "type": "object",
        "properties": {
            "error_code": {"type": "integer", "enum": [0, 500]},
            "message": STRING,
            "data": data,
        },
        "required": ["error_code", "message", "data"],
    }


def _operation(route: AnyRoute) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": route.summary,
        "tags": [route.tag],
        "operationId": operation_id(route),
        "x-route": f"{route.method} {route.path}",
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": STRING}
        for name in _PARAMETER.findall(route.path)
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": STRING} for name in route.query
    ]
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": not route.body.optional,
            "content": {"application/json": {"schema": body_schema(route.body)}},
        }
    if route.upload:
        operation["requestBody"] = {
            "required": True,
            "content": {
                route.upload: {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "checksum": {"type": "string"},
                            "size": {"type": "string"},
                            "image": {"type": "string", "format": "binary"},
                        },
                        "required": ["image"],
                    }
                }
            },
        }
    if route.raw:
        success = {
            "description": "the document itself, not enveloped",
            "content": {route.raw: {"schema": dict(route.response)}},
        }
    else:
        success = {
            "description": "the envelope; error_code 500 with a message on failure",
            "content": {"text/plain": {"schema": _envelope(dict(route.response))}},
        }
    operation["responses"] = {"200": success}
    if route.auth is None:
        operation["security"] = []
    elif route.auth is Variant.STREAM:
        operation["x-signature"] = "stream"
    return operation


def build_document(routes: Iterable[AnyRoute]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(openapi_path(route), {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "nanocore REST API",
            "version": __version__,
            "description": f"Signed REST API compatible with Nano Core {COMPATIBLE_CORE_VERSION}.",
        },
        "components": {
            "securitySchemes": {
                "nanoSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Nano-Authorization",
                    "description": "Nano-HMAC-SHA256 signature (api-reference §2); "
                    "Nano-Date required, within the configured skew.",
                }
            }
        },
        "security": [{"nanoSignature": []}],
        "paths": dict(sorted(paths.items())),
    }


def render_document(routes: Iterable[AnyRoute]) -> bytes:
    return (json.dumps(build_document(routes), indent=2, sort_keys=False) + "\n").encode("utf-8")
