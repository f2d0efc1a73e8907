"""RedisPairStore's per-call path, socket-free: what maybeDeferred and the closures did."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mterelay.protocol.replay import Verdict
from mterelay.store.interface import StoreUnavailable
from mterelay.store.redis import RedisPairStore
from mterelay.store.redisclient import RedisConnection
from mterelay.store.resp import encode_arguments, encode_command

CID = "0123abcd-0123-4abc-8def-0123456789ab"
PID = "pair000000000000001"
GEN = "0123456789abcdef0123456789abcdef"


def store_on_a_string_transport() -> tuple[RedisPairStore, RedisConnection]:
    clock = Clock()
    store = RedisPairStore(clock, "redis://127.0.0.1:1/0", b"k" * 32, clock=clock)
    conn = RedisConnection(clock, 1.0, lambda gone: None)
    conn.makeConnection(StringTransport())
    store._connection = lambda: conn  # type: ignore[method-assign]
    return store, conn


class DispatchTests(SynchronousTestCase):
    def test_accept_answers_its_verdict(self) -> None:
        store, conn = store_on_a_string_transport()
        verdicts: list[Verdict] = []
        store.accept(CID, PID, 5, GEN).addCallback(verdicts.append)
        self.assertTrue(conn.transport.value().startswith(b"*10\r\n$7\r\nEVALSHA\r\n"))
        conn.dataReceived(b":1\r\n")
        self.assertEqual(verdicts, [Verdict.REPLAYED])

    def test_the_pre_encoded_evalsha_is_encode_commands_bytes(self) -> None:
        from mterelay.store import redis

        store, conn = store_on_a_string_transport()
        store.accept(CID, PID, 5, GEN)
        key = store._key(CID, PID)
        args = (5, store._now_ms(), store._max_age_ms(), store.limits.max_messages,
                store._idle_ms(), GEN)
        self.assertEqual(conn.transport.value(),
                         encode_command(("EVALSHA", redis._ACCEPT.sha, 1, key, *args)))
        for args in ((), (b"k", "v", 7, bytearray(b"b"), memoryview(b"m"))):
            self.assertEqual(encode_command(args), b"*%d\r\n" % len(args)
                             + encode_arguments(args))
        with self.assertRaises(TypeError):
            encode_arguments((1.5,))

    def test_noscript_falls_back_to_eval_on_the_same_connection(self) -> None:
        store, conn = store_on_a_string_transport()
        verdicts: list[Verdict] = []
        store.accept(CID, PID, 5, GEN).addCallback(verdicts.append)
        conn.transport.clear()
        conn.dataReceived(b"-NOSCRIPT No matching script.\r\n")
        self.assertTrue(conn.transport.value().startswith(b"*10\r\n$4\r\nEVAL\r\n"))
        self.assertEqual(verdicts, [])
        conn.dataReceived(b":0\r\n")
        self.assertEqual(verdicts, [Verdict.ACCEPTED])

    def test_other_error_replies_are_store_unavailable(self) -> None:
        store, conn = store_on_a_string_transport()
        d = store.accept(CID, PID, 5, GEN)
        conn.dataReceived(b"-ERR something else\r\n")
        self.failureResultOf(d, StoreUnavailable)

    def test_a_call_that_raises_gives_a_failed_deferred(self) -> None:
        store, _ = store_on_a_string_transport()

        def call(conn: RedisConnection, asking: bool) -> None:
            raise ZeroDivisionError("raised, not returned")

        d = store._dispatch("accept", b"key", call)  # type: ignore[arg-type]
        self.failureResultOf(d, ZeroDivisionError)
