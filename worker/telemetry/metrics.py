"""Prometheus metrics, fed by the runner's hooks once per batch (never once per event).

Metrics live on a registry passed in, the default one in the worker, so that other modules'
metrics (per-model-version ``worker_model_*``, process CPU and memory from prometheus_client's
own collectors) appear on the same ``/metrics`` page.

Consumer lag, per assigned partition, is computed when scraped:

- in messages: the high watermark minus the next offset to process. The high watermark comes
  from librdkafka's statistics (``statistics.interval.ms``), i.e. from fetch responses, so it
  is as fresh as the last statistics and absent where none came yet (a broker whose
  ListOffsets answers are wrong, like the tansu test broker, does not affect it);
- in seconds: 0 when the partition is caught up, else now minus the timestamp of the last
  processed message. "Caught up" means a poll came back empty since that message was processed,
  or statistics taken since then show nothing beyond it. A worker stuck on a batch (Redis down)
  shows its lag growing; an idle partition shows 0 (with statistics off, an idle partition next to
  a busy one cannot be told from a stuck one, and shows its last message's age).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.kafka.port import Fault
from worker.records import (
    TP,
    UNIT_SECONDS,
    BatchResult,
    Delivery,
    Headers,
    Message,
    StageTiming,
    event_time_reader,
    message_time_s,
)
from worker.runner.observer import Observer
from worker.runner.stall import STALL_REASONS, Stall

logger = logging.getLogger(__name__)

STAGE_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
AGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
FEATURE_AGE_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 3 * 3600.0, 6 * 3600.0, 12 * 3600.0, 86_400.0,
                       2 * 86_400.0, 7 * 86_400.0, 30 * 86_400.0)
SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000)
AGE_SAMPLES = 16  # events per batch whose age is measured, each standing for its share of the batch


class WeightedHistogram(Collector):
    """A histogram fed with samples that each stand for ``weight`` observations, so a few events
    per batch give the distribution over every event (``_count`` is the number of events)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = [*sorted(buckets), float("inf")]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: float, weight: int = 1) -> None:
        i = bisect_left(self._bounds, value)
        with self._lock:
            self._counts[i] += weight
            self._sum += value * weight

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, buckets = 0, []
        for bound, count in zip(self._bounds, counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


class LabelledHistogram(Collector):
    """A histogram with one label, fed a numpy array at a time (one ``searchsorted`` and
    ``bincount`` per batch instead of an ``observe`` call per value)."""

    def __init__(self, name: str, documentation: str, label: str, buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self._bounds = np.array([*sorted(buckets), np.inf])
        self._series: dict[str, tuple[np.ndarray, list[float]]] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, value: str, samples: np.ndarray) -> None:
        counts = np.bincount(np.searchsorted(self._bounds, samples), minlength=len(self._bounds))
        with self._lock:
            series = self._series.setdefault(value, (np.zeros(len(self._bounds), dtype=np.int64), [0.0]))
            series[0][:] += counts
            series[1][0] += float(samples.sum())

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        with self._lock:
            series = {v: (counts.cumsum().tolist(), total[0]) for v, (counts, total) in self._series.items()}
        names = ["+Inf" if np.isinf(b) else repr(float(b)) for b in self._bounds]
        for value, (cumulative, total) in series.items():
            family.add_metric([value], list(zip(names, cumulative, strict=True)), sum_value=total)
        yield family


class _Partition:
    __slots__ = ("caught_up", "committed", "high", "next_offset", "processed_at", "stats_at", "timestamp_s")

    def __init__(self) -> None:
        self.next_offset = self.high = self.committed = -1
        self.timestamp_s = self.processed_at = self.stats_at = 0.0
        self.caught_up = False


class ConsumerLag(Collector):
    """Per-partition lag in messages and seconds (see the module note)."""

    def __init__(self, registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time) -> None:
        self._parts: dict[TP, _Partition] = {}
        self._lock = threading.Lock()
        self._clock = clock
        if registry is not None:
            registry.register(self)

    def assigned(self, partitions: Sequence[TP]) -> None:
        with self._lock:
            for tp in partitions:
                self._parts.setdefault(tp, _Partition())

    def revoked(self, partitions: Sequence[TP]) -> None:
        with self._lock:
            for tp in partitions:
                self._parts.pop(tp, None)

    def processed(self, batch: Sequence[Message]) -> None:
        """Remembers the last message of each partition in ``batch`` (scanning from the end)."""
        now, parts = self._clock(), self._parts
        seen: set[TP] = set()
        with self._lock:
            wanted = len(parts) or len(batch)
            for message in reversed(batch):
                tp: TP = (message.topic(), message.partition())  # type: ignore[assignment]
                if tp in seen:
                    continue
                seen.add(tp)
                state = parts.setdefault(tp, _Partition())
                state.next_offset = int(message.offset() or 0) + 1
                kind, ms = message.timestamp()
                state.timestamp_s = ms / 1000 if kind else 0.0
                state.processed_at = now
                if len(seen) >= wanted:
                    break

    def idle(self) -> None:
        """A poll found nothing: every partition has been processed up to what was fetched."""
        self._mark(True)

    def busy(self) -> None:
        """A batch arrived: caught up no longer holds until an idle poll or statistics say so."""
        self._mark(False)

    def _mark(self, caught_up: bool) -> None:
        with self._lock:
            for state in self._parts.values():
                state.caught_up = caught_up

    def statistics(self, stats: dict[str, Any]) -> None:
        """High watermarks and committed offsets from librdkafka's statistics."""
        now = self._clock()
        with self._lock:
            for topic, entry in stats.get("topics", {}).items():
                for pid, p in entry.get("partitions", {}).items():
                    state = self._parts.get((topic, int(pid)))
                    if state is None or int(pid) < 0:
                        continue
                    state.high = int(p.get("hi_offset", -1))
                    state.committed = int(p.get("committed_offset", -1))
                    state.stats_at = now

    def values(self) -> list[tuple[TP, int | None, float | None]]:
        """(partition, lag in messages or None if unknown, lag in seconds or None if unknown)."""
        now = self._clock()
        out = []
        with self._lock:
            for tp, s in sorted(self._parts.items()):
                position = s.next_offset if s.next_offset >= 0 else s.committed
                messages = max(s.high - position, 0) if s.high >= 0 and position >= 0 else None
                caught_up = s.caught_up or (messages == 0 and s.stats_at > s.processed_at)
                seconds = 0.0 if caught_up else max(now - s.timestamp_s, 0.0) if s.timestamp_s else None
                out.append((tp, messages, seconds))
        return out

    def collect(self) -> Iterator[Metric]:
        messages = GaugeMetricFamily("worker_consumer_lag_messages", "Messages behind the high watermark, "
                                     "per partition (from librdkafka statistics)", labels=["topic", "partition"])
        seconds = GaugeMetricFamily("worker_consumer_lag_seconds", "Age of the last processed message while "
                                    "more are waiting, 0 when caught up", labels=["topic", "partition"])
        for (topic, partition), n, s in self.values():
            if n is not None:
                messages.add_metric([topic, str(partition)], n)
            if s is not None:
                seconds.add_metric([topic, str(partition)], s)
        yield messages
        yield seconds


class Metrics(Observer):
    """The worker's Prometheus metrics (names start with ``worker_``)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, worker_version: str = "",
                 event_time_field: str | None = None, event_time_unit: str = "ms") -> None:
        if registry is not REGISTRY:  # the default registry has them already
            ProcessCollector(registry=registry)
        self.worker_version = worker_version
        self._event_time = event_time_reader(event_time_field, UNIT_SECONDS[event_time_unit])
        self.consumed = Counter("worker_events_consumed", "Events taken from the input topics and processed",
                                registry=registry)
        self.predicted = Counter("worker_predictions", "Predictions produced", registry=registry)
        self.dead_letters = Counter("worker_dead_letters", "Events sent to the dead-letter topic",
                                    ["stage", "error_type"], registry=registry)
        self.batch_size = Histogram("worker_batch_size", "Events per batch", buckets=SIZE_BUCKETS, registry=registry)
        self.stage_seconds = Histogram("worker_stage_duration_seconds", "Time per batch in each stage (deliver: "
                                       "until the last output is acknowledged; commit: per checkpoint)",
                                       ["stage"], buckets=STAGE_BUCKETS, registry=registry)
        self.latency = Histogram("worker_added_latency_seconds", "Per batch, from receiving its first event to "
                                 "the broker acknowledging its last output", buckets=STAGE_BUCKETS, registry=registry)
        self.event_age = WeightedHistogram("worker_event_age_seconds", "Event age when scored (now - event time), "
                                           "over every event (sampled per batch)", AGE_BUCKETS, registry)
        self.feature_defaults = Counter("worker_feature_defaults", "Feature values that fell back to defaults "
                                        "(key or field missing in the store)", ["entity"], registry=registry)
        self.feature_stale = Counter("worker_feature_stale", "Lookups (one per event and entity) whose row was "
                                     "older than the entity's max_age_s: its defaults were used instead",
                                     ["entity"], registry=registry)
        self.feature_age = LabelledHistogram("worker_feature_age_seconds", "Age of the feature rows read (now - "
                                             "their write time), one per event and entity", "entity",
                                             FEATURE_AGE_BUCKETS, registry)
        self.dependency_errors = Counter("worker_dependency_errors", "Failed attempts at a batch because a dependency "
                                         "failed (each retry counts; the batch is held, not lost)",
                                         ["dependency"], registry=registry)
        self.kafka_errors = Counter("worker_kafka_errors", "Errors reported by the Kafka clients",
                                    ["client", "error"], registry=registry)
        self.commit_failures = Counter("worker_commit_failures", "Checkpoints that could not commit offsets",
                                       registry=registry)
        self.rebalances = Counter("worker_rebalances", "Partition assignment changes (assigned, revoked), and joins "
                                  "left and made again because no assignment came (rejoined)", ["change"],
                                  registry=registry)
        self.assigned = Gauge("worker_assigned_partitions", "Partitions assigned to this worker", registry=registry)
        self.stalled_partitions = Gauge("worker_stalled_partitions", "Assigned partitions with events waiting that "
                                        "handed out none for kafka.stall_report_s, by what reading them waits for "
                                        "(open_transaction, no_fetch_position, not_fetched)", ["reason"],
                                        registry=registry)
        for reason in STALL_REASONS:
            self.stalled_partitions.labels(reason).set(0)
        self.held_outputs = Gauge("worker_held_output_partitions", "Output partitions whose last stable offset "
                                  "stayed put for kafka.stall_report_s with records after it: outputs read_committed "
                                  "readers cannot see (a transaction left open; exactly-once mode)", registry=registry)
        self.info = Gauge("worker_info", "The worker and the model it serves", ["worker_version", "model_name",
                          "model_version"], registry=registry)
        self.spans = Counter("worker_trace_spans", "Spans by export outcome (dropped: the export queue was full)",
                             ["outcome"], registry=registry)
        self.expired = Counter("worker_events_expired", "Events older than batch.max_event_age_ms when consumed, by "
                               "what happened to them (dead-letter, skip, score-late)", ["action"], registry=registry)
        self.explanations = Counter("worker_explanations", "Predictions given reasons (explained), and those that "
                                    "went out without because explaining failed (failed)", ["outcome"],
                                    registry=registry)
        self.lag = ConsumerLag(registry)
        self._stages: dict[str, Histogram] = {}
        self._model: tuple[str, str] | None = None

    def _stage(self, name: str) -> Histogram:
        child = self._stages.get(name)
        if child is None:
            child = self._stages[name] = self.stage_seconds.labels(name)
        return child

    def batch_started(self, batch: Sequence[Message], received_ns: int) -> Headers | None:
        self.lag.busy()
        return None

    def batch_done(self, batch: Sequence[Message], result: BatchResult, delivery: Delivery) -> None:
        self.consumed.inc(len(batch))
        self.predicted.inc(len(result.outputs))
        for dead in result.dead_letters:
            self.dead_letters.labels(dead.stage, dead.error_type).inc()
        self.batch_size.observe(len(batch))
        for timing in result.timings:
            self._stage(timing.stage).observe(timing.seconds)
        self._observe_features(result)
        for action, count in result.expired.items():
            self.expired.labels(action).inc(count)
        if result.explained:
            self.explanations.labels("explained").inc(result.explained)
        if result.explain_failures:
            self.explanations.labels("failed").inc(result.explain_failures)
        if self._model != (result.model_name, result.model_version):
            self._serving(result.model_name, result.model_version)
        self._observe_ages(batch, result)
        self.lag.processed(batch)

    def _observe_features(self, result: BatchResult) -> None:
        for entity, count in result.feature_defaults.items():
            if count:
                self.feature_defaults.labels(entity).inc(count)
        for entity, count in result.feature_stale.items():
            self.feature_stale.labels(entity).inc(count)  # zero too: the series exists from the first batch
        for entity, ages in result.feature_ages.items():
            if len(ages):
                self.feature_age.observe_many(entity, ages)

    def _serving(self, name: str, version: str) -> None:
        if self._model is not None:
            self.info.remove(self.worker_version, *self._model)
        self._model = (name, version)
        self.info.labels(self.worker_version, name, version).set(1)

    def _observe_ages(self, batch: Sequence[Message], result: BatchResult) -> None:
        source: Sequence[Any] = result.events if self._event_time else batch
        read = self._event_time or message_time_s
        n = len(source)
        step = max(1, n // AGE_SAMPLES)
        now = time.time()
        for i in range(0, n, step):
            at = read(source[i])
            if at is not None:
                self.event_age.observe(now - at, min(step, n - i))

    def batch_acked(self, delivery: Delivery) -> None:
        self.latency.observe((delivery.acked_ns - delivery.consumed_ns) / 1e9)
        self._stage("deliver").observe((delivery.acked_ns - delivery.published_ns) / 1e9)

    def checkpoint_done(self, timing: StageTiming, committed: bool) -> None:
        self._stage("commit").observe(timing.seconds)
        if not committed:
            self.commit_failures.inc()

    def dependency_down(self, what: str, error: Exception) -> None:
        self.dependency_errors.labels(what).inc()

    def rejoined(self, waited_s: float) -> None:
        self.rebalances.labels("rejoined").inc()

    def stalled(self, stalls: Sequence[Stall]) -> None:
        for reason in STALL_REASONS:
            self.stalled_partitions.labels(reason).set(sum(s.reason == reason for s in stalls))

    def outputs_held(self, held: Sequence[Stall]) -> None:
        self.held_outputs.set(len(held))

    def partitions_changed(self, assigned: list[TP], revoked: list[TP]) -> None:
        if assigned:
            self.rebalances.labels("assigned").inc()
            self.lag.assigned(assigned)
        if revoked:
            self.rebalances.labels("revoked").inc()
            self.lag.revoked(revoked)
        self.assigned.inc(len(assigned) - len(revoked))

    def idle(self) -> None:
        self.lag.idle()

    def count_spans(self, outcome: str, n: int) -> None:
        self.spans.labels(outcome).inc(n)

    def kafka_statistics(self, text: str) -> None:
        """librdkafka's ``stats_cb``."""
        try:
            self.lag.statistics(json.loads(text))
        except (ValueError, TypeError, AttributeError) as exc:
            logger.debug("unreadable librdkafka statistics: %s", exc)

    def kafka_errors_of(self, client: str) -> Callable[[Fault], None]:
        """An error callback for a client: counts each error and logs it (at most once a minute per kind)."""
        last_logged: dict[str, float] = {}

        def on_error(fault: Fault) -> None:
            name = fault.code
            self.kafka_errors.labels(client, name).inc()
            now = time.monotonic()
            if now - last_logged.get(name, -60.0) >= 60.0:
                last_logged[name] = now
                log = logger.error if fault.fatal else logger.warning
                log("Kafka %s error: %s", client, fault.reason, extra={"kafka_error": name})
        return on_error
