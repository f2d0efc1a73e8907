"""Record framing (MKR): sealed records of any length up to 64 KiB, length-prefixed.

Fixed MKE chunks carry no length, so a sender cannot let a chunk go before it
holds 65536 bytes or the body ends - an SSE stream then arrives all at once.
A record says how long it is, so a sender seals and sends whatever it has
the moment it has it, and a receiver opens each record as soon as its last
byte is in::

    record = u32-BE(final << 31 | n) || AES-GCM(key, u64(seq) || u32(2 + i),
                                                plaintext[n], AAD(body, final))

``n`` is 0..65536 (bits 17..30 zero), only the final record may be empty.
The AAD is the body chunk AAD of section 6.1 (kind 03, the final flag, the
flags byte, whose bit 5 says MKR), so records cannot be reordered, dropped,
cut short, moved to another message or passed off as MKE chunks; the prefix
needs no MAC of its own (a changed length or final bit cannot open).

Everything fails with :class:`DecodeFailed` (562) and a reason; after a
failure every call fails.  Pure code: no I/O, no reactor.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag

from .errors import DecodeFailed, EncodeFailed

if TYPE_CHECKING:  # pragma: no cover
    from .sealing import MessageCipher

__all__ = ["RECORD_MAX", "RECORD_PREFIX", "RECORD_OVERHEAD", "FINAL_BIT", "MAX_RECORDS",
           "BODY_LENGTH_CONTROL", "RecordSealer", "RecordOpener", "record_prefix",
           "parse_body_length"]

#: Most plaintext one record holds (the MKE chunk size).
RECORD_MAX = 65536
RECORD_PREFIX = 4
TAG = 16
#: Wire bytes a record adds to its plaintext; an empty body is 20 bytes.
RECORD_OVERHEAD = RECORD_PREFIX + TAG
FINAL_BIT = 0x80000000
#: Bits 17..30 of the prefix: always zero (so is any n above 65536).
_LENGTH_MASK = 0x7FFFFFFF
_INDEX_BODY = 2
#: Indexes 2 .. 2**32 - 1, as for MKE chunks.
MAX_RECORDS = 2**32 - _INDEX_BODY
#: Headers-item name (never forwarded) declaring a record-framed body's
#: plaintext length, so the receiver can send Content-Length on (spec 7.3).
BODY_LENGTH_CONTROL = "x-mte-body-length"
_PREFIX = struct.Struct(">I")


def record_prefix(length: int, final: bool) -> bytes:
    """The 4-byte prefix of a record holding ``length`` plaintext bytes."""
    if not 0 <= length <= RECORD_MAX:
        raise ValueError("a record holds 0..65536 bytes")
    return _PREFIX.pack((FINAL_BIT if final else 0) | length)


def parse_body_length(value: str) -> int:
    """A declared plaintext length: decimal, no sign or leading zeros; else 562."""
    if not value.isascii() or not value.isdigit() or (len(value) > 1 and value[0] == "0") \
            or len(value) > 16:
        raise DecodeFailed(f"{BODY_LENGTH_CONTROL} must be a decimal length")
    return int(value)


class RecordSealer:
    """Seals plaintext into records as it comes: ``feed`` never holds anything back.

    ``feed`` seals all it is given now (non-final records of at most 64 KiB;
    nothing for empty input); ``finish`` seals the final record, holding
    ``tail`` (maybe empty).  The caller decides when to flush - for a stream,
    whatever arrived in one reactor turn.
    """

    def __init__(self, cipher: "MessageCipher") -> None:
        self._cipher = cipher
        self._records = 0
        self._done = False

    @property
    def records(self) -> int:
        """Records sealed so far."""
        return self._records

    def _seal(self, plain: bytes | memoryview, final: bool) -> list[bytes]:
        if self._records >= MAX_RECORDS:
            self._done = True
            raise EncodeFailed("body has too many records")
        index = _INDEX_BODY + self._records
        self._records += 1
        return [record_prefix(len(plain), final),
                self._cipher._seal_body_chunk(index, final, plain)]

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        """Seal ``data`` now as non-final records; returns their wire bytes (maybe b"")."""
        if self._done:
            raise EncodeFailed("record sealer already finished")
        out: list[bytes] = []
        with memoryview(data) as raw, raw.cast("B") as view:
            for offset in range(0, len(view), RECORD_MAX):
                out.extend(self._seal(view[offset:offset + RECORD_MAX], False))
        return b"".join(out)

    def finish(self, tail: bytes | bytearray | memoryview = b"") -> bytes:
        """Seal ``tail`` (its last 64 KiB as the final record); no call after it."""
        if self._done:
            raise EncodeFailed("record sealer already finished")
        out: list[bytes] = []
        with memoryview(tail) as raw, raw.cast("B") as view:
            last = max(0, (len(view) - 1) // RECORD_MAX * RECORD_MAX)
            if last:
                out.append(self.feed(view[:last]))
            out.extend(self._seal(view[last:], True))
        self._done = True
        return b"".join(out)


class RecordOpener:
    """Opens a record-framed stream cut anywhere: each record the moment it is whole.

    ``feed`` returns the plaintext of every record completed by the bytes so
    far (authentic, but the body is complete only when ``finish`` returns);
    ``finish`` raises 562 unless the final record opened.  A prefix with a
    length above 65536 fails as soon as its 4 bytes are in, before any of
    the record is waited for; bytes after the final record fail at once.
    With ``expected`` (a declared plaintext length) more plaintext than
    declared fails as soon as it opens, and less fails at the final record.
    At most one record (65556 bytes) is ever buffered.
    """

    def __init__(self, cipher: "MessageCipher", expected: int | None = None) -> None:
        self._cipher = cipher
        self._expected = expected
        self._buf = bytearray()
        self._records = 0
        self._total = 0
        self._state = "open"

    @property
    def records(self) -> int:
        """Records opened so far."""
        return self._records

    def _fail(self, info: str) -> DecodeFailed:
        self._state = "failed"
        self._buf = bytearray()
        return DecodeFailed(info)

    def _check(self) -> None:
        if self._state == "failed":
            raise DecodeFailed("record opener already failed")

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        """Add wire bytes; returns the plaintext of the records now complete (maybe b"")."""
        self._check()
        if not len(data):
            return b""
        if self._state == "done":
            raise self._fail("bytes after the final record")
        out: list[bytes] = []
        buf = self._buf
        if buf:
            buf += data
            with memoryview(buf) as view:
                used = self._scan(view, out)
            del buf[:used]
        else:
            with memoryview(data) as raw, raw.cast("B") as view:
                used = self._scan(view, out)
                buf += view[used:]
        return b"".join(out)

    def _scan(self, view: memoryview, out: list[bytes]) -> int:
        """Open every whole record in ``view``; returns the bytes consumed."""
        offset, size = 0, len(view)
        while size - offset >= RECORD_PREFIX:
            if self._state == "done":
                raise self._fail("bytes after the final record")
            word = _PREFIX.unpack_from(view, offset)[0]
            final = bool(word & FINAL_BIT)
            length = word & _LENGTH_MASK
            if length > RECORD_MAX:
                raise self._fail(f"record {self._records} length field {length:#x} is over 65536")
            if length == 0 and not final:
                raise self._fail(f"record {self._records} is empty and not final")
            end = offset + RECORD_PREFIX + length + TAG
            if end > size:
                break
            out.append(self._open(view[offset + RECORD_PREFIX:end], final))
            offset = end
        if self._state == "done" and offset < size:
            raise self._fail("bytes after the final record")
        return offset

    def _open(self, sealed: memoryview, final: bool) -> bytes:
        if self._records >= MAX_RECORDS:
            raise self._fail("body has too many records")
        index = _INDEX_BODY + self._records
        try:
            plain = self._cipher._open_body_chunk(index, final, sealed)
        except InvalidTag:
            raise self._fail(f"record {self._records} failed authentication") from None
        self._records += 1
        self._total += len(plain)
        expected = self._expected
        if expected is not None and (self._total > expected
                                     or (final and self._total != expected)):
            raise self._fail(f"body is not the declared {expected} bytes")
        if final:
            self._state = "done"
        return plain

    def finish(self) -> bytes:
        """The end of the stream: fine only right after the final record (else 562)."""
        self._check()
        if self._state != "done":
            raise self._fail("body truncated (no final record)")
        return b""
