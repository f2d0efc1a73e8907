"""Memory per connection and per pair of the relay: resident set size before and
after opening N connections, and before and after creating N pairs (issue 18).

* **Per connection**: N keep-alive connections to relay A, each carrying one
  request (sent one at a time, so A reuses one pooled connection to B and
  the growth is that of the client connections), all held open while the
  RSS of A and B is read again.
* **Per pair**: N pairs created at relay B with ``POST /api/mte-pair`` (real
  pairing requests, 25 per request, as many client ids as the admission
  limits need); B's RSS and Redis's ``used_memory`` before and after — in
  the Redis set-up a pair lives in Redis, with a key cache in B.

RSS is what the kernel reports (``VmRSS``), summed over a process and its
workers; it moves in pages and the allocator keeps freed memory, so the
figures are an order of magnitude, not an exact byte count — say so next to
them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any

from bench import lightload

#: Pair entries per ``POST /api/mte-pair`` (the relay's per-client burst allows 100).
ENTRIES_PER_REQUEST = 25
#: Pairing requests made under one client id before taking a new one.
REQUESTS_PER_CLIENT = 4


def rss_kib(pid: int) -> int:
    """VmRSS of one process in KiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def total_rss_kib(pids: Iterable[int]) -> int:
    return sum(rss_kib(pid) for pid in pids)


def per_item(before: int, after: int, count: int) -> float | None:
    """(after - before) / count in KiB, None when nothing was counted."""
    return None if count <= 0 else (after - before) / count


async def hold_connections(port: int, request: bytes, count: int,
                           measure: Any) -> tuple[int, int, Any]:
    """Open ``count`` connections, one request each (one at a time), call ``measure()``
    while all are open; (answers 200, errors, what measure returned)."""
    connections = [lightload.Connection(port, request) for _ in range(count)]
    ok = errors = 0
    try:
        for connection in connections:
            try:
                status = await connection.exchange()
            except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                errors += 1
                continue
            if status == 200:
                ok += 1
            else:
                errors += 1
        await asyncio.sleep(0.5)  # let both relays settle (pool, buffers)
        return ok, errors, measure()
    finally:
        await asyncio.gather(*(connection.aclose() for connection in connections))


def connections_figures(a_pids: list[int], b_pids: list[int], port: int, request: bytes,
                        count: int) -> dict[str, Any]:
    """RSS of relay A and B before and with ``count`` client connections open."""
    def measure() -> tuple[int, int]:
        return total_rss_kib(a_pids), total_rss_kib(b_pids)

    a_before, b_before = measure()
    ok, errors, (a_after, b_after) = asyncio.run(
        hold_connections(port, request, count, measure))
    return {"connections": count, "answers": ok, "errors": errors,
            "a_rss_kib": [a_before, a_after], "b_rss_kib": [b_before, b_after],
            "a_kib_per_connection": per_item(a_before, a_after, ok),
            "b_kib_per_connection": per_item(b_before, b_after, ok),
            "pair_kib_per_connection": per_item(a_before + b_before, a_after + b_after, ok)}


async def create_pairs(port: int, count: int) -> tuple[int, list[str]]:
    """``count`` pairs at the relay on ``port``; (pairs created, problems)."""
    from bench import pairing_flood

    template = pairing_flood.entry_template()
    created, problems = 0, []
    client = ""
    made = 0
    while created < count and len(problems) < 5:
        if made % REQUESTS_PER_CLIENT == 0:
            client = await pairing_flood.client_id(port, "127.0.0.1")
        made += 1
        entries = min(ENTRIES_PER_REQUEST, count - created)
        status, _, body = await pairing_flood.http(
            port, "127.0.0.1", "POST", "/api/mte-pair",
            {"x-mte-relay": client, "content-type": "application/json"},
            pairing_flood.pair_body(template, entries))
        if status == 200 and len(json.loads(body)) == entries:
            created += entries
        else:
            problems.append(f"status {status}: {body[:200]!r}")
    return created, problems


def pairs_figures(b_pids: list[int], b_port: int, redis_port: int | None,
                  count: int) -> dict[str, Any]:
    """RSS of relay B (and Redis used_memory) before and after ``count`` new pairs."""
    from bench import pairing_flood

    def redis_bytes() -> int | None:
        if redis_port is None:
            return None
        return int(pairing_flood.redis_stats(redis_port)["used_memory_bytes"])

    b_before, redis_before = total_rss_kib(b_pids), redis_bytes()
    created, problems = asyncio.run(create_pairs(b_port, count))
    b_after, redis_after = total_rss_kib(b_pids), redis_bytes()
    redis_per_pair = (None if redis_before is None or redis_after is None or not created
                      else (redis_after - redis_before) / 1024 / created)
    return {"pairs": count, "created": created, "problems": problems,
            "b_rss_kib": [b_before, b_after], "redis_used_memory_bytes": [redis_before,
                                                                           redis_after],
            "b_kib_per_pair": per_item(b_before, b_after, created),
            "redis_kib_per_pair": redis_per_pair}
