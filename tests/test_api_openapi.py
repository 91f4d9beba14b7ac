"""The OpenAPI document and the route table describe the same routes, both ways."""

from __future__ import annotations

import json
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nanocore.api.families import all_routes
from nanocore.api.openapi import build_document, render_document
from nanocore.api.testing import APIClient
from tests.test_api_app import documentation_resource

DOCUMENT = Path(__file__).parent.parent / "docs" / "openapi.json"
METHODS = {"get", "put", "post", "delete", "patch", "options", "head"}


def document_routes(document: dict) -> set[tuple[str, str, str]]:
    """``(METHOD, template, OpenAPI path)`` of every operation in the document."""
    found = set()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                route_method, template = operation["x-route"].split(" ", 1)
                assert route_method == method.upper(), operation["x-route"]
                found.add((route_method, template, path))
    return found


class OpenAPITests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_714_529_472)
        self.resource = documentation_resource(self.clock)
        self.document = build_document(all_routes())

    def test_every_documented_route_exists_in_the_app(self) -> None:
        for method, template, path in document_routes(self.document):
            concrete = "/api/v1" + template.replace(":", "X").replace("*", "/X")
            route = self.resource.route_for(method, concrete)
            self.assertIsNotNone(route, f"{method} {path}")
            assert route is not None
            self.assertEqual(route.path, template)
            expected_path = path.replace("{", ":").replace("}", "")
            self.assertTrue(
                ("/api/v1" + template).replace("*", ":") == expected_path, (template, path)
            )

    def test_every_app_route_is_documented(self) -> None:
        documented = {(m, t) for m, t, _ in document_routes(self.document)}
        registered = {(route.method, route.path) for route in self.resource.routes}
        self.assertEqual(registered, documented)
        self.assertEqual(len(registered), len(self.resource.routes))
        rules = list(self.resource.app.url_map.iter_rules())
        self.assertEqual(len(rules), len(self.resource.routes))

    def test_operation_ids_are_unique(self) -> None:
        ids = [
            operation["operationId"]
            for item in self.document["paths"].values()
            for operation in item.values()
        ]
        self.assertEqual(len(ids), len(set(ids)))

    def test_document_in_docs_is_current(self) -> None:
        self.assertEqual(
            DOCUMENT.read_bytes(),
            render_document(all_routes()),
            "docs/openapi.json is stale: run python -m nanocore.api > docs/openapi.json",
        )

    def test_served_document_is_the_same(self) -> None:
        client = APIClient(self.resource, self.clock)
        answer = self.successResultOf(client.get("/openapi.json", signed=False))
        self.assertEqual(json.loads(answer.body), json.loads(DOCUMENT.read_bytes()))
        self.assertEqual(answer.header(b"content-type"), b"application/json")

    def test_unsigned_routes_are_marked(self) -> None:
        open_routes = [
            operation["x-route"]
            for item in self.document["paths"].values()
            for operation in item.values()
            if operation.get("security") == []
        ]
        self.assertEqual(open_routes, ["GET /", "GET /openapi.json"])
