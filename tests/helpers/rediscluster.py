"""A real, throw-away Redis Cluster for the test suite: 3 masters + 3 replicas.

Six ``redis-server --cluster-enabled yes`` processes (``tests.helpers.redisserver``)
on free 127.0.0.1 ports in temporary directories, joined by ``redis-cli
--cluster create ... --cluster-replicas 1 --cluster-yes``; ``start()``
returns once every node reports ``cluster_state:ok`` and agrees on who owns
every slot.  ``cluster-node-timeout`` is short (1 s) so that a killed master
is failed over within a few seconds.  Blocking, like ``RedisServer``: fine
from ``setUpClass`` and between test steps.

Faults, all with real processes: ``failover(master)`` (``CLUSTER FAILOVER``
on its replica), ``kill_master(master)`` (SIGKILL; the replica takes over by
itself) and ``restart(node)`` (it rejoins as a replica), ``migrate_slot``
(``CLUSTER SETSLOT … IMPORTING/MIGRATING``, ``MIGRATE`` of its keys, then
``SETSLOT … NODE``: the steps ``redis-cli --cluster reshard`` takes, with a
pause in the middle so ``ASK`` redirects really happen).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import time
from typing import Any

from tests.helpers.redisserver import RedisReplyError, RedisServer, SkipRedis

__all__ = ["RedisCluster", "find_redis_cli", "shared_cluster", "started_cluster"]

#: name -> cluster started by shared_cluster (trial has no setUpClass)
_SHARED: dict[str, RedisCluster] = {}


def find_redis_cli() -> str:
    """redis-cli from PATH; a skip, or a failure in CI (MTERELAY_REQUIRE_REDIS_CLUSTER=1)."""
    found = shutil.which("redis-cli")
    if not found:
        why = "no redis-cli on PATH (Debian: apt-get install redis-tools)"
        if os.environ.get("MTERELAY_REQUIRE_REDIS_CLUSTER") == "1":
            raise RuntimeError(why)
        raise SkipRedis(why)
    return found


def shared_cluster(name: str, **options: Any) -> "RedisCluster":
    """The cluster ``name``, started on first use and stopped when the process exits.

    Starting six servers and joining them takes a second or two: tests share
    one per name (trial runs no setUpClass).  A test that breaks the
    cluster must leave it healthy again (``restart`` the node it killed).
    """
    cluster = _SHARED.get(name)
    if cluster is None or not cluster.healthy():
        if cluster is not None:
            cluster.cleanup()
        cluster = RedisCluster(**options)
        cluster.start()
        _SHARED[name] = cluster
        atexit.register(cluster.cleanup)
    return cluster


def started_cluster(name: str, **options: Any) -> "RedisCluster":
    """``shared_cluster`` for a test: skipped (SkipTest) when there is no redis-server or redis-cli."""
    from twisted.trial.unittest import SkipTest

    try:
        return shared_cluster(name, **options)
    except SkipRedis as error:
        raise SkipTest(str(error)) from None


class RedisCluster:
    """Six nodes; see the module docstring."""

    def __init__(self, masters: int = 3, node_timeout_ms: int = 1000,
                 password: str | None = None) -> None:
        self.cli = find_redis_cli()
        self.password = password
        auth = ("--masterauth", password) if password else ()
        self.nodes = [
            RedisServer(password=password, extra_args=auth + (
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                # a replica may take over however long it was cut off
                "--cluster-replica-validity-factor", "0",
                "--appendonly", "no"))
            for _ in range(2 * masters)]
        self.masters_wanted = masters

    @property
    def url(self) -> str:
        auth = f"default:{self.password}@" if self.password else ""
        return f"redis+cluster://{auth}127.0.0.1:{self.nodes[0].port}"

    def start(self, timeout: float = 30.0) -> None:
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            subprocess.run(
                [self.cli, *(("--no-auth-warning", "-a", self.password) if self.password
                             else ()),
                 "--cluster", "create", *addresses, "--cluster-replicas", "1",
                 "--cluster-yes"],
                check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, timeout=60)
            self.wait_ok(timeout, replicas=False)
            # CLUSTER SLOTS lists a replica only once its replication offset
            # is above 0: one write per master gets them there
            for master in self.masters():
                first = next(r[0] for r in self.slot_ranges() if r[2] == master.port)
                key = next(f"warm{i}" for i in range(100000)
                           if master.command("CLUSTER", "KEYSLOT", f"warm{i}") == first)
                master.command("SET", key, "1")
                master.command("DEL", key)
            self.wait_ok(timeout)
        except BaseException:
            self.cleanup()
            raise

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()

    def healthy(self) -> bool:
        """Every node up and the cluster settled (a fault test may have broken it)."""
        if len(self.alive()) != len(self.nodes):
            return False
        try:
            self.wait_ok(timeout=5)
        except AssertionError:
            return False
        return True

    # -- looking ----------------------------------------------------------

    def node_at(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def alive(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.process is not None]

    def info(self, node: RedisServer, section: str) -> dict[str, str]:
        text = node.command("INFO", section).decode()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def masters(self) -> list[RedisServer]:
        """Live nodes that own slots, in port order."""
        owners = {port for _, _, port in self.slot_ranges()}
        return [node for node in self.alive() if node.port in owners]

    def slot_ranges(self, node: RedisServer | None = None) -> list[tuple[int, int, int]]:
        """(first, last, master port) as ``node`` (default: any live node) sees them."""
        node = node or self.alive()[0]
        return sorted((first, last, int(master[1]))
                      for first, last, master, *_ in node.command("CLUSTER", "SLOTS"))

    def replica_of(self, master: RedisServer) -> RedisServer:
        master_id = master.command("CLUSTER", "MYID").decode()
        for node in self.alive():
            if node is master:
                continue
            for line in node.command("CLUSTER", "NODES").decode().splitlines():
                fields = line.split()
                if "myself" in fields[2] and "slave" in fields[2] and fields[3] == master_id:
                    return node
        raise AssertionError(f"no replica of {master.port}")

    def owner_of_slot(self, slot: int) -> RedisServer:
        for first, last, port in self.slot_ranges():
            if first <= slot <= last:
                return self.node_at(port)
        raise AssertionError(f"nobody owns slot {slot}")

    def owner_of(self, key: bytes | str) -> RedisServer:
        return self.owner_of_slot(self.alive()[0].command("CLUSTER", "KEYSLOT", key))

    def command(self, *args: Any) -> Any:
        """One command on the master owning its key (args[1]), like a cluster client.

        A command without a key (FLUSHALL) runs on every master; the first reply.
        """
        if len(args) == 1:
            return self.on_masters(*args)[0]
        return self.owner_of(args[1]).command(*args)

    def on_masters(self, *args: Any) -> list[Any]:
        return [node.command(*args) for node in self.masters()]

    def wait_ok(self, timeout: float = 30.0, masters: int | None = None,
                replicas: bool = True) -> None:
        """Until every live node says cluster_state:ok and they agree on the slot map."""
        masters = self.masters_wanted if masters is None else masters
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                states = {self.info_cluster(node)["cluster_state"] for node in self.alive()}
                maps = {tuple(self.slot_ranges(node)) for node in self.alive()}
                # with every node up, every master's replica must be in service
                # (CLUSTER SLOTS lists a replica only once it has synced)
                replicated = not replicas or len(self.alive()) < 2 * masters or all(
                    len(item) > 3 for item in self.alive()[0].command("CLUSTER", "SLOTS"))
                if states == {"ok"} and len(maps) == 1 and replicated:
                    ranges = next(iter(maps))
                    covered = sum(last - first + 1 for first, last, _ in ranges)
                    if covered == 16384 and len({p for _, _, p in ranges}) == masters:
                        return
                last = (states, len(maps))
            except (OSError, RedisReplyError, ValueError) as error:
                last = error
            time.sleep(0.05)
        raise AssertionError(f"the Redis Cluster did not settle in {timeout} s: {last}")

    def info_cluster(self, node: RedisServer) -> dict[str, str]:
        text = node.command("CLUSTER", "INFO").decode()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    # -- faults -----------------------------------------------------------

    def failover(self, master: RedisServer, timeout: float = 20.0) -> RedisServer:
        """Graceful CLUSTER FAILOVER on ``master``'s replica; the promoted node."""
        replica = self.replica_of(master)
        replica.command("CLUSTER", "FAILOVER")
        self._wait_promoted(replica, timeout)
        return replica

    def kill_master(self, master: RedisServer, timeout: float = 20.0) -> RedisServer:
        """SIGKILL ``master``; wait until its replica is promoted; the promoted node."""
        replica = self.replica_of(master)
        master.kill()
        self._wait_promoted(replica, timeout)
        return replica

    def restart(self, node: RedisServer, timeout: float = 30.0) -> None:
        """Start a killed node again (same port, same nodes.conf): it rejoins as a replica."""
        node.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.info(node, "replication").get("role") == "slave" \
                        and self.info_cluster(node)["cluster_state"] == "ok":
                    break
            except (OSError, RedisReplyError):
                pass
            time.sleep(0.05)
        self.wait_ok(timeout)

    def _wait_promoted(self, replica: RedisServer, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.info(replica, "replication").get("role") == "master":
                    break
            except (OSError, RedisReplyError):
                pass
            time.sleep(0.02)
        else:
            raise AssertionError(f"{replica.port} was not promoted in {timeout} s")
        self.wait_ok(timeout)

    def migrate_slot(self, slot: int, target: RedisServer, pause: float = 0.0,
                     batch: int = 10) -> int:
        """Move ``slot`` to ``target`` as ``redis-cli --cluster reshard`` does; keys moved.

        ``pause`` seconds between marking the slot MIGRATING/IMPORTING and
        moving its keys, and between batches: meanwhile a client sees ``ASK``
        for keys already moved (or new).
        """
        source = self.owner_of_slot(slot)
        if source is target:
            return 0
        source_id = source.command("CLUSTER", "MYID").decode()
        target_id = target.command("CLUSTER", "MYID").decode()
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        time.sleep(pause)
        moved = 0
        while True:
            keys = source.command("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            time.sleep(pause)
        for node in self.masters() + [target]:
            node.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_ok(masters=len({p for *_, p in self.slot_ranges(target)}))
        return moved
