"""Pairing: a hybrid X25519 + ML-KEM-768 key exchange per direction.

One round trip (``POST /api/mte-pair``).  For each direction the client
sends an X25519 public key, an ML-KEM-768 encapsulation key and a random
personalization; the relay answers an ephemeral X25519 public key, an
ML-KEM ciphertext and a random nonce.  Each direction's key is
HKDF-SHA256(ikm = ss_mlkem || ss_x25519, salt = SHA-256(transcript),
info = "mterelay c2s" / "mterelay s2c"), so an attacker must break *both*
X25519 and ML-KEM-768 to learn it, and any change to any public value,
ciphertext, nonce, personalization, id or version yields unrelated keys.

Every public function has a deterministic twin taking fixed secrets so the
test vectors are reproducible; production code uses the random defaults.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from typing import Any

import attrs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.mlkem import (
    MLKEM768PrivateKey, MLKEM768PublicKey)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey, X25519PublicKey)
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .clientid import is_client_uuid
from .encoding import Base64Error, b64decode, b64encode
from .errors import (MalformedPairRequest, MalformedPairResponse, PairingError,
                     UnsupportedVersion)
from .header import is_pair_id
from .keys import KEY_LENGTH, PROTOCOL_VERSION, SUPPORTED_VERSIONS, PairKeys

__all__ = [
    "DIRECTIONS", "X25519_LENGTH", "MLKEM768_PUBLIC_LENGTH", "MLKEM768_CIPHERTEXT_LENGTH",
    "MLKEM768_SEED_LENGTH", "SHARED_SECRET_LENGTH", "NONCE_LENGTH",
    "PERSONALIZATION_MIN", "PERSONALIZATION_MAX", "MAX_PAIRS_PER_REQUEST",
    "ClientDirectionSecrets", "RelayDirectionSecrets", "DirectionTranscript",
    "PendingPairing", "PairKeys",
    "new_pair_id", "start_pairing", "pairing_from_secrets",
    "respond", "parse_pair_requests", "respond_all", "finish_all",
    "transcript_bytes", "derive_keys",
]

DIRECTIONS = ("c2s", "s2c")
X25519_LENGTH = 32
MLKEM768_PUBLIC_LENGTH = 1184
MLKEM768_CIPHERTEXT_LENGTH = 1088
MLKEM768_SEED_LENGTH = 64
SHARED_SECRET_LENGTH = 32
NONCE_LENGTH = 32
PERSONALIZATION_MIN = 16
PERSONALIZATION_MAX = 64
MAX_PAIRS_PER_REQUEST = 64

_TRANSCRIPT_LABEL = b"mterelay pairing"
_INFO = {"c2s": b"mterelay c2s", "s2c": b"mterelay s2c"}
_ZERO_SS = bytes(SHARED_SECRET_LENGTH)
_REQUEST_KEYS = frozenset({"version", "pairId", "c2s", "s2c"})
_REQUEST_DIR_KEYS = frozenset({"x25519", "mlkem768", "personalization"})
_RESPONSE_DIR_KEYS = frozenset({"x25519", "mlkem768", "nonce"})


# --------------------------------------------------------------------- model

def _bytes_of(length: int) -> Any:
    def check(instance: object, attribute: attrs.Attribute, value: object) -> None:
        if type(value) is not bytes or len(value) != length:
            raise ValueError(f"{attribute.name} must be {length} bytes")
    return check


def _check_personalization(instance: object, attribute: object, value: object) -> None:
    if (type(value) is not bytes
            or not PERSONALIZATION_MIN <= len(value) <= PERSONALIZATION_MAX):
        raise ValueError("personalization must be 16..64 bytes")


@attrs.frozen
class ClientDirectionSecrets:
    """The client's secrets for one direction (kept until the answer comes)."""

    x25519_private: bytes = attrs.field(repr=False, validator=_bytes_of(X25519_LENGTH))
    mlkem_seed: bytes = attrs.field(repr=False, validator=_bytes_of(MLKEM768_SEED_LENGTH))
    personalization: bytes = attrs.field(validator=_check_personalization)

    @classmethod
    def generate(cls, personalization_length: int = 32) -> "ClientDirectionSecrets":
        """Fresh random secrets from the OS CSPRNG."""
        return cls(os.urandom(X25519_LENGTH), os.urandom(MLKEM768_SEED_LENGTH),
                   os.urandom(personalization_length))


@attrs.frozen
class RelayDirectionSecrets:
    """The relay's per-direction randomness, fixed only for test vectors.

    ML-KEM encapsulation in ``cryptography`` takes no randomness, so a
    deterministic run records the ciphertext and shared secret instead; they
    must belong to the client's encapsulation key (the vector tests check
    this by decapsulating).
    """

    x25519_private: bytes = attrs.field(repr=False, validator=_bytes_of(X25519_LENGTH))
    nonce: bytes = attrs.field(validator=_bytes_of(NONCE_LENGTH))
    mlkem_ciphertext: bytes | None = attrs.field(default=None)
    mlkem_shared_secret: bytes | None = attrs.field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        if (self.mlkem_ciphertext is None) != (self.mlkem_shared_secret is None):
            raise ValueError("give both the ML-KEM ciphertext and shared secret, or neither")
        if self.mlkem_ciphertext is not None:
            _bytes_of(MLKEM768_CIPHERTEXT_LENGTH)(self, attrs.fields(type(self)).mlkem_ciphertext,
                                                  self.mlkem_ciphertext)
            _bytes_of(SHARED_SECRET_LENGTH)(self, attrs.fields(type(self)).mlkem_shared_secret,
                                            self.mlkem_shared_secret)


@attrs.frozen
class DirectionTranscript:
    """Every public value of one direction, in transcript order."""

    client_x25519: bytes
    client_mlkem768: bytes
    personalization: bytes
    relay_x25519: bytes
    mlkem_ciphertext: bytes
    nonce: bytes


# ------------------------------------------------------------ key schedule

def _lp(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def transcript_bytes(version: int, client_id: str, pair_id: str,
                     c2s: DirectionTranscript, s2c: DirectionTranscript) -> bytes:
    """The unambiguous transcript: every element u32-BE length-prefixed.

    ``lp("mterelay pairing") lp(u16 version) lp(client uuid) lp(pair id)``
    then for ``c2s`` and ``s2c`` in that order: ``lp(label) lp(client
    x25519) lp(client ML-KEM key) lp(personalization) lp(relay x25519)
    lp(ML-KEM ciphertext) lp(nonce)``.
    """
    parts = [_lp(_TRANSCRIPT_LABEL), _lp(struct.pack(">H", version)),
             _lp(client_id.encode("ascii")), _lp(pair_id.encode("ascii"))]
    for label, d in (("c2s", c2s), ("s2c", s2c)):
        parts.extend(_lp(x) for x in (
            label.encode("ascii"), d.client_x25519, d.client_mlkem768, d.personalization,
            d.relay_x25519, d.mlkem_ciphertext, d.nonce))
    return b"".join(parts)


def derive_keys(version: int, client_id: str, pair_id: str, transcript: bytes,
                shared: Mapping[str, tuple[bytes, bytes]]) -> PairKeys:
    """Run the key schedule; ``shared[d] = (ss_mlkem, ss_x25519)``."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(transcript)
    salt = digest.finalize()
    keys = {}
    for direction in DIRECTIONS:
        ss_mlkem, ss_x25519 = shared[direction]
        keys[direction] = HKDF(algorithm=hashes.SHA256(), length=KEY_LENGTH, salt=salt,
                               info=_INFO[direction]).derive(ss_mlkem + ss_x25519)
    return PairKeys(version, client_id, pair_id, keys["c2s"], keys["s2c"])


def _x25519(private: X25519PrivateKey, public: X25519PublicKey, error: type[PairingError],
            field: str) -> bytes:
    """ECDH refusing low-order points: an all-zero secret adds no secrecy."""
    try:
        shared = private.exchange(public)
    except ValueError:
        raise error(field, "low-order X25519 public key") from None
    if shared == _ZERO_SS:  # pragma: no cover - OpenSSL already refuses these
        raise error(field, "low-order X25519 public key")
    return shared


# ------------------------------------------------------------ validation

def _object(value: object, keys: frozenset[str], error: type[PairingError],
            field: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise error(field, "must be a JSON object")
    for key in value:
        if key not in keys:
            raise error(f"{field}.{key}" if field else key, "unknown field")
    for key in sorted(keys):
        if key not in value:
            raise error(f"{field}.{key}" if field else key, "missing")
    return value


def _b64(value: object, field: str, error: type[PairingError], lengths: range) -> bytes:
    try:
        raw = b64decode(value, field)
    except Base64Error as e:
        raise error(field, e.reason) from None
    if len(raw) not in lengths:
        if len(lengths) == 1:
            raise error(field, f"must decode to {lengths.start} bytes, got {len(raw)}")
        raise error(field, f"must decode to {lengths.start}..{lengths.stop - 1} bytes, "
                           f"got {len(raw)}")
    return raw


def _exact(n: int) -> range:
    return range(n, n + 1)


def json_integer(value: object) -> int | None:
    """``value`` as an integer when it is a JSON number with an integral value, else None.

    The rule a browser can follow with ``JSON.parse`` alone (spec 4.1): the
    spelling of a number is not seen, so ``1``, ``1.0`` and ``1e0`` are the
    same number; ``true`` is not a number (Python's ``True == 1``).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _version(value: object, error: type[PairingError]) -> int:
    number = json_integer(value)
    if number is None:
        raise error("version", "must be an integer")
    if number not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(f"protocol version {number} is not supported")
    return number


def _pair_id(value: object, error: type[PairingError]) -> str:
    if not is_pair_id(value):
        raise error("pairId", "must be 16..64 chars of [A-Za-z0-9_-]")
    return value  # type: ignore[return-value]


def _client_uuid(client_id: str) -> None:
    if not is_client_uuid(client_id):
        raise ValueError("client_id must be the bare uuid4 (see verify_client_id)")


# ------------------------------------------------------------ client side

def new_pair_id() -> str:
    """A fresh pair id: base64url of 16 random bytes (22 characters)."""
    return b64encode(os.urandom(16))


@attrs.frozen
class PendingPairing:
    """A pairing the client started; holds its private keys until ``finish``."""

    version: int
    client_id: str
    pair_id: str
    c2s: ClientDirectionSecrets
    s2c: ClientDirectionSecrets
    _public: Mapping[str, tuple[bytes, bytes]] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        public = {}
        for direction in DIRECTIONS:
            secrets: ClientDirectionSecrets = getattr(self, direction)
            x_pub = X25519PrivateKey.from_private_bytes(secrets.x25519_private) \
                .public_key().public_bytes_raw()
            ek = MLKEM768PrivateKey.from_seed_bytes(secrets.mlkem_seed) \
                .public_key().public_bytes_raw()
            public[direction] = (x_pub, ek)
        object.__setattr__(self, "_public", public)

    def request_entry(self) -> dict[str, Any]:
        """This pairing's element of the ``POST /api/mte-pair`` JSON array."""
        entry: dict[str, Any] = {"version": self.version, "pairId": self.pair_id}
        for direction in DIRECTIONS:
            x_pub, ek = self._public[direction]
            entry[direction] = {
                "x25519": b64encode(x_pub),
                "mlkem768": b64encode(ek),
                "personalization": b64encode(getattr(self, direction).personalization),
            }
        return entry

    def finish(self, entry: object) -> PairKeys:
        """Derive the keys from the relay's response entry.

        Raises :class:`MalformedPairResponse` naming the bad field.  A relay
        (or attacker) that sends a valid-looking but wrong ciphertext is not
        detected here: ML-KEM rejects implicitly, so the keys just differ and
        the first message fails with 562.
        """
        error = MalformedPairResponse
        entry = _object(entry, _REQUEST_KEYS, error, "")
        if json_integer(entry["version"]) != self.version:
            raise error("version", f"must be {self.version}")
        if entry["pairId"] != self.pair_id:
            raise error("pairId", "does not match the request")
        parts = {}
        shared = {}
        for direction in DIRECTIONS:
            obj = _object(entry[direction], _RESPONSE_DIR_KEYS, error, direction)
            relay_x = _b64(obj["x25519"], f"{direction}.x25519", error, _exact(X25519_LENGTH))
            ct = _b64(obj["mlkem768"], f"{direction}.mlkem768", error,
                      _exact(MLKEM768_CIPHERTEXT_LENGTH))
            nonce = _b64(obj["nonce"], f"{direction}.nonce", error, _exact(NONCE_LENGTH))
            secrets: ClientDirectionSecrets = getattr(self, direction)
            ss_x = _x25519(X25519PrivateKey.from_private_bytes(secrets.x25519_private),
                           X25519PublicKey.from_public_bytes(relay_x), error,
                           f"{direction}.x25519")
            try:
                ss_m = MLKEM768PrivateKey.from_seed_bytes(secrets.mlkem_seed).decapsulate(ct)
            except ValueError:  # pragma: no cover - length checked above
                raise error(f"{direction}.mlkem768", "invalid ML-KEM-768 ciphertext") from None
            x_pub, ek = self._public[direction]
            parts[direction] = DirectionTranscript(x_pub, ek, secrets.personalization,
                                                   relay_x, ct, nonce)
            shared[direction] = (ss_m, ss_x)
        transcript = transcript_bytes(self.version, self.client_id, self.pair_id,
                                      parts["c2s"], parts["s2c"])
        return derive_keys(self.version, self.client_id, self.pair_id, transcript, shared)


def pairing_from_secrets(client_id: str, pair_id: str, c2s: ClientDirectionSecrets,
                         s2c: ClientDirectionSecrets,
                         version: int = PROTOCOL_VERSION) -> PendingPairing:
    """Deterministic client start (test vectors); ``client_id`` is the bare uuid."""
    _client_uuid(client_id)
    if not is_pair_id(pair_id):
        raise ValueError("invalid pair id")
    if version not in SUPPORTED_VERSIONS:
        raise ValueError("unsupported protocol version")
    return PendingPairing(version, client_id, pair_id, c2s, s2c)


def start_pairing(client_id: str, pair_id: str | None = None, *,
                  personalization_length: int = 32) -> PendingPairing:
    """Start a pairing with fresh randomness; ``client_id`` is the bare uuid."""
    return pairing_from_secrets(
        client_id, new_pair_id() if pair_id is None else pair_id,
        ClientDirectionSecrets.generate(personalization_length),
        ClientDirectionSecrets.generate(personalization_length))


# ------------------------------------------------------------- relay side

@attrs.frozen
class _ParsedDirection:
    x25519: bytes
    mlkem768: bytes
    personalization: bytes
    x25519_key: X25519PublicKey
    mlkem_key: MLKEM768PublicKey


@attrs.frozen
class _ParsedRequest:
    version: int
    pair_id: str
    c2s: _ParsedDirection
    s2c: _ParsedDirection


def _parse_request(entry: object) -> _ParsedRequest:
    error = MalformedPairRequest
    entry = _object(entry, _REQUEST_KEYS, error, "")
    version = _version(entry["version"], error)
    pair_id = _pair_id(entry["pairId"], error)
    directions = {}
    for direction in DIRECTIONS:
        obj = _object(entry[direction], _REQUEST_DIR_KEYS, error, direction)
        x_raw = _b64(obj["x25519"], f"{direction}.x25519", error, _exact(X25519_LENGTH))
        ek_raw = _b64(obj["mlkem768"], f"{direction}.mlkem768", error,
                      _exact(MLKEM768_PUBLIC_LENGTH))
        pers = _b64(obj["personalization"], f"{direction}.personalization", error,
                    range(PERSONALIZATION_MIN, PERSONALIZATION_MAX + 1))
        try:
            ek = MLKEM768PublicKey.from_public_bytes(ek_raw)
        except ValueError:
            # FIPS 203 modulus check: coefficients must be reduced mod q.
            raise error(f"{direction}.mlkem768", "invalid ML-KEM-768 encapsulation key") from None
        directions[direction] = _ParsedDirection(
            x_raw, ek_raw, pers, X25519PublicKey.from_public_bytes(x_raw), ek)
    return _ParsedRequest(version, pair_id, directions["c2s"], directions["s2c"])


def _respond_parsed(client_id: str, request: _ParsedRequest,
                    secrets: Mapping[str, RelayDirectionSecrets] | None
                    ) -> tuple[dict[str, Any], PairKeys]:
    entry: dict[str, Any] = {"version": request.version, "pairId": request.pair_id}
    parts = {}
    shared = {}
    for direction in DIRECTIONS:
        parsed: _ParsedDirection = getattr(request, direction)
        fixed = None if secrets is None else secrets[direction]
        eph = (X25519PrivateKey.generate() if fixed is None
               else X25519PrivateKey.from_private_bytes(fixed.x25519_private))
        ss_x = _x25519(eph, parsed.x25519_key, MalformedPairRequest, f"{direction}.x25519")
        if fixed is not None and fixed.mlkem_ciphertext is not None:
            ss_m, ct = fixed.mlkem_shared_secret, fixed.mlkem_ciphertext
        else:
            ss_m, ct = parsed.mlkem_key.encapsulate()
        nonce = os.urandom(NONCE_LENGTH) if fixed is None else fixed.nonce
        relay_x = eph.public_key().public_bytes_raw()
        entry[direction] = {"x25519": b64encode(relay_x), "mlkem768": b64encode(ct),
                            "nonce": b64encode(nonce)}
        parts[direction] = DirectionTranscript(parsed.x25519, parsed.mlkem768,
                                               parsed.personalization, relay_x, ct, nonce)
        shared[direction] = (ss_m, ss_x)
    transcript = transcript_bytes(request.version, client_id, request.pair_id,
                                  parts["c2s"], parts["s2c"])
    return entry, derive_keys(request.version, client_id, request.pair_id, transcript, shared)


def respond(client_id: str, entry: object, *,
            secrets: Mapping[str, RelayDirectionSecrets] | None = None
            ) -> tuple[dict[str, Any], PairKeys]:
    """Relay side: validate one request entry, answer it, derive the keys.

    ``client_id`` is the bare uuid returned by ``verify_client_id``.  Raises
    :class:`MalformedPairRequest` (field names like ``"c2s.mlkem768"``) or
    :class:`UnsupportedVersion` (567).  ``secrets`` (``{"c2s": ..., "s2c":
    ...}``) fixes the relay's randomness for test vectors only.
    """
    _client_uuid(client_id)
    return _respond_parsed(client_id, _parse_request(entry), secrets)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


#: RFC 8259 JSON as ``JSON.parse`` reads it: no NaN/Infinity literals (which
#: ``json.loads`` would take); a name given twice keeps its last value.
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def parse_pair_requests(body: bytes | str, max_entries: int = MAX_PAIRS_PER_REQUEST
                        ) -> list[object]:
    """Validate the request body's outer shape: a JSON array of 1..max entries.

    Field names of the errors are ``"$"`` for the body itself.
    """
    try:
        # Decode explicitly: json.loads(bytes) would also accept UTF-16/32.
        value = _DECODER.decode(body.decode("utf-8") if isinstance(body, bytes) else body)
    except (ValueError, TypeError):
        raise MalformedPairRequest("$", "not valid UTF-8 JSON") from None
    except RecursionError:
        raise MalformedPairRequest("$", "JSON nested too deeply") from None
    if not isinstance(value, list):
        raise MalformedPairRequest("$", "must be a JSON array")
    if not 1 <= len(value) <= max_entries:
        raise MalformedPairRequest("$", f"must hold 1..{max_entries} pair requests")
    return value


def respond_all(client_id: str, body: bytes | str,
                max_entries: int = MAX_PAIRS_PER_REQUEST
                ) -> tuple[list[dict[str, Any]], list[PairKeys]]:
    """Answer a whole ``POST /api/mte-pair`` body, all or nothing.

    Every entry is validated before any key is derived, so a bad entry
    never leaves half a batch stored.  Errors carry the entry index:
    ``"[2].s2c.nonce"``; a pair id repeated in one body is refused.
    """
    _client_uuid(client_id)
    entries = parse_pair_requests(body, max_entries)
    parsed = []
    seen = set()
    for index, entry in enumerate(entries):
        try:
            request = _parse_request(entry)
        except MalformedPairRequest as e:
            raise e.with_prefix(f"[{index}]") from None
        if request.pair_id in seen:
            raise MalformedPairRequest(f"[{index}].pairId", "duplicate pair id")
        seen.add(request.pair_id)
        parsed.append(request)
    responses, keys = [], []
    for index, request in enumerate(parsed):
        try:
            response, pair_keys = _respond_parsed(client_id, request, None)
        except MalformedPairRequest as e:
            raise e.with_prefix(f"[{index}]") from None
        responses.append(response)
        keys.append(pair_keys)
    return responses, keys


def finish_all(pending: list[PendingPairing], body: bytes) -> list[PairKeys]:
    """The client's keys from a whole ``POST /api/mte-pair`` answer, one per pending pairing.

    Every client (the Twisted one, the blocking one) reads the answer this
    way: a body that is not a JSON array of exactly one entry per request is
    refused whole, and an entry's error names its index (``"[1].s2c.nonce"``).
    """
    try:
        entries = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise MalformedPairResponse("$", "not UTF-8 JSON") from None
    if not isinstance(entries, list) or len(entries) != len(pending):
        raise MalformedPairResponse("$", f"must be a JSON array of {len(pending)} entries")
    keys = []
    for index, (pairing, entry) in enumerate(zip(pending, entries)):
        try:
            keys.append(pairing.finish(entry))
        except MalformedPairResponse as error:
            raise error.with_prefix(f"[{index}]") from None
    return keys
