"""The Cell side of the image site: fetch and upload disk images with a Cell's certificate.

What a Cell does with the image site (core-internals §5.9, cell-protocol §5.12): ``GET`` a disk
image, hashing it as it arrives and checking the SHA-1 against the ``Signature`` header; ``PUT``
a guest disk as multipart ``checksum`` then ``image``. Used by the simulator and the tests;
bytes stream both ways, so a large image is never held in memory.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import treq
from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer


class ImageFetchError(Exception):
    """The site refused, or what arrived is not what the site signed."""


@frozen
class Fetched:
    size: int
    sha1: str


@implementer(IPolicyForHTTPS)
class CellTLS:
    """Every HTTPS connection made with the Cell's certificate, checked against the host."""

    def __init__(self, tls_for: Callable[[str], IOpenSSLClientConnectionCreator]) -> None:
        self._tls_for = tls_for

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return self._tls_for(hostname.decode("ascii"))


class CellImageClient:
    """Image transfers as one Cell makes them."""

    def __init__(
        self, reactor: Any, tls_for: Callable[[str], IOpenSSLClientConnectionCreator]
    ) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent(reactor, contextFactory=CellTLS(tls_for), pool=self.pool)
        self._http = treq.client.HTTPClient(agent)

    def fetch(
        self,
        host: str,
        port: int,
        image_id: str,
        sink: Callable[[bytes], object] = lambda _: None,
        progress: Callable[[int], object] = lambda _: None,
    ) -> Deferred[Fetched]:
        """Download a disk image, verifying its SHA-1 against ``Signature``; ``sink`` gets
        each piece, ``progress`` the bytes received so far."""
        return Deferred.fromCoroutine(self._fetch(host, port, image_id, sink, progress))

    async def _fetch(
        self,
        host: str,
        port: int,
        image_id: str,
        sink: Callable[[bytes], object],
        progress: Callable[[int], object],
    ) -> Fetched:
        url = f"https://{host}:{port}/api/v1/disk_images/{image_id}/file/"
        response = await self._http.get(url)
        signature = response.headers.getRawHeaders(b"signature", [b""])[0].decode("ascii")
        if response.code != 200 or not signature:
            body = await response.content()
            raise ImageFetchError(f"{response.code}: {body.decode('utf-8', 'replace')}")
        sha1 = hashlib.sha1(usedforsecurity=False)
        size = 0

        def chunk(data: bytes) -> None:
            nonlocal size
            sha1.update(data)
            size += len(data)
            sink(data)
            progress(size)

        await treq.collect(response, chunk)
        if sha1.hexdigest() != signature:
            raise ImageFetchError(f"checksum mismatch: signed {signature}, got {sha1.hexdigest()}")
        return Fetched(size, signature)

    def upload(
        self,
        host: str,
        port: int,
        image_id: str,
        path: Path,
        progress: Callable[[int], object] = lambda _: None,
    ) -> Deferred[Any]:
        """PUT a disk file as the image's content (parts ``checksum`` then ``image``); fires
        with the site's envelope. ``progress`` is told the bytes of the file sent so far."""
        return Deferred.fromCoroutine(self._upload(host, port, image_id, path, progress))

    async def _upload(
        self, host: str, port: int, image_id: str, path: Path, progress: Callable[[int], object]
    ) -> Any:
        sha1 = hashlib.sha1(usedforsecurity=False)
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                sha1.update(block)
        boundary = uuid.uuid4().hex
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="checksum"\r\n\r\n'
            f"{sha1.hexdigest()}\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="disk"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        body = _Concatenated(head, path, tail, progress)
        url = f"https://{host}:{port}/api/v1/disk_images/{image_id}/file/"
        response = await self._http.put(
            url,
            data=FileBodyProducer(body),
            headers=Headers(
                {b"Content-Type": [f"multipart/form-data; boundary={boundary}".encode()]}
            ),
        )
        return await response.json()


class _Concatenated:
    """A read-only file of bytes, a file on disk, and bytes (for FileBodyProducer)."""

    def __init__(
        self, head: bytes, path: Path, tail: bytes, progress: Callable[[int], object]
    ) -> None:
        self._head, self._tail = head, tail
        self._progress = progress
        self._sent = 0
        self._file = path.open("rb")
        self._length = len(head) + os.fstat(self._file.fileno()).st_size + len(tail)
        self._stage = 0
        self._position = 0

    def seek(self, offset: int, whence: int = 0) -> int:
        """Only what FileBodyProducer does to learn the length (to the end, and back)."""
        self._position = self._length if whence == 2 else offset
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        self._file.close()

    def read(self, size: int) -> bytes:
        if self._stage == 0:
            self._stage = 1
            return self._head
        if self._stage == 1:
            data = self._file.read(size)
            if data:
                self._sent += len(data)
                self._progress(self._sent)
                return data
            self._stage = 2
            self._file.close()
            return self._tail
        return b""
