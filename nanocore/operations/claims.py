"""Claims: what an operation holds while it waits, so that no two operations take the same thing.

An operation decides against the committed view, then often waits (for a Cell's answer, for the
store's commit) before its change is visible to the next request. A claim closes that window:
it is taken when the decision is made, held across the wait, and released when the wait ends,
however it ends (success, failure, timeout, cancellation), so it is never leaked.

A claim has a kind and a key, and is exclusive within its kind: taking a ``(kind, key)`` that is
held is refused with the kind's error. A claim carries a value typed by its kind (the pool a
Cell is being added to; for a scheduler, the cores, memory and disk reserved on a Cell), and
:meth:`Claims.live` lists the live claims of a kind, so that a holder can sum what is reserved
("the capacity claimed on Cell X") on top of the committed view. A claim released by the commit
that makes its change visible is released after the read model shows the change: for a moment
both count, never neither. Claims are in memory only: they cover waits inside one process, and
a restart, which ends every wait, ends them too.

A claim refuses; :class:`Turns` queue instead: changes of one thing that must each decide on
what the previous one committed (Nano ran them one after another) wait for their turn.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred, DeferredLock

from nanocore.operations.errors import InvalidRequest, OperationError

V = TypeVar("V")
T = TypeVar("T")


@frozen(eq=False)
class Claim(Generic[V]):
    """One held claim; its identity (not its fields) is what :meth:`Claims.release` frees."""

    kind: ClaimKind[V]
    key: Hashable
    value: V


class ClaimHeld(InvalidRequest):
    """The ``(kind, key)`` is claimed by an operation still waiting; ``held`` is its claim."""

    def __init__(self, held: Claim[Any], message: str | None = None) -> None:
        super().__init__(message or f"{held.kind.name} '{held.key}' is busy, retry")
        self.held = held


@frozen(eq=False)
class ClaimKind(Generic[V]):
    """A kind of claim: what is claimed (``name``) and how a clash is told to the client."""

    name: str
    #: The error for a second claim of a held key (default :class:`ClaimHeld`).
    refusal: Callable[[Claim[V]], OperationError] = ClaimHeld
    #: Claims of this kind are also listed by ``group(value)`` (:meth:`Claims.live_in`), so a
    #: holder can sum one group (the capacity claimed on one Cell) without walking them all.
    group: Callable[[V], Hashable] | None = None


class Claims:
    """The live claims of one Core, by kind and key."""

    def __init__(self) -> None:
        self._held: dict[ClaimKind[Any], dict[Hashable, Claim[Any]]] = {}
        self._groups: dict[ClaimKind[Any], dict[Hashable, dict[Hashable, Claim[Any]]]] = {}

    def take(self, kind: ClaimKind[V], key: Hashable, value: V) -> Claim[V]:
        """Claim ``key`` for ``value``, or raise the kind's refusal if it is held."""
        of_kind = self._held.setdefault(kind, {})
        held = of_kind.get(key)
        if held is not None:
            raise kind.refusal(held)
        claim = of_kind[key] = Claim(kind, key, value)
        if kind.group is not None:
            groups = self._groups.setdefault(kind, {})
            groups.setdefault(kind.group(value), {})[key] = claim
        return claim

    def release(self, claim: Claim[Any]) -> None:
        """Free ``claim`` if it is still held (releasing twice is harmless)."""
        of_kind = self._held.get(claim.kind, {})
        if of_kind.get(claim.key) is claim:
            del of_kind[claim.key]
            if claim.kind.group is not None:
                groups = self._groups[claim.kind]
                group = claim.kind.group(claim.value)
                members = groups[group]
                del members[claim.key]
                if not members:
                    del groups[group]

    def held(self, kind: ClaimKind[V], key: Hashable) -> Claim[V] | None:
        return self._held.get(kind, {}).get(key)

    def live(self, kind: ClaimKind[V]) -> list[Claim[V]]:
        """Every held claim of ``kind``, oldest first."""
        return list(self._held.get(kind, {}).values())

    def live_in(self, kind: ClaimKind[V], group: Hashable) -> list[Claim[V]]:
        """The held claims of ``kind`` whose value falls in ``group``, oldest first."""
        if kind.group is None:
            raise ValueError(f"claims of {kind.name} are not grouped")
        return list(self._groups.get(kind, {}).get(group, {}).values())

    @contextmanager
    def holding(self, kind: ClaimKind[V], key: Hashable, value: V) -> Iterator[Claim[V]]:
        """Hold a claim for the ``with`` block, across every ``await`` in it."""
        claim = self.take(kind, key, value)
        try:
            yield claim
        finally:
            self.release(claim)

    def until(self, result: Deferred[T], *claims: Claim[Any]) -> Deferred[T]:
        """Release ``claims`` when ``result`` fires, whatever it fires with."""

        def release(outcome: Any) -> Any:
            for claim in claims:
                self.release(claim)
            return outcome

        return result.addBoth(release)


class Turns:
    """Work on one key runs after every earlier work on the same key has ended, however it
    ended (a failure, a refusal raised at once, a cancellation): nothing waits forever on a
    turn whose work failed. Keys with nothing queued are forgotten."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, DeferredLock] = {}

    def run(self, key: Hashable, work: Callable[[], Deferred[T]]) -> Deferred[T]:
        """Run ``work`` in ``key``'s turn (at once when nothing on ``key`` is under way)."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = DeferredLock()
        running: Deferred[T] = lock.run(work)

        def forget(result: Any) -> Any:
            if not lock.locked and self._locks.get(key) is lock:
                del self._locks[key]
            return result

        return running.addBoth(forget)

    def busy(self, key: Hashable) -> bool:
        """Whether work on ``key`` is under way or waiting."""
        return key in self._locks
