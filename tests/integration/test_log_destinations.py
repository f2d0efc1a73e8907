"""twistd's --logfile and --syslog are honoured; stdout stays the default under -n."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import time
from typing import Any

from twisted.logger import Logger, LogLevel
from twisted.python.syslog import SyslogObserver
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mterelay.service.config import ConfigError
from mterelay.service.logs import LogDestination, LogDestinationError, log_destination, syslog_observer
from mterelay.service.tap import Options, twistd_log_destination
from tests.helpers.support import SECRET, VENV_BIN, free_port, relay_config


class DestinationTests(SynchronousTestCase):
    def test_like_twistd(self) -> None:
        cases = [
            (None, LogDestination("stdout")),
            ({"nodaemon": True, "logfile": None}, LogDestination("stdout")),
            ({"nodaemon": True, "logfile": "-"}, LogDestination("stdout")),
            ({"nodaemon": True, "logfile": "/var/log/relay.log"},
             LogDestination("file", "/var/log/relay.log")),
            ({"nodaemon": False, "logfile": None}, LogDestination("file", "twistd.log")),
            ({"nodaemon": False, "logfile": "r.log"}, LogDestination("file", "r.log")),
            ({"nodaemon": True, "syslog": True, "prefix": "relay-b", "logfile": "x.log"},
             LogDestination("syslog", prefix="relay-b")),
        ]
        for options, expected in cases:
            self.assertEqual(log_destination(options), expected, options)

    def test_daemon_cannot_log_to_stdout(self) -> None:
        self.assertRaises(LogDestinationError, log_destination,
                          {"nodaemon": False, "logfile": "-"})

    def twistd_options(self, **values: Any) -> Options:
        options = Options(environ={})
        options.parent = values  # type: ignore[attr-defined]  (twistd's ServerOptions)
        return options

    def test_logfile_with_workers_refused(self) -> None:
        config = relay_config(WORKERS="2", REDIS_URL="redis://127.0.0.1:6379/0")
        with self.assertRaises(ConfigError) as caught:
            twistd_log_destination(self.twistd_options(nodaemon=True, logfile="r.log"), config)
        self.assertTrue(str(caught.exception).startswith("invalid configuration: WORKERS "))
        # stdout and syslog are fine with workers.
        self.assertEqual(twistd_log_destination(self.twistd_options(nodaemon=True), config).kind,
                         "stdout")
        self.assertEqual(twistd_log_destination(
            self.twistd_options(nodaemon=True, syslog=True, prefix="p"), config).kind, "syslog")

    def test_workers_follow_syslog(self) -> None:
        from mterelay.service.tap import worker_log_argv

        command = ["python", "-c", "run()", "-n", "--pidfile=", "mterelay", "--workers=2"]
        self.assertEqual(worker_log_argv(command, LogDestination("syslog", prefix="b")),
                         ["python", "-c", "run()", "-n", "--pidfile=", "--syslog", "--prefix=b",
                          "mterelay", "--workers=2"])
        self.assertEqual(worker_log_argv(command, LogDestination("stdout")), command)

    def test_stdout_for_a_daemon_refused_with_one_line(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            twistd_log_destination(self.twistd_options(nodaemon=False, logfile="-"),
                                   relay_config())
        self.assertEqual(str(caught.exception), "invalid configuration: --logfile - (stdout) "
                         "needs --nodaemon (-n): a daemon has no stdout")


class FileObserverTests(SynchronousTestCase):
    def test_json_lines_to_the_file_and_sigusr1_reopens_it(self) -> None:
        import json

        from twisted.internet.task import Clock

        from mterelay.service import tap

        installed: dict[int, Any] = {}
        self.patch(tap.signal, "getsignal", lambda signum: None)
        self.patch(tap.signal, "signal", lambda signum, handler: installed.update({signum: handler}))
        path = os.path.abspath(self.mktemp())
        clock = Clock()
        observer = tap.observer_for(relay_config(LOG_FORMAT="json", LOG_LEVEL="warning"),
                                    LogDestination("file", path), clock)
        log = Logger(namespace="mterelay.test", observer=observer)
        log.info("below LOG_LEVEL")
        log.warn("into the {what}", what="file")
        clock.advance(0)  # the per-turn flush
        with open(path, encoding="utf-8") as handle:
            [record] = [json.loads(line) for line in handle]
        self.assertEqual((record["level"], record["message"]), ("warn", "into the file"))
        self.assertIn(signal.SIGUSR1, installed)

    def test_unwritable_file_is_a_one_line_error(self) -> None:
        from mterelay.service import tap

        with self.assertRaises(ConfigError) as caught:
            tap.observer_for(relay_config(), LogDestination("file", "/nonexistent/dir/r.log"),
                             None)
        self.assertTrue(str(caught.exception).startswith(
            "invalid configuration: --logfile cannot be opened"), str(caught.exception))


class SyslogObserverTests(SynchronousTestCase):
    def test_records_go_to_syslog_with_log_level_applied(self) -> None:
        sent: list[tuple[int, str]] = []
        self.patch(SyslogObserver, "openlog", staticmethod(lambda *args: None))
        self.patch(SyslogObserver, "syslog", staticmethod(lambda priority, message: sent.append(
            (priority, message))))
        log = Logger(namespace="mterelay.test", observer=syslog_observer("warning", "relay"))
        log.info("hidden by LOG_LEVEL")
        log.warn("shown {what}", what="here")
        log.emit(LogLevel.error, "an error")
        messages = [message for _, message in sent]
        self.assertEqual(len(messages), 2, messages)
        self.assertIn("shown here", messages[0])
        self.assertIn("an error", messages[1])
        self.assertNotIn("hidden", " ".join(messages))

    def test_off(self) -> None:
        sent: list[Any] = []
        self.patch(SyslogObserver, "syslog", staticmethod(lambda *args: sent.append(args)))
        Logger(namespace="t", observer=syslog_observer("off", "relay")).error("x")
        self.assertEqual(sent, [])


class TwistdProcessTests(TestCase):
    """A real ``twistd mterelay`` with twistd's own logging options."""

    timeout = 60

    def run_relay(self, *twistd_args: str) -> tuple[str, subprocess.Popen[bytes], int]:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("UPSTREAM", "CLIENT_ID_SECRET")}
        env.update({"UPSTREAM": "http://127.0.0.1:9", "CLIENT_ID_SECRET": SECRET,
                    "LISTEN": f"tcp:{port}:interface=127.0.0.1", "SHUTDOWN_GRACE": "1"})
        stdout_path = self.mktemp() + ".stdout"
        with open(stdout_path, "wb") as stdout:
            process = subprocess.Popen(
                [os.path.join(VENV_BIN, "twistd"), "-n", "--pidfile=", *twistd_args, "mterelay"],
                env=env, stdout=stdout, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: process.poll() is None and (process.kill(), process.wait()))
        deadline = time.monotonic() + 20
        while True:
            self.assertIsNone(process.poll(), open(stdout_path).read())
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/api/mte-echo/hello?secret=s3cr3t")
                self.assertEqual(connection.getresponse().status, 200)
                connection.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        self.assertEqual(process.wait(15), 0)
        with open(stdout_path, encoding="utf-8", errors="replace") as handle:
            return handle.read(), process, port

    def test_logfile_honoured(self) -> None:
        path = os.path.abspath(self.mktemp() + ".log")
        stdout, _, port = self.run_relay(f"--logfile={path}")
        self.assertNotIn("mterelay", stdout)
        self.assertNotIn("GET /api/mte-echo/hello", stdout)
        with open(path, encoding="utf-8") as handle:
            written = handle.read()
        self.assertIn(f"Server listening at http://127.0.0.1:{port}", written)
        self.assertIn("GET /api/mte-echo/hello 200", written)
        self.assertIn("Drained: 0 in-flight request(s)", written)
        self.assertNotIn("s3cr3t", written)

    def test_logfile_dash_is_stdout(self) -> None:
        stdout, _, port = self.run_relay("--logfile=-")
        self.assertIn(f"Server listening at http://127.0.0.1:{port}", stdout)
        self.assertIn("GET /api/mte-echo/hello 200", stdout)

    def test_stdout_by_default(self) -> None:
        stdout, _, _ = self.run_relay()
        self.assertIn("GET /api/mte-echo/hello 200", stdout)

    def test_syslog_leaves_stdout(self) -> None:
        stdout, _, _ = self.run_relay("--syslog", "--prefix=relay-test")
        self.assertNotIn("GET /api/mte-echo/hello", stdout)
        self.assertNotIn("Server listening", stdout)
