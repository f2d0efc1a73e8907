"""Signed client ids: ``<uuid4>.<hex HMAC-SHA256(secret, uuid)>``.

The relay hands a client an id on ``HEAD /api/mte-relay`` and afterwards only
trusts ids it signed itself, so a client cannot squat on (and replace) the
pairs of another client by guessing or copying a bare uuid.  Verification
accepts several secrets so ``CLIENT_ID_SECRET`` can be rotated without
invalidating every client at once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from collections.abc import Callable, Sequence

from .errors import InvalidClientId

__all__ = ["CLIENT_ID_LENGTH", "UUID_LENGTH", "new_client_id", "sign_client_uuid",
           "verify_client_id", "VerifiedIds", "client_uuid", "is_client_id", "is_client_uuid"]

UUID_LENGTH = 36
CLIENT_ID_LENGTH = UUID_LENGTH + 1 + 64

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
_UUID_RE = re.compile(_UUID)
_CLIENT_ID_RE = re.compile(rf"({_UUID})\.([0-9a-f]{{64}})")


def _sign(secret: bytes, bare_uuid: str) -> str:
    return hmac.new(secret, bare_uuid.encode("ascii"), hashlib.sha256).hexdigest()


def is_client_uuid(value: object) -> bool:
    """True if ``value`` is a lowercase canonical version-4 uuid string."""
    return isinstance(value, str) and _UUID_RE.fullmatch(value) is not None


def is_client_id(value: object) -> bool:
    """True if ``value`` follows the client-id grammar (signature unchecked)."""
    return isinstance(value, str) and _CLIENT_ID_RE.fullmatch(value) is not None


def new_client_id(secret: bytes, uuid_factory: Callable[[], uuid.UUID] = uuid.uuid4) -> str:
    """Mint a signed client id under ``secret`` (the current secret).

    ``uuid_factory`` exists for deterministic tests; whatever it returns must
    be a version-4 uuid, so the relay never issues an id it would refuse.
    """
    if not isinstance(secret, bytes) or not secret:
        raise ValueError("client id secret must be non-empty bytes")
    bare = str(uuid_factory())
    if not is_client_uuid(bare):
        raise ValueError("uuid_factory must return a version-4 uuid")
    return f"{bare}.{_sign(secret, bare)}"


def sign_client_uuid(secret: bytes, bare_uuid: str) -> str:
    """The id of an existing client re-signed under ``secret``.

    Used when a client id signed with a previous secret is presented during
    a rotation window: the client keeps its uuid (and so its pairs) and gets
    an id that will still verify once the previous secret is retired.
    """
    if not isinstance(secret, bytes) or not secret:
        raise ValueError("client id secret must be non-empty bytes")
    if not is_client_uuid(bare_uuid):
        raise ValueError("not a version-4 uuid")
    return f"{bare_uuid}.{_sign(secret, bare_uuid)}"


def verify_client_id(value: object, secrets: Sequence[bytes]) -> str:
    """Return the bare uuid of a valid id, else raise :class:`InvalidClientId`.

    The grammar is checked exactly (lowercase, uuid4, 64 hex digits, nothing
    else) before any HMAC is computed.  Every secret is tried, without an
    early exit, and compared with :func:`hmac.compare_digest`, so timing does
    not tell which secret (if any) matched or how many signature bytes did.
    """
    if not secrets:
        raise ValueError("at least one client id secret is required")
    if not isinstance(value, str) or len(value) != CLIENT_ID_LENGTH:
        raise InvalidClientId("client id is not <uuid4>.<64 hex>")
    match = _CLIENT_ID_RE.fullmatch(value)
    if match is None:
        raise InvalidClientId("client id is not <uuid4>.<64 hex>")
    bare, signature = match.group(1), match.group(2).encode("ascii")
    valid = False
    for secret in secrets:
        expected = _sign(secret, bare).encode("ascii")
        valid |= hmac.compare_digest(expected, signature)
    if not valid:
        raise InvalidClientId("client id signature does not verify")
    return bare


class VerifiedIds:
    """:func:`verify_client_id` with a bounded memo of the ids that verified.

    Every encrypted request presents its client id, and a client sends many
    requests with the same one, so the relay need not recompute the HMAC
    each time.  Only an id that passed :func:`verify_client_id` under the
    very secrets asked about is remembered, and a hit needs the exact same
    string: an id that did not verify always takes the full, constant-time
    check (and is never remembered).  When the secrets change the memo is
    dropped.  At most ``max_entries`` ids are kept; the oldest goes first.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._secrets: tuple[bytes, ...] = ()
        self._verified: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._verified)

    def verify(self, value: object, secrets: Sequence[bytes]) -> str:
        """What ``verify_client_id(value, secrets)`` answers (or raises)."""
        if type(value) is str:
            if secrets is not self._secrets:
                secrets = tuple(secrets)
                if secrets != self._secrets:
                    self._verified.clear()
                self._secrets = secrets
            bare = self._verified.get(value)
            if bare is not None:
                return bare
        bare = verify_client_id(value, secrets)
        verified = self._verified
        if len(verified) >= self.max_entries:
            del verified[next(iter(verified))]
        verified[value] = bare  # type: ignore[index]  # a str: it verified
        return bare


def client_uuid(value: str) -> str:
    """The uuid part of a client id (client side; no signature check).

    Pairing transcripts bind the bare uuid, not the signed id, so that the
    relay re-signing an id after a secret rotation does not orphan pairs.
    """
    if not is_client_id(value):
        raise ValueError("not a client id")
    return value[:UUID_LENGTH]
