"""The message model and its codec: exact §3.3 typing in both directions."""

from __future__ import annotations

import contextlib
import copy
import json
import pickle
from collections.abc import Mapping
from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nanocore import gojson
from nanocore.cluster.message import (
    DOCUMENT,
    KIND_EVENT,
    KIND_REQUEST,
    KIND_RESPONSE,
    Message,
    MessageError,
    MessageID,
    ParamKey,
    decode,
    encode,
    message_kind,
    response_id,
)

# (name, decimal id) exactly as cell-protocol.md §2 and §5 print them.
SPEC_IDS = [
    ("ConnectionOpenedEvent", 196866),
    ("ConnectionKeepAliveEvent", 131330),
    ("ConnectionClosedEvent", 262402),
    ("ServiceConnectedEvent", 720898),
    ("ComputeCellAvailableEvent", 770),
    ("ServiceDisconnectedEvent", 786434),
    ("ComputeCellDisconnectedEvent", 787202),
    ("ComputePoolReadyEvent", 66050),
    ("ComputeCellReadyEvent", 66306),
    ("ComputeCellRemovedEvent", 1180418),
    ("GetComputePoolCellRequest", 656128),
    ("CellStatusReportEvent", 328450),
    ("CreateGuestRequest", 1280),
    ("CreateGuestResponse", 0x000501),
    ("GuestCreatedEvent", 394498),
    ("DeleteGuestRequest", 66816),
    ("GuestDeletedEvent", 0x070502),
    ("StartInstanceRequest", 787968),
    ("GuestStartedEvent", 0x080502),
    ("StopInstanceRequest", 853504),
    ("GuestStoppedEvent", 0x090502),
    ("GetInstanceStatusRequest", 919040),
    ("ModifyGuestNameRequest", 136960),
    ("ModifyCoreRequest", 134144),
    ("ModifyMemoryRequest", 134400),
    ("ModifyPriorityRequest", 137216),
    ("ModifyDiskThresholdRequest", 137472),
    ("ModifyNetworkThresholdRequest", 137728),
    ("ModifyAutoStartRequest", 139776),
    ("ModifyAuthRequest", 134912),
    ("GetAuthRequest", 659200),
    ("ResetSecretRequest", 1712128),
    ("ResizeDiskRequest", 986624),
    ("ResizeDiskResponse", 0x0F0E01),
    ("ShrinkDiskRequest", 1052160),
    ("ResetSystemRequest", 1709568),
    ("SystemResetEvent", 0x171602),
    ("InsertMediaRequest", 1118464),
    ("EjectMediaRequest", 1184000),
    ("MediaAttachedEvent", 0x0E1102),
    ("MediaDetachedEvent", 0x0F1102),
    ("QuerySnapshotRequest", 200704),
    ("GetSnapshotRequest", 659456),
    ("CreateSnapshotRequest", 4096),
    ("DeleteSnapshotRequest", 69632),
    ("RestoreSnapshotRequest", 1380352),
    ("SnapshotResumedEvent", 0x101002),
    ("AttachInstanceRequest", 0x110600),
    ("DetachInstanceRequest", 0x120600),
    ("MigrateInstanceRequest", 0x180600),
    ("InstanceMigratedEvent", 0x130602),
    ("InstancePurgedEvent", 0x140602),
    ("QueryCellStorageRequest", 203520),
    ("ModifyCellStorageRequest", 137984),
    ("GetGuestRuleRequest", 663808),
    ("AddGuestRuleRequest", 270592),
    ("ModifyGuestRuleRequest", 139520),
    ("RemoveGuestRuleRequest", 336128),
    ("ChangeGuestRuleOrderRequest", 2236672),
    ("ChangeGuestRuleDefaultActionRequest", 2302208),
    ("AddressChangedEvent", 854786),
    ("AddressPoolChangedEvent", 857090),
    ("CreateDiskImageRequest", 2304),
    ("DiskImageUpdatedEvent", 0x0A0902),
]

# The §5.13 tally of what travels on a Core↔Cell link.
CORE_TO_CELL_REQUESTS = {
    "GetComputePoolCell", "CreateGuest", "DeleteGuest", "StartInstance", "StopInstance",
    "GetInstanceStatus", "ModifyGuestName", "ModifyCore", "ModifyMemory", "ModifyPriority",
    "ModifyDiskThreshold", "ModifyNetworkThreshold", "ModifyAutoStart", "ModifyAuth", "GetAuth",
    "ResetSecret", "ResizeDisk", "ShrinkDisk", "ResetSystem", "InsertMedia", "EjectMedia",
    "QuerySnapshot", "GetSnapshot", "CreateSnapshot", "DeleteSnapshot", "RestoreSnapshot",
    "AttachInstance", "DetachInstance", "MigrateInstance", "QueryCellStorage",
    "ModifyCellStorage", "GetGuestRule", "AddGuestRule", "ModifyGuestRule", "RemoveGuestRule",
    "ChangeGuestRuleOrder", "ChangeGuestRuleDefaultAction", "CreateDiskImage",
}  # fmt: skip

PARAM_KEY_NAMES = [
    "Name", "Type", "Core", "Memory", "Disk", "Usage", "IO", "Speed", "Description", "Error",
    "Status", "Pool", "Cell", "Instance", "Enable", "Flag", "Option", "ID", "User", "Group",
    "Network", "Address", "Port", "Priority", "Limit", "Storage", "Source", "Target", "Mode",
    "Host", "Path", "Monitor", "Progress", "Count", "Size", "Available", "Media", "Tag", "Image",
    "Guest", "Secret", "Immediate", "System", "Version", "Admin", "Module", "Previous", "Next",
    "Current", "Create", "Modify", "Attach", "Migration", "Start", "End", "Mask", "Allocate",
    "Gateway", "Server", "Assign", "Internal", "External", "Day", "Hour", "Minute", "Second",
    "Hardware", "Data", "Display", "Device", "Protocol", "Interface", "Action", "Template",
    "From", "To", "Index", "Security", "Policy",
]  # fmt: skip


class VocabularyTests(SynchronousTestCase):
    def test_ids_match_the_spec(self) -> None:
        for name, value in SPEC_IDS:
            self.assertEqual(MessageID[name], value, name)

    def test_ids_are_unique(self) -> None:
        self.assertEqual(len({member.value for member in MessageID}), len(MessageID))

    def test_name_suffix_matches_kind_byte(self) -> None:
        kinds = {"Request": KIND_REQUEST, "Response": KIND_RESPONSE, "Event": KIND_EVENT}
        for member in MessageID:
            suffix = next(s for s in kinds if member.name.endswith(s))
            self.assertEqual(message_kind(member), kinds[suffix], member.name)

    def test_every_core_to_cell_request_has_its_response(self) -> None:
        for stem in CORE_TO_CELL_REQUESTS:
            request = MessageID[stem + "Request"]
            if stem == "MigrateInstance":  # one-way, §5.7
                self.assertNotIn(response_id(request), set(MessageID))
                continue
            self.assertEqual(MessageID(response_id(request)).name, stem + "Response")
        self.assertEqual(len(CORE_TO_CELL_REQUESTS), 38)

    def test_response_id_refuses_non_requests(self) -> None:
        self.assertRaises(ValueError, response_id, MessageID.CreateGuestResponse)
        self.assertRaises(ValueError, response_id, MessageID.CellStatusReportEvent)

    def test_param_keys_are_complete(self) -> None:
        self.assertEqual([key.name for key in ParamKey], PARAM_KEY_NAMES)
        self.assertEqual([key.value for key in ParamKey], list(range(79)))


# --- strategies ----------------------------------------------------------------------------

keys = st.integers(min_value=0, max_value=2**32 - 1)
uint32s = st.integers(min_value=0, max_value=2**32 - 1)
uints = st.integers(min_value=0, max_value=2**64 - 1)
ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
floats = st.floats(allow_nan=False, allow_infinity=False)
texts = st.text()

MAP_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "bool_params": st.dictionaries(keys, st.booleans(), max_size=5),
    "string_params": st.dictionaries(keys, texts, max_size=5),
    "uint_params": st.dictionaries(keys, uints, max_size=5),
    "int_params": st.dictionaries(keys, ints, max_size=5),
    "float_params": st.dictionaries(keys, floats, max_size=5),
    "uint_array_params": st.dictionaries(keys, st.lists(uints, max_size=5), max_size=5),
    "string_array_params": st.dictionaries(keys, st.lists(texts, max_size=5), max_size=5),
}

messages = st.builds(
    Message,
    id=uint32s,
    success=st.booleans(),
    from_session=uint32s,
    to_session=uint32s,
    transaction=uint32s,
    error=texts,
    **MAP_STRATEGIES,
)


def _document(data: bytes) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(data)
    return loaded


class RoundTripTests(SynchronousTestCase):
    @given(messages)
    def test_any_message_round_trips(self, message: Message) -> None:
        self.assertEqual(decode(encode(message)), message)

    @given(messages)
    def test_encoding_is_the_standard_compact_json(self, message: Message) -> None:
        """The prebuilt encoder writes what json.dumps would, key for key."""
        data = encode(message)
        document = _document(data)
        self.assertEqual(
            data, json.dumps(document, separators=(",", ":"), allow_nan=False).encode("ascii")
        )

    def _round_trip_map(self, name: str, params: Mapping[int, Any]) -> None:
        fields: dict[str, Any] = {name: params}
        message = Message(id=MessageID.CreateGuestRequest, **fields)
        decoded = decode(encode(message))
        self.assertEqual(decoded, message)
        self.assertEqual(
            dict(getattr(decoded, name)),
            {
                key: tuple(value) if isinstance(value, list) else value
                for key, value in params.items()
            },
        )

    @given(MAP_STRATEGIES["bool_params"])
    def test_bool_params(self, params: dict[int, bool]) -> None:
        self._round_trip_map("bool_params", params)

    @given(MAP_STRATEGIES["string_params"])
    def test_string_params(self, params: dict[int, str]) -> None:
        self._round_trip_map("string_params", params)

    @given(MAP_STRATEGIES["uint_params"])
    def test_uint_params(self, params: dict[int, int]) -> None:
        self._round_trip_map("uint_params", params)

    @given(MAP_STRATEGIES["int_params"])
    def test_int_params(self, params: dict[int, int]) -> None:
        self._round_trip_map("int_params", params)

    @given(MAP_STRATEGIES["float_params"])
    def test_float_params(self, params: dict[int, float]) -> None:
        self._round_trip_map("float_params", params)

    @given(MAP_STRATEGIES["uint_array_params"])
    def test_uint_array_params(self, params: dict[int, list[int]]) -> None:
        self._round_trip_map("uint_array_params", params)

    @given(
        st.lists(
            st.one_of(
                st.integers(-3, 3), st.integers(2**64 - 3, 2**64 + 3), st.integers(0, 2**64 - 1),
                st.booleans(), st.sampled_from(ParamKey),
            )
        )
    )  # fmt: skip
    def test_a_tuple_is_checked_as_its_list(self, items: list[Any]) -> None:
        """Core's own tuples take a quicker path: same value, same refusal."""

        def outcome(value: Any) -> Any:
            try:
                checked = Message(id=1, uint_array_params={1: value}).uint_array_params[1]
            except MessageError as error:
                return str(error)
            return checked, [type(item) for item in checked]

        self.assertEqual(outcome(tuple(items)), outcome(items))

    @given(MAP_STRATEGIES["string_array_params"])
    def test_string_array_params(self, params: dict[int, list[str]]) -> None:
        self._round_trip_map("string_array_params", params)

    @given(st.binary(max_size=200))
    def test_arbitrary_bytes_raise_only_message_error(self, data: bytes) -> None:
        with contextlib.suppress(MessageError):
            decode(data)

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=6), children, max_size=4)
        ),
        max_leaves=12,
    )
    field_names = st.sampled_from(
        ["id", "ID", "success", "from", "to", "transaction", "error", "x", *MAP_STRATEGIES]
    )

    @given(
        st.dictionaries(
            field_names,
            json_values
            | st.dictionaries(st.sampled_from(["0", "1", "a", "-1", "99999999999"]), json_values),
            max_size=6,
        )
    )
    def test_arbitrary_json_objects_raise_only_message_error(
        self, document: dict[str, Any]
    ) -> None:
        try:
            message = decode(json.dumps(document).encode())
        except MessageError:
            return
        self.assertEqual(decode(encode(message)), message)


class EncodeTests(SynchronousTestCase):
    def test_compact_and_ordered_like_go(self) -> None:
        message = Message(
            id=MessageID.CellStatusReportEvent,
            uint_params={ParamKey.Core: 8},
            float_params={ParamKey.Usage: 3.5},
            uint_array_params={
                ParamKey.Memory: (6000000000, 16000000000),
                ParamKey.Disk: [100, 200],
                ParamKey.IO: [0, 0, 0, 0],
                ParamKey.Speed: [0, 0, 0, 0],
            },
        )
        self.assertEqual(
            encode(message),
            b'{"id":328450,"uint_params":{"2":8},"float_params":{"5":3.5},'
            b'"uint_array_params":{"3":[6000000000,16000000000],"4":[100,200],'
            b'"6":[0,0,0,0],"7":[0,0,0,0]}}',
        )

    def test_empty_fields_are_omitted(self) -> None:
        self.assertEqual(encode(Message(id=MessageID.ConnectionKeepAliveEvent)), b'{"id":131330}')

    def test_all_scalars_in_go_order(self) -> None:
        message = Message(
            id=1, success=True, from_session=2, to_session=3, transaction=4, error="e"
        )
        self.assertEqual(
            encode(message),
            b'{"id":1,"success":true,"from":2,"to":3,"transaction":4,"error":"e"}',
        )

    def test_map_keys_are_sorted_as_strings_like_go(self) -> None:
        message = Message(id=1, string_params={10: "b", 2: "a", 1: "c"})
        self.assertEqual(encode(message), b'{"id":1,"string_params":{"1":"c","10":"b","2":"a"}}')

    def test_keys_past_the_common_range_encode_and_decode_alike(self) -> None:
        message = Message(id=1, uint_params={256: 1, 255: 2, 3: 3, 70000: 4})
        data = encode(message)
        self.assertEqual(data, b'{"id":1,"uint_params":{"255":2,"256":1,"3":3,"70000":4}}')
        self.assertEqual(decode(data), message)

    def test_strings_are_ascii_escaped(self) -> None:
        message = Message(id=1, string_params={0: "Café <b>"})
        self.assertEqual(_document(encode(message))["string_params"]["0"], "Café <b>")
        encode(message).decode("ascii")

    def test_large_floats_use_an_exponent(self) -> None:
        self.assertIn(b"1e+21", encode(Message(id=1, float_params={0: 1e21})))


class ConstructionTests(SynchronousTestCase):
    """A Message cannot hold a value that would wedge a Go peer."""

    def assertRefused(self, field: str, **fields: Any) -> None:
        error = self.assertRaises(MessageError, Message, **{"id": 1, **fields})
        self.assertEqual(error.field, field)

    def test_refuses_ill_typed_values(self) -> None:
        self.assertRefused("id", id=-1)
        self.assertRefused("id", id=2**32)
        self.assertRefused("id", id=True)
        self.assertRefused("from", from_session=1.0)
        self.assertRefused("from", from_session=False)
        self.assertRefused("sender", sender=None)
        self.assertRefused("to", to_session=-5)
        self.assertRefused("transaction", transaction=2**32)
        self.assertRefused("success", success=1)
        self.assertRefused("error", error=None)
        self.assertRefused("uint_params.3", uint_params={3: -1})
        self.assertRefused("uint_params.3", uint_params={3: 2**64})
        self.assertRefused("uint_params.3", uint_params={3: False})
        self.assertRefused("int_params.1", int_params={1: 2**63})
        self.assertRefused("float_params.1", float_params={1: float("nan")})
        self.assertRefused("float_params.1", float_params={1: float("inf")})
        self.assertRefused("bool_params.1", bool_params={1: 0})
        self.assertRefused("string_params.1", string_params={1: b"x"})
        self.assertRefused("uint_array_params.1", uint_array_params={1: "abc"})
        self.assertRefused("uint_array_params.1[1]", uint_array_params={1: [1, -1]})
        self.assertRefused("string_array_params.1[0]", string_array_params={1: [1]})
        self.assertRefused("string_params", string_params={-1: "x"})
        self.assertRefused("string_params", string_params={"1": "x"})
        self.assertRefused("string_params", string_params=[(1, "x")])

    def test_maps_are_frozen_copies(self) -> None:
        source = {1: [1, 2]}
        message = Message(id=1, uint_array_params=source)
        source[1].append(3)
        source[2] = [4]
        self.assertEqual(dict(message.uint_array_params), {1: (1, 2)})

        def mutate() -> None:
            message.uint_array_params[3] = (5,)  # type: ignore[index]

        self.assertRaises(TypeError, mutate)
        params: Any = message.uint_array_params
        for method, arguments in (
            ("update", ({3: (5,)},)),
            ("clear", ()),
            ("pop", (1,)),
            ("popitem", ()),
            ("setdefault", (3, (5,))),
            ("__delitem__", (1,)),
            ("__ior__", ({3: (5,)},)),
        ):
            self.assertRaises(TypeError, getattr(params, method), *arguments)
        self.assertEqual(dict(message.uint_array_params), {1: (1, 2)})

    def test_a_message_reuses_checked_maps(self) -> None:
        message = Message(id=1, string_params={1: "x"})
        again = Message(id=2, string_params=message.string_params)
        self.assertIs(again.string_params, message.string_params)
        self.assertEqual(repr(message.string_params), "{1: 'x'}")

    def test_a_checked_map_of_another_type_is_checked_again(self) -> None:
        message = Message(id=1, string_params={1: "x"}, uint_params={1: 1})
        error = self.assertRaises(MessageError, Message, id=2, uint_params=message.string_params)
        self.assertEqual(error.field, "uint_params.1")
        self.assertEqual(Message(id=3, int_params=message.uint_params).int_params, {1: 1})

    def test_copy_and_pickle(self) -> None:
        message = Message(id=1, uint_array_params={1: [1, 2]}, string_params={2: "x"})
        self.assertEqual(copy.deepcopy(message), message)
        self.assertEqual(copy.copy(message), message)
        restored = pickle.loads(pickle.dumps(message))
        self.assertEqual(restored, message)
        self.assertRaises(TypeError, restored.string_params.clear)

    def test_sender_is_local_metadata(self) -> None:
        message = Message(id=1, sender="Cell_a")
        self.assertEqual(message, Message(id=1, sender="Cell_b"))
        self.assertNotIn(b"Cell_a", encode(message))
        self.assertEqual(decode(encode(message), sender="Cell_c").sender, "Cell_c")

    def test_int_enums_become_plain_ints(self) -> None:
        message = Message(id=MessageID.GetAuthRequest, uint_params={ParamKey.Port: ParamKey.Path})
        self.assertIs(type(message.id), int)
        self.assertIs(type(next(iter(message.uint_params))), int)
        self.assertIs(type(message.uint_params[ParamKey.Port]), int)

    def test_evolve_keeps_the_checks(self) -> None:
        message = Message(id=1)
        self.assertRaises(MessageError, attrs.evolve, message, to_session=-1)

    def test_evolve_changes_only_what_it_is_told(self) -> None:
        message = Message(
            id=MessageID.GetAuthRequest,
            transaction=3,
            string_params={ParamKey.Guest: "g"},
            uint_array_params={ParamKey.Disk: (1, 2)},
        )
        stamped = attrs.evolve(message, from_session=7, to_session=9, sender="Cell_a")
        self.assertEqual((stamped.from_session, stamped.to_session), (7, 9))
        self.assertEqual(stamped.sender, "Cell_a")
        self.assertEqual((message.from_session, message.to_session, message.sender), (0, 0, ""))
        self.assertIs(stamped.string_params, message.string_params)  # checked once: shared
        self.assertEqual(attrs.evolve(message), message)

    def test_array_values_are_kept_as_immutable_tuples(self) -> None:
        items = [1, 2]
        message = Message(id=1, uint_array_params={1: items}, string_array_params={2: ["a"]})
        items.append(3)
        self.assertEqual(message.uint_array_params[1], (1, 2))
        self.assertEqual(message.string_array_params[2], ("a",))
        self.assertEqual(type(decode(encode(message)).uint_array_params[1]), tuple)


class DecodeTests(SynchronousTestCase):
    """Every case of cell-protocol.md §3.3."""

    def assertMalformed(self, data: bytes, field: str) -> MessageError:
        error = self.assertRaises(MessageError, decode, data)
        self.assertEqual(error.field, field)
        self.assertIn(field, str(error))
        return error

    # uints: non-negative integers, no fraction or exponent, 32 bits for the header fields

    def test_uint_with_fraction_or_exponent(self) -> None:
        self.assertMalformed(b'{"id":1,"uint_params":{"2":1.0}}', "uint_params.2")
        self.assertMalformed(b'{"id":1,"uint_params":{"2":1e3}}', "uint_params.2")
        self.assertMalformed(b'{"id":1.0}', "id")
        self.assertMalformed(
            b'{"id":1,"uint_array_params":{"4":[1,2.5]}}', "uint_array_params.4[1]"
        )

    def test_negative_uint(self) -> None:
        self.assertMalformed(b'{"id":1,"uint_params":{"2":-1}}', "uint_params.2")
        self.assertMalformed(b'{"id":1,"from":-1}', "from")

    def test_uint64_range(self) -> None:
        top = b'{"id":1,"uint_params":{"2":18446744073709551615}}'
        self.assertEqual(decode(top).uint_params[2], 2**64 - 1)
        self.assertMalformed(b'{"id":1,"uint_params":{"2":18446744073709551616}}', "uint_params.2")
        self.assertMalformed(
            b'{"id":1,"uint_array_params":{"2":[18446744073709551616]}}', "uint_array_params.2[0]"
        )

    def test_header_fields_fit_32_bits(self) -> None:
        for name in ("id", "from", "to", "transaction"):
            document = {"id": 1, name: 2**32}
            self.assertMalformed(json.dumps(document).encode(), name)
            document[name] = 2**32 - 1
            self.assertEqual(encode(decode(json.dumps(document).encode())).count(b"4294967295"), 1)

    def test_bool_where_number_expected_and_back(self) -> None:
        self.assertMalformed(b'{"id":true}', "id")
        self.assertMalformed(b'{"id":1,"uint_params":{"2":true}}', "uint_params.2")
        self.assertMalformed(b'{"id":1,"bool_params":{"2":1}}', "bool_params.2")
        self.assertMalformed(b'{"id":1,"bool_params":{"2":"x"}}', "bool_params.2")
        self.assertMalformed(b'{"id":1,"success":"true"}', "success")

    def test_signed_ints(self) -> None:
        decoded = decode(b'{"id":1,"int_params":{"76":-1,"28":9223372036854775807}}')
        self.assertEqual(dict(decoded.int_params), {76: -1, 28: 2**63 - 1})
        self.assertMalformed(b'{"id":1,"int_params":{"76":-1.5}}', "int_params.76")
        self.assertMalformed(b'{"id":1,"int_params":{"76":9223372036854775808}}', "int_params.76")

    def test_floats(self) -> None:
        decoded = decode(b'{"id":1,"float_params":{"5":3,"6":1e+21,"7":-0.5}}')
        self.assertEqual(dict(decoded.float_params), {5: 3.0, 6: 1e21, 7: -0.5})
        self.assertIs(type(decoded.float_params[5]), float)
        self.assertMalformed(b'{"id":1,"float_params":{"5":"3"}}', "float_params.5")
        self.assertMalformed(b'{"id":1,"float_params":{"5":1e999}}', "float_params.5")
        for constant in (b"NaN", b"Infinity", b"-Infinity"):
            self.assertMalformed(b'{"id":1,"float_params":{"5":' + constant + b"}}", DOCUMENT)

    def test_strings(self) -> None:
        decoded = decode(b'{"id":1,"string_params":{"0":"\\u003cb\\u003e \xc3\xa9"}}')
        self.assertEqual(decoded.string_params[0], "<b> é")
        self.assertMalformed(b'{"id":1,"string_params":{"0":5}}', "string_params.0")
        self.assertMalformed(
            b'{"id":1,"string_array_params":{"0":["a",5]}}', "string_array_params.0[1]"
        )
        self.assertMalformed(b'{"id":1,"error":5}', "error")

    # keys: decimal strings that fit the uint32 ParamKey

    def test_non_decimal_keys(self) -> None:
        for key in ("a", "", " 1", "1 ", "+1", "-1", "1.0", "0x1", "1_0", "\u0661"):
            document = json.dumps({"id": 1, "uint_params": {key: 1}}).encode()
            error = self.assertMalformed(document, "uint_params")
            self.assertIn(repr(key), error.reason)

    def test_key_range(self) -> None:
        self.assertEqual(
            dict(decode(b'{"id":1,"uint_params":{"007":1,"4294967295":2}}').uint_params),
            {7: 1, 2**32 - 1: 2},
        )
        self.assertMalformed(b'{"id":1,"uint_params":{"4294967296":1}}', "uint_params")
        self.assertMalformed(b'{"id":1,"uint_params":{"' + b"9" * 5000 + b'":1}}', "uint_params")
        zeros = b'{"id":1,"uint_params":{"' + b"0" * 5000 + b'1":1}}'
        self.assertEqual(dict(decode(zeros).uint_params), {1: 1})

    def test_same_key_in_several_maps_is_independent(self) -> None:
        decoded = decode(
            b'{"id":1280,"string_params":{"73":"tpl"},"uint_array_params":{"73":[0,1,2]}}'
        )
        self.assertEqual(decoded.string_params[ParamKey.Template], "tpl")
        self.assertEqual(decoded.uint_array_params[ParamKey.Template], (0, 1, 2))

    # null, unknown fields, case-insensitive names, omitted fields

    def test_null_maps_and_arrays_are_empty(self) -> None:
        decoded = decode(
            b'{"id":1,"uint_params":null,"bool_params":null,'
            b'"uint_array_params":{"3":null},"string_array_params":{"8":null}}'
        )
        self.assertEqual(
            decoded, Message(id=1, uint_array_params={3: ()}, string_array_params={8: ()})
        )

    def test_null_values_in_maps_are_zero_values(self) -> None:
        """As Go stores them (stock Cells send these, issue #13); later keys still count."""
        decoded = decode(
            b'{"id":1,"bool_params":{"1":null},"string_params":{"1":null},'
            b'"uint_params":{"1":null,"2":5},"int_params":{"1":null},"float_params":{"1":null},'
            b'"uint_array_params":{"1":null},"string_array_params":{"1":null}}'
        )
        self.assertEqual(
            decoded,
            Message(
                id=1,
                bool_params={1: False},
                string_params={1: ""},
                uint_params={1: 0, 2: 5},
                int_params={1: 0},
                float_params={1: 0.0},
                uint_array_params={1: ()},
                string_array_params={1: ()},
            ),
        )
        self.assertIs(type(decoded.float_params[1]), float)
        repeated = decode(b'{"id":1,"uint_params":{"1":7,"1":null}}')
        self.assertEqual(dict(repeated.uint_params), {1: 0})

    def test_explicit_zero_values_are_kept_both_ways(self) -> None:
        """The handshake carries ``"uint_params":{"1":0}``: a zero inside a map is not omitted."""
        data = b'{"id":196866,"string_params":{"0":"Cell_a"},"uint_params":{"1":0}}'
        decoded = decode(data)
        self.assertEqual(dict(decoded.uint_params), {ParamKey.Type: 0})
        self.assertEqual(encode(decoded), data)

    def test_arrays_left_out_are_absent_keys(self) -> None:
        """A Cell leaves its arrays out when a count is 0; the map then lacks those keys."""
        decoded = decode(b'{"id":66306,"uint_params":{"33":0}}')
        self.assertEqual(decoded.string_array_params.get(ParamKey.Instance, ()), ())
        self.assertEqual(decoded.uint_array_params, {})

    def test_null_scalars_and_items_are_refused(self) -> None:
        """Stricter than Go, on purpose: no stock peer writes these (docs/compatibility.md)."""
        self.assertMalformed(b'{"id":null}', "id")
        self.assertMalformed(b'{"id":1,"error":null}', "error")
        self.assertMalformed(
            b'{"id":1,"uint_array_params":{"1":[null]}}', "uint_array_params.1[0]"
        )

    def test_unknown_top_level_fields_are_ignored(self) -> None:
        decoded = decode(b'{"id":7,"sender":"spoof","extra":{"deep":[1,{"x":null}]},"Sender":1}')
        self.assertEqual(decoded, Message(id=7))
        self.assertEqual(decoded.sender, "")

    def test_field_names_are_case_insensitive(self) -> None:
        decoded = decode(
            b'{"ID":5,"Success":true,"FROM":2,"tO":3,"Transaction":4,"ERROR":"x",'
            b'"UINT_PARAMS":{"1":1},"String_Params":{"0":"n"}}'
        )
        self.assertEqual(
            decoded,
            Message(
                id=5,
                success=True,
                from_session=2,
                to_session=3,
                transaction=4,
                error="x",
                uint_params={1: 1},
                string_params={0: "n"},
            ),
        )

    def test_field_names_fold_like_go(self) -> None:
        # Go's EqualFold treats U+017F (long s) as "s" and U+212A (Kelvin sign) as "k".
        decoded = decode('{"id":1,"\u017fuccess":true}'.encode())
        self.assertTrue(decoded.success)

    def test_repeated_fields_follow_go(self) -> None:
        decoded = decode(
            b'{"id":1,"id":2,"uint_params":{"1":1},"Uint_Params":{"2":2,"1":3},"error":"a","Error":"b"}'
        )
        self.assertEqual(decoded, Message(id=2, uint_params={1: 3, 2: 2}, error="b"))
        reset = decode(b'{"id":1,"uint_params":{"1":1},"uint_params":null}')
        self.assertEqual(reset.uint_params, {})

    def test_missing_id(self) -> None:
        self.assertMalformed(b"{}", "id")
        self.assertMalformed(b'{"success":true}', "id")

    def test_absent_fields_take_their_zero_values(self) -> None:
        self.assertEqual(decode(b'{"id":3}'), Message(id=3))

    # whole-document problems

    def test_not_an_object(self) -> None:
        for data in (b"[]", b"1", b'"x"', b"null", b"true"):
            self.assertMalformed(data, DOCUMENT)

    def test_not_json(self) -> None:
        for data in (b"", b"{", b'{"id":1}{"id":2}', b"{'id':1}", b'{"id":1,}', b"\xef\xbb\xbf{}"):
            self.assertMalformed(data, DOCUMENT)

    def test_not_utf8(self) -> None:
        self.assertMalformed(b'{"id":1,"error":"\xff"}', DOCUMENT)

    def test_deep_nesting(self) -> None:
        """Refused with a clear reason, whether or not Python's parser could go that deep."""
        for depth in (gojson.MAX_DEPTH, 1_000, 100_000):
            error = self.assertMalformed(
                b'{"id":1,"x":' + b"[" * depth + b"]" * depth + b"}", DOCUMENT
            )
            self.assertIn(f"nested deeper than {gojson.MAX_DEPTH} levels", error.reason)
        depth = gojson.MAX_DEPTH - 1
        unknown = b'{"id":1,"x":' + b"[" * depth + b"]" * depth + b"}"
        self.assertEqual(decode(unknown), Message(id=1))

    def test_wrong_shapes(self) -> None:
        self.assertMalformed(b'{"id":[1]}', "id")
        self.assertMalformed(b'{"id":{}}', "id")
        self.assertMalformed(b'{"id":1,"uint_params":[1]}', "uint_params")
        self.assertMalformed(b'{"id":1,"uint_params":5}', "uint_params")
        self.assertMalformed(b'{"id":1,"uint_array_params":{"1":5}}', "uint_array_params.1")
        self.assertMalformed(b'{"id":1,"uint_array_params":{"1":{}}}', "uint_array_params.1")
        self.assertMalformed(b'{"id":1,"string_array_params":{"1":"ab"}}', "string_array_params.1")
        self.assertMalformed(b'{"id":1,"uint_params":{"1":{}}}', "uint_params.1")
        self.assertMalformed(b'{"id":1,"uint_params":{"1":[1]}}', "uint_params.1")

    def test_error_is_a_value_error_naming_field_and_reason(self) -> None:
        error = self.assertMalformed(b'{"id":1,"uint_params":{"2":-1}}', "uint_params.2")
        self.assertIsInstance(error, ValueError)
        self.assertIn("-1", error.reason)
        self.assertEqual(str(error), f"uint_params.2: {error.reason}")
