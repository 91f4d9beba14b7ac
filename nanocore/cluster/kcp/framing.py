"""JSON documents over KCP messages, as the Go framework frames them (cell-protocol.md §2.5).

There is no length prefix: a sender cuts each document into pieces of at most ``mss`` bytes, each
its own KCP message, and the receiver appends pieces until the buffer holds a whole document.
Go re-parses the whole buffer after every piece; :class:`Reassembler` instead scans each piece
once for the brackets and strings that decide where the top-level object ends, so a large
document costs linear time, and it refuses what would wedge a Go peer (a second document in the
same buffer) or exceed the receive buffer, instead of caching it forever.
"""

from __future__ import annotations

import re

_WHITESPACE = b" \t\r\n"
_NON_WHITESPACE = re.compile(rb"[^ \t\r\n]")
#: Outside a string only brackets and quotes change the nesting.
_STRUCTURAL = re.compile(rb'[{}\[\]"]')
#: Inside a string only the closing quote and escapes matter.
_STRING_STOP = re.compile(rb'["\\]')
#: A whole string, escapes included.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OPEN = frozenset(b"{[")
_QUOTE = ord('"')
_BACKSLASH = ord("\\")


def _balanced(piece: bytes) -> bool:
    """A quick test for a piece that holds a whole object: every string closed and as many
    closing brackets as opening ones, the last one a brace. Two objects in one piece pass too;
    decoding refuses those, so the link is dropped as the slow path would."""
    bare = _STRING.sub(b"", piece)
    return (
        b'"' not in bare
        and bare.count(b"{") + bare.count(b"[") == bare.count(b"}") + bare.count(b"]")
        and bare.rstrip(_WHITESPACE).endswith(b"}")
    )


class FramingError(ValueError):
    """The pieces received do not form a JSON document a Go peer would read."""


def split_document(document: bytes, mss: int) -> list[bytes]:
    """``document`` cut into pieces of at most ``mss`` bytes, each to be sent as one message."""
    if not document:
        raise ValueError("cannot send an empty document")
    return [document[start : start + mss] for start in range(0, len(document), mss)]


class Reassembler:
    """Gathers the pieces of one document at a time, refusing documents above ``max_size``."""

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._pieces: list[bytes] = []
        self._size = 0
        self._depth = 0
        self._in_string = False
        #: The last piece ended on a backslash inside a string: the next byte is escaped.
        self._escaped = False

    @property
    def buffered(self) -> int:
        """Bytes held for the document in progress."""
        return self._size

    def feed(self, piece: bytes) -> bytes | None:
        """Add one received message; the whole document once its last piece is in, else None."""
        start = 0
        if self._depth == 0:
            first = _NON_WHITESPACE.search(piece)
            if first is None:
                return None  # whitespace between documents: Go's decoder skips it too
            if piece[first.start()] != ord("{"):
                raise FramingError("a document must be a JSON object")
            start = first.start()
        if self._size + len(piece) - start > self._max_size:
            raise FramingError(f"document exceeds {self._max_size} bytes")
        if self._depth == 0 and _balanced(piece):
            return piece[start:].rstrip(_WHITESPACE)  # the usual case: one piece, one document
        end = self._scan(piece, start)
        if end is None:
            self._pieces.append(piece[start:] if start else piece)
            self._size += len(piece) - start
            return None
        if piece[end:].strip(_WHITESPACE):
            raise FramingError("a second document starts in the same message")
        self._pieces.append(piece[start:end])
        document = b"".join(self._pieces)
        self._pieces.clear()
        self._size = 0
        return document

    def _scan(self, piece: bytes, index: int) -> int | None:
        """Follow the nesting through ``piece``; the offset just past the document's end."""
        length = len(piece)
        if self._escaped:
            self._escaped = False
            index += 1
        while index < length:
            if self._in_string:
                stop = _STRING_STOP.search(piece, index)
                if stop is None:
                    return None
                at = stop.start()
                if piece[at] == _BACKSLASH:
                    if at + 1 == length:
                        self._escaped = True
                        return None
                    index = at + 2
                    continue
                self._in_string = False
                index = at + 1
                continue
            found = _STRUCTURAL.search(piece, index)
            if found is None:
                return None
            at = found.start()
            char = piece[at]
            index = at + 1
            if char == _QUOTE:
                self._in_string = True
            elif char in _OPEN:
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    return index
        return None
