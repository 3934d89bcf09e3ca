"""The pipeline's parts from settings: the feature store, the codecs and the loop's settings."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from pydantic import SecretStr
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
from worker.codecs.registry_client import ConfluentSchemaRegistry, RegistryConnection
from worker.codecs.schemas import Schema
from worker.config.compile import Compiled, event_fields
from worker.config.settings import AvroSettings, WorkerSettings
from worker.errors import StartupError
from worker.features.fetcher import FeatureFetcher
from worker.features.redis_cluster import RedisClusterFeatureStore, seed_addresses
from worker.features.redis_store import RedisAddress, RedisFeatureStore, TlsFiles, wait_for_redis
from worker.features.store import FeatureStore
from worker.pipeline.assembly import Assembler
from worker.pipeline.deadline import Deadline
from worker.pipeline.pipeline import Pipeline
from worker.records import UNIT_SECONDS, event_time_reader
from worker.runner.batching import Adaptive
from worker.runner.loop import LoopSettings
from worker.serving import ModelSlot

REDIS_REFUSALS = {"server_certificate": "redis.ca_file", "client_certificate": "redis.cert_file and redis.key_file",
                  "client_key": "redis.cert_file, redis.key_file and redis.key_password",
                  "credentials": "redis.password (or the user and password in redis.url)",
                  "permissions": "the ACL of the user in redis.url (README: Security)"}
"""The settings that decide each kind of refusal (``worker.startup.REFUSALS``), for its error line."""

RedisStore = RedisFeatureStore | RedisClusterFeatureStore


def make_store(settings: WorkerSettings) -> RedisStore:
    """The fast client for ``redis.url``: one server's, or a cluster's with ``redis.cluster``."""
    r = settings.redis
    password = r.password.get_secret_value() if r.password else None
    tls = redis_tls(settings)
    try:
        if r.cluster:
            return RedisClusterFeatureStore(seed_addresses(r.url, password), r.timeout_s, tls, r.read_from_replicas)
        return RedisFeatureStore(RedisAddress.from_url(r.url, password), r.timeout_s, tls)
    except ValueError as exc:
        raise StartupError(f"redis.url: {exc}") from exc


def redis_where(settings: WorkerSettings, url: str | None = None) -> str:
    """``url`` (default ``redis.url``) without its password, for messages; ``ValueError`` if malformed."""
    if url is None and settings.redis.cluster:
        return RedisClusterFeatureStore(seed_addresses(settings.redis.url)).redacted()
    return RedisAddress.from_url(url or settings.redis.url).redacted()


def ready_store(settings: WorkerSettings) -> RedisStore:
    """``make_store``, once Redis answers (``StartupError`` after ``redis.startup_timeout_s``, or at once
    if Redis refuses the worker's certificate or credentials)."""
    store = make_store(settings)
    wait_for_redis(store, settings.redis.startup_timeout_s, REDIS_REFUSALS)
    return store


def redis_tls(settings: WorkerSettings) -> TlsFiles:
    r = settings.redis
    return TlsFiles(str(r.ca_file) if r.ca_file else None, str(r.cert_file) if r.cert_file else None,
                    str(r.key_file) if r.key_file else None,
                    r.key_password.get_secret_value() if r.key_password else None)


def make_registry(settings: WorkerSettings) -> ConfluentSchemaRegistry:
    """The Schema Registry client with every ``avro.schema_registry_*`` setting: URL, TLS, basic or bearer auth."""
    a = settings.avro
    if not a.schema_registry_url:
        raise StartupError("avro.schema_registry_url is not set")
    connection = RegistryConnection(
        a.schema_registry_url, a.schema_registry_username, _secret(a.schema_registry_password),
        _secret(a.schema_registry_bearer_token), a.schema_registry_bearer_logical_cluster,
        _path(a.schema_registry_ca_location), _path(a.schema_registry_certificate_location),
        _path(a.schema_registry_key_location), _secret(a.schema_registry_key_password))
    try:
        return ConfluentSchemaRegistry(connection)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: an unreadable CA, certificate or key
        raise StartupError(f"cannot set up the Schema Registry client from {_tls_settings(a)}: {exc}") from exc


def _tls_settings(a: AvroSettings) -> str:
    """The TLS settings in use, by name (OpenSSL's "PEM lib" does not say which file it could not load)."""
    names = ["schema_registry_ca_location", "schema_registry_certificate_location", "schema_registry_key_location",
             "schema_registry_key_password"]
    used = [f"avro.{n}" for n in names if getattr(a, n) is not None]
    return ", ".join(used) or "avro.schema_registry_url"


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _path(value: Path | None) -> str | None:
    return str(value) if value is not None else None


def make_decoder(settings: WorkerSettings, schema: Schema, framing: str | None = None,
                 fields: frozenset[str] | None = None) -> Decoder:
    """A decoder reading ``schema`` in ``framing`` (default ``avro.framing``), at ``avro.max_value_bytes``;
    with ``fields``, its records hold only those top-level fields."""
    a = settings.avro
    if (framing or a.framing) == "plain":
        return PlainAvroDecoder(schema, a.max_value_bytes, fields=fields)
    return ConfluentAvroDecoder(make_registry(settings), schema, a.max_value_bytes, fields)


def make_codecs(settings: WorkerSettings, compiled: Compiled) -> tuple[Decoder, Encoder]:
    """The pipeline's codecs. Its decoder skips the input fields nothing reads (``event_fields``)."""
    a = settings.avro
    decoder = make_decoder(settings, compiled.input_schema, fields=event_fields(settings, compiled))
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
    tls = redis_tls(settings)
    given = {"ssl_ca_certs": tls.ca_file, "ssl_certfile": tls.cert_file, "ssl_keyfile": tls.key_file,
             "ssl_password": tls.key_password}
    extra: dict[str, Any] = {key: value for key, value in given.items() if value}
    if url is None and r.cluster:
        seeds = seed_addresses(r.url, password)
        nodes = [ClusterNode(s.host, s.port) for s in seeds]  # type: ignore[no-untyped-call]  # untyped in redis-py
        return RedisCluster(startup_nodes=nodes, username=seeds[0].username, password=seeds[0].password,
                            ssl=seeds[0].tls, socket_timeout=r.timeout_s, **extra)
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
    adaptive = Adaptive(b.adaptive, b.slow_ack_ms / 1000, max_linger_s=b.max_linger_ms / 1000)
    return LoopSettings(b.max_events, b.latency_budget_ms / 1000, f.retry_initial_ms / 1000, f.retry_max_ms / 1000,
                        f.probe_interval_ms / 1000, f.degrade_after_retries if f.on_redis_down == "degrade" else None,
                        settings.kafka.assignment_timeout_s, settings.kafka.stall_report_s, adaptive)
