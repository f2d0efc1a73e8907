"""``/api/mte-echo``: the liveness route, in memory (treq.testing, a fake clock)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mterelay.web.echo import iso_timestamp
from tests.helpers.support import MemoryRelay, json_of


class EchoTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.relay = MemoryRelay.build()
        self.relay.clock.advance(1_795_000_000.25)

    def test_path_form(self) -> None:
        response, body = self.relay.call("GET", "/api/mte-echo/test")
        self.assertEqual(response.code, 200)
        self.assertEqual(json_of(body), {"echo": "test", "time": "2026-11-18T11:06:40.250Z"})
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"application/json; charset=utf-8"]
        )

    def test_path_form_is_unquoted(self) -> None:
        _, body = self.relay.call("GET", "/api/mte-echo/hello%20w%C3%B6rld")
        self.assertEqual(json_of(body)["echo"], "hello w\u00f6rld")

    def test_query_form(self) -> None:
        _, body = self.relay.call("GET", "/api/mte-echo?msg=test")
        self.assertEqual(json_of(body), {"message": "test", "timestamp": "2026-11-18T11:06:40.250Z"})

    def test_bare_form(self) -> None:
        _, body = self.relay.call("GET", "/api/mte-echo")
        self.assertEqual(json_of(body)["message"], "")

    def test_wrong_method(self) -> None:
        response, body = self.relay.call("POST", "/api/mte-echo/x", data=b"x")
        self.assertEqual(response.code, 405)
        self.assertEqual(json_of(body)["code"], 405)
        self.assertEqual(self.relay.upstream.received, [])

    def test_not_utf8(self) -> None:
        response, body = self.relay.call("GET", "/api/mte-echo/%ff")
        self.assertEqual(response.code, 400)
        self.assertIn("UTF-8", json_of(body)["reason"])

    def test_timestamp_format(self) -> None:
        self.assertEqual(iso_timestamp(0), "1970-01-01T00:00:00.000Z")
