"""What every operations family shares: the store, the clock, claims, commits, error mapping."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ParamSpec, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from nanocore.clocks import wall_seconds
from nanocore.model import MAX_NAME, TIME_FORMAT, first_invisible, shown, validation_message
from nanocore.operations.claims import Claim, Claims
from nanocore.operations.errors import (
    UNSAVED_RETRY,
    AlreadyExists,
    InvalidRequest,
    OperationError,
    UnknownEntity,
)
from nanocore.ratelog import RateLimitedLog
from nanocore.store import (
    Change,
    CommitFailed,
    CommitStore,
    Conflict,
    NotFound,
    ReadModel,
    StillReferenced,
    StoreClosed,
    UnitOfWork,
)

T = TypeVar("T")
P = ParamSpec("P")

#: Items named in one log line; the rest are counted.
MAX_NAMED = 20


def named(items: Sequence[str]) -> str:
    """``items`` for a log line: the first :data:`MAX_NAMED`, then how many more."""
    more = len(items) - MAX_NAMED
    return ", ".join(items[:MAX_NAMED]) + (f" and {more} more" if more > 0 else "")


class Context:
    """The store, the clock, the live claims, and a revision that moves with every commit.

    The API caches encoded list answers keyed on :meth:`revision`: the store's count of applied
    units (which moves with the read model, whoever committed) plus the commits made here.
    """

    def __init__(self, store: CommitStore, clock: IReactorTime) -> None:
        self.store = store
        self.clock = clock
        self.claims = Claims()
        self._revision = 0
        #: What could not be saved and is tried again: said once a minute per kind and source
        #: however long the disk stays full.
        self._unsaved = RateLimitedLog(Logger(namespace="nanocore.operations"), clock)

    @property
    def view(self) -> ReadModel:
        return self.store.view

    def revision(self) -> tuple[int, int]:
        """Changes whenever committed state may have changed, by any path into the store."""
        return (self.store.units_committed, self._revision)

    def retry_unsaved(
        self, failure: Failure, again: Callable[[], object], kind: str, source: str, say: str
    ) -> None:
        """An errback: what the store could not save (``failure`` a ``CommitFailed``; any other
        passes on) is decided anew by ``again``, :data:`UNSAVED_RETRY` s later, on the state
        then. Core learns some things only once, from a Cell (its loss, its goodbye, a
        failover to plan), and nobody else would ask again (QA pass 22). ``say`` (with
        ``{source}``, ``{reason}``, ``{after}``) is logged once a minute per ``kind`` and
        ``source``."""
        failure.trap(CommitFailed)
        reason = failure.getErrorMessage()
        self._unsaved.warn(kind, source, say, reason=reason, after=UNSAVED_RETRY)
        self.clock.callLater(UNSAVED_RETRY, again)

    def now_text(self) -> str:
        """The clock's time as Core writes it: local ``YYYY-MM-DD HH:MM:SS``."""
        return time.strftime(TIME_FORMAT, time.localtime(wall_seconds(self.clock)))

    def commit(
        self, *changes: Change, holding: Iterable[Claim[Any]] = (), essential: bool = False
    ) -> Deferred[None]:
        """Commit ``changes`` as one unit; the ``holding`` claims are released when it is done.
        ``essential``: recorded even on a full disk, in the store's reserve of room (what a
        Cell did, which nobody can be told to send again).

        Store errors become the domain's (:class:`AlreadyExists`, :class:`UnknownEntity`,
        :class:`InvalidRequest`).
        """
        claims = tuple(holding)
        try:
            committing = self.store.commit(UnitOfWork(changes, essential=essential))
        except BaseException:
            for claim in claims:
                self.claims.release(claim)
            raise

        def done(result: Failure | None) -> Failure | None:
            self._revision += 1
            if isinstance(result, Failure):
                return _domain_failure(result)
            return None

        committing.addBoth(done)
        return self.claims.until(committing, *claims) if claims else committing


class Sweep:
    """Deletes the records a family let expire, one commit at a time.

    Reads sweep as they go, so two come together often; until the first one's commit lands
    its records are still in the view, and deleting them again failed the second unit (logged
    as critical). A sweep asked for meanwhile is skipped: the next read after it sweeps again.
    """

    log = Logger()

    def __init__(self, context: Context, records: str) -> None:
        self._context = context
        self._records = records
        self._committing = False

    def delete(self, changes: Iterable[Change]) -> None:
        """Commit ``changes`` (read only when no sweep is committing: a generator is fine)."""
        if self._committing:
            return
        changes = tuple(changes)
        if not changes:
            return
        self._committing = True
        self._context.commit(*changes).addBoth(self._done)

    def _done(self, result: object) -> None:
        self._committing = False
        if not isinstance(result, Failure):
            return
        if result.check(StoreClosed):
            self.log.info("expired {records} kept: the store is closed", records=self._records)
        else:
            self.log.failure("expired {records} not removed", result, records=self._records)


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


def check_name(kind: str, name: str, *, also: str = "") -> None:
    """Core's qualifier, in Core's shape: ``[A-Za-z0-9_-]`` only (ASCII), plus the characters
    in ``also`` (``.`` for image and snapshot names); then nanocore's length limit.

    Checked before the model's validators, so a refusal names the route's kind of name and
    quotes at most a cut of it (`shown`), however much a client sent.
    """
    if not name:
        raise InvalidRequest(f"{kind} name required")
    illegal = _illegal_char(also).search(name)
    if illegal is not None:
        raise _invalid_name(kind, name, f"illegal char '{shown(illegal.group())}'")
    _check_length(kind, name)


def check_label(kind: str, name: str) -> None:
    """A name Core never qualified (templates, address pools, policy groups, media images):
    free text without control or format characters (the model's ``label``), in the words
    of `check_name`. The length goes first: Core refused nothing here, and it bounds the scan.
    """
    if not name:
        raise InvalidRequest(f"{kind} name required")
    _check_length(kind, name)
    invisible = first_invisible(name)
    if invisible is not None:
        raise _invalid_name(kind, name, f"illegal char '{shown(invisible)}'")


@functools.cache
def _illegal_char(also: str) -> re.Pattern[str]:
    return re.compile(f"[^A-Za-z0-9_{re.escape('-' + also)}]")


def _check_length(kind: str, name: str) -> None:
    if len(name) > MAX_NAME:
        raise _invalid_name(kind, name, f"longer than {MAX_NAME} characters")


def _invalid_name(kind: str, name: str, reason: str) -> InvalidRequest:
    return InvalidRequest(f"invalid {kind} name '{shown(name)}': {reason}")


def refusals_deferred(operation: Callable[P, Deferred[T]]) -> Callable[P, Deferred[T]]:
    """A refusal raised before ``operation`` waits on anything comes back as its failed
    Deferred, so a caller handles every refusal the same way, however early it came."""

    @functools.wraps(operation)
    def checked(*args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        try:
            return operation(*args, **kwargs)
        except OperationError as error:
            return fail(error)

    return checked


def visible_to(owner: str, group: str, item_owner: str, item_group: str) -> bool:
    """Core's visibility rule for guests and images (api-reference §6 point 5): the item is
    the owner's, or in the group when a group is named; naming nobody shows nothing."""
    return (owner != "" and item_owner == owner) or (group != "" and item_group == group)
