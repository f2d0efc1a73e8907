"""Plaintext formats of the url and headers items (before sealing).

Both items are authenticated, but the peer that sealed them is still only a
client of the relay: their content is validated as strictly as anything else
received, so a buggy or hostile client cannot smuggle CR/LF into upstream
headers or a non-origin-form target into the upstream request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

__all__ = ["ItemFormatError", "encode_url", "decode_url", "encode_headers", "decode_headers"]

#: RFC 9110 token characters, lowercase only (names are case-insensitive,
#: one spelling keeps the JSON canonical and comparisons trivial).
_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
#: Any character but C0 controls (HTAB allowed), DEL and lone surrogates:
#: no header splitting, and every value encodes to UTF-8.
_VALUE_RE = re.compile("[^\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]*")
#: Origin-form request target: "/" then visible ASCII, no spaces.
_TARGET_RE = re.compile(r"/[\x21-\x7e]*")

CONTENT_TYPE = "content-type"


class ItemFormatError(ValueError):
    """An item's plaintext does not follow its format."""


def encode_url(target: str) -> bytes:
    """The url item's plaintext: the origin-form path+query, ASCII."""
    if not isinstance(target, str) or _TARGET_RE.fullmatch(target) is None:
        raise ItemFormatError("url must be an origin-form target: '/' then visible ASCII")
    return target.encode("ascii")


def decode_url(plain: bytes) -> str:
    """Inverse of :func:`encode_url`, equally strict."""
    try:
        target = plain.decode("ascii")
    except UnicodeDecodeError:
        raise ItemFormatError("url item is not ASCII") from None
    if _TARGET_RE.fullmatch(target) is None:
        raise ItemFormatError("url item is not an origin-form target")
    return target


#: Header names that matched ``_NAME_RE`` (the same few in every message),
#: so each is checked once; bounded, emptied when full.
_GOOD_NAMES: set[str] = set()
GOOD_NAMES_MAX = 1024


def _check_headers(headers: Mapping[str, list[str]], headers_enc: bool) -> None:
    for name, values in headers.items():
        if name not in _GOOD_NAMES:
            if _NAME_RE.fullmatch(name) is None:
                raise ItemFormatError(f"invalid header name {name[:40]!r}")
            if len(_GOOD_NAMES) >= GOOD_NAMES_MAX:
                _GOOD_NAMES.clear()
            _GOOD_NAMES.add(name)
        if not headers_enc and name != CONTENT_TYPE:
            raise ItemFormatError("headersEnc=0 allows only content-type")
        if not values:
            raise ItemFormatError(f"header {name} has no value")
        for value in values:
            if not isinstance(value, str) or _VALUE_RE.fullmatch(value) is None:
                raise ItemFormatError(f"invalid value for header {name}")


def encode_headers(headers: Mapping[str, str | Sequence[str]], headers_enc: bool = True
                   ) -> bytes:
    """The headers item's plaintext: UTF-8 JSON ``{name: [value, ...]}``.

    Names are lowercased (two spellings of one name are an error), a single
    string value is taken as a one-element list; the JSON is compact with
    sorted keys so the same headers always give the same bytes.
    """
    normalized: dict[str, list[str]] = {}
    for name, values in headers.items():
        if not isinstance(name, str):
            raise ItemFormatError("header names must be strings")
        lower = name.lower()
        if lower in normalized:
            raise ItemFormatError(f"header {lower} given twice")
        if isinstance(values, str):
            normalized[lower] = [values]
        else:  # a list is only read, never kept: no copy
            normalized[lower] = values if type(values) is list else list(values)
    _check_headers(normalized, headers_enc)
    return _ENCODER.encode(normalized).encode("utf-8")


#: What ``json.dumps(..., separators=(",", ":"), sort_keys=True, ensure_ascii=False)``
#: builds on every call, built once.
_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ItemFormatError(f"duplicate header {key[:40]!r}")
        result[key] = value
    return result


#: One decoder for every item: ``json.loads`` with a hook builds a new one per call.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates)


def decode_headers(plain: bytes, headers_enc: bool = True) -> dict[str, list[str]]:
    """Parse and validate a headers item (any valid JSON spelling accepted)."""
    try:
        text = plain.decode("utf-8")
        if text.startswith("\ufeff"):  # refused, as json.loads refuses it
            raise ValueError("byte order mark")
        value = _DECODER.decode(text)
    except ItemFormatError:
        raise
    except (ValueError, RecursionError):
        raise ItemFormatError("headers item is not UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise ItemFormatError("headers item is not a JSON object")
    for values in value.values():
        if not isinstance(values, list):
            raise ItemFormatError("header values must be lists of strings")
    _check_headers(value, headers_enc)
    return value
