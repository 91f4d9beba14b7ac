"""One KCP conversation with one peer: the ``FrameWire`` a :class:`LinkSession` runs on over KCP.

The ARQ is C ikcp through ``siokcp`` (sans-io), set up as kcp-go sets up its sessions
(cell-protocol.md §2.2): mss 1368 so that a datagram with the FEC header is 1400 bytes, windows
32/32, normal mode (``nodelay(0, 100, 0, 0)``: 100 ms interval and least RTO, congestion control
on), message mode. One thing C ikcp's normal mode does otherwise: it doubles a segment's RTO at
each resend, where kcp-go adds the current RTO, so after an outage of a few seconds Core would
stay silent for as long again, past a stock Cell's 15-20 s limit. C ikcp's ``nodelay`` field 2
(set alone, the least RTO staying kcp-go's 100 ms) grows it linearly by half the current RTO,
and sends a segment the first time with kcp-go's timeout (no extra eighth): the nearest C ikcp
comes to kcp-go, resending a little more often. What KCP wants sent is wrapped as a data shard
(:mod:`.fec`); what it delivers is a stream of pieces gathered into JSON documents
(:mod:`.framing`) and handed to the session as frames.

Time comes from the injected clock only, on a KCP clock that starts at a random point for each
conversation: the timestamps Core's segments carry cannot be guessed, so a peer whose
acknowledgement echoes one (with its sequence number) has shown that it receives at the address
it sends from. Until it has, the (sequence, timestamp) of every segment sent is kept; an
acknowledgement of anything else is forged and ends the conversation.

Sends and received datagrams schedule one flush at the reactor's next turn (so ACKs and replies
of one read leave together, as soon as possible); KCP's own timer (``check``/``update``) runs
only while something waits for an acknowledgement, so an idle conversation costs no timer.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable
from typing import Protocol

from attrs import frozen
from siokcp import KCPConnection
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import MessageLengthError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from nanocore.cluster.discovery import TokenBucket
from nanocore.cluster.kcp.fec import HEADER_SIZE, DataShards, FECError, data_payload
from nanocore.cluster.kcp.framing import FramingError, Reassembler, split_document
from nanocore.cluster.transport import (
    CLOSE_GRACE,
    MAX_FRAME_SIZE,
    MAX_HANDSHAKING,
    FrameWire,
    LinkSession,
    LinkState,
)

#: kcp-go's datagram size (``IKCP_MTU_DEF``), FEC header included.
DATAGRAM_SIZE = 1400
#: What KCP itself may put in a datagram: the FEC header takes the rest.
KCP_MTU = DATAGRAM_SIZE - HEADER_SIZE
#: The KCP segment header (``IKCP_OVERHEAD``).
SEGMENT_HEADER_SIZE = 24
#: The largest piece of a document: one KCP message, one segment (1368).
MSS = KCP_MTU - SEGMENT_HEADER_SIZE
#: Send and receive windows in segments (kcp-go's ``IKCP_WND_SND``/``IKCP_WND_RCV``).
WINDOW = 32
#: KCP's internal flush interval in ms (kcp-go's default, normal mode).
INTERVAL_MS = 100
#: C ikcp's ``nodelay`` value whose resends back off linearly, as kcp-go's normal mode does.
LINEAR_BACKOFF = 2
#: kcp-go never reads or sends a datagram above this (``mtuLimit``); larger ones are refused.
MAX_DATAGRAM_SIZE = 1500

#: ``conv | cmd | frg | wnd | ts | sn``: the first fields of a KCP segment.
_SEGMENT = struct.Struct("<IBBHII")
#: ``cmd | frg | wnd | ts | sn | una | len``: a segment's header after its conv.
_HEADER = struct.Struct("<BBHIIII")
CMD_PUSH = 81
CMD_ACK = 82
#: Segments sent to a peer that has yet to acknowledge one; beyond, it is dropped (a live peer
#: acknowledges Core's handshake within a few of its resends).
MAX_UNPROVEN_SENDS = 256


@frozen
class SegmentHead:
    """The fields of a datagram's first KCP segment that decide which conversation it is for."""

    conv: int
    cmd: int
    sn: int

    @classmethod
    def of(cls, payload: bytes) -> SegmentHead | None:
        """Read the first segment's header, or None when ``payload`` is too short for one."""
        if len(payload) < SEGMENT_HEADER_SIZE:
            return None
        conv, cmd, _, _, _, sn = _SEGMENT.unpack_from(payload)
        return cls(conv, cmd, sn)

    @property
    def opens(self) -> bool:
        """A conversation's first message (the dialer's handshake): PUSH with sequence 0."""
        return self.cmd == CMD_PUSH and self.sn == 0


class DatagramError(ValueError):
    """A datagram that carries no KCP segment we could read."""


def parse_datagram(datagram: bytes) -> tuple[bytes, SegmentHead] | None:
    """The KCP bytes of a datagram and its first segment's head; None for a parity shard."""
    if len(datagram) > MAX_DATAGRAM_SIZE:
        raise DatagramError(f"{len(datagram)}-byte datagram exceeds {MAX_DATAGRAM_SIZE}")
    try:
        payload = data_payload(datagram)
    except FECError as e:
        raise DatagramError(str(e)) from None
    if payload is None:
        return None  # a parity shard: we recover by retransmission, not Reed-Solomon
    head = SegmentHead.of(payload)
    if head is None:
        raise DatagramError(f"data shard of {len(payload)} bytes holds no KCP segment")
    return payload, head


@frozen
class Limits:
    """What one peer, and all peers together, may cost Core."""

    #: Conversations at once (each holds a KCP control block and a reassembly buffer).
    conversations: int = 4096
    #: Conversations at once whose peer has not completed the handshake or proven its claim,
    #: and how many of them one source address may hold (a flood from one address leaves the
    #: rest to the others; a simulator's Cells on one address link in waves of it).
    handshaking: int = MAX_HANDSHAKING
    handshaking_per_source: int = MAX_HANDSHAKING // 4
    #: New conversations per second from all peers, and their burst (a whole cluster dialing
    #: a restarted Core fits in it); beyond, openings are dropped and the dialers send again.
    openings_per_second: float = 200.0
    opening_burst: int = 1000
    #: Datagrams per second one peer may make us process, and its burst; beyond, dropped unread.
    datagrams_per_second: float = 5000.0
    datagram_burst: int = 10000
    #: Pieces queued for a peer that does not acknowledge them (8 MiB); beyond, it is dropped.
    pending_pieces: int = (8 << 20) // MSS


DEFAULT_LIMITS = Limits()


class _ARQ(Protocol):
    """The part of ``siokcp.KCPConnection`` used here (siokcp ships no type hints)."""

    conv: int
    current: int
    rcv_wnd: int
    rmt_wnd: int
    stream: int
    send_cb: Callable[[bytes], int]

    def setmtu(self, mtu: int) -> int: ...
    def wndsize(self, sndwnd: int, rcvwnd: int) -> int: ...

    nodelay_: int

    def nodelay(self, nodelay: int, interval: int, resend: int, nc: int) -> int: ...
    def receive_data(self, data: bytes) -> int: ...
    def next_event(self) -> bytes | None: ...
    def send(self, data: bytes) -> int: ...
    def update(self, current: int) -> None: ...
    def check(self, current: int) -> int: ...
    def flush(self) -> None: ...
    def waitsnd(self) -> int: ...


def _ignore_log(text: str) -> None:
    """KCP's debug log is off (``logmask`` 0); siokcp still wants a callback."""


def _discard(data: bytes) -> int:
    return 0


def _collect(into: list[bytes]) -> Callable[[bytes], int]:
    # KCP's output callback only collects: the conversation sends after each KCP call, so no
    # Python error can unwind through C, and the C object never refers back to us (siokcp's
    # connection is invisible to the cycle collector).
    def output(data: bytes) -> int:
        into.append(data)
        return 0

    return output


def new_arq(conv: int, output: Callable[[bytes], int], now_ms: int) -> _ARQ:
    """A KCP control block set up as kcp-go's sessions are."""
    arq: _ARQ = KCPConnection(conv, output, _ignore_log)
    arq.setmtu(KCP_MTU)
    arq.wndsize(WINDOW, WINDOW)
    arq.rcv_wnd = WINDOW  # ikcp_wndsize never goes below C's default of 128; kcp-go uses 32
    arq.nodelay(0, INTERVAL_MS, 0, 0)
    arq.nodelay_ = LINEAR_BACKOFF  # the field alone: see the module's docstring
    arq.stream = 0
    arq.update(now_ms)  # starts KCP's clock: flush() does nothing before the first update
    return arq


@implementer(FrameWire)
class KCPConversation:
    """One peer's KCP conversation, and the wire of the :class:`LinkSession` above it.

    ``send`` puts one datagram on the socket towards the peer; ``released`` is told once the
    conversation is over, so that its owner forgets it.
    """

    log = Logger()

    def __init__(
        self,
        conv: int,
        peer: tuple[str, int],
        clock: IReactorTime,
        send: Callable[[bytes], None],
        released: Callable[[KCPConversation], None],
        limits: Limits = DEFAULT_LIMITS,
        *,
        proven: Callable[[KCPConversation], None] | None = None,
    ) -> None:
        self.conv = conv
        self.peer = peer
        self._clock = clock
        self._send = send
        self._released = released
        #: Told once the peer has proven that it receives (see :meth:`when_proven`).
        self._on_proven = proven
        self._limits = limits
        self._outbox: list[bytes] = []
        #: Where this conversation's KCP clock starts (see the module's docstring).
        self._epoch = secrets.randbits(32)
        #: (sequence, timestamp) of each segment sent until the peer proves it receives them.
        self._stamps: set[tuple[int, int]] | None = set()
        self._proof_waiters: list[Deferred[None]] = []
        self._arq: _ARQ | None = new_arq(conv, _collect(self._outbox), self._now())
        self._shards = DataShards()
        self._reassembler = Reassembler(MAX_FRAME_SIZE)
        self._budget = TokenBucket(clock, limits.datagrams_per_second, limits.datagram_burst)
        self._flush_call: IDelayedCall | None = None
        self._tick_call: IDelayedCall | None = None
        self._abort_call: IDelayedCall | None = None
        self._closing = False
        self._waiters: list[Deferred[None]] | None = []
        self.session: LinkSession | None = None
        #: Datagrams dropped unread because the peer sent faster than its budget.
        self.over_budget = 0
        #: Datagrams whose KCP segments ikcp refused (bad conv, length or command).
        self.refused = 0

    # -- the FrameWire face -------------------------------------------------------------------

    @property
    def address(self) -> str:
        return self.peer[0]

    @property
    def released(self) -> bool:
        """True once the conversation is over and its resources are freed."""
        return self._arq is None

    @property
    def handshaking(self) -> bool:
        """True until the session above has a name (or when there is no session yet), and
        while someone waits for the peer to prove it receives (:meth:`when_proven`)."""
        return (
            self.session is None
            or self.session.state is LinkState.HANDSHAKING
            or bool(self._proof_waiters)
        )

    @property
    def proven(self) -> bool:
        """Whether the peer has acknowledged a segment by what only its receiver could know."""
        return self._stamps is None

    def write_frame(self, frame: bytes) -> None:
        """Queue one document as pieces of at most ``MSS`` bytes, each its own KCP message."""
        arq = self._arq
        if arq is None or self._closing:
            return
        pieces = split_document(frame, MSS)
        if arq.waitsnd() + len(pieces) > self._limits.pending_pieces:
            self._fail(f"{arq.waitsnd()} pieces still unacknowledged: the peer is not reading")
            return
        for piece in pieces:
            arq.send(piece)
        self._flush_soon()

    def close(self) -> None:
        """Flush what was written; release once the peer acknowledged it, or abort."""
        if self._arq is None or self._closing:
            return
        self._closing = True
        self._abort_call = self._clock.callLater(CLOSE_GRACE, self.abort)
        self._flush_soon()

    def abort(self) -> None:
        """Forget the conversation now, discarding anything unsent."""
        self._release()

    def when_closed(self) -> Deferred[None]:
        """Fires once the conversation is released (at once if it is)."""
        if self._waiters is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def when_proven(self) -> Deferred[None]:
        """Fires once the peer has acknowledged one of Core's segments by its sequence number
        and timestamp, which proves that it receives at the address it sends from (a spoofed
        source cannot know the timestamp). Until then nothing more is delivered to the
        session; never fires if the conversation ends first."""
        if self._stamps is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._proof_waiters.append(d)
        return d

    # -- driven by the socket's owner ---------------------------------------------------------

    def accepts(self, payload: bytes) -> bool:
        """Give KCP one datagram's segments; False (nothing changed) if it refused them."""
        arq = self._arq
        if arq is None:
            return False
        if not self._budget.take():
            self.over_budget += 1
            return False
        if arq.receive_data(payload) < 0:
            self.refused += 1
            return False
        self._flush_soon()  # ACKs, and window updates once the pieces are read
        if self._stamps is not None and not self._check_proof(payload):
            self.refused += 1
            if self.session is not None:  # an opening's is the endpoint's to drop
                self.session.refuse("it acknowledged a segment with a timestamp Core never sent")
            return False
        if self._proof_waiters and arq.waitsnd() == 0 and self.session is not None:
            # Everything sent is covered by ``una`` but the ACK that proves it was lost: ask
            # for another now, rather than at the next keepalive (on a lossy link the claim
            # ran out of time so).
            self.session.send_keepalive()
        return True

    def deliver(self) -> None:
        """Hand every document KCP has completed to the session."""
        arq = self._arq
        while (
            arq is not None
            and self.session is not None
            and not self._closing
            and not self._proof_waiters
        ):
            piece = arq.next_event()
            if piece is None:
                return
            try:
                document = self._reassembler.feed(piece)
            except FramingError as e:
                self._fail(str(e))
                return
            if document is not None:
                self.session.frame_received(document)
                arq = self._arq

    # -- internals ----------------------------------------------------------------------------

    def _now(self) -> int:
        return (int(self._clock.seconds() * 1000) + self._epoch) & 0xFFFFFFFF

    def _check_proof(self, payload: bytes) -> bool:
        """Look for the acknowledgement that proves the peer (see :meth:`when_proven`);
        False if ``payload`` acknowledges something Core never sent: it is forged."""
        stamps = self._stamps
        assert stamps is not None
        for cmd, ts, sn in _segments(payload):
            if cmd != CMD_ACK:
                continue
            if (sn, ts) not in stamps:
                return False
            self._stamps = None
            if self._on_proven is not None:
                self._on_proven(self)
            waiting, self._proof_waiters = self._proof_waiters, []
            for d in waiting:
                d.callback(None)
            return True
        return True

    def _stamp(self, payload: bytes) -> None:
        """Keep what each data segment of ``payload`` carries, for :meth:`_check_proof`."""
        stamps = self._stamps
        assert stamps is not None
        for cmd, ts, sn in _segments(payload):
            if cmd == CMD_PUSH:
                stamps.add((sn, ts))
        if len(stamps) > MAX_UNPROVEN_SENDS:
            self._fail(f"acknowledged none of {len(stamps)} segments sent")

    def _fail(self, reason: str) -> None:
        if self.session is not None and self.session.state is not LinkState.CLOSED:
            self.session.protocol_error(reason)  # aborts this wire in turn
        else:
            self.log.warn("dropping KCP peer {peer}: {reason}", peer=self.peer, reason=reason)
        self._release()

    def _flush_soon(self) -> None:
        if self._flush_call is None and self._arq is not None:
            self._flush_call = self._clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        arq = self._arq
        if arq is None:
            return
        arq.current = self._now()
        arq.flush()
        self._after_kcp(arq)

    def _tick(self) -> None:
        self._tick_call = None
        arq = self._arq
        if arq is None:
            return
        now = self._now()
        arq.update(now)
        if _ms_between(now, arq.check(now)) <= 0:
            # A resend is due before KCP's next interval flush, which is all update() does:
            # flush now, or check() would keep answering "now" until that interval.
            arq.current = now
            arq.flush()
        self._after_kcp(arq)

    def _after_kcp(self, arq: _ARQ) -> None:
        """Send what KCP produced, then wake KCP's timer only if something awaits an ACK."""
        if self._outbox:
            if self._stamps is not None:
                for payload in self._outbox:
                    self._stamp(payload)
                if self._arq is None:
                    return  # dropped: it never acknowledged anything
            wrap, send = self._shards.wrap, self._send_datagram
            for payload in self._outbox:
                send(wrap(payload))
            self._outbox.clear()
        if arq.waitsnd() == 0 and arq.rmt_wnd > 0:
            if self._closing:
                self._release()
                return
            if self._tick_call is not None:
                self._tick_call.cancel()
                self._tick_call = None
            return
        now = self._now()
        delay = max(1, _ms_between(now, arq.check(now))) / 1000  # KCP counts whole ms
        if self._tick_call is None:
            self._tick_call = self._clock.callLater(delay, self._tick)
        else:
            self._tick_call.reset(delay)

    def _send_datagram(self, datagram: bytes) -> None:
        try:
            self._send(datagram)
        except (OSError, MessageLengthError) as e:
            # As if lost on the way: KCP sends it again.
            self.log.debug("datagram to {peer} not sent: {error}", peer=self.peer, error=e)

    def _release(self) -> None:
        """Free everything once; the session hears that its wire is gone."""
        arq, self._arq = self._arq, None
        if arq is None:
            return
        arq.send_cb = _discard
        self._outbox.clear()
        self._proof_waiters = []
        for call in (self._flush_call, self._tick_call, self._abort_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._tick_call = self._abort_call = None
        self._released(self)
        if self.session is not None:
            self.session.wire_lost()
        waiters, self._waiters = self._waiters or [], None
        for d in waiters:
            if not d.called:  # a waiter may have given up (cancelled)
                d.callback(None)


def _segments(payload: bytes) -> list[tuple[int, int, int]]:
    """``(cmd, ts, sn)`` of each KCP segment in ``payload`` (which ikcp has read or written)."""
    found = []
    offset, end = 0, len(payload) - SEGMENT_HEADER_SIZE
    while offset <= end:
        cmd, _, _, ts, sn, _, length = _HEADER.unpack_from(payload, offset + 4)
        found.append((cmd, ts, sn))
        offset += SEGMENT_HEADER_SIZE + length
    return found


def _ms_between(start: int, end: int) -> int:
    """``end - start`` on KCP's 32-bit millisecond clock, which wraps every 49 days."""
    return (end - start + 0x80000000) % 0x100000000 - 0x80000000
