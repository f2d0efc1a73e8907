"""The embedded pair store: one process, no set-up, bounded memory.

Expiry is lazy (checked when a pair is touched) plus an amortized sweep on
every ``create``: the dict is kept in order of last accept/create, which is
exactly idle-expiry order, so expired pairs are always at the front and the
sweep pops them in O(1) each.  A pair past its maximum age but still active
is removed by its next ``accept`` (EXHAUSTED) or later by the idle sweep, so
nothing outlives ``idle_ttl`` after its last use.  Each pair keeps the
generation of its secrets; ``create`` never replaces a live pair and
``accept`` refuses another generation (STALE) before touching anything.
``max_pairs`` caps memory against pairing floods: when that many pairs are
live, ``create`` fails with StoreUnavailable (503, retry later) rather than
evicting someone's live pair.  No timers, so ``stop()`` has nothing to cancel.
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from mterelay.protocol.replay import ReplayWindow, Verdict, validate_seq
from mterelay.store.interface import (IPairStore, PairExists, StoreLimits, StoreUnavailable,
                                      pair_generation, validate_generation, validate_ids)

__all__ = ["MemoryPairStore"]


class _Pair:
    __slots__ = ("secrets", "generation", "created", "last_used", "count", "window")

    def __init__(self, secrets: bytes, now: float, width: int) -> None:
        self.secrets = secrets
        self.generation = pair_generation(secrets)
        self.created = now
        self.last_used = now
        self.count = 0
        self.window = ReplayWindow(width)


@implementer(IPairStore)
class MemoryPairStore:
    """``IPairStore`` in process memory; answers synchronously (fired Deferreds).

    Everything runs on the reactor thread, so each method is atomic by
    construction.
    """

    def __init__(
        self,
        clock: IReactorTime,
        limits: StoreLimits = StoreLimits(),
        max_pairs: int = 100_000,
    ) -> None:
        if not isinstance(max_pairs, int) or max_pairs < 1:
            raise ValueError(f"max_pairs must be a positive integer, not {max_pairs!r}")
        self._clock = clock
        self.limits = limits
        self.max_pairs = max_pairs
        self._pairs: OrderedDict[tuple[str, str], _Pair] = OrderedDict()

    def __len__(self) -> int:
        """Pairs held, expired ones not yet swept included (for metrics)."""
        return len(self._pairs)

    def start(self) -> Deferred:
        return succeed(None)

    def stop(self) -> Deferred:
        return succeed(None)

    def ping(self) -> Deferred:
        return succeed(True)

    def create(self, client_id: str, pair_id: str, secrets: bytes) -> Deferred:
        try:
            validate_ids(client_id, pair_id)
            secrets = _as_bytes(secrets)
        except ValueError:
            return fail()
        now = self._clock.seconds()
        key = (client_id, pair_id)
        if self._live(client_id, pair_id, now) is not None:
            return fail(PairExists(f"pair {pair_id} exists"))
        self._sweep(now)
        if len(self._pairs) >= self.max_pairs:
            # Evicting a live pair would let anyone who can pair (anyone)
            # remove other clients' pairs; refuse the newcomer instead.
            return fail(StoreUnavailable(
                f"the memory pair store is full ({self.max_pairs} live pairs)"))
        self._pairs[key] = _Pair(secrets, now, self.limits.window)
        return succeed(None)

    def get(self, client_id: str, pair_id: str) -> Deferred:
        try:
            validate_ids(client_id, pair_id)
        except ValueError:
            return fail()
        now = self._clock.seconds()
        pair = self._live(client_id, pair_id, now)
        if pair is None or self._aged(pair, now):
            return succeed(None)
        return succeed(pair.secrets)

    def accept(self, client_id: str, pair_id: str, seq: int, generation: str) -> Deferred:
        try:
            validate_ids(client_id, pair_id)
            validate_seq(seq)
            validate_generation(generation)
        except ValueError:
            return fail()
        now = self._clock.seconds()
        pair = self._live(client_id, pair_id, now)
        if pair is None:
            return succeed(Verdict.UNKNOWN)
        if pair.generation != generation:
            return succeed(Verdict.STALE)
        if self._aged(pair, now) or pair.count >= self.limits.max_messages:
            del self._pairs[(client_id, pair_id)]
            return succeed(Verdict.EXHAUSTED)
        verdict = pair.window.accept(seq)
        if verdict is Verdict.ACCEPTED:
            pair.count += 1
            pair.last_used = now
            self._pairs.move_to_end((client_id, pair_id))
        return succeed(verdict)

    def delete(self, client_id: str, pair_id: str, generation: str | None = None) -> Deferred:
        try:
            validate_ids(client_id, pair_id)
            if generation is not None:
                validate_generation(generation)
        except ValueError:
            return fail()
        key = (client_id, pair_id)
        pair = self._pairs.get(key)
        if pair is not None and (generation is None or pair.generation == generation):
            del self._pairs[key]
        return succeed(None)

    def _live(self, client_id: str, pair_id: str, now: float) -> _Pair | None:
        """The pair unless idle-expired (then it is dropped)."""
        key = (client_id, pair_id)
        pair = self._pairs.get(key)
        if pair is not None and now - pair.last_used >= self.limits.idle_ttl:
            del self._pairs[key]
            return None
        return pair

    def _aged(self, pair: _Pair, now: float) -> bool:
        return now - pair.created >= self.limits.max_age

    def _sweep(self, now: float) -> None:
        """Drop idle-expired pairs; they are all at the front of the dict."""
        idle_ttl = self.limits.idle_ttl
        pairs = self._pairs
        while pairs:
            key, pair = next(iter(pairs.items()))
            if now - pair.last_used < idle_ttl:
                break
            del pairs[key]


def _as_bytes(secrets: bytes) -> bytes:
    if not isinstance(secrets, (bytes, bytearray, memoryview)):
        raise ValueError("pair secrets must be bytes")
    return bytes(secrets)
