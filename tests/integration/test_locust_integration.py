"""Locust, headless, through a real relay: the example locustfile's scenarios, zero failures.

Locust runs in a child process (it monkey-patches the standard library
with gevent on import, which must never happen in the trial process).  The
sample API, recording what it receives, runs in this test's reactor on
loopback; relay B is a real ``twistd -n mterelay``; a wire tap between
Locust and the relay keeps every byte Locust sent.
"""

from __future__ import annotations

import collections
import json
import os
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from mterelay.sampleapi import SampleAPI
from mterelay.wiretap import WireTap
from tests.helpers.support import SECRET, VENV_BIN, Recorded, RelayProcess

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCUSTFILE = os.path.join(os.path.dirname(TESTS), "examples", "locust", "locustfile.py")
LOCUST = os.path.join(VENV_BIN, "locust")
#: The card number the scenarios send (examples/locust, sample API).
CARD = b"4111 1111 1111 1111"

SCENARIOS = ["echo", "login", "patients: list", "patients: read", "patients: create",
             "credit card", "payload 1 KB", "payload 10 KB", "payload 25 KB", "payload 50 KB",
             "relay echo (clear)"]


class RecordingSampleAPI(Resource):
    """The sample API, keeping what reached it (the plaintext the relay forwarded)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.api = SampleAPI()
        self.received: list[Recorded] = []

    def render(self, request: Any) -> bytes:
        body = request.content.read()
        request.content.seek(0)
        self.received.append(Recorded(
            request.method, request.uri,
            {k.lower(): list(v) for k, v in request.requestHeaders.getAllRawHeaders()}, body))
        return self.api.render(request)


def read_stats(path: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Locust's final statistics (``--json-file``), by (method, name).

    Not the ``--csv`` files: Locust rewrites those once a second and does not
    write them again at shutdown, so they can miss the last second of a run.
    """
    with open(path) as handle:
        return {(entry["method"], entry["name"]): entry for entry in json.load(handle)}


class LocustThroughRelayTests(TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        if not os.path.exists(LOCUST):
            if os.environ.get("CI"):
                self.fail("locust is not installed: the test extra must bring it")
            raise SkipTest("locust is not installed (pip install -e '.[test]')")
        self.upstream = RecordingSampleAPI()
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(self.upstream))
        self.addCleanup(port.stopListening)
        self.upstream_url = f"http://127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def start_relay(self, **environ: str) -> Any:
        environ.update({"UPSTREAM": self.upstream_url, "CLIENT_ID_SECRET": SECRET})
        self.relay = RelayProcess.start(environ, self.mktemp() + ".log")
        self.addCleanup(self.relay.stop)
        self.relay.wait_listening()
        self.tap = WireTap([self.relay.port], reactor)
        yield defer.ensureDeferred(self.tap.listen())
        self.addCleanup(self.tap.port.stopListening)

    @defer.inlineCallbacks
    def run_locust(self, users: int = 5, seconds: int = 5, locustfile: str = LOCUSTFILE,
                   **environ: str) -> Any:
        prefix = self.mktemp()
        os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
        env.update(environ)
        out, err, code = yield getProcessOutputAndValue(
            LOCUST,
            ["-f", locustfile, "--host", self.tap.url, "--headless", "-u", str(users),
             "-r", str(users), "-t", f"{seconds}s", "--json-file", prefix, "--only-summary",
             "--loglevel", "WARNING", "--stop-timeout", "5"],
            env=env, reactor=reactor)
        output = (out + err).decode("utf-8", "replace")
        stats_path = prefix + ".json"
        self.assertTrue(os.path.exists(stats_path), f"no statistics written:\n{output}")
        return code, output, read_stats(stats_path)

    def check_run(self, code: int, output: str, stats: dict[tuple[str, str], dict[str, Any]],
                  pairings: int | None = 5) -> None:
        failed = {name: row["num_failures"] for name, row in stats.items() if row["num_failures"]}
        self.assertEqual(failed, {}, f"failures reported by Locust:\n{output[-4000:]}")
        self.assertEqual(code, 0, output[-4000:])
        names = {name for _, name in stats}
        for scenario in SCENARIOS:
            self.assertIn(scenario, names, f"scenario {scenario!r} never ran:\n{output[-2000:]}")
        for key, row in stats.items():
            self.assertGreater(row["num_requests"], 0, key)
        # Pairing once per user (5 users): reported under its own name.
        self.assertEqual(stats[("HEAD", "/api/mte-relay")]["num_requests"], 5)
        if pairings is not None:
            self.assertEqual(stats[("POST", "/api/mte-pair")]["num_requests"], pairings)
        # Sizes are the opened answers: the 50 KB echo answers ~50 KB of plaintext.
        big = stats[("POST", "payload 50 KB")]
        self.assertGreater(big["total_content_length"] / big["num_requests"], 50 * 1024)
        # Every sealed request Locust counted reached the upstream exactly once.
        sealed = sum(row["num_requests"] for (_, name), row in stats.items()
                     if name in SCENARIOS and name != "relay echo (clear)")
        seen = collections.Counter((r.method, r.uri) for r in self.upstream.received)
        self.assertEqual(len(self.upstream.received), sealed,
                         f"{seen} {[(k, r['num_requests']) for k, r in stats.items()]}")

    @defer.inlineCallbacks
    def test_headless_run_has_no_failures_and_the_upstream_sees_plaintext(self) -> Any:
        yield self.start_relay()
        code, output, stats = yield self.run_locust()
        self.check_run(code, output, stats)
        seen = self.upstream.received
        uris = {r.uri for r in seen}
        self.assertTrue({b"/api/login", b"/api/credit-card", b"/api/patients",
                         b"/api/echo"} <= uris, uris)
        cards = [r for r in seen if r.uri == b"/api/credit-card"]
        self.assertTrue(all(CARD in r.body for r in cards))
        self.assertTrue(any(len(r.body) == 50 * 1024 for r in seen if r.uri == b"/api/echo"))
        for record in seen:
            self.assertEqual(record.headers[b"user-agent"][0][:15], b"mterelay-locust",
                             "only the sealed User-Agent reaches the upstream")
        login = [r for r in seen if r.uri == b"/api/login"]
        self.assertTrue(login)
        # The session cookie the upstream set (sealed) comes back on later requests, sealed.
        self.assertTrue(any(b"cookie" in r.headers for r in seen))
        # Between Locust and the relay: no path, no card number, no patient, no cookie.
        wire = self.tap.sent()
        self.assertGreater(len(wire), 50 * 1024)
        # Whole values: megabytes of ciphertext hold any given 4 bytes by chance
        # (a 4-byte needle failed this test once in a fresh-clone run).
        for secret in (b"/api/login", b"/api/credit-card", CARD, b"078-05-1120",
                       b"Jane Doe", b"session=", b"password"):
            self.assertFalse(secret in wire, f"{secret!r} on the wire")
        self.assertFalse(b"approved" in self.tap.received(), "a sealed answer read in clear")
        # Only the clear echo requests carry a clear User-Agent (sealed ones carry none).
        self.assertEqual(wire.count(b"User-Agent:"), wire.count(b"GET /api/mte-echo/locust "))

    @defer.inlineCallbacks
    def test_mte_framing_and_clear_url(self) -> Any:
        yield self.start_relay()
        code, output, stats = yield self.run_locust(
            seconds=4, MTERELAY_FRAMING="MTE", MTERELAY_SEAL_URL="0")
        self.check_run(code, output, stats)
        wire = self.tap.sent()
        self.assertIn(b"POST /api/credit-card HTTP/1.1", wire)  # the path in clear, as asked
        self.assertFalse(CARD in wire, "the card number on the wire")
        self.assertIn(b",MTE,0,1,1,", wire)


    @defer.inlineCallbacks
    def test_exhausted_pairs_are_repaired_without_failures(self) -> Any:
        """A pair carries 8 messages: each user is refused 559 again and again, re-pairs, resends."""
        yield self.start_relay(PAIR_MAX_MESSAGES="8")
        code, output, stats = yield self.run_locust(seconds=5)
        self.check_run(code, output, stats, pairings=None)
        sealed = sum(row["num_requests"] for (_, name), row in stats.items()
                     if name in SCENARIOS and name != "relay echo (clear)")
        pairings = stats[("POST", "/api/mte-pair")]["num_requests"]
        self.assertGreaterEqual(pairings, 5 + (sealed - 5 * 8) // 8,
                                "a new pair after every 8 messages")
        refused = [line for line in self.relay.output().splitlines()
                   if "mterelay.access" in line and " 559 " in line]
        self.assertEqual(len(refused), pairings - 5, "each exhausted pair refused once")


    @defer.inlineCallbacks
    def test_an_answer_that_does_not_open_is_a_failure(self) -> Any:
        yield self.start_relay()
        failures_log = self.mktemp()
        code, output, stats = yield self.run_locust(
            users=3, seconds=3, locustfile=os.path.join(TESTS, "helpers", "locust_wrongkeys.py"),
            FAILURES_LOG=failures_log)
        self.assertNotEqual(code, 0, "Locust exits non-zero when requests failed")
        wrong = stats[("POST", "wrong key")]
        self.assertEqual((wrong["num_requests"], wrong["num_failures"]), (3, 3), output[-3000:])
        with open(failures_log) as handle:
            failures = handle.read().splitlines()
        self.assertEqual(len(failures), 3, failures)
        for line in failures:
            self.assertTrue(line.startswith("wrong key: DecodeFailed: "), line)
        for name in ("first", "after"):
            self.assertEqual(stats[("POST", name)]["num_failures"], 0, output[-3000:])
        self.assertGreater(stats[("POST", "after")]["num_requests"], 0)
        # The pair whose answer did not open was dropped: one new pairing per user.
        self.assertEqual(stats[("POST", "/api/mte-pair")]["num_requests"], 6)
        # The relay ran the request (never resent): the upstream saw it once per user.
        self.assertEqual(sum(r.body == b'{"n": 1}' for r in self.upstream.received), 3)


class ImportWithoutLocustTests(TestCase):
    def test_clear_error_message(self) -> Any:
        """Without Locust, importing mterelay.locust names the extra to install."""
        code = ("import sys; sys.modules['locust'] = None\n"
                "try:\n    import mterelay.locust\n"
                "except ImportError as e:\n    print(e)\n")
        d = getProcessOutputAndValue(sys.executable, ["-c", code], env=dict(os.environ),
                                     reactor=reactor)

        def check(result: tuple[bytes, bytes, int]) -> None:
            out, err, status = result
            self.assertEqual(status, 0, err)
            self.assertIn(b"pip install 'mterelay[locust]'", out)

        return d.addCallback(check)
