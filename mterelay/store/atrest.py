"""Sealing of pair secrets at rest, so a Redis dump reveals no session key.

Key derivation (fixed, part of the stored format; changing it orphans every
stored pair, which clients survive by re-pairing)::

    key = HKDF-SHA256(ikm=STATE_SECRET (or CLIENT_ID_SECRET) bytes,
                      salt=b"mterelay/store/at-rest/v1",
                      info=b"mterelay pair secrets AES-256-GCM key", L=32)

Blob layout: ``0x01 || nonce (12 random bytes) || AES-256-GCM(key, nonce,
secrets, aad=key_name)``.  The associated data is the full Redis key name,
so a blob copied to another pair's key fails to open instead of handing one
client another client's keys.  Random 96-bit nonces are safe far beyond the
number of pairs a relay will ever create under one secret (NIST's 2**32
limit).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["AtRestError", "SecretSealer", "HKDF_SALT", "HKDF_INFO"]

HKDF_SALT = b"mterelay/store/at-rest/v1"
HKDF_INFO = b"mterelay pair secrets AES-256-GCM key"
_VERSION = b"\x01"
_NONCE_LEN = 12
_MIN_SECRET_LEN = 32


class AtRestError(ValueError):
    """A sealed blob did not open: wrong secret, wrong key name, tampering."""


class SecretSealer:
    """Seals and opens pair secrets under a key derived from the relay secret.

    The derived key is held only by this object; it is never logged and its
    repr says nothing about it.  ``previous`` secrets only open: during a
    rotation, replicas still sealing under the old secret and replicas
    already on the new one can read each other's pairs.
    """

    __slots__ = ("_aead", "_readers")

    def __init__(self, secret: bytes, previous: Sequence[bytes] = ()) -> None:
        self._aead = _derive(secret)
        self._readers = (self._aead, *(_derive(old) for old in previous if old != secret))

    def seal(self, secrets: bytes, key_name: bytes) -> bytes:
        """Encrypt ``secrets`` bound to ``key_name``."""
        nonce = os.urandom(_NONCE_LEN)
        return _VERSION + nonce + self._aead.encrypt(nonce, bytes(secrets), key_name)

    def open(self, blob: bytes, key_name: bytes) -> bytes:
        """Decrypt a blob sealed for ``key_name``; raise AtRestError otherwise."""
        if len(blob) < 1 + _NONCE_LEN + 16 or blob[:1] != _VERSION:
            raise AtRestError("malformed sealed pair secrets")
        nonce = blob[1:1 + _NONCE_LEN]
        for aead in self._readers:
            try:
                return aead.decrypt(nonce, blob[1 + _NONCE_LEN:], key_name)
            except InvalidTag:
                continue
        raise AtRestError("sealed pair secrets failed to open")

    def __repr__(self) -> str:
        return "<SecretSealer>"


def _derive(secret: bytes) -> AESGCM:
    if not isinstance(secret, bytes):
        raise TypeError("the state secret must be bytes")
    if len(secret) < _MIN_SECRET_LEN:
        raise ValueError(f"the state secret must be at least {_MIN_SECRET_LEN} bytes")
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT,
               info=HKDF_INFO).derive(secret)
    return AESGCM(key)
