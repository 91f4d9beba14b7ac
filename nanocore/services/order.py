"""How the services of one tree wait for each other, at start and at stop.

A Core's tree is built before it starts, so a service that may only serve once another is
ready (the Cell link once the state is loaded) waits on a `OneShot` instead of being added to
the tree later; and its parent stops the children one at a time, last started first, so that
nothing is closed under a service that still uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.application.service import MultiService, Service
from twisted.internet.defer import AlreadyCalledError, Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

T = TypeVar("T")
U = TypeVar("U")

log = Logger()


class OneShot(Generic[T]):
    """A result that arrives once and that any number of services wait for."""

    def __init__(self) -> None:
        self._result: T | Failure | None = None
        self._resolved = False
        self._waiting: list[Deferred[T]] = []

    @property
    def resolved(self) -> bool:
        return self._resolved

    def peek(self) -> T | None:
        """The result if it has arrived, else None (None too if it failed): for whoever must
        answer now rather than wait (a connection's first bytes while Core starts)."""
        result = self._result
        return None if isinstance(result, Failure) else result

    def wait(self) -> Deferred[T]:
        """A new Deferred for the result; cancelling it ends only this wait."""
        if self._resolved:
            result = self._result
            return fail(result) if isinstance(result, Failure) else succeed(result)  # type: ignore[arg-type]
        waiting: Deferred[T] = Deferred(canceller=self._waiting.remove)
        self._waiting.append(waiting)
        return waiting

    def resolve(self, result: T | Failure) -> None:
        """Hand `result` (a value or a Failure) to every wait, now and later."""
        if self._resolved:
            raise AlreadyCalledError("a OneShot is resolved once")
        self._result, self._resolved = result, True
        waiting, self._waiting = self._waiting, []
        for each in waiting:
            if isinstance(result, Failure):
                each.errback(result)
            else:
                each.callback(result)

    def then(self, derive: Callable[[T], U]) -> OneShot[U]:
        """The result of `derive` over this one's, computed once, when it arrives."""
        derived: OneShot[U] = OneShot()
        self.wait().addCallback(derive).addBoth(derived.resolve)
        return derived


class InOrder(MultiService):
    """Children start in the order they were added and stop in reverse, one at a time.

    `MultiService` stops its children all at once; here each child stops only after every
    child added after it has finished stopping, so the store closes after the Cell links that
    feed it are gone. A child that fails to stop is logged and the others still stop.
    """

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_children())

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                log.failure("stopping {name} failed", name=child.name)
