"""The part file: what it holds and hashes, its direct writes, and its write-behind window."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from nanocore.images import files
from nanocore.images.files import DIRECT_ALIGN, PartFile

DATA = os.urandom(3 << 20)
MIB = 1 << 20


def aligned(data: bytes) -> memoryview:
    """``data`` in page-aligned memory, as the receiver's blocks are."""
    block = mmap.mmap(-1, len(data))
    block.write(data)
    return memoryview(block)


def is_direct(part: PartFile) -> bool:
    """Whether the kernel has direct I/O on for the part file's descriptor."""
    descriptor = part._descriptor
    assert descriptor is not None
    return bool(fcntl.fcntl(descriptor, fcntl.F_GETFL) & files.O_DIRECT)


class PartFileTests(TestCase):
    def setUp(self) -> None:
        self.folder = Path(self.mktemp())
        self.folder.mkdir()

    def part(self, write_behind: int | None = None, *, direct: bool = False) -> PartFile:
        part = PartFile(self.folder, "img", write_behind=write_behind, direct=direct)
        self.addCleanup(part.discard)
        return part

    def direct_part(self) -> PartFile:
        part = self.part(direct=True)
        if not part.direct:
            self.skipTest(f"no direct I/O on the file system of {self.folder}")
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

    def test_digest_then_store_is_a_write(self) -> None:
        part = self.part()
        for start in range(0, len(DATA), MIB):
            part.digest(DATA[start : start + MIB])
            self.assertEqual(part.store(DATA[start : start + MIB]), MIB)
        self.assertHolds(part, DATA)

    def test_aligned_blocks_go_direct_and_the_tail_through_the_cache(self) -> None:
        part = self.direct_part()
        tail = b"the last block of an upload is rarely whole"
        part.write(aligned(DATA[:MIB]))
        part.write(aligned(DATA[MIB : 2 * MIB]))
        self.assertTrue(part.direct)
        self.assertTrue(is_direct(part))
        part.write(aligned(DATA[2 * MIB :] + tail))
        self.assertFalse(part.direct)
        self.assertFalse(is_direct(part))
        part.write(b"and more")
        part.place(self.folder / "placed")
        self.assertEqual((self.folder / "placed").read_bytes(), DATA + tail + b"and more")

    def test_a_direct_write_the_kernel_refuses_goes_through_the_cache(self) -> None:
        part = self.direct_part()
        real, refusals = os.write, [OSError(errno.EINVAL, "Invalid argument")]

        def refuse_once(descriptor: int, data: Any) -> int:
            if refusals:  # as ext4 answers memory that is not aligned (tmpfs takes it)
                raise refusals.pop()
            return real(descriptor, data)

        self.patch(os, "write", refuse_once)
        part.write(aligned(b"x" + DATA[: 2 * DIRECT_ALIGN])[1:])
        self.assertFalse(part.direct)
        self.assertFalse(is_direct(part))
        part.write(aligned(DATA[2 * DIRECT_ALIGN : MIB]))
        self.assertHolds(part, DATA[:MIB])

    def test_a_file_system_without_direct_io_gets_buffered_writes(self) -> None:
        real = fcntl.fcntl

        def refuse_direct(descriptor: int, command: int, argument: Any = 0) -> Any:
            if command == fcntl.F_SETFL and argument & files.O_DIRECT:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real(descriptor, command, argument)

        self.patch(fcntl, "fcntl", refuse_direct)
        part = self.part(direct=True)
        self.assertFalse(part.direct)
        part.write(aligned(DATA))
        self.assertFalse(is_direct(part))
        self.assertHolds(part, DATA)

    def test_other_errors_of_a_direct_write_are_raised(self) -> None:
        part = self.direct_part()

        def full(descriptor: int, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(os, "write", full)
        error = self.assertRaises(OSError, part.write, aligned(DATA[:MIB]))
        self.assertEqual(error.errno, errno.ENOSPC)

    def test_what_lies_behind_the_window_is_advised_out(self) -> None:
        advised: list[tuple[int, int, int]] = []
        self.patch(os, "posix_fadvise", lambda _, *advice: advised.append(advice))
        part = self.part(write_behind=MIB)
        for start in range(0, len(DATA), MIB):
            part.write(DATA[start : start + MIB])
        dontneed = os.POSIX_FADV_DONTNEED
        self.assertEqual(advised, [(0, MIB, dontneed), (0, 2 * MIB, dontneed)])
        self.assertHolds(part, DATA)

    def test_direct_writes_take_no_advice(self) -> None:
        advised: list[object] = []
        self.patch(os, "posix_fadvise", lambda *args: advised.append(args))
        part = self.direct_part()
        part._write_behind = MIB
        for start in range(0, len(DATA), MIB):
            part.write(aligned(DATA[start : start + MIB]))
        self.assertEqual(advised, [])
        self.assertHolds(part, DATA)

    def test_no_window_no_advice(self) -> None:
        advised: list[object] = []
        self.patch(os, "posix_fadvise", lambda *args: advised.append(args))
        part = self.part(write_behind=None)
        part.write(DATA)
        self.assertEqual(advised, [])
        self.assertHolds(part, DATA)
