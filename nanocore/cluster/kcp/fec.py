"""kcp-go's FEC framing, reduced to what a control link needs (cell-protocol.md §2.3, §7.1).

A stock Cell dials with FEC 10/3: every datagram starts with an 8-byte data-shard header or is a
Reed-Solomon parity shard. We never recover from parity (KCP retransmits what is lost, which is
fine for a control channel), so on receive parity shards are dropped and data shards lose their
header; on send every datagram is a data shard whose seqid skips the three parity positions of
each group of 13, so the Go decoder's idea of the shard layout (and kcp-go >= 5.6's auto-tuning)
stays consistent and it never tries to recover from shards that do not exist.
"""

from __future__ import annotations

import struct

#: Data and parity shards per FEC group, as the framework dials (``DialWithOptions(…, 10, 3)``).
DATA_SHARDS = 10
PARITY_SHARDS = 3
SHARDS_PER_GROUP = DATA_SHARDS + PARITY_SHARDS
#: ``seqid | flag | size``: what precedes the KCP bytes of a data shard (``fecHeaderSizePlus2``).
HEADER_SIZE = 8
#: The part of the header before ``size`` (``fecHeaderSize``); ``size`` counts from here.
_SIZE_OFFSET = 6
TYPE_DATA = 0xF1
TYPE_PARITY = 0xF2
#: Seqids wrap here, a multiple of the group size so positions survive the wrap (``paws``).
SEQID_WRAP = 0xFFFFFFFF // SHARDS_PER_GROUP * SHARDS_PER_GROUP

_HEADER = struct.Struct("<IHH")
_FLAG = struct.Struct("<H")


class FECError(ValueError):
    """A datagram that is not a well-formed kcp-go FEC shard."""


def data_payload(datagram: bytes) -> bytes | None:
    """The KCP bytes of a data shard, or None for a parity shard (dropped, never decoded).

    Raises :class:`FECError` for anything else: too short, an unknown flag, or a ``size`` that
    does not match the datagram (kcp-go always writes the exact length).
    """
    if len(datagram) < _SIZE_OFFSET:
        raise FECError(f"{len(datagram)} bytes is shorter than an FEC header")
    (flag,) = _FLAG.unpack_from(datagram, 4)
    if flag == TYPE_PARITY:
        return None
    if flag != TYPE_DATA:
        raise FECError(f"unknown FEC flag {flag:#06x}")
    if len(datagram) < HEADER_SIZE:
        raise FECError(f"data shard of {len(datagram)} bytes has no size field")
    _, _, size = _HEADER.unpack_from(datagram)
    if size != len(datagram) - _SIZE_OFFSET:
        raise FECError(f"data shard says size {size} but carries {len(datagram) - _SIZE_OFFSET}")
    return datagram[HEADER_SIZE:]


class DataShards:
    """Numbers outgoing datagrams as data shards: seqids 13k+0 … 13k+9, then the next group."""

    def __init__(self) -> None:
        self.next_seqid = 0

    def wrap(self, payload: bytes) -> bytes:
        """``payload`` (KCP bytes) behind a data-shard header with the next data seqid."""
        seqid = self.next_seqid
        following = seqid + 1
        if following % SHARDS_PER_GROUP == DATA_SHARDS:
            following += PARITY_SHARDS  # the parity positions we never send
        self.next_seqid = following % SEQID_WRAP
        return _HEADER.pack(seqid, TYPE_DATA, len(payload) + 2) + payload
