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

from twisted.internet.defer import Deferred
from twisted.web.http import Request

from nanocore.api.endpoint import Endpoint, Incoming


class ResponseCache:
    """Answers by path, each valid while the revision it was made at is current."""

    def __init__(self, revision: Callable[[], Hashable], limit: int = 4096) -> None:
        self._revision = revision
        self._limit = limit
        self._answers: dict[str, tuple[Hashable, bytes]] = {}

    def lookup(self, path: str) -> bytes | None:
        kept = self._answers.get(path)
        if kept is not None and kept[0] == self._revision():
            return kept[1]
        return None

    def keep(self, path: str, answer: bytes) -> None:
        if len(self._answers) >= self._limit:
            # Paths of cacheable routes are few; a flood of distinct ones only costs rebuilds.
            self._answers.clear()
        self._answers[path] = (self._revision(), answer)

    def wrap(self, endpoint: Endpoint) -> Endpoint:
        """``endpoint`` answered from the cache when it can be; a query always goes through."""

        def cached(request: Request, incoming: Incoming) -> bytes | Deferred[bytes]:
            if incoming.query:
                return endpoint(request, incoming)
            answer = self.lookup(incoming.path)
            if answer is None:
                fresh = endpoint(request, incoming)
                if isinstance(fresh, Deferred) or request.code != 200:
                    # A Deferred may fire after the state changed; another status is no read.
                    return fresh
                self.keep(incoming.path, fresh)
                answer = fresh
            return answer

        return cached
