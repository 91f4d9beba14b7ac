"""Clones: the guests written from a disk image are remembered while they are, not after."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from nanocore.model import InstanceStatus
from nanocore.operations.guests import clones as clones_module
from nanocore.operations.guests.clones import Clones


class Record:
    """What Clones reads of an instance record."""

    def __init__(self, status: InstanceStatus) -> None:
        self.status = status


class ClonesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.records: dict[str, Any] = {}
        self.clones = Clones(lambda: self.records)

    def test_a_guest_counts_while_it_is_being_created_or_reset(self) -> None:
        for guest, status in (("g1", InstanceStatus.CREATING), ("g2", InstanceStatus.RESETTING)):
            self.records[guest] = Record(status)
            self.clones.add(guest, "img")
        self.assertEqual(self.clones.of("img"), ["g1", "g2"])
        self.assertEqual(self.clones.of("other"), [])
        self.records["g1"].status = InstanceStatus.STOPPED
        del self.records["g2"]
        self.assertEqual(self.clones.of("img"), [])

    def test_memory_stays_bounded_without_anyone_asking(self) -> None:
        self.patch(clones_module, "CLONES_LOOKED_AT", 10)
        for index in range(100):
            guest = f"g{index}"
            self.records[guest] = Record(InstanceStatus.CREATING)
            self.clones.add(guest, "img")
            self.records[guest].status = InstanceStatus.STOPPED  # created at once
        self.assertLessEqual(len(self.clones._writing), 10)
