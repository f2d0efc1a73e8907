"""What the numbers were measured on, recorded in every results file."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from typing import Any


def _first_line(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = done.stdout.decode("utf-8", "replace").strip().splitlines()
    return text[0].strip() if text else None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for module in ("twisted", "treq", "mterelay"):
        try:
            found[module] = __import__(module).__version__
        except Exception:  # not importable or being edited
            found[module] = None
    return found


def machine_info(wrk: str | None, nginx: str | None, redis: str | None) -> dict[str, Any]:
    """CPU, cores, memory, OS and the versions of everything in the measurement."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "memory_gib": memory_gib(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        **{f"{name}_version": value for name, value in versions().items()},
        "wrk": _first_line([wrk, "-v"]) if wrk else None,
        "nginx": _first_line([nginx, "-v"]) if nginx else None,
        "redis": _first_line([redis, "--version"]) if redis else None,
    }


# ---------------------------------------------------------------- CPU accounting
#
# The load generator, the upstream and every proxy share the machine's cores,
# and so does anything else running on it (a test suite, say).  Each run
# records who used how much CPU, so a number taken on a busy machine shows it.


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def machine_times_s() -> tuple[float, float]:
    """(busy, steal) CPU seconds of all cores since boot, from /proc/stat.

    busy = user + nice + system + irq + softirq; steal (time the hypervisor
    gave to other guests) is kept apart: it is not ours, but it is lost.
    """
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]] + [0] * 8
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6]
    return busy / _clock_ticks(), fields[7] / _clock_ticks()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one live process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _clock_ticks()


def reaped_children_cpu_s() -> float:
    """CPU of this process's finished children (wrk runs) plus its own."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = resource.getrusage(resource.RUSAGE_SELF)
    return children.ru_utime + children.ru_stime + own.ru_utime + own.ru_stime


def cpu_snapshot(processes: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far: per named group of pids, ``_load`` (wrk + harness), ``_machine``."""
    snap = {name: sum(process_cpu_s(pid) for pid in pids) for name, pids in processes.items()}
    snap["_load"] = reaped_children_cpu_s()
    snap["_machine"], snap["_steal"] = machine_times_s()
    snap["_time"] = time.monotonic()
    return snap


def cpu_usage(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Cores used between two snapshots: each process, wrk (+harness), and everything else.

    ``other_cores`` is the machine's busy time not accounted for by our
    processes: other programs (or the kernel on their behalf).
    """
    elapsed = max(after["_time"] - before["_time"], 1e-6)
    cores = {name: round((after.get(name, 0.0) - value) / elapsed, 3)
             for name, value in before.items() if not name.startswith("_")}
    load = (after["_load"] - before["_load"]) / elapsed
    machine = (after["_machine"] - before["_machine"]) / elapsed
    steal = (after["_steal"] - before["_steal"]) / elapsed
    ours = sum(cores.values()) + load
    return {
        "elapsed_s": round(elapsed, 3),
        "processes_cores": cores,
        "wrk_cores": round(load, 3),
        "machine_cores": round(machine, 3),
        "other_cores": round(max(machine - ours, 0.0), 3),
        "steal_cores": round(steal, 3),
    }
