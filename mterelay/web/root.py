"""The single entry point: route a request by path and relay headers.

One leaf resource dispatches instead of a deep Resource tree because the
routing rules are path *patterns* (``/api/v1/*``) and header-driven
(``x-mte-relay``, ``x-mte-outbound-token``), not path segments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IAgent, IRequest
from twisted.web.resource import Resource

from mterelay.web.routes import matches_any
from mterelay.web.outboundrules import TOKEN_HEADER
from mterelay.http.observe import Metrics
from mterelay.http.upstream import UpstreamForwarder
from mterelay.web.cors import CorsPolicy
from mterelay.store.interface import IPairStore
from mterelay.store.keycache import KeyCache
from mterelay.web.echo import is_echo_path, render_echo
from mterelay.web.admission import PairingAdmission, PairingLimits
from mterelay.web.handshake import PairRoute, render_relay_head
from mterelay.web.inbound import InboundProxy
from mterelay.web.outbound import OutboundProxy
from mterelay.web.passthrough import render_passthrough
from mterelay.web.paths import path_problem, target_problem
from mterelay.web.public import PublicFile, is_public_path, load_public_files, render_public
from mterelay.protocol.errors import MissingHeader
from mterelay.http.names import FIXED_PATH, PAIR_PATH, RELAY_HEADER, RELAY_PATH
from mterelay.protocol.pairing import MAX_PAIRS_PER_REQUEST
from mterelay.web.responses import error_body, relay_error_body

if TYPE_CHECKING:  # types only: the service layer above passes them in
    from mterelay.service.config import Config



class RelayRoot(Resource):
    isLeaf = True

    def __init__(self, config: Config, forwarder: UpstreamForwarder, clock: IReactorTime,
                 store: IPairStore, outbound_agent: IAgent, metrics: Metrics,
                 public_files: dict[bytes, PublicFile] | None = None) -> None:
        super().__init__()
        # Loaded once: no request reads the file system (web/public.py).
        self.public_files = load_public_files() if public_files is None else public_files
        self.metrics = metrics
        self.config = config
        self.forwarder = forwarder
        self.clock = clock
        self.store = store
        self.keys = KeyCache(self.store)
        self.secrets = config.client_id_secrets
        # Every relay accepts batches of 1..64 pair requests (spec 4, 11), whatever
        # its own pool size: a client cannot know MAX_POOL_SIZE.  The limiter's
        # burst holds one full batch, or a 64-entry batch would wait for ever.
        self.pairing = PairRoute(
            self.store, self.keys, self.secrets, MAX_PAIRS_PER_REQUEST,
            PairingAdmission(clock, pairing_limits(config)), metrics=metrics,
            trusted_proxies=config.trusted_proxies,
        )
        self.inbound = InboundProxy(self.store, self.keys, forwarder, self.secrets,
                                    mte_routes=config.mte_routes, metrics=metrics,
                                    stream_idle_timeout=config.stream_idle_timeout)
        self.outbound = OutboundProxy(clock, config, agent=outbound_agent, metrics=metrics)
        self.cors = CorsPolicy(config.cors_origins, config.cors_methods, config.cors_max_age)
        self.extra_headers = [
            (name.encode("ascii"), value.encode("latin-1")) for name, value in config.headers
        ]

    def render(self, request: IRequest) -> Any:
        body = self._render(request)
        if request.method == b"HEAD" and isinstance(body, bytes) and body:
            # Twisted would drop the body too, but log a warning carrying the
            # request's repr, query string included.
            request.setHeader(b"content-length", b"%d" % len(body))
            return b""
        return body

    def _render(self, request: IRequest) -> Any:
        for name, value in self.extra_headers:
            request.setHeader(name, value)
        preflight = self.cors.is_preflight(request)
        if not preflight:
            # First, so every answer - the relay's own errors too - is
            # readable by an allowed browser origin (spec 14).
            self.cors.decorate(request)
        problem = target_problem(request.uri)
        if problem:
            # Before any route: nothing malformed is forwarded, and the
            # forwarding agent's error (which quotes the URL) never happens.
            return error_body(request, 400, "Bad request", problem)
        if preflight:
            allowed, reason = self.cors.preflight(request)
            if not allowed:
                return error_body(request, 403, "CORS preflight refused", reason)
            return b""
        if request.requestHeaders.hasHeader(TOKEN_HEADER):
            # The application's own request, to be sent encrypted to a remote relay.
            request.role = "outbound"
            return self.outbound.render(request)

        path = request.path
        if is_public_path(path):
            # Before path_problem: any /public/ path that is not a loaded file,
            # traversal attempts included, is the same 404.
            return render_public(request, self.public_files)
        problem = path_problem(path)
        if problem:
            return error_body(request, 400, "Bad request", problem)
        if is_echo_path(path):
            return render_echo(request, self.clock)
        if path == RELAY_PATH:
            if request.method not in (b"HEAD", b"GET"):
                request.setHeader(b"allow", b"HEAD, GET")
                return error_body(request, 405, "Method not allowed", "use HEAD /api/mte-relay")
            return render_relay_head(request, self.secrets)
        if path == PAIR_PATH:
            if request.method != b"POST":
                request.setHeader(b"allow", b"POST")
                return error_body(request, 405, "Method not allowed", "use POST /api/mte-pair")
            request.role = "pairing"
            return self.pairing.render(request)
        if path == FIXED_PATH:
            # Sealed-URL requests on the fixed path (spec 5.2): never a
            # pass-through route, whatever PASS_THROUGH_ROUTES says.
            request.role = "inbound"
            return self.inbound.render(request)
        path_text = path.decode("latin-1")
        if matches_any(self.config.pass_through_routes, path_text):
            request.role = "passthrough"
            return render_passthrough(request, self.forwarder)
        if request.getHeader(RELAY_HEADER) is not None:
            # With urlEnc=1 the real path is sealed, so MTE_ROUTES is checked
            # by the proxy once the url item is open.
            request.role = "inbound"
            return self.inbound.render(request)
        if self.config.mte_routes is not None and not matches_any(
            self.config.mte_routes, path_text
        ):
            return error_body(request, 404, "Not found", "route is not in MTE_ROUTES")
        return relay_error_body(request, MissingHeader("x-mte-relay header is required"))


def pairing_limits(config: Config) -> PairingLimits:
    """The pairing admission limits the configuration asks for.

    Every bucket holds at least one full request (``MAX_PAIRS_PER_REQUEST``
    entries, which every relay accepts whatever its ``MAX_POOL_SIZE``).
    """
    return PairingLimits(
        address_rate=config.pairing_address_rate, client_rate=config.pairing_client_rate,
        global_rate=config.pairing_global_rate, concurrency=config.pairing_concurrency,
        max_entries=MAX_PAIRS_PER_REQUEST)
