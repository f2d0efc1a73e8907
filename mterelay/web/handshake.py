"""The two routes a client uses before it can send encrypted requests.

``HEAD /api/mte-relay`` hands out (or re-signs) a client id, ``POST
/api/mte-pair`` runs the relay side of pairing and stores the new pairs.
Both are unauthenticated by nature, so both are cheap to refuse: the id is
checked before any body is read, the body is size-capped before it is
parsed, and pairing (the expensive part: two ML-KEM encapsulations per
pair) is admitted by :mod:`mterelay.web.admission` before any key is parsed:
once before the body is read, and again with the body's entry count.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET

from mterelay.http.headers import single_value
from mterelay.http.names import RELAY_HEADER
from mterelay.http.exchange import finish_with
from mterelay.http.observe import NO_METRICS, Metrics
from mterelay.protocol.clientid import new_client_id, sign_client_uuid, verify_client_id
from mterelay.protocol.header import (FIXED_PATH, FIXED_PATH_HEADER, FRAMING_HEADER,
                                      RELAY_FRAMINGS)
from mterelay.protocol.errors import (InvalidClientId, MalformedPairRequest, MissingHeader,
                                     RelayError)
from mterelay.protocol.pairing import MAX_PAIRS_PER_REQUEST, parse_pair_requests, respond_all
from mterelay.protocol.keys import PairKeys
from mterelay.store.interface import IPairStore, PairExists, StoreUnavailable, pair_generation
from mterelay.store.keycache import KeyCache
from mterelay.web.admission import PairingAdmission, Refusal, RefusalLog
from mterelay.web.responses import (error_body, json_body, relay_error_body, request_id,
                                    unlogged_error_body)
from mterelay.web.sourceaddress import IPNetwork, bucket_key, source_address
from mterelay.http.streaming import BodyTooLarge, ClientGone, read_body

log = Logger(namespace="mterelay.pairing")

#: A request entry is about 3.5 KB of base64url; leave room for whitespace.
BYTES_PER_ENTRY = 6 * 1024
#: Bytes per entry assumed before the body is read: compact or indented JSON
#: stays under it, so the estimate does not count more pairs than are sent.
ESTIMATE_BYTES_PER_ENTRY = 4 * 1024


def single_header(request: IRequest, name: bytes) -> bytes | None:
    """The header's only value; a repeated header is treated as malformed (ValueError)."""
    return single_value(request.requestHeaders.getRawHeaders(name), name)


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
        return relay_error_body(request, InvalidClientId("x-mte-relay sent more than once"))
    except RelayError as error:
        return relay_error_body(request, error)
    request.setHeader(RELAY_HEADER, client_id.encode("ascii"))
    # Clients send record framing (MKR, streaming=2) only to relays saying so.
    request.setHeader(FRAMING_HEADER.encode("ascii"), RELAY_FRAMINGS.encode("ascii"))
    # ... and sealed-URL requests on the fixed path only to relays naming it (spec 5.2).
    request.setHeader(FIXED_PATH_HEADER.encode("ascii"), FIXED_PATH.encode("ascii"))
    request.setHeader(b"cache-control", b"no-store")
    request.setResponseCode(200)
    return b""


class PairRoute:
    """``POST /api/mte-pair``: validate everything, derive, store, answer."""

    def __init__(self, store: IPairStore, keys: KeyCache, secrets: tuple[bytes, ...],
                 max_entries: int, admission: PairingAdmission, metrics: Metrics = NO_METRICS,
                 trusted_proxies: tuple[IPNetwork, ...] = ()) -> None:
        self.metrics = metrics
        self.store = store
        self.keys = keys
        self.secrets = secrets
        self.max_entries = min(max_entries, MAX_PAIRS_PER_REQUEST)
        self.admission = admission
        self.trusted_proxies = trusted_proxies
        self.refusals = RefusalLog(admission.clock)

    def render(self, request: IRequest) -> Any:
        try:
            presented = single_header(request, RELAY_HEADER)
        except ValueError:
            return relay_error_body(request, InvalidClientId("x-mte-relay sent more than once"))
        if presented is None:
            return relay_error_body(
                request, MissingHeader("x-mte-relay with the client id is required"))
        try:
            client = verify_client_id(presented.decode("latin-1").strip(" \t"), self.secrets)
        except RelayError as error:
            return relay_error_body(request, error)
        limit = self.max_entries * BYTES_PER_ENTRY
        length = request.requestHeaders.getRawHeaders(b"content-length", [b""])[0]
        if length.isdigit() and int(length) > limit:
            return _too_large(request, limit)
        source = self._source(request)
        # Refused before the body is read whenever even the pairs its declared
        # length can hold do not fit (capped at one full request, so a body
        # padded with white space is delayed at worst, never refused for good).
        declared = int(length) if length.isdigit() else 0
        estimate = max(1, min(self.max_entries, declared // ESTIMATE_BYTES_PER_ENTRY))
        refusal = self.admission.check(source, client, estimate)
        if refusal is not None:  # not even the body is worth reading
            return self._refuse(request, refusal, source)
        ensureDeferred(self._pair(request, client, limit, source)).addErrback(
            self._crashed, request)
        return NOT_DONE_YET

    def _source(self, request: IRequest) -> str:
        """The bucket key of the request's source address (see sourceaddress)."""
        peer = getattr(request.getClientAddress(), "host", None)
        forwarded = (request.requestHeaders.getRawHeaders(b"x-forwarded-for")
                     if self.trusted_proxies else None)
        return bucket_key(source_address(peer, forwarded, self.trusted_proxies))

    def _refuse(self, request: IRequest, refusal: Refusal, source: str) -> bytes:
        """429 naming the limit; logged at most once per limit per interval, always metered."""
        self.refusals.refused(refusal, source, request_id=request_id(request))
        # The site meters relay_errors_total{code="429", reason="pairing_<limit>_limit"}.
        request.refusal = f"pairing {refusal.limit} limit"
        request.setHeader(b"retry-after", b"%d" % refusal.retry_after)
        return unlogged_error_body(request, 429, "Too many pairings", refusal.reason,
                                   limit=refusal.limit, retryAfter=refusal.retry_after)

    async def _pair(self, request: IRequest, client: str, limit: int, source: str) -> None:
        try:
            body = await read_body(request, limit)
        except BodyTooLarge:
            finish_with(request, _too_large(request, limit))
            return
        except ClientGone:
            return
        try:
            count = len(parse_pair_requests(body, self.max_entries))
        except MalformedPairRequest as error:
            finish_with(request, error_body(request, 400, "Malformed pair request.",
                                        error.reason, field=error.field))
            return
        refusal = self.admission.admit(source, client, count)
        if refusal is not None:
            finish_with(request, self._refuse(request, refusal, source))
            return
        try:
            await self._admitted(request, client, body)
        finally:
            self.admission.release()

    async def _admitted(self, request: IRequest, client: str, body: bytes) -> None:
        try:
            entries, pair_keys = respond_all(client, body, self.max_entries)
        except MalformedPairRequest as error:
            finish_with(request, error_body(request, 400, "Malformed pair request.",
                                        error.reason, field=error.field))
            return
        except RelayError as error:  # 567: unsupported version
            finish_with(request, relay_error_body(request, error))
            return
        blobs = [keys.to_bytes() for keys in pair_keys]
        if not await self._store_all(request, client, pair_keys, blobs):
            return
        for keys, blob in zip(pair_keys, blobs):
            self.keys.remember(keys, blob)
        log.info("paired {count} pair(s)", count=len(pair_keys), request_id=request_id(request))
        self.metrics.pair_created("inbound", len(pair_keys))
        finish_with(request, json_body(request, 200, entries))

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
            finish_with(request, error_body(
                request, 409, "Pair id in use",
                f"pairId of entry {taken[0]} is already in use; pair with new ids "
                "(nothing was stored)", field=f"[{taken[0]}].pairId"))
            return False
        cause = failures[0][1]
        log.warn("pairing not stored: {why}", why=cause.getErrorMessage(),
                 request_id=request_id(request))
        if not cause.check(StoreUnavailable):
            log.failure("pair store failed", cause, request_id=request_id(request))
        finish_with(request, error_body(request, 503, "Pair store unavailable",
                                    "the relay cannot store pairs right now; retry"))
        return False

    def _crashed(self, failure: Failure, request: IRequest) -> None:
        log.failure("pairing failed", failure, request_id=request_id(request))
        finish_with(request, error_body(request, 500, "Internal error", "pairing failed"))


def _too_large(request: IRequest, limit: int) -> bytes:
    return error_body(request, 413, "Pair request too large",
                      f"the body must be at most {limit} bytes", field="$")



