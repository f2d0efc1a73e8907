"""The sample API behind ``make demo``: the routes the demo page's scenarios need.

Login (a form or JSON; a wrong password is a 401) and upload (a size limit,
413 above it), over a real loopback socket.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from mterelay.sampleapi import SampleAPI

FORM = {"content-type": ["application/x-www-form-urlencoded"]}


class SampleAPITests(TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(SampleAPI(upload_limit=1000)))
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def call(self, method: str, path: str, data: bytes | None = None,
             headers: dict[str, list[str]] | None = None) -> Any:
        response = yield treq.request(method, self.url + path, data=data, headers=headers,
                                      persistent=False)
        body = yield treq.content(response)
        return response, json.loads(body)

    @defer.inlineCallbacks
    def test_login_form_success(self) -> Any:
        response, body = yield self.call("POST", "/api/login",
                                         b"user=demo&password=demo-password", FORM)
        self.assertEqual(response.code, 200)
        self.assertEqual((body["ok"], body["user"]), (True, "demo"))
        self.assertIn(b"session=", response.headers.getRawHeaders(b"set-cookie")[0])

    @defer.inlineCallbacks
    def test_login_json_success(self) -> Any:
        response, body = yield self.call("POST", "/api/login",
                                         b'{"user": "alice", "password": "secret"}',
                                         {"content-type": ["application/json"]})
        self.assertEqual((response.code, body["user"]), (200, "alice"))

    @defer.inlineCallbacks
    def test_wrong_password_is_401(self) -> Any:
        for form in (b"user=demo&password=nope", b"user=nobody&password=",
                     b"user=nobody&password=demo-password"):
            response, body = yield self.call("POST", "/api/login", form, FORM)
            self.assertEqual(response.code, 401, form)
            self.assertEqual(body["error"], "wrong user or password")
            self.assertIsNone(response.headers.getRawHeaders(b"set-cookie"))

    @defer.inlineCallbacks
    def test_malformed_login_is_400(self) -> Any:
        for data, headers in ((b"password=x", FORM), (b"not json", None), (b"[1]", None),
                              (b'{"user": 5}', None), (b"user=a&&=", FORM)):
            response, body = yield self.call("POST", "/api/login", data, headers)
            self.assertEqual(response.code, 400, data)
            self.assertIn("user and password", body["error"])

    @defer.inlineCallbacks
    def test_upload_within_limit(self) -> Any:
        data = bytes(range(200)) * 5  # exactly the limit
        response, body = yield self.call("POST", "/api/upload", data,
                                         {"content-type": ["image/png"],
                                          "x-file-name": ["a.png"]})
        self.assertEqual(response.code, 201)
        self.assertEqual(body, {"bytes": 1000, "sha256": hashlib.sha256(data).hexdigest(),
                                "contentType": "image/png", "name": "a.png"})

    @defer.inlineCallbacks
    def test_upload_over_limit_is_413(self) -> Any:
        response, body = yield self.call("PUT", "/api/upload", b"x" * 1001,
                                         {"x-file-name": ["big.bin"]})
        self.assertEqual(response.code, 413)
        self.assertEqual(body, {"error": "file too large", "bytes": 1001, "limit": 1000,
                                "name": "big.bin"})
