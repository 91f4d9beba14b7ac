"""The fast indented printer prints exactly what the plain Go-JSON printer prints, or raises
what it raises, for any value."""

from __future__ import annotations

from collections import OrderedDict
from enum import IntEnum
from types import MappingProxyType
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nanocore import _fastgojson as fast
from nanocore import gojson
from nanocore.api import envelope

_text = st.text(
    st.one_of(
        st.characters(),
        st.sampled_from(["<", ">", "&", "\u2028", "\u2029", '"', "\\", "\n", "\x00", "é"]),
    )
)


class Size(IntEnum):
    SMALL = 1


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(),
    st.sampled_from([0.0, -0.0, 3.0, 1e21, 1e20, -1e21, 2.5, 1e-7, 12.5]),
    _text,
)
_odd = st.one_of(
    st.just(Size.SMALL),
    st.builds(lambda: MappingProxyType({"a": 1.0})),
    st.builds(lambda: OrderedDict(a=1)),
    st.builds(lambda: {1: "x"}),
    st.builds(lambda: {None: 2.0}),
    st.builds(object),
)
values = st.recursive(
    st.one_of(_scalars, _odd),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(_text, inner, max_size=5),
    ),
    max_leaves=40,
)


def outcome(printer: Any, value: Any) -> tuple[str, Any]:
    try:
        return ("printed", printer(value, indent=2))
    except (TypeError, ValueError) as error:
        return (type(error).__name__, str(error))
    except RecursionError:  # where the stack ran out varies; that it did is the point
        return ("RecursionError", None)


class FastGoJSONTests(SynchronousTestCase):
    @given(values)
    @example([{"name": "c", "cpu_usage": 12.0, "alive": True, "instances": [0, 1, 2, 3]}])
    @example({"a": [], "b": {}, "c": ()})
    @example([1e21, -1e21, 1e20, -0.0, 1e300])
    @example(float("nan"))
    @example({"x": [float("inf")]})
    def test_prints_as_the_plain_printer(self, value: Any) -> None:
        self.assertEqual(outcome(fast.dumps, value), outcome(gojson.dumps, value))

    def test_a_circular_value_is_the_plain_printers_error(self) -> None:
        loop: list[Any] = []
        loop.append(loop)
        self.assertEqual(outcome(fast.dumps, loop), outcome(gojson.dumps, loop))

    def test_other_indents(self) -> None:
        value = {"a": [1, {"b": 2.0}]}
        for indent in (0, 1, 4):
            self.assertEqual(fast.dumps(value, indent=indent), gojson.dumps(value, indent=indent))


_printable = st.recursive(
    _scalars.filter(lambda value: not isinstance(value, float) or value == value),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_text, inner, max_size=4)
    ),
    max_leaves=20,
).filter(lambda value: _prints(value))


def _prints(value: Any) -> bool:
    try:
        envelope.go_json(value)
    except (TypeError, ValueError):
        return False
    return True


def _bytes_or_refusal(make: Any) -> object:
    try:
        return make()
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 envelope holds it
        return "not UTF-8"


class EncodedListingTests(SynchronousTestCase):
    @given(st.lists(_printable, min_size=1, max_size=5))
    @example([{"name": "a\nb", "list": [1, {"deep": []}], "empty": {}}])
    @example(["\ud800"])
    def test_a_listing_of_encoded_items_is_the_envelope_of_the_list(
        self, items: list[Any]
    ) -> None:
        """Items encoded alone, then placed in the envelope: the bytes of the whole (or
        the same refusal)."""
        self.assertEqual(
            _bytes_or_refusal(
                lambda: envelope.success_of_items([envelope.list_item(item) for item in items])
            ),
            _bytes_or_refusal(lambda: envelope.success(items)),
        )
