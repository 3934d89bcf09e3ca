"""The fast client on a real Redis Cluster (3 masters, a replica each, local processes): reads spread over
the shards, a slot migrated under it (ASK, then MOVED), replica reads, a master killed; and the worker
scoring the shared fraud workload from the cluster, through a master's failover mid-stream."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis

from tests.integration.test_fraud_contract import assert_dead_lettered, assert_scored_exactly_once, wait_for
from tests.support.configs import changed, fraud_config, write_config
from tests.support.faults import Expected, Outputs
from tests.support.fraud import FraudEvents, fraud_events, population
from tests.support.infra import repo_root
from tests.support.kafka_io import RateProducer, TopicReader, Topics, produce
from tests.support.redis_cluster import LocalRedisCluster, dump_hashes
from tests.support.worker_process import StartWorker
from worker.cli.main import main
from worker.errors import FeatureStoreUnavailable
from worker.features.redis_cluster import RedisClusterFeatureStore, key_slot, seed_addresses

pytestmark = pytest.mark.integration

FIELDS = ["a", "b"]
REPO = repo_root()


def store_on(cluster: LocalRedisCluster, **options: Any) -> RedisClusterFeatureStore:
    return RedisClusterFeatureStore(seed_addresses(cluster.url), timeout_s=1.0, **options)


def write_cards(cluster: LocalRedisCluster, n: int) -> list[str]:
    client = cluster.client()
    pipe = client.pipeline()
    keys = [f"card:{i}" for i in range(n)]
    for i, key in enumerate(keys):
        pipe.hset(key, mapping={"a": i, "b": f"v{i}"})
    pipe.execute()
    client.close()
    cluster.wait_replicated()
    return keys


def card_values(n: int) -> list[list[bytes | None]]:
    return [[str(i).encode(), f"v{i}".encode()] for i in range(n)]


def hmgets_served(cluster: LocalRedisCluster, port: int) -> int:
    with cluster.node_client(port) as client:
        stats: Any = client.info("commandstats")
    return int(stats.get("cmdstat_hmget", {}).get("calls", 0))


def test_a_batch_over_every_shard_comes_back_in_request_order(redis_cluster: LocalRedisCluster) -> None:
    keys = write_cards(redis_cluster, 3000)
    store = store_on(redis_cluster)

    (rows, tagged) = store.fetch([(FIELDS, [*keys, "card:none"]), (FIELDS, ["{card:7}:x"])])

    assert rows == [*card_values(3000), [None, None]]
    assert tagged == [[None, None]]
    served = [hmgets_served(redis_cluster, port) for port in redis_cluster.masters()]
    assert len(served) == 3 and all(n > 800 for n in served), f"HMGETs per master: {served}"
    store.close()


def test_replica_reads_are_served_by_the_replicas(redis_cluster: LocalRedisCluster) -> None:
    keys = write_cards(redis_cluster, 1000)
    store = store_on(redis_cluster, read_from_replicas=True)

    assert store.fetch([(FIELDS, keys)]) == [card_values(1000)]

    masters = redis_cluster.masters()
    replicas = [port for port in redis_cluster.running() if port not in masters]
    assert [hmgets_served(redis_cluster, port) for port in masters] == [0, 0, 0]
    assert all(hmgets_served(redis_cluster, port) > 200 for port in replicas)
    store.close()


def test_a_slot_being_migrated_is_followed_by_ask_and_once_moved_by_moved(redis_cluster: LocalRedisCluster) -> None:
    keys = write_cards(redis_cluster, 100)
    store = store_on(redis_cluster)
    assert store.fetch([(FIELDS, keys)]) == [card_values(100)]
    slot = key_slot(b"card:42")
    source = next(port for port in redis_cluster.masters() if _owns(redis_cluster, port, slot))
    target = next(port for port in redis_cluster.masters() if port != source)
    ids = {port: _node_id(redis_cluster, port) for port in (source, target)}

    _cluster(redis_cluster, target, "SETSLOT", slot, "IMPORTING", ids[source])
    _cluster(redis_cluster, source, "SETSLOT", slot, "MIGRATING", ids[target])
    with redis_cluster.node_client(source) as client:
        client.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", "card:42")
    asked = hmgets_served(redis_cluster, target)
    assert store.fetch([(FIELDS, keys)]) == [card_values(100)]  # the source answers ASK for card:42
    assert hmgets_served(redis_cluster, target) > asked

    for port in redis_cluster.masters():
        _cluster(redis_cluster, port, "SETSLOT", slot, "NODE", ids[target])
    assert store.fetch([(FIELDS, keys)]) == [card_values(100)]  # the source answers MOVED
    before = hmgets_served(redis_cluster, source)
    assert store.fetch([(FIELDS, ["card:42"])]) == [[[b"42", b"v42"]]]
    assert hmgets_served(redis_cluster, source) == before, "the new owner is asked directly"
    store.close()


def _owns(cluster: LocalRedisCluster, port: int, slot: int) -> bool:
    with cluster.node_client(port) as client:
        ranges: Any = client.execute_command("CLUSTER", "SLOTS")
    return any(start <= slot <= end and int(master[1]) == port for start, end, master, *_ in ranges)


def _node_id(cluster: LocalRedisCluster, port: int) -> str:
    with cluster.node_client(port) as client:
        found: Any = client.execute_command("CLUSTER", "MYID")
    return found.decode() if isinstance(found, bytes) else str(found)


def _cluster(cluster: LocalRedisCluster, port: int, *args: Any) -> None:
    with cluster.node_client(port) as client:
        client.execute_command("CLUSTER", *args)


def test_a_killed_master_is_unavailable_until_its_replica_takes_over_and_nothing_is_lost(
        redis_cluster: LocalRedisCluster) -> None:
    keys = write_cards(redis_cluster, 2000)
    store = store_on(redis_cluster)
    assert store.fetch([(FIELDS, keys)]) == [card_values(2000)]

    redis_cluster.kill(redis_cluster.masters()[0])
    with pytest.raises(FeatureStoreUnavailable):
        store.fetch([(FIELDS, keys)])
    deadline = time.monotonic() + 30
    while not _answers(store):
        assert time.monotonic() < deadline, "no replica took over within 30 s"
        time.sleep(0.2)

    assert store.fetch([(FIELDS, keys)]) == [card_values(2000)]
    assert len(redis_cluster.masters()) == 3
    store.close()


def _answers(store: RedisClusterFeatureStore) -> bool:
    try:
        store.ping()
    except FeatureStoreUnavailable:
        return False
    return True


# --- the worker --------------------------------------------------------------------------------

def fraud_on_cluster(gen: ModuleType, cluster: LocalRedisCluster, scratch_url: str, tmp_path: Path, n: int,
                     seed: int) -> tuple[Any, FraudEvents, Path]:
    """gen.py's features (written by it to a single Redis) loaded into the cluster by ``worker features
    load``, its events, and the bench config pointed at the cluster."""
    args = population(n=n, seed=seed)
    gen.cmd_features(type(args)(**{**vars(args), "redis": scratch_url}))
    hashes = dump_hashes(scratch_url, tmp_path / "features.jsonl")
    config = write_config(tmp_path / "fraud.yaml", changed(fraud_config(), **{"redis.cluster": True,
                                                                              "batch.max_events": 200}))
    assert main(["features", "load", "--config", str(config), "--redis-url", cluster.url,
                 "--file", str(tmp_path / "features.jsonl")]) == 0
    cluster.wait_replicated()
    per_master = [redis.Redis(port=port).dbsize() for port in cluster.masters()]
    assert sum(per_master) == hashes and all(k > hashes / 5 for k in per_master), per_master
    return args, fraud_events(gen, args, poison_every=250), config


def test_the_fraud_workload_scores_with_its_features_spread_over_three_shards(
        gen: ModuleType, kafka_bootstrap: str, redis_db_url: str, redis_cluster: LocalRedisCluster,
        kafka_topics: Callable[..., Topics], topic_reader: Callable[..., TopicReader], start_worker: StartWorker,
        tmp_path: Path) -> None:
    args, events, config = fraud_on_cluster(gen, redis_cluster, redis_db_url, tmp_path, n=3000, seed=5)
    topics = kafka_topics(partitions=3, prefix="cluster")
    sent = produce(kafka_bootstrap, topics.input, events.messages)
    started_ms = int(time.time() * 1000)

    worker = start_worker(config, topics, redis_cluster.url)
    reader = topic_reader(topics.output, topics.dlq)
    wait_for(reader, topics, len(events.good), len(events.poison), worker)

    assert_scored_exactly_once(gen, args, events.good, reader.on(topics.output), started_ms)
    assert_dead_lettered(events, sent, reader.on(topics.dlq), topics.input)
    assert worker.stop() == 0


@pytest.mark.slow
def test_a_master_killed_mid_stream_loses_nothing_and_the_stream_resumes_after_the_failover(
        gen: ModuleType, kafka_bootstrap: str, redis_db_url: str, redis_cluster: LocalRedisCluster,
        kafka_topics: Callable[..., Topics], topic_reader: Callable[..., TopicReader], start_worker: StartWorker,
        tmp_path: Path) -> None:
    args, events, config = fraud_on_cluster(gen, redis_cluster, redis_db_url, tmp_path, n=8000, seed=31)
    topics = kafka_topics(partitions=2, prefix="failover")
    outputs = Outputs(kafka_bootstrap, topics.output, topics.dlq, False, topic_reader(topics.output, topics.dlq))
    worker = start_worker(config, topics, redis_cluster.url)
    worker.wait_for_log("assigned")
    producer = RateProducer(kafka_bootstrap, topics.input, events.messages, 2000, partitioner="murmur2_random")
    producer.start()  # 4 s of events
    _wait_for_arrivals(outputs, 500)

    redis_cluster.kill(redis_cluster.masters()[0])
    killed_at = time.monotonic()
    worker.wait_for_log("cannot process the batch, will retry", 30)
    assert len(outputs.values()) < len(events.good), "the kill must land mid-stream"
    redis_cluster.wait_ok(30)  # its replica is the master now
    worker.wait_for_log("dependency is back", 30)
    print(f"the stream resumed {time.monotonic() - killed_at:.1f}s after the master was killed")
    producer.join(60)
    assert producer.error is None

    tally = outputs.wait_for(Expected(gen, args, events.good), len(events.poison), 120, alive=worker.alive)
    assert tally.missing == [] and tally.wrong == [] and tally.duplicates == 0, tally.summary()
    assert len(outputs.dead_letters()) == len(events.poison), "an outage must not dead-letter events"
    assert worker.alive(), "no restart needed"
    assert worker.stop() == 0


def _wait_for_arrivals(outputs: Outputs, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while len(outputs.values()) < count:
        assert time.monotonic() < deadline, f"fewer than {count} predictions after {timeout_s:.0f}s"
        outputs.refresh()


def test_the_demo_loads_and_scores_the_example_on_a_cluster(kafka_bootstrap: str, redis_cluster: LocalRedisCluster,
                                                             tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WORKER_REDIS__CLUSTER": "true"}
    demo = subprocess.run([sys.executable, "-m", "worker", "demo", "--bootstrap-servers", kafka_bootstrap,
                           "--redis-url", redis_cluster.url, "--events", "400", "--rate", "0", "--poison", "0.01",
                           "--workdir", str(tmp_path / "demo")], check=False, capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO)

    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert f"using the Redis Cluster {redis_cluster.url}" in demo.stdout
    scored = int(re.search(r"predictions\s+([\d,]+)", demo.stdout).group(1).replace(",", ""))  # type: ignore[union-attr]
    dead = int(re.search(r"dead letters\s+([\d,]+)", demo.stdout).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert scored + dead == 400 and scored > 350 and "MISSING" not in demo.stdout
    assert all(hmgets_served(redis_cluster, port) > 0 for port in redis_cluster.masters()), "read from every shard"


def test_a_node_whose_port_was_taken_meanwhile_starts_on_fresh_ones() -> None:
    """The harness itself: a free port chosen for a node can be taken by another process before the
    node binds it (seen once in CI on a bus port); the cluster still starts, on other ports."""
    cluster = LocalRedisCluster(replicas=0)
    first = cluster.ports[0]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", cluster.bus_ports[first]))
        squatter.listen()
        try:
            cluster.start()
            assert first not in cluster.ports and len(cluster.ports) == 3
            with cluster.client() as client:
                client.set("k", "v")
                assert client.get("k") == b"v"
        finally:
            cluster.close()
