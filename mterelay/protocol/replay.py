"""Sliding anti-replay window (RFC 6479 style bitmap), pure and I/O free.

The decoding side of a pair must refuse any message whose sequence number it
has already accepted, without remembering every number forever.  Like IPsec
(RFC 4303 / RFC 6479) we remember the highest accepted number (``top``) and a
ring bitmap of the ``width`` numbers ending at it; anything older is refused
as TOO_OLD, so a client has ``width`` numbers of reordering slack for
concurrent requests.

Exact semantics (the Redis Lua script in ``mterelay.store.redis`` implements
the same, and the store conformance suite checks the two against each other):

* nothing seen yet: every sequence number is fresh;
* ``seq > top``: fresh; accepting it slides the window forward, clearing the
  bits of the numbers it skips over;
* ``top - width < seq <= top``: fresh unless its bit is set (REPLAYED);
* ``seq <= top - width``: TOO_OLD.

Bit ``i`` of the ring (``i = seq % width``) lives in byte ``i // 8`` at bit
``i % 8`` (least significant first), i.e. the bitmap is the little-endian
encoding of a ``width``-bit integer.  Unlike RFC 6479 we clear bit by bit, not
block by block, so exactly ``width`` numbers are remembered; the cost is the
same order since the ring is only 128 bytes by default.

The width must be a power of two: Lua numbers are doubles and ``seq % width``
is exact for every ``seq < 2**53`` only when the division by ``width`` is.
"""

from __future__ import annotations

import enum
import struct

__all__ = [
    "DEFAULT_WIDTH",
    "MAX_SEQ",
    "MAX_WIDTH",
    "MIN_WIDTH",
    "ReplayWindow",
    "Verdict",
    "validate_seq",
    "validate_width",
]

#: Highest sequence number: the largest integer a double (JavaScript clients,
#: Redis Lua) represents exactly.
MAX_SEQ = 2**53 - 1
MIN_WIDTH = 1024
DEFAULT_WIDTH = 1024
#: Upper bound keeps a pair's state small (4 KiB bitmap) and Lua work bounded.
MAX_WIDTH = 32768

_FORMAT_VERSION = 1
_HEADER = struct.Struct(">BIQ")  # version, width, top + 1 (0 = nothing seen)


class Verdict(enum.Enum):
    """Outcome of a replay check, shared by the window and the pair stores.

    Lives here (the leaf module) so ``mterelay.store`` can import it without
    an import cycle.  The relay maps REPLAYED/TOO_OLD to 562, UNKNOWN to 560
    and EXHAUSTED to 559; STALE makes it re-read the pair (see
    ``mterelay.web.inbound``).
    """

    ACCEPTED = "accepted"
    REPLAYED = "replayed"
    TOO_OLD = "too_old"
    #: store only: the pair does not exist or has expired
    UNKNOWN = "unknown"
    #: store only: the pair reached its maximum age or message count
    EXHAUSTED = "exhausted"
    #: store only: the pair now under this id has another generation (other
    #: keys) than the one the message was opened with; nothing was recorded
    STALE = "stale"


def validate_width(width: int) -> int:
    """Return ``width`` if usable as a window width, else raise ValueError."""
    if not isinstance(width, int) or isinstance(width, bool):
        raise ValueError(f"window width must be an integer, not {width!r}")
    if not MIN_WIDTH <= width <= MAX_WIDTH or width & (width - 1):
        raise ValueError(
            f"window width must be a power of two in {MIN_WIDTH}..{MAX_WIDTH},"
            f" not {width}"
        )
    return width


def validate_seq(seq: int) -> int:
    """Return ``seq`` if it is a valid sequence number, else raise ValueError.

    Out-of-range numbers are a caller bug (the header parser rejects them),
    not a verdict, so they raise instead of answering TOO_OLD.
    """
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise ValueError(f"sequence number must be an integer, not {seq!r}")
    if not 0 <= seq <= MAX_SEQ:
        raise ValueError(f"sequence number out of range 0..2**53-1: {seq}")
    return seq


class ReplayWindow:
    """Per-pair anti-replay state: the highest accepted number and a ring.

    ``check`` never mutates; ``accept`` mutates only when it answers
    ACCEPTED, so a refused message leaves no trace.
    """

    __slots__ = ("_width", "_top", "_bits")

    def __init__(self, width: int = DEFAULT_WIDTH) -> None:
        self._width = validate_width(width)
        self._top: int | None = None
        self._bits = 0  # bit (seq % width) set <=> seq accepted, within window

    @property
    def width(self) -> int:
        """Number of sequence numbers remembered below and including top."""
        return self._width

    @property
    def top(self) -> int | None:
        """Highest accepted sequence number, None before the first accept."""
        return self._top

    def check(self, seq: int) -> Verdict:
        """Tell whether ``seq`` would be accepted, without changing state."""
        validate_seq(seq)
        top = self._top
        if top is None or seq > top:
            return Verdict.ACCEPTED
        if seq <= top - self._width:
            return Verdict.TOO_OLD
        if self._bits >> (seq % self._width) & 1:
            return Verdict.REPLAYED
        return Verdict.ACCEPTED

    def accept(self, seq: int) -> Verdict:
        """Record ``seq`` if fresh; return the verdict either way."""
        verdict = self.check(seq)
        if verdict is not Verdict.ACCEPTED:
            return verdict
        width = self._width
        top = self._top
        if top is None or seq - top >= width:
            self._bits = 0
            self._top = seq
        elif seq > top:
            self._bits &= ~_ring_mask((top + 1) % width, seq - top, width)
            self._top = seq
        self._bits |= 1 << (seq % width)
        return verdict

    def bitmap(self) -> bytes:
        """The ring as ``width // 8`` bytes (the layout the Redis store keeps)."""
        return self._bits.to_bytes(self._width // 8, "little")

    @classmethod
    def from_parts(
        cls, width: int, top: int | None, bitmap: bytes
    ) -> "ReplayWindow":
        """Rebuild a window from its top and ring, validating consistency.

        Rejects states no sequence of accepts can produce (a ring without the
        top's bit, bits for negative numbers), so corrupt or forged state
        cannot silently reopen numbers.
        """
        window = cls(width)
        if len(bitmap) != width // 8:
            raise ValueError("replay bitmap has the wrong length")
        bits = int.from_bytes(bitmap, "little")
        if top is None:
            if bits:
                raise ValueError("replay bitmap set while nothing was seen")
        else:
            validate_seq(top)
            if not bits >> (top % width) & 1:
                raise ValueError("replay bitmap lacks the top's bit")
            if top < width - 1 and bits >> (top + 1):
                raise ValueError("replay bitmap marks numbers below zero")
            window._top = top
            window._bits = bits
        return window

    def to_bytes(self) -> bytes:
        """Compact serialization: version, width, top + 1, ring."""
        top1 = 0 if self._top is None else self._top + 1
        return _HEADER.pack(_FORMAT_VERSION, self._width, top1) + self.bitmap()

    @classmethod
    def from_bytes(cls, data: bytes) -> "ReplayWindow":
        """Inverse of ``to_bytes``; raises ValueError on anything malformed."""
        if len(data) < _HEADER.size:
            raise ValueError("replay window state too short")
        version, width, top1 = _HEADER.unpack_from(data)
        if version != _FORMAT_VERSION:
            raise ValueError(f"unknown replay window format {version}")
        validate_width(width)
        top = None if top1 == 0 else top1 - 1
        return cls.from_parts(width, top, bytes(data[_HEADER.size:]))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReplayWindow):
            return NotImplemented
        return (self._width, self._top, self._bits) == (
            other._width, other._top, other._bits)

    def __repr__(self) -> str:
        return f"ReplayWindow(width={self._width}, top={self._top})"


def _ring_mask(start: int, count: int, width: int) -> int:
    """Mask of ``count`` (< width) ring positions from ``start``, wrapping."""
    end = start + count
    if end <= width:
        return ((1 << count) - 1) << start
    return ((1 << (width - start)) - 1) << start | (1 << (end - width)) - 1
