"""The receiver: blocks gathered, hashed and stored in order, one step of each kind in flight,
reused, and the client paused while they wait."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from nanocore.images.files import PartFile
from nanocore.images.upload import BLOCK, HIGH_WATER, Receiver, UploadError
from tests.imagefixtures import BOUNDARY, multipart

#: Three whole blocks and a tail.
DATA = os.urandom(3 * BLOCK + 12345)
CHUNK = 1 << 20


class Steps:
    """An offload that runs nothing until the test says so."""

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []
        self.started: list[tuple[str, Any]] = []

    def __call__(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        done: Deferred[Any] = Deferred()
        self.pending.append((function, args, done))
        self.started.append((function.__name__, args[0]))
        return done

    def in_flight(self) -> list[str]:
        return [function.__name__ for function, _, _ in self.pending]

    def run(self, name: str) -> None:
        """Run the pending step called ``name`` and tell its result."""
        for index, (function, args, done) in enumerate(self.pending):
            if function.__name__ == name:
                del self.pending[index]
                maybeDeferred(function, *args).chainDeferred(done)
                return
        raise AssertionError(f"no {name} in flight: {self.in_flight()}")

    def fail(self, name: str, error: Exception) -> None:
        for index, (function, _, done) in enumerate(self.pending):
            if function.__name__ == name:
                del self.pending[index]
                done.errback(error)
                return
        raise AssertionError(f"no {name} in flight: {self.in_flight()}")


class ReceiverTests(TestCase):
    def setUp(self) -> None:
        folder = Path(self.mktemp())
        folder.mkdir()
        self.part = PartFile(folder, "img")
        self.addCleanup(self.part.discard)
        self.transport = StringTransport()

    def receiver(self, offload: Callable[..., Deferred[Any]]) -> Receiver:
        return Receiver(
            self.part, BOUNDARY, offload, missing_image="no image", producer=self.transport
        )

    def send(self, receiver: Receiver, body: bytes) -> None:
        for start in range(0, len(body), CHUNK):
            receiver.write(body[start : start + CHUNK])

    def test_the_next_block_is_hashed_while_the_one_before_is_stored(self) -> None:
        steps = Steps()
        receiver = self.receiver(steps)
        self.send(receiver, multipart(("image", DATA)))
        ended = receiver.end()
        self.assertEqual(steps.in_flight(), ["digest"])
        steps.run("digest")
        self.assertEqual(sorted(steps.in_flight()), ["digest", "store"])  # the overlap
        while steps.pending:
            self.assertLessEqual(steps.in_flight().count("digest"), 1)
            self.assertLessEqual(steps.in_flight().count("store"), 1)
            steps.run(steps.in_flight()[-1])
        received = self.successResultOf(ended)
        self.assertEqual(
            (received.size, received.sha1, received.sha256),
            (len(DATA), hashlib.sha1(DATA).hexdigest(), hashlib.sha256(DATA).hexdigest()),
        )
        self.assertEqual(self.part.path.read_bytes(), DATA)
        # Each block was hashed before it was stored, and stored in the body's order.
        digested = [bytes(block) for name, block in steps.started if name == "digest"]
        stored = [bytes(block) for name, block in steps.started if name == "store"]
        self.assertEqual(stored, digested)
        self.assertEqual(b"".join(stored), DATA)

    def test_blocks_are_used_again(self) -> None:
        seen: list[memoryview] = []

        def offload(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
            seen.append(args[0])
            return maybeDeferred(function, *args)

        receiver = self.receiver(offload)
        data = DATA * 3
        self.send(receiver, multipart(("image", data)))
        received = self.successResultOf(receiver.end())
        self.assertEqual(received.sha256, hashlib.sha256(data).hexdigest())
        self.assertGreaterEqual(len(seen), 2 * 10)
        self.assertLessEqual(len({id(block.obj) for block in seen}), 2)

    def test_the_client_waits_while_blocks_wait(self) -> None:
        steps = Steps()
        receiver = self.receiver(steps)
        body = multipart(("image", DATA * 2))
        sent = 0
        while self.transport.producerState != "paused":
            receiver.write(body[sent : sent + CHUNK])
            sent += CHUNK
        # One block is hashed, two wait for it: paused, and nothing more was read.
        self.assertEqual(steps.in_flight(), ["digest"])
        self.assertTrue(HIGH_WATER + BLOCK <= sent <= HIGH_WATER + BLOCK + CHUNK, sent)
        steps.run("digest")  # one is stored, one hashed: one waits
        self.assertEqual(sorted(steps.in_flight()), ["digest", "store"])
        self.assertEqual(self.transport.producerState, "producing")
        receiver.stop(UploadError("the client went away"))
        self.assertNoResult(receiver.end())  # until no thread uses the part file

    def test_a_failed_write_ends_only_once_the_digest_in_flight_is_done(self) -> None:
        steps = Steps()
        receiver = self.receiver(steps)
        self.send(receiver, multipart(("image", DATA)))
        ended = receiver.end()
        steps.run("digest")
        steps.fail("store", OSError(28, "No space left on device"))
        self.assertNoResult(ended)  # a thread still hashes a block: the part file stays open
        steps.run("digest")
        self.assertEqual(steps.pending, [])  # nothing more started after the failure
        failure = self.failureResultOf(ended, UploadError)
        self.assertIn("No space left on device", str(failure.value))
        self.flushLoggedErrors(OSError)
