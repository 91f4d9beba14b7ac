"""kcp-go's FEC header: data shards unwrapped, parity dropped, seqids that skip parity."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nanocore.cluster.kcp.fec import (
    DATA_SHARDS,
    HEADER_SIZE,
    SEQID_WRAP,
    SHARDS_PER_GROUP,
    TYPE_DATA,
    TYPE_PARITY,
    DataShards,
    FECError,
    data_payload,
)


def shard(seqid: int, flag: int, payload: bytes, size: int | None = None) -> bytes:
    declared = len(payload) + 2 if size is None else size
    return struct.pack("<IHH", seqid, flag, declared) + payload


class UnwrapTests(SynchronousTestCase):
    def test_data_shard_loses_its_header(self) -> None:
        self.assertEqual(data_payload(shard(26, TYPE_DATA, b"kcp bytes")), b"kcp bytes")

    def test_parity_shard_is_dropped(self) -> None:
        parity = struct.pack("<IH", 36, TYPE_PARITY) + b"\x00" * 40
        self.assertIsNone(data_payload(parity))

    def test_malformed_headers_are_refused(self) -> None:
        cases = {
            "short": b"\x01\x02\x03",
            "unknown flag": shard(0, 0x00F3, b"x" * 30),
            "raw KCP (no FEC)": struct.pack("<IBBH", 1, 81, 0, 32) + b"\x00" * 20,
            "size too large": shard(0, TYPE_DATA, b"x" * 30, size=33),
            "size too small": shard(0, TYPE_DATA, b"x" * 30, size=2),
            "no size field": struct.pack("<IH", 0, TYPE_DATA) + b"\x01",
        }
        for name, datagram in cases.items():
            with self.subTest(name):
                self.assertRaises(FECError, data_payload, datagram)


class SeqidTests(SynchronousTestCase):
    def test_header_layout(self) -> None:
        datagram = DataShards().wrap(b"abc")
        self.assertEqual(datagram[:HEADER_SIZE], struct.pack("<IHH", 0, 0x00F1, 5))
        self.assertEqual(datagram[HEADER_SIZE:], b"abc")

    def test_seqids_skip_the_three_parity_positions(self) -> None:
        shards = DataShards()
        seqids = [struct.unpack_from("<I", shards.wrap(b"x"))[0] for _ in range(25)]
        self.assertEqual(seqids[:10], list(range(10)))
        self.assertEqual(seqids[10:20], list(range(13, 23)))
        self.assertEqual(seqids[20:], list(range(26, 31)))

    def test_wrap_keeps_positions(self) -> None:
        shards = DataShards()
        shards.next_seqid = SEQID_WRAP - SHARDS_PER_GROUP + DATA_SHARDS - 1  # last data slot
        last = struct.unpack_from("<I", shards.wrap(b"x"))[0]
        first = struct.unpack_from("<I", shards.wrap(b"x"))[0]
        self.assertEqual((last, first), (SEQID_WRAP - 4, 0))

    @given(st.integers(min_value=0, max_value=5000), st.binary(min_size=1, max_size=1392))
    def test_every_shard_is_data_at_a_data_position(self, skip: int, payload: bytes) -> None:
        shards = DataShards()
        for _ in range(skip % 40):
            shards.wrap(b"x")
        datagram = shards.wrap(payload)
        (seqid,) = struct.unpack_from("<I", datagram)
        self.assertLess(seqid % SHARDS_PER_GROUP, DATA_SHARDS)
        self.assertEqual(data_payload(datagram), payload)
