"""The Redis store never hands a caller another command's reply.

Issue 14, finding 2: under a flood with the relay's event loop lagging, the
store's reply timeouts fired, connections were aborted with replies still on
the way, and later replies reached the wrong callers (an ``accept`` got a
list, ``get`` got an integer; two ``accept`` replies swapped would have raised
nothing).  These tests recreate those conditions on purpose against a real
redis-server and the real ``RedisPairStore``:

* thousands of concurrent calls, each worker issuing its next call from the
  callback of the previous one (so calls land on connections that are being
  torn down);
* an event loop starved at random moments by a ``time.sleep`` longer than
  the reply timeouts;
* several stores with different short timeouts, connections killed by the
  server (``CLIENT KILL``) and aborted by us;

and check every reply against the command that asked for it: ``EVAL``
scripts echoing a per-call token (as a bulk string, an integer and an array),
and ``accept``/``get`` on pairs whose verdicts and secrets follow a model.
A call may fail with StoreUnavailable; it may never succeed with a wrong
answer, nor fail with anything else.
"""

from __future__ import annotations

import gc
import random
import sys
import time

from twisted.internet import defer, reactor, task
from twisted.logger import Logger

from mterelay.protocol.replay import Verdict
from mterelay.store.interface import StoreLimits, StoreUnavailable, pair_generation

from tests.integration.test_store_redis import CID, RedisTestCase

_log = Logger()

A, R, U, S = Verdict.ACCEPTED, Verdict.REPLAYED, Verdict.UNKNOWN, Verdict.STALE
OTHER_GENERATION = pair_generation(b"keys this pair id had before")
LIMITS = StoreLimits(max_messages=10**9)


def _echo(store, script, *argv):
    """One EVAL through the store's own call path (connection choice, errors)."""
    return store._dispatch("echo", b"echo", lambda conn, asking: conn.execute_command(
        "EVAL", script, 0, *argv))


class _Flood:
    """Workers, a starver and a connection killer sharing one random source."""

    def __init__(self, case, stores, rng, calls, workers, pairs):
        self.case = case
        self.stores = stores
        self.rng = rng
        self.left = calls
        self.workers = workers
        self.pairs = pairs            # pair id -> secret
        self.generations = {pid: pair_generation(secret) for pid, secret in pairs.items()}
        self.next_seq = dict.fromkeys(pairs, 0)
        self.accepted = {pid: [] for pid in pairs}
        self.wrong: list[str] = []
        self.unavailable = 0
        self.right = 0
        self.running = True
        self.kills = 0
        self.starved = 0.0
        self.timers: list = []

    # -- one call, checked ---------------------------------------------------

    def _one(self):
        rng = self.rng
        store = rng.choice(self.stores)
        kind = rng.randrange(8)
        token = rng.getrandbits(40)
        if kind == 0:
            d, want = _echo(store, "return ARGV[1]", b"t%d" % token), b"t%d" % token
        elif kind == 1:
            d, want = _echo(store, "return tonumber(ARGV[1])", token), token
        elif kind == 2:
            d = _echo(store, "return {ARGV[1], ARGV[2]}", b"a%d" % token, b"b%d" % token)
            want = [b"a%d" % token, b"b%d" % token]
        elif kind == 3:
            pid = rng.choice(list(self.pairs))
            d, want = store.get(CID, pid), self.pairs[pid]
        elif kind == 4:
            pid = rng.choice(list(self.pairs))
            seq = self.next_seq[pid] = self.next_seq[pid] + 1
            d, want = store.accept(CID, pid, seq, self.generations[pid]), A
            d.addCallback(self._note_accepted, pid, seq)
        elif kind == 5 and any(self.accepted.values()):
            pid = rng.choice([p for p, seqs in self.accepted.items() if seqs])
            seq = rng.choice(self.accepted[pid])
            d, want = store.accept(CID, pid, seq, self.generations[pid]), R
        elif kind == 6:
            pid = rng.choice(list(self.pairs))
            d, want = store.accept(CID, pid, 1, OTHER_GENERATION), S
        else:
            d, want = store.accept(CID, "pair_nobody_" + "Z" * 10, 1, OTHER_GENERATION), U
        what = f"kind {kind} expecting {want!r}"
        return d.addCallbacks(self._check, self._failed, (want, what), None, (what,))

    def _note_accepted(self, verdict, pid, seq):
        if verdict is A:
            self.accepted[pid].append(seq)
        return verdict

    def _check(self, got, want, what):
        if got == want and type(got) is type(want):
            self.right += 1
        else:
            self.wrong.append(f"{what}: got {got!r}")

    def _failed(self, failure, what):
        if failure.check(StoreUnavailable):
            self.unavailable += 1
            # like a client backing off: keeps the flood going for a while
            return task.deferLater(reactor, self.rng.uniform(0.002, 0.03), lambda: None)
        else:
            self.wrong.append(f"{what}: {failure.type.__name__}: {failure.getErrorMessage()}")

    @defer.inlineCallbacks
    def _worker(self):
        while self.left > 0:
            self.left -= 1
            yield self._one()

    # -- hostile surroundings -------------------------------------------------

    def _starve(self):
        if not self.running:
            return
        pause = self.rng.uniform(0.03, 0.25)
        time.sleep(pause)  # the whole event loop stops, timeouts come due
        self.starved += pause
        self.timers.append(reactor.callLater(self.rng.uniform(0.0, 0.15), self._starve))

    def _kill(self):
        if not self.running:
            return
        self.kills += 1
        if self.rng.random() < 0.5:
            self.case.server.command("CLIENT", "KILL", "TYPE", "normal")
        else:
            store = self.rng.choice(self.stores)
            live = store._live_connections()
            if live:
                self.rng.choice(live).transport.abortConnection()
        self.timers.append(reactor.callLater(self.rng.uniform(0.05, 0.3), self._kill))

    @defer.inlineCallbacks
    def run(self):
        self.timers += [reactor.callLater(0.01, self._starve),
                        reactor.callLater(0.05, self._kill)]
        try:
            yield defer.gatherResults([self._worker() for _ in range(self.workers)])
        finally:
            self.running = False
            for timer in self.timers:
                if timer.active():
                    timer.cancel()


class ReplyIntegrity(RedisTestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_every_reply_is_the_one_its_command_asked_for(self):
        stores = []
        for timeout in (0.02, 0.05, 0.12):
            stores.append((yield self.make_store(
                pool_size=3, timeout=timeout, limits=LIMITS, reconnect_max_delay=0.05)))
        pairs = {f"pair_stress_{i:03d}_AAAAAAAAAA": b"secret-%d" % i for i in range(16)}
        for pid, secret in pairs.items():
            yield stores[0].create(CID, pid, secret)

        flood = _Flood(self, stores, random.Random(14), calls=20000, workers=400,
                       pairs=pairs)
        started = time.monotonic()
        yield flood.run()
        elapsed = time.monotonic() - started
        _log.info("reply integrity: {right} right, {unavailable} StoreUnavailable, "
                  "{wrong} wrong in {s:.2f} s ({starved:.2f} s starved, {kills} kills)",
                  right=flood.right, unavailable=flood.unavailable,
                  wrong=len(flood.wrong), s=elapsed, starved=flood.starved,
                  kills=flood.kills)
        self.assertEqual(flood.wrong[:10], [], f"{len(flood.wrong)} wrong replies")
        # the hostile parts really happened and the store still did its job
        self.assertGreater(flood.unavailable, 0)
        self.assertGreater(flood.right, 1000)

        # and afterwards every store answers correctly again
        for store in stores:
            yield self.wait_until_ready(store)
            for pid, secret in pairs.items():
                self.assertEqual((yield store.get(CID, pid)), secret)
            self.assertEqual((yield _echo(store, "return ARGV[1]", b"after")), b"after")


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _census(store, kind: type) -> dict:
    """What the store holds on to, after a full collection.

    ``connections``, ``waiting`` and ``store_timers`` are the store's own;
    Deferreds, allocator blocks and RSS are the whole process's (other tests
    in the same process add to them), logged, bounded loosely.
    """
    gc.collect()
    live = store._live_connections()
    objects = gc.get_objects()
    connections = sum(1 for obj in objects if type(obj) is kind)
    deferreds = sum(1 for obj in objects if type(obj) is defer.Deferred)
    del objects
    owners = (kind, type(getattr(store, "_pool", None)))
    store_timers = sum(
        1 for call in reactor.getDelayedCalls()
        if isinstance(getattr(call.func, "__self__", None), owners)
        or type(getattr(call.func, "__self__", None)).__name__ == "_Slot")
    waiting = sum(conn.pending_calls() if hasattr(conn, "pending_calls")
                  else len(conn.replyQueue.waiting)  # txredisapi, for comparison
                  for conn in live)
    return {"connections": connections, "waiting": waiting, "store_timers": store_timers,
            "deferreds": deferreds, "blocks": sys.getallocatedblocks(),
            "rss_kib": _rss_kib()}


class MemoryAfterFlood(RedisTestCase):
    timeout = 120

    @defer.inlineCallbacks
    def _all_connected(self, store, size, within=5.0):
        deadline = time.monotonic() + within
        while len(store._live_connections()) < size:
            if time.monotonic() > deadline:
                self.fail(f"only {len(store._live_connections())} of {size} connections back")
            yield task.deferLater(reactor, 0.02, lambda: None)

    @defer.inlineCallbacks
    def _burst(self, store, calls, rng):
        """Concurrent calls, then the loop starved past the timeout, then kills."""
        ds = [_echo(store, "return ARGV[1]", b"x" * rng.randrange(1, 2000))
              for _ in range(calls)]
        reactor.callLater(0, time.sleep, store._timeout * 3)
        if rng.random() < 0.5:
            reactor.callLater(0.01, self.server.command, "CLIENT", "KILL", "TYPE", "normal")
        results = yield defer.DeferredList(ds, consumeErrors=True)
        return sum(1 for ok, _ in results if not ok)

    @defer.inlineCallbacks
    def test_flood_of_timed_out_and_aborted_calls_leaves_nothing_behind(self):
        size = 4
        store = yield self.make_store(pool_size=size, timeout=0.05,
                                      reconnect_max_delay=0.05)
        rng = random.Random(7)
        yield self._all_connected(store, size)
        kind = type(store._live_connections()[0])
        for _ in range(3):  # warm up: scripts, buffers, code paths
            yield self._burst(store, 500, rng)
            yield self._all_connected(store, size)
        before = _census(store, kind)
        failed = 0
        started = time.monotonic()
        for _ in range(10):
            failed += yield self._burst(store, 2000, rng)
            yield self._all_connected(store, size)
        elapsed = time.monotonic() - started
        yield task.deferLater(reactor, 0.1, lambda: None)
        after = _census(store, kind)
        _log.info("memory after flood of 20,000 calls ({failed} failed, {s:.1f} s): "
                  "before {before}, after {after}", failed=failed, s=elapsed,
                  before=before, after=after)
        self.assertGreater(failed, 1000)  # the flood really timed out and aborted
        self.assertLessEqual(after["connections"], size)
        self.assertEqual((after["waiting"], after["store_timers"]), (0, 0))
        # Allocator blocks count what Python objects hold (RSS keeps the
        # flood's peak: freed memory stays in the process's arenas).  Anything
        # kept per call of the 20,000 would be several blocks each.
        self.assertLess(after["blocks"] - before["blocks"], 10_000)
