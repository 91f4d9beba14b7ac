"""The daemon's open-file limit, and the share of it each kind of connection may hold.

Every connection is a file descriptor; a daemon at its limit can accept nothing, open no
database file, and Twisted retries the accept on every reactor turn. So at start nanocore
raises its soft ``RLIMIT_NOFILE`` to the hard limit, as Go programs do since Go 1.19 (the
original, built with an older Go, did not), and bounds what unauthenticated peers can hold to a
quarter of the limit each: API connections and Cell links still handshaking. What is left
serves the linked Cells, the store and the logs.
"""

from __future__ import annotations

import resource

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
