"""A POST whose body started streaming is never sent twice (spec 10.2), real sockets.

RelayClient → on-path rewriter → relay B → upstream, and application →
relay A → rewriter → relay B → upstream, all on 127.0.0.1.  The rewriter
(:mod:`tests.helpers.rewriter`) tampers with the sealed body near its end, as the
issue's campaign did: relay B opens and forwards the first chunks, the last
one fails, B aborts the upstream request and answers 562 - after the
upstream received most of the body.  The upstream's listening socket
records every byte it received, so a request head sent twice is seen even
when the second request is aborted too.

Before the fix B's 562 said nothing about the upstream, clients took every
55x for "nothing reached the upstream", and the POST was sent again.  The
safe cases still retry: a PUT (idempotent, replayable body), and a POST
refused before anything was forwarded (a tampered headers item).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, reactor
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.server import Site

import treq

from mterelay.http.bodies import BytesProducer
from mterelay.client import RelayClient
from mterelay.protocol.errors import DecodeFailed
from tests.helpers.rewriter import RewiredRelays
from tests.helpers.support import RecordingUpstream, relay_config

TOKEN = "retry-safety-token-0123456789"
#: MKE chunks of 65536 bytes: 13 chunks, under relay A's 1 MiB replayable limit.
BODY = b"x" * (13 * 65536 - 1000)


class _Recording(ProtocolWrapper):
    def dataReceived(self, data: bytes) -> None:
        self.factory.received.append(data)  # type: ignore[attr-defined]
        super().dataReceived(data)


class RecordingSockets(WrappingFactory):
    """Every byte the upstream's socket received, whatever the HTTP layer made of it."""

    protocol = _Recording

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self.received: list[bytes] = []

    def heads(self, method: bytes) -> int:
        return b"".join(self.received).count(method + b" /")

    def total(self) -> int:
        return sum(len(data) for data in self.received)


def tamper_last_chunk(times: int = 10 ** 9) -> Any:
    """A body edit flipping one byte of the last sealed chunk, the first ``times`` times."""
    done = [0]

    def edit(headers: Headers, body: bytes) -> bytes:
        if not headers.hasHeader(b"x-mte-relay-eh") or len(body) < 65552 * 2 or done[0] >= times:
            return body
        done[0] += 1
        return body[:-20] + bytes([body[-20] ^ 1]) + body[-19:]

    return edit


class RetrySafetyCase(RewiredRelays, TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.upstream = RecordingUpstream()
        self.sockets = RecordingSockets(Site(self.upstream))
        yield defer.ensureDeferred(self.rewire(self.sockets))

    def client(self) -> RelayClient:
        client = RelayClient(reactor, pairs=2)
        self.addCleanup(client.close)
        return client

    def url(self, path: str) -> str:
        return self.rewriter.url + path

    def assert_partly_received_once(self, method: bytes) -> None:
        self.assertEqual(self.sockets.heads(method), 1)
        # Most of the body reached the upstream before B aborted it.
        self.assertGreater(self.sockets.total(), len(BODY) // 2)
        self.assertEqual(self.upstream.received, [])  # never complete


class RelayClientTests(RetrySafetyCase):
    @defer.inlineCallbacks
    def test_post_refused_mid_body_is_not_sent_again(self) -> Any:
        self.rewriter.body_edits.append(tamper_last_chunk())
        client = self.client()
        error = yield self.assertFailure(client.post(self.url("/orders"), data=BODY),
                                         DecodeFailed)
        self.assert_partly_received_once(b"POST")
        self.assertTrue(error.remote)
        self.assertEqual(error.upstream_reached, "maybe")
        [(_, headers)] = [r for r in self.rewriter.responses if r[0] == 562]
        self.assertEqual(headers.getRawHeaders(b"x-mte-upstream-reached"), [b"maybe"])

    @defer.inlineCallbacks
    def test_put_refused_mid_body_is_retried(self) -> Any:
        """Idempotent with a replayable body: the one retry is safe and made."""
        self.rewriter.body_edits.append(tamper_last_chunk(times=1))
        client = self.client()
        response = yield client.put(self.url("/doc"), data=BODY)
        self.assertEqual(response.code, 200)
        yield treq.content(response)
        self.assertEqual(self.sockets.heads(b"PUT"), 2)
        self.assertEqual([(r.method, len(r.body)) for r in self.upstream.received],
                         [(b"PUT", len(BODY))])

    @defer.inlineCallbacks
    def test_post_refused_before_forwarding_is_retried(self) -> Any:
        """A tampered headers item is 562 with upstreamReached "no": retried once."""
        flipped = [0]

        def edit(headers: Headers) -> None:
            token = headers.getRawHeaders(b"x-mte-relay-eh")
            if token and not flipped[0]:
                flipped[0] = 1
                value = token[0]
                headers.setRawHeaders(b"x-mte-relay-eh",
                                      [value[:5] + (b"A" if value[5:6] != b"A" else b"B")
                                       + value[6:]])

        self.rewriter.request_edits.append(edit)
        client = self.client()
        response = yield client.post(self.url("/orders"), data=BODY)
        self.assertEqual(response.code, 200)
        yield treq.content(response)
        self.assertEqual(self.sockets.heads(b"POST"), 1)
        self.assertEqual([(r.method, len(r.body)) for r in self.upstream.received],
                         [(b"POST", len(BODY))])
        first = [code for code, _ in self.rewriter.responses if code >= 500]
        self.assertEqual(first, [562])


class RelayATests(RetrySafetyCase):
    @defer.inlineCallbacks
    def through_relay_a(self, method: bytes) -> Any:
        a = yield self.listen(self.relay_site(relay_config(
            OUTBOUND_TOKEN=TOKEN, OUTBOUND_UPSTREAMS="http://127.0.0.1:*"), self.agent()))
        sent = Headers({b"x-mte-outbound-token": [TOKEN.encode()],
                        b"x-mte-upstream": [self.rewriter.url.encode()],
                        b"content-type": [b"application/octet-stream"]})
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = yield Agent(reactor, pool=pool).request(
            method, b"http://127.0.0.1:%d/orders" % a, sent, BytesProducer(BODY))
        content = yield readBody(response)
        return response, content

    @defer.inlineCallbacks
    def test_post_refused_mid_body_is_not_sent_again(self) -> Any:
        self.rewriter.body_edits.append(tamper_last_chunk())
        response, content = yield self.through_relay_a(b"POST")
        self.assert_partly_received_once(b"POST")
        self.assertEqual(response.code, 502)
        answer = json.loads(content)
        self.assertEqual(answer["upstreamReached"], "maybe")
        self.assertIn("562", answer["reason"])
        self.assertEqual(response.headers.getRawHeaders(b"x-mte-upstream-reached"), [b"maybe"])

    @defer.inlineCallbacks
    def test_put_refused_mid_body_is_retried(self) -> Any:
        self.rewriter.body_edits.append(tamper_last_chunk(times=1))
        response, _ = yield self.through_relay_a(b"PUT")
        self.assertEqual(response.code, 200)
        self.assertEqual([(r.method, len(r.body)) for r in self.upstream.received],
                         [(b"PUT", len(BODY))])
