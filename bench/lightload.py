"""Light-load latency: one request at a time, and an open-loop paced load.

wrk measures throughput well but cannot pace (its ``delay()`` think time
gives a closed loop whose rate follows the target's latency), and at one
connection its own numbers are fine but say nothing about a fixed rate.
This module is a small keep-alive HTTP/1.1 client on asyncio streams that
times every request:

* :func:`sequential` — one connection, the next request sent when the
  previous answer is complete (nothing else in flight);
* :func:`paced` — requests due at fixed intervals (``rate`` per second)
  over ``connections`` keep-alive connections.  When every connection is
  still busy at a request's due time, its latency is measured from the
  moment it was *due*, not from when a connection came free, so a target
  that falls behind shows it in its latency (no coordinated omission); the
  achieved rate is reported next to the offered one.  Otherwise it is
  measured from the send: the event loop's timer wakes up to a millisecond
  late, and that slack is the client's, not the target's.

The client's own cost is the same for every target, so the tables show
"added over direct".  The pure parts (:func:`summarize`, :func:`due_times`,
:func:`parse_head`) are tested without sockets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Give up on one answer after this long (counted as an error, the connection replaced).
TIMEOUT_S = 10.0


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0..100) of an ascending sequence."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least 1
    return float(ordered[int(min(rank, len(ordered))) - 1])


def summarize(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    """p50 / p90 / p99 / max / mean of the latencies (ms); None when there are none."""
    ordered = sorted(latencies_ms)
    return {"p50": percentile(ordered, 50), "p90": percentile(ordered, 90),
            "p99": percentile(ordered, 99), "max": ordered[-1] if ordered else None,
            "mean": sum(ordered) / len(ordered) if ordered else None}


def due_times(rate: float, duration_s: float) -> list[float]:
    """Offsets (s) from the start at which the paced requests are due."""
    if rate <= 0 or duration_s <= 0:
        return []
    return [i / rate for i in range(int(rate * duration_s))]


def build_request(path: str, body: bytes, headers: Mapping[str, str]) -> bytes:
    """One keep-alive POST with a Content-Length body."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parse_head(head: bytes) -> tuple[int, int | None, bool]:
    """(status, content-length or None, connection closes) of a response head."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    length: int | None = None
    closes = parts[0] == "HTTP/1.0"
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "content-length":
            length = int(value)
        elif name == "connection":
            closes = value.lower() == "close"
        elif name == "transfer-encoding" and value.lower() != "identity":
            raise ValueError("chunked answers are not expected from the bench targets")
    return int(parts[1]), length, closes


class Connection:
    """One keep-alive connection; reopened after an error or a closing answer."""

    def __init__(self, port: int, request: bytes) -> None:
        self.port = port
        self.request = request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def exchange(self) -> int:
        """Send the request, read the whole answer; its status."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        try:
            self.writer.write(self.request)
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT_S)
            status, length, closes = parse_head(head[:-4])
            if length is None:
                raise ValueError("an answer without Content-Length")
            await asyncio.wait_for(self.reader.readexactly(length), TIMEOUT_S)
        except BaseException:
            self.close()
            raise
        if closes:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def aclose(self) -> None:
        """Close and wait until the socket is closed: asyncio.run() stops the loop
        before a plain close() has run, which would leave the socket to the GC."""
        writer = self.writer
        self.close()
        if writer is not None:
            try:
                await writer.wait_closed()
            except OSError:
                pass


@dataclass
class LoadResult:
    """What one light-load run measured (latencies in ms)."""

    kind: str
    connections: int
    duration_s: float
    offered_rps: float | None = None
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)

    def failed(self, why: BaseException | str) -> None:
        self.errors += 1
        if len(self.error_examples) < 5:
            self.error_examples.append(str(why)[:200] or type(why).__name__)

    def to_json(self) -> dict[str, Any]:
        ok = len(self.latencies_ms)
        return {"kind": self.kind, "connections": self.connections,
                "duration_s": round(self.duration_s, 3), "offered_rps": self.offered_rps,
                "answers": ok, "errors": self.errors, "error_examples": self.error_examples,
                "achieved_rps": ok / self.duration_s if self.duration_s > 0 else 0.0,
                "latency_ms": summarize(self.latencies_ms)}


async def _one(connection: Connection, result: LoadResult, started: float) -> None:
    try:
        status = await connection.exchange()
    except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError) as why:
        result.failed(why)
        return
    if status == 200:
        result.latencies_ms.append(1000.0 * (time.perf_counter() - started))
    else:
        result.failed(f"status {status}")


async def sequential(port: int, request: bytes, duration_s: float) -> LoadResult:
    """One request at a time on one keep-alive connection for ``duration_s``."""
    result = LoadResult("sequential", 1, 0.0)
    connection = Connection(port, request)
    start = time.perf_counter()
    end = start + duration_s
    try:
        while time.perf_counter() < end:
            await _one(connection, result, time.perf_counter())
    finally:
        await connection.aclose()
    result.duration_s = time.perf_counter() - start
    return result


async def paced(port: int, request: bytes, rate: float, connections: int,
                duration_s: float) -> LoadResult:
    """``rate`` requests/s due at fixed intervals over ``connections`` connections."""
    result = LoadResult("paced", connections, 0.0, offered_rps=rate)
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    pool = [Connection(port, request) for _ in range(connections)]
    for connection in pool:
        idle.put_nowait(connection)

    async def send(connection: Connection, due: float) -> None:
        try:
            await _one(connection, result, due)
        finally:
            idle.put_nowait(connection)

    tasks = []
    start = time.perf_counter()
    try:
        for offset in due_times(rate, duration_s):
            due = start + offset
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            # No free connection: the target is behind and the wait is its latency.
            origin = due if idle.empty() else time.perf_counter()
            connection = await idle.get()
            tasks.append(asyncio.ensure_future(send(connection, origin)))
        await asyncio.gather(*tasks)
    finally:
        await asyncio.gather(*(connection.aclose() for connection in pool))
    result.duration_s = time.perf_counter() - start
    return result


def run_sequential(port: int, request: bytes, duration_s: float) -> LoadResult:
    return asyncio.run(sequential(port, request, duration_s))


def run_paced(port: int, request: bytes, rate: float, connections: int,
              duration_s: float) -> LoadResult:
    return asyncio.run(paced(port, request, rate, connections, duration_s))
