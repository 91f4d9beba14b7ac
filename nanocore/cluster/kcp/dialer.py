"""The Cell's side of a KCP link: dial Core from a fresh UDP port, and dial again when it drops.

Used by our own simulated Cells and by tests and benchmarks; stock Cells are Go binaries. As
kcp-go's dialer does, the conversation picks a random conv, sends only to the address it dialed
and reads only from it (a connected UDP socket), and every new dial uses a new port and conv.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.logger import Logger

from nanocore.cluster.kcp.conversation import (
    DEFAULT_LIMITS,
    DatagramError,
    KCPConversation,
    Limits,
    parse_datagram,
)
from nanocore.cluster.kcp.endpoint import Address, Attach, enlarge_receive_buffer
from nanocore.cluster.transport import LinkState

#: Seconds between the end of one link and the next dial (a Cell's ``recoverStubService``).
RECONNECT_DELAY = 3.0


class KCPDialer(DatagramProtocol):
    """One conversation with Core from this port; start it with ``reactor.listenUDP(0, …)``."""

    log = Logger()

    def __init__(
        self,
        core: Address,
        clock: IReactorTime,
        attach: Attach,
        *,
        conv: int | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._core = core
        self._clock = clock
        self._attach = attach
        self._conv = secrets.randbits(32) if conv is None else conv
        self._limits = limits
        self.conversation: KCPConversation | None = None
        #: Datagrams dropped as malformed or from another conversation.
        self.dropped = 0

    def when_closed(self) -> Deferred[None]:
        """Fires once the conversation is over; the port must have started."""
        if self.conversation is None:
            raise RuntimeError("the dialer's port has not started")
        return self.conversation.when_closed()

    def startProtocol(self) -> None:
        transport: Any = self.transport
        transport.connect(*self._core)
        enlarge_receive_buffer(transport)
        conversation = self.conversation = KCPConversation(
            self._conv, self._core, self._clock, transport.write, _nothing, self._limits
        )
        self._attach(conversation)  # the session announces itself: the opening PUSH, sn 0

    def stopProtocol(self) -> None:
        if self.conversation is not None:
            self.conversation.abort()

    def connectionRefused(self) -> None:
        # Nothing listens on Core's port (ICMP port unreachable): no use retransmitting.
        if self.conversation is not None:
            self.log.info("KCP link to {core} refused", core=self._core)
            self.conversation.abort()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        conversation = self.conversation
        if conversation is None:
            return
        try:
            parsed = parse_datagram(datagram)
        except DatagramError:
            self.dropped += 1
            return
        if parsed is None:
            return
        payload, head = parsed
        if head.conv != conversation.conv or not conversation.accepts(payload):
            self.dropped += 1
            return
        conversation.deliver()


def _nothing(conversation: KCPConversation) -> None:
    """A dialer's conversation is its only one: there is no table to forget it from."""


class KCPClientService(Service):
    """Keeps one link to Core up: dial, and dial again ``retry`` s after it is gone (§2.9).

    ``locate`` says where Core is for each dial (a discovery query, or a fixed address), so a
    Cell finds a restarted Core again. ``attach`` runs the session on each new conversation.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        clock: IReactorTime,
        locate: Callable[[], Deferred[Address]],
        attach: Attach,
        *,
        interface: str = "",
        retry: float = RECONNECT_DELAY,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._reactor = reactor
        self._clock = clock
        self._locate = locate
        self._attach = attach
        self._interface = interface
        self._retry = retry
        self._limits = limits
        self._dialer: KCPDialer | None = None
        self._port: IListeningPort | None = None
        self._loop: Deferred[None] | None = None
        #: Links dialed so far.
        self.dials = 0

    def startService(self) -> None:
        super().startService()
        self._loop = Deferred.fromCoroutine(self._keep_linked())
        self._loop.addErrback(lambda failure: failure.trap(CancelledError))

    def stopService(self) -> Deferred[None]:
        super().stopService()
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
        dialer = self._dialer
        conversation = dialer.conversation if dialer is not None else None
        if conversation is None or conversation.released:
            return Deferred.fromCoroutine(self._stop_port())
        session = conversation.session
        if session is not None and session.connected:
            session.close()  # goodbye first: Core sees a graceful disconnect
        elif session is None or session.state is not LinkState.CLOSED:
            conversation.abort()  # nothing said yet: nothing to deliver
        # else the Cell said goodbye already: its conversation is delivering it
        return conversation.when_closed().addCallback(
            lambda _: Deferred.fromCoroutine(self._stop_port())
        )

    async def _keep_linked(self) -> None:
        while self.running:
            try:
                await self._link_once()
            except CancelledError:
                return
            except Exception as e:
                self.log.info("KCP link to Core failed: {error}", error=e)
            await deferLater(self._clock, self._retry)

    async def _link_once(self) -> None:
        core = await self._locate()
        dialer = self._dialer = KCPDialer(core, self._clock, self._attach, limits=self._limits)
        self._port = self._reactor.listenUDP(0, dialer, interface=self._interface)
        self.dials += 1
        await dialer.when_closed()
        await self._stop_port()

    async def _stop_port(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            await maybeDeferred(port.stopListening)
