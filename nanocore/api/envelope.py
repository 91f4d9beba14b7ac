"""The ``{"error_code","message","data"}`` envelope, byte-for-byte as Core's Go encoder wrote it.

Go's ``json.Encoder`` with ``SetIndent("", "  ")`` differs from Python's ``json`` in three
visible ways that clients may compare on: integral floats carry no ``.0``, the HTML-sensitive
characters and U+2028/U+2029 are escaped (both done by :func:`nanocore.gojson.dumps`), and the
document ends with one newline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nanocore import _fastgojson

#: ``error_code`` of every failure: Core knows no other non-zero code.
ERROR_CODE = 500

#: Go renders every envelope as sniffed plain text; clients never look at the type.
CONTENT_TYPE = b"text/plain; charset=utf-8"


def go_json(value: Any) -> str:
    """Serialise ``value`` as Go's indented encoder would (without the final newline): the
    text of ``gojson.dumps(value, indent=2)``, printed by its fast path (``_fastgojson``)."""
    return _fastgojson.dumps(value, indent=2)


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


#: What surrounds the items of a listing's envelope (Go's indent: the items sit two deep).
_LIST_HEAD = b'{\n  "error_code": 0,\n  "message": "",\n  "data": [\n    '
_LIST_SEPARATOR = b",\n    "
_LIST_TAIL = b"\n  ]\n}\n"


def list_item(value: Any) -> bytes:
    """``value`` encoded as an item of a listing's envelope (:func:`success_of_items`): its
    lines two levels in (an encoded string holds no raw line break)."""
    return go_json(value).replace("\n", "\n    ").encode("utf-8")


def success_of_items(items: Sequence[bytes]) -> bytes:
    """``success(list)`` for a non-empty list whose items are each :func:`list_item`: a
    listing that encodes only the items that changed since it was last answered."""
    return _LIST_HEAD + _LIST_SEPARATOR.join(items) + _LIST_TAIL


def failure(message: str, data: Any = None) -> bytes:
    """The bytes of a failed envelope: error code 500, the message, and ``data: {}`` (or
    the details an operation attached)."""
    return _envelope(ERROR_CODE, message, {} if data is None else data)
