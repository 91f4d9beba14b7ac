"""An in-memory signed client for the API (StubTreq underneath), for tests of every room."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

from attrs import frozen
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from nanocore.api.auth import Variant
from nanocore.api.client import Signer

BASE = "http://127.0.0.1:5850/api/v1"
TEST_CREDENTIALS = {"tester": "a-test-key-of-reasonable-length"}


class _FlushWhenFinished(Resource):
    """Delivers an asynchronous answer to the in-memory client as soon as it is written."""

    isLeaf = True

    def __init__(self, inner: IResource, flush: Callable[[], None]) -> None:
        super().__init__()
        self._inner = inner
        self._flush = flush

    def render(self, request: IRequest) -> bytes | int:
        result: bytes | int = self._inner.render(request)
        if result == NOT_DONE_YET:
            cast(Request, request).notifyFinish().addBoth(lambda _: self._flush())
        return result


@frozen
class Answer:
    """A response as tests look at it."""

    status: int
    headers: dict[bytes, list[bytes]]
    body: bytes

    def envelope(self) -> Any:
        return json.loads(self.body)

    @property
    def data(self) -> Any:
        return self.envelope()["data"]

    @property
    def error(self) -> str:
        document = self.envelope()
        assert document["error_code"] == 500, document
        message: str = document["message"]
        return message

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


class APIClient:
    """Signs each request at the clock's current time, then nudges the clock by 1 ms.

    The nudge gives every request a distinct ``Nano-Date`` so that repeating a mutating call
    in a test is not refused as a replay.
    """

    def __init__(
        self,
        resource: IResource,
        clock: Clock,
        credentials: dict[str, str] | None = None,
    ) -> None:
        self.clock = clock
        credential_id, key = next(iter((credentials or TEST_CREDENTIALS).items()))
        self.signer = Signer(credential_id, key)
        self.treq: Any = StubTreq(_FlushWhenFinished(resource, self._flush))

    def _flush(self) -> None:
        self.treq.flush()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        signed: bool = True,
        headers: dict[bytes, bytes] | None = None,
        variant: Variant = Variant.REQUEST,
    ) -> Deferred[Answer]:
        url = BASE + path
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        all_headers = (
            self.signer.headers(method, url, data, now=self.clock.seconds(), variant=variant)
            if signed
            else {}
        )
        all_headers.update(headers or {})
        self.clock.advance(0.001)
        return self._send(method, url, data, all_headers)

    @inlineCallbacks
    def _send(self, method: str, url: str, data: bytes, headers: dict[bytes, bytes]) -> Any:
        response: Any = yield self.treq.request(
            method,
            url,
            data=data or None,
            headers={name: [value] for name, value in headers.items()},
            allow_redirects=False,
        )
        body = yield response.content()
        raw_headers = {
            name.lower(): list(values) for name, values in response.headers.getAllRawHeaders()
        }
        return Answer(response.code, raw_headers, body)

    def get(self, path: str, **kw: Any) -> Deferred[Answer]:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Deferred[Answer]:
        return self.request("POST", path, body, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> Deferred[Answer]:
        return self.request("PUT", path, body, **kw)

    def delete(self, path: str, body: Any = None, **kw: Any) -> Deferred[Answer]:
        return self.request("DELETE", path, body, **kw)
