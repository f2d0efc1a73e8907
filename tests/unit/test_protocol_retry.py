"""The resend rule of spec 10.2 (protocol/retry.py) as a table, and the pure helpers both
clients share: relay-error parsing, Retry-After, the handshake refusal text, split_url."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mterelay.protocol.errors import (DecodeFailed, InvalidClientId, RepairRequired,
                                      StateNotFound, UnsupportedVersion)
from mterelay.protocol.retry import (IDEMPOTENT_METHODS, RETRY_REPAIR, RETRY_REVALIDATE,
                                     assumed_upstream_reached, may_resend, parse_relay_error,
                                     refusal_summary, retry_after_seconds)
from mterelay.protocol.urls import split_url

#: (code, upstream_reached, method, replayable, streamed) -> may resend
TABLE = [
    # nothing reached the upstream: any method, once
    ((562, "no", "POST", True, True), True),
    ((559, "no", "PATCH", True, False), True),
    ((560, "no", "POST", True, False), True),
    ((563, "no", "POST", True, True), True),
    ((564, "no", "POST", True, False), True),
    ((566, "no", "POST", True, False), True),
    # it may have: only idempotent methods
    ((562, "maybe", "POST", True, True), False),
    ((562, "maybe", "PATCH", True, True), False),
    ((562, "maybe", "PUT", True, True), True),
    ((562, "maybe", "DELETE", True, True), True),
    ((559, "maybe", "GET", True, False), True),
    ((560, "maybe", "HEAD", True, False), True),
    ((564, "maybe", "OPTIONS", True, False), True),
    ((563, "maybe", "TRACE", True, False), True),
    ((566, "maybe", "POST", True, False), False),
    # the relay did not say (before spec 10.1): only a streamed 562 may have reached it
    ((562, None, "POST", True, True), False),
    ((562, None, "PUT", True, True), True),
    ((562, None, "POST", True, False), True),
    ((560, None, "POST", True, True), True),
    ((559, None, "POST", True, True), True),
    ((566, None, "POST", True, True), True),
    # a body that cannot be produced again is never resent, idempotent or not
    ((562, "no", "POST", False, True), False),
    ((559, "no", "GET", False, False), False),
    ((566, "no", "PUT", False, False), False),
    # codes a new pair or a new id does not cure
    ((561, "no", "GET", True, False), False),
    ((565, "no", "GET", True, False), False),
    ((567, "no", "GET", True, False), False),
    ((568, "no", "GET", True, False), False),
    ((569, "no", "GET", True, False), False),
    ((500, "no", "GET", True, False), False),
    ((503, "no", "GET", True, False), False),
    ((429, "no", "GET", True, False), False),
]


class MayResendTests(SynchronousTestCase):
    def test_table(self) -> None:
        for arguments, expected in TABLE:
            self.assertIs(may_resend(*arguments), expected, arguments)

    def test_recoverable_codes(self) -> None:
        self.assertEqual(RETRY_REPAIR, {559, 560, 562, 563, 564})
        self.assertEqual(RETRY_REVALIDATE, 566)

    def test_idempotent_methods_are_rfc_9110s(self) -> None:
        self.assertEqual(IDEMPOTENT_METHODS, {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
        for method in ("POST", "PATCH", "CONNECT", "get"):
            self.assertFalse(may_resend(562, "maybe", method, True, True), method)

    def test_assumed_upstream_reached(self) -> None:
        self.assertEqual(assumed_upstream_reached(562, True), "maybe")
        self.assertEqual(assumed_upstream_reached(562, False), "no")
        for code in (559, 560, 563, 564, 566):
            self.assertEqual(assumed_upstream_reached(code, True), "no", code)


class ParseRelayErrorTests(SynchronousTestCase):
    def test_typed_by_code_with_the_reason(self) -> None:
        error = parse_relay_error(560, b'{"error":"State not found.","code":560,"reason":"expired"}')
        self.assertIsInstance(error, StateNotFound)
        self.assertEqual(error.info, "expired")
        self.assertTrue(error.remote)
        self.assertIsInstance(parse_relay_error(559, b"{}"), RepairRequired)
        self.assertIsInstance(parse_relay_error(562, b"{}"), DecodeFailed)
        self.assertIsInstance(parse_relay_error(566, b"{}"), InvalidClientId)

    def test_legacy_info_and_a_body_that_is_not_json(self) -> None:
        self.assertEqual(parse_relay_error(567, b'{"info":"v2"}').info, "v2")
        for body in (b"<html>", b"\xff\xfe", b"[1]", b'"text"', b""):
            error = parse_relay_error(567, body)
            self.assertIsInstance(error, UnsupportedVersion, body)
            self.assertIsNone(error.upstream_reached, body)

    def test_reason_capped(self) -> None:
        error = parse_relay_error(560, b'{"reason":"' + b"x" * 1000 + b'"}')
        self.assertEqual(len(error.info), 300)

    def test_upstream_reached_from_the_body_then_the_header(self) -> None:
        self.assertEqual(parse_relay_error(562, b'{"upstreamReached":"maybe"}', ["no"])
                         .upstream_reached, "maybe")
        self.assertEqual(parse_relay_error(562, b"{}", [" maybe "]).upstream_reached, "maybe")
        self.assertEqual(parse_relay_error(562, b'{"upstreamReached":"yes"}', ["no"])
                         .upstream_reached, "no")
        self.assertEqual(parse_relay_error(562, b"not json", ["no"]).upstream_reached, "no")

    def test_upstream_reached_unknown(self) -> None:
        for body, header in ((b"{}", None), (b"{}", []), (b"{}", ["no", "no"]),
                             (b"{}", ["yes"]), (b'{"upstreamReached":true}', None)):
            self.assertIsNone(parse_relay_error(562, body, header).upstream_reached,
                              (body, header))


class RefusalSummaryTests(SynchronousTestCase):
    def test_json_fields_in_order(self) -> None:
        self.assertEqual(refusal_summary(b'{"field":"$","error":"Bad","reason":"why","code":400}'),
                         "Bad; why; $")
        self.assertEqual(refusal_summary(b"[1]"), "")
        self.assertEqual(refusal_summary(b"{}"), "")

    def test_not_json_is_its_start(self) -> None:
        self.assertEqual(refusal_summary(b"<html>" + b"x" * 500), ("<html>" + "x" * 500)[:200])
        self.assertEqual(refusal_summary(b"\xff"), "\ufffd")


class RetryAfterTests(SynchronousTestCase):
    def test_delta_seconds_only_capped(self) -> None:
        self.assertEqual(retry_after_seconds([b"7"]), 7.0)
        self.assertEqual(retry_after_seconds([b" 2 "]), 2.0)
        self.assertEqual(retry_after_seconds(None), 1.0)
        self.assertEqual(retry_after_seconds([]), 1.0)
        self.assertEqual(retry_after_seconds([b"0"]), 1.0)
        self.assertEqual(retry_after_seconds([b"-3"]), 1.0)
        self.assertEqual(retry_after_seconds([b"Wed, 21 Oct 2015 07:28:00 GMT"]), 1.0)
        self.assertEqual(retry_after_seconds([b"99999999"]), 3600.0)
        self.assertEqual(retry_after_seconds([b"x"], default=5.0), 5.0)


class SplitUrlTests(SynchronousTestCase):
    def test_origin_names_its_port(self) -> None:
        self.assertEqual(split_url("https://Relay.example/a?b=1#frag"),
                         ("https://relay.example:443", "/a?b=1"))
        self.assertEqual(split_url(b"HTTP://h"), ("http://h:80", "/"))
        self.assertEqual(split_url("http://h:8080/x"), ("http://h:8080", "/x"))
        self.assertEqual(split_url("http://[::1]:9/x"), ("http://[::1]:9", "/x"))

    def test_target_percent_encoded(self) -> None:
        self.assertEqual(split_url("http://h/a b/\u00e9?q=x y")[1], "/a%20b/%C3%A9?q=x%20y")
        self.assertEqual(split_url("http://h/a%2Fb;c=d,e@f")[1], "/a%2Fb;c=d,e@f")

    def test_refused(self) -> None:
        for url in ("ftp://h/x", "h/x", "http:///x", "https://user:pw@h/", "https://user@h/"):
            self.assertRaises(ValueError, split_url, url)
