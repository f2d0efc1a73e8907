"""JSON answers, the one shape every relay-made response has."""

from __future__ import annotations

import json
from typing import Any

from twisted.logger import Logger
from twisted.web.iweb import IRequest

from mterelay.protocol.errors import RelayError

log = Logger(namespace="mterelay.web")

# Twisted knows no reason phrases for the relay's 55x codes.
PHRASES = {
    559: b"Repair Required",
    560: b"State Not Found",
    561: b"Failed To Encode",
    562: b"Failed To Decode",
    563: b"State Unavailable",
    564: b"Reseed Required",
    565: b"Relay Failure",
    566: b"Invalid Client Id",
    567: b"Unsupported Protocol Version",
    568: b"Malformed Relay Header",
    569: b"Missing Required Header",
}


def json_body(request: IRequest, status: int, payload: Any) -> bytes:
    """Set status and JSON content type, return the encoded body."""
    request.setResponseCode(status, PHRASES.get(status))
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


def error_body(
    request: IRequest, status: int, message: str, reason: str | None = None, **extra: Any
) -> bytes:
    """An error answer ``{"error": message, "code": status}``, logged once at info.

    ``reason`` is a longer explanation naming what was wrong; it is sent to the
    client (it never contains secrets or payload data) and logged.
    """
    payload: dict[str, Any] = {"error": message, "code": status}
    if reason:
        payload["reason"] = reason
    payload.update(extra)
    _log_refusal(request, status, message, reason)
    return json_body(request, status, payload)


def request_id(request: IRequest) -> str | None:
    """The id :class:`~mterelay.web.site.RelaySite` gave the request (None outside a site)."""
    return getattr(request, "request_id", None)


def _log_refusal(request: IRequest, status: int, message: str, reason: str | None) -> None:
    # The site counts refusals by code and message once the answer is sent.
    request.mterelay_refusal = message  # type: ignore[attr-defined]
    log.info(
        "refused {method} {path}: {status} {message}{detail}",
        method=request.method.decode("latin-1"),
        path=request.path.decode("latin-1")[:200],
        status=status,
        message=message,
        detail=f" ({reason})" if reason else "",
        request_id=request_id(request),
    )


def relay_error(request: IRequest, error: RelayError) -> bytes:
    """A 55x answer: the protocol's ``{"error", "code"[, "info"]}`` body, logged once."""
    _log_refusal(request, error.code, error.message, error.info)
    return json_body(request, error.code, error.to_json())
