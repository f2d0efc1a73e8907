"""The benchmark's issue-18 parts: the bare chain, the nginx sidecar pair, the
light-load client, memory figures and their tables.

Pure parts on hand-made input; the processes for real on 127.0.0.1 (the
sidecar test skips when nginx is not installed).  Nothing here asserts how
fast anything was.
"""

from __future__ import annotations

import http.server
import json
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SynchronousTestCase

from bench import lightload, memory, procs, report, sidecar
from bench import run as runmod
from bench.upstream_builtin import response_body

from .test_bench import run_json, sample_document, table_rows


class LightLoadPureTests(SynchronousTestCase):
    def test_percentile_and_summary(self) -> None:
        values = [float(v) for v in range(1, 101)]  # 1..100
        self.assertEqual(lightload.percentile(values, 50), 50.0)
        self.assertEqual(lightload.percentile(values, 99), 99.0)
        self.assertEqual(lightload.percentile([7.0], 99), 7.0)
        self.assertIsNone(lightload.percentile([], 50))
        found = lightload.summarize([3.0, 1.0, 2.0])
        self.assertEqual((found["p50"], found["max"], found["mean"]), (2.0, 3.0, 2.0))
        self.assertEqual(lightload.summarize([])["p50"], None)

    def test_due_times(self) -> None:
        self.assertEqual(lightload.due_times(4, 1.0), [0.0, 0.25, 0.5, 0.75])
        self.assertEqual(len(lightload.due_times(200, 3.0)), 600)
        self.assertEqual(lightload.due_times(0, 3.0), [])

    def test_request(self) -> None:
        raw = lightload.build_request("/bench/echo?size=1k", b"{}", {"x-a": "1"})
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"POST /bench/echo?size=1k HTTP/1.1\r\n"))
        self.assertIn(b"\r\nContent-Length: 2", head)
        self.assertIn(b"\r\nx-a: 1", head)
        self.assertEqual(body, b"{}")

    def test_parse_head(self) -> None:
        self.assertEqual(lightload.parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12"),
                         (200, 12, False))
        self.assertEqual(lightload.parse_head(b"HTTP/1.1 559 X\r\nconnection: close\r\n"
                                              b"content-length: 0"), (559, 0, True))
        self.assertEqual(lightload.parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 1")[2], True)
        self.assertRaises(ValueError, lightload.parse_head, b"garbage")
        self.assertRaises(ValueError, lightload.parse_head,
                          b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked")

    def test_json(self) -> None:
        result = lightload.LoadResult("paced", 20, 2.0, offered_rps=200.0,
                                      latencies_ms=[1.0, 2.0, 3.0, 4.0])
        result.failed("status 502")
        found = result.to_json()
        self.assertEqual((found["answers"], found["errors"], found["achieved_rps"]),
                         (4, 1, 2.0))
        self.assertEqual(found["error_examples"], ["status 502"])


class Upstream(http.server.BaseHTTPRequestHandler):
    """Answers with the request it got (method, path, headers, body) as JSON; 500 on /fail."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        answer = json.dumps({"method": self.command, "path": self.path,
                             "headers": {k.lower(): v for k, v in self.headers.items()},
                             "body": body.decode()}).encode()
        self.send_response(500 if self.path.startswith("/fail") else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Upstream-Only", "yes")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_PUT = do_POST  # noqa: N815

    def log_message(self, *args: Any) -> None:
        pass


def serve_upstream(case: SynchronousTestCase) -> int:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    case.addCleanup(thread.join, 5)
    case.addCleanup(server.server_close)
    case.addCleanup(server.shutdown)
    return int(server.server_address[1])


class BareChainTests(SynchronousTestCase):
    """B1 -> B2 -> a real upstream on loopback: what is forwarded, what comes back."""

    def setUp(self) -> None:
        self.upstream = serve_upstream(self)
        self.stack = procs.ProcessStack()
        self.addCleanup(self.stack.close)
        self.b1, self.b2 = procs.start_bare_chain(self.stack,
                                                  f"http://127.0.0.1:{self.upstream}")

    def test_forwards_method_path_body_and_content_type_only(self) -> None:
        assert self.b1.port is not None
        answer = procs.http_request(self.b1.port, "PUT", "/a/b?x=1&y=2", b'{"k":"v"}',
                                    {"content-type": "application/json", "x-secret": "s"})
        self.assertEqual(answer.status, 200)
        seen = json.loads(answer.body)
        self.assertEqual((seen["method"], seen["path"], seen["body"]),
                         ("PUT", "/a/b?x=1&y=2", '{"k":"v"}'))
        self.assertEqual(seen["headers"]["content-type"], "application/json")
        self.assertNotIn("x-secret", seen["headers"])  # no header copies
        self.assertEqual(answer.headers["content-type"], "application/json")
        self.assertNotIn("x-upstream-only", answer.headers)
        self.assertEqual(answer.headers["content-length"], str(len(answer.body)))

    def test_status_is_copied_and_nothing_is_logged(self) -> None:
        assert self.b1.port is not None
        answer = procs.http_request(self.b1.port, "POST", "/fail", b"x")
        self.assertEqual(answer.status, 500)
        self.assertEqual(self.b1.log_text() + self.b2.log_text(), "")


class SidecarConfTests(SynchronousTestCase):
    def test_certificate(self) -> None:
        cert_pem, key_pem = sidecar.self_signed()
        cert = x509.load_pem_x509_certificate(cert_pem)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertIn(sidecar.SERVER_NAME, names.get_values_for_type(x509.DNSName))
        key = serialization.load_pem_private_key(key_pem, None)
        self.assertEqual(key.public_key().public_numbers(),  # type: ignore[union-attr]
                         cert.public_key().public_numbers())  # type: ignore[union-attr]

    def test_confs(self) -> None:
        inner = sidecar.inner_conf(Path("/tmp/i"), 1, 2, Path("/c.pem"), Path("/k.pem"))
        self.assertIn("listen 127.0.0.1:1 ssl", inner)
        self.assertIn("ssl_protocols TLSv1.3;", inner)
        self.assertIn("server 127.0.0.1:2;", inner)
        outer = sidecar.outer_conf(Path("/tmp/o"), 3, 1, Path("/c.pem"))
        for line in ("proxy_pass https://inner;", "proxy_ssl_protocols TLSv1.3;",
                     "proxy_ssl_verify on;", "proxy_ssl_trusted_certificate /c.pem;",
                     f"proxy_ssl_name {sidecar.SERVER_NAME};"):
            self.assertIn(line, outer)
        for conf in (inner, outer):
            self.assertIn("worker_processes 1;", conf)
            self.assertIn(f"keepalive {sidecar.KEEPALIVE_POOL};", conf)
            self.assertIn("proxy_http_version 1.1;", conf)
            self.assertIn('proxy_set_header Connection "";', conf)
            self.assertNotIn("/var/", conf)


class SidecarProcessTests(SynchronousTestCase):
    def test_pair(self) -> None:
        nginx = procs.find_nginx(lambda _: None, install=False)
        if nginx is None:
            raise self.skipTest("nginx is not installed")
        stack = procs.ProcessStack()
        self.addCleanup(stack.close)
        upstream = procs.start_upstream(stack, "builtin", None, 1024)
        assert upstream.port is not None
        outer, inner = procs.start_sidecar_pair(stack, nginx, upstream.port)
        assert outer.port is not None and inner.port is not None
        answer = procs.http_request(outer.port, "POST", "/bench/echo?size=1k",
                                    runmod.request_body(), {"content-type": "application/json"})
        self.assertEqual((answer.status, answer.body), (200, response_body(1024)))
        # The hop between the two speaks TLS 1.3 only, with the generated certificate.
        cert = stack.directory / "sidecar" / "sidecar-cert.pem"
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = True
        with socket.create_connection(("127.0.0.1", inner.port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=sidecar.SERVER_NAME) as tls:
                self.assertEqual(tls.version(), "TLSv1.3")
        old = ssl.create_default_context(cafile=str(cert))
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection(("127.0.0.1", inner.port), timeout=5) as raw:
            with self.assertRaises(ssl.SSLError):
                old.wrap_socket(raw, server_hostname=sidecar.SERVER_NAME).close()


    def test_an_untrusted_certificate_is_refused(self) -> None:
        nginx = procs.find_nginx(lambda _: None, install=False)
        if nginx is None:
            raise self.skipTest("nginx is not installed")
        stack = procs.ProcessStack()
        self.addCleanup(stack.close)
        upstream = procs.start_upstream(stack, "builtin", None, 1024)
        assert upstream.port is not None
        stranger, _ = sidecar.self_signed()
        outer, _ = procs.start_sidecar_pair(stack, nginx, upstream.port, trusted=stranger)
        assert outer.port is not None
        answer = procs.http_request(outer.port, "POST", "/bench/echo?size=1k",
                                    runmod.request_body(), {"content-type": "application/json"})
        self.assertEqual(answer.status, 502)
        log = (stack.directory / "sidecar" / "sidecar-out" / "nginx-error.log").read_text()
        self.assertIn("certificate", log)


class LightLoadSocketTests(SynchronousTestCase):
    """The light-load client against a real upstream process on loopback."""

    def setUp(self) -> None:
        self.stack = procs.ProcessStack()
        self.addCleanup(self.stack.close)
        self.upstream = procs.start_upstream(self.stack, "builtin", None, 1024)
        self.request = lightload.build_request("/bench/echo?size=1k", runmod.request_body(), {})

    def test_sequential(self) -> None:
        assert self.upstream.port is not None
        found = lightload.run_sequential(self.upstream.port, self.request, 0.3).to_json()
        self.assertGreater(found["answers"], 0)
        self.assertEqual(found["errors"], 0)
        self.assertEqual(found["connections"], 1)

    def test_paced_sends_every_due_request(self) -> None:
        assert self.upstream.port is not None
        found = lightload.run_paced(self.upstream.port, self.request, 40, 3, 0.5).to_json()
        self.assertEqual((found["answers"], found["errors"]), (20, 0))
        self.assertEqual(found["offered_rps"], 40)

    def test_error_answers_are_errors_not_latencies(self) -> None:
        port = serve_upstream(self)
        request = lightload.build_request("/fail", b"{}", {})
        found = lightload.run_paced(port, request, 20, 2, 0.5).to_json()
        self.assertEqual((found["answers"], found["errors"]), (0, 10))
        self.assertEqual(found["error_examples"][0], "status 500")
        self.assertIsNone(found["latency_ms"]["p50"])

    def test_nothing_listening(self) -> None:
        port = procs.free_port()
        found = lightload.run_paced(port, self.request, 20, 2, 0.2).to_json()
        self.assertEqual((found["answers"], found["errors"]), (0, 4))


class MemoryTests(SynchronousTestCase):
    def test_rss(self) -> None:
        import os

        self.assertGreater(memory.rss_kib(os.getpid()), 0)
        self.assertEqual(memory.rss_kib(procs.free_port() * 1000 + 999_999), 0)  # no such pid
        self.assertEqual(memory.per_item(1000, 3000, 100), 20.0)
        self.assertIsNone(memory.per_item(1000, 3000, 0))

    def test_connections_held_open(self) -> None:
        stack = procs.ProcessStack()
        self.addCleanup(stack.close)
        upstream = procs.start_upstream(stack, "builtin", None, 1024)
        assert upstream.port is not None
        request = lightload.build_request("/bench/echo?size=1k", runmod.request_body(), {})
        opened: list[int] = []

        def count_connections() -> int:
            # the upstream's established connections to its port, seen from here
            text = Path("/proc/net/tcp").read_text()
            hex_port = f":{upstream.port:04X}"
            opened.append(sum(1 for line in text.splitlines()[1:]
                              if line.split()[1].endswith(hex_port)
                              and line.split()[3] == "01"))
            return opened[-1]

        found = memory.connections_figures([upstream.pid], [upstream.pid], upstream.port,
                                           request, 5)
        self.assertEqual((found["connections"], found["answers"], found["errors"]), (5, 5, 0))
        self.assertEqual(len(found["a_rss_kib"]), 2)
        # all closed again (not left to the garbage collector after asyncio.run)
        self.assertEqual(count_connections(), 0)
        import asyncio

        ok, errors, seen = asyncio.run(memory.hold_connections(upstream.port, request, 4,
                                                               count_connections))
        self.assertEqual((ok, errors), (4, 0))
        self.assertEqual(seen, 4)  # all four were open while measured


def light_document(**changes: Any) -> dict[str, Any]:
    """sample_document() plus the bare chain, the sidecar, light load and memory."""
    doc = sample_document()
    doc["targets"].insert(1, report.target_entry("sidecar", "nginx sidecar", True,
                                                 processes=["sidecar-out", "sidecar-in"]))
    doc["targets"].insert(2, report.target_entry("bare", "bare chain", True,
                                                 processes=["bare-b1", "bare-b2"]))
    for target in doc["targets"]:
        if target["name"] == "relay":
            target["processes"] = ["relay-a", "relay-b"]
    for c, bare, car in ((10, 1250.0, 9000.0), (50, 1500.0, 12000.0)):
        doc["runs"].append(run_json("bare", c, bare, 8.0))
        doc["runs"].append(run_json("sidecar", c, car, 1.0))
    for run in doc["runs"]:
        seconds = run["requests"] / 1000.0  # 1 ms of CPU per answer for everybody...
        if run["target"] == "relay":
            seconds *= 2  # ...and 2 ms for the relay
        run["cpu"] = dict(run["cpu"], elapsed_s=10.0,
                          processes_cores={name: seconds / 20.0 for name in
                                           ("relay-a", "relay-b", "bare-b1", "bare-b2",
                                            "sidecar-out", "sidecar-in")})

    def light(p50: float, p99: float, answers: int = 400, errors: int = 0) -> dict[str, Any]:
        return {"answers": answers, "errors": errors, "achieved_rps": answers / 2.0,
                "latency_ms": {"p50": p50, "p99": p99}, "cpu_ms_per_answer": 1.5,
                "rounds_p50_ms": [p50, p50 + 1]}
    section = {"rate_rps": 200.0, "connections": 20, "duration_s": 2.0, "reference": "direct",
               "targets": {"direct": {"sequential": light(0.3, 0.9), "paced": light(0.8, 2.0)},
                           "bare": {"sequential": light(1.3, 5.0), "paced": light(2.8, 9.0)},
                           "relay": {"sequential": light(4.3, 9.0),
                                     "paced": light(7.8, 30.0, 390, 3)}}}
    section["added"] = report.light_added(section)
    doc["light_load"] = section
    doc["memory"] = {"target": "relay", "note": "VmRSS deltas",
                     "connections": {"connections": 100, "answers": 100, "errors": 0,
                                     "a_kib_per_connection": 12.5, "b_kib_per_connection": 0.5,
                                     "pair_kib_per_connection": 13.0},
                     "pairs": {"pairs": 100, "created": 100, "problems": [],
                               "b_kib_per_pair": 2.0, "redis_kib_per_pair": 1.25}}
    doc.update(changes)
    return doc


class BaselinesReportTests(SynchronousTestCase):
    def test_against_the_bare_chain(self) -> None:
        text = report.format_report(light_document())
        self.assertIn("### Against the bare two-hop treq chain", text)
        header = next(line for line in text.splitlines()
                      if line.startswith("| c | direct req/s | nginx sidecar req/s"))
        self.assertIn("relay ÷ bare req/s", header)
        rows = table_rows(text[text.index("### Against the bare"):])
        c10 = rows[0]
        self.assertEqual(c10[1:6], ["40,000", "9,000", "1,250", "1,000", "500"])
        self.assertEqual(c10[7], "× 0.40")  # relay ÷ bare req/s: 500 / 1250
        self.assertEqual(c10[8], "n/a")  # relay (2 workers) ÷ bare: not available
        self.assertEqual(c10[9], "× 2.00")  # relay ÷ bare CPU per answer: 2 ms / 1 ms

    def test_no_bare_target_no_table(self) -> None:
        self.assertEqual(report.baselines_table(sample_document()), "")
        text = report.format_report(sample_document())
        self.assertIn("### Light load\n\nnot run.", text)
        self.assertIn("### Memory\n\nnot run.", text)

    def test_light_load_table(self) -> None:
        text = report.format_report(light_document())
        self.assertIn("### Light load: one request at a time, and paced at 200 req/s over 20 "
                      "connections", text)
        rows = {row[0]: row for row in table_rows(text[text.index("### Light load"):], "target")}
        self.assertEqual(rows["relay"][1:4], ["4.30", "9.00", "+4.00"])
        self.assertEqual(rows["relay"][5:9], ["195", "7.80", "30.00", "+7.00"])
        self.assertEqual(rows["bare chain"][3], "+1.00")
        self.assertEqual(rows["direct"][3], "+0.00")
        self.assertEqual(rows["relay"][10], "paced 3")
        self.assertIn("One-at-a-time p50 per round (ms): direct: 0.30 / 1.30", text)

    def test_light_added(self) -> None:
        added = light_document()["light_load"]["added"]
        self.assertAlmostEqual(added["relay"]["paced"]["p99"], 28.0)
        self.assertAlmostEqual(added["bare"]["sequential"]["p50"], 1.0)

    def test_light_cpu(self) -> None:
        result = {"answers": 500, "cpu": {"elapsed_s": 2.0,
                                          "processes_cores": {"a": 0.25, "b": 0.5}}}
        self.assertAlmostEqual(report.light_cpu_ms(result), 3.0)  # 1.5 CPU s / 500
        self.assertIsNone(report.light_cpu_ms({"answers": 0, "cpu": {}}))

    def test_memory_section(self) -> None:
        text = report.format_report(light_document())
        self.assertIn("per connection (100 keep-alive connections to relay A held open, "
                      "errors 0): relay A 12.5 KiB, relay B 0.5 KiB, pair 13.0 KiB", text)
        self.assertIn("per pair (100 of 100 pairs created at relay B): relay B 2.0 KiB, "
                      "Redis 1.2 KiB", text)
        skipped = report.format_report(light_document(memory={"skipped": "why"}))
        self.assertIn("### Memory\n\nskipped: why", skipped)

    def test_document_shape(self) -> None:
        doc = light_document()
        self.assertEqual(report.check_document(doc), [])
        del doc["light_load"]["targets"]["relay"]["paced"]["cpu_ms_per_answer"]
        self.assertEqual(report.check_document(doc),
                         ["light load relay paced lacks cpu_ms_per_answer"])

    def test_arguments(self) -> None:
        args = runmod.parse_args(["--quick"])
        self.assertEqual(args.levels, list(runmod.QUICK_LEVELS))
        self.assertEqual((args.memory_connections, args.memory_pairs),
                         (runmod.MEMORY_COUNTS[1],) * 2)
        args = runmod.parse_args([])
        self.assertEqual(args.levels, list(runmod.DEFAULT_LEVELS))
        self.assertEqual((args.light_rate, args.light_connections), (200.0, 20))
        args = runmod.parse_args(["--quick", "--levels", "5", "--memory-pairs", "0"])
        self.assertEqual((args.levels, args.memory_pairs), ([5], 0))
