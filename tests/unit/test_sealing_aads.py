"""protocol/sealing: the AADs a MessageCipher builds at once are item_aad's, byte for byte."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mterelay.protocol.header import MODES, RelayHeader
from mterelay.protocol.sealing import Direction, Kind, MessageCipher, item_aad
from tests.helpers.clientsupport import paired_keys


class AadTests(SynchronousTestCase):
    def test_every_kind_direction_and_header(self) -> None:
        client_id, keys, _ = paired_keys()
        for mode in MODES:
            for flags in range(16):
                url, headers, body, streaming = (bool(flags & bit) for bit in (1, 2, 4, 8))
                for records in ((False, True) if streaming else (False,)):
                    for seq in (0, 1, 2**32 + 5, 2**53 - 1):
                        header = RelayHeader(client_id, keys.pair_id, mode, url, headers,
                                             body, streaming, seq, records)
                        for direction in Direction:
                            cipher = MessageCipher(keys, header, direction)
                            tail = (header.flags_byte(), seq, keys.pair_id)
                            args = (keys.version, direction)
                            self.assertEqual(cipher._aad_url,
                                             item_aad(*args, Kind.URL, True, *tail))
                            self.assertEqual(cipher._aad_headers,
                                             item_aad(*args, Kind.HEADERS, True, *tail))
                            self.assertEqual(cipher._aad_body,
                                             (item_aad(*args, Kind.BODY, False, *tail),
                                              item_aad(*args, Kind.BODY, True, *tail)))

    def test_int_directions_build_the_same_cipher(self) -> None:
        # The enum fast path: a plain int still goes through Direction().
        client_id, keys, _ = paired_keys()
        header = RelayHeader(client_id, keys.pair_id, "MKR", True, True, True, True, 9, True)
        for direction in Direction:
            by_enum = MessageCipher(keys, header, direction)
            by_int = MessageCipher(keys, header, int(direction))
            self.assertIs(by_int.direction, direction)
            self.assertEqual((by_int._aad_url, by_int._aad_headers, by_int._aad_body),
                             (by_enum._aad_url, by_enum._aad_headers, by_enum._aad_body))
        with self.assertRaises(ValueError):
            MessageCipher(keys, header, 3)
