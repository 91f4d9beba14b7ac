"""What the rest of Core may rely on from the store, as a zope interface (fakes verify it)."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from nanocore.store.changes import UnitOfWork
from nanocore.store.readmodel import ReadModel


class CommitStore(Interface):
    """Committed state to read, and units of work to commit (docs/architecture.md)."""

    view: ReadModel = Attribute("Read-only mappings of frozen values: always committed state.")
    units_committed: int = Attribute("Units applied so far; moves with the read model.")

    def commit(unit: UnitOfWork) -> Deferred[None]:
        """Fire once ``unit`` is durable and visible in ``view``, or fail with StoreError."""
