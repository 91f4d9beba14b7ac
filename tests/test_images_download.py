"""The download producer: large chunks read off the reactor, one read ahead, flow control."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any, cast

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.http import Request

from nanocore.images.download import FileStream
from nanocore.images.files import inline_offload

DATA = os.urandom(5 * 1000 + 17)
CHUNK = 1000


class Consumer:
    """What a FileStream uses of a request; pauses itself after each write when told to."""

    def __init__(self, pause_after_write: bool = False) -> None:
        self.written: list[bytes] = []
        self.producer: Any = None
        self.streaming: bool | None = None
        self.finished = self.lost = False
        self.pause_after_write = pause_after_write

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer, self.streaming = producer, streaming

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)
        if self.pause_after_write:
            self.producer.pauseProducing()

    def finish(self) -> None:
        self.finished = True

    def loseConnection(self) -> None:
        self.lost = True


class Reads:
    """An offload whose reads complete when the test says so."""

    def __init__(self) -> None:
        self.pending: list[tuple[Deferred[bytes], Any, tuple[Any, ...]]] = []

    def __call__(self, function: Any, *args: Any) -> Deferred[bytes]:
        waiting: Deferred[bytes] = Deferred()
        self.pending.append((waiting, function, args))
        return waiting

    def complete(self) -> None:
        waiting, function, args = self.pending.pop(0)
        waiting.callback(function(*args))


class FileStreamTests(TestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp())
        self.path.write_bytes(DATA)
        self.file = self.path.open("rb")
        self.addCleanup(self.file.close)

    def stream(
        self,
        consumer: Consumer,
        offload: Any,
        offset: int = 0,
        size: int = -1,
        piece: int | None = None,
    ) -> Any:
        size = len(DATA) - offset if size < 0 else size
        request = cast(Request, consumer)
        stream = FileStream(
            request, cast(IO[bytes], self.file), offset, size, offload, chunk=CHUNK, piece=piece
        )
        stream.start()
        return stream

    def test_a_whole_file_is_sent_in_chunks_then_finished(self) -> None:
        consumer = Consumer()
        self.stream(consumer, inline_offload)
        self.assertEqual(b"".join(consumer.written), DATA)
        self.assertEqual([len(c) for c in consumer.written], [CHUNK] * 5 + [17])
        self.assertTrue(consumer.streaming)
        self.assertTrue(consumer.finished)
        self.assertIsNone(consumer.producer)
        self.assertTrue(self.file.closed)

    def test_a_range_sends_exactly_its_bytes(self) -> None:
        consumer = Consumer()
        self.stream(consumer, inline_offload, offset=1500, size=2001)
        self.assertEqual(b"".join(consumer.written), DATA[1500:3501])
        self.assertTrue(consumer.finished)

    def test_an_empty_range_finishes_at_once(self) -> None:
        consumer = Consumer()
        self.stream(consumer, inline_offload, size=0)
        self.assertEqual((consumer.written, consumer.finished), ([], True))

    def test_the_next_chunk_is_read_while_the_transport_is_paused(self) -> None:
        consumer, reads = Consumer(pause_after_write=True), Reads()
        stream = self.stream(consumer, reads)
        self.assertEqual(len(reads.pending), 1)
        reads.complete()
        self.assertEqual(consumer.written, [DATA[:CHUNK]])
        self.assertEqual(len(reads.pending), 1)  # read ahead, though paused
        reads.complete()
        self.assertEqual(len(consumer.written), 1)  # held while paused
        self.assertEqual(reads.pending, [])  # and no more than one chunk ahead
        stream.resumeProducing()
        self.assertEqual(consumer.written, [DATA[:CHUNK], DATA[CHUNK : 2 * CHUNK]])
        self.assertEqual(len(reads.pending), 1)

    def test_pieces_are_written_one_at_a_time_while_the_transport_takes_them(self) -> None:
        consumer, reads = Consumer(pause_after_write=True), Reads()
        stream = self.stream(consumer, reads, piece=300)
        reads.complete()
        self.assertEqual(consumer.written, [DATA[:300]])
        self.assertEqual(len(reads.pending), 1)  # less than a chunk left: the next is read
        stream.resumeProducing()
        self.assertEqual(consumer.written, [DATA[:300], DATA[300:600]])
        reads.complete()
        self.assertEqual(reads.pending, [])  # more than a chunk ready: no read ahead
        while not consumer.finished:
            if reads.pending:
                reads.complete()
            stream.resumeProducing()
        self.assertEqual(b"".join(consumer.written), DATA)
        self.assertLessEqual(max(map(len, consumer.written)), 300)
        self.assertTrue(self.file.closed)

    def test_a_client_gone_mid_read_closes_the_file_once_the_read_ends(self) -> None:
        consumer, reads = Consumer(), Reads()
        stream = self.stream(consumer, reads)
        stream.stopProducing()
        self.assertFalse(self.file.closed)  # a worker is still reading it
        reads.complete()
        self.assertTrue(self.file.closed)
        self.assertEqual((consumer.written, consumer.finished), ([], False))

    def test_a_file_shorter_than_its_range_drops_the_connection(self) -> None:
        consumer = Consumer()
        self.stream(consumer, inline_offload, offset=len(DATA) - 10, size=100)
        self.assertTrue(consumer.lost)
        self.assertFalse(consumer.finished)
        self.assertEqual(consumer.written, [])
        self.assertTrue(self.file.closed)
        self.flushLoggedErrors(OSError)
