"""Sonar multicast discovery (cell-protocol.md §1), byte-compatible with the Go packets.

A Cell pings ``group:port`` with its domain; Core answers with an echo to ``group:port-1``
that tells the Cell its own IP (``requestor``) and where Core's links listen (``services``: the
KCP link first, for stock Cells, then the TLS link). Everything arriving here is untrusted:
packets are bounded, strictly parsed, malformed ones are dropped with a log line (one per
source per minute, then the count), and echoes are paced per sender so a flood of pings cannot
turn Core into a multicast amplifier, while every pinger's latest ping is still answered (see
:class:`EchoPacer`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from attrs import define, frozen
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorMulticast, IReactorTime
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
    "DiscoveryTimeout",
    "EchoPacer",
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


def core_service(echo: SonarEcho, protocol: str = "") -> ServiceEntry | None:
    """The first "core" service of an echo, as a stock Cell picks it at start (§1.3); with
    ``protocol``, the first one of that protocol (our Cells pick their wire so)."""
    return next(
        (
            s
            for s in echo.services
            if s.type == SERVICE_TYPE_CORE and (not protocol or s.protocol == protocol)
        ),
        None,
    )


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

    def _refill(self) -> None:
        now = self._clock.seconds()
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)

    def take(self) -> bool:
        """Spend one token if there is one."""
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def wait(self) -> float:
        """Seconds until :meth:`take` can succeed (0 when it can now)."""
        self._refill()
        return max(0.0, (1 - self._tokens) / self._rate)

    @property
    def full(self) -> bool:
        """Nothing spent that has not come back: the bucket is as if new."""
        self._refill()
        return self._tokens >= self._burst


def _log_failure(log: Logger, what: str) -> Callable[[Failure], None]:
    def report(failure: Failure) -> None:
        log.failure("Discovery could not {what}", failure=failure, what=what)

    return report


Sender = tuple[str, int]

#: Echoes one sender (a pinger's address and port) may cause per second, and their burst.
ECHOES_PER_SENDER = 5.0
SENDER_BURST = 5
#: Senders paced at once; one whose budget is full again is forgotten when room is needed.
MAX_SENDERS = 1024


@define
class _Paced:
    """One sender's budget, and its latest ping while it waits for the budget."""

    budget: TokenBucket
    waiting: SonarPing | None = None
    call: IDelayedCall | None = None


class EchoPacer:
    """Answers each sender's pings at a bounded pace, always answering its latest ping.

    A stock pinger (sonar) accepts only the echo of its latest ping and answers every other
    datagram it reads, foreign echoes included, with a new ping. Cells starting together thus
    ping each other's echoes in a storm of thousands a second; a shared budget that drops
    pings starves them all, and a pinger whose latest ping is dropped waits for its 5 s
    timeout and exits. So each sender gets its own budget (``rate``/s, bursts of ``burst``);
    beyond it, a ping waits until the budget allows, and a newer ping from the same sender
    replaces it, since only the newest can still be accepted. A waiting ping is answered at a
    random moment of the next 1/``rate`` s, so that the senders' echoes do not leave all at
    once (a pinger reading another's echo first would ping again and miss its own). The storm
    dies down and every pinger gets its answer. One sender costs at most ``rate`` echoes per
    second; at most ``max_senders`` are paced at once, and a new sender beyond that is refused.
    """

    def __init__(
        self,
        clock: IReactorTime,
        echo: Callable[[Sender, SonarPing], None],
        *,
        rate: float = ECHOES_PER_SENDER,
        burst: int = SENDER_BURST,
        max_senders: int = MAX_SENDERS,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._echo = echo
        self._rng = rng if rng is not None else random.Random()
        self._rate = rate
        self._burst = burst
        self._max_senders = max_senders
        self._senders: dict[Sender, _Paced] = {}
        TokenBucket(clock, rate, burst)  # refuses bad parameters now rather than at a ping
        #: Pings that waited and were replaced by a newer one of the same sender.
        self.superseded = 0

    @property
    def senders(self) -> int:
        """Senders whose pace is remembered now."""
        return len(self._senders)

    def offer(self, sender: Sender, ping: SonarPing) -> bool:
        """Answer ``ping`` now or when ``sender``'s budget allows; False if refused."""
        paced = self._senders.get(sender)
        if paced is None:
            if len(self._senders) >= self._max_senders:
                self._forget_idle()
                if len(self._senders) >= self._max_senders:
                    return False
            paced = self._senders[sender] = _Paced(
                TokenBucket(self._clock, self._rate, self._burst)
            )
        if paced.call is not None:
            if paced.waiting is not None:
                self.superseded += 1
            paced.waiting = ping
        elif paced.budget.take():
            self._echo(sender, ping)
        else:
            paced.waiting = ping
            delay = paced.budget.wait() + self._rng.uniform(0, 1 / self._rate)
            paced.call = self._clock.callLater(delay, self._release, sender)
        return True

    def stop(self) -> None:
        """Drop every waiting ping (the listener stops)."""
        for paced in self._senders.values():
            if paced.call is not None and paced.call.active():
                paced.call.cancel()
        self._senders.clear()

    def _release(self, sender: Sender) -> None:
        paced = self._senders[sender]
        paced.call = None
        ping, paced.waiting = paced.waiting, None
        if ping is None:
            return
        if paced.budget.take():
            self._echo(sender, ping)
        else:  # the clock's rounding: not quite a token yet
            paced.waiting = ping
            delay = max(paced.budget.wait(), 0.001)
            paced.call = self._clock.callLater(delay, self._release, sender)

    def _forget_idle(self) -> None:
        idle = [
            s for s, paced in self._senders.items() if paced.call is None and paced.budget.full
        ]
        for sender in idle:
            del self._senders[sender]


class DiscoveryListener(DatagramProtocol):
    """Core's side: answer matching pings on the ``listen_address`` interface only.

    ``services`` says what to advertise now, in order: a stock Cell dials the first entry.
    Nothing is answered while it is empty (before Core's links listen).
    """

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        domain: str,
        group_address: str,
        group_port: int,
        listen_address: str,
        services: Callable[[], Sequence[ServiceEntry]],
        echoes_per_sender: float = ECHOES_PER_SENDER,
        sender_burst: int = SENDER_BURST,
        max_senders: int = MAX_SENDERS,
        rng: random.Random | None = None,
    ) -> None:
        self._domain = domain
        self._group = group_address
        self._echo_address = (group_address, group_port - 1)
        self._listen_address = listen_address
        self._services = services
        self.pacer = EchoPacer(
            clock,
            self._echo,
            rate=echoes_per_sender,
            burst=sender_burst,
            max_senders=max_senders,
            rng=rng,
        )
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

    def stopProtocol(self) -> None:
        self.pacer.stop()
        self._noise.flush()

    def advertised(self) -> tuple[ServiceEntry, ...]:
        """What an echo sent now would advertise, in order."""
        return tuple(self._services())

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
            # Rate-limited like every drop, and the domain cut: anyone on the segment sends
            # these, and one line each (a 7,000-character domain quoted whole) wrote 500 MB of
            # log in 40 s (QA pass 20). Once a minute it still tells of a Cell of another domain.
            self._noise.info(
                "pings for another domain",
                source,
                "Discovery ignored a ping for domain {domain} from {source} (this Core's domain"
                " is {mine!r})",
                domain=_cut(packet.domain),
                mine=self._domain,
            )
            return
        if not self.advertised():
            self._noise.info(
                "pings before an endpoint",
                source,
                "Discovery ignored a ping from {source}: no endpoint to advertise yet",
            )
            return
        if not self.pacer.offer((source, addr[1]), packet):
            self._drop(
                "pings from too many senders",
                "ping from {source}: too many pinging senders",
                source=source,
            )

    def _echo(self, sender: Sender, ping: SonarPing) -> None:
        source = sender[0]
        services = self.advertised()
        if not services or self.transport is None:
            return  # the links stopped while this ping waited
        echo = SonarEcho(id=ping.id, requestor=source, services=services)
        try:
            self.transport.write(encode_packet(echo), self._echo_address)
        except (OSError, DiscoveryPacketError) as error:
            self._drop(
                "echoes not sent", "echo to {source}: {reason}", source=source, reason=error
            )
            return
        self.echoes_sent += 1

    def _drop(self, kind: str, text: str, *, source: str, **fields: object) -> None:
        # Anyone on the segment can send these: one line per kind and source per minute, and
        # the count.
        self.dropped += 1
        self._noise.warn(kind, source, "Discovery dropped " + text, **fields)


def _cut(text: str, limit: int = 64) -> str:
    """``text`` as a log line quotes what a sender chose: its first ``limit`` characters."""
    return repr(text[:limit]) + ("…" if len(text) > limit else "")


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
