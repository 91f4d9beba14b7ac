"""Request/reply transactions over a Cell link (cell-protocol.md §3.5 and §4).

The original correlates replies by a session id from a small round-robin pool, so a late reply
can land in a newer transaction that reused the id (§4, session-reuse hazard). Here every
request carries a fresh token from a monotonic 32-bit counter: a reply whose token is not
pending is late, and it is logged and dropped, never delivered to anyone else.

The same module holds the answering side (:func:`reply_to`) so a Cell, or Core answering a
Cell, builds replies the one correct way.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import Any

from attrs import define
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from nanocore.cluster._fastcodec import with_from_session
from nanocore.cluster.message import (
    KIND_REQUEST,
    KNOWN_IDS,
    Message,
    MessageID,
    message_kind,
    message_name,
    response_id,
)
from nanocore.ratelog import RateLimitedLog

__all__ = [
    "CellError",
    "TransactionTimeout",
    "Transactions",
    "reply_ids",
    "reply_to",
]

TOKEN_MAX = 2**32 - 1
#: Requests that timed out whose late reply is still recognised (the latest ones).
TIMED_OUT_KEPT = 1024

_NO_REPLY = frozenset({MessageID.MigrateInstanceRequest})
_SPECIAL_REPLIES: dict[int, frozenset[int]] = {
    # Cells answer ShrinkDisk with ResizeDiskResponse (§5.4 quirk); accept both.
    MessageID.ShrinkDiskRequest: frozenset(
        {MessageID.ShrinkDiskResponse, MessageID.ResizeDiskResponse}
    ),
    # The pool push is an event answered by an event (§5.2).
    MessageID.ComputePoolReadyEvent: frozenset({MessageID.ComputeCellReadyEvent}),
}


def reply_ids(request_id: int) -> frozenset[int]:
    """The ids that answer ``request_id``; empty when nothing answers it."""
    special = _SPECIAL_REPLIES.get(request_id)
    if special is not None:
        return special
    if request_id in _NO_REPLY or message_kind(request_id) != KIND_REQUEST:
        return frozenset()
    return frozenset({response_id(request_id)})


class TransactionTimeout(Exception):
    """No reply arrived within the timeout; the token is forgotten, a late reply is dropped."""

    def __init__(self, request: Message, timeout: float) -> None:
        name, token = message_name(request.id), request.from_session
        super().__init__(f"no reply to {name} (token {token}) within {timeout:g} s")
        self.request = request
        self.timeout = timeout


class CellError(Exception):
    """The peer answered with ``success: false``; ``message`` is that reply."""

    def __init__(self, message: Message) -> None:
        super().__init__(message.error or f"{message_name(message.id)} reported failure")
        self.message = message


@define
class _Pending:
    request: Message
    deferred: Deferred[Message]
    is_reply: Callable[[Message], bool]
    on_progress: Callable[[Message], None] | None
    peer: str | None
    timeout: float
    restart_on_progress: bool
    timer: IDelayedCall | None = None


#: What is kept of a request that timed out: it, its peer, and what answers it.
_TimedOut = tuple[Message, "str | None", Callable[[Message], bool]]


class Transactions:
    """Outstanding requests of one process (or one link), each keyed by a never-reused token."""

    log = Logger()

    def __init__(self, clock: IReactorTime, timeout: float, *, first_token: int = 1) -> None:
        _check_timeout(timeout)
        if not 1 <= first_token <= TOKEN_MAX:
            raise ValueError(f"first_token must be in 1..{TOKEN_MAX}, got {first_token}")
        self._clock = clock
        self._timeout = timeout
        self._next_token = first_token
        self._wrapped = False
        self._pending: dict[int, _Pending] = {}
        #: Requests that timed out, kept (the latest :data:`TIMED_OUT_KEPT`) until their reply
        #: comes after all: the peer may have done what was asked, though its asker gave up.
        self._timed_out: OrderedDict[int, _TimedOut] = OrderedDict()
        #: Who hears of such a late reply, ``late(request, reply)`` (none: none is kept, and a
        #: late reply is dropped and logged).
        self.late: Callable[[Message, Message], None] | None = None
        #: A frozen Cell times out every request waiting for it: a line per peer per minute.
        self._timeouts = RateLimitedLog(self.log, clock)

    @property
    def pending(self) -> int:
        """How many transactions are waiting for their reply."""
        return len(self._pending)

    def request(
        self,
        send: Callable[[Message], None],
        message: Message,
        *,
        timeout: float | None = None,
        on_progress: Callable[[Message], None] | None = None,
        peer: str | None = None,
        is_reply: Callable[[Message], bool] | None = None,
        restart_on_progress: bool = False,
    ) -> Deferred[Message]:
        """Stamp ``message`` with a fresh token, ``send`` it, and wait for the reply.

        The Deferred fires with the reply, or fails with :class:`CellError` when the reply says
        ``success: false``, or with :class:`TransactionTimeout`. Cancelling it forgets the token.
        Messages addressed to the token that are not the reply go to ``on_progress``.

        ``peer``: when given, only messages whose ``sender`` is that peer are accepted, so
        another Cell cannot answer for it. ``is_reply`` overrides which messages complete the
        transaction (default: the ids of :func:`reply_ids`); with ``restart_on_progress`` each
        progress event restarts the timeout, making it an inactivity limit (§5.12).
        """
        limit = self._timeout if timeout is None else _check_timeout(timeout)
        if is_reply is None:
            is_reply = _default_is_reply(message.id)
        token = self._issue_token()
        stamped = with_from_session(message, token)  # attrs.evolve, at a third of the cost
        deferred: Deferred[Message] = Deferred(lambda _: self._forget(token))
        entry = _Pending(
            request=stamped,
            deferred=deferred,
            is_reply=is_reply,
            on_progress=on_progress,
            peer=peer,
            timeout=limit,
            restart_on_progress=restart_on_progress,
        )
        self._pending[token] = entry
        entry.timer = self._clock.callLater(limit, self._expire, token)
        try:
            send(stamped)
        except Exception:
            self._forget(token)
            return fail()
        return deferred

    def deliver(self, message: Message) -> bool:
        """Route a message addressed to a transaction; False when nobody is waiting for it."""
        token = message.to_session
        if not token:
            return False
        entry = self._pending.get(token)
        if entry is None and token in self._timed_out:
            return self._answered_late(token, message)
        if entry is None:
            self.log.warn(
                "Dropped {kind} {id} from {sender!r} for token {token}: {why}",
                kind="late reply" if self._issued(token) else "message",
                id=message_name(message.id),
                sender=message.sender,
                token=token,
                why="its transaction already ended" if self._issued(token) else "never issued",
            )
            return False
        if entry.peer is not None and message.sender != entry.peer:
            self.log.warn(
                "Dropped {id} for token {token}: it came from {sender!r}, not {peer!r}",
                id=message_name(message.id),
                token=token,
                sender=message.sender,
                peer=entry.peer,
            )
            return False
        try:
            complete = entry.is_reply(message)
        except Exception:
            self.log.failure(
                "is_reply failed on {id}; treated as progress", id=message_name(message.id)
            )
            complete = False
        if complete:
            self._forget(token)
            if message.success:
                entry.deferred.callback(message)
            else:
                entry.deferred.errback(CellError(message))
            return True
        if entry.restart_on_progress and entry.timer is not None and entry.timer.active():
            entry.timer.reset(entry.timeout)
        if entry.on_progress is None:
            self.log.debug(
                "Progress {id} for token {token} ignored", id=message_name(message.id), token=token
            )
            return True
        try:
            entry.on_progress(message)
        except Exception:
            self.log.failure("Progress callback failed on {id}", id=message_name(message.id))
        return True

    def _answered_late(self, token: int, message: Message) -> bool:
        """A message for a request that timed out: its reply goes to :attr:`late`; a progress
        event of it is dropped."""
        request, peer, is_reply = self._timed_out[token]
        if peer is not None and message.sender != peer:
            return False
        try:
            complete = is_reply(message)
        except Exception:
            complete = False
        if not complete:
            self.log.debug("Progress {id} for timed-out token {token} dropped",
                           id=message_name(message.id), token=token)  # fmt: skip
            return False
        del self._timed_out[token]
        if self.late is not None:
            self.late(request, message)
        return False

    def flush_log(self) -> None:
        """Write the counts of timed-out requests now (their owner is stopping)."""
        self._timeouts.flush()

    def fail_peer(self, peer: str, reason: Exception) -> int:
        """Fail every transaction bound to ``peer`` (its link is gone); returns how many."""
        tokens = [token for token, entry in self._pending.items() if entry.peer == peer]
        for token in tokens:
            entry = self._pending[token]
            self._forget(token)
            entry.deferred.errback(reason)
        return len(tokens)

    def _issue_token(self) -> int:
        # Monotonic, skipping 0. After 2**32-1 tokens the counter wraps to 1 and skips tokens
        # still pending; a reused token could then only meet a reply delayed by a whole cycle
        # of 2**32-1 requests (days at any realistic rate), far past every timeout.
        while True:
            token = self._next_token
            if token == TOKEN_MAX:
                self._next_token = 1
                self._wrapped = True
                self.log.info("Transaction tokens wrapped after {count} requests", count=TOKEN_MAX)
            else:
                self._next_token = token + 1
            if token not in self._pending:
                return token

    def _issued(self, token: int) -> bool:
        return self._wrapped or token < self._next_token

    def _forget(self, token: int) -> None:
        entry = self._pending.pop(token, None)
        if entry is not None and entry.timer is not None and entry.timer.active():
            entry.timer.cancel()

    def _expire(self, token: int) -> None:
        entry = self._pending.pop(token, None)
        if entry is None:
            return
        entry.timer = None
        if self.late is not None:  # else a late reply is dropped and logged as any other
            self._timed_out[token] = (entry.request, entry.peer, entry.is_reply)
            if len(self._timed_out) > TIMED_OUT_KEPT:
                self._timed_out.popitem(last=False)
        self._timeouts.info(
            "timed-out requests",
            entry.peer or "a peer",
            "{id} (token {token}) timed out after {timeout} s",
            id=message_name(entry.request.id),
            token=token,
            timeout=entry.timeout,
        )
        entry.deferred.errback(TransactionTimeout(entry.request, entry.timeout))


def _check_timeout(timeout: float) -> float:
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def _id_in(expected: Collection[int]) -> Callable[[Message], bool]:
    def is_reply(message: Message) -> bool:
        return message.id in expected

    return is_reply


_DEFAULT_IS_REPLY: dict[int, Callable[[Message], bool]] = {}


def _default_is_reply(request_id: int) -> Callable[[Message], bool]:
    """The reply test for a request id, built once per id rather than once per request."""
    is_reply = _DEFAULT_IS_REPLY.get(request_id)
    if is_reply is None:
        expected = reply_ids(request_id)
        if not expected:
            raise ValueError(f"nothing answers {message_name(request_id)}; pass is_reply")
        is_reply = _id_in(expected)
        if request_id in KNOWN_IDS:  # a bounded cache: ids of the catalogue only
            _DEFAULT_IS_REPLY[request_id] = is_reply
    return is_reply


def reply_to(request: Message, *, success: bool = True, error: str = "", **fields: Any) -> Message:
    """The answer to ``request``: its response id, ``to`` = the requester's session.

    ``fields`` are any other :class:`Message` fields (typed maps, ``from_session``,
    ``transaction``). Passing ``id`` sends something else to the same transaction: a progress
    event, ``ComputeCellReadyEvent`` for the pool push, or ``ResizeDiskResponse`` for a shrink.
    """
    message_id = fields.pop("id", None)
    if message_id is None:
        message_id = response_id(request.id)
    return Message(
        id=message_id,
        success=success,
        error=error,
        to_session=request.from_session,
        **fields,
    )
