"""The address room: ranges in order, a random start walking forward, nothing unusable."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterator

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nanocore.addresses import choose_address, plain_address, prefix_length
from nanocore.model import AddressRange

GATEWAY = "172.16.0.1"


def span(start: str, end: str, netmask: str = "255.255.255.0") -> AddressRange:
    return AddressRange(pool="net", start=start, end=end, netmask=netmask)


def scripted(*offsets: int) -> Iterator[int]:
    return iter(offsets)


class ChooseTests(SynchronousTestCase):
    def test_the_walk_starts_at_the_random_offset_and_wraps(self) -> None:
        item = span("172.16.0.10", "172.16.0.14")
        taken = {"172.16.0.13", "172.16.0.14"}
        offsets = scripted(3)
        chosen = choose_address([item], taken.__contains__, GATEWAY, lambda n: next(offsets))
        assert chosen is not None
        self.assertEqual((chosen.address, chosen.cidr), ("172.16.0.10", "172.16.0.10/24"))
        self.assertIs(chosen.range, item)

    def test_ranges_in_insertion_order_and_full_ones_skipped(self) -> None:
        first, second = span("172.16.0.10", "172.16.0.11"), span("172.16.0.100", "172.16.0.100")
        taken = {"172.16.0.10", "172.16.0.11"}
        chosen = choose_address([first, second], taken.__contains__, GATEWAY, lambda n: 0)
        assert chosen is not None
        self.assertEqual(chosen.address, "172.16.0.100")
        self.assertIsNone(
            choose_address([first], taken.__contains__, GATEWAY, lambda n: 0),
        )

    def test_never_the_gateway_network_or_broadcast(self) -> None:
        whole = span("172.16.0.0", "172.16.0.255")
        seen = set()
        taken: set[str] = set()
        while chosen := choose_address([whole], taken.__contains__, GATEWAY, lambda n: 0):
            seen.add(chosen.address)
            taken.add(chosen.address)
        self.assertEqual(len(seen), 253)
        self.assertFalse({"172.16.0.0", "172.16.0.1", "172.16.0.255"} & seen)

    def test_point_to_point_subnets_use_both_addresses(self) -> None:
        pair = span("10.0.0.0", "10.0.0.1", "255.255.255.254")
        got = [
            choose_address([pair], lambda a: a == "10.0.0.1", "10.9.9.9", lambda n: 0),
            choose_address([pair], lambda a: a == "10.0.0.0", "10.9.9.9", lambda n: 0),
        ]
        self.assertEqual([c.cidr for c in got if c], ["10.0.0.0/31", "10.0.0.1/31"])

    def test_helpers(self) -> None:
        self.assertEqual(prefix_length("255.255.240.0"), 20)
        self.assertEqual(plain_address("10.1.2.3/24"), "10.1.2.3")
        self.assertEqual(plain_address("10.1.2.3"), "10.1.2.3")


starts = st.integers(
    int(ipaddress.IPv4Address("172.16.0.0")), int(ipaddress.IPv4Address("172.16.0.250"))
)


class ChoiceProperties(SynchronousTestCase):
    @given(starts, st.integers(0, 20), st.sets(st.integers(0, 30)), st.randoms(), st.booleans())
    def test_a_free_usable_address_is_found_whenever_one_exists(
        self, start: int, size: int, taken_offsets: set[int], rng: random.Random, inside: bool
    ) -> None:
        first = ipaddress.IPv4Address(start)
        last = ipaddress.IPv4Address(min(start + size, int(ipaddress.IPv4Address("172.16.0.255"))))
        item = span(str(first), str(last))
        gateway = str(first + 1) if inside else GATEWAY
        taken = {str(first + offset) for offset in taken_offsets}
        usable = {
            str(ipaddress.IPv4Address(n))
            for n in range(int(first), int(last) + 1)
            if str(ipaddress.IPv4Address(n)) not in {"172.16.0.0", "172.16.0.255", gateway}
        }
        chosen = choose_address([item], taken.__contains__, gateway, rng.randrange)
        if usable - taken:
            assert chosen is not None
            self.assertIn(chosen.address, usable - taken)
        else:
            self.assertIsNone(chosen)
