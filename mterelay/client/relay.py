"""``RelayClient``: treq-like requests, end-to-end encrypted through an mterelay.

    client = RelayClient(reactor, pairs=5)
    response = await client.post("https://relay.example/api/login",
                                 headers={"content-type": ["application/json"]},
                                 data=b'{"user": "a"}')
    body = await treq.content(response)

Per relay origin (scheme://host:port) it validates once (``HEAD
/api/mte-relay``), pairs lazily (:class:`~mterelay.client.pool.PairPool`),
seals each request on a pair of the pool and opens the answer.  It recovers
by itself, once per request: 566 → validate again, re-pair, retry; 559, 560,
562, 563, 564 → replace that pair, retry on a fresh one.  Pair ids are fresh
random ids, never reused; a pairing answered 409 (an id in use) is sent
once more with new ids.  The retry (spec 10.2) is made only when the body
can be sent again (bytes, a seekable file) and either the relay said
nothing reached the upstream (``upstreamReached: no``) or the method is
idempotent: a POST whose streamed body reached the upstream in part before
relay B refused it (562, ``maybe``) is never sent twice.  An answer that
fails to authenticate here (562 locally) is never resent, and its pair is
dropped.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import RequestGenerationFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IResponse

from mterelay.client.bodies import (BodyData, BytesProducer, OpeningProtocol, SealedBytes,
                                    SealingProducer, body_data, discard, read_limited, seal_whole)
from mterelay.client.errors import NotARelay, PairingFailed, retry_after_seconds
from mterelay.client.messages import (HeaderList, HeadersInput, OpenedResponse,
                                      OutgoingRequest, SealOptions, end_to_end,
                                      normalize_headers, open_response, parse_relay_error,
                                      seal_request)
from mterelay.client.pool import Lease, PairPool
from mterelay.client.response import PlainRequest, RelayResponse, deliver_bytes
from mterelay.http import names
from mterelay.protocol.clientid import client_uuid, is_client_id
from mterelay.protocol.errors import (DecodeFailed, EncodeFailed, InvalidClientId,
                                      MalformedPairResponse, RelayError)
from mterelay.protocol.header import (FIXED_PATH_HEADER, FRAMING_HEADER, MODE_MKR, MODE_MTE,
                                      parse_fixed_path, parse_framings)
from mterelay.protocol.keys import PairKeys
from mterelay.protocol.pairing import finish_all, start_pairing
from mterelay.protocol.records import RECORD_OVERHEAD
from mterelay.protocol.retry import (PAIR_ID_IN_USE, RETRY_REPAIR, RETRY_REVALIDATE,
                                     assumed_upstream_reached, may_resend, refusal_summary)
from mterelay.protocol.sealing import MAX_MTE_BODY, plain_length, sealed_length
from mterelay.protocol.urls import split_url
from mterelay.http.connections import LeanPool, persistent_agent
from mterelay.http.failures import wrapped
from mterelay.http.observe import NO_METRICS, Metrics
from mterelay.http.timeouts import with_timeout
from mterelay.http.timing import Stopwatch, crypto_stopwatch

__all__ = ["RelayClient", "RETRY_REPAIR", "RETRY_REVALIDATE"]

log = Logger(namespace="mterelay.client")

RELAY_PATH = names.text(names.RELAY_PATH)
PAIR_PATH = names.text(names.PAIR_PATH)
#: A relay-made error is a small JSON object; read no more than this of it.
ERROR_BODY_LIMIT = 64 * 1024
#: 64 pair entries are ~250 KB of JSON.
PAIR_BODY_LIMIT = 4 * 1024 * 1024
#: Validation and pairing are shared by every waiting request, so they are
#: not cancelled with one of them; this bounds them when ``timeout`` is unset.
HANDSHAKE_TIMEOUT = 30.0
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def timed(d: "Deferred[Any]", seconds: float, clock: IReactorTime, what: str
          ) -> "Deferred[Any]":
    """Cancel ``d`` after ``seconds``; it then fails with ``defer.TimeoutError``."""
    return with_timeout(d, seconds, clock,
                        lambda: DeferredTimeout(f"{what}: no answer within {seconds:g} s"))


def _agent_error(error: BaseException) -> BaseException:
    """Our own sealing error (561) out of the agent's RequestGenerationFailed."""
    if isinstance(error, RequestGenerationFailed):
        return wrapped(error, RelayError) or error
    return error


class _PeerRelay:
    """The I/O half of one relay origin: validation and pairing requests."""

    def __init__(self, client: "RelayClient", origin: str) -> None:
        self.client = client
        self.origin = origin
        self.pool = PairPool(client.pairs, self.validate, self.make_pairs,
                             clock=client.reactor)
        #: The relay announced record framing (HEAD /api/mte-relay, spec 5.1).
        self.records = False
        #: The fixed path the relay announced for sealed-URL requests (spec 5.2).
        self.fixed_path: str | None = None

    def _bounded(self, d: "Deferred[Any]", what: str) -> "Deferred[Any]":
        return timed(d, self.client.timeout or HANDSHAKE_TIMEOUT, self.client.reactor,
                            what)

    def validate(self) -> "Deferred[str]":
        return self._bounded(ensureDeferred(self._validate()), "validation")

    async def _validate(self) -> str:
        # Never send an old id: the relay answers 566 to a HEAD carrying one
        # that does not verify (spec 2), and we only get here without one.
        response = await self.client.agent.request(
            b"HEAD", (self.origin + RELAY_PATH).encode("ascii"), Headers(), None)
        body, _ = await read_limited(response, ERROR_BODY_LIMIT)
        if 559 <= response.code <= 569 and not response.headers.hasHeader(b"x-mte-relay"):
            raise parse_relay_error(response.code, body)
        values = response.headers.getRawHeaders(b"x-mte-relay", [])
        client_id = values[0].decode("latin-1").strip() if len(values) == 1 else ""
        if response.code != 200 or not is_client_id(client_id):
            raise NotARelay(f"{self.origin} answered HEAD {RELAY_PATH} with {response.code}"
                            f"{'' if values else ' and no x-mte-relay header'}")
        announced = response.headers.getRawHeaders(FRAMING_HEADER.encode("ascii"))
        self.records = MODE_MKR in parse_framings(b",".join(announced) if announced else None)
        fixed = response.headers.getRawHeaders(FIXED_PATH_HEADER.encode("ascii"), [])
        self.fixed_path = parse_fixed_path(fixed[0]) if len(fixed) == 1 else None
        log.info("validated relay {origin}", origin=self.origin)
        return client_id

    def make_pairs(self, client_id: str, count: int) -> "Deferred[list[PairKeys]]":
        return self._bounded(ensureDeferred(self._make_pairs(client_id, count)), "pairing")

    async def _make_pairs(self, client_id: str, count: int) -> list[PairKeys]:
        """Pair ``count`` fresh ids; a 409 (an id in use) is retried once with new ids.

        Ids are 128 random bits, never reused, so a 409 means someone (who
        saw this very request on the wire) paired them first; the relay
        stored none of the batch.  Retrying with the same ids would only be
        refused again.
        """
        try:
            return await self._pair_batch(client_id, count)
        except PairingFailed as error:
            if error.status != PAIR_ID_IN_USE:
                raise
            log.info("pairing refused: a pair id is already in use; pairing new ids once")
        return await self._pair_batch(client_id, count)

    async def _pair_batch(self, client_id: str, count: int) -> list[PairKeys]:
        bare = client_uuid(client_id)
        pending = [start_pairing(bare) for _ in range(count)]
        body = json.dumps([p.request_entry() for p in pending],
                          separators=(",", ":")).encode("ascii")
        headers = Headers({b"x-mte-relay": [client_id.encode("ascii")],
                           b"content-type": [b"application/json"]})
        response = await self.client.agent.request(
            b"POST", (self.origin + PAIR_PATH).encode("ascii"), headers, BytesProducer(body))
        answer, too_long = await read_limited(response, PAIR_BODY_LIMIT)
        if response.code != 200:
            if 559 <= response.code <= 569:
                raise parse_relay_error(response.code, answer)
            hold = (retry_after_seconds(response.headers.getRawHeaders(b"retry-after"))
                    if response.code == 429 else None)
            raise PairingFailed(response.code, refusal_summary(answer), hold)
        if too_long:
            raise MalformedPairResponse("$", "pair response too large")
        keys = finish_all(pending, answer)
        log.info("paired {count} pair(s) with {origin}", count=count, origin=self.origin)
        self.client.metrics.pair_created("outbound", count)
        return keys


class RelayClient:
    """An HTTP client whose requests travel end-to-end encrypted through an mterelay.

    :param reactor: provides time (timeouts, yielding while a body streams)
        and, without ``agent``, the network.
    :param pairs: pairs kept per relay origin (1..64); requests share them.
    :param agent: any IAgent (tests: ``RequestTraversalAgent``); by default an
        ``Agent`` over a persistent pool - no cookies, no redirects, no
        decompression, which would all be wrong for a transparent client.
    :param seal_url, seal_headers, framing, response_headers: what is sealed,
        see :class:`~mterelay.client.messages.SealOptions`.
    :param pool_size: persistent connections per relay (own agent only).
    :param timeout: seconds until a request (pairing included, body reading
        excluded) fails with ``twisted.internet.defer.TimeoutError``.
    :param fixed_path: send sealed-URL requests on the fixed path a relay
        announces (``x-mte-relay-fixed-path``, spec 5.2) rather than on a
        unique path each; no effect with ``seal_url=False`` or an older relay.
    :param max_origins: relay origins whose state (client id, pairs, idle
        connections) is kept; the least recently used is dropped past it, so
        a caller naming ever new origins (relay A's ``x-mte-upstream``)
        cannot grow memory without bound.
    """

    def __init__(self, reactor: Any, *, pairs: int = 5, agent: IAgent | None = None,
                 seal_url: bool = True, seal_headers: str | Iterable[str] = "all",
                 framing: str = "MKR", response_headers: str | Iterable[str] = "*",
                 pool_size: int = 10, timeout: float | None = None,
                 connect_timeout: float = 10.0, metrics: Metrics = NO_METRICS,
                 max_origins: int = 256, fixed_path: bool = True) -> None:
        if not 1 <= pairs <= 64:
            raise ValueError("pairs must be 1..64")
        if max_origins < 1:
            raise ValueError("max_origins must be at least 1")
        self.max_origins = max_origins
        if not isinstance(fixed_path, bool):
            raise ValueError("fixed_path must be a bool")
        #: Send sealed-URL requests on the fixed path a relay announces (spec 5.2).
        self.fixed_path = fixed_path
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive")
        self.reactor: IReactorTime = reactor
        self.pairs = pairs
        self.options = SealOptions.build(seal_url=seal_url, seal_headers=seal_headers,
                                         framing=framing, response_headers=response_headers)
        self.timeout = timeout
        #: Crypto times, pairs made (the outbound relay's RelayMetrics; else nowhere).
        self.metrics = metrics
        self._pool: LeanPool | None = None
        if agent is None:
            agent, self._pool = persistent_agent(reactor, pool_size, 240, connect_timeout)
        self.agent: IAgent = agent
        self._origins: OrderedDict[str, _PeerRelay] = OrderedDict()

    def close(self) -> "Deferred[None]":
        """Close the cached connections of the client's own pool."""
        if self._pool is None:
            return succeed(None)
        return self._pool.closeCachedConnections()

    def origin_pool(self, url: str) -> PairPool:
        """The pair pool of ``url``'s relay origin (for inspection and tests)."""
        return self._origin(split_url(url)[0]).pool

    def _origin(self, origin: str) -> _PeerRelay:
        state = self._origins.get(origin)
        if state is not None:
            self._origins.move_to_end(origin)
            return state
        state = self._origins[origin] = _PeerRelay(self, origin)
        while len(self._origins) > self.max_origins:
            evicted, _ = self._origins.popitem(last=False)
            # Requests in flight keep their _PeerRelay; the pairs die with it.
            forget = getattr(self.agent, "forget_origin", None)
            if forget is not None:
                forget(evicted.encode("ascii"))
            log.debug("forgot relay {origin} (least recently used of {count})",
                      origin=evicted, count=self.max_origins)
        return state

    # ------------------------------------------------------------ requests

    def request(self, method: str | bytes, url: str | bytes, headers: HeadersInput = None,
                data: Any = None, *, options: SealOptions | None = None
                ) -> "Deferred[IResponse]":
        """Send one request through the relay; fires with a :class:`RelayResponse`.

        ``data`` is bytes, a binary file (streamed; a seekable one from its
        current position, and it can be re-read for a retry; the client never
        closes it) or an IBodyProducer (streamed, not retried), or None.

        Body rule: ``None`` sends no body (bodyEnc=0).  A body known to be
        empty (``b""``, an empty file, a producer of length 0) is sent sealed
        (16 bytes, bodyEnc=1) for POST, PUT and PATCH - so the upstream sees
        an empty body, as sent - and not at all for other methods.  Anything
        else is sealed with Content-Length when its length is known, chunked
        otherwise.

        Fails with a :class:`~mterelay.protocol.errors.RelayError` (a relay
        55x not recovered, 561 when a body cannot be sealed, 562 when the
        answer does not authenticate), :class:`NotARelay`,
        :class:`PairingFailed`, or the agent's own errors (ConnectError,
        ResponseFailed, ...).

        ``options`` (a :class:`SealOptions`) replaces the client's own for this
        request only, so one client - one pool of pairs - can serve callers
        that each choose what is sealed (the outbound relay's control headers).
        """
        method_text = (method.decode("ascii") if isinstance(method, bytes) else method).upper()
        try:
            prepared = self._prepare(method_text, url, headers, data, options or self.options)
            # The common case - a pair ready - is sent as a Deferred chain, not
            # a coroutine; a refused first attempt goes on in _send, as any
            # request without a ready pair does from the start.
            lease = prepared.state.pool.lease_now(0)
            if lease is None:
                done = ensureDeferred(self._send(prepared))
            else:
                done = self._attempt(prepared, lease).addCallbacks(
                    self._first_outcome, self._first_failed,
                    callbackArgs=(prepared, lease), errbackArgs=(prepared, lease))
        except Exception:
            done = fail()
        if self.timeout is not None:
            done = timed(done, self.timeout, self.reactor, "request")
        return done

    def get(self, url: str | bytes, **kwargs: Any) -> "Deferred[IResponse]":
        return self.request("GET", url, **kwargs)

    def head(self, url: str | bytes, **kwargs: Any) -> "Deferred[IResponse]":
        return self.request("HEAD", url, **kwargs)

    def post(self, url: str | bytes, data: Any = None, **kwargs: Any) -> "Deferred[IResponse]":
        return self.request("POST", url, data=data, **kwargs)

    def put(self, url: str | bytes, data: Any = None, **kwargs: Any) -> "Deferred[IResponse]":
        return self.request("PUT", url, data=data, **kwargs)

    def patch(self, url: str | bytes, data: Any = None, **kwargs: Any) -> "Deferred[IResponse]":
        return self.request("PATCH", url, data=data, **kwargs)

    def delete(self, url: str | bytes, **kwargs: Any) -> "Deferred[IResponse]":
        return self.request("DELETE", url, **kwargs)

    def _prepare(self, method: str, url: str | bytes, headers: HeadersInput, data: Any,
                 options: SealOptions) -> _Prepared:
        """Everything of a request that does not depend on the pair it is sent on."""
        origin, target = split_url(url)
        state = self._origin(origin)
        plain_headers = end_to_end(normalize_headers(headers))
        body = body_data(data)
        if body is not None and body.length == 0 and method not in _BODY_METHODS:
            body = None
        if (body is not None and body.length is not None
                and options.framing == MODE_MTE and body.length > MAX_MTE_BODY):
            raise EncodeFailed("an MTE body is at most 2**30 bytes; use MKE framing")
        # Its Headers are built only if the caller reads response.request.headers.
        plain_request = PlainRequest(method.encode("ascii"), (origin + target).encode("ascii"),
                                     plain_headers)
        return _Prepared(origin, target, method, state, plain_headers, body, options,
                         plain_request)

    def _first_outcome(self, outcome: IResponse | RelayError, prepared: _Prepared,
                       lease: Lease) -> Any:
        """The first attempt's answer: a response, or a refusal retried in _send."""
        if not isinstance(outcome, RelayError):
            return outcome
        after = self._refused(prepared, lease, outcome, 0, retried=False)
        return ensureDeferred(self._send(prepared, after, retried=True))

    def _first_failed(self, failure: Failure, prepared: _Prepared, lease: Lease) -> Failure:
        if failure.check(DecodeFailed):
            # As in _send: the upstream may have run it (never resent), and
            # the pair's response keys may not be the relay's: drop it.
            prepared.state.pool.drop(lease.pair)
        return failure

    async def _send(self, prepared: _Prepared, after: int = 0, retried: bool = False
                    ) -> IResponse:
        state = prepared.state
        while True:
            try:
                # A pair ready (the common case) is leased without a Deferred.
                lease = state.pool.lease_now(after)
                if lease is None:
                    lease = await state.pool.acquire(after)
            except InvalidClientId:
                # Refused while pairing: the pool already dropped the id.
                if retried:
                    raise
                retried, after = True, 0
                continue
            try:
                outcome = await self._attempt(prepared, lease)
            except DecodeFailed:
                # The answer did not authenticate: the upstream may have run
                # the request (never resent), and the pair's response keys
                # may not be the relay's (a tampered pairing): stop using it.
                state.pool.drop(lease.pair)
                raise
            if not isinstance(outcome, RelayError):
                return outcome
            after = self._refused(prepared, lease, outcome, after, retried)
            retried = True

    def _refused(self, prepared: _Prepared, lease: Lease, outcome: RelayError, after: int,
                 retried: bool) -> int:
        """A relay-made 55x: recover the pool; raise it, or return the retry's mark."""
        state, method, body = prepared.state, prepared.method, prepared.body
        code = outcome.code
        # _attempt has filled upstream_reached in (spec 10.1), so
        # ``streamed`` does not matter here.
        can_retry = not retried and may_resend(
            code, outcome.upstream_reached, method, body is None or body.can_open,
            streamed=body is not None)
        if code == RETRY_REVALIDATE:
            state.pool.forget_client(lease.client_id)
            after = 0
        elif code in RETRY_REPAIR:
            after = state.pool.drop(lease.pair)
        if not can_retry:
            if not retried and outcome.upstream_reached != "no":
                log.info("relay answered {code} after the request may have reached the "
                         "upstream; {method} is not resent", code=code, method=method)
            raise outcome
        log.info("relay answered {code}; retrying once on a new pair", code=code)
        return after

    def _attempt(self, prepared: _Prepared, lease: Lease
                 ) -> "Deferred[IResponse | RelayError]":
        """Send once; a relay-made 55x comes back as a value, for the retry logic."""
        method, body, options = prepared.method, prepared.body, prepared.options
        state = prepared.state
        encoding = crypto_stopwatch(self.metrics, "request_encode")
        outgoing = encoding.time(seal_request, lease.keys, lease.client_id, lease.seq, method,
                                 prepared.target, prepared.headers, has_body=body is not None,
                                 options=options, records=state.records,
                                 fixed_path=state.fixed_path if self.fixed_path else None,
                                 body_length=None if body is None else body.length)
        producer: SealingProducer | SealedBytes | None = None
        if body is not None:
            small = body.small
            if small is not None:
                # Sealed now, in one call: the same bytes the pump would write,
                # with Content-Length even for records (spec 7.2: the whole
                # body was sealed first), so relay B reads and opens it whole.
                sealed = encoding.time(seal_whole, outgoing.cipher.body_sealer(), small)
                encoding.report()
                producer = SealedBytes(sealed, len(sealed))
            else:
                mode = outgoing.header.mode
                # Streamed records are sent chunked: their split is made as data comes.
                length = (None if body.length is None or mode == MODE_MKR
                          else sealed_length(body.length, mode))
                producer = SealingProducer(body.open(self.reactor),
                                           outgoing.cipher.body_sealer(), length, encoding,
                                           clock=self.reactor)
        else:
            encoding.report()
        try:
            sent = self.agent.request(method.encode("ascii"),
                                      (prepared.origin + outgoing.target).encode("ascii"),
                                      outgoing.wire_headers(), producer)
        except Exception as error:
            raise _agent_error(error) from None
        return sent.addCallbacks(self._answered, _not_answered,
                                 callbackArgs=(prepared, lease, outgoing, producer))

    def _answered(self, wire: IResponse, prepared: _Prepared, lease: Lease,
                  outgoing: OutgoingRequest, producer: Any) -> Any:
        if not wire.headers.hasHeader(b"x-mte-relay"):
            return ensureDeferred(self._clear_outcome(wire, prepared, outgoing, producer))
        return self._open(wire, outgoing, lease, prepared.plain_request)

    async def _clear_outcome(self, wire: IResponse, prepared: _Prepared,
                             outgoing: OutgoingRequest, producer: Any
                             ) -> IResponse | RelayError:
        body = prepared.body
        result = await self._clear_answer(wire, prepared.plain_request)
        if isinstance(result, RelayError):
            if producer is not None:
                producer.abandon()  # the relay refused it: stop reading the body
            if result.upstream_reached is None:
                # A relay without upstreamReached (spec 10.1): only a
                # streamed (MKE) body can have failed after forwarding began.
                result.upstream_reached = assumed_upstream_reached(
                    result.code, body is not None and outgoing.header.mode != MODE_MTE)
        return result

    async def _clear_answer(self, wire: IResponse, plain_request: PlainRequest
                            ) -> IResponse | RelayError:
        """A response without x-mte-relay: a relay-made answer, never authentic."""
        if 559 <= wire.code <= 569:
            body, _ = await read_limited(wire, ERROR_BODY_LIMIT)
            return parse_relay_error(wire.code, body, wire.headers)
        if wire.code >= 400:
            return RelayResponse(wire.code, wire.phrase, wire.headers, wire.length,
                                 plain_request, wire.deliverBody, sealed=False)
        discard(wire)
        raise DecodeFailed(f"a {wire.code} answer without x-mte-relay is not authentic")

    def _open(self, wire: IResponse, outgoing: OutgoingRequest, lease: Lease,
              plain_request: PlainRequest) -> Any:
        """Check and open a sealed answer; the body is opened as it is read.

        Returns the response, or a Deferred of it when the body must be read
        first (no body item, or an empty one).
        """
        wire_headers = normalize_headers(wire.headers)
        decoding = crypto_stopwatch(self.metrics, "response_decode")
        try:
            opened = decoding.time(open_response, lease.keys, outgoing.header, wire.code,
                                   wire_headers, outgoing.response_headers)
            length: int | object = UNKNOWN_LENGTH
            if opened.header.mode == MODE_MKR:
                if opened.body_length is not None:
                    length = opened.body_length
            elif opened.body_enc and isinstance(wire.length, int):
                length = plain_length(wire.length, opened.header.mode)
        except DecodeFailed:
            discard(wire)
            raise
        # Both become twisted Headers only if read (the outbound relay copies
        # header_pairs straight into its answer; clear ones are for inspection).
        headers, clear = opened.headers, opened.clear

        def response(length: int | object, deliver: Any) -> RelayResponse:
            return RelayResponse(wire.code, wire.phrase, headers, length, plain_request,
                                 deliver, sealed=True, clear_headers=clear)

        if not opened.body_enc or length == 0:
            return ensureDeferred(self._open_now(wire, opened, decoding, response))

        def deliver(protocol: Any) -> None:
            opener = opened.cipher.body_opener(opened.body_length)
            wire.deliverBody(OpeningProtocol(opener, protocol, decoding))

        return response(length, deliver)

    async def _open_now(self, wire: IResponse, opened: OpenedResponse, decoding: Stopwatch,
                        response: Callable[[int, Any], RelayResponse]) -> IResponse:
        """An answer without a body item, or with an empty one: checked before it is handed on."""
        if not opened.body_enc:
            # HEAD, 1xx, 204, 304: no body item; clear bytes here would be unauthenticated.
            extra, _ = await read_limited(wire, 0)
            if extra:
                raise DecodeFailed("body bytes with bodyEnc=0")
            decoding.report()
            return response(0, deliver_bytes(b""))
        # Authenticate the empty body now: treq never reads a 0-length body.
        records = opened.header.mode == MODE_MKR
        sealed, too_long = await read_limited(wire, RECORD_OVERHEAD if records else 16)
        if too_long:
            raise DecodeFailed("body longer than its declared length")
        opener = opened.cipher.body_opener(opened.body_length)
        plain = decoding.time(lambda: opener.feed(sealed) + opener.finish())
        decoding.report()
        return response(0, deliver_bytes(plain))


def _not_answered(failure: Failure) -> Failure:
    """The agent's failure, our own sealing error (561) taken out of it."""
    if isinstance(failure.value, Exception):
        raise _agent_error(failure.value) from None
    return failure


@attrs.frozen
class _Prepared:
    """One request as _prepare made it, for every attempt."""

    origin: str
    target: str
    method: str
    state: _PeerRelay
    headers: HeaderList
    body: BodyData | None
    options: SealOptions
    plain_request: PlainRequest
