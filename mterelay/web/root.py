"""The single entry point: route a request by path and relay headers.

One leaf resource dispatches instead of a deep Resource tree because the
routing rules are path *patterns* (``/api/v1/*``) and header-driven
(``x-mte-relay``, ``x-mte-outbound-token``), not path segments.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from mterelay.config import Config, matches_any
from mterelay.upstream import UpstreamForwarder
from mterelay.web.cors import CorsPolicy
from mterelay.web.echo import is_echo_path, render_echo
from mterelay.web.passthrough import render_passthrough
from mterelay.web.responses import error_body

RELAY_HEADER = b"x-mte-relay"


def path_problem(path: bytes) -> str | None:
    """Why a request path is refused, or None.

    Dot segments (also percent-encoded) are refused outright: an upstream that
    normalises ``/health/../admin`` would otherwise see a route the relay never
    matched against PASS_THROUGH_ROUTES or MTE_ROUTES.
    """
    if not path.startswith(b"/"):
        return "path must start with /"
    decoded = unquote_to_bytes(path)
    if any(segment in (b".", b"..") for segment in decoded.split(b"/")):
        return "path must not contain . or .. segments"
    if b"\x00" in decoded or b"\\" in decoded:
        return "path contains a forbidden character"
    return None


class RelayRoot(Resource):
    isLeaf = True

    def __init__(self, config: Config, forwarder: UpstreamForwarder, clock: IReactorTime) -> None:
        super().__init__()
        self.config = config
        self.forwarder = forwarder
        self.clock = clock
        self.cors = CorsPolicy(config.cors_origins, config.cors_methods)
        self.extra_headers = [
            (name.encode("ascii"), value.encode("latin-1")) for name, value in config.headers
        ]

    def render(self, request: IRequest) -> Any:
        for name, value in self.extra_headers:
            request.setHeader(name, value)
        if self.cors.is_preflight(request):
            allowed, reason = self.cors.preflight(request)
            if not allowed:
                return error_body(request, 403, "CORS preflight refused", reason)
            return b""
        self.cors.decorate(request)

        path = request.path
        problem = path_problem(path)
        if problem:
            return error_body(request, 400, "Bad request", problem)
        if is_echo_path(path):
            return render_echo(request, self.clock)
        path_text = path.decode("latin-1")
        if matches_any(self.config.pass_through_routes, path_text):
            return render_passthrough(request, self.forwarder)
        if self.config.mte_routes is not None and not matches_any(
            self.config.mte_routes, path_text
        ):
            return error_body(request, 404, "Not found", "route is not in MTE_ROUTES")
        if request.getHeader(RELAY_HEADER) is None:
            return error_body(
                request, 569, "Missing required header", "x-mte-relay header is required"
            )
        return error_body(
            request, 501, "Not implemented", "the encrypted proxy is not available in this build"
        )
