"""The guest lifecycle: placement, creation, Cell events, reconciliation (issue #10).

Shared with every later guest route: :class:`GuestAccess` (instance lookup, the request to the
guest's Cell, the serialised change of one record) and :class:`GuestEvents` (Cell events into
the store). Lists and searches (``listing``), the runtime status (``runtime``) and resets
(``reset``) are rooms of their own, reached as attributes of :class:`GuestOperations`.
"""

from nanocore.operations.guests.common import GuestAccess
from nanocore.operations.guests.create import CloudInit, Created, GuestSpec, QoSSpec
from nanocore.operations.guests.events import GuestEvents
from nanocore.operations.guests.lifecycle import GuestOperations
from nanocore.operations.guests.listing import LegacyQuery, Listed, Page, SearchQuery
from nanocore.operations.guests.placement import CAPACITY, NoCellAvailable, Share
from nanocore.operations.guests.runtime import RuntimeStatus

__all__ = [
    "CAPACITY",
    "CloudInit",
    "Created",
    "GuestAccess",
    "GuestEvents",
    "GuestOperations",
    "GuestSpec",
    "LegacyQuery",
    "Listed",
    "NoCellAvailable",
    "Page",
    "QoSSpec",
    "RuntimeStatus",
    "SearchQuery",
    "Share",
]
