"""Slowloris defences: header deadline, body idle timeout, connection cap.

The in-memory tests drive RelaySite's real channel over a StringTransport on
a fake clock; the socket tests use real loopback connections (small limits,
so they run in about a second); the process test runs ``twistd mterelay``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mterelay.service.config import ConfigError
from mterelay.service.metrics import RelayMetrics
from mterelay.http.twistedinternals import inner_channel
from mterelay.web.guard import ConnectionGuard, default_max_connections
from mterelay.web.site import RelaySite
from tests.helpers.support import relay_config
from tests.integration.test_operations_integration import OperationsCase
from tests.integration.test_site import Connection, Recording, metrics_value, parse_responses, raw_request


def cut(metrics: RelayMetrics, reason: str) -> float:
    return metrics_value(metrics, "mterelay_connections_cut_total", reason=reason)


class GuardCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.resource = Recording()
        self.metrics = RelayMetrics()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def site(self, **limits: Any) -> RelaySite:
        limits.setdefault("header_timeout", 3.0)
        limits.setdefault("body_timeout", 5.0)
        guard = ConnectionGuard(metrics=self.metrics, **limits)
        return RelaySite(self.resource, self.clock, self.metrics, guard=guard,
                         reactor=self.clock)

    def guard_lines(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("log_namespace") == "mterelay.guard"]


def Clock() -> task.Clock:  # noqa: N802 (reads like the class)
    clock = task.Clock()
    clock.advance(1_000_000)
    return clock


class HeaderDeadlineTests(GuardCase):
    def drip(self, connection: Connection, data: bytes, every: float) -> None:
        for byte in data:
            if connection.closed_by_server:
                return
            connection.channel.dataReceived(bytes([byte]))
            self.clock.advance(every)

    def test_trickled_headers_cut_at_the_deadline(self) -> None:
        # Every byte resets Twisted's idle timeout; the deadline does not move.
        site = self.site()
        connection = Connection(site)
        self.drip(connection, b"GET / HTTP/1.1\r\nHost: relay\r\nX-Slow: " + b"a" * 100, 0.5)
        self.assertTrue(connection.closed_by_server)
        [response] = connection.responses()
        self.assertEqual(response.status, 408)
        self.assertEqual(response.header(b"connection"), [b"close"])
        body = json.loads(response.body)
        self.assertEqual((body["code"], body["error"]), (408, "Request Timeout"))
        self.assertEqual(self.resource.seen, [])  # never reached a route
        self.assertEqual(cut(self.metrics, "header_timeout"), 1.0)
        [line] = self.guard_lines()
        self.assertIn("408", line["log_format"])
        # Cut at 3 s: 6 or 7 half-second bytes, not the 130 it tried to send.
        self.assertLessEqual(line["bytes"], 7)

    def test_headers_in_time_are_served(self) -> None:
        site = self.site()
        connection = Connection(site)
        self.drip(connection, raw_request(b"/fast"), 2.5 / len(raw_request(b"/fast")))
        self.clock.advance(10)
        [response] = connection.responses()
        self.assertEqual(response.status, 200)
        self.assertFalse(connection.closed_by_server)  # kept alive
        self.assertEqual(cut(self.metrics, "header_timeout"), 0.0)

    def test_unused_connection_closed_without_an_answer(self) -> None:
        connection = Connection(self.site())
        self.clock.advance(2.9)
        self.assertFalse(connection.closed_by_server)
        self.clock.advance(0.1)
        self.assertTrue(connection.closed_by_server)
        self.assertEqual(connection.transport.value(), b"")
        self.assertEqual(cut(self.metrics, "idle_connection"), 1.0)

    def test_kept_alive_connection_idle_between_requests_is_not_cut(self) -> None:
        site = self.site()
        connection = Connection(site)
        connection.send(b"/one")
        self.clock.advance(20)  # idle, past the header deadline (Twisted's idle timeout is 60 s)
        self.assertFalse(connection.closed_by_server)
        # The next request's deadline starts with its first byte.
        self.drip(connection, b"GET /two HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"b" * 100, 0.5)
        self.assertTrue(connection.closed_by_server)
        statuses = [r.status for r in connection.responses()]
        self.assertEqual(statuses, [200, 408])

    def test_next_request_soon_after_gets_a_full_deadline(self) -> None:
        # The connection's timer (due at 3 s from the first request) is moved
        # on, not left to cut the second request early.
        site = self.site()
        connection = Connection(site)
        connection.send(b"/one")
        self.clock.advance(2)
        connection.channel.dataReceived(b"GET /two HTTP/1.1\r\n")
        self.clock.advance(2.9)
        self.assertFalse(connection.closed_by_server)
        self.clock.advance(0.1)
        self.assertTrue(connection.closed_by_server)
        self.assertEqual([r.status for r in connection.responses()], [200, 408])

    def test_pipelined_request_gets_its_own_deadline(self) -> None:
        site = self.site()
        connection = Connection(site)
        connection.channel.dataReceived(raw_request(b"/slow") + b"GET /next HTTP/1.1\r\nHo")
        self.clock.advance(10)  # the first one is still being answered: no deadline on it
        self.assertFalse(connection.closed_by_server)
        Recording.release(self.resource.held[0])
        self.clock.advance(2.9)
        self.assertFalse(connection.closed_by_server)
        self.clock.advance(0.1)
        self.assertTrue(connection.closed_by_server)
        self.assertEqual([r.status for r in connection.responses()], [200, 408])

    def test_slow_answer_not_cut(self) -> None:
        site = self.site()
        connection = Connection(site)
        connection.send(b"/slow")
        self.clock.advance(30)
        self.assertFalse(connection.closed_by_server)
        Recording.release(self.resource.held[0])
        self.assertEqual([r.status for r in connection.responses()], [200])


class BodyIdleTimeoutTests(GuardCase):
    def start_upload(self, site: RelaySite) -> Connection:
        connection = Connection(site)
        connection.channel.dataReceived(
            b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        return connection

    def test_silent_body_cut(self) -> None:
        site = self.site()
        connection = self.start_upload(site)
        self.clock.advance(4)
        connection.channel.dataReceived(b"y" * 10)  # a byte resets it: an idle timeout
        self.clock.advance(4.9)
        self.assertFalse(connection.closed_by_server)
        self.clock.advance(0.1)
        self.assertTrue(connection.closed_by_server)
        self.assertEqual(cut(self.metrics, "body_timeout"), 1.0)
        [line] = self.guard_lines()
        self.assertIn("Body idle timeout", line["log_format"])

    def test_back_pressure_is_not_the_clients_silence(self) -> None:
        site = self.site()
        connection = self.start_upload(site)
        [request] = self.resource.held
        request.body._pause()  # the consumer (upstream) is slower
        self.clock.advance(60)
        self.assertFalse(connection.closed_by_server)
        request.body._release()
        self.clock.advance(5)
        self.assertTrue(connection.closed_by_server)

    def test_idle_timeout_restored_after_the_body(self) -> None:
        site = self.site()
        connection = self.start_upload(site)
        connection.channel.dataReceived(b"z" * 90)
        [request] = self.resource.held
        self.clock.advance(30)  # answering slowly: no timeout while handling
        self.assertFalse(connection.closed_by_server)
        Recording.release(request)
        self.clock.advance(59)
        self.assertFalse(connection.closed_by_server)  # Twisted's 60 s keep-alive idle
        self.clock.advance(1)
        self.assertTrue(connection.closed_by_server)
        self.assertEqual(cut(self.metrics, "body_timeout"), 0.0)


    def body_timer_moves(self, connection: Connection) -> list[Any]:
        """Every setTimeout(body_timeout) the channel makes from now on."""
        channel = inner_channel(connection.channel)
        moves: list[Any] = []
        real = channel.setTimeout

        def set_timeout(period: Any) -> Any:
            if period == 5.0:
                moves.append(period)
            return real(period)

        channel.setTimeout = set_timeout
        return moves

    def test_body_with_its_headers_leaves_the_timer_alone(self) -> None:
        """The fast path: a whole small body in the headers' segment never sets the body timeout."""
        site = self.site()
        connection = Connection(site)
        moves = self.body_timer_moves(connection)
        connection.send(b"/slow-small", b"POST", body=b"x" * 1024)
        [request] = self.resource.held
        self.assertEqual(moves, [])
        self.clock.advance(30)  # answering slowly: no timeout while handling
        Recording.release(request)
        self.clock.advance(59)
        self.assertFalse(connection.closed_by_server)
        self.clock.advance(1)
        self.assertTrue(connection.closed_by_server)  # Twisted's 60 s keep-alive idle
        self.assertEqual(cut(self.metrics, "body_timeout"), 0.0)

    def test_body_after_the_headers_segment_gets_the_body_timeout(self) -> None:
        """The slow path still runs when the body is not complete in the headers' segment."""
        site = self.site()
        connection = Connection(site)
        moves = self.body_timer_moves(connection)
        connection.channel.dataReceived(
            b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        self.assertEqual(moves, [5.0])
        self.clock.advance(4.9)
        self.assertFalse(connection.closed_by_server)
        self.clock.advance(0.1)
        self.assertTrue(connection.closed_by_server)
        self.assertEqual(cut(self.metrics, "body_timeout"), 1.0)

    def test_lost_in_the_headers_segment_sets_no_timer(self) -> None:
        site = self.site()
        connection = Connection(site)
        channel = inner_channel(connection.channel)
        real = channel.allHeadersReceived

        def then_lost() -> None:
            real()
            connection.drop()

        channel.allHeadersReceived = then_lost
        connection.channel.dataReceived(
            b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        self.assertEqual([call for call in self.clock.getDelayedCalls() if call.active()], [])


class TimerChurnTests(GuardCase):
    """Keep-alive requests reuse the connection's timers instead of making new ones."""

    def test_no_new_timer_per_request(self) -> None:
        site = self.site()
        connection = Connection(site)
        connection.send(b"/first", b"POST", body=b"x" * 100)
        timers = list(self.clock.getDelayedCalls())
        for n in range(3):
            connection.send(b"/again", b"POST", body=b"x" * 100)
            self.assertEqual(self.clock.getDelayedCalls(), timers)  # the same timer objects
            connection.send(b"/get")
            self.assertEqual(self.clock.getDelayedCalls(), timers)
        self.assertEqual(len(connection.responses()), 7)

    def test_suspended_timer_firing_during_a_slow_answer_is_ignored(self) -> None:
        site = self.site()
        connection = Connection(site)
        connection.send(b"/slow")
        [request] = self.resource.held
        self.clock.advance(120)  # past Twisted's 60 s idle timeout: the kept timer fires
        self.assertFalse(connection.closed_by_server)
        Recording.release(request)
        self.clock.advance(59)
        self.assertFalse(connection.closed_by_server)
        self.clock.advance(1)
        self.assertTrue(connection.closed_by_server)  # idle again: 60 s from the answer

    def test_lost_while_suspended_leaves_no_timer(self) -> None:
        site = self.site()
        connection = Connection(site)
        connection.send(b"/slow")
        connection.drop()
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])


class ConnectionCapTests(GuardCase):
    def test_connections_past_the_cap_refused(self) -> None:
        site = self.site(max_connections=2)
        one, two = Connection(site, 1), Connection(site, 2)
        self.assertIsNone(site.buildProtocol(None))
        self.assertIsNone(site.buildProtocol(None))
        self.assertEqual(cut(self.metrics, "connection_cap"), 2.0)
        self.assertEqual(metrics_value(self.metrics, "mterelay_open_connections"), 2.0)
        warnings = [e for e in self.guard_lines() if "reached" in e["log_format"]]
        self.assertEqual(len(warnings), 1)  # once per episode, not per connection
        one.drop()
        self.assertIsNotNone(site.buildProtocol(None))
        two.drop()

    def test_no_cap(self) -> None:
        site = self.site(max_connections=None)
        for port in range(50):
            Connection(site, port)
        self.assertEqual(len(site.channels), 50)

    def test_default_from_the_open_files_limit(self) -> None:
        self.assertEqual(default_max_connections(1024), (1024 - 64) // 2)
        self.assertEqual(default_max_connections(1_048_576), 10_000)
        self.assertEqual(default_max_connections(100), 18)
        self.assertEqual(default_max_connections(10), 1)
        self.assertGreaterEqual(default_max_connections(), 1)


class SettingsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        config = relay_config()
        self.assertEqual((config.header_timeout, config.body_timeout, config.max_connections),
                         (10.0, 30.0, None))

    def test_set(self) -> None:
        config = relay_config(HEADER_TIMEOUT="2.5", BODY_TIMEOUT="7", MAX_CONNECTIONS="500")
        self.assertEqual((config.header_timeout, config.body_timeout, config.max_connections),
                         (2.5, 7.0, 500))

    def test_bad_values_name_the_setting(self) -> None:
        for name, value in (("HEADER_TIMEOUT", "0"), ("HEADER_TIMEOUT", "soon"),
                            ("BODY_TIMEOUT", "-1"), ("BODY_TIMEOUT", "4000"),
                            ("MAX_CONNECTIONS", "0"), ("MAX_CONNECTIONS", "many")):
            with self.assertRaises(ConfigError) as caught:
                relay_config(**{name: value})
            self.assertTrue(str(caught.exception).startswith(f"invalid configuration: {name} "),
                            str(caught.exception))


# --- real sockets


def slow_client(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)
    return sock


class SocketTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def listen(self, **limits: Any) -> Any:
        self.metrics = RelayMetrics()
        self.site = RelaySite(Recording(), reactor, self.metrics,
                              guard=ConnectionGuard(metrics=self.metrics, **limits))
        self.port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.site)
        self.addCleanup(self.port.stopListening)
        return self.port.getHost().port

    @defer.inlineCallbacks
    def test_slowloris_connections_cut(self) -> Any:
        port = yield self.listen(header_timeout=0.5, body_timeout=5.0)
        clients = [slow_client(port) for _ in range(50)]
        self.addCleanup(lambda: [c.close() for c in clients])
        started = time.monotonic()
        received = {id(c): b"" for c in clients}
        closed: set[int] = set()
        request = b"GET / HTTP/1.1\r\nHost: relay\r\nX-Slow: " + b"a" * 1000
        sent = 0
        while len(closed) < len(clients) and time.monotonic() - started < 5:
            for client in clients:
                if id(client) in closed:
                    continue
                try:
                    client.send(request[sent:sent + 1])
                except OSError:
                    pass
                try:
                    chunk = client.recv(65536)
                    if chunk:
                        received[id(client)] += chunk
                    else:
                        closed.add(id(client))
                except BlockingIOError:
                    pass
                except OSError:
                    closed.add(id(client))
            sent += 1
            yield task.deferLater(reactor, 0.05, lambda: None)  # a byte every 50 ms
        elapsed = time.monotonic() - started
        self.assertEqual(len(closed), 50, f"{50 - len(closed)} slow connection(s) still open")
        self.assertLess(elapsed, 3.0)
        for data in received.values():
            [response] = parse_responses(data)
            self.assertEqual(response.status, 408)
        self.assertEqual(cut(self.metrics, "header_timeout"), 50.0)
        for _ in range(100):
            if not self.site.channels:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(self.site.channels, set())

    @defer.inlineCallbacks
    def test_cap_closes_new_connections_at_once(self) -> Any:
        port = yield self.listen(max_connections=5, header_timeout=5.0)
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
        self.addCleanup(lambda: [c.close() for c in held])
        while len(self.site.channels) < 5:
            yield task.deferLater(reactor, 0.01, lambda: None)
        extra = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        self.addCleanup(lambda: [c.close() for c in extra])
        yield task.deferLater(reactor, 0.2, lambda: None)
        for sock in extra:
            sock.settimeout(2)
            try:
                self.assertEqual(sock.recv(100), b"")
            except ConnectionResetError:
                pass  # closed with data unread: also closed at once
        self.assertEqual(cut(self.metrics, "connection_cap"), 3.0)
        self.assertEqual(len(self.site.channels), 5)
        # Room again: a new connection is served.
        held.pop().close()
        while len(self.site.channels) > 4:
            yield task.deferLater(reactor, 0.01, lambda: None)
        late = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.addCleanup(late.close)
        late.sendall(raw_request(b"/fast"))
        data = b""
        while not parse_responses(data, at_eof=False):
            yield task.deferLater(reactor, 0.01, lambda: None)
            late.setblocking(False)
            try:
                data += late.recv(65536)
            except BlockingIOError:
                pass
        self.assertEqual(parse_responses(data, at_eof=False)[0].status, 200)


class ProcessTests(OperationsCase):
    """A real relay: slow connections no longer pile up file descriptors."""

    def open_fds(self, pid: int) -> int:
        return len(os.listdir(f"/proc/{pid}/fd"))

    @defer.inlineCallbacks
    def test_slowloris_against_a_relay_process(self) -> Any:
        relay = self.start_relay(HEADER_TIMEOUT="1", MAX_CONNECTIONS="40")
        baseline = self.open_fds(relay.process.pid)
        clients = [slow_client(relay.port) for _ in range(60)]
        self.addCleanup(lambda: [c.close() for c in clients])
        request = b"GET /api/mte-echo/x HTTP/1.1\r\nHost: relay\r\nX-Slow: " + b"a" * 1000
        started = time.monotonic()
        closed: set[int] = set()
        sent = 0
        while len(closed) < len(clients) and time.monotonic() - started < 10:
            for client in clients:
                if id(client) in closed:
                    continue
                try:
                    client.send(request[sent:sent + 1])
                    chunk = client.recv(65536)
                    if not chunk:
                        closed.add(id(client))
                except BlockingIOError:
                    pass
                except OSError:
                    closed.add(id(client))
            sent += 1
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(len(closed), 60, f"{60 - len(closed)} slow connection(s) never cut")
        self.assertLess(time.monotonic() - started, 5)
        deadline = time.monotonic() + 5
        while self.open_fds(relay.process.pid) > baseline + 2 and time.monotonic() < deadline:
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertLessEqual(self.open_fds(relay.process.pid), baseline + 2)
        # Still serving.
        response = yield self.http.get(relay.url + "/api/mte-echo/after")
        self.assertEqual(response.code, 200)
        yield response.content()
