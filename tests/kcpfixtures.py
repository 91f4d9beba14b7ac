"""An in-memory UDP network on a Clock, for the KCP link tests: Core's port and Cells' ports.

Datagrams are delivered at the clock's current time (``callLater(0)``), so ``clock.advance(0)``
settles every exchange that needs no timer, and longer waits are plain ``advance`` calls. Loss
is decided by a seeded random generator, per direction if wanted, so runs are repeatable.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock

from nanocore.cluster.cells import CellRegistry
from nanocore.cluster.kcp.conversation import DEFAULT_LIMITS, Limits
from nanocore.cluster.kcp.dialer import KCPDialer
from nanocore.cluster.kcp.endpoint import KCPEndpoint
from nanocore.cluster.kcp.link import cell_link_endpoint, cell_sessions
from nanocore.cluster.transactions import Transactions
from nanocore.testing.fakecell import FakeCell

Address = tuple[str, int]
CORE_ADDRESS: Address = ("10.0.0.1", 5600)
CORE_NAME = "Core_5254000a0b0c"
TIMEOUT = 10.0

#: Decides whether a datagram from the first address to the second is lost.
Lose = Callable[[Address, Address], bool]


def never(source: Address, target: Address) -> bool:
    return False


class MemoryUDP:
    """A bound UDP port on a :class:`Network`; connected (one peer) if ``connect`` was called."""

    def __init__(self, network: Network, address: Address, protocol: DatagramProtocol) -> None:
        self.network = network
        self.address = address
        self.protocol = protocol
        self.peer: Address | None = None
        self.written: list[tuple[bytes, Address]] = []

    def write(self, datagram: bytes, addr: Address | None = None) -> None:
        target = addr if addr is not None else self.peer
        assert target is not None, "write without an address on an unconnected port"
        self.written.append((datagram, target))
        self.network.send(self.address, target, datagram)

    def connect(self, host: str, port: int) -> None:
        self.peer = (host, port)

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", *self.address)

    def stopListening(self) -> None:
        if self.network.ports.pop(self.address, None) is self:
            self.protocol.doStop()


class Network:
    """Ports by address; each datagram is delivered at the next clock turn unless lost."""

    def __init__(self, clock: Clock, lose: Lose = never) -> None:
        self.clock = clock
        self.lose = lose
        self.ports: dict[Address, MemoryUDP] = {}
        #: Addresses cut off the network: nothing they send or are sent arrives.
        self.cut: set[Address] = set()
        self.delivered = 0
        self.lost = 0

    def bind(self, protocol: DatagramProtocol, address: Address) -> MemoryUDP:
        port = self.ports[address] = MemoryUDP(self, address, protocol)
        protocol.makeConnection(port)  # type: ignore[arg-type]
        return port

    def send(self, source: Address, target: Address, datagram: bytes) -> None:
        if source in self.cut or target in self.cut or self.lose(source, target):
            self.lost += 1
            return
        self.clock.callLater(0, self._arrive, source, target, datagram)

    def inject(self, source: Address, target: Address, datagram: bytes) -> None:
        """A datagram from anywhere (a spoofer, a flood), delivered now."""
        self._arrive(source, target, datagram)

    def _arrive(self, source: Address, target: Address, datagram: bytes) -> None:
        port = self.ports.get(target)
        if port is None or (port.peer is not None and port.peer != source):
            return
        self.delivered += 1
        port.protocol.datagramReceived(datagram, source)


def lossy(rate: float, seed: int = 13) -> Lose:
    """Lose ``rate`` of the datagrams in each direction, repeatably."""
    generator = random.Random(seed)
    return lambda source, target: generator.random() < rate


class KCPFabric:
    """Core's side (registry, transactions, KCP endpoint) and FakeCells dialing it in memory."""

    def __init__(self, clock: Clock | None = None, lose: Lose = never, **limits: Any) -> None:
        self.clock = clock if clock is not None else Clock()
        self.network = Network(self.clock, lose)
        self.transactions = Transactions(self.clock, TIMEOUT)
        self.registry = CellRegistry(self.clock, self.transactions)
        self.limits = Limits(**limits) if limits else DEFAULT_LIMITS
        self.endpoint: KCPEndpoint = cell_link_endpoint(
            self.registry, self.clock, CORE_NAME, self.registry.link, self.limits
        )
        self.core_port = self.network.bind(self.endpoint, CORE_ADDRESS)
        self.cells: dict[str, FakeCell] = {}
        self.dialers: dict[str, KCPDialer] = {}

    def dial(self, name: str, address: Address, conv: int | None = None) -> FakeCell:
        """A FakeCell dialing Core from ``address``; nothing moves until the clock does."""
        cell = self.cells[name] = FakeCell(name, self.clock)
        attach = cell_sessions(cell, self.clock, name)
        dialer = self.dialers[name] = KCPDialer(CORE_ADDRESS, self.clock, attach, conv=conv)
        self.network.bind(dialer, address)
        return cell

    def settle(self) -> None:
        """Run everything due now (deliveries, flushes) without letting time pass."""
        self.clock.advance(0)

    def run(self, seconds: float, step: float = 0.01) -> None:
        """Let ``seconds`` pass in small steps, as a real reactor would."""
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
