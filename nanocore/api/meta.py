"""Documents about the API itself: the version document and the OpenAPI document.

Neither holds a secret, so both are served unsigned. The OpenAPI document describes the whole
table, itself included, so its route is made by whoever assembles the table
(:func:`document_route`); it is rendered on the first request and the bytes kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cache

from nanocore import COMPATIBLE_CORE_VERSION, __version__
from nanocore.api.openapi import render_document
from nanocore.api.route import AnyRoute, Call, Family, Raw, Route
from nanocore.api.schema import ANY, STRING, obj

TAG = "meta"

VERSION_DOCUMENT = {
    "name": "nanocore",
    "version": __version__,
    "compatible": COMPATIBLE_CORE_VERSION,
}

about: Family[object] = Family(TAG)


@about.route(
    "GET",
    "/",
    "Which server this is and which Core it is compatible with (unsigned)",
    auth=None,
    response=obj(name=STRING, version=STRING, compatible=STRING),
    cacheable=True,
)
def version(ops: object, call: Call) -> object:
    return VERSION_DOCUMENT


def document_route(table: Callable[[], Iterable[AnyRoute]]) -> Route[object]:
    """``GET /openapi.json``: the document of ``table`` (called once, on the first request)."""
    rendered = cache(lambda: render_document(table()))

    def document(ops: object, call: Call) -> Raw:
        return Raw(rendered(), b"application/json")

    return Route(
        "GET",
        "/openapi.json",
        document,
        "This OpenAPI 3.1 document (unsigned, not enveloped)",
        TAG,
        auth=None,
        response=ANY,
        raw="application/json",
    )
