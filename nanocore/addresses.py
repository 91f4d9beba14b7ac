"""Choosing a guest's address from an address pool's ranges (core-internals §3.2).

Pure: the ranges, what is taken and the random source are handed in, so a choice can be
replayed in a test. As in the original, ranges are tried in insertion order and inside a range
the search starts at a random offset and walks forward, wrapping to the start. Unlike it, the
gateway is never handed out, nor the network and broadcast addresses of a range's subnet
(a guest given either could not talk to anyone).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from attrs import frozen

from nanocore.model import AddressRange


@frozen
class ChosenAddress:
    """An address of ``range``; a guest's config shows it as ``cidr``, address pools as-is."""

    range: AddressRange
    address: str

    @property
    def cidr(self) -> str:
        return f"{self.address}/{prefix_length(self.range.netmask)}"


def prefix_length(netmask: str) -> int:
    return ipaddress.IPv4Network(f"0.0.0.0/{netmask}").prefixlen


def plain_address(assigned: str) -> str:
    """The bare IP of an ``address/prefix`` (or of a bare address)."""
    return assigned.partition("/")[0]


def _dotted(number: int) -> str:
    return f"{number >> 24}.{number >> 16 & 255}.{number >> 8 & 255}.{number & 255}"


def _unusable(item: AddressRange, gateway: str) -> set[int]:
    """The gateway, and the subnet's network and broadcast addresses where they are distinct."""
    network = item.network
    excluded = {int(network.network_address), int(network.broadcast_address)}
    if network.prefixlen >= 31:  # point-to-point and host routes use every address
        excluded = set()
    excluded.add(int(ipaddress.IPv4Address(gateway)))  # an AddressPool's gateway is valid
    return excluded


def choose_address(
    ranges: Iterable[AddressRange],
    taken: Callable[[str], bool],
    gateway: str,
    randbelow: Callable[[int], int],
) -> ChosenAddress | None:
    """The first free address found, or None when every range is full.

    ``taken(address)`` says whether an address is allocated or claimed; ``randbelow(n)`` gives
    the starting offset in ``0..n-1`` (``random.Random.randrange`` or a scripted source).
    """
    for item in ranges:
        first, capacity = int(item.first), item.capacity
        unusable = _unusable(item, gateway)
        start = randbelow(capacity)
        for step in range(capacity):
            number = first + (start + step) % capacity
            if number in unusable:
                continue
            address = _dotted(number)
            if not taken(address):
                return ChosenAddress(item, address)
    return None
