"""One download: a byte range of an image file sent in large chunks read off the reactor.

``static.File``'s producers read 64 KiB at a time on the reactor thread, and each read waits
until the transport has sent everything before it: the reactor turns once per 64 KiB, and a
file that is not in the page cache (an upload leaves little of itself there, see
:mod:`nanocore.images.files`) stalls every connection while the disk answers. A
:class:`FileStream` reads :data:`CHUNK` bytes at a time through ``offload`` (the thread pool)
and keeps the next chunk read ahead while the transport sends the last, so the socket never
waits for the disk and the reactor turns once per chunk. Memory per download: two chunks and
the transport's buffer.

Over TLS a chunk is read as :data:`TLS_PIECE`-sized pieces, written one at a time while the
transport takes them. Written whole, a chunk became some 64 TLS records that the TCP
transport joins into one MiB-sized buffer before sending it; glibc serves a buffer that large
from fresh pages (``mmap``, or a heap it trims again at once), so every GiB sent cost a
quarter of a million page faults, doubling the reactor's CPU per GiB (from 1.1 to 2.1 s). It
had not shown before only because an earlier upload's multi-MiB buffers, when freed, had
raised glibc's thresholds for the rest of the process's life; a Core that had not taken an
upload since it started paid it.
"""

from __future__ import annotations

import os
from collections import deque
from typing import IO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request
from zope.interface import implementer

from nanocore.images.files import Offload

log = Logger()

#: Bytes read at a time (and written at a time, but over TLS).
CHUNK = 1 << 20
#: Bytes written at a time over TLS: four records, which the TCP transport sends without
#: joining them into a buffer larger than glibc's smallest ``mmap`` threshold (128 KiB).
#: 32 and 128 KiB cost more reactor CPU per GiB (``benchmarks/README.md``).
TLS_PIECE = 64 << 10


def read_pieces(descriptor: int, length: int, offset: int, piece: int) -> list[bytes]:
    """``length`` bytes at ``offset``, in pieces of ``piece`` bytes (blocking); fewer bytes
    where the file ends first."""
    pieces = []
    end = offset + length
    for start in range(offset, end, piece):
        wanted = min(piece, end - start)
        data = os.pread(descriptor, wanted, start)
        pieces.append(data)
        if len(data) < wanted:
            break
    return pieces


@implementer(IPushProducer)
class FileStream:
    """Sends ``size`` bytes of ``file`` from ``offset`` to ``request``, then finishes it;
    read ``chunk`` bytes at a time, written ``piece`` bytes at a time (default: a chunk).

    The file is closed when the last byte is written or the client has gone, once no read is in
    flight on it. A read that fails, or a file shorter than the range, closes the connection:
    the client sees a body shorter than its ``Content-Length``, never a wrong one.
    """

    def __init__(
        self,
        request: Request,
        file: IO[bytes],
        offset: int,
        size: int,
        offload: Offload,
        *,
        chunk: int = CHUNK,
        piece: int | None = None,
    ) -> None:
        self._request = request
        self._file = file
        self._offload = offload
        self._chunk = chunk
        self._piece = piece or chunk
        self._next = offset  # where the next read starts
        self._left_to_read = size
        self._left_to_send = size
        self._ready: deque[bytes] = deque()
        self._queued = 0  # bytes in _ready
        self._reading: Deferred[list[bytes]] | None = None
        self._paused = False
        self._done = False
        self._stepping = False

    def start(self) -> None:
        self._request.registerProducer(self, True)
        self._step()

    # --- IPushProducer, called by the transport -------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._step()

    def stopProducing(self) -> None:
        """The client is gone."""
        self._end()

    # --- the loop ---------------------------------------------------------------------------

    def _step(self) -> None:
        """Send what is ready while the transport takes it; read the next chunk as soon as less
        than a chunk is left to send.

        A loop rather than recursion: a write may pause or resume us, and a read may complete
        at once (tests' offload), each calling back in here.
        """
        if self._stepping:
            return
        self._stepping = True
        try:
            while not self._done:
                if self._reading is None and self._left_to_read and self._queued < self._chunk:
                    self._read()
                elif self._ready and not self._paused:
                    data = self._ready.popleft()
                    self._queued -= len(data)
                    self._left_to_send -= len(data)
                    self._request.write(data)
                elif self._left_to_send == 0:
                    self._finish()
                else:
                    break
        finally:
            self._stepping = False

    def _read(self) -> None:
        length = min(self._chunk, self._left_to_read)
        reading = self._offload(read_pieces, self._file.fileno(), length, self._next, self._piece)
        self._reading = reading
        self._next += length
        self._left_to_read -= length
        reading.addCallbacks(self._got, self._failed, callbackArgs=(length,))

    def _got(self, pieces: list[bytes], length: int) -> None:
        self._reading = None
        if self._done:
            self._close_file()
            return
        if sum(map(len, pieces)) < length:
            self._failed(Failure(OSError(f"file shorter than expected: {self._file.name}")))
            return
        self._ready.extend(pieces)
        self._queued += length
        self._step()

    def _failed(self, failure: Failure) -> None:
        self._reading = None
        log.failure("reading a download failed", failure)
        self._end()
        self._request.loseConnection()

    def _finish(self) -> None:
        self._end()
        self._request.unregisterProducer()
        self._request.finish()

    def _end(self) -> None:
        self._done = True
        self._ready.clear()
        self._queued = 0
        if self._reading is None:
            self._close_file()

    def _close_file(self) -> None:
        if not self._file.closed:
            self._file.close()
