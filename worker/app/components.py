"""The pipeline's parts from settings: the feature store, the codecs and the loop's settings."""

from __future__ import annotations

import time
from collections.abc import Callable

from worker.app.explain import make_explainer
from worker.codecs.avro import (
    ConfluentAvroDecoder,
    ConfluentAvroEncoder,
    Decoder,
    Encoder,
    PlainAvroDecoder,
    PlainAvroEncoder,
)
from worker.codecs.registry import HttpSchemaRegistry
from worker.config.compile import Compiled
from worker.config.settings import WorkerSettings
from worker.errors import StartupError
from worker.features.fetcher import FeatureFetcher
from worker.features.redis_store import RedisAddress, RedisFeatureStore
from worker.features.store import FeatureStore
from worker.pipeline.assembly import Assembler
from worker.pipeline.pipeline import Pipeline
from worker.runner.loop import LoopSettings
from worker.serving import ModelSlot


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
                    ModelSlot(compiled.model), compiled.builder, encoder, clock, make_explainer(settings, compiled))


def loop_settings(settings: WorkerSettings) -> LoopSettings:
    b, f = settings.batch, settings.faults
    return LoopSettings(b.max_events, b.latency_budget_ms / 1000, f.retry_initial_ms / 1000, f.retry_max_ms / 1000,
                        f.probe_interval_ms / 1000, f.degrade_after_retries if f.on_redis_down == "degrade" else None)
