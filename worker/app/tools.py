"""The hands-on tools from settings: they reach the same brokers, topics, Redis and schemas as
``worker run``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.exceptions import RedisClusterException

from worker.app.components import make_registry, ready_store, redis_connection, redis_where
from worker.app.explain import make_explainer, model_scores
from worker.app.kafka import QUIET, kafka_client, kafka_common, make_admin, required_topics
from worker.codecs.avro import (
    ConfluentAvroDecoder,
    ConfluentAvroEncoder,
    Decoder,
    Encoder,
    PlainAvroDecoder,
    PlainAvroEncoder,
)
from worker.codecs.explain import mismatch
from worker.codecs.schemas import Schema, SchemaError, field_type, load_schema
from worker.config.compile import compile_settings
from worker.config.settings import WorkerSettings
from worker.devtools.loader import EntityMatcher
from worker.devtools.sender import EventSender
from worker.errors import StartupError, ToolError
from worker.features.fetcher import FeatureFetcher
from worker.features.redis_store import RedisAddress
from worker.kafka import admin
from worker.kafka.config import producer_config
from worker.kafka.confluent import ConfluentProducer
from worker.kafka.port import BrokerError
from worker.kafka.reader import TopicReader
from worker.pipeline.assembly import Assembler


def create_topics(settings: WorkerSettings, partitions: int = 3, replication_factor: int = 1) -> list[str]:
    """Create the configured topics that do not exist yet (the monitor's labels and joined topics too);
    returns one report line per topic."""
    m = settings.monitoring
    topics = [*required_topics(settings), *[t for t in (m.labels.topic, m.joined_topic) if t]]
    return admin.create_topics(make_admin(settings), list(dict.fromkeys(topics)), settings.kafka.bootstrap_servers,
                               partitions, replication_factor)


def input_encoder(settings: WorkerSettings, schema: Schema, topic: str) -> Encoder:
    """Encodes events as the worker expects them: plain Avro, or registered and framed."""
    if settings.avro.framing == "plain":
        return PlainAvroEncoder(schema)
    text = settings.avro.input_schema.read_text()
    return ConfluentAvroEncoder(schema, make_registry(settings), f"{topic}-value", text)


def make_sender(settings: WorkerSettings, key: str | None, poison: float = 0.0, seed: int = 0) -> EventSender:
    """An ``EventSender`` to the (first) input topic, checked against the broker and the schema."""
    topic = settings.kafka.input_topics[0]
    schema = _load(settings.avro.input_schema, "avro.input_schema")
    if key is not None:
        try:
            field_type(schema, key)
        except SchemaError as exc:
            raise ToolError(f"--key {key}: {exc}") from exc
    k = settings.kafka
    producer = ConfluentProducer(producer_config(k.bootstrap_servers, {**kafka_common(settings), **QUIET}, {}))
    admin.topic_partitions(producer, topic, k.bootstrap_servers)
    return EventSender(producer, topic, schema, input_encoder(settings, schema, topic), key, poison, seed)


def _load(path: Path, key: str) -> Schema:
    try:
        return load_schema(path)
    except SchemaError as exc:
        raise ToolError(f"{key}: {exc}") from exc


def topic_decoder(settings: WorkerSettings, topic: str) -> Decoder:
    """Input schema for the input and dead-letter topics, output schema for anything else."""
    k, a = settings.kafka, settings.avro
    is_input = topic in k.input_topics or topic == k.dlq_topic
    schema = _load(a.input_schema if is_input else a.output_schema, "avro schema")
    if a.framing == "plain":
        return PlainAvroDecoder(schema)
    return ConfluentAvroDecoder(make_registry(settings), schema)


def topic_reader(settings: WorkerSettings, topics: list[str], from_beginning: bool) -> TopicReader:
    """Reads ``topics`` without joining a group; ``ToolError`` if one does not exist."""
    try:
        return TopicReader({**kafka_client(settings), **QUIET}, topics, from_beginning, name="worker-tail")
    except BrokerError as exc:
        if exc.fault.code == "UNKNOWN_TOPIC_OR_PART":
            raise ToolError(f"{exc.fault.reason} (create it: worker topics create --config ...)") from exc
        raise StartupError(f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {exc.fault.reason}") from exc


def entity_matcher(settings: WorkerSettings) -> EntityMatcher:
    """The plain-hash entities ``features load`` writes; Feast writes its own (``feast materialize``)."""
    hashes = {name: (e.key, list(e.fields)) for name, e in settings.features.items() if e.key and e.layout == "hash"}
    if not hashes and settings.features:
        raise ToolError("features load writes plain hashes, and every entity of this config has layout feast: "
                        "write those with Feast (feast materialize, or deploy/feast/materialize.py for the example)")
    return EntityMatcher(hashes)


def acl_setuser(settings: WorkerSettings, user: str, writer: bool = False) -> str:
    """The ``ACL SETUSER`` line for a Redis user with least privilege: the worker's (``HMGET`` on its
    entities' keys, ``PING``, and the drift history's ``SET``/``XADD`` under the monitoring prefix when
    that lives in the same Redis) or, with ``writer``, ``features load``'s (``HSET``, ``DEL``). It sets
    no password (``reset`` leaves none, so nobody can log in as the user until the operator adds one)."""
    patterns = [_key_pattern(e.key, e.layout, e.project) for e in settings.features.values()]
    commands = ["+ping", "+hset", "+del"] if writer else ["+ping", "+hmget"]
    m = settings.monitoring
    if not writer and m.drift and not m.redis_url:
        patterns.append(glob_escape(m.key_prefix or f"monitor:{settings.kafka.group_id}:") + "*")
        commands += ["+set", "+xadd"]
    if settings.redis.cluster:  # the fast client reads the slot map and, from replicas, says READONLY
        commands += ["+cluster|slots", "+readonly"]
    elif RedisAddress.from_url(settings.redis.url).db:
        commands.append("+select")
    keys = " ".join(f"~{p}" for p in patterns)
    return f"ACL SETUSER {user} reset on {keys} {' '.join(commands)}"


def _key_pattern(key: str | None, layout: str, project: str | None) -> str:
    if layout == "feast":
        return "*" + glob_escape(project or "")  # Feast's keys are the serialized entity key, then the project
    return re.sub(r"\{[^}]*\}", "*", glob_escape(key or ""))  # each {field} of the template is any text


def glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis glob pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def redis_client(settings: WorkerSettings) -> Any:
    """A redis-py client for ``redis.url`` that answered PING."""
    try:
        client = redis_connection(settings)
        client.ping()
    except ValueError as exc:
        raise ToolError(f"redis.url: {exc}") from exc
    except (redis.RedisError, RedisClusterException) as exc:  # RedisCluster reads the slot map as it is made
        raise StartupError(f"cannot reach Redis at {redis_where(settings)}: {exc}") from exc
    return client


@dataclass(frozen=True)
class Explained:
    """One event's score, reasons and every feature's contribution (largest magnitude first)."""

    score: float
    flagged: bool
    reasons: list[str]
    contributions: list[tuple[str, float]]
    method: str


def explain_event(settings: WorkerSettings, record: Any) -> Explained:
    """``worker explain``: one event (a JSON object in the input schema), its features from Redis,
    assembled, scored and explained as the worker would (whatever ``explain.when`` says)."""
    if not isinstance(record, dict):
        raise ToolError(f"an event must be a JSON object, not {type(record).__name__}")
    compiled = compile_settings(settings)
    problem = mismatch(record, compiled.input_schema)
    if problem is not None:
        raise ToolError(f"the event does not fit the input schema: {problem}")
    explainer = make_explainer(settings, compiled, always=True)
    assert explainer is not None
    store = ready_store(settings)
    assembled = Assembler(compiled.tensors).assemble([record], FeatureFetcher(store, compiled.entities).fetch([record]))
    if assembled.bad:
        raise ToolError(f"the event cannot be scored: {assembled.bad[0]}")
    scores = model_scores(compiled)(compiled.model, assembled.feeds)
    ((reasons, parts),) = explainer.describe(explainer.contributions(compiled.model, assembled.feeds, scores))
    ordered = sorted(parts.items(), key=lambda item: -abs(item[1]))
    units = {"occlusion": "occlusion, in score units", "tree_shap": "tree_shap, in the raw output's units "
             "(log-odds for a classifier)"}[settings.explain.method]
    return Explained(float(scores[0]), bool(scores[0] >= settings.model.threshold), reasons, ordered, units)
