"""Model quality from settings: drift in ``worker run``, the label join in ``worker monitor``."""

from __future__ import annotations

import csv
import logging
import os
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import REGISTRY

from worker.app.cards import card_of
from worker.app.components import (
    loop_settings,
    make_decoder,
    make_pipeline,
    ready_store,
    redis_connection,
    redis_where,
)
from worker.app.explain import model_scores
from worker.app.kafka import make_admin, make_checkpointer, make_consumer, make_producer, wait_for_kafka
from worker.app.tools import topic_reader
from worker.config.compile import Compiled, compile_settings, prediction_field
from worker.config.settings import WorkerSettings
from worker.errors import ConfigError, FeatureStoreUnavailable, ModelRunError, StartupError, ToolError
from worker.kafka.admin import create_topics, topic_partitions
from worker.kafka.sink import Sink
from worker.monitoring.join import JoinProcessor, LabelFields, MonitorTicker, PredictionFields, RecordReader
from worker.monitoring.metrics import MonitorMetrics
from worker.monitoring.store import JoinTimes, MonitorStore, redis_errors
from worker.pipeline.names import NamedColumn, named_columns
from worker.quality import reference
from worker.quality.bins import Bins, BinsError
from worker.quality.reference import Reference
from worker.runner.loop import Runner
from worker.runner.observer import Observer
from worker.startup import wait_until_ready
from worker.telemetry.drift import DriftMonitor, ReferenceOf, coverage
from worker.telemetry.health import Health

logger = logging.getLogger(__name__)


def monitor_store(settings: WorkerSettings) -> MonitorStore:
    """The monitoring's Redis (``monitoring.redis_url``, else the feature store's), for the worker's
    settings (the key prefix derives from the worker's group, which ``worker run`` and ``worker
    monitor`` share)."""
    m = settings.monitoring
    try:
        client = redis_connection(settings, m.redis_url)
    except ValueError as exc:
        raise StartupError(f"{'monitoring.redis_url' if m.redis_url else 'redis.url'}: {exc}") from exc
    except redis_errors() as exc:  # RedisCluster reads the slot map as it is made
        raise StartupError(f"cannot reach the Redis Cluster at {redis_where(settings)}: {exc}") from exc
    times = JoinTimes(int(m.labels.wait_hours * 3_600_000), int(m.labels.unmatched_after_s * 1000), m.window_labels)
    return MonitorStore(client, m.key_prefix or default_prefix(settings), times, m.history_entries)


def default_prefix(settings: WorkerSettings) -> str:
    """``monitor:<group>:``; on the feature store's Redis Cluster the group is a hash tag, so that every
    monitoring key is in one slot, where the join's scripts and multi-key reads are allowed."""
    group = settings.kafka.group_id
    on_cluster = settings.redis.cluster and not settings.monitoring.redis_url
    return f"monitor:{{{group}}}:" if on_cluster else f"monitor:{group}:"


def reference_of(settings: WorkerSettings, compiled: Compiled) -> ReferenceOf:
    """Each version's drift reference: ``monitoring.reference`` for all, else its card's."""
    if settings.monitoring.reference is not None:
        fixed = reference.from_file(settings.monitoring.reference)
        return lambda name, version: fixed
    card = card_of(settings, compiled)

    def of(name: str, version: str) -> Reference | None:
        try:
            return reference.from_card(card(name, version), f"the card of {name} v{version}")
        except BinsError as exc:
            logger.warning("drift not monitored: %s", exc)
            return None

    return of


def make_drift(settings: WorkerSettings, compiled: Compiled) -> DriftMonitor | None:
    """The drift observer, registered for ``/metrics``; None when off or nothing has a reference."""
    m = settings.monitoring
    if not m.drift:
        return None
    of = reference_of(settings, compiled)
    model = compiled.model
    found = of(model.name, model.version)
    if found is None:
        logger.info("drift monitoring off: %s v%s has no reference bins (its card's reference_stats, or "
                    "monitoring.reference)", model.name, model.version)
        return None
    columns = watched(settings, compiled)
    covered, missing = coverage(columns, found)
    logger.info("drift: %d of %d model inputs have reference bins%s; %s", len(covered), len(columns),
                f" (none for {', '.join(missing)})" if missing else "",
                "the score too" if found.score else "the score has none (score_stats), so its drift is not watched")
    widths = {e.name: len(e.fields) for e in compiled.entities}
    drift = DriftMonitor(columns, of, m.window_events, m.min_window_events, widths,
                         publish=_drift_history(settings), snapshot_interval_s=m.snapshot_interval_s)
    return drift.register(REGISTRY)


def _drift_history(settings: WorkerSettings) -> Callable[[list[dict[str, Any]]], None]:
    """Keeps drift snapshots in Redis from a thread of their own (a slow or unreachable Redis must
    never hold the loop), one replica per interval and version (the history stays a snapshot an
    interval whatever the number of replicas); a snapshot due while the last is still being
    written is skipped."""
    store = monitor_store(settings)
    replica = f"{socket.gethostname()}-{os.getpid()}"
    interval_ms = int(settings.monitoring.snapshot_interval_s * 1000)
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drift-history")
    last: list[Future[None]] = []

    def keep(snapshots: list[dict[str, Any]]) -> None:
        try:
            for window in snapshots:
                if store.claim(f"drift:{window['model_name']}|{window['model_version']}", interval_ms):
                    store.append("drift", {"replica": replica, "windows": [window]})
        except redis_errors() as exc:
            logger.warning("drift snapshot not kept, Redis failed: %s", exc)

    def publish(snapshots: list[dict[str, Any]]) -> None:
        if not last or last[0].done():
            last[:] = [writer.submit(keep, snapshots)]

    return publish


def holdout_auc_of(settings: WorkerSettings, compiled: Compiled) -> Callable[[str, str], float | None]:
    card = card_of(settings, compiled)

    def of(name: str, version: str) -> float | None:
        value = (card(name, version).get("training") or {}).get("holdout_auc")
        return float(value) if isinstance(value, int | float) else None

    return of


def monitor_settings(settings: WorkerSettings) -> WorkerSettings:
    """The worker's settings as the monitor runs them: its own group, reading predictions and labels."""
    m, k = settings.monitoring, settings.kafka
    if m.labels.topic is None:
        raise ConfigError.at("monitoring.labels.topic", "worker monitor joins labels to predictions: set the "
                                                        "labels topic (and monitoring.labels.schema_file)")
    kafka = k.model_copy(update={"group_id": m.group_id or f"{k.group_id}-monitor",
                                 "input_topics": [k.output_topic, m.labels.topic],
                                 "output_topic": m.joined_topic or "", "transactional_id": None})
    # While Redis is down the monitor can only wait: it has no "degraded" way to join.
    faults = settings.faults.model_copy(update={"on_redis_down": "pause"})
    return settings.model_copy(update={"kafka": kafka, "faults": faults, "processing_guarantee": "at-least-once"})


def join_processor(settings: WorkerSettings, compiled: Compiled, store: MonitorStore) -> JoinProcessor:
    m, b = settings.monitoring, compiled.builder
    assert compiled.label_schema is not None and m.labels.topic is not None
    fields = PredictionFields(m.prediction_id_field or m.labels.id_field, prediction_field(b, "score") or "",
                              prediction_field(b, "model_name"), prediction_field(b, "model_version"),
                              prediction_field(b, "scored_at"))
    label_fields = LabelFields(m.labels.id_field, m.labels.label_field, m.labels.time_field)
    predictions = RecordReader(make_decoder(settings, compiled.output_schema), vars(fields))
    labels = RecordReader(make_decoder(settings, compiled.label_schema, m.labels.framing), vars(label_fields))
    return JoinProcessor(store, m.labels.topic, predictions, labels,
                         (compiled.model.name, compiled.model.version), m.joined_topic is not None)


def build_monitor(settings: WorkerSettings, observers: Sequence[Observer] = (), health: Health | None = None) -> Runner:
    """``worker monitor``: the join on the worker's loop, with its own group and sink; ready once its
    Redis answers (it has no model to load)."""
    run_as = monitor_settings(settings)
    compiled = compile_settings(settings)
    store = monitor_store(settings)
    where = redis_where(run_as, run_as.monitoring.redis_url)
    wait_until_ready(lambda: _problem(store), "the monitor's Redis", where, run_as.redis.startup_timeout_s)
    k = run_as.kafka
    consumer = make_consumer(run_as)
    predictions = settings.kafka.output_topic
    wait_for_kafka(run_as, consumer, [predictions, k.dlq_topic])
    _create_own_topics(run_as, predictions)
    sink = Sink(lambda on_error: make_producer(run_as, None, on_error), k.output_topic, k.dlq_topic, k.group_id,
                run_as.batch.max_in_flight_events, run_as.batch.max_in_flight_mb * (1 << 20) // 2)
    if health is not None:
        health.checks.pop("model", None)
        health.checks["join_state"] = lambda: _problem(store) is None
    metrics = MonitorMetrics(store, run_as.model.threshold, holdout_auc_of(run_as, compiled)).register(REGISTRY)
    ticker = MonitorTicker(store, metrics.threshold, run_as.monitoring.snapshot_interval_s)
    processor = join_processor(run_as, compiled, store)
    return Runner(consumer, list(k.input_topics), processor, sink, make_checkpointer(run_as, consumer, sink),
                  loop_settings(run_as), [ticker, *observers], probe=_probe(store))


def _create_own_topics(run_as: WorkerSettings, predictions: str) -> None:
    """The labels and joined topics are the monitor's own: made when missing, partitioned like the
    predictions (so that a labels producer started after the monitor finds its topic)."""
    m, k = run_as.monitoring, run_as.kafka
    admin = make_admin(run_as)
    partitions = topic_partitions(admin, predictions, k.bootstrap_servers)
    wanted = [t for t in (m.labels.topic, m.joined_topic) if t]
    # -1: the brokers' default replication factor (KIP-464), as a topic made by a producer would get.
    for line in create_topics(admin, wanted, k.bootstrap_servers, partitions, replication_factor=-1):
        if line.startswith("created"):
            logger.info("%s", line.replace("replication factor -1", "the brokers' default replication factor"))


def _problem(store: MonitorStore) -> str | None:
    try:
        store.ping()
    except redis_errors() as exc:
        return str(exc)
    return None


def _probe(store: MonitorStore) -> Callable[[], None]:
    def probe() -> None:
        try:
            store.ping()
        except redis_errors() as exc:
            raise FeatureStoreUnavailable(f"the monitor's Redis: {exc}") from exc

    return probe


def watched(settings: WorkerSettings, compiled: Compiled) -> list[NamedColumn]:
    model = compiled.model
    order = card_of(settings, compiled)(model.name, model.version).get("feature_order")
    return named_columns(compiled.tensors, order if isinstance(order, list) else None)


def reference_from_data(settings: WorkerSettings, path: Path) -> tuple[Reference, int]:
    """Bins of every model input in a data file, and of the scores the model gives them: a ``.npz``
    holding each model input by name (or ``features`` for a model with one input), or a ``.csv``
    with a column per watched feature (named as in the card's ``feature_order``)."""
    compiled = compile_settings(settings)
    columns = watched(settings, compiled)
    feeds = _data_feeds(path, compiled, columns)
    scores = _scores(compiled, feeds)
    values = {c.name: _values(feeds[c.tensor], c.column) for c in columns}
    return _reference(values, scores), len(scores)


def reference_from_topic(settings: WorkerSettings, events: int,
                         progress: Callable[[int], None] | None = None) -> tuple[Reference, int]:
    """Bins of what the model saw and said for the oldest ``events`` events of the input topics: they
    go through the worker's own pipeline (decode, Redis features, assembly, model); nothing is
    published."""
    compiled = compile_settings(settings)
    columns = watched(settings, compiled)
    store = ready_store(settings)
    pipeline = make_pipeline(settings, compiled, store)
    reader = topic_reader(settings, list(settings.kafka.input_topics), from_beginning=True)
    values: dict[str, list[np.ndarray]] = {c.name: [] for c in columns}
    scores: list[np.ndarray] = []
    seen = 0
    try:
        while seen < events and not reader.caught_up:
            batch = reader.read(min(1000, events - seen))
            scored = pipeline.process(batch).scored if batch else None
            seen += len(batch)
            if scored is not None:
                kept = np.flatnonzero(scored.published)
                scores.append(np.asarray(scored.scores)[kept])
                for c in columns:
                    values[c.name].append(_values(scored.feeds[c.tensor], c.column)[kept])
            if progress and batch:
                progress(seen)
    finally:
        reader.close()
    if not scores:
        raise ToolError(f"no events could be scored from {', '.join(settings.kafka.input_topics)}")
    joined = {name: np.concatenate(parts) for name, parts in values.items()}
    return _reference(joined, np.concatenate(scores)), sum(len(s) for s in scores)


def _reference(values: dict[str, np.ndarray], scores: np.ndarray) -> Reference:
    try:
        return Reference({name: Bins.of_values(v) for name, v in values.items()}, Bins.of_values(scores))
    except BinsError as exc:
        raise ToolError(f"cannot make reference bins: {exc}") from exc


def _values(tensor: Any, column: int | None) -> np.ndarray:
    array = np.asarray(tensor, dtype=np.float64)
    return array if column is None else array[:, column]


def _data_feeds(path: Path, compiled: Compiled, columns: list[NamedColumn]) -> dict[str, np.ndarray]:
    tensors = {t.name: t for t in compiled.tensors}
    try:
        if path.suffix == ".npz":
            with np.load(path) as data:
                found = {name: np.asarray(data[name]) for name in data.files}
            if len(tensors) == 1 and "features" in found and next(iter(tensors)) not in found:
                found = {next(iter(tensors)): found["features"]}
        elif path.suffix == ".csv":
            found = _csv_feeds(path, tensors, columns)
        else:
            raise ToolError(f"{path}: expected a .npz or .csv data file")
    except (OSError, ValueError, KeyError) as exc:
        raise ToolError(f"cannot read {path}: {exc}") from exc
    missing = [name for name in tensors if name not in found]
    if missing:
        raise ToolError(f"{path} lacks the model input(s) {', '.join(missing)} (it has {', '.join(found) or 'none'})")
    return {name: found[name].astype(tensors[name].numpy_dtype, copy=False) for name in tensors}


def _csv_feeds(path: Path, tensors: dict[str, Any], columns: list[NamedColumn]) -> dict[str, np.ndarray]:
    """Each model input from the CSV's columns named like its watched features (a header row)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    header = set(rows[0]) if rows else set()
    out = {}
    for name, spec in tensors.items():
        wanted = [c.name for c in columns if c.tensor == name]
        absent = [w for w in wanted if w not in header]
        if absent or len(wanted) != (1 if spec.rank == 1 else len(spec.columns)):
            raise ToolError(f"{path}: no column {', '.join(absent or wanted)} for model input {name}")
        table = np.array([[float(row[w] or "nan") for w in wanted] for row in rows], dtype=np.float64)
        out[name] = table[:, 0] if spec.rank == 1 else table
    return out


def _scores(compiled: Compiled, feeds: dict[str, np.ndarray]) -> np.ndarray:
    try:
        return model_scores(compiled)(compiled.model, feeds)
    except ModelRunError as exc:
        raise ToolError(f"the model cannot score the data: {exc}") from exc


def _drift_line(covered: tuple[list[str], list[str]], found: Reference, where: str, window: int) -> str:
    have, missing = covered
    line = (f"drift of {len(have)} model inputs{' and the score' if found.score else ''} against {where} over "
            f"{window} events")
    return line + (f" (no bins for {', '.join(missing)})" if missing else "")


def describe(settings: WorkerSettings, compiled: Compiled) -> str:
    """One line for ``check-config``: what drift and the label join will watch."""
    m, model = settings.monitoring, compiled.model
    if not m.drift:
        drift = "drift off"
    else:
        found = reference_of(settings, compiled)(model.name, model.version)
        where = str(m.reference) if m.reference else "the model card"
        drift = ("drift off (no reference bins: add them to the card or run worker monitor reference)" if found is None
                 else _drift_line(coverage(watched(settings, compiled), found), found, where, m.window_events))
    labels = m.labels
    join = (f"labels from {labels.topic} joined on {m.prediction_id_field or labels.id_field} "
            f"(wait {labels.wait_hours:g} h)" + (f" -> {m.joined_topic}" if m.joined_topic else "")
            if labels.topic else "no labels (monitoring.labels.topic unset)")
    return f"{drift}; {join}"


def draw_report(settings: WorkerSettings, out: Path, since_ms: int | None, until_ms: int | None) -> Path:
    """``worker monitor report``: what the worker and the monitor kept in Redis, drawn to ``out``."""
    try:
        from worker.monitoring.report import render
    except ImportError as exc:  # matplotlib is an extra
        raise ToolError(str(exc)) from exc
    try:
        return render(monitor_store(settings), out, since_ms, until_ms)
    except ImportError as exc:
        raise ToolError(str(exc)) from exc
    except ValueError as exc:
        raise ToolError(f"--out {out}: {exc}") from exc
    except OSError as exc:
        raise ToolError(f"cannot write {out}: {exc}") from exc
    except redis_errors() as exc:
        raise StartupError(f"cannot read the monitoring's Redis: {exc}") from exc
