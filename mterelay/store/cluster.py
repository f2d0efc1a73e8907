"""The pair store on a Redis Cluster (ElastiCache cluster mode, ElastiCache Serverless).

Same keys, scripts and failure policy as ``RedisPairStore`` (``redis.py``),
plus routing:

* **Slots.** A pair's one key is ``{prefix}pair:{<client id>:<pair id>}``; the
  hash tag puts everything of one pair on one slot (``slots.key_slot``), so
  the Lua accept stays single-key and atomic on the master owning the slot.
* **Slot map.** Read with ``CLUSTER SLOTS`` from the seed (the URL's host),
  then from any known node: at start, every ``refresh_interval`` seconds, and
  (at most every ``min_refresh`` seconds) whenever a reply or a missing
  connection says the map is stale.  Only masters are used.
* **A pool per node** on the existing RESP client (``redisclient``), each
  with the URL's AUTH and TLS (verified against the node's announced host).
  Commands go to masters only; the replicas' pools are there so that a
  promoted replica is served the moment the map names it.
  Pools of nodes that left the map are closed after a grace period, so that
  calls already in flight on them still get their answers.
* **Redirects.** ``MOVED`` updates the map for that slot, asks for a refresh
  and resends on the new owner; ``ASK`` resends once to the target after
  ``ASKING``.  A redirect reply means the node did *not* run the command, so
  resending cannot run it twice; at most ``max_redirects`` per call, then
  StoreUnavailable.
* **Unknown outcomes are never resent.**  A call whose connection was lost
  or timed out after it was written (the node may have run an accept) fails
  with StoreUnavailable, exactly like the single-node store: the relay
  answers 503 and forwards nothing, and the client re-seals any retry with
  a fresh sequence number, so a resent accept can never be a duplicate.
  Errors that say "not now" (CLUSTERDOWN, TRYAGAIN, LOADING, MASTERDOWN)
  fail the same way without a resend.

Fail fast as before: a slot whose master has no ready connection fails at
once with StoreUnavailable (and triggers a map refresh: after a failover
the map names the promoted replica within one refresh).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTCP
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mterelay.store.interface import IPairStore, StoreUnavailable, validate_ids
from mterelay.store.redis import RedisPairStore
from mterelay.store.redisclient import RedisConnection, RedisError, RedisPool, RedisReplyError
from mterelay.store.slots import SLOTS, Node, key_slot, parse_cluster_slots, parse_redirect

__all__ = ["ClusterPairStore"]

_log = Logger()


@implementer(IPairStore)
class ClusterPairStore(RedisPairStore):
    """``IPairStore`` on a Redis Cluster; see the module docstring.

    Takes ``RedisPairStore``'s arguments (``pool_size`` connections per
    master) and a ``redis+cluster://`` or ``rediss+cluster://`` URL.
    """

    def __init__(self, reactor: IReactorTCP, url: str, state_secret: bytes,
                 *args: Any, max_redirects: int = 5, refresh_interval: float = 5.0,
                 min_refresh: float = 0.1, **kwargs: Any) -> None:
        super().__init__(reactor, url, state_secret, *args, **kwargs)
        if not self.address.cluster:
            raise ValueError("the cluster store needs a redis+cluster:// or "
                             "rediss+cluster:// URL")
        if "{" in self.key_prefix or "}" in self.key_prefix:
            raise ValueError("the Redis key prefix must not contain { or } on a Redis "
                             "Cluster (they would make the hash tag)")
        if not 1 <= max_redirects <= 16:
            raise ValueError("max_redirects must be 1..16")
        self._max_redirects = max_redirects
        self._refresh_interval = float(refresh_interval)
        self._min_refresh = float(min_refresh)
        self._seed = Node(self.address.host, self.address.port)
        #: slot -> master; None where no master serves the slot (yet)
        self._slots: list[Node | None] = [None] * SLOTS
        self._pools: dict[Node, RedisPool] = {}
        #: replicas of the current masters: connected, unused until promoted
        self._replicas: set[Node] = set()
        self._started = False
        self._refreshing: Deferred | None = None
        self._refresh_again = False
        self._last_refresh = float("-inf")
        self._refresh_call: Any = None
        self._periodic: Any = None
        self._closing: dict[Node, Any] = {}
        #: operations' view (tests, logs): refreshes done, redirects followed
        self.stats = {"refreshes": 0, "moved": 0, "ask": 0}

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> Deferred:
        if not self._started:
            self._started = True
            self._fatal = None
            self._pool_for(self._seed)
            self._schedule_periodic()
        if self._fatal is not None:
            return fail(StoreUnavailable(self._fatal))
        if self._usable():
            return succeed(None)
        waiter = Deferred()
        self._waiters.append(waiter)

        def timed_out(result: Any, timeout: float) -> None:
            raise StoreUnavailable(
                f"Redis Cluster at {self.address.redacted()} not usable within "
                f"{timeout:g} s (slot map or masters missing); still trying")

        return waiter.addTimeout(self._connect_timeout, self._reactor, timed_out)

    def stop(self) -> Deferred:
        self._started = False
        self._fire_waiters(StoreUnavailable("the pair store was stopped"))
        for call in [self._refresh_call, self._periodic, *self._closing.values()]:
            if call is not None and call.active():
                call.cancel()
        self._refresh_call = self._periodic = None
        self._closing = {}
        pools, self._pools = list(self._pools.values()), {}
        self._slots = [None] * SLOTS
        self._replicas = set()
        return gatherResults([pool.stop("the pair store was stopped") for pool in pools]
                             ).addCallback(lambda _: None)

    def ping(self) -> Deferred:
        """True when every slot has a master and every master answers PING."""
        masters = self._masters()
        if not self._started or self._fatal is not None or None in self._slots:
            return succeed(False)
        pings = []
        for node in masters:
            pool = self._pools.get(node)
            conn = pool.connection() if pool is not None else None
            if conn is None:
                self._want_refresh()
                return succeed(False)
            pings.append(maybeDeferred(conn.execute_command, "PING"))
        d = gatherResults(pings, consumeErrors=True)
        return d.addCallbacks(lambda replies: all(r == "PONG" for r in replies),
                              lambda failure: False)

    def slot_owner(self, client_id: str, pair_id: str) -> Node | None:
        """The master this store believes owns the pair's slot (tests, operations)."""
        return self._slots[key_slot(self._key(client_id, pair_id))]

    # -- routing ------------------------------------------------------------

    def _key(self, client_id: str, pair_id: str) -> bytes:
        validate_ids(client_id, pair_id)  # no braces: the tag is exactly the two ids
        return f"{self.key_prefix}pair:{{{client_id}:{pair_id}}}".encode("utf-8")

    def _dispatch(self, op: str, key: bytes,
                  call: Callable[[RedisConnection, bool], Deferred]) -> Deferred:
        slot = key_slot(key)
        return self._attempt(op, slot, call, self._slots[slot], False, 0)

    def _attempt(self, op: str, slot: int, call: Callable[[RedisConnection, bool], Deferred],
                 node: Node | None, asking: bool, redirects: int) -> Deferred:
        if self._fatal is not None:
            return fail(StoreUnavailable(self._fatal))
        if not self._started:
            return fail(StoreUnavailable("the pair store is not started"))
        if node is None:
            self._want_refresh()
            return fail(StoreUnavailable(f"no Redis Cluster master known for slot {slot}"))
        pool = self._pool_for(node)
        conn = pool.connection()
        if conn is None:
            self._want_refresh()
            return fail(StoreUnavailable(f"no connection to Redis Cluster node {node}"))
        d = maybeDeferred(call, conn, asking)

        def failed(failure: Failure) -> Any:
            if failure.check(RedisReplyError):
                redirect = parse_redirect(str(failure.value))
                if redirect is not None:
                    target = redirect.node
                    if not target.host:  # "MOVED 12 :7001": same host as the one asked
                        target = Node(node.host, target.port)
                    if redirects >= self._max_redirects:
                        raise StoreUnavailable(
                            f"Redis {op}: more than {self._max_redirects} cluster "
                            f"redirects for slot {slot}; last {redirect.kind} to {target}")
                    if redirect.kind == "MOVED":
                        self.stats["moved"] += 1
                        self._slots[redirect.slot] = target
                        self._want_refresh()
                        return self._attempt(op, slot, call, target, False, redirects + 1)
                    self.stats["ask"] += 1
                    return self._attempt(op, slot, call, target, True, redirects + 1)
                if str(failure.value).startswith(("CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN",
                                                  "READONLY")):
                    self._want_refresh()
            elif failure.check(*RedisError):
                # lost or timed out: outcome unknown, never resent (module docstring)
                self._want_refresh()
            return self._unavailable(failure, op)

        return d.addErrback(failed)

    # -- slot map -----------------------------------------------------------

    def _masters(self) -> set[Node]:
        return {node for node in self._slots if node is not None}

    def _usable(self) -> bool:
        if None in self._slots:
            return False
        for node in self._masters():
            pool = self._pools.get(node)
            if pool is None or not pool.live:
                return False
        return True

    def _pool_for(self, node: Node) -> RedisPool:
        pool = self._pools.get(node)
        if pool is not None:
            closing = self._closing.pop(node, None)
            if closing is not None and closing.active():
                closing.cancel()
            return pool
        address = self.address.at(node.host, node.port)
        pool = RedisPool(
            self._reactor, self._endpoint(address), address, self._pool_size,
            timeout=self._timeout, connect_timeout=self._connect_timeout,
            max_delay=self._max_delay,
            on_ready=lambda: self._node_ready(node, pool),
            on_fatal=lambda why: self._failed(why) if self._pools.get(node) is pool else None)
        self._pools[node] = pool
        pool.start()
        return pool

    def _node_ready(self, node: Node, pool: RedisPool) -> None:
        if self._pools.get(node) is not pool or not self._started:
            return
        if None in self._slots or node == self._seed:
            self._want_refresh()
        if self._usable():
            self._ready()

    def _schedule_periodic(self) -> None:
        def tick() -> None:
            self._periodic = None
            if self._started:
                self._want_refresh()
                self._schedule_periodic()

        self._periodic = self._reactor.callLater(self._refresh_interval, tick)

    def _want_refresh(self) -> None:
        """Refresh the slot map soon: one at a time, at most every ``min_refresh`` s."""
        if not self._started:
            return
        if self._refreshing is not None:
            self._refresh_again = True
            return
        if self._refresh_call is not None:
            return
        wait = self._last_refresh + self._min_refresh - self._reactor.seconds()
        self._refresh_call = self._reactor.callLater(max(0.0, wait), self._refresh)

    def _refresh(self) -> None:
        self._refresh_call = None
        if not self._started or self._refreshing is not None:
            return
        self._last_refresh = self._reactor.seconds()
        # masters first (they know the newest map), then the seed, then the rest
        candidates = list(dict.fromkeys([*sorted(self._masters(), key=str), self._seed,
                                         *sorted(self._pools, key=str)]))
        d = self._refreshing = self._ask_slots(candidates)
        d.addCallback(self._install)
        d.addErrback(lambda failure: _log.debug(
            "Redis Cluster slot map refresh failed: {why}", why=failure.getErrorMessage()))

        def done(_: Any) -> None:
            self._refreshing = None
            if self._refresh_again:
                self._refresh_again = False
                self._want_refresh()

        d.addBoth(done)

    def _ask_slots(self, candidates: list[Node]) -> Deferred:
        for index, node in enumerate(candidates):
            pool = self._pools.get(node)
            conn = pool.connection() if pool is not None else None
            if conn is None:
                continue
            rest = candidates[index + 1:]
            d = conn.execute_command("CLUSTER", "SLOTS")
            d.addCallback(parse_cluster_slots, node.host)

            def next_node(failure: Failure, rest: list[Node] = rest) -> Deferred:
                failure.trap(*RedisError, ValueError)
                return self._ask_slots(rest)

            return d.addErrback(next_node)
        return fail(StoreUnavailable("no Redis Cluster node answered CLUSTER SLOTS"))

    def _install(self, ranges: list) -> None:
        if not self._started:
            return
        slots: list[Node | None] = [None] * SLOTS
        for item in ranges:
            for slot in range(item.first, item.last + 1):
                slots[slot] = item.master
        old = self._masters()
        self._slots = slots
        self.stats["refreshes"] += 1
        new = self._masters()
        if new != old:
            _log.info("Redis Cluster masters: {masters}",
                      masters=", ".join(sorted(str(n) for n in new)))
        self._replicas = {replica for item in ranges for replica in item.replicas} - new
        for node in new | self._replicas:
            self._pool_for(node)
        for node in list(self._pools):
            if not self._wanted(node) and node not in self._closing:
                # let calls in flight finish before closing
                self._closing[node] = self._reactor.callLater(
                    2 * self._timeout + 1, self._close_node, node)
        if self._usable():
            self._ready()

    def _wanted(self, node: Node) -> bool:
        return node in self._masters() or node in self._replicas or node == self._seed

    def _close_node(self, node: Node) -> None:
        self._closing.pop(node, None)
        if self._wanted(node):
            return
        pool = self._pools.pop(node, None)
        if pool is not None:
            pool.stop("no longer a master of the Redis Cluster")
