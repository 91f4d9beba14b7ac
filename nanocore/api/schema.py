"""Small JSON-schema builders for the response declarations of route modules."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
BOOL: Schema = {"type": "boolean"}
UINT: Schema = {"type": "integer", "minimum": 0}
INT: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
EMPTY: Schema = {"type": "string", "const": ""}
ANY: Schema = {}


def obj(required: tuple[str, ...] | None = None, /, **properties: Schema) -> Schema:
    """An object; every property is required unless ``required`` names the ones that are."""
    names = tuple(properties) if required is None else required
    return {
        "type": "object",
        "properties": properties,
        "required": list(names),
        "additionalProperties": False,
    }


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def enum(*values: str) -> Schema:
    return {"type": "string", "enum": list(values)}


ID_REPLY: Schema = obj(id=STRING)
