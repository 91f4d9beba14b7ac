"""The version document and the OpenAPI document: routes about the API itself."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from nanocore import COMPATIBLE_CORE_VERSION, __version__
from nanocore.api.route import Call, Raw, Route
from nanocore.api.schema import ANY, STRING, obj

VERSION_DOCUMENT = {
    "name": "nanocore",
    "version": __version__,
    "compatible": COMPATIBLE_CORE_VERSION,
}


def routes(all_routes: Callable[[], Sequence[Route]]) -> list[Route]:
    """``all_routes`` is called once, on the first OpenAPI request, and the bytes kept."""
    rendered: list[bytes] = []

    def version(call: Call) -> object:
        return VERSION_DOCUMENT

    def openapi(call: Call) -> Raw:
        if not rendered:
            from nanocore.api.openapi import render_document

            rendered.append(render_document(all_routes()))
        return Raw(rendered[0])

    return [
        Route(
            "GET",
            "/",
            version,
            "Which server this is and which Core it is compatible with (unsigned)",
            "meta",
            auth=None,
            response=obj(name=STRING, version=STRING, compatible=STRING),
            cacheable=True,
        ),
        Route(
            "GET",
            "/openapi.json",
            openapi,
            "This OpenAPI 3.1 document (raw JSON, not enveloped)",
            "meta",
            response=ANY,
        ),
    ]
