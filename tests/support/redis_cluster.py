"""A real Redis Cluster for tests and benchmarks: ``redis-server --cluster-enabled yes`` processes on free
loopback ports, joined by ``redis-cli --cluster create`` (3 masters, a replica each by default)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from worker.devtools.local import LocalRedis, free_ports
from worker.errors import StartupError

_PORT_ATTEMPTS = 3


class LocalRedisCluster:
    """``masters`` masters with ``replicas`` replicas each; a low ``node_timeout_ms`` makes a killed
    master's replica take over within a few seconds."""

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> None:
        for exe in ("redis-server", "redis-cli"):
            if shutil.which(exe) is None:
                raise RuntimeError(f"{exe} is not installed (apt-get install redis-server)")
        self.dir = Path(tempfile.mkdtemp(prefix="test-redis-cluster-"))
        self.node_timeout_ms = node_timeout_ms
        self.bus_ports: dict[int, int] = {}  # the cluster bus port of each node's port
        count = masters * (1 + replicas)
        ports = free_ports(2 * count)
        self.nodes = {port: self._node(port, bus) for port, bus in zip(ports[:count], ports[count:], strict=True)}
        self.replicas = replicas
        self.n_masters = masters

    def _node(self, port: int, bus_port: int) -> LocalRedis:
        # The bus port is port + 10000 unless given: free ports are often above 55535, where that overflows.
        self.bus_ports[port] = bus_port
        options = ("--cluster-enabled", "yes", "--cluster-port", str(bus_port),
                   "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", str(self.node_timeout_ms),
                   "--repl-diskless-sync-delay", "0")
        return LocalRedis(port, self.dir / f"redis-{port}.log", self.dir, options)

    def _started(self, port: int, node: LocalRedis) -> tuple[int, LocalRedis]:
        """``node`` running, on ports of its own: free ports are free when chosen, and another process's
        connection can take one before the node binds it (seen once in CI: "bind: Address already in
        use" for a bus port), so such a node starts again on fresh ones."""
        for _ in range(_PORT_ATTEMPTS - 1):
            try:
                return port, node.start()
            except StartupError as exc:
                if "Address already in use" not in str(exc):
                    raise
            port, bus = free_ports(2)
            node = self._node(port, bus)
        return port, node.start()

    @property
    def ports(self) -> list[int]:
        return list(self.nodes)

    @property
    def url(self) -> str:
        """Seed nodes: every node, so a client finds one alive whichever is killed."""
        return "redis://" + ",".join(f"127.0.0.1:{port}" for port in self.nodes) + "/0"

    def start(self) -> LocalRedisCluster:
        self.nodes = dict(self._started(port, node) for port, node in self.nodes.items())
        addresses = [f"127.0.0.1:{port}" for port in self.nodes]
        subprocess.run(["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas),
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        self.wait_ok()
        return self

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.ports[0])

    def node_client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every running node says ``cluster_state:ok`` and counts ``masters`` running masters."""
        deadline = time.monotonic() + timeout_s
        while not self._settled():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster is not ok after {timeout_s:.0f}s (logs in {self.dir})")
            time.sleep(0.1)

    def _settled(self) -> bool:
        for port in self.running():
            try:
                with self.node_client(port) as client:
                    info: Any = client.execute_command("CLUSTER", "INFO")
                    roles = [self.role_of(port, other) for other in self.running()]
            except redis.RedisError:
                return False
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text or roles.count("master") != self.n_masters:
                return False
        return True

    def running(self) -> list[int]:
        return [port for port, node in self.nodes.items() if node.running()]

    def role_of(self, asked: int, port: int) -> str:
        """``master`` or ``slave``, as the node on ``asked`` sees the one on ``port`` (``fail`` if it is failed)."""
        with self.node_client(asked) as client:
            nodes: Any = client.execute_command("CLUSTER", "NODES")
        text = nodes.decode() if isinstance(nodes, bytes) else str(nodes)
        for line in text.splitlines():
            fields = line.split()
            if fields[1].split("@")[0].endswith(f":{port}"):
                flags = fields[2].split(",")
                return "fail" if "fail" in flags else ("master" if "master" in flags else "slave")
        return "unknown"

    def masters(self) -> list[int]:
        return [port for port in self.running() if self._role(port) == "master"]

    def _role(self, port: int) -> str:
        with self.node_client(port) as client:
            role: Any = client.execute_command("ROLE")
        return str(role[0].decode() if isinstance(role[0], bytes) else role[0])

    def wait_replicated(self, timeout_s: float = 20.0) -> None:
        """Until every replica has what its master has (replication is asynchronous)."""
        deadline = time.monotonic() + timeout_s
        while not all(self._replicas_caught_up(port) for port in self.masters()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"replicas still behind after {timeout_s:.0f}s")
            time.sleep(0.05)

    def _replicas_caught_up(self, master: int) -> bool:
        with self.node_client(master) as client:
            info: Any = client.info("replication")
        slaves = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        return len(slaves) >= self.replicas and all(s["offset"] >= info["master_repl_offset"] for s in slaves)

    def kill(self, port: int) -> None:
        """SIGKILL: the node vanishes as in a crash, without a word to the others."""
        self.nodes[port].kill()

    def close(self) -> None:
        for node in self.nodes.values():
            node.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def hashes(url: str, chunk: int = 1000) -> Iterator[dict[str, Any]]:
    """Every hash of the single Redis at ``url``, as ``worker features load`` items (``{"key", "fields"}``)."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        keys = list(client.scan_iter(count=chunk))
        for start in range(0, len(keys), chunk):
            pipe = client.pipeline(transaction=False)
            for key in keys[start:start + chunk]:
                pipe.hgetall(key)
            yield from ({"key": key, "fields": fields} for key, fields in zip(keys[start:start + chunk],
                                                                               pipe.execute(), strict=True))
    finally:
        client.close()


def dump_hashes(url: str, path: Path) -> int:
    """Every hash of the single Redis at ``url`` as ``worker features load`` JSON lines in ``path``; how many."""
    n = 0
    with path.open("w") as out:
        for item in hashes(url):
            out.write(json.dumps(item) + "\n")
            n += 1
    return n
