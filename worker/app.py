"""Wiring: settings → components → a running worker. The only module besides the CLI that
reads settings."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import REGISTRY

from worker import __version__
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
from worker.telemetry.health import Health, RedisProbe, TelemetryServer
from worker.telemetry.kafka_exporter import KafkaSpanExporter, traces_producer_config
from worker.telemetry.logcontext import BatchLogContext
from worker.telemetry.metrics import Metrics
from worker.telemetry.tracing import (
    BatchSampler,
    BatchTracer,
    Count,
    DiscardingExporter,
    QueueSpanProcessor,
    otlp_exporter,
    tracer_provider,
)
from worker.transactions import TransactionalCheckpointer

logger = logging.getLogger(__name__)
ClientT = TypeVar("ClientT", Consumer, Producer)


def kafka_common(settings: WorkerSettings) -> dict[str, Any]:
    k = settings.kafka
    typed = {"security.protocol": k.security_protocol, "sasl.mechanism": k.sasl_mechanism,
             "sasl.username": k.sasl_username, "ssl.ca.location": k.ssl_ca_location,
             "sasl.password": k.sasl_password.get_secret_value() if k.sasl_password else None}
    return {**{key: v for key, v in typed.items() if v is not None}, **librdkafka_config(k.properties)}


def kafka_client(settings: WorkerSettings) -> dict[str, Any]:
    """The configuration of a plain Kafka client (admin, control table, traces producer)."""
    return {"bootstrap.servers": settings.kafka.bootstrap_servers, **kafka_common(settings)}


def exactly_once(settings: WorkerSettings) -> bool:
    return settings.processing_guarantee == "exactly-once"


def make_consumer(settings: WorkerSettings, extra: dict[str, Any] | None = None) -> Consumer:
    k, b = settings.kafka, settings.batch
    own: dict[str, Any] = {
        "auto.offset.reset": k.auto_offset_reset, "session.timeout.ms": k.session_timeout_ms,
        "queued.min.messages": max(b.max_in_flight_events // 4, b.max_events),
        "queued.max.messages.kbytes": b.max_in_flight_mb * 1024 // 2,
        **librdkafka_config(k.consumer), **(extra or {})}
    if k.group_instance_id:
        own["group.instance.id"] = k.group_instance_id
    if exactly_once(settings):
        own["isolation.level"] = "read_committed"  # never score input from aborted transactions
    return _client(Consumer, consumer_config(k.bootstrap_servers, k.group_id, kafka_common(settings), own))


def transactional_id(settings: WorkerSettings) -> str:
    """Stable per replica when it can be (so a restart aborts what its predecessor left open at
    once), else unique per process (a zombie is then fenced through the group generation, KIP-447)."""
    k = settings.kafka
    if k.transactional_id:
        return k.transactional_id
    if k.group_instance_id:
        return f"{k.group_id}-{k.group_instance_id}"
    return f"{k.group_id}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def make_producer(settings: WorkerSettings, extra: dict[str, Any] | None = None,
                  error_cb: Callable[[KafkaError], None] | None = None) -> Producer:
    """The producer; its own queue limits are twice the in-flight cap the loop waits at (``Sink``),
    so that a batch never blocks inside ``produce`` with the consumer unpolled."""
    k, b = settings.kafka, settings.batch
    own: dict[str, Any] = {"queue.buffering.max.messages": 2 * b.max_in_flight_events + b.max_events,
                           "queue.buffering.max.kbytes": b.max_in_flight_mb * 1024,
                           **librdkafka_config(k.producer), **(extra or {})}
    if error_cb is not None:
        own["error_cb"] = error_cb
    return _client(Producer, producer_config(k.bootstrap_servers, kafka_common(settings), own))


def make_sink(settings: WorkerSettings, producer_extra: dict[str, Any] | None = None) -> Sink:
    """The sink; in exactly-once mode its producers (a replacement too) share one transactional id."""
    k, b = settings.kafka, settings.batch
    extra: dict[str, Any] = dict(producer_extra or {})
    if exactly_once(settings):
        extra |= {"transactional.id": transactional_id(settings), "transaction.timeout.ms": k.transaction_timeout_ms}
        logger.info("exactly-once: transactional id %s", extra["transactional.id"])
    return Sink(lambda error_cb: make_producer(settings, extra, error_cb), k.output_topic, k.dlq_topic, k.group_id,
                b.max_in_flight_events, b.max_in_flight_mb * (1 << 20) // 2)


def make_checkpointer(settings: WorkerSettings, consumer: Consumer, sink: Sink) -> Checkpointer:
    interval_s, timeout_s = settings.batch.commit_interval_ms / 1000, settings.kafka.commit_timeout_ms / 1000
    if not exactly_once(settings):
        return Checkpointer(consumer, sink, interval_s, timeout_s)
    checkpointer = TransactionalCheckpointer(consumer, sink, interval_s, timeout_s,
                                             settings.kafka.transaction_timeout_ms / 1000)
    checkpointer.initialise(settings.kafka.startup_timeout_s)
    return checkpointer


def loop_settings(settings: WorkerSettings) -> LoopSettings:
    b, f = settings.batch, settings.faults
    return LoopSettings(b.max_events, b.latency_budget_ms / 1000, f.retry_initial_ms / 1000, f.retry_max_ms / 1000,
                        f.probe_interval_ms / 1000, f.degrade_after_retries if f.on_redis_down == "degrade" else None)


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


@dataclass
class Telemetry:
    """What telemetry adds to a worker: observers, Kafka client callbacks, and the background parts
    to close at the end."""

    observers: list[Observer] = field(default_factory=list)
    consumer_config: dict[str, Any] = field(default_factory=dict)
    producer_config: dict[str, Any] = field(default_factory=dict)
    health: Health | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            try:
                close()
            except Exception:  # closing one part must not keep the others open
                logger.exception("error while closing telemetry")


def required_topics(settings: WorkerSettings) -> list[str]:
    """Every topic the configuration uses: input, output, dead letters, shadow, traces."""
    k, tracing = settings.kafka, settings.telemetry.tracing
    traces = [tracing.topic] if tracing.enabled and tracing.exporter == "kafka" else []
    return list(dict.fromkeys([*k.input_topics, k.output_topic, k.dlq_topic, *lifecycle.topics(settings), *traces]))


def make_telemetry(settings: WorkerSettings) -> Telemetry:
    """Starts the metrics and health server (if a port is set) and tracing (if enabled)."""
    telemetry = Telemetry(observers=[BatchLogContext()])
    try:
        metrics = _start_metrics(settings, telemetry) if settings.telemetry.port else None
        if settings.telemetry.tracing.enabled:
            _start_tracing(settings, telemetry, metrics.count_spans if metrics else None)
    except BaseException:
        telemetry.close()
        raise
    return telemetry


def _start_metrics(settings: WorkerSettings, telemetry: Telemetry) -> Metrics:
    t = settings.telemetry
    metrics = Metrics(REGISTRY, __version__, t.event_time_field, t.event_time_unit)
    health = Health(t.liveness_timeout_s)
    server = TelemetryServer(t.host, t.port, health, REGISTRY)
    store = make_store(settings)
    probe = RedisProbe(store, t.redis_check_interval_s, f"Redis at {store.address.redacted()}")
    health.checks["redis"] = probe.up
    server.start()
    telemetry.closers.append(server.close)
    probe.start()
    telemetry.closers.append(probe.stop)
    telemetry.observers += [metrics, health]
    telemetry.health = health
    telemetry.consumer_config["error_cb"] = metrics.kafka_errors_of("consumer")
    if t.kafka_stats_interval_ms:
        telemetry.consumer_config.update({"statistics.interval.ms": t.kafka_stats_interval_ms,
                                          "stats_cb": metrics.kafka_statistics})
    telemetry.producer_config["error_cb"] = metrics.kafka_errors_of("producer")
    logger.info("metrics and health probes on http://%s:%d (/metrics, /livez, /readyz)", t.host, server.port,
                extra={"port": server.port})
    return metrics


def _start_tracing(settings: WorkerSettings, telemetry: Telemetry, count: Count | None) -> None:
    tr, k = settings.telemetry.tracing, settings.kafka
    processor = QueueSpanProcessor(make_span_exporter(settings, telemetry, count), tr.queue_size,
                                   tr.export_interval_ms / 1000, count=count)
    provider = tracer_provider(processor, settings.telemetry.service_name, __version__, tr.max_links)
    telemetry.closers.append(provider.shutdown)
    tracer = BatchTracer(provider.get_tracer("worker", __version__), BatchSampler(tr.sample_ratio, tr.follow_upstream),
                         k.group_id, k.output_topic, tr.max_links)
    telemetry.observers.append(tracer)
    where = f"Kafka topic {tr.topic}" if tr.exporter == "kafka" else tr.endpoint or tr.exporter
    logger.info("tracing %g of batches%s; spans to %s", tr.sample_ratio,
                " and every batch with a sampled upstream event" if tr.follow_upstream else "", where,
                extra={"exporter": tr.exporter})


def make_span_exporter(settings: WorkerSettings, telemetry: Telemetry, count: Count | None) -> SpanExporter:
    tr = settings.telemetry.tracing
    if tr.exporter == "kafka":
        config = traces_producer_config(kafka_client(settings))
        return KafkaSpanExporter(_client(Producer, config), tr.topic, count=count)
    if tr.exporter == "none":
        return DiscardingExporter()
    return otlp_exporter(tr.exporter, tr.endpoint)


def build_runner(settings: WorkerSettings, observers: Sequence[Observer] = (),
                 telemetry: Telemetry | None = None) -> Runner:
    """Validate, load the model, wait for Redis and Kafka, and assemble the loop."""
    t = telemetry or Telemetry()
    compiled = compile_settings(settings)
    lifecycle.check_configured_model(settings, compiled)
    store = make_store(settings)
    wait_until_ready(store, settings.redis.startup_timeout_s)
    k = settings.kafka
    consumer = make_consumer(settings, t.consumer_config)
    wait_for_topics(consumer, required_topics(settings), k.startup_timeout_s)
    pipeline = make_pipeline(settings, compiled, store)
    sink = make_sink(settings, t.producer_config)
    checkpointer = make_checkpointer(settings, consumer, sink)
    client = kafka_client(settings)
    # The shadow publisher produces with the sink's producer (inside the transaction, in exactly-once
    # mode); should the sink replace a broken producer, shadow deliveries on the old one fail and are counted.
    observers = [*lifecycle.start(settings, compiled, pipeline.slot, sink.producer, client), *observers]
    if t.health is not None:
        t.health.checks["model"] = lambda: pipeline.slot.model is not None
    return Runner(consumer, list(k.input_topics), pipeline, sink, checkpointer, loop_settings(settings),
                  [*t.observers, ProgressLog(), *observers], probe=store.ping)


def run(settings: WorkerSettings, stats_file: Path | None = None, launched_at: float | None = None) -> None:
    telemetry = make_telemetry(settings)
    try:
        observers = [RunStats(stats_file, launched_at or time.time())] if stats_file else []
        runner = build_runner(settings, observers, telemetry)
        runner.install_signal_handlers()
        runner.run(ready=lambda: logger.info("worker ready"))
    finally:
        telemetry.close()
