"""Errors an operation raises: each carries the exact message the client should read."""

from __future__ import annotations

from nanocore.cluster.cells import CoreStopping
from nanocore.store.errors import CommitFailed, StoreClosed

#: The errors that say a request cannot be carried out for now (the store's disk is full, Core
#: is stopping and closed the store or the Cell's link), not that it is wrong; the API
#: answers 503.
UNAVAILABLE = (CommitFailed, StoreClosed, CoreStopping)
#: Seconds until Core tries again to record what it learnt but could not save (a Cell's event
#: or loss, a failover: the store could not commit, a full disk), and between tries.
UNSAVED_RETRY = 5.0
#: What a request is told when memory ran out while it was served (an address-space limit, a
#: full host): it is answered 503 and may be sent again once memory is back.
OUT_OF_MEMORY = "nanocore is out of memory, retry later"


def unavailable_message(error: BaseException) -> str:
    """What a client reads for one of :data:`UNAVAILABLE`: the store's reason for a failed
    commit (``state could not be saved: database or disk is full``), or that Core stops."""
    stopping = isinstance(error, StoreClosed | CoreStopping)
    return "nanocore is stopping" if stopping else str(error)


class OperationError(Exception):
    """A request the domain refuses; ``message`` is shown to the client verbatim.

    ``data``, when set, is what the failed envelope carries instead of Core's ``{}`` (details
    a program may read; Nano's clients read only the message).
    """

    data: object = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(OperationError):
    """The input breaks a domain rule (bad value, wrong state)."""


class UnknownEntity(OperationError):
    """The request names an entity that does not exist."""


class AlreadyExists(OperationError):
    """The request would create a second entity under a unique name or key."""


class OperationTimeout(OperationError):
    """A Cell or an internal step did not answer within the operation timeout."""
