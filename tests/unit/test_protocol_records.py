"""Record framing (MKR, spec 7.2): every record opens the moment it is whole."""

from __future__ import annotations

import os
import struct

from twisted.trial.unittest import SynchronousTestCase

from mterelay.protocol.errors import DecodeFailed, EncodeFailed, MalformedHeader
from mterelay.protocol.header import (MODE_MKE, MODE_MKR, MODE_MTE, RelayHeader,
                                      parse_framings)
from mterelay.protocol.records import (RECORD_MAX, RECORD_OVERHEAD, RecordOpener,
                                       RecordSealer, parse_body_length, record_prefix)
from mterelay.protocol.sealing import Direction, MessageCipher, check_sealed_length
from tests.helpers.clientsupport import paired_keys


def header(mode: str = MODE_MKR, records: bool = True, seq: int = 5) -> tuple[RelayHeader, ...]:
    client_id, keys, _ = paired_keys()
    return RelayHeader(client_id, keys.pair_id, mode, False, True, True, True, seq,
                       records), keys


def cipher(mode: str = MODE_MKR, seq: int = 5) -> MessageCipher:
    h, keys = header(mode, seq=seq)
    return MessageCipher(keys, h, Direction.C2S)


class HeaderTests(SynchronousTestCase):
    def test_streaming_2_and_mkr_round_trip(self) -> None:
        h, _ = header()
        text = h.format()
        self.assertTrue(text.endswith(",MKR,0,1,1,2,5"))
        self.assertEqual(RelayHeader.parse(text), h)
        self.assertEqual(h.flags_byte(), 0x04 | 0x08 | 0x10 | 0x20 | 0x40)

    def test_old_headers_keep_their_flags_byte(self) -> None:
        h, _ = header(MODE_MKE, records=False)
        self.assertEqual(h.flags_byte(), 0x01 | 0x04 | 0x08 | 0x10)
        self.assertTrue(h.format().endswith(",MKE,0,1,1,1,5"))

    def test_streaming_3_is_568(self) -> None:
        h, _ = header()
        with self.assertRaises(MalformedHeader):
            RelayHeader.parse(h.format().replace(",2,5", ",3,5"))

    def test_mkr_response_needs_streaming_2(self) -> None:
        h, _ = header(MODE_MKE, records=False)
        self.assertRaises(ValueError, h.for_response, mode=MODE_MKR, body_enc=True)
        h2, _ = header()
        self.assertEqual(h2.for_response(mode=MODE_MKR, body_enc=True).mode, MODE_MKR)

    def test_records_imply_streaming(self) -> None:
        client_id, keys, _ = paired_keys()
        self.assertRaises(ValueError, RelayHeader, client_id, keys.pair_id, MODE_MTE, False,
                          True, True, False, 1, True)

    def test_framings_header(self) -> None:
        self.assertEqual(parse_framings(None), {MODE_MTE, MODE_MKE})
        self.assertEqual(parse_framings(b"MTE, MKE,MKR,XYZ"), {MODE_MTE, MODE_MKE, MODE_MKR})


class RecordTests(SynchronousTestCase):
    def test_each_feed_is_sealed_at_once_and_opens_at_once(self) -> None:
        c = cipher()
        sealer, opener = c.body_sealer(), c.body_opener()
        self.assertIsInstance(sealer, RecordSealer)
        for piece in (b"a", b"event: x\ndata: 1\n\n", os.urandom(RECORD_MAX)):
            wire = sealer.feed(piece)
            self.assertEqual(len(wire), len(piece) + RECORD_OVERHEAD)
            self.assertEqual(opener.feed(wire), piece)
        end = sealer.finish()
        self.assertEqual(end, record_prefix(0, True) + end[4:])
        self.assertEqual(len(end), RECORD_OVERHEAD)
        self.assertEqual(opener.feed(end), b"")
        self.assertEqual(opener.finish(), b"")

    def test_large_feed_splits_into_64k_records(self) -> None:
        c = cipher()
        data = os.urandom(3 * RECORD_MAX + 5)
        sealer = c.body_sealer()
        wire = sealer.feed(data) + sealer.finish(b"tail")
        self.assertEqual(sealer.records, 5)
        self.assertEqual(c.open_body(wire), data + b"tail")

    def test_byte_by_byte(self) -> None:
        c = cipher()
        wire = c.seal_body(b"hello")
        opener = c.body_opener()
        out = b"".join(opener.feed(wire[i:i + 1]) for i in range(len(wire)))
        self.assertEqual(out + opener.finish(), b"hello")

    def test_final_tail_over_64k(self) -> None:
        c = cipher()
        data = os.urandom(RECORD_MAX + 1)
        wire = c.body_sealer().finish(data)
        self.assertEqual(len(wire), len(data) + 2 * RECORD_OVERHEAD)
        self.assertEqual(c.open_body(wire), data)

    def _records(self, c: MessageCipher, *pieces: bytes) -> list[bytes]:
        sealer = c.body_sealer()
        out = [sealer.feed(p) for p in pieces[:-1]]
        return out + [sealer.finish(pieces[-1])]

    def test_truncated(self) -> None:
        c = cipher()
        records = self._records(c, b"one", b"two", b"")
        for wire in (b"".join(records[:2]), b"".join(records)[:-1], b""):
            opener = c.body_opener()
            opener.feed(wire)
            self.assertRaises(DecodeFailed, opener.finish)

    def test_reordered_and_dropped(self) -> None:
        c = cipher()
        one, two, end = self._records(c, b"one", b"two", b"")
        for wire in (two + one + end, one + end, one + one + two + end):
            self.assertRaises(DecodeFailed, c.open_body, wire)

    def test_final_bit_flipped(self) -> None:
        c = cipher()
        one, end = self._records(c, b"one", b"")
        flipped = bytes([one[0] | 0x80]) + one[1:]
        self.assertRaises(DecodeFailed, c.open_body, flipped)

    def test_oversize_length_fails_before_the_record(self) -> None:
        opener = cipher().body_opener()
        self.assertRaises(DecodeFailed, opener.feed, struct.pack(">I", RECORD_MAX + 1))
        self.assertRaises(DecodeFailed, opener.feed, b"x")  # stays failed
        opener = cipher().body_opener()
        self.assertRaises(DecodeFailed, opener.feed, struct.pack(">I", 1 << 20 | 5))

    def test_empty_non_final_record(self) -> None:
        self.assertRaises(DecodeFailed, cipher().body_opener().feed, b"\0\0\0\0" + bytes(16))

    def test_trailing_bytes(self) -> None:
        c = cipher()
        wire = c.seal_body(b"x")
        self.assertRaises(DecodeFailed, c.open_body, wire + b"\0")
        opener = c.body_opener()
        opener.feed(wire)
        self.assertRaises(DecodeFailed, opener.feed, b"\0")

    def test_mke_chunk_is_not_a_record(self) -> None:
        h, keys = header(MODE_MKE, records=True)
        mke = MessageCipher(keys, h, Direction.C2S).seal_body(b"data")
        wire = record_prefix(4, True) + mke
        self.assertRaises(DecodeFailed, cipher().open_body, wire)

    def test_other_seq_fails(self) -> None:
        wire = cipher(seq=6).seal_body(b"data")
        self.assertRaises(DecodeFailed, cipher(seq=5).open_body, wire)

    def test_declared_length(self) -> None:
        c = cipher()
        wire = c.seal_body(b"12345")
        self.assertEqual(c.body_opener(5).feed(wire), b"12345")
        for wrong in (4, 6):
            self.assertRaises(DecodeFailed, c.body_opener(wrong).feed, wire)
        self.assertEqual(parse_body_length("0"), 0)
        for bad in ("", "01", "-1", "1e3", "١"):
            self.assertRaises(DecodeFailed, parse_body_length, bad)

    def test_sealer_done(self) -> None:
        sealer = cipher().body_sealer()
        sealer.finish()
        self.assertRaises(EncodeFailed, sealer.feed, b"x")

    def test_content_length_check(self) -> None:
        self.assertIsNone(check_sealed_length(20, MODE_MKR))
        self.assertRaises(DecodeFailed, check_sealed_length, 19, MODE_MKR)
        self.assertEqual(check_sealed_length(17, MODE_MTE), 1)

    def test_opener_is_a_record_opener(self) -> None:
        self.assertIsInstance(cipher().body_opener(), RecordOpener)
