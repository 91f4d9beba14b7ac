"""Where Cells fetch images: the TLS image site's address, as guest operations hand it on.

Cells download disk images (create from an image, reset) and media images (start from media)
straight from Core's image site; Core only tells them its host and port (cell-protocol.md
§5.12). The site (`services/images.py`) takes the first free port of its range, so operations
ask for the address when they need it: None while the site is not listening.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from attrs import field, frozen

from nanocore.model import MediaImage, ipv4, port_number
from nanocore.operations.errors import InvalidRequest, UnknownEntity


@frozen
class ImageSiteAddress:
    """The host and port Cells reach the image site at."""

    host: str = field(validator=ipv4)
    port: int = field(validator=port_number)


#: What guest operations ask when they need the site: None while there is none.
ImageSiteLocator = Callable[[], ImageSiteAddress | None]


def no_image_site() -> ImageSiteAddress | None:
    return None


def media_site(
    source: str, media_images: Mapping[str, MediaImage], locate: ImageSiteLocator
) -> ImageSiteAddress:
    """Where a Cell fetches media image ``source`` (start from media, insert media).

    Refused before any Cell is asked: no id, an id the catalogue does not hold, an image with
    no file yet (nothing to read), or no image site listening.
    """
    if not source:
        raise InvalidRequest("media image required")
    image = media_images.get(source)
    if image is None:
        raise UnknownEntity(f"invalid media image '{source}'")
    if not image.version:
        raise InvalidRequest(f"media image '{source}' has no file yet")
    site = locate()
    if site is None:
        raise InvalidRequest("no image server available")
    return site
