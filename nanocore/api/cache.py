"""Encoded answers of cacheable reads, kept until the operations' revision moves.

A list answer is rebuilt and re-encoded on every request otherwise; the revision changes with
every commit, so a kept answer is never older than the committed state. The cache is a plain
object keyed on the decoded path, so that a fast path in front of the Klein app (issue #15) can
answer a signed cacheable read from it without routing, and the app uses it through
:meth:`ResponseCache.wrap` like any other endpoint step. Only answers to GETs the app routed to
a ``cacheable`` route are kept; a fast path still checks the method, the absence of a query and
the signature before it answers from here.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.web.http import Request

from nanocore.api.auth import Variant
from nanocore.api.endpoint import Endpoint, Incoming

#: Answers kept at most (paths of cacheable routes are few: the lists, one per pool's cells).
DEFAULT_LIMIT = 4096


@frozen
class Guard:
    """How the route of a kept answer is reached: the signature it takes (None: none) and
    whether the verifier remembers a read's signature there (see ``signed``)."""

    variant: Variant | None = None
    writable: bool = False


UNGUARDED = Guard()


#: What an answer is kept by: a revision to read now, and its value when the answer was made.
Revision = Callable[[], Hashable]


class ResponseCache:
    """Answers by path, each valid while the revision it was made at is current.

    The revision is the operations' (``revision``) unless a route keeps its answers by
    another (:meth:`wrap`). Bounded: at most ``limit`` answers (a flood of distinct paths
    empties it and costs only rebuilds); each is one encoded read, so the bound in bytes is
    ``limit`` times the largest such answer.
    """

    def __init__(self, revision: Revision, limit: int = DEFAULT_LIMIT) -> None:
        self._revision = revision
        self._limit = limit
        self._answers: dict[str, tuple[Revision, Hashable, bytes, Guard]] = {}

    def lookup(self, path: str) -> bytes | None:
        kept = self.kept(path)
        return kept[0] if kept is not None else None

    def kept(self, path: str) -> tuple[bytes, Guard] | None:
        """The current answer for ``path`` and how its route is guarded, if one is kept."""
        kept = self._answers.get(path)
        if kept is not None and kept[0]() == kept[1]:
            return kept[2], kept[3]
        return None

    def keep(
        self,
        path: str,
        answer: bytes,
        guard: Guard = UNGUARDED,
        revision: Revision | None = None,
        made_at: Hashable | None = None,
    ) -> None:
        """Keep ``answer`` while ``revision`` (the cache's own by default) reads ``made_at``
        (what it reads now, by default)."""
        if len(self._answers) >= self._limit:
            self._answers.clear()
        revision = revision if revision is not None else self._revision
        self._answers[path] = (
            revision,
            made_at if made_at is not None else revision(),
            answer,
            guard,
        )

    def wrap(
        self, endpoint: Endpoint, guard: Guard = UNGUARDED, revision: Revision | None = None
    ) -> Endpoint:
        """``endpoint`` answered from the cache when it can be; a query always goes through.

        ``guard`` is how the route is reached: kept with each answer, for a fast path that
        answers from here without routing (it must check the same signature first).
        ``revision``: what the route's answers are kept by, if not the cache's own.
        """
        current = revision if revision is not None else self._revision

        def cached(request: Request, incoming: Incoming) -> bytes | Deferred[bytes]:
            if incoming.query:
                return endpoint(request, incoming)
            answer = self.lookup(incoming.path)
            if answer is None:
                before = current()
                fresh = endpoint(request, incoming)
                if isinstance(fresh, Deferred) or request.code != 200:
                    # A Deferred may fire after the state changed; another status is no read.
                    return fresh
                if current() == before:  # nothing moved while it was made
                    self.keep(incoming.path, fresh, guard, current, before)
                answer = fresh
            return answer

        return cached
