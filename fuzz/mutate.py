"""Small deterministic mutation primitives (every choice comes from the caller's ``rng``)."""

from __future__ import annotations

import base64
import random

#: Values that break parsers: empty, signs, leading zeros, huge, control and non-ASCII bytes.
NASTY = ["", " ", "0", "-1", "01", "00", "1.0", "1e3", "9" * 40, "null", "true", "%00",
         "\t", "é", "\u2028", "💥", "a" * 300, "*", ",", ";", "\\", "'", "\"", "<x>",
         "1 ", " 1", "+1", "0x10", "NaN"]
NASTY_BYTES = [b"\x00", b"\r", b"\n", b"\x7f", b"\xff", b"\xc3\x28", b"\x80\x80", b"\r\n \r\n",
               b"\x1b[31m", b"\xef\xbb\xbf", b"%", b"%zz", b"%00", b"\t"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def flip_bytes(rng: random.Random, data: bytes, count: int = 1) -> bytes:
    if not data:
        return b"\x00"
    out = bytearray(data)
    for _ in range(count):
        index = rng.randrange(len(out))
        out[index] ^= 1 << rng.randrange(8)
    return bytes(out)


def flip_token(rng: random.Random, token: str) -> str:
    """Decode base64url, flip a bit, re-encode: a well-formed but forged token."""
    try:
        return b64(flip_bytes(rng, unb64(token)))
    except (ValueError, TypeError):
        return token + "A"


def damage_text(rng: random.Random, text: str) -> str:
    """One textual change: truncate, insert, delete, replace, duplicate, case-flip."""
    op = rng.randrange(7)
    if not text:
        return rng.choice(NASTY)
    pos = rng.randrange(len(text) + 1)
    if op == 0:
        return text[:pos]
    if op == 1:
        return text[:pos] + rng.choice(NASTY) + text[pos:]
    if op == 2:
        return text[:pos] + text[pos + 1:]
    if op == 3:
        return text[:pos] + rng.choice("=+/ .!~_-AZaz09") + text[pos + 1:]
    if op == 4:
        return text + text
    if op == 5:
        return text.swapcase()
    return text[:pos] + rng.choice(["\x00", "\r", "\n", "\x7f", "é"]) + text[pos:]


def damage_bytes(rng: random.Random, data: bytes) -> bytes:
    op = rng.randrange(6)
    pos = rng.randrange(len(data) + 1) if data else 0
    if op == 0:
        return data[:pos]
    if op == 1:
        return data[:pos] + rng.choice(NASTY_BYTES) + data[pos:]
    if op == 2:
        return flip_bytes(rng, data, rng.randint(1, 4))
    if op == 3:
        return data[:pos] + data[pos + 1:]
    if op == 4:
        return data + rng.randbytes(rng.randint(1, 64))
    return rng.randbytes(max(1, len(data)))
