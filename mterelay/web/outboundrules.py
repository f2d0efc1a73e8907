"""The outbound role's rules, kept pure: token, remote relay origin, allow-list, options.

An application asks its local relay to encrypt a request for a remote relay
with a few ``x-mte-*`` headers.  Every check of those headers lives here,
reactor-free, so each rule is unit-testable and the request handler
(:mod:`mterelay.web.outbound`) only maps a :class:`Refused` to its answer.
``mterelay.service.config`` uses :class:`OriginPattern` to validate OUTBOUND_UPSTREAMS
at start-up.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from urllib.parse import urlsplit

from collections.abc import Sequence
from typing import Any

import attrs
import idna

from mterelay.http import names
from mterelay.http.headers import RepeatedHeader, is_token, single_value
from mterelay.http.refusal import Refused
from twisted.web.http_headers import Headers

__all__ = [
    "TOKEN_HEADER", "ENCODE_TYPE_HEADER", "ENCODE_HEADERS_HEADER",
    "ENCODE_URL_HEADER", "Refused", "Origin", "OriginPattern", "token_matches", "TokenCheck",
    "parse_origin", "peer_origin", "allowed", "seal_choices",
]

TOKEN_HEADER = names.OUTBOUND_TOKEN_HEADER
ENCODE_TYPE_HEADER = names.ENCODE_TYPE_HEADER
ENCODE_HEADERS_HEADER = names.ENCODE_HEADERS_HEADER
ENCODE_URL_HEADER = names.ENCODE_URL_HEADER

#: The seed's encode types, as framings: MTE seals the body as one item
#: (buffered whole, at most 64 MiB at an mterelay), MKE streamed - as records
#: (MKR, each piece sent as it comes) to a relay that has them, else in
#: fixed 64 KiB chunks.
ENCODE_TYPES = {"MTE": "MTE", "MKE": "MKR"}
_PATTERN = re.compile(
    r"^(?P<scheme>https?)://(?P<host>\[[0-9a-f:.]+\]|[a-z0-9*.-]+)(?::(?P<port>\*|\d{1,5}))?/?$"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_IPV4 = re.compile(r"[0-9.]+")


def token_matches(given: list[bytes], expected: str | Sequence[str] | None) -> bool:
    """True when exactly one ``x-mte-outbound-token`` was sent and it is an accepted token.

    ``expected`` is OUTBOUND_TOKEN, or (during a rotation) OUTBOUND_TOKEN and
    OUTBOUND_TOKEN_PREVIOUS.  Both sides are hashed first and every digest is
    compared with ``hmac.compare_digest`` without an early exit, so the time
    taken reveals neither a token, nor its length, nor which one matched; an
    unset OUTBOUND_TOKEN goes through the same work and fails.
    """
    return TokenCheck(expected)(given)


class TokenCheck:
    """:func:`token_matches` against fixed tokens, their digests made once.

    Only the candidate is hashed per request; every accepted token's digest
    is still compared, with ``hmac.compare_digest`` and no early exit.
    """

    def __init__(self, expected: str | Sequence[str] | None) -> None:
        tokens = [expected] if isinstance(expected, str) or expected is None else list(expected)
        self._references = [(hashlib.sha256((token or "").encode("utf-8")).digest(), bool(token))
                            for token in tokens or [None]]

    def __call__(self, given: list[bytes]) -> bool:
        candidate = given[0].strip() if len(given) == 1 else b""
        digest = hashlib.sha256(candidate).digest()
        same = False
        for reference, usable in self._references:
            same |= hmac.compare_digest(digest, reference) and usable
        return same and bool(candidate)


@attrs.frozen
class Origin:
    """A remote relay origin; ``url`` always names the port (RelayClient's form)."""

    scheme: str
    host: str  # lowercase; an IPv6 address without brackets
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_origin(value: str) -> Origin:
    """``https://relay-b.example.com[:port][/]`` → :class:`Origin`; ValueError otherwise.

    Only an origin is accepted: a path, query, fragment or credentials would
    be silently dropped or leak, so they are refused.
    """
    text = value.strip()
    if not text.isascii() or any(ch.isspace() or ch == "\\" for ch in text):
        raise ValueError("must be an http(s) origin like https://relay.example.com")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    if scheme not in _DEFAULT_PORTS or not parts.hostname or not parts.netloc:
        raise ValueError("must be an http(s) origin like https://relay.example.com")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials")
    if parts.path not in ("", "/") or parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError("must be an origin only (no path, query or fragment)")
    if port == 0:
        raise ValueError("has an invalid port")
    host = parts.hostname.lower()
    if not _connectable(host):
        raise ValueError("has an invalid host name (DNS labels are 1..63 letters, digits or"
                         " hyphens, 253 characters in all)")
    return Origin(scheme, host, port or _DEFAULT_PORTS[scheme])


def _connectable(host: str) -> bool:
    """A host Twisted's endpoints can connect to: an IP literal, or a name IDNA accepts.

    ``HostnameEndpoint`` refuses what ``idna`` cannot encode (a 64-character
    label, a leading hyphen, an underscore) only when it connects, as a
    ValueError deep in the request; checking here makes it a 400.
    """
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    if _IPV4.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    if len(host) > 253:
        return False
    try:
        idna.encode(host)
    except (idna.IDNAError, UnicodeError, ValueError):
        return False
    return True


@attrs.frozen
class OriginPattern:
    """An OUTBOUND_UPSTREAMS entry: ``https://relay.example``, ``https://*.partner.example``,
    ``http://127.0.0.1:*``.

    ``*`` in the host stands for one DNS label or part of one: it never
    crosses a dot, so ``*.partner.example`` matches ``eu.partner.example``
    but neither ``partner.example`` nor ``a.b.partner.example``.  A port
    ``*`` allows any port; no port means the scheme's default port.
    """

    pattern: str
    scheme: str = attrs.field(eq=False, repr=False)
    host: re.Pattern[str] = attrs.field(eq=False, repr=False)
    port: int | None = attrs.field(eq=False, repr=False)  # None: any port

    @classmethod
    def compile(cls, pattern: str) -> "OriginPattern":
        text = pattern.strip().lower()
        match = _PATTERN.match(text)
        if match is None:
            raise ValueError(f"entry {pattern!r} must be an origin like https://relay.example.com"
                             " (* wildcards allowed in the host and port)")
        scheme, host, port = match.group("scheme", "host", "port")
        if host.startswith("["):
            host = host[1:-1]
        elif any(label == "" for label in host.split(".")):
            raise ValueError(f"entry {pattern!r} has an empty host label")
        if port is None:
            number: int | None = _DEFAULT_PORTS[scheme]
        elif port == "*":
            number = None
        else:
            number = int(port)
            if not 1 <= number <= 65535:
                raise ValueError(f"entry {pattern!r} has an invalid port")
        body = "[^.]+".join(re.escape(part) for part in host.split("*"))
        return cls(text.rstrip("/"), scheme, re.compile(body + r"\Z"), number)

    def matches(self, origin: Origin) -> bool:
        return (origin.scheme == self.scheme
                and (self.port is None or origin.port == self.port)
                and self.host.match(origin.host) is not None)


def allowed(patterns: tuple[OriginPattern, ...], origin: Origin) -> bool:
    """No allow-list means any origin (the seed's behaviour, warned about at start-up)."""
    return not patterns or any(pattern.matches(origin) for pattern in patterns)


def _single(headers: Headers, name: bytes) -> str | None:
    try:
        value = single_value(headers.getRawHeaders(name), name)
    except RepeatedHeader as repeated:
        raise Refused(400, "Bad request", str(repeated)) from None
    return None if value is None else value.decode("latin-1").strip()


def peer_origin(headers: Headers, patterns: tuple[OriginPattern, ...]) -> Origin:
    """The peer (remote) relay named by ``x-mte-upstream``: 400 when missing or
    not an http(s) origin, 403 when OUTBOUND_UPSTREAMS does not allow it."""
    value = _single(headers, names.PEER_HEADER)
    if not value:
        raise Refused(400, "Bad request", "x-mte-upstream header is required")
    try:
        origin = parse_origin(value)
    except ValueError as error:
        raise Refused(400, "Bad request", f"x-mte-upstream {error}") from None
    if not allowed(patterns, origin):
        raise Refused(403, "Forbidden",
                      f"x-mte-upstream {origin.url[:200]} is not in OUTBOUND_UPSTREAMS")
    return origin


def _flag(headers: Headers, name: bytes) -> bool | None:
    value = _single(headers, name)
    if value is None:
        return None
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise Refused(400, "Bad request", f"{name.decode()} must be true or false")
    return lowered == "true"


def seal_choices(headers: Headers) -> dict[str, Any]:
    """What to seal, from the optional control headers; everything by default.

    Returns the keyword arguments of ``SealOptions.build`` (the client's own
    option names), so this module needs nothing of the client.

    * ``x-mte-encode-type``: ``MKE`` (default; the body streamed: records
      with a relay that announces them, else fixed chunks) or ``MTE`` (one sealed item, buffered whole on both relays);
    * ``x-mte-encode-headers``: ``true`` (default, every header sealed),
      ``false`` (only ``content-type`` sealed) or a comma list of names
      sealed (plus ``content-type``), the others sent in clear;
    * ``x-mte-encode-url``: ``true`` (default) or ``false`` (path and query
      in clear).
    """
    encode_type = _single(headers, ENCODE_TYPE_HEADER)
    framing = "MKR"
    if encode_type is not None:
        framing = ENCODE_TYPES.get(encode_type.upper(), "")
        if not framing:
            raise Refused(400, "Bad request", "x-mte-encode-type must be MTE or MKE")
    seal_url = _flag(headers, ENCODE_URL_HEADER)
    seal_headers: str | tuple[str, ...] = "all"
    values = headers.getRawHeaders(ENCODE_HEADERS_HEADER, [])
    if values:
        text = ",".join(value.decode("latin-1") for value in values).strip()
        if text.lower() == "true":
            seal_headers = "all"
        elif text.lower() == "false":
            seal_headers = "none"
        else:
            names = tuple(name.strip().lower() for name in text.split(","))
            if not names or not all(is_token(name) for name in names):
                raise Refused(400, "Bad request",
                              "x-mte-encode-headers must be true, false or a comma list of "
                              "header names")
            seal_headers = names
    return {"seal_url": True if seal_url is None else seal_url,
            "seal_headers": seal_headers, "framing": framing}
