"""WORKERS: endpoint parsing, the workers' command line, SO_REUSEPORT and the supervisor.

The supervisor runs on a fake reactor (a Clock with a recording
``spawnProcess``); only ``ReusePortEndpoint`` binds real sockets, on
127.0.0.1.  ``share_metrics`` is never called here: it switches
prometheus_client to multiprocess values for the whole test process.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import sys
from contextlib import redirect_stderr
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.error import CannotListenError, ProcessDone, ProcessTerminated
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mterelay.service.config import SETTINGS
from mterelay.service.tap import Options
from mterelay.service.workers import (
    METRICS_DIR_ENV,
    WORKER_INDEX_ENV,
    WORKER_PARENT_ENV,
    WORKER_PORT_ENV,
    ReusePortEndpoint,
    TcpAddress,
    WorkerSupervisor,
    tcp_address,
    worker_argv,
    worker_index,
)

SECRET = "s" * 32
REDIS = "redis://cache.test:6379/0"
CLI_NAMES = [setting.cli for setting in SETTINGS if setting.cli]


class DefaultBacklogTests(SynchronousTestCase):
    """Listeners queue 511 pending connections unless LISTEN names a backlog."""

    def test_added_to_tcp_and_tls(self) -> None:
        from mterelay.service.workers import with_default_backlog

        self.assertEqual(with_default_backlog("tcp:8080"), "tcp:8080:backlog=511")
        self.assertEqual(with_default_backlog("tcp6:8080:interface=\\:\\:1"),
                         "tcp6:8080:interface=\\:\\:1:backlog=511")
        self.assertEqual(with_default_backlog("ssl:8443:privateKey=k.pem"),
                         "ssl:8443:privateKey=k.pem:backlog=511")

    def test_kept_when_given_or_not_tcp(self) -> None:
        from mterelay.service.workers import with_default_backlog

        for description in ("tcp:8080:backlog=10", "tcp:port=8080:backlog=4096",
                            "unix:/run/mterelay.sock", "systemd:domain=INET:index=0"):
            self.assertEqual(with_default_backlog(description), description)

    def test_listener_really_gets_it(self) -> None:
        """The kernel reports a listening socket's backlog as its Send-Q (ss -ltn)."""
        import subprocess

        from twisted.internet import reactor
        from twisted.internet.endpoints import serverFromString
        from twisted.internet.protocol import Factory, Protocol

        from mterelay.service.workers import with_default_backlog

        if shutil.which("ss") is None:
            raise self.skipTest("ss (iproute2) is not installed")
        ports = []
        serverFromString(reactor, with_default_backlog("tcp:0:interface=127.0.0.1")).listen(
            Factory.forProtocol(Protocol)).addCallback(ports.append)
        [port] = ports  # listen() on a reactor endpoint fires at once
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        lines = subprocess.run(["ss", "-ltnH", f"sport = :{number}"], capture_output=True,
                               text=True, check=True).stdout.split()
        self.assertEqual(lines[2], "511")


class TcpAddressTests(SynchronousTestCase):
    def test_port_only(self) -> None:
        address = tcp_address("tcp:8080")
        self.assertEqual(address, TcpAddress("0.0.0.0", 8080, 511))
        self.assertEqual(address.family, socket.AF_INET)

    def test_keyword_arguments(self) -> None:
        address = tcp_address("tcp:port=8080:interface=127.0.0.1:backlog=10")
        self.assertEqual(address, TcpAddress("127.0.0.1", 8080, 10))

    def test_positional_port_with_keywords(self) -> None:
        self.assertEqual(tcp_address("tcp:9000:interface=10.0.0.5"),
                         TcpAddress("10.0.0.5", 9000, 511))

    def test_port_zero(self) -> None:
        self.assertEqual(tcp_address("tcp:0:interface=127.0.0.1").port, 0)

    def test_tcp6_default_interface(self) -> None:
        address = tcp_address("tcp6:8443")
        self.assertEqual(address.interface, "::")
        self.assertEqual(address.family, socket.AF_INET6)

    def test_tcp6_escaped_interface(self) -> None:
        address = tcp_address(r"tcp6:port=8443:interface=\:\:1")
        self.assertEqual(address, TcpAddress("::1", 8443, 511))
        self.assertEqual(address.family, socket.AF_INET6)
        address = tcp_address(r"tcp6:8443:interface=fe80\:\:1\:2")
        self.assertEqual(address.interface, "fe80::1:2")

    def refused(self, description: str, fragment: str) -> None:
        with self.assertRaises(ValueError) as caught:
            tcp_address(description)
        self.assertIn(fragment, str(caught.exception), description)

    def test_other_kinds_refused(self) -> None:
        self.refused("ssl:8443:privateKey=k.pem", "needs a tcp: listening endpoint, not ssl:")
        self.refused("unix:/run/relay.sock", "not unix:")
        self.refused("systemd:domain=INET:index=0", "not systemd:")
        self.refused("TCP:8080", "not TCP:")
        self.refused("8080", "not 8080:")

    def test_missing_port_refused(self) -> None:
        self.refused("tcp:", "needs a numeric port")
        self.refused("tcp:interface=127.0.0.1", "needs a numeric port")
        self.refused("tcp6", "needs a numeric port")

    def test_bad_port_refused(self) -> None:
        self.refused("tcp:http", "needs a numeric port")
        self.refused("tcp:port=eighty", "needs a numeric port")
        self.refused("tcp:8080:backlog=many", "needs a numeric port")
        self.refused("tcp:65536", "between 0 and 65535")
        self.refused("tcp:-1", "between 0 and 65535")

    def test_bad_backlog_refused(self) -> None:
        with self.assertRaises(ValueError):
            tcp_address("tcp:8080:backlog=0")

    def test_unknown_option_refused(self) -> None:
        self.refused("tcp:8080:reuse=yes", "has an option WORKERS cannot honour: reuse")
        self.refused("tcp6:8080:interface=\\:\\:1:foo=bar", "cannot honour: foo")

    def test_second_positional_argument_refused(self) -> None:
        self.refused("tcp:8080:127.0.0.1", "unexpected argument '127.0.0.1'")


class WorkerIndexTests(SynchronousTestCase):
    def test_values(self) -> None:
        self.assertEqual(worker_index({}), 0)
        self.assertEqual(worker_index({WORKER_INDEX_ENV: "0"}), 0)
        self.assertEqual(worker_index({WORKER_INDEX_ENV: "3"}), 3)

    def test_nonsense_is_the_supervisor(self) -> None:
        for value in ("", "one", "-2", "1.5"):
            self.assertEqual(worker_index({WORKER_INDEX_ENV: value}), 0, value)


class WorkerArgvTests(SynchronousTestCase):
    PREFIX = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
              "-n", "--pidfile=", "mterelay"]

    def parse(self, argv: list[str], environ: dict[str, str] | None = None) -> Options:
        options = Options(environ=environ if environ is not None else {})
        stderr = io.StringIO()
        with redirect_stderr(stderr):
            options.parseOptions(argv)
        self.assertEqual(stderr.getvalue(), "")
        return options

    def test_rebuilt_from_parsed_options(self) -> None:
        options = self.parse(
            ["--upstream", "http://api.test", "--client-id-secret", SECRET, "--workers", "3",
             "--redis-url", REDIS, "--listen", r"tcp:8080:interface=\:\:"])
        argv = worker_argv(options, CLI_NAMES)
        self.assertEqual(argv[:6], self.PREFIX)
        self.assertEqual(sorted(argv[6:]), sorted([
            "--upstream=http://api.test", f"--client-id-secret={SECRET}", "--workers=3",
            f"--redis-url={REDIS}", r"--listen=tcp:8080:interface=\:\:"]))

    def test_only_given_options(self) -> None:
        options = self.parse([], {"UPSTREAM": "http://api.test", "CLIENT_ID_SECRET": SECRET})
        self.assertEqual(worker_argv(options, CLI_NAMES), self.PREFIX)

    def test_config_and_debug(self) -> None:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(f"upstream: http://api.test\nclientIdSecret: {SECRET}\n")
        options = self.parse(["--config", path, "--debug", "--port", "9000"])
        argv = worker_argv(options, CLI_NAMES)
        self.assertIn(f"--config={path}", argv)
        self.assertIn("--port=9000", argv)
        self.assertEqual(argv[-1], "--debug")
        self.assertEqual(argv.count("--debug"), 1)

    def test_no_config_no_debug(self) -> None:
        argv = worker_argv({"port": "9000"}, ["port"])
        self.assertEqual(argv, self.PREFIX + ["--port=9000"])
        self.assertFalse([arg for arg in argv if arg.startswith(("--config", "--debug"))])

    def test_never_copies_twistds_own_options(self) -> None:
        self.patch(sys, "argv", ["twistd", "--pidfile=/run/relay.pid", "--logfile=/var/log/r",
                                 "--umask=077", "mterelay", "--port", "9000"])
        options = self.parse(["--port", "9000"], {"UPSTREAM": "http://api.test",
                                                  "CLIENT_ID_SECRET": SECRET})
        argv = worker_argv(options, CLI_NAMES)
        self.assertEqual(argv, self.PREFIX + ["--port=9000"])
        for arg in argv:
            self.assertFalse(arg.startswith(("--logfile", "--umask", "--pidfile=/")), arg)
        # Always in the foreground, never writing a pid file of its own.
        self.assertIn("-n", argv)
        self.assertIn("--pidfile=", argv)

    def test_values_stay_one_argument(self) -> None:
        argv = worker_argv({"headers": '{"x-a": "one two"}', "upstream": None},
                           ["headers", "upstream"])
        self.assertEqual(argv[6:], ['--headers={"x-a": "one two"}'])

    def test_round_trip(self) -> None:
        """The worker's own options parse back to the same configuration."""
        original = self.parse(
            ["--upstream", "http://api.test", "--client-id-secret", SECRET, "--workers", "2",
             "--redis-url", REDIS, "--metrics-port", "9100", "--shutdown-grace", "0",
             "--pass-through-routes", "/health,/version", "--headers", '{"x-a": "b c"}',
             "--debug"])
        argv = worker_argv(original, CLI_NAMES)
        again = self.parse(argv[argv.index("mterelay") + 1:])
        self.assertEqual(again.config, original.config)


class ReusePortEndpointTests(TestCase):
    """Real sockets on 127.0.0.1 with the real reactor."""

    def listen(self, port: int) -> Any:
        endpoint = ReusePortEndpoint(reactor, TcpAddress("127.0.0.1", port, 5))
        listening = self.successResultOf(endpoint.listen(Factory.forProtocol(Protocol)))
        self.addCleanup(listening.stopListening)
        return listening

    def free_port(self) -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    def test_two_endpoints_share_a_port(self) -> None:
        port = self.free_port()
        first = self.listen(port)
        second = self.listen(port)
        self.assertEqual(first.getHost().port, port)
        self.assertEqual(second.getHost().port, port)
        self.assertEqual(first.getHost().host, "127.0.0.1")

    def test_port_zero_then_the_same_port(self) -> None:
        first = self.listen(0)
        port = first.getHost().port
        self.assertNotEqual(port, 0)
        second = self.listen(port)
        self.assertEqual(second.getHost().port, port)

    @inlineCallbacks
    def test_both_accept_connections(self) -> Any:
        accepted: list[str] = []
        arrived: Deferred[None] = Deferred()

        class Recording(Protocol):
            def connectionMade(self) -> None:
                accepted.append(self.factory.name)
                if not arrived.called:
                    arrived.callback(None)
                self.transport.loseConnection()

        ports = []
        for name in ("first", "second"):
            factory = Factory.forProtocol(Recording)
            factory.name = name
            port = ports[0].getHost().port if ports else 0
            listening = self.successResultOf(
                ReusePortEndpoint(reactor, TcpAddress("127.0.0.1", port)).listen(factory))
            self.addCleanup(listening.stopListening)
            ports.append(listening)
        client = socket.create_connection(("127.0.0.1", ports[0].getHost().port))
        self.addCleanup(client.close)
        yield arrived
        self.assertEqual(len(accepted), 1)
        self.assertIn(accepted[0], ("first", "second"))

    def test_port_held_without_reuseport_fails(self) -> None:
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        before = len(os.listdir("/proc/self/fd"))
        endpoint = ReusePortEndpoint(reactor, TcpAddress("127.0.0.1", port))
        try:
            listening = endpoint.listen(Factory.forProtocol(Protocol))
        except CannotListenError:
            self.fail("listen() raised CannotListenError; IStreamServerEndpoint.listen must "
                      "return a Deferred that fails with it")
        failure = self.failureResultOf(listening, CannotListenError)
        self.assertEqual(failure.value.port, port)
        self.assertEqual(failure.value.interface, "127.0.0.1")
        # The refused socket was closed, not leaked.
        self.assertEqual(len(os.listdir("/proc/self/fd")), before)

    def test_failed_bind_raises_cannot_listen(self) -> None:
        """Whatever the delivery, the error is CannotListenError and no fd leaks."""
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        before = len(os.listdir("/proc/self/fd"))
        endpoint = ReusePortEndpoint(reactor, TcpAddress("127.0.0.1", port))
        errors: list[Failure] = []
        try:
            endpoint.listen(Factory.forProtocol(Protocol)).addErrback(errors.append)
        except CannotListenError as error:
            errors.append(Failure(error))
        self.assertEqual(len(errors), 1)
        self.assertTrue(errors[0].check(CannotListenError))
        self.assertEqual(len(os.listdir("/proc/self/fd")), before)


# --- the supervisor on a fake reactor


class FakeProcess:
    """What spawnProcess returns: a pid and signalProcess."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []
        self.refuse = False

    def signalProcess(self, signame: str) -> None:
        if self.refuse:
            from twisted.internet.error import ProcessExitedAlready

            raise ProcessExitedAlready()
        self.signals.append(signame)


class Spawned:
    def __init__(self, protocol: Any, executable: str, argv: list[str],
                 env: dict[str, str], child_fds: dict[int, Any], process: FakeProcess,
                 at: float) -> None:
        self.protocol = protocol
        self.executable = executable
        self.argv = argv
        self.env = env
        self.child_fds = child_fds
        self.process = process
        self.at = at

    def end(self, reason: Any = None) -> None:
        if reason is None:
            reason = ProcessTerminated(exitCode=1)
        self.protocol.processEnded(Failure(reason))


class FakeReactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[Spawned] = []
        self._next_pid = 5000

    def spawnProcess(self, protocol: Any, executable: str, args: list[str],
                     env: dict[str, str] | None = None, childFDs: Any = None,
                     **kwargs: Any) -> FakeProcess:
        self._next_pid += 1
        process = FakeProcess(self._next_pid)
        protocol.makeConnection(process)
        self.spawned.append(Spawned(protocol, executable, list(args), dict(env or {}),
                                    childFDs, process, self.seconds()))
        return process


class FakePort:
    def __init__(self, port: int) -> None:
        self.port = port

    def getHost(self) -> Any:
        return self

    @property
    def host(self) -> str:
        return "127.0.0.1"


ARGV = ["/usr/bin/python3", "-c", "run()", "-n", "--pidfile=", "mterelay", "--workers=3"]


class SupervisorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.listening: Deferred[Any] = Deferred()

    def supervisor(self, count: int = 3, metrics_dir: str | None = None,
                   environ: dict[str, str] | None = None,
                   stop_timeout: float = 30.0) -> WorkerSupervisor:
        supervisor = WorkerSupervisor(
            self.reactor, count, ARGV,
            environ if environ is not None else {"REDIS_URL": REDIS, "HOME": "/home/relay"},
            lambda: self.listening, stop_timeout=stop_timeout, metrics_dir=metrics_dir)
        return supervisor

    def started(self, count: int = 3, port: int = 8123, **kwargs: Any) -> WorkerSupervisor:
        supervisor = self.supervisor(count, **kwargs)
        supervisor.startService()
        self.listening.callback(FakePort(port))
        return supervisor

    def live(self) -> list[Spawned]:
        return [s for s in self.reactor.spawned if not s.protocol.ended.called]

    # -- starting

    def test_waits_for_the_port(self) -> None:
        supervisor = self.supervisor()
        supervisor.startService()
        self.assertEqual(self.reactor.spawned, [])
        self.listening.callback(FakePort(8123))
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertEqual(supervisor.port, 8123)

    def test_spawns_count_minus_one(self) -> None:
        supervisor = self.started(count=4, port=8123)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.assertEqual(sorted(supervisor.workers), [1, 2, 3])
        for index, spawned in enumerate(self.reactor.spawned, start=1):
            self.assertEqual(spawned.executable, ARGV[0])
            self.assertEqual(spawned.argv, ARGV)
            self.assertEqual(spawned.child_fds, {0: "w", 1: 1, 2: 2})
            self.assertEqual(spawned.env[WORKER_INDEX_ENV], str(index))
            self.assertEqual(spawned.env[WORKER_PORT_ENV], "8123")
            self.assertEqual(spawned.env[WORKER_PARENT_ENV], str(os.getpid()))
            # The supervisor's environment is inherited.
            self.assertEqual(spawned.env["REDIS_URL"], REDIS)
            self.assertEqual(spawned.env["HOME"], "/home/relay")
            self.assertNotIn(METRICS_DIR_ENV, spawned.env)
            self.assertEqual(supervisor.workers[index].pid, spawned.process.pid)

    def test_one_worker_spawns_nothing(self) -> None:
        supervisor = self.started(count=1)
        self.assertEqual(self.reactor.spawned, [])
        self.assertEqual(supervisor.workers, {})

    def test_metrics_dir_passed_on(self) -> None:
        directory = self.mktemp()
        os.mkdir(directory)
        self.started(metrics_dir=directory)
        for spawned in self.reactor.spawned:
            self.assertEqual(spawned.env[METRICS_DIR_ENV], directory)

    def test_environment_not_mutated(self) -> None:
        environ = {"REDIS_URL": REDIS}
        self.started(environ=environ)
        self.assertEqual(environ, {"REDIS_URL": REDIS})

    # -- restarting

    def test_ended_worker_restarted_with_back_off(self) -> None:
        supervisor = self.started()
        first = self.reactor.spawned[0]
        first.end()
        self.assertNotIn(1, supervisor.workers)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.reactor.advance(0.999)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.reactor.advance(0.001)
        self.assertEqual(len(self.reactor.spawned), 3)
        again = self.reactor.spawned[-1]
        self.assertEqual(again.env[WORKER_INDEX_ENV], "1")
        self.assertEqual(again.env[WORKER_PORT_ENV], "8123")
        self.assertIs(supervisor.workers[1], again.protocol)
        self.assertNotEqual(again.process.pid, first.process.pid)

    def test_back_off_doubles_up_to_the_max(self) -> None:
        supervisor = self.started()
        supervisor.max_restart_delay = 8.0
        delays = []
        dying = self.reactor.spawned[0]
        for _ in range(6):
            self.assertEqual(dying.env[WORKER_INDEX_ENV], "1")
            ended_at = self.reactor.seconds()
            dying.end()
            [call] = self.reactor.getDelayedCalls()
            delays.append(call.getTime() - ended_at)
            self.reactor.advance(call.getTime() - ended_at)
            dying = self.reactor.spawned[-1]
            self.assertIs(supervisor.workers[1], dying.protocol)
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 8.0, 8.0])

    def test_default_back_off(self) -> None:
        self.assertEqual(WorkerSupervisor.restart_delay, 1.0)
        self.assertEqual(WorkerSupervisor.max_restart_delay, 30.0)
        self.started(count=2)
        delays = []
        for _ in range(7):
            ended_at = self.reactor.seconds()
            self.reactor.spawned[-1].end()
            [call] = self.reactor.getDelayedCalls()
            delays.append(call.getTime() - ended_at)
            self.reactor.advance(call.getTime() - ended_at)
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0])

    def test_back_off_per_worker(self) -> None:
        self.started()
        one, two = self.reactor.spawned
        one.end()
        self.reactor.advance(1)
        self.reactor.spawned[-1].end()  # worker 1 again: 2 s
        two.end()  # worker 2 for the first time: 1 s
        times = sorted(call.getTime() - self.reactor.seconds()
                       for call in self.reactor.getDelayedCalls())
        self.assertEqual(times, [1.0, 2.0])

    def test_clean_exit_also_restarted(self) -> None:
        self.started()
        self.reactor.spawned[0].end(ProcessDone(0))
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.spawned), 3)

    def test_live_gauges_of_a_dead_worker_removed(self) -> None:
        directory = self.mktemp()
        os.mkdir(directory)
        self.started(metrics_dir=directory)
        dead, alive = self.reactor.spawned
        for pid in (dead.process.pid, alive.process.pid):
            for name in (f"gauge_livesum_{pid}.db", f"counter_{pid}.db"):
                with open(os.path.join(directory, name), "wb"):
                    pass
        dead.end()
        self.assertEqual(sorted(os.listdir(directory)), sorted([
            f"counter_{dead.process.pid}.db",
            f"counter_{alive.process.pid}.db", f"gauge_livesum_{alive.process.pid}.db"]))

    # -- stopping

    def test_no_restart_while_stopping(self) -> None:
        supervisor = self.started()
        supervisor.begin_stop()
        for spawned in self.reactor.spawned:
            self.assertEqual(spawned.process.signals, ["TERM"])
            spawned.end()
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertEqual(supervisor.workers, {})

    def test_pending_restart_dropped_by_stop(self) -> None:
        supervisor = self.started()
        self.reactor.spawned[0].end()  # restart due in 1 s
        stopped = supervisor.stopService()
        self.assertNoResult(stopped)
        self.reactor.spawned[1].end()
        self.successResultOf(stopped)
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.spawned), 2)

    def test_stop_before_the_port_spawns_nothing(self) -> None:
        supervisor = self.supervisor()
        supervisor.startService()
        self.successResultOf(supervisor.stopService())
        self.listening.callback(FakePort(8123))
        self.assertEqual(self.reactor.spawned, [])

    def test_stop_terms_all_and_fires_when_all_ended(self) -> None:
        supervisor = self.started(count=4)
        stopped = supervisor.stopService()
        self.assertFalse(supervisor.running)
        for spawned in self.reactor.spawned:
            self.assertEqual(spawned.process.signals, ["TERM"])
        first, second, third = self.reactor.spawned
        first.end()
        second.end()
        self.assertNoResult(stopped)
        third.end()
        self.assertIsNone(self.successResultOf(stopped))
        # Nothing left behind: no kill timer, no restart.
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(supervisor.workers, {})

    def test_stop_after_begin_stop_terms_once(self) -> None:
        supervisor = self.started()
        supervisor.begin_stop()
        supervisor.begin_stop()
        stopped = supervisor.stopService()
        for spawned in self.reactor.spawned:
            self.assertEqual(spawned.process.signals, ["TERM"])
            spawned.end()
        self.successResultOf(stopped)

    def test_stop_with_no_workers_fires_at_once(self) -> None:
        supervisor = self.started(count=1)
        self.successResultOf(supervisor.stopService())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_kill_after_stop_timeout(self) -> None:
        supervisor = self.started(stop_timeout=12.0)
        stopped = supervisor.stopService()
        stubborn, polite = self.reactor.spawned
        polite.end()
        self.reactor.advance(11.9)
        self.assertEqual(stubborn.process.signals, ["TERM"])
        self.assertNoResult(stopped)
        self.reactor.advance(0.1)
        self.assertEqual(stubborn.process.signals, ["TERM", "KILL"])
        self.assertEqual(polite.process.signals, ["TERM"])
        self.assertNoResult(stopped)
        stubborn.end(ProcessTerminated(signal=9))
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_no_kill_when_all_ended_in_time(self) -> None:
        supervisor = self.started(stop_timeout=5.0)
        stopped = supervisor.stopService()
        self.reactor.advance(4)
        for spawned in self.reactor.spawned:
            spawned.end()
        self.successResultOf(stopped)
        self.reactor.advance(10)
        for spawned in self.reactor.spawned:
            self.assertEqual(spawned.process.signals, ["TERM"])

    def test_signal_to_a_gone_worker_ignored(self) -> None:
        supervisor = self.started()
        gone, alive = self.reactor.spawned
        gone.process.refuse = True
        stopped = supervisor.stopService()
        self.assertEqual(alive.process.signals, ["TERM"])
        gone.end()
        alive.end()
        self.successResultOf(stopped)

    def test_stop_removes_the_metrics_dir(self) -> None:
        directory = self.mktemp()
        os.mkdir(directory)
        with open(os.path.join(directory, "counter_1.db"), "wb"):
            pass
        supervisor = self.started(metrics_dir=directory)
        stopped = supervisor.stopService()
        self.assertTrue(os.path.isdir(directory))
        for spawned in self.reactor.spawned:
            spawned.end()
        self.successResultOf(stopped)
        self.assertFalse(os.path.exists(directory))

    def test_stop_without_workers_removes_the_metrics_dir(self) -> None:
        directory = self.mktemp()
        os.mkdir(directory)
        supervisor = self.started(count=1, metrics_dir=directory)
        self.successResultOf(supervisor.stopService())
        self.assertFalse(os.path.exists(directory))

    def test_listening_result_passed_on(self) -> None:
        supervisor = self.supervisor(count=2)
        supervisor.startService()
        port = FakePort(8123)
        results: list[Any] = []
        self.listening.callback(port)
        self.listening.addCallback(results.append)
        self.assertEqual(results, [port])


class SupervisorSpawnRecordTests(SynchronousTestCase):
    """The fake reactor itself: what the supervisor tests rely on."""

    def test_fake_spawn_connects_the_protocol(self) -> None:
        reactor_ = FakeReactor()
        supervisor = WorkerSupervisor(reactor_, 2, ARGV, {}, lambda: succeed(FakePort(1)),
                                      stop_timeout=1.0)
        supervisor.startService()
        [spawned] = reactor_.spawned
        self.assertIs(spawned.protocol.transport, spawned.process)
