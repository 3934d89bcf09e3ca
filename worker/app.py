"""Wiring: settings → components → a running worker. The only module besides the CLI that
reads settings."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaException, Producer

from worker.assembly import Assembler
from worker.codecs import (
    ConfluentAvroDecoder,
    ConfluentAvroEncoder,
    Decoder,
    Encoder,
    HttpSchemaRegistry,
    PlainAvroDecoder,
    PlainAvroEncoder,
)
from worker.compile import Compiled, compile_settings
from worker.errors import StartupError
from worker.features import FeatureFetcher, FeatureStore
from worker.kafka import Checkpointer, Sink, consumer_config, producer_config, wait_for_topics
from worker.models import app as lifecycle
from worker.pipeline import ModelSlot, Pipeline
from worker.progress import ProgressLog
from worker.redis_store import RedisAddress, RedisFeatureStore, wait_until_ready
from worker.runner import LoopSettings, Observer, Runner
from worker.settings import WorkerSettings, librdkafka_config
from worker.stats import RunStats

logger = logging.getLogger(__name__)
ClientT = TypeVar("ClientT", Consumer, Producer)


def kafka_common(settings: WorkerSettings) -> dict[str, Any]:
    k = settings.kafka
    typed = {"security.protocol": k.security_protocol, "sasl.mechanism": k.sasl_mechanism,
             "sasl.username": k.sasl_username, "ssl.ca.location": k.ssl_ca_location,
             "sasl.password": k.sasl_password.get_secret_value() if k.sasl_password else None}
    return {**{key: v for key, v in typed.items() if v is not None}, **librdkafka_config(k.properties)}


def make_consumer(settings: WorkerSettings) -> Consumer:
    k, b = settings.kafka, settings.batch
    own = {"auto.offset.reset": k.auto_offset_reset, "session.timeout.ms": k.session_timeout_ms,
           "queued.min.messages": max(b.max_in_flight_events // 4, b.max_events),
           "queued.max.messages.kbytes": b.max_in_flight_mb * 1024 // 2,
           **librdkafka_config(k.consumer)}
    return _client(Consumer, consumer_config(k.bootstrap_servers, k.group_id, kafka_common(settings), own))


def make_producer(settings: WorkerSettings, extra: dict[str, Any] | None = None) -> Producer:
    k, b = settings.kafka, settings.batch
    own = {"queue.buffering.max.messages": b.max_in_flight_events,
           "queue.buffering.max.kbytes": b.max_in_flight_mb * 1024 // 2,
           **librdkafka_config(k.producer), **(extra or {})}
    return _client(Producer, producer_config(k.bootstrap_servers, kafka_common(settings), own))


def _client(kind: type[ClientT], config: dict[str, Any]) -> ClientT:
    try:
        return kind(config)
    except KafkaException as exc:
        raise StartupError(f"invalid Kafka client configuration: {exc.args[0].str()}") from exc


def make_store(settings: WorkerSettings) -> RedisFeatureStore:
    r = settings.redis
    password = r.password.get_secret_value() if r.password else None
    try:
        address = RedisAddress.from_url(r.url, password)
    except ValueError as exc:
        raise StartupError(f"redis.url: {exc}") from exc
    return RedisFeatureStore(address, r.timeout_s, str(r.ca_file) if r.ca_file else None)


def make_registry(settings: WorkerSettings) -> HttpSchemaRegistry:
    a = settings.avro
    if not a.schema_registry_url:
        raise StartupError("avro.schema_registry_url is not set")
    password = a.schema_registry_password.get_secret_value() if a.schema_registry_password else None
    return HttpSchemaRegistry(a.schema_registry_url, a.schema_registry_username, password)


def make_codecs(settings: WorkerSettings, compiled: Compiled) -> tuple[Decoder, Encoder]:
    a = settings.avro
    if a.framing == "plain":
        decoder: Decoder = PlainAvroDecoder(compiled.input_schema, a.max_value_bytes)
        encoder: Encoder = PlainAvroEncoder(compiled.output_schema)
    else:
        registry = make_registry(settings)
        decoder = ConfluentAvroDecoder(registry, compiled.input_schema, a.max_value_bytes)
        subject = a.output_subject or f"{settings.kafka.output_topic}-value"
        encoder = ConfluentAvroEncoder(compiled.output_schema, registry, subject, compiled.output_schema_text)
    return decoder, encoder


def make_pipeline(settings: WorkerSettings, compiled: Compiled, store: FeatureStore,
                  clock: Callable[[], int] = time.perf_counter_ns) -> Pipeline:
    decoder, encoder = make_codecs(settings, compiled)
    return Pipeline(decoder, FeatureFetcher(store, compiled.entities), Assembler(compiled.tensors),
                    ModelSlot(compiled.model), compiled.builder, encoder, clock)


def build_runner(settings: WorkerSettings, observers: Sequence[Observer] = ()) -> Runner:
    """Validate, load the model, wait for Redis and Kafka, and assemble the loop."""
    compiled = compile_settings(settings)
    lifecycle.check_configured_model(settings, compiled)
    store = make_store(settings)
    wait_until_ready(store, settings.redis.startup_timeout_s)
    k = settings.kafka
    consumer = make_consumer(settings)
    wait_for_topics(consumer, [*k.input_topics, k.output_topic, k.dlq_topic, *lifecycle.topics(settings)],
                    k.startup_timeout_s)
    producer = make_producer(settings)
    pipeline = make_pipeline(settings, compiled, store)
    client = {"bootstrap.servers": k.bootstrap_servers, **kafka_common(settings)}
    observers = [*lifecycle.start(settings, compiled, pipeline.slot, producer, client), *observers]
    sink = Sink(producer, k.output_topic, k.dlq_topic, k.group_id)
    checkpointer = Checkpointer(consumer, sink, settings.batch.commit_interval_ms / 1000)
    loop = LoopSettings(settings.batch.max_events, settings.batch.latency_budget_ms / 1000)
    return Runner(consumer, list(k.input_topics), pipeline, sink, checkpointer, loop, [ProgressLog(), *observers])


def run(settings: WorkerSettings, stats_file: Path | None = None, launched_at: float | None = None) -> None:
    observers = [RunStats(stats_file, launched_at or time.time())] if stats_file else []
    runner = build_runner(settings, observers)
    runner.install_signal_handlers()
    runner.run(ready=lambda: logger.info("worker ready"))
