"""The Nano message model (cell-protocol.md §3) and its strict JSON codec.

Every Core↔Cell message is one ``JsonMessage`` object. A Go peer treats a
document that is valid JSON but ill-typed for its struct (``1.0`` or ``-1`` in
a uint map, a non-numeric key, ``"x"`` for a bool) as *incomplete* and wedges
the link (§2.5 point 3), so this codec is exact in both directions: a
:class:`Message` cannot be built with an ill-typed value, and :func:`decode`
rejects what Go's typed decode would reject, always with :class:`MessageError`.

This module imports nothing of ours (see docs/architecture.md).
"""

from __future__ import annotations

import json
import json.encoder
import math
from collections.abc import Callable, Mapping, Sequence
from enum import IntEnum
from typing import Any, NoReturn, TypeVar

from attrs import field, frozen

__all__ = [
    "DOCUMENT",
    "KIND_EVENT",
    "KIND_REQUEST",
    "KIND_RESPONSE",
    "Message",
    "MessageError",
    "MessageID",
    "ParamKey",
    "decode",
    "encode",
    "message_kind",
    "response_id",
]

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

KIND_REQUEST = 0
KIND_RESPONSE = 1
KIND_EVENT = 2

DOCUMENT = "document"
"""The ``field`` of a :class:`MessageError` about the document as a whole."""


class MessageError(ValueError):
    """A message that is not a well-typed ``JsonMessage``; names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class MessageID(IntEnum):
    """Every message id of cell-protocol.md §2 and §5 (``operate<<16 | resource<<8 | kind``)."""

    # §5.1 connection control, consumed by the transport
    ConnectionKeepAliveEvent = 0x020102
    ConnectionOpenedEvent = 0x030102
    ConnectionClosedEvent = 0x040102
    # §2.6/§2.8 events a node raises to itself
    ServiceConnectedEvent = 0x0B0002
    ServiceDisconnectedEvent = 0x0C0002
    ComputeCellAvailableEvent = 0x000302
    ComputeCellDisconnectedEvent = 0x0C0302
    # §5.2 registration, pool membership, status
    ComputePoolReadyEvent = 0x010202
    ComputeCellReadyEvent = 0x010302
    ComputeCellRemovedEvent = 0x120302
    GetComputePoolCellRequest = 0x0A0300
    GetComputePoolCellResponse = 0x0A0301
    CellStatusReportEvent = 0x050302
    # §5.3 guest lifecycle
    CreateGuestRequest = 0x000500
    CreateGuestResponse = 0x000501
    DeleteGuestRequest = 0x010500
    DeleteGuestResponse = 0x010501
    QueryGuestRequest = 0x030500
    QueryGuestResponse = 0x030501
    GetGuestRequest = 0x0A0500
    GetGuestResponse = 0x0A0501
    StartInstanceRequest = 0x0C0600
    StartInstanceResponse = 0x0C0601
    StopInstanceRequest = 0x0D0600
    StopInstanceResponse = 0x0D0601
    GetInstanceStatusRequest = 0x0E0600
    GetInstanceStatusResponse = 0x0E0601
    GuestCreatedEvent = 0x060502
    GuestDeletedEvent = 0x070502
    GuestStartedEvent = 0x080502
    GuestStoppedEvent = 0x090502
    GuestUpdatedEvent = 0x0A0502
    # §5.4 guest modification
    ModifyCoreRequest = 0x020C00
    ModifyCoreResponse = 0x020C01
    ModifyMemoryRequest = 0x020D00
    ModifyMemoryResponse = 0x020D01
    ModifyAuthRequest = 0x020F00
    ModifyAuthResponse = 0x020F01
    GetAuthRequest = 0x0A0F00
    GetAuthResponse = 0x0A0F01
    ResizeDiskRequest = 0x0F0E00
    ResizeDiskResponse = 0x0F0E01
    ShrinkDiskRequest = 0x100E00
    ShrinkDiskResponse = 0x100E01  # defined by Go, but Cells answer Shrink with ResizeDisk
    ResetSystemRequest = 0x1A1600
    ResetSystemResponse = 0x1A1601
    SystemResetEvent = 0x171602
    ModifyGuestNameRequest = 0x021700
    ModifyGuestNameResponse = 0x021701
    ModifyPriorityRequest = 0x021800
    ModifyPriorityResponse = 0x021801
    ModifyDiskThresholdRequest = 0x021900
    ModifyDiskThresholdResponse = 0x021901
    ModifyNetworkThresholdRequest = 0x021A00
    ModifyNetworkThresholdResponse = 0x021A01
    ResetSecretRequest = 0x1A2000
    ResetSecretResponse = 0x1A2001
    ModifyAutoStartRequest = 0x022200
    ModifyAutoStartResponse = 0x022201
    # §5.5 media
    InsertMediaRequest = 0x111100
    InsertMediaResponse = 0x111101
    EjectMediaRequest = 0x121100
    EjectMediaResponse = 0x121101
    MediaAttachedEvent = 0x0E1102
    MediaDetachedEvent = 0x0F1102
    # §5.6 snapshots
    CreateSnapshotRequest = 0x001000
    CreateSnapshotResponse = 0x001001
    DeleteSnapshotRequest = 0x011000
    DeleteSnapshotResponse = 0x011001
    QuerySnapshotRequest = 0x031000
    QuerySnapshotResponse = 0x031001
    GetSnapshotRequest = 0x0A1000
    GetSnapshotResponse = 0x0A1001
    RestoreSnapshotRequest = 0x151000
    RestoreSnapshotResponse = 0x151001
    SnapshotResumedEvent = 0x101002
    # §5.7 migration and failover (MigrateInstanceRequest is one-way)
    AttachInstanceRequest = 0x110600
    AttachInstanceResponse = 0x110601
    DetachInstanceRequest = 0x120600
    DetachInstanceResponse = 0x120601
    MigrateInstanceRequest = 0x180600
    InstanceMigratedEvent = 0x130602
    InstancePurgedEvent = 0x140602
    # §5.8 cell storage paths
    ModifyCellStorageRequest = 0x021B00
    ModifyCellStorageResponse = 0x021B01
    QueryCellStorageRequest = 0x031B00
    QueryCellStorageResponse = 0x031B01
    # §5.9 guest security policy
    ModifyGuestRuleRequest = 0x022100
    ModifyGuestRuleResponse = 0x022101
    AddGuestRuleRequest = 0x042100
    AddGuestRuleResponse = 0x042101
    RemoveGuestRuleRequest = 0x052100
    RemoveGuestRuleResponse = 0x052101
    GetGuestRuleRequest = 0x0A2100
    GetGuestRuleResponse = 0x0A2101
    ChangeGuestRuleOrderRequest = 0x222100
    ChangeGuestRuleOrderResponse = 0x222101
    ChangeGuestRuleDefaultActionRequest = 0x232100
    ChangeGuestRuleDefaultActionResponse = 0x232101
    # §5.11 addresses
    AddressChangedEvent = 0x0D0B02
    AddressPoolChangedEvent = 0x0D1402
    # §5.12 disk images
    CreateDiskImageRequest = 0x000900
    CreateDiskImageResponse = 0x000901
    DiskImageUpdatedEvent = 0x0A0902


class ParamKey(IntEnum):
    """Every parameter key of cell-protocol.md §3.4."""

    Name = 0
    Type = 1
    Core = 2
    Memory = 3
    Disk = 4
    Usage = 5
    IO = 6
    Speed = 7
    Description = 8
    Error = 9
    Status = 10
    Pool = 11
    Cell = 12
    Instance = 13
    Enable = 14
    Flag = 15
    Option = 16
    ID = 17
    User = 18
    Group = 19
    Network = 20
    Address = 21
    Port = 22
    Priority = 23
    Limit = 24
    Storage = 25
    Source = 26
    Target = 27
    Mode = 28
    Host = 29
    Path = 30
    Monitor = 31
    Progress = 32
    Count = 33
    Size = 34
    Available = 35
    Media = 36
    Tag = 37
    Image = 38
    Guest = 39
    Secret = 40
    Immediate = 41
    System = 42
    Version = 43
    Admin = 44
    Module = 45
    Previous = 46
    Next = 47
    Current = 48
    Create = 49
    Modify = 50
    Attach = 51
    Migration = 52
    Start = 53
    End = 54
    Mask = 55
    Allocate = 56
    Gateway = 57
    Server = 58
    Assign = 59
    Internal = 60
    External = 61
    Day = 62
    Hour = 63
    Minute = 64
    Second = 65
    Hardware = 66
    Data = 67
    Display = 68
    Device = 69
    Protocol = 70
    Interface = 71
    Action = 72
    Template = 73
    From = 74
    To = 75
    Index = 76
    Security = 77
    Policy = 78


def message_kind(message_id: int) -> int:
    """The low byte of an id: a request, a response or an event (``KIND_*``)."""
    return message_id & 0xFF


def response_id(request_id: int) -> int:
    """The id of the response to ``request_id`` (same operate and resource, kind 1)."""
    if message_kind(request_id) != KIND_REQUEST:
        raise ValueError(f"{request_id:#08x} is not a request id")
    return request_id | KIND_RESPONSE


# --- value checks: one per wire type; each returns the normalised value or raises -------------
#
# A check takes the field name and, inside a typed map, the parameter key: the location is
# formatted only when a value is refused, because checks run on every value of every message.


def _at(name: str, key: int | None) -> str:
    return name if key is None else f"{name}.{key}"


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_uint32(name: str, key: int | None, value: object) -> int:
    if type(value) is int and 0 <= value <= UINT32_MAX:  # the common case, fast
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= UINT32_MAX:
        return int(value)
    raise MessageError(_at(name, key), f"expected an integer in 0..{UINT32_MAX}, got {value!r}")


def _uint_refused(where: str, value: object) -> MessageError:
    return MessageError(where, f"expected an integer in 0..2**64-1, got {value!r}")


def _check_uint(name: str, key: int | None, value: object) -> int:
    if type(value) is int and 0 <= value <= UINT64_MAX:  # the common case, fast
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= UINT64_MAX:
        return int(value)
    raise _uint_refused(_at(name, key), value)


def _check_int(name: str, key: int | None, value: object) -> int:
    if type(value) is int and INT64_MIN <= value <= INT64_MAX:  # the common case, fast
        return value
    if isinstance(value, int) and not isinstance(value, bool) and INT64_MIN <= value <= INT64_MAX:
        return int(value)
    raise MessageError(_at(name, key), f"expected a signed 64-bit integer, got {value!r}")


def _check_float(name: str, key: int | None, value: object) -> float:
    if isinstance(value, float | int) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isfinite(number):
            return number
    raise MessageError(_at(name, key), f"expected a finite number, got {value!r}")


def _check_bool(name: str, key: int | None, value: object) -> bool:
    if value is True or value is False:
        return value
    raise MessageError(_at(name, key), f"expected true or false, got {value!r}")


def _check_str(name: str, key: int | None, value: object) -> str:
    if type(value) is str:
        return value
    if not isinstance(value, str):
        raise MessageError(_at(name, key), f"expected a string, got {value!r}")
    return str(value)


def _check_uint_array(name: str, key: int | None, value: object) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        raise MessageError(
            _at(name, key), f"expected an array of unsigned integers, got {value!r}"
        )
    for item in value:  # one pass of cheap type tests; locate the culprit only on refusal
        if type(item) is not int or not 0 <= item <= UINT64_MAX:
            return tuple(_uint_item(_at(name, key), i, x) for i, x in enumerate(value))
    return value if type(value) is tuple else tuple(value)


def _uint_item(where: str, index: int, item: object) -> int:
    if isinstance(item, int) and not isinstance(item, bool) and 0 <= item <= UINT64_MAX:
        return int(item)
    raise _uint_refused(f"{where}[{index}]", item)


def _check_str_array(name: str, key: int | None, value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise MessageError(_at(name, key), f"expected an array of strings, got {value!r}")
    for item in value:
        if type(item) is not str:
            return tuple(_str_item(_at(name, key), i, x) for i, x in enumerate(value))
    return value if type(value) is tuple else tuple(value)


def _str_item(where: str, index: int, item: object) -> str:
    if not isinstance(item, str):
        raise MessageError(f"{where}[{index}]", f"expected a string, got {item!r}")
    return str(item)


_V = TypeVar("_V")
_Check = Callable[[str, "int | None", object], _V]


class _Params(dict[int, _V]):
    """A checked, read-only parameter map; ``checked_by`` says which check it passed."""

    __slots__ = ("checked_by",)

    def __init__(self, items: dict[int, _V], checked_by: _Check[_V]) -> None:
        super().__init__(items)
        self.checked_by = checked_by

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("message parameters are read-only; build a new Message instead")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _read_only
    __ior__ = _read_only

    def __repr__(self) -> str:
        return repr(dict(self))

    def __copy__(self) -> _Params[_V]:
        return self  # immutable, like a tuple

    def __deepcopy__(self, memo: object) -> _Params[_V]:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Params, (dict(self), self.checked_by))


def _no_check(name: str, key: int | None, value: object) -> Any:
    raise AssertionError("the empty map holds no values")


_EMPTY: Mapping[int, Any] = _Params({}, _no_check)


def _convert_params(name: str, check: _Check[_V], params: Mapping[int, Any]) -> Mapping[int, _V]:
    """Check every key and value of one typed map and freeze it."""
    kind = type(params)
    if kind is _Params and params.checked_by is check:  # type: ignore[attr-defined]
        return params  # already checked as this very type: reuse, no copy
    if kind is not dict and kind is not _Params and not isinstance(params, Mapping):
        raise MessageError(name, f"expected a mapping, got {params!r}")
    if not params:
        return _EMPTY
    checked: dict[int, _V] = {}
    for key, value in params.items():
        if type(key) is not int:
            if type(key) is not ParamKey and not _is_integer(key):
                raise MessageError(name, f"parameter key {key!r} is not an integer in 0..2**32-1")
            key = int(key)
        if not 0 <= key <= UINT32_MAX:
            raise MessageError(name, f"parameter key {key!r} is not an integer in 0..2**32-1")
        checked[key] = check(name, key, value)
    return _Params(checked, check)


@frozen(init=False)
class Message:
    """One ``JsonMessage``; every map is an immutable, checked mapping keyed by :class:`ParamKey`.

    Every value is checked on construction (a :class:`MessageError` names the field), so no
    ill-typed message can be sent. ``sender`` is the remote service name filled in by the
    receiving transport; it is never serialised and takes no part in equality, so a peer
    cannot claim another name per message.
    """

    id: int
    success: bool = False
    from_session: int = 0
    to_session: int = 0
    transaction: int = 0
    error: str = ""
    bool_params: Mapping[int, bool] = _EMPTY
    string_params: Mapping[int, str] = _EMPTY
    uint_params: Mapping[int, int] = _EMPTY
    int_params: Mapping[int, int] = _EMPTY
    float_params: Mapping[int, float] = _EMPTY
    uint_array_params: Mapping[int, tuple[int, ...]] = _EMPTY
    string_array_params: Mapping[int, tuple[str, ...]] = _EMPTY
    sender: str = field(default="", eq=False)

    # Written by hand rather than by attrs converters: messages are built on every frame in
    # both directions, and this is several times cheaper while checking exactly the same.
    def __init__(
        self,
        id: int,
        success: bool = False,
        from_session: int = 0,
        to_session: int = 0,
        transaction: int = 0,
        error: str = "",
        bool_params: Mapping[int, bool] = _EMPTY,
        string_params: Mapping[int, str] = _EMPTY,
        uint_params: Mapping[int, int] = _EMPTY,
        int_params: Mapping[int, int] = _EMPTY,
        float_params: Mapping[int, float] = _EMPTY,
        uint_array_params: Mapping[int, Sequence[int]] = _EMPTY,
        string_array_params: Mapping[int, Sequence[str]] = _EMPTY,
        sender: str = "",
    ) -> None:
        # Defaults and already-checked maps are taken as they are; everything else is checked.
        _set_id(self, _check_uint32("id", None, id))
        _set_success(self, _check_bool("success", None, success))
        _set_from_session(self, _check_uint32("from", None, from_session))
        _set_to_session(self, _check_uint32("to", None, to_session))
        _set_transaction(self, _check_uint32("transaction", None, transaction))
        _set_error(self, _check_str("error", None, error))
        if bool_params is not _EMPTY:
            bool_params = _convert_params("bool_params", _check_bool, bool_params)
        _set_bool_params(self, bool_params)
        if string_params is not _EMPTY:
            string_params = _convert_params("string_params", _check_str, string_params)
        _set_string_params(self, string_params)
        if uint_params is not _EMPTY:
            uint_params = _convert_params("uint_params", _check_uint, uint_params)
        _set_uint_params(self, uint_params)
        if int_params is not _EMPTY:
            int_params = _convert_params("int_params", _check_int, int_params)
        _set_int_params(self, int_params)
        if float_params is not _EMPTY:
            float_params = _convert_params("float_params", _check_float, float_params)
        _set_float_params(self, float_params)
        if uint_array_params is not _EMPTY:
            uint_array_params = _convert_params(
                "uint_array_params", _check_uint_array, uint_array_params
            )
        _set_uint_array_params(self, uint_array_params)
        if string_array_params is not _EMPTY:
            string_array_params = _convert_params(
                "string_array_params", _check_str_array, string_array_params
            )
        _set_string_array_params(self, string_array_params)
        _set_sender(self, _check_str("sender", None, sender))

    def replace(
        self,
        *,
        from_session: int | None = None,
        to_session: int | None = None,
        sender: str | None = None,
    ) -> Message:
        """A copy with new sessions or sender: only the changed fields are checked again.

        ``attrs.evolve`` works too, but re-checks every map; this runs once per request sent.
        """
        copy: Message = object.__new__(Message)
        _set_id(copy, self.id)
        _set_success(copy, self.success)
        _set_from_session(copy, self.from_session)
        _set_to_session(copy, self.to_session)
        _set_transaction(copy, self.transaction)
        _set_error(copy, self.error)
        _set_bool_params(copy, self.bool_params)
        _set_string_params(copy, self.string_params)
        _set_uint_params(copy, self.uint_params)
        _set_int_params(copy, self.int_params)
        _set_float_params(copy, self.float_params)
        _set_uint_array_params(copy, self.uint_array_params)
        _set_string_array_params(copy, self.string_array_params)
        _set_sender(copy, self.sender)
        if from_session is not None:
            _set_from_session(copy, _check_uint32("from", None, from_session))
        if to_session is not None:
            _set_to_session(copy, _check_uint32("to", None, to_session))
        if sender is not None:
            _set_sender(copy, _check_str("sender", None, sender))
        return copy


def _slot_setter(name: str) -> Callable[[Message, Any], None]:
    """Writes one field of a frozen Message under construction (the slot's own descriptor).

    About half the cost of ``object.__setattr__``, which looks the slot up on every call;
    used only while a new Message is built, never on one already handed out.
    """
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


# --- codec -------------------------------------------------------------------------------------

_MAP_FIELDS = (
    "bool_params",
    "string_params",
    "uint_params",
    "int_params",
    "float_params",
    "uint_array_params",
    "string_array_params",
)
_MAP_CHECKS: dict[str, _Check[Any]] = {
    "bool_params": _check_bool,
    "string_params": _check_str,
    "uint_params": _check_uint,
    "int_params": _check_int,
    "float_params": _check_float,
    "uint_array_params": _check_uint_array,
    "string_array_params": _check_str_array,
}
_MAP_SETTERS = {
    "bool_params": _set_bool_params,
    "string_params": _set_string_params,
    "uint_params": _set_uint_params,
    "int_params": _set_int_params,
    "float_params": _set_float_params,
    "uint_array_params": _set_uint_array_params,
    "string_array_params": _set_string_array_params,
}
_KNOWN_FIELDS = frozenset(("id", "success", "from", "to", "transaction", "error", *_MAP_FIELDS))
_ARRAY_FIELDS = frozenset({"uint_array_params", "string_array_params"})
_SCALAR_FIELDS = {
    "id": "id",
    "success": "success",
    "from": "from_session",
    "to": "to_session",
    "transaction": "transaction",
    "error": "error",
}
#: The decimal text of the common parameter keys, both ways (every ParamKey and some spare).
_KEY_TEXT = tuple(str(key) for key in range(256))
_KEY_NUMBER = {text: key for key, text in enumerate(_KEY_TEXT)}


def encode(message: Message) -> bytes:
    """Compact JSON in Go's field order, empty fields omitted, map keys as decimal strings."""
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
            # Go writes map keys sorted as strings; doing the same keeps output byte-identical.
            if len(params) == 1:
                [(key, value)] = params.items()
                document[name] = {_key_text(key): value}
            else:
                document[name] = dict(sorted([(_key_text(k), v) for k, v in params.items()]))
    return _serialise(document).encode("ascii")


def _key_text(key: int) -> str:
    return _KEY_TEXT[key] if key < 256 else str(key)


def _not_serialisable(value: object) -> NoReturn:
    raise TypeError(f"{value!r} cannot be encoded")  # unreachable: Message holds JSON types


_serialise: Callable[[dict[str, object]], str] = json.JSONEncoder(
    separators=(",", ":"), allow_nan=False
).encode
# That encoder builds a C encoder on every call; building it once gives the same output at
# half the cost for a small message. No cycle check (markers) is needed: a Message holds only
# scalars, strings and tuples.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
if _c_make_encoder is not None:  # CPython; other interpreters keep the encoder above
    _encode_document = _c_make_encoder(
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

    def _serialise(document: dict[str, object]) -> str:
        return "".join(_encode_document(document, 0))


# A JSON object decodes as a tuple of its (key, value) pairs, in order, so that duplicate fields
# resolve as in Go; arrays decode as lists, so ``type(x) is tuple`` means "an object".
_Object = tuple


def _reject_constant(name: str) -> object:
    raise MessageError(DOCUMENT, f"{name} is not valid JSON")


_parse = json.JSONDecoder(object_pairs_hook=tuple, parse_constant=_reject_constant).decode


def _fold(name: str) -> str:
    """Fold a field name the way Go matches it: Unicode simple folding (long s, Kelvin sign)."""
    return name.lower().replace("\u017f", "s")


def _param_key(name: str, key: str) -> int:
    number = _KEY_NUMBER.get(key)
    if number is not None:
        return number
    # Go parses map keys with strconv.ParseUint(key, 10, 64): ASCII digits only, no sign or
    # spaces, and the result must fit the uint32 ParamKey.
    if not (key.isascii() and key.isdigit()):
        raise MessageError(name, f"parameter key {key!r} is not a decimal number")
    try:
        number = int(key)
    except ValueError:  # longer than int()'s digit limit
        number = UINT32_MAX + 1
    if number > UINT32_MAX:
        raise MessageError(name, f"parameter key {key!r} does not fit 32 bits")
    return number


def _merge_params(name: str, value: object, into: dict[int, object] | None) -> dict[int, object]:
    """Keys of one JSON map, parsed; the values are checked once every field is known."""
    if value is None:  # Go: null sets the map to nil, i.e. empty
        return {}
    if type(value) is not _Object:
        raise MessageError(name, f"expected an object, got {_describe(value)}")
    merged = {} if into is None else into  # Go decodes repeated maps into the same map
    is_array = name in _ARRAY_FIELDS
    for key, item in value:
        number = _param_key(name, key)
        if item is None and is_array:
            item = ()  # Go writes a nil slice as null
        elif type(item) is _Object:
            raise MessageError(f"{name}.{number}", "unexpected object")
        merged[number] = item
    return merged


def _describe(value: object) -> str:
    if type(value) is _Object:
        return "an object"
    return repr(value)


def decode(data: bytes, sender: str = "") -> Message:
    """Parse one ``JsonMessage``; raises :class:`MessageError` and nothing else on bad input."""
    try:
        text = bytes(data).decode("utf-8")
    except (UnicodeDecodeError, TypeError, ValueError) as error:
        raise MessageError(DOCUMENT, f"not UTF-8 ({error})") from None
    try:
        document = _parse(text)
    except MessageError:
        raise
    except (ValueError, RecursionError) as error:
        raise MessageError(DOCUMENT, f"not valid JSON ({error})") from None
    if type(document) is not _Object:
        raise MessageError(DOCUMENT, f"expected a JSON object, got {_describe(document)}")
    scalars: dict[str, object] = {}
    maps: dict[str, dict[int, object]] = {}
    for key, value in document:
        name = key if key in _KNOWN_FIELDS else _fold(key)
        attribute = _SCALAR_FIELDS.get(name)
        if attribute is not None:
            if value is None or type(value) is _Object or type(value) is list:
                raise MessageError(name, f"unexpected {_describe(value)}")
            scalars[attribute] = value
        elif name in _MAP_FIELDS:
            maps[name] = _merge_params(name, value, maps.get(name))
        # unknown top-level fields are ignored, as Go does
    if "id" not in scalars:
        raise MessageError("id", "missing")
    # Check in the order Message() does, then build the message without checking it again.
    get = scalars.get
    message: Message = object.__new__(Message)
    _set_id(message, _check_uint32("id", None, scalars["id"]))
    _set_success(message, _check_bool("success", None, get("success", False)))
    _set_from_session(message, _check_uint32("from", None, get("from_session", 0)))
    _set_to_session(message, _check_uint32("to", None, get("to_session", 0)))
    _set_transaction(message, _check_uint32("transaction", None, get("transaction", 0)))
    _set_error(message, _check_str("error", None, get("error", "")))
    for name in _MAP_FIELDS:
        merged = maps.get(name)
        if not merged:
            _MAP_SETTERS[name](message, _EMPTY)
            continue
        check = _MAP_CHECKS[name]
        for number, item in merged.items():
            merged[number] = check(name, number, item)
        _MAP_SETTERS[name](message, _Params(merged, check))
    _set_sender(message, _check_str("sender", None, sender))
    return message
