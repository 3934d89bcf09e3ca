"""The fraud example end to end, on a real Kafka-protocol broker (tansu) and a real redis-server.

The worker runs as its own process on ``deploy/config/fraud-example.yaml``; every score it
publishes is compared with ONNX Runtime run directly on the inputs that ``models/fraud/data.py``
defines for the same events (the training-time definition of the features), so the config,
the worker's lookups and its tensor assembly are checked against an independent oracle.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import onnxruntime as ort
import pytest
import redis

from tests.support.infra import new_local_broker
from tests.unit.test_example_model import data
from worker.app.tools import create_topics, entity_matcher, make_sender, redis_client, topic_reader
from worker.codecs.schemas import load_schema
from worker.config.settings import WorkerSettings, load_settings
from worker.devtools.loader import load_hashes
from worker.devtools.local import LocalBroker, LocalProcess, LocalRedis, NoidaBroker
from worker.devtools.sender import send_all
from worker.kafka.reader import TopicReader

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "deploy" / "config" / "fraud-example.yaml"
MODEL = REPO / "models" / "fraud" / "1" / "model.onnx"
TOLERANCE = 1e-5
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker | NoidaBroker]:
    with new_local_broker(log_path=tmp_path_factory.mktemp("broker") / "broker.log") as b:
        yield b


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    workdir = tmp_path_factory.mktemp("redis")
    with LocalRedis(log_path=workdir / "redis.log", workdir=workdir) as r:
        yield r


def fresh_names() -> dict[str, Any]:
    uid = uuid.uuid4().hex[:8]
    return {"input_topics": [f"tx-{uid}"], "output_topic": f"scores-{uid}", "dlq_topic": f"dlq-{uid}",
            "group_id": f"example-{uid}"}


def example_settings(broker: LocalBroker | NoidaBroker, redis_server: LocalRedis) -> WorkerSettings:
    return load_settings(CONFIG, {"kafka": {"bootstrap_servers": broker.bootstrap_servers, **fresh_names()},
                                  "redis": {"url": redis_server.url}})


def worker_process(settings: WorkerSettings, log: Path) -> LocalProcess:
    k = settings.kafka
    return LocalProcess("worker", [sys.executable, "-m", "worker", "run", "--config", str(CONFIG),
                                   "--bootstrap-servers", k.bootstrap_servers, "--redis-url", settings.redis.url,
                                   "--input-topic", k.input_topics[0], "--output-topic", k.output_topic,
                                   "--dlq-topic", k.dlq_topic, "--group-id", k.group_id], log, env=ENV)


def read_until(reader: TopicReader, done: Any, timeout_s: float, worker: LocalProcess) -> list[Any]:
    messages: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while not done(messages) and time.monotonic() < deadline:
        assert worker.running(), "the worker died:\n" + "\n".join(worker.log_lines()[-30:])
        messages += reader.read()
    return messages


def edge_cases(world: Any) -> list[dict[str, Any]]:
    """Events whose entities are not in Redis at all, next to one whose hashes all are."""
    base = next(r for r in data.events(50, seed=99) if r["device"] is not None)
    unknown = {**base, "event_id": "edge-unknown", "card": {"id": "c-never-seen", "present": False},
               "merchant": {**base["merchant"], "id": "m-never-seen"}, "device": {"id": "d-never-seen",
                                                                                 "ip_country": None}}
    farm = {**base, "event_id": "edge-farm", "device": {"id": world.farm_devices[0], "ip_country": "US"},
            "amount": 999.99}
    present = {**base, "event_id": "edge-present", "channel": "ATM", "card": {**base["card"], "present": True},
               "device": None, "distance_from_home_km": 812.5}
    return [unknown, farm, present]


def test_every_published_score_matches_onnxruntime_on_the_same_inputs(
        broker: LocalBroker | NoidaBroker, redis_server: LocalRedis, tmp_path: Path) -> None:
    settings = example_settings(broker, redis_server)
    k = settings.kafka
    create_topics(settings, partitions=3)
    world = data.make_world()
    loaded = load_hashes(redis_client(settings), ((h["key"], h) for h in data.feature_hashes(world)),
                         entity_matcher(settings))
    assert loaded.written == len(world.cards) + len(world.merchants) + len(world.devices)
    records = [*data.events(600, seed=11), *edge_cases(world)]
    sender = make_sender(settings, "card.id")
    tally = send_all(sender, [(r["event_id"], r) for r in records])
    poison = [b"", b"\x02", b"\x00\x01\x02garbage"]
    for value in poison:
        sender.producer.produce(k.input_topics[0], value, b"poison")
    sender.producer.flush(10)
    assert (tally.sent, tally.delivered, tally.rejected) == (len(records), len(records), 0)

    reader = topic_reader(settings, [k.output_topic, k.dlq_topic], from_beginning=True)
    with worker_process(settings, tmp_path / "worker.log") as worker:
        messages = read_until(reader, lambda ms: len(ms) >= len(records) + len(poison), 120, worker)
        messages += reader.read(timeout_s=1.0)  # anything extra (a duplicate) would show up here
    reader.close()

    output = load_schema(settings.avro.output_schema)
    predictions = [(m.key(), fastavro.schemaless_reader(io.BytesIO(m.value()), output))
                   for m in messages if m.topic() == k.output_topic]
    dead = [m for m in messages if m.topic() == k.dlq_topic]
    by_event = {p["event_id"]: (key, p) for key, p in predictions}
    assert len(predictions) == len(by_event) == len(records), "one prediction per event, no more"
    assert sorted(m.value() for m in dead) == sorted(poison)
    assert {dict(m.headers())["dlq.error.stage"] for m in dead} == {b"decode"}

    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    expected = session.run(["probabilities"], {"features": data.feature_matrix(records, world)})[0][:, 1]
    published = np.array([by_event[r["event_id"]][1]["score"] for r in records])
    worst = int(np.argmax(np.abs(published - expected)))
    assert np.abs(published - expected).max() <= TOLERANCE, f"{records[worst]}: {published[worst]} vs {expected[worst]}"
    assert any(published >= settings.model.threshold), "the stream should hold some fraud"
    for record in records:
        key, p = by_event[record["event_id"]]
        assert key == record["card"]["id"].encode()
        assert p["is_fraud"] == (p["score"] >= settings.model.threshold)
        copied = {f: p[f] for f in ("card_id", "merchant_id", "amount", "currency", "channel", "event_time")}
        assert copied == {"card_id": record["card"]["id"], "merchant_id": record["merchant"]["id"],
                          "amount": record["amount"], "currency": record["currency"], "channel": record["channel"],
                          "event_time": record["event_time"]}
        assert (p["model_name"], p["model_version"]) == ("fraud", "1")
        assert record["event_time"] <= p["scored_at"] <= int(time.time() * 1000)


def test_the_commands_round_trip_events_and_features(broker: LocalBroker | NoidaBroker, redis_server: LocalRedis,
                                                     tmp_path: Path) -> None:
    names = fresh_names()
    options = ["--config", str(CONFIG), "--bootstrap-servers", broker.bootstrap_servers,
               "--redis-url", redis_server.url.replace("/0", "/3"), "--input-topic", names["input_topics"][0],
               "--output-topic", names["output_topic"], "--dlq-topic", names["dlq_topic"]]
    events = list(data.events(25, seed=4))
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in events) + '{"event_id": 1}\n')
    (tmp_path / "features.jsonl").write_text('{"key": "fraud:card:c-1", "fields": {"txn_count_1h": 2.5}}\n'
                                             '{"key": "other:x", "fields": {"a": 1}}\n')

    def worker_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "worker", *args, *options], check=False, capture_output=True,
                              text=True, timeout=timeout, env=ENV, cwd=tmp_path)

    created = worker_cli("topics", "create", "--partitions", "2")
    assert created.returncode == 0, created.stderr
    for topic in (*names["input_topics"], names["output_topic"], names["dlq_topic"]):
        assert f"created  {topic}" in created.stdout
    assert "fraud-labels" in created.stdout and "fraud-scores-labelled" in created.stdout, "the monitor's topics too"
    again = worker_cli("topics", "create")
    assert again.returncode == 0 and again.stdout.count("exists") == 5
    produced = worker_cli("produce", "--file", "events.jsonl", "--key", "card.id")
    assert produced.returncode == 1, "one line is not a Transaction"
    assert "produced 25" in produced.stderr and "events.jsonl:26: event_id: expected string" in produced.stderr
    tailed = worker_cli("tail", "--topic", names["input_topics"][0], "--from-beginning", "--idle-timeout", "3")
    assert tailed.returncode == 0, tailed.stderr
    by_id = {r["event_id"]: r for r in map(json.loads, tailed.stdout.splitlines())}
    assert by_id == {r["event_id"]: r for r in events}
    loaded = worker_cli("features", "load", "--file", "features.jsonl")
    assert loaded.returncode == 0, loaded.stderr
    assert "loaded 2 hashes" in loaded.stderr and "1 keys match no entity" in loaded.stderr
    assert redis.Redis.from_url(redis_server.url.replace("/0", "/3")).hgetall("fraud:card:c-1") == {
        b"txn_count_1h": b"2.5"}
    missing = worker_cli("tail", "--topic", "no-such-topic", timeout=60)
    assert missing.returncode == 1 and "topic 'no-such-topic' does not exist" in missing.stderr


def number(text: str, pattern: str) -> int:
    found = re.search(pattern, text)
    assert found is not None, f"/{pattern}/ not in:\n{text}"
    return int(found.group(1).replace(",", ""))


@pytest.mark.parametrize("config, label", [(None, "is_fraud"), ("deploy/config/eta-example.yaml", "late")],
                         ids=["fraud", "eta"])
def test_the_demo_runs_an_example_and_leaves_nothing_running(tmp_path: Path, config: str | None, label: str) -> None:
    chosen = ["--config", config] if config else []
    demo = subprocess.run([sys.executable, "-m", "worker", "demo", *chosen, "--local", "--events", "400", "--rate",
                           "0", "--poison", "0.01", "--workdir", str(tmp_path / "demo")], check=False,
                          capture_output=True, text=True, timeout=300, env=ENV, cwd=REPO)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = demo.stdout
    assert re.search(rf"predictions\s+400|predictions\s+[\d,]+, [\d,]+ with {label} true", out), out
    assert "latency      event → scored p50" in out, "the config's own time fields give the latency"
    for step in ("Kafka", "Redis", "topics", "features", "worker", "events"):
        assert re.search(rf"^\[\d/6\] {step}", out, re.MULTILINE), step
    produced, scored, dead = (number(out, rf"{name}\s+([\d,]+)") for name in ("events", "predictions", "dead letters"))
    assert produced == 400 and scored + dead == 400 and "MISSING" not in out
    stopped = [int(pid) for pid in re.findall(r"stopped \w+ \(pid (\d+)", out)]
    assert len(stopped) == 3
    time.sleep(0.5)
    for pid in stopped:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
