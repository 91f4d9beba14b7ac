"""Sonar multicast discovery (cell-protocol.md §1), byte-compatible with the Go packets.

A Cell pings ``group:port`` with its domain; Core answers with an echo to ``group:port-1``
that tells the Cell its own IP (``requestor``) and where Core's message endpoint listens.
Everything arriving here is untrusted: packets are bounded, strictly parsed, malformed ones
are dropped with a log line (one per source per minute, then the count), and echoes are
rate-limited so a flood of pings cannot turn Core into a multicast amplifier.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs
from attrs import frozen
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IMulticastTransport,
    IReactorMulticast,
    IReactorTime,
)
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from nanocore import gojson
from nanocore.ratelog import RateLimitedLog

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_GROUP_ADDRESS",
    "DEFAULT_GROUP_PORT",
    "MAX_PACKET_SIZE",
    "SERVICE_TYPE_CORE",
    "DiscoveryListener",
    "DiscoveryPacketError",
    "DiscoveryPinger",
    "DiscoveryService",
    "DiscoveryTimeout",
    "ServiceEntry",
    "SonarEcho",
    "SonarPing",
    "TokenBucket",
    "core_service",
    "decode_packet",
    "encode_packet",
    "find_core",
]

DEFAULT_DOMAIN = "nano"
DEFAULT_GROUP_ADDRESS = "224.0.0.226"
DEFAULT_GROUP_PORT = 5599
MAX_PACKET_SIZE = 8 << 10  # sonar DefaultBufferSize
SERVICE_TYPE_CORE = "core"
TYPE_PING = 0
TYPE_ECHO = 1
PING_ID_LIMIT = 0xFFFF  # Go pingers draw ids from [0, 65535)
_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1


class DiscoveryPacketError(ValueError):
    """A sonar packet that is not what §1.2 describes."""


class DiscoveryTimeout(Exception):
    """No matching echo arrived in time."""


@frozen
class ServiceEntry:
    """One advertised endpoint: for Core, its message link (``type`` "core")."""

    type: str
    protocol: str
    address: str
    port: int = attrs.field()

    @port.validator
    def _check_port(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535):
            raise DiscoveryPacketError(f"service port {value!r} is not in 0..65535")


@frozen
class SonarPing:
    id: int
    domain: str


@frozen
class SonarEcho:
    id: int
    requestor: str
    services: tuple[ServiceEntry, ...] = ()


def encode_packet(packet: SonarPing | SonarEcho) -> bytes:
    """Compact JSON in sonar's field order, empty fields omitted, as Go writes it."""
    document: dict[str, Any]
    if isinstance(packet, SonarPing):
        document = {"type": TYPE_PING, "id": packet.id}
        if packet.domain:
            document["domain"] = packet.domain
    else:
        document = {"type": TYPE_ECHO, "id": packet.id}
        if packet.requestor:
            document["requestor"] = packet.requestor
        if packet.services:
            document["services"] = [
                {"type": s.type, "protocol": s.protocol, "address": s.address, "port": s.port}
                for s in packet.services
            ]
    data = gojson.dumps_ascii(document)
    if len(data) > MAX_PACKET_SIZE:
        raise DiscoveryPacketError(f"packet of {len(data)} bytes exceeds {MAX_PACKET_SIZE}")
    return data


def _fields(value: object, what: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise DiscoveryPacketError(f"{what} is not a JSON object")
    # Go matches field names case-insensitively; the last duplicate wins.
    return {key.lower(): item for key, item in value.items()}


def _int(fields: dict[str, object], name: str) -> int:
    value = fields.get(name, 0)
    if not (
        isinstance(value, int) and not isinstance(value, bool) and _INT_MIN <= value <= _INT_MAX
    ):
        raise DiscoveryPacketError(f"{name} is not an integer: {value!r}")
    return value


def _str(fields: dict[str, object], name: str) -> str:
    value = fields.get(name, "")
    if not isinstance(value, str):
        raise DiscoveryPacketError(f"{name} is not a string: {value!r}")
    return value


def decode_packet(data: bytes) -> SonarPing | SonarEcho:
    """Parse one datagram; raises :class:`DiscoveryPacketError` and nothing else."""
    if len(data) > MAX_PACKET_SIZE:
        raise DiscoveryPacketError(f"packet of {len(data)} bytes exceeds {MAX_PACKET_SIZE}")
    try:
        document = gojson.loads(data)
    except gojson.JSONError as error:
        raise DiscoveryPacketError(f"not JSON ({error})") from None
    fields = _fields(document, "packet")
    kind = _int(fields, "type")
    packet_id = _int(fields, "id")
    if kind == TYPE_PING:
        return SonarPing(id=packet_id, domain=_str(fields, "domain"))
    if kind != TYPE_ECHO:
        raise DiscoveryPacketError(f"unknown packet type {kind}")
    services = fields.get("services")
    if services is None:
        services = []
    if not isinstance(services, list):
        raise DiscoveryPacketError("services is not an array")
    entries = []
    for item in services:
        entry = _fields(item, "service entry")
        entries.append(
            ServiceEntry(
                type=_str(entry, "type"),
                protocol=_str(entry, "protocol"),
                address=_str(entry, "address"),
                port=_int(entry, "port"),
            )
        )
    return SonarEcho(id=packet_id, requestor=_str(fields, "requestor"), services=tuple(entries))


def core_service(echo: SonarEcho) -> ServiceEntry | None:
    """The first "core" service of an echo, as a Cell picks it (§1.3)."""
    return next((s for s in echo.services if s.type == SERVICE_TYPE_CORE), None)


class TokenBucket:
    """``rate`` events per second with bursts of ``burst``, on an injected clock."""

    def __init__(self, clock: IReactorTime, rate: float, burst: int) -> None:
        if not (rate > 0 and burst >= 1):
            raise ValueError("rate must be > 0 and burst >= 1")
        self._clock = clock
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = clock.seconds()

    def take(self) -> bool:
        """Spend one token if there is one."""
        now = self._clock.seconds()
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


def _log_failure(log: Logger, what: str) -> Callable[[Failure], None]:
    def report(failure: Failure) -> None:
        log.failure("Discovery could not {what}", failure=failure, what=what)

    return report


class DiscoveryListener(DatagramProtocol):
    """Core's side: answer matching pings on the ``listen_address`` interface only."""

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        domain: str,
        group_address: str,
        group_port: int,
        listen_address: str,
        service: ServiceEntry | Callable[[], ServiceEntry | None],
        echoes_per_second: float = 20.0,
        echo_burst: int = 40,
    ) -> None:
        self._domain = domain
        self._group = group_address
        self._echo_address = (group_address, group_port - 1)
        self._listen_address = listen_address
        self._service = service
        self._echo_budget = TokenBucket(clock, echoes_per_second, echo_burst)
        self._noise = RateLimitedLog(self.log, clock)
        self.echoes_sent = 0
        self.dropped = 0

    def startProtocol(self) -> None:
        transport: Any = self.transport
        transport.joinGroup(self._group, interface=self._listen_address).addErrback(
            _log_failure(self.log, f"join {self._group} on {self._listen_address}")
        )
        transport.setOutgoingInterface(self._listen_address).addErrback(
            _log_failure(self.log, f"send on {self._listen_address}")
        )

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        source = addr[0]
        try:
            packet = decode_packet(datagram)
        except DiscoveryPacketError as error:
            self._drop(
                "malformed discovery packets",
                "malformed packet from {source}: {reason}",
                source=source,
                reason=error,
            )
            return
        if not isinstance(packet, SonarPing):
            self._drop(
                "non-ping discovery packets", "non-ping packet from {source}", source=source
            )
            return
        if packet.domain != self._domain:
            self.log.debug(
                "Ignored ping for domain {domain!r} from {source}",
                domain=packet.domain,
                source=source,
            )
            return
        service = self._service() if callable(self._service) else self._service
        if service is None:
            self.log.debug(
                "Ignored ping from {source}: no endpoint to advertise yet", source=source
            )
            return
        if not self._echo_budget.take():
            self._drop(
                "pings over the echo rate limit",
                "ping from {source}: echo rate limit reached",
                source=source,
            )
            return
        echo = SonarEcho(id=packet.id, requestor=source, services=(service,))
        try:
            self.transport.write(encode_packet(echo), self._echo_address)  # type: ignore[union-attr]
        except (OSError, DiscoveryPacketError) as error:
            self._drop(
                "echoes not sent", "echo to {source}: {reason}", source=source, reason=error
            )
            return
        self.echoes_sent += 1

    def stopProtocol(self) -> None:
        self._noise.flush()

    def _drop(self, kind: str, text: str, *, source: str, **fields: object) -> None:
        # Anyone on the segment can send these: one line per kind and source per minute, and
        # the count.
        self.dropped += 1
        self._noise.warn(kind, source, "Discovery dropped " + text, **fields)


class DiscoveryPinger(DatagramProtocol):
    """A Cell's side: ping ``group:port``, wait for the echo with our id on ``port-1``."""

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        domain: str,
        group_address: str,
        group_port: int,
        interface: str,
        rng: random.Random | None = None,
    ) -> None:
        if not interface:
            # Without it the kernel picks the outgoing interface for the pings, which may be a
            # real network: multicast leaves only through an interface the caller names.
            raise ValueError("a pinger needs the address of the interface to ping from")
        self._clock = clock
        self._domain = domain
        self._group = group_address
        self._ping_address = (group_address, group_port)
        self._interface = interface
        self._rng = rng if rng is not None else random.SystemRandom()
        self._waiting: dict[int, Deferred[SonarEcho]] = {}

    def startProtocol(self) -> None:
        transport: Any = self.transport
        transport.joinGroup(self._group, interface=self._interface).addErrback(
            _log_failure(self.log, f"join {self._group}")
        )
        transport.setOutgoingInterface(self._interface).addErrback(
            _log_failure(self.log, f"send on {self._interface}")
        )

    def query(self, timeout: float = 5.0, resend: float = 1.0) -> Deferred[SonarEcho]:
        """Ping and fire with the matching echo, or fail with :class:`DiscoveryTimeout`.

        The ping is repeated every ``resend`` seconds with the same id, since UDP may lose it.
        Cancelling the Deferred stops the query.
        """
        ping_id = self._rng.randrange(PING_ID_LIMIT)
        while ping_id in self._waiting:
            ping_id = self._rng.randrange(PING_ID_LIMIT)
        packet = encode_packet(SonarPing(id=ping_id, domain=self._domain))
        timers: list[IDelayedCall] = []

        def send() -> None:
            try:
                self.transport.write(packet, self._ping_address)  # type: ignore[union-attr]
            except OSError:
                stop()
                result.errback()  # e.g. no route to the group: fail now, not at the timeout
                return
            timers.append(self._clock.callLater(resend, send))

        def stop(_: object = None) -> None:
            self._waiting.pop(ping_id, None)
            for timer in timers:
                if timer.active():
                    timer.cancel()

        def expire() -> None:
            stop()
            result.errback(DiscoveryTimeout(f"no echo for ping {ping_id} within {timeout:g} s"))

        def done(echo: SonarEcho) -> SonarEcho:
            stop()
            return echo

        result: Deferred[SonarEcho] = Deferred(stop)
        self._waiting[ping_id] = result
        timers.append(self._clock.callLater(timeout, expire))
        send()
        return result.addCallback(done)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        try:
            packet = decode_packet(datagram)
        except DiscoveryPacketError as error:
            self.log.debug("Ignored malformed packet from {source}: {e}", source=addr[0], e=error)
            return
        if not isinstance(packet, SonarEcho):
            return
        waiting = self._waiting.pop(packet.id, None)
        if waiting is not None:
            waiting.callback(packet)


def find_core(
    reactor: IReactorMulticast,
    clock: IReactorTime,
    *,
    domain: str = DEFAULT_DOMAIN,
    group_address: str = DEFAULT_GROUP_ADDRESS,
    group_port: int = DEFAULT_GROUP_PORT,
    interface: str,
    timeout: float = 5.0,
) -> Deferred[SonarEcho]:
    """The Cell's query: listen for echoes, ping until answered or timed out, stop listening."""
    pinger = DiscoveryPinger(
        clock=clock,
        domain=domain,
        group_address=group_address,
        group_port=group_port,
        interface=interface,
    )
    port = reactor.listenMulticast(
        group_port - 1, pinger, interface=group_address, listenMultiple=True
    )

    def close(outcome: SonarEcho | Failure) -> Deferred[SonarEcho]:
        closing = maybeDeferred(port.stopListening)
        return closing.addCallback(lambda _: outcome)

    return pinger.query(timeout).addBoth(close)


class DiscoveryService(Service):
    """Listens for pings on ``group_address:group_port`` while running."""

    def __init__(
        self,
        reactor: IReactorMulticast,
        clock: IReactorTime,
        *,
        domain: str,
        group_address: str,
        group_port: int,
        listen_address: str,
        service: ServiceEntry | Callable[[], ServiceEntry | None],
        echoes_per_second: float = 20.0,
        echo_burst: int = 40,
    ) -> None:
        self._reactor = reactor
        self._group_address = group_address
        self._group_port = group_port
        self.protocol = DiscoveryListener(
            clock=clock,
            domain=domain,
            group_address=group_address,
            group_port=group_port,
            listen_address=listen_address,
            service=service,
            echoes_per_second=echoes_per_second,
            echo_burst=echo_burst,
        )
        self._port: IMulticastTransport | None = None

    def startService(self) -> None:
        super().startService()
        # Bound to the group address itself: only datagrams for the group arrive, never
        # unicast traffic to the port; the join above picks the interface.
        self._port = self._reactor.listenMulticast(
            self._group_port,
            self.protocol,
            interface=self._group_address,
            listenMultiple=True,
        )

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self._port = self._port, None
        if port is None:
            return None
        stopped = port.stopListening()
        return stopped if isinstance(stopped, Deferred) else None
