"""In-process cache of pair keys in front of a pair store.

A pair's keys never change for its lifetime, so a relay need not fetch them
from Redis on every request: the only store round trip a request needs is
the atomic ``accept`` of its sequence number, which stays authoritative (a
pair that expired or was deleted answers UNKNOWN there, whatever the cache
holds).  Two things can make a cached entry stale, and both are handled by
the caller calling ``fetch``: the pair was replaced (re-paired with
the same id, possibly on another replica) — the headers item then fails to
open with the cached keys — or the store lost it.
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet.defer import Deferred, succeed

from mterelay.protocol.keys import PairKeys
from mterelay.store.interface import IPairStore

__all__ = ["KeyCache"]


class KeyCache:
    """Bounded LRU of ``(client uuid, pair id) -> (stored blob, PairKeys)``."""

    def __init__(self, store: IPairStore, max_entries: int = 20_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.store = store
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], tuple[bytes, PairKeys]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, keys: PairKeys, blob: bytes | None = None) -> None:
        """Cache keys this process just stored (pairing), saving the first fetch."""
        self._put((keys.client_id, keys.pair_id), blob if blob is not None else keys.to_bytes(),
                  keys)

    def forget(self, client_uuid: str, pair_id: str) -> None:
        self._entries.pop((client_uuid, pair_id), None)

    def peek(self, client_uuid: str, pair_id: str) -> PairKeys | None:
        """The cached keys, if any, without asking the store."""
        key = (client_uuid, pair_id)
        hit = self._entries.get(key)
        if hit is None:
            return None
        self._entries.move_to_end(key)
        return hit[1]

    def fetch(self, client_uuid: str, pair_id: str) -> "Deferred[PairKeys | None]":
        """Ask the store (None when it does not know the pair) and cache the answer.

        Errors (StoreUnavailable) propagate; unreadable state raises
        StateNotFound (560) from ``PairKeys.from_bytes``.
        """
        key = (client_uuid, pair_id)
        return self.store.get(client_uuid, pair_id).addCallback(self._loaded, key)

    def get(self, client_uuid: str, pair_id: str) -> "Deferred[PairKeys | None]":
        """Cached keys, else :meth:`fetch`."""
        hit = self.peek(client_uuid, pair_id)
        if hit is not None:
            return succeed(hit)
        return self.fetch(client_uuid, pair_id)

    def _loaded(self, blob: bytes | None, key: tuple[str, str]) -> PairKeys | None:
        if blob is None:
            self._entries.pop(key, None)
            return None
        cached = self._entries.get(key)
        if cached is not None and cached[0] == blob:
            self._entries.move_to_end(key)
            return cached[1]
        keys = PairKeys.from_bytes(blob)
        if (keys.client_id, keys.pair_id) != key:
            # A blob filed under another pair's name is not this pair's state.
            self._entries.pop(key, None)
            return None
        self._put(key, blob, keys)
        return keys

    def _put(self, key: tuple[str, str], blob: bytes, keys: PairKeys) -> None:
        self._entries[key] = (blob, keys)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
