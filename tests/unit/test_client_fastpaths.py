"""The client's fast paths give what the general paths give, and only where they may.

Each fast path of the outbound hot path (issue 18) is pinned here twice: its
result equals the general path's, byte for byte, and the general path is
still taken where the fast one would not be the same.
"""

from __future__ import annotations

import io
import os
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent
from zope.interface import implementer

from mterelay.client.bodies import (READ_SIZE, SealedBytes, SealingProducer, body_data,
                                    seal_whole)
from mterelay.client.messages import PlainHeaders, normalize_headers
from mterelay.client.pool import Pair, PairPool
from mterelay.client.response import PlainRequest, RelayResponse
from mterelay.client.messages import SealOptions
from mterelay.protocol import urls
from mterelay.protocol.urls import split_url
from mterelay.http.headers import copy_end_to_end
from mterelay.web.outbound import OutboundProxy, copy_answer_pairs
from mterelay.web.outboundrules import Refused, TokenCheck, seal_choices, token_matches
from mterelay.protocol.header import MODE_MKE, MODE_MKR, MODE_MTE, RelayHeader
from mterelay.protocol.records import RECORD_OVERHEAD
from mterelay.protocol.sealing import Direction, MessageCipher, sealed_length
from tests.helpers.clientsupport import RELAY, ClientHarness, SilentAgent, paired_keys
from tests.helpers.support import NoRemoteRelay, relay_config


class Consumer:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


def cipher(mode: str) -> MessageCipher:
    """The same keys, header and seq every call: equal plaintexts seal equally."""
    client_id, keys, _ = _PAIR
    header = RelayHeader(client_id, keys.pair_id, mode, True, True, True, True, 7,
                         records=mode == MODE_MKR)
    return MessageCipher(keys, header, Direction.C2S)


_PAIR = paired_keys()


class SealWholeTests(SynchronousTestCase):
    """``seal_whole`` writes exactly what the pumped SealingProducer writes."""

    def pumped(self, mode: str, data: bytes) -> list[bytes]:
        body = body_data(data)
        assert body is not None
        clock = task.Clock()
        length = None if mode == MODE_MKR else sealed_length(len(data), mode)
        producer = SealingProducer(body.open(clock), cipher(mode).body_sealer(), length,
                                   clock=clock)
        consumer = Consumer()
        done = producer.startProducing(consumer)
        for _ in range(5):
            clock.advance(0)
        self.successResultOf(done)
        return consumer.writes

    def test_same_bytes_in_every_framing(self) -> None:
        for mode in (MODE_MKR, MODE_MKE, MODE_MTE):
            for size in (0, 1, 1024, 65_535, READ_SIZE):
                data = os.urandom(size)
                with self.subTest(mode=mode, size=size):
                    whole = seal_whole(cipher(mode).body_sealer(), data)
                    pumped = self.pumped(mode, data)
                    self.assertEqual(b"".join(pumped), whole)
                    if mode == MODE_MKR:
                        # Records go chunked: one write is one HTTP chunk.
                        self.assertEqual(pumped, [whole])

    def test_small_is_bytes_of_one_read_only(self) -> None:
        self.assertEqual(body_data(b"x" * READ_SIZE).small, b"x" * READ_SIZE)  # type: ignore
        self.assertEqual(body_data(b"").small, b"")  # type: ignore[union-attr]
        self.assertIsNone(body_data(b"x" * (READ_SIZE + 1)).small)  # type: ignore
        self.assertIsNone(body_data(io.BytesIO(b"abc")).small)  # type: ignore[union-attr]

    def test_sealed_bytes_lengths(self) -> None:
        self.assertEqual(SealedBytes(b"abc", 3).length, 3)
        self.assertIs(SealedBytes(b"abc", None).length, UNKNOWN_LENGTH)
        consumer = Consumer()
        self.successResultOf(SealedBytes(b"abc", None).startProducing(consumer))
        self.assertEqual(consumer.writes, [b"abc"])


@implementer(IAgent)
class ProducerSpy:
    """Passes requests on and remembers each body producer's type."""

    def __init__(self, agent: IAgent) -> None:
        self.agent = agent
        self.producers: list[str] = []
        self.lengths: list[Any] = []

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: Any = None) -> "Deferred[Any]":  # noqa: N803
        if bodyProducer is not None and b"/api/mte-pair" not in uri:
            self.producers.append(type(bodyProducer).__name__)
            self.lengths.append(bodyProducer.length)
        return self.agent.request(method, uri, headers, bodyProducer)


class ClientBodyPathTests(SynchronousTestCase):
    """The RelayClient seals small bytes at once, and pumps everything else."""

    def setUp(self) -> None:
        self.h = ClientHarness.build()
        self.spy = ProducerSpy(self.h.tamper)

    def post(self, data: Any, **options: Any) -> bytes:
        client = self.h.client(pairs=1, agent=self.spy, **options)
        response, body = self.h.call(client, "POST", "/api/echo", data=data)
        self.assertEqual(response.code, 200)
        return self.h.upstream.received[-1].body

    def test_small_bytes_are_sealed_at_once_in_every_framing(self) -> None:
        for framing in ("MKR", "MKE", "MTE"):
            data = os.urandom(1000)
            self.assertEqual(self.post(data, framing=framing), data)
        self.assertEqual(self.spy.producers, ["SealedBytes"] * 3)

    def test_small_record_body_is_sent_with_its_length(self) -> None:
        # Spec 7.2: a record body sealed whole first may carry Content-Length;
        # relay B then reads and opens it whole instead of decoding chunks.
        data = os.urandom(1000)
        self.assertEqual(self.post(data, framing="MKR"), data)
        self.assertEqual(self.spy.lengths, [1000 + RECORD_OVERHEAD])

    def test_streamed_record_body_stays_chunked(self) -> None:
        self.assertEqual(self.post(io.BytesIO(b"a file"), framing="MKR"), b"a file")
        self.assertEqual(self.spy.lengths, [UNKNOWN_LENGTH])

    def test_empty_post_is_sealed_at_once(self) -> None:
        self.assertEqual(self.post(b""), b"")
        self.assertEqual(self.spy.producers, ["SealedBytes"])

    def test_larger_bytes_and_files_are_pumped(self) -> None:
        big = os.urandom(READ_SIZE + 1)
        self.assertEqual(self.post(big), big)
        self.assertEqual(self.post(io.BytesIO(b"a file")), b"a file")
        self.assertEqual(self.spy.producers, ["SealingProducer"] * 2)


class OutgoingHeadersTests(SynchronousTestCase):
    """OutboundProxy.outgoing_plain: one pass, the list outgoing_headers' copy gives."""

    CASES = [
        [(b"Host", b"relay-a"), (b"User-Agent", b"wrk"), (b"Content-Length", b"3"),
         (b"Content-Type", b"application/json"), (b"X-Mte-Outbound-Token", b"t"),
         (b"X-Mte-Upstream", b"http://b"), (b"Accept", b"*/*")],
        # repeated names keep apart, in order; Connection-nominated names and hop-by-hop go
        [(b"Set-Cookie", b"a=1"), (b"Accept", b"x"), (b"Set-Cookie", b"b=2"),
         (b"Connection", b"keep-alive, X-Secret-Hop"), (b"X-Secret-Hop", b"1"),
         (b"Keep-Alive", b"timeout=5"), (b"TE", b"trailers"), (b"Expect", b"100-continue"),
         (b"Transfer-Encoding", b"chunked"), (b"Upgrade", b"h2c")],
        # the caller's own request id is replaced in place; HEADERS replace and add
        [(b"X-Request-Id", b"callers-id"), (b"X-Tenant", b"app"), (b"X-Other", b"o")],
        # values that are not UTF-8 stay Latin-1 text, UTF-8 ones are decoded
        [(b"X-Latin", b"caf\xe9"), (b"X-Utf8", "café".encode()), (b"X-Empty", b"")],
    ]

    def proxy(self, headers: str = "") -> Any:
        config = relay_config(OUTBOUND_TOKEN="outbound-token-0123456789", HEADERS=headers)
        return OutboundProxy(task.Clock(), config, NoRemoteRelay())

    def test_same_list_as_the_headers_copy(self) -> None:
        for extra in ("", '{"x-tenant": "relay-a", "x-added": "1"}'):
            proxy = self.proxy(extra)
            for raw in self.CASES:
                incoming = Headers()
                for name, value in raw:
                    incoming.addRawHeader(name, value)
                for request_id in (None, "0123abcd"):
                    with self.subTest(raw=raw, extra=extra, request_id=request_id):
                        built = proxy.outgoing_plain(incoming, request_id)
                        self.assertIsInstance(built, PlainHeaders)
                        self.assertEqual(list(built), normalize_headers(
                            proxy.outgoing_headers(incoming, request_id)))
                        # The client takes it as it is.
                        self.assertIs(normalize_headers(built), built)


class LeaseNowTests(SynchronousTestCase):
    """PairPool.lease_now: acquire's immediate answer, or None and nothing changed."""

    def pool(self) -> tuple[PairPool, list[Any]]:
        pairings: list[Any] = []

        def make_pairs(client: str, count: int) -> "Deferred[list[Any]]":
            d: Deferred[list[Any]] = Deferred()
            pairings.append((count, d))
            return d

        pool = PairPool(2, lambda: Deferred(), make_pairs)
        pool.client_id = "c"
        return pool, pairings

    def test_none_without_a_pair_and_nothing_started(self) -> None:
        pool, pairings = self.pool()
        self.assertIsNone(pool.lease_now())
        self.assertEqual((pairings, pool._turn, pool._batches), ([], 0, 0))

    def test_same_leases_as_acquire_and_tops_up_once(self) -> None:
        fast, fast_pairings = self.pool()
        slow, slow_pairings = self.pool()
        for pool in (fast, slow):
            pool.pairs.extend([Pair(_PAIR[1], "c", 1)])
            pool._batches = 1
        leases = [fast.lease_now() for _ in range(3)]
        acquired = [self.successResultOf(slow.acquire()) for _ in range(3)]
        self.assertEqual([lease.seq for lease in leases], [lease.seq for lease in acquired])
        self.assertEqual([lease.seq for lease in leases], [0, 1, 2])
        # One top-up batch (for the missing pair) in both, started at the first lease.
        self.assertEqual(([c for c, _ in fast_pairings], [c for c, _ in slow_pairings]),
                         ([1], [1]))

    def test_after_mark_is_honoured(self) -> None:
        pool, _ = self.pool()
        pool.pairs.append(Pair(_PAIR[1], "c", 1))
        self.assertIsNone(pool.lease_now(after=1))


class LazyHeadersTests(SynchronousTestCase):
    """PlainRequest and RelayResponse make their Headers only when read, the same ones."""

    PAIRS = [("content-type", "text/plain"), ("set-cookie", "a=1"), ("set-cookie", "b=2"),
             ("x-name", "café")]

    def eager(self) -> Headers:
        headers = Headers()
        for name, value in self.PAIRS:
            headers.addRawHeader(name.encode("latin-1"), value.encode("utf-8"))
        return headers

    def test_plain_request_headers(self) -> None:
        request = PlainRequest(b"GET", b"http://h:80/", list(self.PAIRS))
        self.assertEqual(list(request.headers.getAllRawHeaders()),
                         list(self.eager().getAllRawHeaders()))
        self.assertIs(request.headers, request.headers)
        given = Headers({b"a": [b"1"]})
        self.assertIs(PlainRequest(b"GET", b"http://h:80/", given).headers, given)

    def test_clear_headers(self) -> None:
        own = Headers()
        response = RelayResponse(200, b"OK", own, 0, None, lambda p: None,  # type: ignore
                                 sealed=True, clear_headers=list(self.PAIRS))
        self.assertEqual(list(response.clear_headers.getAllRawHeaders()),
                         list(self.eager().getAllRawHeaders()))
        self.assertIs(response.clear_headers, response.clear_headers)
        clear = RelayResponse(502, b"", own, 0, None, lambda p: None, sealed=False)  # type: ignore
        self.assertIs(clear.clear_headers, own)


class SplitUrlTests(SynchronousTestCase):
    """split_url's shortcut for an origin already seen gives the full split's answer."""

    TARGETS = ["/", "/api/echo", "/a?b=1&c=2", "/a?", "/a??", "/a?b?", "/p#frag", "/sp ace",
               "/caf\u00e9", "/%41%zz", "/[x]:@!$'()*+,;~-._", "/a\tb", "/a\nb", '/q"<>{}|^`',
               "//double", "/a\\b", "/a?#", "/?"]

    def full(self, url: str) -> Any:
        urls._CANONICAL.clear()
        try:
            return split_url(url)
        except ValueError as error:
            return str(error)

    def test_same_as_the_full_split(self) -> None:
        for base in ("http://127.0.0.1:8082", "https://relay.example:443", "http://[::1]:9000"):
            for target in self.TARGETS:
                with self.subTest(url=base + target):
                    want = self.full(base + target)
                    split_url(base + "/")
                    self.assertIn(base, urls._CANONICAL)
                    self.assertEqual(split_url(base + target), want)

    def test_only_origins_spelled_as_split_are_remembered(self) -> None:
        urls._CANONICAL.clear()
        for url in ("http://h/x", "HTTP://h:80/x", "http://H:80/x", "http://h:80?x",
                    "http://h:8"):
            try:
                split_url(url)
            except ValueError:
                pass
        self.assertEqual(urls._CANONICAL, set())
        self.assertEqual(split_url("http://h:80/x"), ("http://h:80", "/x"))
        self.assertEqual(urls._CANONICAL, {"http://h:80"})
        with self.assertRaises(ValueError):
            split_url("http://user:pw@h:80/x")


class OutboundCachesTests(SynchronousTestCase):
    """The outbound entry's per-request checks, with their work done once, decide the same."""

    def proxy(self, **settings: str) -> OutboundProxy:
        settings.setdefault("OUTBOUND_TOKEN", "outbound-token-0123456789")
        return OutboundProxy(task.Clock(), relay_config(**settings), NoRemoteRelay())

    def test_token_check_is_token_matches(self) -> None:
        expected_sets: list[Any] = [None, "", "outbound-token-0123456789",
                                    ("outbound-token-0123456789", "previous-token-0123456789")]
        given_sets = [[], [b""], [b"outbound-token-0123456789"], [b" outbound-token-0123456789 "],
                      [b"previous-token-0123456789"], [b"outbound-token-012345678"],
                      [b"outbound-token-0123456789", b"outbound-token-0123456789"]]
        for expected in expected_sets:
            check = TokenCheck(expected)
            for given in given_sets:
                with self.subTest(expected=expected, given=given):
                    self.assertEqual(check(given), token_matches(given, expected))

    def test_token_ok_follows_the_proxy_token(self) -> None:
        proxy = self.proxy()
        self.assertTrue(proxy.token_ok([b"outbound-token-0123456789"]))
        proxy.token = ("another-token-0123456789abc",)
        self.assertFalse(proxy.token_ok([b"outbound-token-0123456789"]))
        self.assertTrue(proxy.token_ok([b"another-token-0123456789abc"]))

    def test_seal_options_as_built_and_refusals_every_time(self) -> None:
        proxy = self.proxy()
        cases: list[dict[bytes, list[bytes]]] = [
            {}, {b"x-mte-encode-type": [b"MTE"]}, {b"x-mte-encode-url": [b"false"]},
            {b"x-mte-encode-headers": [b"x-a, x-b"]}, {b"x-mte-encode-headers": [b"false"]},
            {b"x-mte-encode-type": [b"mke"], b"x-mte-encode-headers": [b"true"]}]
        for raw in cases * 2:
            headers = Headers(raw)
            self.assertEqual(proxy.seal_options(headers),
                             SealOptions.build(**seal_choices(headers)))
        for bad in ({b"x-mte-encode-type": [b"XYZ"]}, {b"x-mte-encode-url": [b"yes"]},
                    {b"x-mte-encode-type": [b"MTE", b"MKE"]}):
            for _ in range(2):
                with self.assertRaises(Refused):
                    proxy.seal_options(Headers(bad))
        self.assertEqual(len(proxy._options), 6)


class AnswerHeadersTests(SynchronousTestCase):
    """copy_answer_pairs puts into the answer what the Headers path put there."""

    CASES = [
        [("content-type", "application/json"), ("x-total", "9")],
        [("set-cookie", "a=1"), ("vary", "accept"), ("set-cookie", "b=2"),
         ("date", "Mon, 01 Jan 2024 00:00:00 GMT"), ("server", "origin")],
        [("connection", "close, X-Hop"), ("x-hop", "1"), ("keep-alive", "5"),
         ("content-length", "3"), ("transfer-encoding", "chunked"), ("x-mte-relay", "x"),
         ("access-control-allow-origin", "*"), ("x-name", "caf\u00e9"), ("x-empty", "")],
    ]

    def target(self) -> Headers:
        own = Headers()  # what twisted.web put in before the copy
        own.addRawHeader(b"date", b"Tue, 02 Jan 2024 00:00:00 GMT")
        own.addRawHeader(b"server", b"TwistedWeb")
        own.addRawHeader(b"x-mte-upstream-reached", b"maybe")
        return own

    def test_same_answer_headers_as_the_headers_path(self) -> None:
        for pairs in self.CASES:
            with self.subTest(pairs=pairs):
                source = Headers()
                for name, value in pairs:
                    source.addRawHeader(name.encode("ascii"), value.encode("utf-8"))
                slow = self.target()
                for own in (b"date", b"server"):
                    if source.hasHeader(own):
                        slow.removeHeader(own)
                copy_end_to_end(source, slow, drop=(b"content-length",),
                                drop_prefixes=(b"x-mte-", b"access-control-"))
                fast = self.target()
                copy_answer_pairs(pairs, fast)
                self.assertEqual(list(fast.getAllRawHeaders()), list(slow.getAllRawHeaders()))

    def test_sealed_answer_carries_pairs_and_the_same_headers(self) -> None:
        h = ClientHarness.build()
        h.upstream.headers.extend([(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")])
        response, _ = h.call(h.client(pairs=1), "GET", "/api/items")
        self.assertTrue(response.sealed)
        pairs = list(response.header_pairs)
        self.assertIn(("set-cookie", "b=2"), pairs)
        eager = Headers()
        for name, value in pairs:
            eager.addRawHeader(name.encode("ascii"), value.encode("utf-8"))
        self.assertEqual(list(response.headers.getAllRawHeaders()),
                         list(eager.getAllRawHeaders()))
        self.assertIs(response.headers, response.headers)


class FirstAttemptTests(SynchronousTestCase):
    """A request with a pair ready runs without the _send coroutine; the rest still use it."""

    def setUp(self) -> None:
        self.h = ClientHarness.build()
        self.client = self.h.client(pairs=1)
        self.sends: list[tuple[int, bool]] = []
        send = self.client._send

        def counting(prepared: Any, after: int = 0, retried: bool = False) -> Any:
            self.sends.append((after, retried))
            return send(prepared, after, retried)

        self.client._send = counting  # type: ignore[method-assign]

    def test_only_a_request_without_a_ready_pair_uses_send(self) -> None:
        self.h.call(self.client, "GET", "/first")
        self.assertEqual(self.sends, [(0, False)])
        response, _ = self.h.call(self.client, "POST", "/second", data=b"2")
        self.assertEqual((response.code, response.sealed), (200, True))
        self.assertEqual(self.sends, [(0, False)])

    def test_a_refused_first_attempt_is_retried_in_send(self) -> None:
        self.h.call(self.client, "GET", "/first")
        pool = self.client.origin_pool(RELAY)
        self.h.switch.inject.append((560, {"error": "State not found.", "code": 560,
                                           "upstreamReached": "no"}, {}))
        response, _ = self.h.call(self.client, "POST", "/again", data=b"1")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.sends[1:], [(pool._batches - 1, True)])
        self.assertEqual([r.uri for r in self.h.upstream.received], [b"/first", b"/again"])

    def test_timeout_cancels_the_first_attempt(self) -> None:
        self.h.call(self.client, "GET", "/first")
        silent = SilentAgent()
        self.client.agent = silent
        self.client.timeout = 5.0
        d = self.client.request("GET", RELAY + "/slow")
        self.h.clock.advance(5)
        self.failureResultOf(d, DeferredTimeout)
        self.assertEqual(silent.cancelled, 1)
        self.assertEqual(self.sends, [(0, False)])

    def test_bad_input_fails_the_deferred(self) -> None:
        self.h.call(self.client, "GET", "/first")
        self.failureResultOf(self.client.request("GET", "ftp://x/"), ValueError)
        self.failureResultOf(self.client.request("GET", RELAY + "/", headers=[("a", "b")]),
                             TypeError)
