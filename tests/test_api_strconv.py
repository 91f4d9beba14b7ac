"""Go's strconv parsers and their error texts, as Core answered them."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from nanocore.api.decode import DecodeError
from nanocore.api.strconv import atoi, go_quote, parse_bool


class StrconvTests(SynchronousTestCase):
    def refusal(self, parse: object, text: str) -> str:
        error = self.assertRaises(DecodeError, parse, text)  # type: ignore[arg-type]
        return error.message

    def test_atoi(self) -> None:
        for text, value in (("0", 0), ("+7", 7), ("-12", -12), ("007", 7)):
            self.assertEqual(atoi(text), value)
        for text in ("", " 1", "1 ", "1_0", "0x1", "1.0", "٣"):
            self.assertEqual(
                self.refusal(atoi, text), f"strconv.Atoi: parsing {go_quote(text)}: invalid syntax"
            )
        self.assertEqual(
            self.refusal(atoi, "9223372036854775808"),
            'strconv.Atoi: parsing "9223372036854775808": value out of range',
        )
        self.assertEqual(atoi("-9223372036854775808"), -(2**63))

    def test_parse_bool(self) -> None:
        for text in ("1", "t", "T", "TRUE", "true", "True"):
            self.assertIs(parse_bool(text), True)
        for text in ("0", "f", "F", "FALSE", "false", "False"):
            self.assertIs(parse_bool(text), False)
        self.assertEqual(
            self.refusal(parse_bool, "yes"), 'strconv.ParseBool: parsing "yes": invalid syntax'
        )
        self.assertEqual(
            self.refusal(parse_bool, "tRUE"), 'strconv.ParseBool: parsing "tRUE": invalid syntax'
        )

    def test_quote_as_go(self) -> None:
        self.assertEqual(go_quote('a"b\\c'), '"a\\"b\\\\c"')
        self.assertEqual(go_quote("\n\t\x00\x7f"), '"\\n\\t\\x00\\x7f"')
        self.assertEqual(go_quote("é\u200b"), '"é\\u200b"')
        self.assertEqual(go_quote("\U000e0001"), '"\\U000e0001"')
