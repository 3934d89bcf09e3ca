"""Input that cannot be scored, through a real worker process: hostile values, and events on
which the ONNX model itself fails. Each goes to the dead-letter topic with its reason; the rest
is scored exactly; the worker never stops."""

from __future__ import annotations

import io
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import fastavro
import pytest

from tests.support.configs import changed, fraud_config, write_config
from tests.support.faults import Expected
from tests.support.fraud import decode_prediction, workload
from tests.support.hostile import KINDS, hostile, must_dead_letter, plain_schema
from tests.support.kafka_io import TopicReader, Topics, ToSend, committed_offsets, produce
from tests.support.onnx_models import failing_on
from tests.support.worker_process import StartWorker

pytestmark = pytest.mark.integration

LIMIT = 2000
POISON_AMOUNT = 666.66


def test_hundreds_of_hostile_values_are_dead_lettered_with_reasons_and_the_worker_carries_on(
        gen: ModuleType, kafka_bootstrap: str, redis_db_url: str, kafka_topics: Callable[..., Topics],
        topic_reader: Callable[..., TopicReader], start_worker: StartWorker, tmp_path: Path) -> None:
    args, events = workload(gen, redis_db_url, n=1200, seed=51)
    config = fraud_config()
    schema = plain_schema(Path(config["avro"]["input_schema"]))
    rng = random.Random(51)
    kinds = [*KINDS, "tombstone"]
    messages, hostile_values, untouched, still_valid = [], [], [], []
    for i, (message, record) in enumerate(zip(events.messages, events.records, strict=True)):
        assert record is not None
        if i % 3 == 1:  # 400 hostile values of every kind, each in place of a real event
            value = hostile(kinds[i % len(kinds)], rng, message.value or b"", LIMIT)
            messages.append(ToSend(message.key, value, [("n", b"%d" % i)]))
            if must_dead_letter(value, schema, LIMIT):
                hostile_values.append(i)
            else:
                still_valid.append(event_id(schema, value))  # a bit flip, say: a valid Transaction after all
        else:
            messages.append(message)
            untouched.append(record)
    topics = kafka_topics(partitions=3, prefix="hostile")
    sent = produce(kafka_bootstrap, topics.input, messages)
    path = write_config(tmp_path / "fraud.yaml", changed(config, **{"avro.max_value_bytes": LIMIT}))
    worker = start_worker(path, topics, redis_db_url)
    reader = topic_reader(topics.output, topics.dlq)

    scorable = len(untouched) + len(still_valid)
    done = reader.read_until(lambda r: r.count(topics.output) >= scorable and r.count(topics.dlq) >= len(
        hostile_values), 120, alive=worker.alive)
    reader.settle(1.0)

    assert done and worker.alive(), "hostile input must never stop the worker"
    dead = {int(m.headers["n"] or 0): m for m in reader.on(topics.dlq)}
    assert sorted(dead) == hostile_values
    for i, message in dead.items():
        assert message.value == messages[i].value and message.key == messages[i].key
        assert message.headers["dlq.error.stage"] == b"decode"
        assert message.headers["dlq.error.reason"] and message.headers["dlq.error.type"]
    assert len({m.headers["dlq.error.type"] for m in dead.values()}) >= 3, "a reason per kind of damage"
    exact = [r for r in untouched if r["event_id"] not in still_valid]  # a flip may copy another's id
    ids = {r["event_id"] for r in exact}
    tally = Expected(gen, args, exact).tally(
        m.value for m in reader.on(topics.output) if decode_prediction(gen, m.value)["event_id"] in ids)
    assert (tally.missing, tally.wrong, tally.duplicates) == ([], [], 0)
    assert reader.count(topics.output) == scorable
    assert worker.stop() == 0
    ends = Counter(s.partition for s in sent)
    assert committed_offsets(kafka_bootstrap, topics.group, topics.input, topics.partitions) == {
        p: ends[p] for p in range(topics.partitions)}


def event_id(schema: object, value: bytes | None) -> str:
    record = fastavro.schemaless_reader(io.BytesIO(value or b""), schema)  # type: ignore[arg-type]
    assert isinstance(record, dict)
    return str(record["event_id"])


def test_events_the_model_fails_on_are_isolated_and_dead_lettered_and_the_rest_scored_exactly(
        gen: ModuleType, kafka_bootstrap: str, redis_db_url: str, kafka_topics: Callable[..., Topics],
        topic_reader: Callable[..., TopicReader], start_worker: StartWorker, tmp_path: Path) -> None:
    args, events = workload(gen, redis_db_url, n=3000, seed=53)
    messages: list[ToSend] = []
    scorable = []
    poisoned = set()
    for i, (message, record) in enumerate(zip(events.messages, events.records, strict=True)):
        assert record is not None
        if i % 97 == 5:  # the model fails on this amount; the event itself is well-formed
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, gen.TXN, {**record, "amount": POISON_AMOUNT})
            messages.append(ToSend(message.key, buf.getvalue()))
            poisoned.add(record["event_id"])
        else:
            messages.append(message)
            scorable.append(record)
    config = fraud_config()
    model = failing_on(tmp_path / "fails-on-666.onnx", Path(config["model"]["path"]), POISON_AMOUNT)
    path = write_config(tmp_path / "fraud.yaml", changed(config, **{"model.path": str(model)}))
    topics = kafka_topics(partitions=2, prefix="modelfail")
    produce(kafka_bootstrap, topics.input, messages)
    worker = start_worker(path, topics, redis_db_url)
    reader = topic_reader(topics.output, topics.dlq)

    assert reader.read_until(lambda r: r.count(topics.output) >= len(scorable) and r.count(topics.dlq) >= len(
        poisoned), 120, alive=worker.alive)
    reader.settle(1.0)

    dead = reader.on(topics.dlq)
    assert {m.headers["dlq.error.stage"] for m in dead} == {b"inference"}
    assert all(b"the model fails on this event" in (m.headers["dlq.error.reason"] or b"") for m in dead)
    assert {fastavro.schemaless_reader(io.BytesIO(m.value or b""), gen.TXN)["event_id"] for m in dead} == poisoned
    assert len(dead) == len(poisoned)
    tally = Expected(gen, args, scorable).tally(m.value for m in reader.on(topics.output))
    assert (tally.missing, tally.wrong, tally.duplicates, tally.unexpected) == ([], [], 0, 0)
    assert "isolating the events that cause it" in worker.log()
    assert worker.stop() == 0
