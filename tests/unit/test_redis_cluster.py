"""The cluster feature store's routing on a twin: hash slots, one pipeline per node, redirects, failures."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot as redis_py_key_slot

from tests.support.cluster_twin import ClusterTwin
from tests.support.configs import changed, fraud_config, write_config
from worker.config.settings import load_settings
from worker.errors import ConfigError, FeatureStoreUnavailable
from worker.features.redis_cluster import MAX_REDIRECTS, SLOTS, RedisClusterFeatureStore, key_slot, seed_addresses

PORTS = [7000, 7001, 7002]


@pytest.fixture
def twin() -> ClusterTwin:
    twin = ClusterTwin(PORTS)
    twin.data = {f"card:{i}".encode(): {b"a": str(i).encode(), b"b": b"x"} for i in range(300)}
    return twin


def store_on(twin: ClusterTwin, seeds: str = "127.0.0.1:7000", **options: Any) -> RedisClusterFeatureStore:
    return RedisClusterFeatureStore(seed_addresses(f"redis://{seeds}/0"), connect=twin.connect, **options)


def cards(n: int = 300) -> list[str]:
    return [f"card:{i}" for i in range(n)]


def expected(n: int = 300) -> list[list[bytes | None]]:
    return [[str(i).encode(), b"x"] for i in range(n)]


@pytest.mark.parametrize("key", [b"card:c1", b"", b"{user1000}.following", b"{user1000}.followers", b"foo{}{bar}",
                                 b"foo{{bar}}zap", b"foo{bar}{zap}", b"{", b"}{x}", "ü{€}".encode()])
def test_hash_slots_are_those_redis_computes(key: bytes) -> None:
    assert key_slot(key) == redis_py_key_slot(key)


def test_hash_slots_of_many_random_keys_are_those_redis_computes() -> None:
    rng = random.Random(3)
    keys = [rng.randbytes(rng.randrange(0, 24)) for _ in range(5000)]
    assert [key_slot(k) for k in keys] == [redis_py_key_slot(k) for k in keys]
    assert len({key_slot(k) for k in keys}) > 4000  # spread over the slots, not a constant


def test_keys_on_every_node_come_back_in_request_order_with_one_pipeline_per_node(twin: ClusterTwin) -> None:
    store = store_on(twin)
    store.fetch([(["a"], ["card:0"])])  # reads the slot map
    twin.log.clear()

    answer = store.fetch([(["a", "b"], cards()), (["a"], ["card:7", "card:none"])])

    assert answer == [expected(), [[b"7"], [None]]]
    sends = [port for kind, port in twin.log if kind == "send"]
    assert sorted(sends) == PORTS, "one pipeline per node"
    assert [kind for kind, _ in twin.log] == ["send"] * 3 + ["receive"] * 3, "every pipeline sent before any read"
    assert all(len(twin.commands_to(p)) > 50 for p in PORTS), "the keys are spread over the nodes"


def test_a_moved_slot_rereads_the_slot_map_and_is_resent_to_its_new_node(twin: ClusterTwin) -> None:
    store = store_on(twin)
    assert store.fetch([(["a", "b"], cards())]) == [expected()]
    slot = key_slot(b"card:5")
    old, new = twin.owner[slot], next(p for p in PORTS if p != twin.owner[slot])
    twin.move(slot, new)
    maps_read = sum(c[0] == b"CLUSTER" for p in PORTS for c in twin.commands_to(p))

    assert store.fetch([(["a", "b"], cards())]) == [expected()]

    assert sum(c[0] == b"CLUSTER" for p in PORTS for c in twin.commands_to(p)) == maps_read + 1
    assert [c[1] for c in twin.commands_to(old)].count(b"card:5") == 2  # once before the move, once redirected
    assert [c[1] for c in twin.commands_to(new)].count(b"card:5") == 1
    twin.log.clear()
    store.fetch([(["a"], ["card:5"])])
    assert twin.log == [("send", new), ("receive", new)], "the new owner is remembered"


def test_an_ask_sends_asking_and_the_command_to_the_target_once_without_rereading_the_map(twin: ClusterTwin) -> None:
    store = store_on(twin)
    store.fetch([(["a"], ["card:0"])])
    slot = key_slot(b"card:9")
    source, target = twin.owner[slot], next(p for p in PORTS if p != twin.owner[slot])
    twin.asking[slot] = target
    before = len(twin.commands_to(source))

    assert store.fetch([(["a", "b"], cards())]) == [expected()]
    assert store.fetch([(["a"], ["card:9"])]) == [[[b"9"]]]

    asked = [c for c in twin.commands_to(target) if b"card:9" in c or c == [b"ASKING"]]
    assert asked == [[b"ASKING"], [b"HMGET", b"card:9", b"a", b"b"], [b"ASKING"], [b"HMGET", b"card:9", b"a"]]
    assert all(c[0] != b"CLUSTER" for c in twin.commands_to(source)[before:]), "an ASK is no new slot map"
    sent_to_source = [c[1] for c in twin.commands_to(source)[before:]]
    assert sent_to_source.count(b"card:9") == 2, "the source is asked first each time"


def test_a_slot_that_keeps_moving_is_unavailable_not_a_loop(twin: ClusterTwin) -> None:
    store = store_on(twin)
    store.fetch([(["a"], ["card:0"])])
    twin.bounce.add(key_slot(b"card:3"))  # each node says the next owns it, whatever the map says

    with pytest.raises(FeatureStoreUnavailable, match=f"still redirecting after {MAX_REDIRECTS} tries"):
        store.fetch([(["a"], ["card:3"])])


@pytest.mark.parametrize("error", ["CLUSTERDOWN The cluster is down", "TRYAGAIN Multiple keys request during rehashing",
                                   "LOADING Redis is loading the dataset in memory"])
def test_a_cluster_that_cannot_answer_is_unavailable_and_the_next_try_rereads_the_map(twin: ClusterTwin,
                                                                                      error: str) -> None:
    store = store_on(twin)
    store.fetch([(["a"], ["card:0"])])
    twin.error = error

    with pytest.raises(FeatureStoreUnavailable, match=error.split(maxsplit=1)[0]):
        store.fetch([(["a", "b"], cards())])

    twin.error = None
    maps_read = sum(c[0] == b"CLUSTER" for p in PORTS for c in twin.commands_to(p))
    assert store.fetch([(["a", "b"], cards())]) == [expected()]
    assert sum(c[0] == b"CLUSTER" for p in PORTS for c in twin.commands_to(p)) == maps_read + 1


def test_a_lost_node_is_unavailable_every_connection_is_closed_and_a_failover_is_picked_up(twin: ClusterTwin) -> None:
    store = store_on(twin, seeds="127.0.0.1:7000,127.0.0.1:7001")
    store.fetch([(["a"], ["card:0"])])
    twin.nodes[7000].down = True

    with pytest.raises(FeatureStoreUnavailable, match="7000"):
        store.fetch([(["a", "b"], cards())])
    assert {port for kind, port in twin.log if kind == "close"} == set(PORTS), "no connection keeps unread replies"
    with pytest.raises(FeatureStoreUnavailable, match="7000"):
        store.ping()  # the map still names the lost node: not ready yet

    twin.owner = [7002 if port == 7000 else port for port in twin.owner]  # its slots failed over
    store.ping()  # the first seed is down: the map comes from the second
    assert store.fetch([(["a", "b"], cards())]) == [expected()]


def test_replica_reads_go_to_the_replicas_sent_readonly_by_the_connection(twin: ClusterTwin) -> None:
    replicas = ClusterTwin([7000, 7001, 7002, 7100, 7101, 7102])
    replicas.owner, replicas.data = twin.owner, twin.data
    replicas.replica_of = {7000: 7100, 7001: 7101, 7002: 7102}
    store = store_on(replicas, read_from_replicas=True)

    assert store.fetch([(["a", "b"], cards())]) == [expected()]

    assert {port for kind, port in replicas.log if kind == "send"} == {7000, 7100, 7101, 7102}  # 7000: the map


def test_ping_needs_every_slot_served(twin: ClusterTwin) -> None:
    store = store_on(twin)
    store.ping()
    twin.owner[100:200] = [0] * 100

    with pytest.raises(FeatureStoreUnavailable, match=f"serves {SLOTS - 100} of {SLOTS} hash slots"):
        store.ping()


def test_a_server_that_is_no_cluster_node_is_named(twin: ClusterTwin) -> None:
    twin.enabled = False
    store = store_on(twin)

    refusal = "127.0.0.1:7000/0 answered CLUSTER SLOTS with 'ERR This instance has cluster support disabled'"
    with pytest.raises(FeatureStoreUnavailable, match=re.escape(f"{refusal} (redis.cluster is set")):
        store.ping()


def test_seed_nodes_from_the_url() -> None:
    seeds = seed_addresses("rediss://reader:pw@10.0.0.1:7000, 10.0.0.2:7001,node-3/0", password="other")

    assert [(s.host, s.port) for s in seeds] == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("node-3", 6379)]
    assert all(s.tls and s.username == "reader" and s.password == "other" and s.db == 0 for s in seeds)
    assert RedisClusterFeatureStore(seeds).redacted() == "rediss://***@10.0.0.1:7000,10.0.0.2:7001,node-3:6379/0"


@pytest.mark.parametrize(("url", "message"), [("redis://h1:1,h2:2/3", "database 0 only, and the URL names database 3"),
                                              ("unix:///tmp/redis.sock", "reached over TCP"),
                                              ("redis:///0", "names no seed node")])
def test_seed_urls_a_cluster_cannot_have_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        seed_addresses(url)


@pytest.mark.parametrize(("redis", "message"), [
    ({"cluster": True, "url": "redis://h1:1,h2:2/2"}, "cluster: true\\) has database 0 only, and url names database 2"),
    ({"cluster": True, "url": "unix:///tmp/r.sock"}, "reached over TCP"),
    ({"read_from_replicas": True}, "read_from_replicas needs cluster: true")])
def test_cluster_settings_a_cluster_cannot_have_are_config_errors(tmp_path: Path, redis: dict[str, Any],
                                                                  message: str) -> None:
    config = write_config(tmp_path / "c.yaml", changed(fraud_config(), **{f"redis.{k}": v for k, v in redis.items()}))

    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(config)
    assert caught.value.problems[0][0].startswith("redis")


def test_cluster_settings_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_REDIS__CLUSTER", "true")
    monkeypatch.setenv("WORKER_REDIS__READ_FROM_REPLICAS", "true")
    monkeypatch.setenv("WORKER_REDIS__URL", "redis://h1:7000,h2:7001/0")

    settings = load_settings(write_config(tmp_path / "c.yaml", fraud_config()))

    assert settings.redis.cluster and settings.redis.read_from_replicas
    assert settings.redis.url == "redis://h1:7000,h2:7001/0"
