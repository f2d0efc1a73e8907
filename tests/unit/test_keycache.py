"""The pair-key cache in front of the store (store/keycache.py): what it answers without
the store, when it asks again, and what it refuses to believe."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mterelay.protocol.clientid import new_client_id
from mterelay.protocol.errors import StateNotFound
from mterelay.protocol.keys import PairKeys
from mterelay.protocol.pairing import respond_all, start_pairing
from mterelay.store.interface import StoreUnavailable, pair_generation
from mterelay.store.keycache import CachedPair, KeyCache
from mterelay.store.memory import MemoryPairStore


def relay_keys(client: str, count: int = 1) -> list[PairKeys]:
    """The relay's keys of ``count`` fresh pairs of the bare client id ``client``."""
    pending = [start_pairing(client) for _ in range(count)]
    _, keys = respond_all(client, json.dumps([p.request_entry() for p in pending]))
    return keys


class CountingStore:
    """The real in-memory store, counting the ``get``s the cache makes."""

    def __init__(self) -> None:
        self.store = MemoryPairStore(Clock())
        self.gets = 0
        self.broken: Exception | None = None

    def get(self, client: str, pair: str) -> Deferred:
        self.gets += 1
        if self.broken is not None:
            return fail(self.broken)
        return self.store.get(client, pair)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


class KeyCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.client = new_client_id(b"s" * 32)[:36]
        self.store = CountingStore()
        self.cache = KeyCache(self.store)  # type: ignore[arg-type]

    def stored(self, keys: PairKeys, blob: bytes | None = None) -> bytes:
        blob = keys.to_bytes() if blob is None else blob
        self.successResultOf(self.store.create(keys.client_id, keys.pair_id, blob))
        return blob

    def get(self, keys: PairKeys) -> CachedPair | None:
        return self.successResultOf(self.cache.get(keys.client_id, keys.pair_id))

    def test_max_entries_at_least_one(self) -> None:
        self.assertRaises(ValueError, KeyCache, self.store, 0)
        self.assertEqual(KeyCache(self.store, 1).max_entries, 1)  # type: ignore[arg-type]

    def test_remembered_keys_answer_without_the_store(self) -> None:
        [keys] = relay_keys(self.client)
        blob = self.stored(keys)
        pair = self.cache.remember(keys, blob)
        self.assertEqual(pair.generation, pair_generation(blob))
        self.assertIs(self.cache.peek(self.client, keys.pair_id), pair)
        self.assertIs(self.get(keys), pair)
        self.assertEqual(self.store.gets, 0)

    def test_remember_without_a_blob_uses_the_keys_own(self) -> None:
        [keys] = relay_keys(self.client)
        self.assertEqual(self.cache.remember(keys).generation, pair_generation(keys.to_bytes()))

    def test_miss_is_fetched_once_then_cached(self) -> None:
        [keys] = relay_keys(self.client)
        blob = self.stored(keys)
        self.assertIsNone(self.cache.peek(self.client, keys.pair_id))
        first = self.get(keys)
        assert first is not None
        self.assertEqual(first.keys, keys)
        self.assertEqual(first.generation, pair_generation(blob))
        self.assertIs(self.get(keys), first)
        self.assertEqual(self.store.gets, 1)

    def test_fetch_always_asks_and_keeps_an_unchanged_entry(self) -> None:
        [keys] = relay_keys(self.client)
        pair = self.cache.remember(keys, self.stored(keys))
        self.assertIs(self.successResultOf(self.cache.fetch(self.client, keys.pair_id)), pair)
        self.assertEqual(self.store.gets, 1)

    def test_unknown_pair_is_none_and_forgotten(self) -> None:
        [keys] = relay_keys(self.client)
        self.cache.remember(keys)  # cached, but the store never had it (or lost it)
        self.assertIsNone(self.successResultOf(self.cache.fetch(self.client, keys.pair_id)))
        self.assertIsNone(self.cache.peek(self.client, keys.pair_id))
        self.assertEqual(len(self.cache), 0)

    def test_id_paired_again_is_a_new_generation(self) -> None:
        [old] = relay_keys(self.client)
        stale = self.cache.remember(old)
        [other] = relay_keys(self.client)
        again = PairKeys(version=other.version, client_id=self.client, pair_id=old.pair_id,
                         c2s_key=other.c2s_key, s2c_key=other.s2c_key)
        blob = self.stored(again)
        fresh = self.successResultOf(self.cache.fetch(self.client, old.pair_id))
        assert fresh is not None
        self.assertNotEqual(fresh.generation, stale.generation)
        self.assertEqual(fresh.generation, pair_generation(blob))
        self.assertEqual(fresh.keys.c2s_key, other.c2s_key)
        self.assertIs(self.cache.peek(self.client, old.pair_id), fresh)

    def test_blob_filed_under_another_pairs_name_is_refused(self) -> None:
        one, two = relay_keys(self.client, 2)
        self.cache.remember(one)
        # the store holds pair two's state under pair one's id (a moved key)
        self.successResultOf(self.store.create(self.client, one.pair_id, two.to_bytes()))
        self.assertIsNone(self.successResultOf(self.cache.fetch(self.client, one.pair_id)))
        self.assertIsNone(self.cache.peek(self.client, one.pair_id))

    def test_unreadable_state_is_560(self) -> None:
        [keys] = relay_keys(self.client)
        self.stored(keys, b"not a key blob")
        failure = self.failureResultOf(self.cache.get(self.client, keys.pair_id), StateNotFound)
        self.assertEqual(failure.value.code, 560)
        self.assertEqual(len(self.cache), 0)

    def test_store_errors_propagate_and_cache_nothing(self) -> None:
        [keys] = relay_keys(self.client)
        self.store.broken = StoreUnavailable("redis is down")
        self.failureResultOf(self.cache.get(self.client, keys.pair_id), StoreUnavailable)
        self.assertEqual(len(self.cache), 0)

    def test_least_recently_used_is_evicted(self) -> None:
        cache = KeyCache(self.store, max_entries=2)  # type: ignore[arg-type]
        a, b, c = relay_keys(self.client, 3)
        cache.remember(a)
        cache.remember(b)
        cache.peek(self.client, a.pair_id)  # a is now the most recent
        cache.remember(c)
        self.assertEqual(len(cache), 2)
        self.assertIsNone(cache.peek(self.client, b.pair_id))
        self.assertIsNotNone(cache.peek(self.client, a.pair_id))
        self.assertIsNotNone(cache.peek(self.client, c.pair_id))

    def test_forget(self) -> None:
        [keys] = relay_keys(self.client)
        self.cache.remember(keys)
        self.cache.forget(self.client, keys.pair_id)
        self.cache.forget(self.client, keys.pair_id)  # twice is fine
        self.assertIsNone(self.cache.peek(self.client, keys.pair_id))
