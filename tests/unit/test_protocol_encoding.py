"""Strict base64url: exact inverse of encoding, typed errors naming the field."""

from __future__ import annotations

import base64

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mterelay.protocol.encoding import Base64Error, b64decode, b64encode


class Base64Tests(SynchronousTestCase):
    def test_known(self) -> None:
        self.assertEqual(b64encode(b""), "")
        self.assertEqual(b64encode(b"\xfb\xff"), "-_8")
        self.assertEqual(b64decode("-_8", "f"), b"\xfb\xff")
        self.assertEqual(b64encode(bytearray(b"ab")), "YWI")
        self.assertEqual(b64encode(memoryview(b"abc")), "YWJj")

    def test_rejections(self) -> None:
        for value, reason in [
            ("YWI=", "padding"), ("YW I", "character"), ("YWI\n", "character"),
            ("+/8", "character"), ("Y", "length"), ("YWJ", "unused"), ("YR", "unused"),
            ("ＹＷＩ", "character"),
        ]:
            with self.assertRaises(Base64Error) as ctx:
                b64decode(value, "c2s.nonce")
            self.assertEqual(ctx.exception.field, "c2s.nonce")
            self.assertIn(reason, ctx.exception.reason, value)
            self.assertIn("c2s.nonce", str(ctx.exception))

    def test_not_a_string(self) -> None:
        for value in (None, 1, b"YWI", ["YWI"]):
            with self.assertRaises(Base64Error) as ctx:
                b64decode(value, "x")  # type: ignore[arg-type]
            self.assertEqual(ctx.exception.reason, "not a string")

    @settings(max_examples=200)
    @given(st.binary(max_size=64))
    def test_round_trip(self, data: bytes) -> None:
        encoded = b64encode(data)
        self.assertNotIn("=", encoded)
        self.assertEqual(b64decode(encoded, "f"), data)

    @settings(max_examples=300)
    @given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                            "0123456789-_=+/ \n", max_size=12))
    def test_canonical_only(self, text: str) -> None:
        """Whatever decodes re-encodes to the very same text."""
        try:
            data = b64decode(text, "f")
        except Base64Error:
            return
        self.assertEqual(b64encode(data), text)
        self.assertEqual(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), data)
