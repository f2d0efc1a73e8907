"""Pairing under flood: admission before the ML-KEM work (issue 14, finding 5).

Route-level tests drive a MemoryRelay whose StubTreq peer (127.0.0.1) is a
trusted proxy, so ``X-Forwarded-For`` gives each simulated client its own
source address.  ``respond_all`` (the parse + ML-KEM + X25519 work) is
wrapped to count its calls: every refusal must happen before it runs.
"""

from __future__ import annotations

import copy
import ipaddress
import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mterelay.protocol.pairing import new_pair_id, start_pairing
from mterelay.store.memory import MemoryPairStore
from mterelay.web import handshake
from mterelay.web.admission import (PairingAdmission, PairingLimits, RefusalLog, Refusal,
                                    TokenBuckets)
from mterelay.web.sourceaddress import bucket_key, parse_address, source_address
from tests.helpers.support import MemoryRelay, json_of
from tests.unit.test_request_ids import serve_with_relay_site

_RESPOND_ALL = handshake.respond_all
TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:f::/48"))


def header_value(response: Any, name: str) -> str | None:
    values = response.headers.getRawHeaders(name.encode("ascii"))
    return values[0].decode("latin-1") if values else None


class HoldingStore(MemoryPairStore):
    """A store whose creates wait until the test releases them (a slow Redis)."""

    def __init__(self, clock: Any) -> None:
        super().__init__(clock)
        self.held: list[Deferred] = []

    def create(self, client_id: str, pair_id: str, secrets: bytes) -> Deferred:
        done: Deferred = Deferred()
        self.held.append(done)
        return done

    def release(self) -> None:
        held, self.held = self.held, []
        for done in held:
            done.callback(None)


class RelayCase(SynchronousTestCase):
    """A relay behind a trusted proxy; clients differ by X-Forwarded-For."""

    settings: dict[str, str] = {}

    def setUp(self) -> None:
        self.build()

    def build(self, store: Any = None, **settings: str) -> None:
        values = {"MAX_POOL_SIZE": "4", "TRUSTED_PROXIES": "127.0.0.1"}
        values.update(self.settings)
        values.update(settings)
        self.relay = MemoryRelay.build(store=store, **values)
        # The real site: streamed bodies, refusals metered, access lines.
        serve_with_relay_site(self.relay.client, self.relay.root, self.relay.clock,
                              metrics=self.relay.root.metrics)
        self.work = 0
        real = _RESPOND_ALL

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.work += 1
            return real(*args, **kwargs)

        self.patch(handshake, "respond_all", counted)
        self.template: dict[str, dict[str, Any]] = {}

    def client_id(self, source: str = "192.0.2.1") -> str:
        response, _ = self.relay.call("HEAD", "/api/mte-relay",
                                      headers={"x-forwarded-for": [source]})
        return header_value(response, "x-mte-relay") or ""

    def entries(self, client: str, count: int) -> list[dict[str, Any]]:
        """``count`` valid entries with fresh pair ids (keys reused: the relay cannot tell)."""
        if client not in self.template:
            self.template[client] = start_pairing(client[:36]).request_entry()
        out = []
        for _ in range(count):
            entry = copy.deepcopy(self.template[client])
            entry["pairId"] = new_pair_id()
            out.append(entry)
        return out

    def pair(self, client: str, count: int = 1, source: str = "192.0.2.1"
             ) -> tuple[Any, Any]:
        response, raw = self.relay.call(
            "POST", "/api/mte-pair",
            headers={"x-mte-relay": [client], "x-forwarded-for": [source]},
            data=json.dumps(self.entries(client, count)).encode())
        return response, json_of(raw) if raw else None

    def start_pair(self, client: str, count: int = 1, source: str = "192.0.2.1") -> list[Any]:
        """Send a pairing without waiting for it; the list gets the response."""
        got: list[Any] = []
        self.relay.client.request(
            "POST", "http://relay.test/api/mte-pair",
            headers={"x-mte-relay": [client], "x-forwarded-for": [source]},
            data=json.dumps(self.entries(client, count)).encode()).addCallback(got.append)
        self.relay.flush()
        return got

    def assert_refused(self, answer: tuple[Any, Any], limit: str, retry_after: int) -> None:
        response, body = answer
        self.assertEqual(response.code, 429, str(body)[:200])
        self.assertEqual(body["code"], 429)
        self.assertEqual(body["error"], "Too many pairings")
        self.assertEqual(body["limit"], limit)
        self.assertEqual(body["retryAfter"], retry_after)
        self.assertIn(f"retry in {retry_after} s", body["reason"])
        self.assertEqual(header_value(response, "retry-after"), str(retry_after))


class AddressLimitTests(RelayCase):
    settings = {"PAIRING_ADDRESS_RATE": "1", "PAIRING_CLIENT_RATE": "100"}

    def test_refused_before_the_work_with_retry_after(self) -> None:
        # Burst: max(4 s * 1/s, one full batch of 64) = 64 pairs.
        client = self.client_id()
        self.assertEqual(self.pair(client, 64)[0].code, 200)
        self.assertEqual(self.work, 1)
        self.assert_refused(self.pair(client, 1), "address", 1)
        self.relay.clock.advance(0.5)
        # 0.5 token there; 3 entries (~10.9 KB) declare at least 2 pairs before
        # the body is read: 1.5 s missing -> 2.
        self.assert_refused(self.pair(client, 3), "address", 2)
        self.relay.clock.advance(1.7)
        # 2.2 tokens: past the check on the declared length, the body's 3 entries
        # want 0.8 s more.
        self.assert_refused(self.pair(client, 3), "address", 1)
        self.assertEqual(self.work, 1)
        self.relay.clock.advance(1)
        self.assertEqual(self.pair(client, 3)[0].code, 200)
        self.assertEqual(self.work, 2)

    def test_declared_length_refuses_before_the_body_is_read(self) -> None:
        client = self.client_id()
        self.assertEqual(self.pair(client, 64)[0].code, 200)
        self.relay.clock.advance(1.5)  # 1.5 tokens: enough for a 1-pair pre-check
        read: list[int] = []
        real = handshake.read_body

        def reading(request: Any, limit: int) -> Any:
            read.append(limit)
            return real(request, limit)

        self.patch(handshake, "read_body", reading)
        self.assert_refused(self.pair(client, 4), "address", 2)  # 14.5 KB: 3 pairs at least
        self.assertEqual(read, [])

    def test_padded_body_is_delayed_never_refused_for_good(self) -> None:
        # One entry and 300 KB of white space (74 pairs' worth by length, more
        # than the bucket ever holds): counted as a full request (64) at most.
        client = self.client_id()
        for _ in range(2):
            data = json.dumps(self.entries(client, 1)).encode()[:-1] + b" " * 300_000 + b"]"
            response, _ = self.relay.call(
                "POST", "/api/mte-pair",
                headers={"x-mte-relay": [client], "x-forwarded-for": ["192.0.2.1"]}, data=data)
            self.assertEqual(response.code, 200)
            self.relay.clock.advance(1)  # 1 pair used, 1 refilled: full again

    def test_other_ids_from_the_same_address_share_it(self) -> None:
        first, second = self.client_id(), self.client_id()
        self.assertEqual(self.pair(first, 64)[0].code, 200)
        self.assert_refused(self.pair(second, 1), "address", 1)
        self.assertEqual(self.pair(second, 1, source="192.0.2.2")[0].code, 200)

    def test_forwarded_for_ignored_from_untrusted_peers(self) -> None:
        self.build(TRUSTED_PROXIES="", PAIRING_ADDRESS_RATE="1")
        client = self.client_id()
        self.assertEqual(self.pair(client, 64, source="192.0.2.1")[0].code, 200)
        # A forged X-Forwarded-For is no fresh budget: the peer is the source.
        self.assert_refused(self.pair(client, 1, source="192.0.2.99"), "address", 1)
        self.assertEqual(self.work, 1)

    def test_refusals_are_metered_by_limit(self) -> None:
        client = self.client_id()
        self.pair(client, 64)
        for _ in range(3):
            self.pair(client, 1)
        values = self.relay.root.metrics.relay_errors.labels("429", "pairing_address_limit")
        self.assertEqual(values._value.get(), 3)


class VictimTests(RelayCase):
    """Finding 5: flooding a victim's clear client id locked the victim out (25/25 -> 429)."""

    settings = {"PAIRING_CLIENT_RATE": "1", "PAIRING_ADDRESS_RATE": "1000"}

    def test_flood_on_victim_id_from_another_address(self) -> None:
        victim = self.client_id("192.0.2.10")
        for _ in range(80):  # the attacker saw the victim's id on the wire
            response, body = self.pair(victim, 1, source="198.51.100.66")
        self.assertEqual(response.code, 429)  # the attacker is held back...
        work = self.work
        for _ in range(4):  # ...the victim is not: its own budget (64 pairs) is untouched
            response, body = self.pair(victim, 1, source="192.0.2.10")
            self.assertEqual(response.code, 200, str(body)[:200])
        self.assertEqual(self.work, work + 4)

    def test_one_client_cannot_take_a_shared_address(self) -> None:
        greedy, other = self.client_id("192.0.2.20"), self.client_id("192.0.2.20")
        self.assertEqual(self.pair(greedy, 64, source="192.0.2.20")[0].code, 200)
        work = self.work
        self.assert_refused(self.pair(greedy, 1, source="192.0.2.20"), "client", 1)
        self.assertEqual(self.work, work)
        self.assertEqual(self.pair(other, 4, source="192.0.2.20")[0].code, 200)


class GlobalBudgetTests(RelayCase):
    # Global burst 4 s * 32/s = 128 pairs, 32 of them reserved for quiet sources.
    settings = {"PAIRING_GLOBAL_RATE": "32", "PAIRING_ADDRESS_RATE": "16",
                "PAIRING_CLIENT_RATE": "100"}

    def test_many_addresses_and_ids_hit_the_global_budget(self) -> None:
        admitted = refused = 0
        for n in range(40):  # a new address and a new id each time: only the budget is left
            source = f"192.0.2.{n + 1}"
            response, body = self.pair(self.client_id(source), 16, source=source)
            if response.code == 200:
                admitted += 16
            else:
                self.assertEqual(body["limit"], "global")
                self.assertEqual(header_value(response, "retry-after"), "1")
                refused += 1
        self.assertEqual(admitted, 128)
        self.assertEqual(self.work, 8)
        self.assertEqual(refused, 32)
        self.relay.clock.advance(1)  # 32 pairs back
        self.assertEqual(self.pair(self.client_id("192.0.2.200"), 16,
                                   source="192.0.2.200")[0].code, 200)

    def test_flooding_sources_leave_the_reserve_to_newcomers(self) -> None:
        flooders = [(self.client_id(s), s) for s in ("198.51.100.1", "198.51.100.2")]
        newcomer_answers = []
        flood_limits = set()
        for tick in range(80):  # 20 s: both flooders offer 64 pairs/s each
            for client, source in flooders:
                response, body = self.pair(client, 16, source=source)
                if response.code == 429:
                    flood_limits.add(body["limit"])
            if tick % 4 == 3:  # a new client every second, from its own address
                source = f"192.0.2.{tick}"
                response, body = self.pair(self.client_id(source), 16, source=source)
                newcomer_answers.append(response.code if response.code == 200 else body)
            self.relay.clock.advance(0.25)
        self.maxDiff = None
        self.assertEqual(newcomer_answers, [200] * 20)
        self.assertIn("global", flood_limits)


class ConcurrencyTests(RelayCase):
    def test_cap_counts_pairings_waiting_on_the_store(self) -> None:
        store = HoldingStore(None)
        self.build(store=store, PAIRING_CONCURRENCY="2")
        first = self.start_pair(self.client_id("192.0.2.1"), source="192.0.2.1")
        second = self.start_pair(self.client_id("192.0.2.2"), source="192.0.2.2")
        self.assertEqual((first, second, len(store.held)), ([], [], 2))
        third = self.start_pair(self.client_id("192.0.2.3"), source="192.0.2.3")
        self.assertEqual(len(third), 1, "the third pairing was not answered at once")
        self.assert_refused((third[0], json_of(self.relay.client.content(third[0]).result)),
                            "concurrency", 1)
        self.assertEqual(self.work, 2)
        self.assertEqual(self.relay.root.pairing.admission.in_flight, 2)
        store.release()
        self.relay.flush()
        self.assertEqual([first[0].code, second[0].code], [200, 200])
        self.assertEqual(self.relay.root.pairing.admission.in_flight, 0)
        self.start_pair(self.client_id("192.0.2.3"), source="192.0.2.3")
        self.assertEqual(self.work, 3)

    def test_slot_released_on_every_outcome(self) -> None:
        client = self.client_id()
        bad = self.entries(client, 1)
        bad[0]["c2s"]["mlkem768"] = "AAAA"  # found by the full parse, after admission
        response, _ = self.relay.call(
            "POST", "/api/mte-pair", headers={"x-mte-relay": [client]},
            data=json.dumps(bad).encode())
        self.assertEqual(response.code, 400)
        self.assertEqual(self.relay.root.pairing.admission.in_flight, 0)


class CheapChecksFirstTests(RelayCase):
    def test_malformed_shape_never_reaches_the_work(self) -> None:
        client = self.client_id()
        for data in (b"not json", b"{}", b"[]", json.dumps(self.entries(client, 65)).encode()):
            response, raw = self.relay.call("POST", "/api/mte-pair",
                                            headers={"x-mte-relay": [client]}, data=data)
            self.assertEqual(response.code, 400, data[:20])
            self.assertEqual(json_of(raw)["field"], "$")
        self.assertEqual(self.work, 0)
        # and did not cost the client any budget
        self.assertEqual(self.relay.root.pairing.admission.addresses.level(
            "127.0.0.1", self.relay.clock.seconds()), 400.0)


# ------------------------------------------------------------------ units


class TokenBucketTests(SynchronousTestCase):
    def test_refill_and_wait(self) -> None:
        buckets = TokenBuckets(rate=2, burst=10)
        self.assertEqual(buckets.level("a", 0.0), 10)
        buckets.take("a", 10, 0.0)
        self.assertEqual(buckets.wait("a", 3, 0.0), 1.5)
        self.assertEqual(buckets.wait("a", 3, 1.0), 0.5)
        self.assertEqual(buckets.wait("a", 3, 2.0), 0.0)
        self.assertEqual(buckets.level("a", 100.0), 10)
        self.assertEqual(buckets.wait("a", 3, 100.0, keep=8), 0.5)

    def test_memory_bounded_least_recently_used_forgotten(self) -> None:
        buckets = TokenBuckets(rate=1, burst=4, max_keys=1000)
        buckets.take("kept", 4, 0.0)
        for n in range(30_000):
            buckets.take(f"flood-{n}", 1, 0.0)
            if n % 500 == 0:
                buckets.take("kept", 0, 0.0)  # still in use: stays
        self.assertEqual(len(buckets), 1000)
        self.assertEqual(buckets.level("kept", 0.0), 0.0)
        self.assertEqual(buckets.level("flood-0", 0.0), 4.0)  # forgotten: full again

    def test_admission_tables_bounded(self) -> None:
        admission = PairingAdmission(Clock(), PairingLimits(global_rate=1e6, max_keys=500))
        for n in range(5000):
            self.assertIsNone(admission.admit(f"src-{n}", f"client-{n}", 1))
            admission.release()
        self.assertEqual((len(admission.addresses), len(admission.clients)), (500, 500))

    def test_refusal_charges_nothing(self) -> None:
        clock = Clock()
        admission = PairingAdmission(clock, PairingLimits(address_rate=1, client_rate=1,
                                                          global_rate=100, max_entries=4))
        self.assertIsNone(admission.admit("a", "c", 4))
        admission.release()
        self.assertEqual(admission.admit("a", "c", 1).limit, "address")
        self.assertEqual(admission.budget.level(None, 0.0), 396)
        self.assertEqual(admission.in_flight, 0)

    def test_a_paced_flooder_is_not_quiet(self) -> None:
        # Global 10/s: burst 40, reserve 10.  The flooder stays under its address
        # rate (50 of 100 pairs/s) yet asks for more than a quarter of it: the
        # reserve is not for it, and every newcomer finds it.
        clock = Clock()
        admission = PairingAdmission(clock, PairingLimits(address_rate=100, client_rate=100,
                                                          global_rate=10, max_entries=25))
        self.assertEqual(admission.reserve, 10)
        newcomers, flood_admitted = [], 0
        for tick in range(200):
            if admission.admit("flooder", "c", 5) is None:
                admission.release()
                flood_admitted += 5
            if tick % 10 == 9 and tick > 20:  # past its first quiet requests
                refusal = admission.admit(f"new-{tick}", "n", 5)
                newcomers.append(refusal)
                if refusal is None:
                    admission.release()
            clock.advance(0.1)
        self.assertEqual(newcomers, [None] * 18)
        self.assertGreater(flood_admitted, 60)  # it still gets what the others leave

    def test_reserve_never_blocks_a_full_request(self) -> None:
        limits = PairingLimits(global_rate=1, max_entries=25)  # burst 25: no room for a reserve
        admission = PairingAdmission(Clock(), limits)
        self.assertEqual(admission.reserve, 0)


class RefusalLogTests(SynchronousTestCase):
    def test_one_line_per_limit_per_interval(self) -> None:
        clock = Clock()
        lines: list[dict[str, Any]] = []
        logger = Logger(namespace="test.pairing", observer=lines.append)
        refusals = RefusalLog(clock, interval=10, logger=logger)
        address = Refusal("address", 1, "too fast")
        for _ in range(1000):
            refusals.refused(address, "192.0.2.1")
            clock.advance(0.001)
        refusals.refused(Refusal("global", 1, "busy"), "192.0.2.2")
        self.assertEqual(len(lines), 2)
        clock.advance(10)
        self.assertTrue(refusals.refused(address, "192.0.2.1"))
        self.assertEqual(len(lines), 3)
        self.assertIn("999 more refusal(s)", lines[-1]["more"])
        self.assertEqual(lines[-1]["log_level"], LogLevel.info)

    def test_route_logs_a_flood_once(self) -> None:
        lines: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") in ("mterelay.pairing", "mterelay.web"):
                lines.append(event)

        relay = MemoryRelay.build(MAX_POOL_SIZE="4", PAIRING_ADDRESS_RATE="1")
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        client = header_value(relay.call("HEAD", "/api/mte-relay")[0], "x-mte-relay")
        template = start_pairing(client[:36]).request_entry()

        def body() -> bytes:  # fresh pair ids each time: ids are never reused
            return json.dumps([dict(template, pairId=new_pair_id()) for _ in range(4)]).encode()

        codes = [relay.call("POST", "/api/mte-pair", headers={"x-mte-relay": [client]},
                            data=body())[0].code for _ in range(200)]
        self.assertEqual((codes.count(200), codes.count(429)), (16, 184))  # burst 64
        refusal_lines = [e for e in lines if "refused" in e.get("log_format", "")]
        self.assertEqual(len(refusal_lines), 1)


class SourceAddressTests(SynchronousTestCase):
    def test_peer_without_trusted_proxies(self) -> None:
        self.assertEqual(source_address("192.0.2.1", [b"6.6.6.6"], ()), "192.0.2.1")
        self.assertEqual(source_address("192.0.2.1", [b"6.6.6.6"], TRUSTED), "192.0.2.1")

    def test_rightmost_untrusted_entry(self) -> None:
        self.assertEqual(source_address("10.0.0.1", [b"203.0.113.5"], TRUSTED), "203.0.113.5")
        # The client prepended a lie; our proxy appended the truth after it.
        self.assertEqual(source_address("10.0.0.1", [b"6.6.6.6, 203.0.113.5"], TRUSTED),
                         "203.0.113.5")
        # Two trusted hops (an ALB in front of an ingress).
        self.assertEqual(source_address("10.0.0.1", [b"6.6.6.6, 203.0.113.5, 10.1.2.3"],
                                        TRUSTED), "203.0.113.5")
        # Repeated headers are one list, in order.
        self.assertEqual(source_address("10.0.0.1", [b"6.6.6.6", b"203.0.113.5, 10.9.9.9"],
                                        TRUSTED), "203.0.113.5")

    def test_all_trusted_or_missing(self) -> None:
        self.assertEqual(source_address("10.0.0.1", [b"10.0.0.2, 10.0.0.3"], TRUSTED),
                         "10.0.0.2")
        self.assertEqual(source_address("10.0.0.1", None, TRUSTED), "10.0.0.1")
        self.assertEqual(source_address("10.0.0.1", [], TRUSTED), "10.0.0.1")

    def test_garbage_stops_at_the_last_vouched_hop(self) -> None:
        self.assertEqual(source_address("10.0.0.1", [b"203.0.113.5, unknown"], TRUSTED),
                         "10.0.0.1")
        self.assertEqual(source_address("10.0.0.1", [b"garbage, 10.0.0.7"], TRUSTED),
                         "10.0.0.7")
        self.assertEqual(source_address("10.0.0.1", [b""], TRUSTED), "10.0.0.1")

    def test_forms_proxies_write(self) -> None:
        self.assertEqual(str(parse_address("203.0.113.5:4711")), "203.0.113.5")
        self.assertEqual(str(parse_address("[2001:db8::1]:443")), "2001:db8::1")
        self.assertEqual(str(parse_address("2001:db8::1")), "2001:db8::1")
        self.assertEqual(str(parse_address("::ffff:10.0.0.1")), "10.0.0.1")
        self.assertEqual(str(parse_address("fe80::1%eth0")), "fe80::1")
        self.assertIsNone(parse_address("[2001:db8::1"))
        self.assertIsNone(parse_address("unknown"))
        self.assertEqual(source_address("::ffff:10.0.0.1", [b"203.0.113.5"], TRUSTED),
                         "203.0.113.5")
        self.assertEqual(source_address("2001:db8:f::1", [b"[2001:db8:1::9]:80"], TRUSTED),
                         "2001:db8:1::9")

    def test_non_ip_peer(self) -> None:
        self.assertEqual(source_address(None, [b"203.0.113.5"], TRUSTED), "unknown")
        self.assertEqual(source_address("/run/relay.sock", None, TRUSTED), "/run/relay.sock")

    def test_bucket_key(self) -> None:
        self.assertEqual(bucket_key("203.0.113.5"), "203.0.113.5")
        self.assertEqual(bucket_key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64")
        self.assertEqual(bucket_key("2001:db8:1:2:bbbb::7"), "2001:db8:1:2::/64")
        self.assertEqual(bucket_key("unknown"), "unknown")
