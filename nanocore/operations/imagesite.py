"""Where Cells fetch images: the TLS image site's address, as guest operations hand it on.

Cells download disk images (create from an image, reset) and media images (start from media)
straight from Core's image site; Core only tells them its host and port (cell-protocol.md
§5.12). The site (`services/images.py`) takes the first free port of its range, so operations
ask for the address when they need it: None while the site is not listening.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import field, frozen

from nanocore.model import ipv4, port_number


@frozen
class ImageSiteAddress:
    """The host and port Cells reach the image site at."""

    host: str = field(validator=ipv4)
    port: int = field(validator=port_number)


#: What guest operations ask when they need the site: None while there is none.
ImageSiteLocator = Callable[[], ImageSiteAddress | None]


def no_image_site() -> ImageSiteAddress | None:
    return None
