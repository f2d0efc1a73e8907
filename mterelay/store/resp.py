"""RESP2, the Redis wire format: command encoding and an incremental reply parser.

Pure and reactor-free, so the byte-level rules are tested on their own.  The
parser yields complete replies only, in the order the server sent them; the
connection (``redisclient``) matches each to the oldest waiting call.  It is
deliberately strict: anything it does not understand raises
``RespProtocolError``, because a client that guesses where a reply ends is a
client that can hand one caller another caller's answer.

Reply types as Python values:

=======  ========================  ===================================
``+``    simple string             ``str`` (``"OK"``, ``"PONG"``)
``-``    error                     ``RedisReplyError`` (a value, not raised)
``:``    integer                   ``int``
``$``    bulk string               ``bytes``; ``None`` for ``$-1``
``*``    array                     ``list`` (nested); ``None`` for ``*-1``
=======  ========================  ===================================
"""

from __future__ import annotations

from typing import Any

__all__ = ["RedisReplyError", "RespProtocolError", "RespParser", "encode_command",
           "encode_arguments"]

#: Redis's own limit on a bulk string (proto-max-bulk-len default).
MAX_BULK = 512 * 1024 * 1024
#: A reply header line ("$123", "*4", "-ERR ...") longer than this is garbage.
MAX_LINE = 64 * 1024
#: Arrays nested deeper than this are refused (Lua tables can nest, we never do).
MAX_DEPTH = 32


class RedisReplyError(Exception):
    """An error reply (``-ERR ...``, ``-NOSCRIPT ...``) from the server.

    A normal answer to one command; the connection stays usable.
    """


class RespProtocolError(Exception):
    """Bytes that are not RESP2: the stream can no longer be trusted."""


def encode_command(args: tuple) -> bytes:
    """One command as a RESP array of bulk strings.

    Accepts bytes-like, ``str`` (UTF-8) and ``int``; anything else raises
    TypeError before a byte is written, so a bad argument can never leave
    half a command on the wire.
    """
    return b"*%d\r\n" % len(args) + encode_arguments(args)


def encode_arguments(args: tuple) -> bytes:
    """The bulk strings of :func:`encode_command` without the array header.

    Lets a caller send a command whose first arguments it encoded once
    (``b"*%d\r\n" % count + head + encode_arguments(rest)``); same types
    and the same TypeError as :func:`encode_command`.
    """
    parts = []
    for arg in args:
        kind = type(arg)
        if kind is bytes:
            value = arg
        elif kind is int:
            value = b"%d" % arg
        elif kind is str:
            value = arg.encode("utf-8")
        elif isinstance(arg, (bytearray, memoryview)):
            value = bytes(arg)
        elif isinstance(arg, int) and not isinstance(arg, bool):
            value = b"%d" % int(arg)
        else:
            raise TypeError(f"Redis command arguments must be bytes, str or int, "
                            f"not {kind.__name__}")
        parts.append(b"$%d\r\n%b\r\n" % (len(value), value))
    return b"".join(parts)


#: _parse's answer when the reply at the offset is not complete yet.  A
#: sentinel, not an exception: a raised singleton would keep its last
#: traceback (and every frame and connection on it) alive for ever.
_MORE: Any = object()


class RespParser:
    """Turns a byte stream into replies; keeps any partial reply for later."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[Any]:
        """The replies completed by ``data`` (possibly none), oldest first."""
        buffer = self._buffer + data if self._buffer else data
        replies: list[Any] = []
        pos = 0
        end = len(buffer)
        while pos < end:
            parsed = _parse(buffer, pos, 0)
            if parsed is _MORE:
                break
            reply, pos = parsed
            replies.append(reply)
        self._buffer = buffer[pos:]
        return replies

    def pending_bytes(self) -> int:
        """Bytes of a reply not complete yet (tests, diagnostics)."""
        return len(self._buffer)


def _parse(buffer: bytes, pos: int, depth: int) -> Any:
    """(reply, offset after it), or _MORE."""
    eol = buffer.find(b"\r\n", pos)
    if eol < 0:
        if len(buffer) - pos > MAX_LINE:
            raise RespProtocolError("reply header line too long")
        return _MORE
    if eol - pos > MAX_LINE:
        raise RespProtocolError("reply header line too long")
    kind = buffer[pos]
    line = buffer[pos + 1:eol]
    nxt = eol + 2
    if kind == 36:  # $ bulk string
        length = _number(line)
        if length == -1:
            return None, nxt
        if not 0 <= length <= MAX_BULK:
            raise RespProtocolError(f"bad bulk length {length}")
        stop = nxt + length
        if len(buffer) < stop + 2:
            return _MORE
        if buffer[stop:stop + 2] != b"\r\n":
            raise RespProtocolError("bulk string not terminated by CRLF")
        return buffer[nxt:stop], stop + 2
    if kind == 58:  # : integer
        return _number(line), nxt
    if kind == 43:  # + simple string
        return line.decode("utf-8", "replace"), nxt
    if kind == 45:  # - error
        message = line.decode("utf-8", "replace")
        return RedisReplyError(message[4:] if message.startswith("ERR ") else message), nxt
    if kind == 42:  # * array
        count = _number(line)
        if count == -1:
            return None, nxt
        if count < 0:
            raise RespProtocolError(f"bad array length {count}")
        if depth >= MAX_DEPTH:
            raise RespProtocolError("arrays nested too deep")
        items = []
        for _ in range(count):
            parsed = _parse(buffer, nxt, depth + 1)
            if parsed is _MORE:
                return _MORE
            item, nxt = parsed
            items.append(item)
        return items, nxt
    raise RespProtocolError(f"unknown reply type {bytes([kind])!r}")


def _number(line: bytes) -> int:
    # int() accepts "+5", " 5", "5_0"; RESP does not
    if not line or not (line.isdigit() or (line[:1] == b"-" and line[1:].isdigit())):
        raise RespProtocolError(f"bad number in reply: {line[:40]!r}")
    return int(line)
