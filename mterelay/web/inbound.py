"""The encrypted proxy: open a sealed request, forward it, seal the answer.

The order of work is the protocol's (docs/protocol.md section 8.2) and it
is what makes the relay safe to retry against: everything that can be
checked without state is checked first, the headers item is opened before
the replay window moves (forged traffic never burns sequence numbers), and
nothing reaches the upstream unless every sealed part of the request opened
— except a streamed (MKE or MKR) body, whose plaintext flows while later
chunks are still unverified: if one fails, the upstream request is aborted,
never completed.

Record framing (MKR, spec 7.2) is what live streams need: each piece of the
upstream's answer is sealed and written as it arrives (what arrives in one
reactor turn together, :mod:`mterelay.http.flushing`), and each record of a
request body is opened and sent upstream the moment it is complete.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IRequest, IResponse
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from mterelay.http.bodies import (BytesProducer, abandon, declared_length, read_and_drop,
                                  read_limited)
from mterelay.http.headers import request_id_for
from mterelay.http.exchange import Exchange as BaseExchange
from mterelay.http.flushing import TurnCoalescer
from mterelay.http.refusal import Refused
from mterelay.http import names
from mterelay.http.names import (CONTENT_TYPE, ITEM_HEADER, RELAY_HEADER, RESPONSE_HEADERS_CONTROL,
                                 SEALED_CONTENT_TYPE, URL_TOKEN_HEADER, text)
from mterelay.protocol.clientid import VerifiedIds
from mterelay.protocol.errors import (DecodeFailed, MalformedHeader, MissingHeader, RelayError,
                                      RepairRequired, StateNotFound)
from mterelay.protocol.header import (FIXED_PATH, MODE_MKE, MODE_MKR, MODE_MTE, URL_HEADER,
                                      RelayHeader)
from mterelay.protocol.keys import PairKeys
from mterelay.protocol.replay import Verdict
from mterelay.protocol.records import (BODY_LENGTH_CONTROL, RECORD_MAX, RECORD_OVERHEAD,
                                       RecordSealer, parse_body_length)
from mterelay.protocol.sealing import (SEALED_CHUNK_SIZE, BodyOpener, BodySealer, Direction,
                                       MessageCipher, check_sealed_length, plain_length,
                                       sealed_length)
from mterelay.store.interface import IPairStore, StoreUnavailable
from mterelay.store.keycache import CachedPair, KeyCache
from mterelay.http.bodies import has_body
from mterelay.http.observe import NO_METRICS, Metrics
from mterelay.http.timing import Stopwatch, crypto_stopwatch
from mterelay.http.headers import (HOP_BY_HOP, RepeatedHeader, header_text, hop_by_hop_names,
                                   single_value)
from mterelay.http.upstream import UpstreamError, UpstreamForwarder, forwarded_for
from mterelay.web.responses import (MAYBE_REACHED, NOT_REACHED, error_body, relay_error_body,
                                    request_id, unlogged_error_body)
from mterelay.web.paths import path_problem
from mterelay.web.request import RelayRequest
from mterelay.web.routes import RoutePattern, matches_any
from mterelay.http.h2 import request_has_body as h2_request_has_body
from mterelay.http.streaming import BodyTooLarge, ClientGone, read_body, request_body

log = Logger(namespace="mterelay.inbound")

FIXED_TARGET = names.FIXED_PATH
#: MTE bodies are one AES-GCM item, so they are held whole in memory; bigger
#: bodies must use MKE framing (streamed, unlimited).
MTE_BODY_LIMIT = 64 * 1024 * 1024
#: Response headers sealed whatever x-mte-response-headers asks (spec 8.3).
ALWAYS_SEALED = frozenset({"content-type", "cache-control"})
#: The clear Cache-Control of every sealed answer: no shared cache may keep a
#: response only its own client can open (spec 14).
NO_STORE = b"no-store"
RESPONSE_HEADERS_CONTROL_TEXT = text(RESPONSE_HEADERS_CONTROL)
#: Request headers never taken from the sealed item (they describe this hop).
NOT_FORWARDED = HOP_BY_HOP | {b"host", b"content-length"}
#: Response headers neither sealed nor copied: framing, and CORS (the relay's own).
NOT_RETURNED = HOP_BY_HOP | {b"content-length"}


def request_has_body(request: IRequest) -> bool:
    """:func:`has_body` of a received request, HTTP/2's streamed bodies included.

    An HTTP/2 body streamed by its client has neither Content-Length nor
    Transfer-Encoding (HTTP/2 has no chunked coding); :mod:`mterelay.http.h2`
    decides from the stream.
    """
    h2 = h2_request_has_body(request)
    return has_body(request.requestHeaders) if h2 is None else h2


def parse_response_selection(value: str | None) -> frozenset[str] | None:
    """``x-mte-response-headers``: None means seal every response header."""
    if value is None or value.strip() == "*":
        return None
    names = {name.strip().lower() for name in value.split(",") if name.strip()}
    # cache-control is always sealed: the clear one is the relay's no-store.
    return frozenset(names | ALWAYS_SEALED)


def response_selection(clear: Headers, sealed: dict[str, list[str]],
                       headers_enc: bool = True) -> frozenset[str] | None:
    """The client's choice of sealed response headers (spec 8.3).

    The sealed item's value is authentic.  A clear value is honoured only
    with headersEnc=0, where the item cannot carry it: with headersEnc=1 a
    client seals its choice, so a clear one was added on the way, and taking
    it would let an on-path attacker have the response headers sent in clear.
    """
    if RESPONSE_HEADERS_CONTROL_TEXT in sealed:
        return parse_response_selection(",".join(sealed[RESPONSE_HEADERS_CONTROL_TEXT]))
    if headers_enc:
        return None
    values = clear.getRawHeaders(RESPONSE_HEADERS_CONTROL)
    if values:
        return parse_response_selection(",".join(header_text(value) for value in values))
    return None


#: Largest number of header names each of the name memos below remembers.
NAMES_MAX = 1024
_clear_names: dict[bytes, bytes | None] = {}
_sealed_names: dict[str, bytes | None] = {}


def _clear_name(name: bytes) -> bytes | None:
    """The lowercase name of a clear request header, None if it is never forwarded.

    Never forwarded: the relay's own (``x-mte-*``) and this hop's framing
    (Host, Content-Length: the upstream request gets its own, and
    ``outgoing_headers`` drops them anyway).  The names of every request
    are the same few, so each is worked out once (bounded, emptied when full).
    """
    known = _clear_names.get(name, False)
    if known is not False:
        return known  # type: ignore[return-value]
    lower = name.lower()
    result = None if lower in (b"host", b"content-length") or lower.startswith(b"x-mte-") \
        else lower
    if len(_clear_names) >= NAMES_MAX:
        _clear_names.clear()
    _clear_names[name] = result
    return result


def _sealed_name(name: str) -> bytes | None:
    """A sealed header's name as bytes, None if it is never forwarded (memo as above)."""
    known = _sealed_names.get(name, False)
    if known is not False:
        return known  # type: ignore[return-value]
    raw = name.encode("ascii")
    result = None if raw in NOT_FORWARDED or raw.startswith(b"x-mte-") else raw
    if len(_sealed_names) >= NAMES_MAX:
        _sealed_names.clear()
    _sealed_names[name] = result
    return result


def upstream_request_headers(clear: Headers, sealed: dict[str, list[str]],
                             body_enc: bool) -> Headers:
    """Clear headers, minus this hop's and the relay's own, with the sealed ones over them.

    Hop-by-hop rules (including the names a clear ``Connection`` nominates)
    apply to the clear headers of this hop only: a ``Connection`` header
    added on the way must not strip an authenticated header.  The result
    carries no ``Connection`` header, so nothing later re-applies them,
    and no Host or Content-Length (the upstream request sets its own).
    """
    merged = Headers()
    hop = hop_by_hop_names(clear)
    for name, values in clear.getAllRawHeaders():
        lower = _clear_name(name)
        if lower is None or lower in hop or (body_enc and lower == b"content-type"):
            continue
        merged.setRawHeaders(name, list(values))
    for name, values in sealed.items():
        raw = _sealed_name(name)
        if raw is None:
            continue
        merged.setRawHeaders(raw, [value.encode("utf-8") for value in values])
    return merged


#: Largest number of upstream response header names :func:`_returned_name` remembers.
RETURNED_NAMES_MAX = 1024
_returned_names: dict[bytes, tuple[bytes, str] | None] = {}


def _returned_name(name: bytes) -> tuple[bytes, str] | None:
    """(lowercase name, its text) of a response header returned to the client, or None.

    An upstream sends the same few names on every answer: each is worked
    out once and remembered (a bounded memo, emptied when full).
    """
    known = _returned_names.get(name, False)
    if known is not False:
        return known  # type: ignore[return-value]
    lower = name.lower()
    if lower in NOT_RETURNED or lower.startswith((b"access-control-", b"x-mte-")):
        result = None
    else:
        result = (lower, lower.decode("ascii", "replace"))
    if len(_returned_names) >= RETURNED_NAMES_MAX:
        _returned_names.clear()
    _returned_names[name] = result
    return result


def split_response_headers(headers: Headers, selection: frozenset[str] | None
                           ) -> tuple[dict[str, list[str]], list[tuple[bytes, bytes]]]:
    """(headers to seal, headers to send in clear) of an upstream response."""
    sealed: dict[str, list[str]] = {}
    clear: list[tuple[bytes, bytes]] = []
    for name, values in headers.getAllRawHeaders():
        returned = _returned_name(name)
        if returned is None:
            continue
        lower, text = returned
        if selection is None or text in selection:
            sealed.setdefault(text, []).extend([header_text(value) for value in values])
        else:
            clear.extend((lower, value) for value in values)
    return sealed, clear


@implementer(IBodyProducer)
class OpeningProducer:
    """The upstream request's body: the client's sealed stream, opened as it flows.

    When a chunk fails to open, the Deferred of ``startProducing`` fails and
    Twisted's HTTP client aborts the upstream connection, so the upstream
    sees an incomplete request rather than a complete, truncated one.
    """

    def __init__(self, source: IBodyProducer, opener: BodyOpener, length: int | object,
                 stopwatch: Stopwatch | None = None) -> None:
        self.source = source
        self.opener = opener
        self.length = length
        self.stopwatch = stopwatch if stopwatch is not None else Stopwatch(None)
        self.failure: DecodeFailed | None = None
        self._consumer: Any = None
        self._result: Deferred[None] = Deferred()

    def startProducing(self, consumer: Any) -> "Deferred[None]":
        self._consumer = consumer
        self.source.startProducing(self).addCallbacks(self._ended, self._source_failed)
        return self._result

    def write(self, data: bytes) -> None:
        if self.failure is not None or self._result.called:
            return
        try:
            plain = self.stopwatch.time(self.opener.feed, data)
        except DecodeFailed as error:
            self._fail(error)
            return
        if plain:
            self._consumer.write(plain)

    def _ended(self, _: object) -> None:
        if self.failure is not None or self._result.called:
            return
        try:
            tail = self.stopwatch.time(self.opener.finish)
        except DecodeFailed as error:
            self._fail(error)
            return
        self.stopwatch.report()
        if tail:
            self._consumer.write(tail)
        self._result.callback(None)
        self._let_go()

    def _source_failed(self, failure: Failure) -> None:
        if not self._result.called:
            self._result.errback(failure)
            self._let_go()

    def _fail(self, error: DecodeFailed) -> None:
        self.failure = error
        stop = getattr(self.source, "discard", None)
        if stop is not None:
            stop()  # keep reading (and dropping) the client's body
        self._result.errback(Failure(error))
        self._let_go()

    def _let_go(self) -> None:
        # The agent's consumer holds its producer (us, wrapped): dropping it
        # once the outcome is told frees both by reference counting instead of
        # leaving a cycle per request for the garbage collector.
        self._consumer = None

    def pauseProducing(self) -> None:
        self.source.pauseProducing()

    def resumeProducing(self) -> None:
        self.source.resumeProducing()

    def stopProducing(self) -> None:
        self.source.stopProducing()


class SealingWriter:
    """Consumer that seals an upstream body on its way to the client (MKE, MKR).

    MKE chunks are sealed as each 64 KiB fills.  Records (MKR) are flushed on
    pause: what the upstream sent in one reactor turn is sealed and written
    at the next, never held for more.  ``finish`` seals what is left as the
    final record.
    """

    def __init__(self, request: IRequest, sealer: BodySealer | RecordSealer,
                 stopwatch: Stopwatch, clock: Any = None, length: int | None = None) -> None:
        self.request = request
        self.sealer = sealer
        self.stopwatch = stopwatch
        self.pending = (TurnCoalescer(clock, self._seal)
                        if clock is not None and isinstance(sealer, RecordSealer) else None)
        #: Record bytes still to come before the body's declared length
        #: (None: unknown).  The piece that completes it is kept for
        #: ``finish`` instead of being flushed at the next turn: the end is
        #: due with it, and sealing it as the final record saves a reactor
        #: call per answer (scheduled, then cancelled by ``finish``).
        self._due = length if self.pending is not None else None
        self._last: list[bytes] = []

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.request.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.request.unregisterProducer()

    def write(self, data: bytes) -> None:
        pending = self.pending
        if pending is None:
            self._seal(data)
            return
        due = self._due
        if due is not None:
            due -= len(data)
            self._due = due
            if due <= 0:
                self._last.append(data)
                return
        pending.write(data)

    def _seal(self, data: bytes) -> None:
        sealed = self.stopwatch.time(self.sealer.feed, data)
        if sealed:
            self.request.write(sealed)

    def finish(self) -> bytes:
        """The last sealed bytes: whatever is pending, sealed as the end of the body."""
        pending, self.pending = self.pending, None  # it holds self._seal: no cycle left
        tail = pending.take() if pending is not None else b""
        last, self._last = self._last, []
        if last:
            tail = b"".join((tail, *last))
        if isinstance(self.sealer, RecordSealer):
            return self.stopwatch.time(self.sealer.finish, tail)
        return self.stopwatch.time(self.sealer.finish)

    def discard(self) -> None:
        pending, self.pending = self.pending, None
        self._last = []
        if pending is not None:
            pending.discard()


def adopt_request_id(request: IRequest, sealed: list[str] | None) -> None:
    """Take the request id from the sealed headers, where an outbound relay puts it.

    It is authenticated there, and it is what the application's logs carry,
    so the upstream and this relay's later log lines use the same id.
    """
    if not sealed or not isinstance(request, RelayRequest) or request.request_id is None:
        return  # only an id the site gave is replaced (web/responses.request_id)
    chosen = request_id_for(sealed[0].encode("latin-1", "replace"))
    if chosen != sealed[0]:
        return  # not a usable id; keep ours
    request.request_id = chosen


class InboundProxy:
    """Everything the encrypted proxy needs, shared by all requests."""

    def __init__(self, store: IPairStore, keys: KeyCache, forwarder: UpstreamForwarder,
                 secrets: tuple[bytes, ...],
                 mte_routes: tuple[RoutePattern, ...] | None = None,
                 mte_body_limit: int = MTE_BODY_LIMIT, metrics: Metrics = NO_METRICS,
                 stream_idle_timeout: float | None = None) -> None:
        self.metrics = metrics
        self.stream_idle_timeout = stream_idle_timeout
        self.store = store
        self.keys = keys
        self.forwarder = forwarder
        self.secrets = secrets
        #: Client ids that verified under ``secrets`` (every request presents one).
        self.client_ids = VerifiedIds()
        self.mte_routes = mte_routes
        self.mte_body_limit = mte_body_limit

    def render(self, request: IRequest) -> Any:
        """Stateless checks answer at once; the rest runs in an :class:`Exchange`."""
        try:
            header, token, client = self._check(request)
            target = wire_target(request, header)
        except RelayError as error:
            return relay_error_body(request, error)
        except Refused as refused:
            return error_body(request, refused.status, refused.message, refused.reason,
                              **refused.extra)
        Exchange(self, request, header, token, client, target).start()
        return NOT_DONE_YET

    def _check(self, request: IRequest) -> tuple[RelayHeader, bytes, str]:
        headers = request.requestHeaders
        try:
            value = single_value(headers.getRawHeaders(RELAY_HEADER), RELAY_HEADER)
            if value is None:
                raise MissingHeader("x-mte-relay header is required")
            header = RelayHeader.parse(value)
            token = single_value(headers.getRawHeaders(ITEM_HEADER), ITEM_HEADER)
        except RepeatedHeader as repeated:
            raise MalformedHeader(str(repeated)) from None
        if token is None:
            raise MissingHeader("x-mte-relay-eh header is required")
        body = request_has_body(request)
        if body and not header.body_enc:
            raise Refused(400, "Bad request",
                           "a request body must be sealed (bodyEnc=1); clear bodies are refused")
        length = declared_length(headers)
        if header.body_enc and length is not None:
            if header.mode == MODE_MTE and length > self.mte_body_limit:
                raise Refused(413, "Payload too large",
                               f"an MTE body may be at most {self.mte_body_limit} sealed bytes;"
                               " use MKE framing for larger bodies")
            check_sealed_length(length, header.mode)  # impossible sizes: 562
        client = self.client_ids.verify(header.client_id, self.secrets)
        return header, token, client


def wire_target(request: IRequest, header: RelayHeader) -> bytes:
    """The request target the headers item is bound to (spec 6.3, 5.2).

    Per-request form: the request line's target.  Fixed-path form: the path
    is :data:`FIXED_PATH` and the url token travels in ``x-mte-relay-url``;
    the message is sealed exactly as in the per-request form, so its target
    is ``"/" + token`` - the two forms differ only in where the token
    travels, and the headers item still binds it.
    """
    tokens = request.requestHeaders.getRawHeaders(URL_TOKEN_HEADER, [])
    if request.path != FIXED_TARGET:
        if tokens:
            raise MalformedHeader(f"{URL_HEADER} is only sent on {FIXED_PATH}")
        return request.uri
    if not header.url_enc:
        raise MalformedHeader(f"{FIXED_PATH} carries only sealed urls (urlEnc=1)")
    if request.uri != FIXED_TARGET:
        raise Refused(400, "Bad request", f"{FIXED_PATH} takes no query")
    if not tokens:
        raise MissingHeader(f"{URL_HEADER} header is required on {FIXED_PATH}")
    if len(tokens) > 1:
        raise MalformedHeader(f"{URL_HEADER} sent more than once")
    return b"/" + tokens[0].strip(b" \t")


class Exchange(BaseExchange):
    """One encrypted request, from its pair lookup to the sealed answer."""

    #: Set when the upstream request is started: from then on an error
    #: answer cannot promise that nothing reached the upstream.
    forwarded = False

    def __init__(self, proxy: InboundProxy, request: IRequest, header: RelayHeader,
                 token: bytes, client: str, target: bytes | None = None) -> None:
        super().__init__(request)
        self.proxy = proxy
        #: What the headers item is bound to: the wire target, or "/" + the
        #: x-mte-relay-url token on the fixed path.
        self.target = request.uri if target is None else target
        self.header = header
        self.token = token
        self.client = client
        self.selection: frozenset[str] | None = None
        self.decoding = crypto_stopwatch(proxy.metrics, "request_decode")
        self.encoding = crypto_stopwatch(proxy.metrics, "response_encode")

    def answer_error(self, status: int, message: str, reason: str | None = None,
                     upstream_reached: str = NOT_REACHED, logged: bool = False,
                     **extra: Any) -> None:
        if not self.gone:
            answer = unlogged_error_body if logged else error_body
            self._send(answer(self.request, status, message, reason, upstream_reached,
                              **extra))


    def _reached(self, error: BaseException | None = None) -> str:
        """``upstreamReached`` of an error answer (spec 10.1).

        ``no`` until the upstream request is started, and after it only when
        its connection never opened; once started, the upstream may hold the
        request head and part of the body (a streamed body that failed to
        open later is aborted, yet what was forwarded was received).
        """
        if not self.forwarded:
            return NOT_REACHED
        if isinstance(error, UpstreamError) and error.not_sent:
            return NOT_REACHED
        return MAYBE_REACHED

    async def run(self) -> None:
        try:
            await self._exchange()
        except RelayError as error:
            self._send(relay_error_body(self.request, error, self._reached(error)))
        except Refused as refused:
            self.answer_error(refused.status, refused.message, refused.reason,
                              self._reached(refused), **refused.extra)
        except StoreUnavailable as error:
            log.warn("refused {path}: 503 pair store unavailable ({why})",
                     path=self.request.path.decode("latin-1")[:200], why=str(error),
                     request_id=request_id(self.request))
            self.answer_error(503, "Pair store unavailable",
                              "the relay cannot reach its pair store; retry",
                              self._reached(error), logged=True)
        except BodyTooLarge as error:
            self.answer_error(413, "Payload too large",
                              f"an MTE body may be at most {self.proxy.mte_body_limit} sealed "
                              "bytes; use MKE framing for larger bodies", self._reached(error))
        except UpstreamError as error:
            if self.gone:
                # The client hung up and its upstream request was cancelled
                # (a cancelled connect reads as a DNS failure): nothing failed.
                log.debug("encrypted request abandoned by the client ({why})", why=str(error),
                          request_id=request_id(self.request))
                return
            log.warn("upstream failed for an encrypted request: {why}", why=str(error),
                     request_id=request_id(self.request))
            message = "Upstream timed out" if error.status == 504 else "Upstream unreachable"
            self.answer_error(error.status, message, str(error), self._reached(error),
                              logged=True)
        except (ClientGone, CancelledError):
            pass

    def _crashed(self, failure: Failure) -> None:
        log.failure("encrypted request failed", failure, request_id=request_id(self.request))
        self.answer_error(500, "Internal error", "the relay failed to handle this request",
                          self._reached(), logged=True)

    # ---------------------------------------------------------------- request

    async def _keys(self) -> tuple[MessageCipher, dict[str, list[str]], CachedPair]:
        """Find the pair and open the headers item, the first authenticated step.

        Cached keys that fail are re-read from the store once: the pair may
        have been lost and its id paired again (new keys) through another
        replica.
        """
        pair = self.proxy.keys.peek(self.client, self.header.pair_id)
        if pair is None:
            pair = await self._fetch()
            return (*self._open_headers(pair.keys), pair)
        try:
            return (*self._open_headers(pair.keys), pair)
        except DecodeFailed:
            return await self._reopen(pair)

    async def _fetch(self) -> CachedPair:
        pair = await self.proxy.keys.fetch(self.client, self.header.pair_id)
        if pair is None:
            raise StateNotFound("unknown or expired pair")
        return pair

    async def _reopen(self, tried: CachedPair
                      ) -> tuple[MessageCipher, dict[str, list[str]], CachedPair]:
        """Open the headers item with the store's pair, when ``tried`` was not it."""
        fresh = await self._fetch()
        if fresh.generation == tried.generation:
            raise DecodeFailed("headers item failed authentication")
        return (*self._open_headers(fresh.keys), fresh)

    def _open_headers(self, keys: PairKeys) -> tuple[MessageCipher, dict[str, list[str]]]:
        """The request's cipher (reused for url and body) and its opened headers."""
        request = self.request
        cipher = MessageCipher(keys, self.header, Direction.C2S)
        return cipher, self.decoding.time(
            cipher.open_request_headers, self.token, request.method, self.target,
            has_body=request_has_body(request))

    async def _accepted(self, opened: tuple[MessageCipher, dict[str, list[str]], CachedPair]
                        ) -> tuple[MessageCipher, dict[str, list[str]]]:
        """Accept seq for the generation that opened the message (spec 8.2 step 5).

        STALE means the message opened under keys the pair id had before
        (a cache still holding them after the pair was lost and the id
        paired again): the request is re-opened with the store's current
        pair, which a message of the old pair cannot pass (562), and
        nothing was recorded, so the current pair is untouched.
        """
        cipher, sealed, pair = opened
        verdict = await self._accept(pair)
        if verdict is Verdict.STALE:
            self.proxy.keys.forget(self.client, self.header.pair_id)
            cipher, sealed, pair = await self._reopen(pair)
            verdict = await self._accept(pair)  # STALE again: 560 below
        if verdict is Verdict.ACCEPTED:
            return cipher, sealed
        if verdict in (Verdict.REPLAYED, Verdict.TOO_OLD):
            raise DecodeFailed(f"sequence number {verdict.value.replace('_', ' ')}")
        self.proxy.keys.forget(self.client, self.header.pair_id)
        if verdict is Verdict.EXHAUSTED:
            raise RepairRequired("pair reached its maximum age or message count")
        raise StateNotFound("unknown or expired pair")

    def _accept(self, pair: CachedPair) -> "Deferred[Verdict]":
        return self.proxy.store.accept(self.client, self.header.pair_id, self.header.seq,
                                       pair.generation)

    def _target(self, cipher: MessageCipher) -> bytes:
        uri = self.target
        if self.header.url_enc:
            target = self.decoding.time(cipher.open_url, uri[1:]).encode("ascii")
        else:
            target = uri
        path = target.split(b"?", 1)[0]
        problem = path_problem(path)
        if problem:
            raise Refused(400, "Bad request", problem)
        routes = self.proxy.mte_routes
        if routes is not None and not matches_any(routes, path.decode("latin-1")):
            raise Refused(404, "Not found", "route is not in MTE_ROUTES")
        return target

    def _declared_length(self, sealed: dict[str, list[str]]) -> int | None:
        """An MKR body's declared plaintext length (spec 7.3), if the client sent one.

        It travels in the headers item; with headersEnc=0 (where the item
        holds only content-type) in clear - a wrong clear value can only make
        the body fail (562, the upstream request aborted), as any tampering can.
        """
        values = sealed.get(BODY_LENGTH_CONTROL)
        if values is None and not self.header.headers_enc:
            raw = self.request.requestHeaders.getRawHeaders(BODY_LENGTH_CONTROL.encode(), None)
            values = None if raw is None else [header_text(value) for value in raw]
        if values is None:
            return None
        if len(values) != 1:
            raise DecodeFailed(f"{BODY_LENGTH_CONTROL} must have one value")
        return parse_body_length(values[0])

    def _whole_body_limit(self, length: int | None, declared: int | None) -> int | None:
        """The read limit when the body is opened whole before forwarding, else None.

        MTE is one item.  A streamed body that is a single final chunk or
        record (by its Content-Length), or whose declared plain length is 0,
        is opened whole too: an empty plain body is complete at the upstream
        the moment it is sent (Content-Length 0), so streaming it would let a
        truncated or forged final chunk be executed before it authenticated.
        """
        mode = self.header.mode
        if mode == MODE_MTE:
            return self.proxy.mte_body_limit
        single = SEALED_CHUNK_SIZE if mode == MODE_MKE else RECORD_MAX + RECORD_OVERHEAD
        if length is not None and length <= single:
            return length
        if declared == 0:
            return single
        return None

    async def _body(self, cipher: MessageCipher, sealed: dict[str, list[str]]
                    ) -> IBodyProducer | None:
        if not self.header.body_enc:
            return None
        request = self.request
        declared = self._declared_length(sealed) if self.header.mode == MODE_MKR else None
        opener = cipher.body_opener(declared)
        length = declared_length(request.requestHeaders)
        limit = self._whole_body_limit(length, declared)
        if limit is not None:
            whole = await read_body(request, limit)
            plain = self.decoding.time(lambda: opener.feed(whole) + opener.finish())
            self.decoding.report()
            return BytesProducer(plain)
        source = request_body(request)
        if source is None:  # bodyEnc=1 with no body at all: the final chunk is missing
            raise DecodeFailed("body truncated")
        if self.header.mode == MODE_MKR:
            plain: int | object = UNKNOWN_LENGTH if declared is None else declared
        else:
            plain = UNKNOWN_LENGTH if length is None else plain_length(length, MODE_MKE)
        return OpeningProducer(source, opener, plain, self.decoding)

    async def _exchange(self) -> None:
        opened = await self._keys()
        adopt_request_id(self.request, opened[1].get("x-request-id"))
        cipher, sealed_headers = await self._accepted(opened)
        keys = cipher.keys
        target = self._target(cipher)
        body = await self._body(cipher, sealed_headers)
        if body is None:
            self.decoding.report()
        request = self.request
        clear = request.requestHeaders
        self.selection = response_selection(clear, sealed_headers, self.header.headers_enc)
        merged = upstream_request_headers(clear, sealed_headers, self.header.body_enc)
        forwarder = self.proxy.forwarder
        outgoing = forwarder.outgoing_headers(merged, forwarded_for(request),
                                              request_id=request_id(request))
        self.forwarded = True
        self.pending = forwarder.forward(request.method, target, outgoing, body,
                                          role="inbound")
        try:
            response = await self.pending
        except UpstreamError:
            if isinstance(body, OpeningProducer) and body.failure is not None:
                raise body.failure from None
            raise
        finally:
            self.pending = None
        if self.gone:
            abandon(response)
            return
        await self._respond(keys, response)

    # --------------------------------------------------------------- response

    async def _respond(self, keys: PairKeys, response: IResponse) -> None:
        request = self.request
        status = response.code
        no_body = (request.method == b"HEAD" or status in (204, 304) or 100 <= status < 200)
        if no_body or not self.header.streaming:
            mode = MODE_MTE
        else:
            mode = MODE_MKR if self.header.records else MODE_MKE
        reply = self.header.for_response(mode=mode, body_enc=not no_body)
        cipher = MessageCipher(keys, reply, Direction.S2C)
        sealed, clear = split_response_headers(response.headers, self.selection)
        if mode == MODE_MKR and isinstance(response.length, int):
            # Records are sent chunked; the length the upstream declared
            # travels sealed, so relay A can pass Content-Length on (spec 7.3).
            sealed[BODY_LENGTH_CONTROL] = [str(response.length)]
        plain: bytes | None = None
        if no_body:
            read_and_drop(response)
        elif mode == MODE_MTE:
            try:
                plain, too_long = await read_limited(response, self.proxy.mte_body_limit)
            except Exception as error:  # the upstream connection broke mid-body
                raise UpstreamError(f"upstream body interrupted: {error}") from None
            if too_long:
                raise Refused(502, "Upstream response too large",
                               f"a response above {self.proxy.mte_body_limit} bytes needs "
                               "streaming=1 (MKE framing)")
        item = self.encoding.time(cipher.seal_response_headers, sealed, status)
        if self.gone:
            return
        request.setResponseCode(status, response.phrase or None)
        headers = request.responseHeaders
        for name, value in clear:
            headers.addRawHeader(name, value)
        headers.setRawHeaders(b"cache-control", [NO_STORE])
        headers.setRawHeaders(RELAY_HEADER, [reply.format().encode("ascii")])
        headers.setRawHeaders(ITEM_HEADER, [item.encode("ascii")])
        if no_body:
            self.encoding.report()
            request.finish()
            return
        headers.setRawHeaders(CONTENT_TYPE, [SEALED_CONTENT_TYPE])
        if plain is not None:
            sealed_body = self.encoding.time(cipher.seal_body, plain)
            self.encoding.report()
            headers.setRawHeaders(b"content-length", [b"%d" % len(sealed_body)])
            request.write(sealed_body)
            request.finish()
            return
        if mode == MODE_MKE and isinstance(response.length, int):
            length = sealed_length(response.length, MODE_MKE)
            headers.setRawHeaders(b"content-length", [b"%d" % length])
        clock = self.proxy.forwarder.clock
        writer = SealingWriter(request, cipher.body_sealer(), self.encoding, clock,
                               response.length if isinstance(response.length, int) else None)

        def interrupted(error: Exception) -> None:
            writer.discard()
            log.info("upstream body interrupted: {why}", why=str(error) or type(error).__name__,
                     request_id=request_id(request))

        if await self.stream_answer(response, writer, clock, self.proxy.stream_idle_timeout,
                                    interrupted):
            tail = writer.finish()
            self.encoding.report()
            request.write(tail)
            request.finish()
