"""Places for connections that have not yet said who they are, shared fairly among sources.

Until its handshake completes a connection is nobody, so the places for such connections are
bounded (their memory and file descriptors), and a bound alone is a lock: 300 connections
that never start TLS, re-opened when dropped, kept every real Cell out (issue #14). Here the
places are shared among source addresses instead. While there is room everyone gets in (a whole
cluster dialing a restarted Core from one address loses nothing); once full, a newcomer from a
source holding at least two places fewer than the source holding the most takes the oldest
place of that one (its oldest idle place, when the caller can tell idle from busy: an API
client's upload under way is spared while that source holds a connection doing nothing), and
any other newcomer is refused (so Cells dialing from many addresses, one place each, do not
take each other's places in turn). So a flood from one place
costs the others nothing but the share it already had, and it cannot starve a Cell dialing from
anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Any, Generic, TypeVar

from attrs import frozen

from nanocore.openfiles import Descriptors
from nanocore.ratelog import RateLimitedLog

C = TypeVar("C", bound=Hashable)


@frozen
class Decision(Generic[C]):
    """Whether a newcomer gets a place, and whose place it takes (to be dropped by the caller)."""

    admitted: bool
    evicted: C | None = None
    evicted_source: str = ""


class FairShare(Generic[C]):
    """At most ``limit`` waiting connections, shared fairly among their sources; ``busy``
    tells a connection whose place is given up last."""

    def __init__(self, limit: int, busy: Callable[[C], bool] = lambda connection: False) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._busy = busy
        #: Waiting connections per source, oldest first.
        self._by_source: dict[str, dict[C, None]] = {}
        self._source_of: dict[C, str] = {}

    def __len__(self) -> int:
        return len(self._source_of)

    def __iter__(self) -> Iterator[C]:
        """The connections holding a place, oldest of each source first."""
        return iter(list(self._source_of))

    @property
    def limit(self) -> int:
        return self._limit

    def held_by(self, source: str) -> int:
        """Places ``source`` holds."""
        return len(self._by_source.get(source, ()))

    def make_room(self, source: str, *, full: bool = False) -> Decision[C]:
        """Decide on a newcomer from ``source``; an evicted connection no longer holds a place.
        ``full``: there is no room whatever the places say (the open-file limit is reached),
        so a newcomer gets in only in the place of another."""
        if not full and len(self._source_of) < self._limit:
            return Decision(True)
        if not self._by_source:
            return Decision(False)
        largest = max(self._by_source, key=lambda s: len(self._by_source[s]))
        if len(self._by_source[largest]) <= self.held_by(source) + 1:
            return Decision(False)  # taking a place would only swap who holds more

        places = self._by_source[largest]
        busy = self._busy
        given_up = next((c for c in places if not busy(c)), None)
        if given_up is None:
            given_up = next(iter(places))
        self.remove(given_up)
        return Decision(True, given_up, largest)

    def add(self, source: str, connection: C) -> None:
        """``connection`` from ``source`` takes a place (after :meth:`make_room` admitted it)."""
        self._by_source.setdefault(source, {})[connection] = None
        self._source_of[connection] = source

    def remove(self, connection: C) -> None:
        """``connection`` no longer waits (it said who it is, or it is gone); idempotent."""
        source = self._source_of.pop(connection, None)
        if source is None:
            return
        waiting = self._by_source[source]
        del waiting[connection]
        if not waiting:
            del self._by_source[source]


def admit(
    places: FairShare[Any],
    source: str,
    *,
    noise: RateLimitedLog,
    site: str,
    descriptors: Descriptors | None = None,
) -> bool:
    """Whether a connection from ``source`` to ``site`` (the API, the image site) gets a place
    among ``places`` (and, with ``descriptors``, a descriptor within the open-file limit); a
    refusal, and the connection it displaces (aborted), are said once a minute per source,
    with a count. The caller adds the connection it then builds."""
    over = descriptors is not None and descriptors.full()
    decision = places.make_room(source, full=over)
    if not decision.admitted and over:
        assert descriptors is not None
        say_over_descriptors(descriptors, source, noise, site)
        return False
    if not decision.admitted:
        noise.warn(
            f"refused {site} connections",
            source,
            "refused an {site} connection from {source}: {limit} connections are open, the"
            " most the {site} serves at once, {held} of them from {source}",
            site=site,
            limit=places.limit,
            held=places.held_by(source),
        )
        return False
    evicted = decision.evicted
    if evicted is not None:
        noise.warn(
            f"{site} connections closed for other sources",
            decision.evicted_source,
            "closed an {site} connection of {source} for one from {newcomer}: {limit}"
            " connections are open, the most the {site} serves at once, and {source} holds"
            " the most",
            site=site,
            newcomer=source,
            limit=places.limit,
        )
        transport = getattr(evicted, "transport", None)
        if transport is not None:
            transport.abortConnection()
    return True


def say_over_descriptors(
    descriptors: Descriptors, source: str, noise: RateLimitedLog, site: str
) -> None:
    """Say, once a minute per source, that a connection to ``site`` is refused because every
    port together holds what the open-file limit leaves for connections (and ``source``
    holds no more than others, so it takes nobody's place)."""
    noise.warn(
        f"{site} connections over the open-file limit",
        source,
        "refused {article} {site} connection from {source}: {in_use} connections are open on"
        " all ports, as many as the open-file limit leaves for them ({allowed})",
        article="an" if site[0] in "AEIOUaeiou" else "a",
        site=site,
        in_use=descriptors.in_use(),
        allowed=descriptors.allowed,
    )
