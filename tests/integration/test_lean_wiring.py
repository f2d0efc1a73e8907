"""The lean HTTP/1.1 client wired into the relay's hops (issue 18): what the relay relies on.

Real sockets on 127.0.0.1 throughout; the relay is built by
``service.tap.build_service`` (the production wiring) or from its parts.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

import mterelay
from mterelay.client import RelayClient
from mterelay.http import connections
from mterelay.http.connections import agent_pool, peer_agent, upstream_agent
from mterelay.service.config import load_config
from mterelay.service.tap import build_service
from tests.helpers.leanupstream import RawUpstream
from tests.helpers.support import SECRET

TOKEN = "app-token-0123456789abcdef"


@defer.inlineCallbacks
def until(condition: Any, limit: float = 10.0, step: float = 0.01) -> Any:
    """Wait (without blocking the reactor) until ``condition()``; False when it never held."""
    waited = 0.0
    while not condition():
        if waited >= limit:
            return False
        yield task.deferLater(reactor, step, lambda: None)
        waited += step
    return True


class RelayCase(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def upstream(self, **options: Any) -> Any:
        factory = RawUpstream(**options)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)

        def close_open() -> None:
            for protocol in list(factory.open):
                protocol.transport.abortConnection()

        self.addCleanup(close_open)
        return factory, f"http://127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def relay(self, upstream_url: str, **extra: str) -> Any:
        """A relay built as twistd builds it, started in this process; fires with (service, url)."""
        environ = {"UPSTREAM": upstream_url, "CLIENT_ID_SECRET": SECRET,
                   "LISTEN": "tcp:0:interface=127.0.0.1", "PASS_THROUGH_ROUTES": "/open/*",
                   "OUTBOUND_TOKEN": TOKEN, "OUTBOUND_UPSTREAMS": "http://127.0.0.1:*"}
        environ.update(extra)
        service = build_service(load_config(environ), reactor, observer=lambda event: None,
                                environ={})
        service.privilegedStartService()
        service.startService()
        self.stopped = False

        def stop() -> Any:
            if not self.stopped:
                return service.stopService()
            return None

        self.addCleanup(stop)
        port = yield service.listener.when_listening()
        return service, f"http://127.0.0.1:{port.getHost().port}"

    def client(self) -> Any:
        """The test's own HTTP client: no persistent connections to clean up."""
        return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


class StopClosesPoolsTests(RelayCase):
    @defer.inlineCallbacks
    def test_stop_service_closes_the_upstream_and_peer_pools(self) -> Any:
        # Failed before: RelayService.stopService left relay B's upstream pool
        # (and the outbound peer pool) open - idle connections and their timers.
        upstream, upstream_url = yield self.upstream()
        service, relay_url = yield self.relay(upstream_url)
        http = self.client()
        response = yield http.get(relay_url + "/open/plain")  # pass-through: upstream pool
        self.assertEqual((yield response.content()), b"ok")
        # Outbound to itself as relay B: the peer pool, then the upstream pool again.
        response = yield http.get(relay_url + "/sealed", headers={
            "x-mte-outbound-token": TOKEN, "x-mte-upstream": relay_url})
        self.assertEqual((response.code, (yield response.content())), (200, b"ok"))
        self.assertEqual(len(upstream.requests), 2)
        self.assertTrue((yield until(lambda: all(pool.origins() for pool in service.pools))))
        self.assertEqual(len(service.pools), 2)
        self.stopped = True
        yield service.stopService()
        closed = yield until(lambda: not upstream.open, limit=5)
        self.assertTrue(closed, f"{len(upstream.open)} upstream connection(s) left open")
        self.assertEqual([pool.origins() for pool in service.pools], [[], []])


class ProductionAgentTests(SynchronousTestCase):
    def test_every_hop_uses_the_lean_agent_with_its_idle_timeout(self) -> None:
        for agent, idle in ((upstream_agent(reactor), connections.UPSTREAM_IDLE_TIMEOUT),
                            (peer_agent(reactor), connections.PEER_IDLE_TIMEOUT),
                            (RelayClient(reactor).agent, 240)):
            pool = agent_pool(agent)
            self.assertIsInstance(agent, connections.LeanAgent)
            self.assertEqual(pool.idle_timeout, idle)


class PrivateNamesTests(SynchronousTestCase):
    def test_twisted_private_names_only_in_twistedinternals(self) -> None:
        """The issue's rule: Twisted internals in one place (http/twistedinternals.py)."""
        root = pathlib.Path(mterelay.__file__).parent
        found = []
        for path in root.rglob("*.py"):
            if path.name == "twistedinternals.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("twisted"):
                    names = [alias.name for alias in node.names]
                    if any(part.startswith("_") for part in (node.module or "").split(".")) \
                            or any(name.startswith("_") for name in names):
                        found.append(f"{path.relative_to(root)}: from {node.module} import {names}")
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.name.startswith("twisted") and any(
                                part.startswith("_") for part in alias.name.split(".")):
                            found.append(f"{path.relative_to(root)}: import {alias.name}")
        self.assertEqual(found, [])


def write_ca_and_leaves(directory: str) -> dict[str, tuple[str, str]]:
    """A private CA (``ca``: cert only), a leaf it signed for 127.0.0.1/localhost (``good``),
    one it signed for another name (``wrong_host``) and a self-signed one (``untrusted``)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    os.makedirs(directory, exist_ok=True)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def save(label: str, key: Any, cert: x509.Certificate) -> tuple[str, str]:
        key_path = os.path.join(directory, f"{label}.key")
        cert_path = os.path.join(directory, f"{label}.pem")
        with open(key_path, "wb") as handle:
            handle.write(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
        with open(cert_path, "wb") as handle:
            handle.write(cert.public_bytes(serialization.Encoding.PEM))
        return key_path, cert_path

    def builder(subject: str, issuer: str, key: Any) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1)))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (builder("mterelay test CA", "mterelay test CA", ca_key)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca": save("ca", ca_key, ca)}
    local = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    for label, names, signer, issuer in (
            ("good", local, ca_key, "mterelay test CA"),
            ("wrong_host", [x509.DNSName("relay-b.other.test")], ca_key, "mterelay test CA"),
            ("untrusted", local, None, "127.0.0.1")):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (builder("127.0.0.1" if label != "wrong_host" else "relay-b.other.test", issuer, key)
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(signer or key, hashes.SHA256()))
        out[label] = save(label, key, cert)
    return out


class PeerTLSTests(RelayCase):
    """Relay A (a twistd process trusting a private CA) to TLS relay Bs: certificates checked."""

    timeout = 90

    @defer.inlineCallbacks
    def test_good_certificate_passes_wrong_host_and_untrusted_fail_with_502(self) -> Any:
        from tests.helpers.support import RelayProcess

        files = write_ca_and_leaves(self.mktemp())
        upstream, upstream_url = yield self.upstream(body=b"through TLS")
        relays_b = {}
        for label in ("good", "wrong_host", "untrusted"):
            key_path, cert_path = files[label]
            _, url = yield self.relay(
                upstream_url, LISTEN=f"ssl:0:interface=127.0.0.1:privateKey={key_path}"
                                     f":certKey={cert_path}")
            relays_b[label] = url.replace("http:", "https:")
        relay_a = RelayProcess.start({
            "UPSTREAM": "http://127.0.0.1:9", "CLIENT_ID_SECRET": SECRET, "OUTBOUND_TOKEN": TOKEN,
            "OUTBOUND_UPSTREAMS": "https://127.0.0.1:*",
            # How an operator trusts a private CA: OpenSSL's default verify paths.
            "SSL_CERT_FILE": files["ca"][1]}, self.mktemp() + ".log")
        self.addCleanup(lambda: relay_a.process.poll() is None and relay_a.stop())
        yield defer.ensureDeferred(_wait_listening(relay_a))
        http = self.client()
        answers = {}
        for label, url in relays_b.items():
            response = yield http.post(relay_a.url + "/api/x", data=b"payload", headers={
                "x-mte-outbound-token": TOKEN, "x-mte-upstream": url})
            answers[label] = (response.code, (yield response.content()),
                              response.headers.getRawHeaders("x-mte-upstream-reached"))
        code, body, _ = answers["good"]
        self.assertEqual((code, body), (200, b"through TLS"), relay_a.output()[-2000:])
        self.assertEqual(len(upstream.requests), 1)
        for label in ("wrong_host", "untrusted"):
            code, body, reached_header = answers[label]
            payload = json.loads(body)
            self.assertEqual((code, payload["code"]), (502, 502), (label, payload))
            self.assertIn("error", payload)
            self.assertEqual(reached_header, ["no"], (label, payload))
        self.assertEqual(len(upstream.requests), 1, "nothing reached the upstream past a bad cert")


async def _wait_listening(relay: Any) -> None:
    """RelayProcess.wait_listening without blocking this test's reactor (relay Bs live in it)."""
    import http.client
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if relay.process.poll() is not None:
            raise AssertionError(f"relay exited early:\n{relay.output()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=2)
            connection.request("GET", "/api/mte-echo/ready")
            connection.getresponse().read()
            connection.close()
            return
        except OSError:
            await task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"relay did not listen in time:\n{relay.output()}")


class _NeverClosing:
    """A transport whose clean close never completes (a TLS peer that never sends close_notify)."""

    disconnecting = False
    disconnected = False

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.aborted = False

    def write(self, data: bytes) -> None:
        pass

    def loseConnection(self) -> None:  # noqa: N802
        self.disconnecting = True

    def abortConnection(self) -> None:  # noqa: N802
        self.aborted = True
        self.disconnected = True
        from twisted.internet.error import ConnectionAborted
        from twisted.python.failure import Failure
        self.protocol.connectionLost(Failure(ConnectionAborted()))


class CloseGraceTests(SynchronousTestCase):
    def test_idle_connection_that_does_not_close_is_aborted_after_the_grace(self) -> None:
        from mterelay.http.leanclient import CLOSE_GRACE, LeanClientProtocol, LeanPool

        clock = task.Clock()
        pool = LeanPool(clock, 4, 60)
        connection = LeanClientProtocol(pool._returned)
        connection.key = b"k"
        connection.makeConnection(_NeverClosing(connection))
        pool._returned(connection)  # idle in the pool
        closed = pool.closeCachedConnections()
        self.assertNoResult(closed)
        clock.advance(CLOSE_GRACE - 0.1)
        self.assertNoResult(closed)
        clock.advance(0.2)
        self.successResultOf(closed)
        self.assertTrue(connection.transport.aborted)
        self.assertEqual(clock.getDelayedCalls(), [])


class _PausedApplication(Protocol):
    """An application that sends one request and then does not read (until told to)."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received: list[bytes] = []
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(self.request)
        self.transport.pauseProducing()  # the slow reader: nothing read from the socket

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received.append(data)

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        self.done.callback(b"".join(self.received))


def _http_body(raw: bytes) -> bytes:
    head, _, rest = raw.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head.lower():
        return rest
    out, at = [], 0
    while True:
        end = rest.index(b"\r\n", at)
        size = int(rest[at:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(rest[end + 2:end + 2 + size])
        at = end + 2 + size + 2


class BackPressureTests(RelayCase):
    timeout = 120
    total = 64 * 1024 * 1024

    @defer.inlineCallbacks
    def test_slow_application_pauses_both_lean_hops_and_the_upstream(self) -> Any:
        upstream, upstream_url = yield self.upstream(stream=self.total)
        service, relay_url = yield self.relay(upstream_url)
        port = int(relay_url.rsplit(":", 1)[1])
        request = (b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                   b"x-mte-outbound-token: %b\r\nx-mte-upstream: %b\r\n\r\n"
                   % (TOKEN.encode(), relay_url.encode()))
        app = _PausedApplication(request)
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
            Factory.forProtocol(lambda: app))
        # app <- relay A <- (lean peer hop) relay B <- (lean upstream hop) upstream
        self.assertTrue((yield until(lambda: upstream.streams and upstream.streams[0].paused,
                                     limit=30)), "the upstream was never held back")
        stream = upstream.streams[0]
        yield task.deferLater(reactor, 0.5, lambda: None)
        held = stream.written
        self.assertTrue(stream.paused)
        self.assertLess(held, self.total // 2, "the relays buffered instead of pausing")
        app.transport.resumeProducing()
        raw = yield app.done
        body = _http_body(raw)
        self.assertEqual((len(body), body.count(b"s")), (self.total, self.total))
        self.assertGreater(stream.pauses, 0)


class StaleKeepAliveTests(RelayCase):
    """An upstream closing idle keep-alive connections after 50 ms (as gunicorn, Node do, later)."""

    @defer.inlineCallbacks
    def test_connection_closed_while_idle_is_not_reused(self) -> Any:
        upstream, upstream_url = yield self.upstream(idle_close=0.05)
        _, relay_url = yield self.relay(upstream_url)
        http = self.client()
        codes = []
        for _ in range(5):
            response = yield http.post(relay_url + "/open/x", data=b"once")
            codes.append((response.code, (yield response.content())))
            yield task.deferLater(reactor, 0.15, lambda: None)  # the upstream closes meanwhile
        self.assertEqual(codes, [(200, b"ok")] * 5)
        self.assertEqual((upstream.made, len(upstream.requests)), (5, 5))  # none sent twice

    @defer.inlineCallbacks
    def test_keep_alive_timeout_hint_closes_ours_first(self) -> Any:
        # Failed before: the pool kept the connection for its own idle timeout
        # (60 s here), past the 5 s after which the server closes it.
        from mterelay.http.leanclient import LeanAgent, LeanPool
        from mterelay.http.nodelay import NoDelayEndpointFactory

        upstream, url = yield self.upstream(headers=((b"Keep-Alive", b"timeout=5, max=100"),))
        clock = task.Clock()
        pool = LeanPool(clock, 4, 60)
        agent = LeanAgent(reactor, NoDelayEndpointFactory(reactor, 5), pool)
        self.addCleanup(pool.closeCachedConnections, 0)
        response = yield agent.request(b"GET", url.encode() + b"/x")
        self.assertEqual((yield treq.content(response)), b"ok")
        [key] = pool.origins()
        [connection] = pool.idle_connections(key)
        clock.advance(3.9)
        self.assertEqual(pool.idle_connections(key), (connection,))
        clock.advance(0.2)  # 4 s: a second before the server's 5
        self.assertEqual(pool.idle_connections(key), ())
        self.assertTrue(connection.is_closing())
        self.assertTrue((yield until(lambda: not upstream.open)))

    def test_idle_limit(self) -> None:
        from mterelay.http.leanclient import _keep_alive_timeout, idle_limit
        self.assertEqual(idle_limit(90, None), 90)
        self.assertEqual(idle_limit(90, 5), 4)
        self.assertEqual(idle_limit(90, 1), 0.5)
        self.assertEqual(idle_limit(3, 75), 3)
        self.assertEqual(idle_limit(90, 0), 0)
        for value, expected in ((b"timeout=5, max=100", 5.0), (b"max=10", None),
                                (b"timeout=abc", None), (b"timeout=-1", None),
                                (b' Timeout = "2" ', 2.0), (b"timeout=nan", None)):
            self.assertEqual(_keep_alive_timeout(value, None), expected, value)


class UpstreamReachedTests(RelayCase):
    """``x-mte-upstream-reached`` from the lean agent's failures (docs/protocol.md section 10.1)."""

    @defer.inlineCallbacks
    def answers(self, upstream_url: str) -> Any:
        _, relay_url = yield self.relay(upstream_url)
        http = self.client()
        out = []
        for path, headers in (("/open/x", {}),
                              ("/sealed", {"x-mte-outbound-token": TOKEN,
                                           "x-mte-upstream": relay_url})):
            response = yield http.post(relay_url + path, data=b"payload", headers=headers)
            body = json.loads((yield response.content()))
            out.append((response.code, body["code"], body["upstreamReached"],
                        response.headers.getRawHeaders("x-mte-upstream-reached")))
        return out

    @defer.inlineCallbacks
    def test_nothing_written_is_no(self) -> Any:
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory())
        url = f"http://127.0.0.1:{port.getHost().port}"
        yield port.stopListening()  # connection refused from now on
        got = yield self.answers(url)
        self.assertEqual(got, [(502, 502, "no", ["no"])] * 2)

    @defer.inlineCallbacks
    def test_written_then_lost_is_maybe_and_not_resent(self) -> Any:
        upstream, url = yield self.upstream(hang_up=True)
        got = yield self.answers(url)
        self.assertEqual(got, [(502, 502, "maybe", ["maybe"])] * 2)
        self.assertEqual(len(upstream.requests), 2, "each request reached the upstream once")


class UpstreamIdleTimeoutSettingTests(SynchronousTestCase):
    """UPSTREAM_IDLE_TIMEOUT: for upstreams closing idle connections early without saying so."""

    base = {"UPSTREAM": "http://upstream.test", "CLIENT_ID_SECRET": SECRET,
            "LISTEN": "tcp:0:interface=127.0.0.1"}

    def test_sources_and_default(self) -> None:
        from mterelay.service.config import parse_yaml
        from mterelay.service.tap import Options

        self.assertEqual(load_config(self.base).upstream_idle_timeout,
                         connections.UPSTREAM_IDLE_TIMEOUT)
        self.assertLess(connections.UPSTREAM_IDLE_TIMEOUT, 75)  # nginx's default keepalive
        self.assertEqual(load_config({**self.base, "UPSTREAM_IDLE_TIMEOUT": "1.5"})
                         .upstream_idle_timeout, 1.5)
        self.assertEqual(load_config(self.base, parse_yaml("upstreamIdleTimeout: 4"))
                         .upstream_idle_timeout, 4)
        options = Options(environ=self.base)
        options.parseOptions(["--upstream-idle-timeout", "3"])
        self.assertEqual(options.config.upstream_idle_timeout, 3)

    def test_bad_values_name_the_setting(self) -> None:
        from mterelay.service.config import ConfigError

        for value in ("0", "-1", "soon", "3601"):
            with self.assertRaises(ConfigError) as raised:
                load_config({**self.base, "UPSTREAM_IDLE_TIMEOUT": value})
            self.assertIn("UPSTREAM_IDLE_TIMEOUT", str(raised.exception))

    def test_build_service_gives_it_to_the_upstream_pool(self) -> None:
        service = build_service(load_config({**self.base, "UPSTREAM_IDLE_TIMEOUT": "2"}),
                                reactor, observer=lambda event: None, environ={})
        upstream_pool, peer_pool = service.pools
        self.assertEqual((upstream_pool.idle_timeout, peer_pool.idle_timeout),
                         (2, connections.PEER_IDLE_TIMEOUT))
