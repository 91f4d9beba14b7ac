"""Uploads on the wire: the streaming request, through the real channel, byte by byte.

The API site's channel is driven with a StringTransport, so what the server reads and answers
is exactly what a client on a socket would see, with no socket.
"""

from __future__ import annotations

import errno
import hashlib
import os

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport, ITCPTransport
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import HTTPConnectionPool
from zope.interface import directlyProvides

from nanocore.api.auth import Variant
from nanocore.images import files, transfers
from nanocore.images import upload as upload_module
from nanocore.images.transfers import UPLOAD_READ_SIZE, read_size
from nanocore.operations.images import ImageKind
from nanocore.store import Store
from tests.imagefixtures import CONTENT_TYPE, ImageTestCase, multipart
from tests.test_api_store_errors import FULL, FullDisk

DATA = os.urandom(3 << 20)


class Wire:
    """One connection to a site."""

    def __init__(self, site: object) -> None:
        self.transport = StringTransport()
        self.protocol = site.buildProtocol(None)  # type: ignore[attr-defined]
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def answer(self) -> bytes:
        return self.transport.value()


def head(h: object, method: str, path: str, length: int | None, extra: bytes = b"") -> bytes:
    headers = h.signed_headers(method, path)  # type: ignore[attr-defined]
    lines = [f"{method} /api/v1{path} HTTP/1.1".encode(), b"Host: 127.0.0.1:5850"]
    lines += [name + b": " + value for name, value in headers.items() if name != b"Host"]
    lines.append(b"Content-Type: " + CONTENT_TYPE)
    if length is not None:
        lines.append(b"Content-Length: %d" % length)
    return b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n"


class StreamingUploadTests(ImageTestCase):
    max_upload = 64 << 20

    async def test_an_upload_streams_in_small_pieces_and_lands(self) -> None:
        image_id = await self.h.create("disk_images")
        body = multipart(("checksum", hashlib.sha1(DATA).hexdigest().encode()), ("image", DATA))
        wire = Wire(self.h.api_site)
        wire.send(head(self.h, "POST", f"/disk_images/{image_id}/file/", len(body)))
        for start in range(0, len(body), 65536):
            wire.send(body[start : start + 65536])
        await wire.protocol.requests[-1].notifyFinish()
        self.assertIn(b'"error_code": 0', wire.answer())
        image = self.h.images.get(ImageKind.DISK, image_id)
        self.assertEqual(
            (image.size, image.check_sum, image.sha256),
            (len(DATA), hashlib.sha1(DATA).hexdigest(), hashlib.sha256(DATA).hexdigest()),
        )
        self.assertEqual(self.h.files("disk_images"), [f"{image_id}_v1.qcow2"])

    async def test_a_client_gone_mid_upload_leaves_nothing_and_unlocks(self) -> None:
        image_id = await self.h.create("media_images")
        body = multipart(("image", DATA))
        wire = Wire(self.h.api_site)
        wire.send(head(self.h, "POST", f"/media_images/{image_id}/file/", len(body)))
        wire.send(body[: len(body) // 2])
        self.assertEqual(len(self.h.files("media_images")), 1)  # the part file, hidden
        self.assertIsNotNone(self.h.images.upload_progress(ImageKind.MEDIA, image_id))
        wire.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.h.files("media_images"), [])
        self.assertIsNone(self.h.images.upload_progress(ImageKind.MEDIA, image_id))
        self.assertEqual(self.h.images.get(ImageKind.MEDIA, image_id).version, 0)

    async def test_an_unsigned_upload_is_refused_before_its_body(self) -> None:
        image_id = await self.h.create("disk_images")
        wire = Wire(self.h.api_site)
        request = (
            f"POST /api/v1/disk_images/{image_id}/file/ HTTP/1.1\r\nHost: x\r\n"
            "Content-Length: 1000000\r\n\r\n"
        ).encode()
        wire.send(request)
        self.assertIn(b"unauthorized stream: authorization required", wire.answer())
        self.assertTrue(wire.transport.disconnecting)
        self.assertEqual(self.h.files("disk_images"), [])

    async def test_an_oversized_upload_is_refused_before_its_body(self) -> None:
        image_id = await self.h.create("disk_images")
        wire = Wire(self.h.api_site)
        wire.send(head(self.h, "POST", f"/disk_images/{image_id}/file/", (64 << 20) + 1))
        self.assertTrue(wire.answer().startswith(b"HTTP/1.1 413 "))
        self.assertIn(b"upload larger than 67108864 bytes", wire.answer())
        self.assertEqual(self.h.files("disk_images"), [])
        self.assertIsNone(self.h.images.upload_progress(ImageKind.DISK, image_id))

    async def test_a_chunked_upload_is_cut_at_the_limit(self) -> None:
        """A chunked body declares no length: the bytes are counted as they come."""
        image_id = await self.h.create("disk_images")
        wire = Wire(self.h.api_site)
        wire.send(head(self.h, "POST", f"/disk_images/{image_id}/file/", None,
                       b"Transfer-Encoding: chunked\r\n"))  # fmt: skip
        body = multipart(("image", os.urandom(1 << 20) * 65))
        for start in range(0, len(body), 1 << 20):
            piece = body[start : start + (1 << 20)]
            wire.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
            if wire.transport.disconnecting:
                break
        self.assertTrue(wire.answer().startswith(b"HTTP/1.1 413 "), wire.answer()[:100])
        self.assertIn(b"upload larger than 67108864 bytes", wire.answer())
        self.assertTrue(wire.transport.disconnecting)
        wire.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.h.files("disk_images"), [])
        self.assertIsNone(self.h.images.upload_progress(ImageKind.DISK, image_id))
        self.assertEqual(self.h.images.get(ImageKind.DISK, image_id).version, 0)

    async def test_the_client_is_paused_while_the_writer_is_behind(self) -> None:
        image_id = await self.h.create("disk_images")
        held: list[tuple[object, tuple[object, ...]]] = []

        def hold(function: object, *args: object) -> Deferred[object]:
            held.append((function, args))
            return Deferred()  # the writer never catches up

        self.h.folders.offload = hold
        body = multipart(("image", DATA * 4))
        wire = Wire(self.h.api_site)
        wire.send(head(self.h, "POST", f"/disk_images/{image_id}/file/", len(body)))
        for start in range(0, len(body), 65536):
            wire.send(body[start : start + 65536])
            if wire.transport.producerState == "paused":
                break
        self.assertEqual(wire.transport.producerState, "paused")
        # One batch in flight, never more than was queued; the rest waits on the reactor.
        self.assertEqual(len(held), 1)
        (batch,) = held[0][1]
        self.assertLessEqual(len(batch), upload_module.HIGH_WATER + (1 << 20))  # type: ignore[arg-type]
        wire.protocol.connectionLost(Failure(ConnectionDone()))


class LoopbackUploadTests(ImageTestCase):
    async def test_an_upload_on_a_socket_is_read_in_large_pieces_until_its_body_is_in(
        self,
    ) -> None:
        port = reactor.listenTCP(0, self.h.api_site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        sizes: list[int] = []

        def recording(transport: object, size: int | None) -> None:
            read_size(transport, size)
            sizes.append(transport.bufferSize)  # type: ignore[attr-defined]

        self.patch(transfers, "read_size", recording)
        image_id = await self.h.create("disk_images")
        path = f"/disk_images/{image_id}/file/"
        base = f"http://127.0.0.1:{port.getHost().port}/api/v1"
        headers = self.h.signed_headers("POST", path, base)
        headers[b"Content-Type"] = CONTENT_TYPE
        data = DATA * 3 + b"tail"
        response = await treq.post(
            base + path, data=multipart(("image", data)), headers=headers, pool=pool
        )
        self.assertEqual((await response.json())["error_code"], 0)
        self.assertEqual(sizes, [UPLOAD_READ_SIZE, 65536])
        image = self.h.images.get(ImageKind.DISK, image_id)
        self.assertEqual(
            (image.size, image.check_sum, image.sha256),
            (len(data), hashlib.sha1(data).hexdigest(), hashlib.sha256(data).hexdigest()),
        )


class ReadSizeTests(SynchronousTestCase):
    class Transport(StringTransport):
        bufferSize = 65536

    def test_a_tcp_transport_reads_the_size_asked_then_its_own(self) -> None:
        transport = self.Transport()
        directlyProvides(transport, ITCPTransport)
        read_size(transport, 1 << 20)
        self.assertEqual(transport.bufferSize, 1 << 20)
        read_size(transport, None)
        self.assertEqual(transport.bufferSize, 65536)

    def test_tls_and_other_transports_are_left_as_they_are(self) -> None:
        tls = self.Transport()
        directlyProvides(tls, ITCPTransport, ISSLTransport)
        other = self.Transport()
        for transport in (tls, other):
            read_size(transport, 1 << 20)
            self.assertEqual(transport.bufferSize, 65536)


class BodyLimitTests(ImageTestCase):
    async def test_other_routes_keep_the_api_body_limit(self) -> None:
        wire = Wire(self.h.api_site)
        wire.send(
            b"POST /api/v1/disk_images/ HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n"
        )
        self.assertTrue(wire.answer().startswith(b"HTTP/1.1 413 "))


class StoredDigestTests(ImageTestCase):
    async def test_both_digests_survive_a_reopened_store(self) -> None:
        image_id = await self.h.create("media_images")
        answer = await self.h.upload("media_images", image_id, multipart(("image", DATA)))
        self.assertEqual(answer.envelope()["error_code"], 0)
        await self.h.store.close()
        reopened = await Store.open(self.h.data_dir, reactor)
        self.addCleanup(reopened.close)
        image = reopened.view.media_images[image_id]
        self.assertEqual(image.sha256, hashlib.sha256(DATA).hexdigest())


class FullStoreTests(ImageTestCase):
    async def test_an_upload_the_store_cannot_record_is_a_503_and_nothing_is_kept(self) -> None:
        """QA: a full database disk answered 200 'internal error' with a critical traceback."""
        image_id = await self.h.create("disk_images")
        writer = self.h.store._writer  # type: ignore[attr-defined]
        writer._connection = FullDisk(writer._connection)
        answer = await self.h.upload("disk_images", image_id, multipart(("image", DATA)))
        self.assertEqual(answer.status, 503)
        self.assertEqual(answer.header(b"Retry-After"), b"1")
        self.assertEqual(answer.envelope()["message"], f"state could not be saved: {FULL}")
        self.assertEqual(self.h.files("disk_images"), [])
        self.assertEqual(self.h.images.get(ImageKind.DISK, image_id).version, 0)
        self.assertIsNone(self.h.images.upload_progress(ImageKind.DISK, image_id))
        self.assertEqual(self.flushLoggedErrors(), [])


class FullImageDiskTests(ImageTestCase):
    async def test_a_full_image_disk_refuses_the_upload_with_one_warning(self) -> None:
        """QA: each such upload logged a critical traceback; a full disk is no fault of ours."""
        image_id = await self.h.create("media_images")

        def full(self: object, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(files.PartFile, "store", full)
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        answer = await self.h.upload("media_images", image_id, multipart(("image", DATA)))
        self.assertEqual(
            answer.envelope()["message"],
            "cannot write the image: [Errno 28] No space left on device",
        )
        levels = [e["log_level"] for e in events if "upload" in e.get("log_format", "")]
        self.assertIn(LogLevel.warn, levels)
        self.assertNotIn(LogLevel.critical, levels)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.h.files("media_images"), [])
        self.assertEqual(self.h.images.get(ImageKind.MEDIA, image_id).version, 0)


class StalledUploadTests(ImageTestCase):
    async def test_an_upload_that_stops_sending_is_answered_408_and_said_so(self) -> None:
        """QA pass 24: cut at its deadline with no answer, and logged as "the client went
        away", which it had not."""
        image_id = await self.h.create("disk_images")
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        body = multipart(("image", DATA))
        wire = Wire(self.h.api_site)
        wire.send(head(self.h, "POST", f"/disk_images/{image_id}/file/", len(body)))
        wire.send(body[: len(body) // 2])
        self.h.clock.advance(wire.protocol.timeOut)
        answer = wire.answer()
        self.assertTrue(answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer[:80])
        self.assertIn(b'"message": "upload stalled: nothing received for 60 s"', answer)
        wire.protocol.connectionLost(Failure(ConnectionDone()))
        said = [e["why"] for e in events if "interrupted" in e.get("log_format", "")]
        self.assertEqual(said, ["nothing received for 60 s"])
        self.assertEqual(self.h.files("disk_images"), [])
        self.assertIsNone(self.h.images.upload_progress(ImageKind.DISK, image_id))


class OutOfMemoryTests(ImageTestCase):
    async def test_memory_running_out_mid_upload_is_a_503_and_nothing_is_kept(self) -> None:
        """QA pass 23: an upload whose next block could not be allocated was dropped without
        an answer, with an Unhandled Error traceback, and logged as "the client went away"."""
        image_id = await self.h.create("disk_images")

        def no_memory(*args: object) -> object:
            raise OSError(errno.ENOMEM, "Cannot allocate memory")

        self.patch(upload_module.mmap, "mmap", no_memory)
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        body = multipart(("image", DATA))
        wire = Wire(self.h.api_site)
        wire.send(head(self.h, "POST", f"/disk_images/{image_id}/file/", len(body)))
        wire.send(body[: len(body) // 2])
        answer = wire.answer()
        self.assertTrue(answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer)
        self.assertIn(b"\r\nRetry-After: 1\r\n", answer)
        self.assertIn(b'"message": "nanocore is out of memory, retry later"', answer)
        self.assertTrue(wire.transport.disconnecting)
        wire.send(body[len(body) // 2 :])  # what was already on its way is dropped
        wire.protocol.connectionLost(Failure(ConnectionDone()))
        said = [e["why"] for e in events if "interrupted" in e.get("log_format", "")]
        self.assertEqual(said, ["nanocore ran out of memory"])
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.h.files("disk_images"), [])
        self.assertIsNone(self.h.images.upload_progress(ImageKind.DISK, image_id))
        self.assertEqual(self.h.images.get(ImageKind.DISK, image_id).version, 0)


class DamagedFileTests(ImageTestCase):
    async def test_a_file_removed_or_cut_behind_cores_back_is_not_served(self) -> None:
        """QA: a missing file was Twisted's HTML 404 page (a Cell's creation failed with that
        page as its message), a cut one was served short with its real length."""
        image_id = await self.h.create("disk_images")
        await self.h.upload("disk_images", image_id, multipart(("image", DATA)))
        path = self.h.folders.path(ImageKind.DISK, image_id, 1)
        message = f"the file of disk image '{image_id}' is damaged or missing"
        os.truncate(path, 1000)
        for damaged in ("cut", "missing"):
            if damaged == "missing":
                path.unlink()
            answer = await self.h.api.get(f"/disk_images/{image_id}/file/", variant=Variant.STREAM)
            self.assertEqual((answer.status, answer.envelope()["message"]), (404, message))
        self.assertEqual(len(self.flushLoggedErrors()), 0)
