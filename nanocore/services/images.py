"""The TLS image site as a service: the first free port of 5801-5900 once the state is loaded.

As in the original, the image server takes the first free port of its range on
`listen_address`. It serves only once the operations exist (it reads the catalogue); stopping
stops listening and aborts the connections still open, so an upload in progress is cleaned
up before the store below it closes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from nanocore.images.site import ImageSite
from nanocore.services.link import listen_first_free
from nanocore.services.listen import port_of

log = Logger()


class ImageSiteService(Service):
    """Serves the site `after()` gives, on the first free port of `ports`, until stop."""

    def __init__(
        self,
        *,
        ports: Sequence[int],
        listen: Callable[[int, ImageSite], IListeningPort],
        address: str,
        after: Callable[[], Deferred[ImageSite]],
        on_failure: Callable[[Failure], object],
    ) -> None:
        self._ports = ports
        self._listen = listen
        self._address = address
        self._after = after
        self._on_failure = on_failure
        self._waiting: Deferred[Any] | None = None
        self.site: ImageSite | None = None
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        self._waiting = self._after()
        self._waiting.addCallbacks(self._start_listening, self._not_started)

    def _start_listening(self, site: ImageSite) -> None:
        self._waiting = None
        self.site = site
        try:
            self.port = listen_first_free(
                self._ports, lambda number: self._listen(number, site), self._address
            )
        except CannotListenError:
            self._on_failure(Failure())
            return
        log.info(
            "image site (TLS) on {address}:{port}", address=self._address, port=port_of(self.port)
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
        if self.site is not None:
            self.site.close_connections()
