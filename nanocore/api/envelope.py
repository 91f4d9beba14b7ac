"""The ``{"error_code","message","data"}`` envelope, byte-for-byte as Core's Go encoder wrote it.

Go's ``json.Encoder`` with ``SetIndent("", "  ")`` differs from Python's ``json`` in three
visible ways that clients may compare on: integral floats carry no ``.0``, the HTML-sensitive
characters and U+2028/U+2029 are escaped, and the document ends with one newline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

#: ``error_code`` of every failure: Core knows no other non-zero code.
ERROR_CODE = 500

#: Go renders every envelope as sniffed plain text; clients never look at the type.
CONTENT_TYPE = b"text/plain; charset=utf-8"

_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def go_values(value: Any) -> Any:
    """Return ``value`` with integral floats turned into ints, as Go prints them."""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return int(value)
        return value
    if isinstance(value, Mapping):
        return {key: go_values(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [go_values(item) for item in value]
    return value


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, Mapping):
        return any(_has_float(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_has_float(item) for item in value)
    return False


def go_json(value: Any) -> str:
    """Serialise ``value`` as Go's indented encoder would (without the final newline)."""
    if _has_float(value):
        value = go_values(value)
    text = json.dumps(value, indent=2, ensure_ascii=False)
    if "<" in text or ">" in text or "&" in text or "\u2028" in text or "\u2029" in text:
        text = text.translate(_GO_ESCAPES)
    return text


def _envelope(error_code: int, message: str, data: Any) -> bytes:
    document = {"error_code": error_code, "message": message, "data": data}
    return (go_json(document) + "\n").encode("utf-8")


def success(data: Any = "") -> bytes:
    """The bytes of a successful envelope; ``""`` is Core's "nothing to return"."""
    if isinstance(data, str) and not data:
        return _EMPTY_SUCCESS
    return _envelope(0, "", data)


#: Every write answers this; encoding it costs more than the rest of the reply.
_EMPTY_SUCCESS = _envelope(0, "", "")


def failure(message: str) -> bytes:
    """The bytes of a failed envelope: error code 500, the message, and ``data: {}``."""
    return _envelope(ERROR_CODE, message, {})
