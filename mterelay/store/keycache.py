"""In-process cache of pair keys in front of a pair store.

A pair's keys never change for its lifetime, so a relay need not fetch them
from Redis on every request: the only store round trip a request needs is
the atomic ``accept`` of its sequence number, which stays authoritative.
What the cache cannot know is whether the pair it remembers is still the
one the store holds under that id: the pair may have expired, been deleted
or lost with a flushed or restarted Redis, and the id paired again since
(pair ids are never *replaced*, but a free id can be taken anew).  So every
entry carries the pair's generation (``pair_generation`` of the stored
blob) and the relay passes it to ``accept``, which answers STALE when the
store's pair is another one; the caller then ``fetch``es.  An entry whose
keys fail to open a message is re-fetched the same way.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict

import attrs
from twisted.internet.defer import Deferred, succeed

from mterelay.protocol.keys import PairKeys
from mterelay.store.interface import IPairStore, pair_generation

__all__ = ["CachedPair", "KeyCache"]


@attrs.frozen
class CachedPair:
    """Keys of a pair and the generation they belong to (checked by ``accept``)."""

    keys: PairKeys
    generation: str


class KeyCache:
    """Bounded LRU of ``(client uuid, pair id) -> (stored blob, CachedPair)``."""

    def __init__(self, store: IPairStore, max_entries: int = 20_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.store = store
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], tuple[bytes, CachedPair]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, keys: PairKeys, blob: bytes | None = None) -> CachedPair:
        """Cache keys this process just stored (pairing), saving the first fetch."""
        blob = blob if blob is not None else keys.to_bytes()
        pair = CachedPair(keys, pair_generation(blob))
        self._put((keys.client_id, keys.pair_id), blob, pair)
        return pair

    def forget(self, client_uuid: str, pair_id: str) -> None:
        self._entries.pop((client_uuid, pair_id), None)

    def peek(self, client_uuid: str, pair_id: str) -> CachedPair | None:
        """The cached pair, if any, without asking the store."""
        key = (client_uuid, pair_id)
        hit = self._entries.get(key)
        if hit is None:
            return None
        self._entries.move_to_end(key)
        return hit[1]

    def fetch(self, client_uuid: str, pair_id: str) -> "Deferred[CachedPair | None]":
        """Ask the store (None when it does not know the pair) and cache the answer.

        Errors (StoreUnavailable) propagate; unreadable state raises
        StateNotFound (560) from ``PairKeys.from_bytes``.
        """
        key = (client_uuid, pair_id)
        return self.store.get(client_uuid, pair_id).addCallback(self._loaded, key)

    def get(self, client_uuid: str, pair_id: str) -> "Deferred[CachedPair | None]":
        """Cached pair, else :meth:`fetch`."""
        hit = self.peek(client_uuid, pair_id)
        if hit is not None:
            return succeed(hit)
        return self.fetch(client_uuid, pair_id)

    def _loaded(self, blob: bytes | None, key: tuple[str, str]) -> CachedPair | None:
        if blob is None:
            self._entries.pop(key, None)
            return None
        cached = self._entries.get(key)
        if cached is not None and hmac.compare_digest(cached[0], blob):
            self._entries.move_to_end(key)
            return cached[1]
        keys = PairKeys.from_bytes(blob)
        if (keys.client_id, keys.pair_id) != key:
            # A blob filed under another pair's name is not this pair's state.
            self._entries.pop(key, None)
            return None
        pair = CachedPair(keys, pair_generation(blob))
        self._put(key, blob, pair)
        return pair

    def _put(self, key: tuple[str, str], blob: bytes, pair: CachedPair) -> None:
        self._entries[key] = (blob, pair)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
