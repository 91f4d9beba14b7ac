"""The image folders: ``data/disk_images/`` and ``data/media_images/``, files named by id only.

A version's file is ``<id>_v<n>.<ext>`` (Nano's names, so a Nano data folder copied in is
served as it is); the id is checked against the model's id pattern before it is joined to a
folder, so no client text ever becomes a path. An upload writes a private temporary file in
the same folder (``.upload-*.part``, never listed by a scan), hashing it as it goes, and only a
whole, checked file is fsynced and renamed to its version's name, the folder fsynced after.

Everything that can block (writes, fsync, hashing, renames, scans) runs through ``offload``,
the reactor's thread pool in a Core; tests pass a function that runs it at once.

A large upload streams through a bounded window of the page cache: a part file advises the
kernel to drop what it wrote more than :data:`WRITE_BEHIND` bytes ago (``POSIX_FADV_DONTNEED``,
which also starts its writeback), so the pages it frees are reused by the next writes instead
of new ones being taken (on the benchmark's VM each fresh page-cache page costs more system
time than the hashing), and the final fsync has little left to do. Pinned by
``tests/test_images_files.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from nanocore.atomicfile import sync_directory
from nanocore.operations.images import Adopted, ImageFiles, ImageKind, StoredFile, check_id

log = Logger()

T = TypeVar("T")
#: Runs a blocking function off the reactor: ``offload(function, *args) -> Deferred``.
Offload = Callable[..., Deferred[Any]]

#: Temporary files of uploads: hidden, so that no scan, Nano tool or operator mistakes them.
PART_PREFIX = ".upload-"
PART_SUFFIX = ".part"
#: Reading size for hashing a whole file (the original's 4 MiB).
HASH_BLOCK = 4 << 20
#: Bytes of an upload kept in the page cache behind its writer (None: keep all).
WRITE_BEHIND: int | None = 32 << 20
FOLDER_MODE = 0o700


def thread_offload(reactor: Any) -> Offload:
    """Blocking work on the reactor's thread pool."""

    def offload(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)

    return offload


def inline_offload(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """Blocking work done at once, on the caller's thread (tests)."""
    return maybeDeferred(function, *args)


def file_digests(path: Path) -> tuple[int, str, str]:
    """Size, SHA-1 and SHA-256 hex of a whole file, read in 4 MiB blocks (blocking)."""
    sha1, sha256 = hashlib.sha1(usedforsecurity=False), hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(HASH_BLOCK):
            sha1.update(block)
            sha256.update(block)
            size += len(block)
    return size, sha1.hexdigest(), sha256.hexdigest()


class PartFile:
    """The temporary file of one upload; hashes what it is given as it writes it.

    Calls come one at a time (the receiver keeps at most one write in flight), from a worker
    thread; nothing here touches the reactor. The write and both digests of a batch run on
    that one thread: split over three (they release the GIL), the TLS site's uploads got
    slower on two loaded cores, the reactor losing the GIL to them after every TLS record.
    """

    def __init__(
        self, folder: Path, image_id: str, *, write_behind: int | None = WRITE_BEHIND
    ) -> None:
        descriptor, name = tempfile.mkstemp(
            prefix=f"{PART_PREFIX}{image_id}-", suffix=PART_SUFFIX, dir=folder
        )
        self._descriptor: int | None = descriptor
        self.path = Path(name)
        self.folder = folder
        self.size = 0
        self._write_behind = write_behind
        self._sha1 = hashlib.sha1(usedforsecurity=False)
        self._sha256 = hashlib.sha256()

    @property
    def sha1(self) -> str:
        return self._sha1.hexdigest()

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    def write(self, data: bytes | bytearray) -> int:
        """Append ``data`` (one buffer: one GIL release per digest); returns its length."""
        if self._descriptor is None:
            raise ValueError("write to a closed part file")
        self._sha1.update(data)
        self._sha256.update(data)
        view = memoryview(data)
        while view:
            written = os.write(self._descriptor, view)
            view = view[written:]
        self.size += len(data)
        if self._write_behind is not None and self.size > self._write_behind:
            # Drops what was written back already, starts writing back the rest.
            os.posix_fadvise(
                self._descriptor, 0, self.size - self._write_behind, os.POSIX_FADV_DONTNEED
            )
        return len(data)

    def place(self, target: Path) -> None:
        """Make the file durable and give it its final name (blocking)."""
        if self._descriptor is None:
            raise ValueError("place of a closed part file")
        descriptor, self._descriptor = self._descriptor, None
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.rename(self.path, target)
        sync_directory(self.folder)

    def discard(self) -> None:
        """Close and remove the file, whatever state it is in (blocking; never raises)."""
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is not None:
            with contextlib.suppress(OSError):
                os.close(descriptor)
        try:
            self.path.unlink(missing_ok=True)
        except OSError as error:
            log.warn("cannot remove {path}: {error}", path=str(self.path), error=error)


@implementer(ImageFiles)
class ImageFolders:
    """The two image folders under ``data_dir``."""

    def __init__(
        self, data_dir: Path, offload: Offload, *, write_behind: int | None = WRITE_BEHIND
    ) -> None:
        self._data_dir = data_dir
        self.offload = offload
        self._write_behind = write_behind

    def folder(self, kind: ImageKind) -> Path:
        return self._data_dir / kind.folder

    def path(self, kind: ImageKind, image_id: str, version: int) -> Path:
        return self.folder(kind) / kind.file_name(check_id(kind, image_id), version)

    def prepare(self) -> None:
        """Create missing folders and remove what interrupted uploads left (blocking).

        Called before anything serves: no upload runs yet, so every part file is a leftover.
        """
        for kind in ImageKind:
            folder = self.folder(kind)
            folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
            for leftover in folder.glob(f"{PART_PREFIX}*{PART_SUFFIX}"):
                log.info("removing {path}, left by an interrupted upload", path=str(leftover))
                leftover.unlink(missing_ok=True)

    def open_part(self, kind: ImageKind, image_id: str) -> PartFile:
        """A new temporary file for an upload of ``image_id`` (one quick syscall)."""
        return PartFile(
            self.folder(kind), check_id(kind, image_id), write_behind=self._write_behind
        )

    def remove(self, kind: ImageKind, image_id: str, version: int) -> Deferred[None]:
        return self.offload(self._unlink, self.path(kind, image_id, version))

    def discard(self, kind: ImageKind, name: str) -> Deferred[None]:
        return self.offload(self._unlink, self._listed(kind, name))

    def scan(self, kind: ImageKind) -> Deferred[list[StoredFile]]:
        return self.offload(self._scan, kind)

    def adopt(self, kind: ImageKind, name: str, image_id: str) -> Deferred[Adopted]:
        return self.offload(self._adopt, kind, self._listed(kind, name), image_id)

    def _listed(self, kind: ImageKind, name: str) -> Path:
        """A name a scan gave: a plain file name of the folder, never a path."""
        if "/" in name or name.startswith(".") or "\0" in name:
            raise ValueError(f"not an image file name: {name!r}")
        return self.folder(kind) / name

    def _scan(self, kind: ImageKind) -> list[StoredFile]:
        found = []
        suffix = "." + kind.extension
        with os.scandir(self.folder(kind)) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.name.endswith(suffix):
                    continue
                if entry.is_file(follow_symlinks=False):
                    found.append(StoredFile(entry.name, entry.stat(follow_symlinks=False).st_size))
        return sorted(found, key=lambda stored: stored.name)

    def _adopt(self, kind: ImageKind, source: Path, image_id: str) -> Adopted:
        size, sha1, sha256 = file_digests(source)
        os.rename(source, self.path(kind, image_id, 1))
        sync_directory(source.parent)
        return Adopted(size, sha1 if kind is ImageKind.DISK else "", sha256)

    def _unlink(self, path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            return
        sync_directory(path.parent)
