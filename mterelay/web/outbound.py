"""The outbound entry: an application's plain request, sent encrypted to a remote relay.

A request carrying ``x-mte-outbound-token`` is the local application asking
this relay to act as its encrypting client (README, "Server-to-server").
Nothing is sent anywhere unless the token is right and the control headers
make sense (:mod:`mterelay.web.outboundrules`).  Then one shared
:class:`~mterelay.client.RelayClient` - one pool of MAX_POOL_SIZE pairs per
remote origin, re-paired and re-validated by itself after a remote restart
or secret change - seals the request, and the decrypted answer is streamed
back to the application as if it had called the remote API directly.

Every answer the relay makes itself (refusals, failures) says whether the
request may have reached the remote relay's upstream, in
``x-mte-upstream-reached`` and the JSON body's ``upstreamReached``: ``no``
only when that is certain (refused here, never sent, or a 55x from the
remote relay, spec 10), else ``maybe`` - so an application knows when a
POST is safe to send again.

Bodies: up to :data:`REPLAYABLE_BODY` bytes (by Content-Length) are read
first and sent as bytes, so the client's one automatic retry after a 55x
(a remote relay that restarted and lost its pairs) works.  Larger and
chunked bodies are streamed through with back-pressure and cannot be sent
twice: a 55x then reaches the application as a 502 naming the relay error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import ConnectError, ConnectingCancelledError, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (RequestGenerationFailed,
                                RequestNotSent, RequestTransmissionFailed, ResponseFailed,
                                ResponseNeverReceived)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IRequest, IResponse
from twisted.web.server import NOT_DONE_YET

from mterelay.http.exchange import Exchange, finish_with
from mterelay.http.failures import describe_failure
from mterelay.http.bodies import abandon, declared_length, declares_body
from mterelay.client import NotARelay, PairingFailed, RelayClient, SealOptions
from mterelay.client.messages import PlainHeaders
from mterelay.http.headers import HOP_BY_HOP, header_text, hop_by_hop_names
from mterelay.http.observe import NO_METRICS, Metrics
from mterelay.http.names import PEER_HEADER
from mterelay.web.outboundrules import (ENCODE_HEADERS_HEADER, ENCODE_TYPE_HEADER,
                                        ENCODE_URL_HEADER, TOKEN_HEADER, Origin, Refused,
                                        TokenCheck, peer_origin, seal_choices)
from mterelay.protocol.errors import RelayError
from mterelay.http.upstream import copy_end_to_end
from mterelay.web.paths import path_problem
from mterelay.web.responses import (MAYBE_REACHED, NOT_REACHED, REACHED_HEADER, error_body,
                                    error_payload, json_body, request_id)
from mterelay.http.streaming import BodyTooLarge, ClientGone, read_body, streamed_body

if TYPE_CHECKING:  # types only: the service layer above passes them in
    from mterelay.service.config import Config

__all__ = ["OutboundProxy", "REPLAYABLE_BODY", "MAX_PAIRS", "REACHED_HEADER", "reached"]

log = Logger(namespace="mterelay.outbound")

#: Bodies up to this size are buffered so they can be sent again on a retry.
REPLAYABLE_BODY = 1024 * 1024
#: A RelayClient keeps at most 64 pairs per origin (one pairing request).
MAX_PAIRS = 64
#: Distinct allowed x-mte-upstream values remembered (see OutboundProxy._origin),
#: and remote relays whose pairs and idle connections are kept (least recently
#: used dropped first).
MAX_REMEMBERED_ORIGINS = 256
#: Distinct x-mte-encode-* value combinations whose SealOptions are remembered.
MAX_REMEMBERED_OPTIONS = 64
#: The control headers SealOptions are made of (seal_choices reads these only).
_CONTROL_HEADERS = (ENCODE_TYPE_HEADER, ENCODE_URL_HEADER, ENCODE_HEADERS_HEADER)
#: Answer headers never copied to the application (x-mte-*, access-control-*),
#: and the names skipped besides a Connection header's (hop-by-hop, Content-Length).
_ANSWER_DROP_PREFIXES = (b"x-mte-", b"access-control-")
_ANSWER_SKIP = HOP_BY_HOP | {b"content-length"}
#: Request headers not sent on: this hop's (the relay answered Expect itself).
_NOT_FORWARDED = (b"host", b"content-length", b"expect")
#: Failures of the connection to the remote relay: 502, "unreachable".
_UNREACHABLE = (ConnectError, ConnectingCancelledError, DNSLookupError, ResponseNeverReceived,
                ResponseFailed, RequestTransmissionFailed, RequestNotSent,
                RequestGenerationFailed)
#: ... of them, those where not one byte of the request was written.
_NOT_SENT = (ConnectError, ConnectingCancelledError, DNSLookupError, RequestNotSent)


def reached(error: BaseException) -> str:
    """``no`` when ``error`` proves nothing reached the remote upstream, else ``maybe``.

    Certain are only: nothing written to the remote relay (no connection,
    RequestNotSent), a handshake that failed before the request was sent,
    our own sealing refusal (561), and a 55x the remote relay answered with
    ``upstreamReached: no`` (spec 10.1; the client fills it in for a relay
    that does not say).  A connection lost after the request was written, a
    timeout, an answer that failed to authenticate, or a 55x saying
    ``maybe`` (relay B refused a streamed body after forwarding part of it)
    guarantee nothing.
    """
    if isinstance(error, RelayError):
        if error.remote:
            return NOT_REACHED if error.upstream_reached == NOT_REACHED else MAYBE_REACHED
        return NOT_REACHED if error.code == 561 else MAYBE_REACHED
    if isinstance(error, (NotARelay, PairingFailed, *_NOT_SENT)):
        return NOT_REACHED
    return MAYBE_REACHED


def refuse(request: IRequest, status: int, message: str, reason: str) -> bytes:
    """A refusal before anything was sent: certainly not at the upstream."""
    return error_body(request, status, message, reason, NOT_REACHED)


class OutboundProxy:
    """Everything the outbound entry needs, shared by all requests.

    :param clock: the reactor's time (timeouts).
    :param agent: how to reach remote relays: the service passes
        ``http.connections.peer_agent`` (a persistent pool, no cookies, no
        redirects); tests pass an in-memory or refusing one.
    """

    def __init__(self, clock: IReactorTime, config: Config, agent: IAgent,
                 metrics: Metrics = NO_METRICS) -> None:
        self.clock = clock
        self.metrics = metrics
        self.token = config.outbound_tokens
        self.patterns = config.outbound_upstreams
        self.extra_headers = [(name.encode("ascii"), value.encode("latin-1"))
                              for name, value in config.headers]
        #: The same as the client reads them (normalize_headers' form).
        self._extra_text = [(name.decode("latin-1").strip().lower(), header_text(value))
                            for name, value in self.extra_headers]
        self.pairs = min(config.max_pool_size, MAX_PAIRS)
        self.timeout = config.upstream_timeout
        self.stream_idle_timeout = config.stream_idle_timeout
        self._agent = agent
        self._client: RelayClient | None = None
        self._origins: dict[bytes, Origin] = {}
        self._token_check = TokenCheck(self.token)
        self._token_of_check = self.token
        self._options: dict[tuple[Any, ...], SealOptions] = {}

    @property
    def client(self) -> RelayClient:
        """The one RelayClient (pairs per remote origin), made when first needed."""
        if self._client is None:
            self._client = RelayClient(self.clock, pairs=self.pairs, agent=self._agent,
                                       timeout=self.timeout, metrics=self.metrics,
                                       max_origins=MAX_REMEMBERED_ORIGINS)
        return self._client

    def render(self, request: IRequest) -> Any:
        """Refuse at once (401/400/403) or start the exchange with the remote relay."""
        headers = request.requestHeaders
        if not self.token_ok(headers.getRawHeaders(TOKEN_HEADER, [])):
            return refuse(request, 401, "Unauthorized", "x-mte-outbound-token is not valid")
        try:
            origin = self._origin(headers)
            options = self.seal_options(headers)
        except Refused as refused:
            return refuse(request, refused.status, refused.message, refused.reason)
        problem = path_problem(request.path)
        if problem is None and not (request.uri.startswith(b"/") and request.uri.isascii()):
            problem = "the request target must be an ASCII path (percent-encoded) and query"
        if problem:
            return refuse(request, 400, "Bad request", problem)
        _Exchange(self, request, origin, options).start()
        return NOT_DONE_YET

    def token_ok(self, given: list[bytes]) -> bool:
        """``token_matches(given, self.token)``, the accepted digests hashed once."""
        if self._token_of_check is not self.token:
            self._token_check, self._token_of_check = TokenCheck(self.token), self.token
        return self._token_check(given)

    def seal_options(self, headers: Headers) -> SealOptions:
        """``SealOptions.build(**seal_choices(headers))``, remembered per control-header values.

        Applications send the same few choices (most none at all); a refused
        value raises and is not remembered, and the table is bounded.
        """
        key = tuple(None if values is None else tuple(values)
                    for values in map(headers.getRawHeaders, _CONTROL_HEADERS))
        options = self._options.get(key)
        if options is None:
            options = SealOptions.build(**seal_choices(headers))
            if len(self._options) >= MAX_REMEMBERED_OPTIONS:
                self._options.clear()
            self._options[key] = options
        return options

    def _origin(self, headers: Headers) -> Origin:
        """``peer_origin``, remembered per header value once it was allowed.

        Applications name the same few remote relays on every request; the
        parse and allow-list check are done once per value.  Refused values
        are not remembered, so junk cannot fill the table.
        """
        values = headers.getRawHeaders(PEER_HEADER)
        if values is not None and len(values) == 1:
            known = self._origins.get(values[0])
            if known is not None:
                return known
        origin = peer_origin(headers, self.patterns)
        if len(self._origins) >= MAX_REMEMBERED_ORIGINS:
            self._origins.clear()
        self._origins[values[0]] = origin  # type: ignore[index]  (one value, or it raised)
        return origin

    def outgoing_headers(self, incoming: Headers, request_id: str | None = None) -> Headers:
        """The application's end-to-end headers, minus x-mte-*, plus HEADERS.

        Host and Content-Length describe this hop; the client sets both.  The
        request id goes to the remote relay and on to its upstream, so one id
        follows the request through every log.  This is the rule spelled with
        twisted ``Headers``; the request path uses :meth:`outgoing_plain`,
        which the tests hold to exactly this rule.
        """
        headers = Headers()
        copy_end_to_end(incoming, headers, drop=_NOT_FORWARDED, drop_prefixes=(b"x-mte-",))
        if request_id is not None:
            headers.setRawHeaders(b"x-request-id", [request_id.encode("ascii")])
        for name, value in self.extra_headers:
            headers.setRawHeaders(name, [value])
        return headers

    def outgoing_plain(self, incoming: Headers, request_id: str | None = None
                       ) -> PlainHeaders:
        """:meth:`outgoing_headers` in the client's own form, built in one pass.

        What ``normalize_headers(outgoing_headers(...))`` gives - lowercase
        names, text values, in the order of a copy into twisted ``Headers``
        followed by ``setRawHeaders`` of the id and HEADERS (a name set again
        keeps its place and takes the one new value) - without the Headers
        the client would only read back.
        """
        skip = hop_by_hop_names(incoming)
        grouped: dict[str, list[str]] = {}
        for name, values in incoming.getAllRawHeaders():
            lower = name.lower()
            if lower in skip or lower in _NOT_FORWARDED or lower.startswith(b"x-mte-"):
                continue
            grouped[lower.decode("latin-1")] = [header_text(value) for value in values]
        if request_id is not None:
            grouped["x-request-id"] = [request_id]
        for text, value in self._extra_text:
            grouped[text] = [value]
        return PlainHeaders((name, value) for name, values in grouped.items()
                            for value in values)


def copy_answer_pairs(pairs: Sequence[tuple[str, str]], target: Headers) -> None:
    """A decrypted answer's ``(name, text)`` headers into the application's answer.

    What the Headers path does - the origin's Date and Server replace
    twisted.web's, then ``copy_end_to_end`` without Content-Length, x-mte-*
    and access-control-* - read straight from the list: names grouped in
    first-seen order as twisted ``Headers`` group them, values UTF-8, the
    names a Connection header nominates found on its bytes.
    """
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        values = grouped.get(name)
        if values is None:
            grouped[name] = [value]
        else:
            values.append(value)
    skip = _ANSWER_SKIP
    nominated = grouped.get("connection")
    if nominated:
        skip = set(skip)
        for value in nominated:
            skip.update(token.strip().lower() for token in value.encode("utf-8").split(b",")
                        if token.strip())
    for own in ("date", "server"):
        if own in grouped:
            target.removeHeader(own.encode("ascii"))
    for name, values in grouped.items():
        raw = name.encode("ascii")
        if raw in skip or raw.startswith(_ANSWER_DROP_PREFIXES):
            continue
        for value in values:
            target.addRawHeader(raw, value.encode("utf-8"))


class _Exchange(Exchange):
    """One outbound request, from reading its body to the decrypted answer."""

    def __init__(self, proxy: OutboundProxy, request: IRequest, origin: Origin,
                 options: SealOptions) -> None:
        super().__init__(request)
        self.proxy = proxy
        self.origin = origin
        self.options = options

    def _crashed(self, failure: Failure) -> None:
        log.failure("outbound request failed", failure, request_id=request_id(self.request))
        self._answer(502, {"error": "Bad gateway", "code": 502,
                           "reason": "the relay failed to handle this request"}, MAYBE_REACHED)

    def _answer(self, status: int, payload: dict[str, Any], upstream_reached: str) -> None:
        if self.gone or self.request.finished or self.request.startedWriting:
            return
        self.request.setHeader(REACHED_HEADER, upstream_reached.encode("ascii"))
        extra = {k: v for k, v in payload.items() if k not in ("error", "code", "reason")}
        body = json_body(self.request, status, error_payload(
            status, payload["error"], payload.get("reason"), upstream_reached, **extra))
        finish_with(self.request, body)

    def _failed(self, status: int, message: str, reason: str,
                upstream_reached: str = MAYBE_REACHED) -> None:
        """A failure on the way to the remote relay: logged once, answered as JSON."""
        if self.gone:
            # The application hung up and its request was cancelled: not a
            # relay failure, and there is nobody to answer.
            log.debug("outbound request abandoned by the application",
                      request_id=request_id(self.request))
            return
        log.warn("outbound {method} to {origin} failed: {status} {message} ({reason};"
                 " upstream reached: {reached})",
                 method=self.request.method.decode("latin-1"), origin=self.origin.url,
                 status=status, message=message, reason=reason, reached=upstream_reached,
                 request_id=request_id(self.request))
        self._answer(status, {"error": message, "code": status, "reason": reason},
                     upstream_reached)

    async def _body(self) -> Any:
        """None, bytes (replayable) or the streaming BodyPipe / buffered file."""
        request = self.request
        headers = request.requestHeaders
        if not declares_body(headers):
            return None
        pipe = streamed_body(request)
        if pipe is not None:
            length = declared_length(headers)
            if length is not None and length <= REPLAYABLE_BODY:
                return await read_body(request, REPLAYABLE_BODY)
            return pipe
        content = request.content  # buffered by twisted.web: seekable, so replayable
        content.seek(0)
        return content

    async def run(self) -> None:
        request = self.request
        try:
            data = await self._body()
        except (ClientGone, BodyTooLarge):
            return  # the application went away (or lied about its length)
        if self.gone:
            return
        url = self.origin.url + request.uri.decode("ascii")
        headers = self.proxy.outgoing_plain(request.requestHeaders, request_id(request))
        self.pending = self.proxy.client.request(request.method, url, headers, data,
                                                 options=self.options)
        clock, started = self.proxy.clock, self.proxy.clock.seconds()
        try:
            response = await self.pending
            self.proxy.metrics.observe_outbound(clock.seconds() - started)
        except CancelledError:
            return
        except DeferredTimeout as error:
            self._failed(504, "Remote relay timed out",
                         f"no answer from {self.origin.url} within {self.proxy.timeout:g} s",
                         reached(error))
            return
        except RelayError as error:
            reason = f"{error.code} {error.message}" + (f" ({error.info})" if error.info else "")
            self._failed(502, "Remote relay error", reason, reached(error))
            return
        except (NotARelay, PairingFailed) as error:
            retry_after = getattr(error, "retry_after", None)
            if retry_after:  # the remote relay refused pairing for now (429)
                self.request.setHeader(b"retry-after", b"%d" % math.ceil(retry_after))
                self._failed(503, "Remote relay busy", str(error)[:300], reached(error))
                return
            self._failed(502, "Remote relay error", str(error)[:300], reached(error))
            return
        except _UNREACHABLE as error:
            self._failed(502, "Remote relay unreachable", describe_failure(error), reached(error))
            return
        finally:
            self.pending = None
        if self.gone:
            abandon(response)
            return
        await self._respond(response)

    async def _respond(self, response: IResponse) -> None:
        """Status, authenticated headers and the body streamed with back-pressure.

        A decrypted answer carries the upstream's sealed headers (the client
        drops clear ones added on the way).  A remote relay's own clear error
        (``sealed`` False, e.g. its 502 when its upstream is down) is not
        authenticated at all: its status and body are passed on, of its
        headers only ``content-type``, with ``x-mte-upstream-reached``.
        """
        request = self.request
        request.setResponseCode(response.code, response.phrase or None)
        if getattr(response, "sealed", True):
            pairs = getattr(response, "header_pairs", None)
            if pairs is not None:
                copy_answer_pairs(pairs, request.responseHeaders)
            else:
                for own in (b"date", b"server"):  # twisted.web set its own; the origin's win
                    if response.headers.hasHeader(own):
                        request.responseHeaders.removeHeader(own)
                copy_end_to_end(response.headers, request.responseHeaders,
                                drop=(b"content-length",),
                                drop_prefixes=_ANSWER_DROP_PREFIXES)
        else:
            kind = response.headers.getRawHeaders(b"content-type")
            if kind:
                request.responseHeaders.setRawHeaders(b"content-type", kind[:1])
            # The remote relay says it (spec 10.1); a proxy or load balancer
            # in front of it that does not refuses (4xx) before forwarding,
            # and its 5xx (the upstream failed, timed out) guarantees nothing.
            said = response.headers.getRawHeaders(REACHED_HEADER, [])
            if len(said) == 1 and said[0] in (b"no", b"maybe"):
                verdict = said[0].decode("ascii")
            else:
                verdict = NOT_REACHED if 400 <= response.code < 500 else MAYBE_REACHED
            request.setHeader(REACHED_HEADER, verdict.encode("ascii"))
        if (isinstance(response.length, int) and request.method != b"HEAD"
                and response.code not in (204, 304)):
            request.setHeader(b"content-length", b"%d" % response.length)
        if await self.stream_answer(response, request, self.proxy.clock,
                                    self.proxy.stream_idle_timeout, self._answer_interrupted):
            request.finish()

    def _answer_interrupted(self, error: Exception) -> None:
        # The remote relay's connection broke, or a chunk did not authenticate.
        log.warn("outbound answer from {origin} interrupted: {why}",
                 origin=self.origin.url, why=describe_failure(error),
                 request_id=request_id(self.request))


