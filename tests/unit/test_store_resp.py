"""RESP2 encoding and parsing (mterelay.store.resp), byte by byte."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mterelay.store.resp import (
    MAX_DEPTH, RedisReplyError, RespParser, RespProtocolError, encode_command)


class Encoding(SynchronousTestCase):
    def test_bulk_strings(self) -> None:
        self.assertEqual(
            encode_command(("EVALSHA", "a" * 40, 1, b"mte:pair:c:p", -1, 2**70)),
            b"*6\r\n$7\r\nEVALSHA\r\n$40\r\n" + b"a" * 40 + b"\r\n$1\r\n1\r\n"
            b"$12\r\nmte:pair:c:p\r\n$2\r\n-1\r\n$22\r\n1180591620717411303424\r\n")

    def test_binary_and_unicode(self) -> None:
        self.assertEqual(encode_command(("SET", "k\u00e9y", b"\r\n\x00")),
                         b"*3\r\n$3\r\nSET\r\n$4\r\nk\xc3\xa9y\r\n$3\r\n\r\n\x00\r\n")
        self.assertEqual(encode_command((bytearray(b"ab"), memoryview(b"c"), b"")),
                         b"*3\r\n$2\r\nab\r\n$1\r\nc\r\n$0\r\n\r\n")

    def test_refuses_what_it_cannot_encode_exactly(self) -> None:
        for bad in (1.5, True, None, object(), ["x"]):
            self.assertRaises(TypeError, encode_command, ("SET", "k", bad))


class Parsing(SynchronousTestCase):
    STREAM = (b"+OK\r\n-ERR unknown command\r\n-NOSCRIPT No matching script\r\n"
              b":42\r\n:-7\r\n$5\r\nhe\r\nl\r\n$0\r\n\r\n$-1\r\n*-1\r\n*0\r\n"
              b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n$-1\r\n-ERR inner\r\n")

    def check(self, replies: list) -> None:
        self.assertEqual(len(replies), 11)
        ok, err, noscript, forty_two, minus, bulk, empty, nil, nil_array, empty_array, nested = \
            replies
        self.assertEqual(ok, "OK")
        self.assertIsInstance(err, RedisReplyError)
        self.assertEqual(str(err), "unknown command")
        self.assertEqual(str(noscript), "NOSCRIPT No matching script")
        self.assertEqual((forty_two, minus), (42, -7))
        self.assertEqual((bulk, empty, nil, nil_array, empty_array),
                         (b"he\r\nl", b"", None, None, []))
        self.assertEqual(nested[:2], [b"a", [1, None]])
        self.assertEqual(str(nested[2]), "inner")

    def test_all_at_once(self) -> None:
        self.check(RespParser().feed(self.STREAM))

    def test_one_byte_at_a_time(self) -> None:
        parser, replies = RespParser(), []
        for i in range(len(self.STREAM)):
            replies += parser.feed(self.STREAM[i:i + 1])
        self.check(replies)
        self.assertEqual(parser.pending_bytes(), 0)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(0, len(STREAM)), max_size=8))
    def test_any_split(self, cuts: list[int]) -> None:
        parser, replies, last = RespParser(), [], 0
        for cut in sorted(cuts) + [len(self.STREAM)]:
            replies += parser.feed(self.STREAM[last:cut])
            last = cut
        self.check(replies)

    def test_partial_reply_is_kept_not_delivered(self) -> None:
        parser = RespParser()
        self.assertEqual(parser.feed(b"*2\r\n$3\r\nabc\r\n$2\r\nd"), [])
        self.assertEqual(parser.feed(b"e\r\n:1"), [[b"abc", b"de"]])
        self.assertEqual(parser.feed(b"\r\n"), [1])

    def test_garbage_is_an_error_not_a_guess(self) -> None:
        for bad in (b"?x\r\n", b"$abc\r\n", b"$3\r\nabcd\r\n", b":1.5\r\n", b":+1\r\n",
                    b"*-2\r\n", b"$-5\r\n", b": 1\r\n", b":\r\n", b"x" * 70000,
                    b"*1\r\n" * (MAX_DEPTH + 1) + b":1\r\n"):
            with self.assertRaises(RespProtocolError, msg=bad[:20]):
                RespParser().feed(bad)
