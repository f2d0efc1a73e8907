"""How a client reacts to a relay's refusal (spec 10): the resend rule, written once.

Both clients - the Twisted :class:`~mterelay.client.RelayClient` and the
blocking :class:`~mterelay.syncclient.SyncRelayClient` - take every decision
about a relay-made 55x answer from here, so the rule of spec 10.2 ("resend
once, and only when nothing reached the upstream or sending twice is
harmless") cannot drift between them.  Pure: no reactor, no HTTP library;
the callers do the I/O and the bookkeeping (dropping a pair, forgetting the
client id) and ask this module what the answer means.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from mterelay.protocol.errors import RelayError, error_for_code

__all__ = ["RETRY_REPAIR", "RETRY_REVALIDATE", "PAIR_ID_IN_USE", "IDEMPOTENT_METHODS",
           "REACHED_VALUES", "assumed_upstream_reached", "may_resend", "parse_relay_error",
           "refusal_summary", "retry_after_seconds"]

#: Relay answers that condemn the pair: replace it and retry once.
RETRY_REPAIR = frozenset({559, 560, 562, 563, 564})
#: The client id was refused: validate again, re-pair, retry once.
RETRY_REVALIDATE = 566
#: The relay's answer to a pairing whose pairId is already a pair (spec 2, 10).
PAIR_ID_IN_USE = 409
#: RFC 9110 section 9.2.2: sending these twice has the effect of sending once.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
#: What ``upstreamReached`` / ``x-mte-upstream-reached`` may say (spec 10.1).
REACHED_VALUES = ("no", "maybe")


def assumed_upstream_reached(code: int, streamed: bool) -> str:
    """What to assume of a refusal that does not say whether the upstream was reached.

    A relay older than spec 10.1 sends neither ``upstreamReached`` nor the
    header.  Only a streamed (MKE/MKR) body can have failed to open after
    forwarding began, and only as a 562; anything else was refused before.
    """
    return "maybe" if code == 562 and streamed else "no"


def may_resend(code: int, upstream_reached: str | None, method: str, replayable: bool,
               streamed: bool) -> bool:
    """Spec 10.2: may a request refused with ``code`` be sent again (once)?

    Only the recoverable codes (566: validate again; 559, 560, 562, 563, 564:
    a new pair) are ever resent, only when the body can be produced again
    (``replayable``: no body, bytes, a seekable file), and only when nothing
    reached the upstream or the method is idempotent - a POST whose streamed
    body may have reached the upstream in part is never sent twice.
    ``upstream_reached`` None means the relay did not say (see
    :func:`assumed_upstream_reached`, which ``streamed`` feeds).  Whether
    this request was already resent is the caller's count: once at most.
    ``method`` is the upper-case method name.
    """
    if code != RETRY_REVALIDATE and code not in RETRY_REPAIR:
        return False
    if not replayable:
        return False
    reached = (upstream_reached if upstream_reached is not None
               else assumed_upstream_reached(code, streamed))
    return reached == "no" or method in IDEMPOTENT_METHODS


def parse_relay_error(status: int, body: bytes,
                      reached_header: Sequence[str] | None = None) -> RelayError:
    """The typed error of a relay-made 55x answer (clear JSON, unauthenticated).

    The JSON's ``reason`` (or, from relays before the one error shape,
    ``info``) becomes the error's info; a body that is not the expected JSON
    still yields the error of the status code.  ``upstream_reached`` is the
    answer's ``upstreamReached`` member or, failing that, its one
    ``x-mte-upstream-reached`` header value (``reached_header``: every value
    the answer carried), None when it has neither (an older relay): the
    caller, who knows how the request was framed, decides then.
    """
    info = None
    try:
        payload = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        payload = None
    reached = None
    if isinstance(payload, dict):
        for key in ("reason", "info"):
            if isinstance(payload.get(key), str):
                info = payload[key][:300]
                break
        reached = payload.get("upstreamReached")
    if reached not in REACHED_VALUES and reached_header is not None:
        reached = reached_header[0].strip() if len(reached_header) == 1 else None
    error = error_for_code(status, info)
    error.remote = True
    error.upstream_reached = reached if reached in REACHED_VALUES else None
    return error


def refusal_summary(body: bytes) -> str:
    """A short text of a refused handshake's body (``error; reason; field``), for messages."""
    try:
        payload = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return body[:200].decode("utf-8", "replace")
    if isinstance(payload, dict):
        parts = [str(payload[k]) for k in ("error", "reason", "field") if k in payload]
        return "; ".join(parts)[:300]
    return ""


def retry_after_seconds(values: Sequence[bytes] | None, default: float = 1.0,
                        ceiling: float = 3600.0) -> float:
    """A ``Retry-After`` header as seconds: delta-seconds only, else ``default``.

    Capped so a hostile relay cannot silence a client for ever with one answer.
    """
    if not values:
        return default
    text = values[0].strip()
    if not text.isdigit():
        return default
    return min(float(int(text)), ceiling) or default
