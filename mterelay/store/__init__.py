"""Pair stores: where pair secrets and anti-replay windows live.

``IPairStore`` is the contract; ``MemoryPairStore`` (embedded default) and
``RedisPairStore`` (shared by replicas, in ``mterelay.store.redis``, not
imported here so a memory-only relay never loads the Redis client) implement it.
"""

from mterelay.protocol.replay import Verdict
from mterelay.store.factory import build_store
from mterelay.store.interface import (IPairStore, PairExists, StoreLimits, StoreUnavailable,
                                      pair_generation)
from mterelay.store.memory import MemoryPairStore

__all__ = [
    "IPairStore",
    "MemoryPairStore",
    "PairExists",
    "StoreLimits",
    "StoreUnavailable",
    "Verdict",
    "build_store",
    "pair_generation",
]
