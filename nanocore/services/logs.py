"""Rotated logs kept to a bound, so that a Core that runs for months does not fill its disk.

twistd rotates ``core.log`` at 1 MB (and on SIGUSR1) into ``core.log.1`` (the newest),
``core.log.2``, … and keeps every one, renaming them all at each rotation. :class:`RotatedLogs`
removes those beyond the newest ``keep`` when Core starts and every ``interval`` seconds after,
whoever rotated them.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nanocore.services.periodic import Periodic

#: Rotated logs kept (1 MB each): ``core.log.1`` to ``core.log.50``.
KEEP_ROTATED = 50
#: Seconds between two looks (a glob of the log folder): a flood of log lines that escaped
#: every rate limit wrote 12 MB/s, 500 rotated files in 40 s (QA pass 20).
PRUNE_INTERVAL = 10.0


def rotated(log_file: Path) -> dict[int, Path]:
    """The rotated copies of ``log_file`` by number (1 is the newest), as twistd names them."""
    found = {}
    for path in log_file.parent.glob(log_file.name + ".*"):
        suffix = path.name[len(log_file.name) + 1 :]
        if suffix.isdigit() and int(suffix) > 0:
            found[int(suffix)] = path
    return found


class RotatedLogs(Periodic):
    """Removes the rotated copies of ``log_file`` beyond the newest ``keep``."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        log_file: Path,
        *,
        keep: int = KEEP_ROTATED,
        interval: float = PRUNE_INTERVAL,
    ) -> None:
        super().__init__(interval, self.prune)
        self.clock = clock
        self._log_file = log_file
        self._keep = keep

    def prune(self) -> int:
        """Remove the copies beyond the newest ``keep``; how many went. A folder that cannot
        be read now (no file descriptor left: QA pass 22) is said, and looked at next time."""
        removed = 0
        try:
            copies = rotated(self._log_file)
        except OSError as error:
            self.log.warn("cannot look for old logs to remove: {error}", error=error)
            return removed
        for number, path in sorted(copies.items()):
            if number <= self._keep:
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                continue  # renamed or removed meanwhile
            except OSError as error:
                self.log.warn("cannot remove the old log {path}: {error}", path=path, error=error)
                return removed
            removed += 1
        if removed:
            self.log.info(
                "removed {count} rotated logs beyond the newest {keep}",
                count=removed,
                keep=self._keep,
            )
        return removed
