"""Where Cells fetch images: the TLS image site's address, as guest operations hand it on.

Cells download disk images (create from an image, reset) and media images (start from media)
straight from Core's image site; Core only tells them its host and port (cell-protocol.md
§5.12). The site itself is issue #12's room: until it reports the port it bound, the service
tree hands operations the address it will use (``listen_address`` and the first port of its
range).
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import field, frozen

from nanocore.model import ipv4, port_number

#: The original's image site takes the first free port of this range on ``listen_address``.
IMAGE_SITE_PORTS = range(5801, 5901)


@frozen
class ImageSite:
    """The host and port Cells reach the image site at."""

    host: str = field(validator=ipv4)
    port: int = field(validator=port_number)


#: What guest operations ask when they need the site: None while there is none.
ImageSiteLocator = Callable[[], ImageSite | None]


def no_image_site() -> ImageSite | None:
    return None


def configured_image_site(listen_address: str) -> ImageSiteLocator:
    """The site as the service tree will start it, before it reports its bound port."""
    site = ImageSite(listen_address, IMAGE_SITE_PORTS[0])
    return lambda: site
