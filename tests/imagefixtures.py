"""A Core's image rooms over a real store and real folders, for the image tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from nanocore.api import envelope
from nanocore.api.app import api_site_for, build_api_resource
from nanocore.api.auth import Variant, Verifier
from nanocore.api.streams import StreamFront, stream_signature
from nanocore.api.testing import BASE, TEST_CREDENTIALS, Answer, APIClient
from nanocore.images.files import ImageFolders, inline_offload
from nanocore.images.site import ImageSite, ImageSiteResource
from nanocore.images.transfers import Transfers
from nanocore.operations.core import Operations
from nanocore.operations.images import KINDS
from nanocore.store import Store

NOW = 1_714_529_472.0
BOUNDARY = "nanocoreTestBoundary42"


def multipart(*parts: tuple[str, bytes], boundary: str = BOUNDARY, close: bool = True) -> bytes:
    """A multipart/form-data body; the part named ``image`` carries a file name."""
    out = b""
    for name, data in parts:
        filename = '; filename="disk.img"' if name == "image" else ""
        out += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n\r\n'
            ).encode()
            + data
            + b"\r\n"
        )
    if close:
        out += f"--{boundary}--\r\n".encode()
    return out


CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}".encode()


class ImageHarness:
    """Store, folders (blocking work done inline), operations, the API front and the site."""

    def __init__(self, store: Store, data_dir: Path, *, max_upload: int = 1 << 30) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = store
        self.data_dir = data_dir
        self.folders = ImageFolders(data_dir, inline_offload)
        self.folders.prepare()
        self.operations = Operations(store, self.clock, image_files=self.folders)
        self.images = self.operations.images
        self.verifier = Verifier(TEST_CREDENTIALS, self.clock)
        self.transfers = Transfers(self.images, self.folders, envelope, max_upload=max_upload)
        resource = build_api_resource(
            self.operations, TEST_CREDENTIALS, self.clock, verifier=self.verifier
        )
        self.front = StreamFront(resource, self.transfers, self.verifier)
        self.api = APIClient(self.front, self.clock)
        self.api_site = api_site_for(self.front, upload_routes=lambda: self.front)
        self.api_site.reactor = self.clock  # connection timeouts on the test clock
        self.site_resource = ImageSiteResource(self.transfers, stream_signature(self.verifier))
        self.site = ImageSite(self.site_resource, reactor=self.clock)

    def files(self, folder: str) -> list[str]:
        """Every file of an image folder, temporary ones included."""
        return sorted(os.listdir(self.folders.folder(KINDS[folder])))

    async def create(self, kind: str, name: str = "base", **fields: Any) -> str:
        body = {"name": name, "owner": "admin", "group": "ops", **fields}
        answer: Answer = await self.api.post(f"/{kind}/", body)
        assert answer.envelope()["error_code"] == 0, answer.body
        image_id: str = answer.data["id"]
        return image_id

    def upload(self, kind: str, image_id: str, body: bytes) -> Deferred[Answer]:
        return self.api.post(
            f"/{kind}/{image_id}/file/",
            raw=body,
            headers={b"Content-Type": CONTENT_TYPE},
            variant=Variant.STREAM,
        )

    def signed_headers(self, method: str, path: str, url_base: str = BASE) -> dict[bytes, bytes]:
        """Stream-signature headers for a request at the clock's time (then nudge it)."""
        headers = self.api.signer.headers(
            method, url_base + path, b"", now=self.clock.seconds(), variant=Variant.STREAM
        )
        self.clock.advance(0.001)
        return headers


class ImageTestCase(TestCase):
    """A trial case with ``self.h``: an :class:`ImageHarness` over a fresh store."""

    max_upload = 1 << 30

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._open())

    async def _open(self) -> None:
        root = Path(self.mktemp())
        root.mkdir(parents=True)
        store = await Store.open(root / "data", reactor)
        self.addCleanup(store.close)
        self.h = ImageHarness(store, root / "data", max_upload=self.max_upload)
