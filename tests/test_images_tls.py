"""The TLS image site on loopback: Cells with their certificates, API clients with signatures."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool

from nanocore.images import download
from nanocore.images.download import TLS_PIECE, read_pieces
from nanocore.operations.images import IMAGE_CAPTURE, CaptureProgress, ImageKind
from nanocore.pki import (
    client_tls_options,
    create_ca,
    issue_cell_certificate,
    issue_server_certificate,
    requesting_tls_options,
)
from nanocore.testing.imageclient import CellImageClient, CellTLS, ImageFetchError
from tests.imagefixtures import ImageTestCase, multipart

DISK = os.urandom(1 << 20) + b"tail"
CA = create_ca()
SERVER = issue_server_certificate(CA, "127.0.0.1")
CELL = issue_cell_certificate(CA, "Cell_0a0b0c0d0e0f")


class TLSSiteTests(ImageTestCase):
    async def _open(self) -> None:  # type: ignore[override]
        await super()._open()
        self.port = reactor.listenSSL(
            0, self.h.site, requesting_tls_options(CA, SERVER), interface="127.0.0.1"
        )
        self.addCleanup(self.port.stopListening)
        self.address = self.port.getHost()
        self.cell = CellImageClient(reactor, lambda host: client_tls_options(CA, host, CELL))
        self.addCleanup(self.cell.pool.closeCachedConnections)
        self.image_id = await self.h.create("disk_images")
        await self.h.upload("disk_images", self.image_id, multipart(("image", DISK)))

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.address.port}/api/v1{path}"

    def anonymous(self) -> Any:
        """A client that trusts the CA but holds no certificate."""
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent(
            reactor, contextFactory=CellTLS(lambda h: client_tls_options(CA, h)), pool=pool
        )
        return treq.client.HTTPClient(agent)

    async def test_a_cell_fetches_a_disk_image_with_its_certificate(self) -> None:
        fetched = await self.cell.fetch("127.0.0.1", self.address.port, self.image_id)
        self.assertEqual((fetched.size, fetched.sha1), (len(DISK), hashlib.sha1(DISK).hexdigest()))

    async def test_a_download_is_written_to_tls_in_small_pieces(self) -> None:
        pieces: list[int] = []

        def recording(descriptor: int, length: int, offset: int, piece: int) -> list[bytes]:
            pieces.append(piece)
            return read_pieces(descriptor, length, offset, piece)

        self.patch(download, "read_pieces", recording)
        fetched = await self.cell.fetch("127.0.0.1", self.address.port, self.image_id)
        self.assertEqual(fetched.sha1, hashlib.sha1(DISK).hexdigest())
        self.assertEqual(pieces, [TLS_PIECE, TLS_PIECE])  # 1 MiB and its tail

    async def test_a_client_without_certificate_or_signature_is_refused(self) -> None:
        http = self.anonymous()
        response = await http.get(self.url(f"/disk_images/{self.image_id}/file/"))
        body = await response.json()
        self.assertEqual(body["message"], "unauthorized stream: authorization required")
        with self.assertRaises(ImageFetchError):
            await CellImageClient(reactor, lambda h: client_tls_options(CA, h)).fetch(
                "127.0.0.1", self.address.port, self.image_id
            )

    async def test_a_signed_client_without_certificate_downloads_a_range(self) -> None:
        http = self.anonymous()
        path = f"/disk_images/{self.image_id}/file/"
        headers = self.h.signed_headers(
            "GET", path, f"https://127.0.0.1:{self.address.port}/api/v1"
        )
        headers[b"Range"] = b"bytes=100-199"
        response = await http.get(self.url(path), headers=headers)
        self.assertEqual(response.code, 206)
        self.assertEqual(await response.content(), DISK[100:200])
        self.assertFalse(response.headers.hasHeader(b"server"))  # as Nano's image server

    async def test_a_cell_uploads_only_the_disk_image_it_captures(self) -> None:
        """A Cell's certificate is no licence to replace any image (QA: any Cell's could, and
        every guest cloned from it afterwards got the new content)."""
        disk = Path(self.mktemp())
        disk.write_bytes(DISK[::-1])
        refused = await self.cell.upload("127.0.0.1", self.address.port, self.image_id, disk)
        self.assertEqual(
            refused["message"],
            f"cell 'Cell_0a0b0c0d0e0f' is not capturing disk image '{self.image_id}'",
        )
        image = self.h.images.get(ImageKind.DISK, self.image_id)
        self.assertEqual(image.check_sum, hashlib.sha1(DISK).hexdigest())
        target = await self.h.create("disk_images", "captured")
        key = (ImageKind.DISK, target)
        with self.h.operations.context.claims.holding(
            IMAGE_CAPTURE, key, CaptureProgress("Cell_0a0b0c0d0e0f", "guest-1")
        ):
            answer = await self.cell.upload("127.0.0.1", self.address.port, target, disk)
        self.assertEqual(answer["error_code"], 0)
        image = self.h.images.get(ImageKind.DISK, target)
        self.assertEqual(image.check_sum, hashlib.sha1(DISK[::-1]).hexdigest())

    async def test_an_unsigned_upload_without_certificate_is_refused(self) -> None:
        http = self.anonymous()
        target = await self.h.create("disk_images", "other")
        response = await http.put(
            self.url(f"/disk_images/{target}/file/"),
            data=multipart(("image", b"x" * 1000)),
            headers={"Content-Type": "multipart/form-data; boundary=nanocoreTestBoundary42"},
        )
        body = await response.json()
        self.assertEqual(body["message"], "unauthorized stream: authorization required")
        self.assertEqual(self.h.images.get(ImageKind.DISK, target).version, 0)
        self.assertEqual(self.h.files("disk_images"), [f"{self.image_id}_v1.qcow2"])
