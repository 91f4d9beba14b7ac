"""Writing a small file so that a crash leaves either no change or the whole new file.

Config files, keys and certificates are written this way. The content goes to a temporary
file in the same directory, created private and given its final mode before any byte is
written (a key is never readable by others, even for an instant), written completely and
fsynced; it is then put in place by rename, or by hard link when an existing file must win,
and the directory is fsynced so that the new name survives a crash too. On any failure the
temporary file is removed and the target is left as it was. This module imports nothing of
ours.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_file(path: Path, data: bytes, *, mode: int, replace: bool = True) -> bool:
    """Put ``data`` at ``path`` with ``mode``, atomically and durably; return whether it wrote.

    With ``replace=False`` an existing file at ``path`` is kept and nothing is written
    (returns False), even when another process creates it while this one writes.
    """
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # A buffered file's write() writes everything or raises: no short writes to check.
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(name, path)
        else:
            try:
                os.link(name, path)
            except FileExistsError:
                return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
    sync_directory(path.parent)
    return True


def sync_directory(directory: Path) -> None:
    """Make the names in ``directory`` durable (a rename is not, until its directory is)."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
