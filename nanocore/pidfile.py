"""The pid file of the daemon, and whether the process it names is really a running nanocore.

A pid file outlives a crash, and its pid can be reused by an unrelated process, or by another
nanocore (a second Core on the host, a benchmark's daemon, `python -m nanocore call`). Before
`status` says "running", `start` refuses, `stop` sends SIGTERM or `halt` sends SIGKILL, the
process is checked against its command line: it must be a live (not zombie) twistd process of
the `nanocore` plugin whose ``--pidfile`` is this pid file (a relative one taken from the
process's working directory). Where `/proc` is absent, a live pid is trusted. A daemon that
removed its pid file while exiting is found by its command line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

#: argv element that marks a twistd process running the nanocore plugin.
PLUGIN_ARGUMENT = b"nanocore"
#: twistd's option naming the pid file it writes (``--pidfile X`` or ``--pidfile=X``).
PID_FILE_OPTION = b"--pidfile"


def read_pid(pid_file: Path) -> int | None:
    """The pid written in `pid_file`, or None when the file is missing or not a pid."""
    try:
        text = pid_file.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    if not text.isdigit():
        return None
    pid = int(text)
    return pid if pid > 0 else None


def _command_line(pid: int) -> list[bytes] | None:
    """The argv of `pid` from /proc, [] for a zombie, None where /proc cannot tell."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return None if not Path("/proc/self").exists() else []
    except OSError:
        return None
    return [part for part in raw.split(b"\0") if part]


def _pid_files_named(argv: list[bytes]) -> list[bytes]:
    """The values given to twistd's ``--pidfile`` in `argv`, as written."""
    named = []
    for index, argument in enumerate(argv):
        if argument == PID_FILE_OPTION and index + 1 < len(argv):
            named.append(argv[index + 1])
        elif argument.startswith(PID_FILE_OPTION + b"="):
            named.append(argument[len(PID_FILE_OPTION) + 1 :])
    return named


def _names(pid: int, named: bytes, pid_file: Path) -> bool:
    """Whether `named`, as process `pid` wrote it, is `pid_file`."""
    if not os.path.isabs(named):
        try:
            named = os.path.join(os.fsencode(os.readlink(f"/proc/{pid}/cwd")), named)
        except OSError:
            return False
    return os.path.realpath(named) == os.path.realpath(os.fsencode(pid_file.absolute()))


def is_nanocore_process(pid: int, pid_file: Path) -> bool:
    """Whether `pid` is alive and is the nanocore daemon that owns `pid_file`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else; the command line decides
    argv = _command_line(pid)
    if argv is None:
        return True
    if PLUGIN_ARGUMENT not in argv:
        return False
    return any(_names(pid, named, pid_file) for named in _pid_files_named(argv))


def running_pid(pid_file: Path, *, exiting: bool = True) -> int | None:
    """The pid of the running daemon named by `pid_file`, or None when none is running.

    twistd removes its pid file when the reactor stops, a second or so before the process
    exits (its threads are joined after): a daemon found owning `pid_file` without it is
    still running (QA pass 22: `stop` said "stop core success" while the daemon lived, a
    second `stop` said "already stopped", and a `start` then ran a second daemon beside it);
    ``exiting=False`` asks only for one that holds its pid file (one that won a start).
    """
    pid = read_pid(pid_file)
    if pid is not None and is_nanocore_process(pid, pid_file):
        return pid
    return next(_daemons_owning(pid_file), None) if exiting else None


def _daemons_owning(pid_file: Path) -> Iterator[int]:
    """Live nanocore daemons whose ``--pidfile`` is `pid_file` (none where /proc is absent)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        argv = _command_line(int(entry))
        # The command line first: it rules out nearly every process without a readlink.
        if argv and PLUGIN_ARGUMENT in argv and is_nanocore_process(int(entry), pid_file):
            yield int(entry)


def remove_stale(pid_file: Path) -> bool:
    """Remove `pid_file` if it names no running daemon; return whether it removed one."""
    if running_pid(pid_file) is not None:
        return False
    try:
        pid_file.unlink()
    except FileNotFoundError:
        return False
    return True
