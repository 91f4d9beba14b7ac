"""A Cell link as a service: listening on the first free port of a range, owning its links.

Like the original, which opens its KCP listener on the first free UDP port of 5600-5799 on
`listen_address`, each of Core's links (KCP/UDP for stock Cells, TLS/TCP for ours) takes the
first free port of that range. It listens only once the Core's state is loaded, so that every
Cell event reaches operations that can record it; discovery asks the links what to advertise.
One shape serves both wires: what differs is how a port is bound (`listen`) and who owns the
links accepted on it (`Links`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, gatherResults, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nanocore.cluster.discovery import SERVICE_TYPE_CORE, ServiceEntry
from nanocore.services.listen import port_of

log = Logger()

T = TypeVar("T")

#: The original's link port range on `listen_address`.
LINK_PORTS = range(5600, 5800)


def core_name() -> str:
    """`Core_<MAC hex>`, as the original names itself (§2.6); the host's primary MAC."""
    return f"Core_{uuid.getnode():012x}"


class Links(Protocol):
    """Who owns the links accepted on a link's port (`CellLinkFactory`, `KCPEndpoint`)."""

    def close_all(self) -> Deferred[None]:
        """Refuse new links, say goodbye to every link, and fire once each one is gone."""


def listen_first_free(
    ports: Sequence[int], listen: Callable[[int], IListeningPort], interface: str = ""
) -> IListeningPort:
    """Listen on the first port of `ports` that is free.

    When none is, the error names the whole range on `interface`, and holds the refusal of
    its last port as the reason.
    """
    refused: CannotListenError | None = None
    for number in ports:
        try:
            return listen(number)
        except CannotListenError as error:
            refused = error
    raise CannotListenError(interface, f"{ports[0]}-{ports[-1]}", refused)


@implementer(IListeningPort)
class HeldTogether:
    """A link's port and a port of the same number held idle on another transport.

    Stock Cells dial the advertised port over UDP whatever protocol discovery names, so a
    Core without its KCP link still holds that UDP port: otherwise a Cell on the same host
    could bind it, and stock Cells would link to that Cell instead of Core.
    """

    def __init__(self, port: IListeningPort, held: IListeningPort) -> None:
        self._port = port
        self._held = held

    def startListening(self) -> None:
        """Both are bound already."""

    def stopListening(self) -> Deferred[None]:
        stopping = [maybeDeferred(each.stopListening) for each in (self._port, self._held)]
        return gatherResults(stopping).addCallback(lambda _: None)

    def getHost(self) -> IAddress:
        return self._port.getHost()


def holding(
    listen: Callable[[int], IListeningPort], hold: Callable[[int], IListeningPort]
) -> Callable[[int], IListeningPort]:
    """`listen` on a number that `hold` can bind too, holding both (see `HeldTogether`)."""

    def both(number: int) -> IListeningPort:
        port = listen(number)
        try:
            held = hold(number)
        except CannotListenError:
            port.stopListening()
            raise
        return HeldTogether(port, held)

    return both


class FirstFreePortService(Service, Generic[T]):
    """Listens on the first free port of `ports` once `after()` fires, until stop.

    What waits for the Core's state before it serves (a Cell link, the image site): `listen(n,
    ready)` binds port `n` for what `after()` gave. No free port, or a failure of what it
    waits for, goes to `on_failure` (the Core says why and stops); stopping cancels the wait
    first. Subclasses say what listening means (`listening`) and what a stop closes, in which
    order (`closing`).
    """

    def __init__(
        self,
        *,
        ports: Sequence[int],
        listen: Callable[[int, T], IListeningPort],
        address: str,
        after: Callable[[], Deferred[T]],
        on_failure: Callable[[Failure], object],
    ) -> None:
        if not ports:
            raise ValueError("a service needs at least one port to try")
        self._ports = ports
        self._listen = listen
        self._address = address
        self._after = after
        self._on_failure = on_failure
        self._waiting: Deferred[T] | None = None
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        self._waiting = self._after()
        self._waiting.addCallbacks(self._ready, self._not_started)

    def _ready(self, ready: T) -> None:
        self._waiting = None
        try:
            self.port = listen_first_free(
                self._ports, lambda number: self._listen(number, ready), self._address
            )
        except CannotListenError:
            self._on_failure(Failure())
            return
        self.listening(ready)

    def listening(self, ready: T) -> None:
        """`self.port` listens now."""

    def _not_started(self, failure: Failure) -> None:
        self._waiting = None
        if not failure.check(CancelledError):
            self._on_failure(failure)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._waiting is not None:
            self._waiting.cancel()
        return Deferred.fromCoroutine(self.closing())

    async def closing(self) -> None:
        """Stop listening."""
        await self.stop_listening()

    async def stop_listening(self) -> None:
        port, self.port = self.port, None
        if port is not None:
            await maybeDeferred(port.stopListening)


class CellLinkService(FirstFreePortService[object]):
    """Cell links on the first free port of `ports`, from when `after()` fires until stop.

    `listen(port)` binds one port for `links` (who owns every link accepted on it);
    `protocol` is what discovery echoes for it ("kcp", "tls"). `warning`, when given, is
    logged once the link listens, saying what it exposes. No free port, or a failure of what
    it waits for, goes to `on_failure` (the Core says why and stops). Stopping first tells
    `leaving` (Core's goodbyes are not Cells lost: the registry keeps them from its
    observers), then closes every link (Cells get a goodbye), waits until each one is gone,
    and only then closes the port (over UDP the goodbyes and their acknowledgements use it).
    """

    def __init__(
        self,
        *,
        ports: Sequence[int],
        listen: Callable[[int], IListeningPort],
        links: Links,
        protocol: str,
        address: str,
        after: Callable[[], Deferred[Any]],
        on_failure: Callable[[Failure], object],
        warning: str = "",
        leaving: Callable[[], object] = lambda: None,
    ) -> None:
        super().__init__(
            ports=ports,
            listen=lambda number, _: listen(number),
            address=address,
            after=after,
            on_failure=on_failure,
        )
        self._links = links
        self._protocol = protocol
        self._warning = warning
        self._leaving = leaving

    def advertised(self) -> ServiceEntry | None:
        """What discovery echoes: this link's protocol and port; None until it listens."""
        if self.port is None:
            return None
        return ServiceEntry(
            type=SERVICE_TYPE_CORE,
            protocol=self._protocol,
            address=self._address,
            port=port_of(self.port),
        )

    def listening(self, ready: object) -> None:
        assert self.port is not None
        # A link that exposes something (the plaintext KCP link) says so where it starts.
        say = log.warn if self._warning else log.info
        say(
            "Cell link ({protocol}) on {address}:{port}{exposes}",
            protocol=self._protocol.upper(),
            address=self._address,
            port=port_of(self.port),
            # not "warning": the legacy log observers take that key for a Python warning
            exposes=f": {self._warning}" if self._warning else "",
        )

    async def closing(self) -> None:
        self._leaving()
        await self._links.close_all()
        await self.stop_listening()


def advertised_together(*links: CellLinkService) -> Callable[[], tuple[ServiceEntry, ...]]:
    """What discovery echoes for `links`, in their order: all of them, or nothing until every
    one listens (a stock Cell dials the first entry, whatever its protocol)."""

    def entries() -> tuple[ServiceEntry, ...]:
        found = tuple(entry for entry in (link.advertised() for link in links) if entry)
        return found if len(found) == len(links) else ()

    return entries
