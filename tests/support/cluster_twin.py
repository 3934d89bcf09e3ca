"""A Redis Cluster's twin for unit tests: nodes that parse the RESP the store sends and answer HMGET,
ASKING, CLUSTER SLOTS and PING from one shared slot map, with MOVED and ASK where the map says so."""

from __future__ import annotations

from dataclasses import dataclass, field

import hiredis

from worker.errors import FeatureStoreUnavailable
from worker.features.redis_cluster import SLOTS, key_slot
from worker.features.redis_store import RedisAddress


@dataclass
class ClusterTwin:
    """Nodes by port; ``owner`` of each slot (a master's port); ``replica_of`` a master's replica port;
    ``asking`` slots being migrated (slot -> target port); ``data`` every hash, wherever it lives."""

    ports: list[int]
    owner: list[int] = field(default_factory=list)
    replica_of: dict[int, int] = field(default_factory=dict)
    asking: dict[int, int] = field(default_factory=dict)
    data: dict[bytes, dict[bytes, bytes]] = field(default_factory=dict)
    error: str | None = None  # every HMGET answered with this error (CLUSTERDOWN ...)
    bounce: set[int] = field(default_factory=set)  # slots every node says the next node owns
    enabled: bool = True  # False: plain servers, answering CLUSTER with an error
    log: list[tuple[str, int]] = field(default_factory=list)  # ("send" | "receive" | "close", port)
    nodes: dict[int, TwinNode] = field(default_factory=dict)

    def __post_init__(self) -> None:
        share = SLOTS // len(self.ports) + 1
        self.owner = [self.ports[slot // share] for slot in range(SLOTS)]

    def connect(self, address: RedisAddress) -> TwinNode:
        node = self.nodes[address.port] = TwinNode(self, address.port)
        return node

    def move(self, slot: int, port: int) -> None:
        self.owner[slot] = port

    def slots_reply(self) -> list[object]:
        ranges: list[object] = []
        start = 0
        for slot in range(1, SLOTS + 1):
            if slot == SLOTS or self.owner[slot] != self.owner[start]:
                port = self.owner[start]
                replicas = [[b"127.0.0.1", self.replica_of[port], b"id"]] if port in self.replica_of else []
                if port:  # 0: no node serves these slots
                    ranges.append([start, slot - 1, [b"127.0.0.1", port, b"id"], *replicas])
                start = slot
        return ranges

    def commands_to(self, port: int) -> list[list[bytes]]:
        return self.nodes[port].commands


class TwinNode:
    """One node's connection: ``send`` queues the answers, ``receive`` hands them out; ``down`` refuses."""

    def __init__(self, cluster: ClusterTwin, port: int) -> None:
        self.cluster, self.port = cluster, port
        self.pending: list[object] = []
        self.commands: list[list[bytes]] = []
        self.down = False
        self._asking = False

    def send(self, payload: bytes) -> None:
        if self.down:
            raise FeatureStoreUnavailable(f"Redis at 127.0.0.1:{self.port}: connection refused")
        self.cluster.log.append(("send", self.port))
        reader = hiredis.Reader()
        reader.feed(payload)
        while (command := reader.gets()) is not False:
            assert isinstance(command, list)
            self.commands.append(command)
            self.pending.append(self._answer(command))

    def receive(self, n_replies: int) -> list[object]:
        self.cluster.log.append(("receive", self.port))
        assert len(self.pending) >= n_replies, "asked for replies never sent for"
        out, self.pending = self.pending[:n_replies], self.pending[n_replies:]
        return out

    def round_trip(self, payload: bytes, n_replies: int) -> list[object]:
        self.send(payload)
        return self.receive(n_replies)

    def close(self) -> None:
        self.cluster.log.append(("close", self.port))
        self.pending = []

    def _answer(self, command: list[bytes]) -> object:
        name = command[0].upper()
        if name == b"ASKING":
            self._asking = True
            return b"OK"
        if name == b"PING":
            return b"PONG"
        if name == b"CLUSTER":
            enabled = self.cluster.enabled
            return self.cluster.slots_reply() if enabled else hiredis.ReplyError("ERR This instance has cluster "
                                                                                 "support disabled")
        asking, self._asking = self._asking, False
        return self._hmget(command[1], command[2:], asking)

    def _hmget(self, key: bytes, fields: list[bytes], asking: bool) -> object:
        c, slot = self.cluster, key_slot(key)
        if c.error:
            return hiredis.ReplyError(c.error)
        if slot in c.bounce:
            after = c.ports[(c.ports.index(self.port) + 1) % len(c.ports)]
            return hiredis.ReplyError(f"MOVED {slot} 127.0.0.1:{after}")
        migrating_here = asking and c.asking.get(slot) == self.port
        serves = c.owner[slot] == self.port or c.replica_of.get(c.owner[slot]) == self.port
        if not migrating_here and not serves:
            return hiredis.ReplyError(f"MOVED {slot} 127.0.0.1:{c.owner[slot]}")
        if slot in c.asking and not migrating_here:
            return hiredis.ReplyError(f"ASK {slot} 127.0.0.1:{c.asking[slot]}")
        row = c.data.get(key, {})
        return [row.get(f) for f in fields]
