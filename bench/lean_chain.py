"""Two-hop proxy chains that differ only in their HTTP client: lean agent vs treq vs Agent.

Each hop is a twisted.web ``Site`` with one leaf Resource that forwards the
request body (1 KiB) to the next hop and answers with the whole response
body: the bare chain of issue 18, with nothing but the client changed.

* ``treq``  - ``treq.request`` over a persistent ``HTTPConnectionPool``;
* ``agent`` - Twisted's ``Agent`` on the same pool, with the same body
  producer and ``readBody`` as the lean variant (isolates the client);
* ``lean``  - :class:`mterelay.http.leanclient.LeanAgent`.

Run ``python bench/lean_chain.py [--rounds N] [--duration S]``: it starts nginx
as the upstream, then per round and per variant two hop processes, wrk
``-t1 -c50`` (POST 1 KiB) and wrk ``-t1 -c1`` (one request at a time), and
prints req/s, CPU ms per answer (both hops, from /proc) and latencies.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = ("treq", "agent", "lean")


# ------------------------------------------------------------------ the hop process

def hop(port: int, upstream: str, kind: str) -> None:
    from twisted.internet import defer, reactor
    from twisted.internet.defer import succeed
    from twisted.web.client import Agent, HTTPConnectionPool, readBody
    from twisted.web.http_headers import Headers
    from twisted.web.iweb import IBodyProducer
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site
    from zope.interface import implementer

    @implementer(IBodyProducer)
    class Bytes:
        def __init__(self, data: bytes) -> None:
            self.data, self.length = data, len(data)

        def startProducing(self, consumer: Any) -> Any:  # noqa: N802
            consumer.write(self.data)
            return succeed(None)

        def pauseProducing(self) -> None:  # noqa: N802
            pass

        def resumeProducing(self) -> None:  # noqa: N802
            pass

        def stopProducing(self) -> None:  # noqa: N802
            pass

    target = upstream.rstrip("/").encode()
    if kind == "treq":
        import treq
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 64

        def send(method: bytes, uri: bytes, body: bytes) -> Any:
            d = treq.request(method.decode(), (target + uri).decode(), data=body or None,
                             pool=pool, allow_redirects=False)
            return d.addCallback(lambda r: r.content().addCallback(lambda b: (r.code, b)))
    else:
        if kind == "agent":
            pool = HTTPConnectionPool(reactor, persistent=True)
            pool.maxPersistentPerHost = 64
            agent: Any = Agent(reactor, pool=pool)
        else:
            from mterelay.http.leanclient import lean_agent
            agent, _ = lean_agent(reactor, 64, 240, 10)

        def send(method: bytes, uri: bytes, body: bytes) -> Any:
            d = agent.request(method, target + uri, Headers(), Bytes(body) if body else None)
            return d.addCallback(lambda r: readBody(r).addCallback(lambda b: (r.code, b)))

    class Forward(Resource):
        isLeaf = True

        def render(self, request: Any) -> Any:
            gone: list[bool] = []
            request.notifyFinish().addErrback(lambda _: gone.append(True))

            def done(result: Any) -> None:
                if gone:
                    return  # wrk hung up at the end of its run
                code, body = result
                request.setResponseCode(code)
                request.setHeader(b"content-length", b"%d" % len(body))
                request.write(body)
                request.finish()

            def failed(failure: Any) -> None:
                if gone:
                    return
                request.setResponseCode(502)
                request.finish()

            send(request.method, request.uri, request.content.read()).addCallbacks(done, failed)
            return NOT_DONE_YET

    site = Site(Forward())
    site.log = lambda request: None  # no access lines: the bare chain
    reactor.listenTCP(port, site, interface="127.0.0.1", backlog=512)
    defer.setDebugging(False)
    reactor.run()


# ------------------------------------------------------------------ the driver

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never listened")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, connections: int, duration: int) -> dict[str, Any]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
                          "-s", os.path.join(HERE, "post.lua"), url, "--", "body=1024"],
                         capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    return json.loads(line[len("WRKJSON "):])


def start_nginx(port: int, directory: str) -> subprocess.Popen[bytes]:
    body = "x" * 1024
    conf = os.path.join(directory, "nginx.conf")
    with open(conf, "w") as handle:
        handle.write(f"""daemon off; worker_processes 1; pid {directory}/nginx.pid;
error_log {directory}/error.log; events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {directory};
  server {{ listen 127.0.0.1:{port}; keepalive_requests 1000000;
    location / {{ return 200 "{body}"; }} }} }}
""")
    process = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-c", conf,
                                "-p", directory])
    wait_port(port)
    return process


def measure(kind: str, upstream: str, duration: int) -> dict[str, Any]:
    p2, p1 = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
    procs = [subprocess.Popen([sys.executable, __file__, "hop", str(p2), upstream, kind],
                              env=env)]
    procs.append(subprocess.Popen([sys.executable, __file__, "hop", str(p1),
                                   f"http://127.0.0.1:{p2}", kind], env=env))
    try:
        wait_port(p1)
        wait_port(p2)
        url = f"http://127.0.0.1:{p1}/echo"
        wrk(url, 10, 2)  # warm the pools and the code
        before = sum(cpu_seconds(p.pid) for p in procs)
        loaded = wrk(url, 50, duration)
        cpu = sum(cpu_seconds(p.pid) for p in procs) - before
        single = wrk(url, 1, max(3, duration // 2))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
    answers = loaded["requests"]
    errors = sum(loaded["errors"].values()) + sum(single["errors"].values())
    return {"kind": kind, "rps": answers / (loaded["duration_us"] / 1e6),
            "cpu_ms": 1000 * cpu / max(answers, 1), "p50_c50_ms": loaded["latency_us"]["p50"] / 1e3,
            "p50_c1_ms": single["latency_us"]["p50"] / 1e3,
            "p99_c1_ms": single["latency_us"]["p99"] / 1e3, "errors": errors}


def main(argv: list[str]) -> int:
    if argv[1:2] == ["hop"]:
        hop(int(argv[2]), argv[3], argv[4])
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=10)
    args = parser.parse_args(argv[1:])
    directory = tempfile.mkdtemp(prefix="lean-chain-")
    port = free_port()
    nginx = start_nginx(port, directory)
    upstream = f"http://127.0.0.1:{port}"
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    direct: list[float] = []
    try:
        for round_ in range(args.rounds):
            direct.append(wrk(upstream + "/", 1, 3)["latency_us"]["p50"] / 1e3)
            for kind in KINDS if round_ % 2 == 0 else reversed(KINDS):
                row = measure(kind, upstream, args.duration)
                rows[kind].append(row)
                print(json.dumps({"round": round_ + 1, **row}), flush=True)
    finally:
        nginx.terminate()
        nginx.wait()
    print(f"\ndirect nginx, one at a time: median p50 {statistics.median(direct):.3f} ms")
    print(f"{'client':6} {'req/s c=50':>11} {'CPU ms/answer':>14} {'p50 c=50 ms':>12} "
          f"{'p50 c=1 ms':>11} {'p99 c=1 ms':>11} {'errors':>7}")
    for kind in KINDS:
        med = {key: statistics.median(r[key] for r in rows[kind])
               for key in ("rps", "cpu_ms", "p50_c50_ms", "p50_c1_ms", "p99_c1_ms")}
        errors = sum(r["errors"] for r in rows[kind])
        print(f"{kind:6} {med['rps']:11.0f} {med['cpu_ms']:14.3f} {med['p50_c50_ms']:12.2f} "
              f"{med['p50_c1_ms']:11.2f} {med['p99_c1_ms']:11.2f} {errors:7d}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
