"""RelayClient against the real inbound relay (RelayRoot), in memory."""

from __future__ import annotations

import io
import json
import os
from typing import Any

import treq
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.server import Request

from mterelay.http.bodies import BytesProducer
from mterelay.client import NotARelay, PairingFailed, RelayClient
from mterelay.protocol.errors import (DecodeFailed, EncodeFailed, StateNotFound,
                                      UnsupportedVersion)
from tests.helpers.clientsupport import RELAY, ClientHarness, SilentAgent


class RoundTripTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = ClientHarness.build()
        self.client = self.h.client(pairs=3)

    def test_post_json(self) -> None:
        self.h.upstream.body = b'{"token":"t-1"}'
        self.h.upstream.headers.append((b"x-total", b"9"))
        response, body = self.h.call(
            self.client, "POST", "/api/login?next=%2Fhome",
            headers={"content-type": ["application/json"], "x-api-key": "k"},
            data=b'{"user": "a"}')
        self.assertEqual((response.code, response.sealed), (200, True))
        self.assertEqual(json.loads(body), {"token": "t-1"})
        self.assertEqual(response.length, len(body))
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(response.headers.getRawHeaders(b"x-total"), [b"9"])
        self.assertFalse(response.headers.hasHeader(b"x-mte-relay"))
        self.assertEqual(response.request.absoluteURI,
                         b"http://relay.test:80/api/login?next=%2Fhome")
        [seen] = self.h.upstream.received
        self.assertEqual((seen.method, seen.uri, seen.body),
                         (b"POST", b"/api/login?next=%2Fhome", b'{"user": "a"}'))
        self.assertEqual(seen.headers[b"content-type"], [b"application/json"])
        self.assertEqual(seen.headers[b"x-api-key"], [b"k"])
        # On the wire nothing of it travels in clear.
        method, uri, wire = self.h.switch.encrypted()[0]
        self.assertNotIn(b"login", uri)
        self.assertEqual(wire[b"content-type"], [b"application/octet-stream"])
        self.assertNotIn(b"x-api-key", wire)

    def test_treq_json_content(self) -> None:
        response = self.h.wait(self.client.get(RELAY + "/api/items"))
        self.assertEqual(self.h.wait(treq.json_content(response)), {"ok": True})
        [seen] = self.h.upstream.received
        self.assertEqual((seen.method, seen.body), (b"GET", b""))
        self.assertNotIn(b"content-length", seen.headers)

    def test_head_and_204_have_no_body(self) -> None:
        response, body = self.h.call(self.client, "HEAD", "/api/items")
        self.assertEqual((response.code, response.length, body), (200, 0, b""))
        self.h.upstream.status = 204
        self.h.upstream.body = b""
        response, body = self.h.call(self.client, "DELETE", "/api/items/1")
        self.assertEqual((response.code, response.length, body), (204, 0, b""))

    def test_empty_bodies(self) -> None:
        self.h.call(self.client, "POST", "/a", data=b"")
        self.h.call(self.client, "GET", "/b", data=b"")
        post, get = self.h.upstream.received
        self.assertEqual((post.body, post.headers.get(b"content-length")), (b"", [b"0"]))
        self.assertEqual(get.body, b"")
        # A list, not a dict by uri: on the fixed path (spec 5.2) both share one.
        wire = [headers for _, _, headers in self.h.switch.encrypted()]
        flags = [h[b"x-mte-relay"][0].split(b",")[5] for h in wire]
        self.assertEqual(sorted(flags), [b"0", b"1"], "POST b'' sealed, GET b'' sent no body")

    def test_empty_response_body_is_authenticated(self) -> None:
        self.h.upstream.body = b""
        response, body = self.h.call(self.client, "GET", "/empty")
        self.assertEqual((response.code, response.length, body), (200, 0, b""))

    def test_options_none_list_and_clear_url(self) -> None:
        for options in (dict(seal_headers="none"), dict(seal_headers=["x-secret"]),
                        dict(seal_url=False), dict(framing="MTE")):
            client = self.h.client(**options)
            self.h.call(client, "PUT", "/api/things/1?q=1",
                        headers={"x-secret": "s", "x-other": "o", "content-type": "text/plain"},
                        data=b"body")
            seen = self.h.upstream.received[-1]
            self.assertEqual((seen.method, seen.uri, seen.body),
                             (b"PUT", b"/api/things/1?q=1", b"body"), options)
            self.assertEqual(seen.headers[b"x-secret"], [b"s"])
            self.assertEqual(seen.headers[b"x-other"], [b"o"])
            self.assertEqual(seen.headers[b"content-type"], [b"text/plain"])
            _, uri, wire = self.h.switch.seen[-1]
            self.assertEqual(b"x-other" in wire, "seal_headers" in options, options)
            self.assertEqual(b"x-secret" in wire, options.get("seal_headers") == "none")
            self.assertEqual(uri == b"/api/things/1?q=1", "seal_url" in options)

    def test_response_headers_selection(self) -> None:
        self.h.upstream.headers.append((b"x-public", b"p"))
        client = self.h.client(response_headers=["x-none"])
        response, _ = self.h.call(client, "GET", "/x")
        self.assertEqual(response.headers.getRawHeaders(b"x-public"), [b"p"])
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])

    def test_streamed_file_and_producer_bodies(self) -> None:
        # Several MKE chunks, but under the size for which the in-memory relay
        # would hand the body to a cooperator on the global reactor.
        data = os.urandom(200_000)
        self.h.call(self.client, "POST", "/upload", data=io.BytesIO(data))
        self.assertEqual(self.h.upstream.received[-1].body, data)
        self.h.call(self.client, "POST", "/upload", data=BytesProducer(b"produced"))
        self.assertEqual(self.h.upstream.received[-1].body, b"produced")

    def test_large_response_is_streamed_and_opened(self) -> None:
        self.h.upstream.body = os.urandom(300_000)
        response, body = self.h.call(self.client, "GET", "/big")
        self.assertEqual(body, self.h.upstream.body)

    def test_pairs_shared_round_robin(self) -> None:
        pending = [self.client.get(RELAY + f"/r/{i}") for i in range(9)]
        responses = [self.h.wait(d) for d in pending]
        self.assertEqual([r.code for r in responses], [200] * 9)
        self.assertEqual(self.h.switch.count(b"HEAD", b"/api/mte-relay"), 1)
        self.assertEqual(self.h.switch.count(b"POST", b"/api/mte-pair"), 1)
        used: dict[bytes, list[int]] = {}
        for _, _, headers in self.h.switch.encrypted():
            fields = headers[b"x-mte-relay"][0].split(b",")
            used.setdefault(fields[1], []).append(int(fields[7]))
        self.assertEqual(len(used), 3)
        self.assertEqual(sorted(len(s) for s in used.values()), [3, 3, 3])
        for seqs in used.values():
            self.assertEqual(sorted(seqs), [0, 1, 2])

    def test_close_without_own_pool(self) -> None:
        self.successResultOf(self.client.close())


class RecoveryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = ClientHarness.build()
        self.client = self.h.client(pairs=3)
        self.h.call(self.client, "GET", "/warm")
        self.h.upstream.received.clear()

    def pairings(self) -> int:
        return self.h.switch.count(b"POST", b"/api/mte-pair")

    def test_relay_restart_repairs_and_retries(self) -> None:
        self.h.restart()
        pending = [self.client.post(RELAY + f"/after/{i}", data=b"x%d" % i) for i in range(5)]
        codes = [self.h.wait(d).code for d in pending]
        self.assertEqual(codes, [200] * 5)
        self.assertEqual(sorted(r.uri for r in self.h.upstream.received),
                         sorted(b"/after/%d" % i for i in range(5)), "each exactly once")
        self.assertLessEqual(self.pairings(), 1 + 5)
        # No request was refused twice; the concurrent case is in the pool's
        # unit tests and the real-socket test (this agent answers each request
        # before the next one is sent).
        self.assertLessEqual(len(self.h.switch.encrypted()), 1 + 10)

    def test_new_secret_revalidates_without_the_old_id(self) -> None:
        self.h.restart(CLIENT_ID_SECRET="another-secret-0123456789abcdefghij")
        old_id = self.client.origin_pool(RELAY).client_id
        response, body = self.h.call(self.client, "POST", "/rotated", data=b"r")
        self.assertEqual(response.code, 200)
        heads = [h for m, uri, h in self.h.switch.seen if m == b"HEAD"]
        self.assertEqual(len(heads), 2)
        self.assertNotIn(b"x-mte-relay", heads[1])
        self.assertNotEqual(self.client.origin_pool(RELAY).client_id, old_id)
        self.assertEqual([r.uri for r in self.h.upstream.received], [b"/rotated"])

    def test_relay_562_retries_once_on_a_new_pair(self) -> None:
        self.h.switch.inject.append((562, {"error": "Failed to decode.", "code": 562,
                                           "upstreamReached": "no"}, {}))
        before = self.pairings()
        response, _ = self.h.call(self.client, "POST", "/once", data=b"1")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.pairings(), before + 1)
        first, retry = [h[b"x-mte-relay"][0].split(b",")[1]
                        for _, _, h in self.h.switch.encrypted()[-2:]]
        self.assertNotEqual(first, retry)

    def inject_562(self, payload: dict[str, Any] | None = None,
                   headers: dict[bytes, bytes] | None = None) -> None:
        body = {"error": "Failed to decode.", "code": 562}
        body.update(payload or {})
        self.h.switch.inject.append((562, body, headers or {}))

    def test_562_saying_maybe_is_not_resent_for_a_post(self) -> None:
        """Relay B refused a streamed body after forwarding part of it (spec 10.2)."""
        self.inject_562({"upstreamReached": "maybe"})
        error = self.assertRaises(DecodeFailed, self.h.call, self.client, "POST", "/pay",
                                  data=b"1")
        self.assertEqual((error.remote, error.upstream_reached), (True, "maybe"))
        self.assertEqual(len(self.h.switch.encrypted()), 1 + 1)  # /warm, then one
        self.h.call(self.client, "GET", "/then")  # the pair was replaced, the client is fine

    def test_header_alone_says_maybe(self) -> None:
        self.inject_562(headers={b"x-mte-upstream-reached": b"maybe"})
        self.assertRaises(DecodeFailed, self.h.call, self.client, "POST", "/pay", data=b"1")
        self.assertEqual(len(self.h.switch.encrypted()), 1 + 1)  # /warm, then one

    def test_562_saying_maybe_is_resent_for_a_put(self) -> None:
        """Idempotent, body replayable: the one retry is safe."""
        self.inject_562({"upstreamReached": "maybe"})
        response, _ = self.h.call(self.client, "PUT", "/doc", data=b"1")
        self.assertEqual(response.code, 200)
        self.assertEqual(len(self.h.switch.encrypted()), 1 + 2)  # /warm, then two

    def test_562_of_an_older_relay_after_a_streamed_body_is_not_resent(self) -> None:
        """No upstreamReached: an MKE body may have been forwarded in part."""
        self.inject_562()
        error = self.assertRaises(DecodeFailed, self.h.call, self.client, "POST", "/pay",
                                  data=b"1")
        self.assertEqual(error.upstream_reached, "maybe")
        self.assertEqual(len(self.h.switch.encrypted()), 1 + 1)  # /warm, then one

    def test_562_of_an_older_relay_is_resent_when_nothing_streamed(self) -> None:
        """An MTE body is opened whole before forwarding; no body: nothing to stream."""
        client = self.h.client(pairs=1, framing="MTE")
        for method, data in (("POST", b"1"), ("POST", None)):
            self.inject_562()
            response, _ = self.h.call(client, method, "/once", data=data)
            self.assertEqual(response.code, 200)

    def test_second_failure_is_surfaced(self) -> None:
        for _ in range(2):
            self.h.switch.inject.append((560, {"error": "State not found.", "code": 560,
                                               "info": "expired"}, {}))
        error = self.assertRaises(StateNotFound, self.h.call, self.client, "GET", "/twice")
        self.assertEqual(error.info, "expired")
        self.assertEqual(self.h.upstream.received, [])
        self.h.call(self.client, "GET", "/then")  # the client is fine afterwards

    def test_no_retry_for_567_and_non_replayable_bodies(self) -> None:
        self.h.switch.inject.append((567, {"error": "Unsupported protocol version.",
                                           "code": 567}, {}))
        self.assertRaises(UnsupportedVersion, self.h.call, self.client, "GET", "/v")
        self.h.restart()
        self.assertRaises(StateNotFound, self.h.call, self.client, "POST", "/p",
                          data=BytesProducer(b"once"))
        self.assertEqual(self.h.upstream.received, [])
        self.assertEqual(len(self.h.switch.encrypted()), 1 + 2)

    def test_clear_4xx_is_returned_unsealed(self) -> None:
        self.h.switch.inject.append((413, {"error": "Payload too large", "code": 413}, {}))
        response, body = self.h.call(self.client, "POST", "/big", data=b"x")
        self.assertEqual((response.code, response.sealed), (413, False))
        self.assertEqual(json.loads(body)["code"], 413)

    def test_clear_success_is_never_authentic(self) -> None:
        self.h.switch.inject.append((200, {"ok": True}, {}))
        self.assertRaises(DecodeFailed, self.h.call, self.client, "GET", "/forged")

    def test_upstream_status_through_the_relay_is_sealed(self) -> None:
        self.h.upstream.status = 404
        response, _ = self.h.call(self.client, "GET", "/missing")
        self.assertEqual((response.code, response.sealed), (404, True))


class TamperTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = ClientHarness.build()
        self.client = self.h.client(pairs=1)

    def test_lying_response_header_is_562(self) -> None:
        def rewrite(response: Any) -> Any:
            value = response.headers.getRawHeaders(b"x-mte-relay")
            if value and response.headers.hasHeader(b"x-mte-relay-eh"):
                fields = value[0].split(b",")
                fields[7] = b"%d" % (int(fields[7]) + 1)
                response.headers.setRawHeaders(b"x-mte-relay", [b",".join(fields)])
            return response

        self.h.tamper.rewrite = rewrite
        self.assertRaises(DecodeFailed, self.h.call, self.client, "GET", "/x")
        self.assertEqual(len(self.h.upstream.received), 1, "the request did reach the upstream")
        self.assertEqual(len(self.h.switch.encrypted()), 1, "so it is not retried")

    def test_unauthentic_answer_drops_its_pair(self) -> None:
        """The answer's keys may not be the relay's (a tampered pairing): stop using the pair."""
        self.h.call(self.client, "GET", "/first")
        pool = self.client.origin_pool(RELAY)
        [pair] = pool.pairs

        def rewrite(response: Any) -> Any:
            value = response.headers.getRawHeaders(b"x-mte-relay-eh")
            if value:
                token = value[0]
                response.headers.setRawHeaders(
                    b"x-mte-relay-eh", [token[:4] + (b"A" if token[4:5] != b"A" else b"B")
                                        + token[5:]])
            return response

        self.h.tamper.rewrite = rewrite
        self.assertRaises(DecodeFailed, self.h.call, self.client, "POST", "/x", data=b"1")
        self.assertEqual(len(self.h.upstream.received), 2, "the request did reach the upstream")
        self.assertNotIn(pair, pool.pairs)
        self.h.tamper.rewrite = None
        self.h.call(self.client, "GET", "/after")
        self.assertEqual(len(self.h.upstream.received), 3)

    def test_truncated_body_fails_the_read(self) -> None:
        self.h.upstream.body = b"y" * 100_000

        def rewrite(response: Any) -> Any:
            if not response.headers.hasHeader(b"x-mte-relay-eh"):
                return response
            deliver = response.deliverBody

            def cut(protocol: Any) -> None:
                real = protocol.dataReceived
                protocol.dataReceived = lambda data: real(data[:-1])
                deliver(protocol)

            response.deliverBody = cut
            return response

        self.h.tamper.rewrite = rewrite
        response = self.h.wait(self.client.get(RELAY + "/x"))
        failure = self.assertRaises(ResponseFailed, self.h.wait, treq.content(response))
        self.assertTrue(failure.reasons[0].check(DecodeFailed))


class ErrorTests(SynchronousTestCase):
    def test_timeout(self) -> None:
        h = ClientHarness.build()
        agent = SilentAgent()
        client = RelayClient(h.clock, agent=agent, timeout=5)
        d = client.get(RELAY + "/slow")
        h.clock.advance(5)
        self.failureResultOf(d, DeferredTimeout)
        self.assertEqual(agent.cancelled, 1)

    def test_not_a_relay(self) -> None:
        h = ClientHarness.build()
        h.switch.root = _Plain()
        self.assertRaises(NotARelay, h.call, h.client(), "GET", "/x")

    def test_mte_over_limit_refused_before_sending(self) -> None:
        h = ClientHarness.build()
        producer = BytesProducer(b"")
        producer.length = 2**30 + 1
        self.assertRaises(EncodeFailed, h.wait,
                          h.client(framing="MTE").post(RELAY + "/x", data=producer))
        self.assertEqual(h.switch.seen, [])

    def test_bad_urls_and_options(self) -> None:
        h = ClientHarness.build()
        client = h.client()
        for url in ("ftp://relay.test/x", "http:///x", "http://u:p@relay.test/x"):
            self.assertRaises(ValueError, h.wait, client.get(url))
        for options in (dict(pairs=0), dict(timeout=0), dict(framing="gzip")):
            self.assertRaises(ValueError, RelayClient, h.clock, **options)

    def test_headers_object_and_method_case(self) -> None:
        h = ClientHarness.build()
        response, _ = h.call(h.client(), "post", "/x",
                             headers=Headers({b"X-A": [b"1"]}), data=b"d")
        self.assertEqual(h.upstream.received[0].method, b"POST")
        self.assertEqual(h.upstream.received[0].headers[b"x-a"], [b"1"])
        self.assertIs(UNKNOWN_LENGTH, UNKNOWN_LENGTH)


class _Plain:
    """Any web server: HEAD /api/mte-relay answers 404."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setResponseCode(404)
        return b""


class _Racer:
    """In front of the relay: an on-path attacker who reads each pairing request and
    pairs its ids first (stored through another replica), ``races`` times."""

    isLeaf = True

    def __init__(self, root: Any, races: int) -> None:
        self.root = root
        self.races = races
        self.claimed: list[list[str]] = []

    def render(self, request: Any) -> Any:
        if request.path == b"/api/mte-pair" and self.races:
            self.races -= 1
            body = request.content.read()
            request.content.seek(0)
            client_uuid = request.getHeader(b"x-mte-relay")[:36].decode("ascii")
            ids = [entry["pairId"] for entry in json.loads(body)]
            for pair_id in ids:
                self.root.store.create(client_uuid, pair_id, b"the attacker's pair")
            self.claimed.append(ids)
        return self.root.render(request)


class PairIdInUseTests(SynchronousTestCase):
    """A pairing answered 409 (an id in use) is retried once, with fresh ids."""

    def setUp(self) -> None:
        self.h = ClientHarness.build()
        # The racer reads the pairing body before the relay does, which a
        # streamed (RelayRequest) body does not allow: Twisted's buffered Request.
        self.h.agent._serverFactory.requestFactory = Request

    def pair_requests(self) -> int:
        return self.h.switch.count(b"POST", b"/api/mte-pair")

    def test_retried_once_with_new_ids(self) -> None:
        racer = _Racer(self.h.switch.root, races=1)
        self.h.switch.root = racer
        client = self.h.client(pairs=2)
        response, body = self.h.call(client, "POST", "/first", data=b"1")
        self.assertEqual((response.code, body), (200, b'{"ok":true}'))
        self.assertEqual(self.pair_requests(), 2)
        [claimed] = racer.claimed
        used = {pair.keys.pair_id for pair in client.origin_pool(RELAY).pairs}
        self.assertEqual(len(used), 2)
        self.assertFalse(used & set(claimed), "an id in use was paired again")
        self.assertEqual([r.uri for r in self.h.upstream.received], [b"/first"])

    def test_second_refusal_is_surfaced(self) -> None:
        self.h.switch.root = _Racer(self.h.switch.root, races=5)
        client = self.h.client(pairs=1)
        error = self.assertRaises(PairingFailed, self.h.call, client, "GET", "/never")
        self.assertEqual(error.status, 409)
        self.assertIn("pairId", error.reason)
        self.assertEqual(self.pair_requests(), 2)
        self.assertEqual(self.h.upstream.received, [])
