"""Routes as werkzeug rules, and the path fixes httprouter made that werkzeug does not.

httprouter (Core's router) answers a miss by redirecting to the path with its trailing slash
toggled, or to the cleaned path matched case-insensitively; werkzeug only adds a missing
trailing slash. These helpers give the API app the rest, over werkzeug's own matching.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any
from urllib.parse import quote

from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter, Map, MapAdapter

_PARAMETER = re.compile(r"([:*])([A-Za-z_][A-Za-z0-9_]*)")


class CatchAllConverter(BaseConverter):
    """httprouter's ``*name``: the rest of the path, even empty, with its leading ``/``.

    werkzeug's own ``path`` converter wants at least one character and drops that slash.
    """

    regex = ".*"
    part_isolating = False
    weight = 200

    def to_python(self, value: str) -> str:
        return "/" + value

    def to_url(self, value: Any) -> str:
        return quote(str(value).lstrip("/"), safe="!$&'()*+,/:;=@")


def werkzeug_rule(template: str) -> str:
    """An httprouter template as a werkzeug rule: ``:a`` → ``<a>``, ``*a`` → ``<rest:a>``."""
    return _PARAMETER.sub(lambda m: f"<{m[2]}>" if m[1] == ":" else f"<rest:{m[2]}>", template)


def fold_static(template: str) -> str:
    """``template`` with its fixed segments lower-cased, for case-insensitive matching."""
    return "/".join(
        segment if segment[:1] in (":", "*") else segment.lower()
        for segment in template.split("/")
    )


def respell(template: str, path: str) -> str:
    """``path`` with its fixed segments spelt as ``template`` registers them."""
    given = path.split("/")
    spelt: list[str] = []
    for index, segment in enumerate(template.split("/")):
        if segment.startswith("*"):
            spelt.extend(given[index:])
            break
        spelt.append(given[index] if segment.startswith(":") else segment)
    return "/".join(spelt)


def clean_path(path: str) -> str:
    """Go's ``CleanPath``: resolve ``.``/``..`` and double slashes, keep a trailing slash."""
    cleaned = posixpath.normpath("/" + path.lstrip("/"))
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    if path.endswith(("/", "/.")) and cleaned != "/":
        cleaned += "/"  # httprouter keeps a trailing slash, and a final "." leaves one
    return cleaned


def toggle_slash(path: str) -> str:
    """The path with its trailing slash removed, or added."""
    return path[:-1] if path.endswith("/") else path + "/"


def configure_map(url_map: Map) -> Map:
    """Redirect only to add a trailing slash, never merge slashes, know ``<rest:…>``."""
    url_map.strict_slashes = True
    url_map.merge_slashes = False
    url_map.redirect_defaults = False
    url_map.converters["rest"] = CatchAllConverter
    return url_map


def matches(adapter: MapAdapter, path: str, method: str) -> bool:
    """Whether `path` reaches a rule of `method` as it stands (no redirect)."""
    try:
        adapter.match(path, method)
    except HTTPException:
        return False
    return True
