"""Measure CPU per answer of bench.server_channel under both channels (issue 18, Deliver 3).

wrk -t1 -c50 -d10s, POST 1 KiB (bench/post.lua), CPU of the server process
from /proc/PID/stat, rounds interleaved so machine drift hits both columns.
``python -m bench.measure_channel [ROUNDS] [SECONDS]``; prints a Markdown table.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one(channel: str, seconds: int) -> dict:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.server_channel", channel, str(port)],
                              cwd=HERE.parent, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        url = f"http://127.0.0.1:{port}/"
        # warm-up
        subprocess.run(["wrk", "-t1", "-c50", "-d2s", "-s", str(HERE / "post.lua"), url],
                       capture_output=True, check=True)
        before = cpu_seconds(server.pid)
        out = subprocess.run(["wrk", "-t1", "-c50", f"-d{seconds}s", "-s", str(HERE / "post.lua"),
                              url, "--", "body=1024"], capture_output=True, text=True,
                             check=True).stdout
        used = cpu_seconds(server.pid) - before
    finally:
        server.terminate()
        server.wait()
    line = next(l for l in out.splitlines() if l.startswith("WRKJSON "))
    result = json.loads(line[len("WRKJSON "):])
    requests = result["requests"]
    errors = sum(result["errors"].values())
    return {"rps": requests / (result["duration_us"] / 1e6), "cpu_ms": used * 1000 / requests,
            "errors": errors, "p50_ms": result["latency_us"]["p50"] / 1000}


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    results: dict[str, list[dict]] = {"twisted": [], "lean": []}
    for index in range(rounds):
        for channel in ("twisted", "lean") if index % 2 == 0 else ("lean", "twisted"):
            got = one(channel, seconds)
            results[channel].append(got)
            print(f"round {index + 1} {channel}: {got}", flush=True)
    print("\n| channel | req/s (median) | CPU ms/answer (median) | rounds (CPU ms) | errors |")
    print("|---|---:|---:|---|---:|")
    for channel, runs in results.items():
        print(f"| {channel} | {statistics.median(r['rps'] for r in runs):,.0f} | "
              f"{statistics.median(r['cpu_ms'] for r in runs):.4f} | "
              f"{', '.join('%.4f' % r['cpu_ms'] for r in runs)} | "
              f"{sum(r['errors'] for r in runs)} |")
    tw = statistics.median(r["cpu_ms"] for r in results["twisted"])
    le = statistics.median(r["cpu_ms"] for r in results["lean"])
    print(f"\nlean / twisted CPU per answer: {le / tw:.3f} ({(1 - le / tw) * 100:.1f} % less)")


if __name__ == "__main__":
    main()
