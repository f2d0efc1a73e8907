"""Relay A's answers an application can act on: what it passes on, and whether it was sent.

In memory (the harness of ``tests.unit.test_outbound``): the remote relay B is a
RelayRoot reached through ``RequestTraversalAgent``; agents that refuse or
lose connections stand in for a dead B.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.internet.error import ConnectionDone
from twisted.web.client import ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from zope.interface import implementer

from tests.unit.test_outbound import Outbound, RefusingAgent, payload


@implementer(IAgent)
class LosingAgent:
    """Handshakes go to B; encrypted requests are written, then the connection is lost."""

    def __init__(self, agent: IAgent) -> None:
        self.agent = agent
        self.lost = 0

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: Any = None) -> "Deferred[Any]":
        if uri.endswith((b"/api/mte-relay", b"/api/mte-pair")):
            return self.agent.request(method, uri, headers, bodyProducer)
        self.lost += 1
        return fail(ResponseNeverReceived([Failure(ConnectionDone("lost"))]))


def reached(response: Any, body: bytes) -> tuple[str | None, Any]:
    header = response.headers.getRawHeaders(b"x-mte-upstream-reached")
    return (header[0].decode() if header else None), payload(body).get("upstreamReached")


class UpstreamReachedTests(SynchronousTestCase):
    def test_refusals_were_not_sent(self) -> None:
        o = Outbound()
        for kwargs in ({"token": "wrong"}, {"upstream": None}, {"upstream": "ftp://x"}):
            response, body = o.call("POST", "/x", data=b"1", **kwargs)
            self.assertIn(response.code, (400, 401, 403))
            self.assertEqual(reached(response, body), ("no", "no"), kwargs)

    def test_connection_refused_was_not_sent(self) -> None:
        o = Outbound(agent=RefusingAgent())
        response, body = o.call("POST", "/x", data=b"1")
        self.assertEqual(response.code, 502)
        self.assertEqual(reached(response, body), ("no", "no"))

    def test_connection_lost_after_sending_may_have_reached(self) -> None:
        # Failed before: the 502 did not say whether the POST had executed.
        o = Outbound()
        losing = LosingAgent(o.b.agent)
        o = Outbound(agent=losing)
        response, body = o.call("POST", "/x", data=b"1")
        self.assertEqual(response.code, 502)
        self.assertEqual(payload(body)["error"], "Remote relay unreachable")
        self.assertEqual(reached(response, body), ("maybe", "maybe"))
        self.assertEqual(losing.lost, 1, "a request that may have been sent is not resent")

    def test_remote_55x_was_not_sent(self) -> None:
        o = Outbound()
        o.call("GET", "/warm")
        for _ in range(2):  # the first is retried on a new pair, the second reaches the app
            o.b.switch.inject.append((560, {"error": "State not found.", "code": 560}, {}))
        response, body = o.call("GET", "/x")
        self.assertEqual(response.code, 502)
        self.assertEqual(reached(response, body), ("no", "no"))

    def test_local_decode_failure_may_have_reached(self) -> None:
        o = Outbound()
        o.call("GET", "/warm")
        # A 200 without x-mte-relay: not authentic (562 locally), yet B may
        # have forwarded the request.
        o.b.switch.inject.append((200, {"forged": True}, {}))
        response, body = o.call("POST", "/x", data=b"1")
        self.assertEqual(response.code, 502)
        self.assertEqual(reached(response, body), ("maybe", "maybe"))


class ClearAnswerTests(SynchronousTestCase):
    def test_remote_clear_error_keeps_only_content_type(self) -> None:
        # A relay-made (clear, unauthenticated) answer: its Set-Cookie was
        # passed to the application before the fix.
        o = Outbound()
        o.b.switch.inject.append((502, {"error": "Upstream unreachable", "code": 502},
                                  {b"set-cookie": b"injected=1", b"x-other": b"1"}))
        response, body = o.call("GET", "/x")
        self.assertEqual((response.code, payload(body)["code"]), (502, 502))
        self.assertIsNone(response.headers.getRawHeaders(b"set-cookie"))
        self.assertIsNone(response.headers.getRawHeaders(b"x-other"))
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(response.headers.getRawHeaders(b"x-mte-upstream-reached"), [b"maybe"])

    def test_remote_clear_refusal_was_not_forwarded(self) -> None:
        o = Outbound()
        o.b.switch.inject.append((413, {"error": "Payload too large", "code": 413}, {}))
        response, _ = o.call("POST", "/x", data=b"1")
        self.assertEqual(response.code, 413)
        self.assertEqual(response.headers.getRawHeaders(b"x-mte-upstream-reached"), [b"no"])


    def test_remote_relay_verdict_is_passed_on(self) -> None:
        """Relay B's own x-mte-upstream-reached (spec 10.1) wins over a guess from the status."""
        for status, said in ((502, b"no"), (400, b"maybe")):
            o = Outbound()
            o.b.switch.inject.append((status, {"error": "x", "code": status},
                                      {b"x-mte-upstream-reached": said}))
            response, _ = o.call("GET", "/x")
            self.assertEqual(response.code, status)
            self.assertEqual(response.headers.getRawHeaders(b"x-mte-upstream-reached"), [said])

    def test_remote_55x_saying_maybe_is_maybe(self) -> None:
        """A 55x is no longer proof that nothing reached the upstream (562 mid-body)."""
        o = Outbound()
        for _ in range(2):
            o.b.switch.inject.append((562, {"error": "Failed to decode.", "code": 562,
                                            "upstreamReached": "maybe"}, {}))
        response, body = o.call("POST", "/x", data=b"1")
        self.assertEqual(response.code, 502)
        self.assertEqual(reached(response, body), ("maybe", "maybe"))
        self.assertEqual(len(o.wire()), 1,
                         "a POST that may have reached the upstream is not resent")

class UpstreamNameTests(SynchronousTestCase):
    def test_64_character_label_is_a_clean_400(self) -> None:
        # Failed before: ValueError from HostnameEndpoint, 502 "Bad gateway"
        # and a critical traceback carrying the value.
        o = Outbound()
        label = "a" * 64
        response, body = o.call("GET", "/x", upstream=f"http://{label}.example")
        self.assertEqual(response.code, 400)
        self.assertIn("x-mte-upstream", payload(body)["reason"])
        self.assertNotIn(label, payload(body)["reason"])
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(o.b.switch.seen, [])
