"""CORS for browser clients: the relay, not the upstream, is the authority.

The relay answers preflights itself and replaces any Access-Control-* header
the upstream sends, so CORS_ORIGINS is the single source of truth.  What a
browser client needs (docs/protocol.md section 14): its protocol request
headers allowed, the protocol's response headers readable (a browser hides
every other one from script), CORS headers on the relay's own error answers
too (a 55x a script cannot read is a 55x it cannot act on), and ``Vary`` on
every answer that depends on the ``Origin`` so no cache hands one origin's
answer to another.
"""

from __future__ import annotations

import re

import attrs
from twisted.web.iweb import IRequest

#: Response headers a browser script must be able to read (spec 14).  Others
#: are hidden from it unless CORS-safelisted (content-type, cache-control, ...).
EXPOSED = (b"x-mte-relay, x-mte-relay-eh, x-mte-relay-framing, x-mte-relay-fixed-path, "
           b"x-request-id, x-mte-upstream-reached, retry-after")
#: Request headers a browser client sends; allowed on every preflight even
#: when not asked for, so a client need not guess which ones to list.
PROTOCOL_REQUEST_HEADERS = (b"x-mte-relay", b"x-mte-relay-eh", b"x-mte-relay-url",
                            b"content-type", b"x-mte-response-headers", b"x-request-id")
#: A preflight answer depends on all three.
PREFLIGHT_VARY = b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
#: Default of CORS_MAX_AGE: long enough to save a preflight round trip on
#: almost every request, short enough that a CORS_ORIGINS change reaches
#: browsers within ten minutes (Chromium caps it at 7200, Firefox at 86400).
MAX_AGE = 600
_HEADER_LIST = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z, \t-]*$")


@attrs.frozen
class CorsPolicy:
    origins: tuple[str, ...]
    methods: tuple[str, ...]
    max_age: int = MAX_AGE

    def allowed_origin(self, request: IRequest) -> bytes | None:
        origin = request.getHeader(b"origin")
        if origin is None or not self.origins:
            return None
        if origin.lower() in (o.encode("ascii") for o in self.origins):
            return origin
        return None

    def is_preflight(self, request: IRequest) -> bool:
        return (
            request.method == b"OPTIONS"
            and request.getHeader(b"origin") is not None
            and request.getHeader(b"access-control-request-method") is not None
        )

    def decorate(self, request: IRequest) -> None:
        """CORS headers for an actual (non-preflight) answer, the relay's errors included."""
        if not self.origins:
            return
        _vary(request, b"Origin")
        origin = self.allowed_origin(request)
        if origin is None:
            return
        request.setHeader(b"access-control-allow-origin", origin)
        request.setHeader(b"access-control-allow-credentials", b"true")
        request.setHeader(b"access-control-expose-headers", EXPOSED)

    def preflight(self, request: IRequest) -> tuple[bool, str]:
        """Answer a preflight; returns (allowed, reason when refused).

        Refused or not, the answer varies with the Origin and the two
        Access-Control-Request-* headers.
        """
        _vary(request, PREFLIGHT_VARY)
        origin = self.allowed_origin(request)
        if origin is None:
            return False, "origin is not in CORS_ORIGINS"
        method = (request.getHeader(b"access-control-request-method") or b"").strip().upper()
        if method.decode("latin-1") not in self.methods:
            return False, "method is not in CORS_METHODS"
        requested = request.getHeader(b"access-control-request-headers") or b""
        if not _HEADER_LIST.match(requested):
            return False, "access-control-request-headers is malformed"
        request.setResponseCode(204)
        request.setHeader(b"access-control-allow-origin", origin)
        request.setHeader(b"access-control-allow-credentials", b"true")
        request.setHeader(
            b"access-control-allow-methods", ", ".join(self.methods).encode("ascii")
        )
        request.setHeader(b"access-control-allow-headers", allowed_headers(requested))
        request.setHeader(b"access-control-max-age", b"%d" % self.max_age)
        request.setHeader(b"access-control-expose-headers", EXPOSED)
        return True, ""


def allowed_headers(requested: bytes) -> bytes:
    """The protocol's request headers, then every other one the browser asked for."""
    names = list(PROTOCOL_REQUEST_HEADERS)
    for token in requested.split(b","):
        name = token.strip().lower()
        if name and name not in names:
            names.append(name)
    return b", ".join(names)


def _vary(request: IRequest, value: bytes) -> None:
    if value not in request.responseHeaders.getRawHeaders(b"vary", []):
        request.responseHeaders.addRawHeader(b"vary", value)
