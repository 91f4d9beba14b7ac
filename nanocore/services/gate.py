"""The API's front door while the Core starts and stops: 503 until the state is loaded, then
the API, and 503 again once Core stops.

The API port is bound as the Core starts, so that a port in use fails the start at once (and
`nanocore start` reports it); a request arriving while the store is still opening is told so
in the API's envelope, with `Retry-After`, instead of being served from an empty model. A
request arriving on a kept-alive connection while Core stops is told so too, instead of
`cell '<c>' is not connected` from operations whose Cells are being let go (QA pass 16).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from nanocore.api import envelope

log = Logger()

#: What a client reads while the Core starts.
STARTING = "nanocore is starting"
#: ... and once it stops (the words of ``operations.errors.unavailable_message``).
STOPPING = "nanocore is stopping"


class StartingGate(Resource):
    """Answers 503 in the envelope until `api()` fires with the API resource, then serves it.

    If `api()` fails instead, the failure goes to `on_failure` (the Core says why and stops).
    """

    isLeaf = True

    def __init__(
        self, api: Callable[[], Deferred[IResource]], on_failure: Callable[[Failure], object]
    ) -> None:
        super().__init__()
        self._target: IResource | None = None
        self._closed = False
        self._on_failure = on_failure
        api().addCallbacks(self._open, self._failed)

    def _open(self, target: IResource) -> None:
        self._target = target
        log.info("the API serves")

    def _failed(self, failure: Failure) -> None:
        self._on_failure(failure)

    def close(self) -> None:
        """Core stops: requests from now on are refused; those under way finish."""
        self._closed = True

    def render(self, request: IRequest) -> Any:
        if self._target is not None and not self._closed:
            return self._target.render(request)
        request.setResponseCode(503)
        request.setHeader(b"Content-Type", envelope.CONTENT_TYPE)
        request.setHeader(b"Retry-After", b"1")
        return envelope.failure(STOPPING if self._closed else STARTING)


class ClosingGate(Service):
    """Closes ``gate`` when Core begins to stop (put it last: children stop in reverse)."""

    def __init__(self, gate: StartingGate) -> None:
        self._gate = gate

    def stopService(self) -> None:
        self._gate.close()
        super().stopService()
