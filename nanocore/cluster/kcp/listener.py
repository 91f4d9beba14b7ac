"""Core's KCP port as a service: bound on the first free UDP port of 5600-5799, closed politely.

Binding is synchronous (``listenUDP``), so a start that finds no free port fails at once. On
stop every Cell is told goodbye (``ConnectionClosedEvent``, the graceful disconnect stock Cells
expect) and the port closes once those are acknowledged or after the close grace; closing the
socket first would silence every conversation on it at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from nanocore.cluster.kcp.endpoint import KCPEndpoint

#: The original's port range for its KCP listener (``selectAvailablePort``, §2.4).
LINK_PORTS = range(5600, 5800)
#: The protocol named in discovery echoes for this link (what stock Cells dial).
LINK_PROTOCOL = "kcp"


class KCPLinkService(Service):
    """Holds ``endpoint`` on the first free UDP port of ``ports`` on ``interface``."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        endpoint: KCPEndpoint,
        interface: str,
        ports: Iterable[int] = LINK_PORTS,
    ) -> None:
        self._reactor = reactor
        self.endpoint = endpoint
        self._interface = interface
        self._ports = tuple(ports)
        self.port: IListeningPort | None = None

    @property
    def port_number(self) -> int:
        """The UDP port bound (to advertise in discovery echoes)."""
        if self.port is None:
            raise RuntimeError("the KCP link is not listening")
        number: int = self.port.getHost().port  # type: ignore[attr-defined]
        return number

    def startService(self) -> None:
        error: CannotListenError | None = None
        for number in self._ports:
            try:
                self.port = self._reactor.listenUDP(
                    number, self.endpoint, interface=self._interface
                )
                break
            except CannotListenError as e:
                error = e
        else:
            raise error or CannotListenError(self._interface, 0, "no port to try")
        super().startService()
        self.log.warn(
            "Cell link (KCP, plaintext) on {address}:{port}: as in Nano, nothing is encrypted"
            " and a Cell's name is what it claims; anyone who can reach this port can read"
            " Cell traffic and join as a Cell",
            address=self._interface,
            port=self.port_number,
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        await self.endpoint.close_all()
        port, self.port = self.port, None
        if port is not None:
            await maybeDeferred(port.stopListening)
