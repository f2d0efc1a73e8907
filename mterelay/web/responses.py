"""JSON answers, the one shape every relay-made response has.

Every error the relay makes itself, on every route, is
``{"error": message, "code": status, "reason": text, "upstreamReached":
"no"|"maybe", ...route-specific members}`` with the same
``x-mte-upstream-reached`` header (docs/protocol.md section 10.1), so a
client (a browser with ``JSON.parse``, relay A, ``RelayClient``) needs one
parser and one rule to decide whether sending the request again is safe.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.logger import Logger
from twisted.web.iweb import IRequest

from mterelay.http.names import REACHED_HEADER
from mterelay.protocol.errors import RelayError
from mterelay.web.request import RelayRequest

log = Logger(namespace="mterelay.web")

#: On every relay-made error answer: may anything of the request have reached
#: the upstream?  ``no`` is a promise (refused before forwarding, or the
#: upstream connection never opened); ``maybe`` promises nothing.
NOT_REACHED, MAYBE_REACHED = "no", "maybe"

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


def error_payload(status: int, message: str, reason: str | None,
                  upstream_reached: str = NOT_REACHED, **extra: Any) -> dict[str, Any]:
    """The one error shape (spec 10.1); ``reason`` defaults to the message."""
    if upstream_reached not in (NOT_REACHED, MAYBE_REACHED):
        raise ValueError(f"upstream_reached must be 'no' or 'maybe', not {upstream_reached!r}")
    payload: dict[str, Any] = {"error": message, "code": status,
                               "reason": reason or message.rstrip(".")}
    payload.update(extra)
    payload["upstreamReached"] = upstream_reached
    return payload


def error_body(
    request: IRequest, status: int, message: str, reason: str | None = None,
    upstream_reached: str = NOT_REACHED, **extra: Any
) -> bytes:
    """An error answer in the one shape, logged once at info.

    ``reason`` is a longer explanation naming what was wrong; it is sent to the
    client (it never contains secrets or payload data) and logged.
    ``upstream_reached`` is ``no`` unless the upstream request was started.
    """
    _log_refusal(request, status, message, reason)
    return unlogged_error_body(request, status, message, reason, upstream_reached, **extra)


def unlogged_error_body(
    request: IRequest, status: int, message: str, reason: str | None = None,
    upstream_reached: str = NOT_REACHED, **extra: Any
) -> bytes:
    """:func:`error_body` for a failure the caller has already logged (once)."""
    payload = error_payload(status, message, reason, upstream_reached, **extra)
    request.setHeader(REACHED_HEADER, upstream_reached.encode("ascii"))
    return json_body(request, status, payload)


def request_id(request: IRequest) -> str | None:
    """The id :class:`~mterelay.web.site.RelaySite` gave the request.

    None for a request the site has not seen, and for one the relay did not
    make (Twisted's ``DummyRequest`` in unit tests): only a
    :class:`~mterelay.web.request.RelayRequest` carries the relay's state.
    """
    return request.request_id if isinstance(request, RelayRequest) else None


def _log_refusal(request: IRequest, status: int, message: str, reason: str | None) -> None:
    # The site counts refusals by code and message once the answer is sent.
    if isinstance(request, RelayRequest):
        request.refusal = message
    log.info(
        "refused {method} {path}: {status} {message}{detail}",
        method=request.method.decode("latin-1"),
        path=request.path.decode("latin-1")[:200],
        status=status,
        message=message,
        detail=f" ({reason})" if reason else "",
        request_id=request_id(request),
    )


def relay_error_body(request: IRequest, error: RelayError,
                upstream_reached: str = NOT_REACHED) -> bytes:
    """A 55x answer in the one error shape, logged once."""
    return error_body(request, error.code, error.message, error.info, upstream_reached)
