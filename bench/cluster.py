"""Request latency through a relay pair on a Redis Cluster vs a single Redis, one run.

    .venv/bin/python -m bench.cluster [--bursts 20] [--size 50] [--rounds 2]

Per backend (a single ``redis-server``; a 3 masters + 3 replicas cluster
started on loopback) two ``twistd mterelay`` replicas share the store behind
a round-robin balancer; a ``RelayClient`` (4 pairs) in this process sends
bursts of concurrent requests to an in-process upstream.  The backends are
measured alternately, ``--rounds`` times each, in the same run; the table
gives the latency (p50/p90/p99 ms) of the burst requests (50 in flight at
once: mostly queueing on the shared cores), of ``--serial`` requests sent
one at a time (the per-request cost), and the failures (there should be
none).  The real processes are the ones the fault tests use
(tests/helpers/rediscluster.py, tests/helpers/redisserver.py, tests/helpers/clusterload.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import treq  # noqa: E402

from mterelay.client import RelayClient  # noqa: E402
from mterelay.wiretap import WireTap  # noqa: E402
from tests.helpers.clusterload import ClusterLoad, summary  # noqa: E402
from tests.helpers.rediscluster import RedisCluster  # noqa: E402
from tests.helpers.redisserver import RedisServer  # noqa: E402
from tests.helpers.support import RelayProcess  # noqa: E402

SECRET = "bench-client-id-secret-0123456789abcdef"


class _Upstream(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return b'{"ok":true}'


@defer.inlineCallbacks
def measure(name: str, url: str, upstream: int, args: Any, logs: str) -> Any:
    env = {"UPSTREAM": f"http://127.0.0.1:{upstream}", "CLIENT_ID_SECRET": SECRET,
           "REDIS_URL": url, "LOG_LEVEL": "warning"}
    relays = [RelayProcess.start(env, os.path.join(logs, f"{name}-{i}.log")) for i in range(2)]
    try:
        for relay in relays:
            relay.wait_listening()
        tap = WireTap([relay.port for relay in relays])
        yield defer.ensureDeferred(tap.listen())
        tap.record = False
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = args.size
        client = RelayClient(reactor, agent=Agent(reactor, pool=pool), pairs=4)
        warm = ClusterLoad(client, tap.url, bursts=2, size=args.size, gap=0.5,
                           prefix="/warm")
        yield warm.run()
        load = ClusterLoad(client, tap.url, bursts=args.bursts, size=args.size,
                           gap=args.gap)
        started = reactor.seconds()
        outcomes, _ = yield load.run()
        elapsed = reactor.seconds() - started
        result = summary(outcomes)
        result["elapsed_s"] = round(elapsed, 2)
        result["rps"] = round(len(outcomes) / elapsed, 1)
        serial = []
        for i in range(args.serial):
            t = reactor.seconds()
            response = yield client.request("GET", f"{tap.url}/serial/{i}")
            yield treq.content(response)
            if response.code == 200:
                serial.append(reactor.seconds() - t)
        serial.sort()
        if serial:
            result["serial_ms"] = {"n": len(serial),
                                   "p50": round(1000 * serial[len(serial) // 2], 2),
                                   "p90": round(1000 * serial[int(len(serial) * 0.9)], 2),
                                   "p99": round(1000 * serial[int(len(serial) * 0.99)], 2)}
        yield pool.closeCachedConnections()
        yield tap.port.stopListening()
        return result
    finally:
        for relay in relays:
            relay.stop()


@defer.inlineCallbacks
def main(args: Any) -> Any:
    logs = tempfile.mkdtemp(prefix="mterelay-bench-cluster-")
    single = RedisServer()
    cluster = RedisCluster()
    site = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(_Upstream()))
    results: dict[str, list] = {"single Redis": [], "Redis Cluster 3+3": []}
    try:
        single.start()
        cluster.start()
        backends = {"single Redis": single.url, "Redis Cluster 3+3": cluster.url}
        for round_ in range(args.rounds):
            for name, url in backends.items():
                result = yield measure(name.split()[0] + str(round_), url,
                                       site.getHost().port, args, logs)
                results[name].append(result)
                print(json.dumps({"backend": name, "round": round_, **result}), flush=True)
    finally:
        single.cleanup()
        cluster.cleanup()
        yield site.stopListening()
    print()
    print(f"{'backend':<20} {'round':>5} {'burst p50/p90/p99 ms':>22} "
          f"{'serial p50/p90/p99 ms':>23} {'failed':>6}")
    for name, rows in results.items():
        for round_, row in enumerate(rows):
            lat, ser = row.get("latency_ms", {}), row.get("serial_ms", {})
            burst = "/".join(str(lat.get(k, "-")) for k in ("p50", "p90", "p99"))
            one = "/".join(str(ser.get(k, "-")) for k in ("p50", "p90", "p99"))
            print(f"{name:<20} {round_:>5} {burst:>22} {one:>23} {row['failed']:>6}")


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bursts", type=int, default=20)
    parser.add_argument("--size", type=int, default=50, help="concurrent requests per burst")
    parser.add_argument("--gap", type=float, default=0.5, help="seconds between bursts")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serial", type=int, default=300,
                        help="then this many requests one at a time")
    args = parser.parse_args()
    task.react(lambda _reactor: main(args))


if __name__ == "__main__":
    run()
