"""The store as a service: opened when the Core starts, closed when it stops, by this alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from nanocore.durations import Durations
from nanocore.services.order import OneShot
from nanocore.store import Store

log = Logger()


class StoreService(Service):
    """Opens the store in `data_dir` on start and closes it on stop: the store's only owner.

    Opening (checks, migrations, loading the read model) runs in the store's own thread while
    the rest of the tree starts; `opened` fires with the open store. A store that cannot be
    opened goes to `on_failure` (the Core says why and stops); `opened` then never fires.
    Stopping waits for an open still running, then for the commits already queued, so every
    acknowledged change is on disk before the process exits.
    """

    def __init__(
        self,
        data_dir: Path,
        reactor: Any,
        on_failure: Callable[[Failure], object],
        *,
        commit_times: Durations | None = None,
    ) -> None:
        """``commit_times`` records how long each commit took (:class:`Store`)."""
        self._commit_times = commit_times
        self._data_dir = data_dir
        self._reactor = reactor
        self._on_failure = on_failure
        self._opening: Deferred[None] | None = None
        self.opened: OneShot[Store] = OneShot()
        self.store: Store | None = None

    def startService(self) -> None:
        if self._opening is not None or self.opened.resolved:
            raise RuntimeError("a StoreService opens its store once; build a new one to reopen")
        super().startService()
        opening = Store.open(self._data_dir, self._reactor, commit_times=self._commit_times)
        self._opening = opening.addCallbacks(self._open, self._refused)

    def _open(self, store: Store) -> None:
        self.store = store
        self.opened.resolve(store)

    def _refused(self, failure: Failure) -> None:
        self._on_failure(failure)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        if self._opening is not None and not self._opening.called:
            await self._opening  # an open in its thread cannot be interrupted: let it end
        store, self.store = self.store, None
        if store is not None:
            await store.close()
            log.info("store closed")
