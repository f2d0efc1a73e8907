"""Every process of the campaign, started on free 127.0.0.1 ports and always stopped.

Reuses the benchmark's process owner (:class:`bench.procs.ProcessStack`:
own session per child, SIGTERM then SIGKILL, temp dir removed) and the test
suite's real ``redis-server`` (:class:`tests.helpers.redisserver.RedisServer`).

Topology (issue 14)::

    harness ──> A1 (outbound, OUTBOUND_UPSTREAMS = balancer, tamper) ─┐
            ──> A2 (outbound, no allow-list) ─────────────────────────┤
            ──> tamper proxy (on-path rewriter) ──> balancer <────────┘
            ──> balancer (round robin) ──> B1, B2 (inbound, one Redis) ──> recording upstream
            ──> B1, B2 directly
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import Proc, ProcessStack, StartupError, free_port, start_relay
from tests.helpers.redisserver import RedisServer

SECRET_B = "fuzz-relay-b-client-id-secret-0123456789"
SECRET_A = "fuzz-relay-a-client-id-secret-0123456789"
TOKEN = "fuzz-outbound-token-0123456789"
STATE_SECRET = "fuzz-state-secret-0123456789abcdef0123"
KEY_PREFIX = "fuzz:"
#: Pass-through routes of the inbound relays (clear, forwarded as they are).
PASS_THROUGH = "/public-api/*,/slow"


@dataclass
class Stack:
    """The running processes and where they listen."""

    procs: ProcessStack
    redis: RedisServer
    upstream: Proc
    records_path: Path
    network: Proc
    balancer_port: int
    tamper_port: int
    b1: Proc
    b2: Proc
    a1: Proc
    a2: Proc
    metrics_ports: dict[str, int] = field(default_factory=dict)
    extra: list[Proc] = field(default_factory=list)

    @property
    def relays(self) -> list[Proc]:
        return [self.b1, self.b2, self.a1, self.a2, *self.extra]

    @property
    def inbound_ports(self) -> list[int]:
        return [self.b1.port, self.b2.port]  # type: ignore[list-item]

    @property
    def upstream_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream.port}"

    def records(self) -> list[dict[str, Any]]:
        """Everything the upstream has seen so far (one dict per complete request)."""
        out = []
        try:
            with open(self.records_path, encoding="utf-8") as handle:
                for line in handle:
                    if line.endswith("\n"):
                        out.append(json.loads(line))
        except FileNotFoundError:
            pass
        return out

    def inbound_env(self, port: int, **extra: str) -> dict[str, str]:
        env = {
            "UPSTREAM": self.upstream_url, "CLIENT_ID_SECRET": SECRET_B,
            "REDIS_URL": self.redis.url, "REDIS_KEY_PREFIX": KEY_PREFIX,
            "STATE_SECRET": STATE_SECRET, "LISTEN": f"tcp:{port}:interface=127.0.0.1",
            "PASS_THROUGH_ROUTES": PASS_THROUGH, "LOG_FORMAT": "json", "LOG_LEVEL": "info",
        }
        env.update(extra)
        return env

    def start_inbound(self, name: str, **extra: str) -> Proc:
        """One more inbound replica on the same Redis (the shutdown attack's victim)."""
        port = free_port()
        proc = start_relay(self.procs, name, self.inbound_env(port, **extra), port, 1)
        self.extra.append(proc)
        return proc

    def start_outbound(self, name: str) -> Proc:
        """One more outbound relay pointed at the balancer (the shutdown attack's victim)."""
        port = free_port()
        proc = start_relay(self.procs, name, outbound_env(
            self.upstream_url, port, f"http://127.0.0.1:{self.balancer_port}"), port, 1)
        self.extra.append(proc)
        return proc

    def close(self) -> None:
        try:
            self.procs.close()
        finally:
            self.redis.cleanup()


def outbound_env(upstream: str, port: int, allow: str | None) -> dict[str, str]:
    env = {"UPSTREAM": upstream, "CLIENT_ID_SECRET": SECRET_A, "OUTBOUND_TOKEN": TOKEN,
           "LISTEN": f"tcp:{port}:interface=127.0.0.1", "LOG_FORMAT": "json", "LOG_LEVEL": "info"}
    if allow:
        env["OUTBOUND_UPSTREAMS"] = allow
    return env


def _start_python(procs: ProcessStack, name: str, module: str, args: list[str], port: int
                  ) -> Proc:
    proc = procs.start(name, [sys.executable, "-m", module, *args],
                       dict(os.environ, PYTHONUNBUFFERED="1"), port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StartupError(f"{name} exited:\n{proc.log_tail()}")
        if "listening" in proc.log_text() or "fuzz network" in proc.log_text():
            return proc
        time.sleep(0.05)
    raise StartupError(f"{name} did not start:\n{proc.log_tail()}")


def start_stack(keep_dir: Path | None = None) -> Stack:
    """Start Redis, the upstream, B1 and B2, the network, A1 and A2; undo all on failure."""
    procs = ProcessStack() if keep_dir is None else ProcessStack(directory=keep_dir)
    redis = RedisServer()
    try:
        redis.start()
        records = procs.directory / "upstream-records.jsonl"
        up_port = free_port()
        upstream = _start_python(procs, "upstream", "fuzz.upstream", [str(up_port), str(records)],
                                 up_port)
        stack_parts: dict[str, Any] = {}
        metrics: dict[str, int] = {}
        partial = Stack(procs, redis, upstream, records, None, 0, 0, None, None, None, None,  # type: ignore[arg-type]
                        metrics)
        for name in ("b1", "b2"):
            port, mport = free_port(), free_port()
            metrics[name] = mport
            stack_parts[name] = start_relay(
                procs, name, partial.inbound_env(port, METRICS_LISTEN=f"tcp:{mport}:interface=127.0.0.1"),
                port, 1)
        balancer, tamper = free_port(), free_port()
        network = _start_python(procs, "network", "fuzz.network",
                                [str(balancer), str(tamper), str(stack_parts["b1"].port),
                                 str(stack_parts["b2"].port)], balancer)
        for name, allow in (("a1", f"http://127.0.0.1:{balancer},http://127.0.0.1:{tamper}"),
                            ("a2", None)):
            port = free_port()
            stack_parts[name] = start_relay(procs, name, outbound_env(upstream.url, port, allow),
                                            port, 1)
        return Stack(procs, redis, upstream, records, network, balancer, tamper,
                     stack_parts["b1"], stack_parts["b2"], stack_parts["a1"], stack_parts["a2"],
                     metrics)
    except BaseException:
        procs.close()
        redis.cleanup()
        raise
