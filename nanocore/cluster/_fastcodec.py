"""The message codec's hot path: the bytes, values and errors of ``message.py``, faster.

``message.py`` is the definition; read it first. Every Cell link encodes and decodes every frame
through here (``transport.py``), and the codec was most of a link's CPU. So this module takes the
common, well-formed case with inline type tests, and hands anything else (an error, a ``null``,
a field named in another case or given twice) back to the plain :func:`message.decode`, which
decides: every rule stays in one place. ``tests/test_fastcodec.py`` holds the two to the same
output with hypothesis.

Three tricks are confined here, each because it at least halves the cost of what it replaces:

- A decoded :class:`Message` is built without attrs' ``__init__``, whose converters would check
  every value a second time: :func:`_new_message` writes the fields through the slots' own
  descriptors (attrs' frozen ``__init__`` writes them with ``object.__setattr__``, twice as slow).
- :func:`with_from_session` is ``attrs.evolve(message, from_session=...)`` for the one field a
  request changes when it is sent; it runs once per request.
- The encoder is CPython's C encoder (``json.encoder.c_make_encoder``, not a public name) built
  once; ``json.JSONEncoder.encode`` builds a new one on every call, which costs as much as
  encoding a small message. Where it is absent the public encoder is used.
"""

from __future__ import annotations

import json
import json.encoder
import math
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from nanocore import gojson
from nanocore.cluster import message as plain
from nanocore.cluster.message import (
    BOOL_PARAMS,
    EMPTY_PARAMS,
    FLOAT_PARAMS,
    INT64_MAX,
    INT64_MIN,
    INT_PARAMS,
    STRING_ARRAY_PARAMS,
    STRING_PARAMS,
    UINT32_MAX,
    UINT64_MAX,
    UINT_ARRAY_PARAMS,
    UINT_PARAMS,
    Message,
    ParamMap,
    check_uint32,
    checked_params,
)

__all__ = ["decode", "encode", "with_from_session"]


# --- building a Message ------------------------------------------------------------------------


def _slot_setter(name: str) -> Callable[[Message, Any], None]:
    setter: Callable[[Message, Any], None] = Message.__dict__[name].__set__
    return setter


_set_id = _slot_setter("id")
_set_success = _slot_setter("success")
_set_from_session = _slot_setter("from_session")
_set_to_session = _slot_setter("to_session")
_set_transaction = _slot_setter("transaction")
_set_error = _slot_setter("error")
_set_bool_params = _slot_setter("bool_params")
_set_string_params = _slot_setter("string_params")
_set_uint_params = _slot_setter("uint_params")
_set_int_params = _slot_setter("int_params")
_set_float_params = _slot_setter("float_params")
_set_uint_array_params = _slot_setter("uint_array_params")
_set_string_array_params = _slot_setter("string_array_params")
_set_sender = _slot_setter("sender")


def _new_message(
    id: int,
    success: bool,
    from_session: int,
    to_session: int,
    transaction: int,
    error: str,
    bool_params: Mapping[int, bool],
    string_params: Mapping[int, str],
    uint_params: Mapping[int, int],
    int_params: Mapping[int, int],
    float_params: Mapping[int, float],
    uint_array_params: Mapping[int, tuple[int, ...]],
    string_array_params: Mapping[int, tuple[str, ...]],
    sender: str,
) -> Message:
    """A Message of values checked already; never called on one handed out."""
    message: Message = object.__new__(Message)
    _set_id(message, id)
    _set_success(message, success)
    _set_from_session(message, from_session)
    _set_to_session(message, to_session)
    _set_transaction(message, transaction)
    _set_error(message, error)
    _set_bool_params(message, bool_params)
    _set_string_params(message, string_params)
    _set_uint_params(message, uint_params)
    _set_int_params(message, int_params)
    _set_float_params(message, float_params)
    _set_uint_array_params(message, uint_array_params)
    _set_string_array_params(message, string_array_params)
    _set_sender(message, sender)
    return message


def with_from_session(message: Message, session: int) -> Message:
    """``attrs.evolve(message, from_session=session)``, checking only the new session."""
    return _new_message(
        message.id,
        message.success,
        check_uint32("from", None, session),
        message.to_session,
        message.transaction,
        message.error,
        message.bool_params,
        message.string_params,
        message.uint_params,
        message.int_params,
        message.float_params,
        message.uint_array_params,
        message.string_array_params,
        message.sender,
    )


# --- decoding ----------------------------------------------------------------------------------

#: The decimal text of the common parameter keys (every ParamKey and some spare).
_KEY_NUMBER = {str(key): key for key in range(256)}


class _Unusual(Exception):
    """Not the common case: the plain decoder decides."""


def _unusual() -> NoReturn:
    raise _Unusual


def _key(text: str) -> int:
    number = _KEY_NUMBER.get(text)
    if number is not None:
        return number
    if not (text.isascii() and text.isdigit() and len(text) <= 10):
        _unusual()
    number = int(text)
    if number > UINT32_MAX:
        _unusual()
    return number


def _uint32(value: object) -> int:
    if type(value) is int and 0 <= value <= UINT32_MAX:
        return value
    _unusual()


def _uint(value: object) -> int:
    if type(value) is int and 0 <= value <= UINT64_MAX:
        return value
    _unusual()


def _int(value: object) -> int:
    if type(value) is int and INT64_MIN <= value <= INT64_MAX:
        return value
    _unusual()


def _float(value: object) -> float:
    if type(value) is float and math.isfinite(value):
        return value
    if type(value) is int and -UINT64_MAX <= value <= UINT64_MAX:  # float() of it is finite
        return float(value)
    _unusual()


def _bool(value: object) -> bool:
    if value is True or value is False:
        return value
    _unusual()


def _str(value: object) -> str:
    if type(value) is str:
        return value
    _unusual()


def _uint_array(value: object) -> tuple[int, ...]:
    if type(value) is not list:
        _unusual()
    for item in value:
        if type(item) is not int or not 0 <= item <= UINT64_MAX:
            _unusual()
    return tuple(value)


def _str_array(value: object) -> tuple[str, ...]:
    if type(value) is not list:
        _unusual()
    for item in value:
        if type(item) is not str:
            _unusual()
    return tuple(value)


def _map_reader(kind: ParamMap, check: Callable[[object], Any]) -> Callable[[object], Any]:
    """Reads one JSON map whose values ``check`` takes; tags it as ``kind``'s plain check would."""

    def read(value: object) -> Mapping[int, Any]:
        if value is None:
            return EMPTY_PARAMS
        if type(value) is not tuple:
            _unusual()
        params = {_key(key): check(item) for key, item in value}
        return checked_params(params, kind.check) if params else EMPTY_PARAMS

    return read


#: Every field by its exact JSON name: its place in the Message, and how to read it.
_FIELDS: dict[str, tuple[int, Callable[[object], Any]]] = {
    "id": (0, _uint32),
    "success": (1, _bool),
    "from": (2, _uint32),
    "to": (3, _uint32),
    "transaction": (4, _uint32),
    "error": (5, _str),
    "bool_params": (6, _map_reader(BOOL_PARAMS, _bool)),
    "string_params": (7, _map_reader(STRING_PARAMS, _str)),
    "uint_params": (8, _map_reader(UINT_PARAMS, _uint)),
    "int_params": (9, _map_reader(INT_PARAMS, _int)),
    "float_params": (10, _map_reader(FLOAT_PARAMS, _float)),
    "uint_array_params": (11, _map_reader(UINT_ARRAY_PARAMS, _uint_array)),
    "string_array_params": (12, _map_reader(STRING_ARRAY_PARAMS, _str_array)),
}
_MISSING = None
_DEFAULTS = (_MISSING, False, 0, 0, 0, "", *[EMPTY_PARAMS] * 7, "")
_SENDER = len(_DEFAULTS) - 1


def decode(data: bytes, sender: str = "") -> Message:
    """:func:`message.decode`, with the common case read without the plain checks."""
    try:
        document = gojson.loads(data, pairs=True)
        # Not an object, or a name given twice: Go's rules for those are in plain.decode.
        if type(document) is not tuple or len(dict(document)) != len(document):
            _unusual()
        values: list[Any] = list(_DEFAULTS)
        for name, value in document:
            field = _FIELDS.get(name)
            if field is None:  # unknown, or in another case
                _unusual()
            index, read = field
            values[index] = read(value)
        if values[0] is _MISSING:
            _unusual()
        values[_SENDER] = _str(sender)
        return _new_message(*values)
    except (_Unusual, gojson.JSONError):
        return plain.decode(data, sender)


# --- encoding ----------------------------------------------------------------------------------

#: The decimal text of the common parameter keys.
_KEY_TEXT = tuple(str(key) for key in range(256))


def _key_text(key: int) -> str:
    return _KEY_TEXT[key] if key < 256 else str(key)


def _not_serialisable(value: object) -> NoReturn:
    raise TypeError(f"{value!r} cannot be encoded")  # unreachable: a Message holds JSON types


def _c_serialiser() -> Callable[[dict[str, object]], bytes] | None:
    """CPython's C encoder with the options of ``gojson.dumps_ascii``, built once."""
    make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if make_encoder is None:  # pragma: no cover - other interpreters
        return None
    # The arguments json.JSONEncoder.iterencode passes for separators=(",", ":"),
    # allow_nan=False; no cycle check (markers=None): a Message holds no containers of its own.
    encode_document = make_encoder(
        None,
        _not_serialisable,
        json.encoder.encode_basestring_ascii,
        None,
        ":",
        ",",
        False,
        False,
        False,
    )

    def serialise(document: dict[str, object]) -> bytes:
        return "".join(encode_document(document, 0)).encode("ascii")

    return serialise


_serialise = _c_serialiser() or gojson.dumps_ascii


def encode(message: Message) -> bytes:
    """:func:`message.encode`, with the document built and printed with less work."""
    document: dict[str, object] = {"id": message.id}
    if message.success:
        document["success"] = True
    if message.from_session:
        document["from"] = message.from_session
    if message.to_session:
        document["to"] = message.to_session
    if message.transaction:
        document["transaction"] = message.transaction
    if message.error:
        document["error"] = message.error
    for name, params in (
        ("bool_params", message.bool_params),
        ("string_params", message.string_params),
        ("uint_params", message.uint_params),
        ("int_params", message.int_params),
        ("float_params", message.float_params),
        ("uint_array_params", message.uint_array_params),
        ("string_array_params", message.string_array_params),
    ):
        if params:
            if len(params) == 1:
                [(key, value)] = params.items()
                document[name] = {_key_text(key): value}
            else:  # Go sorts map keys as strings
                document[name] = dict(sorted([(_key_text(k), v) for k, v in params.items()]))
    return _serialise(document)
