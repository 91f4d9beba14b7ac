"""The Cell link over KCP: the same :class:`LinkSession` as over TLS, on a KCP conversation.

Everything above the wire is shared with the TLS link (handshake, keepalive, loss and disconnect
timers, graceful close, the registry, transactions and operations), so one Cell is one Cell
whichever wire it came on. What differs is identity: a stock Cell has no certificate, so its
name is the one it claims in its ``ConnectionOpenedEvent`` (cell-protocol.md §2.6). Because that
claim is unauthenticated, :class:`NameGuard` refuses a claim of a name that is linked from
another address while that link is alive, so a second host cannot take over a Cell's name, and
any claim of a name a live TLS link holds by its certificate, whatever the address; and no
claim is heard of before its peer has shown that it receives at its address.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast
from weakref import WeakSet

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from nanocore.cluster.kcp.conversation import DEFAULT_LIMITS, KCPConversation, Limits
from nanocore.cluster.kcp.endpoint import Attach, KCPEndpoint
from nanocore.cluster.message import Message
from nanocore.cluster.transport import CellLink, LinkHandler, LinkSession, ServiceType
from nanocore.ratelog import RateLimitedLog

#: How long a claimant has to acknowledge Core's answer to its handshake (a live Cell does
#: within its flush interval, or a few of Core's resends on a lossy network); less than
#: ``LOST_AFTER``, so that the link is still alive when it is handed on.
PROOF_TIMEOUT = 5.0

#: Where the rest of Core keeps the link a name is bound to now (``CellRegistry.link``).
CurrentLink = Callable[[str], CellLink | None]


@implementer(LinkHandler)
class NameGuard:
    """A :class:`LinkHandler` in front of the registry that keeps self-asserted names honest.

    A link whose claimed name is held by a live link from another address is dropped as soon
    as its handshake completes; the handler never hears of it. Every other claim is handed on
    once the claimant has acknowledged Core's answer to its handshake by what only a receiver
    of it can know (:meth:`KCPConversation.when_proven`), within ``PROOF_TIMEOUT``: a live Cell
    does so within its flush interval, while a spoofed source address never can, so a spoofer
    can neither add a Cell nor take one's name. A claim from the same address as the live link
    (the Cell dialing again from a new port after a restart) is the Cell reconnecting and
    replaces its old link, as over TLS. A claim never replaces a link whose name is its
    certificate's: it proves nothing against it (any process on the Cell's host could make
    one), so the name stays with the certificate until its link is gone (a Cell that really
    changed to a stock one gets it at the TLS link's disconnect, 15 s of silence at most).
    """

    log = Logger()

    def __init__(
        self, handler: LinkHandler, current_link: CurrentLink, clock: IReactorTime
    ) -> None:
        self._handler = handler
        self._current_link = current_link
        self._clock = clock
        self._refused: WeakSet[LinkSession] = WeakSet()
        #: Claims whose peer has yet to prove that it receives, and their deadlines.
        self._proving: dict[LinkSession, IDelayedCall] = {}
        #: Claims refused: the name held from elsewhere, or the claimant never proven.
        self.refused = 0

    def link_connected(self, link: LinkSession) -> None:
        holder = self._current_link(link.name)
        if holder is not None and holder is not link and self._refuses(link, holder):
            return
        link.withheld = True
        self._proving[link] = self._clock.callLater(PROOF_TIMEOUT, self._unproven, link)
        wire = cast(KCPConversation, link.wire)
        wire.when_proven().addCallback(lambda _: self._proven(link))

    def _proven(self, link: LinkSession) -> None:
        deadline = self._proving.pop(link, None)
        if deadline is None:
            return  # gone or refused meanwhile: the handler never heard of it
        deadline.cancel()
        holder = self._current_link(link.name)
        if holder is None or holder is link or not self._refuses(link, holder):
            link.withheld = False
            self._handler.link_connected(link)

    def _unproven(self, link: LinkSession) -> None:
        del self._proving[link]
        self._refuse(
            link,
            f"no acknowledgement of Core's handshake in {PROOF_TIMEOUT:g} s: "
            "nothing shows that it receives at its address",
        )

    def _refuses(self, link: LinkSession, holder: CellLink) -> bool:
        """Whether ``link`` is refused the name ``holder`` holds (then it is dropped)."""
        if holder.address != link.address:
            self._refuse(link, f"name {link.name!r} is linked from {holder.address}")
            return True
        if holder.verified:
            self._refuse(link, f"name {link.name!r} is held by its certificate's TLS link")
            return True
        return False

    def _refuse(self, link: LinkSession, reason: str) -> None:
        self.refused += 1
        self._refused.add(link)
        link.refuse(reason)

    def _hidden(self, link: LinkSession) -> bool:
        """Whether the handler never heard of ``link`` (refused, or proving its address)."""
        return link in self._refused or link in self._proving

    def message_received(self, link: LinkSession, message: Message) -> None:
        if not self._hidden(link):
            self._handler.message_received(link, message)

    def link_lost(self, link: LinkSession) -> None:
        if not self._hidden(link):
            self._handler.link_lost(link)

    def link_recovered(self, link: LinkSession) -> None:
        if not self._hidden(link):
            self._handler.link_recovered(link)

    def link_closed(self, link: LinkSession, gracefully: bool) -> None:
        deadline = self._proving.pop(link, None)
        if deadline is not None:
            deadline.cancel()  # gone before it proved anything
        elif link not in self._refused:
            self._handler.link_closed(link, gracefully)


def _sessions(
    handler: LinkHandler,
    clock: IReactorTime,
    *,
    local_name: str,
    local_type: ServiceType,
    peer_type: ServiceType,
    dialer: bool,
    noise: RateLimitedLog | None = None,
) -> Attach:
    """Runs a :class:`LinkSession` for ``handler`` on each new conversation, naming the peer
    by its handshake (there is no certificate to take the name from); ``noise`` rate-limits
    the lines about handshakes dropped, which anyone can cause."""

    def attach(conversation: KCPConversation) -> None:
        session = LinkSession(
            conversation,
            handler,
            clock,
            local_name=local_name,
            local_type=local_type,
            peer_type=peer_type,
            dialer=dialer,
            noise=noise,
        )
        conversation.session = session
        session.start()

    return attach


def core_sessions(
    handler: LinkHandler,
    clock: IReactorTime,
    core_name: str,
    current_link: CurrentLink,
    noise: RateLimitedLog | None = None,
) -> Attach:
    """Core's side: each Cell names itself in its handshake, and :class:`NameGuard` keeps a
    name that ``current_link`` (``registry.link``) says is linked from elsewhere. ``noise``
    (the endpoint's) rate-limits the lines about handshakes dropped."""
    return _sessions(
        NameGuard(handler, current_link, clock),
        clock,
        local_name=core_name,
        local_type=ServiceType.CORE,
        peer_type=ServiceType.CELL,
        dialer=False,
        noise=noise,
    )


def cell_sessions(handler: LinkHandler, clock: IReactorTime, cell_name: str) -> Attach:
    """A Cell's side (our simulated Cells): it announces ``cell_name`` first."""
    return _sessions(
        handler,
        clock,
        local_name=cell_name,
        local_type=ServiceType.CELL,
        peer_type=ServiceType.CORE,
        dialer=True,
    )


def cell_link_endpoint(
    handler: LinkHandler,
    clock: IReactorTime,
    core_name: str,
    current_link: CurrentLink,
    limits: Limits = DEFAULT_LIMITS,
) -> KCPEndpoint:
    """Core's KCP port protocol: Cells dial in, ``handler`` (the registry) hears of them.

    ``current_link`` is ``registry.link``: a name held by a live link from another address,
    over either wire, is not handed to a new claimant. What anyone can make it log (garbage,
    dropped handshakes) is rate-limited per source, in one place.
    """
    noise = RateLimitedLog(KCPEndpoint.log, clock)
    attach = core_sessions(handler, clock, core_name, current_link, noise)
    return KCPEndpoint(clock, attach, limits, noise)
