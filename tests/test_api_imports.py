"""The modules of ``nanocore.api`` import one way: no circle, even through function-level
imports (the route table once went families → meta → openapi → families)."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import nanocore.api

PACKAGE = "nanocore.api"


def imports_within(path: Path) -> set[str]:
    """The ``nanocore.api`` modules a file imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == PACKAGE:
                found.update(f"{PACKAGE}.{alias.name}" for alias in node.names)
            elif node.module.startswith(PACKAGE + "."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(PACKAGE + "."))
    return found


class ImportDirectionTests(SynchronousTestCase):
    def test_the_api_modules_import_one_way(self) -> None:
        folder = Path(nanocore.api.__file__).parent
        graph = {
            f"{PACKAGE}.{path.stem}": imports_within(path)
            for path in folder.glob("*.py")
            if path.stem != "__init__"
        }
        self.assertIn("nanocore.api.openapi", graph["nanocore.api.meta"])
        try:
            order = list(TopologicalSorter(graph).static_order())
        except CycleError as error:
            self.fail(f"import circle: {error.args[1]}")
        self.assertLess(order.index("nanocore.api.route"), order.index("nanocore.api.app"))

    def test_function_level_imports_count(self) -> None:
        path = Path(self.mktemp())
        path.write_text(
            "from nanocore.api import route\n"
            "def main():\n    from nanocore.api.families import all_routes\n"
        )
        self.assertEqual(imports_within(path), {"nanocore.api.route", "nanocore.api.families"})
