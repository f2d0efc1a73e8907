"""Header rules shared by both roles and the client: which names belong to one
hop, copying the end-to-end rest, reading a header that must appear once, and
turning header bytes into the sealed item's text.

They live here once because a proxy that disagrees with itself about which
headers are hop-by-hop forwards, or seals, what the other side drops.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from typing import TypeVar

from twisted.web.http_headers import Headers

__all__ = ["HOP_BY_HOP", "HOP_BY_HOP_TEXT", "RepeatedHeader", "copy_end_to_end",
           "header_text", "hop_by_hop_names", "is_token", "new_request_id", "nominated_text",
           "request_id_for", "single_value",
           "REQUEST_ID_HEADER"]

T = TypeVar("T")

# RFC 9110 section 7.6.1 plus the de-facto Proxy-Connection and Keep-Alive.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
REQUEST_ID_HEADER = b"x-request-id"
# Visible ASCII only: the id is copied into log lines and upstream headers.
_GOOD_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}\Z")

#: RFC 9110 section 5.6.2 token: header names, methods, x-mte-response-headers entries.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

#: The same names as text, for the client's ``(name, value)`` header lists.
HOP_BY_HOP_TEXT = frozenset(name.decode("ascii") for name in HOP_BY_HOP)


class RepeatedHeader(ValueError):
    """A header that must appear once appeared more often; callers answer it their way."""

    def __init__(self, name: bytes | str) -> None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        super().__init__(f"{text} sent more than once")


def single_value(values: Sequence[T] | None, name: bytes | str) -> T | None:
    """The one value of a header, None when absent, :class:`RepeatedHeader` when repeated.

    A repeated protocol header is ambiguous (which one did the sender mean?),
    so it is refused rather than the first one taken.
    """
    if not values:
        return None
    if len(values) > 1:
        raise RepeatedHeader(name)
    return values[0]


def header_text(value: str | bytes) -> str:
    """A header value as item text: UTF-8 when it is, else Latin-1 (lossless)."""
    if isinstance(value, str):
        return value
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return bytes(value).decode("latin-1")


def hop_by_hop_names(headers: Headers) -> frozenset[bytes] | set[bytes]:
    """Hop-by-hop names, including any a ``Connection`` header nominates."""
    nominated = headers.getRawHeaders(b"connection")
    if not nominated:
        return HOP_BY_HOP  # the common case: no copy, no parsing
    names = set(HOP_BY_HOP)
    for value in nominated:
        names.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return names


def nominated_text(headers: Iterable[tuple[str, str]]) -> set[str]:
    """:func:`hop_by_hop_names` for a text ``(name, value)`` list."""
    names = set(HOP_BY_HOP_TEXT)
    for name, value in headers:
        if name == "connection":
            names.update(token.strip().lower() for token in value.split(",") if token.strip())
    return names


def copy_end_to_end(
    source: Headers,
    target: Headers,
    drop: Iterable[bytes] = (),
    drop_prefixes: tuple[bytes, ...] = (),
) -> None:
    """Copy every end-to-end header (repeated ones such as Set-Cookie kept apart)."""
    skip = hop_by_hop_names(source)
    if drop:
        skip = skip | {name.lower() for name in drop}
    for name, values in source.getAllRawHeaders():
        lower = name.lower()
        if lower not in skip and not lower.startswith(drop_prefixes):
            for value in values:
                target.addRawHeader(name, value)


def request_id_for(incoming: bytes | None) -> str:
    """Honour a caller's id when it is safe to log and forward, else mint one."""
    if incoming is not None and _GOOD_REQUEST_ID.match(incoming):
        return incoming.decode("ascii")
    return new_request_id()


def new_request_id() -> str:
    """``uuid.uuid4().hex``, bit for bit, without building a UUID (a third of the time)."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    return raw.hex()


def is_token(text: str) -> bool:
    """Whether ``text`` is one RFC 9110 token (the whole of it: no trailing newline)."""
    return _TOKEN.fullmatch(text) is not None
