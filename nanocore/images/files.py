"""The image folders: ``data/disk_images/`` and ``data/media_images/``, files named by id only.

A version's file is ``<id>_v<n>.<ext>`` (Nano's names, so a Nano data folder copied in is
served as it is); the id is checked against the model's id pattern before it is joined to a
folder, so no client text ever becomes a path. An upload writes a private temporary file in
the same folder (``.upload-*.part``, never listed by a scan), hashing it as it goes, and only a
whole, checked file is fsynced and renamed to its version's name, the folder fsynced after.

Everything that can block (writes, fsync, hashing, renames, scans) runs through ``offload``,
the reactor's thread pool in a Core; tests pass a function that runs it at once.

An upload's part file is written with direct I/O (``O_DIRECT``) where the file system takes it:
the receiver hands it whole, page-aligned blocks, which go from its memory to the disk without
a copy into the page cache. On the benchmark's VM that cut the writer's CPU per GiB from
~0.5 s (buffered, most of it page-cache bookkeeping and the copy) to ~0.05 s. Whatever is not
aligned (the last block of an upload, or a caller's plain ``bytes``) ends direct writes for
that file and goes through the page cache, as does every write where ``O_DIRECT`` is refused.

A buffered upload streams through a bounded window of the page cache: a part file advises the
kernel to drop what it wrote more than :data:`WRITE_BEHIND` bytes ago (``POSIX_FADV_DONTNEED``,
which also starts its writeback), so the pages it frees are reused by the next writes instead
of new ones being taken (on the benchmark's VM each fresh page-cache page costs more system
time than the hashing), and the final fsync has little left to do. Pinned by
``tests/test_images_files.py``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
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
#: What direct writes must be aligned to: memory, file offset and length (a page covers the
#: logical block size of every disk Linux has).
DIRECT_ALIGN = 4096
#: ``O_DIRECT`` where the platform has it (0: never direct).
O_DIRECT: int = getattr(os, "O_DIRECT", 0)
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

    Nothing here touches the reactor. :meth:`digest` and :meth:`store` may run at the same
    time on two worker threads (they share no state): the receiver hashes one block while the
    one before it is stored, each step called one at a time and in the bytes' order. A direct
    write barely uses the CPU, so this overlap costs no GIL contention; hashing the two
    digests on two threads did (they release the GIL): the TLS site's uploads got slower on
    two loaded cores, the reactor losing the GIL to them after every TLS record.
    """

    def __init__(
        self,
        folder: Path,
        image_id: str,
        *,
        write_behind: int | None = WRITE_BEHIND,
        direct: bool = True,
    ) -> None:
        descriptor, name = tempfile.mkstemp(
            prefix=f"{PART_PREFIX}{image_id}-", suffix=PART_SUFFIX, dir=folder
        )
        self._descriptor: int | None = descriptor
        self.path = Path(name)
        self.folder = folder
        #: Bytes stored so far.
        self.size = 0
        self._write_behind = write_behind
        self._sha1 = hashlib.sha1(usedforsecurity=False)
        self._sha256 = hashlib.sha256()
        #: Writes go straight to the disk (until something unaligned comes).
        self.direct = direct and _set_direct(descriptor, on=True)

    @property
    def sha1(self) -> str:
        return self._sha1.hexdigest()

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Hash and store ``data``; returns its length."""
        self.digest(data)
        return self.store(data)

    def digest(self, data: bytes | bytearray | memoryview) -> None:
        """Add ``data`` to both digests (one buffer: one GIL release per digest)."""
        self._sha1.update(data)
        self._sha256.update(data)

    def store(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data`` to the file; returns its length.

        Written directly while the file is direct, up to its last whole multiple of
        :data:`DIRECT_ALIGN` bytes; a remainder, or memory the kernel refuses as unaligned,
        is written through the page cache, and so is everything after it.
        """
        descriptor = self._descriptor
        if descriptor is None:
            raise ValueError("write to a closed part file")
        view = memoryview(data).cast("B")
        if self.direct:
            view = self._write_direct(descriptor, view)
        while view:
            written = os.write(descriptor, view)
            view = view[written:]
        self.size += len(data)
        if not self.direct and self._write_behind is not None and self.size > self._write_behind:
            # Drops what was written back already, starts writing back the rest.
            os.posix_fadvise(descriptor, 0, self.size - self._write_behind, os.POSIX_FADV_DONTNEED)
        return len(data)

    def _write_direct(self, descriptor: int, view: memoryview) -> memoryview:
        """Write the aligned head of ``view`` directly; returns what is left to write buffered
        (the file is then no longer direct when anything is left)."""
        aligned = len(view) & -DIRECT_ALIGN
        done = 0
        while done < aligned:
            try:
                done += os.write(descriptor, view[done:aligned])
            except OSError as error:
                if error.errno != errno.EINVAL:
                    raise
                break  # unaligned memory (or a file system that takes no direct writes)
        if done < len(view):
            _set_direct(descriptor, on=False)
            self.direct = False
        return view[done:]

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


def _set_direct(descriptor: int, *, on: bool) -> bool:
    """Turn direct I/O on or off for an open file; False where it cannot be on."""
    if not O_DIRECT:
        return False
    flags = fcntl.fcntl(descriptor, fcntl.F_GETFL)
    try:
        fcntl.fcntl(descriptor, fcntl.F_SETFL, flags | O_DIRECT if on else flags & ~O_DIRECT)
    except OSError:  # a file system without direct I/O (tmpfs before Linux 6.6, FUSE, ...)
        return False
    return on


@implementer(ImageFiles)
class ImageFolders:
    """The two image folders under ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        offload: Offload,
        *,
        write_behind: int | None = WRITE_BEHIND,
        direct: bool = True,
    ) -> None:
        self._data_dir = data_dir
        self.offload = offload
        self._write_behind = write_behind
        self._direct = direct

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
            self.folder(kind),
            check_id(kind, image_id),
            write_behind=self._write_behind,
            direct=self._direct,
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
