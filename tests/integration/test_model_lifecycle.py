"""Model lifecycle on a running stream: workers as processes, a real broker and Redis, the
``worker models`` CLI writing to the control topic (or file).

The two versions of the test model always give different scores (v2's logit is v1's plus 2),
so each prediction's score shows which version made it; it must match the version the
prediction records, computed by ONNX Runtime directly on the same inputs."""

from __future__ import annotations

import json
import shutil
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from tests.support.kafka_io import Consumed, RateProducer, TopicReader, Topics, produce
from tests.support.lifecycle import (
    MODEL,
    decode_score,
    expected_scores,
    load_risks,
    payments,
    to_send,
    write_lifecycle_config,
)
from tests.support.model_repo import add_version, logistic
from tests.support.worker_process import StartWorker, WorkerProcess
from worker.cli.main import main

pytestmark = pytest.mark.integration



@pytest.fixture
def features(redis_db_url: str) -> dict[str, float]:
    return load_risks(redis_db_url)


class Lifecycle:
    """One test's config, topics and CLI."""

    def __init__(self, directory: Path, bootstrap: str, topics: Topics, lifecycle: dict[str, Any]) -> None:
        self.bootstrap, self.topics = bootstrap, topics
        self.config = write_lifecycle_config(directory, lifecycle)
        self.repository = directory / "models"

    def models(self, *args: str) -> int:
        return main(["models", *args, "-c", str(self.config), "--bootstrap-servers", self.bootstrap])

    def start(self, start_worker: StartWorker, redis_url: str) -> WorkerProcess:
        worker = start_worker(self.config, self.topics, redis_url)
        worker.wait_for_log("worker ready", 60)
        return worker

    def score(self, reader: TopicReader, send: list[dict[str, Any]], everything: list[dict[str, Any]],
              features: dict[str, float], versions: tuple[str, ...] = ("1", "2"),
              timeout_s: float = 120) -> list[tuple[Consumed, dict[str, Any]]]:
        """Produces ``send``; checks that the output topic then holds one prediction of each of
        ``everything``, each scored by the version it records (one of ``versions``)."""
        produce(self.bootstrap, self.topics.input, to_send(send))
        output = self.topics.output
        assert reader.read_until(lambda r: r.count(output) >= len(everything), timeout_s)
        reader.settle(1.0)
        predictions = scored(reader, output)
        assert_each_event_once(predictions, everything)
        assert_scored_by_the_recorded_version(predictions, {v: expected_scores(self.repository, v, everything,
                                                                               features) for v in versions})
        return predictions

    def status(self, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
        capsys.readouterr()
        self.models("status", "--json")
        return dict(json.loads(capsys.readouterr().out))


def control_topic() -> dict[str, Any]:
    return {"control_topic": f"models-{uuid.uuid4().hex[:10]}"}


def scored(reader: TopicReader, topic: str) -> list[tuple[Consumed, dict[str, Any]]]:
    return [(m, decode_score(m.value)) for m in reader.on(topic)]


def assert_each_event_once(predictions: list[tuple[Consumed, dict[str, Any]]], records: list[dict[str, Any]]) -> None:
    counts = Counter(p["event_id"] for _, p in predictions)
    missing = [r["event_id"] for r in records if r["event_id"] not in counts]
    duplicated = [e for e, n in counts.items() if n > 1]
    assert not missing and not duplicated, f"{len(missing)} missing, {len(duplicated)} duplicated"
    assert len(predictions) == len(records)


def assert_scored_by_the_recorded_version(predictions: list[tuple[Consumed, dict[str, Any]]],
                                          expected: dict[str, dict[str, float]]) -> None:
    for message, p in predictions:
        want = expected[p["model_version"]][p["event_id"]]
        others = [e[p["event_id"]] for v, e in expected.items() if v != p["model_version"]]
        assert abs(p["score"] - want) <= 1e-6, (p, want)
        assert all(abs(p["score"] - o) > 1e-3 for o in others), "versions must be told apart by score"
        assert message.key == p["account"].encode()


def test_promote_during_a_running_stream_loses_and_repeats_nothing(
        tmp_path: Path, kafka_bootstrap: str, kafka_topics: Callable[..., Topics], redis_db_url: str,
        features: dict[str, float], start_worker: StartWorker, topic_reader: Callable[..., TopicReader],
        capsys: pytest.CaptureFixture[str]) -> None:
    topics = kafka_topics(partitions=2)
    setup = Lifecycle(tmp_path, kafka_bootstrap, topics, control_topic())
    replicas = [start_worker(setup.config, topics, redis_db_url) for _ in range(2)]  # both join the group
    for replica in replicas:
        replica.wait_for_log(f"assigned {topics.input}[", 60)
    records = payments([f"a{i % 300}" for i in range(6000)])
    producer = RateProducer(kafka_bootstrap, topics.input, to_send(records), rate=1000)
    reader = topic_reader(topics.output)
    producer.start()
    assert reader.read_until(lambda r: r.count(topics.output) >= 1500, 60)

    assert setup.models("promote", "2", "--wait", "30") == 0

    producer.join(60)
    assert producer.error is None and len(producer.sent) == len(records)
    assert reader.read_until(lambda r: r.count(topics.output) >= len(records), 120)
    reader.settle(2.0)
    predictions = scored(reader, topics.output)
    assert_each_event_once(predictions, records)
    expected = {v: expected_scores(setup.repository, v, records, features) for v in ("1", "2")}
    assert_scored_by_the_recorded_version(predictions, expected)
    versions = Counter(p["model_version"] for _, p in predictions)
    assert versions["1"] >= 1500 and versions["2"] >= 1000, versions
    by_account: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for _, p in predictions:
        by_account[p["account"]].append((int(p["event_id"][1:]), p["model_version"]))
    for account, seen in by_account.items():
        order = [v for _, v in sorted(seen)]
        assert order == sorted(order), f"{account}: an event was scored by v1 after v2 took over"
    assert all(r.alive() and r.log().count("worker ready") == 1 for r in replicas), "a replica restarted"
    status = setup.status(capsys)
    assert status["desired"]["active"] == "2" and len(status["replicas"]) == 2
    assert all(r["revision"] == 1 and r["active"] == "2" for r in status["replicas"])
    print(f"promote during stream: {dict(versions)} predictions by version, 0 missing, 0 duplicates")


def test_unfit_versions_are_refused_while_the_old_one_keeps_serving(
        tmp_path: Path, kafka_bootstrap: str, kafka_topics: Callable[..., Topics], redis_db_url: str,
        features: dict[str, float], start_worker: StartWorker, topic_reader: Callable[..., TopicReader],
        capsys: pytest.CaptureFixture[str]) -> None:
    topics = kafka_topics(partitions=1)
    setup = Lifecycle(tmp_path, kafka_bootstrap, topics, control_topic())
    versions = setup.repository / MODEL
    shutil.copytree(versions / "2", versions / "3")
    (versions / "3" / "model.onnx").write_bytes((versions / "3" / "model.onnx").read_bytes()[:100])  # truncated
    add_version(setup.repository, MODEL, "4", logistic([0.004, 1.5, 0.1]), width=3)  # another signature
    add_version(setup.repository, MODEL, "5", logistic([0.004, 1.5], 2.5), golden_from=logistic([0.004, 1.5], 2.0))
    worker = setup.start(start_worker, redis_db_url)
    first, second = payments([f"a{i % 300}" for i in range(300)]), payments([f"a{i}" for i in range(300)], 3, "f")
    reader = topic_reader(topics.output)
    setup.score(reader, first, first, features, ("1",))

    for version, reason in (("3", "cannot load ONNX model"),
                            ("4", "input 'x' is [N, 3] but the configuration feeds 2 columns"),
                            ("5", "golden vector 0: output 'probabilities' is [")):
        capsys.readouterr()
        assert setup.models("promote", version, "--force", "--wait", "30") == 1
        out = capsys.readouterr().out
        assert f"REFUSED revision {int(version) - 2} (v{version}: " in out and reason in out, out

    setup.score(reader, second, first + second, features, ("1",))
    (replica,) = setup.status(capsys)["replicas"]
    assert (replica["revision"], replica["active"], replica["refused"]["version"]) == (0, "1", "5")
    capsys.readouterr()
    assert setup.models("rollback", "--wait", "30") == 0
    out = capsys.readouterr().out
    assert "every replica refused revision 3; this applies to what they serve: active v1" in out
    assert "revision 4 (rollback): active v1" in out
    assert worker.alive()
    assert worker.stop() == 0
    assert setup.status(capsys)["replicas"] == [], "a replica that stopped still has a status"


def test_a_canary_takes_a_tenth_of_the_keys_and_each_key_keeps_its_version(
        tmp_path: Path, kafka_bootstrap: str, kafka_topics: Callable[..., Topics], redis_db_url: str,
        features: dict[str, float], start_worker: StartWorker, topic_reader: Callable[..., TopicReader]) -> None:
    topics = kafka_topics(partitions=2)
    setup = Lifecycle(tmp_path, kafka_bootstrap, topics, control_topic())
    setup.start(start_worker, redis_db_url)
    assert setup.models("canary", "2", "--share", "0.1", "--wait", "30") == 0
    keys = [f"k{i}" for i in range(10_000)]
    records = payments(keys + keys, seed=4)

    predictions = setup.score(topic_reader(topics.output), records, records, features, timeout_s=180)

    per_key: dict[str, set[str]] = defaultdict(set)
    for _, p in predictions:
        per_key[p["account"]].add(p["model_version"])
    assert len(per_key) == 10_000
    assert all(len(v) == 1 for v in per_key.values()), "a key was scored by both versions"
    share = sum(v == {"2"} for v in per_key.values()) / len(per_key)
    assert 0.08 <= share <= 0.12, share
    print(f"canary at 10%: {share:.2%} of 10,000 keys on the candidate")


def test_the_shadow_topic_holds_one_candidate_prediction_per_event(
        tmp_path: Path, kafka_bootstrap: str, kafka_topics: Callable[..., Topics], redis_db_url: str,
        features: dict[str, float], start_worker: StartWorker, topic_reader: Callable[..., TopicReader]) -> None:
    topics = kafka_topics(partitions=2)
    shadow_topic = f"{topics.output}-shadow"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(shadow_topic, 2, 1)])[shadow_topic].result(timeout=30)
    setup = Lifecycle(tmp_path, kafka_bootstrap, topics, {**control_topic(), "shadow_topic": shadow_topic})
    setup.start(start_worker, redis_db_url)
    assert setup.models("shadow", "2", "--wait", "30") == 0
    records = payments([f"a{i % 300}" for i in range(2000)], seed=5)
    reader = topic_reader(topics.output, shadow_topic)

    produce(kafka_bootstrap, topics.input, to_send(records))

    assert reader.read_until(lambda r: r.count(topics.output) >= 2000 and r.count(shadow_topic) >= 2000, 120)
    reader.settle(1.0)
    main_predictions, shadow = scored(reader, topics.output), scored(reader, shadow_topic)
    assert_each_event_once(main_predictions, records)
    assert_each_event_once(shadow, records)
    assert {p["model_version"] for _, p in main_predictions} == {"1"}
    assert {p["model_version"] for _, p in shadow} == {"2"}
    assert_scored_by_the_recorded_version(shadow, {"2": expected_scores(setup.repository, "2", records, features)})


def test_a_canary_breaching_its_latency_bound_is_rolled_back_automatically(
        tmp_path: Path, kafka_bootstrap: str, kafka_topics: Callable[..., Topics], redis_db_url: str,
        features: dict[str, float], start_worker: StartWorker, topic_reader: Callable[..., TopicReader],
        capsys: pytest.CaptureFixture[str]) -> None:
    topics = kafka_topics(partitions=1)
    setup = Lifecycle(tmp_path, kafka_bootstrap, topics, {
        "control_file": "control.json", "canary": {"max_latency_ms": 0.000001, "min_events": 100}})
    worker = setup.start(start_worker, redis_db_url)
    assert setup.models("canary", "2", "--share", "0.5", "--wait", "30") == 0
    records = payments([f"a{i % 300}" for i in range(3000)], seed=6)

    predictions = setup.score(topic_reader(topics.output), records, records, features)

    status = setup.status(capsys)
    assert status["desired"]["command"] == "canary-rollback" and status["desired"]["canary"] is None
    assert status["desired"]["reason"].startswith("p99 inference time")
    assert status["replicas"][0]["canary"] is None and status["replicas"][0]["revision"] == 2
    assert "canary v2 rolled back: p99 inference time" in worker.log()
    versions = Counter(p["model_version"] for _, p in predictions)
    assert versions["1"] > versions["2"] > 0, versions
