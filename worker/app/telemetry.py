"""Telemetry from settings: the metrics and health server, tracing and the log context."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import REGISTRY

from worker import __version__
from worker.app.components import make_store
from worker.app.kafka import ClientHooks, kafka_client
from worker.config.settings import WorkerSettings
from worker.kafka.config import traces_producer_config
from worker.kafka.confluent import ConfluentProducer
from worker.runner.observer import Observer
from worker.telemetry.health import Health, RedisProbe, TelemetryServer
from worker.telemetry.kafka_exporter import KafkaSpanExporter
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

logger = logging.getLogger(__name__)


@dataclass
class Telemetry:
    """What telemetry adds to a worker: observers, Kafka client callbacks, and the background parts
    to close at the end."""

    observers: list[Observer] = field(default_factory=list)
    hooks: ClientHooks = field(default_factory=ClientHooks)
    health: Health | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            try:
                close()
            except Exception:  # closing one part must not keep the others open
                logger.exception("error while closing telemetry")


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
    probe = RedisProbe(store, t.redis_check_interval_s, f"Redis at {store.redacted()}")
    health.checks["redis"] = probe.up
    server.start()
    telemetry.closers.append(server.close)
    probe.start()
    telemetry.closers.append(probe.stop)
    telemetry.observers += [metrics, health]
    telemetry.health = health
    telemetry.hooks = ClientHooks(metrics.kafka_errors_of("consumer"), metrics.kafka_errors_of("producer"),
                                  metrics.kafka_statistics, t.kafka_stats_interval_ms)
    logger.info("metrics and health probes on http://%s:%d (/metrics, /livez, /readyz)", t.host, server.port,
                extra={"port": server.port})
    return metrics


def _start_tracing(settings: WorkerSettings, telemetry: Telemetry, count: Count | None) -> None:
    tr, k = settings.telemetry.tracing, settings.kafka
    processor = QueueSpanProcessor(make_span_exporter(settings, count), tr.queue_size,
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


def make_span_exporter(settings: WorkerSettings, count: Count | None) -> SpanExporter:
    tr = settings.telemetry.tracing
    if tr.exporter == "kafka":
        producer = ConfluentProducer(traces_producer_config(kafka_client(settings)))
        return KafkaSpanExporter(producer, tr.topic, count=count)
    if tr.exporter == "none":
        return DiscardingExporter()
    return otlp_exporter(tr.exporter, tr.endpoint)
