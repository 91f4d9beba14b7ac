"""One download: a byte range of an image file sent in large chunks read off the reactor.

``static.File``'s producers read 64 KiB at a time on the reactor thread, and each read waits
until the transport has sent everything before it: the reactor turns once per 64 KiB, and a
file that is not in the page cache (an upload leaves little of itself there, see
:mod:`nanocore.images.files`) stalls every connection while the disk answers. A
:class:`FileStream` reads :data:`CHUNK` bytes at a time through ``offload`` (the thread pool)
and keeps the next chunk read ahead while the transport sends the last, so the socket never
waits for the disk and the reactor turns once per chunk. Memory per download: two chunks and
the transport's buffer.
"""

from __future__ import annotations

import os
from typing import IO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request
from zope.interface import implementer

from nanocore.images.files import Offload

log = Logger()

#: Bytes read and written at a time.
CHUNK = 1 << 20


@implementer(IPushProducer)
class FileStream:
    """Sends ``size`` bytes of ``file`` from ``offset`` to ``request``, then finishes it.

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
    ) -> None:
        self._request = request
        self._file = file
        self._offload = offload
        self._chunk = chunk
        self._next = offset  # where the next read starts
        self._left_to_read = size
        self._left_to_send = size
        self._ready: bytes | None = None
        self._reading: Deferred[bytes] | None = None
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
        """Send what is ready while the transport takes it; keep one chunk read ahead.

        A loop rather than recursion: a write may pause or resume us, and a read may complete
        at once (tests' offload), each calling back in here.
        """
        if self._stepping:
            return
        self._stepping = True
        try:
            while not self._done:
                if self._ready is not None and not self._paused:
                    data, self._ready = self._ready, None
                    self._left_to_send -= len(data)
                    self._request.write(data)
                elif self._left_to_send == 0:
                    self._finish()
                elif self._ready is None and self._reading is None and self._left_to_read:
                    self._read()
                else:
                    break
        finally:
            self._stepping = False

    def _read(self) -> None:
        length = min(self._chunk, self._left_to_read)
        reading = self._offload(os.pread, self._file.fileno(), length, self._next)
        self._reading = reading
        self._next += length
        self._left_to_read -= length
        reading.addCallbacks(self._got, self._failed, callbackArgs=(length,))

    def _got(self, data: bytes, length: int) -> None:
        self._reading = None
        if self._done:
            self._close_file()
            return
        if len(data) < length:
            self._failed(Failure(OSError(f"file shorter than expected: {self._file.name}")))
            return
        self._ready = data
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
        self._ready = None
        if self._reading is None:
            self._close_file()

    def _close_file(self) -> None:
        if not self._file.closed:
            self._file.close()
