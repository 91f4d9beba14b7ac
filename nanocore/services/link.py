"""The Cell link as a service: listening on the first free port of a range, owning its links.

Like the original, which opens its KCP listener on the first free UDP port of 5600-5799 on
`listen_address`, the TLS link takes the first free TCP port of that range. It listens only
once the Core's state is loaded, so that every Cell event reaches operations that can record
it; discovery asks it what to advertise.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from nanocore.cluster.discovery import SERVICE_TYPE_CORE, ServiceEntry
from nanocore.cluster.transport import CellLinkFactory
from nanocore.services.listen import port_of

log = Logger()

#: The original's link port range on `listen_address`.
LINK_PORTS = range(5600, 5800)


def core_name() -> str:
    """`Core_<MAC hex>`, as the original names itself (§2.6); the host's primary MAC."""
    return f"Core_{uuid.getnode():012x}"


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


class CellLinkService(Service):
    """Cell links on the first free port of `ports`, from when `after()` fires until stop.

    `listen(port)` binds one port for `links` (the factory of every accepted connection);
    `protocol` is what discovery echoes for it ("tls"). No free port, or a failure of what it
    waits for, goes to `on_failure` (the Core says why and stops). Stopping stops listening,
    closes every link (Cells get a goodbye) and waits until each connection is gone.
    """

    def __init__(
        self,
        *,
        ports: Sequence[int],
        listen: Callable[[int], IListeningPort],
        links: CellLinkFactory,
        protocol: str,
        address: str,
        after: Callable[[], Deferred[Any]],
        on_failure: Callable[[Failure], object],
    ) -> None:
        if not ports:
            raise ValueError("a Cell link needs at least one port to try")
        self._ports = ports
        self._listen = listen
        self._links = links
        self._protocol = protocol
        self._address = address
        self._after = after
        self._on_failure = on_failure
        self._waiting: Deferred[Any] | None = None
        self.port: IListeningPort | None = None

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

    def startService(self) -> None:
        super().startService()
        self._waiting = self._after()
        self._waiting.addCallbacks(self._start_listening, self._not_started)

    def _start_listening(self, _: object) -> None:
        self._waiting = None
        try:
            self.port = listen_first_free(self._ports, self._listen, self._address)
        except CannotListenError:
            self._on_failure(Failure())
            return
        log.info(
            "Cell link ({protocol}) on {address}:{port}",
            protocol=self._protocol.upper(),
            address=self._address,
            port=port_of(self.port),
        )

    def _not_started(self, failure: Failure) -> None:
        self._waiting = None
        if not failure.check(CancelledError):
            self._on_failure(failure)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._waiting is not None:
            self._waiting.cancel()
        port, self.port = self.port, None
        if port is not None:
            await maybeDeferred(port.stopListening)
        for connection in list(self._links.connections):
            session = connection.session
            if session is not None:
                session.close()  # a goodbye first, when the Cell is linked
            else:
                connection.close()
        await self._links.when_all_closed()
