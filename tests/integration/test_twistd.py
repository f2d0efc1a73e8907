"""The twistd plugin as operators run it: a real process, real signals, real stdout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Any

from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.helpers.support import SECRET, VENV_BIN, RelayProcess, free_port

TWISTD = os.path.join(VENV_BIN, "twistd")


def run_twistd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("UPSTREAM", "CLIENT_ID_SECRET")}
    environ.update(env or {})
    return subprocess.run([TWISTD, *args], env=environ, capture_output=True, timeout=60)


class PluginTests(TestCase):
    def test_listed_in_help(self) -> None:
        result = run_twistd("--help")
        self.assertEqual(result.returncode, 0)
        self.assertIn(b"mterelay", result.stdout)

    def test_bad_setting_exits_nonzero_with_one_line(self) -> None:
        result = run_twistd(
            "-n", "--pidfile=", "mterelay",
            env={"UPSTREAM": "http://127.0.0.1:9", "CLIENT_ID_SECRET": "short"},
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(
            result.stderr.decode(),
            "invalid configuration: CLIENT_ID_SECRET must be at least 32 characters "
            "(from environment)\n",
        )
        self.assertNotIn(b"Traceback", result.stdout + result.stderr)

    def test_missing_upstream_exits_nonzero(self) -> None:
        result = run_twistd("-n", "--pidfile=", "mterelay", env={"CLIENT_ID_SECRET": SECRET})
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(result.stderr.decode(), "invalid configuration: UPSTREAM is required\n")

    def test_bad_listen_endpoint_exits_nonzero(self) -> None:
        result = run_twistd(
            "-n", "--pidfile=", "mterelay", "--listen", "bogus:1",
            env={"UPSTREAM": "http://127.0.0.1:9", "CLIENT_ID_SECRET": SECRET},
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(b"invalid configuration: LISTEN", result.stderr)


class RelayProcessCase(TestCase):
    """Starts real relay processes and an HTTP client without connection reuse."""

    timeout = 60

    def setUp(self) -> None:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=pool))

    def start(self, **environ: str) -> RelayProcess:
        env = {"UPSTREAM": "http://127.0.0.1:9", "CLIENT_ID_SECRET": SECRET}
        env.update(environ)
        relay = RelayProcess.start(env, self.mktemp() + ".log")
        self.addCleanup(lambda: relay.process.poll() is None and relay.stop())
        relay.wait_listening()
        return relay


class ProcessTests(RelayProcessCase):
    @defer.inlineCallbacks
    def test_answers_echo_and_stops_on_sigterm(self) -> Any:
        relay = self.start(AWS_REGION="eu-west-1")
        response = yield self.http.get(relay.url + "/api/mte-echo/test")
        body = yield response.json()
        self.assertEqual(response.code, 200)
        self.assertEqual(sorted(body), ["echo", "time"])
        self.assertEqual(body["echo"], "test")
        relay.process.send_signal(signal.SIGTERM)
        self.assertEqual(relay.process.wait(15), 0)
        output = relay.output()
        self.assertIn(f"Server listening at http://127.0.0.1:{relay.port}", output)
        self.assertIn("ready: upstream http://127.0.0.1:9, store memory (in-process), "
                      "log level info, AWS region eu-west-1", output)
        self.assertIn("GET /api/mte-echo/test 200", output)
        self.assertNotIn(SECRET, output)

    @defer.inlineCallbacks
    def test_json_logs(self) -> Any:
        relay = self.start(LOG_FORMAT="json")
        response = yield self.http.get(relay.url + "/api/mte-echo/x?secret=1")
        yield response.content()
        self.assertEqual(relay.stop(), 0)
        lines = [line for line in relay.output().splitlines() if line.strip()]
        records = [json.loads(line) for line in lines]  # every line is one JSON object
        access = [r for r in records if r.get("namespace") == "mterelay.access"]
        access = [r for r in access if r["path"] != "/api/mte-echo/ready"]
        self.assertEqual(len(access), 1)
        self.assertEqual(access[0]["method"], "GET")
        self.assertEqual(access[0]["path"], "/api/mte-echo/x")
        self.assertEqual(access[0]["status"], 200)
        self.assertIn("duration_ms", access[0])
        self.assertNotIn("secret=1", relay.output())

    @defer.inlineCallbacks
    def test_log_level_warning_hides_access_lines(self) -> Any:
        relay = self.start(LOG_LEVEL="warning")
        response = yield self.http.get(relay.url + "/api/mte-echo/x")
        yield response.content()
        self.assertEqual(relay.stop(), 0)
        self.assertNotIn("GET /api/mte-echo/x", relay.output())
        self.assertNotIn("Server listening", relay.output())

    @defer.inlineCallbacks
    def test_log_level_off(self) -> Any:
        relay = self.start(LOG_LEVEL="off")
        response = yield self.http.get(relay.url + "/api/mte-echo/x")
        yield response.content()
        self.assertEqual(relay.stop(), 0)
        self.assertEqual(relay.output().strip(), "")

    def test_port_in_use_exits_nonzero(self) -> None:
        busy = self.start()
        result = run_twistd(
            "-n", "--pidfile=", "mterelay",
            env={"UPSTREAM": "http://127.0.0.1:9", "CLIENT_ID_SECRET": SECRET,
                 "LISTEN": f"tcp:{busy.port}:interface=127.0.0.1"},
        )
        self.assertNotEqual(result.returncode, 0)

    def test_port_setting(self) -> None:
        port = free_port()
        relay = RelayProcess.start(
            {"UPSTREAM": "http://127.0.0.1:9", "CLIENT_ID_SECRET": SECRET, "PORT": str(port),
             "LISTEN": ""},
            self.mktemp() + ".log",
            port=port,
        )
        self.addCleanup(lambda: relay.process.poll() is None and relay.stop())
        relay.wait_listening()
        self.assertEqual(relay.stop(), 0)
        self.assertIn(f"Server listening at http://0.0.0.0:{port}", relay.output())


class StoreLifecycleTests(RelayProcessCase):
    """The relay process starts its pair store and survives a Redis that is down."""

    def wait_for_output(self, relay: RelayProcess, text: str) -> None:
        import time

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if text in relay.output():
                return
            time.sleep(0.05)
        self.fail(f"{text!r} not in relay output:\n{relay.output()}")

    def test_memory_store(self) -> None:
        relay = self.start()
        self.wait_for_output(relay, "Pair store ready: memory (in-process)")

    def test_real_redis(self) -> None:
        from tests.helpers.redisserver import RedisServer

        redis = RedisServer(password="pw-not-logged")
        redis.start()
        self.addCleanup(redis.cleanup)
        relay = self.start(REDIS_URL=redis.url)
        self.wait_for_output(relay, "Pair store ready: redis://")
        self.assertIn("store redis (redis://", relay.output())
        self.assertNotIn("pw-not-logged", relay.output())

    @defer.inlineCallbacks
    def test_redis_down_at_start(self) -> Any:
        relay = self.start(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
        response = yield self.http.get(relay.url + "/api/mte-echo/alive")
        self.assertEqual(response.code, 200)
        yield response.content()
        self.wait_for_output(relay, "not reachable yet")
        self.assertEqual(relay.stop(), 0)
