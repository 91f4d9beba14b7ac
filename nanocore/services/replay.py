"""The signatures of accepted requests, kept across a restart, so that a write captured before
it cannot be replayed after it (QA pass 20: a ``PUT`` captured a minute before a restart was
applied again after it, undoing a later change).

A signature is refused as a replay while its date is fresh (``skew``, 300 s), and the memory of
which were used lives in the process (:class:`~nanocore.api.auth.Verifier`). When Core stops,
:class:`ReplayMemory` writes it to ``data/replay-memory`` (8 bytes a signature, atomically);
when Core starts, it reads it back and removes the file, so that a run that then dies (kill -9,
power) leaves none. A start without the file (the previous run did not stop cleanly, or there
was none, or it was Nano's) cannot know what was accepted: writes dated before the start are
refused, with a message that says to sign them again. Clients sign each request, so only a
client whose clock is behind Core's is refused, for as long as it is behind.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from pathlib import Path

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nanocore.api.auth import Verifier
from nanocore.atomicfile import write_file
from nanocore.clocks import wall_seconds

#: The file in the data folder.
REPLAY_MEMORY_FILE = "replay-memory"
_MAGIC = b"nanocore replay memory 1\n"
_SECOND = struct.Struct("<qI")  # the second the signatures go stale at, how many


class ReplayMemoryError(ValueError):
    """The file is not a replay memory this version wrote whole."""


def _little_endian(digests: array[int]) -> array[int]:
    """``digests`` as the file holds them (and back): 8-byte little-endian integers."""
    if sys.byteorder != "little":
        digests.byteswap()
    return digests


def encode(seconds: dict[int, array[int]]) -> bytes:
    parts = [_MAGIC, struct.pack("<I", len(seconds))]
    for stale_at, digests in sorted(seconds.items()):
        parts.append(_SECOND.pack(stale_at, len(digests)))
        parts.append(_little_endian(array("Q", digests)).tobytes())
    return b"".join(parts)


def decode(data: bytes) -> dict[int, array[int]]:
    if not data.startswith(_MAGIC):
        raise ReplayMemoryError("not a replay memory")
    at = len(_MAGIC)
    try:
        (count,) = struct.unpack_from("<I", data, at)
        at += 4
        seconds: dict[int, array[int]] = {}
        for _ in range(count):
            stale_at, length = _SECOND.unpack_from(data, at)
            at += _SECOND.size
            end = at + 8 * length
            if end > len(data):
                raise ReplayMemoryError("cut short")
            seconds[stale_at] = _little_endian(array("Q", data[at:end]))
            at = end
    except struct.error:
        raise ReplayMemoryError("cut short") from None
    if at != len(data):
        raise ReplayMemoryError("trailing bytes")
    return seconds


class ReplayMemory(Service):
    """Reads the verifier's replay memory back at start, writes it at stop (see the module).
    Starts before the API and the image site listen, and so stops after they closed."""

    log = Logger()

    def __init__(self, verifier: Verifier, path: Path, clock: IReactorTime) -> None:
        self._verifier = verifier
        self._path = path
        self._clock = clock

    def startService(self) -> None:
        super().startService()
        try:
            seconds = decode(self._path.read_bytes())
        except FileNotFoundError:
            self._forgotten("the previous run did not stop cleanly, or there was none")
            return
        except (OSError, ReplayMemoryError) as error:
            self._forgotten(f"{self._path} is unreadable ({error})")
        else:
            recalled = self._verifier.recall(seconds)
            self.log.info(
                "{count} signatures of the previous run still refused as replays while fresh",
                count=recalled,
            )
        # Consumed: a run that dies leaves no memory behind, rather than an old one.
        try:
            self._path.unlink(missing_ok=True)
        except OSError as error:
            self.log.warn(
                "{path} could not be removed ({error}): if this run dies, the next start"
                " takes this old memory for its own",
                path=str(self._path),
                error=error,
            )

    def _forgotten(self, why: str) -> None:
        # From the whole second: the portal's dates name whole seconds, and no run died and
        # started again within one.
        self._verifier.refuse_writes_before(math.floor(wall_seconds(self._clock)))
        self.log.info(
            "no replay memory from the previous run ({why}): writes signed before this start"
            " are refused, to be signed again",
            why=why,
        )

    def stopService(self) -> None:
        super().stopService()
        seconds = self._verifier.remembered()
        try:
            write_file(self._path, encode(seconds), mode=0o600)
        except OSError as error:
            self.log.warn(
                "the replay memory could not be written to {path} ({error}): the next start"
                " refuses writes signed before it",
                path=str(self._path),
                error=error,
            )
