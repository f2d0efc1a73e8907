"""One campaign: start the stack, run the cases entry point by entry point, then the attacks.

Cases run grouped by entry point, each group in its own time window, so a
critical log line can be attributed to the entry point (or attack) being
exercised when it was written.  Every relay log is copied next to the
results before the stack is torn down.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

from mterelay.protocol.pairing import start_pairing

from fuzz import logscan
from fuzz.attacks import ATTACKS, AttackResult, Attacks
from fuzz.cases import WEIGHTS, Context, generate, rng_for
from fuzz.parts import Case
from fuzz.report import Report
from fuzz.runner import Outcome, run_cases, tally
from fuzz.session import Client
from fuzz.stack import SECRET_B, TOKEN, Stack, start_stack

#: The order the entry points run in (cheap first: a crash shows up early).
ORDER = ["echo", "relay-head", "raw", "passthrough", "pair", "proxy", "outbound", "abort", "slow",
         "harness"]


def entry_of(seed: int, index: int) -> str:
    """The entry point of case ``index`` (the first draw :func:`generate` makes)."""
    return rng_for(seed, index).choices(list(WEIGHTS), list(WEIGHTS.values()))[0]


def _revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _context(stack: Stack) -> Context:
    clients = [Client.paired(stack.balancer_port, SECRET_B, 8) for _ in range(4)]
    pendings = [start_pairing("00000000-0000-4000-8000-000000000000") for _ in range(6)]
    return Context(balancer=stack.balancer_port, inbound=stack.inbound_ports,
                   outbound=[stack.a1.port, stack.a2.port],  # type: ignore[list-item]
                   every=[stack.balancer_port, *stack.inbound_ports, stack.a1.port,  # type: ignore[list-item]
                          stack.a2.port],
                   secret_b=SECRET_B, token=TOKEN, clients=clients, pendings=pendings)


def _generate(ctx: Context, seed: int, index: int) -> Case:
    """A case, or (a harness bug) an echo request labelled as such rather than a lost run."""
    try:
        return generate(ctx, seed, index)
    except Exception as error:  # noqa: BLE001
        return Case(f"f{seed}-{index}", "harness", f"generator-error:{type(error).__name__}",
                    ctx.balancer, b"GET /api/mte-echo HTTP/1.1\r\nHost: x\r\n\r\n")


def _dead(stack: Stack, seen: set[str]) -> list[str]:
    out = []
    for proc in stack.relays + [stack.upstream, stack.network]:
        if proc.name.startswith("b3-shutdown") or proc.name in seen:
            continue
        if not proc.alive():
            seen.add(proc.name)
            out.append(f"{proc.name} exited with status {proc.popen.returncode}")
    return out


def run(seed: int, cases: int, attacks: list[str], out: Path, threads: int = 32,
        scale: float = 1.0, slowloris: bool = False,
        say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> Report:
    started = time.monotonic()
    stack = start_stack()
    crashes: list[str] = []
    windows: list[tuple[str, float, float]] = []
    dead: set[str] = set()
    results: list[AttackResult] = []
    outcomes: list[Outcome] = []
    try:
        say(f"fuzz: stack up in {time.monotonic() - started:.1f} s "
            f"(logs in {stack.procs.directory})")
        ctx = _context(stack)
        background: list[threading.Thread] = []
        atk = Attacks(stack, scale)
        if slowloris:
            holder: list[AttackResult] = []
            thread = threading.Thread(target=lambda: holder.append(atk.slowloris()))
            thread.start()
            background.append(thread)
        groups: dict[str, list[int]] = defaultdict(list)
        for index in range(cases):
            groups[entry_of(seed, index)].append(index)
        for entry in ORDER:
            indices = groups.get(entry, [])
            if not indices:
                continue
            t0 = time.time()
            step = max(1000, len(indices) // 4)
            done = run_cases((_generate(ctx, seed, i) for i in indices), threads,
                             lambda n, e=entry: n % step == 0 and say(f"fuzz: {e} {n}/{len(indices)}"))
            outcomes += done
            windows.append((entry, t0, time.time() + 0.5))
            crashes += [f"{c} (during {entry})" for c in _dead(stack, dead)]
            say(f"fuzz: {entry}: {len(done)} cases in {time.time() - t0:.1f} s")
        for thread in background:
            thread.join()
        if slowloris:
            for result in holder:
                result.key = "slowloris"
            results += holder
        for name in attacks:
            method, _ = ATTACKS[name]
            t0 = time.time()
            try:
                result = method(atk)
            except Exception as error:  # a harness failure is reported, not hidden
                result = AttackResult(name, False, "harness", f"the attack itself failed: "
                                      f"{type(error).__name__}: {error}")
            result.seconds = round(time.time() - t0, 1)
            result.key = name
            results.append(result)
            windows.append((f"attack {name}", t0, time.time() + 0.5))
            crashes += [f"{c} (during attack {name})" for c in _dead(stack, dead)]
            say(f"fuzz: attack {name}: {'pass' if result.passed else 'FAIL'} "
                f"({result.seconds} s) {result.evidence[:300]}")
        time.sleep(0.5)
        records = stack.records()
        stats = tally(outcomes, records)
        logs = _logs_by_window(stack, windows)
        out.parent.mkdir(parents=True, exist_ok=True)
        logdir = out.parent / (out.stem + "-logs")
        shutil.rmtree(logdir, ignore_errors=True)
        logdir.mkdir()
        for proc in stack.relays + [stack.upstream, stack.network]:
            if proc.log_path.exists():
                shutil.copy(proc.log_path, logdir / proc.log_path.name)
        if stack.records_path.exists():
            shutil.copy(stack.records_path, logdir / stack.records_path.name)
    finally:
        stack.close()
    return Report(seed, cases, time.monotonic() - started, stats, logs, results, crashes,
                  _revision(), [f"relay logs: {logdir}"])


def _logs_by_window(stack: Stack, windows: list[tuple[str, float, float]]
                    ) -> dict[str, logscan.LogFindings]:
    lines_by: dict[str, list[logscan.LogLine]] = defaultdict(list)
    for proc in stack.relays:
        lines, _ = logscan.read(proc.name, proc.log_path)
        for line in lines:
            where = "other"
            for name, t0, t1 in windows:
                if t0 <= line.when <= t1:
                    where = name
            lines_by[where].append(line)
    return {name: logscan.scan(lines) for name, lines in lines_by.items()}
