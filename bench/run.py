#!/usr/bin/env python3
"""mterelay benchmark: what the relay pair costs over a plain two-hop proxy, in one run.

Measured with wrk on this machine (all on 127.0.0.1):

* ``direct``   wrk -> upstream (nginx answering 1 KiB, or the built-in server)
* ``sidecar``  wrk -> nginx -> TLS 1.3 -> nginx -> upstream (bench/sidecar.py; what
  users pick instead for service-to-service encryption; n/a without nginx)
* ``bare``     wrk -> B1 -> B2 -> upstream (two bare treq hops, bench/bare_proxy.py:
  the baseline the relay is judged against)
* ``baseline`` wrk -> P1 -> P2 -> upstream (two heavier Twisted/treq proxies with an
  access line and header copies, bench/baseline_proxy.py: "heavy chain")
* ``relay``    wrk -> relay A (outbound) -> relay B (inbound, Redis) -> upstream
* ``relay-wN`` the same with ``WORKERS=N`` on A and B (n/a when unsupported)
* ``relay@<short>`` with ``--compare REV``: the relay pair of git revision REV
  (a temporary worktree on PYTHONPATH), right after ``relay``, so the working
  tree's hot path is compared with REV's in the same run (bench/compare.py)

at several concurrency levels, then baseline and relay (and relay@REV) at one
fixed offered rate (half the baseline's best throughput), then the light-load
latency runs (bench/lightload.py: one request at a time, and paced at
``--light-rate`` req/s over ``--light-connections``) against direct, bare,
relay (and relay@REV), then the relay's memory per connection and per pair
(bench/memory.py).
Progress goes to stderr, the Markdown table to stdout, raw numbers to
``bench/results/<timestamp>.json`` (and ``latest.json``), a chart to
``<timestamp>.png`` (and ``latest.png``).  See docs/performance.md.

    python bench/run.py [--quick] [--levels 10,50] [--duration S] [--warmup S]
                        [--upstream auto|nginx|builtin] [--no-chart] [--profile]
                        [--output DIR] [--workers-max 2] [--compare REV] [--repeat N]
                        [--light-rate 200] [--light-connections 20] [--no-light]
                        [--memory-connections N] [--memory-pairs N]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Mapping  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

from bench import chart, compare, lightload, machine, memory, procs, profiling, rate  # noqa: E402
from bench import report  # noqa: E402
from bench import wrk as wrkmod  # noqa: E402
from bench.upstream_builtin import response_body  # noqa: E402

#: (duration, warm-up, calibration) seconds for a full and a --quick run.
FULL = (15.0, 3.0, 5.0)
QUICK = (3.0, 1.0, 2.0)
DEFAULT_LEVELS = (10, 50, 100, 200)
#: --quick without --levels: two levels, so that the run with its extra columns
#: (bare chain, nginx sidecar, light load, memory) stays under about 2 minutes.
QUICK_LEVELS = (10, 50)
#: Light load: the paced rate and connections of issue 18.
LIGHT_RATE = 200.0
LIGHT_CONNECTIONS = 20
#: Memory: connections held open and pairs created (full run, --quick).
MEMORY_COUNTS = (200, 100)
#: One wrk thread: on 2 cores, every cycle wrk spends is taken from the
#: processes under test, and one wrk thread drives >50k req/s on loopback,
#: far above what the Python proxies reach.
WRK_THREADS = 1
BODY_BYTES = 1024
RESPONSE_BYTES = 1024
PROFILE_CONNECTIONS = 50
RESULTS_DIR = Path(__file__).resolve().parent / "results"


Progress = Callable[[str], None]


def make_progress() -> Progress:
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    return progress


def parse_levels(text: str) -> list[int]:
    levels = [int(part) for part in text.split(",") if part.strip()]
    if not levels or any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError("levels are positive integers, e.g. 10,50,100")
    return levels


def parse_rev(text: str) -> str:
    try:
        return compare.check_rev(text)
    except ValueError as why:
        raise argparse.ArgumentTypeError(str(why)) from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"short runs (default {QUICK[0]:g} s + {QUICK[1]:g} s warm-up); "
                             "under 2 minutes")
    parser.add_argument("--levels", type=parse_levels, default=None,
                        help="concurrency levels (wrk -c), comma-separated (default "
                             "10,50,100,200; --quick 10,50)")
    parser.add_argument("--duration", type=float, help="seconds per measured run "
                        f"(default {FULL[0]:g}; --quick {QUICK[0]:g}); wrk rounds up to whole s")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up before each run "
                        f"(default {FULL[1]:g}; --quick {QUICK[1]:g}; 0 = none)")
    parser.add_argument("--calibrate", type=float, help="seconds of the fixed-rate calibration "
                        f"run (default {FULL[2]:g}; --quick {QUICK[2]:g})")
    parser.add_argument("--upstream", choices=("auto", "nginx", "builtin"), default="auto",
                        help="auto (default): nginx when installed (installed with apt-get "
                             "when root), else the built-in asyncio server")
    parser.add_argument("--no-chart", action="store_true", help="do not write the PNG chart")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy relay A and B during one extra c=50 relay run")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR,
                        help="where results go (default bench/results/)")
    parser.add_argument("--workers-max", type=int, default=2,
                        help="also run the relay with WORKERS=N (default 2; 1 = skip)")
    parser.add_argument("--rate-connections", type=int, default=50,
                        help="connections for the fixed-rate test (default 50)")
    parser.add_argument("--rate-fraction", type=float, default=0.5,
                        help="fixed offered rate as a fraction of the baseline's best "
                             "throughput (default 0.5)")
    parser.add_argument("--no-fixed-rate", action="store_true", help="skip the fixed-rate test")
    parser.add_argument("--wrk-threads", type=int, default=WRK_THREADS,
                        help=f"wrk -t (default {WRK_THREADS})")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="measure every level N times, targets interleaved (their "
                             "order rotating each round); tables show each cell's median "
                             "round (default 1)")
    parser.add_argument("--keep-logs", action="store_true",
                        help="copy every process log to <output>/<timestamp>-logs/")
    parser.add_argument("--compare", metavar="REV", type=parse_rev,
                        help="also measure the relay of git revision REV (e.g. HEAD~3, a "
                             "commit): a temporary detached worktree on PYTHONPATH, target "
                             "relay@<short>, measured right after relay")
    parser.add_argument("--light-rate", type=float, default=LIGHT_RATE,
                        help=f"paced light-load rate, req/s (default {LIGHT_RATE:g})")
    parser.add_argument("--light-connections", type=int, default=LIGHT_CONNECTIONS,
                        help=f"connections of the paced light load (default "
                             f"{LIGHT_CONNECTIONS})")
    parser.add_argument("--no-light", action="store_true",
                        help="skip the light-load latency runs")
    parser.add_argument("--memory-connections", type=int, default=None, metavar="N",
                        help=f"connections held open for the relay's memory per connection "
                             f"(default {MEMORY_COUNTS[0]}; --quick {MEMORY_COUNTS[1]}; 0 = "
                             "skip)")
    parser.add_argument("--memory-pairs", type=int, default=None, metavar="N",
                        help=f"pairs created for the relay's memory per pair (default "
                             f"{MEMORY_COUNTS[0]}; --quick {MEMORY_COUNTS[1]}; 0 = skip)")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    if args.levels is None:
        args.levels = list(QUICK_LEVELS if args.quick else DEFAULT_LEVELS)
    count = MEMORY_COUNTS[1] if args.quick else MEMORY_COUNTS[0]
    args.memory_connections = count if args.memory_connections is None else \
        args.memory_connections
    args.memory_pairs = count if args.memory_pairs is None else args.memory_pairs
    if args.light_rate <= 0 or args.light_connections < 1:
        parser.error("--light-rate must be positive and --light-connections at least 1")
    if args.memory_connections < 0 or args.memory_pairs < 0:
        parser.error("--memory-connections and --memory-pairs must not be negative")
    args.duration = defaults[0] if args.duration is None else args.duration
    args.warmup = defaults[1] if args.warmup is None else args.warmup
    args.calibrate = defaults[2] if args.calibrate is None else args.calibrate
    if args.duration <= 0:
        parser.error("--duration must be positive")
    if not 1 <= args.repeat <= 20:
        parser.error("--repeat must be between 1 and 20")
    return args


@dataclass
class Target:
    """One thing wrk sends to: its URL, extra headers and the processes behind it."""

    name: str
    label: str
    port: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    procs: list[procs.Proc] = field(default_factory=list)
    available: bool = True
    note: str = ""
    #: More fields for its JSON entry (``--compare``: the revision, import evidence).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bench/echo?size=1k"

    def entry(self) -> dict[str, Any]:
        return report.target_entry(self.name, self.label, self.available, self.note,
                                   processes=[p.name for p in self.procs], **self.extra)

    def disable(self, note: str) -> None:
        self.available = False
        self.note = note


def request_body(size: int = BODY_BYTES) -> bytes:
    """The body post.lua sends: ``{"data":"xxx..."}`` of exactly ``size`` bytes."""
    return b'{"data":"' + b"x" * (size - 11) + b'"}'


def preflight(target: Target, expected: bytes) -> str | None:
    """One POST like wrk's; None when it is a 200 with the upstream's exact body."""
    assert target.port is not None
    headers = dict(target.headers, **{"content-type": "application/json"})
    try:
        answer = procs.http_request(target.port, "POST", "/bench/echo?size=1k", request_body(),
                                    headers, timeout=30)
    except OSError as error:
        return f"no answer: {error}"
    if answer.status != 200:
        return f"status {answer.status}: {answer.body[:300]!r}"
    if answer.body != expected:
        return f"body differs from the upstream's ({len(answer.body)} bytes)"
    return None


class Bench:
    """One benchmark run: owns the process stack and collects every result."""

    def __init__(self, args: argparse.Namespace, progress: Progress, wrk: str) -> None:
        self.args = args
        self.progress = progress
        self.wrk = wrk
        self.runs: list[dict[str, Any]] = []
        self.targets: list[Target] = []
        self.upstream_kind = "builtin"
        self.upstream_label = ""
        self.nginx: str | None = None
        self.fixed_rate: dict[str, Any] | None = None
        self.profile: dict[str, Any] | None = None
        self.light_load: dict[str, Any] | None = None
        self.memory: dict[str, Any] | None = None
        self.redis: procs.Proc | None = None
        self.relay_pair: procs.RelayPair | None = None
        self.logs: dict[str, Any] = {}
        self.stack: procs.ProcessStack | None = None
        #: ``--compare``: the worktree of the revision (added before start()).
        self.worktree: compare.Worktree | None = None
        self.compare_target: Target | None = None

    # ------------------------------------------------------------ set-up

    def choose_upstream(self) -> None:
        if self.args.upstream == "builtin":
            self.upstream_kind = "builtin"
            self.upstream_label = "built-in asyncio server (--upstream builtin)"
            return
        self.nginx = procs.find_nginx(self.progress, install=True)
        if self.nginx:
            self.upstream_kind = "nginx"
            version = machine._first_line([self.nginx, "-v"]) or "nginx"
            self.upstream_label = f"{version.split(': ')[-1]} (return 200, 1 worker)"
            return
        if self.args.upstream == "nginx":
            raise SystemExit("bench: nginx is not installed (`apt-get install nginx-light` as "
                             "root), or run with --upstream builtin")
        self.upstream_kind = "builtin"
        self.upstream_label = "built-in asyncio server (nginx not installed)"
        self.progress("nginx is not installed and cannot be installed (not root): using the "
                      "built-in asyncio upstream instead")

    def start(self, stack: procs.ProcessStack) -> None:
        self.stack = stack
        self.choose_upstream()
        self.progress(f"starting upstream: {self.upstream_label}")
        upstream = procs.start_upstream(stack, self.upstream_kind, self.nginx, RESPONSE_BYTES)
        redis = procs.start_redis(stack)
        redis_url = f"redis://127.0.0.1:{redis.port}"
        self.progress(f"upstream on :{upstream.port}, redis on :{redis.port}; "
                      "starting baseline proxies and relays")
        p1, p2 = procs.start_baseline(stack, upstream.url)
        b1, b2 = procs.start_bare_chain(stack, upstream.url)
        sidecar = Target("sidecar", "nginx sidecar")
        if self.nginx is None:
            self.nginx = procs.find_nginx(self.progress, install=False)
        if self.nginx is None:
            sidecar.disable("nginx is not installed (`apt-get install nginx-light`)")
        else:
            try:
                out, inner = procs.start_sidecar_pair(stack, self.nginx, upstream.port)
            except procs.StartupError as why:
                sidecar.disable(f"the nginx sidecar pair did not start: "
                                f"{str(why).splitlines()[0][:300]}")
            else:
                sidecar.port, sidecar.procs = out.port, [out, inner]
                sidecar.note = ("nginx → TLS 1.3 (certificate checked) → nginx, 1 worker "
                                "each, keep-alive upstream pools on both hops")
        self.redis = redis
        comparing = self.worktree is not None
        # With --compare both relay pairs start through relay_launcher.py (alike, and
        # each says which mterelay it runs).
        pair = procs.start_relay_pair(stack, upstream.url, redis_url, workers=1, label="relay",
                                      launcher=comparing)
        # Redis is part of the relay's cost (B's pair store), so it is counted with it.
        relay = Target("relay", "relay", pair.a.port, pair.headers, [pair.a, pair.b, redis])
        self.relay_pair = pair
        self.targets = [
            Target("direct", "direct", upstream.port, procs=[upstream]),
            sidecar,
            Target("bare", "bare chain", b1.port, procs=[b1, b2]),
            Target("baseline", "heavy chain", p1.port, procs=[p1, p2]),
            relay,
        ]
        if comparing:
            found = {p.name: compare.parse_launcher_line(p.log_text()) for p in (pair.a, pair.b)}
            relay.extra["imported"] = found
            relay.note = (f"this working tree ({procs.REPO_DIR}, uncommitted changes "
                          f"included); relay A reports {compare.evidence(found[pair.a.name])}")
            self.progress(f"relay: {relay.note}")
            strange = compare.import_problem(found[pair.a.name], procs.REPO_DIR)
            if strange:
                self.progress(f"warning: relay (this working tree): {strange}")
            self.compare_target = self.start_compare(stack, upstream.url, redis_url, redis)
            self.targets.append(self.compare_target)
        workers = self.args.workers_max
        multi = Target(f"relay-w{max(workers, 2)}", f"relay ({max(workers, 2)} workers)")
        self.targets.append(multi)
        if workers < 2:
            multi.disable(f"not run (--workers-max {workers})")
        else:
            self.progress(f"starting the relay pair with WORKERS={workers}")
            try:
                many = procs.start_relay_pair(stack, upstream.url, redis_url, workers=workers,
                                              label=multi.name)
            except procs.WorkersUnsupported as why:
                multi.disable(f"WORKERS unsupported by this relay: {why}")
            except procs.StartupError as why:
                last = [line for line in str(why).splitlines() if line.strip()][-1:]
                multi.disable(f"the relay failed to start with WORKERS={workers}: "
                              f"{' '.join(last)[:300]}")
                self.progress(f"relay with WORKERS={workers} failed to start:\n{why}")
            else:
                multi.port, multi.headers = many.a.port, many.headers
                multi.procs = [many.a, many.b, redis]
                multi.note = (f"A and B each {workers} processes "
                              f"({1 + len(many.a.descendants())} and "
                              f"{1 + len(many.b.descendants())} seen)")
        if not multi.available:
            self.progress(f"{multi.label}: n/a — {multi.note}")
        expected = response_body(RESPONSE_BYTES)
        for target in self.targets:
            if not target.available:
                continue
            problem = preflight(target, expected)
            if problem is None:
                self.progress(f"pre-flight {target.label}: 200 with the 1 KiB body")
                continue
            if target is multi or target is self.compare_target or target is sidecar:
                target.disable(f"pre-flight request failed: {problem}")
                self.progress(f"{target.label}: n/a — {target.note}")
                continue
            tails = "\n".join(f"--- {p.name} log:\n{p.log_tail()}" for p in target.procs)
            raise procs.StartupError(f"pre-flight request to {target.label} failed: "
                                     f"{problem}\n{tails}")

    def start_compare(self, stack: procs.ProcessStack, upstream_url: str, redis_url: str,
                      redis: procs.Proc) -> Target:
        """The relay pair of ``--compare REV``: PYTHONPATH=<worktree>, run from the worktree.

        n/a (with the reason) when it does not start with this venv, or when
        the processes did not import mterelay and its plugin from the worktree.
        """
        worktree = self.worktree
        assert worktree is not None and worktree.path is not None
        name, label = compare.target_name(worktree.short), compare.target_label(worktree.short)
        target = Target(name, label, extra={"revision": worktree.describe()})
        env = compare.pythonpath_env(worktree.path)
        self.progress(f"starting the relay pair of {worktree.rev} ({worktree.short}) with "
                      f"PYTHONPATH={env['PYTHONPATH']}")
        try:
            pair = procs.start_relay_pair(stack, upstream_url, redis_url, workers=1, label=name,
                                          extra_env=env, launcher=True, cwd=worktree.path)
        except procs.StartupError as why:
            target.disable(f"the relay of {worktree.rev} ({worktree.short}) did not start with "
                           f"this venv: {compare.error_summary(str(why))}")
            self.progress(f"{label}: n/a — failed to start:\n{why}")
            return target
        found = {p.name: compare.parse_launcher_line(p.log_text()) for p in (pair.a, pair.b)}
        target.extra["imported"] = found
        problem = next((f"{proc}: {why}" for proc, why in
                        ((proc, compare.import_problem(f, worktree.path))
                         for proc, f in found.items()) if why), None)
        if problem is not None:
            stack.stop(pair.a)
            stack.stop(pair.b)
            target.disable(f"not the code of {worktree.rev}: {problem}")
            self.progress(f"{label}: n/a — {target.note}")
            return target
        target.port, target.headers = pair.a.port, pair.headers
        target.procs = [pair.a, pair.b, redis]
        a_says, b_says = (compare.evidence(found[p.name]) for p in (pair.a, pair.b))
        target.note = (f"PYTHONPATH={env['PYTHONPATH']} (worktree of {worktree.rev} = "
                       f"{worktree.commit[:12]}); relay A (pid {pair.a.pid}) reports {a_says}; "
                       f"relay B (pid {pair.b.pid}) "
                       + ("the same" if b_says == a_says else f"reports {b_says}"))
        self.progress(f"{label}: {target.note}")
        return target

    # ------------------------------------------------------------ measuring

    def wrk_run(self, target: Target, connections: int, seconds: float,
                delay_ms: float = 0.0) -> tuple[wrkmod.WrkResult, dict[str, Any]]:
        """One wrk run against ``target``; returns its result and who used the CPU."""
        argv = wrkmod.wrk_command(self.wrk, target.url, connections, seconds,
                                  threads=self.args.wrk_threads, body_bytes=BODY_BYTES,
                                  headers=target.headers, delay_ms=delay_ms)
        groups = {p.name: [p.pid, *p.descendants()] for p in self.stack.procs} \
            if self.stack else {}
        before = machine.cpu_snapshot(groups)
        result, _ = wrkmod.run_wrk(argv, wrkmod.whole_seconds(seconds))
        cpu = machine.cpu_usage(before, machine.cpu_snapshot(groups))
        return result, cpu

    def check_alive(self, target: Target, where: str) -> bool:
        dead = [p for p in target.procs if not p.alive()]
        if not dead:
            return True
        names = ", ".join(f"{p.name} (status {p.popen.returncode})" for p in dead)
        target.disable(f"crashed during {where}: {names}")
        for proc in dead:
            self.progress(f"{proc.name} exited during {where}; end of its log:\n{proc.log_tail()}")
        return False

    def sweep(self) -> None:
        """Every level, every target; levels outermost so drifts hit all targets alike."""
        args = self.args
        for level in args.levels:
            for round_index in range(args.repeat):
                # Rotate the order each round so no target always runs first or last.
                shift = round_index % len(self.targets)
                for target in self.targets[shift:] + self.targets[:shift]:
                    if not target.available:
                        continue
                    if args.warmup > 0:
                        self.wrk_run(target, level, args.warmup)
                    result, cpu = self.wrk_run(target, level, args.duration)
                    if not self.check_alive(target, f"the c={level} run"):
                        continue
                    entry = report.run_entry(target.name, level, result.to_json(), cpu)
                    entry["round"] = round_index + 1
                    self.runs.append(entry)
                    which = f" round {round_index + 1}/{args.repeat}" if args.repeat > 1 else ""
                    self.progress(f"sweep c={level:<4d} {target.label:<18s} {describe(result)}"
                                  f"  | {describe_cpu(cpu, target)}{which}")

    def fixed_rate_test(self) -> None:
        """Baseline, relay (and relay@REV) at one offered rate (think time calibrated per
        target)."""
        args = self.args
        baseline = [run for run in (report.median_run(self.runs, "baseline", level)
                                    for level in args.levels) if run is not None]
        if not baseline:
            self.fixed_rate = {"skipped": "no baseline results"}
            return
        best = max(baseline, key=lambda r: r["ok_rps"])
        if best["ok_rps"] <= 0:
            self.fixed_rate = {"skipped": "the baseline answered nothing"}
            return
        target_rps = rate.target_rate(best["ok_rps"], args.rate_fraction)
        connections = args.rate_connections
        section: dict[str, Any] = {
            "connections": connections, "fraction": args.rate_fraction,
            "baseline_max_rps": best["ok_rps"], "baseline_max_at": best["connections"],
            "target_rps": target_rps, "duration_s": float(wrkmod.whole_seconds(args.duration)),
            "calibrate_s": float(wrkmod.whole_seconds(args.calibrate)), "goal_ms": 2.0,
            "tolerance": rate.TOLERANCE, "targets": {},
        }
        self.progress(f"fixed rate: {target_rps:,.0f} req/s offered = {args.rate_fraction:g} × "
                      f"baseline max {best['ok_rps']:,.0f} req/s, {connections} connections")
        by_name = {t.name: t for t in self.targets}
        names = ["baseline", "relay"]
        if self.compare_target is not None:
            names.append(self.compare_target.name)
            section["compare_target"] = self.compare_target.name
        delays: dict[str, float] = {}
        calibrations: dict[str, list[dict[str, Any]]] = {}
        for name in names:
            target = by_name[name]
            if not target.available:
                section["targets"][name] = {"note": f"{NA_REASON}{target.note}"}
                continue
            first = min((r for r in self.runs if r["target"] == name),
                        key=lambda r: r["connections"], default=None)
            latency_ms = (first["latency_us"].get("p50", 0) / 1000) if first else 0.0
            delay = rate.initial_delay_ms(target_rps, connections, latency_ms)
            calibration = []
            trial, trial_cpu = self.wrk_run(target, connections, args.calibrate, delay)
            achieved = rate.steady_rate(trial.requests - trial.non2xx, trial.duration_s,
                                        connections)
            calibration.append({"delay_ms": delay, "steady_rps": achieved,
                                "result": trial.to_json(), "cpu": trial_cpu})
            self.progress(f"fixed rate {name}: calibration with {delay:.1f} ms mean think time "
                          f"→ {achieved:,.0f} req/s (steady state)")
            if rate.needs_adjustment(target_rps, achieved):
                delay = rate.adjusted_delay_ms(target_rps, connections, delay, achieved)
                self.progress(f"fixed rate {name}: off by "
                              f"{100 * rate.rate_error(target_rps, achieved):.0f} %, "
                              f"think time adjusted to {delay:.1f} ms")
            delays[name], calibrations[name] = delay, calibration
        measured: dict[str, list[tuple[wrkmod.WrkResult, dict[str, Any]]]] = {
            name: [] for name in delays}
        for round_index in range(args.repeat):
            order = list(delays)
            shift = round_index % max(1, len(order))
            for name in order[shift:] + order[:shift]:
                target = by_name[name]
                if not target.available:
                    continue
                result, cpu = self.wrk_run(target, connections, args.duration, delays[name])
                if not self.check_alive(target, "the fixed-rate run"):
                    section["targets"][name] = {"note": target.note}
                    continue
                measured[name].append((result, cpu))
                which = f" round {round_index + 1}/{args.repeat}" if args.repeat > 1 else ""
                self.progress(f"fixed rate {name:<8s} {describe(result)}"
                              f"  | {describe_cpu(cpu, target)}{which}")
        for name, rounds in measured.items():
            if not rounds or not by_name[name].available:
                continue
            # The round with the median p50 stands for the target.
            ranked = sorted(rounds, key=lambda pair: pair[0].to_json()["latency_us"].get(
                "p50", 0))
            result, cpu = ranked[(len(ranked) - 1) // 2]
            steady = rate.steady_rate(result.requests - result.non2xx, result.duration_s,
                                      connections)
            missed = rate.needs_adjustment(target_rps, steady)
            section["targets"][name] = {
                "delay_ms": delays[name], "calibration": calibrations[name],
                "result": result.to_json(), "cpu": cpu, "steady_rps": steady,
                "rate_error": rate.rate_error(target_rps, steady), "rate_missed": missed,
                "rounds_p50_ms": [pair[0].to_json()["latency_us"].get("p50", 0) / 1000
                                  for pair in rounds],
            }
            if missed:
                self.progress(f"fixed rate {name}: offered rate not reached")
        relay = section["targets"].get("relay", {}).get("result")
        base = section["targets"].get("baseline", {}).get("result")
        for p in ("p50", "p90", "p99"):
            section[f"relay_added_{p}_ms"] = report.added_ms(relay, base, p)
        if self.compare_target is not None:
            other = section["targets"].get(self.compare_target.name, {}).get("result")
            for p in ("p50", "p90", "p99"):
                section[f"compare_added_{p}_ms"] = report.added_ms(other, base, p)
        self.fixed_rate = section

    def measured(self, target: Target, run: Callable[[], lightload.LoadResult]
                 ) -> dict[str, Any]:
        """One light-load run with the CPU its target's processes used per answer."""
        groups = {p.name: [p.pid, *p.descendants()] for p in target.procs}
        before = machine.cpu_snapshot(groups)
        result = run().to_json()
        cpu = machine.cpu_usage(before, machine.cpu_snapshot(groups))
        result["cpu"] = cpu
        result["cpu_ms_per_answer"] = report.light_cpu_ms(result)
        return result

    def light_load_test(self) -> None:
        """One request at a time, then paced, against direct, bare, relay (and relay@REV):
        rounds interleaved (order rotating), the median round (by p50) per target."""
        args = self.args
        by_name = {t.name: t for t in self.targets}
        names = [n for n in ("direct", "bare", "relay") if n in by_name]
        if self.compare_target is not None:
            names.append(self.compare_target.name)
        seconds = float(wrkmod.whole_seconds(args.duration))
        section: dict[str, Any] = {
            "rate_rps": args.light_rate, "connections": args.light_connections,
            "duration_s": seconds, "reference": "direct", "goal_sequential_ms": 2.0,
            "goal_paced_ms": 3.0, "targets": {}}
        rounds: dict[str, dict[str, list[dict[str, Any]]]] = {
            name: {"sequential": [], "paced": []} for name in names}
        self.progress(f"light load: one request at a time and paced {args.light_rate:g} req/s "
                      f"over {args.light_connections} connections, {seconds:g} s each")
        for round_index in range(args.repeat):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                target = by_name[name]
                if not target.available:
                    continue
                assert target.port is not None
                request = lightload.build_request("/bench/echo?size=1k", request_body(),
                                                  target.headers)
                port = target.port
                one = self.measured(target, lambda: lightload.run_sequential(
                    port, request, seconds))
                paced = self.measured(target, lambda: lightload.run_paced(
                    port, request, args.light_rate, args.light_connections, seconds))
                if not self.check_alive(target, "the light-load runs"):
                    continue
                rounds[name]["sequential"].append(one)
                rounds[name]["paced"].append(paced)
                which = f" round {round_index + 1}/{args.repeat}" if args.repeat > 1 else ""
                self.progress(f"light {target.label:<18s} {describe_light(one)}  | paced "
                              f"{describe_light(paced)}{which}")
        for name in names:
            target = by_name[name]
            if not target.available:
                section["targets"][name] = {"note": f"{NA_REASON}{target.note}"}
                continue
            entry: dict[str, Any] = {}
            for kind, found in rounds[name].items():
                if not found:
                    continue
                ranked = sorted(found, key=lambda r: r["latency_ms"]["p50"] or 0.0)
                entry[kind] = dict(ranked[(len(ranked) - 1) // 2],
                                   rounds_p50_ms=[r["latency_ms"]["p50"] for r in found])
            section["targets"][name] = entry
        section["added"] = report.light_added(section)
        self.light_load = section

    def memory_test(self) -> None:
        """The relay's RSS per connection and per pair (bench/memory.py)."""
        args = self.args
        relay = next(t for t in self.targets if t.name == "relay")
        if not relay.available or self.relay_pair is None:
            self.memory = {"skipped": f"the relay is not available ({relay.note})"}
            return
        pair = self.relay_pair
        a_pids = [pair.a.pid, *pair.a.descendants()]
        b_pids = [pair.b.pid, *pair.b.descendants()]
        section: dict[str, Any] = {"target": "relay", "note": (
            "VmRSS deltas (pages; the allocator keeps freed memory): an order of magnitude")}
        if args.memory_connections:
            assert relay.port is not None
            request = lightload.build_request("/bench/echo?size=1k", request_body(),
                                              relay.headers)
            section["connections"] = memory.connections_figures(
                a_pids, b_pids, relay.port, request, args.memory_connections)
            self.progress(f"memory: {describe_memory_connections(section['connections'])}")
        if args.memory_pairs:
            assert pair.b.port is not None
            section["pairs"] = memory.pairs_figures(
                b_pids, pair.b.port, self.redis.port if self.redis else None, args.memory_pairs)
            self.progress(f"memory: {describe_memory_pairs(section['pairs'])}")
        self.memory = section

    def profile_relay(self, output: Path, timestamp: str, directory: Path) -> None:
        """py-spy on relay A and B during extra c=50 relay runs (one per format)."""
        relay = next(t for t in self.targets if t.name == "relay")
        py_spy = procs.find_py_spy()
        problem = (None if py_spy else "py-spy is not installed (`make bench` installs the "
                   "bench extras)") or procs.ptrace_problem()
        if problem is None and not relay.available:
            problem = f"the relay is not available ({relay.note})"
        if problem:
            self.profile = {"skipped": problem}
            self.progress(f"profile skipped: {problem}")
            return
        assert py_spy is not None
        files: list[str] = []
        errors: list[str] = []
        runs: dict[str, Any] = {}
        for fmt, suffix in profiling.FORMATS.items():
            relays = [proc for proc in relay.procs if proc.name.startswith("relay")]
            recorders = [
                profiling.start_recorder(py_spy, proc.name, proc.pid, fmt,
                                         output / f"{timestamp}-profile-{proc.name}{suffix}",
                                         directory)
                for proc in relays
            ]
            time.sleep(1.0)  # let py-spy attach before the load starts
            self.progress(f"profile: py-spy ({fmt}, {profiling.RATE} Hz) on "
                          f"{', '.join(p.name for p in relays)}, relay c="
                          f"{PROFILE_CONNECTIONS} for {self.args.duration:g} s")
            result, _ = self.wrk_run(relay, PROFILE_CONNECTIONS, self.args.duration)
            runs[fmt] = result.to_json()
            for recorder in recorders:
                problem = recorder.finish()
                if problem:
                    errors.append(problem)
                else:
                    files.append(str(recorder.output))
        self.profile = {"files": files, "errors": errors, "rate_hz": profiling.RATE,
                        "connections": PROFILE_CONNECTIONS, "runs": runs,
                        "note": "runs under py-spy are slowed by sampling; not in the table"}
        for line in files:
            self.progress(f"profile written: {line}")
        for line in errors:
            self.progress(f"profile problem: {line}")

    def collect_logs(self, stack: procs.ProcessStack, keep: Path | None) -> None:
        for proc in stack.procs:
            self.logs[proc.name] = report.log_findings(proc.log_text())
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(proc.log_path, keep / proc.log_path.name)
        for name, found in self.logs.items():
            if name == "redis":
                continue  # its start-up warnings (overcommit) are about the host, not the run
            if found["count"]:
                self.progress(f"log of {name}: {found['count']} warning/error line(s), e.g. "
                              f"{found['lines'][0][:300]}")
            if found["cancelled"]:
                self.progress(f"log of {name}: {found['cancelled']} line(s) about requests "
                              "cancelled when wrk closed its connections at the end of a run")


NA_REASON = "not available: "


def describe(result: wrkmod.WrkResult) -> str:
    """A one-line summary of a wrk run for the progress output."""
    def p(name: str) -> str:
        value = result.p(name)
        return "n/a" if value is None else f"{value / 1000:.2f}"
    errors = (f"errors {result.non2xx} non-2xx + {result.socket_errors} socket"
              if result.errors else "errors 0")
    return (f"{result.ok_rps:9,.0f} req/s  p50 {p('p50')} ms  p90 {p('p90')} ms  "
            f"p99 {p('p99')} ms  {errors}")


def describe_light(result: Mapping[str, Any]) -> str:
    """A one-line summary of a light-load run for the progress output."""
    latency = result["latency_ms"]

    def p(name: str) -> str:
        value = latency.get(name)
        return "n/a" if value is None else f"{value:.2f}"
    return (f"{result['achieved_rps']:7,.0f} req/s p50 {p('p50')} ms p99 {p('p99')} ms "
            f"errors {result['errors']}")


def describe_memory_connections(found: Mapping[str, Any]) -> str:
    return (f"{found['answers']} connections held open: relay A "
            f"{found['a_rss_kib'][0]:,} → {found['a_rss_kib'][1]:,} KiB, relay B "
            f"{found['b_rss_kib'][0]:,} → {found['b_rss_kib'][1]:,} KiB, errors "
            f"{found['errors']}")


def describe_memory_pairs(found: Mapping[str, Any]) -> str:
    used = found["redis_used_memory_bytes"]
    redis = ("" if used[0] is None else
             f", redis used_memory {used[0]:,} → {used[1]:,} B")
    problems = f"; problems: {found['problems'][0]}" if found["problems"] else ""
    return (f"{found['created']} of {found['pairs']} pairs created: relay B "
            f"{found['b_rss_kib'][0]:,} → {found['b_rss_kib'][1]:,} KiB{redis}{problems}")


def describe_cpu(cpu: dict[str, Any], target: Target) -> str:
    """Cores used during a run by the target's processes, wrk and everything else."""
    mine = ", ".join(f"{p.name} {cpu['processes_cores'].get(p.name, 0):.2f}"
                     for p in target.procs)
    return (f"cores: {mine}, wrk {cpu['wrk_cores']:.2f}, other {cpu['other_cores']:.2f}")


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    progress = make_progress()
    # Ctrl-C, kill and a closed terminal all end in the same clean teardown; SIGINT
    # is set explicitly because a shell starting us in the background ignores it.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    wrk = procs.ensure_wrk(progress)
    output: Path = args.output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now()
    timestamp = now.strftime("%Y%m%d-%H%M%S")
    started = now.astimezone().isoformat(timespec="seconds")
    bench = Bench(args, progress, wrk)
    mode = "quick" if args.quick else "full"
    load_at_start = os.getloadavg()
    busy = load_at_start[0]
    if busy >= 0.5:
        progress(f"note: the machine is already busy (1-minute load average {busy:.2f}); "
                 "other processes compete with the benchmark for the cores (see 'other' below)")
    progress(f"mterelay bench ({mode}): levels {','.join(map(str, args.levels))}, "
             f"{wrkmod.whole_seconds(args.duration)} s runs, {args.warmup:g} s warm-up, "
             f"wrk -t{args.wrk_threads}")
    worktree = compare.Worktree(procs.REPO_DIR, args.compare) if args.compare else None
    stack = procs.ProcessStack()
    try:
        with contextlib.ExitStack() as cleanup:
            # Closed in reverse: every process (some run the worktree's code) first,
            # then the worktree; also after an error or Ctrl-C.
            if worktree is not None:
                cleanup.callback(close_worktree, worktree, progress)
            cleanup.enter_context(stack)
            if worktree is not None:
                progress(f"compare: git worktree add --detach {args.compare} (temporary)")
                worktree.add()
                progress(f"compare: {args.compare} is {worktree.commit[:12]} "
                         f"\"{worktree.subject}\", checked out at {worktree.path}")
                bench.worktree = worktree
            bench.start(stack)
            # Memory first: on fresh relays, before the sweep's peaks leave freed memory
            # in their allocators that new connections would reuse unseen.
            if args.memory_connections or args.memory_pairs:
                bench.memory_test()
            progress("sweep: " + ", ".join(t.label for t in bench.targets if t.available))
            bench.sweep()
            if not args.no_fixed_rate:
                bench.fixed_rate_test()
            if not args.no_light:
                bench.light_load_test()
            if args.profile:
                bench.profile_relay(output, timestamp, stack.directory)
            bench.collect_logs(stack, output / f"{timestamp}-logs" if args.keep_logs else None)
            progress("stopping every process")
    except KeyboardInterrupt:
        print("bench: interrupted; every process was stopped", file=sys.stderr)
        return 130
    except (procs.StartupError, wrkmod.WrkError) as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    except compare.WorktreeError as error:
        print(f"bench: --compare: {error}", file=sys.stderr)
        return 2
    finished = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    info = machine.machine_info(wrk, bench.nginx, _redis_binary())
    info["load_average_at_start"] = load_at_start
    info["load_average_at_end"] = os.getloadavg()
    settings = {
        "mode": mode, "levels": args.levels, "duration_s": float(wrkmod.whole_seconds(
            args.duration)),
        "warmup_s": float(wrkmod.whole_seconds(args.warmup)) if args.warmup > 0 else 0.0,
        "calibrate_s": float(wrkmod.whole_seconds(args.calibrate)),
        "wrk_threads": args.wrk_threads, "wrk_timeout_s": wrkmod.DEFAULT_TIMEOUT_S,
        "request_body_bytes": BODY_BYTES, "response_body_bytes": RESPONSE_BYTES,
        "method": "POST", "upstream": bench.upstream_kind, "upstream_label": bench.upstream_label,
        "workers_max": args.workers_max, "repeat": args.repeat,
        "light_rate_rps": args.light_rate, "light_connections": args.light_connections,
        "memory_connections": args.memory_connections, "memory_pairs": args.memory_pairs,
        "order": ("levels outermost, targets in table order" if args.repeat == 1 else
                  f"levels outermost, {args.repeat} rounds per level, the target order "
                  "rotating each round; tables show each cell's median round"),
    }
    compared: dict[str, Any] | None = None
    if worktree is not None:
        settings["compare"] = args.compare
        target = bench.compare_target
        compared = dict(worktree.describe(),
                        target=target.name if target else compare.target_name(worktree.short),
                        label=target.label if target else compare.target_label(worktree.short),
                        available=bool(target and target.available),
                        note=target.note if target else "",
                        mechanism="PYTHONPATH=<worktree> and cwd=<worktree> for relay A and B; "
                                  "started with bench/relay_launcher.py (as relay)")
    doc = report.build_document(
        timestamp=timestamp, started=started, finished=finished, command=sys.argv,
        machine=info, settings=settings, targets=[t.entry() for t in bench.targets],
        runs=bench.runs, fixed_rate=bench.fixed_rate, profile=bench.profile, logs=bench.logs,
        light_load=bench.light_load, memory=bench.memory,
        teardown={"killed_after_sigterm_timeout": stack.slow_to_stop}, compare=compared)
    json_path = output / f"{timestamp}.json"
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    shutil.copyfile(json_path, output / "latest.json")
    progress(f"results: {json_path} (and latest.json)")
    if not args.no_chart:
        png = output / f"{timestamp}.png"
        problem = chart.write_chart(doc, png)
        if problem:
            progress(problem)
        else:
            shutil.copyfile(png, output / "latest.png")
            progress(f"chart: {png} (and latest.png)")
    sys.stdout.write(report.format_report(doc))
    sys.stdout.flush()
    return 0


def close_worktree(worktree: compare.Worktree, progress: Progress) -> None:
    problems = worktree.close()
    for problem in problems:
        progress(f"compare: {problem}")
    if worktree.added and not problems:
        progress(f"compare: worktree {worktree.path} removed (git worktree remove --force, "
                 "prune)")


def _redis_binary() -> str | None:
    try:
        return procs.find_redis_server()
    except SystemExit:
        return None


if __name__ == "__main__":
    sys.exit(main())
