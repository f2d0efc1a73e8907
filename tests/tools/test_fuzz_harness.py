"""The campaign's own logic (fuzz/), without processes: what it counts must be right."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mterelay.protocol.clientid import sign_client_uuid
from mterelay.protocol.keys import PairKeys
from mterelay.protocol.pairing import start_pairing

from fuzz import logscan, wire
from fuzz.campaign import entry_of
from fuzz.cases import Context, generate
from fuzz.parts import Parts
from fuzz.runner import Outcome, is_refusal, tally
from fuzz.session import Client

UUID = "00000000-0000-4000-8000-000000000000"


def _context() -> Context:
    keys = [PairKeys(1, UUID, f"harnessPair{i:08d}", os.urandom(32), os.urandom(32))
            for i in range(2)]
    client = Client(sign_client_uuid(b"s" * 40, UUID), keys)
    return Context(balancer=1, inbound=[2, 3], outbound=[4, 5], every=[1, 2, 3, 4, 5],
                   secret_b="s" * 40, token="tok", clients=[client],
                   pendings=[start_pairing(UUID) for _ in range(3)])


class CaseTests(SynchronousTestCase):
    def test_deterministic_given_seed(self) -> None:
        ctx = _context()
        for index in (0, 7, 1183, 5000):
            a, b = generate(ctx, 14, index), generate(ctx, 14, index)
            self.assertEqual((a.entry, a.kind, a.port), (b.entry, b.kind, b.port))
            self.assertEqual(entry_of(14, index), a.entry)
        kinds = {generate(ctx, 14, i).kind for i in range(50)}
        self.assertNotEqual(kinds, {generate(ctx, 15, i).kind for i in range(50)})

    def test_every_entry_point_and_no_generator_error(self) -> None:
        ctx = _context()
        entries = set()
        for index in range(3000):
            case = generate(ctx, 3, index)
            entries.add(case.entry)
            # Only socket-level garbage may be empty (connect, send nothing, hang up).
            self.assertTrue(case.data or case.entry == "raw", case)
        self.assertEqual(entries, {"proxy", "pair", "outbound", "raw", "passthrough", "echo",
                                   "relay-head", "abort", "slow"})

    def test_parts_framing(self) -> None:
        p = Parts.of("POST", "/x", [("a", "b")], b"hello")
        self.assertIn(b"Content-Length: 5\r\n", p.raw())
        p.framing, p.cut = "chunked", 3
        raw = p.raw()
        self.assertIn(b"Transfer-Encoding: chunked", raw)
        self.assertTrue(raw.endswith(b"\r\n\r\n5\r\n"), raw)


class CountingTests(SynchronousTestCase):
    def test_refusal_only_without_upstream_marks(self) -> None:
        self.assertTrue(is_refusal(wire.Reply(562)))
        self.assertTrue(is_refusal(wire.Reply(400)))
        self.assertFalse(is_refusal(wire.Reply(502)))
        self.assertFalse(is_refusal(wire.Reply(404, [("x-fuzz-upstream", "1")])))
        self.assertFalse(is_refusal(wire.Reply(560, [("x-mte-relay", "x")])))
        self.assertFalse(is_refusal(wire.Reply(outcome="closed")))

    def test_tally_flags_refused_requests_that_reached_and_replays(self) -> None:
        outcomes = [Outcome("c1", "proxy", "k", "562", must_not_reach=True),
                    Outcome("c2", "proxy", "k", "562", must_not_reach=True),
                    Outcome("c3", "proxy", "valid", "200", False, valid=True),
                    Outcome("c4", "proxy", "replay", "200", False, valid=True, replay=True,
                            replay_label="refused"),
                    Outcome("c5", "proxy", "replay", "200", False, valid=True, replay=True,
                            replay_label="refused"),
                    Outcome("c6", "proxy", "replay", "200", False, valid=True, replay=True,
                            replay_label="200"),
                    Outcome("c7", "proxy", "replay", "503", False, valid=True, valid_ok=False,
                            replay=True, replay_label="200")]
        records = [{"case": "c2"}, {"case": "c3"}, {"case": "c3"}, {"case": "c4"},
                   {"case": "c5"}, {"case": "c5"}, {"case": "c6"}, {"case": "c7"}]
        stats = tally(outcomes, records)["proxy"]
        self.assertEqual(stats.refused_reached, 1)   # c2
        self.assertEqual(stats.valid_failed, 2)      # c3 executed twice, c7 answered 503
        self.assertEqual(stats.replays_accepted, 2)  # c5 executed twice, c6 answered twice
        self.assertEqual(stats.statuses["562"], 2)


class LogScanTests(SynchronousTestCase):
    def test_critical_store_confusion_and_query_leaks(self) -> None:
        path = Path(tempfile.mkdtemp()) / "relay.log"
        lines = [
            {"time": "2026-12-01T10:00:00.000Z", "level": "info", "message": "GET /x 200"},
            {"time": "2026-12-01T10:00:00.100Z", "level": "critical", "message": "failed",
             "error": "Traceback ...\nTypeError: int() argument must be ... not 'list'"},
            {"time": "2026-12-01T10:00:00.200Z", "level": "warn",
             "message": "HEAD request uri=/a?fuzzsecret=1"},
            {"time": "2026-12-01T10:00:00.300Z", "level": "info",
             "message": "GET /a_fuzzsecret_path 562"},
            {"time": "2026-12-01T10:00:00.400Z", "level": "info",  # lost its "?": a path
             "message": "GET /api/fuzz/79case=f1&fuzzsecret=q5 562", "path": "/x"},
        ]
        path.write_text("\n".join(json.dumps(l) for l in lines) + "\nUnhandled Error\nTraceback",
                        "utf-8")
        read, offset = logscan.read("b1", path)
        self.assertEqual(len(read), 6)  # the unterminated last line waits for its newline
        found = logscan.scan(read)
        self.assertEqual(len(found.critical), 1)
        self.assertEqual(len(found.store_confusion), 1)
        self.assertEqual(len(found.query_leaks), 1)
        self.assertGreater(read[1].when, read[0].when)
        again, _ = logscan.read("b1", path, offset)
        self.assertEqual(again, [])
