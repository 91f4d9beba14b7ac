"""The scheduler's choice with each Cell's verdict kept between decisions.

Placement shows the scheduler the same :class:`CellCapacity` object for a Cell until something
about that Cell changes (its report, a claim on it, its record or load), and a burst of creates
asks for the same demand again and again. Filters and weighers judge each Cell on its own, so
a Cell's verdict (refused, or its score) holds while its capacity object and the demand are
the same: a decision then judges only the Cells that changed (the one chosen last time, those
that reported) instead of filtering and scoring the whole pool, and, told which those are,
looks at no other Cell: the fitting ones wait in a heap by score.

:meth:`PoolChoice.choose` gives the Cell :meth:`Scheduler.choose` gives, and when no Cell
fits it calls that very method for the refusal and its reasons.

A cluster creates guests of a few sizes, and a verdict holds for one demand only:
:class:`RecentDemands` keeps a :class:`PoolChoice` for each of the last few demands, and the
Cells changed since each one's last decision, so alternating sizes do not judge the whole
pool anew at every decision.

``tests/test_fastscheduler.py`` holds the two to each other.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Mapping

from nanocore.scheduler import CellCapacity, Demand, Scheduler


class PoolChoice:
    """Each Cell's verdict for the last demand, kept while its capacity object is the same.

    The fitting Cells wait in a heap by (best score, smallest name); an entry whose Cell was
    judged again since it was pushed is dropped when it comes to the top.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._demand: Demand | None = None
        #: Cell name -> (the capacity judged, its verdict: None refused, else its score).
        self._verdicts: dict[str, tuple[CellCapacity, float | None]] = {}
        self._heap: list[tuple[float, str, int, CellCapacity]] = []
        self._pushed = 0

    def choose(
        self,
        demand: Demand,
        cells: Mapping[str, CellCapacity],
        changed: Collection[str] | None = None,
    ) -> CellCapacity:
        """As :meth:`Scheduler.choose` over ``cells`` (the pool now, by name; ties: the
        smaller name; NoCellFits when none fits). ``changed`` names every Cell whose capacity
        object may differ from the last decision's, added and removed ones included; None:
        any may, and each is looked at (its verdict still kept while its object is)."""
        verdicts = self._verdicts
        if demand != self._demand:
            self._demand = demand
            verdicts.clear()
            self._heap.clear()
            changed = None  # every Cell is to be judged for this demand
        if changed is None:
            for gone in verdicts.keys() - cells.keys():
                del verdicts[gone]
            changed = cells.keys()
        verdict = self.scheduler.verdict
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


#: Demands whose verdicts a pool keeps, the most recently used.
KEPT_DEMANDS = 8


class RecentDemands:
    """A :class:`PoolChoice` for each of the last :data:`KEPT_DEMANDS` demands over one pool,
    and for each, the Cells changed since its last decision (None: any may have)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        #: Least recently used first.
        self._choices: dict[Demand, PoolChoice] = {}
        self._changed: dict[Demand, set[str] | None] = {}

    def changed(self, names: Iterable[str] | None) -> None:
        """These Cells' capacity objects may differ now (None: any Cell's may)."""
        pending = self._changed
        for demand, since in pending.items():
            if names is None:
                pending[demand] = None
            elif since is not None:
                since.update(names)

    def choose(self, demand: Demand, cells: Mapping[str, CellCapacity]) -> CellCapacity:
        """:meth:`PoolChoice.choose` with ``demand``'s own choice, told what changed since."""
        choice = self._choices.pop(demand, None)
        since = self._changed.pop(demand, None)
        if choice is None:
            if len(self._choices) >= KEPT_DEMANDS:
                oldest = next(iter(self._choices))
                del self._choices[oldest], self._changed[oldest]
            choice = PoolChoice(self.scheduler)
        self._choices[demand] = choice
        self._changed[demand] = set()
        return choice.choose(demand, cells, since)
