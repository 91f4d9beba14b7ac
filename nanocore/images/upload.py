"""One upload: a multipart body parsed as it arrives, its ``image`` part written to a part file
off the reactor, checked, placed and recorded, or else removed without a trace.

The body is parsed incrementally by ``multipart``'s push parser (defnull/multipart). Bytes of
the ``image`` part are copied, as they arrive, into :data:`BLOCK`-sized page-aligned blocks
that are used again and again: the chunk the network gave is dropped at once, so the next
read's buffer reuses its memory instead of faulting in fresh pages (with 1 MiB reads, ~30 %
of the reactor's CPU went to those faults), and the part file gets whole aligned
blocks, which it writes straight to the disk (direct I/O, :mod:`nanocore.images.files`). A
full block goes through two steps on the thread pool, its digests and then its write, one
block in each step at a time: the next block is hashed while the previous one is written.
When :data:`HIGH_WATER` bytes of full blocks wait for a step, the connection is paused (its
transport's ``pauseProducing``) until no more than :data:`LOW_WATER` do: memory stays flat
whatever the file size.

Parts may declare ``checksum`` (SHA-1 as Nano's Cells send it, or SHA-256, in hex) and ``size``,
before ``image`` as Cells send them or after it (a checksum after the image was ignored, and a
wrong one let the image in: QA pass 20); any other part, a second ``image`` too, is ignored, as
in the original. An empty image is refused: no disk or ISO is empty.
"""

from __future__ import annotations

import errno
import mmap
from collections import deque
from collections.abc import Callable
from typing import Any

import multipart
from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure

from nanocore.images.files import ImageFolders, PartFile
from nanocore.operations.errors import InvalidRequest
from nanocore.operations.images import Image, ImageKind, Images, Upload

log = Logger()

#: Bytes of an upload gathered before they are hashed and written: a multiple of the part
#: file's direct-I/O alignment, large enough that the thread hops and GIL handovers per GiB
#: are few (256), small enough that an upload holds ~20 MiB at most.
BLOCK = 4 << 20
#: Bytes in full blocks waiting for a step (their digests or their write) at which the client
#: is paused, and at or below which it is resumed.
HIGH_WATER = 2 * BLOCK
LOW_WATER = BLOCK
#: Longest value of a small field part (``checksum``, ``size``).
FIELD_LIMIT = 256
#: Parts a body may have (the original's clients send one to three).
MAX_PARTS = 16

_IMAGE, _FIELD, _SKIP = "image", "field", "skip"


class UploadError(InvalidRequest):
    """The body is not an upload this server takes; nothing of it is kept."""


class UploadTooLarge(UploadError):
    """More bytes arrived than the upload limit, however the body was framed (a chunked
    body declares no length)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"upload larger than {limit} bytes")


@frozen
class Received:
    """What a whole body delivered: the image part's size and digests, the declared fields."""

    size: int
    sha1: str
    sha256: str
    fields: dict[str, str]


def boundary_of(content_type: str) -> str:
    """The multipart boundary of a ``Content-Type`` header, or :class:`UploadError`."""
    kind, options = multipart.parse_options_header(content_type)
    boundary = options.get("boundary", "")
    if kind != "multipart/form-data" or not boundary:
        raise UploadError("not a multipart/form-data body")
    return boundary


class Receiver:
    """Feeds one multipart body to one part file; see the module's docstring."""

    def __init__(
        self,
        part: PartFile,
        boundary: str,
        offload: Callable[..., Deferred[Any]],
        *,
        missing_image: str,
        producer: IPushProducer | None = None,
        progress: Callable[[int], None] = lambda _: None,
    ) -> None:
        self._part = part
        self._offload = offload
        self._missing_image = missing_image
        self._producer = producer
        self._progress = progress
        self._parser = multipart.PushMultipartParser(
            boundary, max_segment_count=MAX_PARTS, strict=True
        )
        self._state = _SKIP
        self._field = ""
        self._value = bytearray()
        self.fields: dict[str, str] = {}
        self._image_seen = False
        self._filling: memoryview | None = None
        self._filled = 0
        self._full: deque[memoryview] = deque()  # waiting to be hashed
        self._hashed: deque[memoryview] = deque()  # waiting to be stored
        self._spare: list[memoryview] = []
        self._hashing: Deferred[None] | None = None
        self._writing: Deferred[int] | None = None
        self._paused = False
        self._error: Failure | None = None
        self._ended: Deferred[Received] | None = None

    # --- from the network --------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Body bytes as they arrive; a malformed body is remembered and told at the end."""
        if self._error is not None or not data:
            return
        try:
            for event in self._parser.parse(data):
                self._event(event)
        except (multipart.MultipartError, UploadError) as error:
            self._fail(UploadError(f"malformed multipart body: {error}"))
            return
        self._pump()

    def end(self) -> Deferred[Received]:
        """The body is complete: fires once every byte is written (or with the first error)."""
        if self._error is None:
            try:
                for event in self._parser.parse(b""):
                    self._event(event)
                self._parser.close()
            except (multipart.MultipartError, UploadError) as error:
                self._fail(UploadError(f"malformed multipart body: {error}"))
            if self._error is None and not self._image_seen:
                self._fail(UploadError(self._missing_image))
        self._ended = Deferred()
        self._pump(last=True)
        return self._ended

    def stop(self, error: Exception) -> None:
        """Drop what is queued and end with ``error`` (the client went away)."""
        self._fail(error)

    # --- parsing -----------------------------------------------------------------------------

    def _event(self, event: Any) -> None:
        if isinstance(event, multipart.MultipartSegment):
            if event.name == "image" and not self._image_seen:
                self._state = _IMAGE
            elif event.name in ("checksum", "size"):
                self._state, self._field, self._value = _FIELD, event.name, bytearray()
            else:
                self._state = _SKIP
        elif isinstance(event, bytes | bytearray | memoryview):
            if self._state == _IMAGE:
                self._gather(event)
            elif self._state == _FIELD:
                self._value += event
                if len(self._value) > FIELD_LIMIT:
                    raise UploadError(f"part '{self._field}' longer than {FIELD_LIMIT} bytes")
        elif event is None:
            if self._state == _IMAGE:
                self._state, self._image_seen = _SKIP, True
            elif self._state == _FIELD:
                value = self._value.decode("utf-8", "replace").strip()
                if self.fields.setdefault(self._field, value) != value:
                    raise UploadError(f"part '{self._field}' given twice, differently")
                self._state = _SKIP

    # --- writing -----------------------------------------------------------------------------

    def _gather(self, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into blocks; a block that fills up joins the queue of full ones."""
        view = memoryview(data).cast("B")
        while view:
            block = self._filling
            if block is None:
                block = self._filling = self._spare.pop() if self._spare else _new_block()
            taken = min(len(view), BLOCK - self._filled)
            block[self._filled : self._filled + taken] = view[:taken]
            self._filled += taken
            view = view[taken:]
            if self._filled == BLOCK:
                self._full.append(block)
                self._filling, self._filled = None, 0

    def _pump(self, *, last: bool = False) -> None:
        """Start the next digest and the next write where none is in flight; ``last``: the
        body is complete, so the block being filled goes too."""
        if last and self._filling is not None and self._error is None:
            self._full.append(self._filling[: self._filled])
            self._filling, self._filled = None, 0
        if self._error is None:
            if self._hashing is None and self._full:
                block = self._full.popleft()
                self._hashing = self._offload(self._part.digest, block)
                self._hashing.addCallbacks(self._digested, self._hash_failed, (block,))
            if self._writing is None and self._hashed:
                block = self._hashed.popleft()
                self._writing = self._offload(self._part.store, block)
                self._writing.addCallbacks(self._written, self._write_failed, (block,))
        waiting = (len(self._full) + len(self._hashed)) * BLOCK
        if self._producer is not None:
            if not self._paused and waiting >= HIGH_WATER:
                self._paused = True
                self._producer.pauseProducing()
            elif self._paused and waiting <= LOW_WATER:
                self._paused = False
                self._producer.resumeProducing()
        self._settle()

    def _digested(self, _: None, block: memoryview) -> None:
        self._hashing = None
        if self._error is None:
            self._hashed.append(block)
        self._pump()

    def _written(self, count: int, block: memoryview) -> None:
        self._writing = None
        if len(block) == BLOCK:
            self._spare.append(block)
        self._progress(count)
        self._pump()

    def _hash_failed(self, failure: Failure) -> None:
        self._hashing = None
        self._step_failed(failure)

    def _write_failed(self, failure: Failure) -> None:
        self._writing = None
        self._step_failed(failure)

    def _step_failed(self, failure: Failure) -> None:
        """A step failed: the other one, if in flight, is waited for before the end is told
        (the part file is closed only once no thread uses it)."""
        if failure.check(OSError):
            # A full or failing disk is an operating condition: the client reads why, the log
            # says it once (no traceback of ours to read).
            log.warn("an upload could not be written: {reason}", reason=str(failure.value))
        else:
            log.failure("writing an upload failed", failure)
        self._fail(UploadError("cannot write the image: " + str(failure.value)))
        self._settle()

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = Failure(error)
            self._full.clear()
            self._hashed.clear()
            self._filling, self._filled = None, 0
        if self._paused and self._producer is not None:
            # The rest of the body is read and dropped, so that the answer can be sent.
            self._paused = False
            self._producer.resumeProducing()

    def _settle(self) -> None:
        ended = self._ended
        busy = self._hashing is not None or self._writing is not None
        if ended is None or ended.called or busy:
            return
        if self._error is not None:
            self._spare.clear()
            ended.errback(self._error)
        elif not self._full and not self._hashed:
            self._spare.clear()
            part = self._part
            ended.callback(Received(part.size, part.sha1, part.sha256, dict(self.fields)))


def _new_block() -> memoryview:
    """A page-aligned block of :data:`BLOCK` bytes (anonymous memory: aligned for direct
    writes, unlike a ``bytearray``). No memory left for it is a :class:`MemoryError`, as for
    any other allocation, not the ``OSError`` that ``mmap`` raises."""
    try:
        return memoryview(mmap.mmap(-1, BLOCK))
    except OSError as error:
        if error.errno == errno.ENOMEM:
            raise MemoryError(f"no memory for an upload block: {error}") from error
        raise


class Transfer:
    """An upload from its first byte to its answer: receive, check, place, record.

    Whatever ends it early (a refusal, a broken body, a client gone) removes the part file
    and unlocks the image; the catalogue and the previous version are left as they were.
    """

    def __init__(
        self,
        images: Images,
        folders: ImageFolders,
        upload: Upload,
        boundary: str,
        producer: IPushProducer | None,
        *,
        limit: int | None = None,
    ) -> None:
        """``limit``: the most bytes of body taken (None: no limit)."""
        self._images = images
        self._limit = limit
        self._received = 0
        self._folders = folders
        self._upload = upload
        self._part = folders.open_part(upload.kind, upload.image.id)
        missing = "no more part available" if upload.kind is ImageKind.DISK else (
            "no image part available"
        )  # fmt: skip
        self._receiver = Receiver(
            self._part,
            boundary,
            folders.offload,
            missing_image=missing,
            producer=producer,
            progress=self._count,
        )
        self._finished = False
        self._result: Deferred[Image] | None = None

    @property
    def upload(self) -> Upload:
        return self._upload

    def _count(self, count: int) -> None:
        self._upload.progress.received += count

    def write(self, data: bytes) -> None:
        """Take the next bytes of the body; past the limit the upload ends, nothing kept
        (raises :class:`UploadTooLarge`)."""
        self._received += len(data)
        if self._limit is not None and self._received > self._limit:
            self.abort("it exceeded the upload limit")
            raise UploadTooLarge(self._limit)
        self._receiver.write(data)

    def finish(self) -> Deferred[Image]:
        """The body is complete: check it, place it, record it (once)."""
        if self._result is None:
            self._finished = True
            self._result = Deferred.fromCoroutine(self._complete())
        return self._result

    def abort(self, why: str = "the client went away") -> None:
        """The upload ends before its body was complete (by default: its client left)."""
        if self._finished:
            return
        self._finished = True
        self._receiver.stop(UploadError(why))
        # The part file is closed only once no write is in flight on it.
        self._receiver.end().addBoth(lambda _: self._cleanup())
        log.info(
            "upload of {kind} '{id}' interrupted ({why}); nothing kept",
            kind=self._upload.kind.label,
            id=self._upload.image.id,
            why=why,
        )

    async def _complete(self) -> Image:
        upload = self._upload
        target = self._folders.path(upload.kind, upload.image.id, upload.version)
        try:
            received = await self._receiver.end()
            check(received)
            await self._folders.offload(self._part.place, target)
        except BaseException:
            self._cleanup()
            raise
        try:
            image = await self._images.finish_upload(
                upload, received.size, received.sha1, received.sha256
            )
        except BaseException:
            await self._folders.remove(upload.kind, upload.image.id, upload.version)
            self._images.abort_upload(upload)
            raise
        log.info(
            "{kind} '{id}' version {version}: {size} bytes, sha1 {sha1}, sha256 {sha256}",
            kind=upload.kind.label,
            id=image.id,
            version=upload.version,
            size=received.size,
            sha1=received.sha1,
            sha256=received.sha256,
        )
        return image

    def _cleanup(self) -> None:
        self._images.abort_upload(self._upload)
        self._folders.offload(self._part.discard)


def check(received: Received) -> None:
    """The declared checksum and size, when declared, must be what arrived; and something."""
    if received.size == 0:
        raise UploadError("the image part is empty")
    declared = received.fields.get("checksum", "").lower()
    if declared:
        actual = {40: received.sha1, 64: received.sha256}.get(len(declared))
        if actual is None:
            raise UploadError(f"invalid checksum '{declared}': expected SHA-1 or SHA-256 hex")
        if declared != actual:
            raise UploadError(f"checksum mismatch: declared {declared}, received {actual}")
    size = received.fields.get("size", "")
    if size and size != str(received.size):
        raise UploadError(f"size mismatch: declared {size} bytes, received {received.size}")
