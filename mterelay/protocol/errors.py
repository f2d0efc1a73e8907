"""Typed relay errors: one class per wire status code 559..569.

Clients act on the code (re-validate, re-pair, give up), so every failure the
protocol core can detect is raised as exactly one of these, never as a raw
``InvalidTag``, ``ValueError`` or ``IndexError``.  Messages for 559..566 are
the seed product's, verbatim, so its documentation maps one to one.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "RelayError",
    "RepairRequired",
    "StateNotFound",
    "EncodeFailed",
    "DecodeFailed",
    "StateUnavailable",
    "ReseedRequired",
    "StatusNotSuccessful",
    "InvalidClientId",
    "UnsupportedVersion",
    "MalformedHeader",
    "MissingHeader",
    "ERRORS_BY_CODE",
    "error_for_code",
    "PairingError",
    "MalformedPairRequest",
    "MalformedPairResponse",
]


class RelayError(Exception):
    """Base of the 55x errors; ``info`` is optional detail for logs/clients."""

    code: ClassVar[int] = 0
    message: ClassVar[str] = ""
    #: True when a relay answered with it (a 55x received), False when raised
    #: locally.
    remote: bool = False
    #: For a received 55x: the relay's ``upstreamReached`` (spec 10.1), "no"
    #: or "maybe"; None when raised locally.
    upstream_reached: str | None = None

    def __init__(self, info: str | None = None) -> None:
        super().__init__(self.message if info is None else f"{self.message} ({info})")
        self.info = info

    def to_json(self) -> dict[str, Any]:
        """The core of the response body: ``{"error", "code", "reason"}`` (spec 10.1)."""
        return {"error": self.message, "code": self.code,
                "reason": self.info if self.info is not None else self.message.rstrip(".")}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code}, info={self.info!r})"


class RepairRequired(RelayError):
    """559: the pair is exhausted (max age / max messages); re-pair, retry once."""

    code = 559
    message = "Repair is required."


class StateNotFound(RelayError):
    """560: unknown, expired or unreadable pair; re-pair, retry once."""

    code = 560
    message = "State not found."


class EncodeFailed(RelayError):
    """561: the sender could not seal (a local bug or a limit was hit)."""

    code = 561
    message = "Failed to encode."


class DecodeFailed(RelayError):
    """562: bad ciphertext, tampering, truncation, replay; re-pair, retry once."""

    code = 562
    message = "Failed to decode."


class StateUnavailable(RelayError):
    """563: reserved (seed compatibility)."""

    code = 563
    message = "Failed to get state from encoder or decoder."


class ReseedRequired(RelayError):
    """564: the pair's sequence space is exhausted; re-pair."""

    code = 564
    message = "DRBG reseed is required."


class StatusNotSuccessful(RelayError):
    """565: reserved (seed compatibility)."""

    code = 565
    message = "MTE Status was not successful."


class InvalidClientId(RelayError):
    """566: the client id is malformed or its signature is wrong; re-validate."""

    code = 566
    message = "Invalid Client ID header."


class UnsupportedVersion(RelayError):
    """567: the peer speaks a protocol version this side does not."""

    code = 567
    message = "Unsupported protocol version."


class MalformedHeader(RelayError):
    """568: the x-mte-relay header does not follow the grammar."""

    code = 568
    message = "Malformed relay header."


class MissingHeader(RelayError):
    """569: a required header (x-mte-relay, x-mte-relay-eh) is absent."""

    code = 569
    message = "Missing required header."


ERRORS_BY_CODE: dict[int, type[RelayError]] = {
    cls.code: cls
    for cls in (
        RepairRequired, StateNotFound, EncodeFailed, DecodeFailed, StateUnavailable,
        ReseedRequired, StatusNotSuccessful, InvalidClientId, UnsupportedVersion,
        MalformedHeader, MissingHeader,
    )
}


def error_for_code(code: int, info: str | None = None) -> RelayError:
    """Rebuild the typed error a client received as an HTTP status code.

    Raises ``KeyError`` for codes outside 559..569 so callers do not mistake
    an ordinary upstream status for a relay verdict.
    """
    return ERRORS_BY_CODE[code](info)


class PairingError(ValueError):
    """A pairing message is malformed; ``field`` names the JSON path."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def with_prefix(self, prefix: str) -> "PairingError":
        """The same error with ``prefix`` (e.g. ``"[3]"``) put before the field."""
        if not self.field:
            field = prefix
        else:
            field = prefix + ("" if self.field.startswith("[") else ".") + self.field
        return type(self)(field, self.reason)


class MalformedPairRequest(PairingError):
    """The relay got an invalid pair request; answered 400, not a 55x."""

    def to_json(self) -> dict[str, Any]:
        """The 400 response body (nothing of a pairing reaches any upstream)."""
        return {"error": "Malformed pair request.", "code": 400,
                "reason": self.reason, "field": self.field, "upstreamReached": "no"}


class MalformedPairResponse(PairingError):
    """The client got an invalid pair response from the relay."""
