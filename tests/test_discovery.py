"""Discovery: packet codec, listener (match, other domain, malformed, pacing), pinger, and
stock sonar pingers starting together."""

from __future__ import annotations

import contextlib
import json
import random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, FakeDatagramTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from nanocore import gojson
from nanocore.cluster.discovery import (
    ECHOES_PER_SENDER,
    MAX_PACKET_SIZE,
    SENDER_BURST,
    DiscoveryListener,
    DiscoveryPacketError,
    DiscoveryPinger,
    DiscoveryTimeout,
    ServiceEntry,
    SonarEcho,
    SonarPing,
    TokenBucket,
    core_service,
    decode_packet,
    encode_packet,
    find_core,
)

GROUP = "224.0.0.226"
PORT = 5599
LISTEN = "127.0.0.1"
CELL = ("127.0.0.7", 40000)
CORE = ServiceEntry(type="core", protocol="tls", address=LISTEN, port=5600)
KCP = ServiceEntry(type="core", protocol="kcp", address=LISTEN, port=5601)


class FakeMulticastTransport(FakeDatagramTransport):
    """A datagram transport that records multicast setup; it sends nothing anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.joined: list[tuple[str, str]] = []
        self.outgoing_interface: str | None = None
        self.stopped = False

    def joinGroup(self, addr: str, interface: str = "") -> Deferred[None]:
        self.joined.append((addr, interface))
        return succeed(None)

    def setOutgoingInterface(self, addr: str) -> Deferred[None]:
        self.outgoing_interface = addr
        return succeed(None)

    def stopListening(self) -> None:
        self.stopped = True


class FakeMulticastReactor:
    """Just enough of IReactorMulticast to see what a service asks for."""

    def __init__(self) -> None:
        self.listening: list[tuple[int, DatagramProtocol, str, bool, FakeMulticastTransport]] = []

    def listenMulticast(
        self,
        port: int,
        protocol: DatagramProtocol,
        interface: str = "",
        maxPacketSize: int = 8192,
        listenMultiple: bool = False,
    ) -> FakeMulticastTransport:
        transport = FakeMulticastTransport()
        self.listening.append((port, protocol, interface, listenMultiple, transport))
        protocol.makeConnection(transport)
        return transport


class LogCapture(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)

    def warnings(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e["log_level"] == LogLevel.warn]


class PacketTests(SynchronousTestCase):
    def test_ping_bytes_match_sonar(self) -> None:
        self.assertEqual(
            encode_packet(SonarPing(id=4242, domain="nano")),
            b'{"type":0,"id":4242,"domain":"nano"}',
        )

    def test_echo_bytes_match_sonar(self) -> None:
        echo = SonarEcho(
            id=4242,
            requestor="10.0.0.7",
            services=(ServiceEntry(type="core", protocol="kcp", address="10.0.0.2", port=5600),),
        )
        self.assertEqual(
            encode_packet(echo),
            b'{"type":1,"id":4242,"requestor":"10.0.0.7","services":'
            b'[{"type":"core","protocol":"kcp","address":"10.0.0.2","port":5600}]}',
        )

    def test_empty_fields_are_omitted(self) -> None:
        self.assertEqual(encode_packet(SonarEcho(id=1, requestor="")), b'{"type":1,"id":1}')
        self.assertEqual(encode_packet(SonarPing(id=0, domain="")), b'{"type":0,"id":0}')

    def test_round_trip(self) -> None:
        for packet in (
            SonarPing(id=7, domain="nano"),
            SonarEcho(id=7, requestor="127.0.0.3", services=(CORE, CORE)),
        ):
            self.assertEqual(decode_packet(encode_packet(packet)), packet)

    def test_go_leniency(self) -> None:
        # Go's typed decode: case-insensitive names, unknown fields ignored, absent = zero.
        self.assertEqual(
            decode_packet(b'{"TYPE":0,"Id":3,"Domain":"nano","x":[1]}'), SonarPing(3, "nano")
        )
        self.assertEqual(decode_packet(b'{"domain":"nano"}'), SonarPing(0, "nano"))
        self.assertEqual(decode_packet(b'{"type":1,"id":2,"services":null}'), SonarEcho(2, ""))

    def test_malformed_packets(self) -> None:
        for data in (
            b"",
            b"not json",
            b"[]",
            b'"ping"',
            b'{"type":0,"id":1.5,"domain":"nano"}',
            b'{"type":true,"id":1,"domain":"nano"}',
            b'{"type":"0","id":1,"domain":"nano"}',
            b'{"type":0,"id":1,"domain":5}',
            b'{"type":0,"id":NaN,"domain":"nano"}',
            b'{"type":2,"id":1}',
            b'{"type":0,"id":99999999999999999999,"domain":"nano"}',
            b'{"type":1,"id":1,"services":{}}',
            b'{"type":1,"id":1,"services":[1]}',
            b'{"type":1,"id":1,"services":[{"type":"core","port":70000}]}',
            b'{"type":1,"id":1,"services":[{"type":"core","port":"5600"}]}',
            b'{"type":1,"id":1,"requestor":5}',
            b"\xff\xfe",
            b"[" * 50_000,
            b'{"type":0,"domain":"' + b"x" * MAX_PACKET_SIZE + b'"}',
        ):
            self.assertRaises(DiscoveryPacketError, decode_packet, data)

    def test_oversized_echo_is_refused(self) -> None:
        big = ServiceEntry(type="core", protocol="tls", address="x" * MAX_PACKET_SIZE, port=1)
        self.assertRaises(DiscoveryPacketError, encode_packet, SonarEcho(1, "a", (big,)))

    @given(st.binary(max_size=300))
    def test_arbitrary_bytes_raise_only_packet_errors(self, data: bytes) -> None:
        with contextlib.suppress(DiscoveryPacketError):
            decode_packet(data)

    @given(
        st.dictionaries(
            st.sampled_from(["type", "id", "domain", "requestor", "services", "other"]),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                lambda c: (
                    st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3)
                ),
                max_leaves=8,
            ),
        )
    )
    def test_arbitrary_objects_raise_only_packet_errors(self, document: dict[str, Any]) -> None:
        with contextlib.suppress(DiscoveryPacketError):
            decode_packet(json.dumps(document).encode())

    def test_core_service_picks_the_first_core_entry(self) -> None:
        image = ServiceEntry(type="image", protocol="kcp", address="127.0.0.1", port=1)
        self.assertEqual(core_service(SonarEcho(1, "", (image, CORE))), CORE)
        self.assertIsNone(core_service(SonarEcho(1, "", (image,))))

    def test_core_service_of_a_protocol(self) -> None:
        """Our Cells pick their wire by protocol; a stock Cell takes the first entry."""
        echo = SonarEcho(1, "", (KCP, CORE))
        self.assertEqual(core_service(echo), KCP)
        self.assertEqual(core_service(echo, "tls"), CORE)
        self.assertEqual(core_service(echo, "kcp"), KCP)
        self.assertIsNone(core_service(echo, "quic"))


class TokenBucketTests(SynchronousTestCase):
    def test_burst_then_rate(self) -> None:
        clock = Clock()
        bucket = TokenBucket(clock, rate=2, burst=3)
        self.assertEqual([bucket.take() for _ in range(4)], [True, True, True, False])
        clock.advance(0.5)
        self.assertEqual([bucket.take(), bucket.take()], [True, False])
        clock.advance(100)
        self.assertEqual(sum(bucket.take() for _ in range(10)), 3)

    def test_bad_parameters(self) -> None:
        self.assertRaises(ValueError, TokenBucket, Clock(), 0, 1)
        self.assertRaises(ValueError, TokenBucket, Clock(), 1, 0)

    def test_wait_says_when_the_next_token_comes_and_full_when_all_are_back(self) -> None:
        clock = Clock()
        bucket = TokenBucket(clock, rate=4, burst=2)
        self.assertEqual((bucket.wait(), bucket.full), (0.0, True))
        bucket.take()
        bucket.take()
        self.assertEqual((bucket.wait(), bucket.full), (0.25, False))
        clock.advance(0.25)
        self.assertEqual(bucket.wait(), 0.0)
        clock.advance(0.25)
        self.assertTrue(bucket.full)


class ListenerTests(LogCapture):
    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()
        self.transport = FakeMulticastTransport()
        self.listener = self.make_listener()

    def make_listener(
        self, transport: FakeMulticastTransport | None = None, **overrides: Any
    ) -> DiscoveryListener:
        arguments: dict[str, Any] = {
            "clock": self.clock,
            "domain": "nano",
            "group_address": GROUP,
            "group_port": PORT,
            "listen_address": LISTEN,
            "services": lambda: (CORE,),
            "echoes_per_sender": 2,
            "sender_burst": 3,
        }
        arguments.update(overrides)
        listener = DiscoveryListener(**arguments)
        self.transport = transport or FakeMulticastTransport()
        listener.makeConnection(self.transport)
        return listener

    def ping(
        self, ping_id: int = 4242, domain: str = "nano", source: tuple[str, int] = CELL
    ) -> None:
        self.listener.datagramReceived(encode_packet(SonarPing(ping_id, domain)), source)

    def test_joins_the_group_on_the_listen_interface_only(self) -> None:
        self.assertEqual(self.transport.joined, [(GROUP, LISTEN)])
        self.assertEqual(self.transport.outgoing_interface, LISTEN)

    def test_matching_ping_gets_the_echo(self) -> None:
        self.ping()
        self.assertEqual(
            self.transport.written,
            [
                (
                    b'{"type":1,"id":4242,"requestor":"127.0.0.7","services":'
                    b'[{"type":"core","protocol":"tls","address":"127.0.0.1","port":5600}]}',
                    (GROUP, PORT - 1),
                )
            ],
        )
        self.assertEqual(self.listener.echoes_sent, 1)

    def test_other_domain_is_ignored(self) -> None:
        self.ping(domain="other")
        self.ping(domain="Nano")  # exact, case-sensitive comparison
        self.ping(domain="")
        self.assertEqual(self.transport.written, [])
        self.assertEqual(self.warnings(), [])

    def test_a_flood_of_pings_for_another_domain_is_a_line_a_minute_per_source(self) -> None:
        """One line per ping, the domain quoted whole, wrote 500 MB of log in 40 s (QA pass
        20); the line still tells an operator of a Cell set to another domain."""
        long = "x" * 7_000
        for _ in range(10_000):
            self.ping(domain=long)
        self.clock.advance(60)
        lines = [formatEvent(e) for e in self.events if "domain" in formatEvent(e)]
        self.assertEqual(
            lines,
            [
                f"Discovery ignored a ping for domain {'x' * 64!r}… from 127.0.0.7 (this Core's"
                " domain is 'nano')",
                "9999 more pings for another domain from 127.0.0.7 in the last 60 s (one line"
                " per source every 60 s)",
            ],
        )
        self.assertEqual(self.transport.written, [])

    def test_malformed_packets_are_dropped_with_a_log_line(self) -> None:
        self.listener.datagramReceived(b"{nope", CELL)
        self.listener.datagramReceived(b'{"type":0,"id":1.5,"domain":"nano"}', CELL)
        self.listener.datagramReceived(encode_packet(SonarEcho(1, "x")), CELL)
        self.assertEqual(self.transport.written, [])
        self.assertEqual(self.listener.dropped, 3)
        warnings = self.warnings()
        self.assertEqual(len(warnings), 2)  # the second malformed one is counted, not logged
        self.assertIn("malformed packet from 127.0.0.7", warnings[0])
        self.assertIn("non-ping", warnings[1])
        self.ping()
        self.assertEqual(len(self.transport.written), 1)

    def test_over_deep_packet_is_dropped_with_a_clear_reason(self) -> None:
        """Nested past gojson's limit (and past the parser's stack): one log line, no echo."""
        for depth in (gojson.MAX_DEPTH + 1, 3_000):
            packet = b'{"type":0,"id":1,"domain":"nano","x":' + b"[" * depth + b"]" * depth + b"}"
            self.assertLessEqual(len(packet), MAX_PACKET_SIZE)
            self.listener.datagramReceived(packet, CELL)
        self.assertEqual(self.transport.written, [])
        self.assertEqual(self.listener.dropped, 2)
        for warning in self.warnings():
            self.assertIn(f"nested deeper than {gojson.MAX_DEPTH} levels", warning)
        self.ping()
        self.assertEqual(len(self.transport.written), 1)

    def test_malformed_flood_logs_one_line_per_source_per_minute_with_the_count(self) -> None:
        for _ in range(10_000):
            self.listener.datagramReceived(b"garbage", CELL)
        self.listener.datagramReceived(b"garbage", ("127.0.0.8", 5599))
        self.assertEqual(self.listener.dropped, 10_001)
        self.assertEqual(len(self.warnings()), 2)  # one per source
        self.clock.advance(60)
        warnings = self.warnings()
        self.assertEqual(len(warnings), 3)
        self.assertEqual(
            warnings[2],
            "9999 more malformed discovery packets from 127.0.0.7 in the last 60 s"
            " (one line per source every 60 s)",
        )
        self.listener.datagramReceived(b"garbage", CELL)
        self.assertEqual(len(self.warnings()), 4)  # a new minute: a new line

    def ids_echoed(self) -> list[int]:
        return [json.loads(packet)["id"] for packet, _ in self.transport.written]

    def test_a_senders_pings_beyond_its_budget_wait_and_only_the_latest_is_answered(self) -> None:
        for ping_id in range(10):
            self.ping(ping_id)
        self.assertEqual(self.ids_echoed(), [0, 1, 2])  # the burst
        self.assertEqual((self.listener.pacer.superseded, self.listener.dropped), (6, 0))
        self.clock.advance(1.0)  # one token (0.5 s), then a jitter of less than 0.5 s
        self.assertEqual(self.ids_echoed(), [0, 1, 2, 9])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.warnings(), [])

    def test_each_sender_has_its_own_budget(self) -> None:
        for ping_id in range(10):
            self.ping(ping_id, source=CELL)
        self.ping(77, source=("127.0.0.8", 40000))
        self.ping(78, source=("127.0.0.7", 40001))  # another pinger on the same host
        self.assertEqual(self.ids_echoed(), [0, 1, 2, 77, 78])

    def test_a_flood_from_one_sender_costs_its_budget_only(self) -> None:
        """100,000 pings a second from one address and port: at most 2/s (+3) echoes, one
        timer, and a Cell pinging meanwhile is answered at once."""
        for _ in range(5):
            for ping_id in range(100_000 // 50):
                self.ping(ping_id, source=("10.9.9.9", 6666))
            for _ in range(50):
                self.clock.advance(0.02)
        flood = len(self.transport.written)
        self.assertLessEqual(flood, 3 + 2 * 5 + 1)
        self.assertLessEqual(len(self.clock.getDelayedCalls()), 1)
        self.ping(4242)
        self.assertEqual(self.ids_echoed()[-1], 4242)

    def test_senders_are_bounded_and_idle_ones_forgotten(self) -> None:
        self.listener = self.make_listener(max_senders=2)
        self.ping(1, source=("10.0.0.1", 1))
        self.ping(2, source=("10.0.0.2", 2))
        self.ping(3, source=("10.0.0.3", 3))  # two senders are paced: refused
        self.assertEqual(self.ids_echoed(), [1, 2])
        self.assertIn("too many pinging senders", self.warnings()[0])
        self.clock.advance(0.5)  # their budgets are full again: they are idle
        self.ping(3, source=("10.0.0.3", 3))
        self.assertEqual(self.ids_echoed(), [1, 2, 3])
        self.assertEqual(self.listener.pacer.senders, 1)

    def test_a_waiting_ping_is_not_answered_once_nothing_is_advertised(self) -> None:
        advertised = [CORE]
        self.listener = self.make_listener(services=lambda: tuple(advertised))
        for ping_id in range(5):
            self.ping(ping_id)
        advertised.clear()  # Core's links stopped
        self.clock.advance(2)
        self.assertEqual(self.ids_echoed(), [0, 1, 2])

    def test_stopping_drops_waiting_pings_and_their_timers(self) -> None:
        for ping_id in range(5):
            self.ping(ping_id)
        self.listener.doStop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_services_are_advertised_in_order(self) -> None:
        self.listener = self.make_listener(services=lambda: (KCP, CORE))
        self.ping()
        echo = decode_packet(self.transport.written[0][0])
        assert isinstance(echo, SonarEcho)
        self.assertEqual(echo.services, (KCP, CORE))

    def test_send_failure_is_logged_and_the_listener_keeps_serving(self) -> None:
        def unreachable(packet: bytes, addr: object = None) -> None:
            raise OSError(101, "Network is unreachable")

        self.transport.write = unreachable  # type: ignore[method-assign]
        self.ping()
        self.assertEqual(self.listener.echoes_sent, 0)
        self.assertIn("unreachable", self.warnings()[0])
        del self.transport.write
        self.ping()
        self.assertEqual(self.listener.echoes_sent, 1)

    def test_service_given_late(self) -> None:
        endpoint: list[ServiceEntry] = []
        self.listener = self.make_listener(services=lambda: tuple(endpoint))
        self.ping()
        self.assertEqual(self.transport.written, [])
        endpoint.append(CORE)
        self.ping()
        self.assertEqual(len(self.transport.written), 1)

    def test_join_failure_is_logged(self) -> None:
        failing = FakeMulticastTransport()

        def refuse(addr: str, interface: str = "") -> Deferred[None]:
            d: Deferred[None] = Deferred()
            d.errback(OSError("no such device"))
            return d

        failing.joinGroup = refuse  # type: ignore[method-assign]
        self.make_listener(failing)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


class StockPinger:
    """sonar's ``Pinger.Query``: ping with a fresh id, and ping again with a fresh id for every
    datagram read that does not carry the latest id (foreign echoes and its own stale ones)."""

    def __init__(self, clock: Clock, core: DiscoveryListener, address: tuple[str, int]) -> None:
        self.clock = clock
        self.core = core
        self.address = address
        self.rng = random.Random(address[1])
        self.latest = -1
        self.pings = 0
        self.found: float | None = None
        self.started = clock.seconds()

    def ping(self) -> None:
        self.latest = self.rng.randrange(0xFFFF)
        self.pings += 1
        packet = encode_packet(SonarPing(self.latest, "nano"))
        self.clock.callLater(LATENCY, self.core.datagramReceived, packet, self.address)

    def read(self, packet: bytes) -> None:
        if self.found is not None or self.clock.seconds() - self.started > QUERY_TIMEOUT:
            return  # done, or given up (a stock Cell exits then)
        if decode_packet(packet).id == self.latest:
            self.found = self.clock.seconds() - self.started
        else:
            self.ping()


#: One way through loopback or a LAN switch, and a stock pinger's query timeout at start.
LATENCY = 0.0001
QUERY_TIMEOUT = 5.0


class GroupTransport(FakeMulticastTransport):
    """Core's socket: each echo reaches every pinger listening on the group, after LATENCY."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.pingers: list[StockPinger] = []

    def write(self, packet: bytes, addr: Any = None) -> None:
        super().write(packet, addr)
        for pinger in self.pingers:
            self.clock.callLater(LATENCY, pinger.read, packet)


class StockPingersTests(SynchronousTestCase):
    """Cells starting together: their pingers ping each other's echoes (issue #13)."""

    def start(self, count: int) -> tuple[DiscoveryListener, list[StockPinger]]:
        clock = Clock()
        listener = DiscoveryListener(
            clock=clock,
            domain="nano",
            group_address=GROUP,
            group_port=PORT,
            listen_address=LISTEN,
            services=lambda: (KCP, CORE),
            rng=random.Random(7),
        )
        network = GroupTransport(clock)
        listener.makeConnection(network)
        pingers = [
            StockPinger(clock, listener, (f"10.0.0.{i + 1}", 40000 + i)) for i in range(count)
        ]
        network.pingers = pingers
        for pinger in pingers:
            pinger.ping()
        while clock.getDelayedCalls():
            clock.advance(
                min(call.getTime() for call in clock.getDelayedCalls()) - clock.seconds()
            )
        return listener, pingers

    def test_three_stock_pingers_starting_together_all_find_core(self) -> None:
        listener, pingers = self.start(3)
        found = [pinger.found for pinger in pingers]
        self.assertNotIn(None, found)
        self.assertLess(max(f for f in found if f is not None), 1.0)
        # The storm dies down: a few dozen pings, not tens of thousands.
        self.assertLess(sum(pinger.pings for pinger in pingers), 100)
        self.assertLessEqual(listener.echoes_sent, 3 * (SENDER_BURST + 2 * ECHOES_PER_SENDER))

    def test_ten_stock_pingers_starting_together_all_find_core(self) -> None:
        _, pingers = self.start(10)
        self.assertNotIn(None, [pinger.found for pinger in pingers])
        self.assertLess(max(pinger.found or 0 for pinger in pingers), 2.0)


class PingerTests(SynchronousTestCase):
    def test_an_interface_must_be_named(self) -> None:
        with self.assertRaises(ValueError) as caught:
            DiscoveryPinger(
                clock=Clock(), domain="nano", group_address=GROUP, group_port=PORT, interface=""
            )
        self.assertIn("interface", str(caught.exception))

    def setUp(self) -> None:
        self.clock = Clock()
        self.transport = FakeMulticastTransport()
        self.pinger = DiscoveryPinger(
            clock=self.clock,
            domain="nano",
            group_address=GROUP,
            group_port=PORT,
            interface=LISTEN,
            rng=random.Random(4),
        )
        self.pinger.makeConnection(self.transport)

    def sent_ids(self) -> list[int]:
        return [json.loads(packet)["id"] for packet, _ in self.transport.written]

    def echo(self, ping_id: int) -> None:
        packet = encode_packet(SonarEcho(ping_id, "127.0.0.7", (CORE,)))
        self.pinger.datagramReceived(packet, (LISTEN, PORT))

    def test_joins_and_pings_the_group(self) -> None:
        self.assertEqual(self.transport.joined, [(GROUP, LISTEN)])
        self.assertEqual(self.transport.outgoing_interface, LISTEN)
        self.pinger.query()
        [(packet, address)] = self.transport.written
        self.assertEqual(address, (GROUP, PORT))
        ping = decode_packet(packet)
        assert isinstance(ping, SonarPing)
        self.assertEqual(ping.domain, "nano")
        self.assertTrue(0 <= ping.id < 0xFFFF)

    def test_matching_echo_fires(self) -> None:
        d = self.pinger.query()
        [ping_id] = self.sent_ids()
        self.echo(ping_id + 1)
        self.pinger.datagramReceived(b"garbage", (LISTEN, PORT))
        self.pinger.datagramReceived(encode_packet(SonarPing(ping_id, "nano")), (LISTEN, PORT))
        self.assertNoResult(d)
        self.echo(ping_id)
        echo = self.successResultOf(d)
        self.assertEqual((echo.requestor, core_service(echo)), ("127.0.0.7", CORE))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_resends_the_same_ping_until_timeout(self) -> None:
        d = self.pinger.query(timeout=5, resend=1)
        self.clock.pump([1, 1, 1, 1, 0.5])
        ids = self.sent_ids()
        self.assertEqual(len(ids), 5)
        self.assertEqual(len(set(ids)), 1)
        self.clock.advance(0.5)
        self.failureResultOf(d, DiscoveryTimeout)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.echo(ids[0])  # late echo: nobody is waiting, nothing happens

    def test_send_failure_fails_the_query_at_once(self) -> None:
        def unreachable(packet: bytes, addr: object = None) -> None:
            raise OSError(101, "Network is unreachable")

        self.transport.write = unreachable  # type: ignore[method-assign]
        d = self.pinger.query()
        self.failureResultOf(d, OSError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_stops_the_query(self) -> None:
        d = self.pinger.query()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class FindCoreTests(SynchronousTestCase):
    def test_find_core_queries_and_stops_listening(self) -> None:
        reactor = FakeMulticastReactor()
        clock = Clock()
        d = find_core(reactor, clock, interface=LISTEN, timeout=5)  # type: ignore[arg-type]
        [(port, pinger, interface, multiple, transport)] = reactor.listening
        self.assertEqual((port, interface, multiple), (PORT - 1, GROUP, True))
        ping_id = json.loads(transport.written[0][0])["id"]
        pinger.datagramReceived(
            encode_packet(SonarEcho(ping_id, "127.0.0.9", (CORE,))), (LISTEN, PORT)
        )
        self.assertEqual(self.successResultOf(d).requestor, "127.0.0.9")
        self.assertTrue(transport.stopped)

    def test_find_core_timeout_stops_listening(self) -> None:
        reactor = FakeMulticastReactor()
        clock = Clock()
        d = find_core(reactor, clock, interface=LISTEN, timeout=5)  # type: ignore[arg-type]
        clock.advance(5)
        self.failureResultOf(d, DiscoveryTimeout)
        self.assertTrue(reactor.listening[0][4].stopped)
