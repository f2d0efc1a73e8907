"""The outbound entry in memory: application → relay A → relay B → upstream (RelayRoots).

A's RelayClient reaches B through ``RequestTraversalAgent``; B is the
harness of the client tests (``tests.helpers.clientsupport``), which records what
crossed the A→B "wire", can inject relay answers and can be "restarted".
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from zope.interface import implementer

from mterelay.web.outboundrules import Refused, peer_origin, seal_choices, token_matches
from mterelay.protocol.header import RelayHeader
from mterelay.store.memory import MemoryPairStore
from mterelay.service.tap import store_limits
from mterelay.http.upstream import UpstreamForwarder
from mterelay.web.root import RelayRoot
from mterelay.service.metrics import RelayMetrics
from tests.helpers.clientsupport import ClientHarness, SilentAgent
from tests.helpers.support import RecordingUpstream, relay_config, relay_stub

TOKEN = "outbound-token-0123456789"
REMOTE = "http://relay-b.test"


@implementer(IAgent)
class RefusingAgent:
    """Every connection refused: the remote relay is down."""

    def __init__(self) -> None:
        self.calls = 0

    def request(self, method: bytes, uri: bytes, headers: Any = None,
                bodyProducer: Any = None) -> "Deferred[Any]":
        self.calls += 1
        return fail(ConnectionRefusedError("connection refused"))


class Outbound:
    """Relay A in memory, its outbound agent pointed at B (or at ``agent``)."""

    def __init__(self, agent: IAgent | None = None, **overrides: str) -> None:
        self.b = ClientHarness.build()
        settings = {"OUTBOUND_TOKEN": TOKEN}
        settings.update(overrides)
        config = relay_config(**settings)
        self.local_upstream = RecordingUpstream()
        forwarder = UpstreamForwarder(clock=self.b.clock,
                                      agent=RequestTraversalAgent(self.local_upstream),
                                      upstream=config.upstream, timeout=config.upstream_timeout)
        store = MemoryPairStore(self.b.clock, store_limits(config))
        self.root = RelayRoot(config, forwarder, self.b.clock, store,
                              outbound_agent=agent if agent is not None else self.b.agent,
                              metrics=RelayMetrics())
        self.app = relay_stub(self.root)

    def flush(self) -> None:
        self.app.flush()
        self.b.flush()

    def call(self, method: str, path: str, headers: dict[str, Any] | None = None,
             token: str | None = TOKEN, upstream: str | None = REMOTE,
             **kwargs: Any) -> tuple[Any, bytes]:
        sent = dict(headers or {})
        if token is not None:
            sent["x-mte-outbound-token"] = token
        if upstream is not None:
            sent["x-mte-upstream"] = upstream
        # A's answer to the application travels on its own in-memory connection.
        response = self.b.wait(self.app.request(method, "http://relay-a.test" + path,
                                                headers=sent, **kwargs), self.flush)
        body = self.b.wait(self.app.content(response), self.flush)
        return response, body

    def wire(self) -> list[tuple[bytes, bytes, dict[bytes, list[bytes]]]]:
        """The encrypted requests B received (method, wire target, wire headers)."""
        return self.b.switch.encrypted()


def payload(body: bytes) -> Any:
    return json.loads(body.decode("utf-8"))


class RoundTripTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.o = Outbound()

    def test_request_and_answer_intact_headers_stripped(self) -> None:
        self.o.b.upstream.headers.append((b"set-cookie", b"session=s3cr3t"))
        self.o.b.upstream.headers.append((b"x-total", b"9"))
        self.o.b.upstream.headers.append((b"server", b"upstream/1"))
        self.o.b.upstream.status = 201
        self.o.b.upstream.body = b'{"token":"t-1"}'
        response, body = self.o.call(
            "POST", "/api/login?next=%2Fhome&q=1",
            headers={"content-type": ["application/json"], "authorization": ["Bearer APIKEY"],
                     "x-custom": ["one", "two"], "connection": ["x-hop"], "x-hop": ["1"],
                     "x-mte-encode-url": ["true"], "expect": ["100-continue"]},
            data=b'{"user": "alice"}')
        self.assertEqual((response.code, payload(body)), (201, {"token": "t-1"}))
        self.assertEqual(response.headers.getRawHeaders(b"set-cookie"), [b"session=s3cr3t"])
        self.assertEqual(response.headers.getRawHeaders(b"x-total"), [b"9"])
        # The upstream's Server (twisted.web's, then ours) and Date replace relay A's own.
        self.assertEqual(len(response.headers.getRawHeaders(b"server")), 2)
        self.assertEqual(response.headers.getRawHeaders(b"server")[1], b"upstream/1")
        self.assertEqual(len(response.headers.getRawHeaders(b"date")), 1)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(response.length, 15)
        self.assertFalse([n for n, _ in response.headers.getAllRawHeaders()
                          if n.lower().startswith(b"x-mte-")])
        [seen] = self.o.b.upstream.received
        self.assertEqual((seen.method, seen.uri, seen.body),
                         (b"POST", b"/api/login?next=%2Fhome&q=1", b'{"user": "alice"}'))
        self.assertEqual(seen.headers[b"authorization"], [b"Bearer APIKEY"])
        self.assertEqual(seen.headers[b"x-custom"], [b"one", b"two"])
        self.assertEqual(seen.headers[b"content-type"], [b"application/json"])
        for name in (b"x-hop", b"expect", b"x-mte-outbound-token", b"x-mte-upstream",
                     b"x-mte-encode-url"):
            self.assertNotIn(name, seen.headers)
        # Between A and B: no path, no header, no token in clear.
        [(method, target, wire)] = self.o.wire()
        self.assertEqual(method, b"POST")
        self.assertNotIn(b"login", target)
        self.assertNotIn(b"authorization", wire)
        self.assertNotIn(b"x-mte-outbound-token", wire)
        self.assertNotIn(b"x-mte-upstream", wire)
        self.assertEqual(self.o.local_upstream.received, [])

    def test_methods_empty_bodies_and_statuses(self) -> None:
        for method, data in (("GET", None), ("DELETE", None), ("PUT", b""), ("PATCH", b"x")):
            for status in (200, 404, 500):
                self.o.b.upstream.status = status
                response, body = self.o.call(method, "/api/items/7?x=1", data=data)
                self.assertEqual((response.code, payload(body)), (status, {"ok": True}))
                seen = self.o.b.upstream.received[-1]
                self.assertEqual((seen.method, seen.uri, seen.body),
                                 (method.encode(), b"/api/items/7?x=1", data or b""))
        self.o.b.upstream.status = 200
        response, body = self.o.call("HEAD", "/api/items/7")
        self.assertEqual((response.code, body), (200, b""))
        # One pairing served everything.
        self.assertEqual(self.o.b.switch.count(b"POST", b"/api/mte-pair"), 1)

    def test_binary_body_both_ways(self) -> None:
        blob = bytes(range(256)) * 300
        self.o.b.upstream.body = blob[::-1]
        self.o.b.upstream.headers = [(b"content-type", b"application/octet-stream")]
        response, body = self.o.call("PUT", "/upload", data=blob,
                                     headers={"content-type": ["application/octet-stream"]})
        self.assertEqual(body, blob[::-1])
        self.assertEqual(self.o.b.upstream.received[-1].body, blob)

    def test_headers_setting_decorates_both_ways(self) -> None:
        o = Outbound(HEADERS='{"x-service-name": "relay-a"}')
        response, _ = o.call("GET", "/x")
        self.assertEqual(response.headers.getRawHeaders(b"x-service-name"), [b"relay-a"])
        self.assertEqual(o.b.upstream.received[-1].headers[b"x-service-name"], [b"relay-a"])

    def test_remote_clear_errors_passed_through(self) -> None:
        self.o.b.switch.inject.append(
            (502, {"error": "Upstream unreachable", "code": 502}, {}))
        response, body = self.o.call("GET", "/x")
        self.assertEqual((response.code, payload(body)),
                         (502, {"error": "Upstream unreachable", "code": 502}))


class ControlHeaderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.o = Outbound()
        self.headers = {"x-secret": ["s"], "content-type": ["text/plain"]}

    def header(self) -> tuple[RelayHeader, bytes, dict[bytes, list[bytes]]]:
        _, target, wire = self.o.wire()[-1]
        return RelayHeader.parse(wire[b"x-mte-relay"][0].decode()), target, wire

    def test_defaults_seal_everything_records(self) -> None:
        self.o.call("POST", "/p?q=1", headers=self.headers, data=b"body")
        header, target, wire = self.header()
        self.assertEqual((header.mode, header.url_enc, header.headers_enc), ("MKR", True, True))
        self.assertNotIn(b"x-secret", wire)

    def test_mte_clear_url_and_headers(self) -> None:
        headers = dict(self.headers, **{"x-mte-encode-type": ["mte"],
                                        "x-mte-encode-url": ["false"],
                                        "x-mte-encode-headers": ["FALSE"]})
        self.o.call("POST", "/p?q=1", headers=headers, data=b"body")
        header, target, wire = self.header()
        self.assertEqual((header.mode, header.url_enc, header.headers_enc), ("MTE", False, False))
        self.assertEqual(target, b"/p?q=1")
        self.assertEqual(wire[b"x-secret"], [b"s"])
        self.assertEqual(self.o.b.upstream.received[-1].body, b"body")

    def test_header_list(self) -> None:
        headers = dict(self.headers, **{"x-other": ["o"], "x-mte-encode-headers": ["x-secret"]})
        self.o.call("GET", "/p", headers=headers)
        _, _, wire = self.header()
        self.assertNotIn(b"x-secret", wire)
        self.assertEqual(wire[b"x-other"], [b"o"])
        self.assertEqual(self.o.b.upstream.received[-1].headers[b"x-secret"], [b"s"])

    def test_invalid_values_are_400_naming_the_header(self) -> None:
        for name, value in [("x-mte-encode-type", "AES"), ("x-mte-encode-url", "yes"),
                            ("x-mte-encode-headers", "a b"), ("x-mte-encode-headers", "x,,y"),
                            ("x-mte-encode-url", "")]:
            response, body = self.o.call("GET", "/p", headers={name: [value]})
            answer = payload(body)
            self.assertEqual((response.code, answer["code"]), (400, 400), (name, value))
            self.assertIn(name, answer["reason"])
        self.assertEqual(self.o.b.switch.seen, [])

    def test_dot_segments_refused(self) -> None:
        response, body = self.o.call("GET", "/api/%2e%2e/admin")
        self.assertEqual(response.code, 400)
        self.assertEqual(self.o.b.switch.seen, [])


class RefusalTests(SynchronousTestCase):
    def assert_refused(self, o: Outbound, status: int, reason: str, **call: Any) -> None:
        response, body = o.call("POST", "/api/x", data=b"secret body", **call)
        answer = payload(body)
        self.assertEqual((response.code, answer["code"]), (status, status), call)
        self.assertIn(reason, answer["reason"])
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"application/json; charset=utf-8"])
        self.assertEqual(o.b.switch.seen, [], "something was sent to the remote relay")
        self.assertEqual(o.local_upstream.received, [])

    def test_wrong_or_missing_token_is_401(self) -> None:
        o = Outbound()
        for token in ("wrong", TOKEN + "x", TOKEN[:-1], "", " "):
            self.assert_refused(o, 401, "x-mte-outbound-token is not valid", token=token)
        self.assert_refused(o, 401, "not valid", token=None,
                            headers={"x-mte-outbound-token": [TOKEN, TOKEN]})

    def test_no_outbound_token_configured_is_401_too(self) -> None:
        o = Outbound(OUTBOUND_TOKEN="")
        _, unset = o.call("GET", "/x", token=TOKEN)
        _, wrong = Outbound().call("GET", "/x", token="wrong")
        self.assertEqual(payload(unset), payload(wrong))
        self.assert_refused(o, 401, "not valid", token=TOKEN)

    def test_token_checked_before_anything_else(self) -> None:
        self.assert_refused(Outbound(), 401, "not valid", token="wrong", upstream=None,
                            headers={"x-mte-encode-type": ["bogus"]})

    def test_upstream_missing_or_not_an_origin_is_400(self) -> None:
        o = Outbound()
        self.assert_refused(o, 400, "x-mte-upstream header is required", upstream=None)
        for value in ("relay-b.test", "ftp://relay-b.test", "http://relay-b.test/api",
                      "http://user:pw@relay-b.test", "http://relay-b.test?x", "http://:80",
                      "http://relay-b.test:0", "http://relay-b.test:http", "   "):
            self.assert_refused(o, 400, "x-mte-upstream", upstream=value)

    def test_disallowed_upstream_is_403(self) -> None:
        o = Outbound(OUTBOUND_UPSTREAMS="https://relay.partner.example,http://*.test:*")
        self.assert_refused(o, 403, "not in OUTBOUND_UPSTREAMS", upstream="http://evil.example")
        self.assert_refused(o, 403, "not in OUTBOUND_UPSTREAMS",
                            upstream="http://relay-b.test.evil.example")
        self.assert_refused(o, 403, "not in OUTBOUND_UPSTREAMS",
                            upstream="http://relay.partner.example")
        response, _ = o.call("GET", "/x", upstream="http://relay-b.test:8080")
        self.assertEqual(response.code, 200)

    def test_remembered_origin_still_refuses_a_repeated_header(self) -> None:
        o = Outbound(OUTBOUND_UPSTREAMS="http://*.test:*")
        for _ in range(2):  # the second answer comes from the remembered origin
            response, _ = o.call("GET", "/x", upstream="http://relay-b.test:8080")
            self.assertEqual(response.code, 200)
        self.assertEqual(list(o.root.outbound._origins), [b"http://relay-b.test:8080"])
        o.b.switch.seen.clear()
        self.assert_refused(o, 400, "sent more than once", upstream=None,
                            headers={"x-mte-upstream": ["http://relay-b.test:8080"] * 2})
        self.assert_refused(o, 403, "not in OUTBOUND_UPSTREAMS", upstream="http://evil.example")

    def test_routes_without_the_token_are_unchanged(self) -> None:
        o = Outbound()
        response, body = o.call("GET", "/api/mte-echo/hi", token=None)
        self.assertEqual(payload(body)["echo"], "hi")
        response, body = o.call("GET", "/api/x", token=None)
        self.assertEqual(response.code, 569)


class RemoteFailureTests(SynchronousTestCase):
    def test_remote_relay_restart_and_secret_change_are_transparent(self) -> None:
        o = Outbound()
        self.assertEqual(o.call("POST", "/a", data=b"1")[0].code, 200)
        o.b.restart()
        self.assertEqual(o.call("POST", "/b", data=b"2")[0].code, 200)
        o.b.restart(CLIENT_ID_SECRET="another-secret-0123456789abcdefghij")
        self.assertEqual(o.call("POST", "/c", data=b"3")[0].code, 200)
        self.assertEqual([r.uri for r in o.b.upstream.received], [b"/a", b"/b", b"/c"])
        self.assertEqual(o.b.switch.count(b"HEAD", b"/api/mte-relay"), 2)

    def test_unrecovered_relay_error_is_502_naming_it(self) -> None:
        o = Outbound()
        for _ in range(2):
            o.b.switch.inject.append((560, {"error": "State not found.", "code": 560}, {}))
        response, body = o.call("GET", "/x")
        answer = payload(body)
        self.assertEqual((response.code, answer["error"]), (502, "Remote relay error"))
        self.assertIn("560", answer["reason"])
        self.assertEqual(o.b.upstream.received, [])

    def test_not_a_relay_is_502(self) -> None:
        plain = RecordingUpstream()
        o = Outbound(agent=RequestTraversalAgent(plain))
        response, body = o.call("GET", "/x")
        self.assertEqual((response.code, payload(body)["error"]), (502, "Remote relay error"))
        self.assertEqual([r.uri for r in plain.received], [b"/api/mte-relay"])

    def test_unreachable_is_502_and_recovers(self) -> None:
        agent = RefusingAgent()
        o = Outbound(agent=agent)
        for _ in range(2):
            response, body = o.call("GET", "/x")
            answer = payload(body)
            self.assertEqual((response.code, answer["error"]), (502, "Remote relay unreachable"))
            self.assertIn("ConnectionRefusedError", answer["reason"])
        self.assertEqual(agent.calls, 2)  # no failure is cached: each request tries again

    def test_timeout_is_504(self) -> None:
        o = Outbound(agent=SilentAgent(), UPSTREAM_TIMEOUT="5")
        results: list[Any] = []
        o.app.request("GET", "http://relay-a.test/x",
                      headers={"x-mte-outbound-token": TOKEN, "x-mte-upstream": REMOTE}
                      ).addBoth(results.append)
        o.flush()
        self.assertEqual(results, [])
        o.b.clock.advance(5)
        o.flush()
        [response] = results
        body = o.b.wait(o.app.content(response))
        self.assertEqual((response.code, payload(body)["error"]), (504, "Remote relay timed out"))


class RuleTests(SynchronousTestCase):
    def test_token_matches(self) -> None:
        self.assertTrue(token_matches([b"abc-123"], "abc-123"))
        self.assertTrue(token_matches([b" abc-123 "], "abc-123"))
        for given, expected in (([b"abc"], "abc-123"), ([], "abc"), ([b"abc", b"abc"], "abc"),
                                ([b""], ""), ([b"abc"], None), ([b""], None)):
            self.assertFalse(token_matches(given, expected), (given, expected))

    def test_upstream_origin_normalised(self) -> None:
        for value, url in (("https://Relay.Example", "https://relay.example:443"),
                           ("http://relay.example:8080/", "http://relay.example:8080"),
                           ("HTTP://[::1]:9", "http://[::1]:9")):
            headers = Headers({b"x-mte-upstream": [value.encode()]})
            self.assertEqual(peer_origin(headers, ()).url, url)
        with self.assertRaises(Refused):
            peer_origin(Headers({b"x-mte-upstream": [b"https://a", b"https://b"]}), ())

    def test_seal_choices(self) -> None:
        self.assertEqual(seal_choices(Headers()),
                         {"seal_url": True, "seal_headers": "all", "framing": "MKR"})
        headers = Headers({b"x-mte-encode-headers": [b"Authorization, x-api-key", b"cookie"],
                           b"x-mte-encode-type": [b"MTE"], b"x-mte-encode-url": [b"False"]})
        self.assertEqual(seal_choices(headers),
                         {"seal_url": False, "framing": "MTE",
                          "seal_headers": ("authorization", "x-api-key", "cookie")})


class AbandonedRequestTests(SynchronousTestCase):
    """The application hanging up cancels the exchange; that is not a relay failure."""

    def test_failure_after_the_application_left_is_not_logged_or_answered(self) -> None:
        from twisted.logger import LogLevel, globalLogPublisher

        from twisted.web.test.requesthelper import DummyRequest

        from mterelay.client import SealOptions
        from mterelay.web.outboundrules import parse_origin
        from mterelay.web.outbound import _Exchange

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        request = DummyRequest([b"x"])
        request.startedWriting = False
        o = Outbound()
        exchange = _Exchange(o.root.outbound, request, parse_origin(REMOTE), SealOptions.build())
        exchange.gone = True
        exchange._failed(502, "Remote relay unreachable", "CancelledError: ")
        self.assertEqual([e for e in events if e.get("log_level") == LogLevel.warn], [])
        self.assertEqual(request.written, [])
        exchange.gone = False
        exchange._failed(502, "Remote relay unreachable", "ConnectionRefusedError")
        self.assertEqual(len([e for e in events if e.get("log_level") == LogLevel.warn]), 1)
