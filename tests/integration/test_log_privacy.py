"""No query string in any log line; malformed request targets refused before forwarding.

Every test captures every log event (formatted as an operator would read
it, tracebacks included) and looks for the secret the query carried.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET

from mterelay.http.bodies import Still
from mterelay.http.connections import LeanAgent
from mterelay.service.metrics import RelayMetrics
from mterelay.web.paths import target_problem
from mterelay.web.site import RelaySite
from mterelay.http.streaming import StreamingRequest
from tests.helpers.support import MemoryRelay
from tests.integration.test_operations_integration import OperationsCase
from tests.integration.test_site import Connection, Response, parse_responses

SECRET_VALUE = "s3cr3t-in-the-query"


def rendered(event: dict[str, Any]) -> str:
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text += failure.getTraceback()
    return text + " " + repr(event)


class LogCapture(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def assertNotLogged(self, secret: str = SECRET_VALUE) -> None:
        leaks = [rendered(e) for e in self.events if secret in rendered(e)]
        self.assertEqual(leaks, [])


class SiteRequests(LogCapture):
    """The real relay root behind the real RelaySite channel (StreamingRequest)."""

    def setUp(self) -> None:
        super().setUp()
        self.relay = MemoryRelay.build(PASS_THROUGH_ROUTES="/open/*")
        clock = Clock()
        self.site = RelaySite(self.relay.root, clock, RelayMetrics(), reactor=clock)

    def raw(self, request_line: bytes) -> Any:
        connection = Connection(self.site)
        connection.channel.dataReceived(request_line + b"\r\nHost: relay.test\r\n\r\n")
        self.relay.flush()
        data = connection.transport.value()
        if request_line.startswith(b"HEAD "):
            # No body follows a HEAD answer, whatever content-length says.
            head, _, rest = data.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            headers: dict[bytes, list[bytes]] = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers.setdefault(name.strip().lower(), []).append(value.strip())
            return Response(int(lines[0].split(b" ")[1]), headers, rest)
        [response] = parse_responses(data, at_eof=False)
        return response

    def test_head_with_a_relay_error(self) -> None:
        response = self.raw(b"HEAD /api/things?token=" + SECRET_VALUE.encode() + b" HTTP/1.1")
        self.assertEqual(response.status, 569)
        self.assertEqual(response.body, b"")
        # What a GET would have carried, as Twisted does for HEAD.
        self.assertGreater(int(response.header(b"content-length")[0]), 0)
        self.assertNotLogged()
        # The refusal is still logged once, by path.
        refusals = [e for e in self.events if "refused" in formatEvent(e)]
        self.assertEqual(len(refusals), 1)
        self.assertIn("/api/things", formatEvent(refusals[0]))

    def test_pass_through_target_with_high_bytes(self) -> None:
        for target in (b"/open/\x7f\x80\xb0?token=" + SECRET_VALUE.encode(),
                       b"/open/ok?token=\x90" + SECRET_VALUE.encode(),
                       b"/open/ok?token=" + SECRET_VALUE.encode() + b"\x7f"):
            response = self.raw(b"GET " + target + b" HTTP/1.1")
            self.assertEqual(response.status, 400, target)
            body = json.loads(response.body)
            self.assertEqual(body["code"], 400)
            self.assertIn("visible ASCII", body["reason"])
        self.assertEqual(self.relay.upstream.received, [])  # never forwarded
        self.assertNotLogged()

    def test_request_repr_has_no_query(self) -> None:
        # Twisted quotes repr(request) in some of its own log lines.
        request = StreamingRequest(Connection(self.site).channel._channel)
        self.assertIn("method=(no method yet)", repr(request))
        request.method, request.clientproto = b"GET", b"HTTP/1.1"
        request.uri, request.path = b"/open/x?token=" + SECRET_VALUE.encode(), b"/open/x"
        self.assertIn("path=/open/x ", repr(request))
        self.assertNotIn(SECRET_VALUE, repr(request))


class ProducerLeftRegisteredTests(LogCapture):
    def test_message_names_the_path_only(self) -> None:
        from twisted.web.resource import Resource

        class Forgetful(Resource):
            isLeaf = True

            def render(self, request: Any) -> bytes:
                request.registerProducer(Still(), True)  # never unregistered
                request.write(b"x")
                request.finish()
                return NOT_DONE_YET

        clock = Clock()
        site = RelaySite(Forgetful(), clock, RelayMetrics(), reactor=clock)
        Connection(site).channel.dataReceived(
            b"GET /x?token=" + SECRET_VALUE.encode() + b" HTTP/1.1\r\nHost: r\r\n\r\n")
        [failure] = self.flushLoggedErrors(RuntimeError)
        self.assertEqual(failure.getErrorMessage(), "Producer was not unregistered for /x")
        self.assertNotLogged()


class AgentMessageTests(SynchronousTestCase):
    def test_agent_refusal_does_not_quote_the_url(self) -> None:
        agent = LeanAgent(reactor, None)  # type: ignore[arg-type]
        failure = self.failureResultOf(agent.request(
            b"GET", b"http://upstream.test/x\x7f?token=" + SECRET_VALUE.encode()))
        self.assertNotIn(SECRET_VALUE, failure.getErrorMessage())


class TargetProblemTests(SynchronousTestCase):
    def test_rules(self) -> None:
        for good in (b"/", b"/a/b?c=d&e=%20", b"/%7F%80", b"/api/*"):
            self.assertIsNone(target_problem(good), good)
        for bad in (b"/a b", b"/a\x7f", b"/\x80", b"/a?b=\xb0", b"/a?\x00", b"", b"/../x",
                    b"/a\tb"):
            self.assertIsNotNone(target_problem(bad), bad)


class ProcessTests(OperationsCase):
    """A real relay in front of a real upstream: its whole output, searched."""

    def send_raw(self, port: int, request_line: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request_line + b"\r\nHost: relay\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data

    @defer.inlineCallbacks
    def test_no_query_in_the_relay_output(self) -> Any:
        relay = self.start_relay(PASS_THROUGH_ROUTES="/open/*", LOG_LEVEL="debug")
        secret = SECRET_VALUE.encode()
        answers = []
        for line in (b"GET /open/\x7f\x90\xb0?token=" + secret + b" HTTP/1.1",
                     b"HEAD /api/things?token=" + secret + b" HTTP/1.1",
                     b"GET /open/fine?token=" + secret + b" HTTP/1.1"):
            # In a thread: the upstream runs on this process's reactor.
            answers.append((yield deferToThread(self.send_raw, relay.port, line)))
        statuses = [int(answer.split(b" ", 2)[1]) for answer in answers]
        self.assertEqual(statuses, [400, 569, 200])
        self.assertEqual(self.upstream.received, 1)  # only the well-formed one
        time.sleep(0.3)  # let the relay flush its log lines
        self.assertEqual(relay.stop(), 0)
        output = relay.output()
        self.assertIn("GET /open/fine 200", output)
        self.assertNotIn(SECRET_VALUE, output)
