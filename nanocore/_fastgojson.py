"""Go's indented JSON, printed faster than :func:`nanocore.gojson.dumps` (issue #15).

Python's ``json`` uses its C encoder only without ``indent``; with it (every API answer is
indented, as Go's ``SetIndent`` wrote it) each value goes through a chain of generators, and
``gojson`` walks the document once more to print integral floats as Go does. A status list of
1,000 Cells cost ~19 ms there, three times what computing it cost. :func:`dumps` prints the
same text in one recursive pass, with the C string escaper, for the plain JSON types it knows
exactly (``dict`` with ``str`` keys, ``list``, ``tuple``, ``str``, ``int``, ``float``, ``bool``,
``None``); for anything else, and for what the plain printer refuses, it hands the whole value
to :func:`nanocore.gojson.dumps`, so errors and odd types are the plain printer's.
``tests/test_fastgojson.py`` checks that it prints exactly what the plain one prints.
"""

from __future__ import annotations

from json.encoder import encode_basestring
from typing import Any

from nanocore import gojson

_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)
_INFINITY = float("inf")


class _Plain(Exception):
    """This value is for the plain printer."""


def dumps(value: Any, *, indent: int) -> str:
    """What ``gojson.dumps(value, indent=indent)`` returns (or raises)."""
    parts: list[str] = []
    try:
        _value(value, parts, "\n", " " * indent)
    except (_Plain, RecursionError):
        return gojson.dumps(value, indent=indent)
    text = "".join(parts)
    if "<" in text or ">" in text or "&" in text or "\u2028" in text or "\u2029" in text:
        text = text.translate(_GO_ESCAPES)
    return text


def _value(value: Any, parts: list[str], newline: str, step: str) -> None:
    kind = type(value)
    if kind is dict:
        if not value:
            parts.append("{}")
            return
        inner = newline + step
        separator = "{" + inner
        append = parts.append
        for key, item in value.items():
            if type(key) is not str:
                raise _Plain
            append(separator)
            append(encode_basestring(key))
            append(": ")
            # The scalars inline: most members are, and a call per member costs as much.
            if type(item) is str:
                append(encode_basestring(item))
            elif type(item) is int:
                append(int.__repr__(item))
            else:
                _value(item, parts, inner, step)
            separator = "," + inner
        append(newline + "}")
    elif kind is list or kind is tuple:
        if not value:
            parts.append("[]")
            return
        inner = newline + step
        separator = "[" + inner
        append = parts.append
        for item in value:
            append(separator)
            if type(item) is str:
                append(encode_basestring(item))
            elif type(item) is int:
                append(int.__repr__(item))
            else:
                _value(item, parts, inner, step)
            separator = "," + inner
        append(newline + "]")
    elif kind is str:
        parts.append(encode_basestring(value))
    elif kind is int:
        parts.append(int.__repr__(value))
    elif kind is bool:
        parts.append("true" if value else "false")
    elif value is None:
        parts.append("null")
    elif kind is float:
        if value != value or value in (_INFINITY, -_INFINITY):
            raise _Plain
        if value.is_integer() and abs(value) < 1e21:
            parts.append(int.__repr__(int(value)))
        else:
            parts.append(float.__repr__(value))
    else:
        raise _Plain
