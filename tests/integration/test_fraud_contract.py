"""End to end on the shared fraud workload: the worker as a process, a real broker, a real Redis.

The worker runs the bench config (bench/fraud-contract.yaml) unchanged; brokers, Redis and
topics are passed on its command line, as the contract checker does.
"""

from __future__ import annotations

import argparse
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import redis

from tests.support.configs import FRAUD_CONFIG, changed, fraud_config, write_config
from tests.support.fraud import FraudEvents, decode_prediction, fraud_events, population, workload
from tests.support.kafka_io import (
    Consumed,
    RateProducer,
    Sent,
    TopicReader,
    Topics,
    ToSend,
    committed_offsets,
    produce,
)
from tests.support.worker_process import StartWorker, WorkerProcess

pytestmark = pytest.mark.integration



def predictions_by_event(gen: ModuleType, messages: list[Consumed]) -> dict[str, list[tuple[Consumed, dict[str, Any]]]]:
    found: dict[str, list[tuple[Consumed, dict[str, Any]]]] = {}
    for m in messages:
        record = decode_prediction(gen, m.value)
        found.setdefault(record["event_id"], []).append((m, record))
    return found


def assert_scored_exactly_once(gen: ModuleType, args: argparse.Namespace, good: list[dict[str, Any]],
                               outputs: list[Consumed], started_ms: int) -> None:
    """Every well-formed event has exactly one prediction, keyed by card_id, scored as onnxruntime
    scores the same inputs."""
    expected = gen.expected_scores(good, args)
    found = predictions_by_event(gen, outputs)
    assert sorted(found) == sorted(r["event_id"] for r in good), "missing or unexpected predictions"
    duplicates = {e: len(p) for e, p in found.items() if len(p) > 1}
    assert not duplicates, f"{len(duplicates)} events predicted more than once"
    now_ms = int(time.time() * 1000)
    for record, want in zip(good, expected.tolist(), strict=True):
        ((message, prediction),) = found[record["event_id"]]
        assert message.key == record["card_id"].encode()
        assert prediction["card_id"] == record["card_id"]
        assert abs(prediction["score"] - want) <= 1e-5, (record, prediction["score"], want)
        assert prediction["is_fraud"] == (prediction["score"] >= 0.5)
        assert prediction["model_version"] == "1"
        assert started_ms <= prediction["scored_at"] <= now_ms


def assert_dead_lettered(events: FraudEvents, sent: list[Sent], dead: list[Consumed], topic: str,
                         stage: str = "decode") -> None:
    """Every poison event is on the dead-letter topic once, with its key, value and headers as
    produced, and dlq.* headers naming where it came from and why."""
    by_position = {(int(m.headers["dlq.source.partition"] or 0), int(m.headers["dlq.source.offset"] or 0)): m
                   for m in dead}
    assert len(by_position) == len(dead) == len(events.poison)
    for i in events.poison:
        original = sent[i]
        message = by_position[(original.partition, original.offset)]
        assert message.key == original.key
        assert message.value == original.value
        assert message.headers["dlq.source.topic"] == topic.encode()
        assert message.headers["dlq.error.stage"] == stage.encode()
        assert message.headers["dlq.error.reason"]
        assert message.headers["dlq.error.type"]
        assert original.headers is not None
        assert message.header_list[: len(original.headers)] == original.headers  # the producer's headers first


def wait_for(reader: TopicReader, topics: Topics, outputs: int, dead: int, worker: WorkerProcess,
             timeout_s: float = 120) -> None:
    done = reader.read_until(lambda r: r.count(topics.output) >= outputs and r.count(topics.dlq) >= dead,
                             timeout_s, alive=worker.alive)
    assert done, (f"after {timeout_s:.0f}s: {reader.count(topics.output)}/{outputs} predictions, "
                  f"{reader.count(topics.dlq)}/{dead} dead letters, worker alive: {worker.alive()}")
    reader.settle(1.0)


def test_fraud_workload_end_to_end(gen: ModuleType, kafka_bootstrap: str, redis_db_url: str,
                                   kafka_topics: Callable[..., Topics], topic_reader: Callable[..., TopicReader],
                                   start_worker: StartWorker) -> None:
    topics = kafka_topics(partitions=3, prefix="fraud")
    args, events = workload(gen, redis_db_url, n=3000, seed=5, poison_every=250)
    sent = produce(kafka_bootstrap, topics.input, events.messages)
    started_ms = int(time.time() * 1000)

    worker = start_worker(FRAUD_CONFIG, topics, redis_db_url)
    reader = topic_reader(topics.output, topics.dlq)
    wait_for(reader, topics, len(events.good), len(events.poison), worker)

    assert worker.alive(), "poison must never stop the worker"
    assert_scored_exactly_once(gen, args, events.good, reader.on(topics.output), started_ms)
    assert_dead_lettered(events, sent, reader.on(topics.dlq), topics.input)
    assert worker.stop() == 0


def test_poison_of_every_kind_is_dead_lettered_and_committed(
        gen: ModuleType, kafka_bootstrap: str, redis_db_url: str, kafka_topics: Callable[..., Topics],
        topic_reader: Callable[..., TopicReader], start_worker: StartWorker, tmp_path: Path) -> None:
    args, events = workload(gen, redis_db_url, n=600, seed=11, poison_every=50)
    # A card whose feature is not a number, and a merchant key of the wrong type: only the
    # events that use them fail, at the features stage.
    r = redis.Redis.from_url(redis_db_url)
    bad_card, bad_merchant = events.good[0]["card_id"], events.good[1]["merchant_id"]
    r.hset(f"card:{bad_card}", "chargebacks_90d", "n/a")
    r.delete(f"merchant:{bad_merchant}")
    r.set(f"merchant:{bad_merchant}", "not a hash")
    r.close()
    bad_card_events = [i for i, rec in enumerate(events.records) if rec and rec["card_id"] == bad_card]
    bad_merchant_events = [i for i, rec in enumerate(events.records)
                           if rec and rec["merchant_id"] == bad_merchant and i not in bad_card_events]
    feature_poison = bad_card_events + bad_merchant_events
    scorable = [rec for i, rec in enumerate(events.records) if rec and i not in feature_poison]
    events.add(ToSend(b"big", b"x" * 5000, [("origin", b"oversized")]), None)
    events.add(ToSend(b"gone", None, [("origin", b"tombstone")]), None)
    config = write_config(tmp_path / "fraud.yaml", changed(fraud_config(), **{"avro.max_value_bytes": 1000,
                                                                              "batch.max_events": 100}))
    topics = kafka_topics(partitions=2, prefix="poison")
    sent = produce(kafka_bootstrap, topics.input, events.messages)
    started_ms = int(time.time() * 1000)

    worker = start_worker(config, topics, redis_db_url)
    reader = topic_reader(topics.output, topics.dlq)
    decode_poison = events.poison
    wait_for(reader, topics, len(scorable), len(decode_poison) + len(feature_poison), worker)

    assert bad_card_events and bad_merchant_events
    dead = reader.on(topics.dlq)
    stages = Counter(m.headers["dlq.error.stage"] for m in dead)
    assert stages == {b"decode": len(decode_poison), b"features": len(feature_poison)}
    by_offset = {(m.headers["dlq.source.partition"], m.headers["dlq.source.offset"]): m for m in dead}
    for i in [*decode_poison, *feature_poison]:
        message = by_offset[(str(sent[i].partition).encode(), str(sent[i].offset).encode())]
        assert (message.key, message.value) == (sent[i].key, sent[i].value)
    reasons = {m.headers["origin"]: m.headers["dlq.error.reason"] for m in dead if "origin" in m.headers}
    assert b"over the 1000-byte limit" in (reasons[b"oversized"] or b"")
    assert b"tombstone" in (reasons[b"tombstone"] or b"")
    assert sum(b"WRONGTYPE" in (m.headers["dlq.error.reason"] or b"") for m in dead) == len(bad_merchant_events)
    assert sum(b"b'n/a'" in (m.headers["dlq.error.reason"] or b"") for m in dead) == len(bad_card_events)
    assert_scored_exactly_once(gen, args, scorable, reader.on(topics.output), started_ms)

    assert worker.stop() == 0
    ends = Counter(s.partition for s in sent)
    assert committed_offsets(kafka_bootstrap, topics.group, topics.input, topics.partitions) == {
        p: ends[p] for p in range(topics.partitions)}, "the dead-lettered events were committed with the rest"


def test_sigterm_mid_stream_commits_and_a_restart_finishes_the_rest(
        gen: ModuleType, kafka_bootstrap: str, redis_db_url: str, kafka_topics: Callable[..., Topics],
        topic_reader: Callable[..., TopicReader], start_worker: StartWorker, tmp_path: Path) -> None:
    args, events = workload(gen, redis_db_url, n=8000, seed=21, poison_every=400)
    topics = kafka_topics(partitions=3, prefix="shutdown")
    config = write_config(tmp_path / "fraud.yaml", changed(fraud_config(), **{"batch.max_events": 200,
                                                                              "batch.commit_interval_ms": 5000}))
    reader = topic_reader(topics.output, topics.dlq)
    first = start_worker(config, topics, redis_db_url)
    first.wait_for_log("assigned")
    producer = RateProducer(kafka_bootstrap, topics.input, events.messages, rate=2000)  # 4 s of events
    producer.start()
    assert reader.read_until(lambda r: r.count(topics.output) >= 500, 60, alive=first.alive)

    first.signal(signal.SIGTERM)
    assert producer.is_alive(), "the stop must land mid-stream"
    assert first.wait(30) == 0
    assert "shutting down: flushing outputs and committing offsets" in first.log()
    reader.settle(1.0)
    before_restart = reader.count(topics.output) + reader.count(topics.dlq)
    producer.join(60)
    assert producer.error is None
    sent = producer.sent
    assert 0 < before_restart < len(sent)

    # What the first worker committed is exactly what it published: nothing lost, nothing to redo.
    committed = committed_offsets(kafka_bootstrap, topics.group, topics.input, topics.partitions)
    handled = {(int(m.headers["dlq.source.partition"] or 0), int(m.headers["dlq.source.offset"] or 0))
               for m in reader.on(topics.dlq)}
    positions = {record["event_id"]: (s.partition, s.offset) for s, record in
                 zip((sent[i] for i in range(len(sent)) if i not in events.poison), events.good, strict=True)}
    handled |= {positions[decode_prediction(gen, m.value)["event_id"]] for m in reader.on(topics.output)}
    for p in range(topics.partitions):
        assert handled_on(handled, p) == set(range(committed[p])), f"partition {p}: committed {committed[p]}"

    second = start_worker(config, topics, redis_db_url)
    wait_for(reader, topics, len(events.good), len(events.poison), second)

    assert_scored_exactly_once(gen, args, events.good, reader.on(topics.output), 0)
    assert_dead_lettered(events, sent, reader.on(topics.dlq), topics.input)
    assert second.stop() == 0


def handled_on(handled: set[tuple[int, int]], partition: int) -> set[int]:
    return {offset for p, offset in handled if p == partition}


def test_expected_scores_are_not_trivial(gen: ModuleType) -> None:
    """Guards the comparisons above: the workload's scores vary, so a constant would be caught."""
    args = population(n=500, seed=5)
    scores = gen.expected_scores(fraud_events(gen, args).good, args)

    assert np.std(scores) > 0.01
    assert len(np.unique(scores)) > 100
