"""WORKERS=N: N relay processes sharing one TCP port through SO_REUSEPORT.

One Twisted process uses one core.  Rather than a front process handing
connections around, every worker binds its own socket to the same address
with SO_REUSEPORT and the kernel spreads new connections across them.  The
first process (the one twistd started) supervises the others: it starts them
once its own port is bound (so ``tcp:0`` works), restarts one that dies, and
on SIGTERM passes the signal on and waits for them to drain.

Workers share nothing in memory, so pair state must live in Redis; the
config refuses WORKERS > 1 without REDIS_URL.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from zope.interface import implementer

from mterelay.http.prometheusshim import use_multiprocess_values

log = Logger(namespace="mterelay.workers")

#: Set in a worker's environment: its index (1..N-1), the shared port, the supervisor's pid.
WORKER_INDEX_ENV = "MTERELAY_WORKER_INDEX"
WORKER_PORT_ENV = "MTERELAY_WORKER_PORT"
WORKER_PARENT_ENV = "MTERELAY_WORKER_PARENT"
#: prometheus_client's own variable: where every worker writes its metric values.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def share_metrics(environ: Mapping[str, str], index: int) -> str:
    """Switch prometheus_client to per-process value files shared by the workers.

    Must run before any metric is created.  The first process makes the
    directory; the workers find it in their environment.
    """
    directory = environ.get(METRICS_DIR_ENV) if index else None
    if not directory:
        directory = tempfile.mkdtemp(prefix="mterelay-metrics-")
    os.environ[METRICS_DIR_ENV] = directory
    use_multiprocess_values()
    return directory


#: Pending connections a listener queues (nginx's default).  Twisted's 50
#: drops SYNs when a few hundred clients connect at once — a rolling restart
#: behind a load balancer, say — and each dropped SYN costs its client a
#: one-second retransmit.  The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 511


def with_default_backlog(description: str, backlog: int = LISTEN_BACKLOG) -> str:
    """``description`` with ``backlog=`` added when it is a TCP/TLS one without it."""
    kind, *args = _split_description(description)
    if kind not in ("tcp", "tcp6", "ssl") or any(a.startswith("backlog=") for a in args):
        return description
    return f"{description}:backlog={backlog}"


@attrs.frozen
class TcpAddress:
    interface: str
    port: int
    backlog: int = LISTEN_BACKLOG

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.interface else socket.AF_INET


def _split_description(description: str) -> list[str]:
    """Split a Twisted endpoint description on unescaped colons."""
    parts, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def tcp_address(description: str) -> TcpAddress:
    """The address of a ``tcp:`` / ``tcp6:`` server endpoint description.

    Raises ValueError for any other kind of endpoint: SO_REUSEPORT needs a
    plain TCP socket the relay binds itself.
    """
    kind, *args = _split_description(description)
    if kind not in ("tcp", "tcp6"):
        raise ValueError(f"needs a tcp: listening endpoint, not {kind}:")
    values: dict[str, str] = {}
    for position, arg in enumerate(args):
        name, equals, value = arg.partition("=")
        if not equals:
            if position != 0:
                raise ValueError(f"has an unexpected argument {arg!r}")
            name, value = "port", arg
        if name not in ("port", "interface", "backlog"):
            raise ValueError(f"has an option WORKERS cannot honour: {name}")
        values[name] = value
    try:
        port = int(values["port"])
        backlog = int(values.get("backlog", str(LISTEN_BACKLOG)))
    except (KeyError, ValueError):
        raise ValueError("needs a numeric port") from None
    if not 0 <= port <= 65535 or backlog < 1:
        raise ValueError("needs a port between 0 and 65535")
    default = "::" if kind == "tcp6" else "0.0.0.0"
    return TcpAddress(values.get("interface", default), port, backlog)


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """A TCP server endpoint whose socket has SO_REUSEPORT set before bind."""

    def __init__(self, reactor: Any, address: TcpAddress) -> None:
        self.reactor = reactor
        self.address = address

    def listen(self, factory: Any) -> Deferred[Any]:
        sock = socket.socket(self.address.family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.address.interface, self.address.port))
            sock.listen(self.address.backlog)
            sock.setblocking(False)
            port = self.reactor.adoptStreamPort(sock.fileno(), self.address.family, factory)
        except OSError as error:
            return fail(CannotListenError(self.address.interface, self.address.port, error))
        finally:
            sock.close()  # the port holds its own duplicate of the descriptor
        return succeed(port)


def worker_index(environ: Mapping[str, str]) -> int:
    """0 in the supervising process, 1..N-1 in the workers it started."""
    try:
        return max(0, int(environ.get(WORKER_INDEX_ENV, "0")))
    except ValueError:
        return 0


def die_with_parent(environ: Mapping[str, str]) -> None:
    """Ask Linux to SIGTERM this worker when its supervisor dies.

    Without it a supervisor killed with SIGKILL would leave workers serving
    the port on their own.  SIGTERM (not SIGKILL) so they still drain.
    """
    parent = environ.get(WORKER_PARENT_ENV)
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent is not None and str(os.getppid()) != parent:
        # The supervisor died before prctl took effect.
        os.kill(os.getpid(), signal.SIGTERM)


class _WorkerProtocol(ProcessProtocol):
    def __init__(self, supervisor: "WorkerSupervisor", index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.pid: int | None = None
        self.started = 0.0
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)
        self.supervisor._ended(self, reason)


class WorkerSupervisor(Service):
    """Starts workers 1..N-1, restarts them when they die, stops them with the relay."""

    restart_delay = 1.0
    max_restart_delay = 30.0

    def __init__(self, reactor: Any, count: int, argv: Sequence[str],
                 environ: Mapping[str, str], listening: Callable[[], Deferred[Any]],
                 stop_timeout: float, metrics_dir: str | None = None) -> None:
        self.reactor = reactor
        self.count = count
        self.argv = list(argv)
        self.environ = dict(environ)
        self.listening = listening
        self.stop_timeout = stop_timeout
        self.metrics_dir = metrics_dir
        self.workers: dict[int, _WorkerProtocol] = {}
        self.port: int | None = None
        self.stopping = False
        self._delays: dict[int, float] = {}

    def startService(self) -> None:
        super().startService()
        # The listener's port is bound by now (privileged start comes first).
        self.listening().addCallback(self._spawn_all)

    def _spawn_all(self, port: Any) -> Any:
        self.port = port.getHost().port
        for index in range(1, self.count):
            self._spawn(index)
        log.info("Started {count} worker processes on port {port}", count=self.count,
                 port=self.port)
        return port

    def _spawn(self, index: int) -> None:
        if self.stopping:
            return
        env = dict(self.environ)
        env.update({
            WORKER_INDEX_ENV: str(index),
            WORKER_PORT_ENV: str(self.port),
            WORKER_PARENT_ENV: str(os.getpid()),
        })
        if self.metrics_dir:
            env[METRICS_DIR_ENV] = self.metrics_dir
        protocol = _WorkerProtocol(self, index)
        process = self.reactor.spawnProcess(protocol, self.argv[0], self.argv, env=env,
                                            childFDs={0: "w", 1: 1, 2: 2})
        protocol.pid = process.pid
        protocol.started = self.reactor.seconds()
        self.workers[index] = protocol

    def _ended(self, protocol: _WorkerProtocol, reason: Any) -> None:
        if self.workers.get(protocol.index) is protocol:
            del self.workers[protocol.index]
        if self.metrics_dir and protocol.pid is not None:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(protocol.pid, self.metrics_dir)  # its live gauges go
        if self.stopping:
            return
        if self.reactor.seconds() - protocol.started > self.max_restart_delay:
            self._delays.pop(protocol.index, None)  # it ran a while: not a crash loop
        delay = self._delays.get(protocol.index, self.restart_delay)
        self._delays[protocol.index] = min(delay * 2, self.max_restart_delay)
        log.warn("Worker {index} exited ({why}); restarting it in {delay}s",
                 index=protocol.index, why=reason.getErrorMessage(), delay=delay)
        self.reactor.callLater(delay, self._spawn, protocol.index)

    def signal_all(self, signame: str) -> None:
        for protocol in list(self.workers.values()):
            try:
                protocol.transport.signalProcess(signame)
            except Exception:  # already gone
                pass

    def begin_stop(self) -> None:
        """SIGTERM every worker so they drain alongside this process."""
        if not self.stopping:
            self.stopping = True
            self.signal_all("TERM")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.begin_stop()
        waiting = [protocol.ended for protocol in self.workers.values()]
        done: Deferred[None] = Deferred()
        done.addBoth(self._remove_metrics_dir)
        if not waiting:
            done.callback(None)
            return done
        remaining = len(waiting)

        def one_ended(_: Any) -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0 and not done.called:
                if killer.active():
                    killer.cancel()
                done.callback(None)

        def kill() -> None:
            log.warn("Workers still running after {timeout}s; killing them",
                     timeout=self.stop_timeout)
            self.signal_all("KILL")

        killer = self.reactor.callLater(self.stop_timeout, kill)
        for ended in waiting:
            ended.addCallback(one_ended)
        return done


    def _remove_metrics_dir(self, result: Any) -> Any:
        if self.metrics_dir:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return result


def worker_argv(options: Mapping[str, Any], cli_names: Sequence[str]) -> list[str]:
    """The command line of a worker: twistd in the foreground with the same options.

    Options are rebuilt from the parsed values rather than copied from
    ``sys.argv`` so twistd's own options (pid file, log file, daemonising)
    never reach the workers; the environment is inherited as is.
    """
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "mterelay"]
    if options.get("config"):
        argv.append(f"--config={options['config']}")
    for name in cli_names:
        value = options.get(name)
        if value is not None:
            argv.append(f"--{name}={value}")
    if options.get("debug"):
        argv.append("--debug")
    return argv
