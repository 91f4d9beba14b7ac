"""The one atomic file write: whole, durable, with its mode, and nothing left on failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from nanocore import atomicfile
from nanocore.atomicfile import write_file


class WriteFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.path = self.directory / "x.pem"
        self.synced: list[bool] = []
        real_fsync = os.fsync

        def recording_fsync(descriptor: int) -> None:
            self.synced.append(stat.S_ISDIR(os.fstat(descriptor).st_mode))
            real_fsync(descriptor)

        self.patch(atomicfile.os, "fsync", recording_fsync)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.directory.iterdir())

    def test_writes_everything_with_the_mode(self) -> None:
        data = os.urandom(3 << 20)  # far more than one write(2) is sure to take
        self.assertTrue(write_file(self.path, data, mode=0o640))
        self.assertEqual(self.path.read_bytes(), data)
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o640)
        self.assertEqual(self.names(), ["x.pem"])

    def test_file_then_directory_are_synced(self) -> None:
        """The content is on disk before the name points at it, and the name after."""
        write_file(self.path, b"key", mode=0o600)
        self.assertEqual(self.synced, [False, True])

    def test_replaces_an_existing_file(self) -> None:
        self.path.write_bytes(b"old")
        self.assertTrue(write_file(self.path, b"new", mode=0o600))
        self.assertEqual(self.path.read_bytes(), b"new")
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)

    def test_keeps_an_existing_file_when_asked(self) -> None:
        self.path.write_bytes(b"old")
        self.assertFalse(write_file(self.path, b"new", mode=0o600, replace=False))
        self.assertEqual(self.path.read_bytes(), b"old")
        self.assertEqual(self.names(), ["x.pem"])

    def test_creates_when_absent_with_replace_false(self) -> None:
        self.assertTrue(write_file(self.path, b"new", mode=0o600, replace=False))
        self.assertEqual(self.path.read_bytes(), b"new")
        self.assertEqual(self.synced, [False, True])

    def test_failed_write_leaves_nothing(self) -> None:
        """A failure before the file is in place removes the temporary and keeps the old file."""
        self.path.write_bytes(b"old")

        def broken_fsync(descriptor: int) -> None:
            raise OSError(5, "Input/output error")

        self.patch(atomicfile.os, "fsync", broken_fsync)
        self.assertRaises(OSError, write_file, self.path, b"new", mode=0o600)
        self.assertEqual(self.path.read_bytes(), b"old")
        self.assertEqual(self.names(), ["x.pem"])

    def test_missing_directory_is_an_error(self) -> None:
        self.assertRaises(
            FileNotFoundError, write_file, self.directory / "no" / "x", b"", mode=0o600
        )
