"""The Nano message model (cell-protocol.md §3) and its strict JSON codec, in plain form.

Every Core↔Cell message is one ``JsonMessage`` object. A Go peer treats a
document that is valid JSON but ill-typed for its struct (``1.0`` or ``-1`` in
a uint map, a non-numeric key, ``"x"`` for a bool) as *incomplete* and wedges
the link (§2.5 point 3), so this codec is exact in both directions: a
:class:`Message` cannot be built with an ill-typed value, and :func:`decode`
rejects what Go's typed decode would reject, always with :class:`MessageError`.

This module is the definition, written to be read top to bottom. The links use
``cluster/_fastcodec.py``, which gives the same bytes, values and errors faster
(a property test holds it to this one).

This module imports nothing of ours but :mod:`nanocore.gojson`, which imports nothing of ours
(see docs/architecture.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from enum import IntEnum
from typing import Any, NoReturn, TypeGuard, TypeVar

from attrs import field, frozen

from nanocore import gojson

__all__ = [
    "DOCUMENT",
    "KIND_EVENT",
    "KIND_REQUEST",
    "KIND_RESPONSE",
    "KNOWN_IDS",
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


#: Every id of the catalogue (an int compares equal to its member).
KNOWN_IDS = frozenset(MessageID)


def message_kind(message_id: int) -> int:
    """The low byte of an id: a request, a response or an event (``KIND_*``)."""
    return message_id & 0xFF


def message_name(message_id: int) -> str:
    """The id's name in the catalogue, or its hex form (for log lines)."""
    try:
        return MessageID(message_id).name
    except ValueError:
        return f"{message_id:#08x}"


def response_id(request_id: int) -> int:
    """The id of the response to ``request_id`` (same operate and resource, kind 1)."""
    if message_kind(request_id) != KIND_REQUEST:
        raise ValueError(f"{request_id:#08x} is not a request id")
    return request_id | KIND_RESPONSE


# --- the wire types (§3.3) -------------------------------------------------------------------
#
# One check per wire type. It is told where the value is (a field, or a map and a key: the place
# is formatted only for an error) and returns the value in its one normal form (a plain int,
# float, str or tuple), or raises MessageError naming that place.

_UINT32 = f"expected an integer in 0..{UINT32_MAX}"
_UINT64 = "expected an integer in 0..2**64-1"


def _at(name: str, key: int | None) -> str:
    return name if key is None else f"{name}.{key}"


def _refused(name: str, key: int | None, expected: str, value: object) -> MessageError:
    return MessageError(_at(name, key), f"{expected}, got {value!r}")


def _is_integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain_int(value: object) -> object:
    """An IntEnum (a MessageID, a ParamKey) as the plain int it stands for; others unchanged."""
    return int(value) if _is_integer(value) else value


def check_uint32(name: str, key: int | None, value: object) -> int:
    if type(value) is not int:
        value = _plain_int(value)
    if type(value) is int and 0 <= value <= UINT32_MAX:
        return value
    raise _refused(name, key, _UINT32, value)


def check_uint64(name: str, key: int | None, value: object) -> int:
    if type(value) is not int:
        value = _plain_int(value)
    if type(value) is int and 0 <= value <= UINT64_MAX:
        return value
    raise _refused(name, key, _UINT64, value)


def check_int64(name: str, key: int | None, value: object) -> int:
    if type(value) is not int:
        value = _plain_int(value)
    if type(value) is int and INT64_MIN <= value <= INT64_MAX:
        return value
    raise _refused(name, key, "expected a signed 64-bit integer", value)


def check_float(name: str, key: int | None, value: object) -> float:
    if isinstance(value, float | int) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
        if math.isfinite(number):
            return number
    raise _refused(name, key, "expected a finite number", value)


def check_bool(name: str, key: int | None, value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise _refused(name, key, "expected true or false", value)


def check_str(name: str, key: int | None, value: object) -> str:
    if isinstance(value, str):
        return str(value)
    raise _refused(name, key, "expected a string", value)


def check_uint_array(name: str, key: int | None, value: object) -> tuple[int, ...]:
    if type(value) is tuple:  # Core's own values: plain ints, kept as they are when in range
        for item in value:
            if type(item) is not int or not 0 <= item <= UINT64_MAX:
                break
        else:
            return value
    if not isinstance(value, list | tuple):
        raise _refused(name, key, "expected an array of unsigned integers", value)
    for index, item in enumerate(value):
        if not ((type(item) is int or _is_integer(item)) and 0 <= item <= UINT64_MAX):
            raise MessageError(f"{_at(name, key)}[{index}]", f"{_UINT64}, got {item!r}")
    return tuple(map(int, value))


def check_str_array(name: str, key: int | None, value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise _refused(name, key, "expected an array of strings", value)
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise MessageError(f"{_at(name, key)}[{index}]", f"expected a string, got {item!r}")
    return tuple(map(str, value))


_V = TypeVar("_V")
Check = Callable[[str, "int | None", object], Any]


class Params(dict[int, _V]):
    """A checked, read-only parameter map; ``checked_by`` is the check every value passed.

    Read-only, so a :class:`Message` stays a value. The tag lets another Message take the map as
    it is (a reply that repeats a request's map, a decoded map) instead of checking it again.
    """

    __slots__ = ("checked_by",)
    checked_by: Check | None

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("message parameters are read-only; build a new Message instead")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _read_only
    __ior__ = _read_only

    def __repr__(self) -> str:
        return repr(dict(self))

    def __copy__(self) -> Params[_V]:
        return self  # immutable, like a tuple

    def __deepcopy__(self, memo: object) -> Params[_V]:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (checked_params, (dict(self), self.checked_by))


def checked_params(items: dict[int, _V], checked_by: Check | None) -> Params[_V]:
    """``items``, which passed ``checked_by``, as read-only Params."""
    params: Params[_V] = Params(items)
    params.checked_by = checked_by
    return params


#: The default of every map: empty, and read-only like any other.
EMPTY_PARAMS: Mapping[int, Any] = checked_params({}, None)


@frozen
class ParamMap:
    """One typed map of ``JsonMessage``: its JSON name (also the attribute's), its value check,
    and the value Go stores for a ``null`` (Cells send those, issue #13)."""

    name: str
    check: Check
    zero: object

    def freeze(self, params: Mapping[int, Any]) -> Mapping[int, Any]:
        """Check every key and value of ``params``; return them as a read-only map."""
        if type(params) is Params and (params.checked_by is self.check or not params):
            return params  # empty, or checked as this very type already
        if not isinstance(params, dict | Mapping):
            raise MessageError(self.name, f"expected a mapping, got {params!r}")
        if not params:
            return EMPTY_PARAMS
        checked: dict[int, Any] = {}
        name, check = self.name, self.check
        for key, value in params.items():
            kind = type(key)
            number = key if kind is int else int(key) if kind is ParamKey else _plain_int(key)
            if type(number) is not int or not 0 <= number <= UINT32_MAX:
                raise MessageError(name, f"parameter key {key!r} is not an integer in 0..2**32-1")
            checked[number] = check(name, number, value)
        return checked_params(checked, check)


BOOL_PARAMS = ParamMap("bool_params", check_bool, False)
STRING_PARAMS = ParamMap("string_params", check_str, "")
UINT_PARAMS = ParamMap("uint_params", check_uint64, 0)
INT_PARAMS = ParamMap("int_params", check_int64, 0)
FLOAT_PARAMS = ParamMap("float_params", check_float, 0.0)
UINT_ARRAY_PARAMS = ParamMap("uint_array_params", check_uint_array, ())
STRING_ARRAY_PARAMS = ParamMap("string_array_params", check_str_array, ())
#: The maps in Go's field order.
PARAM_MAPS = (
    BOOL_PARAMS,
    STRING_PARAMS,
    UINT_PARAMS,
    INT_PARAMS,
    FLOAT_PARAMS,
    UINT_ARRAY_PARAMS,
    STRING_ARRAY_PARAMS,
)


# --- the message -------------------------------------------------------------------------------
#
# One converter per field: attrs runs them in field order, so the first ill-typed field is the
# one reported; named functions, so that mypy types Message() by their arguments.


def _id(value: int) -> int:
    return check_uint32("id", None, value)


def _success(value: bool) -> bool:
    return check_bool("success", None, value)


def _from(value: int) -> int:
    return check_uint32("from", None, value)


def _to(value: int) -> int:
    return check_uint32("to", None, value)


def _transaction(value: int) -> int:
    return check_uint32("transaction", None, value)


def _error(value: str) -> str:
    return check_str("error", None, value)


def _sender(value: str) -> str:
    return check_str("sender", None, value)


def _bools(params: Mapping[int, bool]) -> Mapping[int, bool]:
    return BOOL_PARAMS.freeze(params)


def _strings(params: Mapping[int, str]) -> Mapping[int, str]:
    return STRING_PARAMS.freeze(params)


def _uints(params: Mapping[int, int]) -> Mapping[int, int]:
    return UINT_PARAMS.freeze(params)


def _ints(params: Mapping[int, int]) -> Mapping[int, int]:
    return INT_PARAMS.freeze(params)


def _floats(params: Mapping[int, float]) -> Mapping[int, float]:
    return FLOAT_PARAMS.freeze(params)


def _uint_arrays(params: Mapping[int, Sequence[int]]) -> Mapping[int, tuple[int, ...]]:
    return UINT_ARRAY_PARAMS.freeze(params)


def _string_arrays(params: Mapping[int, Sequence[str]]) -> Mapping[int, tuple[str, ...]]:
    return STRING_ARRAY_PARAMS.freeze(params)


@frozen
class Message:
    """One ``JsonMessage``; every map is a read-only, checked mapping keyed by :class:`ParamKey`.

    Every value is checked on construction (a :class:`MessageError` names the field), so no
    ill-typed message can be sent. ``sender`` is the remote service name filled in by the
    receiving link; it is never serialised and takes no part in equality, so a peer cannot
    claim another name per message. Copy with ``attrs.evolve``.
    """

    id: int = field(converter=_id)
    success: bool = field(default=False, converter=_success)
    from_session: int = field(default=0, converter=_from)
    to_session: int = field(default=0, converter=_to)
    transaction: int = field(default=0, converter=_transaction)
    error: str = field(default="", converter=_error)
    bool_params: Mapping[int, bool] = field(default=EMPTY_PARAMS, converter=_bools)
    string_params: Mapping[int, str] = field(default=EMPTY_PARAMS, converter=_strings)
    uint_params: Mapping[int, int] = field(default=EMPTY_PARAMS, converter=_uints)
    int_params: Mapping[int, int] = field(default=EMPTY_PARAMS, converter=_ints)
    float_params: Mapping[int, float] = field(default=EMPTY_PARAMS, converter=_floats)
    uint_array_params: Mapping[int, tuple[int, ...]] = field(
        default=EMPTY_PARAMS, converter=_uint_arrays
    )
    string_array_params: Mapping[int, tuple[str, ...]] = field(
        default=EMPTY_PARAMS, converter=_string_arrays
    )
    sender: str = field(default="", eq=False, converter=_sender)


# --- the codec ---------------------------------------------------------------------------------

#: The scalar fields in Go's order: JSON name, attribute.
HEADER_FIELDS = (
    ("id", "id"),
    ("success", "success"),
    ("from", "from_session"),
    ("to", "to_session"),
    ("transaction", "transaction"),
    ("error", "error"),
)
_HEADER = dict(HEADER_FIELDS)
_MAPS = {kind.name: kind for kind in PARAM_MAPS}


def encode(message: Message) -> bytes:
    """Compact JSON in Go's field order, empty fields omitted, map keys as decimal strings.

    Go writes map keys sorted as strings (``"10"`` before ``"2"``); so does this, so the output
    is Go's byte for byte, but for non-ASCII text, which is escaped (§3.3 allows it).
    """
    document: dict[str, object] = {"id": message.id}
    for name, attribute in HEADER_FIELDS[1:]:
        value = getattr(message, attribute)
        if value:
            document[name] = value
    for kind in PARAM_MAPS:
        params = getattr(message, kind.name)
        if params:
            document[kind.name] = {str(key): params[key] for key in sorted(params, key=str)}
    return gojson.dumps_ascii(document)


def decode(data: bytes, sender: str = "") -> Message:
    """Parse one ``JsonMessage``; raises :class:`MessageError` and nothing else on bad input.

    As Go's decoder: field names match case-insensitively, unknown fields are ignored, a field
    given twice takes its last value (a map merges both), ``null`` empties a map and stands for
    the zero value inside one. Stricter than Go: ``id`` is required, and a ``null`` scalar and
    invalid UTF-8 are refused (docs/compatibility.md).
    """
    try:
        document = gojson.loads(data, pairs=True)  # objects as tuples of (key, value) pairs
    except gojson.JSONError as error:
        raise MessageError(DOCUMENT, f"not valid JSON ({error})") from None
    if type(document) is not tuple:
        raise MessageError(DOCUMENT, f"expected a JSON object, got {_describe(document)}")
    header: dict[str, Any] = {}
    maps: dict[str, Any] = {}
    for key, value in document:
        name = _fold(key)
        if name in _HEADER:
            if value is None or type(value) in (tuple, list):
                raise MessageError(name, f"unexpected {_describe(value)}")
            header[_HEADER[name]] = value
        elif name in _MAPS:
            maps[name] = _read_map(_MAPS[name], value, maps.get(name))
        # any other field is ignored, as Go does
    if "id" not in header:
        raise MessageError("id", "missing")
    return Message(**header, **maps, sender=sender)


def _fold(name: str) -> str:
    """A field name as Go matches it: Unicode simple folding (long s, Kelvin sign)."""
    return name.lower().replace("\u017f", "s")


def _read_map(kind: ParamMap, value: object, into: dict[int, Any] | None) -> dict[int, Any]:
    """The entries of one JSON map, added to what the same field gave before (as Go does).

    Only the keys are read here; the values are checked when the Message is built.
    """
    if value is None:  # Go: null sets the map to nil, i.e. empty
        return {}
    if type(value) is not tuple:
        raise MessageError(kind.name, f"expected an object, got {_describe(value)}")
    merged = {} if into is None else into
    for key, item in value:
        number = _param_key(kind.name, key)
        if item is None:
            item = kind.zero
        elif type(item) is tuple:
            raise MessageError(f"{kind.name}.{number}", "unexpected object")
        merged[number] = item
    return merged


def _param_key(name: str, key: str) -> int:
    """A map key as Go parses it (``strconv.ParseUint(key, 10, 64)``), fitting the uint32 key.

    ASCII digits only: no sign, spaces or underscores; leading zeros are fine.
    """
    if not (key.isascii() and key.isdigit()):
        raise MessageError(name, f"parameter key {key!r} is not a decimal number")
    significant = key.lstrip("0") or "0"  # and so within int()'s digit limit below
    if len(significant) > 10 or int(significant) > UINT32_MAX:
        raise MessageError(name, f"parameter key {key!r} does not fit 32 bits")
    return int(significant)


def _describe(value: object) -> str:
    return "an object" if type(value) is tuple else repr(value)
