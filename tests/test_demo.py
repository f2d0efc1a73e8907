"""``make demo`` runs the scripted requests end to end (with --once it then exits)."""

from __future__ import annotations

import subprocess
import sys

from twisted.trial.unittest import TestCase


class DemoTests(TestCase):
    def test_demo_once(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "mterelay.demo", "--once"],
            capture_output=True,
            timeout=120,
        )
        out = result.stdout.decode()
        self.assertEqual(result.returncode, 0, out + result.stderr.decode())
        self.assertIn('"echo": "hello"', out)
        self.assertIn('"status": "ok"', out)
        self.assertIn('"page": 2', out)
        self.assertIn("<- 569", out)
        # The encrypted part: answers decrypted, and the wire shows no path.
        self.assertIn('"user": "alice"', out)
        self.assertIn('"bytes": 16384', out)
        self.assertIn('"page": 3', out)
        wire = [line for line in out.splitlines() if "on the wire:" in line]
        self.assertEqual(len(wire), 3)
        self.assertFalse([line for line in wire if "/api/" in line])
