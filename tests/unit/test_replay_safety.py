"""Replay safety across replicas, key caches, re-pairs and lost state (issue 14, finding 1).

In-process replicas: several RelayRoots (each with its own KeyCache) over
one shared pair store, a spec-following sealer written against the
protocol core, and recording upstreams counting what reached them.  The
same attacks against real relay processes on a real Redis are in
tests/integration/test_replay_integration.py.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mterelay.protocol.pairing import start_pairing
from mterelay.store.interface import StoreLimits, pair_generation
from mterelay.store.memory import MemoryPairStore
from tests.helpers.support import MemoryRelay, json_of
from tests.helpers.sealer import Sealer


class Replicas:
    """``count`` relays sharing one memory store and one clock, each with its own cache."""

    def __init__(self, count: int = 2, **overrides: str) -> None:
        first = MemoryRelay.build(**overrides)
        self.clock = first.clock
        self.store = first.root.store
        self.relays = [first]
        self.retired: list[MemoryRelay] = []
        for _ in range(count - 1):
            self.relays.append(self.replica(**overrides))

    def replica(self, **overrides: str) -> MemoryRelay:
        """A relay process joining (or restarting on) the shared store: an empty cache."""
        relay = MemoryRelay.build(store=self.store, **overrides)
        relay.clock = self.clock
        relay.root.clock = self.clock
        return relay

    def restart(self, index: int, **overrides: str) -> MemoryRelay:
        self.retired.append(self.relays[index])
        self.relays[index] = self.replica(**overrides)
        return self.relays[index]

    def received(self, path: bytes) -> int:
        """How many requests for ``path`` reached any upstream (restarted relays' too)."""
        return sum(1 for relay in self.relays + self.retired for seen in relay.upstream.received
                   if seen.uri.split(b"?")[0] == path)


def replay(relay: MemoryRelay, sent: Any) -> tuple[Any, Any]:
    """Send a captured request again, byte for byte, to ``relay``."""
    wire = sent.wire
    kwargs: dict[str, Any] = {"headers": wire["headers"]}
    if wire["body"] is not None:
        kwargs["data"] = wire["body"]
    response, body = relay.call("POST" if wire["body"] is not None else "GET",
                                wire["target"], **kwargs)
    if response.code == 200:
        return response, {"code": "a sealed 200: the replay was ACCEPTED"}
    return response, json_of(body)


def attacker_pairs(relay: MemoryRelay, client_id: str, pair_id: str) -> tuple[Any, Any, Any]:
    """Pair ``pair_id`` under someone else's (clear) client id; (response, body, keys)."""
    pending = start_pairing(client_id[:36], pair_id)
    response, body = relay.call(
        "POST", "/api/mte-pair",
        headers={"x-mte-relay": [client_id], "content-type": ["application/json"]},
        data=json.dumps([pending.request_entry()]).encode())
    answer = json_of(body)
    keys = pending.finish(answer[0]) if response.code == 200 else None
    return response, answer, keys


class RePairingTests(SynchronousTestCase):
    """An observer knows the client id and pair id; re-pairing them must do nothing."""

    def setUp(self) -> None:
        self.replicas = Replicas(2)
        self.a, self.b = self.replicas.relays
        self.client = Sealer(self.a)
        self.keys = self.client.pair()[0]
        self.on_b = Sealer.__new__(Sealer)
        self.on_b.relay, self.on_b.client_id, self.on_b.keys = (
            self.b, self.client.client_id, [self.keys])
        self.on_b.seq = 1000

    def test_repair_refused_pair_intact_replays_refused_everywhere(self) -> None:
        captured = self.client.send("POST", "/api/transfer", {}, b'{"amount": 100}')
        self.assertEqual(captured.response.code, 200)
        self.assertEqual(self.on_b.send("GET", "/warm-b").response.code, 200)  # b caches
        for relay in (self.a, self.b):
            response, answer, _ = attacker_pairs(relay, self.client.client_id,
                                                 self.keys.pair_id)
            self.assertEqual(response.code, 409)
            self.assertEqual(answer["code"], 409)
            self.assertEqual(answer["field"], "[0].pairId")
            self.assertEqual(answer["error"], "Pair id in use")
        for relay in (self.a, self.b, self.a):
            response, answer = replay(relay, captured)
            self.assertEqual((response.code, answer["code"]), (562, 562))
        self.assertEqual(self.replicas.received(b"/api/transfer"), 1)
        # the client's pair still works, on both replicas
        sent = self.client.send("GET", "/after-a")
        self.assertEqual(sent.response.code, 200)
        self.assertEqual(Sealer.open(sent, self.keys)[1], b'{"ok":true}')
        self.assertEqual(self.on_b.send("GET", "/after-b").response.code, 200)

    def test_batch_with_an_id_in_use_stores_nothing(self) -> None:
        fresh = [start_pairing(self.client.client_id[:36]) for _ in range(2)]
        taken = start_pairing(self.client.client_id[:36], self.keys.pair_id)
        body = [fresh[0].request_entry(), taken.request_entry(), fresh[1].request_entry()]
        response, raw = self.b.call("POST", "/api/mte-pair",
                                    headers={"x-mte-relay": [self.client.client_id]},
                                    data=json.dumps(body).encode())
        self.assertEqual(response.code, 409)
        self.assertEqual(json_of(raw)["field"], "[1].pairId")
        self.assertEqual(len(self.replicas.store), 1)  # only the client's own pair
        self.assertEqual(len(self.b.root.keys), 0)     # nothing cached either
        # the fresh ids were not claimed: pairing them again works
        response, raw = self.b.call("POST", "/api/mte-pair",
                                    headers={"x-mte-relay": [self.client.client_id]},
                                    data=json.dumps([p.request_entry() for p in fresh]).encode())
        self.assertEqual(response.code, 200)
        self.assertEqual(len(self.replicas.store), 3)

    def test_undo_never_removes_a_pair_made_by_someone_else(self) -> None:
        """The batch undo deletes by generation: only what this request wrote."""
        store = self.replicas.store
        mine = start_pairing(self.client.client_id[:36])
        # someone else's pair appears under the same id between our create and our undo
        original_delete = store.delete
        deletions: list[tuple] = []

        def delete(client_id: str, pair_id: str, generation: str | None = None) -> Any:
            deletions.append((pair_id, generation))
            store._pairs.pop((client_id, pair_id))
            store.create(client_id, pair_id, b"someone else's pair")
            return original_delete(client_id, pair_id, generation)

        store.delete = delete
        taken = start_pairing(self.client.client_id[:36], self.keys.pair_id)
        response, _ = self.a.call(
            "POST", "/api/mte-pair", headers={"x-mte-relay": [self.client.client_id]},
            data=json.dumps([mine.request_entry(), taken.request_entry()]).encode())
        self.assertEqual(response.code, 409)
        self.assertEqual([pair_id for pair_id, _ in deletions], [mine.pair_id])
        self.assertIsNotNone(deletions[0][1])
        self.assertEqual(self.successResultOf(store.get(self.client.client_id[:36],
                                                        mine.pair_id)),
                         b"someone else's pair")


class LostStateTests(SynchronousTestCase):
    """The pair is lost (deleted, expired, store flushed); the id is paired anew by someone."""

    def setUp(self) -> None:
        self.replicas = Replicas(2, PAIR_IDLE_TTL="60")
        self.a, self.b = self.replicas.relays
        self.client = Sealer(self.a)
        self.keys = self.client.pair()[0]
        self.captured = self.client.send("POST", "/api/transfer", {}, b'{"amount": 100}')
        self.assertEqual(self.captured.response.code, 200)
        on_b = Sealer.__new__(Sealer)
        on_b.relay, on_b.client_id, on_b.keys, on_b.seq = (
            self.b, self.client.client_id, [self.keys], 500)
        self.assertEqual(on_b.send("GET", "/warm-b").response.code, 200)  # b caches old keys

    def attack_and_replay(self) -> Any:
        """The attacker takes the free id (through a), then replays R everywhere."""
        response, _, attacker_keys = attacker_pairs(self.a, self.client.client_id,
                                                    self.keys.pair_id)
        self.assertEqual(response.code, 200)
        for relay in (self.b, self.a, self.b):
            response, answer = replay(relay, self.captured)
            self.assertEqual((response.code, answer["code"]), (562, 562))
        self.assertEqual(self.replicas.received(b"/api/transfer"), 1)
        # the new pair's window was not touched by the refused replays
        attacker = Sealer.__new__(Sealer)
        attacker.relay, attacker.client_id, attacker.keys = (
            self.b, self.client.client_id, [attacker_keys])
        attacker.seq = self.captured.header.seq
        self.assertEqual(attacker.send("GET", "/attacker").response.code, 200)
        return attacker_keys

    def test_pair_deleted_in_the_store(self) -> None:
        self.replicas.store.delete(self.client.client_id[:36], self.keys.pair_id)
        self.attack_and_replay()

    def test_pair_expired(self) -> None:
        self.replicas.clock.advance(61)
        self.attack_and_replay()

    def test_store_lost_everything(self) -> None:
        self.replicas.store._pairs.clear()  # a restarted/flushed store
        self.attack_and_replay()

    def test_restarted_replica_takes_the_new_pairing(self) -> None:
        """The attacker pairs through a replica that restarted (empty cache)."""
        self.replicas.store.delete(self.client.client_id[:36], self.keys.pair_id)
        self.a = self.replicas.restart(0, PAIR_IDLE_TTL="60")
        self.attack_and_replay()

    def test_owner_of_the_new_pair_is_served_by_a_stale_cache(self) -> None:
        self.replicas.store.delete(self.client.client_id[:36], self.keys.pair_id)
        _, _, new_keys = attacker_pairs(self.a, self.client.client_id, self.keys.pair_id)
        owner = Sealer.__new__(Sealer)
        owner.relay, owner.client_id, owner.keys, owner.seq = (
            self.b, self.client.client_id, [new_keys], 0)
        sent = owner.send("GET", "/new-owner")
        self.assertEqual(sent.response.code, 200)
        self.assertEqual(Sealer.open(sent, new_keys)[1], b'{"ok":true}')

    def test_old_client_learns_its_pair_is_gone(self) -> None:
        """The client of the lost pair gets 562 (re-pair, spec 10), never the new pair's data."""
        self.replicas.store.delete(self.client.client_id[:36], self.keys.pair_id)
        attacker_pairs(self.a, self.client.client_id, self.keys.pair_id)
        for relay in (self.a, self.b):
            self.client.relay = relay
            sent = self.client.send("GET", "/still-mine")
            self.assertEqual(sent.response.code, 562)
        self.assertEqual(self.replicas.received(b"/still-mine"), 0)


class GenerationStoreTests(SynchronousTestCase):
    def test_stale_message_on_the_store_changes_nothing(self) -> None:
        store = MemoryPairStore(MemoryRelay.build().clock, StoreLimits())
        store.create("c" * 36, "p" * 16, b"new")
        verdict = self.successResultOf(store.accept("c" * 36, "p" * 16, 3,
                                                    pair_generation(b"old")))
        self.assertEqual(verdict.value, "stale")
        verdict = self.successResultOf(store.accept("c" * 36, "p" * 16, 3,
                                                    pair_generation(b"new")))
        self.assertEqual(verdict.value, "accepted")
