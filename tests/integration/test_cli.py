"""``mterelay-client``: options, output, exit codes; in memory and as a real process."""

from __future__ import annotations

import hashlib
import io
import os
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.defer import TimeoutError as DeferredTimeout, ensureDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseFailed
from twisted.web.resource import Resource
from twisted.web.server import Site

from mterelay.cli import build_parser, describe, main, run
from mterelay.protocol.errors import DecodeFailed, StateNotFound
from tests.helpers.clientsupport import RELAY, ClientHarness
from tests.helpers.support import SECRET, RelayProcess, free_port


class ParserTests(SynchronousTestCase):
    def test_options(self) -> None:
        args = build_parser().parse_args([
            "-X", "PUT", "-H", "X-A: 1", "-H", "x-b:two words ", "--data-binary", "@f",
            "-o", "out", "-i", "--seal-headers", "x-a,x-b", "--no-seal-url",
            "--framing", "MTE", "--pairs", "3", "--timeout", "2.5", "http://r/x"])
        self.assertEqual((args.method, args.headers, args.data_binary, args.output),
                         ("PUT", [("X-A", "1"), ("x-b", "two words")], "@f", "out"))
        self.assertEqual((args.include, args.seal_headers, args.seal_url, args.framing,
                          args.pairs, args.timeout),
                         (True, ["x-a", "x-b"], False, "MTE", 3, 2.5))

    def test_usage_errors_exit_2(self) -> None:
        self.patch(sys, "stderr", io.StringIO())
        for argv in ([], ["-H", "no colon", "http://r/"], ["--framing", "GZ", "http://r/"],
                     ["--pairs", "0", "http://r/"], ["--timeout", "-1", "http://r/"],
                     ["-d", "a", "--data-binary", "b", "http://r/"],
                     ["--seal-headers", "a b", "http://r/"]):
            self.assertEqual(main(argv), 2, argv)
        self.patch(sys, "stdout", io.StringIO())
        self.assertEqual(main(["--help"]), 0)

    def test_describe(self) -> None:
        self.assertEqual(describe(StateNotFound("expired")),
                         "relay error 560: State not found. (expired)")
        wrapped = ResponseFailed([Failure(DecodeFailed("response body truncated"))])
        self.assertEqual(describe(wrapped),
                         "relay error 562: Failed to decode. (response body truncated)")
        self.assertEqual(describe(DeferredTimeout(), 3), "no answer within 3 s")
        self.assertIn("refused", describe(ConnectionRefusedError()).lower())


class InMemoryRunTests(SynchronousTestCase):
    """``run()`` with the in-memory relay behind it (no process, no sockets)."""

    def setUp(self) -> None:
        self.h = ClientHarness.build()
        self.stdout, self.stderr = io.BytesIO(), io.StringIO()

    def run_cli(self, *argv: str, stdin: bytes = b"") -> int:
        args = build_parser().parse_args(list(argv))
        return self.h.wait(ensureDeferred(run(self.h.clock, args, self.stdout, self.stderr,
                                              io.BytesIO(stdin), agent=self.h.tamper)))

    def test_include_headers_and_body(self) -> None:
        self.h.upstream.body = b'{"hello":"world"}'
        code = self.run_cli("-i", "-H", "X-Api-Key: k", "-d", '{"a":1}',
                            "-H", "content-type: application/json", RELAY + "/api/login?x=1")
        self.assertEqual(code, 0, self.stderr.getvalue())
        head, body = self.stdout.getvalue().split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        self.assertEqual(lines[0], b"HTTP/1.1 200 OK")
        self.assertIn(b"content-type: application/json", [line.lower() for line in lines])
        self.assertEqual(body, b'{"hello":"world"}')
        [seen] = self.h.upstream.received
        self.assertEqual((seen.method, seen.uri, seen.body),
                         (b"POST", b"/api/login?x=1", b'{"a":1}'))
        self.assertEqual(seen.headers[b"x-api-key"], [b"k"])

    def test_default_content_type_and_stdin(self) -> None:
        self.assertEqual(self.run_cli("--data-binary", "@-", RELAY + "/in", stdin=b"piped"), 0)
        seen = self.h.upstream.received[-1]
        self.assertEqual((seen.method, seen.body), (b"POST", b"piped"))
        self.assertEqual(seen.headers[b"content-type"], [b"application/x-www-form-urlencoded"])

    def test_file_in_file_out(self) -> None:
        source, target = self.mktemp(), self.mktemp()
        with open(source, "wb") as handle:
            handle.write(b"file body")
        self.h.upstream.body = b"answer"
        code = self.run_cli("-X", "PUT", "-d", "@" + source, "-o", target, RELAY + "/f")
        self.assertEqual(code, 0)
        self.assertEqual(self.h.upstream.received[-1].body, b"file body")
        with open(target, "rb") as handle:
            self.assertEqual(handle.read(), b"answer")
        self.assertEqual(self.stdout.getvalue(), b"")

    def test_upstream_error_status_exits_0(self) -> None:
        self.h.upstream.status = 404
        self.assertEqual(self.run_cli(RELAY + "/missing"), 0)

    def test_relay_error_exits_1_with_one_line(self) -> None:
        for _ in range(2):
            self.h.switch.inject.append((560, {"error": "State not found.", "code": 560}, {}))
        self.assertEqual(self.run_cli(RELAY + "/x"), 1)
        self.assertEqual(self.stderr.getvalue(),
                         "mterelay-client: relay error 560: State not found.\n")

    def test_unreadable_file_and_bad_url(self) -> None:
        self.assertEqual(self.run_cli("-d", "@/nonexistent/file", RELAY + "/x"), 1)
        self.assertIn("cannot read the body", self.stderr.getvalue())
        self.assertEqual(self.run_cli("ftp://relay.test/x"), 2)


class EchoUpstream(Resource):
    """Echoes the body, answers /status/<n> with that status; records requests."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, bytes, dict[bytes, list[bytes]], str, int]] = []

    def render(self, request: Any) -> bytes:
        body = request.content.read()
        headers = {k.lower(): list(v) for k, v in request.requestHeaders.getAllRawHeaders()}
        self.seen.append((request.method, request.uri, headers,
                          hashlib.sha256(body).hexdigest(), len(body)))
        if request.path.startswith(b"/status/"):
            request.setResponseCode(int(request.path.rsplit(b"/", 1)[1]))
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"x-upstream", b"yes")
        return body


class CliProcessTests(TestCase):
    """The console script as a process, against ``twistd -n mterelay`` on loopback."""

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.upstream = EchoUpstream()
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(self.upstream))
        self.addCleanup(port.stopListening)
        self.relay = RelayProcess.start({
            "UPSTREAM": f"http://127.0.0.1:{port.getHost().port}",
            "CLIENT_ID_SECRET": SECRET,
        }, self.mktemp() + ".log")
        self.addCleanup(self.relay.stop)
        self.relay.wait_listening()

    def cli(self, *argv: str) -> "defer.Deferred[tuple[bytes, bytes, int]]":
        return getProcessOutputAndValue(sys.executable, ["-m", "mterelay.cli", *argv],
                                        env=dict(os.environ))

    @defer.inlineCallbacks
    def test_request_through_a_real_relay(self) -> Any:
        out, err, code = yield self.cli(
            "-i", "-H", "content-type: application/json", "-H", "x-api-key: k-1",
            "-d", '{"user": "a"}', self.relay.url + "/api/login?next=%2Fhome")
        self.assertEqual((code, err), (0, b""))
        head, body = out.split(b"\r\n\r\n", 1)
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK\r\n"), head)
        self.assertIn(b"x-upstream: yes", head.lower())
        self.assertEqual(body, b'{"user": "a"}')
        [(method, uri, headers, _, _)] = self.upstream.seen
        self.assertEqual((method, uri), (b"POST", b"/api/login?next=%2Fhome"))
        self.assertEqual(headers[b"x-api-key"], [b"k-1"])
        self.assertEqual(headers[b"content-type"], [b"application/json"])

    @defer.inlineCallbacks
    def test_streamed_file_and_exit_codes(self) -> Any:
        source, target = self.mktemp(), self.mktemp()
        data = os.urandom(5 * 1024 * 1024 + 3)
        with open(source, "wb") as handle:
            handle.write(data)
        out, err, code = yield self.cli("--data-binary", "@" + source, "-o", target,
                                        "--framing", "MKE", self.relay.url + "/upload")
        self.assertEqual((code, out, err), (0, b"", b""))
        with open(target, "rb") as handle:
            self.assertEqual(handle.read(), data)
        self.assertEqual(self.upstream.seen[-1][3:], (hashlib.sha256(data).hexdigest(),
                                                      len(data)))
        out, err, code = yield self.cli("-X", "DELETE", self.relay.url + "/status/404")
        self.assertEqual(code, 0, err)
        _, err, code = yield self.cli(f"http://127.0.0.1:{free_port()}/x")
        self.assertEqual(code, 1)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertTrue(err.startswith(b"mterelay-client: cannot connect"), err)
