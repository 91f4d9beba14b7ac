"""The TLS image site as a service: the first free port of 5801-5900 once the state is loaded.

As in the original, the image server takes the first free port of its range on
`listen_address`. It serves only once the operations exist (it reads the catalogue); stopping
stops listening and aborts the connections still open, so an upload in progress is cleaned
up before the store below it closes.
"""

from __future__ import annotations

from twisted.logger import Logger

from nanocore.images.site import ImageSite
from nanocore.services.link import FirstFreePortService
from nanocore.services.listen import port_of

log = Logger()


class ImageSiteService(FirstFreePortService[ImageSite]):
    """Serves the site `after()` gives, on the first free port of `ports`, until stop.

    Stopping stops listening, then aborts the connections still open.
    """

    site: ImageSite | None = None

    def listening(self, site: ImageSite) -> None:
        self.site = site
        assert self.port is not None
        log.info(
            "image site (TLS) on {address}:{port}", address=self._address, port=port_of(self.port)
        )

    async def closing(self) -> None:
        await self.stop_listening()
        if self.site is not None:
            self.site.close_connections()
