"""The worker's Kafka clients from settings."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from worker.config.settings import WorkerSettings, librdkafka_config
from worker.kafka.admin import wait_for_topics
from worker.kafka.checkpoint import Checkpointer
from worker.kafka.config import consumer_config, producer_config
from worker.kafka.confluent import ConfluentAdmin, ConfluentConsumer, ConfluentProducer
from worker.kafka.port import Fault, Metadata
from worker.kafka.sink import Sink
from worker.kafka.transactions import TransactionalCheckpointer
from worker.runner.stall import OutputWatch

logger = logging.getLogger(__name__)

QUIET = {"log_level": 2}
"""For the hands-on tools' clients: librdkafka logs only critical errors; the tools report the rest."""


@dataclass
class ClientHooks:
    """Callbacks telemetry adds to the worker's consumer and producer."""

    consumer_errors: Callable[[Fault], None] | None = None
    producer_errors: Callable[[Fault], None] | None = None
    statistics: Callable[[str], None] | None = None
    statistics_interval_ms: int = 0


def kafka_common(settings: WorkerSettings) -> dict[str, Any]:
    k = settings.kafka
    typed = {"security.protocol": k.security_protocol, "sasl.mechanism": k.sasl_mechanism,
             "sasl.username": k.sasl_username, "ssl.ca.location": k.ssl_ca_location,
             "ssl.certificate.location": k.ssl_certificate_location, "ssl.key.location": k.ssl_key_location,
             "sasl.password": k.sasl_password.get_secret_value() if k.sasl_password else None,
             "ssl.key.password": k.ssl_key_password.get_secret_value() if k.ssl_key_password else None}
    return {**{key: v for key, v in typed.items() if v is not None}, **librdkafka_config(k.properties)}


KAFKA_REFUSALS = {"server_certificate": "kafka.ssl_ca_location",
                  "client_certificate": "kafka.ssl_certificate_location and kafka.ssl_key_location",
                  "credentials": "kafka.sasl_mechanism, kafka.sasl_username and kafka.sasl_password"}
"""The settings that decide each kind of refusal (``worker.startup.REFUSALS``), for its error line."""


def wait_for_kafka(settings: WorkerSettings, metadata: Metadata, topics: Sequence[str]) -> None:
    """Until the brokers answer and list ``topics``: ``StartupError`` after ``kafka.startup_timeout_s``,
    or at once if they refuse the worker's certificate or credentials."""
    k = settings.kafka
    wait_for_topics(metadata, topics, k.startup_timeout_s, k.bootstrap_servers, KAFKA_REFUSALS)


def kafka_client(settings: WorkerSettings) -> dict[str, Any]:
    """The configuration of a plain Kafka client (admin, control table, traces producer)."""
    return {"bootstrap.servers": settings.kafka.bootstrap_servers, **kafka_common(settings)}


def exactly_once(settings: WorkerSettings) -> bool:
    return settings.processing_guarantee == "exactly-once"


def make_consumer(settings: WorkerSettings, hooks: ClientHooks | None = None) -> ConfluentConsumer:
    k, b, h = settings.kafka, settings.batch, hooks or ClientHooks()
    own: dict[str, Any] = {
        "auto.offset.reset": k.auto_offset_reset, "session.timeout.ms": k.session_timeout_ms,
        "queued.min.messages": max(b.max_in_flight_events // 4, b.max_events),
        "queued.max.messages.kbytes": b.max_in_flight_mb * 1024 // 2,
        **librdkafka_config(k.consumer)}
    statistics = h.statistics if h.statistics_interval_ms else None
    if statistics is not None:
        own["statistics.interval.ms"] = h.statistics_interval_ms
    if k.group_instance_id:
        own["group.instance.id"] = k.group_instance_id
    if exactly_once(settings):
        own["isolation.level"] = "read_committed"  # never score input from aborted transactions
    config = consumer_config(k.bootstrap_servers, k.group_id, kafka_common(settings), own)
    return ConfluentConsumer(config, h.consumer_errors, statistics)


def transactional_id(settings: WorkerSettings) -> str:
    """Stable per replica when it can be (so a restart aborts what its predecessor left open at
    once), else unique per process (a zombie is then fenced through the group generation, KIP-447)."""
    k = settings.kafka
    if k.transactional_id:
        return k.transactional_id
    if k.group_instance_id:
        return f"{k.group_id}-{k.group_instance_id}"
    return f"{k.group_id}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def unstable_transactional_id(settings: WorkerSettings) -> str | None:
    """In exactly-once mode without a transactional id stable per replica, what a crash costs."""
    k = settings.kafka
    if not exactly_once(settings) or k.transactional_id or k.group_instance_id:
        return None
    return (f"exactly-once with a transactional id unique per process: after a crash, read_committed "
            f"consumers of the outputs wait for the dead producer's open transaction until the broker times "
            f"it out (kafka.transaction_timeout_ms, {k.transaction_timeout_ms / 1000:g} s; some brokers, tansu "
            f"and noida-db, never do). Set kafka.group_instance_id (or kafka.transactional_id) to a name stable "
            f"per replica, such as its StatefulSet pod name, and a restart aborts it at once")


def make_producer(settings: WorkerSettings, extra: dict[str, Any] | None = None,
                  on_error: Callable[[Fault], None] | None = None) -> ConfluentProducer:
    """The producer; its own queue limits are twice the in-flight cap the loop waits at (``Sink``),
    so that a batch never blocks inside ``produce`` with the consumer unpolled."""
    k, b = settings.kafka, settings.batch
    own: dict[str, Any] = {"queue.buffering.max.messages": 2 * b.max_in_flight_events + b.max_events,
                           "queue.buffering.max.kbytes": b.max_in_flight_mb * 1024,
                           **librdkafka_config(k.producer), **(extra or {})}
    return ConfluentProducer(producer_config(k.bootstrap_servers, kafka_common(settings), own), on_error)


def make_sink(settings: WorkerSettings, hooks: ClientHooks | None = None) -> Sink:
    """The sink; in exactly-once mode its producers (a replacement too) share one transactional id."""
    k, b = settings.kafka, settings.batch
    extra: dict[str, Any] = {}
    if exactly_once(settings):
        extra |= {"transactional.id": transactional_id(settings), "transaction.timeout.ms": k.transaction_timeout_ms}
        logger.info("exactly-once: transactional id %s", extra["transactional.id"])
        warning = unstable_transactional_id(settings)
        if warning:
            logger.warning(warning)
    telemetry = hooks.producer_errors if hooks else None

    def new_producer(on_error: Callable[[Fault], None]) -> ConfluentProducer:
        return make_producer(settings, extra, on_error if telemetry is None else _both(on_error, telemetry))

    return Sink(new_producer, k.output_topic, k.dlq_topic, k.group_id, b.max_in_flight_events,
                b.max_in_flight_mb * (1 << 20) // 2)


def _both(first: Callable[[Fault], None], second: Callable[[Fault], None]) -> Callable[[Fault], None]:
    def both(fault: Fault) -> None:
        first(fault)
        second(fault)
    return both


def make_checkpointer(settings: WorkerSettings, consumer: ConfluentConsumer, sink: Sink) -> Checkpointer:
    interval_s, timeout_s = settings.batch.commit_interval_ms / 1000, settings.kafka.commit_timeout_ms / 1000
    if not exactly_once(settings):
        return Checkpointer(consumer, sink, interval_s, timeout_s)
    checkpointer = TransactionalCheckpointer(consumer, sink, interval_s, timeout_s,
                                             settings.kafka.transaction_timeout_ms / 1000)
    checkpointer.initialise(settings.kafka.startup_timeout_s)
    return checkpointer


def make_admin(settings: WorkerSettings, quiet: bool = True) -> ConfluentAdmin:
    return ConfluentAdmin({**kafka_client(settings), **(QUIET if quiet else {})})


def make_output_watch(settings: WorkerSettings) -> OutputWatch | None:
    """In exactly-once mode, a watch on the output and dead-letter partitions for transactions left open."""
    if not exactly_once(settings):
        return None
    k = settings.kafka
    longest_transaction_s = (settings.batch.commit_interval_ms + k.commit_timeout_ms) / 1000
    return OutputWatch(make_admin(settings), [k.output_topic, k.dlq_topic], k.stall_report_s, longest_transaction_s)


def required_topics(settings: WorkerSettings) -> list[str]:
    """Every topic the configuration uses: input, output, dead letters, shadow, traces."""
    k, tracing, shadow = settings.kafka, settings.telemetry.tracing, settings.lifecycle.shadow_topic
    traces = [tracing.topic] if tracing.enabled and tracing.exporter == "kafka" else []
    return list(dict.fromkeys([*k.input_topics, k.output_topic, k.dlq_topic, *([shadow] if shadow else []), *traces]))
