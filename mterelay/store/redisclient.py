"""A small Redis client on Twisted whose replies cannot reach the wrong caller.

Why not txredisapi (issue 14, finding 2): under a lagging event loop its
per-call reply timeout errbacks *every* waiting call and aborts the
connection, but the connection stays in the pool and keeps parsing the
replies still buffered (txredisapi re-enters the rest of a read after each
bulk reply through ``callLater(0)``).  Those replies found no waiter and were
queued as "pending"; the next command sent on the aborted connection, which
still counted as connected until the next reactor turn, was handed one of
them at once: an ``accept`` got an ``HMGET`` list, a ``get`` an integer, and
two ``accept`` verdicts could swap silently.  Every aborted connection also
stayed referenced by the factory's unused connection queue, with its stale
replies and unsent buffers.

The rules here:

* one connection = one strict FIFO of waiting calls; reply *n* goes to the
  *n*-th call still waiting, nothing else;
* any doubt **poisons** the connection at once: a call not answered within
  its timeout (plus one reactor turn, so that a reply that arrived while the
  loop was busy is read first), a lost connection, bytes that are not RESP, a reply nobody
  asked for.  Poisoning takes it out of the pool before anything else runs,
  fails every waiting call with ``RedisConnectionError``, stops parsing
  (buffered replies are dropped, never delivered) and aborts the transport;
* a poisoned or not yet ready connection refuses new commands, and the pool
  only ever hands out ready, unpoisoned ones;
* each pool slot reconnects by itself with a capped exponential backoff.

Connection set-up sends ``AUTH [user] password``, ``SELECT db`` and ``PING``
pipelined; a connection is ready only once all three answered (so "ready"
means a full round trip, after any TLS handshake and certificate check).
An error reply to AUTH or SELECT (or NOAUTH) is fatal: the pool stops.
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred, FirstError, fail, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mterelay.store.redisurl import RedisAddress
from mterelay.store.resp import RedisReplyError, RespParser, RespProtocolError, encode_command

__all__ = ["RedisConnection", "RedisConnectionError", "RedisError", "RedisPool",
           "RedisReplyError"]

_log = Logger()


class RedisConnectionError(Exception):
    """The call's connection was poisoned (timeout, loss, bad bytes, stop)."""


#: What a call can fail with, besides a bad argument (TypeError).
RedisError = (RedisReplyError, RedisConnectionError)


class RedisConnection(Protocol):
    """One connection; see the module docstring for its rules."""

    def __init__(self, clock: IReactorTime, timeout: float,
                 on_gone: Callable[["RedisConnection"], None]) -> None:
        self._clock = clock
        self.timeout = timeout
        self._on_gone = on_gone
        self._parser: RespParser | None = RespParser()
        #: (deadline, Deferred) per call sent and not answered, oldest first
        self._waiting: deque[tuple[float, Deferred]] = deque()
        self._timer: Any = None
        #: the overdue call given one more reactor turn to be read
        self._grace: Deferred | None = None
        #: set once the connection is up; cleared for good when poisoned
        self.usable = False
        #: why it was poisoned; None while it is (or may become) usable
        self.poisoned: str | None = None
        self._lost: list[Deferred] | None = []

    # -- calls ----------------------------------------------------------------

    def execute_command(self, *args: Any, timeout: float | None = None) -> Deferred:
        """Send one command; fire with its reply, fail with its error reply."""
        if not self.usable:
            return fail(RedisConnectionError(
                self.poisoned or "the Redis connection is not ready"))
        try:
            data = encode_command(args)
        except TypeError:
            return fail()
        return self.execute_encoded(data, timeout)

    def execute_encoded(self, data: bytes, timeout: float | None = None) -> Deferred:
        """:meth:`execute_command` of a command already RESP-encoded (exactly one)."""
        if not self.usable:
            return fail(RedisConnectionError(
                self.poisoned or "the Redis connection is not ready"))
        self.transport.write(data)
        d = Deferred()
        limit = self.timeout if timeout is None else timeout
        self._waiting.append((self._clock.seconds() + limit, d))
        if self._timer is None:
            self._timer = self._clock.callLater(limit, self._check_deadline)
        return d

    def pending_calls(self) -> int:
        """Calls sent and not answered yet (tests, diagnostics)."""
        return len(self._waiting)

    def _check_deadline(self) -> None:
        # One timer per connection, for the oldest waiting call: replies come
        # in order, so a later call cannot be answered before it anyway (a
        # later call with a shorter timeout waits for the head's deadline).
        self._timer = None
        if not self._waiting:
            return
        now = self._clock.seconds()
        deadline, head = self._waiting[0]
        if now < deadline:
            self._timer = self._clock.callLater(deadline - now, self._check_deadline)
        elif self._grace is not head:
            # Overdue, but maybe only because our own loop was busy: timers
            # run before the reactor reads, so the answer may be sitting in
            # the socket.  One more turn lets it read; the timeout measures
            # Redis, not us.
            self._grace = head
            self._timer = self._clock.callLater(0, self._check_deadline)
        else:
            self.poison(f"no reply from Redis within {self.timeout:g} s")

    # -- protocol ---------------------------------------------------------------

    def connectionMade(self) -> None:
        if self.poisoned is None:
            self.usable = True

    def dataReceived(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            return  # poisoned: whatever is still arriving belongs to nobody
        try:
            replies = parser.feed(data)
        except RespProtocolError as error:
            self.poison(f"unreadable reply from Redis ({error})")
            return
        waiting = self._waiting
        for reply in replies:
            if self._parser is None:
                return  # poisoned by a callback below: deliver nothing more
            if not waiting:
                self.poison("a Redis reply nobody asked for")
                return
            _, d = waiting.popleft()
            if not waiting and self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if d.called:  # cancelled by its caller; the reply is its, drop it
                continue
            if type(reply) is RedisReplyError:
                d.errback(reply)
            else:
                d.callback(reply)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        why = reason.getErrorMessage() if reason is not None else "closed"
        self.poison(f"connection to Redis lost ({why})")
        lost, self._lost = self._lost, None
        for d in lost or ():
            d.callback(None)

    def when_lost(self) -> Deferred:
        """Fires once the transport is closed (at once if it already is)."""
        if self._lost is None:
            return succeed(None)
        d = Deferred()
        self._lost.append(d)
        return d

    def poison(self, reason: str) -> None:
        """Never use this connection again; fail every waiting call."""
        if self.poisoned is not None:
            return
        self.poisoned = reason
        self.usable = False
        self._parser = None
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, deque()
        self._on_gone(self)  # out of the pool before any callback runs
        if self.transport is not None and self._lost is not None:
            self.transport.abortConnection()
        for _, d in waiting:
            if not d.called:
                d.errback(RedisConnectionError(reason))


def handshake_commands(address: RedisAddress) -> list[tuple]:
    """AUTH (when a password is set), SELECT (when a db is), then PING."""
    commands: list[tuple] = []
    if address.password is not None:
        if address.username is not None:
            commands.append(("AUTH", address.username, address.password))
        else:
            commands.append(("AUTH", address.password))
    if address.db is not None:
        commands.append(("SELECT", address.db))
    commands.append(("PING",))
    return commands


class _Fatal(Exception):
    """The server refused our credentials or database: retrying cannot help."""


class _Slot:
    """Keeps one pooled connection alive: connect, hand-shake, reconnect."""

    def __init__(self, pool: "RedisPool") -> None:
        self.pool = pool
        self.conn: RedisConnection | None = None
        self._attempt: Deferred | None = None
        self._retry: Any = None
        self._failures = 0
        self._stopped = False

    def start(self) -> None:
        self._retry = None
        if self._stopped:
            return
        pool = self.pool
        factory = Factory.forProtocol(
            lambda: RedisConnection(pool.clock, pool.timeout, self._gone))
        attempt = self._attempt = pool.endpoint.connect(factory)
        attempt.addCallback(self._connected)
        attempt.addErrback(self._failed)

    def _connected(self, conn: RedisConnection) -> Deferred:
        self._attempt = None
        self.conn = conn
        if self._stopped:
            conn.poison("the Redis pool was stopped")
            return succeed(None)
        commands = handshake_commands(self.pool.address)
        replies = [conn.execute_command(*command, timeout=self.pool.connect_timeout)
                   for command in commands]
        d = gatherResults(replies, consumeErrors=True)
        return d.addCallbacks(self._ready, self._refused, (conn,), None, (conn, commands))

    def _ready(self, replies: list, conn: RedisConnection) -> None:
        if replies[-1] != "PONG":
            conn.poison(f"unexpected answer to PING: {replies[-1]!r}")
            return
        if conn.usable:
            self._failures = 0
            self.pool._add(conn)

    def _refused(self, failure: Failure, conn: RedisConnection, commands: list) -> None:
        command = None
        if failure.check(FirstError):
            command = commands[failure.value.index][0]
            failure = failure.value.subFailure
        if failure.check(RedisReplyError):
            why = _refusal(command, str(failure.value), self.pool.address)
            if why is not None:
                self.pool._fatal(why)
        conn.poison(f"Redis connection set-up failed: {failure.getErrorMessage()}")

    def _failed(self, failure: Failure) -> None:
        # the connection attempt itself failed (refused, timed out, cancelled)
        self._attempt = None
        self._schedule()

    def _gone(self, conn: RedisConnection) -> None:
        was_live = self.pool._remove(conn)
        if self.conn is conn:
            self.conn = None
            if was_live and not self._stopped:
                # one line per closed connection, at most pool size per backoff
                _log.warn("Redis connection closed, reconnecting: {reason}",
                          reason=conn.poisoned)
            self._schedule()

    def _schedule(self) -> None:
        if self._stopped or self._retry is not None:
            return
        pool = self.pool
        delay = min(pool.initial_delay * math.e ** min(self._failures, 50), pool.max_delay)
        self._failures += 1
        delay *= random.uniform(0.9, 1.1)
        self._retry = pool.clock.callLater(delay, self.start)

    def stop(self, reason: str) -> Deferred:
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            self._attempt.cancel()
        conn = self.conn
        if conn is None:
            return succeed(None)
        conn.poison(reason)
        return conn.when_lost()


#: Error replies that say "not now" rather than "never" (a server starting,
#: busy, full or failing over), even when they answer AUTH or SELECT.
_TRANSIENT = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN",
              "max number of clients")


def _refusal(command: str | None, message: str, address: RedisAddress) -> str | None:
    """The fatal error for a set-up command's error reply; None: worth a retry.

    Redis never repeats the password in its error messages.
    """
    if message.startswith(_TRANSIENT):
        return None
    if message.startswith("NOAUTH"):
        return "Redis error: the server requires a password (NOAUTH)"
    if command == "AUTH":
        return f"Redis error: could not auth: {message}"
    if command == "SELECT":
        return f"Redis error: could not set dbid={address.db}: {message}"
    return None  # e.g. LOADING on PING: the server is starting


class RedisPool:
    """``size`` connections kept open to one server; only ready ones are handed out.

    ``on_ready`` runs each time a connection becomes ready, ``on_fatal(why)``
    once when the server refuses the credentials or database (the pool then
    stops reconnecting).
    """

    def __init__(self, clock: IReactorTime, endpoint: IStreamClientEndpoint,
                 address: RedisAddress, size: int, *, timeout: float,
                 connect_timeout: float, max_delay: float,
                 on_ready: Callable[[], None] = lambda: None,
                 on_fatal: Callable[[str], None] = lambda why: None) -> None:
        self.clock = clock
        self.endpoint = endpoint
        self.address = address
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_delay = max_delay
        self.initial_delay = min(0.1, max_delay)
        self._on_ready = on_ready
        self._on_fatal = on_fatal
        #: ready, unpoisoned connections, in the order they became ready
        self.live: list[RedisConnection] = []
        self._slots = [_Slot(self) for _ in range(size)]
        self.fatal: str | None = None
        self._next = 0

    def start(self) -> None:
        for slot in self._slots:
            slot.start()

    def connection(self) -> RedisConnection | None:
        """A ready connection, round robin; None when there is none."""
        live = self.live
        if not live:
            return None
        self._next = (self._next + 1) % len(live)
        return live[self._next]

    def stop(self, reason: str = "the Redis pool was stopped") -> Deferred:
        """Close everything; waiting calls fail; fires once all are closed."""
        return gatherResults([slot.stop(reason) for slot in self._slots])

    def _add(self, conn: RedisConnection) -> None:
        if self.fatal is None and conn not in self.live:
            self.live.append(conn)
            self._on_ready()

    def _remove(self, conn: RedisConnection) -> bool:
        if conn in self.live:
            self.live.remove(conn)
            return True
        return False

    def _fatal(self, why: str) -> None:
        if self.fatal is not None:
            return
        self.fatal = why
        # not inside the failing connection's own callbacks
        self.clock.callLater(0, self.stop, "the Redis server refused the connection")
        self._on_fatal(why)
