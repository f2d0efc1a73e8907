"""Per-relay state: the signed client id and a pool of pairs, with recovery.

Reactor-free: validation and pairing are callables returning Deferreds,
so the scheduling rules can be tested with fakes.  The rules:

* pairs are made lazily, in batches, and only **one batch is in flight**
  per relay; callers that need a pair meanwhile wait for it;
* pairs are leased round-robin and shared by concurrent requests, each
  lease taking the pair's next sequence number (never reused, even when the
  request fails: a reused seq is a reused AES-GCM nonce);
* a pair the relay refused (559/560/562/563/564) is dropped, and the retry
  waits for a pair from a batch that **started after** the failure: after a
  relay restart every pooled pair is dead, so another old one would not do;
* a refused client id (566) drops the id and every pair (pairing binds the
  id's uuid), and the next batch validates first;
* a pairing refused with a ``retry_after`` (429, spec section 2) holds all
  pairing with that relay until it has passed: callers that need a new pair
  meanwhile fail at once with that refusal instead of asking again, while
  pairs already held keep being leased.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from mterelay.protocol.errors import InvalidClientId
from mterelay.protocol.header import MAX_SEQ
from mterelay.protocol.keys import PairKeys

__all__ = ["Pair", "Lease", "PairPool"]

log = Logger(namespace="mterelay.client")

Validate = Callable[[], "Deferred[str]"]
MakePairs = Callable[[str, int], "Deferred[list[PairKeys]]"]


@attrs.define(eq=False)
class Pair:
    """One pair in the pool; ``batch`` numbers the pairing that made it."""

    keys: PairKeys
    client_id: str
    batch: int
    next_seq: int = 0


@attrs.frozen
class Lease:
    """The right to send one message: a pair and a sequence number of its own."""

    pair: Pair
    seq: int

    @property
    def keys(self) -> PairKeys:
        return self.pair.keys

    @property
    def client_id(self) -> str:
        return self.pair.client_id


@attrs.define(eq=False)
class _Waiter:
    after: int
    deferred: "Deferred[Lease]"


class PairPool:
    """The client id and up to ``size`` pairs of one relay origin."""

    def __init__(self, size: int, validate: Validate, make_pairs: MakePairs,
                 max_seq: int = MAX_SEQ, clock: Any = None) -> None:
        if not 1 <= size <= 64:
            raise ValueError("pairs must be 1..64")
        self.size = size
        self._validate = validate
        self._make_pairs = make_pairs
        self._max_seq = max_seq
        self.client_id: str | None = None
        self.pairs: list[Pair] = []
        self._batches = 0          # batches started so far (the last one's number)
        self._pairing = False
        self._waiters: list[_Waiter] = []
        self._turn = 0
        #: An IReactorTime; without one a retry_after is not honoured.
        self._clock = clock
        self._hold_until = 0.0
        self._hold: Failure | None = None

    # ------------------------------------------------------------ leasing

    def acquire(self, after: int = 0) -> "Deferred[Lease]":
        """A lease on a pair from a batch numbered above ``after``.

        ``after=0`` accepts any pair; a retry passes what :meth:`drop`
        returned.  Cancelling the Deferred only withdraws this caller.
        """
        lease = self.lease_now(after)
        if lease is not None:
            return succeed(lease)
        held = self._held()
        if held is not None:
            return fail(held)

        def cancel(deferred: "Deferred[Lease]") -> None:
            self._waiters = [w for w in self._waiters if w.deferred is not deferred]

        waiter = _Waiter(after, Deferred(cancel))
        self._waiters.append(waiter)
        if not self._pairing:
            self._start_batch()
        return waiter.deferred

    def lease_now(self, after: int = 0) -> Lease | None:
        """What :meth:`acquire` would fire with at once, or None (without waiting).

        The common case - a pair ready - needs no Deferred: the caller tries
        this first and calls :meth:`acquire` only on None, which then finds
        the pool in the same state (a None lease changes nothing).
        """
        lease = self._lease(after)
        held = self._held()
        if lease is not None:
            if len(self.pairs) < self.size and not self._pairing and held is None:
                self._start_batch()  # top the pool up in the background
        return lease

    def _lease(self, after: int) -> Lease | None:
        usable = [pair for pair in self.pairs if pair.batch > after]
        if not usable:
            return None
        self._turn += 1
        pair = usable[self._turn % len(usable)]
        seq = pair.next_seq
        pair.next_seq += 1
        if pair.next_seq > self._max_seq:
            self.pairs.remove(pair)  # its sequence space is used up: re-pair
        return Lease(pair, seq)

    # ------------------------------------------------------------ recovery

    def drop(self, pair: Pair) -> int:
        """Forget a pair the relay refused; returns the mark for :meth:`acquire`.

        Only a batch started after this call can serve a retry.
        """
        if pair in self.pairs:
            self.pairs.remove(pair)
        return self._batches

    def forget_client(self, client_id: str) -> None:
        """The relay refused ``client_id`` (566): drop it and all its pairs."""
        if self.client_id == client_id:
            log.info("client id refused by the relay; validating again")
            self.client_id = None
            self.pairs.clear()

    def _held(self) -> Failure | None:
        """The 429 still in force (pairing must not be asked for), or None."""
        if self._hold is not None and self._clock.seconds() < self._hold_until:
            return self._hold
        self._hold = None
        return None

    # ------------------------------------------------------------ batches

    def _start_batch(self) -> None:
        self._batches += 1
        batch = self._batches
        self._pairing = True
        count = max(1, self.size - len(self.pairs))
        used: list[str] = []

        def paired(client_id: str) -> "Deferred[list[PairKeys]]":
            used.append(client_id)
            return self._make_pairs(client_id, count)

        self._client().addCallback(paired).addBoth(self._batch_done, batch, used)

    def _client(self) -> "Deferred[str]":
        if self.client_id is not None:
            return succeed(self.client_id)

        def validated(client_id: str) -> str:
            self.client_id = client_id
            return client_id

        return self._validate().addCallback(validated)

    def _batch_done(self, result: list[PairKeys] | Failure, batch: int, used: list[str]
                    ) -> None:
        self._pairing = False
        client_id = used[0] if used else None
        if isinstance(result, Failure):
            if result.check(InvalidClientId) and client_id is not None:
                self.forget_client(client_id)
            retry_after = getattr(result.value, "retry_after", None)
            if retry_after and self._clock is not None:
                self._hold, self._hold_until = result, self._clock.seconds() + retry_after
            failed = [w for w in self._waiters if w.after < batch]
            self._waiters = [w for w in self._waiters if w.after >= batch]
            log.info("pairing failed: {why}", why=result.getErrorMessage())
            for waiter in failed:
                waiter.deferred.errback(result)
        elif client_id is not None and client_id == self.client_id:
            self.pairs.extend(Pair(keys, client_id, batch) for keys in result)
            log.debug("paired {count} new pair(s)", count=len(result))
        # else: the id was refused while this batch ran; its pairs bind a dead id.
        self._serve()
        if self._waiters and not self._pairing:
            held = self._held()
            if held is None:
                self._start_batch()
                return
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.deferred.errback(held)

    def _serve(self) -> None:
        ready: list[tuple[_Waiter, Lease]] = []
        for waiter in list(self._waiters):
            lease = self._lease(waiter.after)
            if lease is not None:
                ready.append((waiter, lease))
        served = {id(waiter) for waiter, _ in ready}
        self._waiters = [w for w in self._waiters if id(w) not in served]
        for waiter, lease in ready:
            waiter.deferred.callback(lease)
