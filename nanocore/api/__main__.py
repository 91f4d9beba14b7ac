"""``python -m nanocore.api``: print the OpenAPI document of the API (``docs/openapi.json``)."""

from nanocore.api.families import all_routes
from nanocore.api.openapi import render_document

print(render_document(all_routes()).decode("utf-8"), end="")
