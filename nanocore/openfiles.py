"""The daemon's open-file limit, and the share of it each kind of connection may hold.

Every connection is a file descriptor; a daemon at its limit can accept nothing, open no
database file, and Twisted retries the accept on every reactor turn. So at start nanocore
raises its soft ``RLIMIT_NOFILE`` to the hard limit, as Go programs do since Go 1.19 (the
original, built with an older Go, did not), and bounds what unauthenticated peers can hold to a
quarter of the limit each: API connections, image site connections and Cell links still
handshaking. What is left serves the linked Cells, the store and the logs; and since linked
Cells hold descriptors too, every listener also refuses a connection while all of them
together hold what the limit leaves beside :data:`RESERVED_FILES` (:class:`Descriptors`).
"""

from __future__ import annotations

import resource
from collections.abc import Callable

from twisted.logger import Logger

log = Logger()

#: Where the soft limit is raised to when the hard limit is "unlimited" (Linux's default
#: ``fs.nr_open``).
UNLIMITED_TARGET = 1 << 20
#: The least a share gets, however low the limit.
MIN_SHARE = 64


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard limit, if allowed; the soft limit after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as error:
            log.warn(
                "could not raise the open-file limit from {soft} to {target}: {error}",
                soft=soft,
                target=target,
                error=error,
            )
            return soft
        log.info("open-file limit raised from {soft} to {target}", soft=soft, target=target)
        return target
    return UNLIMITED_TARGET if soft == resource.RLIM_INFINITY else soft


def connection_share(open_files: int) -> int:
    """How many connections of one kind unauthenticated peers may hold: a quarter of the
    limit, but at least ``MIN_SHARE``."""
    return max(MIN_SHARE, open_files // 4)


#: Descriptors kept for what is not a connection: the store and its journal, the logs, image
#: files read or written, the discovery and KCP sockets, a backup being written.
RESERVED_FILES = 64


class Descriptors:
    """The connections every listener holds, counted against the open-file limit.

    The shares bound each kind of connection alone; with 60 Cells linked and a limit of 256,
    idle connections to the three ports still took the last descriptor: every client was then
    reset, and Twisted logged three lines per refused connect (QA pass 22, D1)."""

    def __init__(self, limit: int, reserved: int = RESERVED_FILES) -> None:
        self.allowed = max(1, limit - reserved)
        self._counts: list[Callable[[], int]] = []

    def count(self, open_now: Callable[[], int]) -> None:
        """Count a listener's connections (``open_now()``: how many it holds now)."""
        self._counts.append(open_now)

    def in_use(self) -> int:
        return sum(open_now() for open_now in self._counts)

    def full(self) -> bool:
        """Whether one more connection would leave less than the reserve."""
        return self.in_use() >= self.allowed
