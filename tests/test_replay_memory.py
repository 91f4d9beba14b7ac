"""The replay memory across a restart (``services/replay``): a write captured before a stop is
refused after the next start (QA pass 20, F5: it was applied again); after a start without the
memory (the previous run died), writes dated before the start are refused."""

from __future__ import annotations

from array import array
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nanocore.api.auth import AuthError, RequestParts, Verifier
from nanocore.services.replay import (
    REPLAY_MEMORY_FILE,
    ReplayMemory,
    ReplayMemoryError,
    decode,
    encode,
)
from tests.test_auth import SIGNED_AT, dated, verifier_at

REPLAYED = "replayed request: this signature was already used"


class AcrossARestartTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = Path(self.mktemp())
        self.folder.mkdir()
        self.path = self.folder / REPLAY_MEMORY_FILE

    def run_core(self, moment: float) -> tuple[Verifier, ReplayMemory]:
        """A Core's verifier and its replay memory, started at ``moment``."""
        verifier, _ = verifier_at(moment)
        memory = ReplayMemory(verifier, self.path, verifier.clock)
        memory.startService()
        return verifier, memory

    def refusal(self, verifier: Verifier, parts: RequestParts) -> str:
        with self.assertRaises(AuthError) as caught:
            verifier.verify(parts)
        return caught.exception.message

    def test_a_write_captured_before_a_stop_is_refused_after_the_start(self) -> None:
        verifier, memory = self.run_core(SIGNED_AT)
        captured, other = dated(0, "/api/v1/a"), dated(0, "/api/v1/b")
        verifier.verify(captured)
        memory.stopService()
        self.assertTrue(self.path.exists())

        verifier, memory = self.run_core(SIGNED_AT + 5)
        self.assertFalse(self.path.exists())  # consumed: a run that dies leaves none
        self.assertEqual(self.refusal(verifier, captured), REPLAYED)
        verifier.verify(other)  # never used: still good (signed 5 s ago, clocks agree)
        verifier.clock.advance(3)  # type: ignore[attr-defined]
        self.assertEqual(self.refusal(verifier, other), REPLAYED)

    def test_after_a_start_without_the_memory_writes_dated_before_it_are_refused(self) -> None:
        verifier, memory = self.run_core(SIGNED_AT + 5)  # no file: the last run died
        self.assertEqual(
            self.refusal(verifier, dated(0, "/api/v1/a")),
            f"request signed at {dated(0, '/api/v1/a').headers['nano-date']}, before nanocore"
            " started without the replay memory of its previous run; sign it again",
        )
        read = dated(0, "/api/v1/a")
        verifier.verify(RequestParts("GET", read.path, "", read.headers), writable=False)
        verifier.verify(dated(5, "/api/v1/a"))  # signed anew
        memory.stopService()
        verifier, memory = self.run_core(SIGNED_AT + 8)
        verifier.verify(dated(1, "/api/v1/b"))  # a clean stop: nothing refused for its date

    def test_a_memory_cut_short_counts_as_none(self) -> None:
        verifier, memory = self.run_core(SIGNED_AT)
        verifier.verify(dated(0, "/api/v1/a"))
        memory.stopService()
        self.path.write_bytes(self.path.read_bytes()[:-3])
        verifier, memory = self.run_core(SIGNED_AT + 5)
        self.assertFalse(self.path.exists())
        self.assertIn("before nanocore started", self.refusal(verifier, dated(0, "/api/v1/a")))

    def test_signatures_gone_stale_meanwhile_are_not_recalled(self) -> None:
        verifier, memory = self.run_core(SIGNED_AT)
        verifier.verify(dated(0, "/api/v1/a"))
        verifier.verify(dated(0, "/api/v1/b"))
        memory.stopService()
        verifier, memory = self.run_core(SIGNED_AT + 400)  # past the 300 s skew
        self.assertEqual(verifier.replay_entries(), 0)


class FileTests(SynchronousTestCase):
    @given(
        st.dictionaries(
            st.integers(min_value=0, max_value=2**62),
            st.lists(st.integers(min_value=0, max_value=2**64 - 1), max_size=20),
            max_size=10,
        )
    )
    def test_what_is_written_is_read_back(self, seconds: dict[int, list[int]]) -> None:
        kept = {stale_at: array("Q", sorted(digests)) for stale_at, digests in seconds.items()}
        self.assertEqual(decode(encode(kept)), kept)

    def test_anything_else_is_refused(self) -> None:
        whole = encode({5: array("Q", [1, 2])})
        for damaged in (b"", b"nanocore replay memory 2\n", whole[:-1], whole + b"x"):
            self.assertRaises(ReplayMemoryError, decode, damaged)
