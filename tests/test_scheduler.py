"""The scheduler room: filters in their order, the headroom score, and the reasons it gives."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nanocore.scheduler import (
    DEFAULT_FILTERS,
    Available,
    CellCapacity,
    Cores,
    CpuLoad,
    Demand,
    Headroom,
    Memory,
    NoCellFits,
    Scheduler,
    format_size,
)

GiB = 1 << 30
DEMAND = Demand(cores=2, memory=4 * GiB, disk=50 * GiB)


def cell(name: str, **fields: Any) -> CellCapacity:
    values: dict[str, Any] = dict(
        alive=True,
        enabled=True,
        reported=True,
        cores=8,
        cpu_usage=10.0,
        memory_free=16 * GiB,
        disk_free=500 * GiB,
        memory_total=16 * GiB,
        disk_total=500 * GiB,
    )
    values.update(fields)
    return CellCapacity(name, **values)


class FormatSizeTests(SynchronousTestCase):
    def test_whole_units_as_nano_words_them(self) -> None:
        self.assertEqual(format_size(256 * GiB), "256 GB")
        self.assertEqual(format_size(8 << 40), "8 TB")
        self.assertEqual(format_size(1536 << 20), "1 GB")
        self.assertEqual(format_size(512 << 20), "512 MB")
        self.assertEqual(format_size(2048), "2 KB")
        self.assertEqual(format_size(1023), "1023 B")


class ChoiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.scheduler = Scheduler()

    def test_the_cell_with_most_headroom_wins(self) -> None:
        roomy = cell("cell-b", memory_free=15 * GiB)
        busy = cell("cell-a", memory_free=6 * GiB, cpu_usage=70.0)
        self.assertEqual(self.scheduler.choose(DEMAND, [busy, roomy]).name, "cell-b")

    def test_ties_go_to_the_smaller_name_whatever_the_order(self) -> None:
        cells = [cell(f"cell-{letter}") for letter in "dbca"]
        for _ in range(5):
            random.shuffle(cells)
            self.assertEqual(self.scheduler.choose(DEMAND, cells).name, "cell-a")

    def test_an_overcommitted_cell_scores_low_instead_of_wrapping_round(self) -> None:
        """The original's unsigned arithmetic made a Cell loaded past 3x look emptiest."""
        overloaded = cell("cell-a", placed_memory=100 * GiB, placed_disk=2000 * GiB)
        fresh = cell("cell-b", cpu_usage=30.0)
        scores = Headroom().scores(DEMAND, [overloaded, fresh])
        self.assertLess(scores[0], scores[1])
        self.assertGreaterEqual(scores[0], 0.0)
        self.assertEqual(self.scheduler.choose(DEMAND, [overloaded, fresh]).name, "cell-b")

    def test_a_fully_busy_cell_has_no_idle_cores_and_no_negative_score(self) -> None:
        self.assertEqual(
            Headroom().scores(
                Demand(1, 1, 1), [cell("c", cpu_usage=100.0, memory_free=0, disk_free=0)]
            ),
            [(0.0 + 2.0 * 24 + 1.5 * 3 * 16 * GiB + 0.5 * 3 * 500 * GiB) / 2.0],
        )

    def test_a_lone_candidate_needs_no_weighing(self) -> None:
        only = cell("cell-z")
        self.assertIs(Scheduler(weighers=()).choose(DEMAND, [only]), only)


class RefusalTests(SynchronousTestCase):
    def refused(self, cells: list[CellCapacity], scheduler: Scheduler | None = None) -> NoCellFits:
        with self.assertRaises(NoCellFits) as caught:
            (scheduler or Scheduler()).choose(DEMAND, cells)
        return caught.exception

    def test_every_cell_is_named_with_the_filter_that_refused_it(self) -> None:
        error = self.refused(
            [
                cell("cell-e", memory_free=2 * GiB),
                cell("cell-d", disk_free=10 * GiB),
                cell("cell-c", cpu_usage=95.5),
                cell("cell-b", enabled=False),
                cell("cell-a", alive=False),
                cell("cell-f", reported=False),
                cell("cell-g", cores=1, placed_cores=2),
            ]
        )
        self.assertEqual(
            [(r.cell, r.filter, r.reason) for r in error.rejections],
            [
                ("cell-a", "available", "offline"),
                ("cell-b", "available", "disabled"),
                ("cell-c", "cpu", "cpu load 95.50% over 80.00%"),
                ("cell-d", "disk", "disk 10 GB free < 50 GB"),
                ("cell-e", "memory", "memory 2 GB free < 4 GB"),
                ("cell-f", "available", "no recent report"),
                ("cell-g", "cores", "cores 2 placed + 2 > 3 x 1"),
            ],
        )
        # The headline is where the Cells that got furthest stopped.
        self.assertEqual(error.headline, "no cell has enough cores: 2")
        self.assertEqual(str(error.rejections[4]), "cell-e: memory 2 GB free < 4 GB")

    def test_nano_messages_for_each_binding_constraint(self) -> None:
        self.assertEqual(
            self.refused([cell("a", memory_free=GiB)]).headline,
            "no cell has enough memory: 4 GB",
        )
        self.assertEqual(
            self.refused([cell("a", disk_free=GiB)]).headline, "no cell has enough disk: 50 GB"
        )
        self.assertEqual(
            self.refused([cell("a", cpu_usage=81.0)]).headline,
            "all cell cores are busy (load over 80.00%)",
        )
        self.assertEqual(
            self.refused([cell("a", alive=False)]).headline, "no cell is alive and enabled"
        )

    def test_busy_cpus_are_not_reported_as_missing_disk(self) -> None:
        """The original's short-circuit said "not enough disk" when CPU was the cause (§3.1a)."""
        error = self.refused([cell("a", cpu_usage=90.0), cell("b", cpu_usage=99.0)])
        self.assertEqual(error.headline, "all cell cores are busy (load over 80.00%)")

    def test_an_empty_pool_keeps_nanos_disk_message(self) -> None:
        error = self.refused([])
        self.assertEqual(
            (error.headline, error.rejections), ("no cell has enough disk: 50 GB", ())
        )

    def test_claims_count_against_free_memory(self) -> None:
        self.assertEqual(self.refused([cell("a", memory_free=-GiB)]).rejections[0].reason,
                         "memory 0 B free < 4 GB")  # fmt: skip

    def test_order_is_configuration(self) -> None:
        cells = [cell("a", memory_free=GiB, cpu_usage=90.0)]
        self.assertEqual(self.refused(cells).rejections[0].filter, "cpu")
        memory_first = Scheduler(filters=(Available(), Memory(), CpuLoad()))
        self.assertEqual(self.refused(cells, memory_first).rejections[0].filter, "memory")
        lenient = Scheduler(filters=(Available(), CpuLoad(limit=95.0), Memory(), Cores(4)))
        self.assertEqual(self.refused(cells, lenient).headline, "no cell has enough memory: 4 GB")

    def test_weighers_add_up(self) -> None:
        class PreferName:
            def scores(self, demand: Demand, cells: list[CellCapacity]) -> list[float]:
                return [1e30 if c.name == "zz" else 0.0 for c in cells]

        cells = [cell("aa"), cell("zz", memory_free=5 * GiB)]
        self.assertEqual(Scheduler().choose(DEMAND, cells).name, "aa")
        both = Scheduler(weighers=(Headroom(), PreferName()))
        self.assertEqual(both.choose(DEMAND, cells).name, "zz")

    def test_a_scheduler_needs_something_to_do(self) -> None:
        with self.assertRaises(ValueError):
            Scheduler(filters=(), weighers=())


capacities = st.builds(
    CellCapacity,
    name=st.text(alphabet="abcdef", min_size=1, max_size=3),
    alive=st.booleans(),
    enabled=st.booleans(),
    reported=st.booleans(),
    cores=st.integers(0, 64),
    cpu_usage=st.floats(0, 100),
    memory_free=st.integers(-(8 * GiB), 64 * GiB),
    disk_free=st.integers(-(8 * GiB), 1 << 40),
    memory_total=st.integers(0, 64 * GiB),
    disk_total=st.integers(0, 1 << 40),
    placed_cores=st.integers(0, 200),
    placed_memory=st.integers(0, 200 * GiB),
    placed_disk=st.integers(0, 4 << 40),
)
demands = st.builds(
    Demand, cores=st.integers(1, 16), memory=st.integers(1, 32 * GiB), disk=st.integers(1, 1 << 40)
)


class SchedulerProperties(SynchronousTestCase):
    @given(demands, st.lists(capacities, max_size=12, unique_by=lambda c: c.name), st.randoms())
    def test_the_choice_passes_every_filter_and_ignores_input_order(
        self, demand: Demand, cells: list[CellCapacity], rng: random.Random
    ) -> None:
        scheduler = Scheduler()
        try:
            chosen = scheduler.choose(demand, cells)
        except NoCellFits as error:
            self.assertEqual(
                sorted(r.cell for r in error.rejections), sorted(c.name for c in cells)
            )
            return
        for step in DEFAULT_FILTERS:
            passed, refused = step.split(demand, [chosen])
            self.assertEqual((passed, refused), ([chosen], []))
        shuffled = list(cells)
        rng.shuffle(shuffled)
        self.assertEqual(scheduler.choose(demand, shuffled), chosen)
