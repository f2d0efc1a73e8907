"""Malformed and smuggling-style answers: the lean agent refuses every one.

Each case runs against Twisted's ``Agent`` too; the lean agent must be at
least as strict - every answer Twisted refuses, it refuses (and it refuses
some Twisted lets through, listed in ``TWISTED_ACCEPTS``, which this suite
also checks so the list stays true).  "Refused" means the request's
Deferred failed, or the body ended with something other than
``ResponseDone``/``PotentialDataLoss``; the connection is never reused.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, TimeoutError, inlineCallbacks
from twisted.web.client import ResponseFailed

from mterelay.http.leanclient import BadResponse
from tests.integration.test_leanclient import OK_2, ServerCase, collect

H = b"HTTP/1.1 200 OK\r\n"
CHUNKED = H + b"Transfer-Encoding: chunked\r\n\r\n"

#: name -> the exact bytes of a malformed answer.
CASES: dict[str, bytes] = {
    "duplicate_content_length_same": H + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
    "duplicate_content_length_differs": H + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nhi",
    "content_length_list": H + b"Content-Length: 2, 2\r\n\r\nhi",
    "content_length_list_differs": H + b"Content-Length: 2, 3\r\n\r\nhi",
    "content_length_plus": H + b"Content-Length: +2\r\n\r\nhi",
    "content_length_negative": H + b"Content-Length: -2\r\n\r\nhi",
    "content_length_hex": H + b"Content-Length: 0x2\r\n\r\nhi",
    "content_length_inner_space": H + b"Content-Length: 1 2\r\n\r\nhi",
    "content_length_then_chunked": H + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\nhi\r\n0\r\n\r\n",
    "chunked_then_content_length": H + b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n"
    b"2\r\nhi\r\n0\r\n\r\n",
    "transfer_encoding_gzip": H + b"Transfer-Encoding: gzip\r\n\r\nhi",
    "transfer_encoding_chunked_gzip": H + b"Transfer-Encoding: chunked, gzip\r\n\r\n"
    b"2\r\nhi\r\n0\r\n\r\n",
    "transfer_encoding_twice": H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
    b"\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    "chunk_size_not_hex": CHUNKED + b"zz\r\nhi\r\n0\r\n\r\n",
    "chunk_size_negative": CHUNKED + b"-2\r\nhi\r\n0\r\n\r\n",
    "chunk_size_0x": CHUNKED + b"0x2\r\nhi\r\n0\r\n\r\n",
    "chunk_size_plus": CHUNKED + b"+2\r\nhi\r\n0\r\n\r\n",
    "chunk_size_space": CHUNKED + b"2 \r\nhi\r\n0\r\n\r\n",
    "chunk_size_overflow": CHUNKED + b"ffffffffffffffffff\r\nhi\r\n0\r\n\r\n",
    "chunk_extension_nul": CHUNKED + b"2;a\x00b\r\nhi\r\n0\r\n\r\n",
    "chunk_extension_bare_lf": CHUNKED + b"2;a\nhi\r\n0\r\n\r\n",
    "chunk_data_longer_than_size": CHUNKED + b"2\r\nhiXX\r\n0\r\n\r\n",
    "chunk_size_bare_lf": CHUNKED + b"2\nhi\r\n0\r\n\r\n",
    "obs_fold": H + b"X-A: a\r\n b\r\nContent-Length: 2\r\n\r\nhi",
    "obs_fold_content_length": H + b"Content-Length: 2\r\n 0\r\n\r\nhi",
    "bare_lf_everywhere": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi",
    "bare_lf_in_header": H + b"X-A: a\nContent-Length: 2\r\n\r\nhi",
    "bare_cr_in_header_value": H + b"X-A: a\rb\r\nContent-Length: 2\r\n\r\nhi",
    "nul_in_header_value": H + b"X-A: a\x00b\r\nContent-Length: 2\r\n\r\nhi",
    "space_before_colon": H + b"Content-Length : 2\r\n\r\nhi",
    "header_without_colon": H + b"X-A\r\nContent-Length: 2\r\n\r\nhi",
    "whitespace_before_first_header": H + b" X-A: a\r\nContent-Length: 2\r\n\r\nhi",
    "status_line_garbage": b"HTTQ/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    "status_line_not_http": b"hello\r\n\r\n",
    "status_code_not_digits": b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nhi",
    "status_code_four_digits": b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nhi",
    "status_code_two_digits": b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nhi",
    "version_http_2": b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    "version_http_0_9": b"HTTP/0.9 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    "version_http_1_2": b"HTTP/1.2 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    "version_lowercase": b"http/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    "upgrade_101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade"
    b"\r\n\r\nraw bytes",
    "header_line_too_long": H + b"X-A: " + b"a" * 20000 + b"\r\nContent-Length: 2\r\n\r\nhi",
    "too_many_headers": H + b"".join(b"X-%d: v\r\n" % i for i in range(150))
    + b"Content-Length: 2\r\n\r\nhi",
    "trailer_too_long": CHUNKED + b"2\r\nhi\r\n0\r\nX-T: " + b"t" * 20000 + b"\r\n\r\n",
    "trailer_endless": CHUNKED + b"2\r\nhi\r\n0\r\nX-T: " + b"t" * 300000,
    "head_too_long": H + b"".join(b"X-%d: %b\r\n" % (i, b"v" * 1000) for i in range(80))
    + b"Content-Length: 2\r\n\r\nhi",
}

#: The cases Twisted's Agent (twisted.web._newclient) lets through, as measured by this suite.
TWISTED_ACCEPTS = {
    "duplicate_content_length_same", "content_length_list", "content_length_then_chunked",
    "chunked_then_content_length", "transfer_encoding_twice", "obs_fold", "bare_lf_everywhere",
    "bare_lf_in_header", "bare_cr_in_header_value", "nul_in_header_value",
    "status_line_garbage", "status_code_four_digits", "status_code_two_digits",
    "version_http_2", "version_http_0_9", "version_http_1_2", "version_lowercase",
    "too_many_headers", "head_too_long", "trailer_too_long",
}


#: The cases where Twisted's Agent neither answers nor fails: it waits for more bytes
#: (a 101 is skipped as an informational answer; a huge chunk size is believed).
TWISTED_HANGS = {"upgrade_101", "chunk_size_overflow"}


class _StrictBase(ServerCase):
    kind = "lean"

    @inlineCallbacks
    def outcome(self, answer: bytes, hangs: bool = False) -> Any:
        base = yield self.listen([answer, OK_2])
        agent = self.agent(self.kind)
        pending = collect(agent, b"GET", base.encode() + b"/")
        if hangs:
            pending.addTimeout(2, reactor)
        got = yield pending
        # Whatever happened, the next request must not be answered from the leftovers.
        after = yield collect(agent, b"GET", base.encode() + b"/")
        return got, after


def _lean_case(name: str, answer: bytes) -> Any:
    @inlineCallbacks
    def test(self: _StrictBase) -> Any:
        got, after = yield self.outcome(answer)
        self.assertTrue(got.refused, f"{name}: {got.describe()}")
        failure = got.failure or got.reason
        self.assertTrue(failure.check(ResponseFailed), failure)
        reasons = [r for r in failure.value.reasons if r.check(BadResponse)]
        self.assertTrue(reasons, failure.value.reasons)
        self.assertEqual(after.describe(), "accepted 200 b'hi'")
        self.assertEqual(len(self.server.connections), 2)  # the bad one was never reused
        self.flushLoggedErrors()
    test.__name__ = f"test_{name}"
    return test


def _twisted_case(name: str, answer: bytes) -> Any:
    @inlineCallbacks
    def test(self: _StrictBase) -> Any:
        if name in TWISTED_HANGS:
            try:
                got, _ = yield self.outcome(answer, hangs=True)
            except TimeoutError:
                return  # still waiting for the body after 2 s
            # still waiting for a response after 2 s (cancelled by the timeout)
            failure = got.failure
            self.assertIsNotNone(failure, got.describe())
            reasons = getattr(failure.value, "reasons", [failure])  # type: ignore[union-attr]
            self.assertTrue(any(r.check(CancelledError) for r in reasons), reasons)
            return
        got, _ = yield self.outcome(answer)
        if name in TWISTED_ACCEPTS:
            self.assertFalse(got.refused, f"{name}: Twisted now refuses it: {got.describe()}")
        else:
            self.assertTrue(got.refused, f"{name}: Twisted accepts it: {got.describe()}")
        self.flushLoggedErrors()
    test.__name__ = f"test_{name}"
    return test


class LeanStrictnessTests(_StrictBase):
    """Every malformed answer is refused with a BadResponse, and the connection dropped."""

    locals().update({f"test_{n}": _lean_case(n, a) for n, a in CASES.items()})


class TwistedStrictnessTests(_StrictBase):
    """What Twisted's Agent does with the same bytes (the reference the lean one must meet)."""

    kind = "twisted"
    locals().update({f"test_{n}": _twisted_case(n, a) for n, a in CASES.items()})
