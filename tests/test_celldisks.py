"""The simulated Cell's disks: progress steps and the names of disk files."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import TestCase

from nanocore.testing.celldisks import BLANK_DISK, CellDisks, blank_disk, percent_steps


class PercentStepsTests(TestCase):
    def test_each_step_is_told_once_and_never_100(self) -> None:
        told: list[int] = []
        moved = percent_steps(1000, told.append)
        for done in (10, 250, 260, 499, 500, 999, 1000):
            moved(done)
        self.assertEqual(told, [25, 50, 75])

    def test_an_unknown_total_tells_nothing(self) -> None:
        told: list[int] = []
        percent_steps(0, told.append)(100)
        self.assertEqual(told, [])


class DiskNameTests(TestCase):
    def test_a_guest_id_that_is_not_a_plain_name_gets_no_file(self) -> None:
        disks = CellDisks(client=None, folder=Path("disks"))  # type: ignore[arg-type]
        self.assertEqual(disks.path("a-1_b"), Path("disks/a-1_b.qcow2"))
        for bad in ("../x", "a/b", "", "x" * 65):
            self.assertFalse(disks.holds(bad))
            self.assertRaises(ValueError, disks.path, bad)

    def test_blank_disks_differ_per_guest(self) -> None:
        self.assertEqual(len(blank_disk("a")), BLANK_DISK)
        self.assertNotEqual(blank_disk("a"), blank_disk("b"))
