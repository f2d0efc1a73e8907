"""Plaintext formats of the url and headers items."""

from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mterelay.protocol.items import (ItemFormatError, decode_headers, decode_url,
                                     encode_headers, encode_url)


class UrlItemTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        for target in ("/", "/api/v1/users?id=3&x=%20y", "/a/b;c?d#e"):
            self.assertEqual(decode_url(encode_url(target)), target)

    def test_invalid(self) -> None:
        for target in ("", "api", "/with space", "/\n", "/\x7f", "/é", "http://h/x", "*"):
            self.assertRaises(ItemFormatError, encode_url, target)
        self.assertRaises(ItemFormatError, encode_url, b"/bytes")  # type: ignore[arg-type]
        for raw in (b"", b"x", b"/a b", b"/\xff", b"/\x00"):
            self.assertRaises(ItemFormatError, decode_url, raw)


class HeadersItemTests(SynchronousTestCase):
    def test_encode(self) -> None:
        plain = encode_headers({"Content-Type": "application/json", "X-B": ["1", "2"]})
        self.assertEqual(plain, b'{"content-type":["application/json"],"x-b":["1","2"]}')
        self.assertEqual(decode_headers(plain),
                         {"content-type": ["application/json"], "x-b": ["1", "2"]})
        self.assertEqual(encode_headers({"x": "caf\u00e9"}), '{"x":["café"]}'.encode())
        self.assertEqual(encode_headers({}), b"{}")

    def test_encode_invalid(self) -> None:
        for headers in [{"Content-Type": "a", "content-type": "b"}, {"bad name": "x"},
                        {"x": "a\r\nb"}, {"x": []}, {"": "x"}, {"x": "\x00"}, {"x": [1]},
                        {1: "x"}, {"x": "\ud800"}]:
            self.assertRaises(ItemFormatError, encode_headers, headers)  # type: ignore[arg-type]

    def test_headers_enc_0_only_content_type(self) -> None:
        self.assertEqual(decode_headers(b'{"content-type":["text/plain"]}', False),
                         {"content-type": ["text/plain"]})
        self.assertEqual(decode_headers(b"{}", False), {})
        self.assertRaises(ItemFormatError, decode_headers, b'{"x-a":["1"]}', False)
        self.assertRaises(ItemFormatError, encode_headers, {"x-a": "1"}, False)

    def test_decode_invalid(self) -> None:
        for raw in [b"", b"[]", b"null", b'{"a":"b"}', b'{"a":[]}', b'{"A":["b"]}',
                    b'{"a":["b"],"a":["c"]}', b'{"a":[1]}', b'{"a":["\\r\\n"]}', b"\xff",
                    b'{"a":["\\ud800"]}', b'{"a b":["c"]}', b'{"a":["b"]', b"[" * 100000,
                    b'{"a":NaN}']:
            self.assertRaises(ItemFormatError, decode_headers, raw)

    def test_decode_accepts_any_spelling(self) -> None:
        self.assertEqual(decode_headers(b' { "a" : [ "b" , "\\u00e9" ] } '),
                         {"a": ["b", "\u00e9"]})

    @settings(max_examples=100)
    @given(st.dictionaries(
        st.text(alphabet="abcxyz0-_.!~", min_size=1, max_size=12),
        st.lists(st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=20),
                 min_size=1, max_size=3), max_size=6))
    def test_round_trip(self, headers: dict) -> None:
        plain = encode_headers(headers)
        self.assertEqual(decode_headers(plain), headers)
        json.loads(plain)


class GoodNamesMemoTests(SynchronousTestCase):
    """The memo of valid header names never lets an invalid one through and stays bounded."""

    def test_memo(self) -> None:
        from mterelay.protocol import items

        self.patch(items, "_GOOD_NAMES", set())
        self.patch(items, "GOOD_NAMES_MAX", 2)
        for _ in range(2):
            for name in ("content-type", "x-a", "x-b", "accept"):
                self.assertEqual(decode_headers(encode_headers({name: "v"})), {name: ["v"]})
                self.assertLessEqual(len(items._GOOD_NAMES), 2)
            for bad in ("Bad Name", "x:y", "", "\u00e9"):
                with self.assertRaises(ItemFormatError):
                    decode_headers(b'{"%s":["v"]}' % bad.encode("utf-8"))
                self.assertNotIn(bad, items._GOOD_NAMES)

    def test_a_list_value_is_encoded_not_kept(self) -> None:
        values = ["a", "b"]
        plain = encode_headers({"Accept": values})
        values.append("c")
        self.assertEqual(decode_headers(plain), {"accept": ["a", "b"]})
        self.assertEqual(encode_headers({"x": ("1", "2")}), b'{"x":["1","2"]}')
