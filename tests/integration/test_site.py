"""RelaySite: request ids, in-flight tracking, request metrics and draining.

Most tests drive the site's real HTTP/1.1 channel over a ``StringTransport``
with a fake clock, so they are synchronous and exact.  The draining tests
also run over real loopback TCP connections with the real reactor: closing
idle keep-alive connections is about sockets, and only a socket shows it.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from mterelay.service.metrics import RelayMetrics
from mterelay.store.memory import MemoryPairStore
from mterelay.service.tap import store_limits
from mterelay.http.upstream import UpstreamForwarder
from mterelay.web.root import RelayRoot
from mterelay.web.site import REQUEST_ID_HEADER, RelaySite, request_id_for
from tests.helpers.support import NoRemoteRelay, relay_config

FRESH_ID = re.compile(r"[0-9a-f]{32}\Z")


# --- raw HTTP/1.1 responses


class Incomplete(Exception):
    pass


class Response:
    def __init__(self, status: int, headers: dict[bytes, list[bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: bytes) -> list[bytes] | None:
        return self.headers.get(name.lower())


def _one_response(data: bytes, at_eof: bool) -> tuple[Response, bytes]:
    head, separator, rest = data.partition(b"\r\n\r\n")
    if not separator:
        raise Incomplete()
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if b"content-length" in headers:
        length = int(headers[b"content-length"][0])
        if len(rest) < length:
            raise Incomplete()
        return Response(status, headers, rest[:length]), rest[length:]
    if headers.get(b"transfer-encoding") == [b"chunked"]:
        body = b""
        while True:
            size_line, found, rest = rest.partition(b"\r\n")
            if not found:
                raise Incomplete()
            size = int(size_line.split(b";")[0], 16)
            if len(rest) < size + 2:
                raise Incomplete()
            if size == 0:
                return Response(status, headers, body), rest[2:]
            body, rest = body + rest[:size], rest[size + 2:]
    if not at_eof:
        raise Incomplete()
    return Response(status, headers, rest), b""


def parse_responses(data: bytes, at_eof: bool = True) -> list[Response]:
    """Every complete response in ``data``, in order."""
    responses = []
    while data:
        try:
            response, data = _one_response(data, at_eof)
        except Incomplete:
            break
        responses.append(response)
    return responses


def raw_request(path: bytes = b"/", method: bytes = b"GET",
                headers: tuple[tuple[bytes, bytes], ...] = (), body: bytes = b"") -> bytes:
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: relay.test"]
    lines += [name + b": " + value for name, value in headers]
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# --- resources


class Recording(Resource):
    """Answers at once (or holds /slow requests); records every request it saw."""

    isLeaf = True

    def __init__(self, role: str | None = None) -> None:
        super().__init__()
        self.seen: list[Any] = []
        self.held: list[Any] = []
        self.role = role
        self.status = 200
        self._arrivals: list[Deferred[Any]] = []

    def render(self, request: Any) -> Any:
        self.seen.append(request)
        if self.role is not None:
            request.role = self.role
        if request.path == b"/boom":
            raise RuntimeError("resource crashed")
        if request.path.startswith(b"/slow"):
            self.held.append(request)
            waiters, self._arrivals = self._arrivals, []
            for waiter in waiters:
                waiter.callback(request)
            return NOT_DONE_YET
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", b"text/plain")
        return b"answer"

    def arrival(self) -> Deferred[Any]:
        waiter: Deferred[Any] = Deferred()
        self._arrivals.append(waiter)
        return waiter

    @staticmethod
    def release(request: Any, body: bytes = b"slow answer") -> None:
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()


# --- an in-memory connection to a site


class Connection:
    """One client connection to ``site``'s real channel, over a StringTransport."""

    def __init__(self, site: RelaySite, port: int = 40000) -> None:
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.channel = site.buildProtocol(self.transport.getPeer())
        self.channel.makeConnection(self.transport)

    def send(self, *args: Any, **kwargs: Any) -> None:
        self.channel.dataReceived(raw_request(*args, **kwargs))

    def responses(self) -> list[Response]:
        return parse_responses(self.transport.value(), at_eof=self.closed_by_server)

    @property
    def closed_by_server(self) -> bool:
        return bool(self.transport.disconnecting)

    def drop(self) -> None:
        """The client goes away."""
        self.channel.connectionLost(Failure(ConnectionDone("client closed")))


def metrics_value(metrics: RelayMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class RequestIdForTests(SynchronousTestCase):
    def test_valid_ids_honoured(self) -> None:
        for incoming in (b"abc-123", b"4bf92f3577b34da6a3ce929d0e0e4736", b"x",
                         b"req_01:HX/7+=~", b"!" * 128, b"{id}"):
            self.assertEqual(request_id_for(incoming), incoming.decode("ascii"))

    def assertFresh(self, incoming: bytes | None) -> None:
        chosen = request_id_for(incoming)
        self.assertRegex(chosen, FRESH_ID)
        if incoming is not None:
            self.assertNotEqual(chosen.encode("ascii"), incoming)

    def test_missing_gets_a_fresh_id(self) -> None:
        self.assertFresh(None)

    def test_empty_gets_a_fresh_id(self) -> None:
        self.assertFresh(b"")

    def test_too_long_gets_a_fresh_id(self) -> None:
        self.assertFresh(b"a" * 129)
        self.assertFresh(b"a" * 10_000)

    def test_control_characters_get_a_fresh_id(self) -> None:
        for incoming in (b"abc\ndef", b"abc\r\n", b"abc\n", b"a\x00b", b"a\tb", b"\x1b[31mred",
                         b"a\x7fb", b"with space", b" lead", b"trail "):
            self.assertFresh(incoming)

    def test_non_ascii_gets_a_fresh_id(self) -> None:
        for incoming in ("caf\u00e9".encode("utf-8"), b"\xff\xfe", "\u4e2d".encode("utf-8"),
                         b"abc\x80"):
            self.assertFresh(incoming)

    def test_fresh_ids_differ(self) -> None:
        self.assertEqual(len({request_id_for(None) for _ in range(50)}), 50)


class SiteCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.resource = Recording()
        self.metrics = RelayMetrics()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def site(self, resource: Any = None, echo: bool = False,
             metrics: RelayMetrics | None = None) -> RelaySite:
        return RelaySite(resource if resource is not None else self.resource, self.clock,
                         metrics if metrics is not None else self.metrics,
                         echo_request_id=echo, reactor=self.clock)

    def access_lines(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("log_namespace") == "mterelay.access"]


class RequestIdTests(SiteCase):
    def test_incoming_id_honoured(self) -> None:
        connection = Connection(self.site())
        connection.send(headers=((b"X-Request-Id", b"caller-id-1"),))
        [request] = self.resource.seen
        self.assertEqual(request.request_id, "caller-id-1")

    def test_missing_id_minted(self) -> None:
        connection = Connection(self.site())
        connection.send()
        connection.send()
        first, second = self.resource.seen
        self.assertRegex(first.request_id, FRESH_ID)
        self.assertRegex(second.request_id, FRESH_ID)
        self.assertNotEqual(first.request_id, second.request_id)

    def test_bad_ids_replaced(self) -> None:
        connection = Connection(self.site())
        for bad in (b"a" * 129, b"caf\xc3\xa9", b"has space", b"tab\there"):
            connection.send(headers=((b"x-request-id", bad),))
        for request in self.resource.seen:
            self.assertRegex(request.request_id, FRESH_ID)
        self.assertEqual(len(self.resource.seen), 4)

    def test_first_of_several_ids_used(self) -> None:
        connection = Connection(self.site())
        connection.send(headers=((b"x-request-id", b"first"), (b"x-request-id", b"second")))
        self.assertEqual(self.resource.seen[0].request_id, "first")

    def test_not_echoed_by_default(self) -> None:
        connection = Connection(self.site())
        connection.send(headers=((b"x-request-id", b"caller-id-2"),))
        connection.send()
        for response in connection.responses():
            self.assertEqual(response.status, 200)
            self.assertIsNone(response.header(REQUEST_ID_HEADER))

    def test_echoed_with_debug(self) -> None:
        connection = Connection(self.site(echo=True))
        connection.send(headers=((b"x-request-id", b"caller-id-3"),))
        connection.send()
        connection.send(headers=((b"x-request-id", b"bad id"),))
        first, minted, replaced = connection.responses()
        self.assertEqual(first.header(REQUEST_ID_HEADER), [b"caller-id-3"])
        self.assertEqual(minted.header(REQUEST_ID_HEADER),
                         [self.resource.seen[1].request_id.encode("ascii")])
        self.assertEqual(replaced.header(REQUEST_ID_HEADER),
                         [self.resource.seen[2].request_id.encode("ascii")])
        self.assertRegex(self.resource.seen[2].request_id, FRESH_ID)

    def test_echoed_on_errors_too(self) -> None:
        connection = Connection(self.site(echo=True))
        self.resource.status = 404
        connection.send(headers=((b"x-request-id", b"lost-1"),))
        [response] = connection.responses()
        self.assertEqual((response.status, response.header(REQUEST_ID_HEADER)),
                         (404, [b"lost-1"]))

    def test_access_line_carries_the_id_not_the_query(self) -> None:
        connection = Connection(self.site())
        connection.send(b"/things?api_key=s3cr3t", headers=((b"x-request-id", b"rid-7"),))
        [line] = self.access_lines()
        self.assertEqual(line["request_id"], "rid-7")
        self.assertEqual((line["method"], line["path"], line["status"]), ("GET", "/things", 200))
        self.assertEqual(line["client"], "127.0.0.1")
        self.assertNotIn("s3cr3t", repr(line))

    def test_access_line_with_braces_in_the_id(self) -> None:
        from twisted.logger import formatEvent

        connection = Connection(self.site())
        connection.send(headers=((b"x-request-id", b"{status}{0}"),))
        [line] = self.access_lines()
        self.assertEqual(line["request_id"], "{status}{0}")
        self.assertIn("GET / 200", formatEvent(line))

    def test_access_event_is_the_one_logger_info_would_emit(self) -> None:
        # The site builds the event itself (no Logger.emit): same keys, same
        # values, same order as ``log.info(ACCESS_FORMAT, **fields)``.
        from twisted.logger import Logger

        from mterelay.web import site as site_module

        seen: list[dict[str, Any]] = []
        access = Logger(namespace="mterelay.access", observer=seen.append)
        self.patch(site_module, "log", access)
        connection = Connection(self.site())
        connection.send(b"/things", headers=((b"x-request-id", b"rid-8"),))
        [line] = seen
        fields = {k: v for k, v in line.items() if not k.startswith("log_")}
        access.info(site_module.ACCESS_FORMAT, **fields)
        reference = seen[1]
        for event in (line, reference):
            self.assertIs(event.pop("log_logger"), access)
            event["log_time"] = round(event["log_time"])
        self.assertEqual(list(line.items()), list(reference.items()))
        self.assertEqual(fields["mterelay_text"], "GET /things 200 0.0ms")


class InFlightTests(SiteCase):
    def test_idle_at_start(self) -> None:
        site = self.site()
        self.assertEqual(site.active, set())
        self.successResultOf(site.when_idle())

    def test_tracks_requests_until_answered(self) -> None:
        site = self.site()
        one, two = Connection(site, 40001), Connection(site, 40002)
        one.send(b"/slow/1")
        two.send(b"/slow/2")
        self.assertEqual(len(site.active), 2)
        self.assertEqual(metrics_value(self.metrics, "mterelay_in_flight_requests"), 2.0)
        first, second = site.when_idle(), site.when_idle()
        Recording.release(self.resource.held[0])
        self.assertNoResult(first)
        self.assertEqual(len(site.active), 1)
        Recording.release(self.resource.held[1])
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(site.active, set())
        self.assertEqual(metrics_value(self.metrics, "mterelay_in_flight_requests"), 0.0)

    def test_quick_requests_leave_nothing_behind(self) -> None:
        site = self.site()
        connection = Connection(site)
        for _ in range(3):
            connection.send()
        self.assertEqual(len(connection.responses()), 3)
        self.assertEqual(site.active, set())
        self.successResultOf(site.when_idle())

    def test_client_gone_ends_tracking(self) -> None:
        site = self.site()
        connection = Connection(site)
        connection.send(b"/slow")
        idle = site.when_idle()
        connection.drop()
        self.successResultOf(idle)
        self.assertEqual(site.active, set())
        self.assertEqual(site.channels, set())

    def test_channels_tracked(self) -> None:
        site = self.site()
        one, two = Connection(site, 40001), Connection(site, 40002)
        self.assertEqual(len(site.channels), 2)
        one.drop()
        self.assertEqual(len(site.channels), 1)
        two.drop()
        self.assertEqual(site.channels, set())


class SiteMetricsTests(SiteCase):
    def test_counts_by_role_and_class(self) -> None:
        passthrough = Recording(role="passthrough")
        site = self.site(passthrough)
        connection = Connection(site)
        connection.send()
        connection.send()
        passthrough.status = 404
        connection.send()
        passthrough.status = 502
        connection.send()
        self.assertEqual([r.status for r in connection.responses()], [200, 200, 404, 502])
        m = self.metrics
        self.assertEqual(metrics_value(m, "mterelay_requests_total", role="passthrough",
                                       status_class="2xx"), 2.0)
        self.assertEqual(metrics_value(m, "mterelay_requests_total", role="passthrough",
                                       status_class="4xx"), 1.0)
        self.assertEqual(metrics_value(m, "mterelay_requests_total", role="passthrough",
                                       status_class="5xx"), 1.0)
        self.assertEqual(metrics_value(m, "mterelay_requests_total", role="other",
                                       status_class="2xx"), 0.0)
        self.assertEqual(metrics_value(m, "mterelay_request_seconds_count",
                                       role="passthrough"), 4.0)
        self.assertEqual(metrics_value(m, "mterelay_in_flight_requests"), 0.0)

    def test_role_defaults_to_other(self) -> None:
        connection = Connection(self.site())
        connection.send()
        self.assertEqual(metrics_value(self.metrics, "mterelay_requests_total", role="other",
                                       status_class="2xx"), 1.0)

    def test_duration_from_the_clock(self) -> None:
        site = self.site(Recording(role="inbound"))
        connection = Connection(site)
        connection.send(b"/slow")
        self.clock.advance(2.5)
        Recording.release(site.resource.held[0])
        self.assertEqual(metrics_value(self.metrics, "mterelay_request_seconds_sum",
                                       role="inbound"), 2.5)
        [line] = self.access_lines()
        self.assertEqual(line["duration_ms"], 2500.0)

    def test_refusal_counts_as_relay_error(self) -> None:
        config = relay_config()
        forwarder = UpstreamForwarder(clock=self.clock, agent=None, upstream=config.upstream)
        root = RelayRoot(config, forwarder, self.clock,
                         MemoryPairStore(self.clock, store_limits(config)),
                         outbound_agent=NoRemoteRelay(), metrics=self.metrics)
        connection = Connection(self.site(root))
        connection.send(b"/api/login", b"POST", body=b"{}")
        connection.send(b"/api/mte-echo/hi")
        refused, echoed = connection.responses()
        self.assertEqual((refused.status, echoed.status), (569, 200))
        m = self.metrics
        self.assertEqual(metrics_value(m, "mterelay_relay_errors_total", code="569",
                                       reason="missing_required_header"), 1.0)
        self.assertEqual(metrics_value(m, "mterelay_requests_total", role="other",
                                       status_class="5xx"), 1.0)
        self.assertEqual(metrics_value(m, "mterelay_requests_total", role="other",
                                       status_class="2xx"), 1.0)
        # The echo was not a refusal: still exactly one error counted.
        total = sum(s.value for f in m.relay_errors.collect() for s in f.samples
                    if s.name == "mterelay_relay_errors_total")
        self.assertEqual(total, 1.0)

    def test_client_gone_counts_499(self) -> None:
        statuses: list[tuple[str, int]] = []
        original = self.metrics.request_finished

        def spy(role: str, status: int, seconds: float) -> None:
            statuses.append((role, status))
            original(role, status, seconds)

        self.metrics.request_finished = spy  # type: ignore[method-assign]
        site = self.site(Recording(role="passthrough"))
        connection = Connection(site)
        connection.send(b"/slow")
        self.assertEqual(metrics_value(self.metrics, "mterelay_in_flight_requests"), 1.0)
        self.clock.advance(4)
        connection.drop()
        self.assertEqual(statuses, [("passthrough", 499)])
        self.assertEqual(metrics_value(self.metrics, "mterelay_requests_total",
                                       role="passthrough", status_class="4xx"), 1.0)
        self.assertEqual(metrics_value(self.metrics, "mterelay_request_seconds_sum",
                                       role="passthrough"), 4.0)
        self.assertEqual(metrics_value(self.metrics, "mterelay_in_flight_requests"), 0.0)
        # No access line: nothing was answered.
        self.assertEqual(self.access_lines(), [])

    def test_answered_then_closed_is_not_499(self) -> None:
        statuses: list[int] = []
        original = self.metrics.request_finished
        self.metrics.request_finished = (  # type: ignore[method-assign]
            lambda role, status, seconds: (statuses.append(status),
                                           original(role, status, seconds))[1])
        connection = Connection(self.site())
        connection.send()
        connection.drop()
        self.assertEqual(statuses, [200])

    def test_asterisk_targets_keep_the_in_flight_gauge_balanced(self) -> None:
        # Twisted answers "OPTIONS *" (200) and "GET *" (405) without
        # getResourceFor; the gauge used to go to -1 for each.
        site = self.site()
        for method in (b"OPTIONS", b"GET", b"OPTIONS"):
            connection = Connection(site)
            connection.channel.dataReceived(method + b" * HTTP/1.1\r\nHost: relay.test\r\n\r\n")
            self.assertEqual(len(connection.responses()), 1)
        self.assertEqual(metrics_value(self.metrics, "mterelay_in_flight_requests"), 0.0)
        self.assertEqual(metrics_value(self.metrics, "mterelay_requests_total", role="other",
                                       status_class="2xx"), 2.0)
        self.assertEqual(metrics_value(self.metrics, "mterelay_requests_total", role="other",
                                       status_class="4xx"), 1.0)
        self.assertEqual([(line["method"], line["path"], line["status"])
                          for line in self.access_lines()],
                         [("OPTIONS", "*", 200), ("GET", "*", 405), ("OPTIONS", "*", 200)])

    def test_crashing_resource_counts_500(self) -> None:
        site = self.site()
        connection = Connection(site)
        connection.send(b"/boom")
        [response] = connection.responses()
        self.assertEqual(response.status, 500)
        self.assertNotIn(b"resource crashed", connection.transport.value())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(metrics_value(self.metrics, "mterelay_requests_total", role="other",
                                       status_class="5xx"), 1.0)
        self.assertEqual(site.active, set())
        self.assertEqual(metrics_value(self.metrics, "mterelay_in_flight_requests"), 0.0)

    def test_default_metrics(self) -> None:
        # No default any more (the service passes its metrics): the one given is used.
        site = RelaySite(self.resource, self.clock, RelayMetrics(), reactor=self.clock)
        self.assertIsInstance(site.metrics, RelayMetrics)
        Connection(site).send()
        self.assertEqual(metrics_value(site.metrics, "mterelay_requests_total", role="other",
                                       status_class="2xx"), 1.0)
        self.assertFalse(site.noisy)
        self.assertFalse(site.displayTracebacks)


class InMemoryDrainingTests(SiteCase):
    """start_draining on the real channel, observed through a StringTransport."""

    def test_idle_connection_closed(self) -> None:
        site = self.site()
        idle = Connection(site)
        idle.send()
        never_used = Connection(site, 40001)
        self.assertEqual(site.start_draining(), 0)
        self.assertTrue(idle.closed_by_server)
        self.assertTrue(never_used.closed_by_server)
        self.assertEqual(len(idle.responses()), 1)
        self.assertTrue(site.draining)

    def test_busy_connection_answered_with_close(self) -> None:
        site = self.site()
        busy = Connection(site)
        busy.send(b"/slow")
        self.assertEqual(site.start_draining(), 1)
        self.assertFalse(busy.closed_by_server)
        Recording.release(self.resource.held[0])
        [response] = busy.responses()
        self.assertEqual(response.header(b"connection"), [b"close"])
        self.assertEqual(response.body, b"slow answer")
        self.assertTrue(busy.closed_by_server)
        self.successResultOf(site.when_idle())

    def test_pipelined_request_behind_a_busy_one_not_served(self) -> None:
        site = self.site()
        busy = Connection(site)
        busy.channel.dataReceived(raw_request(b"/slow") + raw_request(b"/second"))
        site.start_draining()
        Recording.release(self.resource.held[0])
        self.assertEqual(len(busy.responses()), 1)
        self.assertEqual([r.path for r in self.resource.seen], [b"/slow"])
        self.assertTrue(busy.closed_by_server)

    def test_new_connection_while_draining(self) -> None:
        site = self.site()
        site.start_draining()
        late = Connection(site)
        self.assertFalse(late.closed_by_server)
        late.channel.dataReceived(raw_request(b"/one") + raw_request(b"/two"))
        responses = late.responses()
        self.assertEqual(len(responses), 1,
                         f"a connection accepted while draining got {len(responses)} "
                         f"answer(s); the resource saw {len(self.resource.seen)} request(s)")
        [response] = responses
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"connection"), [b"close"])
        self.assertTrue(late.closed_by_server)
        self.assertEqual(len(self.resource.seen), 1)

    def test_started_answer_finishes_then_closes(self) -> None:
        site = self.site()
        busy = Connection(site)
        busy.send(b"/slow")
        request = self.resource.held[0]
        request.write(b"part one, ")
        site.start_draining()
        self.assertFalse(busy.closed_by_server)
        request.write(b"part two")
        request.finish()
        [response] = busy.responses()
        self.assertEqual(response.body, b"part one, part two")
        self.assertTrue(busy.closed_by_server)


    def test_drained_only_once_answers_left_the_write_buffer(self) -> None:
        # finish() queues the answer in the transport; the connection closing
        # (after loseConnection, which flushes first) is what says it left.
        site = self.site()
        busy = Connection(site)
        busy.send(b"/slow")
        site.start_draining()
        drained = site.when_drained()
        Recording.release(self.resource.held[0])
        self.assertEqual(site.active, set())
        self.assertTrue(busy.closed_by_server)  # loseConnection called, close pending
        self.assertNoResult(drained)
        self.assertEqual(site.undelivered(), 1)
        busy.drop()  # the transport flushed and closed
        self.successResultOf(drained)
        self.assertEqual(site.undelivered(), 0)

    def test_drained_closes_connections_opened_during_the_drain(self) -> None:
        site = self.site()
        busy = Connection(site)
        busy.send(b"/slow")
        site.start_draining()
        late = Connection(site, 40001)  # accepted before the port closed, no request yet
        drained = site.when_drained()
        self.assertFalse(late.closed_by_server)
        Recording.release(self.resource.held[0])
        self.assertTrue(late.closed_by_server)
        busy.drop()
        self.assertNoResult(drained)
        late.drop()
        self.successResultOf(drained)

    def test_drained_at_once_when_nothing_open(self) -> None:
        site = self.site()
        Connection(site).drop()
        site.start_draining()
        self.successResultOf(site.when_drained())
        self.assertEqual(site.undelivered(), 0)

    def test_not_drained_unless_draining(self) -> None:
        site = self.site()
        drained = site.when_drained()
        self.assertNoResult(drained)
        site.start_draining()
        self.successResultOf(drained)

    def test_answers_before_the_drain_not_counted_undelivered(self) -> None:
        site = self.site()
        connection = Connection(site)
        connection.send()
        self.assertEqual(len(connection.responses()), 1)
        site.start_draining()
        self.assertEqual(site.undelivered(), 0)
        drained = site.when_drained()
        self.assertNoResult(drained)  # its close is still pending
        connection.drop()
        self.successResultOf(drained)


# --- real sockets


class RawClient(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost: Deferred[bytes] = Deferred()
        self._waiting: list[tuple[int, Deferred[list[Response]]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._check()

    def _check(self) -> None:
        responses = parse_responses(self.received, at_eof=False)
        still = []
        for count, waiter in self._waiting:
            if len(responses) >= count:
                waiter.callback(responses)
            else:
                still.append((count, waiter))
        self._waiting = still

    def responses(self, count: int) -> Deferred[list[Response]]:
        waiter: Deferred[list[Response]] = Deferred()
        self._waiting.append((count, waiter))
        self._check()
        return waiter

    def connectionLost(self, reason: Any) -> None:
        for _, waiter in self._waiting:
            waiter.errback(AssertionError(f"connection lost; received {self.received!r}"))
        self._waiting = []
        if not self.lost.called:  # a timed-out test may have cancelled it
            self.lost.callback(self.received)


class TcpDrainingTests(TestCase):
    """RelaySite on a real loopback port, with the real reactor."""

    timeout = 10

    @inlineCallbacks
    def setUp(self) -> Any:
        self.resource = Recording()
        self.metrics = RelayMetrics()
        self.site = RelaySite(self.resource, reactor, self.metrics)
        self.port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.site)
        self.clients: list[RawClient] = []
        self.addCleanup(self.close_everything)

    @inlineCallbacks
    def close_everything(self) -> Any:
        for request in list(self.resource.held):
            if not request.finished and not request._disconnected:
                Recording.release(request)
        for client in self.clients:
            if not client.lost.called:
                client.transport.loseConnection()
                yield client.lost
        # The server side of a client-closed connection goes on the next turns.
        for _ in range(1000):
            if not self.site.channels:
                break
            yield deferLater(reactor, 0.001, lambda: None)
        self.assertEqual(self.site.channels, set())
        yield self.port.stopListening()

    @inlineCallbacks
    def connect(self) -> Any:
        client = RawClient()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        yield connectProtocol(endpoint, client)
        self.clients.append(client)
        return client

    @inlineCallbacks
    def test_idle_closed_busy_answered_with_close(self) -> Any:
        idle = yield self.connect()
        idle.transport.write(raw_request(b"/fast"))
        [first] = yield idle.responses(1)
        self.assertEqual(first.status, 200)
        self.assertIsNone(first.header(b"connection"))  # kept alive

        busy = yield self.connect()
        arrived = self.resource.arrival()
        busy.transport.write(raw_request(b"/slow"))
        request = yield arrived
        self.assertEqual(len(self.site.channels), 2)

        self.assertEqual(self.site.start_draining(), 1)
        received = yield idle.lost
        self.assertEqual(len(parse_responses(received)), 1)  # nothing more was sent
        self.assertEqual(busy.received, b"")
        self.assertFalse(busy.lost.called)

        idle_again = self.site.when_idle()
        self.assertNoResult(idle_again)
        Recording.release(request)
        received = yield busy.lost
        [answer] = parse_responses(received)
        self.assertEqual((answer.status, answer.body), (200, b"slow answer"))
        self.assertEqual(answer.header(b"connection"), [b"close"])
        yield idle_again
        self.assertEqual(self.site.active, set())
        self.assertEqual(self.site.channels, set())
        self.assertEqual(metrics_value(self.metrics, "mterelay_requests_total", role="other",
                                       status_class="2xx"), 2.0)

    @inlineCallbacks
    def test_connection_during_draining_gets_one_answer(self) -> Any:
        self.assertEqual(self.site.start_draining(), 0)
        late = yield self.connect()
        late.transport.write(raw_request(b"/first") + raw_request(b"/second"))
        # A hang guard, not a speed check: without an answer nothing else
        # would ever happen on this connection.
        answered: Deferred[bytes] = Deferred()
        late.lost.addCallback(lambda received: answered.callback(received) or received)
        answered.addTimeout(3, reactor, onTimeoutCancel=lambda *_: self.fail(
            f"no answer and no close for a connection accepted while draining "
            f"(server saw {len(self.resource.seen)} request(s))"))
        received = yield answered
        [answer] = parse_responses(received)
        self.assertEqual((answer.status, answer.body), (200, b"answer"))
        self.assertEqual(answer.header(b"connection"), [b"close"])
        self.assertEqual([r.path for r in self.resource.seen], [b"/first"])

    @inlineCallbacks
    def test_client_leaving_during_drain(self) -> Any:
        busy = yield self.connect()
        arrived = self.resource.arrival()
        busy.transport.write(raw_request(b"/slow"))
        yield arrived
        self.assertEqual(self.site.start_draining(), 1)
        busy.transport.loseConnection()
        yield busy.lost
        yield self.site.when_idle()
        self.assertEqual(metrics_value(self.metrics, "mterelay_requests_total", role="other",
                                       status_class="4xx"), 1.0)
        self.assertEqual(metrics_value(self.metrics, "mterelay_in_flight_requests"), 0.0)
