"""x-request-id end to end, in memory: caller → relay → upstream, and A → B → upstream.

The in-memory relays of ``tests.helpers.support`` put a plain twisted.web ``Site``
in front of the RelayRoot; request ids are the RelaySite's job, so these
tests put a RelaySite where treq's in-memory agent keeps its server factory.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from mterelay.http.observe import NO_METRICS
from mterelay.web.inbound import adopt_request_id
from mterelay.web.outbound import OutboundProxy
from mterelay.web.request import RelayRequest
from mterelay.web.responses import request_id
from mterelay.web.site import REQUEST_ID_HEADER, RelaySite
from tests.helpers.support import MemoryRelay, NoRemoteRelay, relay_config
from tests.helpers.sealer import Sealer, header_value
from tests.unit.test_outbound import TOKEN, Outbound

FRESH_ID = re.compile(rb"[0-9a-f]{32}\Z")


def serve_with_relay_site(client: Any, resource: Any, clock: Any, echo: bool = False,
                          metrics: Any = NO_METRICS) -> RelaySite:
    """Put a RelaySite in front of ``resource`` inside a StubTreq / RequestTraversalAgent."""
    agent = getattr(client, "_agent", client)
    assert hasattr(agent, "_serverFactory"), "treq.testing changed: no _serverFactory"
    site = RelaySite(resource, clock, metrics, echo_request_id=echo,
                     reactor=MemoryReactorClock())
    agent._serverFactory = site
    return site


def site_relay(echo: bool = False, **overrides: str) -> MemoryRelay:
    relay = MemoryRelay.build(**overrides)
    serve_with_relay_site(relay.client, relay.root, relay.clock, echo, relay.root.metrics)
    return relay


def access_ids(events: list[dict[str, Any]]) -> list[str]:
    return [e["request_id"] for e in events if e.get("log_namespace") == "mterelay.access"]


class LogCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)


class PassThroughTests(LogCase):
    def setUp(self) -> None:
        super().setUp()
        self.relay = site_relay(PASS_THROUGH_ROUTES="/assets/*")

    def upstream_ids(self) -> list[bytes]:
        [seen] = self.relay.upstream.received
        return seen.headers.get(b"x-request-id", [])

    def test_caller_id_reaches_upstream(self) -> None:
        response, _ = self.relay.call("GET", "/assets/a",
                                      headers={"x-request-id": ["caller-42"]})
        self.assertEqual(response.code, 200)
        self.assertEqual(self.upstream_ids(), [b"caller-42"])
        self.assertEqual(access_ids(self.events), ["caller-42"])

    def test_missing_id_minted_for_upstream(self) -> None:
        self.relay.call("GET", "/assets/a")
        [minted] = self.upstream_ids()
        self.assertRegex(minted, FRESH_ID)
        # The access line names the same id the upstream got.
        self.assertEqual(access_ids(self.events), [minted.decode("ascii")])

    def test_invalid_id_replaced(self) -> None:
        for bad in ("has space", "x" * 129, "caf\u00e9"):
            self.relay.upstream.received.clear()
            self.relay.call("POST", "/assets/a", headers={"x-request-id": [bad]}, data=b"{}")
            [sent] = self.upstream_ids()
            self.assertRegex(sent, FRESH_ID, bad)
            [seen] = self.relay.upstream.received
            self.assertNotIn(bad.encode("utf-8"), b"".join(
                b"".join(values) for values in seen.headers.values()))

    def test_several_ids_become_one(self) -> None:
        self.relay.call("GET", "/assets/a", headers={"x-request-id": ["first", "second"]})
        self.assertEqual(self.upstream_ids(), [b"first"])

    def test_each_request_its_own_id(self) -> None:
        self.relay.call("GET", "/assets/a")
        self.relay.call("GET", "/assets/b")
        first, second = (seen.headers[b"x-request-id"][0] for seen in self.relay.upstream.received)
        self.assertNotEqual(first, second)

    def test_not_echoed_without_debug(self) -> None:
        response, _ = self.relay.call("GET", "/assets/a", headers={"x-request-id": ["c-1"]})
        self.assertIsNone(response.headers.getRawHeaders(REQUEST_ID_HEADER))

    def test_echoed_with_debug(self) -> None:
        relay = site_relay(echo=True, PASS_THROUGH_ROUTES="/assets/*")
        response, _ = relay.call("GET", "/assets/a")
        [seen] = relay.upstream.received
        self.assertEqual(response.headers.getRawHeaders(REQUEST_ID_HEADER),
                         seen.headers[b"x-request-id"])

    def test_echo_replaces_the_upstreams_own_id(self) -> None:
        relay = site_relay(echo=True, PASS_THROUGH_ROUTES="/assets/*")
        relay.upstream.headers.append((b"x-request-id", b"upstream-own"))
        response, _ = relay.call("GET", "/assets/a", headers={"x-request-id": ["c-9"]})
        self.assertEqual(response.headers.getRawHeaders(REQUEST_ID_HEADER), [b"c-9"])

    def test_upstream_unreachable_logged_with_id(self) -> None:
        from twisted.internet.defer import fail
        from twisted.internet.error import ConnectionRefusedError

        class Refusing:
            def request(self, *args: Any, **kwargs: Any) -> Any:
                return fail(ConnectionRefusedError("refused"))

        self.relay.root.forwarder.agent = Refusing()
        response, _ = self.relay.call("GET", "/assets/a", headers={"x-request-id": ["down-1"]})
        self.assertEqual(response.code, 502)
        ids = {e.get("request_id") for e in self.events
               if e.get("log_namespace") == "mterelay.passthrough"}
        self.assertEqual(ids, {"down-1"})

    def test_plain_site_changes_nothing(self) -> None:
        """Outside a RelaySite there is no id: the caller's header is copied as is."""
        relay = MemoryRelay.build(PASS_THROUGH_ROUTES="/assets/*")
        relay.call("GET", "/assets/a", headers={"x-request-id": ["bad id"]})
        relay.call("GET", "/assets/a")
        first, second = relay.upstream.received
        self.assertEqual(first.headers[b"x-request-id"], [b"bad id"])
        self.assertNotIn(b"x-request-id", second.headers)


class InboundTests(LogCase):
    """The encrypted route: an id sealed by the sender wins over the clear one."""

    def setUp(self) -> None:
        super().setUp()
        self.relay = site_relay()
        self.sealer = Sealer(self.relay)
        self.sealer.pair()

    def upstream_ids(self) -> list[bytes]:
        seen = self.relay.upstream.received[-1]
        return seen.headers.get(b"x-request-id", [])

    def send(self, sealed_id: str | None = None, clear_id: str | None = None) -> Any:
        headers = {"accept": ["application/json"]}
        if sealed_id is not None:
            headers["x-request-id"] = [sealed_id]
        clear = {"x-request-id": [clear_id]} if clear_id is not None else None
        sent = self.sealer.send("GET", "/api/items?page=2", headers, clear=clear)
        self.assertEqual(sent.response.code, 200, sent.body)
        return sent

    def test_sealed_id_reaches_upstream(self) -> None:
        self.send(sealed_id="app-trace-1")
        self.assertEqual(self.upstream_ids(), [b"app-trace-1"])

    def test_sealed_id_beats_clear_id(self) -> None:
        self.send(sealed_id="sealed-9", clear_id="clear-9")
        self.assertEqual(self.upstream_ids(), [b"sealed-9"])
        # The relay's own access line uses the adopted id as well.
        self.assertEqual(access_ids(self.events)[-1], "sealed-9")

    def test_clear_id_without_sealed_one(self) -> None:
        self.send(clear_id="clear-only")
        self.assertEqual(self.upstream_ids(), [b"clear-only"])

    def test_no_id_anywhere_minted(self) -> None:
        self.send()
        [minted] = self.upstream_ids()
        self.assertRegex(minted, FRESH_ID)

    def test_invalid_sealed_id_ignored(self) -> None:
        self.send(sealed_id="not a usable id", clear_id="clear-kept")
        self.assertEqual(self.upstream_ids(), [b"clear-kept"])
        self.send(sealed_id="\u4e2d\u6587")  # would be "??" once squeezed into latin-1
        [minted] = self.upstream_ids()
        self.assertRegex(minted, FRESH_ID)

    def test_echo_follows_the_adopted_id(self) -> None:
        relay = site_relay(echo=True)
        sealer = Sealer(relay)
        sealer.pair()
        sent = sealer.send("GET", "/api/items", {"x-request-id": ["sealed-echo"]},
                           clear={"x-request-id": ["clear-echo"]})
        self.assertEqual(sent.response.code, 200)
        self.assertEqual(header_value(sent.response, "x-request-id"), "sealed-echo")
        sealed_headers, _ = Sealer.open(sent, sealer.keys[-1])
        self.assertNotIn("x-request-id", sealed_headers)

    def test_refused_request_logged_with_id(self) -> None:
        # A headers item that does not authenticate: refused, nothing adopted.
        _, target, wire_headers, _ = self.sealer.wire("GET", "/api/items")
        wire_headers["x-request-id"] = ["refused-1"]
        wire_headers["x-mte-relay-eh"] = ["AAAA"]
        response, _ = self.relay.call("GET", target, headers=wire_headers)
        self.assertEqual(response.code, 562)
        self.assertEqual(self.relay.upstream.received, [])
        self.assertEqual(access_ids(self.events)[-1], "refused-1")
        refusals = [e for e in self.events if e.get("log_namespace") == "mterelay.web"]
        self.assertEqual([e.get("request_id") for e in refusals], ["refused-1"])


class _SiteRequest(RelayRequest):
    """The relay's request class, without a channel (only its headers and id are used)."""

    def __init__(self, request_id: str) -> None:  # no Twisted channel: not super().__init__
        self.request_id = request_id
        self.responseHeaders = Headers()


class _OtherRequest:
    """A request the relay's Site did not make (no relay fields at all)."""

    def __init__(self) -> None:
        self.responseHeaders = Headers()


def FakeRequest(request_id: str | None = "ours-1", echoed: bool = False) -> Any:  # noqa: N802
    request: Any = _SiteRequest(request_id) if request_id is not None else _OtherRequest()
    if echoed:
        request.responseHeaders.setRawHeaders(REQUEST_ID_HEADER, [b"ours-1"])
    return request


class AdoptRequestIdTests(SynchronousTestCase):
    def test_adopted(self) -> None:
        request = FakeRequest()
        adopt_request_id(request, ["app-7"])
        self.assertEqual(request.request_id, "app-7")
        self.assertFalse(request.responseHeaders.hasHeader(REQUEST_ID_HEADER))

    def test_first_value_used(self) -> None:
        request = FakeRequest()
        adopt_request_id(request, ["one", "two"])
        self.assertEqual(request.request_id, "one")

    def test_nothing_sealed(self) -> None:
        for sealed in (None, []):
            request = FakeRequest(echoed=True)
            adopt_request_id(request, sealed)
            self.assertEqual(request.request_id, "ours-1")

    def test_unusable_ids_keep_ours(self) -> None:
        for bad in ("", "with space", "x" * 129, "caf\u00e9", "\u4e2d", "?\u4e2d", "a\nb",
                    "tab\t"):
            request = FakeRequest(echoed=True)
            adopt_request_id(request, [bad])
            self.assertEqual(request.request_id, "ours-1", repr(bad))

    def test_outside_a_relay_site(self) -> None:
        request = FakeRequest(request_id=None)
        adopt_request_id(request, ["app-9"])
        self.assertFalse(hasattr(request, "request_id"))
        self.assertIsNone(request_id(request))


class OutboundHeadersTests(SynchronousTestCase):
    def proxy(self, **overrides: str) -> OutboundProxy:
        return OutboundProxy(Clock(), relay_config(OUTBOUND_TOKEN=TOKEN, **overrides),
                             NoRemoteRelay())

    def incoming(self) -> Headers:
        return Headers({b"x-request-id": [b"from-app"], b"x-mte-outbound-token": [TOKEN],
                        b"x-mte-upstream": [b"http://relay-b.test"],
                        b"content-type": [b"application/json"], b"host": [b"relay-a"]})

    def test_request_id_set(self) -> None:
        headers = self.proxy().outgoing_headers(self.incoming(), "site-id-1")
        self.assertEqual(headers.getRawHeaders(b"x-request-id"), [b"site-id-1"])
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertFalse([name for name, _ in headers.getAllRawHeaders()
                          if name.lower().startswith(b"x-mte-") or name.lower() == b"host"])

    def test_without_request_id(self) -> None:
        headers = self.proxy().outgoing_headers(self.incoming())
        self.assertEqual(headers.getRawHeaders(b"x-request-id"), [b"from-app"])
        headers = self.proxy().outgoing_headers(Headers(), None)
        self.assertFalse(headers.hasHeader(b"x-request-id"))

    def test_configured_headers_still_added(self) -> None:
        proxy = self.proxy(HEADERS='{"x-service-name": "relay-a"}')
        headers = proxy.outgoing_headers(Headers(), "rid-2")
        self.assertEqual(headers.getRawHeaders(b"x-request-id"), [b"rid-2"])
        self.assertEqual(headers.getRawHeaders(b"x-service-name"), [b"relay-a"])


class OutboundEndToEndTests(LogCase):
    """Application → relay A (RelaySite) → relay B (RelaySite) → upstream."""

    def setUp(self) -> None:
        super().setUp()
        self.o = Outbound()
        serve_with_relay_site(self.o.app, self.o.root, self.o.b.clock)
        serve_with_relay_site(self.o.b.agent, self.o.b.switch, self.o.b.clock)

    def test_application_id_reaches_remote_upstream(self) -> None:
        response, _ = self.o.call("GET", "/api/items", headers={"x-request-id": ["app-77"]})
        self.assertEqual(response.code, 200)
        [seen] = self.o.b.upstream.received
        self.assertEqual(seen.headers[b"x-request-id"], [b"app-77"])
        # A's and B's access lines for the encrypted request carry the same id.
        self.assertIn("app-77", access_ids(self.events))
        ids = [e["request_id"] for e in self.events
               if e.get("log_namespace") == "mterelay.access" and e.get("path") == "/api/items"]
        self.assertEqual(ids, ["app-77"])

    def test_id_minted_by_relay_a_follows_the_request(self) -> None:
        response, _ = self.o.call("GET", "/api/items")
        self.assertEqual(response.code, 200)
        [seen] = self.o.b.upstream.received
        [sent] = seen.headers[b"x-request-id"]
        self.assertRegex(sent, FRESH_ID)
        # Every access line of the application's request names that id (A's and B's).
        lines = [e for e in self.events if e.get("log_namespace") == "mterelay.access"
                 and e.get("request_id") == sent.decode("ascii")]
        self.assertEqual([line["path"] == "/api/items" for line in lines], [False, True])

    def test_id_travels_sealed(self) -> None:
        self.o.call("GET", "/api/items", headers={"x-request-id": ["secret-trace"]})
        for _, _, wire_headers in self.o.wire():
            self.assertNotIn(b"x-request-id", wire_headers)
