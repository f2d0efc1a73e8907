#!/usr/bin/env python3
"""Pairing under flood: a new client's pairing latency and the relay's CPU while
``POST /api/mte-pair`` is flooded (issue 14, finding 5).

One real relay process (``twistd -n mterelay``, inbound role, a real
redis-server for its pairs), everything on loopback.  Several source
addresses are used by binding client sockets to 127.0.0.x (all of
127.0.0.0/8 is loopback on Linux).  Per scenario, for ``--duration`` seconds:

* a **flooder** (a child process, open loop at ``--rate`` requests/s, one
  fresh connection per request, valid bodies of ``--entries`` pairs with
  fresh pair ids) hammers the relay;
* a **prober** (this process) pairs as a *new client* over and over, each
  time from the next address of 127.0.1.1-254 (a new client has its own
  address and id): a fresh client id (HEAD), then one timed ``POST
  /api/mte-pair`` of ``--probe-entries`` pairs, then ``--probe-interval``
  seconds of rest;
* the relay's CPU (utime + stime from /proc, % of one core) is read over
  the window, and the Redis key count and memory at the end.

Scenarios: ``idle`` (prober only), ``single`` (one client id, one source),
``ids200`` (200 ids, one source), ``ids200x8`` (200 ids over 8 sources),
``victim`` (1-entry pairings on the *prober's* client id from another
address; the prober keeps that id and its address 127.0.0.250, pairs one
pair per probe, and counts how many of its pairings succeed).  With
``--compare REV`` the relay of REV (a temporary detached git worktree, see
bench/compare.py) runs every scenario too, interleaved with this tree's,
``--rounds`` times in alternating order.

    python bench/pairing_flood.py [--compare main] [--scenarios idle,single,...]
        [--duration 20] [--rounds 2] [--rate 50] [--entries 25] [--json FILE]

Prints one Markdown table per scenario (the median round per target) and
the load average seen before and after; raw numbers go to ``--json``.
Bounded in time: about (duration + 5 s) x scenarios x targets x rounds.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import base64  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

from bench import compare, procs  # noqa: E402
from bench.machine import process_cpu_s  # noqa: E402

SECRET = "bench-pairing-flood-client-id-secret-0123456789"
PROBE_SOURCES = [f"127.0.1.{n}" for n in range(1, 255)]
VICTIM_SOURCE = "127.0.0.250"
SCENARIOS = {
    # name: (client ids, flood sources, entries per request (None: --entries), rate factor)
    "idle": (0, (), None, 0),
    "single": (1, ("127.0.0.2",), None, 1),
    "ids200": (200, ("127.0.0.3",), None, 1),
    "ids200x8": (200, tuple(f"127.0.0.{10 + n}" for n in range(8)), None, 1),
    "victim": (0, ("127.0.0.4",), 1, 1),
}
_PLACEHOLDER = "P" * 22


# ----------------------------------------------------------------- HTTP, raw


async def http(port: int, source: str, method: str, path: str, headers: dict[str, str],
               body: bytes = b"", timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection from ``source``; (status, headers, body)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), timeout)
    try:
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
                f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        raw = await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()
    top, _, rest = raw.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    answer = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        answer[name.strip().lower()] = value.strip()
    return status, answer, rest


async def client_id(port: int, source: str) -> str:
    status, headers, _ = await http(port, source, "HEAD", "/api/mte-relay", {})
    if status != 200 or "x-mte-relay" not in headers:
        raise RuntimeError(f"HEAD /api/mte-relay answered {status}")
    return headers["x-mte-relay"]


def entry_template() -> str:
    """One valid pair request entry as JSON, its pairId a placeholder (keys reused)."""
    from mterelay.protocol.pairing import start_pairing

    entry = start_pairing(str(uuid.uuid4()), _PLACEHOLDER).request_entry()
    return json.dumps(entry, separators=(",", ":"))


def pair_body(template: str, entries: int) -> bytes:
    """``entries`` entries with fresh random pair ids: the relay cannot tell them apart."""
    ids = (base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode() for _ in range(entries))
    return ("[" + ",".join(template.replace(_PLACEHOLDER, i) for i in ids) + "]").encode()


# ----------------------------------------------------------------- flooder


async def flood(spec: dict[str, Any]) -> dict[str, Any]:
    """Open loop: one request every 1/rate s, at most ``spec["max_outstanding"]`` at once."""
    port, rate, sources = spec["port"], spec["rate"], spec["sources"]
    ids = spec.get("ids") or [await client_id(port, sources[n % len(sources)])
                              for n in range(spec["id_count"])]
    template = entry_template()
    statuses: dict[str, int] = {}
    limits: dict[str, int] = {}
    outstanding = 0
    skipped = 0
    tasks = set()

    async def one(n: int) -> None:
        nonlocal outstanding
        outstanding += 1
        try:
            status, _, body = await http(
                port, sources[n % len(sources)], "POST", "/api/mte-pair",
                {"x-mte-relay": ids[n % len(ids)], "content-type": "application/json"},
                pair_body(template, spec["entries"]))
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status == 429:
                try:
                    limit = str(json.loads(body).get("limit", "?"))
                except ValueError:
                    limit = "?"
                limits[limit] = limits.get(limit, 0) + 1
        except (OSError, asyncio.TimeoutError) as error:
            key = type(error).__name__
            statuses[key] = statuses.get(key, 0) + 1
        finally:
            outstanding -= 1

    print("ready", flush=True)
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < spec["duration"]:
        due = start + n / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if outstanding >= spec["max_outstanding"]:
            skipped += 1
        else:
            task = asyncio.ensure_future(one(n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        n += 1
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    return {"sent": n - skipped, "skipped": skipped, "statuses": statuses, "limits": limits,
            "seconds": time.monotonic() - start}


# ----------------------------------------------------------------- prober


async def probe(port: int, duration: float, entries: int, interval: float,
                fixed_id: str | None) -> dict[str, Any]:
    template = entry_template()
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    deadline = time.monotonic() + duration
    n = 0
    while time.monotonic() < deadline:
        source = VICTIM_SOURCE if fixed_id else PROBE_SOURCES[n % len(PROBE_SOURCES)]
        n += 1
        try:
            cid = fixed_id or await client_id(port, source)
            body = pair_body(template, entries)
            started = time.perf_counter()
            status, _, _ = await http(port, source, "POST", "/api/mte-pair",
                                      {"x-mte-relay": cid, "content-type": "application/json"},
                                      body)
            elapsed = time.perf_counter() - started
        except (OSError, asyncio.TimeoutError, RuntimeError) as error:
            statuses[type(error).__name__] = statuses.get(type(error).__name__, 0) + 1
            await asyncio.sleep(interval)
            continue
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if status == 200:
            latencies.append(elapsed)
        await asyncio.sleep(interval)
    return {"latencies": latencies, "statuses": statuses}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# ----------------------------------------------------------------- redis


def redis_command(port: int, *words: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        request = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
        sock.sendall(request.encode())
        data = b""
        sock.settimeout(5)
        while True:
            chunk = sock.recv(65536)
            data += chunk
            if not chunk or data.endswith(b"\r\n") and _complete(data):
                return data


def _complete(data: bytes) -> bool:
    if data[:1] == b"$":
        length = int(data[1:data.index(b"\r\n")])
        return len(data) >= data.index(b"\r\n") + 2 + max(length, 0) + 2
    return True


def redis_stats(port: int) -> dict[str, Any]:
    keys = int(redis_command(port, "DBSIZE").strip()[1:])
    info = redis_command(port, "INFO", "memory").decode("latin-1")
    used = next((int(line.split(":")[1]) for line in info.splitlines()
                 if line.startswith("used_memory:")), 0)
    return {"keys": keys, "used_memory_bytes": used}


# ----------------------------------------------------------------- one run


@dataclass
class Target:
    name: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    directory: Path = procs.REPO_DIR


def loadavg() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


async def run_one(stack: procs.ProcessStack, redis: procs.Proc, target: Target,
                  scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    redis_command(redis.port, "FLUSHALL")
    port = procs.free_port()
    env = {"UPSTREAM": "http://127.0.0.1:9", "CLIENT_ID_SECRET": SECRET,
           "REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
           "LISTEN": f"tcp:{port}:interface=127.0.0.1", "LOG_LEVEL": args.log_level,
           **target.env}
    relay = procs.start_relay(stack, f"relay-{target.name}-{scenario}", env, port, 1,
                              launcher=True, cwd=target.cwd)
    try:
        found = compare.parse_launcher_line(relay.log_text())
        problem = compare.import_problem(found, target.directory)
        if problem:
            raise SystemExit(f"bench: {target.name}: {problem}")
        ids, sources, entries, factor = SCENARIOS[scenario]
        fixed_id = None
        flooder = None
        probe_entries = args.probe_entries
        if scenario == "victim":
            fixed_id = await client_id(port, VICTIM_SOURCE)
            probe_entries = 1  # well inside the victim's own budget
        if sources:
            spec = {"port": port, "rate": args.rate * factor, "sources": list(sources),
                    "id_count": ids, "ids": [fixed_id] if fixed_id else None,
                    "entries": entries or args.entries, "duration": args.duration + args.warmup,
                    "max_outstanding": args.max_outstanding}
            flooder = await asyncio.create_subprocess_exec(
                sys.executable, str(Path(__file__).resolve()), "--flooder", json.dumps(spec),
                stdout=asyncio.subprocess.PIPE, cwd=str(procs.REPO_DIR))
            assert flooder.stdout is not None
            await asyncio.wait_for(flooder.stdout.readline(), 60)  # "ready"
            await asyncio.sleep(args.warmup)  # let the flood reach its steady state
        cpu_before, wall_before = process_cpu_s(relay.pid), time.monotonic()
        probed = await probe(port, args.duration, probe_entries, args.probe_interval,
                             fixed_id)
        cpu = (process_cpu_s(relay.pid) - cpu_before) / (time.monotonic() - wall_before)
        flooded: dict[str, Any] = {}
        if flooder is not None:
            assert flooder.stdout is not None
            out = await asyncio.wait_for(flooder.stdout.read(), args.duration + 60)
            await flooder.wait()
            flooded = json.loads(out.decode().strip().splitlines()[-1])
        stored = redis_stats(redis.port)
        with open(f"/proc/{relay.pid}/status") as handle:
            rss = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
        lat = probed["latencies"]
        return {
            "target": target.name, "scenario": scenario, "relay_cpu_pct": round(100 * cpu, 1),
            "probe_ok": len(lat), "probe_statuses": probed["statuses"],
            "probe_p50_ms": _ms(percentile(lat, 0.5)), "probe_p99_ms": _ms(percentile(lat, 0.99)),
            "probe_max_ms": _ms(max(lat) if lat else None), "flood": flooded,
            "redis": stored, "relay_rss_kib": rss, "loadavg": loadavg(),
        }
    finally:
        stack.stop(relay)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


# ----------------------------------------------------------------- report


def table(scenario: str, rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    ids, sources, entries, _ = SCENARIOS[scenario]
    what = ("prober only" if not sources else
            f"{args.rate:g} req/s x {entries or args.entries} pairs, "
            f"{ids or 'the victim'} id(s), {len(sources)} source(s)")
    out = [f"### {scenario} ({what})", "",
           "| target | round | new client p50 ms | p99 ms | max ms | probes ok / sent "
           "| relay CPU % | flood 200 / 429 (by limit) | Redis keys | load avg |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        sent = sum(row["probe_statuses"].values())
        flood = row["flood"]
        st = flood.get("statuses", {})
        lim = ", ".join(f"{k} {v}" for k, v in sorted(flood.get("limits", {}).items()))
        flood_text = (f"{st.get('200', 0)} / {st.get('429', 0)}" + (f" ({lim})" if lim else "")
                      + "".join(f", {k} {v}" for k, v in st.items() if k not in ("200", "429"))
                      if flood else "-")
        out.append(f"| {row['target']} | {row['round']} | {row['probe_p50_ms']} | "
                   f"{row['probe_p99_ms']} | {row['probe_max_ms']} | {row['probe_ok']} / {sent} "
                   f"| {row['relay_cpu_pct']} | {flood_text} | {row['redis']['keys']} "
                   f"| {row['loadavg']} |")
    return "\n".join(out)


# ----------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flooder", help=argparse.SUPPRESS)
    parser.add_argument("--compare", metavar="REV", help="also run REV's relay (e.g. main)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of flood before the prober starts")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=float, default=50.0, help="flood requests/s")
    parser.add_argument("--entries", type=int, default=25, help="pairs per flood request")
    parser.add_argument("--probe-entries", type=int, default=5)
    parser.add_argument("--probe-interval", type=float, default=0.1)
    parser.add_argument("--max-outstanding", type=int, default=256)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    args.scenario_list = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for name in args.scenario_list:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}; one of {', '.join(SCENARIOS)}")
    if args.duration > 300 or args.rounds > 10:
        parser.error("keep it bounded: --duration <= 300, --rounds <= 10")
    return args


async def main_async(args: argparse.Namespace) -> int:
    targets = [Target("this-tree")]
    worktree = compare.Worktree(procs.REPO_DIR, args.compare) if args.compare else None
    results: list[dict[str, Any]] = []
    started_load = loadavg()
    try:
        with procs.ProcessStack() as stack:
            if worktree is not None:
                worktree.add()
                assert worktree.path is not None
                targets.append(Target(f"{args.compare}@{worktree.short}",
                                      compare.pythonpath_env(worktree.path), worktree.path,
                                      worktree.path))
            redis = procs.start_redis(stack)
            for round_ in range(1, args.rounds + 1):
                order = targets if round_ % 2 else list(reversed(targets))
                for scenario in args.scenario_list:
                    for target in order:
                        print(f"bench: round {round_} {scenario} {target.name} ...",
                              file=sys.stderr, flush=True)
                        row = await run_one(stack, redis, target, scenario, args)
                        row["round"] = round_
                        results.append(row)
                        print(f"bench:   p50 {row['probe_p50_ms']} ms p99 {row['probe_p99_ms']}"
                              f" ms cpu {row['relay_cpu_pct']} %"
                              f" flood {row['flood'].get('statuses')} load {row['loadavg']}",
                              file=sys.stderr, flush=True)
    finally:
        if worktree is not None:
            worktree.close()
    print(f"Load average before: {started_load}; after: {loadavg()}; "
          f"{os.cpu_count()} CPUs; probe: {args.probe_entries} pairs every "
          f"{args.probe_interval:g} s, each from its own 127.0.1.x (victim: 1 pair, "
          f"{VICTIM_SOURCE}), {args.duration:g} s per run after {args.warmup:g} s of flood\n")
    for scenario in args.scenario_list:
        rows = [r for r in results if r["scenario"] == scenario]
        rows.sort(key=lambda r: (r["target"], r["round"]))
        print(table(scenario, rows, args) + "\n")
        for target in targets:
            mine = [r["probe_p99_ms"] for r in rows if r["target"] == target.name
                    and r["probe_p99_ms"] is not None]
            if mine:
                print(f"{scenario} {target.name}: median p99 over rounds "
                      f"{statistics.median(mine)} ms")
        print()
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results,
                                               "compare": worktree.describe() if worktree
                                               else None}, indent=1, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.flooder:
        result = asyncio.run(flood(json.loads(args.flooder)))
        print(json.dumps(result), flush=True)
        return 0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
