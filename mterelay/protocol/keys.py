"""``PairKeys``: the session keys of one pair, and their opaque storage blob.

Pairing produces it, sealing consumes it, the stores keep ``to_bytes()``
without looking inside.  The AES-GCM objects are built once per instance,
because key expansion is the only per-key cost on the hot path.
"""

from __future__ import annotations

import struct

import attrs
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .clientid import is_client_uuid
from .errors import StateNotFound
from .header import check_pair_id

__all__ = ["PROTOCOL_VERSION", "SUPPORTED_VERSIONS", "KEY_LENGTH", "PairKeys"]

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = frozenset({PROTOCOL_VERSION})
KEY_LENGTH = 32

_MAGIC = b"MTRK"
_BLOB_FORMAT = 1
_PREFIX = struct.Struct(">4sBH")  # magic, blob format, protocol version


def _check_version(instance: object, attribute: object, value: object) -> None:
    if type(value) is not int or value not in SUPPORTED_VERSIONS:
        raise ValueError("unsupported protocol version")


def _check_client(instance: object, attribute: object, value: object) -> None:
    if not is_client_uuid(value):
        raise ValueError("client_id must be the bare uuid4 of the client id")


def _check_key(instance: object, attribute: object, value: object) -> None:
    if type(value) is not bytes or len(value) != KEY_LENGTH:
        raise ValueError("keys are 32 bytes")


@attrs.frozen
class PairKeys:
    """Keys of one pair: ``c2s_key`` seals requests, ``s2c_key`` responses.

    ``client_id`` is the bare uuid (what :func:`verify_client_id` returns).
    Keys are left out of ``repr`` so an accidental log line leaks nothing.
    """

    version: int = attrs.field(validator=_check_version)
    client_id: str = attrs.field(validator=_check_client)
    pair_id: str = attrs.field(validator=check_pair_id)
    c2s_key: bytes = attrs.field(repr=False, validator=_check_key)
    s2c_key: bytes = attrs.field(repr=False, validator=_check_key)
    _c2s_aead: AESGCM = attrs.field(init=False, repr=False, eq=False)
    _s2c_aead: AESGCM = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_c2s_aead", AESGCM(self.c2s_key))
        object.__setattr__(self, "_s2c_aead", AESGCM(self.s2c_key))

    def aead(self, c2s: bool) -> AESGCM:
        """The cached AES-256-GCM object for one direction."""
        return self._c2s_aead if c2s else self._s2c_aead

    def to_bytes(self) -> bytes:
        """Versioned blob: ``"MTRK" u8 1 u16 version lp8(client) lp8(pair) c2s s2c``."""
        client = self.client_id.encode("ascii")
        pair = self.pair_id.encode("ascii")
        return b"".join((
            _PREFIX.pack(_MAGIC, _BLOB_FORMAT, self.version),
            bytes((len(client),)), client,
            bytes((len(pair),)), pair,
            self.c2s_key, self.s2c_key,
        ))

    @classmethod
    def from_bytes(cls, blob: bytes) -> "PairKeys":
        """Parse :meth:`to_bytes` output; anything else raises 560.

        A blob that does not parse is treated like a missing pair: the client
        re-pairs, which is the only useful recovery.
        """
        try:
            blob = bytes(blob)
            magic, fmt, version = _PREFIX.unpack_from(blob, 0)
            if magic != _MAGIC or fmt != _BLOB_FORMAT:
                raise ValueError("bad magic")
            offset = _PREFIX.size
            fields = []
            for _ in range(2):
                length = blob[offset]
                fields.append(blob[offset + 1:offset + 1 + length].decode("ascii"))
                offset += 1 + length
            if len(blob) != offset + 2 * KEY_LENGTH:
                raise ValueError("bad length")
            return cls(version, fields[0], fields[1],
                       blob[offset:offset + KEY_LENGTH], blob[offset + KEY_LENGTH:])
        except (ValueError, IndexError, struct.error, TypeError, UnicodeDecodeError):
            raise StateNotFound("unreadable pair state") from None
