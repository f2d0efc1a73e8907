"""bench/pairing_flood.py's pure parts: the bodies it floods with are ones the relay
accepts, its arguments stay bounded, its percentiles are the usual ones."""

from __future__ import annotations

import json
import uuid

from twisted.trial.unittest import SynchronousTestCase

from bench import pairing_flood
from mterelay.protocol.pairing import respond_all


class PairingFloodTests(SynchronousTestCase):
    def test_bodies_are_valid_with_fresh_pair_ids(self) -> None:
        template = pairing_flood.entry_template()
        body = pairing_flood.pair_body(template, 25)
        entries, keys = respond_all(str(uuid.uuid4()), body, 25)
        self.assertEqual(len({k.pair_id for k in keys}), 25)
        again = json.loads(pairing_flood.pair_body(template, 25))
        self.assertFalse({e["pairId"] for e in again} & {k.pair_id for k in keys})

    def test_arguments(self) -> None:
        args = pairing_flood.parse_args(["--scenarios", "idle,victim", "--duration", "3"])
        self.assertEqual(args.scenario_list, ["idle", "victim"])
        for bad in (["--scenarios", "nope"], ["--duration", "301"], ["--rounds", "11"]):
            with self.assertRaises(SystemExit):
                pairing_flood.parse_args(bad)

    def test_percentile(self) -> None:
        values = [float(n) for n in range(1, 101)]
        self.assertEqual(pairing_flood.percentile(values, 0.5), 51.0)
        self.assertEqual(pairing_flood.percentile(values, 0.99), 99.0)
        self.assertIsNone(pairing_flood.percentile([], 0.5))

    def test_probe_sources_are_loopback_and_distinct(self) -> None:
        sources = pairing_flood.PROBE_SOURCES
        self.assertEqual(len(set(sources)), 254)
        self.assertTrue(all(s.startswith("127.") for s in sources))
        self.assertNotIn(pairing_flood.VICTIM_SOURCE, sources)
