"""AES-256-GCM sealing of the url, headers and body items of one message.

Every item is sealed under the direction's key with

* nonce = u64-BE seq || u32-BE index (0 url, 1 headers, 2 + i body chunk i),
  unique because a pair's seq is never reused in one direction (the relay's
  replay window enforces it for requests, and a response reuses the seq of
  the one request it answers, under the other key);
* AAD = "mterelay" || u16 version || u8 direction || u8 kind || u8 final ||
  u8 header flags || u64 seq || u8 len(pair id) || pair id [|| binding],
  where the headers item's binding is the request method, target and
  body presence (or the response status): the clear parts that matter.

So nothing can be moved between messages, directions, pairs, kinds or
positions, no chunk can be dropped, duplicated or reordered, the clear
header's flags cannot be altered, and a truncated body never opens.
Every failure surfaces as :class:`DecodeFailed` (562).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Mapping, Sequence

from cryptography.exceptions import InvalidTag

from .encoding import Base64Error, b64decode, b64encode
from .errors import DecodeFailed, EncodeFailed
from .header import MODE_MKE, MODE_MKR, MODE_MTE, RelayHeader
from .items import ItemFormatError, decode_headers, decode_url, encode_headers, encode_url
from .keys import PairKeys
from .records import RECORD_OVERHEAD, RecordOpener, RecordSealer

__all__ = [
    "Direction", "Kind", "INDEX_URL", "INDEX_HEADERS", "INDEX_BODY",
    "CHUNK_SIZE", "TAG_LENGTH", "SEALED_CHUNK_SIZE", "MAX_CHUNKS", "MAX_MTE_BODY",
    "sealed_length", "plain_length", "check_sealed_length", "item_nonce", "item_aad",
    "request_binding", "response_binding", "MessageCipher", "BodySealer", "BodyOpener",
]


class Direction(enum.IntEnum):
    """Who sealed: the client (requests) or the relay (responses)."""

    C2S = 1
    S2C = 2


class Kind(enum.IntEnum):
    """What an item is; bound into its AAD so items cannot swap roles."""

    URL = 1
    HEADERS = 2
    BODY = 3


INDEX_URL = 0
INDEX_HEADERS = 1
INDEX_BODY = 2
CHUNK_SIZE = 65536
TAG_LENGTH = 16
SEALED_CHUNK_SIZE = CHUNK_SIZE + TAG_LENGTH
#: The u32 index limits a body to 2**32 - 2 chunks (index 2 .. 2**32 - 1).
MAX_CHUNKS = 2**32 - INDEX_BODY
#: An MTE body is one AES-GCM call; cap it well below the library's 2**31 - 1.
MAX_MTE_BODY = 2**30

_NONCE = struct.Struct(">QI")
_AAD_HEAD = struct.Struct(">8sHBBBBQB")
_AAD_LABEL = b"mterelay"
#: _AAD_HEAD cut around its kind and final bytes (MessageCipher builds four at once).
_AAD_VERSION_DIRECTION = struct.Struct(">HB")
_AAD_FLAGS_SEQ = struct.Struct(">BQB")
#: label || u16 version || u8 direction, per (version, direction): a few entries.
_AAD_HEADS: dict[tuple[int, int], bytes] = {}
_KIND_FINAL = {(kind, final): bytes((kind, final)) for kind in (1, 2, 3) for final in (0, 1)}


# ------------------------------------------------------------- lengths

def sealed_length(plain_length: int, mode: str) -> int:
    """Sealed body size for a plaintext size, for Content-Length.

    MTE: n + 16.  MKE: n + 16 per chunk, ceil(n / 65536) chunks, at least one.
    """
    if plain_length < 0:
        raise ValueError("negative length")
    if mode == MODE_MTE:
        return plain_length + TAG_LENGTH
    if mode == MODE_MKE:
        chunks = max(1, -(-plain_length // CHUNK_SIZE))
        return plain_length + TAG_LENGTH * chunks
    raise ValueError("mode must be MTE or MKE")


def check_sealed_length(sealed: int, mode: str) -> int | None:
    """A received Content-Length checked against the framing: the plaintext
    length when the framing fixes it (MTE, MKE), None for records (MKR),
    whose split the sender chose; impossible lengths raise 562."""
    if mode == MODE_MKR:
        if sealed < RECORD_OVERHEAD:
            raise DecodeFailed("body shorter than one record")
        return None
    return plain_length(sealed, mode)


def plain_length(sealed: int, mode: str) -> int:
    """Inverse of :func:`sealed_length`; impossible sizes raise 562.

    Lets a receiver check a Content-Length up front and forward the
    plaintext with a Content-Length of its own.
    """
    if mode not in (MODE_MTE, MODE_MKE):
        raise ValueError("mode must be MTE or MKE")
    if sealed < TAG_LENGTH:
        raise DecodeFailed("body shorter than one tag")
    if mode == MODE_MTE:
        return sealed - TAG_LENGTH
    full, rest = divmod(sealed, SEALED_CHUNK_SIZE)
    if rest == 0:
        return full * CHUNK_SIZE
    if rest < TAG_LENGTH or (rest == TAG_LENGTH and full):
        raise DecodeFailed("impossible MKE body length")
    return full * CHUNK_SIZE + rest - TAG_LENGTH


# --------------------------------------------------------- nonce and AAD

def item_nonce(seq: int, index: int) -> bytes:
    """u64-BE seq || u32-BE index."""
    return _NONCE.pack(seq, index)


def item_aad(version: int, direction: Direction, kind: Kind, final: bool, flags: int,
             seq: int, pair_id: str, binding: bytes = b"") -> bytes:
    """The associated data of one item (layout in the module docstring)."""
    pair = pair_id.encode("ascii")
    return _AAD_HEAD.pack(_AAD_LABEL, version, direction, kind, 1 if final else 0, flags,
                          seq, len(pair)) + pair + binding


def _ascii(value: str | bytes, what: str) -> bytes:
    if isinstance(value, str):
        try:
            return value.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"{what} must be ASCII") from None
    return bytes(value)


def request_binding(method: str | bytes, target: str | bytes, has_body: bool) -> bytes:
    """Binding of a request's headers item: ``lp8(method) || u8 has_body || lp32(target)``.

    ``target`` is the request-target exactly as on the wire (origin form);
    with urlEnc=1 that is ``"/" + <sealed url item>``.  ``has_body`` is 1
    when the wire request carries a body (Content-Length > 0 or any
    Transfer-Encoding).  Binding them stops an attacker from turning a POST
    into a DELETE, re-routing a request whose path travels in clear, or
    adding/stripping a whole body.
    """
    m = _ascii(method, "method")
    t = _ascii(target, "target")
    if not 0 < len(m) < 256:
        raise ValueError("method must be 1..255 bytes")
    if type(has_body) is not bool:
        raise ValueError("has_body must be a bool")
    return bytes((len(m), *m, 1 if has_body else 0)) + struct.pack(">I", len(t)) + t


def response_binding(status: int) -> bytes:
    """Binding of a response's headers item: u16-BE status code."""
    if type(status) is not int or not 100 <= status <= 999:
        raise ValueError("status must be a 3-digit int")
    return struct.pack(">H", status)


# ------------------------------------------------------------- bodies

def _take_chunks(buf: bytearray, data: bytes | bytearray | memoryview, size: int,
                 handle: Callable[[memoryview], bytes]) -> bytes:
    """Feed ``handle`` every ``size``-byte piece of ``buf + data`` that is
    followed by at least one more byte; keep the rest in ``buf``.

    When nothing is buffered the pieces are sliced straight out of ``data``
    and only the tail is copied, so a large write is never copied whole.
    """
    out = []
    offset = 0
    if buf:
        buf += data
        with memoryview(buf) as view:
            while len(view) - offset > size:
                out.append(handle(view[offset:offset + size]))
                offset += size
        del buf[:offset]
    else:
        with memoryview(data) as raw, raw.cast("B") as view:
            while len(view) - offset > size:
                out.append(handle(view[offset:offset + size]))
                offset += size
            buf += view[offset:]
    return b"".join(out)


class BodySealer:
    """Incremental body sealer: ``feed`` plaintext, then ``finish`` once.

    Returns sealed bytes as soon as they can be produced.  MKE holds back one
    full chunk until it knows whether more data follows (the last chunk is
    final, and only an empty body has an empty final chunk); MTE buffers the
    whole body, it is one AES-GCM item.
    """

    def __init__(self, cipher: "MessageCipher") -> None:
        self._cipher = cipher
        self._chunked = cipher.header.mode == MODE_MKE
        self._buf = bytearray()
        self._chunks = 0
        self._done = False

    def _seal(self, plain: bytes | memoryview, final: bool) -> bytes:
        if self._chunks >= MAX_CHUNKS:
            raise EncodeFailed("body has too many chunks")
        index = INDEX_BODY + self._chunks
        self._chunks += 1
        return self._cipher._seal_body_chunk(index, final, plain)

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        """Add plaintext; returns the sealed bytes now complete (maybe b"")."""
        if self._done:
            raise EncodeFailed("body sealer already finished")
        buf = self._buf
        if not self._chunked:
            buf += data
            if len(buf) > MAX_MTE_BODY:
                self._done = True
                raise EncodeFailed("MTE body too large")
            return b""
        return _take_chunks(buf, data, CHUNK_SIZE, self._seal_nonfinal)

    def _seal_nonfinal(self, plain: memoryview) -> bytes:
        return self._seal(plain, False)

    def finish(self) -> bytes:
        """Seal what is left as the final item/chunk."""
        if self._done:
            raise EncodeFailed("body sealer already finished")
        self._done = True
        sealed = self._seal(self._buf, True)
        self._buf = bytearray()
        return sealed


class BodyOpener:
    """Incremental body opener for arbitrary slices of the sealed stream.

    ``feed`` returns plaintext of every chunk that is complete and known not
    to be the last one; the last possible chunk is held back until more
    bytes or ``finish`` arrive.  ``finish`` opens it as final and raises
    :class:`DecodeFailed` on truncation.  Plaintext returned by ``feed`` is
    authentic but the body is only complete once ``finish`` succeeds: a
    streaming receiver must abort (not complete) what it forwards if
    ``finish`` raises.  After any failure every call raises.
    """

    def __init__(self, cipher: "MessageCipher") -> None:
        self._cipher = cipher
        self._chunked = cipher.header.mode == MODE_MKE
        self._buf = bytearray()
        self._chunks = 0
        self._state = "open"

    def _fail(self, info: str) -> DecodeFailed:
        self._state = "failed"
        self._buf = bytearray()
        return DecodeFailed(info)

    def _check(self) -> None:
        if self._state == "failed":
            raise DecodeFailed("body opener already failed")
        if self._state == "done":
            raise DecodeFailed("data after the final body chunk")

    def _open(self, sealed: bytes | memoryview, final: bool) -> bytes:
        if self._chunks >= MAX_CHUNKS:
            raise self._fail("body has too many chunks")
        index = INDEX_BODY + self._chunks
        try:
            plain = self._cipher._open_body_chunk(index, final, sealed)
        except InvalidTag:
            raise self._fail(f"body chunk {self._chunks} failed authentication") from None
        self._chunks += 1
        return plain

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        """Add sealed bytes; returns the plaintext now known good (maybe b"")."""
        self._check()
        buf = self._buf
        if not self._chunked:
            buf += data
            if len(buf) > MAX_MTE_BODY + TAG_LENGTH:
                raise self._fail("MTE body too large")
            return b""
        return _take_chunks(buf, data, SEALED_CHUNK_SIZE, self._open_nonfinal)

    def _open_nonfinal(self, sealed: memoryview) -> bytes:
        return self._open(sealed, False)

    def finish(self) -> bytes:
        """Open the final chunk/item; raises 562 if the body is incomplete."""
        self._check()
        rest = self._buf
        if len(rest) < TAG_LENGTH:
            raise self._fail("body truncated")
        if self._chunked and len(rest) == TAG_LENGTH and self._chunks:
            raise self._fail("empty final chunk after data (non-canonical or truncated)")
        plain = self._open(rest, True)
        self._state = "done"
        self._buf = bytearray()
        return plain


# ------------------------------------------------------------- messages

class MessageCipher:
    """Seals or opens the items of one message (one seq, one direction).

    Requests use ``Direction.C2S`` and the request's header; responses use
    ``Direction.S2C`` and ``request_header.for_response(...)`` - a client
    must build that from its *own* request header (never trust the seq or
    pair id of a response header) so an old response cannot be replayed.
    """

    def __init__(self, keys: PairKeys, header: RelayHeader, direction: Direction) -> None:
        if keys.pair_id != header.pair_id or keys.client_id != header.client_id[:36]:
            raise ValueError("keys and header belong to different pairs")
        if direction.__class__ is not Direction:
            direction = Direction(direction)
        self.keys = keys
        self.header = header
        self.direction = direction
        self._aead = keys.aead(direction is Direction.C2S)
        self._seq = header.seq
        # The four AADs of item_aad, sharing everything but kind and final
        # (one message builds them for every request and every response).
        pair = header.pair_id.encode("ascii")
        head = _AAD_HEADS.get((keys.version, direction))
        if head is None:
            head = _AAD_LABEL + _AAD_VERSION_DIRECTION.pack(keys.version, direction)
            _AAD_HEADS[keys.version, direction] = head
        tail = _AAD_FLAGS_SEQ.pack(header.flags_byte(), header.seq, len(pair)) + pair
        self._aad_url = head + _KIND_FINAL[Kind.URL, True] + tail
        self._aad_headers = head + _KIND_FINAL[Kind.HEADERS, True] + tail
        self._aad_body = (head + _KIND_FINAL[Kind.BODY, False] + tail,
                          head + _KIND_FINAL[Kind.BODY, True] + tail)

    # -- low level, shared with the body sealer/opener
    def _seal_body_chunk(self, index: int, final: bool, plain: bytes | memoryview) -> bytes:
        return self._aead.encrypt(_NONCE.pack(self._seq, index), plain, self._aad_body[final])

    def _open_body_chunk(self, index: int, final: bool, sealed: bytes | memoryview) -> bytes:
        return self._aead.decrypt(_NONCE.pack(self._seq, index), sealed, self._aad_body[final])

    def _seal_item(self, index: int, aad: bytes, plain: bytes) -> str:
        return b64encode(self._aead.encrypt(_NONCE.pack(self._seq, index), plain, aad))

    def _open_item(self, index: int, aad: bytes, token: str | bytes, what: str) -> bytes:
        if isinstance(token, (bytes, bytearray)):
            try:
                token = bytes(token).decode("ascii")
            except UnicodeDecodeError:
                raise DecodeFailed(f"{what} item is not base64url") from None
        try:
            sealed = b64decode(token, what)
        except Base64Error:
            raise DecodeFailed(f"{what} item is not base64url") from None
        try:
            return self._aead.decrypt(_NONCE.pack(self._seq, index), sealed, aad)
        except InvalidTag:
            raise DecodeFailed(f"{what} item failed authentication") from None

    def _need(self, direction: Direction) -> None:
        if self.direction is not direction:
            raise ValueError(f"only valid for {direction.name} messages")

    # -- url
    def seal_url(self, target: str) -> str:
        """Seal the origin-form path+query; the wire path is ``"/" + result``."""
        self._need(Direction.C2S)
        try:
            plain = encode_url(target)
        except ItemFormatError as e:
            raise EncodeFailed(str(e)) from None
        return self._seal_item(INDEX_URL, self._aad_url, plain)

    def open_url(self, token: str | bytes) -> str:
        """Open a url item (the wire path without its leading ``"/"``)."""
        self._need(Direction.C2S)
        plain = self._open_item(INDEX_URL, self._aad_url, token, "url")
        try:
            return decode_url(plain)
        except ItemFormatError as e:
            raise DecodeFailed(str(e)) from None

    # -- headers (x-mte-relay-eh)
    def _seal_headers(self, headers: Mapping[str, str | Sequence[str]], binding: bytes) -> str:
        try:
            plain = encode_headers(headers, self.header.headers_enc)
        except ItemFormatError as e:
            raise EncodeFailed(str(e)) from None
        return self._seal_item(INDEX_HEADERS, self._aad_headers + binding, plain)

    def _open_headers(self, token: str | bytes, binding: bytes) -> dict[str, list[str]]:
        plain = self._open_item(INDEX_HEADERS, self._aad_headers + binding, token, "headers")
        try:
            return decode_headers(plain, self.header.headers_enc)
        except ItemFormatError as e:
            raise DecodeFailed(str(e)) from None

    def seal_request_headers(self, headers: Mapping[str, str | Sequence[str]],
                             method: str | bytes, target: str | bytes, *,
                             has_body: bool) -> str:
        """Seal the request's headers item, bound to the wire request line.

        Call it after :meth:`seal_url` when urlEnc=1: ``target`` is then
        ``"/" + url_token``.
        """
        self._need(Direction.C2S)
        return self._seal_headers(headers, request_binding(method, target, has_body))

    def open_request_headers(self, token: str | bytes, method: str | bytes,
                             target: str | bytes, *, has_body: bool) -> dict[str, list[str]]:
        """Open the request's headers item against what was received.

        This is the first thing the relay decrypts, before the replay window
        is touched, so forged requests never consume sequence numbers.
        """
        self._need(Direction.C2S)
        try:
            binding = request_binding(method, target, has_body)
        except ValueError as e:
            raise DecodeFailed(str(e)) from None
        return self._open_headers(token, binding)

    def seal_response_headers(self, headers: Mapping[str, str | Sequence[str]],
                              status: int) -> str:
        """Seal the response's headers item, bound to the status code."""
        self._need(Direction.S2C)
        return self._seal_headers(headers, response_binding(status))

    def open_response_headers(self, token: str | bytes, status: int) -> dict[str, list[str]]:
        """Open the response's headers item against the received status."""
        self._need(Direction.S2C)
        try:
            binding = response_binding(status)
        except ValueError as e:
            raise DecodeFailed(str(e)) from None
        return self._open_headers(token, binding)

    # -- body
    def body_sealer(self) -> BodySealer | RecordSealer:
        """A fresh incremental sealer for this message's body (records for MKR)."""
        self._need_body()
        if self.header.mode == MODE_MKR:
            return RecordSealer(self)
        return BodySealer(self)

    def body_opener(self, expected: int | None = None) -> BodyOpener | RecordOpener:
        """A fresh incremental opener for this message's body.

        ``expected``: the plaintext length an MKR body declared (spec 7.3);
        the fixed framings know theirs from the wire length.
        """
        self._need_body()
        if self.header.mode == MODE_MKR:
            return RecordOpener(self, expected)
        return BodyOpener(self)

    def seal_body(self, data: bytes | bytearray | memoryview) -> bytes:
        """Seal a whole body at once."""
        sealer = self.body_sealer()
        head = sealer.feed(data)
        return head + sealer.finish()

    def open_body(self, data: bytes | bytearray | memoryview) -> bytes:
        """Open a whole body at once."""
        opener = self.body_opener()
        head = opener.feed(data)
        return head + opener.finish()

    def _need_body(self) -> None:
        if not self.header.body_enc:
            raise ValueError("bodyEnc=0: the body travels in clear")
