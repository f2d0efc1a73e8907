"""The shared pair store: Redis, for replicas behind a balancer.

One hash per pair at ``{prefix}pair:{client_id}:{pair_id}``:

====  ===========================================================
s     pair secrets, sealed at rest (``atrest.SecretSealer``)
c     creation time, ms since the epoch (caller's reactor clock)
n     accepted message count
t     highest accepted sequence number, -1 before the first
W     window width (fixed at creation, so a config change cannot
      reinterpret an existing bitmap)
w     window ring, W/8 bytes, layout of ``ReplayWindow.bitmap()``
g     generation, ``pair_generation`` of the secrets (32 hex digits)
b     the Redis server's run_id when the pair was created: a pair from
      before a restart (or failover) is void, whatever a reload restored
====  ===========================================================

The key's PEXPIRE is the idle TTL, refreshed by every accepted message.
``accept`` is one Lua script, hence atomic across any number of replicas and
connections, and checks the generation before anything else; ``create`` is
another (create-if-absent: write + expire only when the key does not exist);
``get`` is one HMGET; ``delete`` with a generation is a third script.
Every call is one round trip (two on the first use of a script after a
Redis restart: EVALSHA answers NOSCRIPT, EVAL follows).

Failure policy: calls never wait for a connection.  With no live connection
they fail at once with StoreUnavailable; a command in flight fails when its
connection drops or after ``timeout`` seconds.  A timeout, a lost connection
or an unreadable reply poisons that connection (``redisclient``): it leaves
the pool at once, every call waiting on it fails with StoreUnavailable and no
later reply on it reaches anyone, so a reply can never be read by another
command.  The pool reconnects by itself with a short capped backoff.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Callable

from twisted.internet import ssl
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTCP, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mterelay.protocol.replay import Verdict, validate_seq
from mterelay.store.atrest import AtRestError, SecretSealer
from mterelay.store.interface import (
    IPairStore, PairExists, StoreLimits, StoreUnavailable, pair_generation,
    validate_generation, validate_ids)
from mterelay.store.redisclient import (
    RedisConnection, RedisError, RedisPool, RedisReplyError)
from mterelay.store.redisurl import RedisAddress, parse_redis_url
from mterelay.store.resp import encode_arguments

__all__ = ["ACCEPT_SCRIPT", "CREATE_SCRIPT", "DELETE_SCRIPT", "RedisPairStore"]

_log = Logger()

#: Verdict codes returned by ACCEPT_SCRIPT, by index.
_VERDICTS = (Verdict.ACCEPTED, Verdict.REPLAYED, Verdict.TOO_OLD,
             Verdict.UNKNOWN, Verdict.EXHAUSTED, Verdict.STALE)

# Same semantics as mterelay.protocol.replay.ReplayWindow.accept, plus the
# pair's lifetime limits.  Numbers are Lua doubles: exact for seq < 2**53,
# and seq % W is exact because W is a power of two.  Numbers are written back
# with %.0f because tostring() would round them to 14 digits.
ACCEPT_SCRIPT = r"""
-- KEYS[1] pair key
-- ARGV: seq, now_ms, max_age_ms, max_messages, idle_ttl_ms, generation
-- returns 0 ACCEPTED, 1 REPLAYED, 2 TOO_OLD, 3 UNKNOWN, 4 EXHAUSTED, 5 STALE
local key = KEYS[1]
local seq = tonumber(ARGV[1])
local st = redis.call('HMGET', key, 'c', 'n', 't', 'W', 'w', 'g', 'b')
local created, count, top, width, bm =
  tonumber(st[1]), tonumber(st[2]), tonumber(st[3]), tonumber(st[4]), st[5]
if not created then return 3 end
-- Generation first, before any write or delete: a message opened under
-- keys this id had before must not consume, reset or remove today's pair.
-- A pair without one (made before generations existed) is unusable.
if not st[6] then return 3 end
if st[6] ~= ARGV[6] then return 5 end
-- A pair from before this server started may carry an older window (an
-- RDB/AOF reload after a crash, a promoted replica): void.
if st[7] ~= SERVER_BOOT() then
  redis.call('DEL', key)
  return 3
end
if not (count and top and width and bm) or #bm * 8 ~= width then
  -- corrupt state: forget the pair (the client re-pairs with new keys)
  redis.call('DEL', key)
  return 3
end
if tonumber(ARGV[2]) - created >= tonumber(ARGV[3])
    or count >= tonumber(ARGV[4]) then
  redis.call('DEL', key)
  return 4
end
local pos = seq % width
local byte_i = math.floor(pos / 8) + 1
local bitv = 2 ^ (pos % 8)
if top >= 0 and seq <= top then
  if seq <= top - width then return 2 end
  local b = string.byte(bm, byte_i)
  if bit.band(b, bitv) ~= 0 then return 1 end
  bm = string.sub(bm, 1, byte_i - 1) .. string.char(bit.bor(b, bitv))
    .. string.sub(bm, byte_i + 1)
elseif top < 0 or seq - top >= width then
  bm = string.rep('\0', byte_i - 1) .. string.char(bitv)
    .. string.rep('\0', width / 8 - byte_i)
  top = seq
else
  local t = {string.byte(bm, 1, -1)}
  for i = top + 1, seq - 1 do
    local p = i % width
    local j = math.floor(p / 8) + 1
    t[j] = bit.band(t[j], 255 - 2 ^ (p % 8))
  end
  t[byte_i] = bit.bor(t[byte_i], bitv)
  bm = string.char(unpack(t))
  top = seq
end
redis.call('HSET', key, 't', string.format('%.0f', top),
           'n', string.format('%.0f', count + 1), 'w', bm)
redis.call('PEXPIRE', key, ARGV[5])
return 0
"""

CREATE_SCRIPT = r"""
-- KEYS[1] pair key; ARGV: sealed secrets, now_ms, width, idle_ttl_ms, generation
-- returns 1 created, 0 the key exists (left untouched)
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 's', ARGV[1], 'c', ARGV[2], 'n', '0', 't', '-1',
           'W', ARGV[3], 'w', string.rep('\0', tonumber(ARGV[3]) / 8),
           'g', ARGV[5], 'b', SERVER_BOOT())
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

DELETE_SCRIPT = r"""
-- KEYS[1] pair key; ARGV: generation.  Deletes only that generation.
if redis.call('HGET', KEYS[1], 'g') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


# The identity of the running Redis process: INFO's run_id changes with every
# start (and differs on a promoted replica), unlike anything stored in the
# dataset, which a reload brings back.  INFO costs about a microsecond of
# server time; where it is refused (an ACL without @dangerous, a service
# hiding run_id) this is '' and restart detection is off (docs/protocol.md 9.3).
_SERVER_BOOT = r"""
local function SERVER_BOOT()
  local info = redis.pcall('INFO', 'server')
  if type(info) ~= 'string' then return '' end
  return string.match(info, 'run_id:(%x+)') or ''
end
"""


class _Script:
    __slots__ = ("source", "sha", "evalsha_head")

    def __init__(self, source: str) -> None:
        if "SERVER_BOOT()" in source:
            source = _SERVER_BOOT + source
        self.source = source.encode("utf-8")
        self.sha = hashlib.sha1(self.source).hexdigest()
        #: ``EVALSHA <sha> 1`` as RESP bulk strings, encoded once (every accept sends it).
        self.evalsha_head = encode_arguments(("EVALSHA", self.sha, 1))


_ACCEPT = _Script(ACCEPT_SCRIPT)
_CREATE = _Script(CREATE_SCRIPT)
_DELETE = _Script(DELETE_SCRIPT)


@implementer(IPairStore)
class RedisPairStore:
    """``IPairStore`` on Redis; see the module docstring for layout and policy.

    ``timeout`` bounds every command; ``connect_timeout`` bounds one
    connection attempt and how long ``start()`` waits; ``reconnect_max_delay``
    caps the backoff between attempts, i.e. how long after Redis comes back
    the store may still answer StoreUnavailable.  ``clock`` (default: the
    reactor) dates creation and max age; idle expiry is Redis's own PEXPIRE.
    Replicas' clocks should agree to well within ``max_age``.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        url: str,
        state_secret: bytes,
        limits: StoreLimits = StoreLimits(),
        key_prefix: str = "mterelay:",
        *,
        pool_size: int = 4,
        timeout: float = 1.0,
        connect_timeout: float = 5.0,
        reconnect_max_delay: float = 2.0,
        clock: IReactorTime | None = None,
        previous_state_secrets: Sequence[bytes] = (),
    ) -> None:
        if not isinstance(key_prefix, str) or any(c.isspace() for c in key_prefix):
            raise ValueError("the Redis key prefix must be a string without spaces")
        if not isinstance(pool_size, int) or not 1 <= pool_size <= 256:
            raise ValueError("the Redis pool size must be 1..256")
        self._reactor = reactor
        self._clock = reactor if clock is None else clock
        self.address = parse_redis_url(url)
        self._sealer = SecretSealer(state_secret, previous_state_secrets)
        self.limits = limits
        self.key_prefix = key_prefix
        self._pool_size = pool_size
        self._timeout = float(timeout)
        self._connect_timeout = float(connect_timeout)
        self._max_delay = float(reconnect_max_delay)
        self._pool: RedisPool | None = None
        self._fatal: str | None = None
        self._waiters: list[Deferred] = []

    # -- lifecycle --------------------------------------------------------

    def start(self) -> Deferred:
        if self._pool is None:
            self._fatal = None
            pool = RedisPool(
                self._reactor, self._endpoint(), self.address, self._pool_size,
                timeout=self._timeout, connect_timeout=self._connect_timeout,
                max_delay=self._max_delay,
                # a stopped pool's late news must not touch a restarted store
                on_ready=lambda: self._ready() if self._pool is pool else None,
                on_fatal=lambda why: self._failed(why) if self._pool is pool else None)
            self._pool = pool
            pool.start()
        if self._fatal is not None:
            return fail(StoreUnavailable(self._fatal))
        if self._live_connections():
            return succeed(None)
        waiter = Deferred()
        self._waiters.append(waiter)

        def timed_out(result: Any, timeout: float) -> None:
            raise StoreUnavailable(
                f"Redis at {self.address.redacted()} not reachable within "
                f"{timeout:g} s; still trying")

        return waiter.addTimeout(self._connect_timeout, self._reactor, timed_out)

    def stop(self) -> Deferred:
        pool, self._pool = self._pool, None
        self._fire_waiters(StoreUnavailable("the pair store was stopped"))
        if pool is None:
            return succeed(None)
        return pool.stop("the pair store was stopped").addCallback(lambda _: None)

    def ping(self) -> Deferred:
        try:
            conn = self._connection()
        except StoreUnavailable:
            return succeed(False)
        d = maybeDeferred(conn.execute_command, "PING")
        d.addCallbacks(lambda reply: reply == "PONG", lambda failure: False)
        return d

    # -- pairs --------------------------------------------------------------

    def create(self, client_id: str, pair_id: str, secrets: bytes) -> Deferred:
        try:
            key = self._key(client_id, pair_id)
            if not isinstance(secrets, (bytes, bytearray, memoryview)):
                raise ValueError("pair secrets must be bytes")
            sealed = self._sealer.seal(bytes(secrets), key)
            args = (sealed, self._now_ms(), self.limits.window, self._idle_ms(),
                    pair_generation(secrets))
        except ValueError:
            return fail()
        d = self._run_script("create", _CREATE, key, *args)
        return d.addCallback(_created, pair_id)

    def get(self, client_id: str, pair_id: str) -> Deferred:
        try:
            key = self._key(client_id, pair_id)
        except ValueError:
            return fail()
        d = self._run("get", key, "HMGET", key, "s", "c")
        return d.addCallback(self._opened, key, pair_id)

    def accept(self, client_id: str, pair_id: str, seq: int, generation: str) -> Deferred:
        try:
            key = self._key(client_id, pair_id)
            validate_seq(seq)
            validate_generation(generation)
        except ValueError:
            return fail()
        args = (seq, self._now_ms(), self._max_age_ms(),
                self.limits.max_messages, self._idle_ms(), generation)
        d = self._run_script("accept", _ACCEPT, key, *args)
        return d.addCallback(_verdict)

    def delete(self, client_id: str, pair_id: str, generation: str | None = None) -> Deferred:
        try:
            key = self._key(client_id, pair_id)
            if generation is not None:
                validate_generation(generation)
        except ValueError:
            return fail()
        if generation is None:
            d = self._run("delete", key, "DEL", key)
        else:
            d = self._run_script("delete", _DELETE, key, generation)
        return d.addCallback(lambda _: None)

    def key_name(self, client_id: str, pair_id: str) -> str:
        """The Redis key of a pair (operations, tests)."""
        return self._key(client_id, pair_id).decode("utf-8")

    # -- internals ----------------------------------------------------------

    def _key(self, client_id: str, pair_id: str) -> bytes:
        validate_ids(client_id, pair_id)
        return f"{self.key_prefix}pair:{client_id}:{pair_id}".encode("utf-8")

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _max_age_ms(self) -> int:
        return round(self.limits.max_age * 1000)

    def _idle_ms(self) -> int:
        return max(1, round(self.limits.idle_ttl * 1000))

    def _opened(self, reply: list, key: bytes, pair_id: str) -> bytes | None:
        sealed, created = reply
        if sealed is None or created is None:
            return None
        if self._now_ms() - int(created) >= self._max_age_ms():
            return None
        try:
            return self._sealer.open(sealed, key)
        except AtRestError:
            # Wrong STATE_SECRET (rotated?) or tampering: treat as unknown so
            # the client re-pairs; never log the blob.
            _log.warn("pair {pair_id}: stored secrets failed to open; "
                      "treating the pair as unknown", pair_id=pair_id)
            return None

    def _endpoint(self, address: RedisAddress | None = None) -> IStreamClientEndpoint:
        """TCP (or TLS, verified against ``address.host``) to one server."""
        if address is None:
            address = self.address
        endpoint = HostnameEndpoint(self._reactor, address.host, address.port,
                                    timeout=self._connect_timeout)
        if not address.tls:
            return endpoint
        if not address.verify:
            _log.warn("rediss:// with ssl_cert_reqs=none: the Redis server's "
                      "certificate is NOT verified")
            creator = ssl.CertificateOptions()
        else:
            trust = None
            if address.ca_certs is not None:
                trust = _load_trust_root(address.ca_certs)
            creator = ssl.optionsForClientTLS(address.host, trustRoot=trust)
        return wrapClientTLS(creator, endpoint)

    def _live_connections(self) -> list[RedisConnection]:
        pool = self._pool
        return [] if pool is None else list(pool.live)

    def _connection(self) -> RedisConnection:
        """A ready, unpoisoned connection, round robin; never waits for one."""
        if self._fatal is not None:
            raise StoreUnavailable(self._fatal)
        if self._pool is None:
            raise StoreUnavailable("the pair store is not started")
        conn = self._pool.connection()
        if conn is None:
            raise StoreUnavailable(
                f"no connection to Redis at {self.address.redacted()}")
        return conn

    def _run(self, op: str, key: bytes, *command: Any) -> Deferred:
        """One command about ``key`` (its only key); StoreUnavailable on any Redis error."""
        def call(conn: RedisConnection, asking: bool) -> Deferred:
            if asking:
                _asking(conn)
            return conn.execute_command(*command)

        return self._dispatch(op, key, call)

    def _run_script(self, op: str, script: _Script, key: bytes, *args: Any) -> Deferred:
        def call(conn: RedisConnection, asking: bool) -> Deferred:
            return self._script(conn, script, key, *args, asking=asking)

        return self._dispatch(op, key, call)

    def _dispatch(self, op: str, key: bytes,
                  call: Callable[[RedisConnection, bool], Deferred]) -> Deferred:
        """Run ``call`` on a connection that serves ``key`` (any one, here).

        The cluster store overrides this to route by slot and follow redirects.
        """
        try:
            conn = self._connection()
        except StoreUnavailable:
            return fail()
        try:
            d = call(conn, False)
        except Exception:
            # What maybeDeferred did, without its per-call cost on the hot
            # path: ``call`` returns a Deferred (execute_command never raises).
            d = fail()
        return d.addErrback(self._unavailable, op)

    def _script(self, conn: RedisConnection, script: _Script, key: bytes,
                *args: Any, asking: bool = False) -> Deferred:
        """EVALSHA, falling back to EVAL when the server lost its script cache.

        After an ``ASK`` redirect (``asking``) the script goes as EVAL right
        away: ``ASKING`` covers one command only, and a NOSCRIPT answer would
        leave the EVAL fallback without it.
        """
        if asking:
            _asking(conn)
            return conn.execute_command("EVAL", script.source, 1, key, *args)
        try:
            command = (b"*%d\r\n" % (4 + len(args)) + script.evalsha_head
                       + encode_arguments((key, *args)))
        except TypeError:
            return fail()
        d = conn.execute_encoded(command)
        return d.addErrback(_no_script, conn, script, key, args)

    def _unavailable(self, failure: Failure, op: str) -> Failure:
        if failure.check(*RedisError):
            raise StoreUnavailable(
                f"Redis {op} failed: {type(failure.value).__name__}: "
                f"{failure.getErrorMessage()}") from failure.value
        return failure

    def _ready(self) -> None:
        self._fire_waiters(None)

    def _failed(self, why: str) -> None:
        # auth or SELECT refused: the pool stops reconnecting
        if self._fatal is None:
            self._fatal = f"Redis at {self.address.redacted()} refused us: {why}"
            _log.error("{message}", message=self._fatal)
        self._fire_waiters(StoreUnavailable(self._fatal))

    def _fire_waiters(self, result: Any) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if waiter.called:
                continue
            if isinstance(result, Exception):
                waiter.errback(result)
            else:
                waiter.callback(result)


def _asking(conn: RedisConnection) -> None:
    """Send ASKING, pipelined before the command it is for, on one connection.

    Its "OK" is of no interest; an error reply to it shows up as the next
    command's redirect or error anyway, so it is swallowed here.
    """
    conn.execute_command("ASKING").addErrback(lambda failure: None)


def _no_script(failure: Failure, conn: RedisConnection, script: _Script, key: bytes,
               args: tuple) -> Any:
    """NOSCRIPT (the server lost its script cache): the script again, as EVAL.

    A module function with its arguments rather than a closure per call:
    ``accept`` runs it on every request.
    """
    if failure.check(RedisReplyError) and str(failure.value).startswith("NOSCRIPT"):
        return conn.execute_command("EVAL", script.source, 1, key, *args)
    return failure


def _verdict(code: int) -> Verdict:
    return _VERDICTS[int(code)]


def _created(reply: Any, pair_id: str) -> None:
    if int(reply) != 1:
        raise PairExists(f"pair {pair_id} exists")


def _load_trust_root(path: str) -> Any:
    """Trust root from a PEM file of one or more CA certificates."""
    with open(path, "rb") as handle:
        pem = handle.read()
    marker = b"-----END CERTIFICATE-----"
    certs = [ssl.Certificate.loadPEM(chunk + marker)
             for chunk in pem.split(marker) if chunk.strip()]
    if not certs:
        raise ValueError(f"no certificate found in ssl_ca_certs file {path}")
    return ssl.trustRootFromCertificates(certs)
