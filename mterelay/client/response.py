"""The response a :class:`~mterelay.client.RelayClient` hands back: an IResponse.

It looks like any twisted.web response, so ``treq.content``, ``treq.json_content``
and ``treq.collect`` work on it unchanged; ``sealed`` tells an authentic,
decrypted upstream answer (True) from a relay-made clear error (False).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IClientRequest, IResponse
from zope.interface import implementer

from mterelay.http.bodies import Still

__all__ = ["RelayResponse", "PlainRequest", "deliver_bytes"]


def _as_headers(headers: Headers | Sequence[tuple[str, str]], names: str = "latin-1"
                ) -> Headers:
    """twisted ``Headers`` of a ``(name, text)`` list (names in ``names``, values UTF-8)."""
    if isinstance(headers, Headers):
        return headers
    built = Headers()
    for name, value in headers:
        built.addRawHeader(name.encode(names), value.encode("utf-8"))
    return built


@implementer(IClientRequest)
class PlainRequest:
    """What the caller asked for, in clear (not what went over the wire).

    ``headers`` may be given as a ``(name, text)`` list: the twisted
    ``Headers`` are built when first read (most callers never do).
    """

    def __init__(self, method: bytes, absoluteURI: bytes,  # noqa: N803 (IClientRequest)
                 headers: Headers | Sequence[tuple[str, str]]) -> None:
        self.method = method
        self.absoluteURI = absoluteURI
        self._headers = headers

    @property
    def headers(self) -> Headers:
        headers = self._headers
        if not isinstance(headers, Headers):
            headers = self._headers = _as_headers(headers)
        return headers

    def __repr__(self) -> str:
        return f"PlainRequest(method={self.method!r}, absoluteURI={self.absoluteURI!r})"


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

    def __init__(self, code: int, phrase: bytes, headers: Headers | Sequence[tuple[str, str]],
                 length: int | object, request: IClientRequest,
                 deliver: Callable[[Any], None], *, sealed: bool,
                 clear_headers: Headers | Sequence[tuple[str, str]] | None = None) -> None:
        self.code = code
        self.phrase = phrase
        #: ``headers`` as given when it is a ``(lowercase name, text)`` list
        #: (a decrypted answer's): a caller that copies them elsewhere reads
        #: these and the twisted ``Headers`` are never made.  Else None.
        self.header_pairs: Sequence[tuple[str, str]] | None = (
            None if isinstance(headers, Headers) else headers)
        #: Headers, or a ``(name, text)`` list made into Headers when first read.
        self._headers = headers
        self._clear = clear_headers
        self.length = length
        self.request = request
        self.sealed = sealed
        self._deliver: Callable[[Any], None] | None = deliver

    @property
    def headers(self) -> Headers:  # type: ignore[override]
        headers = self._headers
        if not isinstance(headers, Headers):
            headers = self._headers = _as_headers(headers, "ascii")
        return headers

    @headers.setter
    def headers(self, headers: Headers) -> None:
        self._headers, self.header_pairs = headers, None

    @property
    def clear_headers(self) -> Headers:
        clear = self._clear
        if clear is None:
            return self.headers
        if not isinstance(clear, Headers):
            clear = self._clear = _as_headers(clear)
        return clear

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

