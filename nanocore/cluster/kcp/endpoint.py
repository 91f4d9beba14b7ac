"""Core's KCP port: one UDP socket, one KCP conversation per remote address (kcp-go's Listener).

Demultiplexing follows kcp-go (cell-protocol.md §2.3): conversations are keyed by the peer's
``ip:port``; a known address that sends a *new* conv with sequence 0 replaces its conversation,
but only once the new one's peer has proven that it receives there
(:meth:`KCPConversation.proven`): until then the new conversation runs beside the old, which
goes on (kcp-go replaced it at once, so one spoofed datagram ended a live Cell's link and, in a
pool with failover, started its guests on another Cell while it still ran them); parity shards
are dropped. Unlike kcp-go, a conversation is created only from the datagram that
opens one (a data shard whose first segment is PUSH with sequence 0, the dialer's handshake), so
mid-stream traffic from a conversation Core no longer knows (a Cell that outlived a Core
restart) is ignored until that Cell dials again, instead of filling the table with sessions that
can never handshake.

Everything a peer can make Core spend is bounded (:class:`~.conversation.Limits`): the number of
conversations and of those still handshaking, the datagrams per second each peer may have
processed, each conversation's queues and reassembly buffer. Malformed datagrams are dropped and
counted, with one log line per kind and source a minute (``ratelog``); only malformed documents
and handshakes (the session's business) drop a conversation, and only that one. How the port is
bound is up to the caller (``listenUDP``).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from nanocore.cluster.discovery import TokenBucket
from nanocore.cluster.kcp.conversation import (
    DEFAULT_LIMITS,
    DatagramError,
    KCPConversation,
    Limits,
    parse_datagram,
)
from nanocore.ratelog import RateLimitedLog

#: Builds the session that runs on a new conversation and starts it.
Attach = Callable[[KCPConversation], None]
Address = tuple[str, int]

#: The socket's receive buffer we ask for, so a burst from one peer is not lost for all.
RECEIVE_BUFFER = 4 << 20


def enlarge_receive_buffer(transport: Any, size: int = RECEIVE_BUFFER) -> None:
    """Ask the kernel for a larger receive buffer where there is a real socket."""
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return
    with contextlib.suppress(OSError):  # the kernel's limit stands
        get_handle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class KCPEndpoint(DatagramProtocol):
    """Accepts KCP conversations from any peer and attaches a session to each."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        attach: Attach,
        limits: Limits = DEFAULT_LIMITS,
        noise: RateLimitedLog | None = None,
    ) -> None:
        self._clock = clock
        self._attach = attach
        self._limits = limits
        #: What anyone can make this port log, rate-limited (shared with the sessions).
        self.noise = noise if noise is not None else RateLimitedLog(self.log, clock)
        self.conversations: dict[Address, KCPConversation] = {}
        #: A new conversation from an address that has one, until its peer proves itself.
        self.challengers: dict[Address, KCPConversation] = {}
        #: Conversations created and maybe still handshaking, oldest first; pruned when it
        #: matters.
        self._pending: dict[KCPConversation, None] = {}
        self._openings = TokenBucket(clock, limits.openings_per_second, limits.opening_burst)
        #: Hosts a peer proved it receives at, most recent last (at most ``conversations``):
        #: a Cell dialing again after a restart comes from one, spoofed openings mostly do not,
        #: so returning hosts have a budget of their own and may take an unknown host's place.
        self._returning: dict[str, None] = {}
        self._returning_openings = TokenBucket(
            clock, limits.openings_per_second, limits.opening_burst
        )
        #: Datagrams dropped as malformed, foreign or over a limit.
        self.dropped = 0
        #: Core is closing every conversation: new ones are refused meanwhile.
        self._closing = False

    # -- the socket ---------------------------------------------------------------------------

    def startProtocol(self) -> None:
        enlarge_receive_buffer(self.transport)

    def stopProtocol(self) -> None:
        for conversation in self._every():
            conversation.abort()
        self.noise.flush()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        peer: Address = (addr[0], addr[1])
        try:
            self._receive(datagram, peer)
        except Exception:
            # A fault of ours must not reach the reactor nor leave a half-handled peer behind.
            self.log.failure(
                "KCP datagram from {peer} failed; dropping its conversation", peer=peer
            )
            for known in (self.conversations.get(peer), self.challengers.get(peer)):
                if known is not None:
                    known.abort()

    # -- Core stopping ------------------------------------------------------------------------

    def close_all(self) -> Deferred[None]:
        """Refuse new conversations, say goodbye on every one; fires once all are released
        (3 s at most: a Cell that does not acknowledge the goodbye is not waited for)."""
        self._closing = True
        conversations = self._every()
        for conversation in conversations:
            if conversation.session is not None:
                conversation.session.close()
            else:
                conversation.abort()

        def closed(_: object) -> None:
            self._closing = False

        waiting = [conversation.when_closed() for conversation in conversations]
        return gatherResults(waiting).addCallback(closed)

    # -- internals ----------------------------------------------------------------------------

    def _receive(self, datagram: bytes, peer: Address) -> None:
        try:
            parsed = parse_datagram(datagram)
        except DatagramError as e:
            self._drop("malformed KCP datagrams", "datagram from {peer}: {reason}", peer, reason=e)
            return
        if parsed is None:
            return
        payload, head = parsed
        conversation = self.conversations.get(peer)
        if conversation is not None and head.conv == conversation.conv:
            if conversation.accepts(payload):
                conversation.deliver()
            else:
                self.dropped += 1
            return
        challenger = self.challengers.get(peer)
        if challenger is not None and head.conv == challenger.conv:
            if challenger.accepts(payload):
                if challenger.proven and not challenger.released:  # (refused its name: gone)
                    self._replace(peer, challenger)
                challenger.deliver()
            else:
                self.dropped += 1
            return
        if not head.opens or self._closing:
            # Another conversation's traffic from a known address, mid-stream traffic of a
            # conversation we do not know (its peer outlived a Core restart), or an opening
            # while Core is closing every conversation.
            self.dropped += 1
            return
        # The opening is read before it costs anything: junk takes no share of the openings
        # budget, and cannot end the conversation of the address it claims to come from.
        opening = KCPConversation(
            head.conv,
            peer,
            self._clock,
            partial(self._write, peer),
            self._forget,
            self._limits,
            proven=self._proven,
        )
        if not opening.accepts(payload):
            opening.abort()
            self._drop("malformed KCP openings", "malformed opening segment from {peer}", peer)
            return
        returning = peer[0] in self._returning
        if not (self._returning_openings if returning else self._openings).take():
            opening.abort()
            self._drop(
                "KCP openings over the rate",
                "new conversation from {peer}: too many openings",
                peer,
            )
            return
        if not self._has_room(peer[0], returning):
            opening.abort()
            self._drop(
                "KCP openings beyond the peer limit",
                "new conversation from {peer}: too many peers",
                peer,
            )
            return
        if conversation is None:
            self.conversations[peer] = opening
        else:
            # It replaces the conversation of its address once proven (see the docstring).
            if challenger is not None:
                challenger.abort()
            self.challengers[peer] = opening
        self._pending[opening] = None
        self._attach(opening)
        opening.deliver()

    def _every(self) -> list[KCPConversation]:
        """Every conversation, the ones still to prove themselves included."""
        return [*self.conversations.values(), *self.challengers.values()]

    def _replace(self, peer: Address, challenger: KCPConversation) -> None:
        """The new conversation of ``peer``'s address proved itself: it is that address's
        now, and the old one (whose peer moved on to the new) ends."""
        self.challengers.pop(peer, None)
        old = self.conversations.get(peer)
        self.conversations[peer] = challenger
        if old is not None:
            self.log.info(
                "{peer} opened conversation {conv}: replacing its conversation {old}",
                peer=peer,
                conv=challenger.conv,
                old=old.conv,
            )
            old.abort()

    def _has_room(self, host: str, returning: bool) -> bool:
        """Room for one more conversation from ``host``: in all, handshaking, and of the
        handshaking places, ``host``'s share (one source cannot hold them all). A returning
        host takes the place of the oldest opening from a host never proven, if it must:
        spoofed openings from many addresses then cannot keep a restarted Cell out."""
        if len(self.conversations) + len(self.challengers) >= self._limits.conversations:
            return False
        pending = self._pending
        for done in [c for c in pending if c.released or not c.handshaking]:
            del pending[done]
        from_host = sum(1 for c in pending if c.peer[0] == host)
        if from_host >= self._limits.handshaking_per_source:
            return False
        if len(pending) < self._limits.handshaking:
            return True
        if returning:
            stranger = next((c for c in pending if c.peer[0] not in self._returning), None)
            if stranger is not None:
                self._drop(
                    "KCP openings dropped for returning hosts",
                    "unproven conversation from {peer}: its place went to a returning host",
                    stranger.peer,
                )
                stranger.abort()
                return True
        return False

    def _proven(self, conversation: KCPConversation) -> None:
        """Its peer showed it receives at its address: remember the host as returning."""
        host, returning = conversation.peer[0], self._returning
        returning.pop(host, None)
        returning[host] = None
        if len(returning) > self._limits.conversations:
            del returning[next(iter(returning))]

    def _write(self, peer: Address, datagram: bytes) -> None:
        if self.transport is not None:
            self.transport.write(datagram, peer)

    def _forget(self, conversation: KCPConversation) -> None:
        for table in (self.conversations, self.challengers):
            if table.get(conversation.peer) is conversation:
                del table[conversation.peer]
        self._pending.pop(conversation, None)

    def _drop(self, kind: str, text: str, peer: Address, **fields: object) -> None:
        self.dropped += 1
        self.noise.warn(kind, peer[0], "KCP dropped " + text, peer=peer, **fields)
