"""The benchmark harness (bench/): its pure parts, and one real run of it.

The unit tests cover what turns wrk's output into numbers and numbers into
the table: parsing (on output captured from real wrk runs), the fixed-rate
arithmetic, the table and the JSON document.  The smoke test runs
``bench/run.py`` for real with tiny durations; it checks the shape of what
it prints and writes, never how fast anything was.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench import compare, machine, procs, rate, report
from bench import run as runmod
from bench import wrk as wrkmod
from bench.upstream_builtin import UpstreamProtocol, build_answer, response_body
from tests.helpers.transports import FakeTransport

REPO = Path(__file__).resolve().parents[2]

# Captured from wrk 4.1.0 (Debian) with bench/post.lua, against relay A -> relay B ->
# the built-in upstream on this project's 2-core machine.
SAMPLE_OK = """\
Running 2s test @ http://127.0.0.1:40459/bench/echo?size=1k
  1 threads and 10 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    24.53ms   11.56ms  99.60ms   88.58%
    Req/Sec   423.90     94.47   610.00     90.00%
  Latency Distribution
     50%   23.29ms
     75%   25.74ms
     90%   29.75ms
     99%   98.65ms
  846 requests in 2.01s, 0.93MB read
Requests/sec:    421.64
Transfer/sec:    476.81KB
WRKJSON {"requests":846,"duration_us":2006463,"bytes":979668,"errors":{"connect":0,"read":0,\
"write":0,"status":0,"timeout":0},"latency_us":{"min":6308,"mean":24528.0,"stdev":11564.7,\
"max":99604,"p50":23286,"p75":25742,"p90":29747,"p99":98651,"p99.9":99604}}
"""

# Relay A without x-mte-outbound-token: every answer is the relay's own 569.
SAMPLE_NON2XX = """\
Running 1s test @ http://127.0.0.1:40459/bench/echo?size=1k
  1 threads and 10 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.62ms  561.76us   5.25ms   77.20%
    Req/Sec     3.81k   110.76     3.99k    70.00%
  Latency Distribution
     50%    2.55ms
     75%    2.74ms
     90%    3.46ms
     99%    4.32ms
  3798 requests in 1.00s, 1.03MB read
  Non-2xx or 3xx responses: 3798
Requests/sec:   3791.09
Transfer/sec:      1.03MB
WRKJSON {"requests":3798,"duration_us":1001824,"bytes":1082430,"errors":{"connect":0,"read":0,\
"write":0,"status":3798,"timeout":0},"latency_us":{"min":495,"mean":2615.7,"stdev":561.8,\
"max":5250,"p50":2550,"p75":2739,"p90":3456,"p99":4315,"p99.9":5233}}
"""

# A peer that accepted and closed every connection: no answers, only socket errors.
SAMPLE_SOCKET_ERRORS = """\
Running 2s test @ http://127.0.0.1:18082/
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.00us    0.00us   0.00us    -nan%
    Req/Sec     0.00      0.00     0.00      -nan%
  0 requests in 2.10s, 0.00B read
  Socket errors: connect 0, read 1, write 113387, timeout 0
Requests/sec:      0.00
Transfer/sec:       0.00B
WRKJSON {"requests":0,"duration_us":2099787,"bytes":0,"errors":{"connect":0,"read":1,\
"write":113387,"status":0,"timeout":0},"latency_us":{"min":-9223372036854775808,"mean":0.0,\
"stdev":0.0,"max":0,"p50":0,"p75":0,"p90":0,"p99":0,"p99.9":0}}
"""


def text_only(sample: str) -> str:
    """The human report without post.lua's JSON line (an older script, or plain wrk)."""
    return "\n".join(line for line in sample.splitlines() if not line.startswith("WRKJSON"))


class WrkParsingTests(SynchronousTestCase):
    def test_json_line(self) -> None:
        result = wrkmod.parse_output(SAMPLE_OK)
        self.assertEqual(result.requests, 846)
        self.assertAlmostEqual(result.duration_s, 2.006463)
        self.assertEqual(result.latency_us["p50"], 23286)
        self.assertEqual(result.latency_us["p99"], 98651)
        self.assertEqual(result.errors, 0)
        self.assertAlmostEqual(result.rps, 846 / 2.006463)
        self.assertEqual(result.ok_rps, result.rps)

    def test_non2xx_is_not_throughput(self) -> None:
        result = wrkmod.parse_output(SAMPLE_NON2XX)
        self.assertEqual(result.non2xx, 3798)
        self.assertEqual(result.errors, 3798)
        self.assertGreater(result.rps, 3000)
        self.assertEqual(result.ok_rps, 0)

    def test_socket_errors_and_empty_histogram(self) -> None:
        result = wrkmod.parse_output(SAMPLE_SOCKET_ERRORS)
        self.assertEqual((result.requests, result.read_errors, result.write_errors),
                         (0, 1, 113387))
        self.assertEqual(result.socket_errors, 113388)
        self.assertEqual(result.latency_us, {})  # not INT64_MIN made into a "latency"
        self.assertIsNone(result.p("p50"))

    def test_text_fallback_matches_json(self) -> None:
        for sample in (SAMPLE_OK, SAMPLE_NON2XX, SAMPLE_SOCKET_ERRORS):
            exact, text = wrkmod.parse_output(sample), wrkmod.parse_output(text_only(sample))
            self.assertEqual(text.requests, exact.requests)
            self.assertEqual(text.non2xx, exact.non2xx)
            self.assertEqual(text.socket_errors, exact.socket_errors)
            self.assertLessEqual(abs(text.duration_s - exact.duration_s), 0.01)
            for name, value in exact.latency_us.items():
                if name in text.latency_us:  # text has p50/p75/p90/p99, rounded
                    self.assertLessEqual(abs(text.latency_us[name] - value), value * 0.01)
        text = wrkmod.parse_text(text_only(SAMPLE_OK))
        self.assertEqual(text.latency_us["p50"], 23290.0)
        self.assertEqual(text.latency_us["mean"], 24530.0)

    def test_garbage_is_an_error(self) -> None:
        self.assertRaises(wrkmod.WrkError, wrkmod.parse_output, "unable to connect\n")

    def test_durations(self) -> None:
        self.assertEqual(wrkmod.duration_to_us("850.00us"), 850.0)
        self.assertEqual(wrkmod.duration_to_us("1.50ms"), 1500.0)
        self.assertEqual(wrkmod.duration_to_us("2.00s"), 2e6)
        self.assertRaises(ValueError, wrkmod.duration_to_us, "fast")

    def test_command(self) -> None:
        argv = wrkmod.wrk_command("wrk", "http://127.0.0.1:1/x", 50, 0.5, threads=2,
                                  headers={"x-mte-upstream": "http://127.0.0.1:2"},
                                  delay_ms=12.5)
        self.assertEqual(argv[:4], ["wrk", "-t2", "-c50", "-d1s"])  # wrk: whole seconds
        self.assertIn("--latency", argv)
        self.assertEqual(argv[argv.index("-s") + 1], str(wrkmod.LUA_SCRIPT))
        tail = argv[argv.index("--") + 1:]
        self.assertEqual(tail, ["body=1024", "header=x-mte-upstream: http://127.0.0.1:2",
                                "delay=12.500"])
        # never more threads than connections; no delay argument without think time
        argv = wrkmod.wrk_command("wrk", "http://h/", 1, 3, threads=4)
        self.assertIn("-t1", argv)
        self.assertFalse(any(a.startswith("delay=") for a in argv))

    def test_whole_seconds(self) -> None:
        self.assertEqual([wrkmod.whole_seconds(s) for s in (0.2, 1, 1.0, 1.2, 15)],
                         [1, 1, 1, 2, 15])

    def test_to_json(self) -> None:
        data = wrkmod.parse_output(SAMPLE_NON2XX).to_json()
        self.assertEqual(data["ok_rps"], 0)
        self.assertEqual(data["errors"], 3798)
        json.dumps(data)


class RateTests(SynchronousTestCase):
    def test_target_rate(self) -> None:
        self.assertEqual(rate.target_rate(800.0), 400.0)
        self.assertEqual(rate.target_rate(800.0, 0.25), 200.0)
        self.assertRaises(ValueError, rate.target_rate, 0.0)

    def test_initial_delay(self) -> None:
        # 50 connections at 400 req/s: a 125 ms cycle, of which 5 ms is the answer.
        self.assertAlmostEqual(rate.initial_delay_ms(400.0, 50, 5.0), 120.0)
        # a target slower than the cycle gets no think time at all
        self.assertEqual(rate.initial_delay_ms(400.0, 50, 500.0), 0.0)

    def test_adjusted_delay(self) -> None:
        # 120 ms think gave 350 req/s: the cycle was 142.9 ms, so 22.9 ms is not think
        # time; 125 - 22.9 = 102.1 ms gives 400 req/s.
        adjusted = rate.adjusted_delay_ms(400.0, 50, 120.0, 350.0)
        self.assertAlmostEqual(adjusted, 125.0 - (50_000 / 350 - 120.0))
        self.assertAlmostEqual(50_000 / (adjusted + (50_000 / 350 - 120.0)), 400.0)
        # too fast: more think time
        self.assertGreater(rate.adjusted_delay_ms(400.0, 50, 120.0, 450.0), 120.0)
        # nothing achieved: keep the delay rather than divide by zero
        self.assertEqual(rate.adjusted_delay_ms(400.0, 50, 120.0, 0.0), 120.0)
        # a target that cannot keep up bottoms out at zero
        self.assertEqual(rate.adjusted_delay_ms(400.0, 50, 1.0, 100.0), 0.0)

    def test_tolerance(self) -> None:
        self.assertFalse(rate.needs_adjustment(400.0, 365.0))
        self.assertTrue(rate.needs_adjustment(400.0, 355.0))
        self.assertTrue(rate.needs_adjustment(400.0, 445.0))
        self.assertAlmostEqual(rate.rate_error(400.0, 300.0), 0.25)

    def test_steady_rate(self) -> None:
        # 50 connections, 2 s, a 250 ms cycle: 8 cycles each, 7.5 completed on average
        self.assertAlmostEqual(rate.steady_rate(375, 2.0, 50), 200.0)
        self.assertEqual(rate.steady_rate(0, 2.0, 50), 0.0)
        self.assertEqual(rate.steady_rate(10, 0.0, 50), 0.0)


def run_json(target: str, c: int, rps: float, p50_ms: float, non2xx: int = 0,
             socket: int = 0, other: float = 0.0) -> dict[str, Any]:
    duration = 10.0
    requests = int(rps * duration)
    return report.run_entry(target, c, {
        "requests": requests, "duration_s": duration, "bytes_read": requests * 1100,
        "non2xx": non2xx, "connect_errors": 0, "read_errors": socket, "write_errors": 0,
        "timeouts": 0, "latency_us": {"p50": p50_ms * 1000, "p90": p50_ms * 2000,
                                      "p99": p50_ms * 4000},
        "rps": rps, "ok_rps": (requests - non2xx) / duration, "socket_errors": socket,
        "errors": non2xx + socket,
    }, {"other_cores": other})


COMMIT = "4ac84e9" + "0" * 33


def sample_document(multi_available: bool = False,
                    compared: bool | None = None) -> dict[str, Any]:
    """A hand-made results document; ``compared``: with a ``--compare`` target
    (True: measured, False: n/a)."""
    targets = [
        report.target_entry("direct", "direct", True),
        report.target_entry("baseline", "baseline", True),
        report.target_entry("relay", "relay", True),
        report.target_entry("relay-w2", "relay (2 workers)", multi_available,
                            "" if multi_available else "WORKERS unsupported by this relay"),
    ]
    if compared is not None:
        targets.insert(3, report.target_entry(
            "relay@4ac84e9", "relay @ 4ac84e9", compared,
            "" if compared else "the relay of HEAD~3 (4ac84e9) did not start with this venv: "
            "ModuleNotFoundError: No module named 'newdep'"))
    runs = []
    for c, direct, base, relay in ((10, 40000.0, 1000.0, 500.0), (50, 50000.0, 800.0, 600.0)):
        runs.append(run_json("direct", c, direct, 0.2))
        runs.append(run_json("baseline", c, base, 10.0))
        runs.append(run_json("relay", c, relay, 20.0, non2xx=30 if c == 50 else 0,
                             socket=2 if c == 50 else 0, other=0.4 if c == 50 else 0.0))
        if compared:
            runs.append(run_json("relay@4ac84e9", c, relay * 0.8, 25.0,
                                 non2xx=10 if c == 10 else 0))
        if multi_available:
            runs.append(run_json("relay-w2", c, relay * 1.5, 15.0))
    fixed = {
        "connections": 50, "fraction": 0.5, "baseline_max_rps": 1000.0,
        "baseline_max_at": 10, "target_rps": 500.0, "duration_s": 15.0, "goal_ms": 2.0,
        "targets": {
            "baseline": {"delay_ms": 90.0, "steady_rps": 498.0, "rate_missed": False,
                         "result": run_json("baseline", 50, 497.0, 3.0)},
            "relay": {"delay_ms": 80.0, "steady_rps": 420.0, "rate_missed": True,
                      "result": run_json("relay", 50, 419.0, 4.5)},
        },
        "relay_added_p50_ms": 1.5, "relay_added_p90_ms": 3.0, "relay_added_p99_ms": 6.0,
    }
    comparison = None
    if compared is not None:
        fixed["compare_target"] = "relay@4ac84e9"
        fixed["targets"]["relay@4ac84e9"] = (
            {"delay_ms": 70.0, "steady_rps": 495.0, "rate_missed": False,
             "result": run_json("relay@4ac84e9", 50, 494.0, 5.5)} if compared else
            {"note": "not available: did not start"})
        for p, value in (("p50", 2.5), ("p90", 5.0), ("p99", 10.0)):
            fixed[f"compare_added_{p}_ms"] = value if compared else None
        comparison = {"rev": "HEAD~3", "commit": COMMIT, "short": "4ac84e9",
                      "subject": "Hot path: TCP_NODELAY", "worktree": "/tmp/x/worktree",
                      "git_commands": [], "target": "relay@4ac84e9",
                      "label": "relay @ 4ac84e9", "available": compared}
    return report.build_document(
        timestamp="20260101-000000", started="s", finished="f", command=["bench/run.py"],
        machine={"cpu_model": "Test CPU", "cores": 2},
        settings={"levels": [10, 50], "duration_s": 15.0, "warmup_s": 3.0, "wrk_threads": 1,
                  "request_body_bytes": 1024, "response_body_bytes": 1024,
                  "upstream": "nginx", "upstream_label": "nginx/1.22.1"},
        targets=targets, runs=runs, fixed_rate=fixed, profile=None, logs={},
        compare=comparison)


def table_rows(text: str, first_cell: str = "c") -> list[list[str]]:
    """The rows (cells) of the first Markdown table whose header starts with ``first_cell``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_cell} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


class ReportTests(SynchronousTestCase):
    def test_sweep_table_ratios_and_na(self) -> None:
        text = report.format_report(sample_document())
        rows = table_rows(text)
        self.assertEqual([row[0] for row in rows], ["10", "50"])
        c10, c50 = rows
        self.assertEqual(c10[1:5], ["40,000", "1,000", "500", "n/a"])
        self.assertEqual(c10[5:7], ["50 %", "1 %"])          # of baseline, of direct
        self.assertEqual(c10[7:11], ["+9.80", "+19.80", "+39.60", "+79.20"])
        self.assertEqual(c10[11], "0")
        self.assertIn("relay (2 workers): n/a: WORKERS unsupported", text)

    def test_errors_are_shown_and_not_counted_as_throughput(self) -> None:
        c50 = table_rows(report.format_report(sample_document()))[1]
        self.assertEqual(c50[3], "597")  # (6000 - 30) / 10 s
        self.assertEqual(c50[11], "relay 32 (30 non-2xx, 2 socket)")

    def test_multi_worker_column(self) -> None:
        c10 = table_rows(report.format_report(sample_document(multi_available=True)))[0]
        self.assertEqual(c10[4], "750")

    def test_fixed_rate_section(self) -> None:
        text = report.format_report(sample_document())
        self.assertIn("### Fixed offered rate: 500 req/s = 0.5 × baseline max 1,000 req/s", text)
        rows = table_rows(text, "target")
        self.assertEqual(rows[0][:4], ["baseline", "90.0", "497", "3.00"])
        self.assertEqual(rows[1][2], "419 (-16 % off the offered rate)")
        self.assertIn("Relay added median vs baseline: +1.50 ms (goal ≤ 2 ms: met)", text)

    def test_other_load_is_reported(self) -> None:
        text = report.format_report(sample_document())
        self.assertIn("other processes on the machine used 0.07 cores on average (at most 0.40)",
                      text)
        self.assertIn("the machine was busy", text)

    def test_cpu_per_answer(self) -> None:
        doc = sample_document()
        run = dict(report.find_run(doc, "relay", 10) or {})
        run["cpu"] = {"elapsed_s": 10.0,
                      "processes_cores": {"relay-a": 0.5, "relay-b": 0.4, "redis": 0.1,
                                          "baseline-p1": 0.3}}
        target = {"name": "relay", "processes": ["relay-a", "relay-b", "redis"]}
        # 1.0 core for 10 s over 5000 answers: 2 ms each; other processes not counted
        self.assertAlmostEqual(report.cpu_ms_per_answer(run, target) or 0, 2.0)
        self.assertIsNone(report.cpu_ms_per_answer(run, {"processes": []}))
        self.assertIsNone(report.cpu_ms_per_answer(None, target))
        self.assertIn("### CPU per answer", report.format_report(doc))

    def test_fixed_rate_skipped(self) -> None:
        doc = sample_document()
        doc["fixed_rate"] = {"skipped": "no baseline results"}
        self.assertIn("skipped: no baseline results", report.format_report(doc))

    def test_latency_table(self) -> None:
        rows = table_rows(report.latency_table(sample_document()))
        self.assertEqual(rows[0][1:], ["0.20 / 0.40 / 0.80", "10.00 / 20.00 / 40.00",
                                       "20.00 / 40.00 / 80.00", "n/a"])

    def test_document_shape(self) -> None:
        doc = sample_document()
        self.assertEqual(report.check_document(doc), [])
        self.assertEqual(json.loads(json.dumps(doc)), doc)  # plain JSON all the way down
        doc["runs"].append({"target": "nonsense", "connections": 1})
        self.assertTrue(report.check_document(doc))

    def test_formatting(self) -> None:
        self.assertEqual(report.fmt_rps(None), "n/a")
        self.assertEqual(report.fmt_rps(12.34), "12.3")
        self.assertEqual(report.fmt_ms(-0.5, signed=True), "-0.50")
        self.assertEqual(report.fmt_ms(250.0), "250")
        self.assertIsNone(report.ratio_percent(1.0, 0.0))

    def test_log_findings(self) -> None:
        log = "\n".join([
            "2026-11-21T08:40:55+0000 [mterelay.access#info] POST /XwARnZMQdB 200 3.9ms",
            "2026-11-21T08:40:56+0000 [mterelay.access#info] POST /abc 502 1.2ms",
            "2026-11-21T08:40:57+0000 [mterelay.outbound#warn] outbound POST to x failed: "
            "502 Remote relay unreachable (CancelledError: )",
            "2026-11-21T08:40:58+0000 [mterelay.inbound#error] boom",
            "2026-11-21T08:40:59+0000 [mterelay.inbound#error] boom",
            '127.0.0.1 - - [21/Nov/2026:08:41:00 +0000] "POST /x HTTP/1.1" 503 12 "-" "-"',
        ])
        found = report.log_findings(log)
        self.assertEqual(found["count"], 4)   # 502 access line, 2 x boom, the 503
        self.assertEqual(len(found["lines"]), 3)  # boom once: timestamps are ignored
        self.assertEqual(found["cancelled"], 1)  # a request wrk abandoned at the end


class RepeatTests(SynchronousTestCase):
    """--repeat N: interleaved rounds, each cell the median round, the spread shown."""

    def document(self) -> dict[str, Any]:
        doc = sample_document()
        doc["settings"]["repeat"] = 3
        doc["runs"] = []
        for round_index, (base, relay) in enumerate(((800.0, 900.0), (700.0, 600.0),
                                                     (750.0, 760.0)), start=1):
            for c in (10, 50):
                for entry in (run_json("direct", c, 40000.0, 0.2),
                              run_json("baseline", c, base, 10.0 + round_index),
                              run_json("relay", c, relay, 20.0 + round_index)):
                    entry["round"] = round_index
                    doc["runs"].append(entry)
        return doc

    def test_median_round_stands_for_the_cell(self) -> None:
        doc = self.document()
        self.assertEqual(report.good_rps(report.find_run(doc, "relay", 50)), 760.0)
        self.assertEqual(report.good_rps(report.find_run(doc, "baseline", 50)), 750.0)
        self.assertEqual(report.find_run(doc, "relay", 50)["round"], 3)
        rows = table_rows(report.format_report(doc))
        self.assertEqual(rows[1][2:4], ["750", "760"])

    def test_even_count_takes_the_lower_middle(self) -> None:
        runs = [run_json("relay", 50, rps, 1.0) for rps in (900.0, 600.0, 700.0, 800.0)]
        self.assertEqual(report.good_rps(report.median_run(runs, "relay", 50)), 700.0)
        self.assertIsNone(report.median_run(runs, "relay", 10))

    def test_round_ratios_in_the_notes(self) -> None:
        doc = self.document()
        self.assertEqual([round(r, 3) for r in report.round_ratios(doc, "relay", "baseline", 50)],
                         [1.125, 0.857, 1.013])
        text = report.format_report(doc)
        self.assertIn("median of 3 interleaved rounds", text)
        self.assertIn("c=50: 1.12, 0.86, 1.01", text)

    def test_fixed_rate_rounds_line(self) -> None:
        doc = sample_document()
        doc["fixed_rate"]["targets"]["relay"]["rounds_p50_ms"] = [4.5, 5.0, 4.0]
        text = report.format_report(doc)
        self.assertIn("median p50 of relay: 4.50 / 5.00 / 4.00 ms", text)

    def test_argument_bounds(self) -> None:
        from bench import run

        self.assertEqual(run.parse_args(["--repeat", "3"]).repeat, 3)
        self.assertEqual(run.parse_args([]).repeat, 1)
        for bad in ("0", "21"):
            with self.assertRaises(SystemExit):
                run.parse_args(["--repeat", bad])


class ProcessConfigTests(SynchronousTestCase):
    """The pure parts of bench/procs.py: configuration text and environments."""

    def test_nginx_conf(self) -> None:
        body = response_body(1024)
        conf = procs.nginx_conf(Path("/tmp/x"), 8123, body)
        self.assertIn("listen 127.0.0.1:8123", conf)
        self.assertIn("return 200 '" + body.decode() + "';", conf)
        self.assertIn("default_type application/json;", conf)
        self.assertIn("access_log off;", conf)
        self.assertIn("worker_processes 1;", conf)
        self.assertIn("pid /tmp/x/nginx.pid;", conf)
        self.assertNotIn("/var/", conf)  # nothing outside its own directory: no root needed
        self.assertRaises(ValueError, procs.nginx_conf, Path("/tmp"), 1, b"it's")

    def test_relay_envs(self) -> None:
        b = procs.relay_b_env("http://127.0.0.1:1", "redis://127.0.0.1:2", 3, 1, "p:")
        self.assertEqual(b["LISTEN"], "tcp:3:interface=127.0.0.1")
        self.assertEqual(b["REDIS_URL"], "redis://127.0.0.1:2")
        self.assertNotIn("WORKERS", b)
        self.assertNotIn("OUTBOUND_TOKEN", b)
        self.assertGreaterEqual(len(b["CLIENT_ID_SECRET"]), 32)
        a = procs.relay_a_env("http://127.0.0.1:1", "redis://127.0.0.1:2", 4, 3, 2, "p:")
        self.assertEqual(a["OUTBOUND_UPSTREAMS"], "http://127.0.0.1:3")
        self.assertEqual(a["WORKERS"], "2")
        self.assertEqual(a["REDIS_URL"], "redis://127.0.0.1:2")  # WORKERS needs it
        headers = procs.outbound_headers(3)
        self.assertEqual(headers["x-mte-outbound-token"], a["OUTBOUND_TOKEN"])
        self.assertEqual(headers["x-mte-upstream"], "http://127.0.0.1:3")

    def test_clean_env_drops_relay_settings(self) -> None:
        os.environ["UPSTREAM"] = "http://leak.example"
        self.addCleanup(os.environ.pop, "UPSTREAM", None)
        env = procs.clean_env({"LISTEN": "tcp:1"})
        self.assertNotIn("UPSTREAM", env)
        self.assertEqual(env["LISTEN"], "tcp:1")

    def test_cpu_usage(self) -> None:
        before = {"relay-a": 1.0, "_load": 0.5, "_machine": 10.0, "_steal": 0.0, "_time": 100.0}
        after = {"relay-a": 2.0, "_load": 1.0, "_machine": 13.0, "_steal": 0.2, "_time": 102.0}
        usage = machine.cpu_usage(before, after)
        self.assertEqual(usage["processes_cores"], {"relay-a": 0.5})
        self.assertEqual(usage["wrk_cores"], 0.25)
        self.assertEqual(usage["machine_cores"], 1.5)
        self.assertEqual(usage["other_cores"], 0.75)
        self.assertEqual(usage["steal_cores"], 0.1)


class BuiltinUpstreamTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.answer = build_answer(response_body(1024))
        self.protocol = UpstreamProtocol(self.answer)
        self.transport = FakeTransport()
        self.protocol.connection_made(self.transport)  # type: ignore[arg-type]

    def test_body(self) -> None:
        body = response_body(1024)
        self.assertEqual(len(body), 1024)
        json.loads(body)
        self.assertIn(b"Content-Length: 1024\r\n", self.answer)

    def test_content_length_bodies_pipelined_and_split(self) -> None:
        request = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        data = request * 3
        for i in range(0, len(data), 7):  # arbitrary TCP segmentation
            self.protocol.data_received(data[i:i + 7])
        self.assertEqual(self.transport.written, [self.answer] * 3)
        self.assertFalse(self.transport.closed)

    def test_chunked_body(self) -> None:
        self.protocol.data_received(
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\n\r\n"
            b"GET /b HTTP/1.1\r\n\r\n")
        self.assertEqual(self.transport.written, [self.answer] * 2)

    def test_connection_close(self) -> None:
        self.protocol.data_received(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        self.assertEqual(self.transport.written, [self.answer])
        self.assertTrue(self.transport.closed)


class ChartTests(SynchronousTestCase):
    def test_series_skips_missing(self) -> None:
        from bench import chart

        doc = sample_document()
        self.assertEqual(chart.series(doc, "relay", "rps"), ([10, 50], [500.0, 597.0]))
        self.assertEqual(chart.series(doc, "relay-w2", "p50"), ([], []))

    def test_png(self) -> None:
        try:
            import matplotlib
        except ImportError:
            raise self.skipTest("matplotlib is not installed (the bench extras)")
        del matplotlib
        from bench import chart

        directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, directory)
        self.assertIsNone(chart.write_chart(sample_document(), directory / "c.png"))
        self.assertEqual((directory / "c.png").read_bytes()[:8], b"\x89PNG\r\n\x1a\n")


class SmokeTest(SynchronousTestCase):
    """bench/run.py for real: tiny durations, the built-in upstream, no chart.

    With ``--compare HEAD`` when this is a git checkout (a temporary worktree
    of HEAD; a few seconds more), skipped otherwise.
    """

    def test_run(self) -> None:
        if shutil.which("wrk") is None:
            raise self.skipTest("wrk is not on PATH (apt-get install wrk)")
        comparing = (REPO / ".git").exists() and shutil.which("git") is not None
        output = Path(tempfile.mkdtemp(prefix="bench-smoke-"))
        self.addCleanup(shutil.rmtree, output, True)
        # The harness's temporary directory goes here (TMPDIR), to check it is removed.
        scratch = Path(tempfile.mkdtemp(prefix="bench-smoke-tmp-"))
        self.addCleanup(shutil.rmtree, scratch, True)
        argv = [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--levels", "10",
                "--duration", "1", "--warmup", "0.5", "--calibrate", "1", "--no-chart",
                "--repeat", "2",
                "--upstream", "builtin", "--output", str(output)]
        if comparing:
            argv += ["--compare", "HEAD"]
        done = subprocess.run(argv, cwd=str(REPO), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=180,
                              env=dict(os.environ, TMPDIR=str(scratch)))
        stdout = done.stdout.decode("utf-8", "replace")
        stderr = done.stderr.decode("utf-8", "replace")
        self.assertEqual(done.returncode, 0, f"stdout:\n{stdout}\nstderr:\n{stderr}")
        # progress on stderr, the table on stdout
        self.assertIn("sweep c=10", stderr)
        self.assertIn("upstream: built-in asyncio server", stdout)
        header = next(line for line in stdout.splitlines() if line.startswith("| c |"))
        self.assertIn("direct req/s", header)
        self.assertIn("relay % of baseline", header)
        rows = table_rows(stdout)
        self.assertEqual([row[0] for row in rows], ["10"])
        for cell in rows[0][1:4]:  # direct, baseline, relay
            self.assertGreater(float(cell.replace(",", "")), 0, stdout)
        multi = rows[0][5 if comparing else 4]  # relay@REV's column comes before it
        self.assertTrue(multi == "n/a" or float(multi.replace(",", "")) > 0, stdout)
        self.assertIn("Relay added median vs baseline", stdout)
        # the JSON: latest.json is a copy of <timestamp>.json
        latest = json.loads((output / "latest.json").read_text())
        self.assertEqual(report.check_document(latest), [])
        stamped = output / f"{latest['timestamp']}.json"
        self.assertEqual(json.loads(stamped.read_text()), latest)
        self.assertEqual(latest["settings"]["upstream"], "builtin")
        # --repeat 2: two interleaved rounds per target, the spread in the notes
        self.assertEqual(latest["settings"]["repeat"], 2)
        relay_rounds = sorted(r["round"] for r in latest["runs"] if r["target"] == "relay")
        self.assertEqual(relay_rounds, [1, 2])
        self.assertIn("median of 2 interleaved rounds", stdout)
        self.assertEqual({r["target"] for r in latest["runs"]} >= {"direct", "baseline", "relay"},
                         True)
        self.assertFalse(list(output.glob("*.png")))  # --no-chart
        # nothing left behind: the run's temporary directory (logs, nginx, redis) is gone,
        # and so is the --compare worktree (made under TMPDIR too)
        self.assertEqual(list(scratch.iterdir()), [])
        if comparing:
            self.check_compare(latest, stdout, rows[0])

    def check_compare(self, latest: dict[str, Any], stdout: str, row: list[str]) -> None:
        """relay@<HEAD> was measured, ran the worktree's code, and is in every output."""
        compared = latest["compare"]
        name, label, tree = compared["target"], compared["label"], Path(compared["worktree"])
        self.assertEqual(compared["rev"], "HEAD")
        self.assertEqual(name, f"relay@{compared['commit'][:7]}")
        self.assertTrue(compared["available"], compared["note"])
        self.assertFalse(tree.exists())
        self.assertEqual([c["argv"][3:5] for c in compared["git_commands"]],
                         [["worktree", "add"], ["worktree", "remove"], ["worktree", "prune"]])
        target = next(t for t in latest["targets"] if t["name"] == name)
        for found in target["imported"].values():  # what relay A and B said from inside
            self.assertIsNone(compare.import_problem(found, tree), found)
        relay = next(t for t in latest["targets"] if t["name"] == "relay")
        for found in relay["imported"].values():
            self.assertIsNone(compare.import_problem(found, REPO), found)
        self.assertEqual({r["target"] for r in latest["runs"]} >= {"relay", name}, True)
        self.assertIn(name, latest["fixed_rate"]["targets"])
        self.assertEqual(len(compared["levels"]), 1)
        self.assertIsNotNone(compared["levels"][0]["throughput_ratio"])
        self.assertGreater(float(row[4].replace(",", "")), 0, stdout)  # its req/s column
        self.assertIn(f"### relay vs {label}", stdout)
        self.assertIn(f"* c=10: relay vs {label}: throughput ×", stdout)
        self.assertIn(f"{label} added median vs baseline", stdout)


# ---------------------------------------------------------------- --compare REV


class FakeGit:
    """Plays git for compare.Worktree: records every command it is given.

    ``worktree add`` makes what git makes for a detached worktree: the
    directory, its ``.git`` file and the HEAD file in the repository's
    ``worktrees/<name>``; ``worktree remove`` deletes the directory.
    """

    def __init__(self, admin: Path, add_status: int = 0) -> None:
        self.admin = admin
        self.add_status = add_status
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> tuple[int, str]:
        self.calls.append(list(argv))
        command = argv[3:5]
        if command == ["worktree", "add"]:
            if self.add_status:
                return self.add_status, f"fatal: invalid reference: {argv[-1]}\n"
            path = Path(argv[-2])
            gitdir = self.admin / "worktrees" / path.name
            gitdir.mkdir(parents=True)
            (gitdir / "HEAD").write_text(COMMIT + "\n")
            path.mkdir()
            (path / ".git").write_text(f"gitdir: {gitdir}\n")
            return 0, ("Preparing worktree (detached HEAD 4ac84e9)\n"
                       "HEAD is now at 4ac84e9 Hot path: TCP_NODELAY\n")
        if command == ["worktree", "remove"]:
            shutil.rmtree(argv[-1], ignore_errors=True)
            return 0, ""
        if command == ["worktree", "prune"]:
            return 0, ""
        return 1, f"FakeGit: unexpected {argv}"


class CompareWorktreeTests(SynchronousTestCase):
    """bench/compare.py: the git commands and the worktree's lifetime (git faked)."""

    def setUp(self) -> None:
        self.scratch = Path(tempfile.mkdtemp(prefix="bench-compare-test-"))
        self.addCleanup(shutil.rmtree, self.scratch, True)
        self.parent = self.scratch / "parent"
        self.repo = Path("/work/repo")

    def make_parent(self) -> Path:
        self.parent.mkdir()
        return self.parent

    def worktree(self, git: FakeGit) -> compare.Worktree:
        return compare.Worktree(self.repo, "HEAD~3", runner=git, make_parent=self.make_parent)

    def test_commands(self) -> None:
        path = Path("/tmp/x/worktree")
        self.assertEqual(compare.add_command(self.repo, path, "HEAD~3"),
                         ["git", "-C", "/work/repo", "worktree", "add", "--detach",
                          "/tmp/x/worktree", "HEAD~3"])
        self.assertEqual(compare.remove_command(self.repo, path),
                         ["git", "-C", "/work/repo", "worktree", "remove", "--force",
                          "/tmp/x/worktree"])
        self.assertEqual(compare.prune_command(self.repo),
                         ["git", "-C", "/work/repo", "worktree", "prune"])

    def test_add_then_close(self) -> None:
        git = FakeGit(self.scratch / "admin")
        tree = self.worktree(git)
        tree.add()
        path = self.parent / "worktree"
        self.assertEqual(tree.path, path)
        self.assertEqual(git.calls, [compare.add_command(self.repo, path, "HEAD~3")])
        self.assertEqual(tree.commit, COMMIT)  # read from the worktree's files, not git
        self.assertEqual(tree.short, "4ac84e9")
        self.assertEqual(tree.subject, "Hot path: TCP_NODELAY")
        self.assertEqual(tree.close(), [])
        self.assertEqual(git.calls[1:], [compare.remove_command(self.repo, path),
                                         compare.prune_command(self.repo)])
        self.assertFalse(self.parent.exists())
        self.assertEqual(tree.close(), [])  # twice: nothing more is run
        self.assertEqual(len(git.calls), 3)
        described = tree.describe()
        self.assertEqual((described["rev"], described["short"]), ("HEAD~3", "4ac84e9"))
        self.assertEqual([c["status"] for c in described["git_commands"]], [0, 0, 0])
        json.dumps(described)

    def test_unknown_revision(self) -> None:
        git = FakeGit(self.scratch / "admin", add_status=128)
        tree = self.worktree(git)
        with self.assertRaises(compare.WorktreeError) as caught:
            tree.add()
        self.assertIn("invalid reference: HEAD~3", str(caught.exception))
        # no worktree was made, so nothing to remove; prune anyway, directory gone
        self.assertEqual([call[3:5] for call in git.calls],
                         [["worktree", "add"], ["worktree", "prune"]])
        self.assertFalse(self.parent.exists())

    def test_removed_after_an_interruption(self) -> None:
        git = FakeGit(self.scratch / "admin")
        with self.assertRaises(KeyboardInterrupt):
            with self.worktree(git) as tree:
                tree.add()
                raise KeyboardInterrupt
        self.assertEqual([call[3:5] for call in git.calls],
                         [["worktree", "add"], ["worktree", "remove"], ["worktree", "prune"]])
        self.assertFalse(self.parent.exists())

    def test_read_head(self) -> None:
        tree = self.scratch / "tree"
        tree.mkdir()
        self.assertIsNone(compare.read_head(tree))  # no .git
        admin = self.scratch / "admin"
        admin.mkdir()
        (admin / "HEAD").write_text("ref: refs/heads/main\n")
        (tree / ".git").write_text("gitdir: ../admin\n")  # relative to the worktree
        self.assertIsNone(compare.read_head(tree))  # not detached
        (admin / "HEAD").write_text(COMMIT + "\n")
        self.assertEqual(compare.read_head(tree), COMMIT)

    def test_small_parts(self) -> None:
        self.assertEqual(compare.parse_subject("Preparing worktree (detached HEAD 1)\n"
                                               "HEAD is now at 6228d9e Hot path: logs\n"),
                         "Hot path: logs")
        self.assertEqual(compare.parse_subject("fatal: nope"), "")
        self.assertEqual(compare.check_rev(" HEAD~3 "), "HEAD~3")
        for bad in ("", "-x", "--force", "a b"):
            self.assertRaises(ValueError, compare.check_rev, bad)
        self.assertEqual(compare.target_name("4ac84e9"), "relay@4ac84e9")
        self.assertEqual(compare.target_label("4ac84e9"), "relay @ 4ac84e9")
        self.assertEqual(compare.pythonpath_env(Path("/t"), {}), {"PYTHONPATH": "/t"})
        self.assertEqual(compare.pythonpath_env(Path("/t"), {"PYTHONPATH": "/x"}),
                         {"PYTHONPATH": f"/t{os.pathsep}/x"})

    def test_error_summary(self) -> None:
        log = ("relay@4ac84e9-b exited with status 1:\n"
               "Traceback (most recent call last):\n"
               '  File "/tmp/w/mterelay/service/tap.py", line 3, in <module>\n'
               "    import newdep\n"
               "ModuleNotFoundError: No module named 'newdep'\n")
        self.assertEqual(compare.error_summary(log),
                         "ModuleNotFoundError: No module named 'newdep'")
        self.assertEqual(compare.error_summary("just this\n\n"), "just this")
        self.assertEqual(compare.error_summary(""), "no output")

    def test_launcher_evidence(self) -> None:
        tree = Path("/tmp/w")
        good = {"mterelay": "/tmp/w/mterelay/__init__.py",
                "plugin": "/tmp/w/twisted/plugins/mterelay_plugin.py"}
        log = ("2026-11-21T08:40:55+0000 [-] Loading...\n"
               f"{compare.LAUNCHER_MARKER} {json.dumps(good)}\n")
        found = compare.parse_launcher_line(log)
        self.assertEqual(found, good)
        self.assertIsNone(compare.import_problem(found, tree))
        self.assertIn("/tmp/w/mterelay/__init__.py", compare.evidence(found))
        self.assertIsNone(compare.parse_launcher_line("no such line\n"))
        self.assertIn("did not report", compare.import_problem(None, tree) or "")
        stray = dict(good, plugin="/work/main/twisted/plugins/mterelay_plugin.py")
        self.assertIn("plugin was imported from /work/main",
                      compare.import_problem(stray, tree) or "")
        # /tmp/w2 is not inside /tmp/w
        self.assertIsNotNone(compare.import_problem(
            dict(good, mterelay="/tmp/w2/mterelay/__init__.py"), tree))
        broken = {"mterelay_error": "ModuleNotFoundError: No module named 'newdep'"}
        self.assertIn("newdep", compare.import_problem(broken, tree) or "")


class CompareArgumentTests(SynchronousTestCase):
    def parse(self, *argv: str) -> Any:
        return runmod.parse_args(list(argv))

    def test_compare(self) -> None:
        self.assertIsNone(self.parse("--quick").compare)
        self.assertEqual(self.parse("--compare", "HEAD~3").compare, "HEAD~3")
        self.assertEqual(self.parse("--compare=4ac84e9", "--quick").compare, "4ac84e9")
        import contextlib
        import io

        for bad in (["--compare"], ["--compare", ""], ["--compare=-f"]):
            with contextlib.redirect_stderr(io.StringIO()) as err:
                self.assertRaises(SystemExit, self.parse, *bad)
            self.assertIn("--compare", err.getvalue())

    def test_relay_argv(self) -> None:
        self.assertEqual(procs.relay_argv(),
                         [str(procs.VENV_BIN / "twistd"), "-n", "--pidfile=", "mterelay"])
        self.assertEqual(procs.relay_argv(launcher=True),
                         [sys.executable, str(REPO / "bench" / "relay_launcher.py"), "-n",
                          "--pidfile=", "mterelay"])


class CompareReportTests(SynchronousTestCase):
    """The --compare target in the tables, the comparison lines and the JSON."""

    def test_no_compare_no_change(self) -> None:
        doc = sample_document()
        self.assertNotIn("compare", doc)
        text = report.format_report(doc)
        self.assertNotIn("relay vs", text)
        header = next(line for line in text.splitlines() if line.startswith("| c |"))
        self.assertEqual(
            [cell.strip() for cell in header.strip("|").split("|")],
            ["c", "direct req/s", "baseline req/s", "relay req/s", "relay (2 workers) req/s",
             "relay % of baseline", "relay % of direct", "baseline +p50 ms", "relay +p50 ms",
             "relay +p90 ms", "relay +p99 ms", "errors"])

    def test_sweep_table_columns(self) -> None:
        text = report.format_report(sample_document(compared=True))
        header = next(line for line in text.splitlines() if line.startswith("| c |"))
        cells = [cell.strip() for cell in header.strip("|").split("|")]
        self.assertEqual(cells[3:8], ["relay req/s", "relay @ 4ac84e9 req/s",
                                      "relay (2 workers) req/s", "relay % of baseline",
                                      "relay @ 4ac84e9 % of baseline"])
        c10, c50 = table_rows(text)
        self.assertEqual(c10[1:9], ["40,000", "1,000", "500", "399", "n/a", "50 %", "40 %",
                                    "1 %"])
        self.assertEqual(c10[13], "relay @ 4ac84e9 10 (10 non-2xx)")
        self.assertEqual(c50[4], "480")
        self.assertEqual(c50[7], "60 %")

    def test_latency_and_cpu_tables(self) -> None:
        doc = sample_document(compared=True)
        latency, cpu = report.latency_table(doc), report.cpu_table(doc)
        # right after the relay's column
        self.assertIn("| relay p50 / p90 / p99 ms | relay @ 4ac84e9 p50 / p90 / p99 ms |",
                      latency.splitlines()[0])
        self.assertIn("| relay CPU ms/answer | relay @ 4ac84e9 CPU ms/answer |",
                      cpu.splitlines()[0])
        self.assertEqual(table_rows(latency)[0][4], "25.00 / 50.00 / 100")

    def test_comparison_lines(self) -> None:
        text = report.format_report(sample_document(compared=True))
        self.assertIn("### relay vs relay @ 4ac84e9", text)
        self.assertIn("`--compare HEAD~3` = 4ac84e900000 \"Hot path: TCP_NODELAY\"", text)
        self.assertIn("* c=10: relay vs relay @ 4ac84e9: throughput × 1.25 (500 vs 399 req/s), "
                      "median -5.00 ms (20.00 vs 25.00 ms), CPU per answer n/a", text)
        self.assertIn("* c=50: relay vs relay @ 4ac84e9: throughput × 1.24 (597 vs 480 req/s)",
                      text)
        self.assertIn("* fixed rate (500 req/s offered): relay vs relay @ 4ac84e9: median "
                      "-1.00 ms (4.50 vs 5.50 ms), p90 -2.00 ms, p99 -4.00 ms", text)

    def test_cpu_difference(self) -> None:
        doc = sample_document(compared=True)
        for run in doc["runs"]:
            if run["target"] in ("relay", "relay@4ac84e9") and run["connections"] == 10:
                cores = 0.5 if run["target"] == "relay" else 0.6
                run["cpu"] = {"elapsed_s": 10.0, "processes_cores": {"a": cores}}
        for target in doc["targets"]:
            target["processes"] = ["a"]
        c10 = report.compare_levels(doc)[0]
        self.assertAlmostEqual(c10["relay_cpu_ms_per_answer"], 1.0)    # 5 s / 5000
        self.assertAlmostEqual(c10["compare_cpu_ms_per_answer"], 1.5)  # 6 s / 4000
        self.assertAlmostEqual(c10["cpu_diff_ms"], -0.5)
        self.assertIn("CPU per answer -0.50 ms (1.00 vs 1.50 ms)", report.format_report(doc))

    def test_fixed_rate_rows(self) -> None:
        text = report.format_report(sample_document(compared=True))
        rows = table_rows(text, "target")
        self.assertEqual([row[0] for row in rows], ["baseline", "relay", "relay @ 4ac84e9"])
        self.assertEqual(rows[2][1:6], ["70.0", "494", "5.50", "11.00", "22.00"])
        self.assertIn("relay @ 4ac84e9 added median vs baseline: +2.50 ms (goal ≤ 2 ms: not "
                      "met); added p90 +5.00 ms, added p99 +10.00 ms", text)

    def test_not_available(self) -> None:
        text = report.format_report(sample_document(compared=False))
        c10 = table_rows(text)[0]
        self.assertEqual((c10[4], c10[7]), ("n/a", "n/a"))
        self.assertIn("* relay @ 4ac84e9: n/a — the relay of HEAD~3 (4ac84e9) did not start "
                      "with this venv: ModuleNotFoundError: No module named 'newdep'", text)
        self.assertIn("relay @ 4ac84e9 added median vs baseline: n/a", text)
        self.assertEqual(table_rows(text, "target")[2][0], "relay @ 4ac84e9")

    def test_json_shape(self) -> None:
        doc = sample_document(compared=True)
        self.assertEqual(report.check_document(doc), [])
        self.assertEqual(json.loads(json.dumps(doc)), doc)
        compared = doc["compare"]
        self.assertEqual((compared["rev"], compared["short"], compared["target"]),
                         ("HEAD~3", "4ac84e9", "relay@4ac84e9"))
        self.assertEqual([t["name"] for t in doc["targets"]],
                         ["direct", "baseline", "relay", "relay@4ac84e9", "relay-w2"])
        self.assertEqual([level["connections"] for level in compared["levels"]], [10, 50])
        c10 = compared["levels"][0]
        self.assertEqual((c10["relay_ok_rps"], c10["compare_ok_rps"]), (500.0, 399.0))
        self.assertAlmostEqual(c10["throughput_ratio"], 500 / 399)
        self.assertAlmostEqual(c10["p50_diff_ms"], -5.0)
        self.assertIsNone(c10["cpu_diff_ms"])
        self.assertAlmostEqual(compared["fixed_rate"]["p50"]["diff_ms"], -1.0)
        self.assertEqual(doc["fixed_rate"]["compare_target"], "relay@4ac84e9")
        broken = sample_document(compared=True)
        broken["compare"]["target"] = "relay@nothing"
        self.assertIn("compare target 'relay@nothing' is not a target",
                      report.check_document(broken))
        # n/a: the same keys, no numbers
        na = sample_document(compared=False)
        self.assertEqual(report.check_document(na), [])
        self.assertIsNone(na["compare"]["levels"][0]["throughput_ratio"])
        self.assertIsNone(na["compare"]["fixed_rate"])

    def test_chart(self) -> None:
        from bench import chart

        doc = sample_document(compared=True)
        self.assertEqual(chart.series(doc, "relay@4ac84e9", "rps"), ([10, 50], [399.0, 480.0]))
        self.assertEqual(chart.style("relay@4ac84e9")[2], "--")
        self.assertNotEqual(chart.style("relay@4ac84e9")[0], chart.style("relay")[0])
        self.assertEqual(chart.style("relay"), ("tab:red", "^", "-"))


def fake_tree(root: Path, init: str = "__version__ = 'fake'\n", plugin: bool = True) -> Path:
    """A directory shaped like a checkout of mterelay: its own mterelay package and plugin."""
    (root / "mterelay").mkdir(parents=True)
    (root / "mterelay" / "__init__.py").write_text(init)
    if plugin:
        (root / "twisted" / "plugins").mkdir(parents=True)
        shutil.copy(REPO / "twisted" / "plugins" / "mterelay_plugin.py",
                    root / "twisted" / "plugins" / "mterelay_plugin.py")
    return root


class CompareProcessTests(SynchronousTestCase):
    """PYTHONPATH really wins over the editable install, seen from inside the process."""

    def setUp(self) -> None:
        self.scratch = Path(tempfile.mkdtemp(prefix="bench-compare-proc-"))
        self.addCleanup(shutil.rmtree, self.scratch, True)

    def test_launcher_reports_the_worktree(self) -> None:
        tree = fake_tree(self.scratch / "tree")
        argv = procs.relay_argv(launcher=True)[:2] + ["--version"]
        done = subprocess.run(argv, cwd=str(tree), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=60,
                              env=dict(os.environ, **compare.pythonpath_env(tree)))
        output = done.stdout.decode("utf-8", "replace")
        self.assertEqual(done.returncode, 0, output)
        found = compare.parse_launcher_line(output)
        self.assertIsNotNone(found, output)
        assert found is not None
        self.assertEqual(found["version"], "fake")
        self.assertIsNone(compare.import_problem(found, tree))
        self.assertIsNotNone(compare.import_problem(found, REPO))
        self.assertIn("twistd (the Twisted daemon)", output)  # then twistd itself ran

    def test_missing_dependency_is_not_available(self) -> None:
        tree = fake_tree(self.scratch / "tree",
                         init="import mterelay_bench_no_such_dependency\n")
        messages: list[str] = []
        bench = runmod.Bench(runmod.parse_args(["--compare", "HEAD"]), messages.append, "wrk")
        bench.worktree = compare.Worktree(REPO, "HEAD", runner=FakeGit(self.scratch),
                                          path=tree, commit=COMMIT)
        stack = procs.ProcessStack(directory=self.scratch / "stack")
        (self.scratch / "stack").mkdir()
        self.addCleanup(stack.close)
        target = bench.start_compare(stack, "http://127.0.0.1:9", "redis://127.0.0.1:9",
                                     redis=None)  # type: ignore[arg-type]
        self.assertFalse(target.available)
        self.assertEqual(target.name, "relay@4ac84e9")
        self.assertIn("did not start with this venv: ModuleNotFoundError: No module named "
                      "'mterelay_bench_no_such_dependency'", target.note)
        self.assertEqual([p.alive() for p in stack.procs], [False] * len(stack.procs))
