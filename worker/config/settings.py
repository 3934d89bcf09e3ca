"""The worker's configuration: one YAML or TOML file, overridable by environment and CLI.

Precedence: command-line options > ``WORKER_*`` environment variables (nested keys joined
with ``__``, e.g. ``WORKER_KAFKA__BOOTSTRAP_SERVERS``) > the file > defaults. Relative paths
in the file are relative to the file's own directory. Only ``worker.app`` and
``worker.cli`` read settings; every component takes plain constructor arguments.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from worker.errors import ConfigError

Scalar = str | int | float | bool
ENV_PREFIX = "WORKER_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated ``host:port`` list of brokers to bootstrap from."""
    group_id: str = "inference-worker"
    """Consumer group shared by every replica; partitions are spread across its members."""
    input_topics: list[str] = Field(min_length=1)
    """Topics to consume events from (a single name is accepted too)."""
    output_topic: str
    """Topic predictions are produced to."""
    dlq_topic: str
    """Dead-letter topic: events that cannot be scored, republished byte for byte with headers
    naming the source topic, partition, offset and the error."""
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where a group with no committed offset starts; ``earliest`` scores the backlog."""
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    """How long the group waits for a silent member before rebalancing its partitions."""
    assignment_timeout_s: float = Field(default=60.0, ge=5)
    """A join of the group that brings no assignment (not even an empty one) within this long is
    left and made again, with a warning (counted in ``worker_rebalances_total{change="rejoined"}``);
    keep it above the longest rebalance the group can take."""
    stall_report_s: float = Field(default=30.0, ge=1)
    """Assigned partitions with events waiting that hand out none for this long are reported, once per
    period: a warning naming what reading each waits for (an open transaction, a fetch position that
    never came, a broker that returns nothing) and ``worker_stalled_partitions{reason}``. In exactly-once
    mode, output partitions a transaction has held open this long are reported too
    (``worker_held_output_partitions``), checked no more often than a healthy transaction can last
    (``batch.commit_interval_ms`` plus ``commit_timeout_ms``, and a quarter more)."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = None
    """librdkafka ``security.protocol``."""
    sasl_mechanism: str | None = None
    """librdkafka ``sasl.mechanism`` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER)."""
    sasl_username: str | None = None
    """librdkafka ``sasl.username``."""
    sasl_password: SecretStr | None = None
    """librdkafka ``sasl.password``; never logged."""
    ssl_ca_location: str | None = None
    """librdkafka ``ssl.ca.location``: CA bundle to verify the brokers."""
    ssl_certificate_location: str | None = None
    """librdkafka ``ssl.certificate.location``: this client's certificate (PEM), for brokers that
    require mutual TLS."""
    ssl_key_location: str | None = None
    """librdkafka ``ssl.key.location``: the private key of ``ssl_certificate_location`` (PEM)."""
    ssl_key_password: SecretStr | None = None
    """librdkafka ``ssl.key.password``: the passphrase of an encrypted ``ssl_key_location``; never logged."""
    properties: dict[str, Scalar] = {}
    """Any further librdkafka property for both clients; snake_case keys become dotted
    (``fetch_wait_max_ms`` → ``fetch.wait.max.ms``)."""
    consumer: dict[str, Scalar] = {}
    """librdkafka properties for the consumer only."""
    producer: dict[str, Scalar] = {}
    """librdkafka properties for the producer only."""
    startup_timeout_s: float = Field(default=60.0, gt=0)
    """How long startup waits for the brokers and topics before giving up."""
    group_instance_id: str | None = None
    """Static group membership (librdkafka ``group.instance.id``): a name unique to this replica and
    stable across its restarts (a StatefulSet pod name, say). A restarted replica then gets its
    partitions back without a rebalance, if it returns within ``session_timeout_ms``."""
    transactional_id: str | None = None
    """Exactly-once only: the producer's ``transactional.id``. Default: ``<group_id>-<group_instance_id>``
    with static membership, else unique per process. A stable id lets a restarted replica abort the
    transaction its previous incarnation left open at once, instead of after
    ``transaction_timeout_ms`` (read_committed consumers of the outputs wait until then)."""
    transaction_timeout_ms: int = Field(default=30_000, ge=1000)
    """Exactly-once only: the broker aborts a transaction left open longer than this (a crashed
    replica's, say); read_committed consumers of the outputs are held up to this long meanwhile."""
    commit_timeout_ms: int = Field(default=10_000, ge=100)
    """How long a checkpoint waits for outputs to be acknowledged and offsets (or the transaction)
    committed before giving up until the next one. The loop keeps polling meanwhile, so a slow or
    stalled broker never gets this member evicted from the group."""

    @field_validator("input_topics", mode="before")
    @classmethod
    def _one_topic(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class RedisSettings(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    """``redis://[user:password@]host:port/db``, ``rediss://`` for TLS, or ``unix:///path?db=N``. With
    ``cluster``: seed nodes, ``redis://[user:password@]host:port,host:port/0`` (database 0 only)."""
    password: SecretStr | None = None
    """Overrides a password in the URL; never logged."""
    timeout_s: float = Field(default=2.0, gt=0)
    """Socket timeout for each round trip."""
    ca_file: Path | None = None
    """CA bundle for ``rediss://`` (default: the system's)."""
    cert_file: Path | None = None
    """This client's certificate (PEM), for a Redis that requires mutual TLS (``tls-auth-clients yes``)."""
    key_file: Path | None = None
    """The private key of ``cert_file`` (PEM; default: in ``cert_file`` itself)."""
    key_password: SecretStr | None = None
    """The passphrase of an encrypted ``key_file``; never logged."""
    startup_timeout_s: float = Field(default=60.0, gt=0)
    """How long startup waits for Redis before giving up."""
    cluster: bool = False
    """The features are in a Redis Cluster, reached through the seed nodes of ``url``: keys are
    read from the node serving their hash slot (one pipeline per node per batch, sent together),
    following ``MOVED``/``ASK`` redirects; a cluster that cannot answer (``CLUSTERDOWN``, a failed
    master not yet replaced) holds the batch like a Redis outage."""
    read_from_replicas: bool = False
    """(cluster) Read each slot from a replica of its master (sent ``READONLY``), the master only
    where it has none. Takes reads off the masters, at the cost of replication lag."""

    @model_validator(mode="after")
    def _cluster_url(self) -> RedisSettings:
        if self.read_from_replicas and not self.cluster:
            raise ValueError("read_from_replicas needs cluster: true")
        if not self.cluster:
            return self
        parts = urlsplit(self.url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"a Redis Cluster (cluster: true) is reached over TCP: give url redis:// or rediss:// "
                             f"seed nodes, not {parts.scheme}://")
        if parts.path.strip("/") not in ("", "0"):
            raise ValueError(f"a Redis Cluster (cluster: true) has database 0 only, and url names database "
                             f"{parts.path.strip('/')}: end it with /0")
        return self


class AvroSettings(_Section):
    input_schema: Path
    """.avsc of the input events."""
    output_schema: Path
    """.avsc of the predictions."""
    framing: Literal["plain", "confluent"] = "plain"
    """``plain``: schemaless Avro binary; ``confluent``: magic byte + schema id (Schema Registry)."""
    schema_registry_url: str | None = None
    """Schema Registry URL (``https://`` for TLS; several, comma-separated, are tried in turn);
    required with ``confluent`` framing."""
    schema_registry_username: str | None = None
    """Basic-auth user for the registry."""
    schema_registry_password: SecretStr | None = None
    """Basic-auth password for the registry; never logged."""
    schema_registry_bearer_token: SecretStr | None = None
    """A static bearer token for the registry (``Authorization: Bearer``), instead of basic auth;
    never logged. The worker does not fetch or refresh tokens: confluent-kafka's client can (OAuth
    client credentials from a token endpoint, Azure IMDS, or a custom function), but a static token
    is all this setting passes; mint it outside and restart the worker before it expires."""
    schema_registry_bearer_logical_cluster: str | None = None
    """Confluent Cloud only: the registry's logical cluster id (``lsrc-...``), sent with a bearer token."""
    schema_registry_ca_location: Path | None = None
    """CA bundle (PEM) that signed the registry's certificate; default: the system's CAs."""
    schema_registry_certificate_location: Path | None = None
    """Client certificate (PEM) for mutual TLS with the registry; it may hold the key too."""
    schema_registry_key_location: Path | None = None
    """Private key (PEM) of the client certificate, if not in the certificate file."""
    schema_registry_key_password: SecretStr | None = None
    """Password of an encrypted client key; never logged."""
    output_subject: str | None = None
    """Subject the output schema is registered under (default ``<output_topic>-value``)."""
    max_value_bytes: int = Field(default=1_048_576, gt=0)
    """Events larger than this are dead-lettered without being decoded."""

    @model_validator(mode="after")
    def _registry_for_confluent(self) -> AvroSettings:
        if self.framing == "confluent" and not self.schema_registry_url:
            raise ValueError("framing 'confluent' needs schema_registry_url")
        if self.schema_registry_username and self.schema_registry_bearer_token:
            raise ValueError("set schema_registry_username (basic auth) or schema_registry_bearer_token, not both")
        if (self.schema_registry_key_location or self.schema_registry_key_password) \
                and not self.schema_registry_certificate_location:
            raise ValueError("a client key for the registry needs schema_registry_certificate_location")
        return self


class EntitySettings(_Section):
    """One entity's features in Redis: plain hashes named by ``key`` (``layout: hash``), or the
    hashes Feast's Redis online store writes (``layout: feast``: ``project``, ``feature_view``,
    ``join_keys``)."""

    layout: Literal["hash", "feast"] = "hash"
    """``hash``: one hash per entity named by ``key``, a text field per feature; ``feast``: Feast's
    Redis online-store layout (binary entity keys, MurmurHash3 field names, ``Value`` protobufs)."""
    key: str | None = None
    """(hash) Key template built from event fields, e.g. ``card:{card_id}`` or ``u:{user.id}``."""
    fields: list[str] = Field(min_length=1)
    """Features to read for each key: hash fields, or the feature view's feature names (feast)."""
    defaults: dict[str, Scalar] = {}
    """Value per field when the hash or the field is missing (or stale)."""
    default: Scalar | None = None
    """Value for any field not listed in ``defaults``."""
    max_age_s: float | None = Field(default=None, gt=0)
    """Values written longer ago than this (or at an unknown time) are treated as missing: their
    defaults apply, and the lookups count in ``worker_feature_stale_total``. The write time is
    Feast's ``_ts:<feature_view>``, or ``timestamp_field`` for plain hashes."""
    timestamp_field: str | None = None
    """(hash) The hash field holding the Unix time, in seconds, at which the row was written."""
    project: str | None = None
    """(feast) The Feast project (the ``project`` of ``feature_store.yaml``)."""
    feature_view: str | None = None
    """(feast) The feature view whose features ``fields`` names (with its version suffix, if
    the registry versions online feature views)."""
    join_keys: dict[str, str] = {}
    """(feast) Join key → event field path, e.g. ``{card_id: card.id}``; several for a composite key."""
    join_key_types: dict[str, Literal["string", "int64", "int32", "bytes"]] = {}
    """(feast) A join key's Feast value type, where it is not the event field's own (string for
    Avro strings and enums, int64 for longs, int32 for ints, bytes for bytes)."""


class ColumnSettings(_Section):
    """One column of a model input: exactly one of ``event``, ``feature``, ``entity``, ``const``."""

    event: str | None = None
    """Event field path, dots for nested records (``user.id``)."""
    feature: str | None = None
    """``entity.field`` from the feature store."""
    entity: str | None = None
    """Every field of this entity, in its ``fields`` order (one column each)."""
    const: Scalar | None = None
    """A constant value."""
    default: Scalar | None = None
    """Value used where the event field is null (required for nullable fields)."""
    mapping: dict[Scalar, Scalar] | None = None
    """Maps string, enum, integer or boolean values to numbers; unmapped values take ``default``."""

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ColumnSettings:
        given = [k for k in ("event", "feature", "entity", "const") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a column needs exactly one of event, feature, entity, const (got {given or 'none'})")
        return self


class InputSettings(_Section):
    """A model input: ``{columns: [...], dtype: ...}``, or its one column written directly:
    ``distance: distance_km`` (an event path), ``rating: {event: courier.rating, default: 4.5}``."""

    columns: list[ColumnSettings] = Field(min_length=1)
    """The input's columns, in order: ``[N, len(columns)]`` (or ``[N]`` for a rank-1 input)."""
    dtype: Literal["float32", "float64", "int64", "int32", "bool", "string"] | None = None
    """Element type; defaults to the model's declared type, which it must match."""

    @model_validator(mode="before")
    @classmethod
    def _one_column(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"columns": [{"event": value}]}
        if isinstance(value, dict) and "columns" not in value and set(value) & set(ColumnSettings.model_fields):
            column = {k: v for k, v in value.items() if k != "dtype"}
            return {"columns": [column], **({"dtype": value["dtype"]} if "dtype" in value else {})}
        return value


class ScoreSettings(_Section):
    output: str
    """Model output holding the score."""
    column: int | None = None
    """Column of that output (e.g. 1 for P(class 1) in ``[N, 2]`` probabilities)."""


class ModelSettings(_Section):
    path: Path | None = None
    """The ONNX file. Alternatively give ``repository`` (+ ``name`` and ``version``)."""
    repository: Path | None = None
    """A model repository laid out as ``<repository>/<name>/<version>/model.onnx``."""
    name: str | None = None
    """Model name (defaults to the repository entry or the file's stem)."""
    version: str | None = None
    """Version served; written into every prediction (defaults to the model card's)."""
    inputs: dict[str, InputSettings] = Field(min_length=1)
    """How each model input is assembled, by ONNX input name: ``{columns: [...]}``, or a one-column
    input written directly (``distance: distance_km``, ``rating: {event: courier.rating, default: 4.5}``)."""
    score: ScoreSettings
    """Which output (and column) is the score."""
    threshold: float = 0.5
    """The label is ``score >= threshold``."""
    threads: int = Field(default=0, ge=0)
    """ONNX Runtime intra-op threads; 0 sizes them from the container's CPU quota."""

    @model_validator(mode="after")
    def _path_or_repository(self) -> ModelSettings:
        if (self.path is None) == (self.repository is None):
            raise ValueError("give either model.path or model.repository with model.name and model.version")
        if self.repository is not None and not (self.name and self.version):
            raise ValueError("model.repository needs model.name and model.version")
        return self

    def onnx_path(self) -> Path:
        if self.path is not None:
            return self.path
        assert self.repository is not None and self.name and self.version
        return self.repository / self.name / self.version / "model.onnx"


SPECIALS = ("score", "label", "model_version", "model_name", "scored_at", "degraded", "reasons", "contributions")


class OutputFieldSettings(_Section):
    """Where an output field's value comes from: exactly one of ``event``, ``special``,
    ``model_output`` (with ``column``) or ``const``. A plain string is read as an event path,
    or as a special when it starts with ``$`` (``$score``)."""

    event: str | None = None
    """Event field path (``user.id``)."""
    special: Literal["score", "label", "model_version", "model_name", "scored_at", "degraded", "reasons",
                     "contributions", "late"] | None = None
    """``score``, ``label`` (score >= threshold), ``model_version``, ``model_name``, ``scored_at`` (epoch ms),
    ``degraded`` (true when scored with default features because Redis was down), ``reasons`` (an array of
    strings: the features pushing the score up most, first first) and ``contributions`` (a map of double:
    feature → signed contribution), for the events ``explain.when`` selects, empty for the others;
    ``late`` (true for an event past ``batch.max_event_age_ms`` scored with ``on_expired: score-late``)."""
    model_output: str | None = None
    """A model output name, for values other than the score."""
    column: int | None = None
    """The column of ``model_output`` when it is 2-D."""
    const: Scalar | None = None
    """A constant written into every prediction."""

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.startswith("$"):
                if value[1:] not in SPECIALS:
                    raise ValueError(f"unknown '{value}' (use one of {', '.join('$' + s for s in SPECIALS)})")
                return {"special": value[1:]}
            return {"event": value}
        return value

    @model_validator(mode="after")
    def _exactly_one_source(self) -> OutputFieldSettings:
        given = [k for k in ("event", "special", "model_output", "const") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"an output field needs exactly one of event, $special, model_output, const "
                             f"(got {given or 'none'})")
        return self


class OutputSettings(_Section):
    fields: dict[str, OutputFieldSettings] = Field(min_length=1)
    """Output field → source: an event path (``user.id``), ``$score``, ``$label``,
    ``$model_version``, ``$model_name``, ``$scored_at``, ``$degraded``, ``{model_output: name, column: k}``
    or ``{const: value}``."""
    key: str | None = None
    """Event field whose value is the output key; unset copies the input message's key."""
    key_encoding: Literal["string", "int64"] = "string"
    """How a non-string key is written: its text in UTF-8, or 8-byte big-endian (Kafka's LongSerializer)."""


class BatchSettings(_Section):
    max_events: int = Field(default=2000, ge=1)
    """A batch never holds more events than this."""
    latency_budget_ms: float = Field(default=3.0, ge=0)
    """Worker-added latency a partial batch may spend waiting for more events: it waits only
    while its oldest event can still be scored and acknowledged within this budget by a slow
    batch (the broker's recent acknowledgement times and the worker's own processing times at
    their mean plus two mean deviations, so a jittery broker leaves less to wait), and only if
    more events are expected meanwhile (a lone event is scored at once). 0 never waits."""
    adaptive: bool = True
    """Adapt batching to a slow broker: while output acknowledgements take longer than
    ``slow_ack_ms`` (moving average), a partial batch waits for more events up to half the
    acknowledgement time (at most ``max_linger_ms``), beyond the latency budget, which the broker
    already breaks; fewer, larger produce requests let a loaded broker catch up instead of
    slowing further. Back to the budget once acknowledgements take under half of ``slow_ack_ms``."""
    slow_ack_ms: float = Field(default=20.0, gt=0)
    """Acknowledgement time (moving average over batches) above which the broker counts as slow; the
    default is about four times a healthy tansu's median acknowledgement (3.7-4.7 ms)."""
    max_linger_ms: float = Field(default=100.0, ge=0)
    """Longest a partial batch waits for more events while the broker is slow."""
    max_in_flight_events: int = Field(default=50_000, ge=1000)
    """Cap on events held at once: prefetched by the consumer (a quarter of this per partition)
    plus outputs awaiting acknowledgement. When the cap is reached the worker stops fetching
    and pauses its partitions instead of growing memory."""
    max_in_flight_mb: int = Field(default=64, ge=4)
    """Cap in MB on the same, split evenly between prefetched input and unacknowledged output."""
    max_event_age_ms: float | None = Field(default=None, gt=0)
    """A deadline: an event older than this when consumed (by ``telemetry.event_time_field``, else its
    Kafka timestamp) is not scored on time but goes where ``on_expired`` says, counted in
    ``worker_events_expired_total{action}``; after an outage the worker then sheds the stale backlog
    instead of serving everything late. Unset: no deadline. ``worker batch`` ignores it."""
    on_expired: Literal["dead-letter", "skip", "score-late"] = "dead-letter"
    """What happens to an expired event: ``dead-letter`` (stage ``deadline``, byte for byte, with
    its age as the reason), ``skip`` (committed, not scored), or ``score-late`` (scored, with the
    header ``x-worker-late: 1`` and ``$late`` true)."""
    commit_interval_ms: float = Field(default=1000.0, ge=0)
    """How often input offsets are committed (0: after every batch): up to the work whose outputs
    the broker has acknowledged, without waiting for the rest (revocation and shutdown flush first
    and commit everything). In exactly-once mode, how often the transaction commits, which is also
    how late read_committed consumers see predictions."""


class FaultSettings(_Section):
    """How the worker rides out failures of its dependencies (Redis, Schema Registry)."""

    retry_initial_ms: float = Field(default=100.0, gt=0)
    """First wait before a batch that failed on an unavailable dependency is retried."""
    retry_max_ms: float = Field(default=1000.0, gt=0)
    """The wait doubles after each failed attempt up to this; while the dependency stays down the
    batch is retried at least this often (and sooner when a Redis probe answers)."""
    probe_interval_ms: float = Field(default=200.0, gt=0)
    """While Redis is down it is probed with PING this often; the held batch is retried as soon as
    it answers, so the stream resumes within about this long of Redis returning."""
    on_redis_down: Literal["pause", "degrade"] = "pause"
    """``pause``: hold the batch and pause the partitions until Redis answers (nothing is scored
    without its features). ``degrade``: after ``degrade_after_retries`` failed attempts, score with
    every feature at its configured default, and mark those predictions with the header
    ``x-worker-degraded: 1`` (and the ``$degraded`` output field, if mapped), until Redis is back."""
    degrade_after_retries: int = Field(default=2, ge=0)
    """With ``on_redis_down: degrade``: failed attempts before a batch is scored with defaults."""

    @model_validator(mode="after")
    def _ordered(self) -> FaultSettings:
        if self.retry_initial_ms > self.retry_max_ms:
            raise ValueError("retry_initial_ms must not exceed retry_max_ms")
        return self


class CanarySettings(_Section):
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    """A canary is rolled back automatically on every replica when more than this share of
    the events it scored failed (its failed events are scored by the active model instead)."""
    max_latency_ms: float | None = Field(default=None, gt=0)
    """A canary is also rolled back when the 99th percentile of its inference time per batch
    exceeds this (unset: no latency bound)."""
    min_events: int = Field(default=200, ge=1)
    """A canary is judged only once its window holds this many events."""
    window_batches: int = Field(default=500, ge=1)
    """How many of the canary's latest batches it is judged on."""


class LifecycleSettings(_Section):
    control_topic: str | None = None
    """Compacted topic carrying model commands (``worker models promote|rollback|canary|shadow``)
    and what each replica applied. Every replica reads all of it (not as a group member) and
    swaps models at a batch boundary, without restarting. Created if missing. Needs
    ``model.repository``."""
    control_file: Path | None = None
    """Instead of ``control_topic``, for one machine: a JSON file the replicas watch."""
    replica_id: str | None = None
    """This replica's name in the control channel (default: host name and process id)."""
    shadow_topic: str | None = None
    """Where a shadow model's predictions go (required to run a shadow); never the output topic."""
    golden_atol: float = Field(default=1e-5, ge=0)
    """Absolute tolerance when a version reproduces its model card's golden vectors (the card's
    ``golden_tolerance.atol`` overrides it)."""
    golden_rtol: float = Field(default=1e-5, ge=0)
    """Relative tolerance (times the expected value) added to ``golden_atol``."""
    warmup_batch_sizes: list[int] = []
    """Batch sizes each version runs at before it serves, besides 1 and ``batch.max_events``."""
    catch_up_timeout_s: float = Field(default=30.0, gt=0)
    """How long startup and the CLI wait to read the control channel to its end."""
    canary: CanarySettings = CanarySettings()
    """Bounds that roll a canary back automatically."""

    @field_validator("warmup_batch_sizes")
    @classmethod
    def _positive_sizes(cls, sizes: list[int]) -> list[int]:
        if any(size < 1 for size in sizes):
            raise ValueError("batch sizes must be at least 1")
        return sizes

    @model_validator(mode="after")
    def _one_channel(self) -> LifecycleSettings:
        if self.control_topic and self.control_file:
            raise ValueError("give control_topic or control_file, not both")
        return self


class TracingSettings(_Section):
    enabled: bool = False
    """Trace batches: one span per batch linked to each event's upstream ``traceparent``, child spans
    per stage, and the batch span's ``traceparent`` on every prediction and dead letter it produced."""
    sample_ratio: float = Field(default=0.01, ge=0, le=1)
    """Share of batches traced on the worker's own initiative (0.01: one in a hundred)."""
    follow_upstream: bool = True
    """Also trace every batch holding an event whose ``traceparent`` is sampled, so a trace the
    producer chose to record continues through the worker (parent-based sampling across the hop)."""
    exporter: Literal["kafka", "otlp_grpc", "otlp_http", "none"] = "kafka"
    """Where spans go: ``kafka`` publishes OTLP protobuf to ``topic`` (the OpenTelemetry Collector's
    Kafka receiver reads it with ``encoding: otlp_proto``); ``otlp_grpc``/``otlp_http`` send to
    ``endpoint`` (install the ``otlp`` extra); ``none`` makes spans and drops them."""
    topic: str = "otlp_spans"
    """Traces topic for the ``kafka`` exporter (the Collector's Kafka receiver default)."""
    endpoint: str | None = None
    """Collector endpoint for the OTLP exporters (default: ``OTEL_EXPORTER_OTLP_*`` variables, else
    localhost); headers such as auth tokens come from ``OTEL_EXPORTER_OTLP_HEADERS``."""
    queue_size: int = Field(default=2048, ge=16)
    """Finished spans waiting for export; when full, new spans are dropped and counted, never waited for."""
    export_interval_ms: float = Field(default=500.0, gt=0)
    """How often queued spans are exported."""
    max_links: int = Field(default=128, ge=0)
    """Upstream contexts linked from one batch span; the rest are counted in ``worker.links_dropped``."""


class TelemetrySettings(_Section):
    port: int = Field(default=0, ge=0, le=65535)
    """HTTP port serving ``/metrics`` (Prometheus), ``/livez`` and ``/readyz``; 0 turns metrics and
    health off (the default, so that several workers can share a host)."""
    host: str = "0.0.0.0"
    """Address the metrics and health server listens on."""
    service_name: str = "inference-worker"
    """``service.name`` of the spans."""
    event_time_field: str | None = None
    """Input field holding the event time, for the event-age metric (dots for nested fields);
    unset uses the Kafka message timestamp."""
    event_time_unit: Literal["s", "ms", "us"] = "ms"
    """Unit of ``event_time_field`` (``ms`` for Avro ``timestamp-millis``)."""
    liveness_timeout_s: float = Field(default=60.0, gt=0)
    """``/livez`` fails when the loop has not come round for this long."""
    redis_check_interval_s: float = Field(default=2.0, gt=0)
    """How often the health check PINGs Redis (on its own connection, never on the hot path)."""
    kafka_stats_interval_ms: int = Field(default=5000, ge=0)
    """librdkafka statistics interval, the source of high watermarks for lag in messages; 0 turns it off."""
    tracing: TracingSettings = TracingSettings()
    """Distributed tracing through Kafka."""


class ExplainSettings(_Section):
    """Reason codes for predictions (``$reasons``, ``$contributions`` output fields)."""

    when: Literal["flagged", "all", "never"] = "flagged"
    """Which events are explained: ``flagged`` (the label is true), ``all``, or ``never``."""
    top_k: int = Field(default=3, ge=1)
    """How many reasons: the features with the largest positive contributions."""
    method: Literal["occlusion", "tree_shap"] = "occlusion"
    """``occlusion`` (any model: the score minus the score with that feature at its reference median,
    one model call per batch) or ``tree_shap`` (exact Shapley values of a tree ensemble's raw output,
    log-odds for a classifier, against the card's background rows)."""


class LabelSettings(_Section):
    """Where ground truth comes from, for ``worker monitor``."""

    topic: str | None = None
    """Topic of labels (ground truth, known some time after scoring); unset: no accuracy monitoring."""
    schema_file: Path | None = None
    """Avro schema (.avsc) of a label; required with ``topic``."""
    framing: Literal["plain", "confluent"] | None = None
    """Framing of label values; default ``avro.framing``."""
    id_field: str = "event_id"
    """Label field naming the event it labels; predictions carry the same id in ``monitoring.prediction_id_field``."""
    label_field: str = "label"
    """Label field holding the truth: a boolean, or a number (non-zero is positive)."""
    time_field: str | None = None
    """Label field holding when the truth became known (epoch ms); unset uses the label's arrival."""
    wait_hours: float = Field(default=168.0, gt=0)
    """How long after scoring a label still counts (7 days); a later one is counted late and left out of accuracy."""
    unmatched_after_s: float = Field(default=3600.0, gt=0)
    """A label may come before its prediction; one whose prediction has not come this long after it is unmatched."""


class MonitoringSettings(_Section):
    drift: bool = True
    """Watch feature and score drift in ``worker run`` (PSI against the reference, per model version);
    on only where the model has reference bins (its card's, or ``reference``)."""
    reference: Path | None = None
    """Reference file written by ``worker monitor reference``; unset uses each model version's card
    (``reference_stats.<feature>.bins`` and ``score_stats.bins``)."""
    window_events: int = Field(default=10_000, ge=100)
    """Drift is measured over the last this many published events, per model version."""
    min_window_events: int = Field(default=1000, ge=1)
    """PSI is exported once the window holds this many events (fewer give noisy figures)."""
    window_labels: int = Field(default=10_000, ge=10)
    """Accuracy is measured over the last this many labelled predictions, per model version."""
    labels: LabelSettings = LabelSettings()
    """The ground truth joined to predictions by ``worker monitor``."""
    prediction_id_field: str | None = None
    """Prediction field holding the event id; default ``labels.id_field``."""
    joined_topic: str | None = None
    """Topic for joined records (prediction + label, JSON), for retraining; unset: none published."""
    group_id: str | None = None
    """Consumer group of ``worker monitor``; default ``kafka.group_id`` + ``-monitor``."""
    redis_url: str | None = None
    """Redis keeping the join state, accuracy windows and the history the report draws (shared by
    every monitor replica, kept across restarts); default ``redis.url`` (its password and CA too)."""
    key_prefix: str | None = None
    """Prefix of every key the monitoring keeps in Redis; default ``monitor:`` + ``kafka.group_id`` + ``:``
    (so that two deployments sharing a Redis keep apart)."""
    snapshot_interval_s: float = Field(default=60.0, gt=0)
    """How often drift and accuracy snapshots are added to the history (for ``worker monitor report``);
    one replica per interval and model version writes each."""
    history_entries: int = Field(default=10_080, ge=10)
    """Snapshots kept per kind (a week at one a minute)."""


class DemoSettings(_Section):
    """Read by ``worker demo`` only (``worker run`` ignores it): where an example's data come from."""

    events: str | None = None
    """A generator of example events, ``path/to/file.py:function`` (the path relative to this file)."""
    features: str | None = None
    """A generator of the example's feature hashes (``{"key": ..., "fields": {...}}``), likewise."""
    key: str | None = None
    """The event field the demo keys its events by (dots for nested fields)."""


class WorkerSettings(BaseSettings):
    """The whole configuration file."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid",
                                      use_attribute_docstrings=True, frozen=True)

    kafka: KafkaSettings
    """Brokers, topics and client properties."""
    redis: RedisSettings = RedisSettings()
    """The feature store."""
    avro: AvroSettings
    """Schemas and framing of input and output values."""
    features: dict[str, EntitySettings] = {}
    """Entities read from Redis, by name (referenced as ``entity.field``)."""
    model: ModelSettings
    """The ONNX model and how its inputs are fed."""
    output: OutputSettings
    """The prediction record and its key."""
    batch: BatchSettings = BatchSettings()
    """Batch size and timing."""
    faults: FaultSettings = FaultSettings()
    """Retries, backoff and the policy while Redis is down."""
    lifecycle: LifecycleSettings = LifecycleSettings()
    """Model versions at run time: control channel, shadow topic, validation, canary bounds."""
    processing_guarantee: Literal["at-least-once", "exactly-once"] = "at-least-once"
    """``at-least-once``: offsets are committed only after every prediction and dead letter before
    them was acknowledged (idempotent producer), so a crash can only repeat in-flight work.
    ``exactly-once``: predictions, dead letters and input offsets are committed together in one Kafka
    transaction; consumers reading with ``isolation.level=read_committed`` see each event once."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level of the ``worker`` loggers."""
    log_format: Literal["text", "json"] = "text"
    """``json`` writes one JSON object per line."""
    telemetry: TelemetrySettings = TelemetrySettings()
    """Metrics, health probes and tracing."""
    demo: DemoSettings = DemoSettings()
    """The example data ``worker demo`` produces for this configuration."""
    explain: ExplainSettings = ExplainSettings()
    """Explanations: which predictions carry reason codes, and how they are computed."""
    monitoring: MonitoringSettings = MonitoringSettings()
    """Model quality: drift in ``worker run``, ground truth and accuracy in ``worker monitor``."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _FileSource(settings_cls)


_file_data: ContextVar[dict[str, Any] | None] = ContextVar("worker_config_file", default=None)


class _FileSource(PydanticBaseSettingsSource):
    """The config file's contents, below the environment and the command line."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (_file_data.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_file_data.get() or {})


def read_file(path: Path) -> dict[str, Any]:
    """The raw mapping in a YAML or TOML config file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError.at(str(path), f"cannot read the config file: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError.at(str(path), f"not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: "
                                        f"{_parse_problem(exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError.at(str(path), "the file must hold a mapping of sections (kafka, avro, model, ...)")
    return data


def _parse_problem(exc: Exception) -> str:
    """One line: PyYAML's messages span several lines (context, a caret under the position)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def load_settings(path: Path | None, overrides: dict[str, Any] | None = None) -> WorkerSettings:
    """File + environment + overrides (nested dicts), validated; raises ``ConfigError``."""
    token = _file_data.set(read_file(path) if path else {})
    try:
        settings = WorkerSettings(**(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from exc
    except SettingsError as exc:  # a list or mapping in the environment that is not JSON
        raise ConfigError([(_env_key(exc), "a list or mapping set in the environment is written as JSON "
                                           '(WORKER_KAFKA__INPUT_TOPICS=\'["payments"]\')')]) from exc
    finally:
        _file_data.reset(token)
    return _resolve_paths(settings, path.parent if path else Path.cwd())


def _env_key(exc: SettingsError) -> str:
    """The section whose environment variable could not be parsed (pydantic-settings names it)."""
    found = re.search(r'field "([^"]+)"', str(exc))
    return f"{ENV_PREFIX}{found.group(1).upper()}__..." if found else "environment"


def _resolve_paths(settings: WorkerSettings, base: Path) -> WorkerSettings:
    def at(p: Path | None) -> Path | None:
        return None if p is None else p if p.is_absolute() else (base / p).resolve()

    a = settings.avro
    avro = a.model_copy(update={"input_schema": at(a.input_schema), "output_schema": at(a.output_schema),
                                "schema_registry_ca_location": at(a.schema_registry_ca_location),
                                "schema_registry_certificate_location": at(a.schema_registry_certificate_location),
                                "schema_registry_key_location": at(a.schema_registry_key_location)})
    model = settings.model.model_copy(update={"path": at(settings.model.path),
                                              "repository": at(settings.model.repository)})
    r = settings.redis
    redis = r.model_copy(update={"ca_file": at(r.ca_file), "cert_file": at(r.cert_file), "key_file": at(r.key_file)})
    lifecycle = settings.lifecycle.model_copy(update={"control_file": at(settings.lifecycle.control_file)})

    def function_at(spec: str | None) -> str | None:
        path, sep, name = (spec or "").rpartition(":")
        return spec if spec is None or not sep else f"{at(Path(path))}:{name}"

    demo = settings.demo.model_copy(update={"events": function_at(settings.demo.events),
                                            "features": function_at(settings.demo.features)})
    m = settings.monitoring
    labels = m.labels.model_copy(update={"schema_file": at(m.labels.schema_file)})
    monitoring = m.model_copy(update={"reference": at(m.reference), "labels": labels})
    return settings.model_copy(update={"avro": avro, "model": model, "redis": redis, "lifecycle": lifecycle,
                                       "demo": demo, "monitoring": monitoring})


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for error in exc.errors():
        loc = [f"[{p}]" if isinstance(p, int) else str(p) for p in error["loc"] if not _is_union_tag(p)]
        key = ".".join(loc).replace(".[", "[") or "(top level)"
        problems.append((key, _reason(error, loc)))
    return _dedupe(problems)


def _is_union_tag(part: Any) -> bool:
    # pydantic adds the union member it tried ("str", "ModelOutputSource") to the location
    return isinstance(part, str) and (part[:1].isupper() or part in ("str", "int", "float", "bool"))


def _reason(error: Any, loc: list[str]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key" + _suggest(loc)
    if kind == "missing":
        return "required key is missing"
    return str(error["msg"]).removeprefix("Value error, ")


def _suggest(loc: list[str]) -> str:
    section: Any = WorkerSettings
    for part in loc[:-1]:
        if get_origin(section) in (dict, list):
            section = _section_type(get_args(section)[-1])
            continue
        fields = getattr(section, "model_fields", {})
        if part not in fields:
            return ""
        section = _section_type(fields[part].annotation)
    names = list(getattr(section, "model_fields", {}))
    close = difflib.get_close_matches(loc[-1], names, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(names)})" if names else ""


def _section_type(annotation: Any) -> Any:
    """The model (or dict/list of models) inside an annotation such as ``X | None``."""
    if get_origin(annotation) in (dict, list):
        return annotation
    for candidate in get_args(annotation) or (annotation,):
        if (isinstance(candidate, type) and issubclass(candidate, BaseModel)) or get_origin(candidate) in (dict, list):
            return candidate
    return annotation


def _dedupe(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for key, reason in problems:
        seen.setdefault(key, reason)
    return list(seen.items())


def librdkafka_config(properties: dict[str, Scalar]) -> dict[str, Scalar]:
    """snake_case keys → librdkafka's dotted ones (its property names have no underscores)."""
    return {key.replace("_", "."): value for key, value in properties.items()}
