"""Sealing one request and opening its response: protocol.md section 8.1.

Pure and reactor-free: headers in, wire headers and ciphers out.  The I/O
layer (:mod:`mterelay.client.relay`) feeds bodies through the ciphers this
module returns.  Every check the spec asks of a client when it opens a
response lives here, so it can be tested without a network.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

import attrs
from twisted.web.http_headers import Headers

from mterelay.http import names
from mterelay.protocol import retry
from mterelay.protocol.errors import DecodeFailed, RelayError
from mterelay.protocol.header import (MODE_MKE, MODE_MKR, MODE_MTE, MODES, URL_HEADER,
                                      RelayHeader)
from mterelay.protocol.keys import PairKeys
from mterelay.protocol.records import BODY_LENGTH_CONTROL, parse_body_length
from mterelay.protocol.sealing import Direction, MessageCipher
from mterelay.http.headers import RepeatedHeader, header_text, nominated_text, single_value

__all__ = [
    "RELAY_HEADER", "ITEM_HEADER", "RESPONSE_HEADERS_CONTROL", "SEALED_CONTENT_TYPE",
    "HeaderList", "HeadersInput", "PlainHeaders", "SealOptions", "OutgoingRequest",
    "OpenedResponse",
    "normalize_headers", "end_to_end", "seal_request", "open_response", "parse_relay_error",
]

RELAY_HEADER = names.text(names.RELAY_HEADER)
ITEM_HEADER = names.text(names.ITEM_HEADER)
RESPONSE_HEADERS_CONTROL = names.text(names.RESPONSE_HEADERS_CONTROL)
SEALED_CONTENT_TYPE = names.text(names.SEALED_CONTENT_TYPE)
CONTENT_TYPE = names.text(names.CONTENT_TYPE)
#: Never sent by the caller's choice: they describe one hop (the agent sets
#: Host and the framing itself), and ``x-mte-*`` is the protocol's namespace.
_FRAMING = frozenset({"host", "content-length", "transfer-encoding"})

#: ``[(lowercase name, value), ...]`` in field-line order.
HeaderList = list[tuple[str, str]]
HeaderValue = Union[str, bytes, Sequence[Union[str, bytes]]]


class PlainHeaders(list):  # type: ignore[type-arg]
    """A :data:`HeaderList` already in :func:`normalize_headers` form.

    A caller that builds the request's headers itself (the outbound relay,
    from the application's request) hands them over as is instead of
    through a twisted ``Headers`` that would only be read back.
    """


#: twisted ``Headers``, a mapping of str/bytes names to values (like treq),
#: or :class:`PlainHeaders`.
HeadersInput = Union[Headers, Mapping[Any, HeaderValue], PlainHeaders, None]


def _name(name: str | bytes) -> str:
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    return name.strip().lower()


def normalize_headers(headers: HeadersInput) -> HeaderList:
    """The caller's headers as ``(lowercase name, text)`` pairs, order kept.

    Accepts twisted ``Headers`` or a mapping of name to a str/bytes value or
    a list of them, like treq.
    """
    if headers is None:
        return []
    if isinstance(headers, PlainHeaders):
        return headers
    if isinstance(headers, Headers):
        items: Iterable[tuple[Any, Any]] = headers.getAllRawHeaders()
    elif isinstance(headers, Mapping):
        items = headers.items()
    else:
        raise TypeError("headers must be a dict or twisted.web.http_headers.Headers")
    result: HeaderList = []
    for name, values in items:
        if isinstance(values, (str, bytes)):
            values = [values]
        for value in values:
            result.append((_name(name), header_text(value)))
    return result


def end_to_end(headers: HeaderList) -> HeaderList:
    """Drop hop-by-hop (also those a Connection header names), framing and x-mte-*.

    ``x-mte-*`` headers are the protocol's; the relay would drop them anyway
    (spec 8.3), so the client does not send what the caller cannot mean.
    """
    drop = nominated_text(headers) | _FRAMING
    return [(n, v) for n, v in headers if n not in drop and not n.startswith("x-mte-")]


def _group(headers: HeaderList) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in headers:
        grouped.setdefault(name, []).append(value)
    return grouped


def _check_names(value: object, what: str) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"{what} must be a list of header names")
    names = tuple(_name(name) for name in value)
    if not all(names):
        raise ValueError(f"{what}: empty header name")
    return names


@attrs.frozen
class SealOptions:
    """What a client seals; the defaults seal everything (the seed's outbound options).

    * ``seal_url``: the path and query travel sealed (the wire path is a token).
    * ``seal_headers``: ``"all"`` end-to-end headers sealed, ``"none"`` (only
      ``content-type`` sealed, ``headersEnc=0``) or a list of names sealed (plus
      ``content-type``), the others in clear.
    * ``framing``: ``"MKR"`` (records: streamed, unlimited, each piece sent as
      soon as it is there, both ways; the default), ``"MKE"`` (fixed 64 KiB
      chunks, the framing of relays older than records) or ``"MTE"`` (one
      item, at most 2**30 bytes, buffered whole on both sides).  ``MKR``
      falls back to ``MKE`` with a relay that does not announce records.
    * ``response_headers``: ``"*"`` (the relay seals every response header) or
      the names to seal (``content-type`` always is); the rest come back in clear.
    """

    seal_url: bool = True
    seal_headers: str | tuple[str, ...] = "all"
    framing: str = MODE_MKR
    response_headers: str | tuple[str, ...] = "*"

    @classmethod
    def build(cls, *, seal_url: bool = True, seal_headers: str | Iterable[str] = "all",
              framing: str = MODE_MKR, response_headers: str | Iterable[str] = "*"
              ) -> "SealOptions":
        """Validate and normalize user-facing option values."""
        if not isinstance(seal_url, bool):
            raise ValueError("seal_url must be a bool")
        if seal_headers not in ("all", "none"):
            seal_headers = _check_names(seal_headers, "seal_headers")
        if framing not in MODES:
            raise ValueError("framing must be 'MKR', 'MKE' or 'MTE'")
        if response_headers != "*":
            response_headers = _check_names(response_headers, "response_headers")
        return cls(seal_url, seal_headers, framing, response_headers)  # type: ignore[arg-type]

    @property
    def headers_enc(self) -> bool:
        return self.seal_headers != "none"

    def sealed_names(self, headers: HeaderList) -> frozenset[str]:
        """Which of these header names go into the headers item."""
        if self.seal_headers == "all":
            return frozenset(name for name, _ in headers)
        if self.seal_headers == "none":
            return frozenset({CONTENT_TYPE})
        return frozenset(self.seal_headers) | {CONTENT_TYPE}


@attrs.frozen
class OutgoingRequest:
    """One sealed request, ready for the agent (the body is sealed by ``cipher``)."""

    header: RelayHeader
    cipher: MessageCipher
    target: str
    headers: HeaderList
    has_body: bool
    #: The ``response_headers`` choice it was sealed with ("*" or names).
    response_headers: str | tuple[str, ...] = "*"

    def wire_headers(self) -> Headers:
        """The clear headers as twisted ``Headers`` (values UTF-8)."""
        wire = Headers()
        for name, value in self.headers:
            wire.addRawHeader(name.encode("ascii"), value.encode("utf-8"))
        return wire


def seal_request(keys: PairKeys, client_id: str, seq: int, method: str, target: str,
                 headers: HeaderList, *, has_body: bool, options: SealOptions,
                 records: bool = False, body_length: int | None = None,
                 fixed_path: str | None = None) -> OutgoingRequest:
    """Build the ``x-mte-relay`` header, seal the url and headers items.

    ``records``: the relay announced record framing; with ``framing="MKR"``
    the request then says ``streaming=2`` and a body is sent as records
    (declaring ``body_length`` when known, spec 7.3).  Without it ``MKR``
    means ``MKE``, exactly what older clients send.

    ``target`` is the origin-form path+query; ``headers`` should already be
    :func:`end_to_end`.  ``fixed_path``: the path the relay announced for
    sealed-URL requests (spec 5.2); with ``seal_url`` the request goes there
    and the url token travels in ``x-mte-relay-url`` - sealed exactly as in
    the per-request form.  ``has_body`` says a sealed body follows (bodyEnc=1,
    Content-Length or chunked); the caller then seals it with
    ``result.cipher.body_sealer()``.  Raises 561 for a target or header the
    item formats cannot carry.
    """
    records = records and options.framing == MODE_MKR
    framing = options.framing
    if framing == MODE_MKR and not records:
        framing = MODE_MKE
    header = RelayHeader(
        client_id=client_id, pair_id=keys.pair_id,
        # With no body the mode frames nothing; the spec says send MTE.
        mode=framing if has_body else MODE_MTE,
        url_enc=options.seal_url, headers_enc=options.headers_enc,
        body_enc=has_body, streaming=True, seq=seq, records=records)
    cipher = MessageCipher(keys, header, Direction.C2S)
    wire_target = "/" + cipher.seal_url(target) if options.seal_url else target
    sealed_names = options.sealed_names(headers)
    sealed = [(n, v) for n, v in headers if n in sealed_names]
    clear = [(n, v) for n, v in headers if n not in sealed_names]
    if options.response_headers != "*":
        control = (RESPONSE_HEADERS_CONTROL, ",".join(options.response_headers))
        (sealed if options.headers_enc else clear).append(control)
    if has_body and framing == MODE_MKR and body_length is not None:
        declared = (BODY_LENGTH_CONTROL, str(body_length))
        (sealed if options.headers_enc else clear).append(declared)
    token = cipher.seal_request_headers(_group(sealed), method, wire_target, has_body=has_body)
    wire: HeaderList = [(RELAY_HEADER, header.format()), (ITEM_HEADER, token)]
    if fixed_path is not None and options.seal_url:
        wire.append((URL_HEADER, wire_target[1:]))
        wire_target = fixed_path
    if has_body:
        wire.append((CONTENT_TYPE, SEALED_CONTENT_TYPE))
    wire.extend(clear)
    return OutgoingRequest(header, cipher, wire_target, wire, has_body,
                           options.response_headers)


@attrs.frozen
class OpenedResponse:
    """A response whose header checked out and whose headers item opened.

    ``headers`` is what a caller may take as the upstream's: the sealed
    headers, plus - only when the request asked for some response headers
    in clear - the clear ones it let the relay send in clear.  ``clear`` is
    every clear end-to-end header of the wire response, unauthenticated,
    for inspection only.
    """

    header: RelayHeader
    cipher: MessageCipher
    headers: HeaderList
    clear: HeaderList = attrs.field(factory=list)
    #: An MKR body's declared plaintext length (spec 7.3), None if not declared.
    body_length: int | None = None

    @property
    def body_enc(self) -> bool:
        return self.header.body_enc


def _single(headers: HeaderList, name: str) -> str:
    try:
        value = single_value([v for n, v in headers if n == name], name)
    except RepeatedHeader:
        value = None
    if value is None:
        raise DecodeFailed(f"response must carry exactly one {name} header")
    return value


def open_response(keys: PairKeys, request: RelayHeader, status: int, wire: HeaderList,
                  response_headers: str | Sequence[str] = "*") -> OpenedResponse:
    """Check the response's ``x-mte-relay`` against our own request, open its headers.

    The response header must repeat our client id, pair id, seq and streaming
    flag, with urlEnc=0, headersEnc=1 and MKE only if we asked for streaming;
    the items are opened under the header built from *our* request (spec 5),
    so an old response cannot be replayed as the answer to a new request.
    Every failure is 562 (:class:`DecodeFailed`).

    The returned headers are the sealed ones only (spec 8.1): anybody on the
    path can add a clear header, so a clear ``Set-Cookie`` must not pass for
    the upstream's.  ``response_headers`` is the request's choice: with
    ``"*"`` the relay sealed every header and no clear one is taken; with a
    list of names the relay sent the others in clear, so clear headers not
    named in it (and not sealed) are taken too - unauthenticated, as the
    caller asked.  A clear header never replaces or adds to a sealed name.
    """
    value = _single(wire, RELAY_HEADER)
    try:
        received = RelayHeader.parse(value)
    except RelayError as error:
        raise DecodeFailed(f"response x-mte-relay: {error.info}") from None
    try:
        expected = request.for_response(mode=received.mode, body_enc=received.body_enc)
    except ValueError:
        raise DecodeFailed(f"{received.mode} response to a request that did not accept it"
                           ) from None
    if received != expected:
        raise DecodeFailed("response x-mte-relay does not answer this request")
    cipher = MessageCipher(keys, expected, Direction.S2C)
    sealed = cipher.open_response_headers(_single(wire, ITEM_HEADER), status)
    declared = sealed.pop(BODY_LENGTH_CONTROL, None)
    body_length = None
    if declared is not None and expected.mode == MODE_MKR and expected.body_enc:
        if len(declared) != 1:
            raise DecodeFailed(f"{BODY_LENGTH_CONTROL} must have one value")
        body_length = parse_body_length(declared[0])
    clear = end_to_end([(n, v) for n, v in wire if n != CONTENT_TYPE])
    merged = [(name, v) for name, values in sealed.items() for v in values]
    if response_headers != "*":
        # cache-control is always sealed; a clear one is the relay's no-store.
        asked = {*response_headers, CONTENT_TYPE, "cache-control"}
        merged.extend((n, v) for n, v in clear if n not in asked and n not in sealed)
    return OpenedResponse(expected, cipher, merged, clear, body_length)


def parse_relay_error(status: int, body: bytes, headers: Headers | None = None) -> RelayError:
    """The typed error of a relay-made 55x answer, read from Twisted ``Headers``.

    The rule itself is :func:`mterelay.protocol.retry.parse_relay_error`;
    this adapter only takes ``x-mte-upstream-reached`` from the answer's
    headers (when at hand) for where the JSON has no ``upstreamReached``.
    """
    reached = None if headers is None else [
        value.decode("latin-1") for value in headers.getRawHeaders(b"x-mte-upstream-reached", [])]
    return retry.parse_relay_error(status, body, reached)
