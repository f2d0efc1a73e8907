"""A blocking relay client over any ``send`` callable: what the Locust user runs on.

Locust users are greenlets that call a blocking ``requests`` session, so
they cannot use the Twisted :class:`~mterelay.client.RelayClient`.  This
module gives them the same protocol behaviour - validate once, pair, seal,
open, re-pair and resend once under spec 10.2 - with no reactor, no
threads and no HTTP library of its own: the caller hands in ``send``,
which performs one HTTP exchange and returns a :class:`WireAnswer`.  That
keeps it testable in the trial process (``send`` drives an in-memory
relay) while Locust's own session does the real I/O.

Bodies are held whole (a load test sends bytes it holds), so every body
is replayable in the sense of spec 10.2; the resend is still made only
when ``upstreamReached`` is ``no`` or the method is idempotent.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.web.http_headers import Headers

from mterelay.client.errors import NotARelay, PairingFailed, retry_after_seconds
from mterelay.client.messages import (HeaderList, OutgoingRequest, SealOptions, end_to_end,
                                      finish_pairings, open_response, parse_relay_error,
                                      seal_request)
from mterelay.client.relay import (IDEMPOTENT_METHODS, PAIR_ID_IN_USE, PAIR_PATH, RELAY_PATH,
                                   RETRY_REPAIR, RETRY_REVALIDATE, _reason, split_url)
from mterelay.protocol.clientid import client_uuid, is_client_id
from mterelay.protocol.errors import DecodeFailed, EncodeFailed, RelayError
from mterelay.protocol.header import (FIXED_PATH_HEADER, FRAMING_HEADER, MAX_SEQ, MODE_MKR,
                                      MODE_MTE, parse_fixed_path, parse_framings)
from mterelay.protocol.keys import PairKeys
from mterelay.protocol.pairing import start_pairing
from mterelay.protocol.sealing import MAX_MTE_BODY

__all__ = ["WireAnswer", "Send", "Handshake", "SealedAnswer", "SyncRelayClient"]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


@attrs.frozen
class WireAnswer:
    """One HTTP answer as the wire carried it: headers lowercase, body whole."""

    status: int
    reason: str
    headers: HeaderList
    body: bytes

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    def twisted_headers(self) -> Headers:
        """For :func:`parse_relay_error`, which reads ``x-mte-upstream-reached`` from it."""
        headers = Headers()
        for name, value in self.headers:
            headers.addRawHeader(name.encode("latin-1"), value.encode("utf-8"))
        return headers


#: ``send(method, url, headers, body) -> WireAnswer``; raises on a transport failure.
Send = Callable[[str, str, HeaderList, "bytes | None"], WireAnswer]
#: ``on_handshake(method, path, url, milliseconds, response_length, exception)``.
Handshake = Callable[[str, str, str, float, int, "BaseException | None"], None]


@attrs.frozen
class SealedAnswer:
    """The result of :meth:`SyncRelayClient.request`.

    ``sealed`` is True for an authentic upstream answer (``headers`` and
    ``body`` opened); False for a relay-made clear answer (``headers`` are
    the wire's, unauthenticated).  ``error`` is set when the request failed
    (a 55x not recovered, a local 562): ``status`` and ``body`` are then the
    relay's, if it answered.  ``handshake_ms`` is the time spent validating
    and pairing inside this call, reported separately by the caller.
    """

    status: int
    reason: str
    headers: HeaderList
    body: bytes
    sealed: bool
    error: BaseException | None = None
    handshake_ms: float = 0.0
    resent: bool = False


@attrs.define(eq=False)
class _Pair:
    keys: PairKeys
    client_id: str
    next_seq: int = 0


class SyncRelayClient:
    """One relay origin's client id and pairs, and the per-request protocol.

    :param send: performs one HTTP exchange (see :data:`Send`).
    :param origin: ``scheme://host:port`` of the relay.
    :param pairs: pairs made in one pairing request (1..64); requests take
        them round-robin.  A Locust user sends one request at a time, so 1
        is enough; more only spread seqs over more pairs.
    :param options: what is sealed (:class:`SealOptions`).
    :param fixed_path: use the fixed path the relay announces (spec 5.2).
    :param on_handshake: told about every validation and pairing request,
        so a load test reports them under their own names.
    """

    def __init__(self, send: Send, origin: str, *, pairs: int = 1,
                 options: SealOptions | None = None, fixed_path: bool = True,
                 on_handshake: Handshake | None = None, max_seq: int = MAX_SEQ) -> None:
        if not 1 <= pairs <= 64:
            raise ValueError("pairs must be 1..64")
        self.send = send
        self.origin = origin
        self.pairs = pairs
        self.options = options or SealOptions()
        self.use_fixed_path = fixed_path
        self.on_handshake = on_handshake
        self.max_seq = max_seq
        self.client_id: str | None = None
        self.records = False
        self.fixed_path: str | None = None
        self.pool: list[_Pair] = []
        self._turn = 0
        self._hold_until = 0.0
        self._hold: PairingFailed | None = None
        self.last_handshake_ms = 0.0
        # Under gevent (Locust) this is a cooperative lock: greenlets of one
        # user that need a pair at once share one pairing.
        self._lock = threading.Lock()

    # ------------------------------------------------------------ handshakes

    def _handshake(self, method: str, path: str, headers: HeaderList,
                   body: bytes | None) -> WireAnswer:
        url = self.origin + path
        started = time.perf_counter()
        answer: WireAnswer | None = None
        try:
            answer = self.send(method, url, headers, body)
            self._check_handshake(path, answer)
        except BaseException as error:
            self._report(method, path, url, started, answer, error)
            raise
        self._report(method, path, url, started, answer, None)
        return answer

    def _report(self, method: str, path: str, url: str, started: float,
                answer: WireAnswer | None, error: BaseException | None) -> None:
        elapsed = (time.perf_counter() - started) * 1000
        self.last_handshake_ms += elapsed
        if self.on_handshake is not None:
            self.on_handshake(method, path, url, elapsed,
                              0 if answer is None else len(answer.body), error)

    def _check_handshake(self, path: str, answer: WireAnswer) -> None:
        if path == RELAY_PATH:
            values = answer.values("x-mte-relay")
            if 559 <= answer.status <= 569 and not values:
                raise parse_relay_error(answer.status, answer.body)
            client_id = values[0].strip() if len(values) == 1 else ""
            if answer.status != 200 or not is_client_id(client_id):
                raise NotARelay(f"{self.origin} answered HEAD {RELAY_PATH} with {answer.status}"
                                f"{'' if values else ' and no x-mte-relay header'}")
        elif answer.status != 200:
            if 559 <= answer.status <= 569:
                raise parse_relay_error(answer.status, answer.body)
            hold = (retry_after_seconds([v.encode("latin-1") for v in answer.values("retry-after")])
                    if answer.status == 429 else None)
            raise PairingFailed(answer.status, _reason(answer.body), hold)

    def _validate(self) -> str:
        answer = self._handshake("HEAD", RELAY_PATH, [], None)
        framings = answer.values(FRAMING_HEADER)
        self.records = MODE_MKR in parse_framings(",".join(framings) if framings else None)
        fixed = answer.values(FIXED_PATH_HEADER)
        self.fixed_path = parse_fixed_path(fixed[0]) if len(fixed) == 1 else None
        return answer.values("x-mte-relay")[0].strip()

    def _pair_batch(self, client_id: str) -> list[PairKeys]:
        pending = [start_pairing(client_uuid(client_id)) for _ in range(self.pairs)]
        body = json.dumps([p.request_entry() for p in pending],
                          separators=(",", ":")).encode("ascii")
        answer = self._handshake("POST", PAIR_PATH, [("x-mte-relay", client_id),
                                                     ("content-type", "application/json")],
                                 body)
        return finish_pairings(pending, answer.body)

    def _make_pairs(self) -> None:
        """Validate if needed, then pair; a 409 is paired once more with new ids (10.3)."""
        if self._hold is not None:
            if time.monotonic() < self._hold_until:
                raise self._hold
            self._hold = None
        if self.client_id is None:
            self.client_id = self._validate()
        client_id = self.client_id
        try:
            try:
                keys = self._pair_batch(client_id)
            except PairingFailed as error:
                if error.status != PAIR_ID_IN_USE:
                    raise
                keys = self._pair_batch(client_id)
        except PairingFailed as error:
            if error.retry_after:
                self._hold, self._hold_until = error, time.monotonic() + error.retry_after
            raise
        except RelayError as error:
            if error.code == RETRY_REVALIDATE:
                self.forget_client()
            raise
        self.pool.extend(_Pair(k, client_id) for k in keys)

    def _lease(self) -> tuple[_Pair, int]:
        with self._lock:
            if not self.pool:
                self._make_pairs()
            self._turn += 1
            pair = self.pool[self._turn % len(self.pool)]
            seq = pair.next_seq
            pair.next_seq += 1
            if pair.next_seq > self.max_seq:
                self.pool.remove(pair)  # a reused seq would reuse an AES-GCM nonce
            return pair, seq

    def drop(self, pair: _Pair) -> None:
        if pair in self.pool:
            self.pool.remove(pair)

    def forget_client(self) -> None:
        """566 (spec 10.4): the id and every pair of this origin are gone."""
        self.client_id = None
        self.pool.clear()

    # ------------------------------------------------------------ requests

    def request(self, method: str, url: str, headers: HeaderList, body: bytes | None,
                options: SealOptions | None = None) -> SealedAnswer:
        """Send one request sealed; recover once as spec 10.2 allows.

        ``headers`` are ``(lowercase name, value)`` pairs.  Never raises for
        a relay's or the wire's verdict: the answer's ``error`` says it.
        Transport errors of ``send`` (connection refused, timeout) propagate
        and are never resent: the upstream may have run the request.
        """
        self.last_handshake_ms = 0.0
        method = method.upper()
        options = options or self.options
        origin, target = split_url(url)
        if origin != self.origin:
            raise ValueError(f"{url[:100]!r} is not on the relay origin {self.origin}")
        plain = end_to_end(headers)
        if body is not None and len(body) == 0 and method not in _BODY_METHODS:
            body = None
        if body is not None and options.framing == MODE_MTE and len(body) > MAX_MTE_BODY:
            raise EncodeFailed("an MTE body is at most 2**30 bytes; use MKE framing")
        resent = False
        while True:
            try:
                pair, seq = self._lease()
            except RelayError as error:
                if error.code == RETRY_REVALIDATE and not resent:
                    resent = True  # the pairing's 566: validate again, once
                    continue
                raise
            outgoing = seal_request(pair.keys, pair.client_id, seq, method, target, plain,
                                    has_body=body is not None, options=options,
                                    records=self.records,
                                    fixed_path=self.fixed_path if self.use_fixed_path else None,
                                    body_length=None if body is None else len(body))
            wire_body = None
            if body is not None:
                sealer = outgoing.cipher.body_sealer()
                wire_body = sealer.feed(body) + sealer.finish()
            answer = self.send(method, self.origin + outgoing.target, outgoing.headers,
                               wire_body)
            if answer.values("x-mte-relay"):
                return self._open(answer, outgoing, pair, resent)
            if not 559 <= answer.status <= 569:
                error = None if answer.status >= 400 else DecodeFailed(
                    f"a {answer.status} answer without x-mte-relay is not authentic")
                return SealedAnswer(answer.status, answer.reason, answer.headers, answer.body,
                                    False, error, self.last_handshake_ms, resent)
            refusal = parse_relay_error(answer.status, answer.body, answer.twisted_headers())
            if refusal.upstream_reached is None:
                streamed = body is not None and outgoing.header.mode != MODE_MTE
                refusal.upstream_reached = ("maybe" if refusal.code == 562 and streamed
                                            else "no")
            can_resend = (not resent and (refusal.upstream_reached == "no"
                                          or method in IDEMPOTENT_METHODS))
            if refusal.code == RETRY_REVALIDATE:
                if self.client_id == pair.client_id:
                    self.forget_client()
            elif refusal.code in RETRY_REPAIR:
                self.drop(pair)
            else:
                can_resend = False
            if not can_resend:
                return SealedAnswer(answer.status, answer.reason, answer.headers, answer.body,
                                    False, refusal, self.last_handshake_ms, resent)
            resent = True

    def _open(self, answer: WireAnswer, outgoing: OutgoingRequest, pair: _Pair,
              resent: bool) -> SealedAnswer:
        """Check and open a sealed answer; any failure is a local 562 and drops the pair."""
        try:
            opened = open_response(pair.keys, outgoing.header, answer.status, answer.headers,
                                   outgoing.response_headers)
            if not opened.body_enc:
                if answer.body:
                    raise DecodeFailed("body bytes with bodyEnc=0")
                plain = b""
            else:
                opener = opened.cipher.body_opener(opened.body_length)
                plain = opener.feed(answer.body) + opener.finish()
        except DecodeFailed as error:
            # Never resent (the upstream may have run it); the pair's keys
            # may not be the relay's: stop using it (spec 10.5).
            self.drop(pair)
            return SealedAnswer(answer.status, answer.reason, [], b"", False, error,
                                self.last_handshake_ms, resent)
        return SealedAnswer(answer.status, answer.reason, opened.headers, plain, True, None,
                            self.last_handshake_ms, resent)


def lower_headers(headers: Iterable[tuple[Any, Any]]) -> HeaderList:
    """``(name, value)`` pairs as the lowercase text pairs the protocol functions take."""
    result: HeaderList = []
    for name, value in headers:
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        result.append((str(name).strip().lower(), str(value)))
    return result
