"""The scheduler's choice with each Cell's verdict kept between decisions.

Placement shows the scheduler the same :class:`CellCapacity` object for a Cell until something
about that Cell changes (its report, a claim on it, its record or load), and a burst of creates
asks for the same demand again and again. Filters and weighers judge each Cell on its own, so
a Cell's verdict (refused, or its score) holds while its capacity object and the demand are
the same: a decision then judges only the Cells that changed (the one chosen last time, those
that reported) instead of filtering and scoring the whole pool.

:meth:`VerdictCache.choose` gives the Cell :meth:`Scheduler.choose` gives, and when no Cell
fits it calls that very method for the refusal and its reasons.
``tests/test_fastscheduler.py`` holds the two to each other.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Mapping, Sequence

from nanocore.scheduler import CellCapacity, Demand, Scheduler


class VerdictCache:
    """Each Cell's verdict for the last demand, kept while its capacity object is the same."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._demand: Demand | None = None
        #: Cell name -> (the capacity judged, its verdict: None refused, else its score).
        self._verdicts: dict[str, tuple[CellCapacity, float | None]] = {}

    def choose(self, demand: Demand, cells: Sequence[CellCapacity]) -> CellCapacity:
        """As :meth:`Scheduler.choose` (ties: the smaller name; NoCellFits when none fits)."""
        if demand != self._demand:
            self._verdicts.clear()
            self._demand = demand
        verdicts = self._verdicts
        verdict = self.scheduler.verdict
        best: CellCapacity | None = None
        best_score = 0.0
        for cell in cells:
            kept = verdicts.get(cell.name)
            if kept is not None and kept[0] is cell:
                score = kept[1]
            else:
                score = verdict(demand, cell)
                verdicts[cell.name] = (cell, score)
            if score is None:
                continue
            if (
                best is None
                or score > best_score
                or (score == best_score and cell.name < best.name)
            ):
                best, best_score = cell, score
        if best is None:
            return self.scheduler.choose(demand, cells)  # raises NoCellFits with every reason
        return best


class PoolChoice:
    """:class:`VerdictCache` for one pool that is told which Cells changed, so a decision
    costs the changed Cells' verdicts and a heap's top, not a pass over the pool.

    The fitting Cells wait in a heap by (best score, smallest name); an entry whose Cell was
    judged again since it was pushed is dropped when it comes to the top.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._demand: Demand | None = None
        self._verdicts: dict[str, tuple[CellCapacity, float | None]] = {}
        self._heap: list[tuple[float, str, int, CellCapacity]] = []
        self._pushed = 0

    def choose(
        self,
        demand: Demand,
        cells: Mapping[str, CellCapacity],
        changed: Collection[str] | None,
    ) -> CellCapacity:
        """As :meth:`Scheduler.choose` over ``cells`` (the pool now, by name); ``changed``
        names every Cell whose capacity object may differ from the last decision's, added
        and removed ones included (None: any may)."""
        if demand != self._demand or changed is None:
            self._demand = demand
            self._verdicts.clear()
            self._heap.clear()
            changed = cells.keys()
        verdicts, verdict = self._verdicts, self.scheduler.verdict
        for name in changed:
            cell = cells.get(name)
            if cell is None:
                verdicts.pop(name, None)
                continue
            kept = verdicts.get(name)
            if kept is not None and kept[0] is cell:
                continue
            score = verdict(demand, cell)
            verdicts[name] = (cell, score)
            if score is not None:
                self._pushed += 1
                heapq.heappush(self._heap, (-score, name, self._pushed, cell))
        heap = self._heap
        while heap:
            _, name, _, cell = heap[0]
            kept = verdicts.get(name)
            if kept is not None and kept[0] is cell:
                if len(heap) > 2 * len(verdicts) + 64:
                    self._compact()
                return cell
            heapq.heappop(heap)
        return self.scheduler.choose(demand, list(cells.values()))  # raises NoCellFits

    def _compact(self) -> None:
        """Drop the entries of Cells judged again since (the heap would grow without end)."""
        self._heap = [
            entry
            for entry in self._heap
            if (kept := self._verdicts.get(entry[1])) is not None and kept[0] is entry[3]
        ]
        heapq.heapify(self._heap)
