"""JSON as Go reads and writes it: one parser and two printers for every room."""

from __future__ import annotations

import contextlib
import json
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nanocore import gojson
from nanocore.gojson import MAX_DEPTH, JSONError


def nested(depth: int, kind: str = "[") -> str:
    if kind == "[":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


class LoadsTests(SynchronousTestCase):
    def refused(self, document: bytes | str, **options: bool) -> JSONError:
        return self.assertRaises(JSONError, gojson.loads, document, **options)

    def test_values(self) -> None:
        self.assertEqual(gojson.loads(b'{"a": [1, 2.5, "\\u00e9", true, null]}'), {
            "a": [1, 2.5, "é", True, None]
        })  # fmt: skip
        self.assertEqual(gojson.loads(" \t\r\n1 \n"), 1)

    def test_constants_go_does_not_know_are_refused(self) -> None:
        for constant in ("NaN", "Infinity", "-Infinity"):
            error = self.refused(f'{{"a": [{constant}]}}')
            self.assertEqual(str(error), f"{constant} is not valid JSON")

    def test_malformed_text_names_the_offset(self) -> None:
        error = self.refused(b'{"a": }')
        self.assertEqual((error.msg, error.pos), ("Expecting value", 6))
        self.assertEqual(str(error), "Expecting value: line 1 column 7 (char 6)")
        self.assertIn("line 2 column 1", str(self.refused('{"a": 1,\n}')))
        self.assertEqual(self.refused(b"").msg, "Expecting value")
        self.assertEqual(self.refused(b"{} {}").msg, "Extra data")
        self.assertEqual(self.refused(b"\xef\xbb\xbf{}").msg, "Expecting value")  # no BOM

    def test_only_utf8(self) -> None:
        error = self.refused(b'{"a": "\xff"}')
        self.assertEqual((error.msg, error.pos), ("bytes that are not UTF-8", 7))
        self.assertEqual(str(error), "bytes that are not UTF-8 (byte 7)")
        self.assertIsInstance(error, ValueError)

    def test_overlong_integers_are_a_json_error(self) -> None:
        self.assertIn("digits", str(self.refused("9" * 5000)))

    def test_nesting_up_to_the_limit(self) -> None:
        for kind in ("[", "{"):
            gojson.loads(nested(MAX_DEPTH, kind))
            gojson.loads(nested(MAX_DEPTH, kind), pairs=True)

    def test_deeper_nesting_is_refused_however_deep(self) -> None:
        """Past the limit, and past what Python's parser can recurse into: the same error."""
        for depth in (MAX_DEPTH + 1, 1_000, 100_000):
            for kind in ("[", "{"):
                for pairs in (False, True):
                    error = self.refused(nested(depth, kind), pairs=pairs)
                    self.assertEqual(str(error), f"nested deeper than {MAX_DEPTH} levels")

    def test_brackets_in_strings_do_not_count(self) -> None:
        self.assertEqual(gojson.loads(f'["{"[" * 1000}"]'), ["[" * 1000])

    def test_wide_documents_are_not_deep(self) -> None:
        self.assertEqual(len(gojson.loads("[" + ",".join(["[]"] * 1000) + "]")), 1000)

    def test_pairs_keep_order_and_repetitions(self) -> None:
        self.assertEqual(
            gojson.loads(b'{"b": 1, "a": {"x": []}, "b": 2}', pairs=True),
            (("b", 1), ("a", (("x", []),)), ("b", 2)),
        )

    def test_decimals(self) -> None:
        value = gojson.loads(b'{"a": 1.0, "b": 1, "c": 1e3}', decimals=True)
        self.assertEqual(value, {"a": Decimal("1.0"), "b": 1, "c": Decimal("1e3")})
        self.assertIs(type(value["b"]), int)

    def test_first_value(self) -> None:
        self.assertEqual(gojson.loads(' {"a": 1} {"a": 2} junk', first_value=True), {"a": 1})
        self.assertEqual(self.refused(" ", first_value=True).msg, "Expecting value")

    def test_a_lone_surrogate_reads_as_go_reads_it(self) -> None:
        """Go reads an escaped surrogate that is not half of a pair as U+FFFD; Python kept it,
        and an answer quoting it could not be encoded (an API refusal became a 500)."""
        self.assertEqual(gojson.loads(r'"x\ud800y"'), "x\ufffdy")
        self.assertEqual(gojson.loads(r'"\uDC00\ud800A"'), "\ufffd\ufffdA")
        self.assertEqual(gojson.loads(r'{"k\ud800": ["\udfff", 1]}'), {"k\ufffd": ["\ufffd", 1]})
        self.assertEqual(gojson.loads(r'{"k": "\ud800"}', pairs=True), (("k", "\ufffd"),))
        self.assertEqual(gojson.loads(r'"\ud83d\ude00"'), "\U0001f600")  # a pair: one rune
        self.assertEqual(gojson.loads(r'"\\ud800"'), "\\ud800")  # an escaped backslash

    @given(st.text(st.characters(blacklist_categories=()), max_size=20))
    def test_every_string_read_can_be_written(self, text: str) -> None:
        """Escaped, any text reads back as UTF-16 does: pairs joined, lone halves U+FFFD."""
        read = gojson.loads(json.dumps(text))  # ASCII: every surrogate as an escape
        as_utf16 = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        self.assertEqual(read, as_utf16)
        self.assertEqual(read.encode("utf-8").decode("utf-8"), read)  # no surrogate left

    @given(st.binary(max_size=64))
    def test_any_bytes_raise_only_json_errors(self, data: bytes) -> None:
        with contextlib.suppress(JSONError):
            gojson.loads(data)


class DumpsTests(SynchronousTestCase):
    def test_as_go_marshals(self) -> None:
        self.assertEqual(
            gojson.dumps({"a": [1.0, 2.5, 1e21, "<é>&\u2028"], "b": None}),
            '{"a":[1,2.5,1e+21,"\\u003cé\\u003e\\u0026\\u2028"],"b":null}',
        )

    def test_indented_as_go_marshal_indent(self) -> None:
        self.assertEqual(
            gojson.dumps({"a": [1], "b": {}}, indent=1), '{\n "a": [\n  1\n ],\n "b": {}\n}'
        )

    def test_nan_is_refused(self) -> None:
        self.assertRaises(ValueError, gojson.dumps, {"a": float("nan")})
        self.assertRaises(ValueError, gojson.dumps_ascii, [float("inf")])

    def test_ascii_for_the_wire(self) -> None:
        self.assertEqual(
            gojson.dumps_ascii({"a": ["é", 1.0, (1, 2)]}), b'{"a":["\\u00e9",1.0,[1,2]]}'
        )

    @given(json_values)
    def test_what_is_printed_reads_back(self, value: object) -> None:
        self.assertEqual(gojson.loads(gojson.dumps_ascii(value)), value)
        self.assertEqual(
            gojson.loads(gojson.dumps(value)), gojson.loads(gojson.dumps(value, indent=2))
        )
