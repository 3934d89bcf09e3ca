"""Redis Cluster feature store: the fast client's HMGET pipelines, one per node, read from the cluster's slot map.

A key belongs to a hash slot (CRC16 of the key, or of its ``{hash tag}``, modulo 16384) and a slot to
the node that CLUSTER SLOTS names. A batch sends one pipeline to every node it touches before it
reads any reply, so the nodes work at once without threads, and the replies are put back in
request order. Redirects are followed the way the cluster specification asks: ``MOVED`` (the slot
has a new owner) re-reads the slot map and resends to the named node; ``ASK`` (the slot is being
migrated) sends ``ASKING`` and the command to the target, once. Anything else that says the cluster
cannot answer now (``CLUSTERDOWN``, ``TRYAGAIN``, a lost connection) is ``FeatureStoreUnavailable``:
the runner holds the batch, and the next attempt starts from a fresh slot map. redis-py's
``RedisCluster`` does all this too, but through its pipeline, which costs about four times as much
per command; the tools (``features load``, the demo) use it, the hot path does not.
"""

from __future__ import annotations

import dataclasses
import logging
from binascii import crc_hqx
from collections.abc import Callable, Iterator
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import hiredis

from worker.errors import FeatureStoreUnavailable
from worker.features.redis_store import (
    RedisAddress,
    RedisConnection,
    TlsFiles,
    hmget_commands,
    pack,
    split_replies,
)
from worker.features.store import KeyValues, Requests

logger = logging.getLogger(__name__)

SLOTS = 16384
MAX_REDIRECTS = 5  # a slot moved more often than this within one batch is a resharding storm: retry later
ASKING = pack(b"ASKING")
CLUSTER_SLOTS = pack(b"CLUSTER", b"SLOTS")
PING = pack(b"PING")


def key_slot(key: bytes) -> int:
    """The key's hash slot as Redis computes it: CRC16 (XMODEM) of the first non-empty ``{...}`` or the key."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return crc_hqx(key, 0) % SLOTS


def seed_addresses(url: str, password: str | None = None) -> list[RedisAddress]:
    """The seed nodes of ``redis://[user:password@]h1:p1,h2:p2[/0]`` (``rediss://`` for TLS);
    ``ValueError`` for another scheme or a database other than 0 (a cluster has only that one)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"a Redis Cluster is reached over TCP: give redis:// or rediss:// seed nodes, "
                         f"not {parts.scheme}://")
    auth, at, hosts = parts.netloc.rpartition("@")
    seeds = [RedisAddress.from_url(urlunsplit((parts.scheme, f"{auth}{at}{host.strip()}", parts.path, "", "")),
                                   password) for host in hosts.split(",") if host.strip()]
    if not seeds:
        raise ValueError("the URL names no seed node (redis://host:port,host:port/0)")
    if seeds[0].db:
        raise ValueError(f"a Redis Cluster has database 0 only, and the URL names database {seeds[0].db}")
    return seeds


class NodeConnection(Protocol):
    """One node's connection (``RedisConnection``; a twin in the unit tests)."""

    def send(self, payload: bytes) -> None: ...
    def receive(self, n_replies: int) -> list[object]: ...
    def round_trip(self, payload: bytes, n_replies: int) -> list[object]: ...
    def close(self) -> None: ...


Connect = Callable[[RedisAddress], NodeConnection]
Groups = dict[NodeConnection, list[int]]  # command indexes by the node they are sent to


class RedisClusterFeatureStore:
    """``FeatureStore`` over a Redis Cluster: the slot map read from the seeds on first use and
    after every ``MOVED`` or failure; with ``read_from_replicas``, a slot is read from a replica of
    its master (the first CLUSTER SLOTS lists; the master when it has none), sent ``READONLY``."""

    def __init__(self, seeds: list[RedisAddress], timeout_s: float = 2.0, tls: TlsFiles | None = None,
                 read_from_replicas: bool = False, connect: Connect | None = None) -> None:
        self.seeds = seeds
        self._from_replicas = read_from_replicas
        self._connect: Connect = connect or (lambda a: RedisConnection(a, timeout_s, tls, read_from_replicas))
        self._nodes: dict[tuple[str, int], NodeConnection] = {}
        self._owners: list[NodeConnection | None] = []  # by slot; empty until the slot map is read

    def fetch(self, requests: Requests) -> list[list[KeyValues]]:
        commands, keys, counts = hmget_commands(requests)
        try:
            return split_replies(self._execute(commands, keys), counts)
        except FeatureStoreUnavailable:
            self._reset()
            raise

    def ping(self) -> None:
        """Reads the slot map and PINGs every node serving a slot; unavailable unless all slots are served."""
        try:
            owners = self._refresh()
            served = sum(owner is not None for owner in owners)
            if served < SLOTS:
                raise FeatureStoreUnavailable(f"the Redis Cluster serves {served} of {SLOTS} hash slots")
            nodes = {owner for owner in owners if owner is not None}
            for node in nodes:
                node.send(PING)
            for node in nodes:
                reply = node.receive(1)[0]
                if reply != b"PONG":
                    raise FeatureStoreUnavailable(f"a Redis Cluster node answered PING with {reply!r}")
        except FeatureStoreUnavailable:
            self._reset()
            raise

    def close(self) -> None:
        self._reset()

    def redacted(self) -> str:
        first = self.seeds[0]
        scheme = "rediss" if first.tls else "redis"
        auth = "***@" if first.password else ""
        return f"{scheme}://{auth}{','.join(f'{s.host}:{s.port}' for s in self.seeds)}/0"

    def _execute(self, commands: list[bytes], keys: list[bytes]) -> list[object]:
        moved = self._by_owner(self._owners or self._refresh(), keys)
        asked: Groups = {}
        replies: list[object] = [None] * len(commands)
        for _ in range(MAX_REDIRECTS + 1):
            self._run(commands, moved, replies)
            self._run(commands, asked, replies, asking=True)
            errors = [i for group in (moved, asked) for sent in group.values() for i in sent
                      if isinstance(replies[i], hiredis.ReplyError)]
            moved, asked = self._redirects(replies, errors)
            if not moved and not asked:
                return replies
        first = next(iter(moved.values()), None) or next(iter(asked.values()))
        raise FeatureStoreUnavailable(f"Redis Cluster still redirecting after {MAX_REDIRECTS} tries "
                                      f"(slots migrating?): {replies[first[0]]}")

    @staticmethod
    def _by_owner(owners: list[NodeConnection | None], keys: list[bytes]) -> Groups:
        """The indexes of ``keys`` by the node serving their slot (the hot path: a few steps per key)."""
        groups: Groups = {}
        for i, key in enumerate(keys):
            node = owners[key_slot(key)]
            if node is None:
                raise FeatureStoreUnavailable(f"no Redis Cluster node serves hash slot {key_slot(key)} (key {key!r})")
            sent = groups.get(node)
            if sent is None:
                groups[node] = [i]
            else:
                sent.append(i)
        return groups

    @staticmethod
    def _run(commands: list[bytes], groups: Groups, replies: list[object], asking: bool = False) -> None:
        """Sends each node its pipeline, all before reading any, then files the replies by command;
        ``asking`` puts ASKING before each command (and drops its +OK)."""
        for node, sent in groups.items():
            node.send(b"".join([ASKING + commands[i] for i in sent] if asking else [commands[i] for i in sent]))
        for node, sent in groups.items():
            answers = node.receive(len(sent) * 2 if asking else len(sent))
            for i, reply in zip(sent, answers[1::2] if asking else answers, strict=True):
                replies[i] = reply

    def _redirects(self, replies: list[object], errors: list[int]) -> tuple[Groups, Groups]:
        """The commands answered ``MOVED`` by their new node, and those answered ``ASK`` by their target."""
        found = [(i, redirect) for i in errors if (redirect := _redirect(replies[i])) is not None]
        if any(kind == "MOVED" for _, (kind, _, _) in found):
            self._refresh()
        moved: Groups = {}
        asked: Groups = {}
        for i, (kind, slot, where) in found:
            host, _, port = where.rpartition(":")
            node = self._node(host, int(port))
            if kind == "MOVED":
                self._owners[slot] = node  # the node that said so knows better than a slot map read elsewhere
            (moved if kind == "MOVED" else asked).setdefault(node, []).append(i)
        return moved, asked

    def _refresh(self) -> list[NodeConnection | None]:
        """The slot map from the first seed (then the first node of the last map) that answers."""
        problems: list[str] = []
        for address in self._candidates():
            try:
                reply = self._node(address.host, address.port).round_trip(CLUSTER_SLOTS, 1)[0]
            except FeatureStoreUnavailable as exc:
                problems.append(str(exc))
                continue
            if isinstance(reply, Exception):
                raise FeatureStoreUnavailable(f"Redis at {address.redacted()} answered CLUSTER SLOTS with "
                                              f"'{reply}' (redis.cluster is set: is it a cluster node?)")
            self._owners = self._slot_map(reply, address.host)
            self._forget_unused()
            return self._owners
        raise FeatureStoreUnavailable("no node of the Redis Cluster answered: " + "; ".join(problems))

    def _candidates(self) -> Iterator[RedisAddress]:
        yield from self.seeds
        seeds = {(s.host, s.port) for s in self.seeds}
        for host, port in [where for where in self._nodes if where not in seeds]:
            yield dataclasses.replace(self.seeds[0], host=host, port=port)

    def _slot_map(self, reply: object, asked_host: str) -> list[NodeConnection | None]:
        owners: list[NodeConnection | None] = [None] * SLOTS
        for start, end, master, replicas in slot_ranges(reply):
            host, port = replicas[0] if self._from_replicas and replicas else master
            node = self._node(host or asked_host, port)
            owners[start:end + 1] = [node] * (end + 1 - start)
        return owners

    def _node(self, host: str, port: int) -> NodeConnection:
        node = self._nodes.get((host, port))
        if node is None:
            node = self._nodes[(host, port)] = self._connect(dataclasses.replace(self.seeds[0], host=host, port=port))
        return node

    def _forget_unused(self) -> None:
        """Closes the connections to nodes the slot map no longer routes to (a failed master, say)."""
        used = {id(node) for node in self._owners if node is not None}
        for where, node in list(self._nodes.items()):
            if id(node) not in used:
                node.close()
                del self._nodes[where]

    def _reset(self) -> None:
        """After a failure a connection may hold replies never read: close them all, and read the slot map anew."""
        for node in self._nodes.values():
            node.close()
        self._owners = []


def _redirect(reply: object) -> tuple[str, int, str] | None:
    """``("MOVED" | "ASK", slot, "host:port")`` for a redirect reply, else None."""
    if not isinstance(reply, hiredis.ReplyError):
        return None
    parts = str(reply).split()
    if len(parts) != 3 or parts[0] not in ("MOVED", "ASK"):
        return None
    return parts[0], int(parts[1]), parts[2]


Endpoint = tuple[str, int]


def slot_ranges(reply: object) -> list[tuple[int, int, Endpoint, list[Endpoint]]]:
    """CLUSTER SLOTS as ``(first slot, last slot, master, replicas)``; a node's host is "" where the
    cluster does not know it (ask the node that answered). Unavailable if the answer is malformed."""
    if not isinstance(reply, list):
        raise FeatureStoreUnavailable(f"unexpected CLUSTER SLOTS answer {reply!r}")
    try:
        return [(int(entry[0]), int(entry[1]), _endpoint(entry[2]), [_endpoint(e) for e in entry[3:]])
                for entry in reply]
    except (TypeError, ValueError, IndexError) as exc:
        raise FeatureStoreUnavailable(f"unexpected CLUSTER SLOTS answer ({exc}): {reply!r}") from exc


def _endpoint(node: object) -> Endpoint:
    if not isinstance(node, list) or len(node) < 2:
        raise ValueError(f"a node entry {node!r}")
    host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
    return ("" if host == "?" else host), int(node[1])
