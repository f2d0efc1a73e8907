"""The systemd units: they verify, score "OK" or better, and work the way they claim.

``systemd-analyze verify`` runs against a throw-away root holding the units as
installed (plus the distribution's own units they depend on, and a stand-in
for /opt/mterelay/bin/twistd), so nothing on this machine is touched and no
running systemd is needed; any warning fails the test.  Socket activation is
exercised for real with ``systemd-socket-activate``, which passes a listening
socket exactly as systemd does, and the relay runs under the kernel's
MemoryDenyWriteExecute (PR_SET_MDWE) to back the unit's claim that Python
allows it.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from mterelay.service.config import load_config
from tests.helpers.support import SECRET, VENV_BIN, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNITS = os.path.join(ROOT, "systemd")
SHUTDOWN_GRACE = 25.0  # the relay's default (SHUTDOWN_GRACE)
ACCEPTABLE_EXPOSURE = ("PERFECT", "SAFE", "OK")


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")
    if path is None:
        raise SkipTest(f"{name} is not installed (apt-get install systemd; .ci/run does)")
    return path


def unit_entries(path: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as (key, value) lists: systemd allows repeated keys."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                current = sections.setdefault(line.strip("[]"), [])
                continue
            assert current is not None, line
            key, _, value = line.partition("=")
            current.append((key.strip(), value.strip()))
    return sections


def values(path: str, section: str, key: str) -> list[str]:
    return [v for k, v in unit_entries(path)[section] if k == key]


def seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|min)?", text)
    assert match, text
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


def env_file(path: str, uncomment: bool = False) -> dict[str, str]:
    """systemd EnvironmentFile= parsing, for the plain forms the example uses."""
    environ = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if uncomment and re.match(r"#[A-Z_]+=", line):
                line = line[1:]
            if not line or line.startswith(("#", ";")):
                continue
            key, _, value = line.partition("=")
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            else:
                # systemd would strip these quotes: the value must be quoted whole.
                assert not set(value) & set("'\"\\"), f"quote the whole value: {line}"
            environ[key] = value
    return environ


class UnitFileTests(SynchronousTestCase):
    service = os.path.join(UNITS, "mterelay.service")

    def test_runs_the_image_entrypoint_with_the_env_file(self) -> None:
        (exec_start,) = values(self.service, "Service", "ExecStart")
        self.assertTrue(exec_start.endswith("/bin/twistd -n --pidfile= mterelay"), exec_start)
        self.assertEqual(values(self.service, "Service", "EnvironmentFile"),
                         ["/etc/mterelay/mterelay.env"])
        self.assertEqual(values(self.service, "Service", "Restart"), ["on-failure"])
        # A bad setting exits 2: restarting would only loop.
        self.assertEqual(values(self.service, "Service", "RestartPreventExitStatus"), ["2"])

    def test_sandbox(self) -> None:
        expected = {
            "DynamicUser": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
            "PrivateTmp": "yes", "NoNewPrivileges": "yes", "MemoryDenyWriteExecute": "yes",
            "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "CapabilityBoundingSet": "",
        }
        for key, value in expected.items():
            self.assertEqual(values(self.service, "Service", key), [value], key)
        self.assertIn("@system-service", values(self.service, "Service", "SystemCallFilter"))

    def test_stop_waits_longer_than_the_shutdown_grace(self) -> None:
        (timeout,) = values(self.service, "Service", "TimeoutStopSec")
        self.assertGreater(seconds(timeout), SHUTDOWN_GRACE)
        self.assertEqual(values(self.service, "Service", "KillSignal"), ["SIGTERM"])

    def test_example_env_file_is_a_valid_configuration(self) -> None:
        example = os.path.join(UNITS, "mterelay.env.example")
        for uncomment in (False, True):
            config = load_config(env_file(example, uncomment))
            self.assertEqual(config.upstream, "https://api.my-company.com")
        self.assertEqual(load_config(env_file(example, True)).headers,
                         (("x-service-name", "mte-api-relay"),))

    def test_socket_and_drop_in_agree(self) -> None:
        socket_unit = os.path.join(UNITS, "mterelay.socket")
        (listen,) = values(socket_unit, "Socket", "ListenStream")
        drop_in = os.path.join(UNITS, "socket-activation.conf")
        (environment,) = values(drop_in, "Service", "Environment")
        self.assertEqual(environment, "LISTEN=systemd:domain=INET:index=0")
        # domain=INET adopts an IPv4 socket: the socket must be one.
        self.assertRegex(listen, r"^\d+\.\d+\.\d+\.\d+:\d+$")
        self.assertEqual(values(drop_in, "Unit", "Requires"), ["mterelay.socket"])


class SystemdAnalyzeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.analyze = tool("systemd-analyze")
        self.root = tempfile.mkdtemp(prefix="mterelay-systemd-")
        self.addCleanup(shutil.rmtree, self.root)
        system = os.path.join(self.root, "etc", "systemd", "system")
        os.makedirs(os.path.join(system, "mterelay.service.d"))
        for name in ("mterelay.service", "mterelay.socket"):
            shutil.copy(os.path.join(UNITS, name), system)
        shutil.copy(os.path.join(UNITS, "socket-activation.conf"),
                    os.path.join(system, "mterelay.service.d"))
        # The distribution's units (sysinit.target, network-online.target, ...).
        for candidate in ("/usr/lib/systemd/system", "/lib/systemd/system"):
            if os.path.isdir(candidate):
                shutil.copytree(candidate, os.path.join(self.root, "usr/lib/systemd/system"),
                                symlinks=True)
                break
        else:
            raise SkipTest("no systemd unit directory on this machine")
        (exec_start,) = values(os.path.join(UNITS, "mterelay.service"), "Service", "ExecStart")
        stub = os.path.join(self.root, exec_start.split()[0].lstrip("/"))
        os.makedirs(os.path.dirname(stub))
        with open(stub, "w") as handle:
            handle.write("#!/bin/sh\n")
        os.chmod(stub, 0o755)

    def test_units_verify_without_warnings(self) -> None:
        result = subprocess.run(
            [self.analyze, "verify", "--man=no", f"--root={self.root}",
             "mterelay.service", "mterelay.socket"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))

    def test_verify_catches_mistakes(self) -> None:
        """Guards the test above: a typo must show up."""
        path = os.path.join(self.root, "etc/systemd/system/mterelay.service")
        with open(path, "a") as handle:
            handle.write("ProtectSistem=strict\n")
        result = subprocess.run(
            [self.analyze, "verify", "--man=no", f"--root={self.root}", "mterelay.service"],
            capture_output=True, text=True, timeout=60)
        self.assertIn("ProtectSistem", result.stderr)

    def test_security_exposure_is_ok_or_better(self) -> None:
        result = subprocess.run(
            [self.analyze, "security", "--offline=true", f"--root={self.root}",
             "--no-pager", "mterelay.service"],
            capture_output=True, text=True, timeout=60)
        match = re.search(r"Overall exposure level for mterelay\.service: ([\d.]+) (\w+)",
                          result.stdout)
        self.assertIsNotNone(match, result.stdout + result.stderr)
        score, label = float(match.group(1)), match.group(2)
        self.assertIn(label, ACCEPTABLE_EXPOSURE, f"exposure {score} {label}")
        self.assertLessEqual(score, 2.0)


class RelayUnderUnitRulesTests(SynchronousTestCase):
    """The relay itself, started the ways the units start it."""

    timeout = 60

    def relay_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("LISTEN", "PORT", "REDIS_URL", "LISTEN_FDS", "LISTEN_PID")}
        env.update(UPSTREAM="http://127.0.0.1:9", CLIENT_ID_SECRET=SECRET, **extra)
        return env

    def start(self, argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str]:
        log_path = self.mktemp() + ".log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: process.poll() is None and (process.kill(), process.wait()))
        return process, log_path

    def echo(self, port: int, process: subprocess.Popen, log_path: str) -> bytes:
        deadline = time.monotonic() + 20
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                connection.request("GET", "/api/mte-echo/unit")
                response = connection.getresponse()
                body = response.read()
                connection.close()
                self.assertEqual(response.status, 200)
                return body
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    with open(log_path, encoding="utf-8", errors="replace") as handle:
                        self.fail(f"relay did not answer:\n{handle.read()}")
                time.sleep(0.05)

    def stop(self, process: subprocess.Popen, log_path: str) -> None:
        process.send_signal(signal.SIGTERM)
        status = process.wait(SHUTDOWN_GRACE + 5)
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            self.assertEqual(status, 0, handle.read())

    def test_socket_activation(self) -> None:
        """systemd-socket-activate binds, then hands the socket over like mterelay.socket."""
        activate = tool("systemd-socket-activate")
        port = free_port()
        (environment,) = values(os.path.join(UNITS, "socket-activation.conf"), "Service",
                                "Environment")
        name, _, listen = environment.partition("=")
        env = self.relay_env(**{name: listen})
        # The activator hands its child only the variables it is told to, as systemd does.
        passed = [f"--setenv={k}" for k in ("PATH", "UPSTREAM", "CLIENT_ID_SECRET", name)]
        process, log_path = self.start(
            # systemd names the descriptor after the socket unit; Twisted insists on names.
            [activate, "--listen", f"127.0.0.1:{port}", "--fdname=mterelay.socket", *passed,
             os.path.join(VENV_BIN, "twistd"), "-n", "--pidfile=", "mterelay"], env)
        self.assertIn(b'"echo":"unit"', self.echo(port, process, log_path))
        self.stop(process, log_path)

    def test_relay_runs_without_writable_executable_memory(self) -> None:
        """MemoryDenyWriteExecute=yes holds: the relay and its crypto under PR_SET_MDWE."""
        wrapper = os.path.abspath(self.mktemp() + ".py")
        with open(wrapper, "w") as handle:
            handle.write(MDWE_WRAPPER)
        probe = subprocess.run(
            [sys.executable, wrapper, sys.executable, "-c",
             "import mmap; mmap.mmap(-1, 4096, prot=7)"],
            capture_output=True, text=True, timeout=30)
        if probe.returncode == 77:
            raise SkipTest("this kernel has no PR_SET_MDWE (Linux 6.3+)")
        self.assertIn("PermissionError", probe.stderr)  # the restriction is really on

        crypto = subprocess.run(
            [sys.executable, wrapper, sys.executable, "-m", "twisted.trial",
             f"--temp-directory={os.path.abspath(self.mktemp())}", "tests.unit.test_protocol_vectors",
             "tests.unit.test_store_atrest"],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
        self.assertEqual(crypto.returncode, 0, crypto.stdout[-3000:] + crypto.stderr[-3000:])

        port = free_port()
        process, log_path = self.start(
            [sys.executable, wrapper, os.path.join(VENV_BIN, "twistd"), "-n", "--pidfile=",
             "mterelay"],
            self.relay_env(LISTEN=f"tcp:{port}:interface=127.0.0.1"))
        self.echo(port, process, log_path)
        self.stop(process, log_path)


MDWE_WRAPPER = """\
import ctypes, os, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(77)
os.execv(sys.argv[1], sys.argv[1:])  # the restriction survives exec
"""
