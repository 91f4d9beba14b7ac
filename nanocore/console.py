"""Where a command writes: ordinary messages to one stream, problems to another."""

from __future__ import annotations

from typing import IO


class Console:
    """Where a command writes: ordinary messages to `out`, problems to `err`."""

    def __init__(self, out: IO[str], err: IO[str]) -> None:
        self.out = out
        self.err = err

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def complain(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()
