"""The browser client (clients/browser) under Node, as part of ``make test``.

``node --test`` runs the JS suite: every vector of tests/vectors/ byte for byte, the
pool, storage and resend rules, and an end-to-end run against a real ``twistd
mterelay`` (this venv's, named by MTERELAY_TWISTD so the JS side never skips it). The
committed bundle in mterelay/public/ must be exactly what ``npm run build`` makes
from the committed sources, and stay within the size budget of issue 16.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.support import VENV_BIN

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLIENT = os.path.join(ROOT, "clients", "browser")
PUBLIC = os.path.join(ROOT, "mterelay", "public")
BUILT = ("mte-relay-browser.js", "mte-relay-browser.js.map",
         "mte-relay-browser.iife.js", "mte-relay-browser.iife.js.map")
#: Issue 16: client + ML-KEM, minified and gzipped.
SIZE_BUDGET = 25 * 1024
NODE = shutil.which("node")


class NodeClientMixin:
    def setUp(self) -> None:
        if NODE is None:
            self.skipTest("node is not installed (Node >= 20 runs the browser client's tests)")
        if not os.path.isdir(os.path.join(CLIENT, "node_modules", "@noble", "post-quantum")):
            self.fail("clients/browser/node_modules is missing: run `make install` (npm ci)")


class NodeSuiteTests(NodeClientMixin, SynchronousTestCase):
    def test_node_test_passes(self) -> None:
        env = dict(os.environ, MTERELAY_TWISTD=os.path.join(VENV_BIN, "twistd"))
        run = subprocess.run([NODE, "--test", "test/"], cwd=CLIENT, env=env, capture_output=True,
                             text=True, timeout=300)
        output = run.stdout + run.stderr
        self.assertEqual(run.returncode, 0, output[-6000:])
        passed = re.search(r"^# pass (\d+)$", output, re.M)
        failed = re.search(r"^# fail (\d+)$", output, re.M)
        skipped = re.search(r"^# skipped (\d+)$", output, re.M)
        self.assertIsNotNone(passed, output[-2000:])
        self.assertGreaterEqual(int(passed.group(1)), 40, output[-2000:])
        self.assertEqual(failed.group(1), "0", output[-6000:])
        self.assertEqual(skipped.group(1), "0", output[-6000:])


class BundleTests(NodeClientMixin, SynchronousTestCase):
    def test_committed_bundle_is_the_build_of_the_sources(self) -> None:
        out = os.path.abspath(self.mktemp())
        run = subprocess.run([NODE, "build.mjs", "--outdir", out], cwd=CLIENT,
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        for name in BUILT:
            with open(os.path.join(out, name), "rb") as rebuilt, \
                    open(os.path.join(PUBLIC, name), "rb") as committed:
                self.assertTrue(rebuilt.read() == committed.read(),
                                f"mterelay/public/{name} differs from a rebuild: run"
                                " `npm run build` in clients/browser and commit the result")

    def test_size_budget(self) -> None:
        for name in ("mte-relay-browser.js", "mte-relay-browser.iife.js"):
            with open(os.path.join(PUBLIC, name), "rb") as handle:
                size = len(gzip.compress(handle.read(), 9))
            self.assertLessEqual(size, SIZE_BUDGET, f"{name}: {size} bytes gzipped")
