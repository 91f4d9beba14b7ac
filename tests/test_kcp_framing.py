"""Documents cut into mss pieces and gathered again incrementally, with a size cap."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nanocore.cluster.kcp.framing import FramingError, Reassembler, split_document
from nanocore.cluster.message import Message, MessageError, MessageID, ParamKey, decode, encode

MSS = 1368


def gather(reassembler: Reassembler, pieces: list[bytes]) -> list[bytes]:
    return [d for d in (reassembler.feed(p) for p in pieces) if d is not None]


class SplitTests(SynchronousTestCase):
    def test_pieces_are_at_most_mss(self) -> None:
        document = b"{" + b"x" * 5000 + b"}"
        pieces = split_document(document, MSS)
        self.assertEqual([len(p) for p in pieces], [MSS, MSS, MSS, 5002 - 3 * MSS])
        self.assertEqual(b"".join(pieces), document)

    def test_small_document_is_one_piece(self) -> None:
        self.assertEqual(split_document(b'{"id":1}', MSS), [b'{"id":1}'])

    def test_empty_document_is_refused(self) -> None:
        self.assertRaises(ValueError, split_document, b"", MSS)


class ReassemblerTests(SynchronousTestCase):
    def test_one_piece_document(self) -> None:
        self.assertEqual(Reassembler(100).feed(b'{"id":1}'), b'{"id":1}')

    def test_document_completes_only_with_its_last_piece(self) -> None:
        document = b'{"id":1,"string_params":{"0":"a}b{c"}}'
        reassembler = Reassembler(1000)
        pieces = [document[i : i + 3] for i in range(0, len(document), 3)]
        results = [reassembler.feed(p) for p in pieces]
        self.assertEqual(results[:-1], [None] * (len(pieces) - 1))
        self.assertEqual(results[-1], document)
        self.assertEqual(reassembler.buffered, 0)

    def test_brackets_and_escapes_inside_strings_do_not_count(self) -> None:
        document = b'{"error":"\\"}]{[\\\\","id":2}'
        self.assertEqual(decode(document).error, '"}]{[\\')
        for cut in range(1, len(document)):
            with self.subTest(cut=cut):
                pieces = [document[:cut], document[cut:]]
                self.assertEqual(gather(Reassembler(100), pieces), [document])

    def test_documents_follow_each_other(self) -> None:
        reassembler = Reassembler(100)
        pieces = [b'{"id":1', b"}", b" \n", b'{"id":2}']
        self.assertEqual(gather(reassembler, pieces), [b'{"id":1}', b'{"id":2}'])

    def test_leading_and_trailing_whitespace_is_fine(self) -> None:
        self.assertEqual(gather(Reassembler(100), [b"  ", b' {"id":3} \r\n']), [b'{"id":3}'])

    def test_not_an_object_is_refused(self) -> None:
        for piece in (b"[1,2]", b'"text"', b"17", b"null"):
            with self.subTest(piece=piece):
                self.assertRaises(FramingError, Reassembler(100).feed, piece)

    def test_two_documents_in_one_message_are_refused(self) -> None:
        # A Go reader would cache this forever (cell-protocol.md §2.5, point 1). Whole in one
        # piece, it passes the quick test and fails to decode; across pieces, the scan stops it.
        joined = Reassembler(100).feed(b'{"id":1}{"id":2}')
        assert joined is not None
        self.assertRaises(MessageError, decode, joined)
        reassembler = Reassembler(100)
        self.assertIsNone(reassembler.feed(b'{"id":'))
        self.assertRaises(FramingError, reassembler.feed, b'1}{"id":2}')

    def test_document_above_the_cap_is_refused_before_it_is_buffered(self) -> None:
        reassembler = Reassembler(2000)
        reassembler.feed(b'{"x":"' + b"a" * 1000)
        self.assertRaises(FramingError, reassembler.feed, b"a" * 1000)
        self.assertLessEqual(reassembler.buffered, 2000)

    def test_document_exactly_at_the_cap_is_accepted(self) -> None:
        document = b'{"x":"' + b"a" * 92 + b'"}'
        self.assertEqual(len(document), 100)
        self.assertEqual(gather(Reassembler(100), split_document(document, 7)), [document])

    @given(
        st.text(max_size=3000),
        st.lists(st.text(max_size=40), max_size=30),
        st.integers(min_value=1, max_value=MSS),
    )
    def test_any_message_survives_any_cut(self, text: str, items: list[str], mss: int) -> None:
        message = Message(
            id=MessageID.QueryCellStorageResponse,
            error=text,
            string_array_params={ParamKey.Data: tuple(items)},
        )
        document = encode(message)
        reassembler = Reassembler(1 << 20)
        self.assertEqual(gather(reassembler, split_document(document, mss)), [document])
        self.assertEqual(decode(document), message)
