"""The response a :class:`~mterelay.client.RelayClient` hands back: an IResponse.

It looks like any twisted.web response, so ``treq.content``, ``treq.json_content``
and ``treq.collect`` work on it unchanged; ``sealed`` tells an authentic,
decrypted upstream answer (True) from a relay-made clear error (False).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IClientRequest, IResponse
from zope.interface import implementer

from mterelay.http.bodies import Still

__all__ = ["RelayResponse", "PlainRequest", "deliver_bytes"]


@implementer(IClientRequest)
@attrs.define
class PlainRequest:
    """What the caller asked for, in clear (not what went over the wire)."""

    method: bytes
    absoluteURI: bytes
    headers: Headers


@implementer(IResponse)
class RelayResponse:
    """A decrypted response (``sealed=True``) or a relay's clear error (``sealed=False``).

    ``length`` is the plaintext length when the wire length told it, else
    UNKNOWN_LENGTH.  The body can be delivered once, like any IResponse.

    ``headers`` of a sealed response are the authenticated (sealed) ones,
    plus the clear ones the request explicitly let the relay send in clear
    (``response_headers=[...]``).  ``clear_headers`` holds every clear
    end-to-end header of the wire response: unauthenticated, anybody on the
    path may have added or changed them.  For a clear error both are the
    wire headers (none of it is authenticated).
    """

    version = (b"HTTP", 1, 1)
    previousResponse = None

    def __init__(self, code: int, phrase: bytes, headers: Headers, length: int | object,
                 request: IClientRequest, deliver: Callable[[Any], None], *,
                 sealed: bool, clear_headers: Headers | None = None) -> None:
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.clear_headers = headers if clear_headers is None else clear_headers
        self.length = length
        self.request = request
        self.sealed = sealed
        self._deliver: Callable[[Any], None] | None = deliver

    def deliverBody(self, protocol: Any) -> None:
        """Stream the (decrypted) body into ``protocol``; only once."""
        deliver, self._deliver = self._deliver, None
        if deliver is None:
            raise RuntimeError("the response body was already delivered")
        deliver(protocol)

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response  # type: ignore[misc]

    def __repr__(self) -> str:
        kind = "sealed" if self.sealed else "clear"
        return f"<RelayResponse {self.code} {kind}>"


def deliver_bytes(data: bytes) -> Callable[[Any], None]:
    """A body already read and opened (empty bodies, bodyEnc=0 answers)."""

    def deliver(protocol: Any) -> None:
        protocol.makeConnection(Still())
        if data:
            protocol.dataReceived(data)
        protocol.connectionLost(Failure(ResponseDone("no more body")))

    return deliver

