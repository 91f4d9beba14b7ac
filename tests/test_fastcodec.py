"""The links' fast codec gives the bytes, values and errors of the plain one, for any input."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from hypothesis import example, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nanocore.cluster import _fastcodec as fast
from nanocore.cluster import message as plain
from nanocore.cluster.message import Message, MessageError, MessageID, ParamKey

from .test_message import messages

Outcome = tuple[Any, ...]


def _typed(value: object) -> object:
    """``value`` with the type of every part: ``3 == 3.0`` must not hide a difference."""
    if isinstance(value, Mapping):
        checked_by = getattr(value, "checked_by", "not Params")
        items = sorted((key, type(key), _typed(item)) for key, item in value.items())
        return (type(value), checked_by, items)
    if isinstance(value, tuple):
        return (tuple, [_typed(item) for item in value])
    return (type(value), value)


def typed(message: Message) -> list[object]:
    return [_typed(getattr(message, field.name)) for field in attrs.fields(Message)]


def outcome(decode: Callable[[bytes, str], Message], data: bytes, sender: Any = "") -> Outcome:
    try:
        return ("decoded", typed(decode(data, sender)))
    except MessageError as error:
        return ("refused", error.field, error.reason)


class Raw(str):
    """JSON text written as it is: numbers Python would not print, ``NaN``, broken tokens."""


def to_json(value: object) -> str:
    """Serialise, keeping the order and repetitions of pair lists (objects)."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Pairs):
        return "{" + ",".join(f"{json.dumps(k)}:{to_json(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(item) for item in value) + "]"
    return json.dumps(value)


class Pairs(list[tuple[str, object]]):
    """A JSON object as its pairs, so that a key may repeat."""


UINT32 = st.integers(min_value=0, max_value=2**32 - 1)
UINT64 = st.integers(min_value=0, max_value=2**64 - 1)
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
#: Well-typed values of each field, as a Go peer writes them and then some (ints in a float map,
#: keys with leading zeros or past the common ones, explicit zeros).
WELL_TYPED: dict[str, st.SearchStrategy[Any]] = {
    "id": UINT32,
    "success": st.booleans(),
    "from": UINT32,
    "to": UINT32,
    "transaction": UINT32,
    "error": st.text(max_size=8),
}
MAP_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "bool_params": st.booleans(),
    "string_params": st.text(max_size=8),
    "uint_params": UINT64,
    "int_params": INT64,
    "float_params": st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**64), max_value=2**64),
    "uint_array_params": st.lists(UINT64, max_size=4),
    "string_array_params": st.lists(st.text(max_size=4), max_size=4),
}
KEYS = UINT32.map(str) | st.sampled_from(["0", "007", "255", "256", "4294967295"])
for name, value in MAP_VALUES.items():
    WELL_TYPED[name] = st.lists(st.tuples(KEYS, value), max_size=4).map(Pairs)

well_typed_documents = st.fixed_dictionaries(
    {"id": WELL_TYPED["id"]},
    optional={name: strategy for name, strategy in WELL_TYPED.items() if name != "id"},
).map(lambda fields: Pairs(fields.items()))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(
        [0, 1, -1, 7, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**64) - 1]
    ),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from([Raw("1.0"), Raw("1e3"), Raw("1e999"), Raw("-0"), Raw("NaN"), Raw("1e+21")]),
)
any_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(st.tuples(st.sampled_from(["0", "1", "a", "-1", ""]), inner), max_size=3).map(
            Pairs
        )
    ),
    max_leaves=10,
)
OTHER_NAMES = ["ID", "From", "UINT_PARAMS", "\u017fuccess", "sender", "x"]


#: Values at and past the edge of every wire type, as JSON.
EDGES: list[object] = [
    None, True, False, 0, 1, -1, 2**32 - 1, 2**32, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1,
    2**64 - 1, 2**64, -(2**64) - 1, 1.5, -0.0, Raw("1.0"), Raw("1e3"), Raw("-0"), Raw("1e999"),
    Raw("-1e999"), "", "x", [], [None], [0, 1], [1, -1], [1, 2**64], [1, "x"], ["a", "b"],
    ["a", 1], [1.0], Pairs(), Pairs([("1", 1)]),
]  # fmt: skip
WELL_TYPED_SAMPLES = {
    "bool_params": True,
    "string_params": "s",
    "uint_params": 5,
    "int_params": -5,
    "float_params": 2.5,
    "uint_array_params": [1],
    "string_array_params": ["a"],
}
ALL_NAMES = [name for name, _ in plain.HEADER_FIELDS] + [kind.name for kind in plain.PARAM_MAPS]
MAP_NAMES = [kind.name for kind in plain.PARAM_MAPS]


@st.composite
def perturbed_documents(draw: st.DrawFn) -> Pairs:
    """A well-typed document with one thing a Go peer would not write, or would write rarely."""
    document = Pairs(draw(well_typed_documents))
    index = draw(st.integers(min_value=0, max_value=len(document) - 1))
    name, value = document[index]
    change = draw(
        st.sampled_from(["value", "item", "null item", "rename", "repeat", "add", "drop id"])
    )
    if change == "value":
        document[index] = (name, draw(st.sampled_from(EDGES) | any_values))
    elif change in ("item", "null item") and isinstance(value, Pairs) and value:
        items = Pairs(value)
        at = draw(st.integers(min_value=0, max_value=len(items) - 1))
        key = draw(st.sampled_from([items[at][0], "a", "-1", "4294967296", ""]))
        items[at] = (key, None if change == "null item" else draw(st.sampled_from(EDGES)))
        document[index] = (name, items)
    elif change == "rename":
        document[index] = (
            draw(st.sampled_from([name.upper(), name.title(), *OTHER_NAMES])),
            value,
        )
    elif change == "repeat":
        document.append((name, draw(any_values | WELL_TYPED[name])))
    elif change == "add":
        document.insert(index, (draw(st.sampled_from(OTHER_NAMES)), draw(any_values)))
    else:
        document = Pairs(pair for pair in document if pair[0] != "id")
    return document


class EncodeTests(SynchronousTestCase):
    @given(messages)
    def test_the_same_bytes(self, message: Message) -> None:
        self.assertEqual(fast.encode(message), plain.encode(message))

    def test_keys_past_the_table_and_single_entries(self) -> None:
        message = Message(id=1, uint_params={256: 1, 255: 2, 3: 3}, string_params={300: "x"})
        self.assertEqual(fast.encode(message), plain.encode(message))


class DecodeTests(SynchronousTestCase):
    @given(messages, st.sampled_from(["", "Cell_a"]))
    def test_the_same_values_for_what_links_carry(self, message: Message, sender: str) -> None:
        data = plain.encode(message)
        self.assertEqual(outcome(fast.decode, data, sender), outcome(plain.decode, data, sender))
        self.assertEqual(fast.decode(data, sender).sender, sender)

    def assertSameOutcome(self, document: Pairs) -> None:
        data = to_json(document).encode()
        self.assertEqual(outcome(fast.decode, data), outcome(plain.decode, data), data)

    def test_every_field_with_every_edge_value(self) -> None:
        for name in ALL_NAMES:
            for value in EDGES:
                self.assertSameOutcome(Pairs([("id", 7), (name, value)]))
        for name in MAP_NAMES:
            for value in EDGES:
                for key in ("1", "300", "007", "4294967295", "4294967296", "04294967295", "a", ""):
                    self.assertSameOutcome(Pairs([("id", 7), (name, Pairs([(key, value)]))]))
                for key in ("9" * 5000, "0" * 5000 + "1"):
                    self.assertSameOutcome(Pairs([("id", 7), (name, Pairs([(key, value)]))]))

    def test_every_field_repeated_renamed_or_nulled(self) -> None:
        for name in ALL_NAMES:
            value: object = 1
            second: object = 2
            if name in WELL_TYPED_SAMPLES:
                value = Pairs([("1", WELL_TYPED_SAMPLES[name])])
                second = Pairs([("2", WELL_TYPED_SAMPLES[name])])
            for document in (
                [("id", 7), (name, value), (name, second)],
                [("id", 7), (name, value), (name.upper(), second)],
                [("id", 7), (name.upper(), value)],
                [("id", 7), (name, None)],
                [("id", 7), (name, value), (name, None)],
                [("id", 7), (name, value), ("x", value)],
            ):
                self.assertSameOutcome(Pairs(document))
        self.assertEqual(
            fast.decode(b'{"id":7,"uint_params":{"1":5},"uint_params":{"2":6}}').uint_params,
            {1: 5, 2: 6},
        )

    @given(well_typed_documents)
    def test_the_same_values_for_any_well_typed_document(self, document: Pairs) -> None:
        data = to_json(document).encode()
        self.assertEqual(outcome(fast.decode, data)[0], "decoded")
        self.assertEqual(outcome(fast.decode, data), outcome(plain.decode, data))

    @given(perturbed_documents())
    @example(Pairs([("id", 1), ("id", 2)]))
    @example(Pairs([("id", 1), ("uint_params", Pairs([("1", 1)])), ("Uint_Params", Pairs())]))
    @example(Pairs([("id", 1), ("uint_params", Pairs([("1", None), ("1", 2)]))]))
    @example(Pairs([("id", 1), ("float_params", Pairs([("1", 2**70)]))]))
    @example(Pairs([("id", 1), ("float_params", Pairs([("1", Raw("1e999"))]))]))
    @example(Pairs([("id", 1), ("uint_array_params", Pairs([("1", [1, None])]))]))
    @example(Pairs([("from", 1)]))
    def test_the_same_values_or_errors_for_any_document(self, document: Pairs) -> None:
        self.assertSameOutcome(document)

    @given(st.binary(max_size=64) | st.sampled_from([b"", b"[]", b"null", b'{"id":1}x']))
    def test_the_same_errors_for_any_bytes(self, data: bytes) -> None:
        self.assertEqual(outcome(fast.decode, data), outcome(plain.decode, data))

    def test_the_same_error_for_a_sender_that_is_not_a_string(self) -> None:
        data = b'{"id":1}'
        self.assertEqual(outcome(fast.decode, data, 5), ("refused", "sender", plain_reason(5)))
        self.assertEqual(outcome(fast.decode, data, 5), outcome(plain.decode, data, 5))

    def test_a_decoded_map_is_taken_as_it_is_by_a_new_message(self) -> None:
        decoded = fast.decode(b'{"id":1,"string_params":{"39":"g"}}')
        again = Message(id=2, string_params=decoded.string_params)
        self.assertIs(again.string_params, decoded.string_params)


def plain_reason(value: object) -> str:
    return f"expected a string, got {value!r}"


class WithFromSessionTests(SynchronousTestCase):
    @given(messages, st.integers(min_value=0, max_value=2**32 - 1))
    def test_is_evolve(self, message: Message, session: int) -> None:
        stamped = fast.with_from_session(message, session)
        expected = attrs.evolve(message, from_session=session)
        self.assertEqual(typed(stamped), typed(expected))
        self.assertEqual(stamped.sender, message.sender)

    def test_refuses_what_evolve_refuses(self) -> None:
        message = Message(id=MessageID.GetAuthRequest, string_params={ParamKey.Guest: "g"})
        for session in (-1, 2**32, 1.0, True):
            mine = self.assertRaises(MessageError, fast.with_from_session, message, session)
            theirs = self.assertRaises(MessageError, attrs.evolve, message, from_session=session)
            self.assertEqual((mine.field, mine.reason), (theirs.field, theirs.reason))
