"""The relay's per-request state is declared (web/request.RelayRequest), its
metrics always passed (http/observe), and the body rules said once (http/bodies).

These pin the contracts the refactor of issue 17 (deliver 3) relies on: every
Site the relay runs in - RelaySite, and the in-memory Site of the tests -
makes RelayRequests; NoMetrics accepts every report RelayMetrics takes, with
the same signature, so a part built without metrics never needs a check.
"""

from __future__ import annotations

import inspect
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyChannel

from mterelay.http.bodies import declares_body, has_body
from mterelay.http.observe import NO_METRICS, Metrics, NoMetrics
from mterelay.http.streaming import StreamingRequest, streamed_body
from mterelay.service.metrics import RelayMetrics
from mterelay.web.request import RelayRequest
from mterelay.web.site import RelaySite
from tests.helpers.support import MemoryRelay, relay_stub
from tests.integration.test_site import Connection


class _Seen(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def render(self, request: Any) -> bytes:
        self.requests.append(request)
        return b"ok"


class RelayRequestTests(SynchronousTestCase):
    def test_fields_declared_with_defaults(self) -> None:
        request = RelayRequest(DummyChannel())
        self.assertIsInstance(request, StreamingRequest)
        self.assertEqual((request.request_id, request.echo_request_id, request.role,
                          request.started_at, request.access_logged, request.refusal,
                          request.site_channel),
                         (None, False, "other", None, False, None, None))

    def test_relay_site_makes_relay_requests_and_fills_them(self) -> None:
        clock = Clock()
        clock.advance(7)
        seen = _Seen()
        metrics = RelayMetrics()
        site = RelaySite(seen, clock, metrics, reactor=clock)
        connection = Connection(site)
        connection.send(b"/x", headers=((b"x-request-id", b"given-1"),))
        [request] = seen.requests
        self.assertIs(type(request), RelayRequest)
        self.assertEqual((request.request_id, request.started_at, request.role),
                         ("given-1", 7.0, "other"))
        self.assertIs(request.site_channel, connection.channel)
        self.assertTrue(request.access_logged)

    def test_in_memory_site_makes_relay_requests(self) -> None:
        # The in-memory relays of tests/support run the production request class.
        relay = MemoryRelay.build()
        seen: list[Any] = []
        render = relay.root.render

        def spy(request: Any) -> Any:
            seen.append(request)
            return render(request)

        relay.root.render = spy  # type: ignore[method-assign]
        relay.call("GET", "/api/mte-echo/hi")
        [request] = seen
        self.assertIsInstance(request, RelayRequest)
        self.assertEqual(request.role, "other")
        other = _Seen()
        client = relay_stub(other)
        client.get("http://relay.test/x")
        client.flush()
        self.assertIsInstance(other.requests[0], RelayRequest)

    def test_a_mistyped_field_is_not_silently_read(self) -> None:
        # No getattr defaults: a field that does not exist is an error, not None.
        request = RelayRequest(DummyChannel())
        self.assertRaises(AttributeError, getattr, request, "mterelay_role")


class NoMetricsTests(SynchronousTestCase):
    def reporting_methods(self) -> list[str]:
        return [name for name, member in inspect.getmembers(Metrics)
                if callable(member) and not name.startswith("_")]

    def test_every_report_taken_with_the_same_signature(self) -> None:
        names = self.reporting_methods()
        self.assertIn("request_finished", names)
        for name in names:
            wanted = inspect.signature(getattr(Metrics, name))
            for implementation in (NoMetrics, RelayMetrics):
                got = inspect.signature(getattr(implementation, name))
                self.assertEqual(list(got.parameters), list(wanted.parameters),
                                 f"{implementation.__name__}.{name}")

    def test_reports_go_nowhere(self) -> None:
        self.assertIsNone(NO_METRICS.request_finished("inbound", 200, 0.1))
        self.assertIsNone(NO_METRICS.observe_crypto("request_decode", 0.1))
        self.assertEqual(NoMetrics.__slots__, ())

    def test_a_site_runs_without_metrics(self) -> None:
        clock = Clock()
        seen = _Seen()
        connection = Connection(RelaySite(seen, clock, NO_METRICS, reactor=clock))
        connection.send(b"/x")
        [response] = connection.responses()
        self.assertEqual(response.status, 200)


class BodyRuleTests(SynchronousTestCase):
    def test_declares_body_is_framing(self) -> None:
        self.assertFalse(declares_body(Headers()))
        self.assertTrue(declares_body(Headers({b"content-length": [b"0"]})))
        self.assertTrue(declares_body(Headers({b"transfer-encoding": [b"chunked"]})))

    def test_has_body_is_the_spec_rule(self) -> None:
        self.assertFalse(has_body(Headers()))
        self.assertFalse(has_body(Headers({b"content-length": [b"0"]})))
        self.assertFalse(has_body(Headers({b"content-length": [b" "]})))
        self.assertTrue(has_body(Headers({b"content-length": [b"3"]})))
        self.assertTrue(has_body(Headers({b"transfer-encoding": [b"chunked"]})))

    def test_streamed_body_only_for_a_pipe(self) -> None:
        request = RelayRequest(DummyChannel())
        self.assertIsNone(streamed_body(request))
        self.assertIsNone(streamed_body(object()))
