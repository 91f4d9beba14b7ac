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

from collections.abc import Sequence

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
