"""``make demo`` runs the scripted requests end to end (with --once it then exits)."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request

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
        self.assertRegex(out, r"demo page  : http://127\.0\.0\.1:\d+/ ")
        self.assertIn('"status": "ok"', out)
        self.assertIn('"page": 2', out)
        self.assertIn("<- 569", out)
        # The encrypted part: answers decrypted, and the wire shows no path.
        self.assertIn('"user": "alice"', out)
        self.assertIn('"bytes": 16384', out)
        self.assertIn('"page": 3', out)
        wire = [line for line in out.splitlines() if "on the wire:" in line]
        self.assertEqual(len(wire), 3)
        # The fixed path of spec 5.2 is the only clear path; the real one is sealed.
        self.assertFalse([line for line in wire
                          if "/api/" in line.replace("/api/mte-relay/request", "")])
        self.assertEqual(out.count("    x-mte-relay-url: "), 3)
        # Server to server: plain requests to relay A, answered through relay B.
        s2s = out.split("=== server to server", 1)[1]
        self.assertIn("relay A    : http://127.0.0.1:", s2s)
        self.assertIn('"user": "carol"', s2s)
        self.assertIn('"bytes": 10240', s2s)
        self.assertIn('"page": 5', s2s)
        self.assertEqual(s2s.count("<- 20"), 3)
        between = [line for line in s2s.splitlines() if line.startswith("    between A and B:")]
        self.assertEqual(len(between), 3)
        self.assertFalse([line for line in between
                          if "/api/" in line.replace("/api/mte-relay/request", "")])
        self.assertEqual(s2s.count("plaintext seen between A and B: none"), 3)
        self.assertEqual(len([line for line in s2s.splitlines()
                              if line.startswith("      00000000  ")]), 3)

    def test_ctrl_c_stops_cleanly(self) -> None:
        process = subprocess.Popen(
            [sys.executable, "-m", "mterelay.demo"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            # A shell without job control starts background jobs with SIGINT ignored.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.addCleanup(lambda: process.poll() is None and process.kill())
        assert process.stdout is not None
        out, deadline = b"", time.monotonic() + 60
        while b"Ctrl-C stops" not in out and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 1)
            if ready:
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
        self.assertIn(b"Ctrl-C stops", out)
        # The browser demo page is served on its own origin, pointing at relay B.
        page = re.search(rb"demo page  : (http://127\.0\.0\.1:\d+/)", out)
        relay_b = re.search(rb"relay B    : (http://127\.0\.0\.1:\d+)", out)
        assert page is not None and relay_b is not None, out
        self.assertNotEqual(page.group(1).rstrip(b"/"), relay_b.group(1))
        with urllib.request.urlopen(page.group(1).decode() + "config.json", timeout=10) as answer:
            self.assertEqual(json.load(answer)["relayUrl"], relay_b.group(1).decode())
        with urllib.request.urlopen(page.group(1).decode(), timeout=10) as answer:
            self.assertIn(b"mterelay demo", answer.read())
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=20)
        self.assertEqual(process.returncode, 0, (out + rest).decode())
        self.assertNotIn(b"Traceback", out + rest)
