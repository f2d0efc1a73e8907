"""Choosing the pair store from configuration.

Without a Redis URL the relay keeps pairs in process memory (one process, no
set-up); with one, replicas share them.  ``mterelay.store.redis`` is imported
only when needed; neither it nor its client (``redisclient``) imports the
global reactor, which must not be installed before twistd picks one.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.interfaces import IReactorTime

from mterelay.store.interface import IPairStore, StoreLimits
from mterelay.store.memory import MemoryPairStore

__all__ = ["build_store"]


def build_store(
    reactor: IReactorTime,
    *,
    redis_url: str | None,
    state_secret: bytes | None,
    limits: StoreLimits = StoreLimits(),
    key_prefix: str = "mterelay:",
    max_pairs: int = 100_000,
    previous_state_secrets: Sequence[bytes] = (),
) -> IPairStore:
    """The memory store when ``redis_url`` is None, else the Redis (Cluster) store.

    A ``redis+cluster://`` or ``rediss+cluster://`` URL selects the cluster
    store (``mterelay.store.cluster``), which routes by key slot.

    ``state_secret`` (STATE_SECRET, else CLIENT_ID_SECRET, as bytes) seals
    pair secrets at rest and is required with Redis; ``previous_state_secrets``
    still open pairs sealed before a rotation.
    """
    if redis_url is None:
        return MemoryPairStore(reactor, limits, max_pairs=max_pairs)
    if not state_secret:
        raise ValueError("a state secret is required to keep pairs in Redis")
    from mterelay.store.redisurl import parse_redis_url

    if parse_redis_url(redis_url).cluster:
        from mterelay.store.cluster import ClusterPairStore

        return ClusterPairStore(reactor, redis_url, state_secret, limits, key_prefix,
                                previous_state_secrets=previous_state_secrets)
    from mterelay.store.redis import RedisPairStore

    return RedisPairStore(reactor, redis_url, state_secret, limits, key_prefix,
                          previous_state_secrets=previous_state_secrets)
