"""Many guests in one log line: the first ones named, the rest counted."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from nanocore.operations.base import MAX_NAMED, named


class NamedTests(SynchronousTestCase):
    def test_a_few_are_all_named(self) -> None:
        self.assertEqual(named(["a", "b"]), "a, b")

    def test_beyond_the_limit_the_rest_are_counted(self) -> None:
        items = [f"g{i}" for i in range(MAX_NAMED + 3)]
        shown = named(items)
        self.assertTrue(shown.endswith(f"g{MAX_NAMED - 1} and 3 more"), shown)
        self.assertNotIn(f"g{MAX_NAMED},", shown)
