"""The one failure describer and the one timeout of outgoing requests (mterelay.http)."""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import RequestGenerationFailed, ResponseFailed

from mterelay.http.failures import describe_failure, innermost, wrapped
from mterelay.http.timeouts import with_timeout
from mterelay.protocol.errors import EncodeFailed


class DescribeTests(TestCase):
    def test_names_the_first_cause_inside_a_wrapper(self) -> None:
        error = ResponseFailed([Failure(ConnectionRefusedError("nope"))])
        self.assertTrue(describe_failure(error).startswith("ConnectionRefusedError: "))
        self.assertEqual(describe_failure(Failure(error)), describe_failure(error))

    def test_plain_error_and_limit(self) -> None:
        self.assertEqual(describe_failure(ValueError("x" * 500), 20), "ValueError: xxxxxxxx")

    def test_innermost_prefers_the_relay_error(self) -> None:
        sealed = EncodeFailed("could not seal")
        nested = ResponseFailed([Failure(RequestGenerationFailed(
            [Failure(ValueError("first")), Failure(sealed)]))])
        self.assertIs(innermost(nested, prefer=EncodeFailed), sealed)
        self.assertIsInstance(innermost(nested), ValueError)
        self.assertIsNone(wrapped(nested, EncodeFailed), "only one level deep")


class _Late(Exception):
    pass


class TimeoutTests(TestCase):
    def test_any_failure_after_the_timer_becomes_the_timeout(self) -> None:
        clock = task.Clock()
        d: defer.Deferred[None] = defer.Deferred()
        timed = with_timeout(d, 5, clock, lambda: _Late("5 s"))
        clock.advance(5)
        self.failureResultOf(timed, _Late)

    def test_an_answer_in_time_cancels_the_timer(self) -> None:
        clock = task.Clock()
        d: defer.Deferred[str] = defer.Deferred()
        timed = with_timeout(d, 5, clock, lambda: _Late())
        d.callback("ok")
        self.assertEqual(self.successResultOf(timed), "ok")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_an_early_failure_is_kept(self) -> None:
        clock = task.Clock()
        d: defer.Deferred[None] = defer.Deferred()
        timed = with_timeout(d, 5, clock, lambda: _Late())
        d.errback(ConnectionRefusedError())
        self.failureResultOf(timed, ConnectionRefusedError)
