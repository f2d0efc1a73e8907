"""Helpers shared by the tests: in-memory relays, recording upstreams, processes."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

import attrs
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet import task
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from mterelay.service.config import SETTINGS, Config, load_config
from mterelay.store.interface import StoreUnavailable
from mterelay.store.memory import MemoryPairStore
from mterelay.service.tap import store_limits
from mterelay.http.upstream import UpstreamForwarder
from mterelay.service.metrics import RelayMetrics
from mterelay.web.request import RelayRequest
from mterelay.web.root import RelayRoot

SECRET = "test-client-id-secret-0123456789abcdef"


def relay_config(**overrides: str) -> Config:
    environ = {"UPSTREAM": "http://upstream.test", "CLIENT_ID_SECRET": SECRET}
    environ.update(overrides)
    return load_config(environ)


@implementer(IAgent)
class NoRemoteRelay:
    """The outbound agent of a relay that no test sends to a remote relay: every
    connection is refused (as for a remote relay that is down)."""

    def request(self, method: bytes, uri: bytes, headers: Any = None,
                bodyProducer: Any = None) -> "Deferred[Any]":
        return fail(ConnectionRefusedError("this test gave the relay no remote relay"))


def relay_agent(resource: Any) -> RequestTraversalAgent:
    """An in-memory agent whose Site makes the relay's own requests (``RelayRequest``).

    treq.testing serves ``resource`` with a plain ``Site``; a relay resource
    must see the request class ``RelaySite`` gives it in production.
    """
    agent = RequestTraversalAgent(resource)
    site = getattr(agent, "_serverFactory", None)
    assert site is not None, "treq.testing changed: no _serverFactory"
    site.requestFactory = RelayRequest
    return agent


def relay_stub(resource: Any) -> StubTreq:
    """A StubTreq over ``resource`` whose requests are ``RelayRequest`` (see relay_agent)."""
    client = StubTreq(resource)
    agent = getattr(client, "_agent", None)
    assert agent is not None and hasattr(agent, "_serverFactory"), \
        "treq.testing changed: no _agent._serverFactory"
    agent._serverFactory.requestFactory = RelayRequest
    return client


@attrs.define
class Recorded:
    method: bytes
    uri: bytes
    headers: dict[bytes, list[bytes]]
    body: bytes


class RecordingUpstream(Resource):
    """An upstream that records exactly what it received and answers as told."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Recorded] = []
        self.status = 200
        self.headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
        self.body = b'{"ok":true}'
        self.hold = False
        self.held: list[Any] = []

    def render(self, request: Any) -> Any:
        self.received.append(
            Recorded(
                request.method,
                request.uri,
                {k.lower(): list(v) for k, v in request.requestHeaders.getAllRawHeaders()},
                request.content.read(),
            )
        )
        request.setResponseCode(self.status)
        for name, value in self.headers:
            request.responseHeaders.addRawHeader(name, value)
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        return self.body


class FailingStore(MemoryPairStore):
    """A store that is down: every call fails with StoreUnavailable."""

    def _down(self, *args: Any) -> Any:
        return fail(StoreUnavailable("redis is down"))

    create = get = accept = _down


@attrs.define
class MemoryRelay:
    """A relay Resource driven fully in memory: StubTreq in front, a fake upstream behind."""

    config: Config
    upstream: RecordingUpstream
    clock: task.Clock
    upstream_agent: RequestTraversalAgent
    root: RelayRoot
    client: StubTreq

    @classmethod
    def build(cls, store: Any = None, **overrides: str) -> "MemoryRelay":
        config = relay_config(**overrides)
        upstream = RecordingUpstream()
        clock = task.Clock()
        agent = RequestTraversalAgent(upstream)
        forwarder = UpstreamForwarder(
            clock=clock,
            agent=agent,
            upstream=config.upstream,
            timeout=config.upstream_timeout,
            extra_headers=config.headers,
        )
        if store is None:
            store = MemoryPairStore(clock, store_limits(config))
        root = RelayRoot(config, forwarder, clock, store, NoRemoteRelay(), RelayMetrics())
        return cls(config, upstream, clock, agent, root, relay_stub(root))

    def flush(self) -> None:
        for _ in range(5):
            self.upstream_agent.flush()
            self.client.flush()

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[Any, bytes]:
        """Send a request through the relay and return (response, body) synchronously."""
        responses: list[Any] = []
        failures: list[Any] = []
        self.client.request(method, "http://relay.test" + path, **kwargs).addCallbacks(
            responses.append, failures.append
        )
        self.flush()
        if failures:
            failures[0].raiseException()
        assert responses, "no response"
        bodies: list[bytes] = []
        self.client.content(responses[0]).addCallback(bodies.append)
        self.flush()
        return responses[0], bodies[0]


def json_of(body: bytes) -> Any:
    return json.loads(body.decode("utf-8"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


VENV_BIN = os.path.dirname(sys.executable)


@attrs.define
class RelayProcess:
    """A real ``twistd -n mterelay`` child process, for process-level tests."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: str

    @classmethod
    def start(cls, environ: dict[str, str], log_path: str, port: int | None = None) -> "RelayProcess":
        port = port or free_port()
        env = {k: v for k, v in os.environ.items() if k not in _RELAY_ENV}
        # A short drain: stop() must not outwait requests whose other end is
        # this test's own (blocked) reactor.
        env.update({"LISTEN": f"tcp:{port}:interface=127.0.0.1", "SHUTDOWN_GRACE": "3"})
        env.update(environ)
        log = open(log_path, "wb")
        process = subprocess.Popen(
            [os.path.join(VENV_BIN, "twistd"), "-n", "--pidfile=", "mterelay"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return cls(process, port, log_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"relay exited early:\n{self.output()}")
            try:
                # An answer (not just a bound port) means the reactor runs and
                # twistd's signal handlers are installed.
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/api/mte-echo/ready")
                connection.getresponse().read()
                connection.close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"relay did not listen in time:\n{self.output()}")

    def output(self) -> str:
        with open(self.log_path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")

    def rss_peak_kib(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


# Every variable the relay reads, so a developer's shell never leaks into a test relay.
_RELAY_ENV = {setting.env for setting in SETTINGS} | {"CONFIG_FILE", "DEBUG"}


def write_random_file(path: str, size: int, block_size: int = 1024 * 1024) -> str:
    """Write ``size`` bytes (one random block repeated) to ``path``; return their SHA-256."""
    digest = hashlib.sha256()
    block = os.urandom(block_size)
    with open(path, "wb") as handle:
        for _ in range(size // block_size):
            handle.write(block)
            digest.update(block)
    return digest.hexdigest()


def collect_digest(response: Any) -> Any:
    """Stream a response body through SHA-256; fires ``(size, hexdigest)``, holding nothing."""
    import treq

    digest, sizes = hashlib.sha256(), []

    def chunk(data: bytes) -> None:
        digest.update(data)
        sizes.append(len(data))

    return treq.collect(response, chunk).addCallback(lambda _: (sum(sizes), digest.hexdigest()))
