"""The two routes a client uses before it can send encrypted requests.

``HEAD /api/mte-relay`` hands out (or re-signs) a client id, ``POST
/api/mte-pair`` runs the relay side of pairing and stores the new pairs.
Both are unauthenticated by nature, so both are cheap to refuse: the id is
checked before any body is read, the body is size-capped before it is
parsed, and pairing (the expensive part: two ML-KEM encapsulations per
pair) is rate-limited per client.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET

from mterelay.protocol.clientid import new_client_id, sign_client_uuid, verify_client_id
from mterelay.protocol.header import FRAMING_HEADER, RELAY_FRAMINGS
from mterelay.protocol.errors import (InvalidClientId, MalformedPairRequest, MissingHeader,
                                     RelayError)
from mterelay.protocol.pairing import MAX_PAIRS_PER_REQUEST, respond_all
from mterelay.protocol.keys import PairKeys
from mterelay.store.interface import IPairStore, PairExists, StoreUnavailable, pair_generation
from mterelay.store.keycache import KeyCache
from mterelay.web.responses import error_body, json_body, relay_error, request_id
from mterelay.web.streaming import BodyTooLarge, ClientGone, read_body

log = Logger(namespace="mterelay.pairing")

RELAY_HEADER = b"x-mte-relay"
#: A request entry is about 3.5 KB of base64url; leave room for whitespace.
BYTES_PER_ENTRY = 6 * 1024


def single_header(request: IRequest, name: bytes) -> bytes | None:
    """The header's only value; a repeated header is treated as malformed (ValueError)."""
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        return None
    if len(values) > 1:
        raise ValueError(f"{name.decode('ascii')} sent more than once")
    return values[0]


def render_relay_head(request: IRequest, secrets: tuple[bytes, ...]) -> bytes:
    """Answer the client-id handshake; a bad presented id is 566, never silently replaced.

    A client whose id stopped verifying (the secret was rotated past it)
    learns so explicitly and asks again without it, rather than keeping pairs
    it can no longer use.
    """
    try:
        presented = single_header(request, RELAY_HEADER)
        if presented is None:
            client_id = new_client_id(secrets[0])
        else:
            bare = verify_client_id(presented.decode("latin-1").strip(" \t"), secrets)
            client_id = sign_client_uuid(secrets[0], bare)
    except ValueError:
        return relay_error(request, InvalidClientId("x-mte-relay sent more than once"))
    except RelayError as error:
        return relay_error(request, error)
    request.setHeader(RELAY_HEADER, client_id.encode("ascii"))
    # Clients send record framing (MKR, streaming=2) only to relays saying so.
    request.setHeader(FRAMING_HEADER.encode("ascii"), RELAY_FRAMINGS.encode("ascii"))
    request.setHeader(b"cache-control", b"no-store")
    request.setResponseCode(200)
    return b""


class PairingLimiter:
    """Token bucket of pairs per client uuid, so one client cannot make the
    relay spend its CPU on encapsulations (or fill the store) without bound.

    Per process: with N replicas a client gets at most N times the rate,
    which still bounds the work per replica, the thing being protected.
    """

    def __init__(self, clock: IReactorTime, rate: float, burst: int,
                 max_clients: int = 10_000) -> None:
        self.clock = clock
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str, count: int) -> float:
        """Take ``count`` tokens; 0.0 when allowed, else seconds to wait."""
        now = self.clock.seconds()
        tokens, stamp = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        if tokens < count:
            self._buckets[client] = (tokens, now)
            return (count - tokens) / self.rate
        self._buckets[client] = (tokens - count, now)
        if len(self._buckets) > self.max_clients:
            self._evict_full(now)
        return 0.0

    def _evict_full(self, now: float) -> None:
        """Drop buckets that have refilled: forgetting them changes nothing."""
        for client, (tokens, stamp) in list(self._buckets.items()):
            if tokens + (now - stamp) * self.rate >= self.burst:
                del self._buckets[client]
        while len(self._buckets) > self.max_clients:
            del self._buckets[next(iter(self._buckets))]


class PairRoute:
    """``POST /api/mte-pair``: validate everything, derive, store, answer."""

    def __init__(self, store: IPairStore, keys: KeyCache, secrets: tuple[bytes, ...],
                 max_entries: int, limiter: PairingLimiter, metrics: Any = None) -> None:
        self.metrics = metrics
        self.store = store
        self.keys = keys
        self.secrets = secrets
        self.max_entries = min(max_entries, MAX_PAIRS_PER_REQUEST)
        self.limiter = limiter

    def render(self, request: IRequest) -> Any:
        try:
            presented = single_header(request, RELAY_HEADER)
        except ValueError:
            return relay_error(request, InvalidClientId("x-mte-relay sent more than once"))
        if presented is None:
            return relay_error(request, MissingHeader("x-mte-relay with the client id is required"))
        try:
            client = verify_client_id(presented.decode("latin-1").strip(" \t"), self.secrets)
        except RelayError as error:
            return relay_error(request, error)
        limit = self.max_entries * BYTES_PER_ENTRY
        length = request.requestHeaders.getRawHeaders(b"content-length", [b""])[0]
        if length.isdigit() and int(length) > limit:
            return _too_large(request, limit)
        ensureDeferred(self._pair(request, client, limit)).addErrback(self._crashed, request)
        return NOT_DONE_YET

    async def _pair(self, request: IRequest, client: str, limit: int) -> None:
        try:
            body = await read_body(request, limit)
        except BodyTooLarge:
            _finish(request, _too_large(request, limit))
            return
        except ClientGone:
            return
        try:
            entries, pair_keys = respond_all(client, body, self.max_entries)
        except MalformedPairRequest as error:
            _finish(request, error_body(request, 400, "Malformed pair request.",
                                        error.reason, field=error.field))
            return
        except RelayError as error:  # 567: unsupported version
            _finish(request, relay_error(request, error))
            return
        wait = self.limiter.take(client, len(pair_keys))
        if wait:
            request.setHeader(b"retry-after", b"%d" % max(1, round(wait + 0.5)))
            _finish(request, error_body(request, 429, "Too many pairings",
                                        f"pairing rate exceeded for this client id; retry in "
                                        f"{wait:.1f} s"))
            return
        blobs = [keys.to_bytes() for keys in pair_keys]
        if not await self._store_all(request, client, pair_keys, blobs):
            return
        for keys, blob in zip(pair_keys, blobs):
            self.keys.remember(keys, blob)
        log.info("paired {count} pair(s)", count=len(pair_keys), request_id=request_id(request))
        if self.metrics is not None:
            self.metrics.pair_created("inbound", len(pair_keys))
        _finish(request, json_body(request, 200, entries))

    async def _store_all(self, request: IRequest, client: str, pair_keys: list[PairKeys],
                         blobs: list[bytes]) -> bool:
        """Create every pair, or none: True when all are stored, else answered.

        Pair ids are never replaced (the store's create-if-absent), so a
        pairId in use answers 409 and the existing pair is untouched.  The
        batch stays all or nothing: the pairs this request did create are
        removed again, by generation, so the undo can only ever remove
        what this request wrote.
        """
        results = await DeferredList(
            [self.store.create(client, keys.pair_id, blob)
             for keys, blob in zip(pair_keys, blobs)], consumeErrors=True)
        failures = [(index, result) for index, (ok, result) in enumerate(results) if not ok]
        if not failures:
            return True
        created = [index for index, (ok, _) in enumerate(results) if ok]
        await DeferredList([self.store.delete(client, pair_keys[index].pair_id,
                                              pair_generation(blobs[index]))
                            for index in created], consumeErrors=True)
        taken = [index for index, failure in failures if failure.check(PairExists)]
        if taken:
            _finish(request, error_body(
                request, 409, "Pair id in use",
                f"pairId of entry {taken[0]} is already in use; pair with new ids "
                "(nothing was stored)", field=f"[{taken[0]}].pairId"))
            return False
        cause = failures[0][1]
        log.warn("pairing not stored: {why}", why=cause.getErrorMessage(),
                 request_id=request_id(request))
        if not cause.check(StoreUnavailable):
            log.failure("pair store failed", cause, request_id=request_id(request))
        _finish(request, error_body(request, 503, "Pair store unavailable",
                                    "the relay cannot store pairs right now; retry"))
        return False

    def _crashed(self, failure: Failure, request: IRequest) -> None:
        log.failure("pairing failed", failure, request_id=request_id(request))
        _finish(request, error_body(request, 500, "Internal error", "pairing failed"))


def _too_large(request: IRequest, limit: int) -> bytes:
    return error_body(request, 413, "Pair request too large",
                      f"the body must be at most {limit} bytes", field="$")


def _finish(request: IRequest, body: bytes) -> None:
    if getattr(request, "_disconnected", False) or request.finished:
        return
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()
