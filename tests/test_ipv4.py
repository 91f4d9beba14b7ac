"""One IPv4 rule: the store's values, the config files and the API's operations agree on it.

The rule is Go's ``net.ParseIP`` for dotted quads (Go 1.17 on: no leading zeros), written out
below from Go's ``parseIPv4`` as an oracle, less the IPv6 spellings Core let through.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nanocore import model
from nanocore.config import ConfigError, load_domain
from nanocore.operations.errors import InvalidRequest
from nanocore.operations.security import RuleSpec, build_rule


def go_parse_ipv4(text: str) -> bool:
    """Go's ``parseIPv4`` (net/ip.go): four ``dtoi`` octets <= 255, no leading zeros."""
    rest = text
    for index in range(4):
        if not rest:
            return False
        if index > 0:
            if rest[0] != ".":
                return False
            rest = rest[1:]
        digits = 0
        while digits < len(rest) and "0" <= rest[digits] <= "9":
            digits += 1
        if digits == 0 or int(rest[:digits]) > 0xFF:
            return False
        if digits > 1 and rest[0] == "0":
            return False
        rest = rest[digits:]
    return rest == ""


def by_go(text: str) -> bool:
    """What nanocore accepts: Go's IPv4 parse; ``::ffff:a.b.c.d`` and other IPv6 are refused."""
    return ":" not in text and go_parse_ipv4(text)


octets = st.integers(0, 999).map(str) | st.integers(0, 255).map(lambda n: f"0{n}")
candidates = (
    st.ip_addresses(v=4).map(str)
    | st.lists(octets, min_size=3, max_size=5).map(".".join)
    | st.text("0123456789.: \n\t/x\u0663\uff11", max_size=18)
    | st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}")
)
SAMPLES = ("1.2.3.4", "01.2.3.4", "1.2.3.4\n", " 1.2.3.4", "256.1.1.1", "1.2.3", "\u0663.1.1.1")


class OneRuleTests(SynchronousTestCase):
    def model_accepts(self, text: str) -> bool:
        try:
            model.AddressPool(name="p", gateway=text, provider=model.AddressProvider.DHCP)
        except ValueError:
            return False
        return True

    def operations_accept(self, text: str) -> bool:
        try:
            build_rule(RuleSpec(True, "tcp", from_address=text, to_address="", to_port=22))
        except InvalidRequest:
            return False
        return True

    def config_accepts(self, text: str) -> bool:
        directory = Path(self.mktemp())
        directory.mkdir(parents=True)
        path = directory / "domain.cfg"
        path.write_text(json.dumps({"domain": "nano", "listen_address": text}), encoding="utf-8")
        try:
            load_domain(path)
        except ConfigError as error:
            self.assertEqual(error.key, "listen_address")
            return False
        return True

    @settings(max_examples=300)
    @given(candidates)
    def test_model_and_operations_follow_the_rule(self, text: str) -> None:
        expected = by_go(text)
        self.assertEqual(model.is_ipv4(text), expected, text)
        self.assertEqual(self.model_accepts(text), expected, text)
        self.assertEqual(self.operations_accept(text) or text == "", expected or text == "", text)

    @settings(max_examples=60)
    @given(candidates)
    @example("1.2.3.4")
    @example("01.2.3.4")
    def test_config_follows_the_rule(self, text: str) -> None:
        """``listen_address`` also refuses multicast, 0.0.0.0 and reserved addresses."""
        usable = by_go(text) and not (
            (address := ipaddress.IPv4Address(text)).is_multicast
            or address.is_unspecified
            or address.is_reserved
        )
        self.assertEqual(self.config_accepts(text), usable, text)

    @given(candidates)
    def test_the_rule_is_what_ipaddress_accepts(self, text: str) -> None:
        """So code that goes on to ``ipaddress.IPv4Address`` after the check cannot fail."""
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            parsed = False
        else:
            parsed = True
        self.assertEqual(model.is_ipv4(text), parsed, text)

    def test_samples(self) -> None:
        self.assertEqual(
            [model.is_ipv4(text) for text in SAMPLES],
            [True, False, False, False, False, False, False],
        )
        self.assertFalse(model.is_ipv4(b"1.2.3.4"))
