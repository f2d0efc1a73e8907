"""CORS for browser clients: the relay, not the upstream, is the authority.

The relay answers preflights itself and replaces any Access-Control-* header
the upstream sends, so CORS_ORIGINS is the single source of truth.
"""

from __future__ import annotations

import re

import attrs
from twisted.web.iweb import IRequest

EXPOSED = b"x-mte-relay, x-mte-relay-eh, x-request-id"
MAX_AGE = b"600"
_HEADER_LIST = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z, -]*$")


@attrs.frozen
class CorsPolicy:
    origins: tuple[str, ...]
    methods: tuple[str, ...]

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
        """CORS headers for an actual (non-preflight) response."""
        if not self.origins:
            return
        request.responseHeaders.addRawHeader(b"vary", b"Origin")
        origin = self.allowed_origin(request)
        if origin is None:
            return
        request.setHeader(b"access-control-allow-origin", origin)
        request.setHeader(b"access-control-allow-credentials", b"true")
        request.setHeader(b"access-control-expose-headers", EXPOSED)

    def preflight(self, request: IRequest) -> tuple[bool, str]:
        """Answer a preflight; returns (allowed, reason when refused)."""
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
        if requested.strip():
            request.setHeader(b"access-control-allow-headers", requested.strip())
        request.setHeader(b"access-control-max-age", MAX_AGE)
        request.setHeader(b"access-control-expose-headers", EXPOSED)
        return True, ""
