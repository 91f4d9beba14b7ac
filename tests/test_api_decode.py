"""The declarative body decoder: Go encoding/json semantics plus required fields."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nanocore.api.app import build_api_resource
from nanocore.api.decode import Body, DecodeError, Field, Kind
from nanocore.api.testing import TEST_CREDENTIALS, APIClient
from nanocore.gojson import MAX_DEPTH

QOS = Body((Field("cpu_priority", required=True), Field("read_speed", Kind.UINT)), name="qos")
BODY = Body(
    (
        Field("name"),
        Field("offset", Kind.INT),
        Field("usage", Kind.FLOAT),
        Field("disks", Kind.UINT_LIST),
        Field("qos", Kind.OBJECT, body=QOS),
        Field("flag", Kind.BOOL),
    )
)


class DecodeTests(SynchronousTestCase):
    def refused(self, raw: bytes, body: Body = BODY) -> str:
        with self.assertRaises(DecodeError) as caught:
            body.decode(raw)
        return caught.exception.message

    def test_zero_values(self) -> None:
        self.assertEqual(
            BODY.decode(b"{}"),
            {"name": "", "offset": 0, "usage": 0.0, "disks": (), "qos": None, "flag": False},
        )

    def test_null_body_and_null_fields_are_zero(self) -> None:
        self.assertEqual(BODY.decode(b"null")["name"], "")
        self.assertEqual(BODY.decode(b'{"name": null, "disks": null}')["disks"], ())

    def test_optional_body_may_be_empty(self) -> None:
        self.assertEqual(Body((Field("x"),), optional=True).decode(b"  "), {"x": ""})

    def test_kinds(self) -> None:
        decoded = BODY.decode(
            b'{"offset": -3, "usage": 1.5, "disks": [1, 2], "flag": true,'
            b' "qos": {"CPU_PRIORITY": "low"}}'
        )
        self.assertEqual(decoded["offset"], -3)
        self.assertEqual(decoded["usage"], 1.5)
        self.assertEqual(decoded["disks"], (1, 2))
        self.assertTrue(decoded["flag"])
        self.assertEqual(decoded["qos"], {"cpu_priority": "low", "read_speed": 0})

    def test_type_errors_name_the_field(self) -> None:
        self.assertEqual(
            self.refused(b'{"offset": 1.5}'),
            "json: cannot unmarshal number 1.5 into Go struct field request.offset of type int64",
        )
        for literal in ("1e0", "1E+2", "2.50", "-0.0"):  # quoted as written, as Go does
            self.assertEqual(
                self.refused(b'{"offset": %s}' % literal.encode()),
                f"json: cannot unmarshal number {literal} into Go struct field request.offset"
                " of type int64",
            )
        self.assertIn("request.usage of type float64", self.refused(b'{"usage": "x"}'))
        self.assertIn("request.disks of type uint64", self.refused(b'{"disks": [-1]}'))
        self.assertIn("request.disks of type []uint64", self.refused(b'{"disks": 1}'))
        self.assertIn("request.flag of type bool", self.refused(b'{"flag": 1}'))
        self.assertIn("request.name of type string", self.refused(b'{"name": true}'))
        self.assertIn("request.qos of type qos", self.refused(b'{"qos": []}'))
        self.assertIn(
            "number 18446744073709551616", self.refused(b'{"disks": [18446744073709551616]}')
        )

    def test_nested_required_field(self) -> None:
        self.assertEqual(self.refused(b'{"qos": {}}'), "cpu_priority required")
        self.assertIn(
            "qos.read_speed", self.refused(b'{"qos": {"cpu_priority": "x", "read_speed": -1}}')
        )

    def test_the_last_key_to_reach_a_field_wins_as_in_go(self) -> None:
        """Go assigns each key in document order to the field of its exact name, else of its
        name in any case: a later key for the same field overrides an earlier one."""
        name = lambda raw: BODY.decode(raw)["name"]  # noqa: E731
        self.assertEqual(name(b'{"name": "a", "NAME": "b"}'), "b")
        self.assertEqual(name(b'{"NAME": "b", "name": "a"}'), "a")
        self.assertEqual(name(b'{"name": "a", "Name": "b", "name": "c"}'), "c")
        self.assertEqual(name(b'{"name": "a", "NAME": null}'), "a")  # null changes nothing
        self.assertEqual(BODY.decode(b'{"disks": [1, 2], "Disks": [3]}')["disks"], (3,))
        # An object reaching a field again is decoded over what the first one set.
        merged = BODY.decode(b'{"qos": {"cpu_priority": "x"}, "QOS": {"read_speed": 5}}')
        self.assertEqual(merged["qos"], {"cpu_priority": "x", "read_speed": 5})
        # Fields whose names differ only in case: the exact one, else the first declared.
        cased = Body((Field("host"), Field("Host")))
        self.assertEqual(cased.decode(b'{"Host": "x", "HOST": "y"}'), {"host": "y", "Host": "x"})

    def test_invalid_utf8_is_replaced_not_refused(self) -> None:
        self.assertEqual(BODY.decode(b'{"name": "a\xffb"}')["name"], "a\ufffdb")

    def test_unknown_keys_and_trailing_data_ignored(self) -> None:
        self.assertEqual(
            BODY.decode(b'{"zzz": {"deep": [1]}, "name": "n"} {"name": 2}')["name"], "n"
        )

    def test_over_deep_json_is_a_decode_error(self) -> None:
        depth = 1_000
        message = self.refused(b'{"qos": ' + b"[" * depth + b"]" * depth + b"}")
        self.assertEqual(message, f"invalid JSON body: nested deeper than {MAX_DEPTH} levels")

    def test_constants_go_does_not_know_are_refused(self) -> None:
        self.assertEqual(
            self.refused(b'{"usage": NaN}'), "invalid JSON body: NaN is not valid JSON"
        )

    def test_malformed_json_names_the_offset_in_the_body(self) -> None:
        self.assertEqual(
            self.refused(b'  {"name": }'), "invalid JSON body: Expecting value at offset 11"
        )

    def test_a_control_character_in_a_string_says_where_once(self) -> None:
        """Python's message for it ends with "at" itself (QA pass 20: "at at offset")."""
        self.assertEqual(
            self.refused(b'{"name": "a\x00b"}'),
            "invalid JSON body: Invalid control character at offset 11",
        )


class Unreached:
    """The operations of an API whose requests never get past decoding the body."""

    def revision(self) -> int:
        return 0


class ThroughTheAPITests(SynchronousTestCase):
    """Issue 14 point 4: a signed body nested 1,000 deep once answered HTTP 500 with Twisted's
    HTML page and logged a RecursionError; it is an ordinary decode error in the envelope."""

    def test_over_deep_body_answers_the_envelope(self) -> None:
        clock = Clock()
        clock.advance(1_714_529_472.0)
        resource = build_api_resource(Unreached(), TEST_CREDENTIALS, clock)
        client = APIClient(resource, clock)
        depth = 1_000
        body = b'{"x": ' + b"[" * depth + b"]" * depth + b"}"
        answer = self.successResultOf(client.post("/compute_pools/p", raw=body))
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.error, f"invalid JSON body: nested deeper than {MAX_DEPTH} levels")
        self.assertEqual(self.flushLoggedErrors(), [])
