"""How a failed start reaches `nanocore start`: one line saying what failed and why.

twistd hands a start failure to the command that launched it through its daemonize pipe, cut
at 100 bytes (`…[Errno 98] Address al`), and a failure after the daemon has detached (a damaged
database) reaches only the log. So the daemon logs one line, `nanocore could not start: <what
failed and why>`, and `nanocore start` reads it back from the part of core.log written since
it launched the daemon; lines of earlier runs are never shown as this run's.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

from attrs import frozen
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

from nanocore.store.errors import DamagedStore, StoreError

#: Starts the one log line that says why the daemon did not start; the reason follows it.
MARKER = "nanocore could not start: "

#: Errors whose one line says everything; anything else is logged with its traceback too.
EXPECTED = (CannotListenError, StoreError)

#: Most of core.log read back after a failed start; twistd rotates it at 1 MB anyway.
MAX_READ = 1 << 20


def _listen_reason(error: CannotListenError) -> str:
    where = f"cannot listen on {error.interface}:{error.port}"
    cause = error.socketError
    if isinstance(cause, CannotListenError):  # the last port of a range that was all taken
        return _listen_reason(cause)
    code = getattr(cause, "errno", None)
    if code == errno.EADDRINUSE:
        return f"{where}: the port is already in use by another program"
    if code == errno.EADDRNOTAVAIL:
        return (
            f"{where}: {error.interface} is not an address of this host"
            " (listen_address in domain.cfg)"
        )
    if code == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need privileges)"
    return f"{where}: {getattr(cause, 'strerror', None) or cause}"


def explain(error: BaseException) -> str:
    """One line: what failed and why, with the remedy where the error carries one."""
    if isinstance(error, CannotListenError):
        return _listen_reason(error)
    if isinstance(error, DamagedStore):
        return f"damaged database: {error}"
    if isinstance(error, StoreError):
        return f"state database: {error}"
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def log_failure(log: Logger, failure: Failure) -> None:
    """Log the one line `nanocore start` shows; unexpected errors also get their traceback."""
    error = failure.value
    reason = explain(error) if error is not None else "unknown error"
    if isinstance(error, EXPECTED):
        log.critical(MARKER + "{reason}", reason=reason)
    else:
        log.failure(MARKER + "{reason}", failure, reason=reason)


def reason_in(lines: Iterable[str]) -> str | None:
    """The reason the daemon logged for its failed start (the last one), if it logged one."""
    found = None
    for line in lines:
        _, marker, reason = line.partition(MARKER)
        if marker:
            found = reason.strip()
    return found


@frozen
class LogMark:
    """Where core.log ended before a start: the lines after it are that start's."""

    inode: int | None
    size: int

    @classmethod
    def of(cls, log_file: Path) -> LogMark:
        try:
            status = log_file.stat()
        except FileNotFoundError:
            return cls(None, 0)
        return cls(status.st_ino, status.st_size)


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as handle:
            end = handle.seek(0, os.SEEK_END)
            handle.seek(max(offset, end - MAX_READ))
            return handle.read()
    except OSError:
        return b""


def lines_since(log_file: Path, mark: LogMark) -> list[str]:
    """The lines written to `log_file` after `mark`, following one rotation (core.log.1)."""
    try:
        current = log_file.stat()
    except FileNotFoundError:
        return []
    if mark.inode is None:
        data = _read_from(log_file, 0)
    elif current.st_ino == mark.inode:
        data = _read_from(log_file, mark.size if current.st_size >= mark.size else 0)
    else:
        rotated = log_file.with_name(log_file.name + ".1")
        earlier = b""
        try:
            if rotated.stat().st_ino == mark.inode:
                earlier = _read_from(rotated, mark.size)
        except FileNotFoundError:
            pass
        data = earlier + _read_from(log_file, 0)
    return data.decode("utf-8", errors="replace").splitlines()
