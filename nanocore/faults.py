"""A Core never dies without a word: fatal errors and deaths by signal leave tracebacks.

A crash in C code (OpenSSL, sqlite3, ctypes' ``malloc_trim``, an O_DIRECT write) or a signal
whose default action ends the process (SIGHUP to a foreground ``twistd -n``, SIGXFSZ…) ends
the process before Twisted can log a line. The standard library's ``faulthandler`` writes the
Python traceback of every thread from the signal handler itself, straight to a descriptor, so
:func:`report_fatal_errors` points it at a file in the log folder for the life of the process.

Each start appends one line naming its time; the next start reads the previous run's part of
the file and, when it holds a traceback, says so in the log. SIGKILL (``kill -9``, the OOM
killer) cannot be caught by anything: such a death leaves only its absence.
"""

from __future__ import annotations

import faulthandler
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Protocol

#: Begins the line each start writes; the previous run's part of the file follows its last one.
START_MARK = "--- nanocore started "
#: What faulthandler writes above every thread's traceback.
TRACEBACK_MARK = "(most recent call first)"
#: The most of the file read back at start (the previous run's part is at its end).
MAX_READ = 1 << 20

#: Signals that end the process by default and that nothing of Twisted's handles. SIGTERM and
#: SIGINT are the reactor's (a clean, logged stop); SIGUSR1 is twistd's log rotation; SIGPIPE
#: is ignored by Python; SIGHUP is said and ignored (:func:`outlive_hangups`). A signal some
#: code already handles is left to that code.
SILENT_DEATHS = tuple(
    getattr(signal, name)
    for name in (
        "SIGALRM",
        "SIGVTALRM",
        "SIGPROF",
        "SIGUSR2",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    )
    if hasattr(signal, name)
)


class FaultHandler(Protocol):
    """The part of the ``faulthandler`` module used here (a fake in tests)."""

    def enable(self, file: IO[bytes], all_threads: bool = ...) -> None: ...

    def register(
        self, signum: int, file: IO[bytes], all_threads: bool = ..., chain: bool = ...
    ) -> None: ...


def earlier_death(path: Path) -> str | None:
    """The start line of the previous run when its part of ``path`` holds a traceback."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, 2)
            file.seek(max(0, size - MAX_READ))
            text = file.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    start = text.rfind(START_MARK)
    if start < 0:
        return "an earlier run" if TRACEBACK_MARK in text else None
    line, _, reports = text[start:].partition("\n")
    return line.removeprefix(START_MARK).strip() if TRACEBACK_MARK in reports else None


def report_fatal_errors(
    path: Path,
    *,
    handler: FaultHandler = faulthandler,
    silent_deaths: Iterable[int] = SILENT_DEATHS,
    default_of: Callable[[int], object] = signal.getsignal,
    now: Callable[[], float] = time.time,
) -> str | None:
    """From now on, a fatal error or a death by one of ``silent_deaths`` writes every thread's
    traceback to ``path`` (kept open, mode 0600). Returns the previous run's start when that
    run left a traceback there (:func:`earlier_death`)."""
    earlier = earlier_death(path)
    path.touch(mode=0o600)
    file = path.open("ab", buffering=0)  # faulthandler keeps it open: its reference
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now()))
    file.write(f"{START_MARK}{started}\n".encode())
    handler.enable(file, all_threads=True)
    for signum in silent_deaths:
        if default_of(signum) == signal.SIG_DFL:
            # After the tracebacks, the signal's own action: the process still ends by it.
            handler.register(signum, file, all_threads=True, chain=True)
    return earlier


def outlive_hangups(say: Callable[[], object]) -> None:
    """SIGHUP ends a process by default, so logrotate's usual ``postrotate kill -HUP`` stopped
    the cluster's control node without a line in its log (QA pass 22, F1); nanocore rotates
    its own log. From now on a hang-up is only ``say``-ed."""
    signal.signal(signal.SIGHUP, lambda signum, frame: say())
