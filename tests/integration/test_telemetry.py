"""Telemetry end to end: the worker as a process on the fraud workload, a real broker, a real Redis.

- Traces: events carry a producer ``traceparent``; the traces topic is read the way the
  OpenTelemetry Collector's Kafka receiver reads it (OTLP protobuf), and every batch span must
  link to its events' producer traces, have its stage children, and be the parent named by the
  ``traceparent`` of its predictions and dead letters.
- Metrics and health: ``/metrics`` counts match the events exactly, lag follows a Redis
  outage, ``/readyz`` flips while Redis is stopped, and no secret reaches the log.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from tests.integration.test_fraud_contract import wait_for, workload
from tests.support.configs import changed, fraud_config, write_config
from tests.support.fraud import decode_prediction
from tests.support.infra import RedisServer, free_port
from tests.support.kafka_io import Consumed, TopicReader, Topics, ToSend, create_topic, produce
from tests.support.telemetry import (
    KIND_CONSUMER,
    KIND_PRODUCER,
    STATUS_ERROR,
    SpanRecord,
    decode_request,
    http_get,
    metric_samples,
    readiness,
    total,
    wait_http,
)
from tests.support.worker_process import StartWorker
from worker.telemetry.context import parse_traceparent

pytestmark = pytest.mark.integration

STAGES = {"decode", "features", "assemble", "inference", "encode", "produce", "deliver", "commit"}


def producer_context(rng: random.Random) -> tuple[str, str]:
    return f"{rng.getrandbits(128):032x}", f"{rng.getrandbits(64):016x}"


def traced(messages: list[ToSend], contexts: list[tuple[str, str]]) -> list[ToSend]:
    """The messages with a sampled producer ``traceparent`` each, after their own headers."""
    return [ToSend(m.key, m.value, [*(m.headers or []), ("traceparent", f"00-{t}-{s}-01".encode())])
            for m, (t, s) in zip(messages, contexts, strict=True)]


def spans_read(reader: TopicReader) -> list[SpanRecord]:
    return [span for m in reader.messages for span in decode_request(m.value or b"")]


def worker_context(message: Consumed, header: str = "traceparent") -> tuple[str, str]:
    upstream = parse_traceparent(message.headers.get(header))
    assert upstream is not None and upstream.sampled, f"{header} missing or not sampled: {message.headers}"
    return f"{upstream.trace_id:032x}", f"{upstream.span_id:016x}"


def test_traces_follow_each_event_through_kafka(
        gen: ModuleType, kafka_bootstrap: str, redis_db_url: str, kafka_topics: Callable[..., Topics],
        topic_reader: Callable[..., TopicReader], start_worker: StartWorker, tmp_path: Path) -> None:
    _, events = workload(gen, redis_db_url, n=600, seed=41, poison_every=100)
    topics = kafka_topics(partitions=2, prefix="traced")
    traces_topic = create_topic(kafka_bootstrap, f"traces-{uuid.uuid4().hex[:10]}", partitions=2)
    rng = random.Random(41)
    contexts = [producer_context(rng) for _ in events.messages]
    # Sampling ratio 0: every batch is traced only because its producers sampled their traces.
    config = write_config(tmp_path / "fraud.yaml", changed(
        fraud_config(), **{"batch.max_events": 100, "batch.commit_interval_ms": 200,
                           "telemetry.tracing": {"enabled": True, "sample_ratio": 0.0, "topic": traces_topic,
                                                 "export_interval_ms": 100}}))
    sent = produce(kafka_bootstrap, topics.input, traced(events.messages, contexts))
    worker = start_worker(config, topics, redis_db_url)
    reader = topic_reader(topics.output, topics.dlq)
    wait_for(reader, topics, len(events.good), len(events.poison), worker)

    outputs, dead = reader.on(topics.output), reader.on(topics.dlq)
    batch_ids = {worker_context(m) for m in outputs} | {worker_context(m, "dlq.traceparent") for m in dead}
    traces = topic_reader(traces_topic)

    def complete(r: TopicReader) -> bool:
        spans = spans_read(r)
        ended = {(s.trace_id, s.span_id) for s in spans}
        committed = {(s.trace_id, s.parent_span_id) for s in spans if s.name == "commit"}
        return batch_ids <= ended and batch_ids <= committed
    assert traces.read_until(complete, 60, alive=worker.alive), "batch spans missing from the traces topic"
    assert worker.stop() == 0
    traces.settle(0.5)
    spans = spans_read(traces)

    # Each trace travels as its own message, keyed by its trace id.
    for message in traces.messages:
        assert {s.trace_id for s in decode_request(message.value or b"")} == {(message.key or b"").decode()}
    batches = {(s.trace_id, s.span_id): s for s in spans if s.parent_span_id == ""}
    assert set(batches) >= batch_ids
    assert sum(s.attributes["messaging.batch.message_count"] for s in batches.values()) == len(sent), \
        "every event is in exactly one traced batch"
    children: dict[tuple[str, str], list[SpanRecord]] = defaultdict(list)
    for s in spans:
        if s.parent_span_id:
            children[(s.trace_id, s.parent_span_id)].append(s)
    for key, batch in batches.items():
        assert_batch_span(batch, children[key], topics)

    # Each prediction names its batch's span, which links to its event's producer trace.
    by_event = {rec["event_id"]: i for i, rec in enumerate(events.records) if rec is not None}
    for message in outputs:
        batch = batches[worker_context(message)]
        producer_trace, producer_span = contexts[by_event[decode_prediction(gen, message.value)["event_id"]]]
        assert any(link.trace_id == producer_trace and link.span_id == producer_span for link in batch.links)

    # A dead letter keeps the producer's traceparent and carries the worker's as dlq.traceparent.
    position = {(s.partition, s.offset): i for i, s in enumerate(sent)}
    for message in dead:
        source = (int(message.headers["dlq.source.partition"] or 0), int(message.headers["dlq.source.offset"] or 0))
        i = position[source]
        assert message.headers["traceparent"] == f"00-{contexts[i][0]}-{contexts[i][1]}-01".encode()
        batch = batches[worker_context(message, "dlq.traceparent")]
        decode_spans = [s for s in children[(batch.trace_id, batch.span_id)] if s.name == "decode"]
        assert decode_spans[0].status_code == STATUS_ERROR
        assert any(attrs.get("messaging.kafka.offset") == sent[i].offset for _, attrs in decode_spans[0].events)


def assert_batch_span(batch: SpanRecord, children: list[SpanRecord], topics: Topics) -> None:
    assert batch.name == f"process {topics.input}"
    assert batch.kind == KIND_CONSUMER
    assert batch.resource["service.name"] == "inference-worker"
    a = batch.attributes
    assert (a["messaging.system"], a["messaging.operation.type"]) == ("kafka", "process")
    assert a["messaging.destination.name"] == topics.input
    assert a["messaging.consumer.group.name"] == topics.group
    assert (a["worker.model.name"], a["worker.model.version"]) == ("fraud-gbdt", "1")
    assert len(batch.links) == a["messaging.batch.message_count"], "one link per event (all distinct)"
    assert a["worker.links_dropped"] == 0
    assert a["worker.kafka.offsets"], "offset ranges"
    names = Counter(c.name for c in children)
    assert set(names) == STAGES and set(names.values()) == {1}, names
    for child in children:
        assert batch.start_ns <= child.start_ns <= child.end_ns <= batch.end_ns, child.name
    inference = next(c for c in children if c.name == "inference")
    assert inference.attributes["worker.model.version"] == "1"
    produce_span = next(c for c in children if c.name == "produce")
    assert produce_span.kind == KIND_PRODUCER
    assert produce_span.attributes["messaging.destination.name"] == topics.output


@pytest.mark.slow
def test_metrics_count_exactly_readiness_follows_redis_and_no_secret_is_logged(
        gen: ModuleType, kafka_bootstrap: str, make_redis_server: Callable[..., RedisServer],
        kafka_topics: Callable[..., Topics], topic_reader: Callable[..., TopicReader], start_worker: StartWorker,
        tmp_path: Path) -> None:
    redis_password, sasl_password = f"redis-{uuid.uuid4().hex}", f"sasl-{uuid.uuid4().hex}"
    server = make_redis_server("--requirepass", redis_password)
    redis_url = f"redis://:{redis_password}@{server.host}:{server.port}/0"
    _, events = workload(gen, redis_url, n=1500, seed=43, poison_every=150)
    topics = kafka_topics(partitions=2, prefix="metrics")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = write_config(tmp_path / "fraud.yaml", changed(
        fraud_config(), **{"batch.max_events": 200, "log_format": "json", "kafka.sasl_password": sasl_password,
                           "telemetry": {"port": port, "host": "127.0.0.1", "redis_check_interval_s": 0.2,
                                         "kafka_stats_interval_ms": 300}}))
    worker = start_worker(config, topics, redis_url)
    # The server is up while the worker starts; joining the group takes seconds on any broker.
    status, body = wait_http(f"{base}/readyz", lambda status, _: status in (200, 503), alive=worker.alive)
    assert status == 503 and not json.loads(body)["checks"]["group"]
    assert http_get(f"{base}/livez")[0] == 200, "alive while starting"
    wait_http(f"{base}/readyz", lambda status, _: status == 200, alive=worker.alive)
    assert readiness(f"{base}/readyz")["checks"] == {"model": True, "redis": True, "group": True, "running": True}

    sent = produce(kafka_bootstrap, topics.input, events.messages)
    reader = topic_reader(topics.output, topics.dlq)
    wait_for(reader, topics, len(events.good), len(events.poison), worker)
    samples = metric_samples(wait_http(f"{base}/metrics", lambda _, body: caught_up(body, topics))[1])
    assert total(samples, "worker_events_consumed_total") == len(sent)
    assert total(samples, "worker_predictions_total") == len(events.good) == reader.count(topics.output)
    assert total(samples, "worker_dead_letters_total", stage="decode") == len(events.poison)
    assert total(samples, "worker_dead_letters_total") == len(events.poison)
    assert total(samples, "worker_event_age_seconds_count") == len(sent), "every event's age, sampled per batch"
    batches = total(samples, "worker_batch_size_count")
    assert total(samples, "worker_batch_size_sum") == len(sent) and batches >= len(sent) / 200
    assert total(samples, "worker_stage_duration_seconds_count", stage="decode") == batches
    assert total(samples, "worker_added_latency_seconds_count") == batches
    assert total(samples, "worker_info", model_name="fraud-gbdt", model_version="1") == 1
    assert total(samples, "worker_assigned_partitions") == topics.partitions
    assert total(samples, "process_resident_memory_bytes") > 0

    # Redis goes away: readiness fails, held events show as lag, and come back when Redis does.
    server.stop()
    wait_http(f"{base}/readyz", lambda status, body: status == 503 and not json.loads(body)["checks"]["redis"])
    more = produce(kafka_bootstrap, topics.input, events.messages[:100])
    stuck = metric_samples(wait_http(f"{base}/metrics", lambda _, body: lagging(body, seconds=2.0))[1])
    assert total(stuck, "worker_dependency_errors_total", dependency="redis") >= 1
    assert http_get(f"{base}/livez")[0] == 200, "a held batch is not a dead loop"
    server.start()
    wait_http(f"{base}/readyz", lambda status, _: status == 200)
    final = metric_samples(wait_http(f"{base}/metrics", lambda _, body: caught_up(body, topics))[1])
    assert total(final, "worker_events_consumed_total") == len(sent) + len(more)

    assert worker.stop() == 0
    log = worker.log()
    assert redis_password not in log and sasl_password not in log
    worker_lines = [line for line in log.splitlines() if line.startswith("{")]
    assert worker_lines and all(json.loads(line)["level"] for line in worker_lines)
    assert readiness_lines(worker_lines) == ["does not answer", "answers"]


def caught_up(page: str, topics: Topics) -> bool:
    samples = metric_samples(page)
    seconds = [v for (name, labels), v in samples.items() if name == "worker_consumer_lag_seconds"]
    messages = [v for (name, labels), v in samples.items() if name == "worker_consumer_lag_messages"]
    return len(seconds) == len(messages) == topics.partitions and not any(seconds) and not any(messages)


def lagging(page: str, seconds: float) -> bool:
    samples = metric_samples(page)
    return any(v >= seconds for (name, _), v in samples.items() if name == "worker_consumer_lag_seconds") and \
        any(v > 0 for (name, _), v in samples.items() if name == "worker_consumer_lag_messages")


def readiness_lines(lines: list[str]) -> list[str]:
    """The readiness changes the worker logged after it was first ready, in order."""
    messages = [json.loads(line)["message"] for line in lines]
    found = [m for m in messages if m.startswith("readiness: ")]
    return [("does not answer" if "does not answer" in m else "answers") for m in found[1:]]

