"""The Redis connection and pool (mterelay.store.redisclient), on a fake clock.

The rules under test: reply n goes to the n-th waiting call and nowhere else;
a timeout, loss, unreadable byte or unsolicited reply poisons the connection
(out of the pool first, every waiting call failed, nothing delivered after);
only ready, unpoisoned connections are handed out; slots reconnect with a
capped backoff; refused credentials stop the pool.  The same rules against a
real redis-server under load are in test_store_redis_stress.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mterelay.store.redisclient import (
    RedisConnection, RedisConnectionError, RedisPool, RedisReplyError, handshake_commands)
from mterelay.store.redisurl import RedisAddress
from mterelay.store.resp import encode_command


class _ReactorClock(Clock):
    """A Clock that runs timers the way the reactor does.

    ``Clock.advance`` also runs calls scheduled by the calls it runs, when
    they are due; the reactor leaves those for its next turn, after it has
    read from its sockets.  The grace turn before a timeout depends on that.
    """

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        for call in [c for c in self.calls if c.getTime() <= self.seconds()]:
            if call in self.calls:  # not cancelled by an earlier one
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)


def _results(d: Deferred) -> list:
    out: list = []
    d.addBoth(out.append)
    return out


class _Connected(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = _ReactorClock()
        self.gone: list[RedisConnection] = []
        self.conn = RedisConnection(self.clock, 1.0, self.gone.append)
        self.transport = StringTransport()
        self.conn.makeConnection(self.transport)

    def call(self, *args) -> list:
        return _results(self.conn.execute_command(*args))


class Replies(_Connected):
    def test_each_reply_to_its_own_call_in_order(self) -> None:
        a, b, c = self.call("GET", "a"), self.call("HMGET", "k", "s", "c"), self.call("PING")
        self.assertEqual(self.transport.value(),
                         encode_command(("GET", "a")) + encode_command(("HMGET", "k", "s", "c"))
                         + encode_command(("PING",)))
        self.conn.dataReceived(b"$1\r\nA\r\n*2\r\n$1\r\ns\r\n$-1\r\n+PONG\r\n")
        self.assertEqual((a, b, c), ([b"A"], [[b"s", None]], ["PONG"]))
        self.assertEqual(self.clock.getDelayedCalls(), [])  # idle: no timer left

    def test_error_reply_fails_only_its_call(self) -> None:
        a, b = self.call("EVALSHA", "x", 0), self.call("PING")
        self.conn.dataReceived(b"-NOSCRIPT No matching script\r\n+PONG\r\n")
        a[0].trap(RedisReplyError)
        self.assertEqual(b, ["PONG"])
        self.assertTrue(self.conn.usable)

    def test_cancelled_call_keeps_its_place(self) -> None:
        d = self.conn.execute_command("GET", "a")
        d.addErrback(lambda f: f.trap(CancelledError))
        b = self.call("GET", "b")
        d.cancel()
        self.conn.dataReceived(b"$1\r\nA\r\n$1\r\nB\r\n")
        self.assertEqual(b, [b"B"])
        self.assertTrue(self.conn.usable)

    def test_not_before_connection_made(self) -> None:
        conn = RedisConnection(self.clock, 1.0, self.gone.append)
        _results(conn.execute_command("PING"))[0].trap(RedisConnectionError)

    def test_bad_argument_writes_nothing(self) -> None:
        self.call("SET", "k", 1.5)[0].trap(TypeError)
        self.assertEqual(self.transport.value(), b"")
        self.assertTrue(self.conn.usable)


class Poisoning(_Connected):
    def assert_poisoned(self, *calls: list) -> None:
        for result in calls:
            self.assertEqual(len(result), 1)
            result[0].trap(RedisConnectionError)
        self.assertEqual(self.gone, [self.conn])
        self.assertFalse(self.conn.usable)
        self.assertTrue(self.transport.disconnected)  # aborted
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # nothing is sent on it any more, and nothing arriving is delivered
        sent = self.transport.value()
        self.call("PING")[0].trap(RedisConnectionError)
        self.assertEqual(self.transport.value(), sent)
        self.conn.dataReceived(b"+PONG\r\n:1\r\n")

    def test_timeout_fails_every_waiting_call_and_nothing_is_delivered_later(self) -> None:
        a, b = self.call("GET", "a"), self.call("GET", "b")
        self.clock.advance(0.999)
        self.assertEqual((a, b), ([], []))
        self.clock.advance(0.001)
        self.assertEqual((a, b), ([], []))  # one reactor turn to read what came
        self.clock.advance(0)
        self.assert_poisoned(a, b)
        self.assertIn("within 1 s", a[0].getErrorMessage())

    def test_each_call_has_its_own_deadline(self) -> None:
        a = self.call("GET", "a")
        self.clock.advance(0.5)
        b = self.call("GET", "b")
        self.clock.advance(0.25)
        self.conn.dataReceived(b"$1\r\nA\r\n")
        self.assertEqual(a, [b"A"])
        self.clock.advance(0.5)  # 1.25 s: b was sent at 0.5
        self.assertEqual(b, [])
        self.clock.advance(0.25)
        self.clock.advance(0)
        self.assert_poisoned(b)

    def test_reply_read_in_the_grace_turn_is_delivered(self) -> None:
        """Our loop was late, not Redis: the answer already there is taken."""
        a, b = self.call("GET", "a"), self.call("GET", "b")
        self.clock.advance(1.0)  # the deadline timer runs before any read
        self.conn.dataReceived(b"$1\r\nA\r\n$1\r\nB\r\n")  # the reactor's read
        self.clock.advance(0)
        self.assertEqual((a, b), ([b"A"], [b"B"]))
        self.assertTrue(self.conn.usable)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_grace_is_one_turn_per_call(self) -> None:
        a, b = self.call("GET", "a"), self.call("GET", "b")
        self.clock.advance(1.0)
        self.conn.dataReceived(b"$1\r\nA\r\n")  # a answered in its grace turn
        self.clock.advance(0)  # b is overdue too: it gets its own turn
        self.assertEqual((a, b), ([b"A"], []))
        self.clock.advance(0)
        self.assert_poisoned(b)

    def test_out_of_the_pool_before_any_callback_runs(self) -> None:
        seen = []
        d = self.conn.execute_command("GET", "a")
        d.addErrback(lambda f: seen.append((list(self.gone), self.conn.usable)))
        self.clock.advance(1)
        self.clock.advance(0)
        self.assertEqual(seen, [([self.conn], False)])

    def test_callback_that_poisons_stops_delivery_of_the_rest(self) -> None:
        a = self.conn.execute_command("GET", "a")
        a.addCallback(lambda _: self.conn.poison("stopped by the caller"))
        b = self.call("GET", "b")
        self.conn.dataReceived(b"$1\r\nA\r\n$1\r\nB\r\n")
        self.assert_poisoned(b)

    def test_unsolicited_reply(self) -> None:
        a = self.call("GET", "a")
        self.conn.dataReceived(b"$1\r\nA\r\n:5\r\n")
        self.assertEqual(a, [b"A"])
        self.assert_poisoned()

    def test_unreadable_bytes(self) -> None:
        a, b = self.call("GET", "a"), self.call("GET", "b")
        self.conn.dataReceived(b"$1\r\nA\r\n?garbage\r\n")
        # the chunk is refused as a whole: nobody gets a reply out of a
        # stream that went bad
        self.assert_poisoned(a, b)

    def test_connection_lost(self) -> None:
        a = self.call("GET", "a")
        lost = _results(self.conn.when_lost())
        self.conn.connectionLost(Failure(ConnectionDone()))
        a[0].trap(RedisConnectionError)
        self.assertIn("lost", a[0].getErrorMessage())
        self.assertEqual(lost, [None])
        self.assertEqual(self.gone, [self.conn])
        self.assertEqual(_results(self.conn.when_lost()), [None])


@implementer(IStreamClientEndpoint)
class _Endpoint:
    """Connection attempts the test completes or fails by hand."""

    def __init__(self) -> None:
        self.attempts: list[tuple] = []

    def connect(self, factory):
        d = Deferred()
        self.attempts.append((factory, d))
        return d

    def accept(self, index: int = -1) -> tuple[RedisConnection, StringTransport]:
        factory, d = self.attempts[index]
        conn = factory.buildProtocol(None)
        transport = StringTransport()
        conn.makeConnection(transport)
        d.callback(conn)
        return conn, transport


class Pool(SynchronousTestCase):
    def make_pool(self, size=1, **address) -> RedisPool:
        self.clock, self.endpoint = _ReactorClock(), _Endpoint()
        self.ready, self.fatal = [], []
        pool = RedisPool(self.clock, self.endpoint, RedisAddress(host="h", **address), size,
                         timeout=1.0, connect_timeout=5.0, max_delay=2.0,
                         on_ready=lambda: self.ready.append(1), on_fatal=self.fatal.append)
        pool.start()
        return pool

    def test_ready_only_after_auth_select_and_ping_answered(self) -> None:
        pool = self.make_pool(username="relay", password="pw", db=3)
        conn, transport = self.endpoint.accept()
        self.assertEqual(transport.value(), b"".join(encode_command(c) for c in (
            ("AUTH", "relay", "pw"), ("SELECT", 3), ("PING",))))
        self.assertIsNone(pool.connection())
        conn.dataReceived(b"+OK\r\n+OK\r\n")
        self.assertIsNone(pool.connection())
        conn.dataReceived(b"+PONG\r\n")
        self.assertIs(pool.connection(), conn)
        self.assertEqual(self.ready, [1])

    def test_handshake_commands(self) -> None:
        self.assertEqual(handshake_commands(RedisAddress(host="h")), [("PING",)])
        self.assertEqual(handshake_commands(RedisAddress(host="h", password="p", db=0)),
                         [("AUTH", "p"), ("SELECT", 0), ("PING",)])

    def test_refused_password_stops_the_pool(self) -> None:
        pool = self.make_pool(password="hunter2")
        conn, _ = self.endpoint.accept()
        conn.dataReceived(b"-WRONGPASS invalid username-password pair\r\n"
                          b"-NOAUTH Authentication required.\r\n")
        self.assertEqual(len(self.fatal), 1)
        self.assertIn("could not auth: WRONGPASS", self.fatal[0])
        self.assertNotIn("hunter2", self.fatal[0])
        self.clock.advance(60)
        self.assertEqual(len(self.endpoint.attempts), 1)  # no retry
        self.assertIsNone(pool.connection())

    def test_missing_password_and_bad_database_are_fatal(self) -> None:
        self.make_pool()
        conn, _ = self.endpoint.accept()
        conn.dataReceived(b"-NOAUTH Authentication required.\r\n")
        self.assertEqual(self.fatal, ["Redis error: the server requires a password (NOAUTH)"])
        self.make_pool(db=99)
        conn, _ = self.endpoint.accept()
        conn.dataReceived(b"-ERR DB index is out of range\r\n+PONG\r\n")
        self.assertEqual(self.fatal,
                         ["Redis error: could not set dbid=99: DB index is out of range"])

    def test_loading_server_is_retried_not_fatal(self) -> None:
        pool = self.make_pool()
        conn, _ = self.endpoint.accept()
        conn.dataReceived(b"-LOADING Redis is loading the dataset in memory\r\n")
        self.assertEqual(self.fatal, [])
        self.assertFalse(conn.usable)
        self.clock.advance(0.2)
        conn, _ = self.endpoint.accept()
        conn.dataReceived(b"+PONG\r\n")
        self.assertIs(pool.connection(), conn)

    def test_full_server_is_retried_even_when_it_answers_auth(self) -> None:
        pool = self.make_pool(password="pw")
        conn, _ = self.endpoint.accept()
        conn.dataReceived(b"-ERR max number of clients reached\r\n")
        conn.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.fatal, [])
        self.clock.advance(0.2)
        conn, _ = self.endpoint.accept()
        conn.dataReceived(b"+OK\r\n+PONG\r\n")
        self.assertIs(pool.connection(), conn)

    def test_poisoned_connection_is_never_handed_out_and_is_replaced(self) -> None:
        pool = self.make_pool(size=2)
        one, _ = self.endpoint.accept(0)
        two, _ = self.endpoint.accept(1)
        one.dataReceived(b"+PONG\r\n")
        two.dataReceived(b"+PONG\r\n")
        self.assertEqual({pool.connection(), pool.connection()}, {one, two})
        one.execute_command("GET", "a").addErrback(lambda f: None)
        self.clock.advance(1.0)
        self.clock.advance(0)  # one times out
        self.assertEqual([pool.connection() for _ in range(4)], [two] * 4)
        self.assertEqual(len(self.endpoint.attempts), 2)
        self.clock.advance(0.11)  # backoff, then a new attempt
        self.assertEqual(len(self.endpoint.attempts), 3)
        three, _ = self.endpoint.accept()
        three.dataReceived(b"+PONG\r\n")
        self.assertEqual({pool.connection(), pool.connection()}, {two, three})

    def test_a_closed_connection_is_logged_once_a_stop_is_not(self) -> None:
        from twisted.logger import globalLogPublisher

        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        pool = self.make_pool(size=2)
        one, _ = self.endpoint.accept(0)
        two, _ = self.endpoint.accept(1)
        one.dataReceived(b"+PONG\r\n")
        two.dataReceived(b"+PONG\r\n")
        one.execute_command("GET", "a").addErrback(lambda f: None)
        self.clock.advance(1.0)
        self.clock.advance(0)
        one.connectionLost(Failure(ConnectionDone()))
        pool.stop()
        warnings = [e for e in events if "Redis connection closed" in e.get("log_format", "")]
        self.assertEqual([e["reason"] for e in warnings], ["no reply from Redis within 1 s"])

    def test_backoff_grows_and_is_capped(self) -> None:
        self.make_pool()
        delays, last = [], 0.0
        for _ in range(8):
            before = len(self.endpoint.attempts)
            self.endpoint.attempts[-1][1].errback(Failure(ConnectionDone()))
            waited = 0.0
            while len(self.endpoint.attempts) == before:
                self.clock.advance(0.01)
                waited += 0.01
            delays.append(round(waited, 2))
            last = waited
        self.assertLess(delays[0], 0.13)
        self.assertTrue(all(a < b or b > 1.7 for a, b in zip(delays, delays[1:])), delays)
        self.assertLessEqual(last, 2.21)

    def test_stop_fails_waiting_calls_and_cancels_attempts(self) -> None:
        pool = self.make_pool(size=2)
        conn, transport = self.endpoint.accept(0)
        conn.dataReceived(b"+PONG\r\n")
        waiting = _results(conn.execute_command("GET", "a"))
        stopped = _results(pool.stop())
        waiting[0].trap(RedisConnectionError)
        self.assertTrue(transport.disconnected)
        self.assertEqual(stopped, [])  # until the transport is really closed
        self.endpoint.attempts[1][1].addErrback(lambda f: f.trap(CancelledError))
        conn.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(stopped, [[None, None]])
        self.clock.advance(60)
        self.assertEqual(len(self.endpoint.attempts), 2)
        self.assertIsNone(pool.connection())


class NoGlobalReactor(SynchronousTestCase):
    def test_importing_the_redis_store_installs_no_reactor(self) -> None:
        """twistd must be free to pick its reactor after the plugin imports."""
        import subprocess
        import sys

        code = ("import sys, mterelay.store.redis; "
                "print('twisted.internet.reactor' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                             text=True, check=True).stdout
        self.assertEqual(out.strip(), "False")
