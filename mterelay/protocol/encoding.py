"""Strict base64url (RFC 4648 section 5, no padding) for every wire field.

One canonical encoding per byte string matters: the relay compares and
hashes what it receives, and a lenient decoder (padding, whitespace, stray
bits in the last character) would let two different wire strings mean the
same bytes.  Errors name the field so the caller can answer a precise 4xx.
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["Base64Error", "b64encode", "b64decode"]

_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")
_INDEX = {c: i for i, c in enumerate(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}


class Base64Error(ValueError):
    """A field is not strict, unpadded, canonical base64url."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def b64encode(data: bytes | bytearray | memoryview) -> str:
    """Encode ``data`` as unpadded base64url text."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(value: str, field: str) -> bytes:
    """Decode strict unpadded base64url, raising :class:`Base64Error`.

    Rejects non-strings, padding, characters outside the url-safe alphabet
    (whitespace included), impossible lengths and non-zero unused trailing
    bits, so that decoding is the exact inverse of :func:`b64encode`.
    """
    if not isinstance(value, str):
        raise Base64Error(field, "not a string")
    if _ALPHABET.fullmatch(value) is None:
        raise Base64Error(field, "invalid base64url character (padding is not allowed)")
    rest = len(value) % 4
    if rest == 1:
        raise Base64Error(field, "invalid base64url length")
    if rest:
        # The last character carries 4 (rest 2) or 2 (rest 3) unused bits,
        # which must be zero for the encoding to be canonical.
        unused_mask = 0x0F if rest == 2 else 0x03
        if _INDEX[value[-1]] & unused_mask:
            raise Base64Error(field, "non-canonical base64url (unused bits set)")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):  # pragma: no cover - excluded above
        raise Base64Error(field, "invalid base64url") from None
