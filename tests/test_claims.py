"""Claims: exclusive per kind and key, typed values per kind, released however a wait ends."""

from __future__ import annotations

from typing import Any

from attrs import frozen
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from nanocore.model import ComputePool
from nanocore.operations.base import Context
from nanocore.operations.claims import ClaimHeld, ClaimKind, Claims
from nanocore.operations.errors import AlreadyExists, InvalidRequest, OperationError
from nanocore.operations.guests.placement import CAPACITY as GUEST_CAPACITY
from nanocore.operations.guests.placement import Share, move_key
from nanocore.store import CommitStore, Conflict, Insert, UnitOfWork


@frozen
class Reservation:
    """The shape a scheduler's capacity claim will have."""

    cell: str
    cores: int


NAME: ClaimKind[None] = ClaimKind("thing name")
CAPACITY: ClaimKind[Reservation] = ClaimKind(
    "capacity", lambda held: InvalidRequest(f"instance '{held.key}' is being placed")
)


class ClaimsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.claims = Claims()

    def test_exclusive_per_kind_and_key(self) -> None:
        first = self.claims.take(NAME, "a", None)
        with self.assertRaises(ClaimHeld) as caught:
            self.claims.take(NAME, "a", None)
        self.assertIs(caught.exception.held, first)
        self.assertEqual(caught.exception.message, "thing name 'a' is busy, retry")
        self.assertIsInstance(caught.exception, OperationError)
        # Another key, or the same key of another kind, is free.
        self.claims.take(NAME, "b", None)
        self.claims.take(CAPACITY, "a", Reservation("cell-1", 2))

    def test_a_kind_says_how_a_clash_reads(self) -> None:
        self.claims.take(CAPACITY, "vm-1", Reservation("cell-1", 2))
        with self.assertRaises(InvalidRequest) as caught:
            self.claims.take(CAPACITY, "vm-1", Reservation("cell-2", 1))
        self.assertEqual(caught.exception.message, "instance 'vm-1' is being placed")

    def test_a_guests_capacity_clash_names_the_guest_whatever_its_key(self) -> None:
        """A second migration right after the first one finished printed the claim's key,
        a tuple: `capacity of instance '('migration', '<id>')' is busy` (QA pass 16)."""
        share = Share("cell-b", 1, 1 << 30, 0)
        keys = ["vm-1", move_key("vm-1"), ("growth", "vm-1", "memory")]
        for key in keys:
            self.claims.take(GUEST_CAPACITY, key, share)
        messages = []
        for key in keys:
            with self.assertRaises(ClaimHeld) as caught:
                self.claims.take(GUEST_CAPACITY, key, share)
            messages.append(caught.exception.message)
        self.assertEqual(messages, [
            "capacity of instance 'vm-1' is busy, retry",
            "instance 'vm-1' has just moved to cell 'cell-b': its place there is counted until "
            "that Cell's next report, retry",
            "memory of instance 'vm-1' is still being added, retry",
        ])  # fmt: skip

    def test_live_claims_of_a_kind_can_be_summed(self) -> None:
        """What a scheduler does: capacity reserved on one Cell on top of the committed view."""
        self.claims.take(CAPACITY, "vm-1", Reservation("cell-1", 2))
        second = self.claims.take(CAPACITY, "vm-2", Reservation("cell-1", 4))
        self.claims.take(CAPACITY, "vm-3", Reservation("cell-2", 8))
        self.claims.take(NAME, "vm-4", None)

        def cores_on(cell: str) -> int:
            return sum(c.value.cores for c in self.claims.live(CAPACITY) if c.value.cell == cell)

        self.assertEqual((cores_on("cell-1"), cores_on("cell-2")), (6, 8))
        self.claims.release(second)
        self.assertEqual(cores_on("cell-1"), 2)
        self.assertEqual([c.key for c in self.claims.live(CAPACITY)], ["vm-1", "vm-3"])
        self.assertEqual(self.claims.live(ClaimKind("unused")), [])

    def test_grouped_claims_are_listed_per_group(self) -> None:
        """Capacity claims by Cell: one Cell's claims without walking every claim."""
        by_cell: ClaimKind[Reservation] = ClaimKind("placement", group=lambda r: r.cell)
        first = self.claims.take(by_cell, "vm-1", Reservation("cell-1", 2))
        self.claims.take(by_cell, "vm-2", Reservation("cell-1", 4))
        self.claims.take(by_cell, "vm-3", Reservation("cell-2", 8))
        self.assertEqual([c.key for c in self.claims.live_in(by_cell, "cell-1")], ["vm-1", "vm-2"])
        self.claims.release(first)
        self.claims.release(first)
        self.assertEqual([c.key for c in self.claims.live_in(by_cell, "cell-1")], ["vm-2"])
        self.assertEqual(self.claims.live_in(by_cell, "cell-9"), [])
        with self.assertRaises(ValueError):
            self.claims.live_in(CAPACITY, "cell-1")

    def test_release_frees_only_that_claim(self) -> None:
        stale = self.claims.take(NAME, "a", None)
        self.claims.release(stale)
        self.assertIsNone(self.claims.held(NAME, "a"))
        fresh = self.claims.take(NAME, "a", None)
        self.claims.release(stale)  # twice, and after the key was taken again
        self.assertIs(self.claims.held(NAME, "a"), fresh)

    def test_holding_releases_on_exit_and_on_error(self) -> None:
        with self.claims.holding(NAME, "a", None) as claim:
            self.assertIs(self.claims.held(NAME, "a"), claim)
        self.assertEqual(self.claims.live(NAME), [])
        with self.assertRaises(ValueError), self.claims.holding(NAME, "a", None):
            raise ValueError("the Cell said no")
        self.assertEqual(self.claims.live(NAME), [])

    def test_holding_across_awaits_released_on_cancel(self) -> None:
        waiting: Deferred[None] = Deferred()

        async def operation() -> None:
            with self.claims.holding(NAME, "a", None):
                await waiting

        running = Deferred.fromCoroutine(operation())
        self.assertIsNotNone(self.claims.held(NAME, "a"))
        running.cancel()
        self.failureResultOf(running, CancelledError)
        self.assertEqual(self.claims.live(NAME), [])

    def test_until_releases_on_success_failure_and_cancel(self) -> None:
        for outcome in ("success", "failure", "cancel"):
            claim = self.claims.take(NAME, outcome, None)
            result: Deferred[str] = Deferred()
            held = self.claims.until(result, claim)
            self.assertIs(self.claims.held(NAME, outcome), claim)
            if outcome == "success":
                result.callback("done")
                self.assertEqual(self.successResultOf(held), "done")
            elif outcome == "failure":
                result.errback(Failure(ValueError("no")))
                self.failureResultOf(held, ValueError)
            else:
                held.cancel()
                self.failureResultOf(held, CancelledError)
            self.assertIsNone(self.claims.held(NAME, outcome), outcome)


@implementer(CommitStore)
class FakeStore:
    """Commits answered by the test: ``answers`` are handed out in order."""

    view: Any = None

    def __init__(self, *answers: Deferred[None] | BaseException) -> None:
        self.units_committed = 0
        self.answers = list(answers)

    def commit(self, unit: UnitOfWork) -> Deferred[None]:
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


class ContextCommitTests(SynchronousTestCase):
    def commit_holding(self, context: Context) -> Deferred[None]:
        claim = context.claims.take(NAME, "a", None)
        return context.commit(Insert(ComputePool(name="p")), holding=(claim,))

    def test_fake_store_is_a_store(self) -> None:
        self.assertTrue(verifyObject(CommitStore, FakeStore()))

    def test_claims_held_until_the_commit_is_done(self) -> None:
        pending: Deferred[None] = Deferred()
        context = Context(FakeStore(pending), Clock())
        committing = self.commit_holding(context)
        self.assertIsNotNone(context.claims.held(NAME, "a"))
        pending.callback(None)
        self.assertIsNone(self.successResultOf(committing))
        self.assertEqual(context.claims.live(NAME), [])
        self.assertEqual(context.revision(), (0, 1))

    def test_failing_commit_releases_and_maps_the_error(self) -> None:
        context = Context(FakeStore(fail(Conflict("compute pool 'p' exists"))), Clock())
        self.failureResultOf(self.commit_holding(context), AlreadyExists)
        self.assertEqual(context.claims.live(NAME), [])

    def test_commit_raising_at_once_releases(self) -> None:
        context = Context(FakeStore(RuntimeError("store gone")), Clock())
        self.assertRaises(RuntimeError, self.commit_holding, context)
        self.assertEqual(context.claims.live(NAME), [])
