"""Commands for trying the worker by hand: topics, features, events, predictions.

    worker topics create   --config C [--partitions N] [--replication-factor R]
    worker features load   --config C (--file F.jsonl | --generator path.py:function)
    worker produce         --config C (--file F.jsonl | --generator path.py:function) [--n N] [--rate R]
                                      [--key FIELD] [--loop] [--poison P]
    worker tail            --config C [--from-beginning] [--n N] [--topic T | --dlq] [--idle-timeout S]
    worker demo            [--config C] (see worker.demo)
    worker config-reference

They read the same config file (and take the same overrides) as ``worker run``, so they
reach the same brokers, topics, Redis and schemas. A generator is a function in a Python
file, named ``path/to/file.py:function``; it yields what a line of the file would hold,
and may take ``n`` and ``seed`` keyword arguments.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import itertools
import json
import logging
import random
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # what confluent_kafka.admin re-exports, typed

from worker import reference
from worker.app import kafka_client, kafka_common, make_registry, required_topics
from worker.cli import settings_from
from worker.codecs import (
    ConfluentAvroDecoder,
    ConfluentAvroEncoder,
    Decoder,
    Encoder,
    PlainAvroDecoder,
    PlainAvroEncoder,
)
from worker.console import ProgressLine, count, rate
from worker.errors import EventError, StartupError, WorkerError
from worker.explain import mismatch
from worker.features import KeyTemplate, path_getter
from worker.kafka import consumer_config, produce_when_room, producer_config
from worker.records import InputMessage
from worker.schemas import Schema, SchemaError, field_type, load_schema
from worker.settings import WorkerSettings

logger = logging.getLogger(__name__)

Item = tuple[str, Any]  # (where it came from, a parsed item or the Exception that stopped it)
_QUIET = {"log_level": 2}  # librdkafka logs only critical errors; the tools report the rest themselves
_NO_SOURCE = InputMessage(None)


class ToolError(WorkerError):
    """A mistake in a hands-on command's input or options; printed without a traceback."""


# ---------------------------------------------------------------- registration

def add_commands(sub: Any, config_options: Callable[..., None]) -> None:
    """Registered by the CLI: topics, features, produce, tail, demo and config-reference."""
    topics = sub.add_parser("topics", help="manage the configured topics").add_subparsers(dest="action", required=True)
    p = _command(topics, "create", "create the input, output and dead-letter topics (existing ones are kept)",
                 cmd_topics_create, config_options)
    p.add_argument("--partitions", type=int, default=3, help="partitions of each new topic (default 3)")
    p.add_argument("--replication-factor", type=int, default=1, help="replicas of each new topic (default 1)")
    features = sub.add_parser("features", help="manage the feature store").add_subparsers(dest="action", required=True)
    p = _command(features, "load", "write feature hashes to Redis (HSET, pipelined)", cmd_features_load, config_options)
    _source_options(p, "JSON lines like {\"key\": \"card:c1\", \"fields\": {\"f\": 1.5}}")
    p.add_argument("--chunk", type=int, default=1000, help="hashes per pipelined round trip (default 1000)")
    p.add_argument("--replace", action="store_true", help="delete each hash before writing it")
    p = _command(sub, "produce", "encode events (JSON lines) with the input schema and produce them", cmd_produce,
                 config_options)
    _produce_options(p)
    p = _command(sub, "tail", "print predictions (or dead letters) as JSON lines", cmd_tail, config_options)
    _tail_options(p)
    from worker import demo

    demo.add_command(sub, config_options)
    p = sub.add_parser("config-reference", help="print every configuration key as Markdown")
    p.add_argument("--update", type=Path, metavar="FILE.md", help="rewrite the reference section of this file instead")
    p.set_defaults(fn=cmd_config_reference)


def _command(sub: Any, name: str, help_text: str, fn: Callable[[argparse.Namespace], int],
             config_options: Callable[..., None]) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    config_options(parser)
    parser.set_defaults(fn=fn)
    return parser


def _source_options(parser: argparse.ArgumentParser, file_help: str) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path, help=file_help)
    source.add_argument("--generator", metavar="FILE.py:FUNCTION",
                        help="a Python function yielding the same items (may take n= and seed=)")
    parser.add_argument("--seed", type=int, help="passed to a generator that takes seed=")


def _produce_options(parser: argparse.ArgumentParser) -> None:
    _source_options(parser, "one JSON object per line, shaped like the input schema's records")
    parser.add_argument("--n", type=int, help="stop after N events (a generator's default: 1000)")
    parser.add_argument("--rate", type=float, default=0, help="events per second (default: as fast as possible)")
    parser.add_argument("--key", metavar="FIELD", help="event field (dotted path) to use as the message key")
    parser.add_argument("--loop", action="store_true", help="start the file again at its end (until --n or Ctrl-C)")
    parser.add_argument("--poison", type=float, default=0.0, metavar="SHARE",
                        help="replace this share of values by truncated Avro, to see dead letters")


def _tail_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from-beginning", action="store_true", help="start at the oldest message, not the newest")
    parser.add_argument("--n", type=int, help="stop after N messages")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--topic", help="read this topic instead of kafka.output_topic")
    which.add_argument("--dlq", action="store_true", help="read the dead-letter topic, with the dlq.* headers")
    parser.add_argument("--meta", action="store_true", help="wrap each record with its partition, offset and key")
    parser.add_argument("--idle-timeout", type=float, metavar="S", help="stop after S seconds without a message")


# ---------------------------------------------------------------- sources of items

def json_lines(path: Path, loop: bool = False) -> Iterator[Item]:
    """Each non-blank line of ``path`` parsed as JSON, or its error; again from the top with ``loop``."""
    while True:
        found = False
        try:
            with path.open() as lines:
                for number, line in enumerate(lines, 1):
                    if line.strip():
                        found = True
                        yield f"{path}:{number}", _parse_json(line)
        except OSError as exc:
            raise ToolError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if not (loop and found):
            return


def _parse_json(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        return ToolError(f"not JSON: {exc.msg} (column {exc.colno})")


def load_generator(spec: str) -> Callable[..., Iterable[Any]]:
    """The function named by ``path/to/file.py:function``."""
    path_text, sep, name = spec.rpartition(":")
    path = Path(path_text)
    if not sep or not name or path.suffix != ".py":
        raise ToolError(f"--generator wants path/to/file.py:function, not {spec!r}")
    if not path.is_file():
        raise ToolError(f"--generator: no such file {path}")
    module_name = f"_worker_generator_{abs(hash(path.resolve()))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look their module up here
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise ToolError(f"cannot load {path}: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ToolError(f"{path} has no function {name!r}")
    return fn  # type: ignore[no-any-return]


def generated(spec: str, **offered: Any) -> Iterator[Item]:
    """The items of a generator, called with those ``offered`` arguments it takes (None ones left out)."""
    fn = load_generator(spec)
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in offered.items() if v is not None and (k in params or takes_any)}
    try:
        for number, item in enumerate(fn(**kwargs), 1):
            yield f"{spec} item {number}", item
    except (WorkerError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise ToolError(f"generator {spec} failed: {_where(exc)}") from exc


def _where(exc: Exception) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    at = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{at}"


def items_from(args: argparse.Namespace, n: int | None = None) -> Iterator[Item]:
    """The items of ``--file`` or ``--generator``, at most ``n``."""
    if args.file is not None:
        source = json_lines(args.file, getattr(args, "loop", False))
    else:
        source = generated(args.generator, n=n, seed=args.seed)
    return itertools.islice(source, n) if n is not None else source


# ---------------------------------------------------------------- Kafka helpers

def kafka_client_config(settings: WorkerSettings) -> dict[str, Any]:
    return {**kafka_client(settings), **_QUIET}


def topic_partitions(client: Any, topic: str, bootstrap_servers: str) -> int:
    """How many partitions ``topic`` has; ``StartupError`` if Kafka is unreachable, ``ToolError`` if it is absent."""
    partitions = existing_topics(client, bootstrap_servers).get(topic)
    if partitions is None:
        raise ToolError(f"topic {topic!r} does not exist (create it: worker topics create --config ...)")
    return partitions


def existing_topics(admin: AdminClient | Producer | Consumer, bootstrap_servers: str) -> dict[str, int]:
    """Every listed topic and its partition count; ``StartupError`` if Kafka is unreachable."""
    try:
        metadata = admin.list_topics(timeout=10)
    except KafkaException as exc:
        raise StartupError(f"cannot reach Kafka at {bootstrap_servers}: {exc.args[0].str()}") from exc
    return {name: len(t.partitions) for name, t in metadata.topics.items() if t.error is None}


def create_topics(settings: WorkerSettings, partitions: int = 3, replication_factor: int = 1) -> list[str]:
    """Create the configured topics that do not exist yet; returns one report line per topic."""
    k = settings.kafka
    admin = AdminClient(kafka_client_config(settings))
    existing = existing_topics(admin, k.bootstrap_servers)
    wanted = required_topics(settings)
    new = [NewTopic(t, partitions, replication_factor) for t in wanted if t not in existing]
    futures = admin.create_topics(new, operation_timeout=30) if new else {}
    lines, failed = [], []
    for topic in wanted:
        if topic in existing:
            lines.append(f"exists   {topic} ({existing[topic]} partitions)")
            continue
        error = _creation_error(futures[topic])
        if error is None:
            lines.append(f"created  {topic} ({partitions} partitions, replication factor {replication_factor})")
        elif error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
            lines.append(f"exists   {topic}")
        else:
            failed.append(f"{topic}: {error.str()}")
    if failed:
        raise ToolError("could not create " + "; ".join(failed))
    if new:
        _until_listed(admin, wanted, k.bootstrap_servers)
    return lines


def _until_listed(admin: AdminClient, topics: list[str], bootstrap_servers: str, timeout_s: float = 30.0) -> None:
    """New topics reach every broker's metadata a little after creation; clients need them there."""
    deadline = time.monotonic() + timeout_s
    while True:
        listed = existing_topics(admin, bootstrap_servers)
        if not (missing := [t for t in topics if t not in listed]):
            return
        if time.monotonic() > deadline:
            raise StartupError(f"topics {', '.join(missing)} were created but are not listed after {timeout_s:.0f}s")
        time.sleep(0.2)


def _creation_error(future: Any) -> Any:
    try:
        future.result(60)
    except KafkaException as exc:
        return exc.args[0]
    return None


def cmd_topics_create(args: argparse.Namespace) -> int:
    if args.partitions < 1 or args.replication_factor < 1:
        raise ToolError("--partitions and --replication-factor must be at least 1")
    settings = settings_from(args)
    for line in create_topics(settings, args.partitions, args.replication_factor):
        print(line)
    return 0


# ---------------------------------------------------------------- produce

def input_encoder(settings: WorkerSettings, schema: Schema, topic: str) -> Encoder:
    """Encodes events as the worker expects them: plain Avro, or registered and framed."""
    if settings.avro.framing == "plain":
        return PlainAvroEncoder(schema)
    text = settings.avro.input_schema.read_text()
    return ConfluentAvroEncoder(schema, make_registry(settings), f"{topic}-value", text)


@dataclass
class Tally:
    """What a produce run did; ``problems`` keeps the first few rejected items."""

    sent: int = 0
    delivered: int = 0
    failed: int = 0
    rejected: int = 0
    poisoned: int = 0
    problems: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def reject(self, where: str, reason: str) -> None:
        self.rejected += 1
        if len(self.problems) < 20:
            self.problems.append(f"{where}: {reason}")

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        errors = self.rejected + self.failed
        return (f"produced {count(self.sent)} ({rate(self.sent, elapsed)}), delivered {count(self.delivered)}, "
                f"errors {count(errors)}" + (f", poison {count(self.poisoned)}" if self.poisoned else ""))


class EventSender:
    """Validates, encodes, keys and produces records to one topic, counting deliveries."""

    def __init__(self, producer: Producer, topic: str, schema: Schema, encode: Encoder, key_path: str | None = None,
                 poison: float = 0.0, seed: int = 0) -> None:
        self.producer = producer
        self.topic = topic
        self.schema = schema
        self.encode = encode
        self.key_of = path_getter(key_path) if key_path else None
        self.poison = poison
        self.tally = Tally()
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def send(self, where: str, record: Any) -> bool:
        value = self._value(where, record)
        if value is None:
            return False
        if self.poison and self._random.random() < self.poison:
            value = value[: len(value) // 2]
            self.tally.poisoned += 1
        key = self._key(record)
        produce_when_room(self.producer, self.topic, value, key, self._delivered)
        self.tally.sent += 1
        self.producer.poll(0)
        return True

    def _value(self, where: str, record: Any) -> bytes | None:
        if isinstance(record, Exception):
            self.tally.reject(where, str(record))
            return None
        if not isinstance(record, dict):
            self.tally.reject(where, f"an event must be a JSON object, not {type(record).__name__}")
            return None
        problem = mismatch(record, self.schema)  # the encoder would drop a misspelt field silently
        if problem is not None:
            self.tally.reject(where, problem)
            return None
        try:
            return self.encode(record, _NO_SOURCE)
        except EventError as exc:
            self.tally.reject(where, exc.reason)
            return None

    def _key(self, record: dict[str, Any]) -> bytes | None:
        if self.key_of is None:
            return None
        value = self.key_of(record)
        return None if value is None else value if isinstance(value, bytes) else str(value).encode()

    def _delivered(self, err: KafkaError | None, msg: Any) -> None:
        with self._lock:
            if err is None:
                self.tally.delivered += 1
            else:
                self.tally.failed += 1
                if len(self.tally.problems) < 20:
                    self.tally.problems.append(f"delivery to {self.topic} failed: {err.str()}")

    def flush(self, timeout_s: float = 30.0) -> int:
        left = int(self.producer.flush(timeout_s))
        if left:
            self.tally.problems.append(f"{left} events not acknowledged after {timeout_s:.0f}s")
        return left


def send_all(sender: EventSender, items: Iterable[Item], events_per_s: float = 0,
             on_progress: Callable[[Tally], None] | None = None, stop: threading.Event | None = None) -> Tally:
    """Send every item (paced to ``events_per_s`` if set) until done or ``stop`` is set; then flush."""
    tally = sender.tally
    tally.started = time.monotonic()
    try:
        for n, (where, record) in enumerate(items, 1):
            if stop is not None and stop.is_set():
                break
            sender.send(where, record)
            if events_per_s:
                ahead = n / events_per_s - (time.monotonic() - tally.started)
                if ahead > 0:
                    time.sleep(ahead)
            if on_progress is not None:
                on_progress(tally)
    finally:
        sender.flush()
    return tally


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
    producer = Producer(producer_config(k.bootstrap_servers, {**kafka_common(settings), **_QUIET}, {}))
    topic_partitions(producer, topic, k.bootstrap_servers)
    return EventSender(producer, topic, schema, input_encoder(settings, schema, topic), key, poison, seed)


def _load(path: Path, key: str) -> Schema:
    try:
        return load_schema(path)
    except SchemaError as exc:
        raise ToolError(f"{key}: {exc}") from exc


def cmd_produce(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if args.poison and not 0 <= args.poison <= 1:
        raise ToolError("--poison is a share between 0 and 1")
    n = args.n if args.n is not None else (1000 if args.generator else None)
    sender = make_sender(settings, args.key, args.poison, args.seed or 0)
    progress = ProgressLine()
    print(f"producing to {sender.topic} at {settings.kafka.bootstrap_servers}", file=sys.stderr)
    try:
        tally = send_all(sender, items_from(args, n), args.rate, lambda t: progress.update(t.line()))
    except KeyboardInterrupt:
        progress.done(sender.tally.line() + " (interrupted)")
        return 130
    progress.done(tally.line())
    for problem in tally.problems:
        print(f"  {problem}", file=sys.stderr)
    if tally.rejected + tally.failed > len(tally.problems):
        print(f"  ({tally.rejected} rejected and {tally.failed} undelivered in all)", file=sys.stderr)
    return 0 if not (tally.rejected or tally.failed or tally.sent > tally.delivered) else 1


# ---------------------------------------------------------------- features

@dataclass
class LoadTally:
    written: int = 0
    rejected: int = 0
    failed: int = 0
    problems: list[str] = field(default_factory=list)
    per_entity: Counter[str] = field(default_factory=Counter)
    unknown_fields: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def problem(self, where: str, reason: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(f"{where}: {reason}")

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        return (f"loaded {count(self.written)} hashes ({rate(self.written, elapsed)}), "
                f"errors {count(self.rejected + self.failed)}")


class EntityMatcher:
    """Which configured entity a key belongs to, by its template's literal prefix."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.prefixes = sorted(((KeyTemplate(e.key).literals[0], name, set(e.fields))
                                for name, e in settings.features.items()), key=lambda p: -len(p[0]))

    def match(self, key: str) -> tuple[str, set[str]] | None:
        for prefix, name, fields in self.prefixes:
            if key.startswith(prefix):
                return name, fields
        return None


def hash_fields(item: Any) -> tuple[str, dict[str, str]]:
    """``(key, {field: text})`` from ``{"key": ..., "fields": {...}}``; null values are left out."""
    if not isinstance(item, dict) or not isinstance(item.get("key"), str) or not item["key"]:
        raise ValueError('expected {"key": "<redis key>", "fields": {...}}')
    fields = item.get("fields")
    if not isinstance(fields, dict) or not fields:
        raise ValueError(f"{item['key']}: 'fields' must be a non-empty object")
    out: dict[str, str] = {}
    for name, value in fields.items():
        if isinstance(value, bool):
            out[name] = "1" if value else "0"
        elif isinstance(value, int | float | str):
            out[name] = repr(value) if isinstance(value, float) else str(value)
        elif value is not None:
            raise ValueError(f"{item['key']}.{name}: {type(value).__name__} is not a number or a string")
    return item["key"], out


def redis_client(settings: WorkerSettings) -> Any:
    """A redis-py client for ``redis.url`` that answered PING."""
    import redis

    from worker.redis_store import RedisAddress

    r = settings.redis
    password = r.password.get_secret_value() if r.password else None
    extra = {"ssl_ca_certs": str(r.ca_file)} if r.ca_file else {}
    try:
        where = RedisAddress.from_url(r.url, password).redacted()
        client = redis.Redis.from_url(r.url, password=password, socket_timeout=r.timeout_s, **extra)
        client.ping()
    except ValueError as exc:
        raise ToolError(f"redis.url: {exc}") from exc
    except redis.RedisError as exc:
        raise StartupError(f"cannot reach Redis at {where}: {exc}") from exc
    return client


def load_hashes(client: Any, items: Iterable[Item], matcher: EntityMatcher, chunk: int = 1000, replace: bool = False,
                on_progress: Callable[[LoadTally], None] | None = None) -> LoadTally:
    """HSET every item, ``chunk`` per pipelined round trip."""
    tally = LoadTally()
    batch: list[tuple[str, str, dict[str, str]]] = []
    for where, item in items:
        try:
            if isinstance(item, Exception):
                raise ValueError(str(item))
            key, fields = hash_fields(item)
        except ValueError as exc:
            tally.rejected += 1
            tally.problem(where, str(exc))
            continue
        batch.append((where, key, fields))
        _note_entity(tally, matcher, key, fields)
        if len(batch) >= chunk:
            _write(client, batch, replace, tally)
            if on_progress:
                on_progress(tally)
    _write(client, batch, replace, tally)
    return tally


def _note_entity(tally: LoadTally, matcher: EntityMatcher, key: str, fields: dict[str, str]) -> None:
    found = matcher.match(key)
    name, known = found if found else ("(no entity)", set())
    tally.per_entity[name] += 1
    if found:
        tally.unknown_fields.update(f"{name}.{f}" for f in fields if f not in known)


def _write(client: Any, batch: list[tuple[str, str, dict[str, str]]], replace: bool, tally: LoadTally) -> None:
    import redis

    if not batch:
        return
    pipe = client.pipeline(transaction=False)
    for _, key, fields in batch:
        if replace:
            pipe.delete(key)
        pipe.hset(key, mapping=fields)
    try:
        results = pipe.execute(raise_on_error=False)
    except redis.RedisError as exc:
        raise StartupError(f"Redis failed after {tally.written} hashes: {exc}") from exc
    for (where, key, _), result in zip(batch, results[1::2] if replace else results, strict=True):
        if isinstance(result, Exception):
            tally.failed += 1
            tally.problem(where, f"HSET {key}: {result}")
        else:
            tally.written += 1
    batch.clear()


def cmd_features_load(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if args.chunk < 1:
        raise ToolError("--chunk must be at least 1")
    client = redis_client(settings)
    progress = ProgressLine()
    try:
        tally = load_hashes(client, items_from(args), EntityMatcher(settings), args.chunk, args.replace,
                            lambda t: progress.update(t.line()))
    except KeyboardInterrupt:
        progress.done("interrupted")
        return 130
    progress.done(tally.line() + "".join(f"; {name} {count(n)}" for name, n in sorted(tally.per_entity.items())))
    for line in _load_notes(tally, settings):
        print(f"  {line}", file=sys.stderr)
    return 0 if not (tally.rejected or tally.failed) else 1


def _load_notes(tally: LoadTally, settings: WorkerSettings) -> list[str]:
    notes = list(tally.problems)
    if tally.per_entity.get("(no entity)"):
        templates = ", ".join(e.key for e in settings.features.values()) or "none configured"
        notes.append(f"note: {tally.per_entity['(no entity)']} keys match no entity of the config ({templates})")
    if tally.unknown_fields:
        notes.append("note: fields the config does not read: " + ", ".join(sorted(tally.unknown_fields)))
    return notes


# ---------------------------------------------------------------- tail

def topic_decoder(settings: WorkerSettings, topic: str) -> Decoder:
    """Input schema for the input and dead-letter topics, output schema for anything else."""
    k, a = settings.kafka, settings.avro
    is_input = topic in k.input_topics or topic == k.dlq_topic
    schema = _load(a.input_schema if is_input else a.output_schema, "avro schema")
    if a.framing == "plain":
        return PlainAvroDecoder(schema)
    return ConfluentAvroDecoder(make_registry(settings), schema)


class TopicReader:
    """Reads every partition of some topics without joining a group (nothing is committed), from
    the oldest message or from the end as it is when the reader is made."""

    def __init__(self, settings: WorkerSettings, topics: list[str], from_beginning: bool) -> None:
        k = settings.kafka
        group = f"worker-tail-{uuid.uuid4().hex[:8]}"
        own = {"fetch.wait.max.ms": 50, **_QUIET}
        self.consumer = Consumer(consumer_config(k.bootstrap_servers, group, kafka_common(settings), own))
        assignment = []
        for topic in topics:
            for p in range(topic_partitions(self.consumer, topic, k.bootstrap_servers)):
                tp = TopicPartition(topic, p)
                tp.offset = OFFSET_BEGINNING if from_beginning else self._end(tp)
                assignment.append(tp)
        self.consumer.assign(assignment)

    def _end(self, tp: TopicPartition) -> int:
        try:
            return int(self.consumer.get_watermark_offsets(tp, timeout=10)[1])
        except KafkaException:
            return OFFSET_END

    def read(self, max_messages: int = 500, timeout_s: float = 0.2) -> list[Any]:
        return [m for m in self.consumer.consume(max_messages, timeout_s) if m.error() is None]

    def close(self) -> None:
        self.consumer.close()


def render(message: Any, decode: Decoder, dead_letter: bool, meta: bool) -> dict[str, Any]:
    """A message as a JSON-ready dict: the decoded record, or the raw bytes and why they did not decode."""
    try:
        record: dict[str, Any] = {"value": decode(message.value(), message)}
    except EventError as exc:
        raw = message.value() or b""
        record = {"value": None, "undecodable": exc.reason, "value_hex": raw[:64].hex(), "value_bytes": len(raw)}
    if not (meta or dead_letter or "undecodable" in record):
        return dict(record["value"])
    key = message.key()
    out = {"topic": message.topic(), "partition": message.partition(), "offset": message.offset(),
           "key": key.decode(errors="replace") if key is not None else None}
    if dead_letter:
        out["headers"] = {k: (v.decode(errors="replace") if isinstance(v, bytes) else v)
                          for k, v in (message.headers() or [])}
    return {**out, **record}


def cmd_tail(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    k = settings.kafka
    topic = args.topic or (k.dlq_topic if args.dlq else k.output_topic)
    decode = topic_decoder(settings, topic)
    reader = TopicReader(settings, [topic], args.from_beginning)
    print(f"reading {topic} at {k.bootstrap_servers} (Ctrl-C to stop)", file=sys.stderr)
    shown, last = 0, time.monotonic()
    try:
        while args.n is None or shown < args.n:
            if args.idle_timeout is not None and time.monotonic() - last > args.idle_timeout:
                break
            for message in reader.read()[: None if args.n is None else args.n - shown]:
                print(json.dumps(render(message, decode, topic == k.dlq_topic, args.meta), default=str), flush=True)
                shown, last = shown + 1, time.monotonic()
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        reader.close()
    return 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    if args.update is None:
        print(reference.markdown(), end="")
        return 0
    try:
        changed = reference.update(args.update)
    except (OSError, ValueError) as exc:
        raise ToolError(str(exc)) from exc
    print(f"{args.update}: {'updated' if changed else 'already up to date'}", file=sys.stderr)
    return 0
