"""The instance index's journal of load changes, which placement reads to re-judge only the
Cells whose load moved since a pool's last decision."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nanocore.store import indexes
from nanocore.store.indexes import InstanceIndex
from tests.cellfixtures import instance

CELLS = ("Cell_a", "Cell_b", "Cell_c", "Cell_d")

steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 9), st.sampled_from(CELLS)),
        st.tuples(st.just("remove"), st.integers(0, 9)),
        st.tuples(
            st.just("mark"),
        ),
    ),
    max_size=60,
)


class LoadJournalTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(indexes, "LOAD_JOURNAL", 8)  # a short journal, so histories outrun it

    @given(steps)
    def test_the_cells_changed_since_a_mark(self, script: list[tuple[Any, ...]]) -> None:
        """Exactly the Cells whose load changed after the mark, or None when the journal no
        longer holds them all."""
        index = InstanceIndex()
        held: dict[str, Any] = {}
        changes: list[str] = []  # every Cell whose load changed, in order
        marks: list[int] = []
        for step, *arguments in script:
            if step == "add":
                number, cell = arguments
                guest = f"vm{number}"
                if guest in held:
                    continue
                held[guest] = instance(guest, cell, name=guest)
                index.added(held[guest])
                changes.append(cell)
            elif step == "remove":
                gone = held.pop(f"vm{arguments[0]}", None)
                if gone is not None:
                    index.removed(gone)
                    changes.append(gone.cell)
            else:
                marks.append(index.load_changes)
        for mark in marks:
            now, changed = index.loads_changed_since(mark)
            self.assertEqual(now, len(changes))
            if len(changes) - mark > 8:
                self.assertIsNone(changed)
            else:
                self.assertEqual(changed, set(changes[mark:]))
