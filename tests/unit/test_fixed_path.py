"""Sealed-URL requests on the fixed path (spec 5.2): one URL, so one CORS preflight."""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mterelay.client.messages import SealOptions, seal_request
from mterelay.protocol.header import FIXED_PATH, parse_fixed_path
from tests.helpers.clientsupport import ClientHarness
from tests.helpers.sealer import Sealer
from tests.helpers.support import MemoryRelay, json_of


class AnnouncementTests(SynchronousTestCase):
    def test_head_announces_fixed_path(self) -> None:
        relay = MemoryRelay.build(CORS_ORIGINS="https://app.test")
        response, _ = relay.call("HEAD", "/api/mte-relay",
                                 headers={b"origin": [b"https://app.test"]})
        self.assertEqual(response.headers.getRawHeaders(b"x-mte-relay-fixed-path"),
                         [FIXED_PATH.encode()])
        exposed = response.headers.getRawHeaders(b"access-control-expose-headers")[0]
        self.assertIn(b"x-mte-relay-fixed-path", exposed)

    def test_parse_fixed_path(self) -> None:
        self.assertEqual(parse_fixed_path(b" /api/mte-relay/request "), "/api/mte-relay/request")
        for bad in (None, b"", b"api/x", b"/a?b", b"/a/../b", b"/a/./b", b"/%2e%2e",
                    b"//x", b"/a b", b"\xff", b"/" + b"a" * 200, b"http://x/y"):
            self.assertIsNone(parse_fixed_path(bad), bad)


class BothFormsTests(SynchronousTestCase):
    """The Python client against the real relay, both forms, same results."""

    def run_form(self, fixed_path: bool) -> tuple[ClientHarness, list[bytes]]:
        h = ClientHarness.build()
        client = h.client(pairs=2, fixed_path=fixed_path)
        for method, path, data in (("GET", "/api/items?page=2&q=a%20b", None),
                                   ("POST", "/api/login", b'{"user":"a"}'),
                                   ("PUT", "/api/things/1", b"x" * 70_000),
                                   ("DELETE", "/api/things/1", None)):
            h.upstream.body = b'{"ok":true}'
            response, body = h.call(client, method, path, data=data,
                                    headers={"x-api-key": "k"})
            self.assertEqual((response.code, json.loads(body)), (200, {"ok": True}))
            seen = h.upstream.received[-1]
            self.assertEqual((seen.method, seen.uri, seen.body),
                             (method.encode(), path.encode(), data or b""))
            self.assertEqual(seen.headers[b"x-api-key"], [b"k"])
        uris = [uri for _, uri, _ in h.switch.encrypted()]
        return h, uris

    def test_fixed_path_form(self) -> None:
        h, uris = self.run_form(True)
        self.assertEqual(set(uris), {FIXED_PATH.encode()})
        for method, _, wire in h.switch.encrypted():
            [token] = wire[b"x-mte-relay-url"]
            self.assertNotIn(b"items", token)
            self.assertNotIn(b"login", token)
        self.assertEqual([m for m, _, _ in h.switch.encrypted()],
                         [b"GET", b"POST", b"PUT", b"DELETE"])

    def test_per_request_form(self) -> None:
        h, uris = self.run_form(False)
        self.assertEqual(len(set(uris)), 4)
        for _, uri, wire in h.switch.encrypted():
            self.assertNotIn(b"x-mte-relay-url", wire)
            self.assertNotEqual(uri, FIXED_PATH.encode())

    def test_old_relay_gets_old_form(self) -> None:
        # A relay that does not announce the fixed path is sent the per-request form.
        h = ClientHarness.build()
        h.tamper.rewrite = strip_announcement
        client = h.client(pairs=1)
        h.call(client, "GET", "/api/x")
        [(_, uri, wire)] = h.switch.encrypted()
        self.assertNotEqual(uri, FIXED_PATH.encode())
        self.assertNotIn(b"x-mte-relay-url", wire)


def strip_announcement(response: Any) -> Any:
    response.headers.removeHeader(b"x-mte-relay-fixed-path")
    return response


class RelayRefusalTests(SynchronousTestCase):
    """What the relay refuses on and around the fixed path; nothing reaches the upstream."""

    def setUp(self) -> None:
        self.relay = MemoryRelay.build(PASS_THROUGH_ROUTES="/api/*")
        sealer = Sealer(self.relay)
        [self.keys] = sealer.pair()
        self.client_id = sealer.client_id
        self.seq = 0

    def sealed(self, method: str, target: str, *, fixed: bool = True,
               seal_url: bool = True) -> tuple[str, dict[bytes, list[bytes]]]:
        self.seq += 1
        out = seal_request(self.keys, self.client_id, self.seq, method, target, [],
                           has_body=False, options=SealOptions.build(seal_url=seal_url),
                           fixed_path=FIXED_PATH if fixed else None)
        headers: dict[bytes, list[bytes]] = {}
        for name, value in out.headers:
            headers.setdefault(name.encode(), []).append(value.encode())
        return out.target, headers

    def test_accepted_even_when_pass_through_matches(self) -> None:
        target, headers = self.sealed("GET", "/api/secret?x=1")
        self.assertEqual(target, FIXED_PATH)
        response, body = self.relay.call("GET", target, headers=headers)
        self.assertEqual(response.code, 200, body)
        [seen] = self.relay.upstream.received
        self.assertEqual(seen.uri, b"/api/secret?x=1")

    def test_token_moved_to_path_still_opens(self) -> None:
        # The two forms carry the same sealed bytes: only where the token travels differs.
        _, headers = self.sealed("GET", "/api/a")
        token = headers.pop(b"x-mte-relay-url")[0]
        response, _ = self.relay.call("GET", "/" + token.decode(), headers=headers)
        self.assertEqual(response.code, 200)

    def test_other_token_is_562(self) -> None:
        _, first = self.sealed("GET", "/api/a")
        _, second = self.sealed("GET", "/api/b")
        second[b"x-mte-relay-url"] = first[b"x-mte-relay-url"]
        response, body = self.relay.call("GET", FIXED_PATH, headers=second)
        self.assertEqual(response.code, 562)
        self.assertEqual(self.relay.upstream.received, [])

    def test_method_is_bound(self) -> None:
        _, headers = self.sealed("GET", "/api/a")
        response, _ = self.relay.call("DELETE", FIXED_PATH, headers=headers)
        self.assertEqual(response.code, 562)
        self.assertEqual(self.relay.upstream.received, [])

    def refused(self, method: str, target: str, headers: dict[bytes, list[bytes]],
                code: int, reason: str) -> None:
        response, body = self.relay.call(method, target, headers=headers)
        payload = json_of(body)
        self.assertEqual((response.code, payload["code"]), (code, code), body)
        self.assertIn(reason, payload["reason"])
        self.assertEqual(payload["upstreamReached"], "no")
        self.assertEqual(self.relay.upstream.received, [])

    def test_missing_token_is_569(self) -> None:
        _, headers = self.sealed("GET", "/api/a")
        del headers[b"x-mte-relay-url"]
        self.refused("GET", FIXED_PATH, headers, 569, "x-mte-relay-url")

    def test_token_twice_is_568(self) -> None:
        _, headers = self.sealed("GET", "/api/a")
        headers[b"x-mte-relay-url"] *= 2
        self.refused("GET", FIXED_PATH, headers, 568, "more than once")

    def test_token_elsewhere_is_568(self) -> None:
        _, headers = self.sealed("GET", "/api/a")
        self.refused("GET", "/other", headers, 568, "only sent on")

    def test_clear_url_on_fixed_path_is_568(self) -> None:
        _, headers = self.sealed("GET", "/api/a", fixed=False, seal_url=False)
        self.refused("GET", FIXED_PATH, headers, 568, "urlEnc=1")

    def test_query_on_fixed_path_is_400(self) -> None:
        _, headers = self.sealed("GET", "/api/a")
        self.refused("GET", FIXED_PATH + "?x=1", headers, 400, "no query")

    def test_replay_on_fixed_path_is_562(self) -> None:
        _, headers = self.sealed("GET", "/api/a")
        self.assertEqual(self.relay.call("GET", FIXED_PATH, headers=headers)[0].code, 200)
        response, _ = self.relay.call("GET", FIXED_PATH, headers=headers)
        self.assertEqual(response.code, 562)
        self.assertEqual(len(self.relay.upstream.received), 1)

