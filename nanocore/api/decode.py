"""Declarative decoding of JSON request bodies with Go ``encoding/json`` semantics.

Each route declares its fields once (:class:`Body`); the same declaration serves decoding and
the OpenAPI document. As in Core, keys match case-insensitively (exact case preferred), unknown
keys are ignored, a missing key is the zero value and only the first JSON value is read. Unlike
Core, a field declared ``required`` that is missing is refused with a message naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from enum import Enum
from typing import Any

from attrs import field, frozen

from nanocore import gojson

UINT64_MAX = 2**64 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class DecodeError(ValueError):
    """The body is not what the route declares; ``message`` names the field."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Kind(Enum):
    """JSON value kinds a field may declare, with their Go spelling."""

    STRING = "string"
    BOOL = "bool"
    UINT = "uint64"
    INT = "int64"
    FLOAT = "float64"
    STRING_LIST = "[]string"
    UINT_LIST = "[]uint64"
    OBJECT = "object"


_ZERO: dict[Kind, Any] = {
    Kind.STRING: "",
    Kind.BOOL: False,
    Kind.UINT: 0,
    Kind.INT: 0,
    Kind.FLOAT: 0.0,
    Kind.STRING_LIST: (),
    Kind.UINT_LIST: (),
    Kind.OBJECT: None,
}


@frozen
class Field:
    """One body field: its JSON name, kind, and whether it must be present and non-empty."""

    name: str
    kind: Kind = Kind.STRING
    required: bool = False
    #: Message when a required field is missing; default ``"<name> required"``.
    missing: str = ""
    description: str = ""
    #: For ``Kind.OBJECT``: the nested declaration.
    body: Body | None = None
    #: Allowed values, for documentation and enumeration checks.
    choices: tuple[str, ...] = ()

    def missing_message(self) -> str:
        return self.missing or f"{self.name} required"


@frozen
class Body:
    """The fields of a request body, in the order Core declares them."""

    fields: tuple[Field, ...] = ()
    #: Core accepts an empty body only on ``POST /compute_pools/:pool``.
    optional: bool = False
    name: str = "request"
    #: Put before every decode error's message (``POST /search/guests/`` says
    #: ``invalid request payload: ``).
    error_prefix: str = ""
    _by_lower: Mapping[str, tuple[Field, ...]] = field(init=False, repr=False, eq=False)
    #: Every field's zero value (all immutable), copied for each decode.
    _zeros: Mapping[str, Any] = field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        index: dict[str, tuple[Field, ...]] = {}
        for item in self.fields:
            index[item.name.lower()] = (*index.get(item.name.lower(), ()), item)
        object.__setattr__(self, "_by_lower", index)
        object.__setattr__(self, "_zeros", {item.name: _ZERO[item.kind] for item in self.fields})

    def decode(self, raw: bytes) -> dict[str, Any]:
        """Decode ``raw`` into a dict holding every declared field (zero value if absent)."""
        if not self.error_prefix:
            return self._decode(raw)
        try:
            return self._decode(raw)
        except DecodeError as error:
            raise DecodeError(self.error_prefix + error.message) from None

    def _decode(self, raw: bytes) -> dict[str, Any]:
        text = raw.decode("utf-8", errors="replace")  # Go reads invalid UTF-8 as U+FFFD
        if not text.strip(" \t\r\n"):
            if self.optional:
                return self.zero()
            raise DecodeError("EOF")
        try:
            document = gojson.loads(text, pairs=True, decimals=True, first_value=True)
        except gojson.JSONError as error:
            where = "" if error.pos is None else f" at offset {error.pos}"
            raise DecodeError(f"invalid JSON body: {error.msg}{where}") from None
        return self.decode_value(document, self.name)

    def zero(self) -> dict[str, Any]:
        return dict(self._zeros)

    def decode_value(
        self, document: Any, struct: str, into: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """``document``, an object as its ``(key, value)`` pairs in document order, as Go
        decodes it: each key goes to the field of its exact name, else of its name in any
        case, and the last key to reach a field wins (an object reaching one again is decoded
        over it, ``into``)."""
        if document is None:
            document = ()
        if type(document) is not tuple:
            raise DecodeError(
                f"json: cannot unmarshal {_json_kind(document)} into Go value of type {struct}"
            )
        result = self.zero() if into is None else into
        for key, value in document:
            candidates = self._by_lower.get(key.lower())
            if not candidates or value is None:
                continue
            target = next((item for item in candidates if item.name == key), candidates[0])
            result[target.name] = _convert(target, value, struct, result[target.name])
        for item in self.fields:
            if item.required and _is_empty(result[item.name]):
                raise DecodeError(item.missing_message())
        return result


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or value == () or (value == 0 and value is not False)


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | Decimal):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, tuple):  # an object, as its pairs
        return "object"
    return "null"


def _type_error(value: Any, struct: str, item: Field, go_type: str) -> DecodeError:
    kind = _json_kind(value)
    if kind == "number":
        kind = f"number {getattr(value, 'text', value)}"  # as written, as Go quotes it
    where = f"Go struct field {struct}.{item.name}"
    return DecodeError(f"json: cannot unmarshal {kind} into {where} of type {go_type}")


def _integer(value: Any, struct: str, item: Field, go_type: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _type_error(value, struct, item, go_type)
    return value


def _convert(item: Field, value: Any, struct: str, current: Any) -> Any:
    kind = item.kind
    if kind is Kind.STRING:
        if not isinstance(value, str):
            raise _type_error(value, struct, item, "string")
        return value
    if kind is Kind.BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, struct, item, "bool")
        return value
    if kind is Kind.UINT:
        return _integer(value, struct, item, "uint64", 0, UINT64_MAX)
    if kind is Kind.INT:
        return _integer(value, struct, item, "int64", INT64_MIN, INT64_MAX)
    if kind is Kind.FLOAT:
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise _type_error(value, struct, item, "float64")
        return float(value)
    if kind is Kind.STRING_LIST:
        if not isinstance(value, list):
            raise _type_error(value, struct, item, "[]string")
        for element in value:
            if not isinstance(element, str):
                raise _type_error(element, struct, item, "string")
        return tuple(value)
    if kind is Kind.UINT_LIST:
        if not isinstance(value, list):
            raise _type_error(value, struct, item, "[]uint64")
        return tuple(_integer(v, struct, item, "uint64", 0, UINT64_MAX) for v in value)
    assert item.body is not None, f"object field {item.name} declares no body"
    if type(value) is not tuple:
        raise _type_error(value, struct, item, item.body.name)
    return item.body.decode_value(
        value, item.body.name, None if current is None else dict(current)
    )
