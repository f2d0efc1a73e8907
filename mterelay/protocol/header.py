"""The clear ``x-mte-relay`` request/response header.

``clientId,pairId,mode,urlEnc,headersEnc,bodyEnc,streaming,seq``

``streaming`` is ``0``, ``1`` (the answer may be chunked, MKE) or ``2`` (it may
also be record-framed, MKR); ``mode`` is ``MTE``, ``MKE`` or ``MKR``.  A client
sends ``MKR`` or ``2`` only to a relay that announced record framing (its
``HEAD /api/mte-relay`` answer, :data:`FRAMING_HEADER`), so old relays never
see them.

It travels in clear because the relay needs it to find the pair before it can
decrypt anything; its flags are bound into every item's AAD (see
:meth:`RelayHeader.flags_byte`) so flipping one in transit breaks decryption
instead of changing how the relay interprets the message.
"""

from __future__ import annotations

import re

import attrs

from .clientid import is_client_id
from .errors import InvalidClientId, MalformedHeader

__all__ = ["MODE_MTE", "MODE_MKE", "MODE_MKR", "MODES", "MAX_SEQ", "MAX_HEADER_LENGTH",
           "FRAMING_HEADER", "RELAY_FRAMINGS", "RelayHeader", "is_pair_id",
           "parse_framings", "FIXED_PATH", "FIXED_PATH_HEADER", "URL_HEADER",
           "parse_fixed_path"]

MODE_MTE = "MTE"
MODE_MKE = "MKE"
#: Record framing: variable-length, length-prefixed sealed records (spec 7).
MODE_MKR = "MKR"
MODES = (MODE_MTE, MODE_MKE, MODE_MKR)
#: Answer header of ``HEAD /api/mte-relay`` listing the body framings a relay
#: accepts and can answer with; absent on relays older than record framing.
FRAMING_HEADER = "x-mte-relay-framing"
RELAY_FRAMINGS = "MTE,MKE,MKR"
#: The fixed path of sealed-URL requests (spec 5.2): every request of a
#: client has the same URL, so a browser sends one CORS preflight per origin
#: and Access-Control-Max-Age instead of one per request.
FIXED_PATH = "/api/mte-relay/request"
#: Answer header of ``HEAD /api/mte-relay`` naming the fixed path the relay
#: accepts; absent on relays older than it.
FIXED_PATH_HEADER = "x-mte-relay-fixed-path"
#: Request header carrying the url item's token on the fixed path.
URL_HEADER = "x-mte-relay-url"
_FIXED_PATH_RE = re.compile(r"(/[A-Za-z0-9_~-][A-Za-z0-9._~-]*){1,8}")
#: Largest sequence number: 2**53 - 1 keeps it exact in JavaScript numbers.
MAX_SEQ = 2**53 - 1
#: Far above the longest valid header (101 + 1 + 64 + 12 + 1 + 16 = 195).
MAX_HEADER_LENGTH = 256

_PAIR_ID_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_SEQ_RE = re.compile(r"0|[1-9][0-9]{0,15}")
_FLAG = {"0": False, "1": True}

_BIT_MKE = 0x01
_BIT_URL = 0x02
_BIT_HEADERS = 0x04
_BIT_BODY = 0x08
_BIT_STREAMING = 0x10
_BIT_MKR = 0x20
_BIT_RECORDS = 0x40


def parse_framings(value: str | bytes | None) -> frozenset[str]:
    """The framings an ``x-mte-relay-framing`` value announces (unknown tokens ignored).

    No header (an older relay) means MTE and MKE only.
    """
    if value is None:
        return frozenset({MODE_MTE, MODE_MKE})
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    tokens = {token.strip(" \t") for token in value.split(",")}
    return frozenset(tokens & set(MODES)) | {MODE_MTE, MODE_MKE}


def is_pair_id(value: object) -> bool:
    """True for 16..64 characters of ``[A-Za-z0-9_-]``."""
    return isinstance(value, str) and _PAIR_ID_RE.fullmatch(value) is not None


def _check_client_id(instance: object, attribute: object, value: object) -> None:
    if not is_client_id(value):
        raise ValueError("client_id must be <uuid4>.<64 hex>")


def check_pair_id(instance: object, attribute: object, value: object) -> None:
    """attrs validator shared by every type that carries a pair id."""
    if not is_pair_id(value):
        raise ValueError("pair_id must be 16..64 chars of [A-Za-z0-9_-]")


def _check_mode(instance: object, attribute: object, value: object) -> None:
    if value not in MODES:
        raise ValueError("mode must be 'MTE', 'MKE' or 'MKR'")


def _check_flag(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if type(value) is not bool:
        raise ValueError(f"{attribute.name} must be a bool")


def _check_records(instance: "RelayHeader", attribute: object, value: object) -> None:
    if type(value) is not bool:
        raise ValueError("records must be a bool")
    if value and not instance.streaming:
        raise ValueError("records (streaming=2) implies streaming")


def _check_seq(instance: object, attribute: object, value: object) -> None:
    if type(value) is not int or not 0 <= value <= MAX_SEQ:
        raise ValueError("seq must be an int in 0..2**53-1")


_new = object.__new__
_set = object.__setattr__  # how attrs' own __init__ fills a frozen instance


@attrs.frozen
class RelayHeader:
    """A parsed ``x-mte-relay`` header; always valid once constructed."""

    client_id: str = attrs.field(validator=_check_client_id)
    pair_id: str = attrs.field(validator=check_pair_id)
    mode: str = attrs.field(validator=_check_mode)
    url_enc: bool = attrs.field(validator=_check_flag)
    headers_enc: bool = attrs.field(validator=_check_flag)
    body_enc: bool = attrs.field(validator=_check_flag)
    streaming: bool = attrs.field(validator=_check_flag)
    seq: int = attrs.field(validator=_check_seq)
    #: ``streaming=2``: the sender accepts a record-framed (MKR) answer too.
    records: bool = attrs.field(default=False, validator=_check_records)

    @classmethod
    def parse(cls, value: str | bytes) -> "RelayHeader":
        """Parse a header value strictly.

        Raises :class:`MalformedHeader` (568) with a reason naming the bad
        field, except for a client-id field that is not of the client-id
        grammar, which raises :class:`InvalidClientId` (566) so the client
        reacts by re-validating rather than giving up.  Only optional
        whitespace around the whole value (RFC 9110 OWS) is tolerated.
        """
        if isinstance(value, (bytes, bytearray)):
            try:
                value = bytes(value).decode("ascii")
            except UnicodeDecodeError:
                raise MalformedHeader("header is not ASCII") from None
        if not isinstance(value, str):
            raise MalformedHeader("header is not a string")
        # The limit applies to the value as received, whatever its type.
        if len(value) > MAX_HEADER_LENGTH:
            raise MalformedHeader("header too long")
        if not value.isascii():
            raise MalformedHeader("header is not ASCII")
        value = value.strip(" \t")
        fields = value.split(",")
        if len(fields) != 8:
            raise MalformedHeader(f"expected 8 comma-separated fields, got {len(fields)}")
        client_id, pair_id, mode, url_enc, headers_enc, body_enc, streaming, seq = fields
        if not is_client_id(client_id):
            raise InvalidClientId("client id field is not <uuid4>.<64 hex>")
        if not is_pair_id(pair_id):
            raise MalformedHeader("pairId must be 16..64 chars of [A-Za-z0-9_-]")
        if mode not in MODES:
            raise MalformedHeader("mode must be MTE, MKE or MKR")
        flags = []
        for name, flag in (("urlEnc", url_enc), ("headersEnc", headers_enc),
                           ("bodyEnc", body_enc)):
            if flag not in _FLAG:
                raise MalformedHeader(f"{name} must be 0 or 1")
            flags.append(_FLAG[flag])
        if streaming not in ("0", "1", "2"):
            raise MalformedHeader("streaming must be 0, 1 or 2")
        if _SEQ_RE.fullmatch(seq) is None or int(seq) > MAX_SEQ:
            raise MalformedHeader("seq must be a decimal in 0..2^53-1 without leading zeros")
        # Every field was just checked against the grammar, which implies
        # every attrs validator: build without running them a second time.
        return cls._checked(client_id, pair_id, mode, flags[0], flags[1], flags[2],
                            streaming != "0", int(seq), streaming == "2")

    @classmethod
    def _checked(cls, client_id: str, pair_id: str, mode: str, url_enc: bool,
                 headers_enc: bool, body_enc: bool, streaming: bool, seq: int,
                 records: bool) -> "RelayHeader":
        """An instance of values the caller already validated (no validators run).

        Only for :meth:`parse` (which checked the wire text field by field)
        and :meth:`for_response` (fields of a valid header plus arguments it
        checks itself); anything else goes through the attrs ``__init__``.
        """
        header = _new(cls)
        _set(header, "client_id", client_id)
        _set(header, "pair_id", pair_id)
        _set(header, "mode", mode)
        _set(header, "url_enc", url_enc)
        _set(header, "headers_enc", headers_enc)
        _set(header, "body_enc", body_enc)
        _set(header, "streaming", streaming)
        _set(header, "seq", seq)
        _set(header, "records", records)
        return header

    def format(self) -> str:
        """The canonical header value (``parse(h.format()) == h``)."""
        return ",".join((
            self.client_id, self.pair_id, self.mode,
            "1" if self.url_enc else "0",
            "1" if self.headers_enc else "0",
            "1" if self.body_enc else "0",
            "2" if self.records else "1" if self.streaming else "0",
            str(self.seq),
        ))

    def flags_byte(self) -> int:
        """The header's flags packed into one AAD byte.

        bit 0 mode MKE, bit 1 urlEnc, bit 2 headersEnc, bit 3 bodyEnc,
        bit 4 streaming (1 or 2), bit 5 mode MKR, bit 6 streaming=2; the
        other bits are zero.  (Headers without MKR or 2 keep their old byte.)
        """
        return ((_BIT_MKE if self.mode == MODE_MKE else 0)
                | (_BIT_MKR if self.mode == MODE_MKR else 0)
                | (_BIT_RECORDS if self.records else 0)
                | (_BIT_URL if self.url_enc else 0)
                | (_BIT_HEADERS if self.headers_enc else 0)
                | (_BIT_BODY if self.body_enc else 0)
                | (_BIT_STREAMING if self.streaming else 0))

    def flags_bytes(self) -> bytes:
        """:meth:`flags_byte` as a one-byte string."""
        return bytes((self.flags_byte(),))

    def for_response(self, *, mode: str, body_enc: bool, headers_enc: bool = True) -> "RelayHeader":
        """The header the relay sends back with a response to this request.

        Same client id, pair id, seq and streaming value; no url item.  A
        chunked (MKE) response is only allowed when the request said
        ``streaming=1`` or ``2``, a record-framed (MKR) one only with ``2``.
        """
        if mode == MODE_MKE and not self.streaming:
            raise ValueError("an MKE response needs a request with streaming=1")
        if mode == MODE_MKR and not self.records:
            raise ValueError("an MKR response needs a request with streaming=2")
        # The other fields are this (valid) header's: only the new values
        # need the validators' checks, not the client id and pair id again.
        _check_mode(self, None, mode)
        if type(headers_enc) is not bool:
            raise ValueError("headers_enc must be a bool")
        if type(body_enc) is not bool:
            raise ValueError("body_enc must be a bool")
        return self._checked(self.client_id, self.pair_id, mode, False, headers_enc,
                             body_enc, self.streaming, self.seq, self.records)


def parse_fixed_path(value: str | bytes | None) -> str | None:
    """The fixed path an ``x-mte-relay-fixed-path`` value announces, or None.

    Only a plain absolute path is taken (no query, no dot segments, no
    percent-encoding): anything else is ignored and the client keeps the
    per-request form, which every relay accepts.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    value = value.strip(" \t")
    if len(value) > 128 or _FIXED_PATH_RE.fullmatch(value) is None:
        return None
    if any(segment in (".", "..") for segment in value.split("/")):
        return None
    return value
