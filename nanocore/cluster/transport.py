"""The Cell link: handshake, keepalive, loss detection and graceful close over a framing.

Two layers, so that a KCP adapter for stock Go Cells (cell-protocol.md §2, §7.3) can be added
without touching anything above it:

- a *wire* (:class:`FrameWire`) carries whole JSON documents, one per frame. The one shipped here
  is :class:`FramedLinkProtocol`: TLS over TCP with a 4-byte big-endian length prefix and a
  maximum frame size checked before the frame is buffered.
- a :class:`LinkSession` runs the endpoint rules of §2.6-§2.8 on top of any wire, with every
  timer on an injected clock: the ``ConnectionOpenedEvent`` handshake, keepalive every 3 s, lost
  after 9 s and disconnected after 15 s of silence, ``ConnectionClosedEvent`` on close.

What sits above a link (the :class:`~nanocore.cluster.cells.CellRegistry` on Core, a FakeCell on
the Cell side) implements :class:`LinkHandler`.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from OpenSSL import SSL
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, ITransport
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from nanocore.clocks import STALL_GRACE, overdue_from_own_stall, wall_seconds
from nanocore.cluster._fastcodec import decode, encode
from nanocore.cluster.admission import FairShare, say_over_descriptors
from nanocore.cluster.message import Message, MessageError, MessageID, ParamKey
from nanocore.openfiles import Descriptors
from nanocore.ratelog import RateLimitedLog

#: Seconds between two keepalives on a connected link (framework ``KeepAliveInterval``).
KEEPALIVE_INTERVAL = 3.0
#: Seconds of silence after which a peer is *lost* (``LostThresholdInterval``).
LOST_AFTER = 9.0
#: Seconds of silence after which a peer is disconnected (``DisconnectThresholdInterval``).
DISCONNECT_AFTER = 15.0
#: Seconds a new link may take to complete the handshake before it is dropped.
HANDSHAKE_TIMEOUT = 10.0
#: Connections Core accepts at once that have not completed the handshake; more are refused
#: (the KCP link's bound).
MAX_HANDSHAKING = 256
#: The same for the TLS link, whose places are shared fairly among source addresses
#: (``admission``): enough for a whole cluster of 1,000 Cells dialing a restarted Core at once
#: (with 256 they linked in waves, one every reconnect delay). A TLS connection still
#: handshaking costs ~50 KB, so a flood holding every place costs ~50 MB and 1,024 descriptors.
MAX_TLS_HANDSHAKING = 1024
#: Seconds an orderly close may take to flush before the connection is aborted.
CLOSE_GRACE = 3.0
#: Largest frame accepted or sent: the Go endpoint's receive buffer (2 MiB).
MAX_FRAME_SIZE = 2 << 20

#: Frames parsed from one read before the reactor gets a turn (see ``FramedLinkProtocol``).
FRAMES_PER_TURN = 16


class ServiceType(enum.IntEnum):
    """The service type carried in ``ConnectionOpenedEvent`` (§2.6)."""

    CORE = 0
    CELL = 1
    IMAGE = 2
    ROUTER = 3


class LinkState(enum.Enum):
    """Where a link is in its life."""

    HANDSHAKING = "handshaking"
    CONNECTED = "connected"
    LOST = "lost"
    CLOSED = "closed"


class LinkError(Exception):
    """A message could not be sent on a link."""


class LinkClosed(LinkError):
    """The link is not (or no longer) connected."""


class FrameTooLarge(LinkError):
    """An outgoing message is larger than the peer would accept."""


class FrameWire(Interface):
    """The framing seam: carries whole encoded messages, one per frame, to one peer."""

    address = Attribute("The peer's IP address (str).")

    def write_frame(frame: bytes) -> None:
        """Send one encoded message."""

    def close() -> None:
        """Flush what was written, then close; abort if that takes too long."""

    def abort() -> None:
        """Drop the connection now, discarding anything unsent."""


class CellLink(Interface):
    """What the rest of Core may do with a link (docs/architecture.md); LinkSession provides it."""

    name = Attribute("The peer's name (str): verified by its certificate, or as it claimed.")
    address = Attribute("The peer's IP address (str).")
    verified = Attribute("Whether the name was checked against the peer's certificate (bool).")

    def send(message: Message) -> None:
        """Send one message or raise :class:`LinkError`."""

    def close() -> None:
        """Say goodbye and close."""


class LinkHandler(Interface):
    """What sits above links: told about each link's life and its application messages."""

    def link_connected(link: LinkSession) -> None:
        """The handshake completed: ``link.name`` is now known and verified."""

    def message_received(link: LinkSession, message: Message) -> None:
        """An application message (anything but connection control) arrived."""

    def link_lost(link: LinkSession) -> None:
        """The peer has been silent for ``LOST_AFTER`` seconds."""

    def link_recovered(link: LinkSession) -> None:
        """A lost peer spoke again."""

    def link_closed(link: LinkSession, gracefully: bool) -> None:
        """The link is gone; ``gracefully`` only if the peer said ``ConnectionClosedEvent``."""


def opened_event(name: str, service_type: ServiceType) -> Message:
    """The handshake message announcing ``name`` of ``service_type``."""
    return Message(
        id=MessageID.ConnectionOpenedEvent,
        string_params={ParamKey.Name: name},
        uint_params={ParamKey.Type: int(service_type)},
    )


#: Connection control messages, consumed by the link itself.
_CONTROL_IDS = frozenset(
    int(i)
    for i in (
        MessageID.ConnectionKeepAliveEvent,
        MessageID.ConnectionClosedEvent,
        MessageID.ConnectionOpenedEvent,
    )
)
_KEEPALIVE_FRAME = encode(Message(id=MessageID.ConnectionKeepAliveEvent))
_CLOSED_FRAME = encode(Message(id=MessageID.ConnectionClosedEvent))


@implementer(CellLink)
class LinkSession:
    """One link's endpoint state machine, independent of the framing below it.

    The dialing side announces itself first; the accepting side reads the peer's announcement,
    checks it against the authenticated identity (``identify``) and answers with its own.
    Any received frame counts as a sign of life (the original counts only keepalives).
    ``handshake_over`` is told when the link leaves the handshake, connected or not (the
    listening side bounds the links still handshaking); ``noise`` rate-limits the log lines
    of links dropped before they said who they are, which anyone can cause.
    """

    log = Logger()

    def __init__(
        self,
        wire: FrameWire,
        handler: LinkHandler,
        clock: IReactorTime,
        *,
        local_name: str,
        local_type: ServiceType,
        peer_type: ServiceType,
        dialer: bool,
        identify: Callable[[], str | None] | None = None,
        handshake_over: Callable[[LinkSession], None] | None = None,
        noise: RateLimitedLog | None = None,
    ) -> None:
        self._wire = wire
        self._handler = handler
        self._clock = clock
        self._local_name = local_name
        self._local_type = local_type
        self._peer_type = peer_type
        self._dialer = dialer
        self._identify = identify
        self._handshake_over = handshake_over
        self._noise = noise
        self.name = ""
        self.state = LinkState.HANDSHAKING
        #: Whether the handler keeps this connected link from the rest of Core for now
        #: (:class:`~nanocore.cluster.kcp.link.NameGuard`, while a claim proves its address).
        #: Anyone can open and end such links, so their end is logged per source.
        self.withheld = False
        self._last_heard = clock.seconds()
        self._watchdog: IDelayedCall | None = None
        #: The last silence check ran late and looked again rather than judge.
        self._rechecking = False
        self._keepalive = LoopingCall(self.send_keepalive)
        self._keepalive.clock = clock

    @property
    def address(self) -> str:
        """The peer's IP address."""
        return self._wire.address

    @property
    def wire(self) -> FrameWire:
        """The wire below: a TLS connection's framing, or a KCP conversation."""
        return self._wire

    @property
    def verified(self) -> bool:
        """Whether the peer's name is its certificate's (TLS), not only its claim (KCP)."""
        return self._identify is not None

    @property
    def connected(self) -> bool:
        """True once the handshake is done and until the link closes (lost included)."""
        return self.state in (LinkState.CONNECTED, LinkState.LOST)

    # -- driven by the wire -------------------------------------------------------------------

    def start(self) -> None:
        """The wire is up: announce ourselves if dialing, and bound the handshake."""
        self._watchdog = self._clock.callLater(HANDSHAKE_TIMEOUT, self._handshake_expired)
        if self._dialer:
            self._wire.write_frame(encode(opened_event(self._local_name, self._local_type)))

    def frame_received(self, frame: bytes) -> None:
        """One whole frame arrived from the peer."""
        if self.state is LinkState.CLOSED:
            return
        try:
            message = decode(frame, sender=self.name)
        except MessageError as e:
            self.protocol_error(f"malformed frame: {e}")
            return
        if self.state is LinkState.HANDSHAKING:
            self._handshake(message)
            return
        self._last_heard = self._clock.seconds()
        if self.state is LinkState.LOST:
            self.state = LinkState.CONNECTED
            self.log.info(
                "link {name} ({address}) recovered", name=self.name, address=self.address
            )
            self._handler.link_recovered(self)
        if message.id not in _CONTROL_IDS:  # the common case: one set lookup
            self._handler.message_received(self, message)
            return
        if message.id == MessageID.ConnectionKeepAliveEvent:
            return
        if message.id == MessageID.ConnectionClosedEvent:
            self.log.info(
                "{name} ({address}) closed the link", name=self.name, address=self.address
            )
            self._finish(gracefully=True)
            self._wire.close()
            return
        self.log.warn("{name} repeated its handshake; ignored", name=self.name)

    def protocol_error(self, reason: str) -> None:
        """The peer broke the framing or the message format: drop only this link."""
        # Before the handshake, anyone who can reach the port can cause this at will.
        handshaking = self.state is LinkState.HANDSHAKING
        self._drop(reason, "dropped handshakes" if handshaking else None)

    def refuse(self, reason: str) -> None:
        """Core will not give the peer the name it claims (another link holds it): drop this
        link. Anyone can make a claim, so it is logged per source, as a dropped handshake."""
        self._drop(reason, "refused name claims")

    def _drop(self, reason: str, per_source: str | None) -> None:
        """Drop the link, logged once a minute per source and ``per_source`` kind if named."""
        if self.state is LinkState.CLOSED:
            return
        name = self.name or "(unnamed)"
        if per_source is not None and self._noise is not None:
            self._noise.warn(
                per_source,
                self.address,
                "dropping link {name} ({source}): {reason}",
                name=name,
                reason=reason,
            )
        else:
            self.log.warn(
                "dropping link {name} ({address}): {reason}",
                name=name,
                address=self.address,
                reason=reason,
            )
        self._finish(gracefully=False)
        self._wire.abort()

    def wire_lost(self, reason: Failure | None = None) -> None:
        """The connection below is gone (a goodbye, or Core's own close, came first if any);
        ``reason``, why. A Cell refused by TLS itself (its certificate not issued by the
        cluster CA, expired, or not yet valid by Core's clock) was dropped without a word
        (QA pass 22: a Cell restarted while Core's clock was 10 min behind never linked, and
        the log said nothing): said once a minute per source, with Core's time."""
        tls_failure = reason is not None and reason.check(SSL.Error) is not None
        if self.state is LinkState.HANDSHAKING and tls_failure and self._noise is not None:
            assert reason is not None
            self._noise.warn(
                "failed TLS handshakes",
                self.address,
                "a Cell link from {source} failed its TLS handshake: {reason} (by Core's clock,"
                " {now} UTC, a certificate must be issued by the cluster CA and valid)",
                reason=_openssl_reason(reason.value),
                now=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall_seconds(self._clock))),
            )
        if self.connected and self.withheld and self._noise is not None:
            self._noise.warn(
                "unproven links ended",
                self.address,
                "link {name} ({source}) ended before it proved its address",
                name=self.name,
            )
        elif self.connected:
            self.log.warn(
                "link {name} ({address}) dropped: the connection ended without a goodbye",
                name=self.name,
                address=self.address,
            )
        self._finish(gracefully=False)

    # -- the CellLink face --------------------------------------------------------------------

    def send(self, message: Message) -> None:
        """Send one message; raises :class:`LinkError` rather than dropping it silently."""
        if not self.connected:
            raise LinkClosed(f"link to {self.name or self.address} is not connected")
        frame = encode(message)
        if len(frame) > MAX_FRAME_SIZE:
            raise FrameTooLarge(f"message {message.id} is {len(frame)} bytes")
        self._wire.write_frame(frame)

    def close(self) -> None:
        """Say goodbye (``ConnectionClosedEvent``) and close the wire."""
        if self.state is LinkState.CLOSED:
            return
        if self.connected:
            self._wire.write_frame(_CLOSED_FRAME)
        self._finish(gracefully=False)
        self._wire.close()

    # -- internals ----------------------------------------------------------------------------

    def _handshake(self, message: Message) -> None:
        claimed = message.string_params.get(ParamKey.Name)
        claimed_type = message.uint_params.get(ParamKey.Type)
        if message.id != MessageID.ConnectionOpenedEvent or claimed is None:
            self.protocol_error(f"expected ConnectionOpenedEvent, got message {message.id}")
            return
        if claimed_type != self._peer_type:
            self.protocol_error(
                f"{claimed!r} is service type {claimed_type}, not {self._peer_type}"
            )
            return
        if self._identify is not None:
            try:
                verified = self._identify()
            except Exception as e:
                self.log.failure("reading the peer certificate failed")
                self.protocol_error(f"cannot read the peer certificate: {e}")
                return
            if verified is None:
                self.protocol_error(f"{claimed!r} presented no verified certificate")
                return
            if verified != claimed:
                self.protocol_error(f"certificate is for {verified!r} but peer claims {claimed!r}")
                return
        self.name = claimed
        if not self._dialer:
            self._wire.write_frame(encode(opened_event(self._local_name, self._local_type)))
        self.state = LinkState.CONNECTED
        if self._handshake_over is not None:
            self._handshake_over(self)
        self._last_heard = self._clock.seconds()
        self._cancel_watchdog()
        self._watchdog = self._clock.callLater(LOST_AFTER, self._watch)
        self._keepalive.start(KEEPALIVE_INTERVAL, now=False)
        self._handler.link_connected(self)  # which logs it if it takes it

    def _handshake_expired(self) -> None:
        due = self._watchdog.getTime() if self._watchdog is not None else None
        self._watchdog = None
        if overdue_from_own_stall(self._clock, due) and not self._rechecking:
            # Core itself did not run: the handshake may be waiting, unread (QA pass 22: a
            # 15 s stop reset every Cell link handshaking).
            self._rechecking = True
            self._watchdog = self._clock.callLater(STALL_GRACE, self._handshake_expired)
            return
        self._rechecking = False
        self.protocol_error(f"no handshake within {HANDSHAKE_TIMEOUT} s")

    def send_keepalive(self) -> None:
        """Every ``KEEPALIVE_INTERVAL``, and whenever the wire wants the peer to answer."""
        # Sent while lost too: the original stops, so both ends then lose each other (§2.8).
        if self.connected:
            self._wire.write_frame(_KEEPALIVE_FRAME)

    def _watch(self) -> None:
        """Fires at the next silence deadline; cheap because receipt only stamps a time."""
        due = self._watchdog.getTime() if self._watchdog is not None else None
        self._watchdog = None
        now = self._clock.seconds()
        if overdue_from_own_stall(self._clock, due) and not self._rechecking:
            # Core itself did not run: every link would be judged silent at once (all 60 of a
            # cluster after a 20 s stop, QA pass 16) before what they sent is read.
            self._rechecking = True
            self._watchdog = self._clock.callLater(STALL_GRACE, self._watch)
            return
        self._rechecking = False
        silent = now - self._last_heard
        if self.state is LinkState.CONNECTED and silent >= LOST_AFTER:
            self.state = LinkState.LOST
            self.log.warn(
                "link {name} ({address}) lost: silent for {silent:.1f} s",
                name=self.name,
                address=self.address,
                silent=silent,
            )
            self._handler.link_lost(self)
        if self.state is LinkState.LOST and silent >= DISCONNECT_AFTER:
            self.log.warn(
                "link {name} ({address}) disconnected: silent for {silent:.1f} s",
                name=self.name,
                address=self.address,
                silent=silent,
            )
            self.close()
            return
        if self.state is LinkState.CLOSED:
            return
        limit = LOST_AFTER if self.state is LinkState.CONNECTED else DISCONNECT_AFTER
        self._watchdog = self._clock.callLater(max(0.0, limit - silent), self._watch)

    def _cancel_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None

    def _finish(self, gracefully: bool) -> None:
        """Enter CLOSED once; tell the handler only if the link had been connected."""
        if self.state is LinkState.CLOSED:
            return
        was_connected = self.connected
        was_handshaking = self.state is LinkState.HANDSHAKING
        self.state = LinkState.CLOSED
        if was_handshaking and self._handshake_over is not None:
            self._handshake_over(self)
        self._cancel_watchdog()
        if self._keepalive.running:
            self._keepalive.stop()
        if was_connected:
            self._handler.link_closed(self, gracefully)


def _host_of(address: IAddress) -> str:
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else str(address)


@implementer(FrameWire)
class FramedLinkProtocol(Int32StringReceiver):
    """The TLS/TCP wire: Twisted's 4-byte big-endian length-prefixed frames, one message each.

    ``Int32StringReceiver`` refuses a length above ``MAX_LENGTH`` from the prefix alone, before
    any of that frame is buffered; here that drops the link. One addition: a read holding many
    frames is parsed ``FRAMES_PER_TURN`` at a time, reading paused in between, so the reactor
    gets a turn. What the frames handled so far made us write then leaves at once, and the peer
    works on it while we parse the rest (a window of requests no longer travels as one clump
    that each end turns around while the other waits), and other links get their turn. Unparsed
    input never grows beyond one read. Where the transport names no reactor (in-memory test
    transports) everything is parsed at once.

    The receiver re-joins its buffer on every read of a partial frame (twisted/twisted#6358): a
    2 MiB frame in 16 KiB TLS records costs ~5 ms more than in one read. Frames here are small.
    """

    MAX_LENGTH = MAX_FRAME_SIZE
    log = Logger()

    def __init__(
        self, session_factory: Callable[[FramedLinkProtocol], LinkSession], clock: IReactorTime
    ) -> None:
        self._session_factory = session_factory
        self._clock = clock
        self._abort_call: IDelayedCall | None = None
        self._closed_waiters: list[Deferred[None]] | None = []
        self.session: LinkSession | None = None
        #: Nothing more is parsed: the link is closed, or its peer broke the framing.
        self._stopped = False
        #: Frames handed to the session since the reactor last had a turn, and whether that
        #: made a full turn (parsing paused until the reactor has had its turn).
        self._frames_this_turn = 0
        self._turn_over = False
        #: The parse continued at the reactor's next turn, if one is due.
        self._next_turn: IDelayedCall | None = None

    def when_closed(self) -> Deferred[None]:
        """Fires once the connection is gone (at once if it already is)."""
        if self._closed_waiters is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closed_waiters.append(d)
        return d

    @property
    def address(self) -> str:
        return _host_of(self.transport.getPeer()) if self.transport is not None else ""

    def connectionMade(self) -> None:
        # Small control messages must not wait for Nagle's algorithm (and delayed ACKs).
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if callable(no_delay):
            no_delay(True)
        self.session = self._session_factory(self)
        self.session.start()

    def dataReceived(self, data: bytes) -> None:
        if self._stopped:
            return
        self._frames_this_turn = 0
        super().dataReceived(data)  # calls stringReceived per frame until it pauses
        if self._turn_over:
            self._turn_over = False
            self._yield_turn()

    def stringReceived(self, frame: bytes) -> None:
        session = self.session
        assert session is not None
        session.frame_received(frame)
        if session.state is LinkState.CLOSED:  # that frame ended the link: parse no more
            self._stop_parsing()
            return
        self._frames_this_turn += 1
        if self._frames_this_turn == FRAMES_PER_TURN and self._turns() is not None:
            self._turn_over = True
            self.paused = True  # ends Int32StringReceiver's loop after this frame

    def lengthLimitExceeded(self, length: int) -> None:
        """An oversized frame: drop the link, and parse nothing more that arrives on it."""
        self._stop_parsing()
        assert self.session is not None
        self.session.protocol_error(f"frame of {length} bytes exceeds {self.MAX_LENGTH}")

    def _turns(self) -> IReactorTime | None:
        reactor = getattr(self.transport, "reactor", None)
        return reactor if IReactorTime.providedBy(reactor) else None

    def _yield_turn(self) -> None:
        """Pause reading, and parse on at the reactor's next turn if anything is left."""
        self.paused = False
        if self._stopped or not self.recvd:  # nothing left to parse, or to parse it for
            return
        turns = self._turns()
        assert turns is not None and self.transport is not None
        self.pauseProducing()
        self._next_turn = turns.callLater(0, self._resume)

    def _resume(self) -> None:
        self._next_turn = None
        if not self._stopped and self.transport is not None:
            self.resumeProducing()  # parses what is buffered (dataReceived(b""))

    def _stop_parsing(self) -> None:
        self._stopped = True
        self.paused = True

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._stop_parsing()
        if self._next_turn is not None and self._next_turn.active():
            self._next_turn.cancel()
        self._next_turn = None
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        if self.session is not None:
            self.session.wire_lost(reason)
        waiters, self._closed_waiters = self._closed_waiters or [], None
        for d in waiters:
            d.callback(None)

    def write_frame(self, frame: bytes) -> None:
        self.sendString(frame)

    def close(self) -> None:
        if self.transport is None or self._abort_call is not None:
            return
        self.transport.loseConnection()
        self._abort_call = self._clock.callLater(CLOSE_GRACE, self.abort)

    def abort(self) -> None:
        self._abort_call = None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


def _openssl_reason(error: BaseException | None) -> str:
    """OpenSSL's reasons in an ``SSL.Error`` (a list of (library, function, reason))."""
    args = getattr(error, "args", ())
    reasons = (
        [entry[-1] for entry in args[0] if entry] if args and isinstance(args[0], list) else []
    )
    return "; ".join(str(r) for r in reasons if r) or str(error)


def transport_of(wire: FramedLinkProtocol) -> ITransport:
    """The transport under a wire, for identity checks (the TLS peer certificate)."""
    assert wire.transport is not None
    return wire.transport


class CellLinkFactory(Factory):
    """Core's listening side: every accepted connection becomes a Cell link.

    ``identify`` returns the Cell name bound to the connection's verified client certificate
    (``nanocore.pki.peer_cell_name``) or None; the Cell's claimed name must equal it.

    Until a connection completes the handshake it holds one of ``max_handshaking`` places,
    shared fairly among source addresses (:mod:`nanocore.cluster.admission`); a connection
    without a place is refused (``buildProtocol`` returns None, so the port closes it at once;
    under TLS, :func:`nanocore.tlsserver.tls_server_factory` passes the refusal through).
    Connected Cells hold none.
    """

    log = Logger()

    def __init__(
        self,
        handler: LinkHandler,
        clock: IReactorTime,
        core_name: str,
        identify: Callable[[ITransport], str | None],
        max_handshaking: int = MAX_TLS_HANDSHAKING,
        quiet: Callable[[], object] | None = None,
        descriptors: Descriptors | None = None,
    ) -> None:
        """``quiet`` is told when the last connection still handshaking is done (a wave of
        Cells has linked: what their handshakes freed may be returned, ``services.memory``);
        ``descriptors`` counts every port's connections against the open-file limit."""
        self._descriptors = descriptors
        self._handler = handler
        self._quiet = quiet
        self._clock = clock
        self._core_name = core_name
        self._identify = identify
        self._waiting: FairShare[FramedLinkProtocol] = FairShare(max_handshaking)
        self._noise = RateLimitedLog(self.log, clock)
        #: Connections not yet closed, so that a stopping Core can wait for them.
        self.connections: set[FramedLinkProtocol] = set()
        #: Connections refused because their source already held its share of the places.
        self.refused = 0
        #: Handshaking connections dropped to make room for a source holding fewer places.
        self.evicted = 0
        #: Core is closing every link: new connections are refused meanwhile.
        self._closing = False

    def handshaking(self) -> int:
        """Connections that have not completed the handshake (not yet a known Cell)."""
        return len(self._waiting)

    def buildProtocol(self, addr: IAddress | None) -> FramedLinkProtocol | None:
        if self._closing:
            return None
        # Until its handshake completes a connection is nobody; a flood of them must not
        # exhaust Core's memory or file descriptors, nor keep a Cell from another place out.
        source = _host_of(addr) if addr is not None else "?"
        descriptors = self._descriptors
        over = descriptors is not None and descriptors.full()
        decision = self._waiting.make_room(source, full=over)
        if not decision.admitted and descriptors is not None and over:
            self.refused += 1
            say_over_descriptors(descriptors, source, self._noise, "Cell link")
            return None
        if not decision.admitted:
            self.refused += 1
            self._noise.warn(
                "refused Cell links",
                source,
                "refused a Cell link from {source}: {held} of the {count} connections still"
                " handshaking are from there",
                held=self._waiting.held_by(source),
                count=len(self._waiting),
            )
            return None
        if decision.evicted is not None:
            self.evicted += 1
            self._noise.warn(
                "handshaking connections dropped for others",
                decision.evicted_source,
                "dropped a connection from {source} still handshaking, to make room for one"
                " from {newcomer}",
                newcomer=source,
            )
            decision.evicted.abort()
        protocol = FramedLinkProtocol(self._new_session, self._clock)
        self._waiting.add(source, protocol)
        self.connections.add(protocol)
        protocol.when_closed().addCallback(lambda _: self._forget(protocol))
        return protocol

    def stopFactory(self) -> None:
        """The port stopped listening: say now what the rate-limited log still counts."""
        self._noise.flush()

    def when_all_closed(self) -> Deferred[None]:
        """Fires once every connection accepted so far is gone."""
        waiting = [protocol.when_closed() for protocol in self.connections]
        return gatherResults(waiting).addCallback(lambda _: None)

    def close_all(self) -> Deferred[None]:
        """Core is stopping: refuse new connections, say goodbye to every Cell, close every
        connection (handshaking ones too); fires once each one is gone."""
        self._closing = True
        for connection in list(self.connections):
            if connection.session is not None:
                connection.session.close()  # a goodbye first, when the Cell is linked
            else:
                connection.close()

        def closed(_: object) -> None:
            self._closing = False

        return self.when_all_closed().addCallback(closed)

    def _forget(self, protocol: FramedLinkProtocol) -> None:
        self.connections.discard(protocol)
        self._done_waiting(protocol)

    def _done_waiting(self, protocol: FramedLinkProtocol) -> None:
        waiting = len(self._waiting)
        self._waiting.remove(protocol)
        if waiting and not self._waiting and self._quiet is not None:
            self._quiet()

    def _new_session(self, wire: FramedLinkProtocol) -> LinkSession:
        return LinkSession(
            wire,
            self._handler,
            self._clock,
            local_name=self._core_name,
            local_type=ServiceType.CORE,
            peer_type=ServiceType.CELL,
            dialer=False,
            identify=lambda: self._identify(transport_of(wire)),
            handshake_over=lambda _: self._done_waiting(wire),
            noise=self._noise,
        )


def cell_link_protocol(
    handler: LinkHandler, clock: IReactorTime, cell_name: str
) -> FramedLinkProtocol:
    """The Cell's dialing side of one link (used by FakeCell)."""

    def new_session(wire: FramedLinkProtocol) -> LinkSession:
        return LinkSession(
            wire,
            handler,
            clock,
            local_name=cell_name,
            local_type=ServiceType.CELL,
            peer_type=ServiceType.CORE,
            dialer=True,
        )

    return FramedLinkProtocol(new_session, clock)
