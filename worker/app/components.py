"""The pipeline's parts from settings: the feature store, the codecs and the loop's settings."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from redis.cluster import ClusterNode, RedisCluster

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
from worker.codecs.schemas import Schema
from worker.config.compile import Compiled
from worker.config.settings import WorkerSettings
from worker.errors import StartupError
from worker.features.fetcher import FeatureFetcher
from worker.features.redis_cluster import RedisClusterFeatureStore, seed_addresses
from worker.features.redis_store import RedisAddress, RedisFeatureStore
from worker.features.store import FeatureStore
from worker.pipeline.assembly import Assembler
from worker.pipeline.deadline import Deadline
from worker.pipeline.pipeline import Pipeline
from worker.records import UNIT_SECONDS, event_time_reader
from worker.runner.loop import LoopSettings
from worker.serving import ModelSlot

RedisStore = RedisFeatureStore | RedisClusterFeatureStore


def make_store(settings: WorkerSettings) -> RedisStore:
    """The fast client for ``redis.url``: one server's, or a cluster's with ``redis.cluster``."""
    r = settings.redis
    password = r.password.get_secret_value() if r.password else None
    ca_file = str(r.ca_file) if r.ca_file else None
    try:
        if r.cluster:
            return RedisClusterFeatureStore(seed_addresses(r.url, password), r.timeout_s, ca_file, r.read_from_replicas)
        return RedisFeatureStore(RedisAddress.from_url(r.url, password), r.timeout_s, ca_file)
    except ValueError as exc:
        raise StartupError(f"redis.url: {exc}") from exc


def redis_where(settings: WorkerSettings, url: str | None = None) -> str:
    """``url`` (default ``redis.url``) without its password, for messages; ``ValueError`` if malformed."""
    if url is None and settings.redis.cluster:
        return RedisClusterFeatureStore(seed_addresses(settings.redis.url)).redacted()
    return RedisAddress.from_url(url or settings.redis.url).redacted()


def make_registry(settings: WorkerSettings) -> HttpSchemaRegistry:
    a = settings.avro
    if not a.schema_registry_url:
        raise StartupError("avro.schema_registry_url is not set")
    password = a.schema_registry_password.get_secret_value() if a.schema_registry_password else None
    return HttpSchemaRegistry(a.schema_registry_url, a.schema_registry_username, password)


def make_decoder(settings: WorkerSettings, schema: Schema, framing: str | None = None) -> Decoder:
    """A decoder reading ``schema`` in ``framing`` (default ``avro.framing``), at ``avro.max_value_bytes``."""
    a = settings.avro
    if (framing or a.framing) == "plain":
        return PlainAvroDecoder(schema, a.max_value_bytes)
    return ConfluentAvroDecoder(make_registry(settings), schema, a.max_value_bytes)


def make_codecs(settings: WorkerSettings, compiled: Compiled) -> tuple[Decoder, Encoder]:
    a = settings.avro
    decoder = make_decoder(settings, compiled.input_schema)
    if a.framing == "plain":
        return decoder, PlainAvroEncoder(compiled.output_schema)
    subject = a.output_subject or f"{settings.kafka.output_topic}-value"
    return decoder, ConfluentAvroEncoder(compiled.output_schema, make_registry(settings), subject,
                                         compiled.output_schema_text)


def redis_connection(settings: WorkerSettings, url: str | None = None) -> redis.Redis | RedisCluster:
    """A redis-py client for ``url`` (default ``redis.url``, a ``RedisCluster`` with ``redis.cluster``)
    with the feature store's password, CA and timeout; ``ValueError`` for a malformed URL. It
    connects on its first command."""
    r = settings.redis
    password = r.password.get_secret_value() if r.password else None
    if url is None and r.cluster:
        seeds = seed_addresses(r.url, password)
        nodes = [ClusterNode(s.host, s.port) for s in seeds]  # type: ignore[no-untyped-call]  # untyped in redis-py
        return RedisCluster(startup_nodes=nodes, username=seeds[0].username, password=seeds[0].password,
                            ssl=seeds[0].tls, ssl_ca_certs=str(r.ca_file) if r.ca_file else None,
                            socket_timeout=r.timeout_s)
    extra = {"ssl_ca_certs": str(r.ca_file)} if r.ca_file else {}
    RedisAddress.from_url(url or r.url, password)
    return redis.Redis.from_url(url or r.url, password=password, socket_timeout=r.timeout_s, **extra)


def make_pipeline(settings: WorkerSettings, compiled: Compiled, store: FeatureStore,
                  clock: Callable[[], int] = time.perf_counter_ns) -> Pipeline:
    decoder, encoder = make_codecs(settings, compiled)
    return Pipeline(decoder, FeatureFetcher(store, compiled.entities), Assembler(compiled.tensors),
                    ModelSlot(compiled.model), compiled.builder, encoder, clock, make_explainer(settings, compiled),
                    make_deadline(settings))


def make_deadline(settings: WorkerSettings) -> Deadline | None:
    b, t = settings.batch, settings.telemetry
    if b.max_event_age_ms is None:
        return None
    return Deadline(b.max_event_age_ms / 1000, b.on_expired,
                    event_time_reader(t.event_time_field, UNIT_SECONDS[t.event_time_unit]))


def loop_settings(settings: WorkerSettings) -> LoopSettings:
    b, f = settings.batch, settings.faults
    return LoopSettings(b.max_events, b.latency_budget_ms / 1000, f.retry_initial_ms / 1000, f.retry_max_ms / 1000,
                        f.probe_interval_ms / 1000, f.degrade_after_retries if f.on_redis_down == "degrade" else None,
                        settings.kafka.assignment_timeout_s)
