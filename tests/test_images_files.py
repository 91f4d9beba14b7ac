"""The part file: what it holds and hashes, and its write-behind window."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from twisted.trial.unittest import TestCase

from nanocore.images.files import PartFile

DATA = os.urandom(3 << 20)
MIB = 1 << 20


class PartFileTests(TestCase):
    def setUp(self) -> None:
        self.folder = Path(self.mktemp())
        self.folder.mkdir()

    def part(self, write_behind: int | None = None) -> PartFile:
        part = PartFile(self.folder, "img", write_behind=write_behind)
        self.addCleanup(part.discard)
        return part

    def assertHolds(self, part: PartFile, data: bytes) -> None:
        self.assertEqual(part.path.read_bytes(), data)
        self.assertEqual(
            (part.size, part.sha1, part.sha256),
            (len(data), hashlib.sha1(data).hexdigest(), hashlib.sha256(data).hexdigest()),
        )

    def test_a_closed_part_takes_no_more_writes(self) -> None:
        part = self.part()
        part.discard()
        self.assertRaises(ValueError, part.write, b"x")
        self.assertFalse(part.path.exists())

    def test_what_lies_behind_the_window_is_advised_out(self) -> None:
        advised: list[tuple[int, int, int]] = []
        self.patch(os, "posix_fadvise", lambda _, *advice: advised.append(advice))
        part = self.part(write_behind=MIB)
        for start in range(0, len(DATA), MIB):
            part.write(DATA[start : start + MIB])
        dontneed = os.POSIX_FADV_DONTNEED
        self.assertEqual(advised, [(0, MIB, dontneed), (0, 2 * MIB, dontneed)])
        self.assertHolds(part, DATA)

    def test_no_window_no_advice(self) -> None:
        advised: list[object] = []
        self.patch(os, "posix_fadvise", lambda *args: advised.append(args))
        part = self.part(write_behind=None)
        part.write(DATA)
        self.assertEqual(advised, [])
        self.assertHolds(part, DATA)
