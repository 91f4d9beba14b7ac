"""JSON as Go's ``encoding/json`` reads and writes it: one strict parser, two printers.

Every JSON input of Core (a Cell message, a discovery packet, an API body, a config file, the
data of a Nano install) and every JSON output a Go peer or client compares goes through here,
so they share one set of rules:

- ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON (Go refuses them; Python would not);
- a document nested deeper than :data:`MAX_DEPTH` is refused with :class:`JSONError`, never
  with a ``RecursionError`` from the parser's stack (a 1,000-deep body once crashed a request);
- text is UTF-8 (a BOM or other encodings are refused), and a ``\\u`` escape of a lone UTF-16
  surrogate reads as U+FFFD, as in Go (Python keeps the surrogate, which no UTF-8 output can
  hold: an answer quoting it could not be written);
- printing refuses non-finite numbers, escapes ``<``, ``>``, ``&``, U+2028 and U+2029 and writes
  integral floats without ``.0``, as Go does, where a reader may compare bytes.

This module imports nothing of ours, so that ``model``-level rooms and ``cluster/message`` may
use it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, NoReturn

__all__ = ["MAX_DEPTH", "JSONError", "dumps", "dumps_ascii", "loads"]

#: Deepest nesting accepted: far beyond any document of Nano (≤ 6 levels), far below the depth at
#: which Python's parser runs out of stack.
MAX_DEPTH = 64


class JSONError(ValueError):
    """A document that is not JSON as Go reads it.

    ``msg`` says what is wrong; ``pos``, when known, is where (a character offset, or a byte
    offset for bytes that are not UTF-8), and the text of the error says it as Python's JSON
    errors do (``line 1 column 7 (char 6)``), for the readers of config files.
    """

    def __init__(self, msg: str, pos: int | None = None, where: str = "") -> None:
        super().__init__(msg + where)
        self.msg = msg
        self.pos = pos


def _refuse_constant(name: str) -> NoReturn:
    raise JSONError(f"{name} is not valid JSON")


class NumberLiteral(Decimal):
    """A number with a fraction or exponent, and its ``text`` as written: Go's errors quote
    the literal (``number 1e0``), which ``Decimal`` would print otherwise (``1``)."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> NumberLiteral:
        number = super().__new__(cls, text)
        number.text = text
        return number


def _decoder(**options: Any) -> json.JSONDecoder:
    return json.JSONDecoder(parse_constant=_refuse_constant, **options)


# One decoder per mode, built once: building one costs more than parsing a small message.
_DECODERS = {
    (pairs, decimals): _decoder(
        object_pairs_hook=tuple if pairs else None,
        parse_float=NumberLiteral if decimals else None,
    )
    for pairs in (False, True)
    for decimals in (False, True)
}
_WHITESPACE = " \t\r\n"
#: An escape of a UTF-16 surrogate; one that is half of a pair was joined by the parser.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def loads(
    document: bytes | str,
    *,
    pairs: bool = False,
    decimals: bool = False,
    first_value: bool = False,
) -> Any:
    """Parse ``document``; raises :class:`JSONError` (a ``ValueError``) and nothing else.

    ``pairs``: every object becomes a tuple of its ``(key, value)`` pairs in document order
    (arrays stay lists), for readers that resolve duplicate or case-folded keys as Go does.
    ``decimals``: numbers with a fraction or exponent become :class:`NumberLiteral` (a
    ``Decimal``), so that ``1.0`` stays distinguishable from ``1`` and its text is kept.
    ``first_value``: read the first value after any whitespace and ignore what follows, as
    Go's ``json.Decoder.Decode`` does.
    """
    try:
        text = document if isinstance(document, str) else document.decode("utf-8")
        # raw_decode and a strip, rather than decode(): its two regular expressions cost as
        # much as parsing a small message.
        start = len(text) - len(text.lstrip(_WHITESPACE))
        value, end = _DECODERS[pairs, decimals].raw_decode(text, start)
        if not first_value and end != len(text) and text[end:].strip(_WHITESPACE):
            raise json.JSONDecodeError("Extra data", text, end)
    except UnicodeDecodeError as error:
        raise JSONError(
            "bytes that are not UTF-8", error.start, f" (byte {error.start})"
        ) from None
    except json.JSONDecodeError as error:
        where = f": line {error.lineno} column {error.colno} (char {error.pos})"
        # "Invalid control character at" names its place itself; ours follows (QA pass 20).
        raise JSONError(error.msg.removesuffix(" at"), error.pos, where) from None
    except RecursionError:
        raise JSONError(_TOO_DEEP) from None
    except JSONError:
        raise
    except ValueError as error:  # e.g. an integer longer than int()'s digit limit
        raise JSONError(str(error)) from None
    # A document cannot nest deeper than it has brackets: walk it only when it might.
    if text.count("[") + text.count("{") > MAX_DEPTH:
        _check_depth(value)
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        value = _without_surrogates(value)
    return value


def _without_surrogates(value: Any) -> Any:
    """``value`` with every lone surrogate of its strings (keys included) as U+FFFD."""
    kind = type(value)
    if kind is str:
        return _SURROGATE.sub("\ufffd", value)
    if kind is dict:
        return {_without_surrogates(key): _without_surrogates(item) for key, item in value.items()}
    if kind is list or kind is tuple:
        return kind(_without_surrogates(item) for item in value)
    return value


_TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"


def _check_depth(value: Any) -> None:
    """Refuse ``value`` if its containers nest deeper than :data:`MAX_DEPTH` (no recursion)."""
    level = [value]
    for _ in range(MAX_DEPTH):
        inner: list[Any] = []
        for item in level:
            if type(item) is list:
                inner.extend(item)
            elif type(item) is dict:
                inner.extend(item.values())
            elif type(item) is tuple:  # an object read with pairs=True
                inner.extend(member for _, member in item)
        if not inner:
            return
        level = inner
    if any(type(item) in (list, dict, tuple) for item in level):
        raise JSONError(_TOO_DEEP)


# --- printing ----------------------------------------------------------------------------------

_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def _go_numbers(value: Any) -> Any:
    """``value`` with integral floats as ints: Go prints ``3.0`` as ``3`` (below 1e21)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 1e21 else value
    if isinstance(value, Mapping):
        return {key: _go_numbers(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_go_numbers(item) for item in value]
    return value


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, Mapping):
        return any(_has_float(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_has_float(item) for item in value)
    return False


def dumps(value: Any, *, indent: int | None = None) -> str:
    """``value`` as Go's ``json.Marshal`` (or ``MarshalIndent`` with ``indent`` spaces) prints it.

    UTF-8 text with Go's HTML-safe escapes; integral floats without a fraction; ``ValueError``
    for NaN or an infinity. Go's forms of floats below 1e-4 (``0.00001``, ``1e-7``, where Python
    writes ``1e-05``, ``1e-07``) are not reproduced.
    """
    if _has_float(value):
        value = _go_numbers(value)
    text = json.dumps(
        value,
        ensure_ascii=False,
        allow_nan=False,
        indent=indent,
        separators=(",", ": ") if indent is not None else (",", ":"),
    )
    if "<" in text or ">" in text or "&" in text or "\u2028" in text or "\u2029" in text:
        text = text.translate(_GO_ESCAPES)
    return text


_dumps_ascii: Callable[[Any], str] = json.JSONEncoder(
    separators=(",", ":"), allow_nan=False
).encode


def dumps_ascii(value: Any) -> bytes:
    """Compact ASCII JSON for the wire: every non-ASCII character as a ``\\u`` escape.

    Go reads these escapes as it reads its own (cell-protocol.md §3.3), and ASCII output needs no
    encoding step. ``ValueError`` for NaN or an infinity.
    """
    return _dumps_ascii(value).encode("ascii")
