"""What every operations family shares: the store, the clock, commits and error mapping."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from nanocore.model import TIME_FORMAT, validation_message
from nanocore.operations.errors import AlreadyExists, InvalidRequest, UnknownEntity
from nanocore.store import Change, Conflict, NotFound, ReadModel, StillReferenced, UnitOfWork

T = TypeVar("T")


class StoreLike(Protocol):
    """The part of :class:`nanocore.store.Store` operations use."""

    @property
    def view(self) -> ReadModel: ...

    def commit(self, unit: UnitOfWork) -> Deferred[None]: ...


class Context:
    """The store, the clock and a revision counter that changes with every commit made here.

    The API caches encoded list answers keyed on :meth:`revision`: the store's count of applied
    units (which moves with the read model, whoever committed) plus the commits made here.
    """

    def __init__(self, store: StoreLike, clock: IReactorTime) -> None:
        self.store = store
        self.clock = clock
        self._revision = 0
        self._claims: set[Hashable] = set()

    @property
    def view(self) -> ReadModel:
        return self.store.view

    def revision(self) -> tuple[int, int]:
        """Changes whenever committed state may have changed, by any path into the store."""
        return (getattr(self.store, "units_committed", 0), self._revision)

    def now_text(self) -> str:
        """The clock's time as Core writes it: local ``YYYY-MM-DD HH:MM:SS``."""
        return time.strftime(TIME_FORMAT, time.localtime(self.clock.seconds()))

    def claimed(self, claim: Hashable) -> bool:
        return claim in self._claims

    def claim(self, claim: Hashable) -> None:
        """Hold ``claim`` across a wait that precedes the commit (e.g. a Cell's answer)."""
        self._claims.add(claim)

    def release(self, claim: Hashable) -> None:
        self._claims.discard(claim)

    def commit(self, *changes: Change, claims: tuple[Hashable, ...] = ()) -> Deferred[None]:
        """Commit ``changes`` as one unit; ``claims`` are held (see :meth:`claimed`) until done.

        Claims close the window between validating a unique name against the view and the
        commit that makes it visible.
        """
        for claim in claims:
            self._claims.add(claim)

        def done(result: Failure | None) -> Failure | None:
            for claim in claims:
                self._claims.discard(claim)
            self._revision += 1
            if isinstance(result, Failure):
                return _domain_failure(result)
            return None

        d = self.store.commit(UnitOfWork(changes))
        d.addBoth(done)
        return d


def _domain_failure(failure: Failure) -> Failure:
    error = failure.value
    if isinstance(error, Conflict):
        return Failure(AlreadyExists(error.message))
    if isinstance(error, NotFound):
        return Failure(UnknownEntity(error.message))
    if isinstance(error, StillReferenced):
        return Failure(InvalidRequest(error.message))
    return failure


def build(factory: Callable[..., T], **fields: Any) -> T:
    """Build a model value; a validation error becomes an :class:`InvalidRequest`."""
    try:
        return factory(**fields)
    except (ValueError, TypeError) as error:
        raise InvalidRequest(validation_message(error)) from None


def check_name(kind: str, name: str) -> None:
    """Core's qualifier: ``[A-Za-z0-9_-]`` only (ASCII)."""
    for char in name:
        if not (char.isascii() and (char.isalnum() or char in "_-")):
            raise InvalidRequest(f"invalid {kind} name '{name}': illegal char '{char}'")
    if not name:
        raise InvalidRequest(f"{kind} name required")
