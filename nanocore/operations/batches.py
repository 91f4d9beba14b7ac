"""Batches: create, delete or stop many guests with one call, and follow them (§4.14, §6.3).

A batch starts every member's operation at once, through the operations of the single routes:
a batch create of 200 places each member through the scheduler with the same claims as 200
calls of ``POST /guests/`` would (no overcommit; a member that does not fit fails with the
scheduler's reason), and a batch delete or stop asks each guest's Cell as the single routes do.
The request is checked up front (its shape, the pool, the template, the ids it names); what
depends on each guest's state (a name taken, no room left, a guest already stopped) fails that
member, not the batch (observed-with-cells: "with Cells" point 2, "without Cells" point 5).

**A member's state** comes first from its own operation (refused, or answered by its Cell) and
then from the guest's durable record, read again after every Cell event about the guest (in the
guest's turn, after the event's own change, so a failed creation's pending error is read before
a ``GET /guests/:id`` can tell it) and at every poll: a create is *created* once the record is,
and *fail* once the record is gone (with the pending error's text); a delete is *deleted* once
the record is gone; a stop is *stopped* once the record says stopped, that is on the Cell's
``GuestStoppedEvent`` (the original counted the Cell's answer, so a batch delete right after a
finished batch stop found guests still running).

**Records.** A batch is a ``BatchTask`` in the store, written before its id is answered, then
again as its members change (one write in flight per batch; changes made meanwhile go in the
next). After a restart the unfinished batches are followed again from the guests' records; a
member whose operation was waiting for its Cell is then judged by its guest's record alone.

**Ending.** A batch is finished when no member is in progress, or when none changed for
:data:`STALL_AFTER` seconds (members still in progress keep their state, and the poll answers
200). A finished batch is forgotten :data:`EXPIRE_AFTER` seconds after its last change. Both are
judged when a batch is polled or another one starts: no timer runs for them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from attrs import define, evolve, frozen
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nanocore.cluster.cells import CellObserver, CellStatus
from nanocore.cluster.message import Message, ParamKey
from nanocore.model import BatchGuest, BatchKind, BatchStatus, BatchTask, Instance, clipped
from nanocore.operations.base import Context, Sweep, check_name
from nanocore.operations.errors import InvalidRequest, OperationError, UnknownEntity
from nanocore.operations.guests import GuestOperations, GuestSpec
from nanocore.store import Delete, Insert, Put, StoreClosed

#: Seconds without a member changing after which an unfinished batch is finished. A stock
#: Cell watches a guest it was asked to stop for up to 60 s before it reports it stopped.
STALL_AFTER = 90.0
#: Seconds after its last change a finished batch is kept (the original: 30).
EXPIRE_AFTER = 300.0
#: The most guests one batch may name (the original had no bound).
MAX_MEMBERS = 1000
#: Name rules of a batch create; only "order" (``<prefix>_<i>``) is implemented, as in Nano.
NAME_RULES = {"order": 0, "MAC": 1, "address": 2}

_PREFIX = re.compile(r"[A-Za-z0-9_-]+")
PROCESSING, SUCCESS, FAIL = BatchStatus.PROCESSING, BatchStatus.SUCCESS, BatchStatus.FAIL


@frozen
class BatchCreateSpec:
    """A batch create request: the rule and prefix naming its members, how many, and the
    create request every member shares (its ``name`` is the member's)."""

    name_rule: str
    prefix: str
    count: int
    guest: GuestSpec


@define
class _Run:
    """A batch being followed: its members as they change, and who is still waiting."""

    id: str
    kind: BatchKind
    start_time: float
    latest_update: float
    members: list[BatchGuest]
    #: Positions whose operation has not answered yet.
    waiting: set[int]
    finished: bool = False
    saving: bool = False
    dirty: bool = False

    @classmethod
    def of(cls, task: BatchTask) -> _Run:
        return cls(
            task.id, task.kind, task.start_time, task.latest_update, list(task.guests), set(),
            task.finished,
        )  # fmt: skip

    def snapshot(self) -> BatchTask:
        return BatchTask(
            id=self.id,
            kind=self.kind,
            start_time=self.start_time,
            latest_update=self.latest_update,
            finished=self.finished,
            guests=tuple(self.members),
        )


@implementer(CellObserver)
class Batches:
    """The batch routes; subscribed to the Cell registry after the guests' own observer."""

    log = Logger()

    def __init__(
        self,
        context: Context,
        guests: GuestOperations,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self._context = context
        self._guests = guests
        self._new_id = new_id
        self._runs: dict[str, _Run] = {}
        self._expired = Sweep(context, "batches")
        #: Guest id -> the (batch, position) pairs following it.
        self._following: dict[str, set[tuple[str, int]]] = {}
        for task in context.view.batch_tasks.values():
            if not task.finished:
                self._follow(_Run.of(task))

    # -- starting -----------------------------------------------------------------------------

    def create(self, spec: BatchCreateSpec) -> Deferred[str]:
        """Check the request, then start every member's creation; the batch's id."""
        try:
            self._check_create(spec)
        except OperationError as error:
            return fail(error)
        members: list[BatchGuest] = []
        started: list[tuple[int, Deferred[Any]]] = []
        creations = self._guests.creations
        for index in range(spec.count):
            name = f"{spec.prefix}_{index}"
            try:
                guest_id, done = creations.begin(evolve(spec.guest, name=name))
            except OperationError as error:
                members.append(BatchGuest(name, status=FAIL, error=clipped(error.message)))
                continue
            started.append((len(members), done))
            members.append(BatchGuest(name, guest_id))
        return self._start(BatchKind.CREATE, members, started)

    def delete(self, guest_ids: Sequence[str]) -> Deferred[str]:
        """Delete each guest as ``DELETE /guests/:id`` does; the batch's id."""
        return self._each(BatchKind.DELETE, guest_ids, self._guests.delete)

    def stop(self, guest_ids: Sequence[str], *, force: bool = False) -> Deferred[str]:
        """Stop each guest as ``DELETE /instances/:id`` does (``force``: power off)."""
        return self._each(
            BatchKind.STOP, guest_ids, lambda guest: self._guests.stop(guest, force=force)
        )

    def _check_create(self, spec: BatchCreateSpec) -> None:
        """Nano's checks in its order, then every check of a single create but placement."""
        if spec.name_rule not in NAME_RULES:
            raise InvalidRequest(f"invalid name rule '{spec.name_rule}'")
        if not spec.prefix:
            raise InvalidRequest("prefix required")
        if not (spec.prefix.isascii() and _PREFIX.fullmatch(spec.prefix)):
            raise InvalidRequest("only '0~9a~Z_-' allowed in prefix")
        if spec.count == 0:
            raise InvalidRequest("guest count required")
        if spec.count > MAX_MEMBERS:
            raise InvalidRequest(f"guest count {spec.count} over the limit of {MAX_MEMBERS}")
        if spec.guest.pool not in self._context.view.compute_pools:
            raise UnknownEntity(f"invalid compute pool '{spec.guest.pool}'")
        rule = NAME_RULES[spec.name_rule]
        if rule:
            raise InvalidRequest(f"unsupport name rule {rule}")
        last = f"{spec.prefix}_{spec.count - 1}"  # the longest member name
        check_name("guest", last)
        self._guests.creations.validate(evolve(spec.guest, name=last))

    def _each(
        self,
        kind: BatchKind,
        guest_ids: Sequence[str],
        operation: Callable[[str], Deferred[None]],
    ) -> Deferred[str]:
        try:
            instances = self._named(guest_ids)
        except OperationError as error:
            return fail(error)
        members = [BatchGuest(instance.full_name, instance.id) for instance in instances]
        started = [(position, operation(instance.id)) for position, instance in
                   enumerate(instances)]  # fmt: skip
        return self._start(kind, members, started)

    def _named(self, guest_ids: Sequence[str]) -> list[Instance]:
        """The guests a delete or stop names: at least one, each once, each existing."""
        if not guest_ids:
            raise InvalidRequest("guest id required")
        if len(guest_ids) > MAX_MEMBERS:
            raise InvalidRequest(
                f"{len(guest_ids)} guests over the limit of {MAX_MEMBERS} in one batch"
            )
        instances = self._context.view.instances
        found: list[Instance] = []
        seen: set[str] = set()
        for guest in guest_ids:
            if guest in seen:
                raise InvalidRequest(f"guest '{guest}' listed twice")
            seen.add(guest)
            instance = instances.get(guest)
            if instance is None:
                raise UnknownEntity(f"invalid guest '{guest}'")
            found.append(instance)
        return found

    def _start(
        self,
        kind: BatchKind,
        members: list[BatchGuest],
        started: list[tuple[int, Deferred[Any]]],
    ) -> Deferred[str]:
        """Follow the batch, record it, and answer its id once the record is durable."""
        self._sweep()
        now = self._context.clock.seconds()
        run = _Run(self._new_id(), kind, now, now, members, {p for p, _ in started})
        run.finished = not any(m.status is PROCESSING for m in members)
        self._follow(run)
        run.saving = True  # answers that came at once are folded into the first record
        for position, done in started:
            done.addCallbacks(
                self._answered,
                self._refused,
                callbackArgs=(run, position),
                errbackArgs=(run, position),
            )
        run.dirty = False
        recording = self._context.commit(Insert(run.snapshot()))

        def recorded(result: object) -> object:
            self._saved(result, run, initial=True)
            return result

        return recording.addBoth(recorded).addCallback(lambda _: run.id)

    # -- following ----------------------------------------------------------------------------

    def _follow(self, run: _Run) -> None:
        self._runs[run.id] = run
        for position, member in enumerate(run.members):
            if member.status is PROCESSING and member.id:
                self._following.setdefault(member.id, set()).add((run.id, position))

    def _unfollow(self, run: _Run, position: int) -> None:
        guest = run.members[position].id
        pairs = self._following.get(guest)
        if pairs is not None:
            pairs.discard((run.id, position))
            if not pairs:
                del self._following[guest]

    def _current(self, run: _Run) -> bool:
        return self._runs.get(run.id) is run

    def _answered(self, result: object, run: _Run, position: int) -> None:
        """A member's operation succeeded (a create: its Cell accepted it)."""
        run.waiting.discard(position)
        if not self._current(run) or run.members[position].status is not PROCESSING:
            return
        if run.kind is BatchKind.DELETE:
            self._update(run, position, status=SUCCESS)
        else:
            self._refresh(run, position)

    def _refused(self, failure: Failure, run: _Run, position: int) -> None:
        """A member's operation failed: the member fails with its message."""
        run.waiting.discard(position)
        if isinstance(failure.value, OperationError):
            message = failure.value.message
        else:
            self.log.failure("batch {batch}: member {position} failed", failure,
                             batch=run.id, position=position)  # fmt: skip
            message = "internal error"
        if self._current(run) and run.members[position].status is PROCESSING:
            self._update(run, position, status=FAIL, error=clipped(message))

    def _refresh(self, run: _Run, position: int) -> None:
        """Judge a member in progress by its guest's committed record."""
        member = run.members[position]
        if member.status is not PROCESSING or not member.id:
            return
        view = self._context.view
        instance = view.instances.get(member.id)
        if run.kind is BatchKind.CREATE:
            if instance is not None:
                if instance.created:
                    self._update(run, position, status=SUCCESS, progress=100)
                elif instance.progress != member.progress:
                    self._update(run, position, progress=instance.progress)
            elif position not in run.waiting:
                pending = view.pending_errors.get(member.id)
                reason = f"invalid instance '{member.id}'" if pending is None else pending.error
                self._update(run, position, status=FAIL, error=clipped(reason))
        elif run.kind is BatchKind.DELETE:
            if instance is None:
                self._update(run, position, status=SUCCESS)
        elif position not in run.waiting:
            if instance is None:
                self._update(run, position, status=FAIL, error=f"invalid instance '{member.id}'")
            elif not instance.running:
                self._update(run, position, status=SUCCESS)

    def _update(self, run: _Run, position: int, **changes: Any) -> None:
        member = evolve(run.members[position], **changes)
        run.members[position] = member
        run.latest_update = self._context.clock.seconds()
        if member.status is not PROCESSING:
            self._unfollow(run, position)
            run.finished = not any(m.status is PROCESSING for m in run.members)
        self._save(run)

    # -- recording ----------------------------------------------------------------------------

    def _save(self, run: _Run) -> None:
        if run.saving:
            run.dirty = True
            return
        run.saving = True
        self._context.commit(Put(run.snapshot())).addBoth(self._saved, run)

    def _saved(self, result: object, run: _Run, initial: bool = False) -> None:
        run.saving = False
        if isinstance(result, Failure) and not initial:
            if result.check(StoreClosed):
                # Core is stopping: after a restart the batch is judged from the guests.
                self.log.info("store closed before batch {batch} was recorded again",
                              batch=run.id)  # fmt: skip
                return
            self.log.failure("batch {batch} not recorded", result, batch=run.id)
        if not self._current(run):
            return
        if run.dirty:
            run.dirty = False
            self._save(run)
        elif run.finished:
            self._retire(run)

    def _retire(self, run: _Run) -> None:
        """A finished batch is read from the store from now on."""
        for position in range(len(run.members)):
            self._unfollow(run, position)
        del self._runs[run.id]

    def _sweep(self) -> None:
        """Finish stalled batches and forget expired ones."""
        now = self._context.clock.seconds()
        for run in list(self._runs.values()):
            self._stall(run, now)
        for run in list(self._runs.values()):
            if run.finished and now - run.latest_update >= EXPIRE_AFTER:
                self._retire(run)
        self._expired.delete(
            Delete(BatchTask, task.id)
            for task in self._context.view.batch_tasks.values()
            if task.finished and now - task.latest_update >= EXPIRE_AFTER
        )

    def _stall(self, run: _Run, now: float) -> None:
        if not run.finished and now - run.latest_update >= STALL_AFTER:
            self.log.info("batch {batch}: no member changed for {seconds:.0f} s; finished",
                          batch=run.id, seconds=now - run.latest_update)  # fmt: skip
            run.finished = True
            run.latest_update = now
            self._save(run)

    # -- polling ------------------------------------------------------------------------------

    def get(self, kind: BatchKind, batch_id: str) -> BatchTask:
        """The batch as it is now; ``invalid batch task`` for an unknown, other or expired one."""
        now = self._context.clock.seconds()
        run = self._runs.get(batch_id)
        if run is not None and run.kind is kind:
            for position in range(len(run.members)):
                self._refresh(run, position)
            self._stall(run, now)
            task = run.snapshot()
        else:
            found = self._context.view.batch_tasks.get(batch_id)
            if found is None or found.kind is not kind:
                raise UnknownEntity(f"invalid batch task '{batch_id}'")
            task = found
        if task.finished and now - task.latest_update >= EXPIRE_AFTER:
            self._sweep()
            raise UnknownEntity(f"invalid batch task '{batch_id}'")
        return task

    # -- CellObserver: guest events about members ---------------------------------------------

    def cell_available(self, name: str, address: str) -> None:
        pass

    def cell_status(self, name: str, status: CellStatus) -> None:
        pass

    def cell_disconnected(self, name: str, gracefully: bool) -> None:
        pass

    def cell_answered_late(self, name: str, request: Message, reply: Message) -> None:
        """The Cell's inventory, taken again by the cell operations, tells what it did."""

    def cell_event(self, name: str, message: Message) -> None:
        """After the guest's own handling of the event, judge the members following it."""
        params = message.string_params
        guest = params.get(ParamKey.Instance) or params.get(ParamKey.Guest, "")
        if guest not in self._following:
            return

        def judge() -> Deferred[None]:
            for batch, position in list(self._following.get(guest, ())):
                run = self._runs.get(batch)
                if run is not None:
                    self._refresh(run, position)
            return succeed(None)

        self._guests.access.serially(guest, judge).addErrback(
            lambda failure: self.log.failure("batch members of {guest}", failure, guest=guest)
        )
