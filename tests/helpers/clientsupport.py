"""Helpers for the relay-client tests: in-process pairing, an in-memory relay to talk to."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
import treq
from treq.testing import RequestTraversalAgent
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from zope.interface import implementer

from mterelay.client import RelayClient
from mterelay.protocol.clientid import new_client_id
from mterelay.protocol.keys import PairKeys
from mterelay.protocol.pairing import respond_all, start_pairing
from mterelay.store.memory import MemoryPairStore
from mterelay.service.tap import store_limits
from mterelay.http.upstream import UpstreamForwarder
from mterelay.web.root import RelayRoot
from mterelay.service.metrics import RelayMetrics
from tests.helpers.support import NoRemoteRelay, RecordingUpstream, relay_agent, relay_config

RELAY = "http://relay.test"


def paired_keys(secret: bytes = b"s" * 32) -> tuple[str, PairKeys, PairKeys]:
    """(signed client id, client's keys, relay's keys) of one in-process pairing."""
    client_id = new_client_id(secret)
    bare = client_id[:36]
    pending = start_pairing(bare)
    entries, relay_keys = respond_all(bare, json.dumps([pending.request_entry()]))
    return client_id, pending.finish(entries[0]), relay_keys[0]


class Switch(Resource):
    """The relay's front door: delegates to ``root`` (replaceable: a "restart"),
    or answers the next encrypted requests with ``inject``ed canned answers."""

    isLeaf = True

    def __init__(self, root: Resource) -> None:
        super().__init__()
        self.root = root
        self.inject: list[tuple[int, dict[str, Any], dict[bytes, bytes]]] = []
        self.seen: list[tuple[bytes, bytes, dict[bytes, list[bytes]]]] = []

    def render(self, request: Any) -> Any:
        headers = {k.lower(): list(v) for k, v in request.requestHeaders.getAllRawHeaders()}
        self.seen.append((request.method, request.uri, headers))
        encrypted = (request.path not in (b"/api/mte-pair", b"/api/mte-relay")
                     and request.requestHeaders.hasHeader(b"x-mte-relay"))
        if encrypted and self.inject:
            status, payload, extra = self.inject.pop(0)
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"application/json")
            for name, value in extra.items():
                request.setHeader(name, value)
            return json.dumps(payload).encode()
        return self.root.render(request)

    def count(self, method: bytes, path: bytes | None = None) -> int:
        return sum(1 for m, uri, _ in self.seen
                   if m == method and (path is None or uri.split(b"?")[0] == path))

    def encrypted(self) -> list[tuple[bytes, bytes, dict[bytes, list[bytes]]]]:
        return [s for s in self.seen if s[1] not in (b"/api/mte-pair", b"/api/mte-relay")]


@implementer(IAgent)
class TamperingAgent:
    """Passes requests through and lets a test rewrite each response."""

    def __init__(self, agent: IAgent) -> None:
        self.agent = agent
        self.rewrite: Any = None

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: Any = None) -> "Deferred[Any]":
        d = self.agent.request(method, uri, headers, bodyProducer)
        if self.rewrite is not None:
            d.addCallback(self.rewrite)
        return d


@implementer(IAgent)
class SilentAgent:
    """Never answers (timeouts); records cancellation."""

    def __init__(self) -> None:
        self.cancelled = 0

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: Any = None) -> "Deferred[Any]":
        def cancel(_: Any) -> None:
            self.cancelled += 1
        return Deferred(cancel)


@attrs.define
class ClientHarness:
    """A RelayClient talking to an in-memory relay (RelayRoot), fully synchronous."""

    upstream: RecordingUpstream
    switch: Switch
    agent: RequestTraversalAgent
    tamper: TamperingAgent
    clock: task.Clock
    upstream_agent: RequestTraversalAgent
    overrides: dict[str, str]

    @classmethod
    def build(cls, **overrides: str) -> "ClientHarness":
        upstream = RecordingUpstream()
        upstream_agent = RequestTraversalAgent(upstream)
        clock = task.Clock()
        switch = Switch(Resource())
        agent = relay_agent(switch)
        harness = cls(upstream, switch, agent, TamperingAgent(agent), clock, upstream_agent,
                      overrides)
        harness.restart()
        return harness

    def restart(self, **overrides: str) -> None:
        """A fresh relay (empty pair store), as after a process restart."""
        settings = dict(self.overrides)
        settings.update(overrides)
        config = relay_config(**settings)
        forwarder = UpstreamForwarder(clock=self.clock, agent=self.upstream_agent,
                                      upstream=config.upstream, timeout=config.upstream_timeout,
                                      extra_headers=config.headers)
        store = MemoryPairStore(self.clock, store_limits(config))
        self.switch.root = RelayRoot(config, forwarder, self.clock, store, NoRemoteRelay(),
                                     RelayMetrics())

    def client(self, **options: Any) -> RelayClient:
        options.setdefault("agent", self.tamper)
        return RelayClient(self.clock, **options)

    def flush(self) -> None:
        for _ in range(8):
            self.agent.flush()
            self.upstream_agent.flush()
            self.clock.advance(0)

    def wait(self, d: "Deferred[Any]", flush: Callable[[], None] | None = None) -> Any:
        """Run ``d`` to completion; returns its result or raises its failure.

        ``flush`` (default: this harness's) moves the in-memory connections on.
        """
        results: list[Any] = []
        d.addBoth(results.append)
        for _ in range(200):
            if results:
                break
            (flush or self.flush)()
        assert results, "the Deferred did not fire"
        result = results[0]
        if hasattr(result, "raiseException"):
            result.raiseException()
        return result

    def call(self, client: RelayClient, method: str, path: str, **kwargs: Any
             ) -> tuple[Any, bytes]:
        response = self.wait(client.request(method, RELAY + path, **kwargs))
        return response, self.wait(treq.content(response))
