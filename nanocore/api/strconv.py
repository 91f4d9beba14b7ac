"""Go's ``strconv`` parsers for query values and path segments, with Go's error texts.

Core parsed some query values and path segments with ``strconv.Atoi`` and
``strconv.ParseBool`` and answered their errors verbatim (observed-with-cells: a non-numeric
disk index answers ``strconv.Atoi: parsing "x": invalid syntax``). These do the same, refusing
with a :class:`~nanocore.api.decode.DecodeError` that carries Go's text.
"""

from __future__ import annotations

import re

from nanocore.api.decode import INT64_MAX, INT64_MIN, DecodeError

_DECIMAL = re.compile(r"[+-]?[0-9]+")
_SHORT_ESCAPES = {
    "\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t", "\v": r"\v",
    '"': r"\"", "\\": r"\\",
}  # fmt: skip
#: ``strconv.ParseBool``'s spellings.
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def go_quote(text: str) -> str:
    """``strconv.Quote``: double quotes, Go's escapes for what is not printable."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif char.isprintable():
            out.append(char)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def atoi(text: str) -> int:
    """``strconv.Atoi``: an optionally signed decimal that fits 64 bits."""
    if _DECIMAL.fullmatch(text) is None:
        raise DecodeError(f"strconv.Atoi: parsing {go_quote(text)}: invalid syntax")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise DecodeError(f"strconv.Atoi: parsing {go_quote(text)}: value out of range")
    return value


def parse_bool(text: str) -> bool:
    """``strconv.ParseBool``: 1, t, T, TRUE, true, True and their false counterparts."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise DecodeError(f"strconv.ParseBool: parsing {go_quote(text)}: invalid syntax")
