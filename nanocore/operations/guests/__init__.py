"""The guest lifecycle: placement, creation, Cell events, reconciliation (issue #10).

Shared with every later guest route: :class:`GuestAccess` (instance lookup, the request to the
guest's Cell, the serialised change of one record) and :class:`GuestEvents` (Cell events into
the store).
"""

from nanocore.operations.guests.common import GuestAccess
from nanocore.operations.guests.create import CloudInit, Created, GuestSpec, QoSSpec
from nanocore.operations.guests.events import GuestEvents
from nanocore.operations.guests.lifecycle import GuestOperations
from nanocore.operations.guests.placement import CAPACITY, NoCellAvailable, Share

__all__ = [
    "CAPACITY",
    "CloudInit",
    "Created",
    "GuestAccess",
    "GuestEvents",
    "GuestOperations",
    "GuestSpec",
    "NoCellAvailable",
    "QoSSpec",
    "Share",
]
